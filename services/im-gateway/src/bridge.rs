//! The tokio side of the gateway: everything shards hand off, and
//! everything that comes back from the bus for this gateway.
//!
//! - [`run_bridge`]: presence (opened/closed, periodic refresh), the
//!   per-user connection limit, and `mark-read`.
//! - [`run_upstream`]: batches client messages into the bus producer.
//! - [`run_downstream`]: this gateway's downstream topic → frames encoded
//!   once → the engine's pusher.
//! - [`run_user_events`]: token revocations from other gateways.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gateway_core::{ConnId, Pusher};
use gochat_infra::auth::{RevokedSet, tag_of};
use gochat_infra::bus::{Bus, groups, topics};
use gochat_infra::codec;
use gochat_infra::error::{AppError, AppResult, ErrorCode};
use gochat_infra::rpc;
use gochat_infra::shutdown::Shutdown;
use gochat_infra::telemetry::Metrics;
use gochat_proto::common::PresenceEntry;
use gochat_proto::events::{DownstreamMessage, UserEvent, downstream_message::Payload, user_event};
use gochat_proto::logic::logic_server::Logic as LogicRpc;
use gochat_proto::logic::{Caller, ConnectionEvent, MarkReadRequest, PresenceRefresh};
use tokio::sync::mpsc;
use tonic::Request;

use crate::frames;
use crate::ws::{BridgeEvent, Outgoing, parse_conn_id};

/// Close code for the oldest connection when a user opens one too many.
pub const CLOSE_TOO_MANY: u16 = 4001;
const LOGIC_TIMEOUT: Duration = Duration::from_secs(5);

async fn with_timeout<T>(f: impl std::future::Future<Output = AppResult<T>>) -> AppResult<T> {
    tokio::time::timeout(LOGIC_TIMEOUT, f).await.unwrap_or_else(|_| Err(AppError::unavailable("logic did not answer in time")))
}

/// Settings of [`run_bridge`].
pub struct BridgeConfig {
    pub gateway_id: String,
    pub max_per_user: usize,
    pub refresh_every: Duration,
}

/// Logic calls the bridge keeps in flight at once.
const MAX_IN_FLIGHT: usize = 256;

/// A finished presence registration, back on the bridge loop.
struct Opened {
    conn: ConnId,
    entry: PresenceEntry,
    result: AppResult<()>,
    reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Presence and per-user bookkeeping. Registrations run concurrently (a
/// reconnect storm must not queue behind one slow call); a close that
/// arrives while its connection's registration is still in flight is held
/// until the registration finishes, so presence never keeps a closed socket.
pub async fn run_bridge(logic: Arc<dyn LogicRpc>, pusher: Pusher, mut events: mpsc::UnboundedReceiver<BridgeEvent>, cfg: BridgeConfig) {
    let mut live: HashMap<ConnId, PresenceEntry> = HashMap::new();
    let mut opening: HashSet<ConnId> = HashSet::new();
    let mut closed_while_opening: HashSet<ConnId> = HashSet::new();
    let mut per_user: HashMap<i64, VecDeque<ConnId>> = HashMap::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Opened>();
    let mut refresh = tokio::time::interval(cfg.refresh_every);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let close_presence = |entry: PresenceEntry| {
        let (logic, permits) = (logic.clone(), permits.clone());
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            if let Err(e) = with_timeout(rpc(logic.connection_closed(Request::new(ConnectionEvent { entry: Some(entry) })))).await {
                tracing::warn!(error = %e, "presence removal failed; the entry will expire");
            }
        });
    };

    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    BridgeEvent::Opened { conn, entry, reply } => {
                        opening.insert(conn);
                        let (logic, permits, done) = (logic.clone(), permits.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            let _permit = permits.acquire_owned().await;
                            let result = with_timeout(rpc(logic.connection_opened(Request::new(ConnectionEvent { entry: Some(entry.clone()) }))))
                                .await
                                .map(|_| ());
                            let _ = done.send(Opened { conn, entry, result, reply });
                        });
                    }
                    BridgeEvent::Closed { conn, entry } => {
                        if opening.contains(&conn) {
                            closed_while_opening.insert(conn);
                            continue;
                        }
                        if live.remove(&conn).is_none() {
                            continue; // never registered (its open failed)
                        }
                        forget(&mut per_user, entry.user_id, conn);
                        close_presence(entry);
                    }
                    BridgeEvent::MarkRead { conn, user_id, is_guest, conversation_id, seq_id } => {
                        let (logic, pusher, permits) = (logic.clone(), pusher.clone(), permits.clone());
                        tokio::spawn(async move {
                            let _permit = permits.acquire_owned().await;
                            let req = MarkReadRequest { caller: Some(Caller { user_id, is_guest }), conversation_id, seq_id };
                            if let Err(e) = with_timeout(rpc(logic.mark_read(Request::new(req)))).await {
                                pusher.send_to(conn, frames::error_code(e.code, &e.message, None));
                            }
                        });
                    }
                }
            }
            Some(done) = done_rx.recv() => {
                opening.remove(&done.conn);
                let closed = closed_while_opening.remove(&done.conn);
                match done.result {
                    Ok(()) if closed => close_presence(done.entry),
                    Ok(()) => {
                        let user = done.entry.user_id;
                        live.insert(done.conn, done.entry);
                        let conns = per_user.entry(user).or_default();
                        conns.push_back(done.conn);
                        while conns.len() > cfg.max_per_user {
                            if let Some(oldest) = conns.pop_front() {
                                pusher.close_conn(oldest, CLOSE_TOO_MANY, "too many connections for this user");
                            }
                        }
                        let _ = done.reply.send(Ok(()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "presence registration failed");
                        let _ = done.reply.send(Err("presence unavailable; retry".into()));
                    }
                }
            }
            _ = refresh.tick() => {
                if live.is_empty() {
                    continue;
                }
                let req = PresenceRefresh { gateway_id: cfg.gateway_id.clone(), entries: live.values().cloned().collect() };
                let logic = logic.clone();
                tokio::spawn(async move {
                    if let Err(e) = with_timeout(rpc(logic.refresh_presence(Request::new(req)))).await {
                        tracing::warn!(error = %e, "presence refresh failed");
                    }
                });
            }
        }
    }
    // The shards are gone: let the last registrations and removals finish.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

fn forget(per_user: &mut HashMap<i64, VecDeque<ConnId>>, user: i64, conn: ConnId) {
    if let Some(conns) = per_user.get_mut(&user) {
        conns.retain(|c| *c != conn);
        if conns.is_empty() {
            per_user.remove(&user);
        }
    }
}

/// Batches client messages into the producer. Ends when every shard is gone.
pub async fn run_upstream(bus: Arc<dyn Bus>, mut rx: mpsc::Receiver<Outgoing>, pusher: Pusher) {
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let records = batch
            .iter()
            .map(|o| codec::encode(topics::UPSTREAM, o.message.conversation_id.clone(), &o.message, &codec::new_trace_id()))
            .collect();
        if let Err(e) = bus.produce(records).await {
            tracing::error!(error = %e, n = batch.len(), "upstream produce failed");
            for o in &batch {
                let frame = frames::error_code(ErrorCode::Unavailable, "message not accepted; retry", o.message.client_msg_id.as_deref());
                pusher.send_to(o.conn, frame);
            }
        }
        batch.clear();
    }
}

/// Applies one downstream record to the engine.
pub fn apply_downstream(gateway_id: &str, pusher: &Pusher, m: DownstreamMessage) {
    let exclude = parse_conn_id(gateway_id, &m.exclude_conn_id);
    let users: Arc<[u64]> = m.target_user_ids.iter().map(|u| *u as u64).collect();
    match m.payload {
        Some(Payload::Message(msg)) => {
            if let Some(ack) = &m.ack
                && let Some(conn) = parse_conn_id(gateway_id, &ack.conn_id)
            {
                pusher.send_to(conn, frames::ack(ack.client_msg_id.as_deref(), ack.message_id, ack.seq_id));
            }
            if !users.is_empty() {
                pusher.deliver(users, exclude, frames::new_message(&msg));
            }
        }
        Some(Payload::OnlineStatus(s)) => pusher.deliver(users, exclude, frames::online_status(s.user_id, s.online)),
        Some(Payload::ReadReceipt(r)) => pusher.deliver(users, exclude, frames::read_receipt(&r.conversation_id, r.user_id, r.seq_id)),
        Some(Payload::Kick(k)) => {
            let tag = (!k.jti.is_empty()).then(|| tag_of(&k.jti));
            let code = u16::try_from(k.close_code).ok().filter(|c| (4000..5000).contains(c)).unwrap_or(4000);
            pusher.close_user(k.user_id as u64, tag, code, &k.reason);
        }
        Some(Payload::Error(e)) => {
            if let Some(conn) = parse_conn_id(gateway_id, &e.conn_id) {
                pusher.send_to(conn, frames::error(&e.code, &e.message, e.client_msg_id.as_deref()));
            }
        }
        None => tracing::warn!("downstream record without payload"),
    }
}

/// Consumes this gateway's downstream topic until shutdown.
pub async fn run_downstream(
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    gateway_id: String,
    pusher: Pusher,
    shutdown: Shutdown,
) -> AppResult<()> {
    let topic = topics::downstream(&gateway_id);
    let mut consumer = bus.subscribe(&groups::gateway_downstream(&gateway_id), &[topic.as_str()]).await?;
    while !shutdown.is_triggered() {
        let records = tokio::select! {
            _ = shutdown.wait() => break,
            r = consumer.poll(1024, Duration::from_millis(500)) => r?,
        };
        for r in &records {
            match codec::decode::<DownstreamMessage>(r) {
                Ok(m) => apply_downstream(&gateway_id, &pusher, m),
                Err(e) => {
                    let group = groups::gateway_downstream(&gateway_id);
                    codec::send_to_dlq(bus.as_ref(), &metrics, r, &group, &format!("undecodable DownstreamMessage: {e}")).await;
                }
            }
        }
        if !records.is_empty()
            && let Err(e) = consumer.commit(&records).await
        {
            tracing::warn!(error = %e, "downstream commit failed");
        }
    }
    Ok(())
}

/// Keeps the local revoked set fresh from `token_revoked` events.
pub async fn run_user_events(bus: Arc<dyn Bus>, gateway_id: String, revoked: RevokedSet, shutdown: Shutdown) -> AppResult<()> {
    let mut consumer = bus.subscribe(&groups::gateway_events(&gateway_id), &[topics::USER_EVENTS]).await?;
    let mut purge = tokio::time::interval(Duration::from_secs(60));
    while !shutdown.is_triggered() {
        let records = tokio::select! {
            _ = shutdown.wait() => break,
            // Tokens are accepted up to the verification leeway past `exp`; keep their revocation as long.
            _ = purge.tick() => { revoked.purge_expired(gochat_infra::now_ms() - gochat_infra::auth::LEEWAY_SECS as i64 * 1000); continue; }
            r = consumer.poll(1024, Duration::from_millis(500)) => r?,
        };
        for r in &records {
            if let Ok(UserEvent { event: Some(user_event::Event::TokenRevoked(t)), .. }) = codec::decode::<UserEvent>(r) {
                revoked.insert(&t.jti, t.expires_at_ms);
            }
        }
        if !records.is_empty()
            && let Err(e) = consumer.commit(&records).await
        {
            tracing::warn!(error = %e, "user-events commit failed");
        }
    }
    Ok(())
}

/// The gateway's `Gateway.Push` gRPC service: applies a downstream record
/// exactly as if it had come from this gateway's topic.
#[derive(Clone)]
pub struct PushService {
    gateway_id: String,
    pusher: Pusher,
}

impl PushService {
    pub fn new(gateway_id: String, pusher: Pusher) -> Self {
        Self { gateway_id, pusher }
    }
}

#[tonic::async_trait]
impl gochat_proto::gateway::gateway_server::Gateway for PushService {
    async fn push(&self, req: Request<DownstreamMessage>) -> Result<tonic::Response<gochat_proto::gateway::PushResponse>, tonic::Status> {
        let m = req.into_inner();
        if m.payload.is_none() {
            return Err(AppError::validation("payload missing").to_status());
        }
        let target_users = m.target_user_ids.len() as u32;
        apply_downstream(&self.gateway_id, &self.pusher, m);
        Ok(tonic::Response::new(gochat_proto::gateway::PushResponse { target_users }))
    }
}
