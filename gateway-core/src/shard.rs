//! One shard: an executor-local listener, the connections it accepted, and the
//! command loop that applies [`crate::Pusher`] requests. Everything here is
//! `Rc`/`RefCell`; the only cross-thread inputs are the command channel and the
//! stats counters.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use glommio::timer::sleep;
use tungstenite::protocol::WebSocketConfig;

use crate::conn::{self, Conn, code, to_utf8};
use crate::stats::ShardCounters;
use crate::{ConnId, EngineConfig, EngineError, Handler, TextFrame};

/// A request from another thread, applied on the shard that owns the target.
#[derive(Debug)]
pub(crate) enum Command {
    Deliver { users: Arc<[u64]>, exclude: Option<ConnId>, frame: TextFrame },
    SendTo { conn: ConnId, frame: TextFrame },
    CloseConn { conn: ConnId, code: u16, reason: String },
    CloseUser { user_id: u64, tag: Option<u64>, code: u16, reason: String },
    Shutdown,
}

/// How long the accept loop sleeps when the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const CONN_SEQ_MASK: u64 = (1 << 48) - 1;

/// State shared by the tasks of one shard.
pub(crate) struct ShardCtx<H: Handler> {
    pub index: usize,
    pub handler: H,
    pub config: Arc<EngineConfig>,
    pub ws_config: WebSocketConfig,
    pub stats: Arc<ShardCounters>,
    conns: RefCell<HashMap<ConnId, Rc<Conn>>>,
    users: RefCell<HashMap<u64, Vec<Rc<Conn>>>>,
    next_seq: Cell<u64>,
    shutting_down: Cell<bool>,
}

/// Small buffers keep an idle connection cheap; tungstenite enforces the size limits.
pub(crate) fn ws_config(config: &EngineConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_outbound_bytes.saturating_add(64 * 1024))
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

impl<H: Handler> ShardCtx<H> {
    fn new(index: usize, handler: H, config: Arc<EngineConfig>, stats: Arc<ShardCounters>) -> Self {
        ShardCtx {
            index,
            handler,
            ws_config: ws_config(&config),
            config,
            stats,
            conns: RefCell::new(HashMap::new()),
            users: RefCell::new(HashMap::new()),
            next_seq: Cell::new(1),
            shutting_down: Cell::new(false),
        }
    }

    /// Ids are never reused (48-bit sequence), so a stale id cannot reach a new connection.
    pub fn next_conn_id(&self) -> ConnId {
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        ((self.index as u64) << 48) | (seq & CONN_SEQ_MASK)
    }

    pub fn register(&self, conn: &Rc<Conn>) {
        self.conns.borrow_mut().insert(conn.info.id, conn.clone());
        self.users.borrow_mut().entry(conn.info.user_id).or_default().push(conn.clone());
        ShardCounters::add(&self.stats.connections, 1);
        if self.shutting_down.get() {
            conn.request_close(code::GOING_AWAY, "going away", false);
        }
    }

    pub fn unregister(&self, conn: &Conn) {
        self.conns.borrow_mut().remove(&conn.info.id);
        let mut users = self.users.borrow_mut();
        if let Some(list) = users.get_mut(&conn.info.user_id) {
            list.retain(|c| c.info.id != conn.info.id);
            if list.is_empty() {
                users.remove(&conn.info.user_id);
            }
        }
        ShardCounters::sub(&self.stats.connections, 1);
    }

    fn apply(&self, cmd: Command) {
        match cmd {
            Command::Deliver { users, exclude, frame } => {
                // Checked once per shard; every socket then shares the same bytes.
                let Some(text) = to_utf8(&frame) else { return };
                let index = self.users.borrow();
                for user in users.iter() {
                    for c in index.get(user).into_iter().flatten() {
                        if Some(c.info.id) != exclude {
                            c.push_text(text.clone());
                        }
                    }
                }
            }
            Command::SendTo { conn, frame } => {
                if let (Some(c), Some(text)) = (self.conns.borrow().get(&conn), to_utf8(&frame)) {
                    c.push_text(text);
                }
            }
            Command::CloseConn { conn, code, reason } => {
                if let Some(c) = self.conns.borrow().get(&conn) {
                    c.request_close(code, &reason, false);
                }
            }
            Command::CloseUser { user_id, tag, code, reason } => {
                for c in self.users.borrow().get(&user_id).into_iter().flatten() {
                    if tag.is_none_or(|t| t == c.info.tag) {
                        c.request_close(code, &reason, false);
                    }
                }
            }
            Command::Shutdown => {}
        }
    }

    fn close_all(&self) {
        self.shutting_down.set(true);
        for c in self.conns.borrow().values() {
            c.request_close(code::GOING_AWAY, "going away", false);
        }
    }
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
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Bind(e.into())));
            return;
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Bind(e.into())));
            return;
        }
    };
    let ctx = Rc::new(ShardCtx::new(index, handler, config, stats));
    let gate = Gate::new();
    let acceptor = glommio::spawn_local(accept_loop(ctx.clone(), listener, gate.clone()));
    tracing::info!(shard = index, %local, "shard listening");
    let _ = ready.send(Ok(local));
    drop(ready);

    while let Some(cmd) = commands.next().await {
        if matches!(cmd, Command::Shutdown) {
            break;
        }
        ctx.apply(cmd);
    }

    acceptor.cancel().await;
    ctx.close_all();
    let _ = gate.close().await;
    tracing::info!(shard = index, "shard stopped");
}

async fn accept_loop<H: Handler>(ctx: Rc<ShardCtx<H>>, listener: TcpListener, gate: Gate) {
    let mut out_of_fds = false;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                out_of_fds = false;
                ShardCounters::add(&ctx.stats.accepted_total, 1);
                match gate.spawn(conn::serve(ctx.clone(), stream)) {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(_) => return, // gate closed: shutting down
                }
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        // Back off instead of spinning; open connections are unaffected.
                        if !out_of_fds {
                            tracing::warn!(shard = ctx.index, error = %e, "accept: out of resources, backing off");
                            out_of_fds = true;
                        }
                        sleep(ACCEPT_BACKOFF).await;
                    }
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) => {}
                    _ => {
                        tracing::warn!(shard = ctx.index, error = %e, "accept failed");
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
}
