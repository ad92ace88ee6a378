//! [`Kv`] on Redis: the distributed mode's presence, sequence counters,
//! idempotency keys, revocations and caches (DATA.md "Redis keys"), plus the
//! HTTP rate limiter every gateway shares ([`RedisKv::rate_limit`]).
//!
//! One [`ConnectionManager`] multiplexes every call over one connection and
//! reconnects on its own, so a `RedisKv` is cheap to clone and share.
//! Every key gets the configured prefix, so several deployments (or test
//! runs) can share one server; callers never see it.
//!
//! Where a trait method reads and then writes (take a seq only if seeded,
//! refresh only still-present connections, rate limit) it is one Lua script,
//! so it is atomic without a WATCH/MULTI round trip. Scripts are sent as
//! EVALSHA and loaded on a `NOSCRIPT` reply (a restarted or flushed server).
//!
//! Presence differs from [`super::memory::MemoryKv`] in one way: Redis 7.0
//! expires a whole hash, not one field, so the entries of one user expire
//! together, `ttl` after the last add or refresh of any of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Client, RedisError, Script};
use async_trait::async_trait;
use bytes::Bytes;
use gochat_proto::common::PresenceEntry;

use super::{Kv, KvError, KvResult};

/// Keys per SCAN step, and keys or users per pipelined batch.
const BATCH: usize = 1000;

/// `INCR` only when the counter exists; `nil` (→ `None`) when it must be seeded.
const SEQ_INCR: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCR', KEYS[1])
end
return false
";

/// `SET NX PX` that hands back the holder's value when the key is taken
/// (`SET ... NX GET` would do the same but needs Redis 7.0).
const SET_NX: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Heartbeat for one user: ARGV = ttl_ms, then (conn, gateway) pairs. Only
/// fields still present are rewritten, so a connection removed (or expired)
/// meanwhile is not brought back; the key's expiry moves only if one was.
const PRESENCE_REFRESH: &str = r"
local kept = 0
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    kept = kept + 1
  end
end
if kept > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return kept
";

/// GCRA, the generic cell rate algorithm (as in redis-cell), in one script.
///
/// A request costs one emission interval `T = 1 s / per_sec`. The key holds
/// the TAT, the theoretical arrival time: when the bucket would be empty
/// again if requests kept coming at exactly the allowed rate. A request at
/// `now` is allowed when `max(TAT, now) + T - burst * T <= now`, i.e. when at
/// most `burst` intervals are "owed"; the TAT then moves to
/// `max(TAT, now) + T`. A denied request changes nothing. So an idle key lets
/// `burst` requests through at once and then one every `T`.
///
/// The clock is the server's `TIME` (every gateway agrees on it; no clock
/// skew between callers), in microseconds. The key expires when the TAT is
/// reached, i.e. exactly when it would read as "full" again, so idle clients
/// cost nothing. Numbers are formatted with `%.0f` because Lua's `tostring`
/// would round a microsecond timestamp to 14 significant digits.
///
/// KEYS[1] = the bucket, ARGV = per_sec, burst. Returns 1 (allowed) or 0.
const RATE_LIMIT: &str = r"
local interval = 1000000 / tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + interval
if new_tat - burst * interval > now then
  return 0
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
return 1
";

/// The distributed mode's key-value store.
#[derive(Clone)]
pub struct RedisKv {
    conn: ConnectionManager,
    prefix: String,
    seq_incr: Script,
    set_nx: Script,
    presence_refresh: Script,
    rate_limit: Script,
}

fn backend(op: &str) -> impl FnOnce(RedisError) -> KvError + '_ {
    move |e| KvError::Backend(format!("redis {op}: {e}"))
}

/// A TTL in whole milliseconds, at least 1 (`PX 0` is an error in Redis).
fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Escapes the glob characters of SCAN MATCH so `prefix` matches literally.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisKv {
    /// Connects to `url` (`redis://host:port/db`); every key is stored as
    /// `{key_prefix}{key}`. Fails when the server cannot be reached now; once
    /// connected, lost connections are re-established on the next call.
    pub async fn connect(url: &str, key_prefix: &str) -> KvResult<RedisKv> {
        let client = Client::open(url).map_err(backend("url"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(4);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(backend("connect"))?;
        Ok(RedisKv {
            conn,
            prefix: key_prefix.to_owned(),
            seq_incr: Script::new(SEQ_INCR),
            set_nx: Script::new(SET_NX),
            presence_refresh: Script::new(PRESENCE_REFRESH),
            rate_limit: Script::new(RATE_LIMIT),
        })
    }

    /// The prefix every key is stored under.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn seq_key(&self, conversation_id: &str) -> String {
        format!("{}conv:seq:{conversation_id}", self.prefix)
    }

    fn presence_key(&self, user_id: i64) -> String {
        format!("{}user:online:{user_id}", self.prefix)
    }

    /// Distributed rate limit (GCRA, see [`RATE_LIMIT`]): `true` when the
    /// request under `key` (`{scope}:{id}`, stored as `ratelimit:{key}`) is
    /// allowed. `burst` requests may come at once, then `per_sec` a second.
    /// A zero `per_sec` or `burst` allows nothing.
    pub async fn rate_limit(&self, key: &str, per_sec: u32, burst: u32) -> KvResult<bool> {
        if per_sec == 0 || burst == 0 {
            return Ok(false);
        }
        let allowed: i64 = self
            .rate_limit
            .key(self.key(&format!("ratelimit:{key}")))
            .arg(per_sec)
            .arg(burst)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("rate_limit"))?;
        Ok(allowed == 1)
    }
}

#[async_trait]
impl Kv for RedisKv {
    async fn seq_incr(&self, conversation_id: &str) -> KvResult<Option<i64>> {
        self.seq_incr.key(self.seq_key(conversation_id)).invoke_async(&mut self.conn.clone()).await.map_err(backend("seq_incr"))
    }

    async fn seq_seed(&self, conversation_id: &str, value: i64) -> KvResult<()> {
        ::redis::cmd("SET")
            .arg(self.seq_key(conversation_id))
            .arg(value)
            .arg("NX")
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(backend("seq_seed"))
    }

    async fn seq_current(&self, conversation_id: &str) -> KvResult<Option<i64>> {
        self.conn.clone().get(self.seq_key(conversation_id)).await.map_err(backend("seq_current"))
    }

    async fn set_nx(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<Option<Bytes>> {
        let held: Option<Vec<u8>> = self
            .set_nx
            .key(self.key(key))
            .arg(value.as_ref())
            .arg(px(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend("set_nx"))?;
        Ok(held.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> KvResult<()> {
        ::redis::cmd("SET")
            .arg(self.key(key))
            .arg(value.as_ref())
            .arg("PX")
            .arg(px(ttl))
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(backend("set"))
    }

    async fn get(&self, key: &str) -> KvResult<Option<Bytes>> {
        let value: Option<Vec<u8>> = self.conn.clone().get(self.key(key)).await.map_err(backend("get"))?;
        Ok(value.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(BATCH) {
            let prefixed: Vec<String> = chunk.iter().map(|k| self.key(k)).collect();
            // MGET of one key still answers with an array.
            let values: Vec<Option<Vec<u8>>> = ::redis::cmd("MGET").arg(prefixed).query_async(&mut conn).await.map_err(backend("mget"))?;
            out.extend(values.into_iter().map(|v| v.map(Bytes::from)));
        }
        Ok(out)
    }

    async fn set_many(&self, entries: &[(String, Bytes)], ttl: Duration) -> KvResult<()> {
        let mut conn = self.conn.clone();
        for chunk in entries.chunks(BATCH) {
            let mut pipe = ::redis::pipe();
            for (k, v) in chunk {
                pipe.cmd("SET").arg(self.key(k)).arg(v.as_ref()).arg("PX").arg(px(ttl)).ignore();
            }
            pipe.exec_async(&mut conn).await.map_err(backend("set_many"))?;
        }
        Ok(())
    }

    async fn del(&self, keys: &[String]) -> KvResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.conn.clone().del::<_, ()>(keys).await.map_err(backend("del"))
    }

    async fn scan_prefix(&self, prefix: &str) -> KvResult<Vec<(String, Bytes)>> {
        let pattern = format!("{}*", escape_glob(&self.key(prefix)));
        let mut conn = self.conn.clone();
        // SCAN may return a key more than once (while the table rehashes);
        // keys are collected first, then read in batches.
        let mut keys: HashSet<Vec<u8>> = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(backend("scan"))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let keys: Vec<Vec<u8>> = keys.into_iter().collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            // MGET answers nil for a key that expired since the scan, or that
            // is not a string (a presence hash or a counter under the prefix
            // is not a cached value).
            let values: Vec<Option<Vec<u8>>> =
                ::redis::cmd("MGET").arg(chunk).query_async(&mut conn).await.map_err(backend("scan_prefix mget"))?;
            for (key, value) in chunk.iter().zip(values) {
                let (Some(value), Ok(key)) = (value, std::str::from_utf8(key)) else { continue };
                if let Some(key) = key.strip_prefix(&self.prefix) {
                    out.push((key.to_owned(), Bytes::from(value)));
                }
            }
        }
        Ok(out)
    }

    async fn presence_add(&self, entry: &PresenceEntry, ttl: Duration) -> KvResult<usize> {
        let key = self.presence_key(entry.user_id);
        let (live,): (usize,) = ::redis::pipe()
            .atomic()
            .hset(&key, &entry.conn_id, &entry.gateway_id)
            .ignore()
            .pexpire(&key, px(ttl) as i64)
            .ignore()
            .hlen(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend("presence_add"))?;
        Ok(live)
    }

    async fn presence_remove(&self, user_id: i64, conn_id: &str) -> KvResult<usize> {
        let key = self.presence_key(user_id);
        let (live,): (usize,) = ::redis::pipe()
            .atomic()
            .hdel(&key, conn_id)
            .ignore()
            .hlen(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend("presence_remove"))?;
        Ok(live)
    }

    async fn presence_refresh(&self, entries: &[PresenceEntry], ttl: Duration) -> KvResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // One script call per user (one key each, so it would also work on a
        // cluster), pipelined in batches behind a SCRIPT LOAD: EVALSHA in a
        // pipeline cannot fall back to loading the script on NOSCRIPT.
        let mut by_user: BTreeMap<i64, Vec<&PresenceEntry>> = BTreeMap::new();
        for e in entries {
            by_user.entry(e.user_id).or_default().push(e);
        }
        let by_user: Vec<(i64, Vec<&PresenceEntry>)> = by_user.into_iter().collect();
        let mut conn = self.conn.clone();
        for batch in by_user.chunks(BATCH) {
            let mut pipe = ::redis::pipe();
            pipe.load_script(&self.presence_refresh).ignore();
            for (user_id, conns) in batch {
                let mut call = self.presence_refresh.key(self.presence_key(*user_id));
                call.arg(px(ttl));
                for e in conns {
                    call.arg(&e.conn_id).arg(&e.gateway_id);
                }
                pipe.invoke_script(&call).ignore();
            }
            pipe.exec_async(&mut conn).await.map_err(backend("presence_refresh"))?;
        }
        Ok(())
    }

    async fn presence_get(&self, user_ids: &[i64]) -> KvResult<Vec<PresenceEntry>> {
        let mut out = Vec::new();
        let mut conn = self.conn.clone();
        for batch in user_ids.chunks(BATCH) {
            let mut pipe = ::redis::pipe();
            for user_id in batch {
                pipe.hgetall(self.presence_key(*user_id));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await.map_err(backend("presence_get"))?;
            for (user_id, conns) in batch.iter().zip(hashes) {
                out.extend(conns.into_iter().map(|(conn_id, gateway_id)| PresenceEntry { user_id: *user_id, conn_id, gateway_id }));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
