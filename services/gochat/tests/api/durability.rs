//! Durability: everything survives a restart on the same data directory,
//! and every acked message survives `kill -9` of `gochat up`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn everything_survives_a_restart() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let g = app.group(&a, "keep", &[&b]).await;
    let mut wa = app.ws(&a).await;
    for i in 0..5 {
        wa.send_message(&g, &format!("w{i}"), &format!("k-{i}")).await;
        wa.next_of("message-ack").await;
    }
    app.send_rest(&a, &g, "rest").await;
    let (s, _) = app.put(&format!("/api/conversations/{g}/read"), &b.token, json!({"seqId": 3})).await;
    assert_eq!(s, StatusCode::OK);
    drop(wa);
    let gone = app.login("alice").await;
    let (s, _) = app.post("/api/auth/logout", Some(&gone.token), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let dir = app.stop().await;

    let app = spawn_app_in(dir, |_| {}).await;
    // The same token still works: the signing secret is kept in the data directory.
    let (s, v) = app.get("/api/users/profile", &a.token).await;
    assert_eq!((s, v["data"]["username"].as_str()), (StatusCode::OK, Some("alice")));
    // A logout stays a logout.
    let (s, _) = app.get("/api/users/profile", &gone.token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "revoked access token after restart");
    let (s, _) = app.post("/api/auth/refresh", None, json!({"refreshToken": gone.refresh})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "revoked refresh token after restart");
    let b = app.login("bob").await;
    let stored = app.stored(&b, &g, 6).await;
    let seqs: Vec<i64> = stored.iter().map(|m| m["seqId"].as_i64().unwrap_or(-1)).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let (_, v) = app.get("/api/conversations", &b.token).await;
    let conv = v["data"]["conversations"].as_array().expect("list").iter().find(|c| c["id"] == g.as_str()).cloned().expect("group listed");
    assert_eq!(conv["unreadCount"], 3);
    // Sequences continue where they were; a repeated client_msg_id is still recognised.
    let m = app.send_rest(&a, &g, "after restart").await;
    assert_eq!(m["seqId"], 7);
    let mut wa = app.ws(&a).await;
    wa.send_message(&g, "w0", "k-0").await;
    assert_eq!(wa.next_of("message-ack").await["data"]["seqId"], 1, "the original ack, not a new message");
}

/// A `gochat up` child process, killed when dropped (also when a test fails).
struct Server {
    child: Child,
    http: String,
    ws: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gochat"))
        .args(["up", "--http-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(dir)
        .env("GOCHAT_LOG", "warn")
        .env("GOCHAT_HTTP__RATE_PER_IP", "100000")
        .env("GOCHAT_HTTP__BURST_PER_IP", "100000")
        .env("GOCHAT_HTTP__SIGNUP_RATE_PER_IP", "100000")
        .env("GOCHAT_HTTP__SIGNUP_BURST_PER_IP", "100000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gochat starts");
    let stdout = child.stdout.take().expect("stdout");
    let (mut http, mut ws) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(u) = line.trim().strip_prefix("HTTP API:") {
            http = Some(u.trim().trim_end_matches("/api").to_string());
        }
        if let Some(u) = line.trim().strip_prefix("WebSocket:") {
            ws = u.trim().split("/ws").next().map(|s| s.trim_start_matches("ws://").to_string());
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    Server { child, http: http.expect("HTTP URL printed"), ws: ws.expect("WebSocket URL printed") }
}

#[tokio::test]
async fn acked_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start_server(dir.path());
    let app = ExternalApp::new(&server);
    let a = app.inner.user("alice").await;
    let b = app.inner.user("bob").await;
    let g = app.inner.group(&a, "crash", &[&b]).await;
    let mut ws = app.inner.ws(&a).await;
    const N: usize = 200;
    for i in 0..N {
        ws.send_message(&g, &format!("c{i}"), &format!("crash-{i}")).await;
        if i % 30 == 29 {
            // Stay under the per-connection rate limit (burst 40).
            tokio::time::sleep(Duration::from_millis(1600)).await;
        }
    }
    let mut acked = Vec::new();
    while acked.len() < N {
        let f = ws.next().await;
        match f["type"].as_str() {
            Some("message-ack") => {
                acked.push((f["data"]["client_msg_id"].as_str().unwrap_or_default().to_string(), f["data"]["seqId"].as_i64().unwrap_or(-1)))
            }
            Some("error") => panic!("send refused: {f}"),
            _ => {}
        }
    }
    // Kill right after the last ack: no graceful anything.
    drop(server);

    let server = start_server(dir.path());
    let app = ExternalApp::new(&server);
    let stored = app.inner.stored(&a, &g, N).await;
    assert_eq!(stored.len(), N, "every acked message is stored exactly once");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["seqId"].as_i64(), Some(i as i64 + 1), "gap-free");
    }
    for (cid, seq) in &acked {
        let m = &stored[(*seq - 1) as usize];
        assert_eq!(m["clientMsgId"].as_str(), Some(cid.as_str()), "seq {seq} holds the message that was acked with it");
    }
    let m = app.inner.send_rest(&a, &g, "next").await;
    assert_eq!(m["seqId"].as_i64(), Some(N as i64 + 1));
}

/// The HTTP/WS helpers pointed at a child process.
struct ExternalApp {
    inner: TestApp,
}

impl ExternalApp {
    fn new(server: &Server) -> Self {
        Self { inner: TestApp::external(&server.http, &[server.ws.parse().expect("ws addr")]) }
    }
}
