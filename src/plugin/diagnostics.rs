//! Measurements of the primary client in Bevy's `DiagnosticsStore`.

use bevy::diagnostic::{Diagnostic, DiagnosticPath, Diagnostics, RegisterDiagnostic};
use bevy::prelude::{App, Query, With};

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
    mut diagnostics: Diagnostics,
    clients: Query<&ClientCore, With<ImPrimaryClient>>,
) {
    let Ok(core) = clients.single() else { return };
    let stats = core.stats();
    if let Some(rtt) = core.rtt() {
        diagnostics.add_measurement(&RTT_MS, || rtt.as_secs_f64() * 1000.0);
    }
    let pending = core.pending_count();
    diagnostics.add_measurement(&PENDING_QOS, || pending as f64);
    diagnostics.add_measurement(&RESENDS, || stats.resends as f64);
    diagnostics.add_measurement(&LOST, || stats.lost as f64);
    diagnostics.add_measurement(&RELOGINS, || stats.relogins as f64);
    diagnostics.add_measurement(&THROTTLED, || stats.throttled as f64);
    diagnostics.add_measurement(&FRAMES_IN, || stats.frames_in as f64);
    diagnostics.add_measurement(&FRAMES_OUT, || stats.frames_out as f64);
}
