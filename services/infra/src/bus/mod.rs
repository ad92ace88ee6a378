//! The message bus: Kafka's model (topics, partitions by key, consumer
//! groups, explicit commits, redelivery of what was not committed).
//!
//! [`memory::MemoryBus`] is the embedded implementation (in-process, with an
//! optional durable log in SQLite); `kafka::KafkaBus` (feature `kafka`) is
//! the distributed mode's.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus closed")]
    Closed,
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("invalid bus request: {0}")]
    Invalid(String),
    #[error("bus storage error: {0}")]
    Storage(String),
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub topic: String,
    /// Records with the same key go to the same partition, in order.
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

impl OutRecord {
    pub fn new(topic: impl Into<String>, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self { topic: topic.into(), key: key.into(), value: value.into(), headers: Vec::new() }
    }

    /// Adds a header (e.g. `trace_id`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub partition: u32,
    pub offset: u64,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: i64,
}

impl Record {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Creates the topic if it does not exist (idempotent; an existing
    /// topic keeps its partition count).
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError>;
    /// Appends records; resolves once they are as durable as the bus
    /// promises (Kafka: acks=all; embedded: committed to the log file for
    /// durable topics). Records of one call with the same key keep their order.
    async fn produce(&self, records: Vec<OutRecord>) -> Result<Vec<RecordMeta>, BusError>;
    /// Joins `group` for `topics`. Partitions are shared among the group's
    /// live consumers; a consumer starts each partition it is given at the
    /// group's committed offset (the beginning when nothing was committed).
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BusError>;
}

#[async_trait]
pub trait Consumer: Send {
    /// Up to `max` records, waiting at most `wait` for the first one (an
    /// empty vec after the wait). Records of one partition come in offset order.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError>;
    /// Commits, per (topic, partition), the offset after the highest record
    /// given. Records not committed when the consumer goes away (dropped or
    /// its partitions moved) are delivered again to the group.
    async fn commit(&mut self, records: &[Record]) -> Result<(), BusError>;
}

/// Produces one record (a convenience over [`Bus::produce`]).
pub async fn produce_one(bus: &dyn Bus, record: OutRecord) -> Result<RecordMeta, BusError> {
    bus.produce(vec![record]).await?.into_iter().next().ok_or_else(|| BusError::Invalid("produce returned no metadata".into()))
}

/// Stable partition for a key (FNV-1a, so every producer agrees).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// Topic names (DATA.md).
pub mod topics {
    pub const UPSTREAM: &str = "gochat.messages.upstream";
    pub const PERSIST: &str = "gochat.messages.persist";
    pub const FANOUT: &str = "gochat.tasks.fanout";
    pub const USER_EVENTS: &str = "gochat.user-events";
    pub const MESSAGE_EVENTS: &str = "gochat.message-events";
    pub const NOTIFICATIONS: &str = "gochat.notifications";
    pub const DLQ: &str = "gochat.dlq";
    /// Downstream topic of one gateway instance.
    pub fn downstream(gateway_id: &str) -> String {
        format!("gochat.messages.downstream.{gateway_id}")
    }
}

/// Consumer group names (ARCHITECTURE.md §2).
pub mod groups {
    pub const LOGIC_UPSTREAM: &str = "logic.upstream.group";
    pub const LOGIC_USER_EVENTS: &str = "logic.user-events.group";
    pub const TASK_PERSIST: &str = "task.persist.group";
    pub const TASK_FANOUT: &str = "task.fanout.group";
    pub fn gateway_downstream(gateway_id: &str) -> String {
        format!("gateway.downstream.group.{gateway_id}")
    }
    pub fn gateway_events(gateway_id: &str) -> String {
        format!("gateway.user-events.group.{gateway_id}")
    }
}
