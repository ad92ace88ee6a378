//! im-repo: the data service. It is the only component that talks to the
//! relational store and the KV store; logic and task reach it through the
//! `Repo` gRPC contract (in process in the embedded mode).
//!
//! # Layout
//! - [`service`]: `RepoService`, the `Repo` implementation over a
//!   [`Store`](gochat_infra::store::Store) and a [`Kv`](gochat_infra::kv::Kv),
//!   with cache-aside user reads (update the database, then delete the cache).

#![forbid(unsafe_code)]

pub mod service;

pub use service::{RepoService, WORLD_ID};
