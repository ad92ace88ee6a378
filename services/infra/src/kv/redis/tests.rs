//! Runs the shared behaviour suite (`kv::tests`) against a real Redis, plus
//! the Redis-only checks: key names and prefixes, scripts after a flush, the
//! rate limiter.
//!
//! The server is `GOCHATTEST_REDIS_URL` (default `redis://127.0.0.1:6379`);
//! these tests fail, not skip, when it is unreachable (they only compile
//! with the `redis` feature, which is the promise that a server exists).
//! Each test works under its own random key prefix and deletes its keys at
//! the end, so tests run in parallel on one shared server.

use std::time::Duration;

use ::redis::AsyncCommands;
use ::redis::aio::MultiplexedConnection;
use bytes::Bytes;
use gochat_proto::common::PresenceEntry;

use super::RedisKv;
use crate::kv::Kv;
use crate::kv::tests as suite;

fn url() -> String {
    std::env::var("GOCHATTEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn random_prefix() -> String {
    format!("gochat-test:{:016x}:", rand::random::<u64>())
}

async fn kv() -> RedisKv {
    let url = url();
    RedisKv::connect(&url, &random_prefix()).await.unwrap_or_else(|e| panic!("Redis at {url} (GOCHATTEST_REDIS_URL): {e}"))
}

/// A plain connection, to look at what the adapter stored.
async fn raw() -> MultiplexedConnection {
    let client = ::redis::Client::open(url()).expect("redis url");
    client.get_multiplexed_async_connection().await.expect("raw connection")
}

/// Deletes every key under `kv`'s prefix.
async fn cleanup(kv: &RedisKv) {
    let mut raw = raw().await;
    let pattern = format!("{}*", super::escape_glob(kv.key_prefix()));
    let keys: Vec<String> = raw.keys(pattern).await.expect("keys");
    if !keys.is_empty() {
        raw.del::<_, ()>(keys).await.expect("del");
    }
}

/// One `#[tokio::test]` per suite check, each on a fresh prefix.
macro_rules! kv_suite {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let kv = kv().await;
                suite::$check(&kv).await;
                cleanup(&kv).await;
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

fn entry(user: i64, conn: &str, gateway: &str) -> PresenceEntry {
    PresenceEntry { user_id: user, conn_id: conn.into(), gateway_id: gateway.into() }
}

#[tokio::test]
async fn keys_are_the_data_md_names_under_the_prefix() {
    let kv = kv().await;
    let p = kv.key_prefix().to_owned();
    let mut raw = raw().await;

    kv.seq_seed("c1", 7).await.expect("seed");
    let seq: Option<i64> = raw.get(format!("{p}conv:seq:c1")).await.expect("get");
    assert_eq!(seq, Some(7));
    let seq_ttl: i64 = raw.pttl(format!("{p}conv:seq:c1")).await.expect("pttl");
    assert_eq!(seq_ttl, -1, "counters never expire");

    kv.presence_add(&entry(42, "conn-a", "gw-1"), Duration::from_secs(90)).await.expect("add");
    let hash: Vec<(String, String)> = raw.hgetall(format!("{p}user:online:42")).await.expect("hgetall");
    assert_eq!(hash, vec![("conn-a".to_owned(), "gw-1".to_owned())]);
    let ttl: i64 = raw.pttl(format!("{p}user:online:42")).await.expect("pttl");
    assert!(ttl > 80_000 && ttl <= 90_000, "presence ttl {ttl}");

    kv.set("msg:idem:1:x", Bytes::from_static(b"v"), Duration::from_secs(10)).await.expect("set");
    let ttl: i64 = raw.pttl(format!("{p}msg:idem:1:x")).await.expect("pttl");
    assert!(ttl > 9_000 && ttl <= 10_000, "value ttl {ttl}");
    let unprefixed: bool = raw.exists("msg:idem:1:x").await.expect("exists");
    assert!(!unprefixed, "nothing is written outside the prefix");
    cleanup(&kv).await;
}

#[tokio::test]
async fn prefixes_isolate_deployments_sharing_a_server() {
    let (a, b) = (kv().await, kv().await);
    let ttl = Duration::from_secs(60);
    a.set("token:revoked:x", Bytes::from_static(b"a"), ttl).await.expect("set");
    b.set("token:revoked:x", Bytes::from_static(b"b"), ttl).await.expect("set");
    b.set("token:revoked:y", Bytes::from_static(b"b"), ttl).await.expect("set");
    assert_eq!(a.get("token:revoked:x").await.expect("get"), Some(Bytes::from_static(b"a")));
    assert_eq!(a.get("token:revoked:y").await.expect("get"), None);
    assert_eq!(a.scan_prefix("token:revoked:").await.expect("scan"), vec![("token:revoked:x".to_owned(), Bytes::from_static(b"a"))]);
    assert_eq!(b.scan_prefix("token:revoked:").await.expect("scan").len(), 2);

    a.seq_seed("c", 10).await.expect("seed");
    assert_eq!(b.seq_incr("c").await.expect("incr"), None, "b has no counter for c");
    a.presence_add(&entry(1, "c1", "gw"), ttl).await.expect("add");
    assert!(b.presence_get(&[1]).await.expect("get").is_empty());
    b.del(&["token:revoked:x".to_owned()]).await.expect("del");
    assert!(a.get("token:revoked:x").await.expect("get").is_some(), "b's delete stays in b");

    // A prefix that is itself a glob must not reach into other prefixes.
    let star = RedisKv::connect(&url(), &format!("{}*", random_prefix())).await.expect("connect");
    assert!(star.scan_prefix("").await.expect("scan").is_empty());
    cleanup(&a).await;
    cleanup(&b).await;
}

#[tokio::test]
async fn scripts_are_reloaded_after_a_script_flush() {
    let kv = kv().await;
    kv.seq_seed("c", 1).await.expect("seed");
    kv.presence_add(&entry(3, "a", "gw"), Duration::from_secs(60)).await.expect("add");
    let mut raw = raw().await;
    ::redis::cmd("SCRIPT").arg("FLUSH").exec_async(&mut raw).await.expect("flush");
    assert_eq!(kv.seq_incr("c").await.expect("incr"), Some(2));
    ::redis::cmd("SCRIPT").arg("FLUSH").exec_async(&mut raw).await.expect("flush");
    kv.presence_refresh(&[entry(3, "a", "gw2")], Duration::from_secs(60)).await.expect("refresh");
    assert_eq!(kv.presence_get(&[3]).await.expect("get"), vec![entry(3, "a", "gw2")]);
    ::redis::cmd("SCRIPT").arg("FLUSH").exec_async(&mut raw).await.expect("flush");
    assert_eq!(kv.set_nx("k", Bytes::from_static(b"v"), Duration::from_secs(5)).await.expect("nx"), None);
    ::redis::cmd("SCRIPT").arg("FLUSH").exec_async(&mut raw).await.expect("flush");
    assert!(kv.rate_limit("s:1", 1, 1).await.expect("rate"));
    cleanup(&kv).await;
}

#[tokio::test]
async fn rate_limit_allows_a_burst_then_refills_at_the_rate() {
    let kv = kv().await;
    // 10/s: one request every 100 ms, 3 at once.
    for i in 0..3 {
        assert!(kv.rate_limit("http:1.2.3.4", 10, 3).await.expect("rate"), "burst request {i}");
    }
    assert!(!kv.rate_limit("http:1.2.3.4", 10, 3).await.expect("rate"), "burst used up");
    assert!(!kv.rate_limit("http:1.2.3.4", 10, 3).await.expect("rate"), "a denied request does not count");
    assert!(kv.rate_limit("http:5.6.7.8", 10, 3).await.expect("rate"), "buckets are per key");

    tokio::time::sleep(Duration::from_millis(130)).await;
    assert!(kv.rate_limit("http:1.2.3.4", 10, 3).await.expect("rate"), "one interval refills one request");
    assert!(!kv.rate_limit("http:1.2.3.4", 10, 3).await.expect("rate"), "but only one");

    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut raw = raw().await;
    let key = format!("{}ratelimit:http:1.2.3.4", kv.key_prefix());
    let idle: bool = raw.exists(&key).await.expect("exists");
    assert!(!idle, "an idle bucket is full again and its key is gone");
    for i in 0..3 {
        assert!(kv.rate_limit("http:1.2.3.4", 10, 3).await.expect("rate"), "full burst after idling, request {i}");
    }
    assert!(!kv.rate_limit("http:1.2.3.4", 10, 3).await.expect("rate"));
    let ttl: i64 = raw.pttl(&key).await.expect("pttl");
    assert!(ttl > 0 && ttl <= 400, "the key lives until the bucket would be full again: {ttl} ms");

    assert!(!kv.rate_limit("http:zero", 0, 5).await.expect("rate"), "a zero rate allows nothing");
    assert!(!kv.rate_limit("http:zero", 5, 0).await.expect("rate"), "a zero burst allows nothing");
    cleanup(&kv).await;
}

#[tokio::test]
async fn rate_limit_is_shared_by_every_client_of_the_server() {
    let (a, other) = (kv().await, kv().await);
    let shared = RedisKv::connect(&url(), a.key_prefix()).await.expect("connect");
    // Two gateways (a, shared) on one prefix share a bucket of 4; another deployment does not.
    let mut allowed = 0;
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &a } else { &shared };
        if gateway.rate_limit("user:9", 1, 4).await.expect("rate") {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 4);
    assert!(other.rate_limit("user:9", 1, 4).await.expect("rate"));
    cleanup(&a).await;
    cleanup(&other).await;
}

#[tokio::test]
async fn connect_fails_when_the_server_is_unreachable() {
    let started = std::time::Instant::now();
    let err = RedisKv::connect("redis://127.0.0.1:1", "x:").await.err().expect("nothing listens on port 1");
    assert!(err.to_string().contains("redis connect"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "gave up in {:?}", started.elapsed());
}
