//! Behaviour of the embedded bus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use sqlx::{Connection, SqliteConnection};

use super::*;
use crate::bus::produce_one;

const PERSIST: &str = "gochat.messages.persist";

fn config(partitions: u32) -> MemoryBusConfig {
    MemoryBusConfig { default_partitions: partitions, ..MemoryBusConfig::default() }
}

fn durable_config(path: &Path, partitions: u32) -> MemoryBusConfig {
    MemoryBusConfig { default_partitions: partitions, log_path: Some(path.to_owned()), ..MemoryBusConfig::default() }
}

fn rec(topic: &str, key: &str, value: String) -> OutRecord {
    OutRecord::new(topic, key.to_owned(), value)
}

/// Polls until `want` records came or nothing more comes for a while.
async fn drain(c: &mut dyn Consumer, want: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < want {
        let got = c.poll(1000, Duration::from_millis(500)).await.expect("poll");
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
    out
}

async fn assert_quiet(c: &mut dyn Consumer) {
    let got = c.poll(100, Duration::from_millis(50)).await.expect("poll");
    assert!(got.is_empty(), "unexpected records: {got:?}");
}

fn offsets(records: &[Record]) -> BTreeSet<(u32, u64)> {
    records.iter().map(|r| (r.partition, r.offset)).collect()
}

#[tokio::test]
async fn partitioning_by_key_keeps_per_key_order() {
    let bus = MemoryBus::open(config(4)).await.unwrap();
    let mut c = bus.subscribe("g", &["t"]).await.unwrap();
    let mut batch = Vec::new();
    for seq in 0..50 {
        for k in 0..6 {
            batch.push(rec("t", &format!("k{k}"), format!("{seq}")));
        }
    }
    let metas = bus.produce(batch.clone()).await.unwrap();
    for (r, m) in batch.iter().zip(&metas) {
        assert_eq!(m.partition, partition_for(&r.key, 4));
    }
    let got = drain(c.as_mut(), 300).await;
    assert_eq!(got.len(), 300);
    assert_eq!(offsets(&got).len(), 300, "a record came twice");
    let mut last: BTreeMap<Bytes, (i64, u64)> = BTreeMap::new();
    for r in &got {
        let seq: i64 = std::str::from_utf8(&r.value).unwrap().parse().unwrap();
        if let Some((s, o)) = last.get(&r.key) {
            assert!(seq > *s && r.offset > *o, "key {:?} out of order", r.key);
        }
        last.insert(r.key.clone(), (seq, r.offset));
        assert!(r.timestamp_ms > 0);
    }
    assert_eq!(last.len(), 6);
}

#[tokio::test]
async fn poll_takes_from_every_partition_in_turn() {
    let bus = MemoryBus::open(config(4)).await.unwrap();
    let mut c = bus.subscribe("g", &["t"]).await.unwrap();
    let mut keys = BTreeMap::new();
    for i in 0..100 {
        let key = format!("k{i}");
        keys.entry(partition_for(key.as_bytes(), 4)).or_insert(key);
    }
    assert_eq!(keys.len(), 4);
    let batch: Vec<OutRecord> = keys.values().flat_map(|k| (0..10).map(|i| rec("t", k, i.to_string()))).collect();
    bus.produce(batch).await.unwrap();
    for round in 0..10 {
        let got = c.poll(4, Duration::from_secs(1)).await.unwrap();
        let partitions: BTreeSet<u32> = got.iter().map(|r| r.partition).collect();
        assert_eq!(partitions.len(), 4, "round {round}: {got:?}");
        assert!(got.iter().all(|r| r.offset == round));
    }
}

#[tokio::test]
async fn every_group_gets_every_record() {
    let bus = MemoryBus::open(config(3)).await.unwrap();
    let mut a = bus.subscribe("a", &["t"]).await.unwrap();
    let mut b = bus.subscribe("b", &["t"]).await.unwrap();
    bus.produce((0..20).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.unwrap();
    let got_a = drain(a.as_mut(), 20).await;
    let got_b = drain(b.as_mut(), 20).await;
    assert_eq!(got_a.len(), 20);
    assert_eq!(offsets(&got_a), offsets(&got_b));
}

#[tokio::test]
async fn consumers_of_one_group_split_the_partitions() {
    let bus = MemoryBus::open(config(4)).await.unwrap();
    let mut c1 = bus.subscribe("g", &["t"]).await.unwrap();
    let mut c2 = bus.subscribe("g", &["t"]).await.unwrap();
    bus.produce((0..40).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.unwrap();
    let got1 = drain(c1.as_mut(), 40).await;
    let got2 = drain(c2.as_mut(), 40).await;
    assert!(!got1.is_empty() && !got2.is_empty(), "both consumers get partitions");
    let p1: BTreeSet<u32> = got1.iter().map(|r| r.partition).collect();
    let p2: BTreeSet<u32> = got2.iter().map(|r| r.partition).collect();
    assert!(p1.is_disjoint(&p2), "a partition owned twice: {p1:?} {p2:?}");
    let all: BTreeSet<_> = offsets(&got1).union(&offsets(&got2)).copied().collect();
    assert_eq!(got1.len() + got2.len(), 40);
    assert_eq!(all.len(), 40);
}

#[tokio::test]
async fn a_new_consumer_resumes_at_the_committed_offset() {
    let bus = MemoryBus::open(config(4)).await.unwrap();
    bus.create_topic("t", 1).await.unwrap();
    let mut c1 = bus.subscribe("g", &["t"]).await.unwrap();
    bus.produce((0..10).map(|i| rec("t", "k", i.to_string())).collect()).await.unwrap();
    let got = c1.poll(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 10);
    c1.commit(&got[..4]).await.unwrap();
    drop(c1);
    let mut c2 = bus.subscribe("g", &["t"]).await.unwrap();
    let again = drain(c2.as_mut(), 6).await;
    assert_eq!(again.iter().map(|r| r.offset).collect::<Vec<_>>(), (4..10).collect::<Vec<_>>());
    assert_quiet(c2.as_mut()).await;
}

#[tokio::test]
async fn a_dropped_consumers_partitions_move_to_the_survivor() {
    let bus = MemoryBus::open(config(2)).await.unwrap();
    let mut c1 = bus.subscribe("g", &["t"]).await.unwrap();
    let mut c2 = bus.subscribe("g", &["t"]).await.unwrap();
    bus.produce((0..30).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.unwrap();
    let got1 = drain(c1.as_mut(), 30).await;
    let got2 = drain(c2.as_mut(), 30).await;
    assert_eq!(got1.len() + got2.len(), 30);
    assert!(!got2.is_empty());
    // c1 commits half of what it has; c2 commits nothing and goes away.
    c1.commit(&got1[..got1.len() / 2]).await.unwrap();
    drop(c2);
    // c1 keeps its own partition at its own position (nothing of its own
    // again) and gets c2's uncommitted records.
    let moved = drain(c1.as_mut(), got2.len()).await;
    assert_eq!(offsets(&moved), offsets(&got2));
    assert_quiet(c1.as_mut()).await;
}

#[tokio::test(start_paused = true)]
async fn poll_times_out_empty_and_wakes_early_for_a_record() {
    let bus = MemoryBus::open(config(2)).await.unwrap();
    let mut c = bus.subscribe("g", &["t"]).await.unwrap();
    let start = Instant::now();
    assert!(c.poll(10, Duration::from_secs(5)).await.unwrap().is_empty());
    assert!(start.elapsed() >= Duration::from_secs(5));

    let producer = bus.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        produce_one(producer.as_ref(), rec("t", "k", "late".into())).await.unwrap();
    });
    let start = Instant::now();
    let got = c.poll(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, "late");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(2), "waited {waited:?}");
}

#[tokio::test]
async fn durable_records_survive_a_crash_and_committed_ones_stay_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let produced = {
        let bus = MemoryBus::open(durable_config(&path, 2)).await.unwrap();
        let mut c = bus.subscribe("g", &[PERSIST]).await.unwrap();
        // A group that reads nothing keeps every row in the log.
        let _audit = bus.subscribe("audit", &[PERSIST]).await.unwrap();
        let records: Vec<OutRecord> =
            (0..10).map(|i| rec(PERSIST, if i % 2 == 0 { "a" } else { "b" }, i.to_string()).header("trace_id", "t1")).collect();
        let metas = bus.produce(records.clone()).await.unwrap();
        let got = drain(c.as_mut(), 10).await;
        assert_eq!(got.len(), 10);
        let first_three: Vec<Record> = got.iter().filter(|r| r.offset < 3).cloned().collect();
        c.commit(&first_three).await.unwrap();
        // Crash: no close, everything dropped.
        records.into_iter().zip(metas).collect::<Vec<_>>()
    };

    let bus = MemoryBus::open(durable_config(&path, 2)).await.unwrap();
    let mut c = bus.subscribe("g", &[PERSIST]).await.unwrap();
    let got = drain(c.as_mut(), 10).await;
    let want: BTreeSet<(u32, u64)> = produced.iter().filter(|(_, m)| m.offset >= 3).map(|(_, m)| (m.partition, m.offset)).collect();
    assert_eq!(offsets(&got), want);
    for r in &got {
        let (orig, _) = produced.iter().find(|(_, m)| m.partition == r.partition && m.offset == r.offset).unwrap();
        assert_eq!((&r.key, &r.value), (&orig.key, &orig.value));
        assert_eq!(r.header("trace_id").map(|v| &v[..]), Some(&b"t1"[..]));
    }
    assert_quiet(c.as_mut()).await;
    let mut audit = bus.subscribe("audit", &[PERSIST]).await.unwrap();
    let all: BTreeSet<(u32, u64)> = produced.iter().map(|(_, m)| (m.partition, m.offset)).collect();
    assert_eq!(offsets(&drain(audit.as_mut(), 10).await), all);
    // Offsets continue after the recovered ones.
    let meta = produce_one(bus.as_ref(), rec(PERSIST, "a", "new".into())).await.unwrap();
    let end_a = produced.iter().filter(|(_, m)| m.partition == meta.partition).map(|(_, m)| m.offset).max().unwrap();
    assert_eq!(meta.offset, end_a + 1);
    bus.close().await;
}

#[tokio::test]
async fn memory_topics_are_empty_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    {
        let bus = MemoryBus::open(durable_config(&path, 2)).await.unwrap();
        bus.produce(vec![rec("plain", "k", "x".into()), rec(PERSIST, "k", "y".into())]).await.unwrap();
        bus.close().await;
    }
    let bus = MemoryBus::open(durable_config(&path, 2)).await.unwrap();
    let mut plain = bus.subscribe("g", &["plain"]).await.unwrap();
    assert_quiet(plain.as_mut()).await;
    // The durable topic had no group, so a new group sees its records.
    let mut persist = bus.subscribe("g", &[PERSIST]).await.unwrap();
    let got = drain(persist.as_mut(), 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, "y");
}

#[tokio::test]
async fn retention_bounds_ungrouped_topics_and_commits_trim_memory() {
    let bus = MemoryBus::open(MemoryBusConfig { retention_records: 5, ..config(1) }).await.unwrap();
    bus.produce((0..20).map(|i| rec("t", "k", i.to_string())).collect()).await.unwrap();
    assert_eq!(bus.retained("t", 0), Some((15, 5)));

    let mut c = bus.subscribe("g", &["t"]).await.unwrap();
    bus.produce((20..30).map(|i| rec("t", "k", i.to_string())).collect()).await.unwrap();
    // A group needs them now: no retention cut.
    assert_eq!(bus.retained("t", 0), Some((15, 15)));
    let got = drain(c.as_mut(), 15).await;
    assert_eq!(got.first().map(|r| r.offset), Some(15));
    assert_eq!(got.len(), 15);
    c.commit(&got[..5]).await.unwrap();
    assert_eq!(bus.retained("t", 0), Some((20, 10)));
    c.commit(&got).await.unwrap();
    assert_eq!(bus.retained("t", 0), Some((30, 0)));
}

#[tokio::test]
async fn a_group_that_does_not_commit_holds_records_for_itself() {
    let bus = MemoryBus::open(MemoryBusConfig { retention_records: 2, ..config(1) }).await.unwrap();
    let mut fast = bus.subscribe("fast", &["t"]).await.unwrap();
    let _slow = bus.subscribe("slow", &["t"]).await.unwrap();
    bus.produce((0..10).map(|i| rec("t", "k", i.to_string())).collect()).await.unwrap();
    let got = drain(fast.as_mut(), 10).await;
    fast.commit(&got).await.unwrap();
    assert_eq!(bus.retained("t", 0), Some((0, 10)));
    assert_eq!(bus.lag("slow", "t"), 10);
    assert_eq!(bus.lag("fast", "t"), 0);
}

#[tokio::test]
async fn log_rows_below_the_commits_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let bus = MemoryBus::open(durable_config(&path, 1)).await.unwrap();
    let mut c = bus.subscribe("g", &[PERSIST]).await.unwrap();
    bus.produce((0..10).map(|i| rec(PERSIST, "k", i.to_string())).collect()).await.unwrap();
    let got = drain(c.as_mut(), 10).await;
    c.commit(&got[..6]).await.unwrap();
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT off FROM bus_records ORDER BY off").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows.into_iter().map(|r| r.0).collect::<Vec<_>>(), (6..10).collect::<Vec<_>>());
    let (next,): (i64,) = sqlx::query_as("SELECT next FROM bus_offsets WHERE grp = 'g'").fetch_one(&mut conn).await.unwrap();
    assert_eq!(next, 6);
    bus.close().await;
}

#[tokio::test]
async fn corrupt_log_rows_are_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    {
        let bus = MemoryBus::open(durable_config(&path, 1)).await.unwrap();
        bus.produce((0..3).map(|i| rec(PERSIST, "k", i.to_string())).collect()).await.unwrap();
        bus.close().await;
    }
    {
        let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        for sql in [
            "UPDATE bus_records SET headers = x'ffffffff' WHERE off = 1",
            "INSERT INTO bus_records VALUES ('gochat.messages.persist', 0, -4, x'', x'', x'00000000', 0)",
            "INSERT INTO bus_topics VALUES ('broken', -5)",
            "INSERT INTO bus_offsets VALUES ('g', 'missing-topic', 0, 3)",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let bus = MemoryBus::open(durable_config(&path, 1)).await.unwrap();
    let mut c = bus.subscribe("g", &[PERSIST]).await.unwrap();
    let got = drain(c.as_mut(), 3).await;
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(produce_one(bus.as_ref(), rec(PERSIST, "k", "3".into())).await.unwrap().offset, 3);
}

#[tokio::test]
async fn lag_and_wait_caught_up() {
    let bus = MemoryBus::open(config(2)).await.unwrap();
    let mut c = bus.subscribe("g", &["t"]).await.unwrap();
    assert_eq!(bus.lag("g", "unknown"), 0);
    assert!(bus.wait_caught_up("g", "t", Duration::ZERO).await);
    bus.produce((0..5).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.unwrap();
    assert_eq!(bus.lag("g", "t"), 5);
    assert!(!bus.wait_caught_up("g", "t", Duration::from_millis(50)).await);
    let worker = tokio::spawn(async move {
        let got = drain(c.as_mut(), 5).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.commit(&got).await.unwrap();
        c
    });
    assert!(bus.wait_caught_up("g", "t", Duration::from_secs(5)).await);
    assert_eq!(bus.lag("g", "t"), 0);
    drop(worker.await.unwrap());
}

#[tokio::test]
async fn commits_never_go_back_and_foreign_partitions_are_ignored() {
    let bus = MemoryBus::open(config(2)).await.unwrap();
    let mut c1 = bus.subscribe("g", &["t"]).await.unwrap();
    let mut c2 = bus.subscribe("g", &["t"]).await.unwrap();
    bus.produce((0..20).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.unwrap();
    let got1 = drain(c1.as_mut(), 20).await;
    let got2 = drain(c2.as_mut(), 20).await;
    c1.commit(&got1).await.unwrap();
    c1.commit(&got1[..1]).await.unwrap();
    // c2's partition, committed by c1: ignored.
    c1.commit(&got2).await.unwrap();
    assert_eq!(bus.lag("g", "t"), got2.len() as u64);
    c2.commit(&got2).await.unwrap();
    assert_eq!(bus.lag("g", "t"), 0);
}

#[tokio::test]
async fn create_topic_is_idempotent_and_keeps_its_partitions() {
    let bus = MemoryBus::open(config(8)).await.unwrap();
    bus.create_topic("t", 3).await.unwrap();
    bus.create_topic("t", 5).await.unwrap();
    let metas = bus.produce((0..50).map(|i| rec("t", &format!("k{i}"), String::new())).collect()).await.unwrap();
    assert!(metas.iter().all(|m| m.partition < 3));
    assert_eq!(metas.iter().map(|m| m.partition).collect::<BTreeSet<_>>().len(), 3);
}

#[tokio::test]
async fn bad_input_is_an_error_not_a_panic() {
    assert!(matches!(MemoryBus::open(config(0)).await, Err(BusError::Invalid(_))));
    let bus = MemoryBus::open(config(2)).await.unwrap();
    assert!(matches!(bus.create_topic("", 1).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.create_topic("t", 0).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.produce(vec![rec("", "k", String::new())]).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.subscribe("g", &[]).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.subscribe("", &["t"]).await, Err(BusError::Invalid(_))));
    assert!(bus.produce(Vec::new()).await.unwrap().is_empty());
    let mut c = bus.subscribe("g", &["t"]).await.unwrap();
    assert!(matches!(c.poll(0, Duration::ZERO).await, Err(BusError::Invalid(_))));
    let meta = produce_one(bus.as_ref(), rec("t", "k", "v".into())).await.unwrap();
    let forged = Record {
        topic: "t".into(),
        partition: meta.partition,
        offset: 99,
        key: Bytes::new(),
        value: Bytes::new(),
        headers: Vec::new(),
        timestamp_ms: 0,
    };
    assert!(matches!(c.commit(std::slice::from_ref(&forged)).await, Err(BusError::Invalid(_))));
    let far = Record { offset: u64::MAX, ..forged };
    assert!(matches!(c.commit(&[far]).await, Err(BusError::Invalid(_))));
    bus.close().await;
    assert!(matches!(produce_one(bus.as_ref(), rec("t", "k", "v".into())).await, Err(BusError::Closed)));
    assert!(matches!(c.poll(1, Duration::from_secs(5)).await, Err(BusError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_producers_get_unique_gapless_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let bus = MemoryBus::open(durable_config(&dir.path().join("bus.db"), 2)).await.unwrap();
    let mut c = bus.subscribe("g", &[PERSIST]).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut metas = Vec::new();
                for i in 0..50 {
                    metas.push(produce_one(bus.as_ref(), rec(PERSIST, &format!("k{}", (t + i) % 5), format!("{t}-{i}"))).await.unwrap());
                }
                metas
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.unwrap().into_iter().map(|m| (m.partition, m.offset)));
    }
    assert_eq!(all.len(), 400);
    for p in 0..2 {
        let n = all.iter().filter(|(q, _)| *q == p).count() as u64;
        assert!(all.iter().filter(|(q, _)| *q == p).all(|(_, o)| *o < n), "gap in partition {p}");
    }
    let got = drain(c.as_mut(), 400).await;
    assert_eq!(offsets(&got), all);
}

#[test]
fn headers_round_trip_and_garbage_is_refused() {
    let headers = vec![("trace_id".to_owned(), Bytes::from_static(b"abc")), (String::new(), Bytes::new())];
    assert_eq!(log::decode_headers(&log::encode_headers(&headers)), Some(headers));
    assert_eq!(log::decode_headers(&[]), None);
    assert_eq!(log::decode_headers(&[0xff, 0xff, 0xff, 0xff]), None);
    assert_eq!(log::decode_headers(&[1, 0, 0, 0, 9, 0, 0, 0, b'x']), None);
    assert_eq!(log::decode_headers(&[0, 0, 0, 0]), Some(Vec::new()));
}
