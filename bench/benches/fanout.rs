//! One message fanned out to N connections: a real engine with a trivial
//! handler and N real loopback clients that read. Measures
//! `Pusher::deliver()` -> every client has received the frame, inside one
//! shard (`shards = 1`) and across shards (`shards = 2`, connections spread
//! by SO_REUSEPORT).
//!
//! Clients are raw sockets on a tokio runtime: after the upgrade they only
//! count bytes (every frame has the same length), so the measured time is the
//! engine's plus the kernel's, not a client-side WebSocket library's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway_core::{Accept, ConnInfo, Engine, EngineConfig, EngineHandle, Handler, HandshakeRequest, Reject, Reply, TextFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `?user=N` authenticates; nothing else happens.
struct Trivial;

impl Handler for Trivial {
    type Session = ();

    fn on_handshake(&self, req: &HandshakeRequest<'_>) -> Result<Accept<()>, Reject> {
        let user = req.query.and_then(|q| q.strip_prefix("user=")).and_then(|u| u.parse().ok());
        user.map(|user_id| Accept { user_id, tag: 0, session: () }).ok_or(Reject { status: 401, body: "{}".into() })
    }

    // The engine needs a 'static future, so not `async fn` (which would borrow self).
    #[allow(clippy::manual_async_fn)]
    fn on_open(&self, _conn: ConnInfo, _s: &()) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static {
        async { Ok(Vec::new()) }
    }

    fn on_text(&self, _conn: ConnInfo, _s: &mut (), _text: &str, _reply: &dyn Reply) {}

    fn on_close(&self, _conn: ConnInfo, _s: ()) {}
}

/// Frames received by all clients, and who to wake when a target is reached.
struct Received {
    frames: AtomicU64,
    target: AtomicU64,
    done: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

struct Setup {
    engine: EngineHandle,
    users: Arc<[u64]>,
    frame: TextFrame,
    received: Arc<Received>,
    _rt: tokio::runtime::Runtime,
}

fn frame() -> TextFrame {
    // ~200 bytes, like a small `new-message`.
    let body =
        format!(r#"{{"type":"new-message","data":{{"id":"1","conversationId":"world","content":"{}"}},"timestamp":0}}"#, "x".repeat(120));
    TextFrame::from(body)
}

fn setup(shards: usize, n: usize) -> Setup {
    let config =
        EngineConfig { addr: SocketAddr::from(([127, 0, 0, 1], 0)), shards, heartbeat: Duration::from_secs(600), ..Default::default() };
    let engine = Engine::start(config, |_| Trivial).expect("engine starts (RLIMIT_MEMLOCK >= 512 KiB?)");
    let addr = engine.local_addr();
    let frame = frame();
    let wire_len = (frame.len() + if frame.len() < 126 { 2 } else { 4 }) as u64;
    let received = Arc::new(Received { frames: AtomicU64::new(0), target: AtomicU64::new(u64::MAX), done: std::sync::Mutex::new(None) });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for user in 1..=n as u64 {
        let (received, ready) = (received.clone(), ready_tx.clone());
        rt.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!(
                "GET /ws?user={user} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.expect("upgrade request");
            let mut head = Vec::new();
            let mut buf = vec![0u8; 8192];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = s.read(&mut buf).await.expect("upgrade response");
                assert!(k > 0, "closed during upgrade");
                head.extend_from_slice(&buf[..k]);
            }
            assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
            let _ = ready.send(());
            let mut bytes = 0u64;
            loop {
                let k = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => k as u64,
                };
                let before = bytes / wire_len;
                bytes += k;
                let whole = bytes / wire_len - before;
                let total = received.frames.fetch_add(whole, Ordering::AcqRel) + whole;
                if whole > 0
                    && total >= received.target.load(Ordering::Acquire)
                    && let Some(tx) = received.done.lock().expect("lock").take()
                {
                    let _ = tx.send(());
                }
            }
        });
    }
    for _ in 0..n {
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("client connected");
    }
    let users: Arc<[u64]> = (1..=n as u64).collect();
    Setup { engine, users, frame, received, _rt: rt }
}

impl Setup {
    /// deliver() to every user, then wait until every client has the frame.
    fn one(&self) -> Duration {
        let (tx, rx) = std::sync::mpsc::channel();
        *self.received.done.lock().expect("lock") = Some(tx);
        let target = self.received.frames.load(Ordering::Acquire) + self.users.len() as u64;
        self.received.target.store(target, Ordering::Release);
        let t0 = Instant::now();
        self.engine.pusher().deliver(self.users.clone(), None, self.frame.clone());
        if self.received.frames.load(Ordering::Acquire) < target {
            rx.recv_timeout(Duration::from_secs(30)).expect("every client received the frame");
        }
        t0.elapsed()
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for (label, shards) in [("one_shard", 1), ("two_shards", 2)] {
        for n in [100usize, 1000] {
            let s = setup(shards, n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| b.iter_custom(|iters| (0..iters).map(|_| s.one()).sum()));
            s.engine.shutdown();
        }
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
