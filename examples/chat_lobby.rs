//! The chat lobby: a 2D room where every player is an avatar with a name tag, with
//! the crate's chat panel (`bevy_im::ui::ImChatUiPlugin`) beside it.
//!
//! ```text
//! cargo run --example chat_lobby --features ui                  # own server + 3 bots
//! cargo run --example chat_lobby --features ui -- --url ws://127.0.0.1:PORT/websocket --name bob
//! ```
//!
//! With no `--url` it starts the reference server in the same process (in-memory
//! store) and prints its URL, so a second copy can join with `--url`; three bots
//! walk around and chat. Arrow keys or WASD move, Enter opens the chat line, Enter
//! sends it, Escape leaves it; a click on a member sends them direct messages (a
//! second click goes back to the room). Positions travel as small room messages
//! without QoS, a few per second and only while moving, and are smoothed on the
//! other side.
//!
//! In a browser (wasm32) the same options come from the page's query string
//! (`?url=ws://127.0.0.1:3000/websocket&name=ann`), and the page joins a server that
//! runs elsewhere (default: port 3000 of the page's host); the README's Web section
//! has the commands.
//!
//! `--script TEXT` is for CI: it logs in at once, walks a little, types TEXT into
//! the chat line and sends it, and once the server has relayed it takes a
//! screenshot (`--screenshot PATH`) and exits with success (or fails after
//! `--script-timeout` seconds).

#[path = "chat_lobby/game.rs"]
mod game;

use std::path::PathBuf;
use std::time::Duration;

use bevy::input_focus::{AutoFocus, FocusCause, InputFocus};
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured, save_to_disk};
use bevy::text::{EditableText, FontSize, TextCursorStyle, TextEdit};
use bevy::time::Real;
use bevy_im::prelude::*;
#[cfg(not(target_arch = "wasm32"))]
use bevy_im::server::{AcceptAll, RunningServer, ServerConfig, spawn_background};
use bevy_im::ui::{
    BadgeState, ChatPanel, Delivery, ImChatInput, ImChatSystems, ImChatUiPlugin, ImChatUiSettings,
    LineKind, PanelAnchor, SubmitChatInput, user_color,
};
use clap::Parser;
use game::{Avatar, LobbyPlugin, LobbySettings, LobbyStats, LobbySystems, LocalAvatar, MoveInput};

/// The window's title (the CI check looks for it).
const TITLE: &str = "bevy_im chat lobby";
const PANEL_WIDTH: f32 = 440.0;
const MARGIN: f32 = 12.0;

/// The chat lobby example.
#[derive(Parser, Debug, Clone, Resource)]
#[command(about = "bevy_im's chat lobby: a 2D room with chat")]
struct Args {
    /// Join this server instead of starting one, such as ws://127.0.0.1:3000/websocket.
    #[arg(long)]
    url: Option<String>,
    /// The server's dialect: seed or mobileimsdk-v6.
    #[arg(long, default_value = "seed")]
    dialect: Dialect,
    /// The player's name (default: player-NNN).
    #[arg(long)]
    name: Option<String>,
    /// How many bots (default: 3 with the own server, 0 with --url).
    #[arg(long)]
    bots: Option<usize>,
    /// The lobby room.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// For CI: log in at once, send this line through the chat input, and once it
    /// is delivered take a screenshot and exit.
    #[arg(long)]
    script: Option<String>,
    /// Where --script saves the screenshot.
    #[arg(long, default_value = "chat_lobby.png")]
    screenshot: PathBuf,
    /// How long --script waits after the delivery before the screenshot (for the
    /// bots to answer and walk on).
    #[arg(long, default_value_t = 2.5)]
    script_settle: f64,
    /// --script fails after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    script_timeout: f64,
}

#[derive(States, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
enum Screen {
    #[default]
    Login,
    Lobby,
}

/// The login screen's prefilled values and message.
#[derive(Resource, Debug, Clone)]
struct LoginForm {
    name: String,
    url: String,
    notice: Option<String>,
}

#[derive(Component)]
struct NameField;

#[derive(Component)]
struct UrlField;

#[derive(Component)]
struct LoginButton;

#[derive(Component)]
struct LoginNotice;

#[derive(Component)]
struct Hud;

#[derive(Component)]
struct LobbyCamera;

/// Says a line of the script's progress: on the terminal, or in the browser's console.
fn say(line: String) {
    if cfg!(target_arch = "wasm32") {
        info!("{line}");
    } else {
        println!("{line}");
    }
}

/// The options: the command line, or in a browser the page's query string
/// (`?name=ann&script=hi` reads as `--name ann --script hi`).
#[cfg(not(target_arch = "wasm32"))]
fn args() -> Args {
    Args::parse()
}

#[cfg(target_arch = "wasm32")]
fn args() -> Args {
    let search = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    let mut argv = vec!["chat_lobby".to_owned()];
    for pair in search
        .trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            js_sys::decode_uri_component(&s.replace('+', " "))
                .map(String::from)
                .unwrap_or_else(|_| s.to_owned())
        };
        argv.push(format!("--{}", decode(key).replace('_', "-")));
        if !value.is_empty() {
            argv.push(decode(value));
        }
    }
    Args::try_parse_from(&argv).unwrap_or_else(|e| {
        error!("chat_lobby: the page's options: {e}");
        Args::parse_from(["chat_lobby"])
    })
}

/// A server of the example's own: none in a browser.
#[cfg(target_arch = "wasm32")]
type OwnServer = ();
#[cfg(not(target_arch = "wasm32"))]
type OwnServer = RunningServer;

/// The server: the one given, or in a browser port 3000 of the page's host.
#[cfg(target_arch = "wasm32")]
fn server_url(args: &Args) -> Result<(String, Option<OwnServer>), AppExit> {
    let url = args.url.clone().unwrap_or_else(|| {
        let host = web_sys::window()
            .and_then(|w| w.location().hostname().ok())
            .unwrap_or_else(|| "127.0.0.1".into());
        format!("ws://{host}:3000/websocket")
    });
    Ok((url, None))
}

/// The server: the one given, or the reference server started in this process (kept
/// by `main` while the app runs).
#[cfg(not(target_arch = "wasm32"))]
fn server_url(args: &Args) -> Result<(String, Option<OwnServer>), AppExit> {
    match &args.url {
        Some(url) => Ok((url.clone(), None)),
        None => {
            let config = ServerConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                dialect: args.dialect,
                ..ServerConfig::default()
            };
            match spawn_background(config, AcceptAll) {
                Ok(server) => {
                    let url = server.url();
                    println!("chat_lobby: im-server listening at {url}");
                    let dialect = match args.dialect {
                        Dialect::Seed => String::new(),
                        other => format!(" --dialect {other}"),
                    };
                    println!(
                        "chat_lobby: join from another terminal (on this machine) with\n  \
                         cargo run --example chat_lobby --features ui -- --url {url}{dialect}"
                    );
                    Ok((url, Some(server)))
                }
                Err(e) => {
                    eprintln!("chat_lobby: cannot start the server: {e}");
                    Err(AppExit::error())
                }
            }
        }
    }
}

fn main() -> AppExit {
    let args = args();
    // The server lives as long as `main`: the app runs inside it.
    let (url, _server) = match server_url(&args) {
        Ok(found) => found,
        Err(exit) => return exit,
    };
    let bots = args.bots.unwrap_or(if args.url.is_some() { 0 } else { 3 });
    // Bots of a copy joining someone else's server get a suffix, so that they do
    // not kick that server's own bots out (same name, second login).
    let suffix = match &args.url {
        Some(_) => format!("-{}", fastrand::u16(10..100)),
        None => String::new(),
    };
    let bot_names: Vec<String> = ["ada", "bo", "cy", "dee", "eli", "fox", "gus", "hal"]
        .iter()
        .cycle()
        .enumerate()
        .take(bots)
        .map(|(i, n)| match i / 8 {
            0 => format!("{n}-bot{suffix}"),
            k => format!("{n}{k}-bot{suffix}"),
        })
        .collect();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("player-{}", fastrand::u16(100..1000)));
    let config = ImConfig::new(url.clone()).dialect(args.dialect);

    let mut app = App::new();
    app.add_plugins(DefaultPlugins.set(WindowPlugin {
        primary_window: Some(Window {
            title: TITLE.into(),
            resolution: (1200, 720).into(),
            ..default()
        }),
        ..default()
    }))
    .add_plugins(ImClientPlugin::new(config.clone()))
    .add_plugins(
        ImChatUiPlugin::new(args.room.clone()).with_settings(ImChatUiSettings {
            visible: false,
            anchor: PanelAnchor::TopRight,
            margin: MARGIN,
            width: PANEL_WIDTH,
            height: 720.0 - 2.0 * MARGIN,
            ..default()
        }),
    )
    .add_plugins(LobbyPlugin {
        settings: LobbySettings::new(args.room.clone()),
    })
    .init_state::<Screen>()
    .insert_resource(ClearColor(Color::srgb(0.05, 0.06, 0.08)))
    .insert_resource(LoginForm {
        name,
        url,
        notice: None,
    })
    .add_systems(
        Startup,
        move |mut commands: Commands, settings: Res<LobbySettings>| {
            setup_world(&mut commands, &settings);
            game::spawn_bots(&mut commands, &config, &bot_names, 7);
        },
    )
    .add_systems(OnEnter(Screen::Login), spawn_login)
    .add_systems(OnEnter(Screen::Lobby), spawn_hud)
    .add_systems(OnExit(Screen::Login), hide_or_show_chat::<true>)
    .add_systems(OnEnter(Screen::Login), hide_or_show_chat::<false>)
    .add_systems(
        Update,
        (
            login_screen.run_if(in_state(Screen::Login)),
            keyboard_move
                .before(LobbySystems)
                .run_if(in_state(Screen::Lobby)),
            (kicked_back_to_login.after(ImChatSystems), hud).run_if(in_state(Screen::Lobby)),
            (dress_avatars, camera_beside_panel),
        ),
    );
    if let Some(text) = args.script.clone() {
        app.insert_resource(Script::new(text, &args))
            .add_systems(Update, run_script.after(keyboard_move).before(LobbySystems));
    }
    #[cfg(target_arch = "wasm32")]
    app.add_systems(Last, publish_report);
    app.insert_resource(args);
    app.run()
}

/// In a browser: what the player sees, as JSON in `window.imReport` (read by the
/// browser test): the connection, the room's members, the chat lines.
#[cfg(target_arch = "wasm32")]
fn publish_report(panel: Res<ChatPanel>, im: ImClient, mut last: Local<String>) {
    let report = serde_json::json!({
        "state": format!("{:?}", im.state()),
        "members": panel.members().map(|(user, _)| user).collect::<Vec<_>>(),
        "lines": panel
            .lines()
            .map(|l| serde_json::json!({ "from": l.from, "text": l.text }))
            .collect::<Vec<_>>(),
    })
    .to_string();
    if *last != report {
        if let Some(window) = web_sys::window() {
            let _ = js_sys::Reflect::set(&window, &"imReport".into(), &report.as_str().into());
        }
        *last = report;
    }
}

fn setup_world(commands: &mut Commands, settings: &LobbySettings) {
    commands.spawn((Camera2d, LobbyCamera));
    let size = settings.half_size * 2.0;
    // The floor, its border and a faint grid.
    commands.spawn((
        Sprite::from_color(Color::srgb(0.3, 0.34, 0.42), size + Vec2::splat(8.0)),
        Transform::from_xyz(0.0, 0.0, -2.0),
    ));
    commands.spawn((
        Sprite::from_color(Color::srgb(0.12, 0.14, 0.18), size),
        Transform::from_xyz(0.0, 0.0, -1.9),
    ));
    let grid = Color::srgb(0.16, 0.18, 0.23);
    let step = 55.0;
    let mut x = -settings.half_size.x + step;
    while x < settings.half_size.x {
        commands.spawn((
            Sprite::from_color(grid, Vec2::new(1.0, size.y)),
            Transform::from_xyz(x, 0.0, -1.8),
        ));
        x += step;
    }
    let mut y = -settings.half_size.y + step;
    while y < settings.half_size.y {
        commands.spawn((
            Sprite::from_color(grid, Vec2::new(size.x, 1.0)),
            Transform::from_xyz(0.0, y, -1.8),
        ));
        y += step;
    }
    commands.spawn((
        Text2d::new(format!("#{}", settings.room)),
        TextFont {
            font_size: FontSize::Px(18.0),
            ..default()
        },
        TextColor(Color::srgb(0.55, 0.6, 0.7)),
        Transform::from_xyz(0.0, settings.half_size.y + 20.0, -1.0),
    ));
}

fn spawn_hud(mut commands: Commands) {
    commands.spawn((
        Hud,
        DespawnOnExit(Screen::Lobby),
        Text::new(""),
        TextFont {
            font_size: FontSize::Px(14.0),
            ..default()
        },
        TextColor(Color::srgb(0.6, 0.64, 0.72)),
        Node {
            position_type: PositionType::Absolute,
            left: Val::Px(MARGIN),
            top: Val::Px(MARGIN),
            ..default()
        },
    ));
}

/// Keeps the room centred in the part of the window the chat panel leaves free.
fn camera_beside_panel(
    settings: Res<ImChatUiSettings>,
    mut camera: Query<&mut Transform, With<LobbyCamera>>,
) {
    let shift = if settings.visible {
        (settings.width + settings.margin) / 2.0
    } else {
        0.0
    };
    for mut t in &mut camera {
        if t.translation.x != shift {
            t.translation.x = shift;
        }
    }
}

fn hide_or_show_chat<const SHOW: bool>(mut settings: ResMut<ImChatUiSettings>) {
    settings.visible = SHOW;
}

fn field_style() -> impl Bundle {
    (
        Node {
            width: Val::Px(420.0),
            padding: UiRect::axes(Val::Px(8.0), Val::Px(6.0)),
            border_radius: BorderRadius::all(Val::Px(4.0)),
            ..default()
        },
        TextLayout::no_wrap(),
        TextCursorStyle {
            color: Color::WHITE,
            ..default()
        },
        TextFont {
            font_size: FontSize::Px(18.0),
            ..default()
        },
        TextColor(Color::WHITE),
        BackgroundColor(Color::srgb(0.14, 0.16, 0.21)),
    )
}

fn label(text: &str, size: f32, color: Color) -> impl Bundle {
    (
        Text::new(text),
        TextFont {
            font_size: FontSize::Px(size),
            ..default()
        },
        TextColor(color),
    )
}

fn spawn_login(mut commands: Commands, form: Res<LoginForm>) {
    let muted = Color::srgb(0.6, 0.64, 0.72);
    commands
        .spawn((
            DespawnOnExit(Screen::Login),
            Node {
                width: Val::Percent(100.0),
                height: Val::Percent(100.0),
                flex_direction: FlexDirection::Column,
                align_items: AlignItems::Center,
                justify_content: JustifyContent::Center,
                row_gap: Val::Px(10.0),
                ..default()
            },
            BackgroundColor(Color::srgba(0.03, 0.04, 0.06, 0.85)),
        ))
        .with_children(|p| {
            p.spawn(label(TITLE, 30.0, Color::WHITE));
            p.spawn(label(
                "walk with the arrow keys or WASD, chat with Enter",
                15.0,
                muted,
            ));
            p.spawn(label("Name", 15.0, muted));
            p.spawn((
                NameField,
                EditableText {
                    max_characters: Some(32),
                    visible_width: Some(24.0),
                    ..EditableText::new(&form.name)
                },
                AutoFocus,
                field_style(),
            ));
            p.spawn(label("Server", 15.0, muted));
            p.spawn((
                UrlField,
                EditableText {
                    max_characters: Some(200),
                    visible_width: Some(24.0),
                    ..EditableText::new(&form.url)
                },
                field_style(),
            ));
            p.spawn((
                LoginNotice,
                label(
                    form.notice.as_deref().unwrap_or(""),
                    15.0,
                    Color::srgb(1.0, 0.55, 0.45),
                ),
            ));
            p.spawn((
                LoginButton,
                Button,
                Node {
                    padding: UiRect::axes(Val::Px(18.0), Val::Px(8.0)),
                    border_radius: BorderRadius::all(Val::Px(6.0)),
                    ..default()
                },
                BackgroundColor(Color::srgb(0.25, 0.45, 0.85)),
            ))
            .with_child(label(
                if form.notice.is_some() {
                    "Log in again"
                } else {
                    "Enter the lobby"
                },
                18.0,
                Color::WHITE,
            ));
        });
}

/// Enter or the button: log in with the name and URL typed, and go to the lobby.
#[allow(clippy::too_many_arguments)]
fn login_screen(
    keys: Res<ButtonInput<KeyCode>>,
    button: Query<&Interaction, (Changed<Interaction>, With<LoginButton>)>,
    name: Query<&EditableText, With<NameField>>,
    url: Query<&EditableText, (With<UrlField>, Without<NameField>)>,
    mut notice: Query<&mut Text, With<LoginNotice>>,
    // The client's URL is set before the login: `ImUrl` is also in `ImClient`.
    mut client: ParamSet<(ImClient, Query<&mut ImUrl, With<ImPrimaryClient>>)>,
    mut form: ResMut<LoginForm>,
    mut next: ResMut<NextState<Screen>>,
    script: Option<Res<Script>>,
) {
    let clicked = button.iter().any(|i| *i == Interaction::Pressed);
    let scripted = script.is_some();
    if !(clicked || scripted || keys.just_pressed(KeyCode::Enter)) {
        return;
    }
    let (Ok(name), Ok(url)) = (name.single(), url.single()) else {
        return;
    };
    let name = name.value().to_string().trim().to_owned();
    let url = url.value().to_string().trim().to_owned();
    let mut say = |text: String| {
        if let Ok(mut t) = notice.single_mut() {
            t.0 = text;
        }
    };
    if name.is_empty() || name.starts_with('#') {
        say("type a name (not starting with #)".into());
        return;
    }
    if let Ok(mut u) = client.p1().single_mut() {
        u.0 = url.clone();
    }
    match client
        .p0()
        .login(LoginRequest::new(name.clone(), "token").with_app("chat_lobby"))
    {
        Ok(()) => {
            form.name = name;
            form.url = url;
            form.notice = None;
            next.set(Screen::Lobby);
        }
        Err(e) => say(format!("cannot log in: {e}")),
    }
}

/// Kicked out (the same name logged in elsewhere): back to the login screen, which
/// says why and offers to log in again.
fn kicked_back_to_login(
    panel: Res<ChatPanel>,
    im: ImClient,
    mut form: ResMut<LoginForm>,
    mut next: ResMut<NextState<Screen>>,
) {
    if im.state() != ImConnection::Kicked {
        return;
    }
    let reason = match panel.badge().state() {
        BadgeState::Kicked { reason } => reason.clone(),
        _ => "kicked out".into(),
    };
    form.notice = Some(format!("You were logged out: {reason}."));
    next.set(Screen::Login);
}

fn keyboard_move(
    keys: Res<ButtonInput<KeyCode>>,
    focus: Res<InputFocus>,
    editors: Query<(), With<EditableText>>,
    mut input: ResMut<MoveInput>,
) {
    if focus.get().is_some_and(|e| editors.contains(e)) {
        input.0 = Vec2::ZERO;
        return;
    }
    let axis = |minus: [KeyCode; 2], plus: [KeyCode; 2]| {
        f32::from(u8::from(keys.any_pressed(plus))) - f32::from(u8::from(keys.any_pressed(minus)))
    };
    input.0 = Vec2::new(
        axis(
            [KeyCode::ArrowLeft, KeyCode::KeyA],
            [KeyCode::ArrowRight, KeyCode::KeyD],
        ),
        axis(
            [KeyCode::ArrowDown, KeyCode::KeyS],
            [KeyCode::ArrowUp, KeyCode::KeyW],
        ),
    );
}

/// Gives every avatar a coloured square and a name tag; dims players whose link is
/// down.
fn dress_avatars(
    mut commands: Commands,
    added: Query<(Entity, &Avatar, Has<LocalAvatar>), Added<Avatar>>,
    mut changed: Query<(&Avatar, &mut Sprite), Changed<Avatar>>,
) {
    for (entity, avatar, local) in &added {
        let color = user_color(&avatar.user);
        let mut e = commands.entity(entity);
        e.insert(Sprite::from_color(color, Vec2::splat(26.0)));
        e.with_children(|p| {
            if local {
                p.spawn((
                    Sprite::from_color(Color::WHITE, Vec2::splat(32.0)),
                    Transform::from_xyz(0.0, 0.0, -0.1),
                ));
            }
            p.spawn((
                Text2d::new(if local {
                    format!("{} (you)", avatar.user)
                } else {
                    avatar.user.clone()
                }),
                TextFont {
                    font_size: FontSize::Px(14.0),
                    ..default()
                },
                TextColor(Color::srgb(0.9, 0.92, 0.95)),
                Transform::from_xyz(0.0, 26.0, 0.5),
            ));
        });
    }
    for (avatar, mut sprite) in &mut changed {
        let alpha = if avatar.online { 1.0 } else { 0.35 };
        sprite.color = user_color(&avatar.user).with_alpha(alpha);
    }
}

fn hud(
    mut hud: Query<&mut Text, With<Hud>>,
    stats: Res<LobbyStats>,
    form: Res<LoginForm>,
    avatars: Query<&Avatar>,
) {
    let Ok(mut text) = hud.single_mut() else {
        return;
    };
    let line = format!(
        "{} at {}\n{} players | positions sent {}, heard {}\narrows/WASD: move, Enter: chat",
        form.name,
        form.url,
        avatars.iter().count(),
        stats.positions_sent,
        stats.positions_heard,
    );
    if text.0 != line {
        text.0 = line;
    }
}

/// The scripted run of `--script`.
#[derive(Resource, Debug)]
struct Script {
    text: String,
    path: PathBuf,
    timeout: Duration,
    settle: Duration,
    bots: usize,
    step: ScriptStep,
    at: Duration,
    captured: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScriptStep {
    WaitLobby,
    Walk,
    Type,
    Submit,
    WaitDelivered,
    Settle,
    Shoot,
    WaitShot,
    Exit,
}

impl Script {
    fn new(text: String, args: &Args) -> Self {
        Self {
            text,
            path: args.screenshot.clone(),
            timeout: Duration::from_secs_f64(args.script_timeout),
            settle: Duration::from_secs_f64(args.script_settle),
            bots: args.bots.unwrap_or(if args.url.is_some() { 0 } else { 3 }),
            step: ScriptStep::WaitLobby,
            at: Duration::ZERO,
            captured: false,
        }
    }
}

#[derive(Component)]
struct ScriptShot;

#[allow(clippy::too_many_arguments)]
fn run_script(
    mut commands: Commands,
    mut script: ResMut<Script>,
    time: Res<Time<Real>>,
    panel: Res<ChatPanel>,
    im: ImClient,
    mut input: ResMut<MoveInput>,
    mut focus: ResMut<InputFocus>,
    mut chat_input: Query<(Entity, &mut EditableText), With<ImChatInput>>,
    mut submit: MessageWriter<SubmitChatInput>,
    mut exit: MessageWriter<AppExit>,
    screen: Res<State<Screen>>,
) {
    let now = time.elapsed();
    if now > script.timeout && script.step != ScriptStep::Exit {
        eprintln!(
            "chat_lobby --script: timed out at step {:?} (connection {:?}, badge '{}')",
            script.step,
            im.state(),
            panel.badge().label()
        );
        exit.write(AppExit::error());
        script.step = ScriptStep::Exit;
        return;
    }
    let since = now.saturating_sub(script.at);
    let next = |script: &mut Script, step| {
        script.step = step;
        script.at = now;
    };
    match script.step {
        ScriptStep::WaitLobby => {
            let everyone = panel
                .members()
                .filter(|(_, p)| *p == bevy_im::ui::Presence::Online)
                .count()
                > script.bots;
            let joined = im.rooms().contains(panel.room());
            if *screen.get() == Screen::Lobby
                && joined
                && (everyone || since > Duration::from_secs(20))
            {
                next(&mut script, ScriptStep::Walk);
            }
        }
        ScriptStep::Walk => {
            input.0 = Vec2::new(1.0, 0.4);
            if since > Duration::from_millis(700) {
                input.0 = Vec2::ZERO;
                next(&mut script, ScriptStep::Type);
            }
        }
        ScriptStep::Type => {
            let Ok((entity, mut text)) = chat_input.single_mut() else {
                return;
            };
            focus.set(entity, FocusCause::Navigated);
            text.queue_edit(TextEdit::Insert(script.text.as_str().into()));
            next(&mut script, ScriptStep::Submit);
        }
        ScriptStep::Submit => {
            if since > Duration::from_millis(400) {
                submit.write(SubmitChatInput);
                next(&mut script, ScriptStep::WaitDelivered);
            }
        }
        ScriptStep::WaitDelivered => {
            let mine = panel
                .lines()
                .rev()
                .find(|l| matches!(l.kind, LineKind::Mine { .. }) && l.text == script.text);
            match mine.and_then(|l| l.delivery()) {
                Some(Delivery::Relayed { mid }) => {
                    say(format!(
                        "chat_lobby --script: '{}' relayed to #{} (message id {mid:?})",
                        script.text,
                        panel.room()
                    ));
                    next(&mut script, ScriptStep::Settle);
                }
                Some(d) if d.is_settled() => {
                    eprintln!("chat_lobby --script: the line ended {}", d.label());
                    exit.write(AppExit::error());
                    next(&mut script, ScriptStep::Exit);
                }
                _ => {}
            }
        }
        ScriptStep::Settle => {
            // Let the bots answer and walk on, and the panel redraw. A browser page
            // stays open: the player goes on from there.
            if since > script.settle {
                let then = if cfg!(target_arch = "wasm32") {
                    ScriptStep::Exit
                } else {
                    ScriptStep::Shoot
                };
                next(&mut script, then);
            }
        }
        ScriptStep::Shoot => {
            let path = script.path.clone();
            commands
                .spawn((ScriptShot, Screenshot::primary_window()))
                .observe(save_to_disk(path))
                .observe(|_: On<ScreenshotCaptured>, mut script: ResMut<Script>| {
                    script.captured = true;
                });
            next(&mut script, ScriptStep::WaitShot);
        }
        ScriptStep::WaitShot => {
            if script.captured && since > Duration::from_millis(200) {
                if script.path.exists() {
                    println!(
                        "chat_lobby --script: screenshot saved to {}",
                        script.path.display()
                    );
                    exit.write(AppExit::Success);
                } else {
                    eprintln!("chat_lobby --script: the screenshot was not written");
                    exit.write(AppExit::error());
                }
                next(&mut script, ScriptStep::Exit);
            }
        }
        ScriptStep::Exit => {}
    }
}
