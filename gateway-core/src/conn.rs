//! One WebSocket connection, from the accepted socket to `on_close`.
//!
//! ```text
//! accept -> handshake (bounded by handshake_timeout; reject/404/400 answered, no upgrade)
//!        -> register in the shard slab -> on_open (its frames go to the front of the queue)
//!        -> open: one poll fn reads into the shard's scratch buffer, decodes, calls
//!           the handler, then writes the whole outbound queue in one coalesced write
//!        -> close requested (peer Close, bad input, heartbeat sweep, slow queue, Pusher, shutdown):
//!           our Close frame is queued last, pushes are refused from then on
//!        -> flush, shutdown(Write), drain input until the peer's FIN
//!           (all bounded by one close deadline = handshake_timeout)
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
//! | peer's Close                  | echoed | dropped     |
//! | Pusher::close_* / shutdown    | given / 1001 | flushed first |
//!
//! Memory: an idle connection is the [`Conn`] (an `Rc` in the slab), its task
//! (socket, session, an 8-byte decoder) and its user-index slot. The queue is an
//! empty `VecDeque`, the decoder holds nothing until a frame arrives in pieces.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{Either, select};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Pass;
use glommio::timer::Timer;

use crate::codec::{self, Decoder, Event, Flow, OP_PING, OP_PONG, OP_TEXT};
use crate::handshake;
use crate::shard::{Core, SCRATCH_OUT, ShardCtx};
use crate::stats::ShardCounters;
use crate::{Accept, ConnInfo, Handler, HandshakeRequest, Reply, TextFrame};

/// Close codes used by the engine.
pub(crate) mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// `Out::payload` of a control frame (not counted as a text frame).
const CONTROL: u32 = u32::MAX;
/// Socket reads per poll before yielding to other connections.
const READS_PER_POLL: usize = 4;
/// A refusal for connections accepted while out of descriptors.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// One encoded frame waiting to be written.
struct Out {
    wire: Bytes,
    /// Text payload length for stats, or [`CONTROL`].
    payload: u32,
}

/// The shard-side state of an open connection, shared (via `Rc`) between the
/// shard's slab and the connection task.
pub(crate) struct Conn {
    pub info: ConnInfo,
    out: RefCell<VecDeque<Out>>,
    /// Bytes of the front frame already written (a frame is never cut).
    head_written: Cell<usize>,
    /// Bytes in `out`, counted against `max_outbound_bytes`.
    queued: Cell<usize>,
    closing: Cell<bool>,
    /// Shard clock (ms) of the last byte received and of the last ping sent.
    last_rx: Cell<u32>,
    last_ping: Cell<u32>,
    /// The socket while the connection is open (-1 otherwise): deliveries to
    /// an empty queue are written straight to it from the command loop.
    fd: Cell<RawFd>,
    /// The task's waker while it waits; taken by the first push that needs a flush.
    waker: Cell<Option<Waker>>,
}

impl Conn {
    pub fn new(info: ConnInfo, now: u32) -> Self {
        Conn {
            info,
            out: RefCell::new(VecDeque::new()),
            head_written: Cell::new(0),
            queued: Cell::new(0),
            closing: Cell::new(false),
            last_rx: Cell::new(now),
            last_ping: Cell::new(now),
            fd: Cell::new(-1),
            waker: Cell::new(None),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn enqueue(&self, core: &Core, item: Out, front: bool) {
        let len = item.wire.len();
        self.queued.set(self.queued.get() + len);
        ShardCounters::add(&core.stats.outbound_queue_bytes, len as u64);
        let mut out = self.out.borrow_mut();
        if front && self.head_written.get() == 0 {
            out.push_front(item);
        } else {
            out.push_back(item);
        }
        drop(out);
        self.wake();
    }

    /// Queues an encoded text frame; never waits. Over the byte limit the
    /// connection is closed with 1013 instead.
    pub fn push_text(&self, core: &Core, wire: Bytes, payload: u32) -> bool {
        self.push_text_at(core, wire, payload, false)
    }

    /// A delivery from the command loop. With nothing queued and the socket
    /// open, the frame is written at once with one non-blocking `send(2)`, so
    /// the connection task is neither woken nor polled; only an unsent
    /// remainder (or the whole frame on EAGAIN/error) is queued for the task,
    /// which then reports errors as usual. Limits and ordering are unchanged:
    /// anything already queued goes first, a frame over the limit closes with 1013.
    pub fn push_text_now(&self, core: &Core, wire: Bytes, payload: u32) -> bool {
        let Some(fd) = self.direct_fd(core, wire.len()) else {
            return self.push_text(core, wire, payload);
        };
        let sent = crate::platform::send_nonblocking(fd, &wire);
        self.direct_sent(core, wire, payload, sent)
    }

    /// The socket to write a `len`-byte frame to directly, if that keeps the
    /// order and the limits: open, not closing, nothing queued, within the
    /// outbound limit.
    pub(crate) fn direct_fd(&self, core: &Core, len: usize) -> Option<RawFd> {
        let fd = self.fd.get();
        (fd >= 0 && !self.is_closing() && len <= core.max_outbound.get() && self.out.borrow().is_empty()).then_some(fd)
    }

    /// Settles a direct write of `wire` to [`Self::direct_fd`]: an unsent
    /// remainder (or the whole frame, after an error such as `EAGAIN`) is
    /// queued for the connection task.
    pub(crate) fn direct_sent(&self, core: &Core, wire: Bytes, payload: u32, sent: std::io::Result<usize>) -> bool {
        match sent {
            Ok(n) if n == wire.len() => {
                ShardCounters::add(&core.stats.frames_out, 1);
                ShardCounters::add(&core.stats.bytes_out, u64::from(payload));
                true
            }
            Ok(n) => {
                self.head_written.set(n);
                self.enqueue(core, Out { wire, payload }, false);
                true
            }
            Err(_) => self.push_text(core, wire, payload),
        }
    }

    fn push_text_at(&self, core: &Core, wire: Bytes, payload: u32, front: bool) -> bool {
        if self.is_closing() {
            return false;
        }
        if self.queued.get().saturating_add(wire.len()) > core.max_outbound.get() {
            ShardCounters::add(&core.stats.slow_closes, 1);
            tracing::debug!(conn = self.info.id, queued = self.queued.get(), "outbound queue full, closing with 1013");
            self.request_close(core, code::TRY_AGAIN_LATER, "outbound queue full", true);
            return false;
        }
        self.enqueue(core, Out { wire, payload }, front);
        true
    }

    /// Puts `frames` (in order) ahead of anything already queued.
    fn push_front_all(&self, core: &Core, frames: Vec<TextFrame>) {
        for f in frames.iter().rev() {
            if !self.push_text_at(core, codec::encode(OP_TEXT, f.bytes()), payload_len(f), true) {
                return;
            }
        }
    }

    fn push_control(&self, core: &Core, wire: Bytes) {
        if !self.is_closing() {
            self.enqueue(core, Out { wire, payload: CONTROL }, false);
        }
    }

    /// Starts closing (the first request wins). `discard` drops what is still
    /// queued (except a frame already partly written).
    pub fn request_close(&self, core: &Core, code: u16, reason: &str, discard: bool) {
        self.close_with(core, codec::encode_close(Some(code), reason), discard);
    }

    fn close_with(&self, core: &Core, close_frame: Bytes, discard: bool) {
        if self.is_closing() {
            return;
        }
        if discard {
            let keep = usize::from(self.head_written.get() > 0);
            let dropped: usize = self.out.borrow_mut().drain(keep..).map(|o| o.wire.len()).sum();
            self.release(core, dropped);
        }
        self.enqueue(core, Out { wire: close_frame, payload: CONTROL }, false);
        self.closing.set(true);
    }

    fn release(&self, core: &Core, bytes: usize) {
        self.queued.set(self.queued.get().saturating_sub(bytes));
        ShardCounters::sub(&core.stats.outbound_queue_bytes, bytes as u64);
    }

    /// Called by the shard's sweep: ping after one idle interval, give up after three.
    pub fn heartbeat(&self, core: &Core, now: u32, hb_ms: u32) {
        if self.is_closing() {
            return;
        }
        let idle = now.saturating_sub(self.last_rx.get());
        if idle >= hb_ms.saturating_mul(3) {
            self.request_close(core, code::GOING_AWAY, "heartbeat timeout", true);
        } else if idle >= hb_ms && now.saturating_sub(self.last_ping.get()) >= hb_ms {
            self.last_ping.set(now);
            self.push_control(core, Bytes::from_static(&[0x80 | OP_PING, 0]));
        }
    }

    /// Accounts `n` written bytes: pops finished frames and counts them.
    fn consume(&self, core: &Core, mut n: usize) {
        let mut out = self.out.borrow_mut();
        while n > 0 {
            let Some(front) = out.front() else { break };
            let left = front.wire.len() - self.head_written.get();
            if n < left {
                self.head_written.set(self.head_written.get() + n);
                return;
            }
            n -= left;
            self.head_written.set(0);
            let (len, payload) = (front.wire.len(), front.payload);
            out.pop_front();
            self.release(core, len);
            if payload != CONTROL {
                ShardCounters::add(&core.stats.frames_out, 1);
                ShardCounters::add(&core.stats.bytes_out, u64::from(payload));
            }
        }
    }

    fn drop_queue(&self, core: &Core) {
        let dropped: usize = self.out.borrow_mut().drain(..).map(|o| o.wire.len()).sum();
        self.release(core, dropped);
    }
}

fn payload_len(frame: &TextFrame) -> u32 {
    u32::try_from(frame.len()).unwrap_or(CONTROL - 1)
}

/// [`Reply`] for the connection a callback runs for.
struct ConnReply<'a> {
    conn: &'a Conn,
    core: &'a Core,
}

impl Reply for ConnReply<'_> {
    fn send(&self, frame: TextFrame) -> bool {
        self.conn.push_text(self.core, codec::encode(OP_TEXT, frame.bytes()), payload_len(&frame))
    }
    fn close(&self, code: u16, reason: &str) {
        self.conn.request_close(self.core, code, reason, false);
    }
}

/// Runs `fut` for at most `dur`; `None` on timeout.
pub(crate) async fn with_timeout<T>(dur: Duration, fut: impl Future<Output = T>) -> Option<T> {
    match select(pin!(fut), Timer::new(dur)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// How the open phase ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Our Close frame is queued: flush it and wait for the peer.
    Closing,
    /// The socket is unusable; nothing more is sent.
    PeerGone,
}

/// One connection task, from the accepted socket to `on_close`.
///
/// A hand-written state machine rather than one `async fn`, so that an idle
/// connection's task is only [`Open`] (the stream, two `Rc`s, the decoder and
/// the session): the handshake and the close handshake are boxed futures that
/// exist only while they run, and the shard's gate pass is held inline instead
/// of through `Gate::spawn`'s wrapper (which would store the future twice).
pub(crate) struct Serve<H: Handler> {
    state: State<H>,
    /// Keeps the shard's gate open until this task ends (shutdown waits for it).
    _pass: Pass,
}

// `Serve` never pins its fields (the session is only used through `&mut`,
// the stream is `Unpin`, the boxed phases are pinned by their boxes).
impl<H: Handler> Unpin for Serve<H> {}

enum State<H: Handler> {
    /// Handshake, registration and `on_open` (boxed: transient and large).
    Starting(Pin<Box<dyn Future<Output = Option<Open<H>>>>>),
    /// The long-lived state: read, dispatch, flush.
    Open(Open<H>),
    /// Flush, FIN, drain, then unregister and `on_close` (boxed: rare).
    Closing(Pin<Box<dyn Future<Output = ()>>>),
    Done,
}

/// What an open connection keeps between polls.
struct Open<H: Handler> {
    ctx: Rc<ShardCtx<H>>,
    conn: Rc<Conn>,
    stream: TcpStream,
    decoder: Decoder,
    session: H::Session,
}

impl<H: Handler> Open<H> {
    /// Closes the socket, unregisters the connection and calls `on_close` (once).
    fn end(self) {
        let Open { ctx, conn, stream, decoder, session } = self;
        conn.fd.set(-1);
        drop((stream, decoder));
        let core = &ctx.core;
        conn.drop_queue(core);
        core.unregister(&conn);
        ctx.handler.on_close(conn.info, session);
    }
}

/// Serves one accepted TCP connection to the end; `pass` is the shard gate's.
pub(crate) fn serve<H: Handler>(ctx: Rc<ShardCtx<H>>, stream: TcpStream, pass: Pass) -> Serve<H> {
    Serve { state: State::Starting(Box::pin(start(ctx, stream))), _pass: pass }
}

impl<H: Handler> Future for Serve<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Starting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => this.state = State::Done,
                    Poll::Ready(Some(open)) => {
                        // From now on deliveries may write straight to the socket.
                        open.conn.fd.set(open.stream.as_raw_fd());
                        this.state = State::Open(open);
                    }
                },
                State::Open(o) => {
                    let end = match poll_open(&o.ctx, &o.conn, &mut o.stream, &mut o.decoder, &mut o.session, cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(end) => end,
                    };
                    o.conn.fd.set(-1);
                    let State::Open(o) = std::mem::replace(&mut this.state, State::Done) else { unreachable!() };
                    match end {
                        End::Closing => this.state = State::Closing(Box::pin(close(o))),
                        End::PeerGone => o.end(),
                    }
                }
                State::Closing(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => this.state = State::Done,
                },
                State::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Handshake, registration and `on_open`; `None` when the connection never opened.
async fn start<H: Handler>(ctx: Rc<ShardCtx<H>>, mut stream: TcpStream) -> Option<Open<H>> {
    let core = &ctx.core;
    let peer = stream.peer_addr().ok()?;
    let _ = stream.set_nodelay(true);
    let Some((accept, mut leftover)) = handshake(&ctx, &mut stream, peer).await else {
        ShardCounters::add(&core.stats.handshake_rejects, 1);
        return None;
    };
    let Accept { user_id, tag, session } = accept;
    let make = |id| Conn::new(ConnInfo { id, user_id, tag, shard: core.index, peer }, core.now_ms());
    let Some(conn) = core.register(make) else {
        tracing::warn!(shard = core.index, "connection slab full, dropping connection");
        return None;
    };
    let mut session = session;
    // Registered before on_open so pushes during it are kept (queued behind its frames).
    match ctx.handler.on_open(conn.info, &session).await {
        Ok(frames) => conn.push_front_all(core, frames),
        Err((code, reason)) => conn.request_close(core, code, &reason, true),
    }
    let mut decoder = Decoder::default();
    if !leftover.is_empty() && !conn.is_closing() {
        // The client may send frames right behind its upgrade request.
        process(&ctx, &conn, &mut decoder, &mut session, &mut leftover);
    }
    Some(Open { ctx, conn, stream, decoder, session })
}

/// The close handshake (bounded by `handshake_timeout`), then the end.
async fn close<H: Handler>(mut o: Open<H>) {
    let timeout = o.ctx.core.config.handshake_timeout;
    with_timeout(timeout, finish(&o.ctx.core, &o.conn, &mut o.stream)).await;
    o.end();
}

/// The open phase: read and dispatch what arrived, then flush the queue.
fn poll_open<H: Handler>(
    ctx: &ShardCtx<H>,
    conn: &Conn,
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    session: &mut H::Session,
    cx: &mut Context<'_>,
) -> Poll<End> {
    let core = &ctx.core;
    let mut reads = 0;
    while !conn.is_closing() {
        // glommio's non-buffered stream recv()s straight into the buffer given
        // and otherwise parks only a readiness poll, so one shard-wide buffer
        // serves every socket; it is borrowed only for this synchronous step.
        let mut scratch = core.scratch_in.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(End::PeerGone),
            Poll::Ready(Ok(n)) => {
                conn.last_rx.set(core.now_ms());
                process(ctx, conn, decoder, session, &mut scratch[..n]);
            }
            Poll::Pending => break,
        }
        reads += 1;
        if reads == READS_PER_POLL {
            // Busy socket: let the others run, come back next turn.
            cx.waker().wake_by_ref();
            break;
        }
    }
    if let Poll::Ready(Err(())) = flush(core, conn, stream, cx) {
        return Poll::Ready(End::PeerGone);
    }
    if conn.is_closing() {
        return Poll::Ready(End::Closing);
    }
    let waker = match conn.waker.take() {
        Some(w) if w.will_wake(cx.waker()) => w,
        _ => cx.waker().clone(),
    };
    conn.waker.set(Some(waker));
    Poll::Pending
}

/// Decodes `data` and dispatches every complete message to the handler.
fn process<H: Handler>(ctx: &ShardCtx<H>, conn: &Conn, decoder: &mut Decoder, session: &mut H::Session, data: &mut [u8]) {
    let core = &ctx.core;
    let reply = ConnReply { conn, core };
    let stats = &core.stats;
    let mut sink = |ev: Event<'_>| {
        match ev {
            Event::Text(text) => {
                ShardCounters::add(&stats.frames_in, 1);
                ShardCounters::add(&stats.bytes_in, text.len() as u64);
                ctx.handler.on_text(conn.info, session, text, &reply);
            }
            Event::Binary(data) => {
                ShardCounters::add(&stats.frames_in, 1);
                ShardCounters::add(&stats.bytes_in, data.len() as u64);
                ctx.handler.on_binary(conn.info, session, data, &reply);
            }
            Event::Ping(payload) => conn.push_control(core, codec::encode(OP_PONG, payload)),
            Event::Pong => {}
            // Echo the peer's code (RFC 6455 5.5.1); what was queued is moot.
            Event::Close(code) => conn.close_with(core, codec::encode_close(code, ""), true),
        }
        if conn.is_closing() { Flow::Stop } else { Flow::Continue }
    };
    if let Err(e) = decoder.feed(data, core.config.max_frame_bytes, &mut sink) {
        tracing::debug!(conn = conn.info.id, error = ?e, "closing on bad input");
        conn.request_close(core, e.close_code(), e.reason(), true);
    }
}

/// Writes the queue: one frame as is, several concatenated into the shard's
/// scratch buffer so each flush is one send(2) however many frames piled up.
fn flush(core: &Core, conn: &Conn, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
    loop {
        let written = {
            let out = conn.out.borrow();
            let Some(front) = out.front() else { return Poll::Ready(Ok(())) };
            let head = &front.wire[conn.head_written.get()..];
            let res = if out.len() == 1 || head.len() >= SCRATCH_OUT {
                Pin::new(&mut *stream).poll_write(cx, head)
            } else {
                let mut buf = core.scratch_out.borrow_mut();
                buf.clear();
                buf.extend_from_slice(head);
                for o in out.iter().skip(1) {
                    if buf.len() + o.wire.len() > SCRATCH_OUT {
                        break;
                    }
                    buf.extend_from_slice(&o.wire);
                }
                Pin::new(&mut *stream).poll_write(cx, &buf)
            };
            match res {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(n)) => n,
                Poll::Pending => return Poll::Pending,
            }
        };
        conn.consume(core, written);
    }
}

/// The close handshake after our Close frame is queued: flush it, send FIN,
/// then read (and drop) until the peer closes too. Draining matters: closing
/// a socket with unread input makes the kernel send RST, which can destroy
/// the Close frame before the client reads it.
async fn finish(core: &Core, conn: &Conn, stream: &mut TcpStream) {
    if poll_fn(|cx| flush(core, conn, stream, cx)).await.is_err() {
        return;
    }
    if stream.shutdown(Shutdown::Write).await.is_err() {
        return;
    }
    poll_fn(|cx| {
        for _ in 0..READS_PER_POLL {
            let mut scratch = core.scratch_in.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Reads and answers the upgrade request. On success returns the handler's
/// accept and any bytes the client sent after the request.
async fn handshake<H: Handler>(ctx: &ShardCtx<H>, stream: &mut TcpStream, peer: SocketAddr) -> Option<(Accept<H::Session>, Vec<u8>)> {
    let core = &ctx.core;
    let timeout = core.config.handshake_timeout;
    let read = async {
        let mut buf = Vec::new();
        loop {
            let n = poll_fn(|cx| {
                let mut scratch = core.scratch_in.borrow_mut();
                let room = (handshake::MAX_REQUEST + 1).saturating_sub(buf.len()).clamp(1, scratch.len());
                let res = Pin::new(&mut *stream).poll_read(cx, &mut scratch[..room]);
                if let Poll::Ready(Ok(n)) = res {
                    buf.extend_from_slice(&scratch[..n]);
                }
                res
            })
            .await;
            if !matches!(n, Ok(n) if n > 0) {
                return Err(None); // gone before finishing the request: nobody to answer
            }
            match handshake::parse(&buf, &core.config.ws_path) {
                Ok(Some(up)) => return Ok((up, buf)),
                Ok(None) => {}
                Err(refusal) => return Err(Some(refusal)),
            }
        }
    };
    let (up, buf) = match with_timeout(timeout, read).await {
        Some(Ok(parsed)) => parsed,
        Some(Err(refusal)) => {
            if let Some(r) = refusal {
                tracing::debug!(%peer, status = r.status(), "websocket upgrade refused");
                answer(stream, timeout, &handshake::error_response(r.status(), &r.body())).await;
            }
            return None;
        }
        None => {
            tracing::debug!(%peer, "websocket handshake timed out");
            return None;
        }
    };
    let req = HandshakeRequest { path: &up.path, query: up.query.as_deref(), headers: &up.headers, peer };
    match ctx.handler.on_handshake(&req) {
        Ok(accept) => {
            if !answer(stream, timeout, &handshake::switching_protocols(&up.accept_key)).await {
                return None;
            }
            Some((accept, buf[up.consumed..].to_vec()))
        }
        Err(reject) => {
            answer(stream, timeout, &handshake::error_response(reject.status, &reject.body)).await;
            None
        }
    }
}

/// Writes a whole HTTP answer within `timeout`; false when it could not.
async fn answer(stream: &mut TcpStream, timeout: Duration, bytes: &[u8]) -> bool {
    matches!(with_timeout(timeout, stream.write_all(bytes)).await, Some(Ok(())))
}

/// Answers a connection accepted only to be refused (out of descriptors) and closes it.
pub(crate) async fn refuse(mut stream: TcpStream) {
    let _ = with_timeout(Duration::from_millis(20), stream.write_all(REFUSAL)).await;
    let _ = stream.shutdown(Shutdown::Both).await;
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
