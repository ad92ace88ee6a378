//! Test harness: the real app on ephemeral ports, an HTTP client, and a
//! WebSocket client.
//!
//! The behaviour modules call [`spawn_app`] / [`spawn_app_with`], which
//! start whatever `crate::backend` starts: the embedded app in process
//! (this binary), or a distributed deployment of separate processes (the
//! `distributed` test binary includes these same modules). WebSocket
//! connections go to the app's gateways in turn, so against a deployment
//! with two gateways every test also crosses gateways.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::{ConnectStream, connect_async};
use async_tungstenite::tungstenite::Message as WsMessage;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use futures::StreamExt;
use gochat_infra::config::Config;
use gochat_infra::shutdown::Shutdown;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const PASSWORD: &str = "secret123";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub base: String,
    pub ws: SocketAddr,
    /// Every gateway's WebSocket address; [`TestApp::ws`] connections take them in turn.
    pub ws_all: Vec<SocketAddr>,
    next_ws: std::sync::atomic::AtomicUsize,
    /// Base URLs of other processes whose `/metrics` [`TestApp::metrics`] includes.
    pub more_metrics: Vec<String>,
    /// Keeps an out-of-process deployment alive as long as the app.
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    pub client: reqwest::Client,
    /// The gateway's id and push service (in-process apps only).
    pub push: Option<(String, im_gateway::bridge::PushService)>,
    running: Option<Running>,
}

/// The in-process app behind a [`TestApp`] (absent for an external process).
struct Running {
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub name: String,
    pub token: String,
    pub refresh: String,
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".parse().expect("addr");
    c.ws.addr = "127.0.0.1:0".parse().expect("addr");
    c.ws.shards = 1;
    c.data.dir = dir.to_path_buf();
    c.http.rate_per_ip = 100_000;
    c.http.burst_per_ip = 100_000;
    c.http.signup_rate_per_ip = 100_000;
    c.http.signup_burst_per_ip = 100_000;
    c.log.format = "pretty".into();
    c.log.level = "warn".into();
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    crate::backend::spawn(tweak).await
}

/// Starts the app on an existing data directory (for restart tests).
pub async fn spawn_app_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(dir.path());
    tweak(&mut config);
    gochat_infra::telemetry::init_tracing(&config.log);
    let shutdown = Shutdown::new();
    let app = gochat::embedded::build(config, shutdown.clone()).await.expect("app starts");
    let base = format!("http://{}", app.http_addr());
    let ws = app.ws_addr();
    let push = Some(app.gateway_push());
    let handle = tokio::spawn(app.run_until_stopped());
    let mut t = TestApp::external(&base, &[ws]);
    t.push = push;
    t.running = Some(Running { shutdown, handle, dir });
    t.wait_ready().await;
    t
}

impl TestApp {
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.client.get(format!("{}/healthz", self.base)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "app never became healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Helpers for an app running in another process.
    pub fn external(base: &str, ws: &[SocketAddr]) -> TestApp {
        TestApp {
            base: base.to_string(),
            ws: ws[0],
            ws_all: ws.to_vec(),
            next_ws: Default::default(),
            _guard: None,
            more_metrics: Vec::new(),
            client: reqwest::Client::new(),
            push: None,
            running: None,
        }
    }

    /// Ties an out-of-process deployment's lifetime to the app's.
    #[allow(dead_code, reason = "used by the distributed test binary")]
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> TestApp {
        self._guard = Some(Box::new(guard));
        self
    }

    /// Graceful stop; returns the data directory for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        let r = self.running.expect("an in-process app");
        r.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), r.handle).await.expect("stops in time").expect("joins");
        r.dir
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"));
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, token, Some(body)).await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::PUT, path, Some(token), Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, Some(token), None).await
    }

    /// Registers and logs in.
    pub async fn user(&self, name: &str) -> User {
        let (s, v) = self.post("/api/auth/register", None, json!({"username": name, "password": PASSWORD})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        self.login(name).await
    }

    pub async fn login(&self, name: &str) -> User {
        let (s, v) = self.post("/api/auth/login", None, json!({"username": name, "password": PASSWORD})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        tokens_user(&v)
    }

    pub async fn guest(&self) -> User {
        let (s, v) = self.post("/api/auth/guest", None, json!({})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        tokens_user(&v)
    }

    pub async fn group(&self, owner: &User, name: &str, members: &[&User]) -> String {
        let ids: Vec<&str> = members.iter().map(|u| u.id.as_str()).collect();
        let (s, v) = self.post("/api/conversations", Some(&owner.token), json!({"type": 2, "name": name, "members": ids})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["data"]["id"].as_str().expect("id").to_string()
    }

    pub async fn single(&self, a: &User, b: &User) -> String {
        let (s, v) = self.post("/api/conversations", Some(&a.token), json!({"type": 1, "members": [b.id]})).await;
        assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{v}");
        v["data"]["id"].as_str().expect("id").to_string()
    }

    /// Sends over REST; returns the message.
    pub async fn send_rest(&self, u: &User, conv: &str, content: &str) -> Value {
        let (s, v) =
            self.post(&format!("/api/conversations/{conv}/messages"), Some(&u.token), json!({"content": content, "messageType": 1})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["data"].clone()
    }

    /// History oldest first (paging with `after`), polling until `n` messages are stored.
    pub async fn stored(&self, u: &User, conv: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut all: Vec<Value> = Vec::new();
            loop {
                let after = all.last().and_then(|m| m["seqId"].as_i64()).unwrap_or(0);
                let (s, v) = self.get(&format!("/api/conversations/{conv}/messages?after={after}&limit=100"), &u.token).await;
                assert_eq!(s, StatusCode::OK, "{v}");
                all.extend(v["data"]["messages"].as_array().cloned().unwrap_or_default());
                if v["data"]["hasMore"] != true {
                    break;
                }
            }
            if all.len() >= n {
                return all;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {} of {n} messages stored", all.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn ws(&self, u: &User) -> Ws {
        self.ws_token(&u.token).await
    }

    pub async fn ws_token(&self, token: &str) -> Ws {
        let i = self.next_ws.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ws_at(i, token).await
    }

    /// A connection to gateway `i` (modulo the number of gateways).
    pub async fn ws_at(&self, i: usize, token: &str) -> Ws {
        let url = format!("ws://{}/ws?token={}", self.ws_all[i % self.ws_all.len()], token);
        let (stream, _) = connect_async(url).await.expect("websocket connects");
        let mut ws = Ws { stream };
        let hello = ws.next_of("connected").await;
        assert!(hello["data"]["connId"].is_string(), "{hello}");
        ws
    }

    /// The gateway's metrics, followed by those of [`TestApp::more_metrics`]
    /// (the other processes of a distributed deployment).
    pub async fn metrics(&self) -> String {
        let mut out = String::new();
        for base in std::iter::once(&self.base).chain(&self.more_metrics) {
            out.push_str(&self.client.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text"));
        }
        out
    }
}

/// The sum of every sample of metric `name` (all label sets) in Prometheus text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn tokens_user(v: &Value) -> User {
    let d = &v["data"];
    User {
        id: d["user"]["id"].as_str().expect("user id").to_string(),
        name: d["user"]["username"].as_str().expect("username").to_string(),
        token: d["accessToken"].as_str().expect("access token").to_string(),
        refresh: d["refreshToken"].as_str().expect("refresh token").to_string(),
    }
}

/// A WebSocket client that reads JSON frames.
pub struct Ws {
    pub stream: WebSocketStream<ConnectStream>,
}

/// What the next thing on a socket was.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    Closed(Option<CloseFrame>),
    Silent,
}

impl Ws {
    pub async fn send(&mut self, v: Value) {
        self.stream.send(WsMessage::text(v.to_string())).await.expect("ws send");
    }

    pub async fn send_raw(&mut self, m: WsMessage) {
        self.stream.send(m).await.expect("ws send");
    }

    pub async fn send_message(&mut self, conv: &str, content: &str, client_msg_id: &str) {
        self.send(json!({"type": "send-message", "data": {"conversationId": conv, "content": content, "messageType": 1, "client_msg_id": client_msg_id}})).await;
    }

    /// The next JSON frame, a close, or silence after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return Next::Silent,
                Ok(None) => return Next::Closed(None),
                Ok(Some(Err(_))) => return Next::Closed(None),
                Ok(Some(Ok(WsMessage::Text(t)))) => return Next::Frame(serde_json::from_str(t.as_str()).expect("server frames are JSON")),
                Ok(Some(Ok(WsMessage::Close(c)))) => return Next::Closed(c),
                Ok(Some(Ok(_))) => continue, // pings, pongs
            }
        }
    }

    pub async fn next(&mut self) -> Value {
        match self.next_within(WAIT).await {
            Next::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame of this type; other frames are skipped.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Asserts nothing of this type arrives within `wait`.
    pub async fn none_of(&mut self, kind: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Next::Silent => return,
                Next::Frame(v) => assert_ne!(v["type"], kind, "unexpected {v}"),
                Next::Closed(c) => panic!("closed while waiting: {c:?}"),
            }
        }
    }

    /// Waits for the close and returns its code.
    pub async fn closed_code(&mut self) -> Option<u16> {
        loop {
            match self.next_within(WAIT).await {
                Next::Frame(_) => continue,
                Next::Closed(c) => return c.map(|c| u16::from(c.code)),
                Next::Silent => panic!("connection was not closed"),
            }
        }
    }

    /// Proves the connection is open and served: ping gets pong.
    pub async fn assert_alive(&mut self) {
        self.send(json!({"type": "ping"})).await;
        self.next_of("pong").await;
    }
}
