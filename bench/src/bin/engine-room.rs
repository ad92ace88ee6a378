//! engine-room: gateway-core serving the bench room `world` (see the crate doc).
//!
//! One handler per shard; the room's members are shared by the shards
//! ([`Room`]); a message's `new-message` frame is encoded once and fanned out
//! with [`Pusher::deliver`], which hands the same bytes to every shard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use gateway_core::{Accept, ConnInfo, Engine, EngineConfig, Handler, HandshakeRequest, Pusher, Reject, Reply, TextFrame};
use gochat_bench::auth::Keys;
use gochat_bench::protocol::{self, ClientFrame, Posted};
use gochat_bench::room::Room;

#[derive(Parser, Debug)]
#[command(about = "gateway-core serving one in-memory room, for benchmarks")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: SocketAddr,
    /// Number of shards (pinned executors).
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// File holding the HS256 secret of the access tokens.
    #[arg(long)]
    jwt_secret_file: PathBuf,
    /// Idle seconds before a WebSocket ping.
    #[arg(long, default_value_t = 30)]
    heartbeat: u64,
    /// Bytes a connection may have queued before it is closed with 1013.
    #[arg(long, default_value_t = 1 << 20)]
    max_outbound_bytes: usize,
    /// Rewrite this file every 100 ms with `connections messages deliveries rejected`.
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

struct Session {
    user_id: u64,
    name: Box<str>,
}

struct RoomHandler {
    keys: Keys,
    room: Arc<Room>,
    pusher: Arc<OnceLock<Pusher>>,
    heartbeat: u64,
}

impl Handler for RoomHandler {
    type Session = Session;

    fn on_handshake(&self, req: &HandshakeRequest<'_>) -> Result<Accept<Session>, Reject> {
        let auth = req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match self.keys.verify_request(req.query, auth) {
            Ok(user) => Ok(Accept { user_id: user.id, tag: 0, session: Session { user_id: user.id, name: user.name.into() } }),
            Err(e) => {
                self.room.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Reject { status: 401, body: format!(r#"{{"code":"UNAUTHORIZED","message":"{e}"}}"#) })
            }
        }
    }

    fn on_open(&self, conn: ConnInfo, session: &Session) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static {
        self.room.join(session.user_id);
        let hello = protocol::connected(session.user_id, conn.id, "engine-room", self.heartbeat);
        let frame = TextFrame::try_from(hello).map_err(|_| (1011, "bad frame".to_owned()));
        async move { Ok(vec![frame?]) }
    }

    fn on_text(&self, conn: ConnInfo, session: &mut Session, text: &str, reply: &dyn Reply) {
        let send = |b: bytes::Bytes| {
            if let Ok(f) = TextFrame::try_from(b) {
                reply.send(f);
            }
        };
        match protocol::parse(text) {
            Ok(ClientFrame::Ping) => send(protocol::pong()),
            Ok(ClientFrame::MarkRead) => {}
            Ok(ClientFrame::Send { conversation_id, content, message_type, client_msg_id }) => {
                if conversation_id != gochat_bench::ROOM {
                    send(protocol::error("FORBIDDEN", "not a member of this conversation", client_msg_id.as_deref()));
                    return;
                }
                let seq = self.room.post();
                let frame = protocol::new_message(&Posted {
                    id: seq,
                    seq_id: seq,
                    sender_id: session.user_id,
                    sender_name: &session.name,
                    conversation_id: gochat_bench::ROOM,
                    content: &content,
                    message_type,
                    client_msg_id: client_msg_id.as_deref(),
                });
                send(protocol::ack(client_msg_id.as_deref(), seq, seq));
                if let (Some(pusher), Ok(frame)) = (self.pusher.get(), TextFrame::try_from(frame)) {
                    pusher.deliver(self.room.members(), Some(conn.id), frame);
                }
            }
            Err(e) => send(protocol::error(e.code, e.message, e.client_msg_id.as_deref())),
        }
    }

    fn on_close(&self, _conn: ConnInfo, session: Session) {
        self.room.leave(session.user_id);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = Keys::from_file(&args.jwt_secret_file)?;
    let room = Arc::new(Room::default());
    if let Some(path) = args.stats_file.clone() {
        room.publish_counters(path);
    }
    let pusher = Arc::new(OnceLock::new());
    let config = EngineConfig {
        addr: args.addr,
        shards: args.shards,
        heartbeat: Duration::from_secs(args.heartbeat),
        max_outbound_bytes: args.max_outbound_bytes,
        ..Default::default()
    };
    let (r, p, heartbeat) = (room.clone(), pusher.clone(), args.heartbeat);
    let engine = Engine::start(config, move |_shard| RoomHandler { keys: keys.clone(), room: r.clone(), pusher: p.clone(), heartbeat })?;
    // Set before any client can have sent a message: the handshake needs the listener first.
    let _ = pusher.set(engine.pusher());
    println!("engine-room listening on {} with {} shards", engine.local_addr(), args.shards);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    engine.shutdown();
    Ok(())
}
