//! Behaviour of the Kafka bus against a real broker.
//!
//! The broker is `GOCHATTEST_KAFKA` (default `127.0.0.1:9092`); these tests
//! fail, not skip, when it is unreachable (they only compile with the
//! `kafka` feature, which is the promise that a broker exists). Each test
//! uses its own random namespace, so tests run in parallel on one broker.
//! Group joins and rebalances take real time, so waits here are bounded
//! loops on a condition, never fixed sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::bus::produce_one;

/// Session timeout of the test consumers: short, so failover tests are quick.
const SESSION_MS: u32 = 6_000;
/// Longest any wait below may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn brokers() -> String {
    std::env::var("GOCHATTEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn random_namespace() -> String {
    format!("test-{:012x}.", rand::random::<u64>() >> 16)
}

fn opts(namespace: &str) -> KafkaOptions {
    KafkaOptions {
        brokers: brokers(),
        namespace: namespace.to_owned(),
        client_id: "gochat-test".to_owned(),
        default_partitions: 4,
        replication_factor: 1,
        session_timeout_ms: SESSION_MS,
        message_timeout_ms: 15_000,
    }
}

async fn bus() -> Arc<KafkaBus> {
    KafkaBus::connect(opts(&random_namespace())).await.expect("connect")
}

/// Creates `topic`, failing the test with a clear line when the broker is away.
async fn topic(bus: &KafkaBus, topic: &str, partitions: u32) {
    bus.create_topic(topic, partitions).await.unwrap_or_else(|e| panic!("Kafka at {} (GOCHATTEST_KAFKA): {e}", brokers()));
}

fn rec(topic: &str, key: &str, value: String) -> OutRecord {
    OutRecord::new(topic, key.to_owned(), value)
}

/// Polls until `want` records came (then one more short poll, to catch
/// extras) or `PATIENCE` passed.
async fn drain(c: &mut dyn Consumer, want: usize) -> Vec<Record> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && start.elapsed() < PATIENCE {
        out.extend(c.poll(1000, Duration::from_millis(500)).await.expect("poll"));
    }
    out.extend(c.poll(1000, Duration::from_millis(500)).await.expect("poll"));
    out
}

async fn assert_quiet(c: &mut dyn Consumer) {
    let got = c.poll(100, Duration::from_secs(2)).await.expect("poll");
    assert!(got.is_empty(), "unexpected records: {got:?}");
}

fn offsets(records: &[Record]) -> BTreeSet<(u32, u64)> {
    records.iter().map(|r| (r.partition, r.offset)).collect()
}

/// Polls every consumer (taking nothing: no records are produced yet)
/// until they own `partitions` of `topic` between them, each some.
async fn wait_until_split(consumers: &mut [&mut KafkaConsumer], topic: &str, partitions: u32) {
    let start = Instant::now();
    loop {
        let mut owners: BTreeMap<u32, usize> = BTreeMap::new();
        let mut every_one_has_some = true;
        for c in consumers.iter_mut() {
            let got = c.poll(10, Duration::from_millis(100)).await.expect("poll");
            assert!(got.is_empty(), "nothing was produced yet: {got:?}");
            let mine: Vec<u32> = c.assignment().expect("assignment").into_iter().filter(|(t, _)| t == topic).map(|(_, p)| p).collect();
            every_one_has_some &= !mine.is_empty();
            for p in mine {
                *owners.entry(p).or_default() += 1;
            }
        }
        if every_one_has_some && owners.len() == partitions as usize && owners.values().all(|n| *n == 1) {
            println!("group settled in {:?}", start.elapsed());
            return;
        }
        assert!(start.elapsed() < PATIENCE, "group did not settle: {owners:?}");
    }
}

#[tokio::test]
async fn records_round_trip_with_headers_under_the_namespace() {
    let bus = bus().await;
    topic(&bus, "t", 3).await;
    let sent = vec![
        rec("t", "conv-1", "hello".into()).header("trace_id", "abc123"),
        rec("t", "conv-2", "world".into()).header("trace_id", "def456").header("bin", Bytes::from_static(&[0, 255, 1])),
        rec("t", "conv-3", String::new()),
    ];
    let metas = bus.produce(sent.clone()).await.expect("produce");
    assert_eq!(metas.len(), 3);
    let mut c = bus.subscribe("g", &["t"]).await.expect("subscribe");
    let got = drain(c.as_mut(), 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for (out, meta) in sent.iter().zip(&metas) {
        let r = got.iter().find(|r| r.key == out.key).expect("every record arrives");
        assert_eq!(r.topic, "t", "records carry the un-prefixed topic");
        assert_eq!((r.partition, r.offset), (meta.partition, meta.offset), "produce reports where the record landed");
        assert_eq!(r.value, out.value);
        assert_eq!(r.headers, out.headers);
        assert!(r.timestamp_ms > 1_600_000_000_000, "timestamp {}", r.timestamp_ms);
    }
    assert!(got.iter().filter(|r| r.header("trace_id").is_some()).count() == 2);

    let md = bus.admin.inner().fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    assert!(names.contains(&format!("{}t", bus.options().namespace).as_str()), "the broker sees the namespaced topic");
    assert!(!names.contains(&"t"), "nothing outside the namespace");
}

#[tokio::test]
async fn records_of_one_key_keep_their_order() {
    let bus = bus().await;
    topic(&bus, "t", 4).await;
    let mut c = bus.subscribe("g", &["t"]).await.expect("subscribe");
    for round in 0..2 {
        let batch: Vec<OutRecord> =
            (0..150).flat_map(|seq| (0..6).map(move |k| rec("t", &format!("k{k}"), format!("{}", round * 1000 + seq)))).collect();
        let metas = bus.produce(batch.clone()).await.expect("produce");
        let mut partition_of: BTreeMap<&Bytes, u32> = BTreeMap::new();
        for (r, m) in batch.iter().zip(&metas) {
            assert_eq!(*partition_of.entry(&r.key).or_insert(m.partition), m.partition, "one key, one partition");
        }
    }
    let got = drain(c.as_mut(), 1800).await;
    assert_eq!(got.len(), 1800);
    assert_eq!(offsets(&got).len(), 1800, "a record came twice");
    let mut last: BTreeMap<Bytes, (i64, u64)> = BTreeMap::new();
    for r in &got {
        let seq: i64 = std::str::from_utf8(&r.value).expect("utf8").parse().expect("number");
        if let Some((s, o)) = last.get(&r.key) {
            assert!(seq > *s && r.offset > *o, "key {:?} out of order: {seq} after {s}", r.key);
        }
        last.insert(r.key.clone(), (seq, r.offset));
    }
    assert_eq!(last.len(), 6);
}

#[tokio::test]
async fn a_new_consumer_resumes_right_after_the_committed_offset() {
    let bus = bus().await;
    topic(&bus, "t", 1).await;
    bus.produce((0..10).map(|i| rec("t", "k", i.to_string())).collect()).await.expect("produce");
    let mut c1 = bus.subscribe("g", &["t"]).await.expect("subscribe");
    let got = drain(c1.as_mut(), 10).await;
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    c1.commit(&got[..4]).await.expect("commit");
    c1.commit(&got[..2]).await.expect("an older commit");
    c1.commit(&got[..4]).await.expect("commit again");
    drop(c1);
    let mut c2 = bus.subscribe("g", &["t"]).await.expect("subscribe");
    let again = drain(c2.as_mut(), 6).await;
    assert_eq!(again.iter().map(|r| r.offset).collect::<Vec<_>>(), (4..10).collect::<Vec<_>>(), "nothing lost, nothing re-read");
    assert_quiet(c2.as_mut()).await;
}

#[tokio::test]
async fn uncommitted_records_are_delivered_again() {
    let bus = bus().await;
    topic(&bus, "t", 2).await;
    bus.produce((0..8).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.expect("produce");
    let mut c1 = bus.subscribe("g", &["t"]).await.expect("subscribe");
    let first = drain(c1.as_mut(), 8).await;
    assert_eq!(first.len(), 8);
    drop(c1);
    let mut c2 = bus.subscribe("g", &["t"]).await.expect("subscribe");
    let again = drain(c2.as_mut(), 8).await;
    assert_eq!(offsets(&again), offsets(&first));
    assert_eq!(again.len(), 8);
    c2.commit(&again).await.expect("commit");
    drop(c2);
    let mut c3 = bus.subscribe("g", &["t"]).await.expect("subscribe");
    assert_quiet(c3.as_mut()).await;
}

#[tokio::test]
async fn every_group_gets_every_record() {
    let bus = bus().await;
    topic(&bus, "t", 3).await;
    bus.produce((0..20).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.expect("produce");
    let mut a = bus.subscribe("a", &["t"]).await.expect("subscribe");
    let mut b = bus.subscribe("b", &["t"]).await.expect("subscribe");
    let (got_a, got_b) = tokio::join!(drain(a.as_mut(), 20), drain(b.as_mut(), 20));
    assert_eq!(got_a.len(), 20);
    assert_eq!(offsets(&got_a), offsets(&got_b));
}

#[tokio::test]
async fn two_consumers_of_one_group_split_the_partitions() {
    let bus = bus().await;
    topic(&bus, "t", 4).await;
    let mut c1 = bus.subscribe_kafka("g", &["t"]).await.expect("subscribe");
    let mut c2 = bus.subscribe_kafka("g", &["t"]).await.expect("subscribe");
    wait_until_split(&mut [&mut c1, &mut c2], "t", 4).await;
    bus.produce((0..40).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.expect("produce");
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while got1.len() + got2.len() < 40 && start.elapsed() < PATIENCE {
        got1.extend(c1.poll(100, Duration::from_millis(200)).await.expect("poll"));
        got2.extend(c2.poll(100, Duration::from_millis(200)).await.expect("poll"));
    }
    assert_quiet(&mut c1).await;
    assert_quiet(&mut c2).await;
    assert!(!got1.is_empty() && !got2.is_empty(), "both consumers get records");
    let p1: BTreeSet<u32> = got1.iter().map(|r| r.partition).collect();
    let p2: BTreeSet<u32> = got2.iter().map(|r| r.partition).collect();
    assert!(p1.is_disjoint(&p2), "a partition read twice: {p1:?} {p2:?}");
    assert_eq!(got1.len() + got2.len(), 40, "together they see everything once");
    assert_eq!(offsets(&got1).union(&offsets(&got2)).count(), 40);
}

#[tokio::test]
async fn a_commit_after_losing_partitions_is_not_an_error_and_they_are_read_again() {
    let bus = bus().await;
    topic(&bus, "t", 4).await;
    let mut c1 = bus.subscribe_kafka("g", &["t"]).await.expect("subscribe");
    bus.produce((0..40).map(|i| rec("t", &format!("k{i}"), i.to_string())).collect()).await.expect("produce");
    let got1 = drain(&mut c1, 40).await;
    assert_eq!(got1.len(), 40, "alone, c1 owns every partition");
    // c2 joins; once the group settles c1 has lost some partitions.
    let mut c2 = bus.subscribe_kafka("g", &["t"]).await.expect("subscribe");
    let start = Instant::now();
    let mut got2 = Vec::new();
    loop {
        let extra = c1.poll(100, Duration::from_millis(100)).await.expect("poll");
        assert!(extra.is_empty(), "c1 kept its position: {extra:?}");
        got2.extend(c2.poll(100, Duration::from_millis(100)).await.expect("poll"));
        let (a1, a2) = (c1.assignment().expect("assignment"), c2.assignment().expect("assignment"));
        if !a1.is_empty() && !a2.is_empty() && a1.len() + a2.len() == 4 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "group did not settle: {a1:?} {a2:?}");
    }
    c1.commit(&got1).await.expect("commit with partitions that moved is not an error");
    let lost: BTreeSet<u32> = c2.assignment().expect("assignment").into_iter().map(|(_, p)| p).collect();
    let want: BTreeSet<(u32, u64)> = offsets(&got1).into_iter().filter(|(p, _)| lost.contains(p)).collect();
    got2.extend(drain(&mut c2, want.len().saturating_sub(got2.len())).await);
    assert_eq!(offsets(&got2), want, "the new owner reads what c1 could not commit");
}

#[tokio::test]
async fn create_topic_is_idempotent_and_keeps_its_partitions() {
    let bus = bus().await;
    topic(&bus, "t", 3).await;
    bus.create_topic("t", 3).await.expect("again");
    bus.create_topic("t", 5).await.expect("again with another count");
    let other = KafkaBus::connect(bus.options().clone()).await.expect("connect");
    other.create_topic("t", 3).await.expect("from another client");
    let name = format!("{}t", bus.options().namespace);
    let md = bus.admin.inner().fetch_metadata(Some(&name), Duration::from_secs(10)).expect("metadata");
    assert_eq!(md.topics().len(), 1);
    assert_eq!(md.topics()[0].partitions().len(), 3);

    // Produce and subscribe create missing topics with the default count.
    produce_one(bus.as_ref(), rec("fresh", "k", "v".into())).await.expect("produce");
    let name = format!("{}fresh", bus.options().namespace);
    let md = bus.admin.inner().fetch_metadata(Some(&name), Duration::from_secs(10)).expect("metadata");
    assert_eq!(md.topics()[0].partitions().len(), 4);
}

#[tokio::test]
async fn namespaces_isolate_deployments_sharing_a_broker() {
    let (a, b) = (bus().await, bus().await);
    topic(&a, "t", 2).await;
    topic(&b, "t", 2).await;
    a.produce(vec![rec("t", "k", "for a".into())]).await.expect("produce");
    let mut cb = b.subscribe("g", &["t"]).await.expect("subscribe");
    let mut ca = a.subscribe("g", &["t"]).await.expect("subscribe");
    let got = drain(ca.as_mut(), 1).await;
    assert_eq!(got.len(), 1);
    assert_quiet(cb.as_mut()).await;
}

#[tokio::test]
async fn bad_input_is_an_error_not_a_panic() {
    let bus = bus().await;
    assert!(matches!(bus.create_topic("", 1).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.create_topic("has space", 1).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.create_topic("t", 0).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.produce(vec![rec("bad/topic", "k", "v".into())]).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.subscribe("g", &[]).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.subscribe("bad group", &["t"]).await, Err(BusError::Invalid(_))));
    assert_eq!(bus.produce(Vec::new()).await.expect("nothing to produce"), Vec::new());
    let mut c = bus.subscribe("g", &["t"]).await.expect("subscribe");
    assert!(matches!(c.poll(0, Duration::from_millis(1)).await, Err(BusError::Invalid(_))));
    c.commit(&[]).await.expect("committing nothing");
    for bad in [
        KafkaOptions { brokers: String::new(), ..opts("") },
        KafkaOptions { namespace: "a b".into(), ..opts("") },
        KafkaOptions { default_partitions: 0, ..opts("") },
        KafkaOptions { replication_factor: 0, ..opts("") },
        KafkaOptions { message_timeout_ms: 0, ..opts("") },
    ] {
        assert!(matches!(KafkaBus::connect(bad).await, Err(BusError::Invalid(_))));
    }
}

#[tokio::test]
async fn a_broker_that_is_down_fails_produce_after_the_message_timeout() {
    // Nothing listens on port 1.
    let opts = KafkaOptions { brokers: "127.0.0.1:1".into(), message_timeout_ms: 2_000, ..opts(&random_namespace()) };
    let bus = KafkaBus::connect(opts).await.expect("connect is lazy");
    let start = Instant::now();
    let err = bus.create_topic("t", 1).await.expect_err("no broker");
    assert!(matches!(err, BusError::Storage(_)), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10), "create_topic gave up after {:?}", start.elapsed());

    // As if the topic had been created before the broker went away.
    bus.known.lock().insert(bus.name("t"));
    let start = Instant::now();
    let err = bus.produce(vec![rec("t", "k", "v".into())]).await.expect_err("no broker");
    let waited = start.elapsed();
    assert!(err.to_string().contains("message.timeout.ms=2000"), "{err}");
    assert!(waited >= Duration::from_millis(1_500) && waited < Duration::from_secs(10), "gave up after {waited:?}");

    let mut c = bus.subscribe("g", &["t"]).await.expect("subscribing is local");
    match c.poll(10, Duration::from_secs(1)).await {
        Ok(records) => assert!(records.is_empty()),
        Err(e) => assert!(matches!(e, BusError::Storage(_)), "{e}"),
    }
}

#[tokio::test]
async fn the_producer_is_idempotent_on_this_broker() {
    let bus = bus().await;
    topic(&bus, "t", 1).await;
    bus.produce((0..5).map(|i| rec("t", "k", i.to_string())).collect()).await.expect("produce");
    assert!(bus.is_idempotent(), "the broker accepted enable.idempotence");
    assert_eq!(bus.producer.load().inner.client().fatal_error(), None);
}

/// tansu accepts idempotence, so the fallback is exercised on librdkafka's
/// in-process mock cluster with InitProducerId switched off: what a broker
/// without idempotence support looks like to the client.
#[tokio::test]
async fn a_broker_without_idempotence_gets_a_plain_producer() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster.apiversion(rdkafka::types::RDKafkaApiKey::InitProducerId, None, None).expect("switch idempotence off");
    let namespace = random_namespace();
    cluster.create_topic(&format!("{namespace}t"), 2, 1).expect("topic");
    let opts = KafkaOptions { brokers: cluster.bootstrap_servers(), ..opts(&namespace) };
    let bus = KafkaBus::connect(opts).await.expect("connect");
    bus.known.lock().insert(bus.name("t"));
    assert!(bus.is_idempotent());
    let batch: Vec<OutRecord> = (0..20).map(|i| rec("t", &format!("k{}", i % 3), i.to_string())).collect();
    let metas = bus.produce(batch.clone()).await.expect("produce falls back and goes through");
    assert!(!bus.is_idempotent(), "the producer fell back");
    assert_eq!(metas.len(), 20);
    let mut last: BTreeMap<&Bytes, (u32, u64)> = BTreeMap::new();
    for (r, m) in batch.iter().zip(&metas) {
        if let Some((p, o)) = last.insert(&r.key, (m.partition, m.offset)) {
            assert!(p == m.partition && o < m.offset, "key order kept without idempotence");
        }
    }
    bus.produce(vec![rec("t", "k", "again".into())]).await.expect("the plain producer stays");
}

/// Name of the helper "test" the failover tests run in a child process.
const CHILD: &str = "bus::kafka::tests::child_group_member";

/// Not a test: a group member in a child process, killed with SIGKILL by
/// `failover_after_sigkill` (so it never leaves the group). Does nothing
/// unless a failover test started it.
#[tokio::test]
#[ignore = "helper process of the failover test"]
async fn child_group_member() {
    let Ok(namespace) = std::env::var("GOCHAT_KAFKA_CHILD_NAMESPACE") else { return };
    let bus = KafkaBus::connect(opts(&namespace)).await.expect("connect");
    let mut c = bus.subscribe_kafka("g", &["t"]).await.expect("subscribe");
    let start = Instant::now();
    while c.assignment().expect("assignment").is_empty() {
        c.poll(10, Duration::from_millis(100)).await.expect("poll");
        assert!(start.elapsed() < PATIENCE, "never assigned");
    }
    println!("ASSIGNED");
    // Stay in the group until killed (bounded, in case the parent died).
    while start.elapsed() < Duration::from_secs(300) {
        c.poll(10, Duration::from_millis(200)).await.expect("poll");
    }
}

/// Runs a group member in a child process until it owns partitions,
/// polling `meanwhile` (a member must poll for a rebalance to complete).
async fn spawn_child_member(namespace: &str, mut meanwhile: Option<&mut KafkaConsumer>) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([CHILD, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("GOCHAT_KAFKA_CHILD_NAMESPACE", namespace)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child member");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ASSIGNED") {
                let _ = tx.send(());
            }
        }
    });
    let start = Instant::now();
    while rx.try_recv().is_err() {
        match meanwhile.as_deref_mut() {
            Some(c) => drop(c.poll(10, Duration::from_millis(100)).await.expect("poll")),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        assert!(start.elapsed() < PATIENCE, "the child never joined the group");
    }
    child
}

/// Polls `c` until it owns `want` partitions (`None`: some but not all 4).
async fn wait_for_assignment(c: &mut KafkaConsumer, want: Option<usize>, since: Instant, what: &str) {
    loop {
        c.poll(10, Duration::from_millis(100)).await.expect("poll");
        let n = c.assignment().expect("assignment").len();
        if want.map_or(n > 0 && n < 4, |w| n == w) {
            return;
        }
        assert!(since.elapsed() < PATIENCE, "{what}: owns {n} partitions after {:?}", since.elapsed());
    }
}

/// Kills (SIGKILL: no LeaveGroup) a member sharing a 4-partition group with
/// the survivor and measures how long until the survivor owns everything.
async fn failover_after_sigkill(killed_is_leader: bool) -> Duration {
    let bus = bus().await;
    topic(&bus, "t", 4).await;
    let namespace = bus.options().namespace.clone();
    let (mut child, mut survivor) = if killed_is_leader {
        let child = spawn_child_member(&namespace, None).await;
        (child, bus.subscribe_kafka("g", &["t"]).await.expect("subscribe"))
    } else {
        let mut survivor = bus.subscribe_kafka("g", &["t"]).await.expect("subscribe");
        wait_for_assignment(&mut survivor, Some(4), Instant::now(), "alone").await;
        (spawn_child_member(&namespace, Some(&mut survivor)).await, survivor)
    };
    wait_for_assignment(&mut survivor, None, Instant::now(), "sharing with the child").await;
    child.kill().expect("SIGKILL the child");
    let killed = Instant::now();
    let _ = child.wait();
    wait_for_assignment(&mut survivor, Some(4), killed, "after the child was killed").await;
    let failover = killed.elapsed();
    println!(
        "failover after SIGKILL of the {}: {failover:?} (session.timeout.ms={SESSION_MS})",
        if killed_is_leader { "leader" } else { "follower" }
    );
    failover
}

#[tokio::test]
async fn a_killed_followers_partitions_move_to_the_survivor() {
    let failover = failover_after_sigkill(false).await;
    assert!(failover >= Duration::from_millis(u64::from(SESSION_MS) / 2), "not before the session timeout: {failover:?}");
}

/// tansu 0.6 fails this: once the group leader misses its heartbeats, the
/// survivor's rejoins are evicted one after another and it never owns a
/// partition again (see the report on branch kv-bus-adapters). Run it with
/// `--ignored` against Apache Kafka or a fixed tansu.
#[tokio::test]
#[ignore = "tansu 0.6 never recovers a group whose leader was killed"]
async fn a_killed_leaders_partitions_move_to_the_survivor() {
    failover_after_sigkill(true).await;
}
