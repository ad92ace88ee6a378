//! gochat-bench: what `bench/compare.sh` runs to compare gateway-core with a
//! conventional gateway doing identical work.
//!
//! Both servers speak API.md §3 for one in-memory room, `world`: the handshake
//! validates an HS256 access token locally, the server sends `connected`, a
//! `send-message` is acked to its sender and sent as `new-message` to every
//! other connection in the room, `ping` gets `pong`.
//!
//! # Layout
//! - [`auth`]: access-token validation (and minting, for tests and benches).
//! - [`protocol`]: the JSON frames, encoded once per message.
//! - [`room`]: the room's shared state and the counters a server publishes.
//! - [`procfs`]: CPU time and RSS of a process, from `/proc`.
//!
//! Binaries: `engine-room` (gateway-core), `baseline-room` (tokio +
//! tokio-tungstenite, one task per connection), `write-loop` (the cost of one
//! `write(2)` per delivery).

pub mod auth;
pub mod procfs;
pub mod protocol;
pub mod room;

/// The only conversation the bench servers serve.
pub const ROOM: &str = "world";
