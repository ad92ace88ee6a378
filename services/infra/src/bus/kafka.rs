//! [`Bus`] on Kafka (librdkafka through `rdkafka`): the distributed mode's
//! message bus.
//!
//! | piece | how it maps |
//! |---|---|
//! | names | every topic and group is `{namespace}{name}` on the broker, so deployments (and test runs) share one cluster; records handed out carry the un-prefixed topic |
//! | topics | created through the admin API when first produced to or subscribed to (`default_partitions`), or by [`Bus::create_topic`]; an existing topic is left alone |
//! | produce | one `FutureProducer`, `acks=all`, idempotent (falls back to `max.in.flight=1` when the broker refuses idempotence); a call enqueues its records in order, then awaits every delivery |
//! | subscribe | one `StreamConsumer` per call, in the group, auto-commit off, `auto.offset.reset=earliest` |
//! | poll | waits up to `wait` for one record, then takes what is already fetched, up to `max` |
//! | commit | per partition the highest offset + 1, synchronous, only for partitions this consumer still owns; a commit refused because of a rebalance is logged, not returned: the new owner gets the records again (at-least-once; every write downstream is idempotent) |
//! | drop | the consumer leaves its group on a blocking thread, so its partitions move at once |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::memory::MAX_PARTITIONS;
use super::{Bus, BusError, Consumer, OutRecord, Record, RecordMeta};

/// Longest topic or group name Kafka accepts, namespace included.
const MAX_NAME: usize = 249;

/// Where the bus is and how it names things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    /// `host:port[,host:port...]`
    pub brokers: String,
    /// Prefixed to every topic and group name (may be empty).
    pub namespace: String,
    pub client_id: String,
    /// Partitions of a topic created on first use.
    pub default_partitions: u32,
    /// Replication factor of the topics this bus creates.
    pub replication_factor: i16,
    /// A consumer that stops heartbeating for this long leaves its group.
    pub session_timeout_ms: u32,
    /// A produce that is not acknowledged within this fails (broker down).
    pub message_timeout_ms: u32,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            namespace: String::new(),
            client_id: "gochat".to_owned(),
            default_partitions: 8,
            replication_factor: 1,
            session_timeout_ms: 10_000,
            message_timeout_ms: 30_000,
        }
    }
}

/// Routes librdkafka's logs and errors to `tracing`, and logs rebalances.
#[derive(Clone)]
struct Context {
    client: &'static str,
    group: String,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let (client, group) = (self.client, self.group.as_str());
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(client, group, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(client, group, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(client, group, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(client, group, fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(client = self.client, group = self.group, %error, "kafka client error: {reason}");
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(group = self.group, partitions = %describe(tpl), "kafka: partitions assigned"),
            Rebalance::Revoke(tpl) => tracing::info!(group = self.group, partitions = %describe(tpl), "kafka: partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(group = self.group, error = %e, "kafka: rebalance failed"),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

fn storage(what: &str, e: KafkaError) -> BusError {
    BusError::Storage(format!("kafka {what}: {e}"))
}

/// Kafka's rule for names: `[a-zA-Z0-9._-]{1,249}`.
fn check_name(kind: &str, name: &str) -> Result<(), BusError> {
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(BusError::Invalid(format!("bad kafka {kind} name {name:?}")));
    }
    Ok(())
}

/// The name must be valid on its own (so not empty) and with the namespace.
fn check_namespaced(kind: &str, namespace: &str, name: &str) -> Result<(), BusError> {
    check_name(kind, name)?;
    check_name(kind, &format!("{namespace}{name}"))
}

fn check_partitions(partitions: u32) -> Result<(), BusError> {
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Err(BusError::Invalid(format!("partitions must be 1..={MAX_PARTITIONS}, not {partitions}")));
    }
    Ok(())
}

/// The producer in use, and whether it is the idempotent one.
struct Producer {
    inner: FutureProducer<Context>,
    idempotent: bool,
}

/// The Kafka bus (see the module docs).
pub struct KafkaBus {
    opts: KafkaOptions,
    producer: ArcSwap<Producer>,
    admin: AdminClient<Context>,
    /// Topics (namespaced) known to exist: created or found by this bus.
    known: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus").field("opts", &self.opts).field("idempotent", &self.producer.load().idempotent).finish()
    }
}

impl KafkaBus {
    /// Creates the producer and admin clients. librdkafka connects lazily
    /// (and reconnects on its own), so a broker that is down fails the
    /// first produce or admin call, not this.
    pub async fn connect(opts: KafkaOptions) -> Result<Arc<KafkaBus>, BusError> {
        if opts.brokers.trim().is_empty() {
            return Err(BusError::Invalid("kafka brokers must not be empty".into()));
        }
        if !opts.namespace.is_empty() {
            check_name("namespace", &opts.namespace)?;
        }
        check_partitions(opts.default_partitions)?;
        if opts.replication_factor < 1 {
            return Err(BusError::Invalid(format!("replication factor must be at least 1, not {}", opts.replication_factor)));
        }
        if opts.message_timeout_ms == 0 || opts.session_timeout_ms == 0 {
            return Err(BusError::Invalid("kafka timeouts must be positive".into()));
        }
        let producer = Producer { inner: producer(&opts, true)?, idempotent: true };
        let admin = base_config(&opts)
            .create_with_context(Context { client: "admin", group: String::new() })
            .map_err(|e| storage("admin client", e))?;
        Ok(Arc::new(KafkaBus { opts, producer: ArcSwap::from_pointee(producer), admin, known: Mutex::new(HashSet::new()) }))
    }

    /// The options this bus was made with.
    pub fn options(&self) -> &KafkaOptions {
        &self.opts
    }

    /// Whether produce runs with `enable.idempotence` (false after the
    /// broker refused it).
    pub fn is_idempotent(&self) -> bool {
        self.producer.load().idempotent
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.opts.namespace)
    }

    /// Creates the namespaced `topics` this bus has not seen yet.
    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        let missing: Vec<&str> = {
            let known = self.known.lock();
            let mut seen = HashSet::new();
            topics.iter().copied().filter(|t| !known.contains(&self.name(t)) && seen.insert(*t)).collect()
        };
        for t in missing {
            self.create_topic(t, self.opts.default_partitions).await?;
        }
        Ok(())
    }

    /// Joins `group` for `topics` (the concrete consumer, for callers that
    /// want [`KafkaConsumer::assignment`]).
    pub async fn subscribe_kafka(&self, group: &str, topics: &[&str]) -> Result<KafkaConsumer, BusError> {
        if topics.is_empty() {
            return Err(BusError::Invalid("subscribe needs at least one topic".into()));
        }
        let group_name = self.name(group);
        check_namespaced("group", &self.opts.namespace, group)?;
        for t in topics {
            check_namespaced("topic", &self.opts.namespace, t)?;
        }
        self.ensure_topics(topics).await?;
        let session = self.opts.session_timeout_ms;
        let consumer: StreamConsumer<Context> = base_config(&self.opts)
            .set("group.id", &group_name)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Cooperative: a rebalance moves only the partitions that change
            // owner; the others keep their position and are not re-read.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).clamp(1, 3000).to_string())
            .create_with_context(Context { client: "consumer", group: group_name.clone() })
            .map_err(|e| storage("consumer", e))?;
        let names: Vec<String> = topics.iter().map(|t| self.name(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(|e| storage("subscribe", e))?;
        Ok(KafkaConsumer {
            inner: Some(Arc::new(consumer)),
            namespace: self.opts.namespace.clone(),
            group: group_name,
            committed: HashMap::new(),
        })
    }

    /// After a fatal producer error (librdkafka's idempotent producer is
    /// unusable after one) installs a new producer and returns true, so the
    /// caller retries: a plain one when the broker does not support
    /// idempotence (`UnsupportedFeature`, e.g. "Idempotent producer not
    /// supported by any of the connected brokers"), a fresh idempotent one
    /// otherwise. False when the error was not fatal.
    fn replace_after_fatal_error(&self, current: &Arc<Producer>) -> Result<bool, BusError> {
        let Some((code, reason)) = current.inner.client().fatal_error() else {
            return Ok(false);
        };
        if !Arc::ptr_eq(&self.producer.load_full(), current) {
            // A concurrent produce already replaced it.
            return Ok(true);
        }
        let idempotent = current.idempotent && code != RDKafkaErrorCode::UnsupportedFeature;
        if idempotent {
            tracing::error!(brokers = self.opts.brokers, ?code, reason, "kafka: the producer hit a fatal error; replacing it");
        } else {
            tracing::error!(
                brokers = self.opts.brokers,
                ?code,
                reason,
                "kafka: the broker refused the idempotent producer; falling back to acks=all without idempotence \
                 (max.in.flight=1 keeps per-key order, but a retried send may now be stored twice)"
            );
        }
        let replacement = Arc::new(Producer { inner: producer(&self.opts, idempotent)?, idempotent });
        // Only the first of several concurrent callers installs its replacement.
        self.producer.compare_and_swap(current, replacement);
        Ok(true)
    }

    /// Enqueues every record in order, then awaits every delivery.
    async fn send_all(&self, producer: &Producer, records: &[OutRecord]) -> Result<Vec<RecordMeta>, BusError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            let topic = self.name(&r.topic);
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (name, value) in &r.headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_ref()) });
            }
            let mut record = FutureRecord::to(&topic).key(r.key.as_ref()).payload(r.value.as_ref()).headers(headers);
            // Enqueueing is synchronous and in call order, which is what
            // keeps one key's records in order; a full local queue is waited
            // out rather than reordered.
            loop {
                match producer.inner.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(storage("produce", e)),
                }
            }
        }
        let mut metas = Vec::with_capacity(deliveries.len());
        for result in futures::future::join_all(deliveries).await {
            match result {
                Ok(Ok(d)) => metas.push(RecordMeta {
                    partition: u32::try_from(d.partition)
                        .map_err(|_| BusError::Storage(format!("kafka produce: partition {}", d.partition)))?,
                    offset: u64::try_from(d.offset).map_err(|_| BusError::Storage(format!("kafka produce: offset {}", d.offset)))?,
                }),
                Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                    return Err(BusError::Storage(format!(
                        "kafka produce: not acknowledged within message.timeout.ms={} ms (brokers {} unreachable?)",
                        self.opts.message_timeout_ms, self.opts.brokers
                    )));
                }
                Ok(Err((e, _))) => return Err(storage("produce", e)),
                Err(_canceled) => return Err(BusError::Closed),
            }
        }
        Ok(metas)
    }
}

fn base_config(opts: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &opts.brokers).set("client.id", &opts.client_id).set("socket.keepalive.enable", "true");
    config
}

fn producer(opts: &KafkaOptions, idempotent: bool) -> Result<FutureProducer<Context>, BusError> {
    let mut config = base_config(opts);
    config.set("acks", "all").set("linger.ms", "5").set("message.timeout.ms", opts.message_timeout_ms.to_string());
    if idempotent {
        config.set("enable.idempotence", "true");
    } else {
        config.set("enable.idempotence", "false").set("max.in.flight.requests.per.connection", "1");
    }
    config.create_with_context(Context { client: "producer", group: String::new() }).map_err(|e| storage("producer", e))
}

#[async_trait]
impl Bus for KafkaBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        check_namespaced("topic", &self.opts.namespace, topic)?;
        let name = self.name(topic);
        check_partitions(partitions)?;
        let new = NewTopic::new(&name, partitions as i32, TopicReplication::Fixed(i32::from(self.opts.replication_factor)));
        // Same patience as a produce: a broker that is down fails both alike.
        let timeout = Duration::from_millis(u64::from(self.opts.message_timeout_ms));
        let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
        let results = self.admin.create_topics([&new], &options).await.map_err(|e| storage("create topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(BusError::Storage(format!("kafka create topic {t}: {code}"))),
            }
        }
        self.known.lock().insert(name);
        Ok(())
    }

    async fn produce(&self, records: Vec<OutRecord>) -> Result<Vec<RecordMeta>, BusError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        for r in &records {
            check_namespaced("topic", &self.opts.namespace, &r.topic)?;
        }
        let topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
        self.ensure_topics(&topics).await?;
        let producer = self.producer.load_full();
        match self.send_all(&producer, &records).await {
            Err(e) if self.replace_after_fatal_error(&producer)? => {
                tracing::warn!(error = %e, "kafka: producing the batch again with the new producer");
                self.send_all(&self.producer.load_full(), &records).await
            }
            result => result,
        }
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BusError> {
        Ok(Box::new(self.subscribe_kafka(group, topics).await?))
    }
}

/// One member of a consumer group (see the module docs).
pub struct KafkaConsumer {
    /// `None` only while dropping.
    inner: Option<Arc<StreamConsumer<Context>>>,
    namespace: String,
    group: String,
    /// The last offset this member committed per (namespaced topic, partition).
    committed: HashMap<(String, u32), u64>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").field("group", &self.group).finish()
    }
}

/// Errors a consumer recovers from by itself (the broker is away, the topic
/// is not in its metadata yet): poll keeps waiting instead of failing.
fn transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::PartitionEOF
        )
    )
}

/// Commit errors that mean "this member's partitions moved": the records
/// go to their new owner, which is not a failure of the caller.
fn lost_to_rebalance(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::StaleMemberEpoch
                | RDKafkaErrorCode::AssignmentLost
                | RDKafkaErrorCode::State
        )
    )
}

impl KafkaConsumer {
    fn consumer(&self) -> Result<Arc<StreamConsumer<Context>>, BusError> {
        self.inner.clone().ok_or(BusError::Closed)
    }

    /// The (un-prefixed) topic partitions this member owns now.
    pub fn assignment(&self) -> Result<Vec<(String, u32)>, BusError> {
        let tpl = self.consumer()?.assignment().map_err(|e| storage("assignment", e))?;
        Ok(tpl
            .elements()
            .iter()
            .filter_map(|e| {
                let topic = e.topic().strip_prefix(&self.namespace).unwrap_or(e.topic());
                Some((topic.to_owned(), u32::try_from(e.partition()).ok()?))
            })
            .collect())
    }

    fn record(&self, m: &BorrowedMessage<'_>) -> Result<Record, BusError> {
        let headers = m
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice).unwrap_or_default())).collect())
            .unwrap_or_default();
        Ok(Record {
            topic: m.topic().strip_prefix(&self.namespace).unwrap_or(m.topic()).to_owned(),
            partition: u32::try_from(m.partition()).map_err(|_| BusError::Storage(format!("kafka poll: partition {}", m.partition())))?,
            offset: u64::try_from(m.offset()).map_err(|_| BusError::Storage(format!("kafka poll: offset {}", m.offset())))?,
            key: m.key().map(Bytes::copy_from_slice).unwrap_or_default(),
            value: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
            headers,
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        })
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        if max == 0 {
            return Err(BusError::Invalid("poll max must be at least 1".into()));
        }
        let consumer = self.consumer()?;
        let deadline = tokio::time::Instant::now().checked_add(wait);
        let mut out = Vec::new();
        while out.is_empty() {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, consumer.recv()).await {
                    Ok(next) => next,
                    Err(_elapsed) => return Ok(out),
                },
                None => consumer.recv().await,
            };
            match next {
                Ok(m) => out.push(self.record(&m)?),
                Err(e) if transient(&e) => tracing::warn!(group = self.group, error = %e, "kafka poll: waiting out a transient error"),
                Err(e) => return Err(storage("poll", e)),
            }
        }
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(self.record(&m)?),
                Some(Err(e)) => {
                    // Hand out what we have; a lasting error shows on the next poll.
                    tracing::warn!(group = self.group, error = %e, "kafka poll: error after records");
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut next: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for r in records {
            let slot = next.entry((format!("{}{}", self.namespace, r.topic), r.partition)).or_default();
            *slot = (*slot).max(r.offset + 1);
        }
        // Kafka would take a commit backwards; the bus contract says never.
        next.retain(|key, offset| self.committed.get(key).is_none_or(|done| *offset > *done));
        if next.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer()?;
        let group = self.group.clone();
        // A synchronous commit blocks on the broker's answer: not on a
        // runtime thread.
        let result = tokio::task::spawn_blocking(move || {
            let owned: HashSet<(String, i32)> =
                consumer.assignment()?.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            let mut tpl = TopicPartitionList::new();
            let mut foreign = Vec::new();
            let mut sent = Vec::new();
            for ((topic, partition), offset) in next {
                let Ok(p) = i32::try_from(partition) else { continue };
                let Ok(o) = i64::try_from(offset) else { continue };
                if owned.contains(&(topic.clone(), p)) {
                    tpl.add_partition_offset(&topic, p, Offset::Offset(o))?;
                    sent.push(((topic, partition), offset));
                } else {
                    foreign.push(format!("{topic}/{partition}"));
                }
            }
            if !foreign.is_empty() {
                tracing::warn!(
                    group,
                    partitions = foreign.join(","),
                    "kafka commit: skipping partitions this consumer no longer owns; their new owner gets the records again"
                );
            }
            if tpl.count() > 0 {
                consumer.commit(&tpl, CommitMode::Sync)?;
            }
            Ok(sent)
        })
        .await
        .map_err(|e| BusError::Storage(format!("kafka commit task: {e}")))?;
        match result {
            Ok(sent) => {
                self.committed.extend(sent);
                Ok(())
            }
            Err(e) if lost_to_rebalance(&e) => {
                tracing::warn!(group = self.group, error = %e, "kafka commit refused after a rebalance; the new owner gets the records again");
                Ok(())
            }
            Err(e) => Err(storage("commit", e)),
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Dropping a StreamConsumer leaves the group and waits for the
        // broker: keep that off the runtime's threads.
        let Some(consumer) = self.inner.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || drop(consumer));
            }
            Err(_) => drop(consumer),
        }
    }
}

#[cfg(test)]
mod tests;
