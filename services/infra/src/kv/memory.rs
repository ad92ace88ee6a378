//! In-process [`Kv`]: the embedded mode's Redis. Expiry is checked on every
//! read and swept by [`MemoryKv::sweep`] (run periodically by the repo
//! service), so expired keys neither show up nor pile up. Times come from
//! `tokio::time`, so tests can pause the clock.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gochat_proto::common::PresenceEntry;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Kv, KvResult};

#[derive(Default)]
struct Inner {
    seqs: HashMap<String, i64>,
    values: HashMap<String, (Bytes, Instant)>,
    /// user -> conn -> (gateway, expiry)
    presence: HashMap<i64, HashMap<String, (String, Instant)>>,
}

/// The embedded key-value store.
#[derive(Default)]
pub struct MemoryKv {
    inner: Mutex<Inner>,
}

impl MemoryKv {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops every expired key and presence entry.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut g = self.inner.lock();
        g.values.retain(|_, (_, exp)| *exp > now);
        g.presence.retain(|_, conns| {
            conns.retain(|_, (_, exp)| *exp > now);
            !conns.is_empty()
        });
    }
}

fn live_count(conns: &HashMap<String, (String, Instant)>, now: Instant) -> usize {
    conns.values().filter(|(_, exp)| *exp > now).count()
}

#[async_trait]
impl Kv for MemoryKv {
    async fn seq_incr(&self, conversation_id: &str) -> KvResult<Option<i64>> {
        let mut g = self.inner.lock();
        Ok(g.seqs.get_mut(conversation_id).map(|v| {
            *v += 1;
            *v
        }))
    }

    async fn seq_seed(&self, conversation_id: &str, value: i64) -> KvResult<()> {
        self.inner.lock().seqs.entry(conversation_id.to_string()).or_insert(value);
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<Option<Bytes>> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        if let Some((v, exp)) = g.values.get(key)
            && *exp > now
        {
            return Ok(Some(v.clone()));
        }
        g.values.insert(key.to_string(), (value, now + ttl));
        Ok(None)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<()> {
        self.inner.lock().values.insert(key.to_string(), (value, Instant::now() + ttl));
        Ok(())
    }

    async fn get(&self, key: &str) -> KvResult<Option<Bytes>> {
        let now = Instant::now();
        Ok(self.inner.lock().values.get(key).filter(|(_, exp)| *exp > now).map(|(v, _)| v.clone()))
    }

    async fn del(&self, keys: &[String]) -> KvResult<()> {
        let mut g = self.inner.lock();
        for k in keys {
            g.values.remove(k);
        }
        Ok(())
    }

    async fn scan_prefix(&self, prefix: &str) -> KvResult<Vec<(String, Bytes)>> {
        let now = Instant::now();
        Ok(self
            .inner
            .lock()
            .values
            .iter()
            .filter(|(k, (_, exp))| k.starts_with(prefix) && *exp > now)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect())
    }

    async fn presence_add(&self, entry: &PresenceEntry, ttl: Duration) -> KvResult<usize> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let conns = g.presence.entry(entry.user_id).or_default();
        conns.insert(entry.conn_id.clone(), (entry.gateway_id.clone(), now + ttl));
        Ok(live_count(conns, now))
    }

    async fn presence_remove(&self, user_id: i64, conn_id: &str) -> KvResult<usize> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let Some(conns) = g.presence.get_mut(&user_id) else { return Ok(0) };
        conns.remove(conn_id);
        let left = live_count(conns, now);
        if conns.is_empty() {
            g.presence.remove(&user_id);
        }
        Ok(left)
    }

    async fn presence_refresh(&self, entries: &[PresenceEntry], ttl: Duration) -> KvResult<()> {
        let exp = Instant::now() + ttl;
        let mut g = self.inner.lock();
        for e in entries {
            g.presence.entry(e.user_id).or_default().insert(e.conn_id.clone(), (e.gateway_id.clone(), exp));
        }
        Ok(())
    }

    async fn presence_get(&self, user_ids: &[i64]) -> KvResult<Vec<PresenceEntry>> {
        let now = Instant::now();
        let g = self.inner.lock();
        let mut out = Vec::new();
        for uid in user_ids {
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

    fn entry(user: i64, conn: &str) -> PresenceEntry {
        PresenceEntry { user_id: user, conn_id: conn.into(), gateway_id: "gw1".into() }
    }

    #[tokio::test]
    async fn seq_needs_a_seed_then_counts_up() {
        let kv = MemoryKv::new();
        assert_eq!(kv.seq_incr("c").await.expect("incr"), None);
        kv.seq_seed("c", 41).await.expect("seed");
        kv.seq_seed("c", 0).await.expect("second seed is ignored");
        assert_eq!(kv.seq_incr("c").await.expect("incr"), Some(42));
        assert_eq!(kv.seq_incr("c").await.expect("incr"), Some(43));
    }

    #[tokio::test(start_paused = true)]
    async fn set_nx_holds_until_expiry() {
        let kv = MemoryKv::new();
        let ttl = Duration::from_secs(10);
        assert_eq!(kv.set_nx("k", Bytes::from_static(b"a"), ttl).await.expect("nx"), None);
        assert_eq!(kv.set_nx("k", Bytes::from_static(b"b"), ttl).await.expect("nx"), Some(Bytes::from_static(b"a")));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(kv.get("k").await.expect("get"), None);
        assert_eq!(kv.set_nx("k", Bytes::from_static(b"c"), ttl).await.expect("nx"), None);
        kv.del(&["k".to_string()]).await.expect("del");
        assert_eq!(kv.get("k").await.expect("get"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn presence_counts_and_expires_without_refresh() {
        let kv = MemoryKv::new();
        let ttl = Duration::from_secs(90);
        assert_eq!(kv.presence_add(&entry(1, "a"), ttl).await.expect("add"), 1);
        assert_eq!(kv.presence_add(&entry(1, "b"), ttl).await.expect("add"), 2);
        assert_eq!(kv.presence_remove(1, "a").await.expect("rm"), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        kv.presence_refresh(&[entry(1, "b")], ttl).await.expect("refresh");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(kv.presence_get(&[1, 2]).await.expect("get").len(), 1, "refreshed entry lives on");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(kv.presence_get(&[1]).await.expect("get").is_empty(), "expired without refresh");
        kv.sweep();
        assert!(kv.inner.lock().presence.is_empty());
    }

    #[tokio::test]
    async fn scan_prefix_returns_only_matching_live_keys() {
        let kv = MemoryKv::new();
        let ttl = Duration::from_secs(5);
        kv.set("token:revoked:a", Bytes::from_static(b"1"), ttl).await.expect("set");
        kv.set("other", Bytes::from_static(b"1"), ttl).await.expect("set");
        let found = kv.scan_prefix("token:revoked:").await.expect("scan");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "token:revoked:a");
    }
}
