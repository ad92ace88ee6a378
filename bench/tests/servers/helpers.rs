//! Starts a bench server binary on 127.0.0.1:0 and drives it with
//! tokio-tungstenite clients.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gochat_bench::auth::Keys;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const SECRET: &str = "bench-test-secret";

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub keys: Keys,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which server binary to test.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Engine,
    Baseline,
    BaselineSmall,
}

impl Server {
    /// Starts the binary and waits for its "listening on ADDR" line.
    pub fn start(kind: Kind) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("jwt.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("write secret");
        let (bin, extra): (&str, &[&str]) = match kind {
            Kind::Engine => (env!("CARGO_BIN_EXE_engine-room"), &["--shards", "2"]),
            Kind::Baseline => (env!("CARGO_BIN_EXE_baseline-room"), &[]),
            Kind::BaselineSmall => (env!("CARGO_BIN_EXE_baseline-room"), &["--read-buffer", "4096"]),
        };
        let mut child = Command::new(bin)
            .args(["--addr", "127.0.0.1:0", "--jwt-secret-file"])
            .arg(&secret)
            .args(extra)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split_whitespace().find_map(|w| w.parse::<SocketAddr>().ok()) {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(TIMEOUT).expect("server prints its address");
        Server { child, addr, keys: Keys::new(SECRET.as_bytes()), _dir: dir }
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects as `user` and returns the client after its `connected` frame.
    pub async fn join(&self, user: u64) -> Client {
        let (mut ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(self.url(&self.keys.mint(user, 600))))
            .await
            .expect("in time")
            .expect("upgrade");
        assert_eq!(resp.status(), 101);
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "connected");
        assert_eq!(hello["data"]["userId"], user.to_string());
        ws
    }
}

/// The next text frame as JSON (control frames skipped).
pub async fn next_json(ws: &mut Client) -> serde_json::Value {
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next()).await.expect("a frame in time").expect("stream open").expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("JSON frame");
        }
    }
}

pub async fn send_json(ws: &mut Client, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}
