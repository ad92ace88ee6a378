//! One shard: an executor-local listener, the slab of connections it accepted,
//! the user index, the command loop that applies [`crate::Pusher`] requests,
//! and the ticker (coarse clock, heartbeat sweep, loop-lag probe). Everything
//! here is `Rc`/`RefCell`; the only cross-thread inputs are the command
//! channel and the stats counters.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use glommio::timer::sleep;
use slab::Slab;

use crate::conn::{self, Conn, code};
use crate::stats::ShardCounters;
use crate::{ConnId, EngineConfig, EngineError, Handler};

/// A request from another thread, applied on the shard that owns the target.
/// Frames arrive already encoded: one `Bytes` shared by every target socket.
#[derive(Debug)]
pub(crate) enum Command {
    Deliver {
        users: Arc<[u64]>,
        exclude: Option<ConnId>,
        wire: Bytes,
        payload: u32,
    },
    SendTo {
        conn: ConnId,
        wire: Bytes,
        payload: u32,
    },
    CloseConn {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    CloseUser {
        user_id: u64,
        tag: Option<u64>,
        code: u16,
        reason: String,
    },
    /// A new per-connection outbound limit (applies to the next push).
    SetMaxOutbound(usize),
    Shutdown,
}

/// How long the accept loop sleeps when it cannot even refuse a connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Commands applied before the command loop lets connection tasks flush.
const COMMAND_BUDGET: usize = 512;
/// ConnId = shard (16 bits) | sequence (24 bits) | slab key (24 bits). The key
/// finds the slot in O(1); the sequence makes a stale id miss a reused slot.
const KEY_BITS: u32 = 24;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;
const SEQ_MASK: u64 = (1 << 24) - 1;
/// Read buffer shared by every connection of the shard: idle sockets hold none.
const SCRATCH_IN: usize = 64 * 1024;
/// Upper bound of one coalesced write.
pub(crate) const SCRATCH_OUT: usize = 64 * 1024;

/// Connection keys of one user: almost always exactly one, kept inline.
enum Slots {
    One(u32),
    Many(Vec<u32>),
}

impl Slots {
    fn as_slice(&self) -> &[u32] {
        match self {
            Slots::One(k) => std::slice::from_ref(k),
            Slots::Many(v) => v,
        }
    }
}

/// Hasher of the user index: user ids are integers assigned by the service,
/// so a splitmix64 finalizer replaces SipHash (one lookup per target user per
/// delivered message is on the hot path of room fan-out).
#[derive(Default)]
struct UserIdHasher(u64);

impl Hasher for UserIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type UserIndex = HashMap<u64, Slots, BuildHasherDefault<UserIdHasher>>;

/// The handler-independent state of a shard.
pub(crate) struct Core {
    pub index: usize,
    pub config: Arc<EngineConfig>,
    pub stats: Arc<ShardCounters>,
    /// `max_outbound_bytes`, changeable while running ([`Command::SetMaxOutbound`]).
    pub max_outbound: Cell<usize>,
    /// Shared read and write scratch buffers; borrowed only inside one poll.
    pub scratch_in: RefCell<Vec<u8>>,
    pub scratch_out: RefCell<Vec<u8>>,
    conns: RefCell<Slab<Rc<Conn>>>,
    users: RefCell<UserIndex>,
    next_seq: Cell<u64>,
    shutting_down: Cell<bool>,
    started: Instant,
    /// Milliseconds since `started`, advanced by the ticker: a clock read costs nothing.
    clock_ms: Cell<u32>,
    /// Direct writes of one `Deliver`, submitted together.
    sends: RefCell<DirectSends>,
}

/// SQEs per `io_uring_enter` of [`DirectSends`].
const SEND_RING: u32 = 256;

/// The direct writes of one `Deliver` to idle connections, submitted through
/// the shard's own small io_uring: one `io_uring_enter` per 256 sockets
/// instead of one `send(2)` each (the frame is the same `Bytes` for all).
/// Sends carry `MSG_DONTWAIT`, so the kernel completes every one inline
/// (sent, partly sent, or `EAGAIN`) and the submission returns with all
/// completions posted; nothing outlives the call. A send whose completion
/// is not seen (the ring failed) closes its connection, since part of the
/// frame may be out; the ring is then dropped. Without a ring (creation
/// failed) every target takes the `send(2)` path.
pub(crate) struct DirectSends {
    ring: Option<io_uring::IoUring>,
    targets: Vec<(Rc<Conn>, std::os::fd::RawFd)>,
    results: Vec<crate::platform::SendOutcome>,
}

impl DirectSends {
    fn new(shard: usize) -> Self {
        let ring = match io_uring::IoUring::new(SEND_RING) {
            // The bounded wait needs IORING_FEAT_EXT_ARG (Linux 5.11).
            Ok(ring) if ring.params().is_feature_ext_arg() => Some(ring),
            Ok(_) => {
                tracing::info!(shard, "io_uring without timed waits (Linux < 5.11); writing with send(2)");
                None
            }
            Err(e) => {
                tracing::warn!(shard, error = %e, "no io_uring for batched sends; writing with send(2)");
                None
            }
        };
        DirectSends { ring, targets: Vec::new(), results: Vec::new() }
    }

    /// Writes `wire` to every collected target and settles each write.
    fn flush(&mut self, core: &Core, wire: &Bytes, payload: u32) {
        use crate::platform::SendOutcome;
        let mut targets = std::mem::take(&mut self.targets);
        // A user listed twice must not put two sends to one socket in one
        // submission (they could interleave): each connection once.
        targets.sort_unstable_by_key(|(_, fd)| *fd);
        targets.dedup_by_key(|(_, fd)| *fd);
        for chunk in targets.chunks(SEND_RING as usize) {
            let batched = match &mut self.ring {
                Some(ring) if chunk.len() > 1 => {
                    if !crate::platform::submit_sends(ring, chunk.iter().map(|(_, fd)| *fd), wire, &mut self.results) {
                        // Sends may still read the frame: it must never be
                        // freed. The ring is not used again.
                        std::mem::forget(wire.clone());
                        self.ring = None;
                    }
                    true
                }
                _ => false,
            };
            if !batched {
                for (c, fd) in chunk {
                    c.direct_sent(core, wire.clone(), payload, crate::platform::send_nonblocking(*fd, wire));
                }
                continue;
            }
            for ((c, fd), outcome) in chunk.iter().zip(self.results.drain(..)) {
                match outcome {
                    SendOutcome::Done(sent) => {
                        c.direct_sent(core, wire.clone(), payload, sent);
                    }
                    SendOutcome::NotSent => {
                        c.direct_sent(core, wire.clone(), payload, crate::platform::send_nonblocking(*fd, wire));
                    }
                    // Part of the frame may be on the wire: anything sent
                    // after it would corrupt the stream.
                    SendOutcome::Unknown => c.request_close(core, code::INTERNAL_ERROR, "send failed", true),
                }
            }
        }
        // Keep the allocation for the next Deliver.
        self.targets = targets;
        self.targets.clear();
    }
}

impl Core {
    pub(crate) fn new(index: usize, config: Arc<EngineConfig>, stats: Arc<ShardCounters>) -> Self {
        Core {
            index,
            max_outbound: Cell::new(config.max_outbound_bytes),
            config,
            stats,
            scratch_in: RefCell::new(vec![0; SCRATCH_IN]),
            scratch_out: RefCell::new(Vec::with_capacity(SCRATCH_OUT)),
            conns: RefCell::new(Slab::new()),
            users: RefCell::new(UserIndex::default()),
            next_seq: Cell::new(1),
            shutting_down: Cell::new(false),
            started: Instant::now(),
            clock_ms: Cell::new(0),
            sends: RefCell::new(DirectSends::new(index)),
        }
    }

    /// Whether direct writes go out in io_uring batches (else one `send(2)` each).
    pub(crate) fn batches_sends(&self) -> bool {
        self.sends.borrow().ring.is_some()
    }

    /// The coarse shard clock (ms), precise to one tick.
    pub fn now_ms(&self) -> u32 {
        self.clock_ms.get()
    }

    fn tick_clock(&self) -> Instant {
        let now = Instant::now();
        self.clock_ms.set(u32::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u32::MAX));
        now
    }

    /// Builds the connection's state and indexes it; `None` when the slab is full.
    pub fn register(&self, make: impl FnOnce(ConnId) -> Conn) -> Option<Rc<Conn>> {
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let key = entry.key() as u64;
        if key > KEY_MASK {
            return None;
        }
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        let id = ((self.index as u64) << 48) | ((seq & SEQ_MASK) << KEY_BITS) | key;
        let conn = Rc::new(make(id));
        entry.insert(conn.clone());
        drop(conns);
        let mut users = self.users.borrow_mut();
        match users.get_mut(&conn.info.user_id) {
            None => {
                users.insert(conn.info.user_id, Slots::One(key as u32));
            }
            Some(slots) => match slots {
                Slots::One(k) => *slots = Slots::Many(vec![*k, key as u32]),
                Slots::Many(v) => v.push(key as u32),
            },
        }
        drop(users);
        ShardCounters::add(&self.stats.connections, 1);
        if self.shutting_down.get() {
            conn.request_close(self, code::GOING_AWAY, "going away", false);
        }
        Some(conn)
    }

    pub fn unregister(&self, conn: &Conn) {
        let key = (conn.info.id & KEY_MASK) as u32;
        if self.conns.borrow().get(key as usize).is_some_and(|c| c.info.id == conn.info.id) {
            self.conns.borrow_mut().remove(key as usize);
        }
        let mut users = self.users.borrow_mut();
        if let Some(slots) = users.get_mut(&conn.info.user_id) {
            match slots {
                Slots::One(k) if *k == key => {
                    users.remove(&conn.info.user_id);
                }
                Slots::One(_) => {}
                Slots::Many(v) => {
                    v.retain(|k| *k != key);
                    if let [last] = v[..] {
                        *slots = Slots::One(last);
                    }
                }
            }
        }
        ShardCounters::sub(&self.stats.connections, 1);
    }

    fn get(&self, id: ConnId) -> Option<Rc<Conn>> {
        self.conns.borrow().get((id & KEY_MASK) as usize).filter(|c| c.info.id == id).cloned()
    }

    /// Applies one command. `direct`: nothing else is waiting in the channel,
    /// so there is nothing to coalesce with and a frame for an idle connection
    /// is written at once (see [`Conn::push_text_now`]) instead of waking its task.
    pub(crate) fn apply(&self, cmd: Command, direct: bool) {
        let push = |c: &Conn, wire: Bytes, payload: u32| {
            if direct { c.push_text_now(self, wire, payload) } else { c.push_text(self, wire, payload) }
        };
        match cmd {
            Command::Deliver { users, exclude, wire, payload } => {
                let mut sends = self.sends.borrow_mut();
                {
                    let index = self.users.borrow();
                    let conns = self.conns.borrow();
                    for user in users.iter() {
                        for key in index.get(user).map(Slots::as_slice).unwrap_or_default() {
                            let Some(c) = conns.get(*key as usize).filter(|c| Some(c.info.id) != exclude) else { continue };
                            match c.direct_fd(self, wire.len()).filter(|_| direct && sends.ring.is_some()) {
                                Some(fd) => sends.targets.push((c.clone(), fd)),
                                // A clone of `wire` is a refcount bump, not a copy.
                                None => {
                                    push(c, wire.clone(), payload);
                                }
                            }
                        }
                    }
                }
                sends.flush(self, &wire, payload);
            }
            Command::SendTo { conn, wire, payload } => {
                if let Some(c) = self.get(conn) {
                    push(&c, wire, payload);
                }
            }
            Command::CloseConn { conn, code, reason } => {
                if let Some(c) = self.get(conn) {
                    c.request_close(self, code, &reason, false);
                }
            }
            Command::CloseUser { user_id, tag, code, reason } => {
                let targets: Vec<Rc<Conn>> = {
                    let index = self.users.borrow();
                    let conns = self.conns.borrow();
                    let keys = index.get(&user_id).map(Slots::as_slice).unwrap_or_default();
                    keys.iter().filter_map(|k| conns.get(*k as usize)).filter(|c| tag.is_none_or(|t| t == c.info.tag)).cloned().collect()
                };
                for c in targets {
                    c.request_close(self, code, &reason, false);
                }
            }
            Command::SetMaxOutbound(n) => self.max_outbound.set(n.max(1)),
            Command::Shutdown => {}
        }
    }

    fn close_all(&self) {
        self.shutting_down.set(true);
        let all: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for c in all {
            c.request_close(self, code::GOING_AWAY, "going away", false);
        }
    }

    /// Heartbeat sweep: ping connections idle for one interval, close those
    /// silent for three. One pass over the slab replaces a timer per connection.
    fn sweep(&self) {
        let hb = u32::try_from(self.config.heartbeat.as_millis()).unwrap_or(u32::MAX);
        let now = self.now_ms();
        let all: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for c in all {
            c.heartbeat(self, now, hb);
        }
    }
}

/// State shared by the tasks of one shard.
pub(crate) struct ShardCtx<H: Handler> {
    pub core: Core,
    pub handler: H,
}

/// Binds, reports readiness, then serves until [`Command::Shutdown`] (or until
/// every sender is gone), and drains the connections before returning.
pub(crate) async fn run<H: Handler>(
    index: usize,
    addr: SocketAddr,
    config: Arc<EngineConfig>,
    handler: H,
    stats: Arc<ShardCounters>,
    mut commands: UnboundedReceiver<Command>,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, EngineError>>,
) {
    let bound = TcpListener::bind(addr).and_then(|l| l.local_addr().map(|a| (l, a)));
    let (listener, local) = match bound {
        Ok(pair) => pair,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Bind(e.into())));
            return;
        }
    };
    let ctx = Rc::new(ShardCtx { core: Core::new(index, config, stats), handler });
    let gate = Gate::new();
    let acceptor = glommio::spawn_local(accept_loop(ctx.clone(), listener, gate.clone()));
    let ticker = glommio::spawn_local(ticker(ctx.clone()));
    tracing::info!(shard = index, %local, batched_sends = ctx.core.batches_sends(), "shard listening");
    let _ = ready.send(Ok(local));
    drop(ready);

    'serve: while let Some(cmd) = commands.next().await {
        let mut next = Some(cmd);
        let mut applied = 0;
        // Apply everything already queued, then yield so each connection task
        // writes all its new frames in one flush (coalescing per loop turn).
        // The last command of a turn writes to idle connections directly: no
        // later frame can join theirs, so waking their tasks would only add a
        // wake-up and a poll to the same single send(2).
        while let Some(cmd) = next.take() {
            if matches!(cmd, Command::Shutdown) {
                break 'serve;
            }
            applied += 1;
            if applied < COMMAND_BUDGET {
                next = commands.try_recv().ok();
            }
            ctx.core.apply(cmd, next.is_none());
        }
        glommio::yield_if_needed().await;
    }

    acceptor.cancel().await;
    ctx.core.close_all();
    let _ = gate.close().await;
    ticker.cancel().await;
    tracing::info!(shard = index, "shard stopped");
}

/// Advances the shard clock, runs the heartbeat sweep, and measures event-loop
/// lag as the overshoot of its own sleep (kept as the max over ~1 s).
async fn ticker<H: Handler>(ctx: Rc<ShardCtx<H>>) {
    let core = &ctx.core;
    let tick = (core.config.heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let sweep_every = (core.config.heartbeat / 4).max(tick);
    let mut last_sweep = Instant::now();
    let (mut window_max, mut window_start) = (0u64, Instant::now());
    loop {
        let before = Instant::now();
        sleep(tick).await;
        let now = core.tick_clock();
        let lag = now.duration_since(before).saturating_sub(tick).as_micros() as u64;
        window_max = window_max.max(lag);
        if now.duration_since(window_start) >= Duration::from_secs(1) {
            ShardCounters::set(&core.stats.loop_lag_us, window_max);
            (window_max, window_start) = (0, now);
        } else if lag > ShardCounters::get(&core.stats.loop_lag_us) {
            ShardCounters::set(&core.stats.loop_lag_us, lag);
        }
        if now.duration_since(last_sweep) >= sweep_every {
            last_sweep = now;
            core.sweep();
        }
    }
}

async fn accept_loop<H: Handler>(ctx: Rc<ShardCtx<H>>, listener: TcpListener, gate: Gate) {
    let core = &ctx.core;
    // One descriptor held in reserve: when the process runs out, it is released
    // to accept the waiting connection and refuse it at once, so clients get a
    // prompt refusal instead of hanging in the backlog, and accept never spins.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut out_of_fds = false;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if out_of_fds {
                    tracing::info!(shard = core.index, "accept: descriptors available again");
                    out_of_fds = false;
                }
                ShardCounters::add(&core.stats.accepted_total, 1);
                // The pass lives in the task (not `Gate::spawn`'s wrapper, which
                // would hold the connection future twice).
                match gate.enter() {
                    Ok(pass) => {
                        glommio::spawn_local(conn::serve(ctx.clone(), stream, pass)).detach();
                    }
                    Err(_) => return, // gate closed: shutting down
                }
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        if !out_of_fds {
                            tracing::warn!(shard = core.index, error = %e, "accept: out of descriptors, refusing new connections");
                            out_of_fds = true;
                        }
                        match reserve.take() {
                            Some(spare) => {
                                drop(spare);
                                // accept(2) fails on a full table even with nothing
                                // pending, so this may wait for a later connection:
                                // only refuse it if the table is still full.
                                if let Ok(stream) = listener.accept().await {
                                    reserve = std::fs::File::open("/dev/null").ok();
                                    if reserve.is_some() {
                                        ShardCounters::add(&core.stats.accepted_total, 1);
                                        match gate.enter() {
                                            Ok(pass) => {
                                                glommio::spawn_local(conn::serve(ctx.clone(), stream, pass)).detach();
                                            }
                                            Err(_) => return,
                                        }
                                        continue;
                                    }
                                    ShardCounters::add(&core.stats.accepts_refused, 1);
                                    conn::refuse(stream).await;
                                }
                                reserve = std::fs::File::open("/dev/null").ok();
                            }
                            None => {
                                sleep(ACCEPT_BACKOFF).await;
                                reserve = std::fs::File::open("/dev/null").ok();
                            }
                        }
                        if reserve.is_none() {
                            // Someone else took the freed descriptor: wait rather than spin.
                            sleep(ACCEPT_BACKOFF).await;
                        }
                    }
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) => {}
                    _ => {
                        tracing::warn!(shard = core.index, error = %e, "accept failed");
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
}
