//! A drop-in chat panel for a Bevy game (feature `ui`): the chat of one room with
//! the delivery state of each of the player's lines, a member list with presence,
//! and a connection badge with the keepalive's round-trip time.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_im::prelude::*;
//! use bevy_im::ui::{ImChatUiPlugin, ImChatUiSettings, PanelAnchor, chat_input_focused};
//!
//! fn main() {
//!     App::new()
//!         .add_plugins(DefaultPlugins)
//!         .add_plugins(ImClientPlugin::new(ImConfig::new("ws://127.0.0.1:3000/websocket")))
//!         // Joins #lobby once logged in; shown bottom-left, without the member list.
//!         .add_plugins(ImChatUiPlugin::new("lobby").with_settings(ImChatUiSettings {
//!             anchor: PanelAnchor::BottomLeft,
//!             show_members: false,
//!             ..default()
//!         }))
//!         .add_systems(Startup, |mut commands: Commands, mut im: ImClient| {
//!             commands.spawn(Camera2d);
//!             im.login(LoginRequest::new("alice", "token")).unwrap();
//!         })
//!         // The game's own keys rest while the player types a line.
//!         .add_systems(Update, move_player.run_if(not(chat_input_focused)))
//!         .run();
//! }
//!
//! fn move_player() { /* the game's own movement */ }
//! ```
//!
//! The panel is built only from the public client API:
//! [`ImClient`](crate::plugin::ImClient), the client's messages and its room
//! state. Its state ([`ChatPanel`]) is kept by [`ImChatStatePlugin`], which needs
//! no rendering, so a headless app or a test runs the same logic; the systems here
//! only draw it and turn clicks and keys into [`ChatCommand`]s.
//!
//! Keys: Enter focuses the input line; Enter again sends the line to the room (or
//! to the player picked in the member list) and gives the keyboard back to the
//! game; Escape leaves the input. While the input has the focus,
//! [`chat_input_focused`] is true: a game gates its own keys with
//! `.run_if(not(chat_input_focused))`.

mod chat;

pub use chat::{
    BadgeInput, BadgeState, ChatCommand, ChatLine, ChatPanel, ChatTarget, ConnectionBadge,
    Delivery, ImChatStatePlugin, ImChatSystems, LineKind, Presence, kick_reason,
};

use bevy::input_focus::{FocusCause, InputFocus};
use bevy::prelude::*;
use bevy::text::{EditableText, FontSize, TextCursorStyle};

/// Which corner of the window the panel sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PanelAnchor {
    /// Top left.
    TopLeft,
    /// Top right.
    #[default]
    TopRight,
    /// Bottom left.
    BottomLeft,
    /// Bottom right.
    BottomRight,
}

/// The panel's colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatColors {
    /// The panel's background.
    pub background: Color,
    /// The input line's background.
    pub input: Color,
    /// Chat text.
    pub text: Color,
    /// History, notices, pending states.
    pub muted: Color,
    /// Good news: relayed, online.
    pub ok: Color,
    /// Stored for later, the direct-message target.
    pub accent: Color,
    /// Lost, refused, kicked.
    pub error: Color,
    /// Re-logging in, link lost.
    pub warn: Color,
}

impl Default for ChatColors {
    fn default() -> Self {
        Self {
            background: Color::srgba(0.07, 0.08, 0.11, 0.88),
            input: Color::srgb(0.14, 0.16, 0.21),
            text: Color::srgb(0.92, 0.93, 0.95),
            muted: Color::srgb(0.55, 0.58, 0.64),
            ok: Color::srgb(0.42, 0.85, 0.52),
            accent: Color::srgb(0.45, 0.68, 1.0),
            error: Color::srgb(1.0, 0.42, 0.42),
            warn: Color::srgb(1.0, 0.78, 0.3),
        }
    }
}

/// How the panel looks and which parts it shows. A resource: change it at run
/// time and the panel is rebuilt.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct ImChatUiSettings {
    /// Whether the panel is shown at all (hide it on a login screen, say).
    pub visible: bool,
    /// The corner it sits in.
    pub anchor: PanelAnchor,
    /// Distance from the window's edges, in logical pixels.
    pub margin: f32,
    /// Width, in logical pixels.
    pub width: f32,
    /// Height, in logical pixels.
    pub height: f32,
    /// The font size of every text.
    pub font_size: f32,
    /// Show the connection badge.
    pub show_badge: bool,
    /// Show the member list.
    pub show_members: bool,
    /// Show the input line (without it the panel only shows the chat).
    pub show_input: bool,
    /// Width of the member list.
    pub members_width: f32,
    /// Colours.
    pub colors: ChatColors,
}

impl Default for ImChatUiSettings {
    fn default() -> Self {
        Self {
            visible: true,
            anchor: PanelAnchor::TopRight,
            margin: 12.0,
            width: 460.0,
            height: 420.0,
            font_size: 15.0,
            show_badge: true,
            show_members: true,
            show_input: true,
            members_width: 130.0,
            colors: ChatColors::default(),
        }
    }
}

/// The chat panel, member list and connection badge of the primary client, for
/// room `room`: [`ImChatStatePlugin`] plus the drawing. Add it after
/// `ImClientPlugin` and Bevy's `DefaultPlugins` (it needs `bevy_ui` and the input
/// focus plugins); the game keeps its own camera.
pub struct ImChatUiPlugin {
    room: String,
    settings: Option<ImChatUiSettings>,
}

impl ImChatUiPlugin {
    /// The panel of room `room` (its name, without `#`), with the settings of an
    /// [`ImChatUiSettings`] resource inserted earlier, or the defaults.
    pub fn new(room: impl Into<String>) -> Self {
        Self {
            room: room.into(),
            settings: None,
        }
    }

    /// Uses `settings` for the look.
    pub fn with_settings(mut self, settings: ImChatUiSettings) -> Self {
        self.settings = Some(settings);
        self
    }
}

impl Plugin for ImChatUiPlugin {
    fn build(&self, app: &mut App) {
        match &self.settings {
            Some(s) => {
                app.insert_resource(s.clone());
            }
            None => {
                app.init_resource::<ImChatUiSettings>();
            }
        }
        app.add_plugins(ImChatStatePlugin::new(self.room.clone()))
            .add_message::<SubmitChatInput>()
            .add_systems(
                Update,
                (
                    (build_panel, input_keys, clicks).before(ImChatSystems),
                    redraw.after(ImChatSystems),
                ),
            );
    }
}

/// Sends what the input line holds, as Enter does (for scripts and tests that
/// drive the real panel).
#[derive(Message, Debug, Clone, Copy, Default)]
pub struct SubmitChatInput;

/// The panel's root node.
#[derive(Component)]
pub struct ImChatRoot;

/// The input line (an [`EditableText`]).
#[derive(Component)]
pub struct ImChatInput;

#[derive(Component)]
struct Lines;

#[derive(Component)]
struct Members;

#[derive(Component)]
struct Badge;

#[derive(Component)]
struct BadgeDot;

#[derive(Component)]
struct TargetLabel;

/// What a button of the panel does.
#[derive(Component, Clone)]
struct Action(ChatCommand);

/// Whether the chat's input line has the keyboard: gate a game's own keys with
/// `.run_if(not(chat_input_focused))`.
pub fn chat_input_focused(
    focus: Option<Res<InputFocus>>,
    inputs: Query<(), With<ImChatInput>>,
) -> bool {
    focus
        .and_then(|f| f.get())
        .is_some_and(|e| inputs.contains(e))
}

/// A colour for `user`, the same on every screen (the lobby example paints its
/// avatars with it).
pub fn user_color(user: &str) -> Color {
    // FNV-1a: stable across runs and platforms.
    let mut hash: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let hue = (hash % 360) as f32;
    Color::hsl(hue, 0.65, 0.62)
}

fn font(settings: &ImChatUiSettings, scale: f32) -> TextFont {
    TextFont {
        font_size: FontSize::Px(settings.font_size * scale),
        ..default()
    }
}

/// (Re)builds the panel's nodes when the settings change (and at the start).
fn build_panel(
    mut commands: Commands,
    settings: Res<ImChatUiSettings>,
    roots: Query<Entity, With<ImChatRoot>>,
    mut focus: Option<ResMut<InputFocus>>,
    inputs: Query<Entity, With<ImChatInput>>,
) {
    if !settings.is_changed() && !roots.is_empty() {
        return;
    }
    if let Some(focus) = focus.as_deref_mut()
        && focus.get().is_some_and(|e| inputs.contains(e))
    {
        focus.clear();
    }
    for root in &roots {
        commands.entity(root).despawn();
    }
    let s = &*settings;
    let c = s.colors;
    let (top, bottom, left, right) = match s.anchor {
        PanelAnchor::TopLeft => (Val::Px(s.margin), Val::Auto, Val::Px(s.margin), Val::Auto),
        PanelAnchor::TopRight => (Val::Px(s.margin), Val::Auto, Val::Auto, Val::Px(s.margin)),
        PanelAnchor::BottomLeft => (Val::Auto, Val::Px(s.margin), Val::Px(s.margin), Val::Auto),
        PanelAnchor::BottomRight => (Val::Auto, Val::Px(s.margin), Val::Auto, Val::Px(s.margin)),
    };
    let root = commands
        .spawn((
            ImChatRoot,
            Node {
                position_type: PositionType::Absolute,
                display: if s.visible {
                    Display::Flex
                } else {
                    Display::None
                },
                top,
                bottom,
                left,
                right,
                width: Val::Px(s.width),
                height: Val::Px(s.height),
                flex_direction: FlexDirection::Column,
                padding: UiRect::all(Val::Px(8.0)),
                row_gap: Val::Px(6.0),
                border_radius: BorderRadius::all(Val::Px(8.0)),
                ..default()
            },
            BackgroundColor(c.background),
        ))
        .id();
    if s.show_badge {
        commands
            .spawn((
                ChildOf(root),
                Node {
                    flex_direction: FlexDirection::Row,
                    align_items: AlignItems::Center,
                    column_gap: Val::Px(6.0),
                    ..default()
                },
            ))
            .with_children(|row| {
                row.spawn((
                    BadgeDot,
                    Node {
                        width: Val::Px(10.0),
                        height: Val::Px(10.0),
                        border_radius: BorderRadius::all(Val::Px(5.0)),
                        ..default()
                    },
                    BackgroundColor(c.muted),
                ));
                row.spawn((Badge, Text::new(""), font(s, 0.9), TextColor(c.muted)));
            });
    }
    let body = commands
        .spawn((
            ChildOf(root),
            Node {
                flex_direction: FlexDirection::Row,
                flex_grow: 1.0,
                min_height: Val::Px(0.0),
                column_gap: Val::Px(8.0),
                ..default()
            },
        ))
        .id();
    commands.spawn((
        ChildOf(body),
        Lines,
        Node {
            flex_direction: FlexDirection::Column,
            flex_grow: 1.0,
            flex_basis: Val::Px(0.0),
            min_width: Val::Px(0.0),
            overflow: Overflow::scroll_y(),
            row_gap: Val::Px(2.0),
            ..default()
        },
        ScrollPosition::default(),
        bevy::ui_widgets::ScrollArea,
    ));
    if s.show_members {
        commands.spawn((
            ChildOf(body),
            Members,
            Node {
                flex_direction: FlexDirection::Column,
                width: Val::Px(s.members_width),
                flex_shrink: 0.0,
                overflow: Overflow::clip(),
                row_gap: Val::Px(2.0),
                padding: UiRect::left(Val::Px(6.0)),
                border: UiRect::left(Val::Px(1.0)),
                ..default()
            },
            BorderColor::all(c.muted.with_alpha(0.4)),
        ));
    }
    if s.show_input {
        commands
            .spawn((
                ChildOf(root),
                Node {
                    flex_direction: FlexDirection::Row,
                    align_items: AlignItems::Center,
                    column_gap: Val::Px(6.0),
                    ..default()
                },
            ))
            .with_children(|row| {
                row.spawn((TargetLabel, Text::new(""), font(s, 0.9), TextColor(c.muted)));
                row.spawn((
                    ImChatInput,
                    Node {
                        flex_grow: 1.0,
                        min_width: Val::Px(0.0),
                        padding: UiRect::axes(Val::Px(6.0), Val::Px(4.0)),
                        border_radius: BorderRadius::all(Val::Px(4.0)),
                        ..default()
                    },
                    EditableText {
                        max_characters: Some(300),
                        visible_width: Some(12.0),
                        ..default()
                    },
                    TextLayout::no_wrap(),
                    TextCursorStyle {
                        color: c.text,
                        ..default()
                    },
                    font(s, 1.0),
                    TextColor(c.text),
                    BackgroundColor(c.input),
                ));
            });
    }
}

/// Enter focuses the input line, or sends it; Escape leaves it.
fn input_keys(
    keys: Res<ButtonInput<KeyCode>>,
    settings: Res<ImChatUiSettings>,
    mut submit: MessageReader<SubmitChatInput>,
    focus: Option<ResMut<InputFocus>>,
    mut inputs: Query<(Entity, &mut EditableText), With<ImChatInput>>,
    editors: Query<(), With<EditableText>>,
    mut commands: MessageWriter<ChatCommand>,
) {
    // Without Bevy's input focus plugin (no `DefaultPlugins`) there is no keyboard.
    let (Some(mut focus), Ok((input, mut text))) = (focus, inputs.single_mut()) else {
        submit.clear();
        return;
    };
    let focused = focus.get() == Some(input);
    let scripted = submit.read().count() > 0;
    let enter = keys.just_pressed(KeyCode::Enter) || keys.just_pressed(KeyCode::NumpadEnter);
    if scripted || (enter && focused) {
        if text.is_composing() {
            return;
        }
        let line = text.value().to_string();
        text.clear();
        if !line.trim().is_empty() {
            commands.write(ChatCommand::Send(line));
        }
        if focused {
            focus.clear();
        }
    } else if enter && settings.visible && focus.get().is_none_or(|e| !editors.contains(e)) {
        focus.set(input, FocusCause::Navigated);
    } else if keys.just_pressed(KeyCode::Escape) && focused {
        focus.clear();
    }
}

/// Clicks on the panel's buttons (retry, member picks).
fn clicks(
    buttons: Query<(&Interaction, &Action), Changed<Interaction>>,
    mut commands: MessageWriter<ChatCommand>,
) {
    for (interaction, action) in &buttons {
        if *interaction == Interaction::Pressed {
            commands.write(action.0.clone());
        }
    }
}

fn delivery_color(delivery: &Delivery, c: &ChatColors) -> Color {
    match delivery {
        Delivery::Waiting | Delivery::Sending => c.muted,
        Delivery::Relayed { .. } => c.ok,
        Delivery::Stored => c.accent,
        Delivery::Lost | Delivery::Refused { .. } | Delivery::NotSent { .. } => c.error,
    }
}

fn badge_color(state: &BadgeState, c: &ChatColors) -> Color {
    match state {
        BadgeState::Online => c.ok,
        BadgeState::Connecting | BadgeState::Relogging { .. } => c.warn,
        BadgeState::Kicked { .. } => c.error,
        BadgeState::Offline { .. } => c.muted,
    }
}

type TextParts = (&'static mut Text, &'static mut TextColor);

/// Draws the panel's state whenever it changed.
#[allow(clippy::too_many_arguments)]
fn redraw(
    mut commands: Commands,
    panel: Res<ChatPanel>,
    settings: Res<ImChatUiSettings>,
    mut last_drawn: Local<Option<u64>>,
    mut lines: Query<(Entity, &mut ScrollPosition), With<Lines>>,
    members: Query<Entity, With<Members>>,
    mut badge: Query<TextParts, (With<Badge>, Without<TargetLabel>)>,
    mut dot: Query<&mut BackgroundColor, With<BadgeDot>>,
    mut target: Query<TextParts, (With<TargetLabel>, Without<Badge>)>,
) {
    let Ok((lines_node, mut scroll)) = lines.single_mut() else {
        return;
    };
    // A rebuilt panel has new nodes: draw them even if the state did not move.
    let fresh = scroll.is_added();
    if *last_drawn == Some(panel.revision()) && !fresh {
        return;
    }
    *last_drawn = Some(panel.revision());
    let s = &*settings;
    let c = s.colors;

    commands.entity(lines_node).despawn_children();
    for line in panel.lines() {
        spawn_line(&mut commands, lines_node, line, s);
    }
    // Stick to the newest line (layout clamps this to the end).
    scroll.y = f32::MAX;

    if let Ok(members_node) = members.single() {
        commands.entity(members_node).despawn_children();
        let online = panel
            .members()
            .filter(|(_, p)| *p == Presence::Online)
            .count();
        commands.spawn((
            ChildOf(members_node),
            Text::new(format!("#{} ({online})", panel.room())),
            font(s, 0.9),
            TextColor(c.muted),
        ));
        for (user, presence) in panel.members() {
            spawn_member(&mut commands, members_node, &panel, user, presence, s);
        }
    }

    let b = panel.badge();
    if let Ok((mut text, mut color)) = badge.single_mut() {
        text.0 = b.label();
        color.0 = badge_color(b.state(), &c);
    }
    if let Ok(mut bg) = dot.single_mut() {
        bg.0 = badge_color(b.state(), &c);
    }
    if let Ok((mut text, mut color)) = target.single_mut() {
        match panel.target() {
            ChatTarget::Room => {
                text.0 = format!("#{}>", panel.room());
                color.0 = c.muted;
            }
            ChatTarget::Direct(user) => {
                text.0 = format!("to {user}>");
                color.0 = c.accent;
            }
        }
    }
}

fn spawn_line(commands: &mut Commands, parent: Entity, line: &ChatLine, s: &ImChatUiSettings) {
    let c = s.colors;
    let row = commands
        .spawn((
            ChildOf(parent),
            Node {
                flex_direction: FlexDirection::Row,
                align_items: AlignItems::FlexStart,
                column_gap: Val::Px(6.0),
                flex_shrink: 0.0,
                ..default()
            },
        ))
        .id();
    let (head, head_color, body_color, tail) = match &line.kind {
        LineKind::Notice => (String::new(), c.muted, c.muted, None),
        LineKind::Room { history } => (
            format!("{}: ", line.from),
            user_color(&line.from),
            if *history { c.muted } else { c.text },
            None,
        ),
        LineKind::Direct { stored } => (
            format!(
                "{} to you{}: ",
                line.from,
                if *stored { " (earlier)" } else { "" }
            ),
            c.accent,
            c.text,
            None,
        ),
        LineKind::Mine { to, delivery } => (
            match to {
                ChatTarget::Room => format!("{}: ", line.from),
                ChatTarget::Direct(user) => format!("{} to {user}: ", line.from),
            },
            user_color(&line.from),
            c.text,
            Some((
                format!(" [{}]", delivery.label()),
                delivery_color(delivery, &c),
            )),
        ),
    };
    let text = commands
        .spawn((
            ChildOf(row),
            Text::new(head),
            font(s, 1.0),
            TextColor(head_color),
            // The width left beside the retry button; the text wraps in it.
            Node {
                flex_grow: 1.0,
                flex_basis: Val::Px(0.0),
                min_width: Val::Px(0.0),
                ..default()
            },
        ))
        .id();
    commands.spawn((
        ChildOf(text),
        TextSpan::new(line.text.clone()),
        font(s, 1.0),
        TextColor(body_color),
    ));
    if let Some((tail, color)) = tail {
        commands.spawn((
            ChildOf(text),
            TextSpan::new(tail),
            font(s, 0.85),
            TextColor(color),
        ));
    }
    if line.delivery().is_some_and(Delivery::can_retry) {
        commands
            .spawn((
                ChildOf(row),
                Button,
                Action(ChatCommand::Retry(line.id)),
                Node {
                    padding: UiRect::axes(Val::Px(6.0), Val::Px(1.0)),
                    flex_shrink: 0.0,
                    border_radius: BorderRadius::all(Val::Px(4.0)),
                    ..default()
                },
                BackgroundColor(c.error.with_alpha(0.3)),
            ))
            .with_child((Text::new("retry"), font(s, 0.85), TextColor(c.text)));
    }
}

fn spawn_member(
    commands: &mut Commands,
    parent: Entity,
    panel: &ChatPanel,
    user: &str,
    presence: Presence,
    s: &ImChatUiSettings,
) {
    let c = s.colors;
    let is_me = panel.me() == Some(user);
    let picked = panel.target() == &ChatTarget::Direct(user.to_owned());
    let (dot, text) = match presence {
        Presence::Online => (c.ok, c.text),
        Presence::LinkLost => (c.warn, c.muted),
        Presence::Left => (c.muted.with_alpha(0.5), c.muted.with_alpha(0.6)),
    };
    let next = if picked || is_me {
        ChatTarget::Room
    } else {
        ChatTarget::Direct(user.to_owned())
    };
    let label = match (is_me, presence) {
        (true, _) => format!("{user} (you)"),
        (false, Presence::Online) => user.to_owned(),
        (false, p) => format!("{user} ({})", p.label()),
    };
    commands
        .spawn((
            ChildOf(parent),
            Button,
            Action(ChatCommand::Target(next)),
            Node {
                flex_direction: FlexDirection::Row,
                align_items: AlignItems::Center,
                column_gap: Val::Px(5.0),
                padding: UiRect::axes(Val::Px(3.0), Val::Px(1.0)),
                border_radius: BorderRadius::all(Val::Px(3.0)),
                ..default()
            },
            BackgroundColor(if picked {
                c.accent.with_alpha(0.25)
            } else {
                Color::NONE
            }),
        ))
        .with_children(|row| {
            row.spawn((
                Node {
                    width: Val::Px(8.0),
                    height: Val::Px(8.0),
                    flex_shrink: 0.0,
                    border_radius: BorderRadius::all(Val::Px(4.0)),
                    ..default()
                },
                BackgroundColor(dot),
            ));
            row.spawn((Text::new(label), font(s, 0.9), TextColor(text)));
        });
}
