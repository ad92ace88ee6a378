//! In-process [`Kv`]: the embedded mode's Redis.
//!
//! The key space is split over [`SHARDS`] independently locked maps (by a
//! hash of the key, or of the user id for presence), so one busy key does
//! not serialize the others and [`MemoryKv::sweep`] (run periodically by
//! the embedded app) frees expired entries one shard at a time without
//! stopping every caller. Expiry is also checked on every read. Times come
//! from `tokio::time`, so tests can pause the clock.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gochat_proto::common::PresenceEntry;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Kv, KvResult};

/// Independently locked parts of the key space.
pub const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    seqs: HashMap<String, i64>,
    values: HashMap<String, (Bytes, Instant)>,
    /// user -> conn -> (gateway, expiry)
    presence: HashMap<i64, HashMap<String, (String, Instant)>>,
}

/// The embedded key-value store.
pub struct MemoryKv {
    shards: Vec<Mutex<Shard>>,
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect() }
    }
}

fn index<K: Hash + ?Sized>(key: &K) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl MemoryKv {
    pub fn new() -> Self {
        Self::default()
    }

    fn shard<K: Hash + ?Sized>(&self, key: &K) -> parking_lot::MutexGuard<'_, Shard> {
        self.shards[index(key)].lock()
    }

    /// Drops every expired key and presence entry, one shard at a time.
    pub fn sweep(&self) {
        for shard in &self.shards {
            let now = Instant::now();
            let mut g = shard.lock();
            g.values.retain(|_, (_, exp)| *exp > now);
            g.presence.retain(|_, conns| {
                conns.retain(|_, (_, exp)| *exp > now);
                !conns.is_empty()
            });
        }
    }

    /// Number of live keys (values and counters), for tests and metrics.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.lock();
                g.values.len() + g.seqs.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live_count(conns: &HashMap<String, (String, Instant)>, now: Instant) -> usize {
    conns.values().filter(|(_, exp)| *exp > now).count()
}

#[async_trait]
impl Kv for MemoryKv {
    async fn seq_incr(&self, conversation_id: &str) -> KvResult<Option<i64>> {
        Ok(self.shard(conversation_id).seqs.get_mut(conversation_id).map(|v| {
            *v += 1;
            *v
        }))
    }

    async fn seq_seed(&self, conversation_id: &str, value: i64) -> KvResult<()> {
        self.shard(conversation_id).seqs.entry(conversation_id.to_string()).or_insert(value);
        Ok(())
    }

    async fn seq_current(&self, conversation_id: &str) -> KvResult<Option<i64>> {
        Ok(self.shard(conversation_id).seqs.get(conversation_id).copied())
    }

    async fn set_nx(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<Option<Bytes>> {
        let now = Instant::now();
        let mut g = self.shard(key);
        if let Some((v, exp)) = g.values.get(key)
            && *exp > now
        {
            return Ok(Some(v.clone()));
        }
        g.values.insert(key.to_string(), (value, now + ttl));
        Ok(None)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<()> {
        self.shard(key).values.insert(key.to_string(), (value, Instant::now() + ttl));
        Ok(())
    }

    async fn get(&self, key: &str) -> KvResult<Option<Bytes>> {
        let now = Instant::now();
        Ok(self.shard(key).values.get(key).filter(|(_, exp)| *exp > now).map(|(v, _)| v.clone()))
    }

    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Bytes>>> {
        let now = Instant::now();
        Ok(keys.iter().map(|k| self.shard(k.as_str()).values.get(k).filter(|(_, exp)| *exp > now).map(|(v, _)| v.clone())).collect())
    }

    async fn set_many(&self, entries: &[(String, Bytes)], ttl: Duration) -> KvResult<()> {
        let expires = Instant::now() + ttl;
        for (k, v) in entries {
            self.shard(k.as_str()).values.insert(k.clone(), (v.clone(), expires));
        }
        Ok(())
    }

    async fn del(&self, keys: &[String]) -> KvResult<()> {
        for k in keys {
            self.shard(k.as_str()).values.remove(k);
        }
        Ok(())
    }

    async fn scan_prefix(&self, prefix: &str) -> KvResult<Vec<(String, Bytes)>> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in &self.shards {
            let g = shard.lock();
            out.extend(
                g.values.iter().filter(|(k, (_, exp))| k.starts_with(prefix) && *exp > now).map(|(k, (v, _))| (k.clone(), v.clone())),
            );
        }
        Ok(out)
    }

    async fn presence_add(&self, entry: &PresenceEntry, ttl: Duration) -> KvResult<usize> {
        let now = Instant::now();
        let mut g = self.shard(&entry.user_id);
        let conns = g.presence.entry(entry.user_id).or_default();
        conns.insert(entry.conn_id.clone(), (entry.gateway_id.clone(), now + ttl));
        Ok(live_count(conns, now))
    }

    async fn presence_remove(&self, user_id: i64, conn_id: &str) -> KvResult<usize> {
        let now = Instant::now();
        let mut g = self.shard(&user_id);
        let Some(conns) = g.presence.get_mut(&user_id) else { return Ok(0) };
        conns.remove(conn_id);
        let left = live_count(conns, now);
        if conns.is_empty() {
            g.presence.remove(&user_id);
        }
        Ok(left)
    }

    async fn presence_refresh(&self, entries: &[PresenceEntry], ttl: Duration) -> KvResult<()> {
        let now = Instant::now();
        let exp = now + ttl;
        for e in entries {
            let mut g = self.shard(&e.user_id);
            // An expired entry the sweep has not freed yet is gone too.
            if let Some(slot) = g.presence.get_mut(&e.user_id).and_then(|conns| conns.get_mut(&e.conn_id)).filter(|(_, old)| *old > now) {
                *slot = (e.gateway_id.clone(), exp);
            }
        }
        Ok(())
    }

    async fn presence_get(&self, user_ids: &[i64]) -> KvResult<Vec<PresenceEntry>> {
        let now = Instant::now();
        let mut out = Vec::new();
        for uid in user_ids {
            let g = self.shard(uid);
            if let Some(conns) = g.presence.get(uid) {
                for (conn, (gw, exp)) in conns {
                    if *exp > now {
                        out.push(PresenceEntry { user_id: *uid, conn_id: conn.clone(), gateway_id: gw.clone() });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::tests as suite;

    /// One `#[tokio::test]` per suite check, on a paused clock (the suite's
    /// sleeps advance it instantly).
    macro_rules! kv_suite {
        ($($check:ident),* $(,)?) => {
            $(
                #[tokio::test(start_paused = true)]
                async fn $check() {
                    suite::$check(&MemoryKv::new()).await;
                }
            )*
        };
    }

    kv_suite!(
        seq_needs_a_seed_then_counts_up,
        seq_incr_is_atomic,
        set_nx_holds_until_expiry,
        set_get_del,
        get_many_and_set_many,
        scan_prefix_returns_only_matching_live_keys,
        scan_prefix_takes_glob_characters_literally,
        scan_prefix_sees_every_key_of_a_large_set_once,
        presence_counts_and_expires_without_refresh,
        presence_remove_and_refresh_edge_cases,
        presence_get_many_users,
    );

    fn entry(user: i64, conn: &str) -> PresenceEntry {
        PresenceEntry { user_id: user, conn_id: conn.into(), gateway_id: "gw1".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_frees_expired_keys_in_every_shard() {
        let kv = MemoryKv::new();
        for i in 0..200 {
            kv.set(&format!("k{i}"), Bytes::from_static(b"v"), Duration::from_secs(if i % 2 == 0 { 1 } else { 100 })).await.expect("set");
        }
        kv.presence_add(&entry(7, "x"), Duration::from_secs(1)).await.expect("add");
        tokio::time::advance(Duration::from_secs(2)).await;
        kv.sweep();
        assert_eq!(kv.len(), 100);
        assert!(kv.shards.iter().all(|s| s.lock().presence.is_empty()));
    }
}
