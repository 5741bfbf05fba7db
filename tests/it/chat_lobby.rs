//! The chat lobby's logic and the chat panel's state, headless: game apps with
//! `MinimalPlugins` and time moved by hand, over the reference server in the same
//! process on 127.0.0.1. No rendering and no `ui` feature: the panel's state
//! (`src/ui/chat.rs`) and the game's logic (`examples/chat_lobby/game.rs`) are
//! compiled here as they are, with `#[path]`.
//!
//! Only I/O takes real time; every wait is bounded.
#![cfg(all(feature = "server", not(target_arch = "wasm32")))]

#[allow(dead_code)]
#[path = "../../src/ui/chat.rs"]
mod chat;

#[allow(dead_code)]
#[path = "../../examples/chat_lobby/game.rs"]
mod game;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_im::prelude::*;
use bevy_im::server::{AcceptAll, RunningServer, ServerConfig, spawn_background};

use chat::{
    BadgeInput, BadgeState, ChatCommand, ChatPanel, ChatTarget, ConnectionBadge, Delivery,
    LineKind, Presence,
};
use game::{Avatar, LobbySettings, LobbyStats, LocalAvatar, MoveInput, Pos};

const ROOM: &str = "lobby";
/// Protocol time per update.
const STEP: Duration = Duration::from_millis(20);

fn server_at(addr: SocketAddr) -> RunningServer {
    // A restart may find the port briefly busy; retry for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let config = ServerConfig {
            listen: addr,
            dialect: Dialect::Seed,
            shutdown_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        };
        match spawn_background(config, AcceptAll) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

fn server() -> RunningServer {
    server_at("127.0.0.1:0".parse().unwrap())
}

/// The typeu of every message that came with a join, as this player heard them.
#[derive(Resource, Default)]
struct JoinHistory(Vec<i32>);

fn record_joins(mut joined: MessageReader<RoomJoined>, mut history: ResMut<JoinHistory>) {
    for j in joined.read() {
        history.0.extend(j.messages.iter().map(|m| m.typeu));
    }
}

/// One player's game, headless.
struct Game {
    app: App,
    user: String,
}

impl Game {
    fn new(url: &str, user: &str) -> Self {
        let mut config = ImConfig::new(url).dialect(Dialect::Seed);
        config.client.jitter_seed = Some(user.len() as u64);
        let mut app = App::new();
        app.add_plugins(MinimalPlugins)
            .insert_resource(TimeUpdateStrategy::ManualDuration(STEP))
            .add_plugins(ImClientPlugin::new(config))
            .add_plugins(chat::ImChatStatePlugin::new(ROOM))
            .add_plugins(game::LobbyPlugin {
                settings: LobbySettings::new(ROOM),
            })
            .init_resource::<JoinHistory>()
            .add_systems(Update, record_joins);
        app.update();
        let mut game = Self {
            app,
            user: user.to_owned(),
        };
        game.login();
        game
    }

    fn login(&mut self) {
        let user = self.user.clone();
        self.run(move |mut im: ImClient| im.login(LoginRequest::new(user.clone(), "token")))
            .expect("a valid login");
    }

    fn run<O: 'static, M>(&mut self, system: impl IntoSystem<(), O, M>) -> O {
        self.app.world_mut().run_system_once(system).unwrap()
    }

    fn update(&mut self) {
        self.app.update();
    }

    fn panel(&self) -> &ChatPanel {
        self.app.world().resource::<ChatPanel>()
    }

    fn badge(&self) -> BadgeState {
        self.panel().badge().state().clone()
    }

    fn stats(&self) -> LobbyStats {
        self.app.world().resource::<LobbyStats>().clone()
    }

    fn command(&mut self, command: ChatCommand) {
        self.app.world_mut().write_message(command);
    }

    fn say(&mut self, text: &str) {
        self.command(ChatCommand::Send(text.to_owned()));
    }

    fn set_move(&mut self, dir: Vec2) {
        self.app.world_mut().resource_mut::<MoveInput>().0 = dir;
    }

    fn in_room(&mut self) -> bool {
        self.run(|im: ImClient| im.rooms().contains(ROOM))
    }

    /// Where this player sees `user`'s avatar.
    fn avatar(&mut self, user: &str) -> Option<Vec2> {
        let mut q = self.app.world_mut().query::<(&Avatar, &Transform)>();
        q.iter(self.app.world())
            .find(|(a, _)| a.user == user)
            .map(|(_, t)| t.translation.truncate())
    }

    fn local_avatar(&mut self) -> Option<Vec2> {
        let mut q = self
            .app
            .world_mut()
            .query_filtered::<&Transform, With<LocalAvatar>>();
        q.iter(self.app.world())
            .next()
            .map(|t| t.translation.truncate())
    }

    fn avatar_count(&mut self) -> usize {
        let mut q = self.app.world_mut().query::<&Avatar>();
        q.iter(self.app.world()).count()
    }

    /// This player's line with `text`.
    fn mine(&self, text: &str) -> Option<Delivery> {
        self.panel()
            .lines()
            .rev()
            .find(|l| matches!(l.kind, LineKind::Mine { .. }) && l.text == text)
            .and_then(|l| l.delivery().cloned())
    }

    fn line_id(&self, text: &str) -> u64 {
        self.panel()
            .lines()
            .rev()
            .find(|l| l.text == text)
            .map(|l| l.id)
            .expect("the line is there")
    }

    fn has_line(&self, from: &str, text: &str, kind: &LineKind) -> bool {
        self.panel()
            .lines()
            .any(|l| l.from == from && l.text == text && &l.kind == kind)
    }
}

/// Updates every game until `done` holds, for at most 15 s of real time.
fn pump(games: &mut [&mut Game], what: &str, mut done: impl FnMut(&mut [&mut Game]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(games) {
        if Instant::now() > deadline {
            for g in games.iter() {
                eprintln!(
                    "{}: badge {:?}, members {:?}, lines {:?}",
                    g.user,
                    g.badge(),
                    g.panel().members().collect::<Vec<_>>(),
                    g.panel()
                        .lines()
                        .map(|l| format!("{}: {} {:?}", l.from, l.text, l.kind))
                        .collect::<Vec<_>>()
                );
            }
            panic!("timed out waiting for: {what}");
        }
        for g in games.iter_mut() {
            g.update();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `n` updates of every game.
fn frames(games: &mut [&mut Game], n: usize) {
    for _ in 0..n {
        for g in games.iter_mut() {
            g.update();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn everyone_in_room(games: &mut [&mut Game]) -> bool {
    let users: Vec<String> = games.iter().map(|g| g.user.clone()).collect();
    games.iter_mut().all(|g| {
        g.in_room()
            && users
                .iter()
                .all(|u| g.panel().presence(u) == Some(Presence::Online))
            && g.avatar_count() == users.len()
    })
}

#[test]
fn two_players_see_each_other_move_and_chat() {
    let server = server();
    let url = server.url();
    let mut ann = Game::new(&url, "ann");
    ann.update();
    assert_eq!(ann.badge(), BadgeState::Connecting);
    let mut ben = Game::new(&url, "ben");
    pump(
        &mut [&mut ann, &mut ben],
        "both in the lobby",
        everyone_in_room,
    );
    assert_eq!(ann.badge(), BadgeState::Online);
    assert!(ann.panel().lines().any(|l| l.text == "joined #lobby"));

    // Standing still sends nothing (the one position each said on arrival is out).
    frames(&mut [&mut ann, &mut ben], 20);
    let sent = ann.stats().positions_sent;
    assert!(sent >= 1, "ann said where she stands on arrival");
    frames(&mut [&mut ann, &mut ben], 50);
    assert_eq!(ann.stats().positions_sent, sent, "nothing while standing");

    // One second of walking: a position every 150 ms or so, and one when she stops.
    ann.set_move(Vec2::X);
    frames(&mut [&mut ann, &mut ben], 50);
    let walking = ann.stats().positions_sent - sent;
    assert!((6..=9).contains(&walking), "{walking} positions in 1 s");
    ann.set_move(Vec2::ZERO);
    frames(&mut [&mut ann, &mut ben], 1);
    assert_eq!(
        ann.stats().positions_sent,
        sent + walking + 1,
        "one on stop"
    );
    let stopped = ann.stats().positions_sent;
    frames(&mut [&mut ann, &mut ben], 50);
    assert_eq!(
        ann.stats().positions_sent,
        stopped,
        "nothing after the stop"
    );
    assert!(ben.stats().positions_heard >= walking);

    // Ben's view of Ann converges on where she stopped, smoothly.
    let target = ann.local_avatar().unwrap();
    pump(
        &mut [&mut ann, &mut ben],
        "ben sees ann where she is",
        |g| g[1].avatar("ann").unwrap().distance(target) < 0.05,
    );
    // Smoothing, not a jump: one step closes part of a gap, not all of it.
    ann.set_move(-Vec2::Y);
    frames(&mut [&mut ann], 1);
    ann.set_move(Vec2::ZERO);
    frames(&mut [&mut ann], 1);
    let target = ann.local_avatar().unwrap();
    let before = ben.avatar("ann").unwrap();
    pump(&mut [&mut ann, &mut ben], "ben hears the step", |g| {
        g[1].avatar("ann").unwrap() != before
    });
    let first = ben.avatar("ann").unwrap();
    assert!(first.distance(target) > 0.05 && first.distance(target) < before.distance(target));
    frames(&mut [&mut ann, &mut ben], 50);
    assert!(ben.avatar("ann").unwrap().distance(target) < 0.05);

    // A room line: sending, then relayed with its id; Ben sees it.
    ann.say("hi ben");
    ann.update();
    assert_eq!(ann.mine("hi ben"), Some(Delivery::Sending));
    pump(&mut [&mut ann, &mut ben], "the line is relayed", |g| {
        matches!(
            g[0].mine("hi ben"),
            Some(Delivery::Relayed { mid: Some(_) })
        ) && g[1].has_line("ann", "hi ben", &LineKind::Room { history: false })
    });

    // A direct line to a player who is not online: stored for later.
    ann.command(ChatCommand::Target(ChatTarget::Direct("dora".into())));
    ann.say("see you later");
    pump(&mut [&mut ann, &mut ben], "stored for dora", |g| {
        g[0].mine("see you later") == Some(Delivery::Stored)
    });
    // A direct line to Ben: relayed, and Ben sees it as his.
    ann.command(ChatCommand::Target(ChatTarget::Direct("ben".into())));
    ann.say("psst");
    pump(&mut [&mut ann, &mut ben], "relayed to ben", |g| {
        g[0].mine("psst") == Some(Delivery::Relayed { mid: None })
            && g[1].has_line("ann", "psst", &LineKind::Direct { stored: false })
    });
    // Ben blocks Ann: her next direct line is refused.
    ben.run(|mut im: ImClient| im.block("ann").unwrap());
    frames(&mut [&mut ann, &mut ben], 20);
    ann.say("still there?");
    pump(&mut [&mut ann, &mut ben], "refused", |g| {
        g[0].mine("still there?") == Some(Delivery::Refused { code: 403 })
    });
    ann.command(ChatCommand::Target(ChatTarget::Room));

    // Cat arrives: the room's history comes with the join (chat only: positions
    // are never stored), and everyone is in her member list.
    let mut cat = Game::new(&url, "cat");
    pump(
        &mut [&mut ann, &mut ben, &mut cat],
        "cat in the lobby",
        everyone_in_room,
    );
    assert!(cat.has_line("ann", "hi ben", &LineKind::Room { history: true }));
    let history = &cat.app.world().resource::<JoinHistory>().0;
    assert!(!history.is_empty() && history.iter().all(|t| *t == 0));
    assert!(!history.contains(&Pos::TYPEU));
    // Ann and Ben say where they stand when Cat arrives: she sees them there.
    let (ann_at, ben_at) = (ann.local_avatar().unwrap(), ben.local_avatar().unwrap());
    pump(&mut [&mut ann, &mut ben, &mut cat], "cat sees both", |g| {
        g[2].avatar("ann").unwrap().distance(ann_at) < 0.05
            && g[2].avatar("ben").unwrap().distance(ben_at) < 0.05
    });

    // Cat's link drops: the others see her link lost, then she is back.
    drop(cat);
    pump(&mut [&mut ann, &mut ben], "cat's link lost", |g| {
        g[0].panel().presence("cat") == Some(Presence::LinkLost)
    });
    let mut cat = Game::new(&url, "cat");
    pump(
        &mut [&mut ann, &mut ben, &mut cat],
        "cat back",
        everyone_in_room,
    );
    // Ben leaves (logs out): shown as left.
    ben.run(|mut im: ImClient| im.logout());
    pump(&mut [&mut ann, &mut ben, &mut cat], "ben left", |g| {
        g[0].panel().presence("ben") == Some(Presence::Left)
            && g[0].avatar("ben").is_none()
            && g[0].has_line("", "ben left", &LineKind::Notice)
    });
    assert!(matches!(ben.badge(), BadgeState::Offline { .. }));
    assert_eq!(ben.avatar_count(), 0);
}

#[test]
fn the_server_goes_away_and_comes_back() {
    let server = server();
    let addr = server.local_addr();
    let url = server.url();
    let mut ann = Game::new(&url, "ann");
    pump(&mut [&mut ann], "ann in the lobby", everyone_in_room);

    // The server goes away: re-login attempts, counted on the badge.
    server.shutdown();
    pump(&mut [&mut ann], "re-logging in", |g| {
        matches!(g[0].badge(), BadgeState::Relogging { .. })
    });
    // A line typed now waits in the client's queue...
    ann.say("anyone?");
    ann.update();
    assert_eq!(ann.mine("anyone?"), Some(Delivery::Sending));
    // ...and is reported lost once its time is up; the attempts go on.
    pump(&mut [&mut ann], "lost, second attempt", |g| {
        g[0].mine("anyone?") == Some(Delivery::Lost)
            && matches!(g[0].badge(), BadgeState::Relogging { attempt } if attempt >= 2)
    });
    assert!(
        ann.panel()
            .badge()
            .label()
            .starts_with("re-logging in (attempt")
    );
    // Walking meanwhile sends nothing (positions are not queued).
    let sent = ann.stats().positions_sent;
    ann.set_move(Vec2::Y);
    frames(&mut [&mut ann], 20);
    ann.set_move(Vec2::ZERO);
    frames(&mut [&mut ann], 2);
    assert_eq!(ann.stats().positions_sent, sent);

    // The server is back: online, in the room again; the lost line is retried.
    let server = server_at(addr);
    pump(&mut [&mut ann], "online again", |g| {
        g[0].badge() == BadgeState::Online && g[0].in_room()
    });
    let id = ann.line_id("anyone?");
    ann.command(ChatCommand::Retry(id));
    pump(&mut [&mut ann], "the retry is relayed", |g| {
        matches!(g[0].mine("anyone?"), Some(Delivery::Relayed { .. }))
    });
    assert_eq!(
        ann.panel().lines().filter(|l| l.text == "anyone?").count(),
        1,
        "retried in place"
    );
    // And the positions flow again.
    ann.set_move(Vec2::X);
    frames(&mut [&mut ann], 10);
    ann.set_move(Vec2::ZERO);
    frames(&mut [&mut ann], 2);
    assert!(ann.stats().positions_sent > sent);
    server.shutdown();
}

#[test]
fn a_second_login_of_the_same_name_kicks_the_first() {
    let server = server();
    let url = server.url();
    let mut first = Game::new(&url, "ann");
    pump(&mut [&mut first], "ann in the lobby", everyone_in_room);
    first.say("before");
    pump(&mut [&mut first], "relayed", |g| {
        matches!(g[0].mine("before"), Some(Delivery::Relayed { .. }))
    });

    let mut second = Game::new(&url, "ann");
    pump(&mut [&mut first, &mut second], "the first is kicked", |g| {
        matches!(g[0].badge(), BadgeState::Kicked { .. }) && g[1].in_room()
    });
    let BadgeState::Kicked { reason } = first.badge() else {
        unreachable!()
    };
    assert!(reason.contains("logged in elsewhere"), "{reason}");
    assert!(first.panel().badge().label().starts_with("kicked: "));
    frames(&mut [&mut first, &mut second], 5);
    assert_eq!(first.avatar_count(), 0, "no room, no avatars");
    assert!(first.panel().members().next().is_none());
    // No re-login after a kickout.
    frames(&mut [&mut first], 200);
    assert!(matches!(first.badge(), BadgeState::Kicked { .. }));
    // Lines typed now wait for the next login (nothing typed is dropped).
    first.say("after");
    frames(&mut [&mut first], 2);
    assert_eq!(first.mine("after"), Some(Delivery::Waiting));

    // Logging in again (the game's offer) kicks the other one, and the waiting
    // line goes out once back in the room; the history is not shown twice.
    first.login();
    first.update();
    assert_eq!(first.badge(), BadgeState::Connecting);
    pump(
        &mut [&mut first, &mut second],
        "back, the other kicked",
        |g| {
            g[0].in_room()
                && matches!(g[1].badge(), BadgeState::Kicked { .. })
                && matches!(g[0].mine("after"), Some(Delivery::Relayed { .. }))
        },
    );
    assert_eq!(
        first.panel().lines().filter(|l| l.text == "before").count(),
        1
    );
}

#[test]
fn the_badge_state_machine() {
    let mut b = ConnectionBadge::default();
    assert_eq!(b.label(), "offline");
    let steps: &[(BadgeInput, BadgeState, &str)] = &[
        (
            BadgeInput::LoginStarted,
            BadgeState::Connecting,
            "connecting",
        ),
        (BadgeInput::LoggedIn, BadgeState::Online, "online"),
        (
            BadgeInput::LinkLost,
            BadgeState::Relogging { attempt: 0 },
            "link lost, re-logging in",
        ),
        (
            BadgeInput::ReloginAttempt(1),
            BadgeState::Relogging { attempt: 1 },
            "re-logging in (attempt 1)",
        ),
        // A failed attempt changes nothing; the next one counts up.
        (
            BadgeInput::LoginFailed { code: 202 },
            BadgeState::Relogging { attempt: 1 },
            "re-logging in (attempt 1)",
        ),
        (
            BadgeInput::ReloginAttempt(2),
            BadgeState::Relogging { attempt: 2 },
            "re-logging in (attempt 2)",
        ),
        (BadgeInput::LoggedIn, BadgeState::Online, "online"),
        (
            BadgeInput::Kicked("this name logged in elsewhere".into()),
            BadgeState::Kicked {
                reason: "this name logged in elsewhere".into(),
            },
            "kicked: this name logged in elsewhere",
        ),
        // Nothing after a kickout moves it but a new login.
        (
            BadgeInput::ReloginAttempt(3),
            BadgeState::Kicked {
                reason: "this name logged in elsewhere".into(),
            },
            "kicked: this name logged in elsewhere",
        ),
        (
            BadgeInput::LoggedOut,
            BadgeState::Kicked {
                reason: "this name logged in elsewhere".into(),
            },
            "kicked: this name logged in elsewhere",
        ),
        (
            BadgeInput::LoginStarted,
            BadgeState::Connecting,
            "connecting",
        ),
        (
            BadgeInput::LoginFailed { code: 4 },
            BadgeState::Offline {
                reason: Some("login failed (4)".into()),
            },
            "offline: login failed (4)",
        ),
        (
            BadgeInput::LoginStarted,
            BadgeState::Connecting,
            "connecting",
        ),
        (BadgeInput::LoggedIn, BadgeState::Online, "online"),
        (
            BadgeInput::LinkLost,
            BadgeState::Relogging { attempt: 0 },
            "",
        ),
        (
            BadgeInput::ReloginStopped("gave up re-logging in".into()),
            BadgeState::Offline {
                reason: Some("gave up re-logging in".into()),
            },
            "offline: gave up re-logging in",
        ),
    ];
    for (input, state, label) in steps {
        b.apply(input.clone());
        assert_eq!(b.state(), state, "after {input:?}");
        if !label.is_empty() {
            assert_eq!(b.label(), *label);
        }
    }
    // The round-trip time shows while online only.
    b.apply(BadgeInput::LoggedIn);
    b.set_rtt(Some(Duration::from_millis(12)));
    assert_eq!(b.label(), "online (12 ms)");
    b.apply(BadgeInput::LinkLost);
    assert_eq!(b.rtt(), None);
    // The client's state wins when a message was missed.
    b.sync(ImConnection::LoggedIn);
    assert_eq!(b.state(), &BadgeState::Online);
    b.sync(ImConnection::Kicked);
    assert!(matches!(b.state(), BadgeState::Kicked { .. }));
}

#[test]
fn the_panel_keeps_every_line_with_one_outcome() {
    let mut p = ChatPanel::new(ROOM);
    p.max_lines = 4;
    let a = p.push_mine("one");
    assert_eq!(p.waiting().len(), 1);
    p.mark_sending(a, Some("fp-a".into()));
    assert!(p.waiting().is_empty());
    assert_eq!(p.on_delivered("fp-a", false, Some(7)), Some(a));
    assert_eq!(
        p.line(a).unwrap().delivery(),
        Some(&Delivery::Relayed { mid: Some(7) })
    );
    // An outcome for an unknown or settled fingerprint changes nothing.
    assert_eq!(p.on_lost("fp-a"), None);
    // The room's copy of an own message (in a later join's history) is not shown twice.
    let before = p.lines().len();
    p.on_joined(
        &[Member {
            user: "ann".into(),
            online: true,
        }],
        &[HistoryMessage {
            mid: 7,
            ts: 0,
            from: "ann".into(),
            to: "#lobby".into(),
            content: "one".into(),
            typeu: 0,
            fp: None,
        }],
        false,
    );
    assert_eq!(p.lines().len(), before + 1, "only the join notice");
    // Lost, retried, refused.
    let b = p.push_mine("two");
    p.mark_sending(b, Some("fp-b".into()));
    p.on_lost("fp-b");
    assert!(p.line(b).unwrap().delivery().unwrap().can_retry());
    assert!(p.retry(b));
    assert_eq!(p.line(b).unwrap().delivery(), Some(&Delivery::Waiting));
    assert!(!p.retry(b), "only a settled failure is retried");
    p.mark_sending(b, Some("fp-b2".into()));
    p.on_refused("fp-b2", 404);
    assert_eq!(
        p.line(b).unwrap().delivery().unwrap().label(),
        "refused (404)"
    );
    // Only the newest lines are kept.
    for i in 0..10 {
        p.on_received("ben", &format!("line {i}"), Some(ROOM), Some(100 + i));
    }
    assert_eq!(p.lines().len(), 4);
    assert_eq!(p.lines().last().unwrap().text, "line 9");
    // A live copy and a history copy of one message: shown once.
    p.on_received("ben", "line 9", Some(ROOM), Some(109));
    assert_eq!(p.lines().filter(|l| l.text == "line 9").count(), 1);
    // Another room's messages are not this panel's.
    p.on_received("ben", "elsewhere", Some("other"), Some(1));
    assert!(p.lines().all(|l| l.text != "elsewhere"));
}
