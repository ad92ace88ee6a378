//! One client connection: handshake, then read, send and check until the run ends.
//!
//! ```text
//! connect ──(connected frame)──► idle ──GO──► sending (warm-up, measured) ──► drain ──► close
//!    │ failure: counted by code               reads all the while: acks, errors, deliveries
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::{TokioAdapter, client_async_with_config};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures::StreamExt;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::plan::Plan;
use crate::stats::Stats;
use crate::token::Minter;
use crate::track::{self, Seen, Tracker};

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// How long a TCP connect, the upgrade, or the `connected` frame may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The phases of a run, fixed when every connection is up.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Senders start (warm-up).
    pub start: Instant,
    /// Messages sent from here on are measured.
    pub measure: Instant,
    /// Senders stop.
    pub send_end: Instant,
    /// Connections close (after the drain).
    pub end: Instant,
}

/// Spaces handshakes out to `--connect-rate`.
pub struct Pacer {
    interval: Option<Duration>,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        Pacer { interval, next: tokio::sync::Mutex::new(Instant::now()) }
    }

    async fn wait(&self) {
        let Some(iv) = self.interval else { return };
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + iv;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// What every connection of a process shares.
pub struct Ctx {
    pub stats: Arc<Stats>,
    pub plan: Arc<Plan>,
    pub addr: SocketAddr,
    /// `host:port` for the request line.
    pub host: String,
    pub minter: Option<Minter>,
    pub source_ips: Option<(u8, u8)>,
    pub pacer: Pacer,
    pub handshakes: Semaphore,
}

/// A server frame; every field optional so no input can fail decoding of the rest.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data {
    conversation_id: Option<String>,
    content: Option<String>,
    seq_id: Option<i64>,
    #[serde(rename = "client_msg_id")]
    client_msg_id: Option<String>,
    code: Option<String>,
}

#[derive(serde::Serialize)]
struct Send<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: SendData<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SendData<'a> {
    conversation_id: &'a str,
    content: String,
    message_type: u8,
    #[serde(rename = "client_msg_id")]
    client_msg_id: String,
}

fn io_code(prefix: &str, e: &std::io::Error) -> String {
    format!("{prefix}_{:?}", e.kind()).to_ascii_uppercase()
}

fn ws_code(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("HANDSHAKE_HTTP_{}", resp.status().as_u16()),
        WsError::Io(io) => io_code("HANDSHAKE", io),
        _ => "HANDSHAKE_FAILED".into(),
    }
}

/// Connects user `i` and waits for its `connected` frame; returns the error code on failure.
async fn connect(ctx: &Ctx, i: usize) -> Result<(Ws, Duration), String> {
    let _permit = ctx.handshakes.acquire().await.map_err(|_| "SHUTDOWN".to_string())?;
    ctx.pacer.wait().await;
    // Timed from here: waiting for a handshake slot is not handshake latency.
    let began = Instant::now();
    let user = &ctx.plan.users[i];
    let token = match (&user.token, &ctx.minter) {
        (Some(t), _) => t.clone(),
        (None, Some(m)) => m.mint(&user.id, &user.name, user.guest).map_err(|_| "TOKEN_MINT".to_string())?,
        (None, None) => return Err("NO_TOKEN".into()),
    };
    let socket = if ctx.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| io_code("SOCKET", &e))?;
    if let Some((a, b)) = ctx.source_ips {
        let last = a as usize + i % (b as usize - a as usize + 1);
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last as u8));
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| io_code("BIND", &e))?;
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.connect(ctx.addr)).await {
        Err(_) => return Err("CONNECT_TIMEOUT".into()),
        Ok(r) => r.map_err(|e| io_code("CONNECT", &e))?,
    };
    let _ = stream.set_nodelay(true);
    // Small buffers: thousands of idle clients in one process must stay cheap.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = format!("ws://{}/ws?token={token}", ctx.host);
    let (mut ws, _) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, client_async_with_config(url, stream, Some(config))).await {
        Err(_) => return Err("HANDSHAKE_TIMEOUT".into()),
        Ok(r) => r.map_err(|e| ws_code(&e))?,
    };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("CONNECTED_TIMEOUT".into()),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Err("CLOSED_BEFORE_CONNECTED".into()),
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<Frame>(t.as_str()) {
                Ok(f) if f.kind == "connected" => return Ok((ws, began.elapsed())),
                Ok(f) if f.kind == "error" => return Err(f.data.and_then(|d| d.code).unwrap_or_else(|| "ERROR".into())),
                _ => continue,
            },
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Handles one server frame.
fn on_frame(ctx: &Ctx, i: usize, conv: Option<&str>, tracker: &mut Tracker, text: &str) {
    let stats = &ctx.stats;
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        stats.error("BAD_FRAME");
        return;
    };
    let data = frame.data.unwrap_or_default();
    match frame.kind.as_str() {
        "new-message" => {
            let (Some(c), Some(seq)) = (data.conversation_id.as_deref(), data.seq_id) else {
                stats.error("BAD_FRAME");
                return;
            };
            if Some(c) != conv {
                return; // another conversation of this user: not part of the run
            }
            match tracker.see(c, seq) {
                Seen::Duplicate => {
                    stats.duplicated.fetch_add(1, Relaxed);
                    return;
                }
                Seen::OutOfOrder => {
                    stats.out_of_order.fetch_add(1, Relaxed);
                }
                Seen::New => {}
            }
            if let Some(stamp) = data.content.as_deref().and_then(track::parse_content)
                && stamp.measured
            {
                stats.delivered.fetch_add(1, Relaxed);
                let micros = track::unix_nanos().saturating_sub(stamp.nanos) / 1000;
                stats.latency(i, micros);
            }
        }
        "message-ack" if data.client_msg_id.as_deref().and_then(track::measured_id) == Some(true) => {
            stats.acked.fetch_add(1, Relaxed);
            if let Some(ci) = ctx.plan.conv_of[i] {
                stats.convs[ci].acked.fetch_add(1, Relaxed);
            }
        }
        "error" => {
            stats.error(data.code.as_deref().unwrap_or("ERROR"));
            if data.client_msg_id.as_deref().and_then(track::measured_id) == Some(true) {
                stats.send_errors.fetch_add(1, Relaxed);
            }
        }
        _ => {} // connected, pong, online-status, read-receipt, …
    }
}

/// Runs connection `i` for the whole run. Reports the handshake outcome on
/// `ready`, then waits for the timeline on `go`.
pub async fn run(ctx: Arc<Ctx>, i: usize, ready: mpsc::UnboundedSender<bool>, mut go: watch::Receiver<Option<Timeline>>) {
    let stats = &ctx.stats;
    stats.attempted.fetch_add(1, Relaxed);
    let (mut ws, took) = match connect(&ctx, i).await {
        Ok(r) => r,
        Err(code) => {
            stats.failed.fetch_add(1, Relaxed);
            stats.error(&code);
            let _ = ready.send(false);
            return;
        }
    };
    stats.handshake(took.as_micros() as u64);
    stats.established.fetch_add(1, Relaxed);
    let conv_idx = ctx.plan.conv_of[i];
    if let Some(ci) = conv_idx {
        stats.convs[ci].established.fetch_add(1, Relaxed);
    }
    let _ = ready.send(true);
    drop(ready);

    let conv = conv_idx.map(|ci| ctx.plan.convs[ci].id.as_str());
    let sends = ctx.plan.sends[i] && ctx.plan.rate_per_sender > 0.0;
    let interval = Duration::from_secs_f64(if sends { 1.0 / ctx.plan.rate_per_sender } else { 1.0 });
    let mut tracker = Tracker::default();
    let mut timeline: Option<Timeline> = None;
    let mut next_send: Option<Instant> = None;
    let mut n: u64 = 0;
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        let end = timeline.map_or(far, |t| t.end);
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => on_frame(&ctx, i, conv, &mut tracker, t.as_str()),
                Some(Ok(Message::Binary(_))) => stats.error("BINARY_FRAME"),
                Some(Ok(Message::Close(c))) => {
                    stats.dropped.fetch_add(1, Relaxed);
                    stats.error(&format!("CLOSED_{}", c.map_or(1005, |c| u16::from(c.code))));
                    return;
                }
                Some(Ok(_)) => {} // ping/pong: answered by the library
                Some(Err(_)) | None => {
                    stats.dropped.fetch_add(1, Relaxed);
                    stats.error("CONNECTION_LOST");
                    return;
                }
            },
            changed = go.changed(), if timeline.is_none() => {
                if changed.is_err() {
                    return; // the run was abandoned
                }
                timeline = *go.borrow();
                if let (Some(t), true) = (timeline, sends) {
                    // A random phase spreads senders over the interval.
                    let phase = interval.mul_f64(rand::random::<f64>());
                    next_send = Some(t.start + phase).filter(|s| *s < t.send_end);
                }
            },
            _ = tokio::time::sleep_until(next_send.unwrap_or(far)), if next_send.is_some() => {
                let (Some(t), Some(c), Some(at)) = (timeline, conv, next_send) else { continue };
                let measured = at >= t.measure;
                let me = &ctx.plan.users[i].id;
                let frame = Send {
                    kind: "send-message",
                    data: SendData {
                        conversation_id: c,
                        content: track::content(measured, me, n, track::unix_nanos()),
                        message_type: 1,
                        client_msg_id: track::client_msg_id(measured, n),
                    },
                };
                n += 1;
                let text = serde_json::to_string(&frame).unwrap_or_default();
                if ws.send(Message::text(text)).await.is_err() {
                    stats.dropped.fetch_add(1, Relaxed);
                    stats.error("SEND_FAILED");
                    return;
                }
                if measured {
                    stats.sent.fetch_add(1, Relaxed);
                }
                next_send = Some(at + interval).filter(|s| *s < t.send_end);
            },
            _ = tokio::time::sleep_until(end), if timeline.is_some() => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}
