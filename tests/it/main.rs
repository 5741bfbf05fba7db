//! The integration tests, linked into one test binary: one link of the library and
//! Bevy instead of one per file, which keeps the build's time and disk small.
//!
//! Each module is what used to be a test file of its own, and keeps its name, so one
//! of them runs with a filter: `cargo test --all-features --test it -- server_rooms::`.
//! The modules that need a feature say so with an inner `#![cfg]`.

#[cfg(feature = "server")]
mod support;

// `chat_lobby` compiles `src/ui/chat.rs` as it is, which reaches the client API as
// `crate::prelude`.
#[cfg(feature = "server")]
use bevy_im::prelude;

mod browser;
mod chat_lobby;
mod chat_lobby_screenshot;
mod client_core;
mod client_rooms;
mod cluster;
mod plugin_api;
mod plugin_memory;
mod plugin_rooms_socket;
mod plugin_socket;
mod protocol_props;
mod protocol_wire;
mod restart_storm;
mod server_bad_input;
mod server_binary;
mod server_extensions;
mod server_reliability;
mod server_rooms;
mod server_upstream;
mod soak;
mod transport_native;
