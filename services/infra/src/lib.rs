//! Shared infrastructure for the GoChat services.
//!
//! Everything here is the same in the embedded and distributed modes except
//! the adapters, which are traits with one implementation per mode.
//!
//! # Layout
//! - [`config`]: layered configuration (defaults → file → `GOCHAT_*` env → flags).
//! - [`error`]: the client-facing error codes and their one mapping to and
//!   from gRPC statuses.
//! - [`bus`]: the message bus (Kafka model); [`bus::memory`] is the embedded
//!   one, `bus::kafka` (feature `kafka`) the distributed one.
//! - [`store`]: the relational store; [`store::sqlite`] is the embedded one,
//!   `store::mysql` (feature `mysql`) the distributed one.
//! - [`kv`]: presence, sequences, idempotency keys, token revocation and
//!   caches (Redis model); [`kv::memory`] is the embedded one, `kv::redis`
//!   (feature `redis`) the distributed one.
//! - [`auth`]: JWT access/refresh tokens and the revocation set.
//! - [`push`]: presence-based routing of downstream records to gateways.
//! - [`ids`]: snowflake ids.
//! - [`telemetry`]: tracing setup and Prometheus metrics.
//! - [`shutdown`]: the one shutdown signal every component listens to.
//! - [`codec`]: protobuf records on the bus, with trace ids.
//! - `coord` (feature `etcd`): configuration documents, registration,
//!   discovery and node-id claims on etcd (distributed mode).

#![forbid(unsafe_code)]

pub mod auth;
pub mod bus;
pub mod codec;
pub mod config;
#[cfg(feature = "etcd")]
pub mod coord;
pub mod error;
pub mod ids;
pub mod kv;
pub mod push;
pub mod shutdown;
pub mod store;
pub mod telemetry;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Awaits an in-process or remote gRPC call and unwraps its response into
/// an [`error::AppError`] result.
pub async fn rpc<T>(call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> error::AppResult<T> {
    call.await.map(tonic::Response::into_inner).map_err(|s| error::AppError::from_status(&s))
}
