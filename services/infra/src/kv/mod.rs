//! Presence, sequence counters, idempotency keys, token revocation and
//! caches: the Redis side of DATA.md. [`memory::MemoryKv`] is the embedded
//! implementation; `redis::RedisKv` (feature `redis`) is the distributed
//! mode's. Both pass the behaviour suite in `kv::tests`.

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
/// The shared behaviour suite, run by each implementation's tests.
#[cfg(test)]
pub(crate) mod tests;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gochat_proto::common::PresenceEntry;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("kv backend error: {0}")]
    Backend(String),
}

pub type KvResult<T> = Result<T, KvError>;

#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// `INCR conv:seq:{conv}` when the counter exists; `None` when it is
    /// missing (the caller seeds it from the store and calls again).
    async fn seq_incr(&self, conversation_id: &str) -> KvResult<Option<i64>>;
    /// Sets the counter to `value` if it is missing (`SET NX`).
    async fn seq_seed(&self, conversation_id: &str, value: i64) -> KvResult<()>;
    /// The counter's current value (`GET`), without taking one.
    async fn seq_current(&self, conversation_id: &str) -> KvResult<Option<i64>>;

    /// `SET key value NX PX ttl`: `None` when this call took the key,
    /// otherwise the value that holds it.
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<Option<Bytes>>;
    /// `SET key value PX ttl`.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<()>;
    async fn get(&self, key: &str) -> KvResult<Option<Bytes>>;
    /// `MGET`: one value (or `None`) per key, in order.
    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Bytes>>>;
    /// `SET key value PX ttl` for every entry, in one round trip.
    async fn set_many(&self, entries: &[(String, Bytes)], ttl: Duration) -> KvResult<()>;
    async fn del(&self, keys: &[String]) -> KvResult<()>;
    /// Keys with this prefix and their values (small key spaces only, e.g. revocations).
    async fn scan_prefix(&self, prefix: &str) -> KvResult<Vec<(String, Bytes)>>;

    /// `HSET user:online:{user} conn gateway` + expiry; returns the number of live connections.
    async fn presence_add(&self, entry: &PresenceEntry, ttl: Duration) -> KvResult<usize>;
    /// `HDEL`; returns the number of live connections left.
    async fn presence_remove(&self, user_id: i64, conn_id: &str) -> KvResult<usize>;
    /// Extends the expiry of entries that are still present (heartbeat); an
    /// entry removed meanwhile (the connection closed) is not brought back.
    async fn presence_refresh(&self, entries: &[PresenceEntry], ttl: Duration) -> KvResult<()>;
    /// Live connections of these users.
    async fn presence_get(&self, user_ids: &[i64]) -> KvResult<Vec<PresenceEntry>>;
}

/// Key names (DATA.md "Redis keys").
pub mod keys {
    pub fn idempotency(user_id: i64, client_msg_id: &str) -> String {
        format!("msg:idem:{user_id}:{client_msg_id}")
    }
    pub const REVOKED_PREFIX: &str = "token:revoked:";
    pub fn revoked(jti: &str) -> String {
        format!("{REVOKED_PREFIX}{jti}")
    }
    pub fn user_info(user_id: i64) -> String {
        format!("user:info:{user_id}")
    }
    pub fn conversation_info(conversation_id: &str) -> String {
        format!("conv:info:{conversation_id}")
    }
    /// The conversation without the fields each new message changes.
    pub fn conversation_meta(conversation_id: &str) -> String {
        format!("conv:meta:{conversation_id}")
    }
    pub fn member(conversation_id: &str, user_id: i64) -> String {
        format!("conv:member:{conversation_id}:{user_id}")
    }
    pub fn member_ids(conversation_id: &str) -> String {
        format!("conv:members:{conversation_id}")
    }
}
