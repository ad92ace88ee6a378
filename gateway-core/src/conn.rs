//! One WebSocket connection, from the accepted socket to `on_close`.
//!
//! ```text
//! accept -> handshake (bounded by handshake_timeout; reject/404 answered, no upgrade)
//!        -> register in the shard -> on_open (its frames go to the front of the queue)
//!        -> reader || writer          (one task; the writer drains the queue)
//!        -> close requested           (by peer, error, heartbeat, slow queue, Pusher, shutdown)
//!        -> writer sends the Close frame; reader waits for the peer's reply
//!           (both bounded by one close deadline = handshake_timeout)
//!        -> unregister -> on_close (exactly once)
//! ```
//!
//! | cause                         | code | queued frames |
//! |-------------------------------|------|---------------|
//! | message over max_frame_bytes  | 1009 | dropped       |
//! | invalid UTF-8 in text         | 1007 | dropped       |
//! | protocol violation            | 1002 | dropped       |
//! | outbound queue over the limit | 1013 | dropped       |
//! | 3 heartbeats with no traffic  | 1001 | dropped       |
//! | Pusher::close_* / shutdown    | given / 1001 | flushed first |

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_tungstenite::{WebSocketReceiver, WebSocketSender, WebSocketStream};
use bytes::Bytes;
use futures::future::{Either, join, select};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use tungstenite::Message;
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::shard::ShardCtx;
use crate::stats::ShardCounters;
use crate::{Accept, ConnInfo, Handler, HandshakeRequest, Reply, TextFrame};

/// Close codes used by the engine.
pub(crate) mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Converts without copying: a `TextFrame` is UTF-8 by construction, this only re-checks it.
pub(crate) fn to_utf8(frame: &TextFrame) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(frame.bytes().clone()).ok()
}

struct CloseReq {
    code: u16,
    reason: String,
}

/// The shard-side state of an open connection, shared (via `Rc`) between the
/// shard's indexes and the connection task.
pub(crate) struct Conn {
    pub info: ConnInfo,
    max_bytes: usize,
    stats: Arc<ShardCounters>,
    /// Messages not yet handed to tungstenite, with their counted payload size.
    queue: RefCell<VecDeque<(Message, usize)>>,
    /// Bytes in `queue` plus the message being written.
    queued_bytes: Cell<usize>,
    close: RefCell<Option<CloseReq>>,
    peer_gone: Cell<bool>,
    writer_waker: RefCell<Option<Waker>>,
    close_waker: RefCell<Option<Waker>>,
}

enum Next {
    Send(Message, usize),
    Close(u16, String),
}

impl Conn {
    pub fn new(info: ConnInfo, max_bytes: usize, stats: Arc<ShardCounters>) -> Self {
        Conn {
            info,
            max_bytes,
            stats,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            close: RefCell::new(None),
            peer_gone: Cell::new(false),
            writer_waker: RefCell::new(None),
            close_waker: RefCell::new(None),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.close.borrow().is_some()
    }

    /// Queues a text frame; never waits. Over the byte limit the connection is closed with 1013.
    pub fn push_text(&self, text: Utf8Bytes) -> bool {
        self.push(text, false)
    }

    fn push(&self, text: Utf8Bytes, front: bool) -> bool {
        if self.is_closing() {
            return false;
        }
        let len = text.len();
        if self.queued_bytes.get().saturating_add(len) > self.max_bytes {
            ShardCounters::add(&self.stats.slow_closes, 1);
            tracing::debug!(conn = self.info.id, len, "outbound queue full, closing with 1013");
            self.request_close(code::TRY_AGAIN_LATER, "outbound queue full", true);
            return false;
        }
        self.queued_bytes.set(self.queued_bytes.get() + len);
        let item = (Message::Text(text), len);
        let mut queue = self.queue.borrow_mut();
        if front {
            queue.push_front(item);
        } else {
            queue.push_back(item);
        }
        drop(queue);
        wake(&self.writer_waker);
        true
    }

    /// Puts `frames` (in order) ahead of anything already queued.
    fn push_front_all(&self, frames: Vec<TextFrame>) {
        for text in frames.iter().rev().filter_map(to_utf8) {
            if !self.push(text, true) {
                return;
            }
        }
    }

    fn push_ping(&self) {
        if !self.is_closing() {
            self.queue.borrow_mut().push_back((Message::Ping(Bytes::new()), 0));
            wake(&self.writer_waker);
        }
    }

    /// Starts closing (the first request wins). `discard` drops what is still queued.
    pub fn request_close(&self, code: u16, reason: &str, discard: bool) {
        if self.is_closing() {
            return;
        }
        *self.close.borrow_mut() = Some(CloseReq { code, reason: truncate(reason, 123).to_owned() });
        if discard {
            let dropped: usize = self.queue.borrow_mut().drain(..).map(|(_, n)| n).sum();
            self.queued_bytes.set(self.queued_bytes.get().saturating_sub(dropped));
        }
        wake(&self.writer_waker);
        wake(&self.close_waker);
    }

    /// The socket is unusable: stop without sending anything more.
    fn mark_peer_gone(&self) {
        self.peer_gone.set(true);
        self.request_close(code::GOING_AWAY, "", true);
        wake(&self.writer_waker);
    }

    fn poll_next_out(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let next = if self.peer_gone.get() { None } else { self.queue.borrow_mut().pop_front() };
        if let Some((msg, len)) = next {
            return Poll::Ready(Next::Send(msg, len));
        }
        if let Some(req) = self.close.borrow().as_ref() {
            return Poll::Ready(Next::Close(req.code, req.reason.clone()));
        }
        *self.writer_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closing() {
            return Poll::Ready(());
        }
        *self.close_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn wake(slot: &RefCell<Option<Waker>>) {
    if let Some(w) = slot.borrow_mut().take() {
        w.wake();
    }
}

/// Close reasons are limited to 123 bytes by RFC 6455; cut on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`Reply`] for the connection a callback runs for.
struct ConnReply<'a>(&'a Conn);

impl Reply for ConnReply<'_> {
    fn send(&self, frame: TextFrame) -> bool {
        match to_utf8(&frame) {
            Some(text) => self.0.push_text(text),
            None => false,
        }
    }
    fn close(&self, code: u16, reason: &str) {
        self.0.request_close(code, reason, false);
    }
}

/// Runs `fut` for at most `dur`; `None` on timeout.
pub(crate) async fn with_timeout<T>(dur: Duration, fut: impl Future<Output = T>) -> Option<T> {
    match select(pin!(fut), Timer::new(dur)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Serves one accepted TCP connection to the end.
pub(crate) async fn serve<H: Handler>(ctx: Rc<ShardCtx<H>>, stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else { return };
    let _ = stream.set_nodelay(true);
    let Some((ws, accept)) = handshake(&ctx, stream, peer).await else {
        ShardCounters::add(&ctx.stats.handshake_rejects, 1);
        return;
    };
    let info = ConnInfo { id: ctx.next_conn_id(), user_id: accept.user_id, tag: accept.tag, shard: ctx.index, peer };
    let conn = Rc::new(Conn::new(info, ctx.config.max_outbound_bytes, ctx.stats.clone()));
    // Registered before on_open so pushes during it are kept (queued behind its frames).
    ctx.register(&conn);
    let mut session = accept.session;
    match ctx.handler.on_open(info, &session).await {
        Ok(frames) => conn.push_front_all(frames),
        Err((code, reason)) => conn.request_close(code, &reason, true),
    }

    let (mut tx, mut rx) = ws.split();
    {
        let io = join(read_loop(&ctx, &conn, &mut rx, &mut session), write_loop(&ctx, &conn, &mut tx));
        let deadline = async {
            poll_fn(|cx| conn.poll_closing(cx)).await;
            Timer::new(ctx.config.handshake_timeout).await;
        };
        select(pin!(io), pin!(deadline)).await;
    }
    ctx.unregister(&conn);
    ctx.handler.on_close(info, session);
}

// The callback's error type is tungstenite's `ErrorResponse`; not ours to shrink.
#[allow(clippy::result_large_err)]
async fn handshake<H: Handler>(
    ctx: &ShardCtx<H>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(WebSocketStream<TcpStream>, Accept<H::Session>)> {
    let mut accepted = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != ctx.config.ws_path {
            return Err(error_response(404, r#"{"error":"not found"}"#.to_owned()));
        }
        let hr = HandshakeRequest { path: req.uri().path(), query: req.uri().query(), headers: req.headers(), peer };
        match ctx.handler.on_handshake(&hr) {
            Ok(accept) => {
                accepted = Some(accept);
                Ok(resp)
            }
            Err(reject) => Err(error_response(reject.status, reject.body)),
        }
    };
    let fut = async_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ctx.ws_config));
    match with_timeout(ctx.config.handshake_timeout, fut).await {
        Some(Ok(ws)) => accepted.map(|a| (ws, a)),
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "websocket handshake refused");
            None
        }
        None => {
            tracing::debug!(%peer, "websocket handshake timed out");
            None
        }
    }
}

fn error_response(status: u16, body: String) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

/// Close code for a read error; `None` when the peer is simply gone.
fn close_code_for(e: &WsError) -> Option<(u16, &'static str)> {
    match e {
        WsError::Capacity(_) => Some((code::TOO_BIG, "message too big")),
        WsError::Utf8(_) => Some((code::INVALID_DATA, "invalid utf-8")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some((code::PROTOCOL, "protocol error")),
        _ => None,
    }
}

async fn read_loop<H: Handler, S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ShardCtx<H>,
    conn: &Conn,
    rx: &mut WebSocketReceiver<S>,
    session: &mut H::Session,
) {
    let hb = ctx.config.heartbeat;
    let stats = &ctx.stats;
    let mut last_rx = Instant::now();
    let mut tick = Timer::new(hb);
    loop {
        let msg = match select(rx.next(), &mut tick).await {
            Either::Left((Some(Ok(msg)), _)) => msg,
            Either::Left((Some(Err(e)), _)) => {
                match close_code_for(&e) {
                    Some((code, reason)) => {
                        tracing::debug!(conn = conn.info.id, error = %e, code, "closing on bad input");
                        conn.request_close(code, reason, true);
                    }
                    None => conn.mark_peer_gone(),
                }
                return;
            }
            Either::Left((None, _)) => {
                conn.mark_peer_gone();
                return;
            }
            Either::Right(_) => {
                tick = Timer::new(hb);
                let idle = last_rx.elapsed();
                if idle >= hb * 3 {
                    conn.request_close(code::GOING_AWAY, "heartbeat timeout", true);
                } else if idle >= hb {
                    conn.push_ping();
                }
                continue;
            }
        };
        last_rx = Instant::now();
        let reply = ConnReply(conn);
        match msg {
            Message::Text(text) if !conn.is_closing() => {
                ShardCounters::add(&stats.frames_in, 1);
                ShardCounters::add(&stats.bytes_in, text.len() as u64);
                ctx.handler.on_text(conn.info, session, text.as_str(), &reply);
            }
            Message::Binary(data) if !conn.is_closing() => {
                ShardCounters::add(&stats.frames_in, 1);
                ShardCounters::add(&stats.bytes_in, data.len() as u64);
                ctx.handler.on_binary(conn.info, session, &data, &reply);
            }
            // tungstenite has queued the reply; the next read flushes it and ends the stream.
            Message::Close(_) => conn.request_close(1000, "", true),
            _ => {}
        }
    }
}

async fn write_loop<H: Handler, S: AsyncRead + AsyncWrite + Unpin>(ctx: &ShardCtx<H>, conn: &Conn, tx: &mut WebSocketSender<S>) {
    loop {
        match poll_fn(|cx| conn.poll_next_out(cx)).await {
            Next::Send(msg, len) => {
                let is_text = matches!(msg, Message::Text(_));
                let sent = tx.send(msg).await;
                conn.queued_bytes.set(conn.queued_bytes.get().saturating_sub(len));
                if sent.is_err() {
                    conn.mark_peer_gone();
                    return;
                }
                if is_text {
                    ShardCounters::add(&ctx.stats.frames_out, 1);
                    ShardCounters::add(&ctx.stats.bytes_out, len as u64);
                }
            }
            Next::Close(code, reason) => {
                if !conn.peer_gone.get() {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = tx.close(Some(frame)).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(max: usize) -> Conn {
        let info = ConnInfo { id: 1, user_id: 7, tag: 0, shard: 0, peer: SocketAddr::from(([127, 0, 0, 1], 1)) };
        Conn::new(info, max, Arc::new(ShardCounters::default()))
    }

    #[test]
    fn queue_over_limit_closes_with_1013_and_drops_queue() {
        let c = conn(10);
        assert!(c.push_text("12345".into()));
        assert!(c.push_text("12345".into()));
        assert!(!c.push_text("1".into()));
        assert!(c.is_closing());
        assert_eq!(c.close.borrow().as_ref().map(|r| r.code), Some(1013));
        assert!(c.queue.borrow().is_empty());
        assert_eq!(c.queued_bytes.get(), 0);
        assert_eq!(c.stats.snapshot(0).slow_closes, 1);
        assert!(!c.push_text("x".into()), "no pushes after close");
    }

    #[test]
    fn open_frames_go_first_and_graceful_close_keeps_queue() {
        let c = conn(1000);
        assert!(c.push_text("later".into()));
        c.push_front_all(vec!["a".into(), "b".into()]);
        c.request_close(1001, "bye", false);
        c.request_close(1013, "ignored", true);
        let order: Vec<String> = c.queue.borrow().iter().map(|(m, _)| m.to_text().unwrap_or_default().to_owned()).collect();
        assert_eq!(order, ["a", "b", "later"]);
        assert_eq!(c.close.borrow().as_ref().map(|r| r.code), Some(1001));
    }

    #[test]
    fn close_reason_is_cut_on_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate(&long, 123);
        assert!(cut.len() <= 123 && cut.is_char_boundary(cut.len()));
    }
}
