//! The cost of the whole plugin per frame: every system `ImClientPlugin` adds
//! (and the `ImConnection` state it brings), in a `MinimalPlugins` app driven by
//! `App::update`, against the same app without the plugin, in one run.
//!
//! Time is frozen (a zero manual step) so that nothing comes due: this is what a game
//! pays every frame, idle and with 10,000 QoS messages pending. The plugin brings a
//! Bevy state (`ImConnection`); a game that has states of its own already pays for
//! the state machinery, so the last pair compares against such a game. Each case runs under
//! Bevy's default multi-threaded executor and under the single-threaded one; the
//! latter shows the systems' own work, the former adds Bevy's per-system task
//! dispatch, which on a 2-core machine dwarfs it.

use std::time::Duration;

use bevy::ecs::schedule::{ScheduleLabel, SingleThreadedExecutor};
use bevy::prelude::*;
use bevy::state::app::StatesPlugin;
use bevy::time::TimeUpdateStrategy;
use bevy_im::prelude::*;
use bevy_im::testing::ImTestApp;
use criterion::{Criterion, criterion_group, criterion_main};

fn single_threaded(app: &mut App) {
    for label in [
        First.intern(),
        PreUpdate.intern(),
        StateTransition.intern(),
        Update.intern(),
        PostUpdate.intern(),
        Last.intern(),
    ] {
        app.edit_schedule(label, |s| {
            s.set_executor(SingleThreadedExecutor::new());
        });
    }
}

/// A game's own state, for the baseline of a game that already uses states.
#[derive(States, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
enum GameState {
    #[default]
    Menu,
}

/// `MinimalPlugins` alone, or with a game state of its own (`game_state`), time frozen.
fn bare(single: bool, game_state: bool) -> App {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::ZERO));
    if game_state {
        app.add_plugins(StatesPlugin).init_state::<GameState>();
    }
    if single {
        single_threaded(&mut app);
    }
    app.update();
    app
}

/// A logged-in client with `pending` QoS messages waiting for an ACK, time frozen.
fn client(pending: usize, single: bool, game_state: bool) -> ImTestApp {
    let mut t = ImTestApp::memory(ImConfig::new("mem://server"));
    if game_state {
        t.app.init_state::<GameState>();
    }
    t.login("alice");
    t.run(move |mut im: ImClient| {
        for i in 0..pending {
            im.send(Outgoing::new("bob", format!("m{i}")))
                .expect("logged in");
        }
    });
    t.step();
    // Only the plugin's own systems: drop the test kit's message collectors.
    t.app.world_mut().resource_mut::<Schedules>().remove(Update);
    t.app.init_schedule(Update);
    if single {
        single_threaded(&mut t.app);
    }
    t.app
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::ZERO));
    t.step();
    assert!(t.core().is_logged_in());
    assert_eq!(t.core().pending_count(), pending);
    t.wire();
    t
}

fn per_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("plugin_frame");
    for (single, executor) in [(false, "multi_threaded"), (true, "single_threaded")] {
        let mut app = bare(single, false);
        g.bench_function(format!("{executor}/minimal_plugins_alone"), |b| {
            b.iter(|| app.update())
        });
        for pending in [0usize, 10_000] {
            let mut t = client(pending, single, false);
            g.bench_function(format!("{executor}/with_plugin_{pending}_pending"), |b| {
                b.iter(|| t.app.update())
            });
            assert_eq!(t.core().pending_count(), pending, "nothing came due");
            assert!(t.wire().is_empty(), "nothing was written");
        }
        let mut app = bare(single, true);
        g.bench_function(
            format!("{executor}/minimal_plugins_and_a_game_state"),
            |b| b.iter(|| app.update()),
        );
        let mut t = client(0, single, true);
        g.bench_function(
            format!("{executor}/with_a_game_state_and_plugin_idle"),
            |b| b.iter(|| t.app.update()),
        );
    }
    g.finish();
}

criterion_group!(benches, per_frame);
criterion_main!(benches);
