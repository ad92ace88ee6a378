//! What only a distributed deployment can show: users on different
//! gateways, instances killed and restarted under traffic, the repo down,
//! and configuration changed in etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::deployment::{Deployment, STANDARD, Spec};
use crate::helpers::*;

#[tokio::test]
async fn users_on_different_gateways_chat_both_ways_and_in_groups() {
    let d = Deployment::start(STANDARD, |_| {}).await;
    let (g1, g2) = (d.app_on(0), d.app_on(1));
    let a = g1.user("alice").await;
    let b = g1.user("bob").await;
    let c = g1.user("carol").await;
    let mut wa = g1.ws(&a).await;
    let mut wb = g2.ws(&b).await;
    let mut wc = g2.ws(&c).await;
    let ab = g1.single(&a, &b).await;
    wa.send_message(&ab, "from gateway 1", "x-1").await;
    assert_eq!(wa.next_of("message-ack").await["data"]["seqId"], 1);
    assert_eq!(wb.next_of("new-message").await["data"]["content"], "from gateway 1");
    wb.send_message(&ab, "from gateway 2", "x-2").await;
    assert_eq!(wb.next_of("message-ack").await["data"]["seqId"], 2);
    assert_eq!(wa.next_of("new-message").await["data"]["content"], "from gateway 2");

    let g = g1.group(&a, "spanning", &[&b, &c]).await;
    wc.send_message(&g, "to everyone", "x-3").await;
    assert_eq!(wc.next_of("message-ack").await["data"]["seqId"], 1);
    assert_eq!(wa.next_of("new-message").await["data"]["content"], "to everyone");
    assert_eq!(wb.next_of("new-message").await["data"]["content"], "to everyone");
    // HTTP on the second gateway sees what the first one wrote.
    let stored = g2.stored(&b, &g, 1).await;
    assert_eq!(stored[0]["content"], "to everyone");
}

#[tokio::test]
async fn a_large_group_is_fanned_out_by_task_to_both_gateways() {
    let d = Deployment::start(STANDARD, |c| c.chat.large_group_threshold = 3).await;
    let (g1, g2) = (d.app_on(0), d.app_on(1));
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(g1.user(&format!("member{i}")).await);
    }
    let refs: Vec<&User> = users[1..].iter().collect();
    let g = g1.group(&users[0], "big", &refs).await;
    let mut sockets = Vec::new();
    for (i, u) in users.iter().enumerate() {
        sockets.push(if i % 2 == 0 { g1.ws(u).await } else { g2.ws(u).await });
    }
    sockets[1].send_message(&g, "fan me out", "big-1").await;
    assert_eq!(sockets[1].next_of("message-ack").await["data"]["seqId"], 1);
    for (i, s) in sockets.iter_mut().enumerate() {
        if i != 1 {
            assert_eq!(s.next_of("new-message").await["data"]["content"], "fan me out", "member {i}");
        }
    }
    let metrics = d.app().metrics().await;
    let fanned = metric_sum(&metrics, "gochat_task_fanout_records_total");
    assert!(fanned >= 1.0, "task did the fan-out:\n{metrics}");
}

/// One sender per pair over the gateways in turn, each with at most
/// `window` messages in flight, behaving like a real client: a refused message is
/// sent again after a pause, and after 10 s of silence every unacked message
/// is sent again (same `client_msg_id`, so nothing is stored twice). `during`
/// runs meanwhile. Returns the acked seqIds per conversation.
async fn traffic(
    app: &TestApp,
    pairs: &[(User, String)],
    per_pair: usize,
    window: usize,
    during: impl Future<Output = ()>,
) -> BTreeMap<String, Vec<i64>> {
    let mut tasks = Vec::new();
    for (p, (u, conv)) in pairs.iter().enumerate() {
        let mut ws = app.ws(u).await;
        let conv = conv.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: BTreeMap<usize, i64> = BTreeMap::new();
            let mut pending: BTreeSet<usize> = BTreeSet::new();
            let mut next = 0;
            let deadline = Instant::now() + Duration::from_secs(150);
            while acked.len() < per_pair {
                assert!(Instant::now() < deadline, "pair {p}: only {} of {per_pair} acked", acked.len());
                while pending.len() < window && next < per_pair {
                    ws.send_message(&conv, &format!("m{next}"), &format!("p{p}-{next}")).await;
                    pending.insert(next);
                    next += 1;
                }
                match ws.next_within(Duration::from_secs(10)).await {
                    Next::Frame(f) if f["type"] == "message-ack" => {
                        let n: usize = f["data"]["client_msg_id"].as_str().and_then(|id| id.rsplit('-').next()?.parse().ok()).expect("n");
                        let seq = f["data"]["seqId"].as_i64().expect("seq");
                        if let Some(before) = acked.insert(n, seq) {
                            assert_eq!(before, seq, "pair {p}: message {n} acked twice with different seqIds");
                        }
                        pending.remove(&n);
                    }
                    Next::Frame(f) if f["type"] == "error" => {
                        // Refused while a backend restarts: send it again (same client_msg_id).
                        let id = f["data"]["client_msg_id"].as_str().expect("id").to_string();
                        let n: usize = id.rsplit('-').next().and_then(|s| s.parse().ok()).expect("n");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        ws.send_message(&conv, &format!("m{n}"), &id).await;
                    }
                    Next::Frame(_) => {}
                    Next::Silent => {
                        for n in &pending {
                            ws.send_message(&conv, &format!("m{n}"), &format!("p{p}-{n}")).await;
                        }
                    }
                    Next::Closed(c) => panic!("pair {p}: connection closed: {c:?}"),
                }
            }
            (conv, acked.into_values().collect::<Vec<_>>())
        }));
    }
    during.await;
    let mut out = BTreeMap::new();
    for t in tasks {
        let (conv, acked) = t.await.expect("sender");
        out.insert(conv, acked);
    }
    out
}

async fn pairs(app: &TestApp, n: usize) -> Vec<(User, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let a = app.user(&format!("sender{i}")).await;
        let b = app.user(&format!("receiver{i}")).await;
        let c = app.single(&a, &b).await;
        out.push((a, c));
    }
    out
}

/// Every acked message is stored exactly once and each conversation's
/// seqIds are 1..=n without a gap.
async fn assert_stored_exactly(app: &TestApp, pairs: &[(User, String)], acked: &BTreeMap<String, Vec<i64>>) {
    for (u, conv) in pairs {
        let acks = &acked[conv];
        let want: BTreeSet<i64> = acks.iter().copied().collect();
        assert_eq!(want.len(), acks.len(), "{conv}: one ack per message");
        let stored = app.stored(u, conv, acks.len()).await;
        let seqs: Vec<i64> = stored.iter().map(|m| m["seqId"].as_i64().expect("seq")).collect();
        assert_eq!(seqs, (1..=acks.len() as i64).collect::<Vec<_>>(), "{conv}: gap-free, each once");
        let contents: BTreeSet<&str> = stored.iter().filter_map(|m| m["content"].as_str()).collect();
        assert_eq!(contents.len(), stored.len(), "{conv}: no message stored twice");
        assert_eq!(seqs.iter().copied().collect::<BTreeSet<_>>(), want, "{conv}: the stored seqIds are the acked ones");
    }
}

/// The instance killed is the one that joined the consumer groups second:
/// tansu 0.6 (the dev broker) never reassigns the partitions of a group
/// whose *leader* died without leaving (its coordinator keeps evicting the
/// survivor). Apache Kafka reassigns either way.
#[tokio::test]
async fn killing_a_task_instance_with_2000_messages_in_flight_loses_nothing() {
    let mut d = Deployment::start(Spec { task: 1, ..STANDARD }, |c| {
        c.ws.rate_per_sec = 1000;
        c.ws.burst = 1000;
    })
    .await;
    let app = d.app();
    let pairs = pairs(&app, 20).await;
    // task-0 has joined its groups by now; task-1 joins as the second member.
    let victim = d.spawn("task", 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim_metrics = format!("http://{}/metrics", d.procs[victim].addrs["metrics"]);
    let d_ref = &mut d;
    // All 2,000 sent at once; the victim is killed once it has stored some,
    // so it dies holding partitions and uncommitted work.
    let acked = traffic(&app, &pairs, 100, 100, async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = reqwest::get(&victim_metrics).await.expect("metrics").text().await.expect("text");
            let stored = metric_sum(&m, "gochat_task_messages_persisted_total");
            if stored > 0.0 {
                break;
            }
            assert!(Instant::now() < deadline, "the second task instance never stored anything");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d_ref.kill9(victim).await;
    })
    .await;
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), 2000);
    // The survivor takes the dead instance's partitions and stores the rest.
    assert_stored_exactly(&app, &pairs, &acked).await;
}

#[tokio::test]
async fn restarting_logic_and_repo_during_traffic_loses_no_acked_message() {
    let mut d = Deployment::start(STANDARD, |_| {}).await;
    let app = d.app();
    let pairs = pairs(&app, 6).await;
    let (logic, repo) = (d.find("logic", 0), d.find("repo", 0));
    let d_ref = &mut d;
    let acked = traffic(&app, &pairs, 150, 20, async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        d_ref.terminate(logic).await;
        d_ref.restart(logic).await;
        d_ref.kill9(repo).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        d_ref.restart(repo).await;
    })
    .await;
    assert_stored_exactly(&app, &pairs, &acked).await;
}

#[tokio::test]
async fn with_repo_down_reads_fail_fast_with_503_and_sends_wait_in_the_broker() {
    let mut d = Deployment::start(STANDARD, |c| c.grpc.deadline_ms = 1000).await;
    let app = d.app();
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    let mut wa = app.ws(&a).await;
    let repo = d.find("repo", 0);
    d.kill9(repo).await;

    let started = Instant::now();
    let (s, v) = app.get(&format!("/api/conversations/{c}/messages"), &a.token).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("INTERNAL")), "{v}");
    assert!(started.elapsed() < Duration::from_secs(5), "failed within the deadline and retries: {:?}", started.elapsed());
    // Once the circuit to repo is open (or its dead registration has lapsed), reads fail at once.
    for _ in 0..30 {
        let _ = app.get(&format!("/api/conversations/{c}/messages"), &a.token).await;
    }
    let started = Instant::now();
    let (s, _) = app.get(&format!("/api/conversations/{c}/messages"), &a.token).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(500), "circuit open: {:?}", started.elapsed());

    // A send is accepted by the gateway and waits in the broker for logic.
    wa.send_message(&c, "while repo is down", "down-1").await;
    wa.none_of("message-ack", Duration::from_secs(1)).await;
    d.restart(repo).await;
    let ack = wa.next_of("message-ack").await;
    assert_eq!(ack["data"]["seqId"], 1, "{ack}");
    let stored = app.stored(&b, &c, 1).await;
    assert_eq!(stored[0]["content"], "while repo is down");
}

#[tokio::test]
async fn a_configuration_change_in_etcd_applies_without_a_restart() {
    let d = Deployment::start(STANDARD, |_| {}).await;
    let app = d.app();
    let (s, _) = app.post("/api/auth/guest", None, json!({})).await;
    assert_eq!(s, StatusCode::CREATED);

    let coord = d.coord().await;
    let mut docs = coord.config_documents().await.expect("documents");
    let common = docs.get_mut("common").expect("common document");
    common["http"]["signup_rate_per_ip"] = json!(1);
    common["http"]["signup_burst_per_ip"] = json!(1);
    common["log"]["level"] = json!("debug");
    common["ws"]["max_outbound_bytes"] = json!(200_000);
    coord.put_document("common", common).await.expect("written");

    // The gateways pick it up from their watch: account creation is now limited.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = app.post("/api/auth/guest", None, json!({})).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert!(Instant::now() < deadline, "the new limit never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The shard knob and the log level changed in place too.
    let gw = d.find("gateway", 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log_of(gw);
        if log.contains("outbound limit changed") && log.contains("log level changed") {
            break;
        }
        assert!(Instant::now() < deadline, "live changes not applied:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `gochat config get` shows the service's resulting configuration.
    let shown = d.run_to_end(&["config", "get", "gateway"]).await;
    assert!(shown.contains("\"signup_rate_per_ip\": 1"), "{shown}");
    assert!(!shown.contains("test-secret"), "secrets are masked: {shown}");
}

#[tokio::test]
async fn every_instance_registers_in_etcd_and_deregisters_on_sigterm() {
    let mut d = Deployment::start(Spec { repo: 2, ..STANDARD }, |_| {}).await;
    let coord = d.coord().await;
    let shutdown = gochat_infra::shutdown::Shutdown::new();
    let gateways = coord.discover("gateway", shutdown.clone()).await.expect("discover");
    assert_eq!(gateways.borrow().len(), 2);
    assert_eq!(coord.discover("repo", shutdown.clone()).await.expect("discover").borrow().len(), 2);
    assert_eq!(coord.discover("task", shutdown.clone()).await.expect("discover").borrow().len(), 2);
    // Two repo instances serve the same deployment: traffic works through either.
    let app = d.app();
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    app.send_rest(&a, &c, "through any repo").await;
    assert_eq!(app.stored(&b, &c, 1).await[0]["content"], "through any repo");
    // An instance id is unique: a second process with a live id does not start.
    let dup = d
        .run_fails(&[
            "logic",
            "--instance-id",
            &d.procs[d.find("logic", 0)].id.clone(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .await;
    assert!(dup.contains("already registered"), "{dup}");
    let logic = coord.discover("logic", shutdown.clone()).await.expect("discover");
    assert_eq!(logic.borrow().len(), 2);
    let victim = d.find("logic", 1);
    d.terminate(victim).await;
    // Revoked at exit: gone at once, not after the lease TTL.
    let mut logic = logic;
    let gone = tokio::time::timeout(Duration::from_secs(2), logic.wait_for(|l| l.len() == 1)).await;
    assert!(gone.is_ok(), "deregistered on SIGTERM");
    shutdown.trigger();
}

/// `gochat config sync|get` from a directory, on an environment of its own.
#[tokio::test]
async fn config_sync_plans_writes_and_prunes() {
    let env = format!("sync{}", gochat_infra::ids::random_token(6).to_lowercase());
    let etcd = crate::deployment::etcd_endpoint();
    let gochat = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--etcd".to_string(), etcd.clone(), "--env".to_string(), env.clone()]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gochat")).args(&all).output().expect("runs");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let dir = tempfile::tempdir().expect("tmp");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/dev");
    for f in ["gochat.toml", "logic.toml", "repo.toml"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    let d = dir.path().to_str().expect("utf-8 path");

    let (code, out) = gochat(&["config", "sync", d, "--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("create") && out.contains("dry run: 3 change(s)"), "{out}");
    let (_, out) = gochat(&["config", "get"]);
    assert!(out.contains("no configuration"), "the dry run wrote nothing: {out}");

    let (code, out) = gochat(&["config", "sync", d]);
    assert_eq!(code, Some(0), "{out}");
    let (_, out) = gochat(&["config", "get", "logic"]);
    assert!(out.contains("127.0.0.1:9000") && out.contains("\"jwt_secret\": \"<set>\""), "{out}");

    std::fs::remove_file(dir.path().join("repo.toml")).expect("rm");
    let (code, out) = gochat(&["config", "sync", d]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("delete") && out.contains("unchanged"), "{out}");

    // A directory that does not validate changes nothing.
    std::fs::write(dir.path().join("task.toml"), "[ws]\nshards = 100000\n").expect("write");
    let (code, out) = gochat(&["config", "sync", d]);
    assert_ne!(code, Some(0));
    assert!(out.contains("ws.shards"), "{out}");
    let (_, out) = gochat(&["config", "get"]);
    assert!(!out.contains("/task"), "{out}");
}
