//! The chat lobby's game logic, with no rendering: avatars for the room's members,
//! the local player's movement, positions as small room messages without QoS
//! (sent only while moving), their smoothing on the other side, and bots that walk
//! and chat. `examples/chat_lobby.rs` draws it; `tests/it/chat_lobby.rs` runs it
//! headless (both include this file with `#[path]`).
//!
//! It uses only `bevy_im`'s public client API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bevy::prelude::*;
use bevy_im::prelude::*;
use serde::{Deserialize, Serialize};

/// A player's position in the lobby, sent to the room without QoS: ephemeral, fanned
/// out at once and never stored (a lost one is replaced by the next).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Pos {
    /// x, in lobby units (pixels of the room).
    pub x: f32,
    /// y.
    pub y: f32,
}

impl TypedMessage for Pos {
    const TYPEU: i32 = 20;
}

/// The lobby's rules.
#[derive(Resource, Debug, Clone)]
pub struct LobbySettings {
    /// The room every player is in.
    pub room: String,
    /// The room spans `-half_size..half_size`.
    pub half_size: Vec2,
    /// Walking speed, units per second.
    pub speed: f32,
    /// While moving, a position goes out at most this often (and one more when the
    /// player stops).
    pub send_every: Duration,
    /// How fast a remote avatar closes the gap to the last position heard (per
    /// second; exponential smoothing).
    pub smoothing: f32,
}

impl LobbySettings {
    /// The defaults for room `room`.
    pub fn new(room: impl Into<String>) -> Self {
        Self {
            room: room.into(),
            half_size: Vec2::new(330.0, 250.0),
            speed: 220.0,
            send_every: Duration::from_millis(150),
            smoothing: 10.0,
        }
    }
}

/// Where the local player wants to go (the keyboard sets it, or a script, or a
/// test); zero stands still.
#[derive(Resource, Debug, Default, Clone, Copy)]
pub struct MoveInput(pub Vec2);

/// A player in the room.
#[derive(Component, Debug, Clone)]
pub struct Avatar {
    /// Their user id.
    pub user: String,
    /// Whether their link is up.
    pub online: bool,
}

/// The local player's avatar.
#[derive(Component, Debug)]
pub struct LocalAvatar;

/// Counters, for the HUD and the tests.
#[derive(Resource, Debug, Default, Clone)]
pub struct LobbyStats {
    /// Positions the local player sent.
    pub positions_sent: u64,
    /// Positions heard from others.
    pub positions_heard: u64,
}

/// The last position heard from each player.
#[derive(Resource, Debug, Default, Clone)]
pub struct HeardPositions(pub BTreeMap<String, Vec2>);

#[derive(Resource, Debug, Default)]
struct PositionSender {
    was_moving: bool,
    since_sent: Duration,
    announce: bool,
}

/// Where the lobby's systems run (in `Update`): set [`MoveInput`] before them.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LobbySystems;

/// The lobby for the primary client, and the bots.
pub struct LobbyPlugin {
    /// The rules.
    pub settings: LobbySettings,
}

impl Plugin for LobbyPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.settings.clone())
            .init_resource::<MoveInput>()
            .init_resource::<LobbyStats>()
            .init_resource::<HeardPositions>()
            .init_resource::<PositionSender>()
            .add_systems(
                Update,
                (
                    hear_positions,
                    sync_avatars,
                    move_local,
                    send_position,
                    smooth_remote,
                    drive_bots,
                )
                    .chain()
                    .in_set(LobbySystems),
            );
    }
}

/// Where `user` appears before anything is heard from them: spread over the room,
/// the same on every screen.
pub fn spawn_point(user: &str, half: Vec2) -> Vec2 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let fx = (hash & 0xffff) as f32 / 65535.0;
    let fy = ((hash >> 16) & 0xffff) as f32 / 65535.0;
    Vec2::new((fx * 2.0 - 1.0) * half.x, (fy * 2.0 - 1.0) * half.y) * 0.8
}

fn round(p: Vec2) -> Pos {
    Pos {
        x: (p.x * 10.0).round() / 10.0,
        y: (p.y * 10.0).round() / 10.0,
    }
}

/// A position for `room`: no QoS, its own `typeu`.
pub fn position_message(room: &str, p: Vec2) -> Outgoing {
    let content = serde_json::to_string(&round(p)).expect("two floats serialise");
    Outgoing::to_room(room, content)
        .qos(false)
        .typeu(Pos::TYPEU)
}

fn primary(q: &Query<Entity, With<ImPrimaryClient>>) -> Option<Entity> {
    q.single().ok()
}

#[allow(clippy::too_many_arguments)]
fn hear_positions(
    mut data: MessageReader<DataReceived>,
    mut joined: MessageReader<RoomJoined>,
    mut member_joined: MessageReader<MemberJoined>,
    me: Query<Entity, With<ImPrimaryClient>>,
    settings: Res<LobbySettings>,
    mut heard: ResMut<HeardPositions>,
    mut stats: ResMut<LobbyStats>,
    mut sender: ResMut<PositionSender>,
) {
    let Some(me) = primary(&me) else {
        return;
    };
    for m in data.read().filter(|m| m.client == me) {
        if m.room.as_deref() != Some(settings.room.as_str()) {
            continue;
        }
        if let Some(Ok(p)) = m.parse::<Pos>() {
            heard.0.insert(m.from.clone(), Vec2::new(p.x, p.y));
            stats.positions_heard += 1;
        }
    }
    // Someone new (or the player, after a join) does not know where the player
    // stands: say it once.
    if joined
        .read()
        .any(|m| m.client == me && m.room == settings.room)
        | member_joined
            .read()
            .any(|m| m.client == me && m.room == settings.room)
    {
        sender.announce = true;
    }
}

/// One avatar per member of the room; none while the player is not in it.
fn sync_avatars(
    mut commands: Commands,
    im: ImClient,
    settings: Res<LobbySettings>,
    heard: Res<HeardPositions>,
    mut avatars: Query<(Entity, &mut Avatar)>,
) {
    let me = im.user_id().map(str::to_owned);
    let members: BTreeMap<String, bool> = im
        .rooms()
        .get(&settings.room)
        .map(|r| r.members().map(|(u, o)| (u.to_owned(), o)).collect())
        .unwrap_or_default();
    let mut present = BTreeSet::new();
    for (entity, mut avatar) in &mut avatars {
        match members.get(&avatar.user) {
            Some(online) if !present.contains(&avatar.user) => {
                if avatar.online != *online {
                    avatar.online = *online;
                }
                present.insert(avatar.user.clone());
            }
            _ => commands.entity(entity).despawn(),
        }
    }
    for (user, online) in members {
        if present.contains(&user) {
            continue;
        }
        let start = heard
            .0
            .get(&user)
            .copied()
            .unwrap_or_else(|| spawn_point(&user, settings.half_size));
        let mut entity = commands.spawn((
            Avatar {
                user: user.clone(),
                online,
            },
            Transform::from_translation(start.extend(1.0)),
        ));
        if me.as_deref() == Some(user.as_str()) {
            entity.insert(LocalAvatar);
        }
    }
}

fn move_local(
    input: Res<MoveInput>,
    time: Res<Time>,
    settings: Res<LobbySettings>,
    mut local: Query<&mut Transform, With<LocalAvatar>>,
) {
    let Ok(mut t) = local.single_mut() else {
        return;
    };
    let dir = input.0.normalize_or_zero();
    if dir == Vec2::ZERO {
        return;
    }
    let p = t.translation.truncate() + dir * settings.speed * time.delta_secs();
    let p = p.clamp(-settings.half_size, settings.half_size);
    t.translation = p.extend(t.translation.z);
}

/// Positions go out only while moving (at most every `send_every`), once more when
/// the player stops, and once when someone joins.
fn send_position(
    mut im: ImClient,
    input: Res<MoveInput>,
    time: Res<Time>,
    settings: Res<LobbySettings>,
    local: Query<&Transform, With<LocalAvatar>>,
    mut sender: ResMut<PositionSender>,
    mut stats: ResMut<LobbyStats>,
) {
    let Ok(t) = local.single() else {
        return;
    };
    let moving = input.0 != Vec2::ZERO;
    sender.since_sent += time.delta();
    let due = (moving && (!sender.was_moving || sender.since_sent >= settings.send_every))
        || (!moving && sender.was_moving)
        || sender.announce;
    sender.was_moving = moving;
    if !due || !im.is_logged_in() {
        return;
    }
    if im
        .send(position_message(&settings.room, t.translation.truncate()))
        .is_ok()
    {
        stats.positions_sent += 1;
        sender.since_sent = Duration::ZERO;
        sender.announce = false;
    }
}

fn smooth_remote(
    time: Res<Time>,
    settings: Res<LobbySettings>,
    heard: Res<HeardPositions>,
    mut avatars: Query<(&Avatar, &mut Transform), Without<LocalAvatar>>,
) {
    let k = 1.0 - (-settings.smoothing * time.delta_secs()).exp();
    for (avatar, mut t) in &mut avatars {
        let Some(target) = heard.0.get(&avatar.user) else {
            continue;
        };
        let p = t.translation.truncate();
        let next = if p.distance(*target) < 0.05 {
            *target
        } else {
            p.lerp(*target, k)
        };
        t.translation = next.extend(t.translation.z);
    }
}

/// Whether a user id is one of the example's bots.
pub fn is_bot(user: &str) -> bool {
    user.contains("-bot")
}

const BOT_LINES: &[&str] = &[
    "anyone up for a round?",
    "the lobby is quiet today",
    "gg last match",
    "brb, getting coffee",
    "nice lobby",
    "ping looks fine from here",
    "ready when you are",
    "that was close!",
];

/// A bot: an extra client entity (`ImClientBundle`) that logs in, joins the room,
/// walks between random spots and says something now and then. It answers a line
/// with "hello" or "hi" in it, and the first bot welcomes players who join.
#[derive(Component, Debug)]
pub struct Bot {
    /// Its user id.
    pub name: String,
    /// Chat lines it sent.
    pub lines_sent: u32,
    greeter: bool,
    rng: fastrand::Rng,
    pos: Vec2,
    goal: Option<Vec2>,
    rest: f32,
    next_chat: f32,
    since_sent: Duration,
    was_moving: bool,
    announce: bool,
    login_at: f32,
    join_pending: bool,
    replies: Vec<(f32, String)>,
}

impl Bot {
    /// A bot called `name`, its randomness from `seed`; `greeter` welcomes joiners.
    pub fn new(name: impl Into<String>, seed: u64, greeter: bool) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        Self {
            name: name.into(),
            lines_sent: 0,
            greeter,
            pos: Vec2::ZERO,
            goal: None,
            rest: rng.f32() * 2.0,
            next_chat: 3.0 + rng.f32() * 6.0,
            rng,
            since_sent: Duration::ZERO,
            was_moving: false,
            announce: false,
            login_at: 0.0,
            join_pending: false,
            replies: Vec::new(),
        }
    }
}

/// Spawns `names.len()` bots for the server of `config`.
pub fn spawn_bots(commands: &mut Commands, config: &ImConfig, names: &[String], seed: u64) {
    for (i, name) in names.iter().enumerate() {
        let entity = ImClientBundle::new(config.clone()).spawn(commands);
        commands
            .entity(entity)
            .insert(Bot::new(name.clone(), seed + i as u64, i == 0));
    }
}

fn mentions_hello(text: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case("hello") || w.eq_ignore_ascii_case("hi"))
}

#[allow(clippy::too_many_arguments)]
fn drive_bots(
    mut clients: ImClients,
    mut bots: Query<(Entity, &mut Bot)>,
    time: Res<Time>,
    settings: Res<LobbySettings>,
    mut joined: MessageReader<RoomJoined>,
    mut failed: MessageReader<RoomRequestFailed>,
    mut member_joined: MessageReader<MemberJoined>,
    mut data: MessageReader<DataReceived>,
) {
    let joined: Vec<RoomJoined> = joined.read().cloned().collect();
    let failed: Vec<Entity> = failed.read().map(|f| f.client).collect();
    let member_joined: Vec<MemberJoined> = member_joined.read().cloned().collect();
    let data: Vec<DataReceived> = data.read().cloned().collect();
    let dt = time.delta_secs();
    let now = time.elapsed_secs();
    let room = settings.room.as_str();
    for (entity, mut bot) in &mut bots {
        let bot = &mut *bot;
        let Some(mut im) = clients.get_mut(entity) else {
            continue;
        };
        match im.state() {
            ImConnection::Offline if now >= bot.login_at => {
                bot.login_at = now + 3.0;
                let _ = im.login(LoginRequest::new(bot.name.clone(), "token"));
                continue;
            }
            ImConnection::LoggedIn => {}
            _ => continue,
        }
        if joined
            .iter()
            .any(|j| j.client == entity && j.room == room && !j.rejoin)
        {
            bot.join_pending = false;
            bot.announce = true;
            if bot.pos == Vec2::ZERO {
                bot.pos = spawn_point(&bot.name, settings.half_size);
            }
        }
        if failed.contains(&entity) {
            bot.join_pending = false;
        }
        if !im.rooms().contains(room) {
            if !bot.join_pending && im.join_room(room).is_ok() {
                bot.join_pending = true;
            }
            continue;
        }
        for m in member_joined
            .iter()
            .filter(|m| m.client == entity && m.room == room)
        {
            bot.announce = true;
            if bot.greeter && !is_bot(&m.user) {
                let at = now + 1.0 + bot.rng.f32();
                bot.replies.push((at, format!("welcome, {}!", m.user)));
            }
        }
        for m in data
            .iter()
            .filter(|m| m.client == entity && m.room.as_deref() == Some(room) && m.typeu == 0)
        {
            // The greeter always answers a hello; the others now and then.
            let answers = bot.greeter || bot.rng.f32() < 0.3;
            if !is_bot(&m.from) && mentions_hello(&m.content) && answers {
                let at = now + 0.8 + bot.rng.f32() * 1.5;
                bot.replies.push((at, format!("hello {}!", m.from)));
            }
        }

        // Walk: to a random spot, rest, again.
        let moving = if bot.rest > 0.0 {
            bot.rest -= dt;
            false
        } else {
            let goal = *bot.goal.get_or_insert_with(|| {
                let h = settings.half_size * 0.9;
                Vec2::new(
                    (bot.rng.f32() * 2.0 - 1.0) * h.x,
                    (bot.rng.f32() * 2.0 - 1.0) * h.y,
                )
            });
            let step = settings.speed * 0.6 * dt;
            let to = goal - bot.pos;
            if to.length() <= step {
                bot.pos = goal;
                bot.goal = None;
                bot.rest = 1.0 + bot.rng.f32() * 3.0;
                false
            } else {
                bot.pos += to.normalize() * step;
                true
            }
        };
        bot.since_sent += time.delta();
        let due = (moving && (!bot.was_moving || bot.since_sent >= settings.send_every))
            || (!moving && bot.was_moving)
            || bot.announce;
        bot.was_moving = moving;
        if due && im.send(position_message(room, bot.pos)).is_ok() {
            bot.since_sent = Duration::ZERO;
            bot.announce = false;
        }

        // Talk.
        bot.next_chat -= dt;
        if bot.next_chat <= 0.0 {
            bot.next_chat = 8.0 + bot.rng.f32() * 10.0;
            let line = BOT_LINES[bot.rng.usize(..BOT_LINES.len())];
            bot.replies.push((now, line.to_owned()));
        }
        let (due, later): (Vec<_>, Vec<_>) = bot.replies.drain(..).partition(|(at, _)| *at <= now);
        bot.replies = later;
        for (_, line) in due {
            if im.send_to_room(room, line).is_ok() {
                bot.lines_sent += 1;
            }
        }
    }
}
