//! A chat bot with no window: logs in, sends, echoes, and prints one line per event.
//!
//! ```text
//! cargo run --example headless_bot                                  # own server, talks to itself
//! cargo run --example headless_bot -- --url ws://127.0.0.1:3000/websocket \
//!     --user alice --to bob --send "hi bob" --count 3 --quit-after 10
//! cargo run --example headless_bot -- --url ws://127.0.0.1:3000/websocket --user bob --echo
//! cargo run --example headless_bot -- --url wss://localhost:3443/websocket \
//!     --trust-cert assets/dev-tls/localhost.cert.pem
//! ```

use std::time::Duration;

use bevy::app::{AppExit, ScheduleRunnerPlugin};
use bevy::prelude::*;
use bevy::time::Real;
use bevy_im::prelude::*;
use clap::Parser;

/// Command line of the bot.
#[derive(Parser, Debug, Clone, Resource)]
#[command(about = "A headless bevy_im chat bot")]
struct Args {
    /// Server URL; without it the bot starts the reference server in-process.
    #[arg(long)]
    url: Option<String>,
    /// Wire dialect of the server: seed or mobileimsdk-v6.
    #[arg(long, default_value = "seed")]
    dialect: Dialect,
    /// User id to log in as.
    #[arg(long, default_value = "bot")]
    user: String,
    /// Login token.
    #[arg(long, default_value = "token")]
    token: String,
    /// Receiver of --send (default: the bot itself).
    #[arg(long)]
    to: Option<String>,
    /// Text to send once logged in; repeatable.
    #[arg(long = "send")]
    send: Vec<String>,
    /// How many times to send each text.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Send back to its sender whatever the bot receives.
    #[arg(long)]
    echo: bool,
    /// A PEM certificate to trust for `wss://` (such as the development certificate
    /// in `assets/dev-tls/`), beside the public roots.
    #[arg(long)]
    trust_cert: Option<std::path::PathBuf>,
    /// Log out and exit after this many seconds (default: run until stopped, or 5 s
    /// with the in-process server).
    #[arg(long)]
    quit_after: Option<f64>,
}

#[derive(Resource, Default)]
struct Progress {
    sent: bool,
    quitting: Option<u32>,
}

fn main() -> AppExit {
    let mut args = Args::parse();
    let server = match &args.url {
        Some(_) => None,
        None => match start_server(args.dialect) {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("{e}");
                return AppExit::error();
            }
        },
    };
    if let Some(s) = &server {
        println!("server listening url={}", s.0);
        args.url = Some(s.0.clone());
        args.quit_after.get_or_insert(5.0);
        if args.send.is_empty() && !args.echo {
            args.send.push("hello from headless_bot".into());
        }
    }
    let url = args.url.clone().unwrap_or_default();
    let mut config = ImConfig::new(url).dialect(args.dialect);
    if let Some(path) = &args.trust_cert {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        match CertificateDer::from_pem_file(path) {
            Ok(cert) => config = config.trust_certificate(cert.to_vec()),
            Err(e) => {
                eprintln!("--trust-cert {}: {e}", path.display());
                return AppExit::error();
            }
        }
    }
    App::new()
        .add_plugins(
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
                1.0 / 60.0,
            ))),
        )
        .add_plugins(ImClientPlugin::new(config))
        .insert_resource(args)
        .init_resource::<Progress>()
        .add_systems(Startup, login)
        .add_systems(Update, (print_events, send_texts, echo, quit).chain())
        .run()
}

#[cfg(feature = "server")]
struct LocalServer(String, #[allow(dead_code)] bevy_im::server::RunningServer);

#[cfg(feature = "server")]
fn start_server(dialect: Dialect) -> Result<LocalServer, String> {
    use bevy_im::server::{AcceptAll, ServerConfig, spawn_background};
    let config = ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        dialect,
        ..ServerConfig::default()
    };
    let server = spawn_background(config, AcceptAll).map_err(|e| format!("server: {e}"))?;
    Ok(LocalServer(server.url(), server))
}

#[cfg(not(feature = "server"))]
struct LocalServer(String);

#[cfg(not(feature = "server"))]
fn start_server(_: Dialect) -> Result<LocalServer, String> {
    Err(
        "no --url given and the `server` feature is off: pass --url ws://HOST:PORT/websocket"
            .into(),
    )
}

fn login(mut im: ImClient, args: Res<Args>) {
    let request = LoginRequest::new(args.user.clone(), args.token.clone()).with_app("headless_bot");
    if let Err(e) = im.login(request) {
        println!("login refused locally: {e} (code {})", e.code());
    }
}

fn send_texts(mut im: ImClient, args: Res<Args>, mut progress: ResMut<Progress>) {
    if progress.sent || !im.is_logged_in() {
        return;
    }
    progress.sent = true;
    let to = args.to.clone().unwrap_or_else(|| args.user.clone());
    for text in &args.send {
        for _ in 0..args.count {
            match im.send(Outgoing::new(to.clone(), text.clone())) {
                Ok(fp) => println!("send to={to} fp={}", fp.unwrap_or_default()),
                Err(e) => println!("send refused: {e} (code {})", e.code()),
            }
        }
    }
}

fn echo(mut im: ImClient, args: Res<Args>, mut received: MessageReader<DataReceived>) {
    if !args.echo {
        received.clear();
        return;
    }
    for msg in received.read() {
        if msg.from == args.user || msg.from == "0" {
            continue;
        }
        let reply = Outgoing::new(msg.from.clone(), msg.content.clone()).typeu(msg.typeu);
        if let Err(e) = im.send(reply) {
            println!("echo refused: {e} (code {})", e.code());
        }
    }
}

#[derive(bevy::ecs::system::SystemParam)]
struct Events<'w, 's> {
    ok: MessageReader<'w, 's, LoginSucceeded>,
    failed: MessageReader<'w, 's, LoginFailed>,
    closed: MessageReader<'w, 's, LinkClosed>,
    data: MessageReader<'w, 's, DataReceived>,
    error: MessageReader<'w, 's, ServerError>,
    lost: MessageReader<'w, 's, MessagesLost>,
    delivered: MessageReader<'w, 's, MessageDelivered>,
    kicked: MessageReader<'w, 's, Kicked>,
    relogin: MessageReader<'w, 's, ReloginStarted>,
    out: MessageReader<'w, 's, LoggedOut>,
    link_error: MessageReader<'w, 's, LinkError>,
    bad: MessageReader<'w, 's, BadFrame>,
}

fn print_events(mut e: Events) {
    // Link errors first: they explain the login failure or close that follows.
    for m in e.link_error.read() {
        println!("link error: {}", m.error);
    }
    for m in e.ok.read() {
        println!(
            "logged in user={} relogin={} first_login_time={}",
            m.user_id, m.relogin, m.first_login_time
        );
    }
    for m in e.failed.read() {
        println!("login failed code={} relogin={}", m.code.code(), m.relogin);
    }
    for m in e.closed.read() {
        println!("link closed: {}", m.reason);
    }
    for m in e.data.read() {
        println!("received from={} typeu={}: {}", m.from, m.typeu, m.content);
    }
    for m in e.error.read() {
        println!("server error code={} msg={}", m.code, m.msg);
    }
    for m in e.lost.read() {
        for f in &m.frames {
            println!("lost fp={} to={}", f.fp.as_deref().unwrap_or(""), f.to_id());
        }
    }
    for m in e.delivered.read() {
        println!("delivered fp={}", m.fp);
    }
    for m in e.kicked.read() {
        println!(
            "kicked code={} reason={}",
            m.code.code(),
            m.reason.as_deref().unwrap_or("")
        );
    }
    for m in e.relogin.read() {
        println!("relogin attempt={}", m.attempt);
    }
    for m in e.out.read() {
        println!("logged out code={}", m.code.code());
    }
    for m in e.bad.read() {
        println!("bad frame: {}", m.problem);
    }
}

fn quit(
    mut im: ImClient,
    args: Res<Args>,
    time: Res<Time<Real>>,
    mut progress: ResMut<Progress>,
    mut exit: MessageWriter<AppExit>,
) {
    match progress.quitting {
        None => {
            if args
                .quit_after
                .is_some_and(|s| time.elapsed().as_secs_f64() >= s)
            {
                im.logout();
                progress.quitting = Some(0);
            }
        }
        // Give the logout a few frames to be flushed and reported.
        Some(n) if n >= 3 => {
            exit.write(AppExit::Success);
        }
        Some(n) => progress.quitting = Some(n + 1),
    }
}
