//! Messages per second through the plugin against a raw tokio-tungstenite client
//! doing the same, against the same server, in one run (BENCHMARKS.md, "The client
//! against a raw client").
//!
//! Each side sends `--messages` QoS messages with at most `--window` waiting for their
//! ACK to an echo user that ACKs every copy; the rate runs from the first send to the
//! last ACK. The plugin side is one headless `App` (`MinimalPlugins` and
//! `ImClientPlugin`) updated as fast as it goes, then capped at 60 updates a second
//! to show how many messages one frame moves.
//!
//! ```sh
//! cargo run --release --example plugin_throughput -- --rounds 3
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy_im::prelude::*;
use bevy_im::protocol::{Frame, LoginInfo, ServerKind};
use bevy_im::server::{AcceptAll, ServerConfig, spawn_background};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Clone)]
struct Args {
    /// QoS messages per side and round.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Messages waiting for their ACK at most.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Rounds; the two sides alternate.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run the app's schedules on its main thread only (a task pool of one thread),
    /// as a headless app that does little else may.
    #[arg(long)]
    one_thread: bool,
}

const DIALECT: Dialect = Dialect::MobileImSdkV6;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn login(url: &str, user: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let info = LoginInfo {
        login_user_id: user.to_owned(),
        login_token: "t".into(),
        extra: None,
        first_login_time: 0,
        app: None,
    };
    ws.send(Message::text(Frame::login(&info).to_json()))
        .await
        .unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg
            && Frame::decode(t.as_str()).is_ok_and(|f| f.ty == 50)
        {
            return ws;
        }
    }
    panic!("{user}: no login reply");
}

/// ACKs every QoS copy it receives, until the process ends.
async fn echo(url: String) {
    let mut ws = login(&url, "echo").await;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg
            && let Ok(frame) = Frame::decode(t.as_str())
            && let Some(ack) = Frame::ack_of(&frame)
            && ws.send(Message::text(ack.to_json())).await.is_err()
        {
            return;
        }
    }
}

/// The raw client: the same load, straight over tokio-tungstenite.
async fn raw(url: &str, user: &str, args: &Args) -> f64 {
    let mut ws = login(url, user).await;
    let mut in_flight: HashMap<String, ()> = HashMap::new();
    let (mut sent, mut acked) = (0, 0);
    let started = Instant::now();
    while acked < args.messages {
        while sent < args.messages && in_flight.len() < args.window {
            let frame = Frame::data(user, "echo", "x".repeat(64), true, None, 0);
            in_flight.insert(frame.fp.clone().unwrap_or_default(), ());
            ws.feed(Message::text(frame.to_json())).await.unwrap();
            sent += 1;
        }
        ws.flush().await.unwrap();
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("raw client: the link ended");
        };
        let frame = Frame::decode(t.as_str()).unwrap();
        if frame.server_kind(DIALECT) == ServerKind::Ack
            && in_flight.remove(frame.content()).is_some()
        {
            acked += 1;
        }
    }
    let _ = ws.close(None).await;
    args.messages as f64 / started.elapsed().as_secs_f64()
}

#[derive(Resource)]
struct Load {
    to_send: usize,
    window: usize,
    delivered: usize,
    started: Option<Instant>,
}

fn send_what_the_window_allows(mut im: ImClient, mut load: ResMut<Load>) {
    if !im.is_logged_in() {
        return;
    }
    load.started.get_or_insert_with(Instant::now);
    while load.to_send > 0 && im.pending_count() < load.window {
        im.send(Outgoing::new("echo", "x".repeat(64)))
            .expect("a send while logged in");
        load.to_send -= 1;
    }
}

fn count_deliveries(mut delivered: MessageReader<MessageDelivered>, mut load: ResMut<Load>) {
    load.delivered += delivered.read().count();
}

/// The plugin: one headless app; `fps` caps its updates (0: as fast as it goes).
/// Returns messages per second and updates run.
fn plugin(url: &str, user: &str, args: &Args, fps: u32) -> (f64, u64) {
    let mut app = App::new();
    let task_pool_options = if args.one_thread {
        TaskPoolOptions::with_num_threads(1)
    } else {
        TaskPoolOptions::default()
    };
    app.add_plugins(MinimalPlugins.set(TaskPoolPlugin { task_pool_options }))
        .add_plugins(ImClientPlugin::new(ImConfig::new(url).dialect(DIALECT)))
        .insert_resource(Load {
            to_send: args.messages,
            window: args.window,
            delivered: 0,
            started: None,
        })
        .add_systems(
            Update,
            (send_what_the_window_allows, count_deliveries).chain(),
        );
    app.update();
    let request = LoginRequest::new(user, "t");
    app.world_mut()
        .run_system_once(move |mut im: ImClient| im.login(request.clone()))
        .unwrap()
        .expect("a valid login");
    let frame = (fps > 0).then(|| Duration::from_secs(1) / fps);
    let mut updates = 0u64;
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        let tick = Instant::now();
        app.update();
        let load = app.world().resource::<Load>();
        if load.started.is_some() {
            updates += 1;
        }
        if load.delivered >= args.messages {
            let took = load.started.unwrap().elapsed();
            return (args.messages as f64 / took.as_secs_f64(), updates);
        }
        assert!(Instant::now() < limit, "the plugin side did not finish");
        if let Some(frame) = frame {
            std::thread::sleep(frame.saturating_sub(tick.elapsed()));
        }
    }
}

fn main() {
    let args = Args::parse();
    let server = spawn_background(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            dialect: DIALECT,
            rate_limit: None,
            user_rate_limit: None,
            direct_history: false,
            max_pending_s2c_per_user: 100_000,
            ..ServerConfig::default()
        },
        AcceptAll,
    )
    .expect("the server starts");
    let url = server.url();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.spawn(echo(url.clone()));
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "messages={} window={} size=64 rounds={} one_thread={}",
        args.messages, args.window, args.rounds, args.one_thread
    );
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        let mut rates = (0.0, 0.0);
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for plugin_side in order {
            if plugin_side {
                let (rate, updates) = plugin(&url, &format!("plugin-{round}"), &args, 0);
                println!(
                    "round {round} plugin : {rate:.0} msg/s, {:.1} messages per update ({updates} updates)",
                    args.messages as f64 / updates as f64
                );
                rates.0 = rate;
            } else {
                let rate = runtime.block_on(raw(&url, &format!("raw-{round}"), &args));
                println!("round {round} raw    : {rate:.0} msg/s");
                rates.1 = rate;
            }
        }
        println!("round {round} ratio plugin / raw: {:.3}", rates.0 / rates.1);
        ratios.push(rates.0 / rates.1);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio plugin / raw: {:.3}", ratios[ratios.len() / 2]);
    let (rate, updates) = plugin(&url, "plugin-60fps", &args, 60);
    println!(
        "at 60 updates a second: {rate:.0} msg/s, {:.1} messages per update",
        args.messages as f64 / updates as f64
    );
    drop(runtime);
    server.shutdown();
}
