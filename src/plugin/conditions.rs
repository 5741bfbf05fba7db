//! Run conditions for game systems, following the primary client. With states, the
//! same reads as `in_state(ImConnection::LoggedIn)`.

use bevy::prelude::{Query, Res, With};

use super::{ImPrimaryClient, ImStatus};
use crate::client::ClientCore;

/// True while logged in.
pub fn im_logged_in(clients: Query<&ClientCore, With<ImPrimaryClient>>) -> bool {
    clients.single().is_ok_and(ClientCore::is_logged_in)
}

/// True in the frame in which a login or re-login succeeded.
pub fn im_just_logged_in(status: Res<ImStatus>) -> bool {
    status.just_logged_in
}

/// True in the frame after the session stopped being logged in.
pub fn im_just_logged_out(status: Res<ImStatus>) -> bool {
    status.just_logged_out
}

/// True while QoS messages wait for an ACK.
pub fn im_has_pending(clients: Query<&ClientCore, With<ImPrimaryClient>>) -> bool {
    clients.single().is_ok_and(|c| c.pending_count() > 0)
}
