#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod transport;
