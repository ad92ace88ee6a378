//! Starting and stopping the shards, and the thread-safe [`Pusher`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use glommio::{LocalExecutorBuilder, Placement};

use crate::codec::{self, OP_TEXT};
use crate::shard::{self, Command};
use crate::stats::{ShardCounters, ShardStats};
use crate::{ConnId, EngineConfig, EngineError, Handler, TextFrame, check_platform, shard_of};

/// Registered io_uring buffer per shard: glommio's minimum. The engine does no
/// file I/O, so glommio's 10 MiB default would only burn RLIMIT_MEMLOCK.
pub const IO_MEMORY_PER_SHARD: usize = 64 * 1024;
/// Submission queue depth of each of a shard's 3 rings when the memlock
/// budget allows it (see [`ring_depth`]).
///
/// Why deep: every armed readiness poll (one per idle socket) sits in the
/// kernel's cancel hash of the ring, whose bucket count grows with the ring
/// size (`ilog2(cq_entries) - 5` bits, at most 8). glommio cancels and
/// re-arms a preemption timer on every reactor turn, and each cancel walks
/// one bucket: with 10k sockets and 4 buckets (depth 64) that walk
/// (`io_poll_find`) was 12–15 % of all CPU in the 10k-online chat benchmark;
/// at 1024 (64 buckets) it is ~2 % (bench/RESULTS.md).
pub const RING_DEPTH: usize = 1024;
/// Depth used when RLIMIT_MEMLOCK is small: ring memory counts against it
/// too — measured on Linux 6.18 as an unprivileged user, 6 executors start
/// within 768 KiB at depth 64, while at 128 a second one failed under 1 MiB.
pub const SMALL_RING_DEPTH: usize = 64;

/// [`RING_DEPTH`] when the process may lock at least 8 MiB (or is
/// unlimited, e.g. root), else [`SMALL_RING_DEPTH`].
pub fn ring_depth() -> usize {
    match crate::platform::memlock_limit() {
        Ok(None) => RING_DEPTH,
        Ok(Some(bytes)) if bytes >= 8 * 1024 * 1024 => RING_DEPTH,
        _ => SMALL_RING_DEPTH,
    }
}

/// Entry point: starts the shards.
pub struct Engine;

impl Engine {
    /// Checks the platform, starts one pinned glommio executor per shard, each
    /// with its own SO_REUSEPORT listener, and returns once every shard listens.
    /// `factory(shard)` builds the shard's handler on the shard's thread.
    pub fn start<H, F>(config: EngineConfig, factory: F) -> Result<EngineHandle, EngineError>
    where
        F: Fn(usize) -> H + Send + Sync + 'static,
        H: Handler,
    {
        check_platform()?;
        config.validate()?;
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = Arc::new(config);
        let factory = Arc::new(factory);
        let mut handle = EngineHandle {
            addr: config.addr,
            pusher: Pusher { shards: Arc::from(Vec::new()) },
            senders: Vec::with_capacity(config.shards),
            counters: Vec::with_capacity(config.shards),
            threads: Vec::with_capacity(config.shards),
        };
        // Shard 0 binds first so that port 0 resolves to one concrete port for all.
        let mut addr = config.addr;
        let depth = ring_depth();
        for index in 0..config.shards {
            let cpu = config.cpu_for(index, online);
            let (tx, rx) = unbounded();
            let counters = Arc::new(ShardCounters::default());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (cfg, fac, ctr) = (config.clone(), factory.clone(), counters.clone());
            let thread = std::thread::Builder::new()
                .name(format!("gw-shard-{index}"))
                .spawn(move || {
                    let ex = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                        .name(&format!("gw-shard-{index}"))
                        .io_memory(IO_MEMORY_PER_SHARD)
                        .ring_depth(depth)
                        .make();
                    let ex = match ex {
                        Ok(ex) => ex,
                        Err(e) => {
                            let msg = format!(
                                "cannot create the io_uring executor for shard {index} on cpu {cpu}: {e} \
                                 (check `ulimit -l` >= 512 KiB and that cpu {cpu} is online)"
                            );
                            let _ = ready_tx.send(Err(EngineError::Platform(msg)));
                            return;
                        }
                    };
                    ex.run(async move {
                        let handler = fac(index);
                        shard::run(index, addr, cfg, handler, ctr, rx, ready_tx).await;
                    });
                })
                .map_err(|e| EngineError::Shard { shard: index, reason: e.to_string() })?;
            handle.senders.push(tx);
            handle.counters.push(counters);
            handle.threads.push(thread);
            match ready_rx.recv() {
                Ok(Ok(bound)) => {
                    if index == 0 {
                        addr = bound;
                        handle.addr = bound;
                    }
                }
                // Dropping `handle` stops and joins the shards already running.
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(EngineError::Shard { shard: index, reason: "shard thread exited during start-up".to_owned() });
                }
            }
        }
        handle.pusher = Pusher { shards: Arc::from(handle.senders.clone()) };
        Ok(handle)
    }
}

/// Owns the running shards. Dropping it shuts them down like [`EngineHandle::shutdown`].
pub struct EngineHandle {
    addr: SocketAddr,
    pusher: Pusher,
    senders: Vec<UnboundedSender<Command>>,
    counters: Vec<Arc<ShardCounters>>,
    threads: Vec<JoinHandle<()>>,
}

impl EngineHandle {
    /// The concrete address every shard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A cloneable, thread-safe handle for pushing to connections.
    pub fn pusher(&self) -> Pusher {
        self.pusher.clone()
    }

    /// A snapshot of every shard's counters, indexed by shard.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.counters.iter().enumerate().map(|(i, c)| c.snapshot(i)).collect()
    }

    /// Stops accepting, closes every connection with 1001 after flushing what is
    /// queued, calls `on_close` for each, and joins the shard threads. Blocking:
    /// from async code call it via `spawn_blocking`; never from a handler callback.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for s in &self.senders {
            let _ = s.unbounded_send(Command::Shutdown);
        }
        for (i, t) in self.threads.drain(..).enumerate() {
            if t.join().is_err() {
                tracing::error!(shard = i, "shard thread panicked");
            }
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends frames and close requests to connections from any thread. Every
/// method only enqueues a command for the owning shard(s) and never blocks;
/// after shutdown they do nothing.
#[derive(Clone)]
pub struct Pusher {
    shards: Arc<[UnboundedSender<Command>]>,
}

impl Pusher {
    /// Writes `frame` to every connection of each user in `users`, on every
    /// shard, except connection `exclude`. All targets share the frame's bytes.
    /// The WebSocket frame is encoded here, once; every shard and socket gets the same bytes.
    pub fn deliver(&self, users: Arc<[u64]>, exclude: Option<ConnId>, frame: TextFrame) {
        let (wire, payload) = encode_text(&frame);
        for s in self.shards.iter() {
            let _ = s.unbounded_send(Command::Deliver { users: users.clone(), exclude, wire: wire.clone(), payload });
        }
    }

    /// Writes `frame` to one connection (dropped silently if it is gone).
    pub fn send_to(&self, conn: ConnId, frame: TextFrame) {
        let (wire, payload) = encode_text(&frame);
        self.to_shard_of(conn, Command::SendTo { conn, wire, payload });
    }

    /// Closes one connection with `code` after flushing what is queued for it.
    pub fn close_conn(&self, conn: ConnId, code: u16, reason: &str) {
        self.to_shard_of(conn, Command::CloseConn { conn, code, reason: reason.to_owned() });
    }

    /// Closes every connection of `user_id` (only those with this `tag` when `Some`).
    pub fn close_user(&self, user_id: u64, tag: Option<u64>, code: u16, reason: &str) {
        for s in self.shards.iter() {
            let reason = reason.to_owned();
            let _ = s.unbounded_send(Command::CloseUser { user_id, tag, code, reason });
        }
    }

    /// Changes every shard's per-connection outbound limit (`max_outbound_bytes`)
    /// while running; connections already over the new limit are closed (1013)
    /// at their next push.
    pub fn set_max_outbound_bytes(&self, bytes: usize) {
        for s in self.shards.iter() {
            let _ = s.unbounded_send(Command::SetMaxOutbound(bytes));
        }
    }

    /// Number of shards commands are routed to.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    fn to_shard_of(&self, conn: ConnId, cmd: Command) {
        if let Some(s) = self.shards.get(shard_of(conn)) {
            let _ = s.unbounded_send(cmd);
        }
    }
}

fn encode_text(frame: &TextFrame) -> (bytes::Bytes, u32) {
    (codec::encode(OP_TEXT, frame.bytes()), u32::try_from(frame.len()).unwrap_or(u32::MAX - 1))
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").field("shards", &self.shards.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Pusher>();
    }

    #[test]
    fn pusher_routes_by_conn_shard_and_ignores_unknown_shards() {
        let (tx0, mut rx0) = unbounded();
        let (tx1, mut rx1) = unbounded();
        let p = Pusher { shards: Arc::from(vec![tx0, tx1]) };
        p.send_to((1 << 48) | 5, "x".into());
        p.send_to(9 << 48, "lost".into());
        assert!(rx0.try_recv().is_err(), "shard 0 got nothing");
        assert!(matches!(rx1.try_recv(), Ok(Command::SendTo { conn, .. }) if conn == (1 << 48) | 5));
        p.deliver(Arc::from(vec![1u64]), None, "y".into());
        assert!(matches!(rx0.try_recv(), Ok(Command::Deliver { .. })));
        assert!(matches!(rx1.try_recv(), Ok(Command::Deliver { .. })));
    }
}
