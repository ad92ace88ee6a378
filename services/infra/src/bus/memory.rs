//! The embedded bus: Kafka's model in one process, with an optional durable
//! log in SQLite.
//!
//! # Design
//!
//! ```text
//!  produce ──► Topic ─┬─ Partition 0: base │ r r r r r r │ visible ≤ end
//!  (key → partition_for)  Partition 1: ...   ▲       ▲
//!                     │                      │       └ member position (own)
//!                     │                      └ group committed offset
//!                     └─ groups: every group that ever subscribed
//!
//!  Group ── members (join order) ── owners[topic][partition] = member
//! ```
//!
//! | piece | how it works |
//! |---|---|
//! | partition | a window `[base, base+len)` of the log in a `VecDeque`; offsets start at 0 and only grow. `visible` is the high watermark: consumers read below it. Memory-only topics: `visible = end` at once; durable topics: it moves when the log write is committed, so no consumer ever sees a record a crash could lose. |
//! | group | committed offset per partition (kept while the group has no member), live members, the owner of each partition. |
//! | rebalance | on every join and leave (`Drop` of the consumer): each topic's partitions go round-robin to the members subscribed to it, in join order. A member keeps its position on a partition it keeps; one it gains starts at the committed offset, so what the previous owner did not commit is delivered again. |
//! | poll | one record per partition in turn from a rotating start (fair), offset order per partition; waits on the member's `Notify`, which produce, the log writer and rebalances signal. |
//! | commit | per partition `max(offset)+1`, never backwards, ignored for partitions the member no longer owns. |
//! | memory | a partition keeps records from the smallest committed offset of the topic's groups; a topic no group subscribed to keeps the last `retention_records`. |
//! | log (durable topics) | SQLite, WAL, one writer task that commits all queued appends, offsets and trims in one transaction (group commit); `produce` and `commit` resolve after it. Rows below the smallest committed offset are deleted on commit. |
//! | recovery (`open`) | topics, committed offsets, then each partition's rows from the smallest committed offset, with their original offsets; the next offset continues after the last row (or the highest commit). Topics in the log stay durable. |
//!
//! Everything is behind one `parking_lot` mutex held for short, synchronous
//! sections; awaits (the log, waiting for records) happen outside it.

mod log;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use self::log::{LogOp, LogRequest, LogWriter};
use self::state::{Entry, Member, Partition, State, Topic};
use super::{Bus, BusError, Consumer, OutRecord, Record, RecordMeta, partition_for, topics};

/// Most partitions a topic may have.
pub(crate) const MAX_PARTITIONS: u32 = 4096;
/// Longest topic or group name (Kafka's limit).
const MAX_NAME: usize = 249;
/// Longest run of missing offsets recovery pads over instead of skipping.
const MAX_GAP: u64 = 100_000;

/// Configuration of the embedded bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBusConfig {
    /// Partitions of a topic created by produce/subscribe (default 8).
    pub default_partitions: u32,
    /// SQLite file for durable topics; `None`: nothing is durable.
    pub log_path: Option<PathBuf>,
    /// Durable topics: exact names, or prefixes ending in `*`.
    pub durable_topics: Vec<String>,
    /// Records kept per partition of a topic no group subscribed to.
    pub retention_records: usize,
}

impl Default for MemoryBusConfig {
    fn default() -> Self {
        Self {
            default_partitions: 8,
            log_path: None,
            durable_topics: vec![topics::PERSIST.to_owned(), topics::FANOUT.to_owned()],
            retention_records: 100_000,
        }
    }
}

impl MemoryBusConfig {
    fn is_durable(&self, topic: &str) -> bool {
        self.log_path.is_some()
            && self.durable_topics.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => p == topic,
            })
    }
}

/// The in-process bus (see the module docs).
#[derive(Debug)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: MemoryBusConfig,
    state: Mutex<State>,
    log: Option<LogWriter>,
    /// Signalled on commits, new visible records and close (for `wait_caught_up`).
    progress: Notify,
}

fn check_name(kind: &str, name: &str) -> Result<(), BusError> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(BusError::Invalid(format!("bad {kind} name {name:?}")));
    }
    Ok(())
}

fn check_partitions(partitions: u32) -> Result<(), BusError> {
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Err(BusError::Invalid(format!("partitions must be 1..={MAX_PARTITIONS}, not {partitions}")));
    }
    Ok(())
}

fn deadline(wait: Duration) -> Option<Instant> {
    Instant::now().checked_add(wait)
}

impl MemoryBus {
    /// Opens the bus, reloading durable topics from `config.log_path`.
    pub async fn open(config: MemoryBusConfig) -> Result<Arc<MemoryBus>, BusError> {
        check_partitions(config.default_partitions)?;
        if config.retention_records == 0 {
            return Err(BusError::Invalid("retention_records must be at least 1".into()));
        }
        let mut state = State::default();
        let log = match &config.log_path {
            Some(path) => {
                let mut conn = log::open(path).await?;
                recover(&mut conn, &mut state, config.retention_records).await?;
                Some(log::spawn_writer(conn))
            }
            None => None,
        };
        let shared = Arc::new(Shared { config, state: Mutex::new(state), log, progress: Notify::new() });
        Ok(Arc::new(MemoryBus { shared }))
    }

    /// Stops the bus: writes what is queued to the log and closes it. Later
    /// calls fail with [`BusError::Closed`]; waiting polls return it.
    pub async fn close(&self) {
        {
            let mut st = self.shared.state.lock();
            st.closed = true;
            st.wake_all();
        }
        self.shared.progress.notify_waiters();
        if let Some(log) = &self.shared.log {
            log.close().await;
        }
    }

    /// Records of `topic` after `group`'s committed offsets (0 for an
    /// unknown topic).
    pub fn lag(&self, group: &str, topic: &str) -> u64 {
        self.shared.lag(group, topic)
    }

    /// Waits until `group` has committed everything visible in `topic`;
    /// false when `timeout` passes first (or the bus closes).
    pub async fn wait_caught_up(&self, group: &str, topic: &str, timeout: Duration) -> bool {
        let deadline = deadline(timeout);
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.lag(group, topic) == 0 {
                return true;
            }
            if self.shared.state.lock().closed {
                return false;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return self.shared.lag(group, topic) == 0;
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The retained window of one partition, `(base, records in memory)`.
    #[cfg(test)]
    fn retained(&self, topic: &str, partition: u32) -> Option<(u64, usize)> {
        let st = self.shared.state.lock();
        let p = st.topics.get(topic)?.partitions.get(partition as usize)?;
        Some((p.base, p.entries.len()))
    }
}

/// Rebuilds the durable topics from the log.
async fn recover(conn: &mut sqlx::SqliteConnection, st: &mut State, retention: usize) -> Result<(), BusError> {
    for (name, partitions) in log::load_topics(conn).await? {
        st.topics.insert(name, Topic::new(partitions, true));
    }
    for (group, topic, partition, next) in log::load_offsets(conn).await? {
        let Some(t) = st.topics.get_mut(&topic) else {
            tracing::warn!(group, topic, "bus log: committed offset of an unknown topic, skipped");
            continue;
        };
        let count = t.partitions.len();
        if partition as usize >= count {
            tracing::warn!(group, topic, partition, "bus log: committed offset of an unknown partition, skipped");
            continue;
        }
        t.groups.insert(group.clone());
        let committed = st.groups.entry(group).or_default().committed.entry(topic).or_insert_with(|| vec![0; count]);
        committed[partition as usize] = committed[partition as usize].max(next);
    }
    let names: Vec<String> = st.topics.keys().cloned().collect();
    for name in names {
        let count = st.topics.get(&name).map_or(0, |t| t.partitions.len()) as u32;
        for p in 0..count {
            let commits: Vec<u64> =
                st.topics[&name].groups.iter().map(|g| st.groups.get(g).map_or(0, |g| g.committed_at(&name, p))).collect();
            let floor = commits.iter().copied().min().unwrap_or(0);
            let highest = commits.iter().copied().max().unwrap_or(0);
            let rows = log::load_records(conn, &name, p, floor).await?;
            let partition = rebuild_partition(&name, p, rows, highest);
            if let Some(t) = st.topics.get_mut(&name) {
                let no_groups = t.groups.is_empty();
                let slot = &mut t.partitions[p as usize];
                *slot = partition;
                if no_groups {
                    let end = slot.end();
                    slot.trim_below(end.saturating_sub(retention as u64));
                }
            }
        }
    }
    Ok(())
}

/// One partition from its log rows (offset order). Holes become lost
/// records; the next offset is after the last row and after every commit.
fn rebuild_partition(topic: &str, partition: u32, rows: Vec<(u64, Option<Entry>)>, highest_commit: u64) -> Partition {
    let mut part = Partition::starting_at(rows.first().map_or(highest_commit, |r| r.0));
    for (offset, entry) in rows {
        if offset < part.end() {
            continue;
        }
        let gap = offset - part.end();
        if gap > MAX_GAP {
            tracing::warn!(topic, partition, from = part.end(), to = offset, "bus log: large hole, records before it dropped");
            part = Partition::starting_at(offset);
        } else if gap > 0 {
            tracing::warn!(topic, partition, from = part.end(), to = offset, "bus log: missing records skipped");
        }
        while part.end() < offset {
            part.push(None);
        }
        part.push(entry);
    }
    if part.end() < highest_commit {
        // Committed records whose rows are gone: nothing to deliver, but
        // offsets must not be reused.
        part = Partition::starting_at(highest_commit);
    }
    part.visible = part.end();
    part
}

impl Shared {
    fn lag(&self, group: &str, topic: &str) -> u64 {
        let st = self.state.lock();
        let Some(t) = st.topics.get(topic) else {
            return 0;
        };
        let g = st.groups.get(group);
        t.partitions.iter().enumerate().map(|(p, part)| part.pending_from(g.map_or(0, |g| g.committed_at(topic, p as u32)))).sum()
    }

    /// Creates `name` if missing; queues its log row when it is durable.
    fn ensure_topic(&self, st: &mut State, name: &str, partitions: u32, ops: &mut Vec<LogOp>) {
        if st.topics.contains_key(name) {
            return;
        }
        let durable = self.config.is_durable(name);
        if durable {
            ops.push(LogOp::Topic { topic: name.to_owned(), partitions });
        }
        st.topics.insert(name.to_owned(), Topic::new(partitions, durable));
    }

    /// Queues `ops`; the receiver resolves once they are in the log.
    fn write(&self, ops: Vec<LogOp>, after: Option<log::AfterWrite>) -> Result<Option<oneshot::Receiver<Result<(), String>>>, BusError> {
        let Some(log) = &self.log else {
            return Ok(None);
        };
        if ops.is_empty() {
            return Ok(None);
        }
        let (done, rx) = oneshot::channel();
        log.send(LogRequest { ops, after, done })?;
        Ok(Some(rx))
    }

    /// Makes durable appends visible once written, or marks them lost.
    fn after_append(weak: Weak<Shared>, appended: Vec<(String, u32, u64)>) -> log::AfterWrite {
        Box::new(move |result| {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut st = shared.state.lock();
            for (topic, partition, offset) in &appended {
                let Some(part) = st.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(*partition as usize)) else {
                    continue;
                };
                match result {
                    Ok(()) => part.visible = part.visible.max(offset + 1),
                    Err(_) => {
                        if let Some(slot) = part.get_mut(*offset) {
                            *slot = None;
                        }
                    }
                }
            }
            if result.is_ok() {
                let mut touched: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
                for (topic, partition, _) in &appended {
                    touched.entry(topic).or_default().push(*partition);
                }
                for (topic, partitions) in touched {
                    st.wake_owners(topic, partitions);
                }
            }
            drop(st);
            shared.progress.notify_waiters();
        })
    }
}

async fn await_log(rx: Option<oneshot::Receiver<Result<(), String>>>) -> Result<(), BusError> {
    match rx {
        None => Ok(()),
        Some(rx) => match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Storage(e)),
            Err(_) => Err(BusError::Closed),
        },
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        check_name("topic", topic)?;
        check_partitions(partitions)?;
        let shared = &self.shared;
        let rx = {
            let mut st = shared.state.lock();
            if st.closed {
                return Err(BusError::Closed);
            }
            let mut ops = Vec::new();
            shared.ensure_topic(&mut st, topic, partitions, &mut ops);
            shared.write(ops, None)?
        };
        await_log(rx).await
    }

    async fn produce(&self, records: Vec<OutRecord>) -> Result<Vec<RecordMeta>, BusError> {
        for r in &records {
            check_name("topic", &r.topic)?;
        }
        let shared = &self.shared;
        let timestamp_ms = crate::now_ms();
        let mut metas = Vec::with_capacity(records.len());
        let rx = {
            let mut st = shared.state.lock();
            if st.closed {
                return Err(BusError::Closed);
            }
            let mut ops = Vec::new();
            let mut durable_appends = Vec::new();
            let mut touched: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for r in records {
                shared.ensure_topic(&mut st, &r.topic, shared.config.default_partitions, &mut ops);
                let Some(topic) = st.topics.get_mut(&r.topic) else {
                    return Err(BusError::UnknownTopic(r.topic));
                };
                let partition = partition_for(&r.key, topic.partitions.len() as u32);
                let part = &mut topic.partitions[partition as usize];
                let entry = Entry { key: r.key, value: r.value, headers: r.headers, timestamp_ms };
                let offset = if topic.durable {
                    let offset = part.end();
                    ops.push(LogOp::Append { topic: r.topic.clone(), partition, offset, entry: entry.clone() });
                    durable_appends.push((r.topic.clone(), partition, offset));
                    part.push(Some(entry))
                } else {
                    let offset = part.push(Some(entry));
                    part.visible = part.end();
                    offset
                };
                metas.push(RecordMeta { partition, offset });
                let list = touched.entry(r.topic).or_default();
                if !list.contains(&partition) {
                    list.push(partition);
                }
            }
            // Topics nobody subscribed to keep a bounded tail.
            let retention = shared.config.retention_records as u64;
            for (name, partitions) in &touched {
                let Some(topic) = st.topics.get_mut(name) else {
                    continue;
                };
                if !topic.groups.is_empty() {
                    continue;
                }
                for &p in partitions {
                    let part = &mut topic.partitions[p as usize];
                    let below = part.end().saturating_sub(retention);
                    if part.trim_below(below) && topic.durable {
                        ops.push(LogOp::Trim { topic: name.clone(), partition: p, below: part.base });
                    }
                }
            }
            for (name, partitions) in &touched {
                if st.topics.get(name).is_some_and(|t| !t.durable) {
                    st.wake_owners(name, partitions.iter().copied());
                }
            }
            let after = (!durable_appends.is_empty()).then(|| Shared::after_append(Arc::downgrade(shared), durable_appends));
            shared.write(ops, after)?
        };
        shared.progress.notify_waiters();
        await_log(rx).await?;
        Ok(metas)
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, BusError> {
        check_name("group", group)?;
        if topics.is_empty() {
            return Err(BusError::Invalid("subscribe needs at least one topic".into()));
        }
        for t in topics {
            check_name("topic", t)?;
        }
        let shared = &self.shared;
        let notify = Arc::new(Notify::new());
        let (consumer, rx) = {
            let mut st = shared.state.lock();
            if st.closed {
                return Err(BusError::Closed);
            }
            let mut ops = Vec::new();
            let mut names: Vec<String> = Vec::new();
            for t in topics {
                shared.ensure_topic(&mut st, t, shared.config.default_partitions, &mut ops);
                if !names.iter().any(|n| n == t) {
                    names.push((*t).to_owned());
                }
            }
            let id = st.next_member;
            st.next_member += 1;
            let State { topics: all, groups, .. } = &mut *st;
            let g = groups.entry(group.to_owned()).or_default();
            for name in &names {
                let Some(topic) = all.get_mut(name) else {
                    return Err(BusError::UnknownTopic(name.clone()));
                };
                let count = topic.partitions.len();
                if topic.groups.insert(group.to_owned()) && topic.durable {
                    // Record the group in the log so recovery keeps what it
                    // has not read (0 never lowers a commit).
                    ops.extend((0..count as u32).map(|p| LogOp::Offset {
                        group: group.to_owned(),
                        topic: name.clone(),
                        partition: p,
                        next: 0,
                    }));
                }
                g.committed.entry(name.clone()).or_insert_with(|| vec![0; count]);
            }
            g.members.insert(id, Member { topics: names, assigned: Vec::new(), notify: notify.clone() });
            g.rebalance(all);
            // The consumer exists before the await, so a failure or a
            // cancelled subscribe still leaves the group through Drop.
            let consumer = MemoryConsumer { shared: shared.clone(), group: group.to_owned(), id, notify, cursor: 0 };
            (consumer, shared.write(ops, None)?)
        };
        await_log(rx).await?;
        Ok(Box::new(consumer))
    }
}

/// A member of a consumer group; dropping it leaves the group.
#[derive(Debug)]
pub struct MemoryConsumer {
    shared: Arc<Shared>,
    group: String,
    id: u64,
    notify: Arc<Notify>,
    cursor: usize,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        if max == 0 {
            return Err(BusError::Invalid("poll max must be at least 1".into()));
        }
        let deadline = deadline(wait);
        loop {
            {
                let mut st = self.shared.state.lock();
                if st.closed {
                    return Err(BusError::Closed);
                }
                let State { topics, groups, .. } = &mut *st;
                let Some(group) = groups.get_mut(&self.group) else {
                    return Err(BusError::Closed);
                };
                let records = group.take(self.id, topics, max, self.cursor);
                self.cursor = self.cursor.wrapping_add(1);
                if !records.is_empty() {
                    return Ok(records);
                }
            }
            // `notify_one` keeps a permit, so a wake between the check
            // above and this wait is not lost.
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, self.notify.notified()).await.is_err() {
                        return Ok(Vec::new());
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), BusError> {
        let mut next: BTreeMap<(&str, u32), u64> = BTreeMap::new();
        for r in records {
            let n = r.offset.checked_add(1).ok_or_else(|| BusError::Invalid("offset out of range".into()))?;
            let slot = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
            *slot = (*slot).max(n);
        }
        if next.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        let rx = {
            let mut st = shared.state.lock();
            if st.closed {
                return Err(BusError::Closed);
            }
            let State { topics, groups, .. } = &mut *st;
            let Some(group) = groups.get_mut(&self.group) else {
                return Err(BusError::Closed);
            };
            let Some(member) = group.members.get(&self.id) else {
                return Err(BusError::Closed);
            };
            // Validate everything before changing anything.
            let mut owned = Vec::new();
            for (&(topic, partition), &n) in &next {
                if !member.owns(topic, partition) {
                    tracing::debug!(topic, partition, "commit for a partition this consumer no longer owns, ignored");
                    continue;
                }
                let visible = topics.get(topic).and_then(|t| t.partitions.get(partition as usize)).map_or(0, |p| p.visible);
                if n > visible {
                    return Err(BusError::Invalid(format!("commit of {topic}/{partition} at {n}, past its end {visible}")));
                }
                owned.push((topic, partition, n));
            }
            let mut raised = Vec::new();
            for (topic, partition, n) in owned {
                let Some(c) = group.committed.get_mut(topic).and_then(|c| c.get_mut(partition as usize)) else {
                    continue;
                };
                if n > *c {
                    *c = n;
                    raised.push((topic, partition, n));
                }
            }
            let mut ops = Vec::new();
            for &(topic, partition, n) in &raised {
                let durable = st.topics.get(topic).is_some_and(|t| t.durable);
                if durable {
                    ops.push(LogOp::Offset { group: self.group.clone(), topic: topic.to_owned(), partition, next: n });
                }
                let Some(min) = st.min_committed(topic, partition) else {
                    continue;
                };
                let Some(part) = st.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize)) else {
                    continue;
                };
                if part.trim_below(min) && durable {
                    ops.push(LogOp::Trim { topic: topic.to_owned(), partition, below: part.base });
                }
            }
            shared.write(ops, None)?
        };
        shared.progress.notify_waiters();
        await_log(rx).await
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        let State { topics, groups, .. } = &mut *st;
        let Some(group) = groups.get_mut(&self.group) else {
            return;
        };
        if group.members.remove(&self.id).is_some() {
            group.rebalance(topics);
        }
    }
}
