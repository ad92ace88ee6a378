//! gateway-core: a thread-per-core WebSocket server engine on io_uring (glommio),
//! with no business logic. A service plugs in a [`Handler`] (one instance per
//! shard) and pushes to connections from any thread through a [`Pusher`].
//!
//! Each shard is a pinned glommio executor on its own thread with its own
//! `SO_REUSEPORT` listener, so the kernel spreads accepts. A shard owns its
//! connections outright (`Rc`/`RefCell`, no locks on the message path);
//! other threads reach it only through its command channel. Every connection
//! has a bounded outbound queue: passing `max_outbound_bytes` closes it with
//! 1013 instead of stalling the shard.
//!
//! The WebSocket protocol is the engine's own ([`codec`], [`handshake`]): an
//! idle connection holds no read or write buffer (reads go through one
//! shard-wide scratch buffer), about 1.0 KB of RSS in all; a downstream frame
//! is encoded once and its `Bytes` shared by every target socket; each
//! connection flushes all its pending frames in one write per loop turn.
//!
//! Each shard keeps its locked memory small ([`IO_MEMORY_PER_SHARD`] of
//! registered buffers; rings of [`RING_DEPTH`] entries when RLIMIT_MEMLOCK is
//! at least 8 MiB or unlimited, else [`SMALL_RING_DEPTH`], see
//! [`ring_depth`]): with small rings several engines of a few shards fit in
//! well under 1 MiB of RLIMIT_MEMLOCK. glommio itself refuses
//! to start below 512 KiB; see [`check_platform`]. For unprivileged users the
//! kernel charges io_uring memory to the *user*, across all its processes.
//!
//! # Layout
//! - [`api`]: the handler contract (`Handler`, `TextFrame`, `ConnId`, `Reply`, ...).
//! - `config`: [`EngineConfig`] and its defaults.
//! - `engine`: [`Engine::start`], [`EngineHandle`], [`Pusher`].
//! - `shard`: one executor's listener, accept loop, connection index and command loop.
//! - `conn`: one connection task: handshake, read/dispatch, coalesced flush, close handshake.
//! - [`codec`]: RFC 6455 frame encode (once per message) and the incremental client-frame decoder.
//! - [`handshake`]: the bounded HTTP upgrade parser and its responses.
//! - `stats`: per-shard counters and [`ShardStats`].
//! - `platform`: memlock/kernel checks; the crate's only `unsafe`.
//! - `error`: [`EngineError`].
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod codec;
mod config;
mod conn;
mod engine;
mod error;
pub mod handshake;
#[allow(unsafe_code)]
mod platform;
mod shard;
mod stats;

pub use api::*;
pub use config::EngineConfig;
pub use engine::{Engine, EngineHandle, IO_MEMORY_PER_SHARD, Pusher, RING_DEPTH, SMALL_RING_DEPTH, ring_depth};
pub use error::EngineError;
pub use platform::{MIN_MEMLOCK_BYTES, check_platform};
pub use stats::ShardStats;
