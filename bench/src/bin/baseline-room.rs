//! baseline-room: the bench room written the conventional way, to compare
//! gateway-core against: a tokio multi-thread runtime, tokio-tungstenite,
//! one reader task and one writer task per connection, a `DashMap` of
//! connection -> channel for routing, and a bounded mpsc channel per
//! connection. A `new-message` is JSON-encoded once (`Utf8Bytes`, shared), then
//! sent as one `Message` per connection, each written and flushed by that
//! connection's writer task.
//!
//! Same protocol and handler behaviour as engine-room: JWT checked in the
//! handshake (401 without upgrade), `connected` first, ack to the sender,
//! `new-message` to every other connection, `pong`, an idle WebSocket ping
//! and a close after 3 silent heartbeat intervals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use dashmap::DashMap;
use futures::{SinkExt, StreamExt};
use gochat_bench::auth::{Keys, User};
use gochat_bench::protocol::{self, ClientFrame, Posted};
use gochat_bench::room::Room;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser, Debug)]
#[command(about = "A conventional tokio + tokio-tungstenite gateway serving one in-memory room, for benchmarks")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8083")]
    addr: SocketAddr,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    jwt_secret_file: PathBuf,
    /// WebSocket read and write buffer size in bytes; unset keeps tungstenite's defaults (128 KiB).
    #[arg(long)]
    read_buffer: Option<usize>,
    #[arg(long, default_value_t = 30)]
    heartbeat: u64,
    /// Messages a connection may have queued; further ones to it are dropped and counted.
    #[arg(long, default_value_t = 4096)]
    queue: usize,
    /// Rewrite this file every 100 ms with `connections messages deliveries rejected`.
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

type ConnId = u64;

struct State {
    keys: Keys,
    room: Arc<Room>,
    conns: DashMap<ConnId, mpsc::Sender<Message>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    ws_config: WebSocketConfig,
    heartbeat: Duration,
    queue: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut ws_config = WebSocketConfig::default().max_message_size(Some(64 << 10)).max_frame_size(Some(64 << 10));
    if let Some(n) = args.read_buffer {
        ws_config = ws_config.read_buffer_size(n).write_buffer_size(n);
    }
    let room = Arc::new(Room::default());
    if let Some(path) = args.stats_file.clone() {
        room.publish_counters(path);
    }
    let state = Arc::new(State {
        keys: Keys::from_file(&args.jwt_secret_file)?,
        room,
        conns: DashMap::new(),
        next_id: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
        ws_config,
        heartbeat: Duration::from_secs(args.heartbeat.max(1)),
        queue: args.queue.max(1),
    });
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(async move {
        let listener = TcpListener::bind(args.addr).await?;
        println!("baseline-room listening on {}", listener.local_addr()?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { tokio::spawn(serve(stream, state.clone())); }
                    // Out of descriptors: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        let dropped = state.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            eprintln!("baseline-room: {dropped} frames dropped on full queues");
        }
        anyhow::Ok(())
    })
}

// The handshake callback must return tungstenite's (large) `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let mut user: Option<User> = None;
    let auth = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let refuse = |status: u16, body: &str| {
            let mut r = ErrorResponse::new(Some(body.to_owned()));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::UNAUTHORIZED);
            r
        };
        if req.uri().path() != "/ws" {
            return Err(refuse(404, r#"{"code":"NOT_FOUND"}"#));
        }
        let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match state.keys.verify_request(req.uri().query(), header) {
            Ok(u) => {
                user = Some(u);
                Ok(resp)
            }
            Err(e) => {
                state.room.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(refuse(401, &format!(r#"{{"code":"UNAUTHORIZED","message":"{e}"}}"#)))
            }
        }
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, auth, Some(state.ws_config));
    let ws = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    let Some(user) = user else { return };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(state.queue);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let hello = protocol::connected(user.id, id, "baseline-room", state.heartbeat.as_secs());
    let _ = tx.try_send(text(hello));
    state.conns.insert(id, tx.clone());
    state.room.join(user.id);

    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let idle = tokio::time::sleep(state.heartbeat);
    tokio::pin!(idle);
    let mut missed = 0;
    loop {
        tokio::select! {
            m = source.next() => {
                missed = 0;
                idle.as_mut().reset(tokio::time::Instant::now() + state.heartbeat);
                match m {
                    Some(Ok(Message::Text(t))) => on_text(&state, id, &user, &t, &tx),
                    Some(Ok(Message::Binary(_))) => {
                        let _ = tx.try_send(text(protocol::error("INVALID_MESSAGE", "binary frames are not supported", None)));
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {} // ping (answered by tungstenite), pong
                }
            }
            () = &mut idle => {
                missed += 1;
                if missed >= 3 {
                    break;
                }
                let _ = tx.try_send(Message::Ping(Default::default()));
                idle.as_mut().reset(tokio::time::Instant::now() + state.heartbeat);
            }
        }
    }
    state.conns.remove(&id);
    state.room.leave(user.id);
    drop(tx);
    let _ = writer.await;
}

fn text(b: bytes::Bytes) -> Message {
    // Our own encoder produced it from `serde_json`, so it is UTF-8.
    Message::Text(Utf8Bytes::try_from(b).unwrap_or_default())
}

fn on_text(state: &State, id: ConnId, user: &User, frame: &str, tx: &mpsc::Sender<Message>) {
    match protocol::parse(frame) {
        Ok(ClientFrame::Ping) => {
            let _ = tx.try_send(text(protocol::pong()));
        }
        Ok(ClientFrame::MarkRead) => {}
        Ok(ClientFrame::Send { conversation_id, content, message_type, client_msg_id }) => {
            if conversation_id != gochat_bench::ROOM {
                let _ = tx.try_send(text(protocol::error("FORBIDDEN", "not a member of this conversation", client_msg_id.as_deref())));
                return;
            }
            let seq = state.room.post();
            let msg = text(protocol::new_message(&Posted {
                id: seq,
                seq_id: seq,
                sender_id: user.id,
                sender_name: &user.name,
                conversation_id: gochat_bench::ROOM,
                content: &content,
                message_type,
                client_msg_id: client_msg_id.as_deref(),
            }));
            let _ = tx.try_send(text(protocol::ack(client_msg_id.as_deref(), seq, seq)));
            for entry in state.conns.iter() {
                if *entry.key() != id && entry.value().try_send(msg.clone()).is_err() {
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(e) => {
            let _ = tx.try_send(text(protocol::error(e.code, e.message, e.client_msg_id.as_deref())));
        }
    }
}
