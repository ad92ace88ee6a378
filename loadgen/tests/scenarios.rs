//! End-to-end: the real embedded app in process (127.0.0.1:0, fresh data
//! directory), driven through the loadgen's library API.

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use gochat_infra::config::Config;
use gochat_infra::shutdown::Shutdown;
use gochat_loadgen::Args;

struct App {
    http: String,
    ws: String,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

async fn spawn_app(dir: &Path) -> App {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().expect("addr");
    c.ws.addr = "127.0.0.1:0".parse().expect("addr");
    c.ws.shards = 1;
    c.data.dir = dir.to_path_buf();
    c.http.rate_per_ip = 100_000;
    c.http.burst_per_ip = 100_000;
    c.log.level = "warn".into();
    let shutdown = Shutdown::new();
    let app = gochat::embedded::build(c, shutdown.clone()).await.expect("app starts");
    let http = format!("http://{}", app.http_addr());
    let ws = app.ws_addr().to_string();
    let handle = tokio::spawn(app.run_until_stopped());
    // Ready when healthy: poll with a deadline, no fixed sleep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("{http}/healthz")).await
            && r.status().is_success()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "app never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    App { http, ws, shutdown, handle }
}

impl App {
    async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

fn args(list: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("gochat-loadgen").chain(list.iter().copied())).expect("flags parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_seeded_users_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    // The bulk path: seed the stopped server's data directory, then start it.
    let spec = gochat::seed::Spec { users: 10, pairs: 5, ..Default::default() };
    let file = gochat::seed::seed(dir.path(), spec).await.expect("seed");
    let users_file = dir.path().join("users.json");
    std::fs::write(&users_file, file.to_string()).expect("write users file");
    let app = spawn_app(dir.path()).await;
    let secret = dir.path().join("jwt.secret");
    let a = args(&[
        "chat",
        "--pairs",
        "5",
        "--rate",
        "20",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--drain",
        "2",
        "--ws",
        &app.ws,
        "--auth",
        "secret",
        "--jwt-secret-file",
        secret.to_str().expect("utf-8"),
        "--users-file",
        users_file.to_str().expect("utf-8"),
        "--quiet",
    ]);
    let r = gochat_loadgen::run(a).await.expect("runs");
    app.stop().await;
    assert_eq!(r.connections.established, 10, "{r}");
    assert!(r.sent >= 30, "{r}");
    assert_eq!(r.acked, r.sent, "{r}");
    assert_eq!(r.expected, r.acked, "each 1:1 message has one recipient: {r}");
    assert_eq!(r.lost, 0, "{r}");
    assert_eq!(r.duplicated, 0, "{r}");
    assert_eq!(r.out_of_order, 0, "{r}");
    assert_eq!(r.latency_us.count, r.delivered, "{r}");
    assert!(r.errors.is_empty(), "{r}");
    assert!(!r.failed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_with_http_guests_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = spawn_app(dir.path()).await;
    let a = args(&[
        "room",
        "--members",
        "20",
        "--rate",
        "10",
        "--senders",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--drain",
        "2",
        "--ws",
        &app.ws,
        "--http",
        &app.http,
        "--auth",
        "http",
        "--quiet",
    ]);
    let r = gochat_loadgen::run(a).await.expect("runs");
    app.stop().await;
    assert_eq!(r.connections.established, 20, "{r}");
    assert!(r.acked >= 15, "{r}");
    assert_eq!(r.expected, r.acked * 19, "{r}");
    assert_eq!(r.lost, 0, "{r}");
    assert_eq!(r.duplicated, 0, "{r}");
    assert!(!r.failed(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_counted_not_fatal() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = spawn_app(dir.path()).await;
    let wrong = dir.path().join("wrong.secret");
    std::fs::write(&wrong, "not-the-server-secret-not-the-server-secret").expect("write");
    let a = args(&[
        "connect",
        "--connections",
        "3",
        "--hold",
        "0.2",
        "--ws",
        &app.ws,
        "--auth",
        "secret",
        "--jwt-secret-file",
        wrong.to_str().expect("utf-8"),
        "--quiet",
    ]);
    let r = gochat_loadgen::run(a).await.expect("runs");
    app.stop().await;
    assert_eq!((r.connections.established, r.connections.failed), (0, 3), "{r}");
    assert_eq!(r.errors.get("HANDSHAKE_HTTP_401"), Some(&3), "{r}");
}
