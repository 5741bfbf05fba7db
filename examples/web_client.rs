//! `ImClientPlugin` in a browser page (wasm32 only): logs in, sends what the page asks
//! for, and reports everything it saw as JSON in `window.imReport`. People watch it in
//! the page; the browser test (`tests/it/browser.rs`) reads the report through the
//! DevTools Protocol.
//!
//! ```text
//! cargo build --example web_client --target wasm32-unknown-unknown
//! wasm-bindgen --target web --no-typescript --out-dir target/web \
//!     target/wasm32-unknown-unknown/debug/examples/web_client.wasm
//! cp examples/web_client.html target/web/index.html
//! cargo run --bin im-server &                      # ws://127.0.0.1:3000/websocket
//! python3 -m http.server -b 127.0.0.1 -d target/web 8000
//! # open http://127.0.0.1:8000/?user=ann&to=ann&send=hello
//! ```
//!
//! The page's query string:
//! - `server`: the WebSocket URL (default `ws://<page host>:3000/websocket`);
//! - `user`: who logs in (default `web-` and four random digits);
//! - `loop`: `raf` to run a frame per `requestAnimationFrame` (how a windowed Bevy
//!   game runs on the web), or `timeout` for `MinimalPlugins`' `setTimeout` runner
//!   at 60 frames a second (default `raf`);
//! - `to` and `send`: a QoS message to send once logged in.
//!
//! The page sends more when a script pushes `{to, text}` objects onto
//! `window.imCommands`; they go out in the next frame.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!(
        "web_client runs in a browser: build it with \
         `cargo build --example web_client --target wasm32-unknown-unknown` \
         (the README's Web section has the rest)"
    );
}

#[cfg(target_arch = "wasm32")]
fn main() {
    page::main();
}

#[cfg(target_arch = "wasm32")]
mod page {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use bevy::app::{PluginsState, ScheduleRunnerPlugin};
    use bevy::prelude::*;
    use bevy_im::prelude::*;
    use serde::Serialize;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::*;

    /// The page's settings, from its query string.
    #[derive(Resource, Clone, Debug)]
    struct Settings {
        server: String,
        user: String,
        raf: bool,
        first: Option<(String, String)>,
    }

    impl Settings {
        fn from_page() -> Self {
            let window = web_sys::window().expect("a page");
            let location = window.location();
            let search = location.search().unwrap_or_default();
            let params = web_sys::UrlSearchParams::new_with_str(&search).expect("a query");
            let host = location.hostname().unwrap_or_else(|_| "127.0.0.1".into());
            let server = params
                .get("server")
                .unwrap_or_else(|| format!("ws://{host}:3000/websocket"));
            let user = params
                .get("user")
                .unwrap_or_else(|| format!("web-{:04}", fastrand::u16(..10_000)));
            let first = params.get("to").zip(params.get("send"));
            Self {
                server,
                user,
                raf: params.get("loop").as_deref() != Some("timeout"),
                first,
            }
        }
    }

    #[derive(Serialize, Clone, Debug)]
    struct Received {
        from: String,
        content: String,
        fp: Option<String>,
    }

    #[derive(Serialize, Clone, Debug)]
    struct Sent {
        to: String,
        content: String,
        fp: Option<String>,
        error: Option<String>,
    }

    /// What the page saw, as `window.imReport` reads it.
    #[derive(Resource, Serialize, Default, Debug)]
    struct Report {
        user: String,
        #[serde(rename = "loop")]
        runner: &'static str,
        frames: u64,
        state: String,
        logins: u32,
        login_failures: u32,
        link_closes: u32,
        kicked: u32,
        relogins_started: u32,
        received: Vec<Received>,
        sent: Vec<Sent>,
        delivered: Vec<String>,
        lost: Vec<String>,
        rtt_ms: Option<f64>,
    }

    pub fn main() {
        let settings = Settings::from_page();
        let mut app = App::new();
        app.add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(
            Duration::from_secs_f64(1.0 / 60.0),
        )))
        .add_plugins(ImClientPlugin::new(ImConfig::new(settings.server.clone())))
        .insert_resource(Report {
            user: settings.user.clone(),
            runner: if settings.raf { "raf" } else { "timeout" },
            ..default()
        })
        .insert_resource(settings.clone())
        .add_systems(Startup, login)
        .add_systems(
            Update,
            (
                record,
                send_first.run_if(im_just_logged_in),
                send_commands.run_if(im_logged_in),
            ),
        )
        .add_systems(Last, publish);
        if settings.raf {
            app.set_runner(animation_frame_runner);
        }
        app.run();
    }

    fn login(settings: Res<Settings>, mut im: ImClient) {
        if let Err(e) = im.login(LoginRequest::new(settings.user.clone(), "token")) {
            error!("login refused: {e}");
        }
    }

    fn send_one(im: &mut ImClient, report: &mut Report, to: String, content: String) {
        let sent = im.send(Outgoing::new(to.clone(), content.clone()));
        let (fp, error) = match sent {
            Ok(fp) => (fp, None),
            Err(e) => (None, Some(e.to_string())),
        };
        report.sent.push(Sent {
            to,
            content,
            fp,
            error,
        });
    }

    fn send_first(settings: Res<Settings>, mut im: ImClient, mut report: ResMut<Report>) {
        if let Some((to, text)) = settings.first.clone()
            && !report.sent.iter().any(|s| s.content == text)
        {
            send_one(&mut im, &mut report, to, text);
        }
    }

    /// Sends what a script queued in `window.imCommands`.
    fn send_commands(mut im: ImClient, mut report: ResMut<Report>) {
        let Some(window) = web_sys::window() else {
            return;
        };
        let Ok(queue) = js_sys::Reflect::get(&window, &"imCommands".into()) else {
            return;
        };
        let Ok(queue) = queue.dyn_into::<js_sys::Array>() else {
            return;
        };
        for command in queue.splice(0, queue.length(), &JsValue::UNDEFINED).iter() {
            let field = |name: &str| {
                js_sys::Reflect::get(&command, &name.into())
                    .ok()
                    .and_then(|v| v.as_string())
            };
            if let (Some(to), Some(text)) = (field("to"), field("text")) {
                send_one(&mut im, &mut report, to, text);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        mut report: ResMut<Report>,
        mut logins: MessageReader<LoginSucceeded>,
        mut failures: MessageReader<LoginFailed>,
        mut closes: MessageReader<LinkClosed>,
        mut kicks: MessageReader<Kicked>,
        mut relogins: MessageReader<ReloginStarted>,
        mut data: MessageReader<DataReceived>,
        mut delivered: MessageReader<MessageDelivered>,
        mut lost: MessageReader<MessagesLost>,
    ) {
        report.logins += logins.read().count() as u32;
        report.login_failures += failures.read().count() as u32;
        report.link_closes += closes.read().count() as u32;
        report.kicked += kicks.read().count() as u32;
        report.relogins_started += relogins.read().count() as u32;
        for d in data.read() {
            report.received.push(Received {
                from: d.from.clone(),
                content: d.content.clone(),
                fp: d.fp.clone(),
            });
        }
        for d in delivered.read() {
            report.delivered.push(d.fp.clone());
        }
        for l in lost.read() {
            report
                .lost
                .extend(l.frames.iter().filter_map(|f| f.fp.clone()));
        }
    }

    /// Publishes the report as `window.imReport` (JSON) and in the page's text.
    fn publish(mut report: ResMut<Report>, im: ImClient, mut shown: Local<String>) {
        report.frames += 1;
        report.state = format!("{:?}", im.state());
        report.rtt_ms = im.rtt().map(|d| d.as_secs_f64() * 1000.0);
        let Ok(json) = serde_json::to_string(&*report) else {
            return;
        };
        let Some(window) = web_sys::window() else {
            return;
        };
        let _ = js_sys::Reflect::set(&window, &"imReport".into(), &json.as_str().into());
        let summary = format!(
            "{} ({}): {}, {} received, {} sent, {} delivered, {} lost",
            report.user,
            report.runner,
            report.state,
            report.received.len(),
            report.sent.len(),
            report.delivered.len(),
            report.lost.len()
        );
        if *shown != summary {
            if let Some(body) = window.document().and_then(|d| d.body()) {
                body.set_text_content(Some(&summary));
            }
            *shown = summary;
        }
    }

    /// Runs one frame per `requestAnimationFrame`, as a windowed Bevy game on the web
    /// does: no frames at all while the tab is hidden.
    fn animation_frame_runner(mut app: App) -> AppExit {
        if app.plugins_state() != PluginsState::Cleaned {
            app.finish();
            app.cleanup();
        }
        type Frame = Rc<RefCell<Option<Closure<dyn FnMut()>>>>;
        fn request(frame: &Frame) {
            if let (Some(window), Some(callback)) = (web_sys::window(), frame.borrow().as_ref()) {
                let _ = window.request_animation_frame(callback.as_ref().unchecked_ref());
            }
        }
        let frame: Frame = Rc::new(RefCell::new(None));
        let next = frame.clone();
        *frame.borrow_mut() = Some(Closure::new(move || {
            app.update();
            if app.should_exit().is_none() {
                request(&next);
            }
        }));
        request(&frame);
        AppExit::Success
    }
}
