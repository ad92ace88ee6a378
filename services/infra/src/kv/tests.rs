//! The behaviour suite every [`Kv`] implementation must pass.
//!
//! Each check is an `async fn(&dyn Kv)` that expects an empty key space.
//! Expiry is observed with `tokio::time::sleep`: the in-memory store runs the
//! checks on a paused clock (the sleeps advance it instantly), Redis on the
//! real one, so the TTLs here are short but keep margins of hundreds of
//! milliseconds on each side of every expiry. An implementation's test module
//! runs every check (see `memory::tests` and `redis::tests`, whose
//! `kv_suite!` lists are the index of this file).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use gochat_proto::common::PresenceEntry;

use super::Kv;

fn entry(user: i64, conn: &str, gateway: &str) -> PresenceEntry {
    PresenceEntry { user_id: user, conn_id: conn.into(), gateway_id: gateway.into() }
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

pub(crate) async fn seq_needs_a_seed_then_counts_up(kv: &dyn Kv) {
    assert_eq!(kv.seq_incr("c").await.expect("incr"), None, "no counter without a seed");
    assert_eq!(kv.seq_current("c").await.expect("get"), None);
    assert_eq!(kv.seq_incr("c").await.expect("incr"), None, "a missed incr does not create the counter");
    kv.seq_seed("c", 41).await.expect("seed");
    kv.seq_seed("c", 0).await.expect("second seed is ignored");
    assert_eq!(kv.seq_incr("c").await.expect("incr"), Some(42));
    assert_eq!(kv.seq_incr("c").await.expect("incr"), Some(43));
    assert_eq!(kv.seq_current("c").await.expect("get"), Some(43));
    assert_eq!(kv.seq_current("other").await.expect("get"), None, "counters are per conversation");
    kv.seq_seed("zero", 0).await.expect("seed");
    assert_eq!(kv.seq_incr("zero").await.expect("incr"), Some(1));
}

pub(crate) async fn seq_incr_is_atomic(kv: &dyn Kv) {
    kv.seq_seed("busy", 100).await.expect("seed");
    let taken = futures::future::join_all((0..50).map(|_| kv.seq_incr("busy"))).await;
    let taken: HashSet<i64> = taken.into_iter().map(|r| r.expect("incr").expect("seeded")).collect();
    assert_eq!(taken, (101..=150).collect::<HashSet<_>>(), "every caller gets its own seq");
    assert_eq!(kv.seq_current("busy").await.expect("get"), Some(150));
}

pub(crate) async fn set_nx_holds_until_expiry(kv: &dyn Kv) {
    let ttl = Duration::from_millis(500);
    assert_eq!(kv.set_nx("k", b("a"), ttl).await.expect("nx"), None);
    assert_eq!(kv.set_nx("k", b("b"), ttl).await.expect("nx"), Some(b("a")), "the holder's value");
    assert_eq!(kv.get("k").await.expect("get"), Some(b("a")), "a lost set_nx changes nothing");
    sleep_ms(800).await;
    assert_eq!(kv.get("k").await.expect("get"), None, "expired");
    assert_eq!(kv.set_nx("k", b("c"), ttl).await.expect("nx"), None, "an expired key can be taken again");
    assert_eq!(kv.get("k").await.expect("get"), Some(b("c")));
    kv.del(&["k".to_string()]).await.expect("del");
    assert_eq!(kv.get("k").await.expect("get"), None);
    assert_eq!(kv.set_nx("k", b("d"), ttl).await.expect("nx"), None, "a deleted key can be taken again");
}

pub(crate) async fn set_get_del(kv: &dyn Kv) {
    let long = Duration::from_secs(60);
    assert_eq!(kv.get("missing").await.expect("get"), None);
    kv.set("a", b("1"), long).await.expect("set");
    kv.set("a", b("2"), long).await.expect("set overwrites");
    assert_eq!(kv.get("a").await.expect("get"), Some(b("2")));
    let binary = Bytes::from(vec![0u8, 255, 10, 13, 0]);
    kv.set("bin", binary.clone(), long).await.expect("set");
    assert_eq!(kv.get("bin").await.expect("get"), Some(binary), "values are bytes, not text");
    kv.set("short", b("x"), Duration::from_millis(300)).await.expect("set");
    kv.set("a", b("3"), Duration::from_millis(300)).await.expect("set replaces the ttl too");
    assert_eq!(kv.get("short").await.expect("get"), Some(b("x")));
    sleep_ms(600).await;
    assert_eq!(kv.get("short").await.expect("get"), None);
    assert_eq!(kv.get("a").await.expect("get"), None);
    kv.set("x", b("1"), long).await.expect("set");
    kv.set("y", b("1"), long).await.expect("set");
    kv.del(&[]).await.expect("deleting nothing is fine");
    kv.del(&["x".to_string(), "y".to_string(), "never".to_string()]).await.expect("del");
    assert_eq!(kv.get("x").await.expect("get"), None);
    assert_eq!(kv.get("y").await.expect("get"), None);
}

pub(crate) async fn get_many_and_set_many(kv: &dyn Kv) {
    let long = Duration::from_secs(60);
    assert!(kv.get_many(&[]).await.expect("mget nothing").is_empty());
    kv.set_many(&[], long).await.expect("set nothing");
    let entries: Vec<(String, Bytes)> = (0..1500).map(|i| (format!("m{i}"), Bytes::from(i.to_string()))).collect();
    kv.set_many(&entries, long).await.expect("set many");
    kv.set("bin", Bytes::from(vec![0u8, 255]), long).await.expect("set");
    let keys: Vec<String> = ["m0", "nope", "m1499", "bin", "m0"].iter().map(|s| s.to_string()).collect();
    let got = kv.get_many(&keys).await.expect("mget");
    assert_eq!(
        got,
        vec![Some(b("0")), None, Some(b("1499")), Some(Bytes::from(vec![0u8, 255])), Some(b("0"))],
        "one answer per key, in order"
    );
    let all: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    assert!(kv.get_many(&all).await.expect("mget all").iter().zip(&entries).all(|(got, (_, v))| got.as_ref() == Some(v)));
    kv.set_many(&[("m0".to_string(), b("x"))], Duration::from_millis(300)).await.expect("set with ttl");
    sleep_ms(600).await;
    assert_eq!(kv.get_many(&["m0".to_string(), "m1".to_string()]).await.expect("mget"), vec![None, Some(b("1"))], "ttl applies");
}

pub(crate) async fn scan_prefix_returns_only_matching_live_keys(kv: &dyn Kv) {
    let long = Duration::from_secs(60);
    kv.set("token:revoked:a", b("1"), long).await.expect("set");
    kv.set("token:revoked:b", b("2"), long).await.expect("set");
    kv.set("token:revoked:gone", b("3"), Duration::from_millis(200)).await.expect("set");
    kv.set("token:revokedX", b("1"), long).await.expect("set");
    kv.set("other", b("1"), long).await.expect("set");
    sleep_ms(500).await;
    let mut found = kv.scan_prefix("token:revoked:").await.expect("scan");
    found.sort();
    assert_eq!(found, vec![("token:revoked:a".to_string(), b("1")), ("token:revoked:b".to_string(), b("2"))]);
    assert!(kv.scan_prefix("nothing:").await.expect("scan").is_empty());
}

pub(crate) async fn scan_prefix_takes_glob_characters_literally(kv: &dyn Kv) {
    let long = Duration::from_secs(60);
    for key in ["a*b:1", "a*b:2", "axb:3", "a[b]:4", "ab:5", "a?c:6", "abc:7", "a\\d:8", "ad:9"] {
        kv.set(key, b("v"), long).await.expect("set");
    }
    let keys = |found: Vec<(String, Bytes)>| {
        let mut keys: Vec<String> = found.into_iter().map(|(k, _)| k).collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(kv.scan_prefix("a*b:").await.expect("scan")), ["a*b:1", "a*b:2"]);
    assert_eq!(keys(kv.scan_prefix("a[b]").await.expect("scan")), ["a[b]:4"]);
    assert_eq!(keys(kv.scan_prefix("a?").await.expect("scan")), ["a?c:6"]);
    assert_eq!(keys(kv.scan_prefix("a\\").await.expect("scan")), ["a\\d:8"]);
}

pub(crate) async fn scan_prefix_sees_every_key_of_a_large_set_once(kv: &dyn Kv) {
    let long = Duration::from_secs(60);
    for i in 0..1500 {
        kv.set(&format!("big:{i}"), Bytes::from(i.to_string()), long).await.expect("set");
    }
    let found = kv.scan_prefix("big:").await.expect("scan");
    assert_eq!(found.len(), 1500, "no key missed or repeated");
    let keys: HashSet<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 1500);
    assert!(found.iter().all(|(k, v)| k.strip_prefix("big:") == std::str::from_utf8(v).ok()));
}

pub(crate) async fn presence_counts_and_expires_without_refresh(kv: &dyn Kv) {
    let ttl = Duration::from_millis(900);
    assert_eq!(kv.presence_add(&entry(1, "a", "gw1"), ttl).await.expect("add"), 1);
    assert_eq!(kv.presence_add(&entry(1, "b", "gw1"), ttl).await.expect("add"), 2);
    assert_eq!(kv.presence_add(&entry(1, "b", "gw1"), ttl).await.expect("add"), 2, "adding again counts once");
    assert_eq!(kv.presence_remove(1, "a").await.expect("rm"), 1);
    sleep_ms(600).await;
    kv.presence_refresh(&[entry(1, "b", "gw1"), entry(1, "a", "gw1")], ttl).await.expect("refresh");
    sleep_ms(600).await;
    let live = kv.presence_get(&[1, 2]).await.expect("get");
    assert_eq!(live, vec![entry(1, "b", "gw1")], "the refreshed entry lives on; the removed one is not brought back");
    sleep_ms(600).await;
    assert!(kv.presence_get(&[1]).await.expect("get").is_empty(), "expired without refresh");
    kv.presence_refresh(&[entry(1, "b", "gw1")], ttl).await.expect("refresh");
    assert!(kv.presence_get(&[1]).await.expect("get").is_empty(), "an expired entry is not brought back either");
    assert_eq!(kv.presence_add(&entry(1, "c", "gw2"), ttl).await.expect("add"), 1, "expired entries are not counted");
}

pub(crate) async fn presence_remove_and_refresh_edge_cases(kv: &dyn Kv) {
    let ttl = Duration::from_secs(60);
    assert_eq!(kv.presence_remove(5, "nope").await.expect("rm"), 0, "removing from nobody");
    kv.presence_add(&entry(5, "a", "gw1"), ttl).await.expect("add");
    assert_eq!(kv.presence_remove(5, "nope").await.expect("rm"), 1, "removing an unknown connection");
    assert_eq!(kv.presence_remove(5, "a").await.expect("rm"), 0);
    assert!(kv.presence_get(&[5]).await.expect("get").is_empty());
    kv.presence_refresh(&[], ttl).await.expect("refreshing nothing");
    assert!(kv.presence_get(&[]).await.expect("get").is_empty());
    kv.presence_add(&entry(6, "a", "gw1"), ttl).await.expect("add");
    kv.presence_refresh(&[entry(6, "a", "gw9")], ttl).await.expect("refresh");
    assert_eq!(kv.presence_get(&[6]).await.expect("get"), vec![entry(6, "a", "gw9")], "refresh records the gateway");
}

pub(crate) async fn presence_get_many_users(kv: &dyn Kv) {
    let ttl = Duration::from_secs(60);
    let mut expected = HashSet::new();
    for user in 1..=300 {
        for conn in 0..(user % 3) {
            let e = entry(user, &format!("c{conn}"), &format!("gw{}", user % 4));
            kv.presence_add(&e, ttl).await.expect("add");
            expected.insert((e.user_id, e.conn_id, e.gateway_id));
        }
    }
    let users: Vec<i64> = (1..=310).collect();
    let live = kv.presence_get(&users).await.expect("get");
    assert_eq!(live.len(), expected.len(), "one entry per live connection");
    let live: HashSet<_> = live.into_iter().map(|e| (e.user_id, e.conn_id, e.gateway_id)).collect();
    assert_eq!(live, expected);
    let one = kv.presence_get(&[5]).await.expect("get");
    assert_eq!(one.len(), 2);
    assert!(one.iter().all(|e| e.user_id == 5 && e.gateway_id == "gw1"));
}
