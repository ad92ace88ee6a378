//! The in-memory state of the embedded bus: topics, partitions, groups and
//! their members. Everything here is synchronous and runs under the bus's one
//! `parking_lot` mutex; nothing here awaits.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::bus::Record;

/// One stored record (the partition and offset are implied by its place).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: i64,
}

/// A partition: a window of the log in memory, `[base, base + entries.len())`.
///
/// `None` entries are offsets whose record is lost (a failed log write, a
/// corrupt log row); consumers skip them.
#[derive(Debug, Default)]
pub(super) struct Partition {
    pub base: u64,
    pub entries: VecDeque<Option<Entry>>,
    /// High watermark: records below it may be delivered. Equal to the end
    /// for memory-only topics; for durable topics it moves once the log
    /// write is committed.
    pub visible: u64,
}

impl Partition {
    pub fn starting_at(base: u64) -> Self {
        Self { base, entries: VecDeque::new(), visible: base }
    }

    /// The next offset to assign.
    pub fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    pub fn push(&mut self, entry: Option<Entry>) -> u64 {
        let offset = self.end();
        self.entries.push_back(entry);
        offset
    }

    pub fn get(&self, offset: u64) -> Option<&Option<Entry>> {
        let index = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.entries.get(index)
    }

    pub fn get_mut(&mut self, offset: u64) -> Option<&mut Option<Entry>> {
        let index = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.entries.get_mut(index)
    }

    /// Drops the records below `below` (never a record not yet visible).
    /// Returns whether anything was dropped.
    pub fn trim_below(&mut self, below: u64) -> bool {
        let below = below.min(self.visible);
        let mut trimmed = false;
        while self.base < below && self.entries.pop_front().is_some() {
            self.base += 1;
            trimmed = true;
        }
        trimmed
    }

    /// Records in `[from, visible)`, for lag.
    pub fn pending_from(&self, from: u64) -> u64 {
        self.visible.saturating_sub(from.max(self.base))
    }
}

#[derive(Debug)]
pub(super) struct Topic {
    pub durable: bool,
    pub partitions: Vec<Partition>,
    /// Every group that ever subscribed: their committed offsets hold the
    /// records in memory (and in the log).
    pub groups: BTreeSet<String>,
}

impl Topic {
    pub fn new(partitions: u32, durable: bool) -> Self {
        Self { durable, partitions: (0..partitions).map(|_| Partition::default()).collect(), groups: BTreeSet::new() }
    }
}

/// A partition given to a member, with the member's own read position.
#[derive(Debug, Clone)]
pub(super) struct Assigned {
    pub topic: String,
    pub partition: u32,
    pub position: u64,
}

#[derive(Debug)]
pub(super) struct Member {
    pub topics: Vec<String>,
    pub assigned: Vec<Assigned>,
    pub notify: Arc<Notify>,
}

impl Member {
    pub fn owns(&self, topic: &str, partition: u32) -> bool {
        self.assigned.iter().any(|a| a.partition == partition && a.topic == topic)
    }
}

#[derive(Debug, Default)]
pub(super) struct Group {
    /// Committed offset (the next one to read) per topic and partition.
    pub committed: HashMap<String, Vec<u64>>,
    /// Live members by id; ids grow, so this is join order.
    pub members: BTreeMap<u64, Member>,
    /// Owner of each partition per topic.
    pub owners: HashMap<String, Vec<Option<u64>>>,
}

impl Group {
    pub fn committed_at(&self, topic: &str, partition: u32) -> u64 {
        self.committed.get(topic).and_then(|c| c.get(partition as usize)).copied().unwrap_or(0)
    }

    /// Spreads the partitions of the members' topics over the members
    /// subscribed to each topic, round-robin in join order. A member keeps
    /// its position on a partition it keeps; a partition it gains starts at
    /// the group's committed offset. Every member is woken to re-check.
    pub fn rebalance(&mut self, topics: &HashMap<String, Topic>) {
        let names: BTreeSet<&String> = self.members.values().flat_map(|m| m.topics.iter()).collect();
        let mut owners: HashMap<String, Vec<Option<u64>>> = HashMap::new();
        let mut next = 0usize;
        for name in names {
            let count = topics.get(name.as_str()).map_or(0, |t| t.partitions.len());
            let subscribed: Vec<u64> = self.members.iter().filter(|(_, m)| m.topics.contains(name)).map(|(id, _)| *id).collect();
            if subscribed.is_empty() {
                continue;
            }
            let slots = (0..count)
                .map(|_| {
                    let owner = subscribed[next % subscribed.len()];
                    next += 1;
                    Some(owner)
                })
                .collect();
            owners.insert(name.clone(), slots);
        }

        let mut ordered: Vec<(&String, &Vec<Option<u64>>)> = owners.iter().collect();
        ordered.sort_by(|a, b| a.0.cmp(b.0));
        for (id, member) in self.members.iter_mut() {
            let old: HashMap<(&str, u32), u64> = member.assigned.iter().map(|a| ((a.topic.as_str(), a.partition), a.position)).collect();
            let mut assigned = Vec::new();
            for (topic, slots) in &ordered {
                for (p, owner) in slots.iter().enumerate() {
                    if *owner != Some(*id) {
                        continue;
                    }
                    let partition = p as u32;
                    let position = old
                        .get(&(topic.as_str(), partition))
                        .copied()
                        .unwrap_or_else(|| self.committed.get(topic.as_str()).and_then(|c| c.get(p)).copied().unwrap_or(0));
                    assigned.push(Assigned { topic: (*topic).clone(), partition, position });
                }
            }
            member.assigned = assigned;
            member.notify.notify_one();
        }
        self.owners = owners;
    }

    /// Takes up to `max` visible records for `member`, one partition after
    /// another starting at `cursor` (so no partition starves the others), in
    /// offset order within each partition, and advances its positions.
    pub fn take(&mut self, member: u64, topics: &HashMap<String, Topic>, max: usize, cursor: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let Some(member) = self.members.get_mut(&member) else {
            return out;
        };
        let n = member.assigned.len();
        if n == 0 {
            return out;
        }
        let mut progressed = true;
        while out.len() < max && progressed {
            progressed = false;
            for i in 0..n {
                if out.len() >= max {
                    break;
                }
                let a = &mut member.assigned[(cursor + i) % n];
                let Some(partition) = topics.get(a.topic.as_str()).and_then(|t| t.partitions.get(a.partition as usize)) else {
                    continue;
                };
                a.position = a.position.max(partition.base);
                while a.position < partition.visible {
                    let offset = a.position;
                    a.position += 1;
                    match partition.get(offset) {
                        Some(Some(e)) => {
                            out.push(Record {
                                topic: a.topic.clone(),
                                partition: a.partition,
                                offset,
                                key: e.key.clone(),
                                value: e.value.clone(),
                                headers: e.headers.clone(),
                                timestamp_ms: e.timestamp_ms,
                            });
                            progressed = true;
                            break;
                        }
                        // A lost record: skip it.
                        Some(None) => continue,
                        None => break,
                    }
                }
            }
        }
        out
    }
}

/// The whole bus state, behind one mutex.
#[derive(Debug, Default)]
pub(super) struct State {
    pub topics: HashMap<String, Topic>,
    pub groups: HashMap<String, Group>,
    pub next_member: u64,
    pub closed: bool,
}

impl State {
    /// The smallest committed offset of a partition among the groups of its
    /// topic; `None` when no group ever subscribed to the topic.
    pub fn min_committed(&self, topic: &str, partition: u32) -> Option<u64> {
        let t = self.topics.get(topic)?;
        t.groups.iter().map(|g| self.groups.get(g).map_or(0, |g| g.committed_at(topic, partition))).min()
    }

    /// Wakes the owner, in every group, of each of these partitions.
    pub fn wake_owners(&self, topic: &str, partitions: impl IntoIterator<Item = u32> + Clone) {
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        for name in &t.groups {
            let Some(group) = self.groups.get(name) else {
                continue;
            };
            let Some(owners) = group.owners.get(topic) else {
                continue;
            };
            for p in partitions.clone() {
                if let Some(m) = owners.get(p as usize).copied().flatten().and_then(|id| group.members.get(&id)) {
                    m.notify.notify_one();
                }
            }
        }
    }

    pub fn wake_all(&self) {
        for g in self.groups.values() {
            for m in g.members.values() {
                m.notify.notify_one();
            }
        }
    }
}
