//! Run conditions for game systems.

use bevy::prelude::Res;

use super::ImStatus;
use crate::client::{QosSendTable, Session};

/// True while logged in.
pub fn im_logged_in(session: Res<Session>) -> bool {
    session.is_logged_in()
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
pub fn im_has_pending(table: Res<QosSendTable>) -> bool {
    !table.is_empty()
}
