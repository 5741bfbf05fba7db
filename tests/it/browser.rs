//! The plugin in a real browser: headless Chromium runs the `web_client` example page
//! (`ImClientPlugin` in wasm32) against `im-server` on 127.0.0.1, driven through the
//! Chrome DevTools Protocol. Each test is one scenario of the page's life: login and a
//! QoS round trip with a native bot, a server restart, a kickout, a tab hidden by a
//! real tab switch for ten minutes, a frozen and resumed page.
//!
//! Ignored by a plain `cargo test`: they need Chromium and the built page. `.ci/run`
//! builds the page and runs them:
//!
//! ```text
//! BEVY_IM_WEB_DIR=target/web cargo test --all-features --test it -- --ignored browser::
//! ```
//!
//! `BEVY_IM_WEB_DIR` holds `index.html`, `web_client.js` and `web_client_bg.wasm`;
//! `CHROMIUM` names the browser (default `/usr/bin/chromium`); `BEVY_IM_HIDDEN_SECS`
//! how long the tab stays hidden (default 600).
#![cfg(all(unix, feature = "server"))]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Recorder;
use bevy_im::protocol::{Dialect, Frame, ServerKind};
use bevy_im::server::{RunningServer, ServerConfig, spawn_background};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------
// The DevTools Protocol
// ---------------------------------------------------------------------------------

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A DevTools Protocol client on the browser's WebSocket: calls with ids, answers
/// matched by id (events are not needed here and are dropped).
struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next: AtomicU64,
    /// The pages' uncaught exceptions and console errors and warnings, as they came.
    console: Arc<Mutex<Vec<String>>>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the DevTools socket");
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let answers = pending.clone();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = console.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = value.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = answers.lock().unwrap().remove(&id) {
                        let _ = tx.send(value);
                    }
                    continue;
                }
                let params = &value["params"];
                let line = match value["method"].as_str() {
                    Some("Runtime.exceptionThrown") => {
                        format!("exception: {}", params["exceptionDetails"])
                    }
                    Some("Runtime.consoleAPICalled")
                        if matches!(params["type"].as_str(), Some("error" | "warning")) =>
                    {
                        format!("console {}: {}", params["type"], params["args"])
                    }
                    _ => continue,
                };
                log.lock().unwrap().push(line);
            }
        });
        Cdp {
            out,
            pending,
            next: AtomicU64::new(1),
            console,
        }
    }

    /// Calls `method`, on the page of `session` if given; panics on an error answer.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            request["sessionId"] = s.into();
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out
            .send(Message::text(request.to_string()))
            .expect("the DevTools socket is open");
        let answer = tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer in {CALL_TIMEOUT:?}"))
            .expect("the DevTools socket is open");
        if let Some(error) = answer.get("error") {
            panic!("{method}: {error}");
        }
        answer["result"].clone()
    }

    /// Opens `url` in a new tab of the browser's window and attaches to it.
    async fn open(&self, url: &str) -> Tab {
        let created = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target = created["targetId"].as_str().unwrap().to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        self.call(Some(&session), "Runtime.enable", json!({})).await;
        Tab { target, session }
    }

    /// Brings `tab` to the front: the browser's other tabs are hidden.
    async fn activate(&self, tab: &Tab) {
        self.call(
            None,
            "Target.activateTarget",
            json!({ "targetId": tab.target }),
        )
        .await;
    }

    /// Evaluates `expression` in `tab` and returns its value.
    async fn eval(&self, tab: &Tab, expression: &str) -> Value {
        let result = self
            .call(
                Some(&tab.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        result["result"]["value"].clone()
    }

    /// The page's `window.imReport`, or `Null` before its first frame.
    async fn report(&self, tab: &Tab) -> Value {
        match self.eval(tab, "window.imReport || null").await {
            Value::String(json) => serde_json::from_str(&json).expect("the report is JSON"),
            other => other,
        }
    }

    /// Queues a QoS message for the page's game to send in its next frame.
    async fn command(&self, tab: &Tab, to: &str, text: &str) {
        let command = json!({ "to": to, "text": text });
        self.eval(tab, &format!("window.imCommands.push({command}); true"))
            .await;
    }

    /// Polls the page's report every 200 ms until `done` holds; panics after `limit`
    /// with the last report.
    async fn until(
        &self,
        tab: &Tab,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let report = self.report(tab).await;
            if done(&report) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; the page reports {report}; console: {:?}",
                self.console.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One tab: its target and the session attached to it.
struct Tab {
    target: String,
    session: String,
}

// ---------------------------------------------------------------------------------
// The browser, the page's files, the server
// ---------------------------------------------------------------------------------

/// A headless Chromium with its own profile, killed on drop. No flag turns off
/// throttling of hidden pages: the browser does what it does for players.
struct Browser {
    child: Child,
    profile: PathBuf,
    ws_url: String,
}

impl Browser {
    fn launch() -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "bevy_im-chromium-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                // WebGL2 for the chat lobby, in software: there is no GPU here.
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--window-size=1240,760",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        let mut browser = Browser {
            child,
            profile,
            ws_url: String::new(),
        };
        // Chromium writes its port and the browser's path here once it listens.
        let port_file = browser.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    browser.ws_url = format!("ws://127.0.0.1:{port}{path}");
                    return browser;
                }
            }
            assert!(Instant::now() < deadline, "Chromium did not start in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The page's files served over HTTP by Python's `http.server` on 127.0.0.1,
/// stopped on drop.
struct Files {
    child: Child,
    port: u16,
}

impl Files {
    fn serve() -> Files {
        let dir = std::env::var("BEVY_IM_WEB_DIR")
            .expect("BEVY_IM_WEB_DIR: the built page (see this file's docs)");
        assert!(
            PathBuf::from(&dir).join("web_client_bg.wasm").exists(),
            "{dir} has no web_client_bg.wasm: build the page first"
        );
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&dir)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said {line:?}"));
        Files { child, port }
    }

    #[cfg(feature = "testing")]
    fn lobby(&self, server: &str, name: &str, script: &str) -> String {
        format!(
            "http://127.0.0.1:{}/lobby/index.html?url={server}&name={name}&script={}&script_settle=0.2",
            self.port,
            script.replace(' ', "%20")
        )
    }

    fn page(&self, server: &str, user: &str, runner: &str) -> String {
        format!(
            "http://127.0.0.1:{}/index.html?server={server}&user={user}&loop={runner}",
            self.port
        )
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server of the scenarios: upstream's dialect, its default timeouts (a session
/// that sends nothing for 11 s is dropped), and an ACK to a sender only once the
/// receiver acknowledged, so an ACK proves the receiving page took the message in.
fn server_config(listen: &str) -> ServerConfig {
    ServerConfig {
        listen: listen.parse().unwrap(),
        dialect: Dialect::Seed,
        ack_on_receipt: true,
        shutdown_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

fn start_server(recorder: &Arc<Recorder>) -> RunningServer {
    spawn_background(server_config("127.0.0.1:0"), recorder.clone()).expect("im-server")
}

// ---------------------------------------------------------------------------------
// A native bot
// ---------------------------------------------------------------------------------

/// What the bot saw.
#[derive(Default, Debug)]
struct Seen {
    /// Data frames received, in order.
    data: Vec<Frame>,
    /// Fingerprints the server ACKed to the bot.
    acks: Vec<String>,
    closed: bool,
}

/// A native player on a raw WebSocket: keeps its session alive, ACKs what it receives
/// (unless deaf), echoes it back with QoS when asked, and sends on command.
struct Bot {
    user: String,
    seen: Arc<Mutex<Seen>>,
    deaf: Arc<AtomicBool>,
    out: mpsc::UnboundedSender<Frame>,
}

impl Bot {
    async fn start(url: &str, user: &str, echo: bool) -> Bot {
        let mut client = crate::support::logged_in(url, user).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let deaf = Arc::new(AtomicBool::new(false));
        let (out, mut rx) = mpsc::unbounded_channel::<Frame>();
        let (s, d, me) = (seen.clone(), deaf.clone(), user.to_owned());
        tokio::spawn(async move {
            let mut keepalive = tokio::time::interval(Duration::from_secs(3));
            loop {
                tokio::select! {
                    _ = keepalive.tick() => client.send(&Frame::keepalive(&me)).await,
                    Some(frame) = rx.recv() => client.send(&frame).await,
                    event = client.next_event_within(Duration::from_secs(3600)) => {
                        let Some(crate::support::Event::Text(text)) = event else {
                            s.lock().unwrap().closed = true;
                            return;
                        };
                        let Ok(frame) = Frame::decode(&text) else { continue };
                        match frame.server_kind(Dialect::Seed) {
                            ServerKind::Data => {
                                if frame.qos && !d.load(Ordering::SeqCst) {
                                    client.send(&Frame::ack_of(&frame).unwrap()).await;
                                }
                                if echo {
                                    let from = frame.from.clone().unwrap_or_default();
                                    let reply = format!("echo: {}", frame.content());
                                    client.send(&Frame::data(&me, &from, reply, true, None, 0)).await;
                                }
                                s.lock().unwrap().data.push(frame);
                            }
                            ServerKind::Ack => s.lock().unwrap().acks.push(frame.content().to_owned()),
                            _ => {}
                        }
                    }
                }
            }
        });
        Bot {
            user: user.to_owned(),
            seen,
            deaf,
            out,
        }
    }

    /// Sends a QoS message; returns its fingerprint.
    fn send(&self, to: &str, text: &str) -> String {
        let frame = Frame::data(&self.user, to, text, true, None, 0);
        let fp = frame.fp.clone().unwrap();
        self.out.send(frame).expect("the bot runs");
        fp
    }

    fn got(&self, from: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .data
            .iter()
            .filter(|f| f.from.as_deref() == Some(from))
            .map(|f| f.content().to_owned())
            .collect()
    }

    fn acked(&self, fp: &str) -> bool {
        self.seen.lock().unwrap().acks.iter().any(|a| a == fp)
    }
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn strings(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn received(report: &Value) -> Vec<(String, String)> {
    report["received"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap_or_default().to_owned(),
                r["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn sent_fp(report: &Value, content: &str) -> Option<String> {
    report["sent"]
        .as_array()?
        .iter()
        .find(|s| s["content"] == content)
        .and_then(|s| s["fp"].as_str().map(str::to_owned))
}

fn logged_in(report: &Value) -> bool {
    report["state"] == "LoggedIn"
}

fn count(report: &Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or(0)
}

fn hidden_secs() -> u64 {
    std::env::var("BEVY_IM_HIDDEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

const LOGIN_WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------

/// 1. Login, a QoS message to a native bot and its echo back, delivery reported both
///    ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and the built page; .ci/run runs it"]
async fn login_and_a_qos_round_trip_with_a_native_bot() {
    let recorder = Recorder::new();
    let server = start_server(&recorder);
    let bot = Bot::start(&server.url(), "bot", true).await;
    let (files, browser) = (Files::serve(), Browser::launch());
    let cdp = Cdp::connect(&browser.ws_url).await;
    let tab = cdp.open(&files.page(&server.url(), "web1", "raf")).await;
    cdp.until(&tab, "login", LOGIN_WAIT, logged_in).await;
    cdp.command(&tab, "bot", "hello from the browser").await;
    let report = cdp
        .until(
            &tab,
            "the echo and the delivery",
            Duration::from_secs(10),
            |r| {
                received(r).contains(&("bot".into(), "echo: hello from the browser".into()))
                    && sent_fp(r, "hello from the browser")
                        .is_some_and(|fp| strings(r, "delivered").contains(&fp))
            },
        )
        .await;
    assert_eq!(bot.got("web1"), ["hello from the browser"]);
    assert!(strings(&report, "lost").is_empty(), "{report}");
    // The page ACKed the echo: the server ACKs the bot only on the page's receipt.
    wait_for("the page's ACK of the echo", Duration::from_secs(5), || {
        !bot.seen.lock().unwrap().acks.is_empty()
    })
    .await;
    println!("scenario 1: {report}");
    server.shutdown();
}

/// 2. The server restarts: the page logs in again by itself, and a message sent after
///    that arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and the built page; .ci/run runs it"]
async fn the_page_logs_in_again_after_a_server_restart() {
    let recorder = Recorder::new();
    let server = start_server(&recorder);
    let (addr, url) = (server.local_addr(), server.url());
    let (files, browser) = (Files::serve(), Browser::launch());
    let cdp = Cdp::connect(&browser.ws_url).await;
    let tab = cdp.open(&files.page(&url, "web2", "raf")).await;
    cdp.until(&tab, "login", LOGIN_WAIT, logged_in).await;

    server.shutdown();
    cdp.until(&tab, "the link's loss", Duration::from_secs(10), |r| {
        count(r, "link_closes") >= 1 && !logged_in(r)
    })
    .await;
    let server = spawn_background(server_config(&addr.to_string()), recorder.clone())
        .expect("the server on the same address");
    let bot = Bot::start(&url, "bot", false).await;
    let report = cdp
        .until(&tab, "the re-login", LOGIN_WAIT, |r| {
            logged_in(r) && count(r, "logins") == 2
        })
        .await;
    assert!(count(&report, "relogins_started") >= 1, "{report}");
    cdp.command(&tab, "bot", "after the restart").await;
    wait_for(
        "the message after the restart",
        Duration::from_secs(10),
        || bot.got("web2") == ["after the restart"],
    )
    .await;
    let report = cdp
        .until(&tab, "its delivery", Duration::from_secs(10), |r| {
            sent_fp(r, "after the restart").is_some_and(|fp| strings(r, "delivered").contains(&fp))
        })
        .await;
    println!("scenario 2: {report}");
    server.shutdown();
}

/// 3. A second login of the same user kicks the page out: `Kicked`, and no re-login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and the built page; .ci/run runs it"]
async fn a_second_login_kicks_the_page_out_for_good() {
    let recorder = Recorder::new();
    let server = start_server(&recorder);
    let (files, browser) = (Files::serve(), Browser::launch());
    let cdp = Cdp::connect(&browser.ws_url).await;
    let tab = cdp.open(&files.page(&server.url(), "web3", "raf")).await;
    cdp.until(&tab, "login", LOGIN_WAIT, logged_in).await;

    let _other = Bot::start(&server.url(), "web3", false).await;
    cdp.until(&tab, "the kickout", Duration::from_secs(10), |r| {
        count(r, "kicked") == 1 && !logged_in(r)
    })
    .await;
    // Longer than the first re-login attempt could wait (the spread, then backoff).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = cdp.report(&tab).await;
    assert_eq!(count(&report, "logins"), 1, "{report}");
    assert_eq!(count(&report, "relogins_started"), 0, "{report}");
    assert!(!logged_in(&report), "{report}");
    assert!(server.handle().is_online("web3"), "the second login stays");
    let logins = recorder
        .events()
        .iter()
        .filter(|e| e.starts_with("login web3"))
        .count();
    assert_eq!(logins, 2, "{:?}", recorder.events());
    println!("scenario 3: {report}");
    server.shutdown();
}

/// Waits until `tab`'s document reads `state` (`visible` or `hidden`).
async fn visibility(cdp: &Cdp, tab: &Tab, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = cdp.eval(tab, "document.visibilityState").await;
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the tab stays {now}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 4. Two pages hidden by a real tab switch (a third tab brought to the front) for ten
///    minutes: one whose frames come from `requestAnimationFrame` (none while hidden),
///    one on `MinimalPlugins`' `setTimeout` runner (throttled to one frame a second,
///    then a minute). Both stay logged in, ACK every message sent to them while
///    hidden within seconds, and hand each to the game once visible, exactly once;
///    the `setTimeout` game sends while hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and the built page; .ci/run runs it"]
async fn hidden_tabs_stay_logged_in_and_lose_nothing() {
    let recorder = Recorder::new();
    let server = start_server(&recorder);
    let url = server.url();
    let bot = Bot::start(&url, "bot", false).await;
    let (files, browser) = (Files::serve(), Browser::launch());
    let cdp = Cdp::connect(&browser.ws_url).await;
    let users = ["hidden-raf", "hidden-timeout"];
    let raf = cdp.open(&files.page(&url, users[0], "raf")).await;
    let timeout = cdp.open(&files.page(&url, users[1], "timeout")).await;
    let tabs = [&raf, &timeout];
    for tab in tabs {
        cdp.activate(tab).await;
        cdp.until(tab, "login", LOGIN_WAIT, logged_in).await;
    }
    let front = cdp.open("about:blank").await;
    cdp.activate(&front).await;
    for tab in tabs {
        visibility(&cdp, tab, "hidden").await;
    }
    let frames_before: Vec<u64> = {
        let mut v = Vec::new();
        for tab in tabs {
            v.push(count(&cdp.report(tab).await, "frames"));
        }
        v
    };

    let hidden = Duration::from_secs(hidden_secs());
    let start = Instant::now();
    let mut sent: [Vec<String>; 2] = Default::default();
    let mut slowest_ack = Duration::ZERO;
    let mut round = 0;
    let mut game_sends = Vec::new();
    while start.elapsed() < hidden {
        let t = Instant::now();
        let fps: Vec<String> = users
            .iter()
            .zip(sent.iter_mut())
            .map(|(user, texts)| {
                let text = format!("to {user} while hidden, round {round}");
                texts.push(text.clone());
                bot.send(user, &text)
            })
            .collect();
        wait_for("the hidden pages' ACKs", Duration::from_secs(10), || {
            fps.iter().all(|fp| bot.acked(fp))
        })
        .await;
        slowest_ack = slowest_ack.max(t.elapsed());
        // The games send while hidden: once early, once after five minutes (when the
        // browser allows the `setTimeout` runner one frame a minute).
        if round == 1 || (start.elapsed() > Duration::from_secs(330) && game_sends.len() < 4) {
            for (tab, user) in tabs.iter().zip(users) {
                let text = format!("from {user} while hidden, round {round}");
                cdp.command(tab, "bot", &text).await;
                game_sends.push((user, text));
            }
        }
        round += 1;
        let next = start + Duration::from_secs(30) * round;
        tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
    }
    // The `setTimeout` game's sends reached the bot while its page was still hidden
    // (its frames come at most a minute apart).
    for (user, text) in game_sends.iter().filter(|(u, _)| *u == users[1]) {
        wait_for("the hidden game's message", Duration::from_secs(75), || {
            bot.got(user).contains(text)
        })
        .await;
    }
    visibility(&cdp, &timeout, "hidden").await;
    let events = recorder.events();
    assert!(
        !events.iter().any(|e| e.starts_with("logout hidden-")),
        "the server dropped a hidden page: {events:?}"
    );
    assert!(
        recorder.lost.lock().unwrap().is_empty(),
        "server-side losses"
    );
    println!(
        "hidden {:.0} s, {round} rounds, slowest ACK {:.2} s",
        start.elapsed().as_secs_f64(),
        slowest_ack.as_secs_f64()
    );

    for (i, tab) in tabs.iter().enumerate() {
        cdp.activate(tab).await;
        visibility(&cdp, tab, "visible").await;
        let expected: Vec<(String, String)> = sent[i]
            .iter()
            .map(|t| ("bot".to_owned(), t.clone()))
            .collect();
        let report = cdp
            .until(
                tab,
                "the messages in the game",
                Duration::from_secs(10),
                |r| received(r).len() >= expected.len(),
            )
            .await;
        assert_eq!(received(&report), expected, "{report}");
        assert_eq!(count(&report, "logins"), 1, "{report}");
        assert_eq!(count(&report, "link_closes"), 0, "{report}");
        assert!(logged_in(&report), "{report}");
        println!(
            "{}: frames {} before hiding, {} now; {}",
            users[i],
            frames_before[i],
            count(&report, "frames"),
            report
        );
    }
    // The `requestAnimationFrame` game ran no frame while hidden: its sends go now.
    for (user, text) in game_sends.iter().filter(|(u, _)| *u == users[0]) {
        wait_for("the shown game's message", Duration::from_secs(10), || {
            bot.got(user).contains(text)
        })
        .await;
    }
    server.shutdown();
}

/// 5. The page is frozen (Page Lifecycle) and resumed: the link's loss is reported,
///    the page logs in again, and each QoS message pending at the freeze ends
///    delivered or lost, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and the built page; .ci/run runs it"]
async fn a_frozen_page_comes_back_and_settles_every_message_once() {
    let recorder = Recorder::new();
    let server = start_server(&recorder);
    let url = server.url();
    let bot = Bot::start(&url, "bot", false).await;
    let (files, browser) = (Files::serve(), Browser::launch());
    let cdp = Cdp::connect(&browser.ws_url).await;
    let tab = cdp.open(&files.page(&url, "web5", "raf")).await;
    cdp.until(&tab, "login", LOGIN_WAIT, logged_in).await;

    // The bot stops ACKing: the server ACKs the page only on the bot's receipt, so
    // the page's messages are pending when it freezes.
    bot.deaf.store(true, Ordering::SeqCst);
    let texts = ["pending at the freeze 1", "pending at the freeze 2"];
    for text in texts {
        cdp.command(&tab, "bot", text).await;
    }
    let report = cdp
        .until(&tab, "the sends", Duration::from_secs(10), |r| {
            texts.iter().all(|t| sent_fp(r, t).is_some())
        })
        .await;
    let fps: Vec<String> = texts.iter().filter_map(|t| sent_fp(&report, t)).collect();
    assert!(strings(&report, "delivered").is_empty(), "{report}");
    cdp.call(
        Some(&tab.session),
        "Page.setWebLifecycleState",
        json!({ "state": "frozen" }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    bot.deaf.store(false, Ordering::SeqCst);
    cdp.call(
        Some(&tab.session),
        "Page.setWebLifecycleState",
        json!({ "state": "active" }),
    )
    .await;
    // A resumed page stays hidden (Chromium 156, headless) until shown again, as a
    // player's click on its tab would.
    let other = cdp.open("about:blank").await;
    cdp.activate(&other).await;
    cdp.activate(&tab).await;
    visibility(&cdp, &tab, "visible").await;
    cdp.until(&tab, "the re-login after the resume", LOGIN_WAIT, |r| {
        count(r, "link_closes") >= 1 && count(r, "logins") == 2 && logged_in(r)
    })
    .await;
    let report = cdp
        .until(
            &tab,
            "an outcome for each message",
            Duration::from_secs(60),
            |r| {
                let (d, l) = (strings(r, "delivered"), strings(r, "lost"));
                fps.iter().all(|fp| d.contains(fp) || l.contains(fp))
            },
        )
        .await;
    let outcomes: Vec<String> = strings(&report, "delivered")
        .into_iter()
        .chain(strings(&report, "lost"))
        .collect();
    for fp in &fps {
        let n = outcomes.iter().filter(|o| *o == fp).count();
        assert_eq!(n, 1, "{fp} has {n} outcomes: {report}");
    }
    println!("scenario 5: {report}");
    server.shutdown();
}

/// 6. The chat lobby in the browser (WebGL2, in software) and a native player in the
///    same room: each sees the other in the member list and reads the other's line.
#[cfg(feature = "testing")]
#[test]
#[ignore = "needs Chromium and the built pages; .ci/run runs it"]
fn the_chat_lobby_page_chats_with_a_native_player() {
    use bevy_im::client::DataReceived;
    use bevy_im::plugin::{ImClient, ImConfig};
    use bevy_im::testing::ImTestApp;

    let server =
        spawn_background(server_config("127.0.0.1:0"), Recorder::new()).expect("im-server");
    let url = server.url();
    let mut native = ImTestApp::connected(ImConfig::new(url.clone()));
    native.start_login("native", "token");
    assert!(
        native.update_until(5000, |t| t.core().is_logged_in()),
        "native login"
    );
    native
        .run(|mut im: ImClient| im.join_room("lobby"))
        .expect("a join request");
    assert!(
        native.update_until(5000, |t| t.core().rooms().contains("lobby")),
        "the native player in the lobby"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (files, browser) = (Files::serve(), Browser::launch());
    let (cdp, tab) = runtime.block_on(async {
        let cdp = Cdp::connect(&browser.ws_url).await;
        let tab = cdp
            .open(&files.lobby(&url, "webby", "hello from the browser"))
            .await;
        (cdp, tab)
    });
    // The page's line reaches the native player (the page loads a debug build of
    // Bevy's renderer: it takes a while).
    let mut heard = Vec::new();
    let got_line = native.update_until(60_000, |t| {
        heard.extend(t.heard::<DataReceived>());
        heard
            .iter()
            .any(|d| d.from == "webby" && d.content == "hello from the browser" && d.room.is_some())
    });
    let console = cdp.console.lock().unwrap().clone();
    assert!(got_line, "the browser's line; console: {console:?}");
    assert!(
        native
            .core()
            .rooms()
            .get("lobby")
            .is_some_and(|r| r.is_member("webby")),
        "the browser player in the native player's member list"
    );
    native
        .run(|mut im: ImClient| im.send_to_room("lobby", "hi from native"))
        .expect("a room message");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        native.step();
        let report = runtime.block_on(cdp.report(&tab));
        let line = report["lines"].as_array().is_some_and(|lines| {
            lines
                .iter()
                .any(|l| l["from"] == "native" && l["text"] == "hi from native")
        });
        let member = report["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|u| u == "native"));
        if line && member {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "the native line in the page: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("scenario 6: {report}");
    // For the README: `BEVY_IM_WEB_SHOT=path.png` saves the page as the player sees it.
    if let Ok(path) = std::env::var("BEVY_IM_WEB_SHOT") {
        use base64::Engine;
        let shot = runtime.block_on(cdp.call(
            Some(&tab.session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        ));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("a base64 PNG");
        std::fs::write(&path, png).expect("the screenshot written");
    }
    drop(browser);
    server.shutdown();
}
