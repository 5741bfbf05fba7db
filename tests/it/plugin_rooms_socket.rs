//! Rooms through the plugin over real sockets on 127.0.0.1, against the reference
//! server in the same process: three apps join a room, get its history, chat with QoS
//! to all, see a member's link drop and come back, and leave. Time in the apps moves
//! only by hand; only I/O takes real time, and every wait is bounded.
#![cfg(all(feature = "server", feature = "testing", not(target_arch = "wasm32")))]

use std::time::Duration;

use bevy_im::prelude::*;
use bevy_im::server::{AcceptAll, RunningServer, ServerConfig, spawn_background};
use bevy_im::testing::ImTestApp;

fn server() -> RunningServer {
    spawn_background(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            dialect: Dialect::MobileImSdkV6,
            shutdown_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        },
        AcceptAll,
    )
    .expect("bind")
}

/// What one player's app heard, accumulated across updates.
#[derive(Default, Debug)]
struct Heard {
    joined: Vec<RoomJoined>,
    members_joined: Vec<String>,
    members_left: Vec<String>,
    presence: Vec<(String, bool)>,
    data: Vec<DataReceived>,
    delivered: Vec<MessageDelivered>,
    left: Vec<RoomLeft>,
}

struct Player {
    t: ImTestApp,
    heard: Heard,
}

impl Player {
    fn new(url: &str, user: &str) -> Self {
        let mut config = ImConfig::new(url).dialect(Dialect::MobileImSdkV6);
        config.client.jitter_seed = Some(user.len() as u64);
        let mut t = ImTestApp::connected(config);
        t.set_step(Duration::from_millis(20));
        t.start_login(user, "token");
        Self {
            t,
            heard: Heard::default(),
        }
    }

    fn update(&mut self) {
        self.t.step();
        let h = &mut self.heard;
        h.joined.extend(self.t.heard::<RoomJoined>());
        h.members_joined
            .extend(self.t.heard::<MemberJoined>().into_iter().map(|m| m.user));
        h.members_left
            .extend(self.t.heard::<MemberLeft>().into_iter().map(|m| m.user));
        h.presence.extend(
            self.t
                .heard::<PresenceChanged>()
                .into_iter()
                .map(|p| (p.user, p.online)),
        );
        h.data.extend(self.t.heard::<DataReceived>());
        h.delivered.extend(self.t.heard::<MessageDelivered>());
        h.left.extend(self.t.heard::<RoomLeft>());
    }

    fn logged_in(&mut self) -> bool {
        self.t.core().is_logged_in()
    }
}

/// Updates every player until `done` holds, for at most 10 s of real time.
fn pump(players: &mut [&mut Player], mut done: impl FnMut(&mut [&mut Player]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done(players) {
        assert!(std::time::Instant::now() < deadline, "timed out");
        for p in players.iter_mut() {
            p.update();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn three_players_share_a_room_through_the_plugin() {
    let server = server();
    let url = server.url();
    let mut ann = Player::new(&url, "ann");
    let mut ben = Player::new(&url, "ben");
    let mut cat = Player::new(&url, "cat");
    pump(&mut [&mut ann, &mut ben, &mut cat], |ps| {
        ps.iter_mut().all(|p| p.logged_in())
    });

    // Ann and Ben join and chat before Cat arrives.
    for p in [&mut ann, &mut ben] {
        p.t.run(|mut im: ImClient| im.join_room("lobby").unwrap());
    }
    pump(&mut [&mut ann, &mut ben], |ps| {
        ps.iter().all(|p| p.heard.joined.len() == 1)
    });
    let fp = ann
        .t
        .run(|mut im: ImClient| im.send_to_room("lobby", "first!").unwrap())
        .unwrap();
    pump(&mut [&mut ann, &mut ben], |ps| {
        !ps[0].heard.delivered.is_empty() && !ps[1].heard.data.is_empty()
    });
    let delivered = &ann.heard.delivered[0];
    assert_eq!(
        (delivered.fp.as_str(), delivered.mid),
        (fp.as_str(), Some(1))
    );
    let got = &ben.heard.data[0];
    assert_eq!(
        (
            got.from.as_str(),
            got.room.as_deref(),
            got.content.as_str(),
            got.mid
        ),
        ("ann", Some("lobby"), "first!", Some(1))
    );

    // Cat joins: the members and the history come with the join.
    cat.t.run(|mut im: ImClient| im.join_room("lobby").unwrap());
    pump(&mut [&mut ann, &mut ben, &mut cat], |ps| {
        ps[2].heard.joined.len() == 1 && ps[0].heard.members_joined.contains(&"cat".into())
    });
    let joined = &cat.heard.joined[0];
    let mut members: Vec<&str> = joined.members.iter().map(|m| m.user.as_str()).collect();
    members.sort_unstable();
    assert_eq!(members, ["ann", "ben", "cat"]);
    assert_eq!(joined.messages.len(), 1);
    assert_eq!(joined.messages[0].content, "first!");

    // Ben posts with QoS: both others get it once, Ben hears it delivered once.
    let fp = ben
        .t
        .run(|mut im: ImClient| im.send_to_room("lobby", "hi all").unwrap())
        .unwrap();
    pump(&mut [&mut ann, &mut ben, &mut cat], |ps| {
        ps[1].heard.delivered.len() == 1
            && ps[0].heard.data.iter().any(|d| d.content == "hi all")
            && ps[2].heard.data.iter().any(|d| d.content == "hi all")
    });
    for p in [&ann, &cat] {
        let copies: Vec<_> = p
            .heard
            .data
            .iter()
            .filter(|d| d.fp.as_deref() == Some(&*fp))
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].mid, Some(2));
    }

    // Cat's link drops (the app goes away): the others see Cat offline.
    drop(cat);
    pump(&mut [&mut ann, &mut ben], |ps| {
        ps.iter()
            .all(|p| p.heard.presence.contains(&("cat".into(), false)))
    });
    // Cat is back within the grace period: online again, still a member.
    let mut cat = Player::new(&url, "cat");
    pump(&mut [&mut ann, &mut ben, &mut cat], |ps| {
        ps[2].logged_in()
            && ps[..2]
                .iter()
                .all(|p| p.heard.presence.contains(&("cat".into(), true)))
    });
    assert!(
        server
            .handle()
            .rooms()
            .iter()
            .any(|(room, m)| room == "lobby" && m.len() == 3)
    );

    // Ben leaves: the others hear it, Ben's client drops the room.
    ben.t
        .run(|mut im: ImClient| im.leave_room("lobby").unwrap());
    pump(&mut [&mut ann, &mut ben, &mut cat], |ps| {
        ps[1].heard.left.len() == 1 && ps[0].heard.members_left.contains(&"ben".into())
    });
    assert!(ben.t.run(|im: ImClient| im.rooms().get("lobby").is_none()));
    server.shutdown();
}
