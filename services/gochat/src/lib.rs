//! The `gochat` command's library: wiring the services together.
//!
//! # Layout
//! - [`embedded`]: `gochat up` — gateway, logic, repo and task in one
//!   process on the embedded adapters (SQLite, the in-process bus with its
//!   durable log, the in-memory KV store).
//! - [`secret`]: the JWT secret kept in the data directory.
//! - [`seed`]: `gochat seed`, bulk load-test users for `gochat-loadgen`.
//! - [`shards`]: `gochat shards`, the live per-shard table of a gateway.

#![forbid(unsafe_code)]

#[cfg(feature = "distributed")]
pub mod distributed;
pub mod embedded;
pub mod secret;
pub mod seed;
pub mod shards;
