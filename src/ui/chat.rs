//! The chat panel's state, with no rendering: the lines and the delivery state of
//! each of the player's own, the member list with presence, and the connection
//! badge. [`ImChatStatePlugin`] keeps it up to date from the primary client's
//! messages and sends what the player types; the panel's rendering only displays
//! it, so a headless app (`MinimalPlugins`) runs the same logic and a test reads
//! [`ChatPanel`] to check what the player would see.
//!
//! This file uses nothing but Bevy and `crate::prelude` (the public client API),
//! so a test crate can compile it as it is with `#[path]` (and
//! `use bevy_im::prelude;` at its root), without the `ui` feature.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bevy::prelude::*;

use crate::prelude::*;

/// Where the player's lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChatTarget {
    /// The panel's room.
    #[default]
    Room,
    /// One player, directly (picked from the member list).
    Direct(String),
}

/// What became of one of the player's lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Kept by the panel until the client is logged in (and in the room, for a room
    /// line); sent then, in the order typed.
    Waiting,
    /// Handed to the client, no outcome yet. During a re-login it waits in the
    /// client's queue and is written once the link is back.
    Sending,
    /// The server took it: fanned out to the room (`mid`: its id in the room) or
    /// relayed to an online player.
    Relayed {
        /// The message's id in the room, for a room line.
        mid: Option<i64>,
    },
    /// The receiver is offline: the server stored it for their next login.
    Stored,
    /// No ACK in time, or the session ended first; [`ChatCommand::Retry`] sends it
    /// again.
    Lost,
    /// The server refused it (403 blocked or moderated, 404 not in the room, 503
    /// store failed, 507 the receiver's box is full).
    Refused {
        /// The server's code.
        code: i32,
    },
    /// The client refused it at once (too large, say); the text says why.
    NotSent {
        /// The client's error, as text.
        reason: String,
    },
}

impl Delivery {
    /// A short label for the line: `sending`, `relayed`, `stored`, `lost`, ...
    pub fn label(&self) -> String {
        match self {
            Self::Waiting => "waiting for the link".into(),
            Self::Sending => "sending".into(),
            Self::Relayed { .. } => "relayed".into(),
            Self::Stored => "stored for later".into(),
            Self::Lost => "lost".into(),
            Self::Refused { code } => format!("refused ({code})"),
            Self::NotSent { reason } => format!("not sent: {reason}"),
        }
    }

    /// Whether the line can be sent again ([`ChatCommand::Retry`]).
    pub fn can_retry(&self) -> bool {
        matches!(
            self,
            Self::Lost | Self::Refused { .. } | Self::NotSent { .. }
        )
    }

    /// Whether the line has its final outcome (nothing more will change it unless
    /// retried).
    pub fn is_settled(&self) -> bool {
        !matches!(self, Self::Waiting | Self::Sending)
    }
}

/// What kind of line it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    /// The player's own line.
    Mine {
        /// Where it went.
        to: ChatTarget,
        /// What became of it.
        delivery: Delivery,
    },
    /// A message to the room from someone; `history`: it came with the join
    /// (sent before the player arrived).
    Room {
        /// It came with the join's history.
        history: bool,
    },
    /// A direct message to the player; `stored`: it waited on the server while the
    /// player was offline.
    Direct {
        /// It was stored while the player was offline.
        stored: bool,
    },
    /// A notice from the panel: joins, leaves, the connection.
    Notice,
}

/// One line of the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    /// The panel's id of the line (increasing).
    pub id: u64,
    /// Who wrote it (the player's own user id for their lines; empty for notices).
    pub from: String,
    /// The text.
    pub text: String,
    /// What kind of line.
    pub kind: LineKind,
    /// The server's id of the message, when known.
    pub mid: Option<i64>,
}

impl ChatLine {
    /// The delivery state of one of the player's lines (`None` for others' lines).
    pub fn delivery(&self) -> Option<&Delivery> {
        match &self.kind {
            LineKind::Mine { delivery, .. } => Some(delivery),
            _ => None,
        }
    }
}

/// A member's presence, as the member list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// In the room, link up.
    Online,
    /// In the room, link lost (kept for the server's grace period).
    LinkLost,
    /// Left the room (or stayed away past the grace period).
    Left,
}

impl Presence {
    /// `online`, `link lost`, `left`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::LinkLost => "link lost",
            Self::Left => "left",
        }
    }
}

/// The connection as the badge shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadgeState {
    /// No session: not logged in yet, logged out, a refused login, or a re-login
    /// that gave up (`reason`).
    Offline {
        /// Why, when known.
        reason: Option<String>,
    },
    /// A login the game asked for is under way.
    Connecting,
    /// Logged in.
    Online,
    /// The link was lost; automatic re-login, `attempt` (0 before the first).
    Relogging {
        /// The attempt under way (1 for the first).
        attempt: u32,
    },
    /// The server kicked the session out.
    Kicked {
        /// Why, in words.
        reason: String,
    },
}

/// What moves the badge: the client's messages, read as plain inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadgeInput {
    /// The game asked for a login.
    LoginStarted,
    /// A login or re-login succeeded.
    LoggedIn,
    /// A login the game asked for failed (a failed re-login attempt changes nothing).
    LoginFailed {
        /// The code.
        code: i32,
    },
    /// The link was lost while logged in.
    LinkLost,
    /// Re-login attempt `n` started.
    ReloginAttempt(u32),
    /// Re-login gave up.
    ReloginStopped(String),
    /// Kicked out.
    Kicked(String),
    /// Logged out or released.
    LoggedOut,
}

/// The connection badge: a small state machine fed with [`BadgeInput`]s, plus the
/// keepalive's round-trip time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionBadge {
    state: BadgeState,
    rtt: Option<Duration>,
}

impl Default for ConnectionBadge {
    fn default() -> Self {
        Self {
            state: BadgeState::Offline { reason: None },
            rtt: None,
        }
    }
}

impl ConnectionBadge {
    /// Where the connection stands.
    pub fn state(&self) -> &BadgeState {
        &self.state
    }

    /// The latest keepalive round-trip time, while online.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Applies one input.
    pub fn apply(&mut self, input: BadgeInput) {
        use BadgeState as S;
        self.state = match (input, &self.state) {
            (BadgeInput::LoginStarted, _) => S::Connecting,
            (BadgeInput::LoggedIn, _) => S::Online,
            (BadgeInput::LoginFailed { code }, S::Connecting | S::Offline { .. }) => S::Offline {
                reason: Some(format!("login failed ({code})")),
            },
            (BadgeInput::LoginFailed { .. }, state) => state.clone(),
            (BadgeInput::LinkLost, S::Online) => S::Relogging { attempt: 0 },
            (BadgeInput::LinkLost, state) => state.clone(),
            // A re-login never follows a kickout or a logout: a stale message.
            (BadgeInput::ReloginAttempt(_), S::Kicked { .. } | S::Offline { .. }) => {
                self.state.clone()
            }
            (BadgeInput::ReloginAttempt(attempt), _) => S::Relogging { attempt },
            (BadgeInput::ReloginStopped(_), S::Kicked { .. }) => self.state.clone(),
            (BadgeInput::ReloginStopped(why), _) => S::Offline { reason: Some(why) },
            (BadgeInput::Kicked(reason), _) => S::Kicked { reason },
            (BadgeInput::LoggedOut, S::Kicked { .. }) => self.state.clone(),
            (BadgeInput::LoggedOut, _) => S::Offline {
                reason: Some("logged out".into()),
            },
        };
        if self.state != S::Online {
            self.rtt = None;
        }
    }

    /// Brings the badge in line with the client's state when a message was missed
    /// (the client's state is the truth; the messages add the attempt and reasons).
    pub fn sync(&mut self, connection: ImConnection) {
        use BadgeState as S;
        let agrees = matches!(
            (connection, &self.state),
            (ImConnection::Offline, S::Offline { .. })
                | (ImConnection::Connecting, S::Connecting)
                | (ImConnection::LoggedIn, S::Online)
                | (ImConnection::Relogging, S::Relogging { .. })
                | (ImConnection::Kicked, S::Kicked { .. })
        );
        if agrees {
            return;
        }
        self.state = match connection {
            ImConnection::Offline => S::Offline { reason: None },
            ImConnection::Connecting => S::Connecting,
            ImConnection::LoggedIn => S::Online,
            ImConnection::Relogging => S::Relogging { attempt: 0 },
            ImConnection::Kicked => S::Kicked {
                reason: "kicked out".into(),
            },
        };
        if self.state != S::Online {
            self.rtt = None;
        }
    }

    /// Sets the round-trip time (kept only while online).
    pub fn set_rtt(&mut self, rtt: Option<Duration>) {
        if self.state == BadgeState::Online {
            self.rtt = rtt;
        }
    }

    /// The badge's text: `online (12 ms)`, `re-logging in (attempt 2)`, ...
    pub fn label(&self) -> String {
        match &self.state {
            BadgeState::Offline { reason: None } => "offline".into(),
            BadgeState::Offline { reason: Some(r) } => format!("offline: {r}"),
            BadgeState::Connecting => "connecting".into(),
            BadgeState::Online => match self.rtt {
                Some(rtt) => format!("online ({} ms)", rtt.as_millis()),
                None => "online".into(),
            },
            BadgeState::Relogging { attempt: 0 } => "link lost, re-logging in".into(),
            BadgeState::Relogging { attempt } => format!("re-logging in (attempt {attempt})"),
            BadgeState::Kicked { reason } => format!("kicked: {reason}"),
        }
    }
}

/// Words for a kickout.
pub fn kick_reason(code: KickoutCode, reason: Option<&str>) -> String {
    let what = match code {
        KickoutCode::DuplicateLogin => "this name logged in elsewhere".to_owned(),
        KickoutCode::Admin => "removed by the server".to_owned(),
        KickoutCode::Other(n) => format!("code {n}"),
    };
    match reason {
        Some(r) if !r.is_empty() => format!("{what} ({r})"),
        _ => what,
    }
}

fn relogin_stop_reason(stop: ReloginStop) -> String {
    // An `if` chain, not a `match`: `ReloginStop` is `non_exhaustive` outside the
    // crate, and this file also compiles outside it (see the module's docs).
    if let ReloginStop::Refused(code) = stop {
        format!("the server refused the login ({})", code.code())
    } else if stop == ReloginStop::TimeExhausted {
        "gave up re-logging in (too long)".into()
    } else {
        "gave up re-logging in".into()
    }
}

/// What the player (or a script, or a test) asks the panel to do.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub enum ChatCommand {
    /// Send a line to the current [`ChatTarget`].
    Send(String),
    /// Send a lost, refused or unsent line again (by its [`ChatLine::id`]).
    Retry(u64),
    /// Change where lines go.
    Target(ChatTarget),
}

/// The chat panel's state: one room's lines, members and the connection badge of
/// the primary client. Kept by [`ImChatStatePlugin`]; read it to draw the panel
/// or to check it in a test.
#[derive(Resource, Debug, Clone)]
pub struct ChatPanel {
    room: String,
    /// Join the room whenever logged in and not in it (default true).
    pub auto_join: bool,
    /// The most lines kept; the oldest go first (default 200).
    pub max_lines: usize,
    /// The `typeu` of chat lines (default 0, plain text): received messages of other
    /// types (a game's positions, say) are not chat.
    pub typeu: i32,
    lines: VecDeque<ChatLine>,
    next_id: u64,
    members: BTreeMap<String, Presence>,
    badge: ConnectionBadge,
    target: ChatTarget,
    by_fp: HashMap<String, u64>,
    room_mids: BTreeSet<i64>,
    me: Option<String>,
    join_pending: bool,
    join_retry_at: Option<Duration>,
    revision: u64,
}

impl ChatPanel {
    /// An empty panel for room `room` (its name, without `#`).
    pub fn new(room: impl Into<String>) -> Self {
        Self {
            room: room.into(),
            auto_join: true,
            max_lines: 200,
            typeu: 0,
            lines: VecDeque::new(),
            next_id: 1,
            members: BTreeMap::new(),
            badge: ConnectionBadge::default(),
            target: ChatTarget::Room,
            by_fp: HashMap::new(),
            room_mids: BTreeSet::new(),
            me: None,
            join_pending: false,
            join_retry_at: None,
            revision: 0,
        }
    }

    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The lines, oldest first.
    pub fn lines(&self) -> impl DoubleEndedIterator<Item = &ChatLine> + ExactSizeIterator {
        self.lines.iter()
    }

    /// The line `id`, while kept.
    pub fn line(&self, id: u64) -> Option<&ChatLine> {
        self.lines.iter().find(|l| l.id == id)
    }

    /// The members ever seen in the room this session, with their presence, by
    /// user id.
    pub fn members(&self) -> impl Iterator<Item = (&str, Presence)> {
        self.members.iter().map(|(u, p)| (u.as_str(), *p))
    }

    /// `user`'s presence, if seen.
    pub fn presence(&self, user: &str) -> Option<Presence> {
        self.members.get(user).copied()
    }

    /// The connection badge.
    pub fn badge(&self) -> &ConnectionBadge {
        &self.badge
    }

    /// Where the player's lines go.
    pub fn target(&self) -> &ChatTarget {
        &self.target
    }

    /// The logged-in user, once known.
    pub fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    /// Increases on every change: a renderer redraws when it moved.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn changed(&mut self) {
        self.revision += 1;
    }

    fn push(&mut self, from: String, text: String, kind: LineKind, mid: Option<i64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.lines.push_back(ChatLine {
            id,
            from,
            text,
            kind,
            mid,
        });
        while self.lines.len() > self.max_lines {
            if let Some(old) = self.lines.pop_front() {
                self.by_fp.retain(|_, line| *line != old.id);
            }
        }
        self.changed();
        id
    }

    /// Adds a notice line.
    pub fn notice(&mut self, text: impl Into<String>) -> u64 {
        self.push(String::new(), text.into(), LineKind::Notice, None)
    }

    /// Adds one of the player's lines, waiting to be sent.
    pub fn push_mine(&mut self, text: impl Into<String>) -> u64 {
        let me = self.me.clone().unwrap_or_default();
        let to = self.target.clone();
        self.push(
            me,
            text.into(),
            LineKind::Mine {
                to,
                delivery: Delivery::Waiting,
            },
            None,
        )
    }

    fn line_mut(&mut self, id: u64) -> Option<&mut ChatLine> {
        self.lines.iter_mut().find(|l| l.id == id)
    }

    fn set_delivery(&mut self, id: u64, new: Delivery) {
        let mut changed = false;
        if let Some(line) = self.line_mut(id)
            && let LineKind::Mine { delivery, .. } = &mut line.kind
        {
            if let Delivery::Relayed { mid: Some(mid) } = &new {
                line.mid = Some(*mid);
            }
            *delivery = new;
            changed = true;
        }
        if changed {
            self.changed();
        }
    }

    /// Line `id` was handed to the client with fingerprint `fp`.
    pub fn mark_sending(&mut self, id: u64, fp: Option<String>) {
        if let Some(fp) = fp {
            self.by_fp.insert(fp, id);
        }
        self.set_delivery(id, Delivery::Sending);
    }

    /// The client refused line `id` at once.
    pub fn mark_not_sent(&mut self, id: u64, reason: impl Into<String>) {
        self.set_delivery(
            id,
            Delivery::NotSent {
                reason: reason.into(),
            },
        );
    }

    /// The message `fp` was delivered (`stored` for an offline receiver; `mid`: its
    /// id). Returns the line, when it is one of the panel's.
    pub fn on_delivered(&mut self, fp: &str, stored: bool, mid: Option<i64>) -> Option<u64> {
        let id = self.by_fp.remove(fp)?;
        if let Some(mid) = mid {
            let in_room = self.line(id).is_some_and(|l| {
                matches!(
                    l.kind,
                    LineKind::Mine {
                        to: ChatTarget::Room,
                        ..
                    }
                )
            });
            if in_room {
                self.room_mids.insert(mid);
            }
        }
        let delivery = if stored {
            Delivery::Stored
        } else {
            Delivery::Relayed { mid }
        };
        self.set_delivery(id, delivery);
        Some(id)
    }

    /// The message `fp` was lost.
    pub fn on_lost(&mut self, fp: &str) -> Option<u64> {
        let id = self.by_fp.remove(fp)?;
        self.set_delivery(id, Delivery::Lost);
        Some(id)
    }

    /// The server refused the message `fp` with `code`.
    pub fn on_refused(&mut self, fp: &str, code: i32) -> Option<u64> {
        let id = self.by_fp.remove(fp)?;
        self.set_delivery(id, Delivery::Refused { code });
        Some(id)
    }

    /// Makes a lost, refused or unsent line wait to be sent again; false when the
    /// line is not one of those.
    pub fn retry(&mut self, id: u64) -> bool {
        let can = self
            .line(id)
            .and_then(ChatLine::delivery)
            .is_some_and(Delivery::can_retry);
        if can {
            self.set_delivery(id, Delivery::Waiting);
        }
        can
    }

    /// The player's lines waiting to be sent, oldest first: (id, target, text).
    pub fn waiting(&self) -> Vec<(u64, ChatTarget, String)> {
        self.lines
            .iter()
            .filter_map(|l| match &l.kind {
                LineKind::Mine {
                    to,
                    delivery: Delivery::Waiting,
                } => Some((l.id, to.clone(), l.text.clone())),
                _ => None,
            })
            .collect()
    }

    /// A message arrived: a room line for the panel's room, or a direct line.
    pub fn on_received(&mut self, from: &str, content: &str, room: Option<&str>, mid: Option<i64>) {
        match room {
            Some(room) if room == self.room => {
                if let Some(mid) = mid
                    && !self.room_mids.insert(mid)
                {
                    return;
                }
                self.push(
                    from.into(),
                    content.into(),
                    LineKind::Room { history: false },
                    mid,
                );
            }
            Some(_) => {}
            None => {
                self.push(
                    from.into(),
                    content.into(),
                    LineKind::Direct {
                        stored: mid.is_some(),
                    },
                    mid,
                );
            }
        }
    }

    /// The client is in the room: its members, and the history it had not seen.
    pub fn on_joined(&mut self, members: &[Member], history: &[HistoryMessage], rejoin: bool) {
        self.join_pending = false;
        self.join_retry_at = None;
        let now_in: BTreeSet<&str> = members.iter().map(|m| m.user.as_str()).collect();
        for (user, presence) in &mut self.members {
            if !now_in.contains(user.as_str()) {
                *presence = Presence::Left;
            }
        }
        for m in members {
            let presence = if m.online {
                Presence::Online
            } else {
                Presence::LinkLost
            };
            self.members.insert(m.user.clone(), presence);
        }
        if !rejoin {
            self.notice(format!("joined #{}", self.room));
        }
        let typeu = self.typeu;
        for h in history.iter().filter(|h| h.typeu == typeu) {
            if !self.room_mids.insert(h.mid) {
                continue;
            }
            self.push(
                h.from.clone(),
                h.content.clone(),
                LineKind::Room { history: true },
                Some(h.mid),
            );
        }
        self.changed();
    }

    /// A member's presence changed (joined: online; left: left).
    pub fn on_member(&mut self, user: &str, presence: Presence) {
        let before = self.members.insert(user.to_owned(), presence);
        match (before, presence) {
            (None | Some(Presence::Left), Presence::Online) => {
                self.notice(format!("{user} joined"));
            }
            (Some(Presence::Online | Presence::LinkLost), Presence::Left) => {
                self.notice(format!("{user} left"));
            }
            _ => self.changed(),
        }
    }

    /// The client left the room (the session ended, say): the member list empties.
    pub fn on_left_room(&mut self) {
        self.members.clear();
        self.join_pending = false;
        self.changed();
    }

    /// Sets where lines go.
    pub fn set_target(&mut self, target: ChatTarget) {
        if self.target != target {
            self.target = target;
            self.changed();
        }
    }

    /// Feeds the badge one input.
    pub fn badge_input(&mut self, input: BadgeInput) {
        let before = self.badge.clone();
        self.badge.apply(input);
        if self.badge != before {
            self.changed();
        }
    }

    fn badge_sync(&mut self, connection: ImConnection, rtt: Option<Duration>) {
        let before = self.badge.clone();
        self.badge.sync(connection);
        self.badge.set_rtt(rtt);
        if self.badge != before {
            self.changed();
        }
    }
}

/// The order of the panel's systems in `Update`.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImChatSystems;

/// Keeps a [`ChatPanel`] for the primary client, with no rendering: reads the
/// client's messages into it, sends the lines ([`ChatCommand`]) and joins the room
/// when logged in. Add it after `ImClientPlugin`; `ImChatUiPlugin` adds it.
pub struct ImChatStatePlugin {
    room: String,
}

impl ImChatStatePlugin {
    /// The panel of room `room`.
    pub fn new(room: impl Into<String>) -> Self {
        Self { room: room.into() }
    }
}

impl Plugin for ImChatStatePlugin {
    fn build(&self, app: &mut App) {
        if !app.world().contains_resource::<ChatPanel>() {
            app.insert_resource(ChatPanel::new(self.room.clone()));
        }
        app.add_message::<ChatCommand>().add_systems(
            Update,
            (follow_client, run_commands, send_waiting, keep_joined)
                .chain()
                .in_set(ImChatSystems),
        );
    }
}

/// The messages the panel reads, all of the primary client's.
#[derive(bevy::ecs::system::SystemParam)]
struct Heard<'w, 's> {
    login: MessageReader<'w, 's, LoginSucceeded>,
    login_failed: MessageReader<'w, 's, LoginFailed>,
    link_closed: MessageReader<'w, 's, LinkClosed>,
    relogin: MessageReader<'w, 's, ReloginStarted>,
    relogin_stopped: MessageReader<'w, 's, ReloginStopped>,
    kicked: MessageReader<'w, 's, Kicked>,
    logged_out: MessageReader<'w, 's, LoggedOut>,
    data: MessageReader<'w, 's, DataReceived>,
    delivered: MessageReader<'w, 's, MessageDelivered>,
    lost: MessageReader<'w, 's, MessagesLost>,
    refused: MessageReader<'w, 's, MessageRefused>,
    joined: MessageReader<'w, 's, RoomJoined>,
    left: MessageReader<'w, 's, RoomLeft>,
    member_joined: MessageReader<'w, 's, MemberJoined>,
    member_left: MessageReader<'w, 's, MemberLeft>,
    presence: MessageReader<'w, 's, PresenceChanged>,
    failed: MessageReader<'w, 's, RoomRequestFailed>,
}

fn follow_client(
    mut heard: Heard,
    mut panel: ResMut<ChatPanel>,
    im: ImClient,
    primary: Query<Entity, With<ImPrimaryClient>>,
    time: Res<Time<Real>>,
) {
    let Ok(me) = primary.single() else {
        return;
    };
    let panel = &mut *panel;
    let mine = |client: Entity| client == me;
    for m in heard.login.read().filter(|m| mine(m.client)) {
        panel.me = Some(m.user_id.clone());
        panel.badge_input(BadgeInput::LoggedIn);
    }
    for m in heard.login_failed.read().filter(|m| mine(m.client)) {
        if !m.relogin {
            panel.badge_input(BadgeInput::LoginFailed {
                code: m.code.code(),
            });
        }
    }
    for m in heard.link_closed.read().filter(|m| mine(m.client)) {
        if m.reason != CloseReason::Kicked {
            panel.badge_input(BadgeInput::LinkLost);
        }
    }
    for m in heard.relogin.read().filter(|m| mine(m.client)) {
        panel.badge_input(BadgeInput::ReloginAttempt(m.attempt));
    }
    for m in heard.relogin_stopped.read().filter(|m| mine(m.client)) {
        panel.badge_input(BadgeInput::ReloginStopped(relogin_stop_reason(m.reason)));
    }
    for m in heard.kicked.read().filter(|m| mine(m.client)) {
        let reason = kick_reason(m.code, m.reason.as_deref());
        panel.notice(format!("kicked out: {reason}"));
        panel.badge_input(BadgeInput::Kicked(reason));
    }
    if heard.logged_out.read().any(|m| mine(m.client)) {
        panel.badge_input(BadgeInput::LoggedOut);
    }
    // Outcomes before new lines: a line's fate is settled in the order it happened.
    for m in heard.delivered.read().filter(|m| mine(m.client)) {
        panel.on_delivered(&m.fp, m.stored, m.mid);
    }
    for m in heard.lost.read().filter(|m| mine(m.client)) {
        for frame in &m.frames {
            if let Some(fp) = &frame.fp {
                panel.on_lost(fp);
            }
        }
    }
    for m in heard.refused.read().filter(|m| mine(m.client)) {
        if let Some(fp) = &m.fp {
            panel.on_refused(fp, m.code);
        }
    }
    let room = panel.room.clone();
    for m in heard
        .joined
        .read()
        .filter(|m| mine(m.client) && m.room == room)
    {
        panel.on_joined(&m.members, &m.messages, m.rejoin);
    }
    for m in heard.failed.read().filter(|m| mine(m.client)) {
        if m.room.as_deref() == Some(room.as_str()) && panel.join_pending {
            panel.join_pending = false;
            panel.join_retry_at = Some(time.elapsed() + Duration::from_secs(3));
            panel.notice(format!("could not join #{room}: {}", m.error));
        }
    }
    for m in heard
        .member_joined
        .read()
        .filter(|m| mine(m.client) && m.room == room)
    {
        panel.on_member(&m.user, Presence::Online);
    }
    for m in heard
        .presence
        .read()
        .filter(|m| mine(m.client) && m.room == room)
    {
        let presence = if m.online {
            Presence::Online
        } else {
            Presence::LinkLost
        };
        panel.on_member(&m.user, presence);
    }
    for m in heard
        .member_left
        .read()
        .filter(|m| mine(m.client) && m.room == room)
    {
        panel.on_member(&m.user, Presence::Left);
    }
    for m in heard.data.read().filter(|m| mine(m.client)) {
        if m.typeu == panel.typeu {
            panel.on_received(&m.from, &m.content, m.room.as_deref(), m.mid);
        }
    }
    if heard.left.read().any(|m| mine(m.client) && m.room == room) {
        panel.on_left_room();
    }
    panel.badge_sync(im.state(), im.rtt());
}

fn run_commands(mut commands: MessageReader<ChatCommand>, mut panel: ResMut<ChatPanel>) {
    for command in commands.read() {
        match command {
            ChatCommand::Send(text) => {
                let text = text.trim();
                if !text.is_empty() {
                    panel.push_mine(text);
                }
            }
            ChatCommand::Retry(id) => {
                panel.retry(*id);
            }
            ChatCommand::Target(target) => panel.set_target(target.clone()),
        }
    }
}

/// Sends the lines that wait, once the client can take them: logged in (or
/// re-logging in, when the client queues QoS messages itself), and in the room for
/// a room line.
fn send_waiting(mut panel: ResMut<ChatPanel>, mut im: ImClient) {
    let state = im.state();
    if !matches!(state, ImConnection::LoggedIn | ImConnection::Relogging) {
        return;
    }
    let in_room = im.rooms().contains(panel.room());
    let waiting = panel.waiting();
    for (id, to, text) in waiting {
        let outgoing = match to {
            ChatTarget::Room if in_room => Outgoing::to_room(panel.room(), text),
            ChatTarget::Room => continue,
            ChatTarget::Direct(user) => Outgoing::new(user, text),
        }
        .typeu(panel.typeu);
        match im.send(outgoing) {
            Ok(fp) => panel.mark_sending(id, fp),
            Err(SendError::NotLoggedIn) => break,
            Err(e) => panel.mark_not_sent(id, e.to_string()),
        }
    }
}

/// Joins the room when logged in and not in it (the client re-joins by itself after
/// a re-login; this covers the first login and a login after a kickout).
fn keep_joined(mut panel: ResMut<ChatPanel>, mut im: ImClient, time: Res<Time<Real>>) {
    if !panel.auto_join || panel.join_pending || im.state() != ImConnection::LoggedIn {
        return;
    }
    if im.rooms().contains(panel.room()) {
        return;
    }
    if panel.join_retry_at.is_some_and(|at| time.elapsed() < at) {
        return;
    }
    let room = panel.room.clone();
    match im.join_room(&room) {
        Ok(_) => panel.join_pending = true,
        Err(e) => {
            panel.join_retry_at = Some(time.elapsed() + Duration::from_secs(3));
            panel.notice(format!("cannot join #{room}: {e}"));
        }
    }
}
