//! The pipeline's components wired by hand, to feed them records no client
//! can produce: task must store what it can, dead-letter what it cannot,
//! and never stall on a bad record.

use std::sync::Arc;
use std::time::Duration;

use gochat_infra::bus::memory::{MemoryBus, MemoryBusConfig};
use gochat_infra::bus::{Bus, OutRecord, groups, topics};
use gochat_infra::codec;
use gochat_infra::config::Config;
use gochat_infra::kv::memory::MemoryKv;
use gochat_infra::shutdown::Shutdown;
use gochat_infra::store::Store;
use gochat_infra::store::sqlite::SqliteStore;
use gochat_infra::telemetry::Metrics;
use gochat_proto::common::{Conversation, Member, Message, User};
use gochat_proto::events::{DeadLetter, PersistMessage};

#[tokio::test]
async fn task_stores_good_records_and_dead_letters_bad_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.expect("store"));
    let user = User { id: 1, username: "u".into(), created_at_ms: 1, updated_at_ms: 1, ..Default::default() };
    store.create_user(&user).await.expect("user");
    let conv = Conversation { id: "g_1".into(), r#type: 2, created_at_ms: 1, updated_at_ms: 1, ..Default::default() };
    let member = Member { conversation_id: "g_1".into(), user_id: 1, role: 3, joined_at_ms: 1, ..Default::default() };
    store.create_conversation(&conv, &[member]).await.expect("conversation");
    let repo = Arc::new(im_repo::RepoService::new(store.clone(), Arc::new(MemoryKv::new())));
    let bus = MemoryBus::open(MemoryBusConfig::default()).await.expect("bus");
    let config = gochat_infra::config::LiveConfig::new(Config::default());
    let task = im_task::Task::new(repo, bus.clone(), config, Arc::new(Metrics::new()));
    let mut dlq = bus.subscribe("test.dlq", &[topics::DLQ]).await.expect("dlq consumer");

    let msg = |id: i64, seq: i64, conv: &str| Message {
        id,
        conversation_id: conv.into(),
        sender_id: 1,
        message_type: 1,
        content: format!("m{seq}"),
        seq_id: seq,
        created_at_ms: 5,
        ..Default::default()
    };
    let records = vec![
        codec::encode(topics::PERSIST, "g_1", &PersistMessage { message: Some(msg(101, 1, "g_1")) }, "t1"),
        OutRecord::new(topics::PERSIST, "g_1", vec![0xffu8, 0xff, 0xff]),
        // Unknown conversation, and a message id already taken by another
        // message: the store refuses both, and retrying would not help.
        codec::encode(topics::PERSIST, "g_1", &PersistMessage { message: Some(msg(201, 1, "g_missing")) }, "t2"),
        codec::encode(topics::PERSIST, "g_1", &PersistMessage { message: Some(msg(101, 3, "g_1")) }, "t3"),
        codec::encode(topics::PERSIST, "g_1", &PersistMessage { message: Some(msg(102, 2, "g_1")) }, "t4"),
    ];
    bus.produce(records).await.expect("produce");

    let shutdown = Shutdown::new();
    let runner = tokio::spawn(im_task::run_persist(task, shutdown.clone()));
    assert!(
        bus.wait_caught_up(groups::TASK_PERSIST, topics::PERSIST, Duration::from_secs(10)).await,
        "task committed past the bad records"
    );
    let mut dead = Vec::new();
    while dead.len() < 3 {
        for r in dlq.poll(10, Duration::from_secs(5)).await.expect("poll") {
            dead.push(codec::decode::<DeadLetter>(&r).expect("dead letter"));
        }
    }
    assert!(dead.iter().all(|d| d.source_topic == topics::PERSIST && d.consumer_group == groups::TASK_PERSIST));
    assert!(dead.iter().any(|d| d.error.contains("undecodable")), "{dead:?}");
    assert_eq!(dead.iter().filter(|d| d.error.contains("cannot store")).count(), 2, "{dead:?}");
    let page = store.history("g_1", gochat_infra::store::HistoryDirection::After(0), 10).await.expect("history");
    let seqs: Vec<i64> = page.items.iter().map(|m| m.seq_id).collect();
    assert_eq!(seqs, [1, 2], "the good records around the bad ones are stored");
    shutdown.trigger();
    runner.await.expect("joins").expect("stops cleanly");
}

#[tokio::test]
async fn the_gateway_push_service_delivers_like_the_downstream_topic() {
    use gochat_proto::events::{DownstreamMessage, OnlineStatus, downstream_message::Payload};
    use gochat_proto::gateway::gateway_server::Gateway as _;
    let app = crate::helpers::spawn_app().await;
    let a = app.user("alice").await;
    let mut ws = app.ws(&a).await;
    let (_, push) = app.push.clone().expect("in-process app");
    let m = DownstreamMessage {
        target_user_ids: vec![a.id.parse().expect("id")],
        payload: Some(Payload::OnlineStatus(OnlineStatus { user_id: 42, online: true })),
        ..Default::default()
    };
    let out = push.push(tonic::Request::new(m)).await.expect("push").into_inner();
    assert_eq!(out.target_users, 1);
    let f = ws.next_of("online-status").await;
    assert_eq!(f["data"]["userId"], "42");
    let bad = push.push(tonic::Request::new(DownstreamMessage::default())).await;
    assert_eq!(bad.expect_err("no payload").code(), tonic::Code::InvalidArgument);
}
