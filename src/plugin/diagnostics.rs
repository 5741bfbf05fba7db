//! Measurements of the primary client in Bevy's `DiagnosticsStore`.

use bevy::diagnostic::{
    Diagnostic, DiagnosticMeasurement, DiagnosticPath, DiagnosticsStore, RegisterDiagnostic,
};
use bevy::ecs::query::QueryState;
use bevy::platform::time::Instant;
use bevy::prelude::{App, With, World};

use super::ImPrimaryClient;
use crate::client::ClientCore;

/// Round-trip time of the latest keepalive, in milliseconds.
pub const RTT_MS: DiagnosticPath = DiagnosticPath::const_new("im/rtt_ms");
/// QoS messages waiting for an ACK.
pub const PENDING_QOS: DiagnosticPath = DiagnosticPath::const_new("im/pending_qos");
/// QoS resends since start.
pub const RESENDS: DiagnosticPath = DiagnosticPath::const_new("im/resends");
/// QoS messages reported lost since start.
pub const LOST: DiagnosticPath = DiagnosticPath::const_new("im/lost");
/// Re-login attempts since start.
pub const RELOGINS: DiagnosticPath = DiagnosticPath::const_new("im/relogins");
/// Frames the server refused for its rate limit since start (they are retried).
pub const THROTTLED: DiagnosticPath = DiagnosticPath::const_new("im/throttled");
/// Frames received since start.
pub const FRAMES_IN: DiagnosticPath = DiagnosticPath::const_new("im/frames_in");
/// Frames sent since start.
pub const FRAMES_OUT: DiagnosticPath = DiagnosticPath::const_new("im/frames_out");

pub(super) fn register(app: &mut App) {
    for path in [
        RTT_MS,
        PENDING_QOS,
        RESENDS,
        LOST,
        RELOGINS,
        THROTTLED,
        FRAMES_IN,
        FRAMES_OUT,
    ] {
        app.register_diagnostic(Diagnostic::new(path).with_max_history_length(60));
    }
}

/// Measures the primary client.
pub(super) fn measure(
    world: &mut World,
    primary: &mut QueryState<&ClientCore, With<ImPrimaryClient>>,
) {
    let Ok(core) = primary.single(world) else {
        return;
    };
    let stats = core.stats();
    let values = [
        (&RTT_MS, core.rtt().map(|rtt| rtt.as_secs_f64() * 1000.0)),
        (&PENDING_QOS, Some(core.pending_count() as f64)),
        (&RESENDS, Some(stats.resends as f64)),
        (&LOST, Some(stats.lost as f64)),
        (&RELOGINS, Some(stats.relogins as f64)),
        (&THROTTLED, Some(stats.throttled as f64)),
        (&FRAMES_IN, Some(stats.frames_in as f64)),
        (&FRAMES_OUT, Some(stats.frames_out as f64)),
    ];
    let Some(mut store) = world.get_resource_mut::<DiagnosticsStore>() else {
        return;
    };
    let time = Instant::now();
    for (path, value) in values {
        if let (Some(value), Some(diagnostic)) = (value, store.get_mut(path))
            && diagnostic.is_enabled
        {
            diagnostic.add_measurement(DiagnosticMeasurement { time, value });
        }
    }
}
