//! The WebSocket protocol as a `gateway-core` handler (one per shard).
//!
//! Everything here runs on a shard thread and never blocks it: the token is
//! checked locally (signature, expiry, the local revoked set), client
//! messages go to the bus producer through a bounded channel (`try_send`;
//! a full channel is answered with an error, not a wait), and presence and
//! `mark-read` go to the tokio side as [`BridgeEvent`]s.

use std::future::Future;
use std::sync::Arc;

use gateway_core::{Accept, ConnId, ConnInfo, Handler, HandshakeRequest, Reject, Reply, TextFrame};
use gochat_infra::auth::{RevokedSet, TokenKeys, tag_of, verify_access};
use gochat_infra::error::ErrorCode;
use gochat_infra::now_ms;
use gochat_proto::common::PresenceEntry;
use gochat_proto::events::UpstreamMessage;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, oneshot};

use crate::frames::{self, ClientFrame};

/// Work a shard hands to the tokio side.
#[derive(Debug)]
pub enum BridgeEvent {
    /// A connection is up; `reply` says whether presence took it.
    Opened {
        conn: ConnId,
        entry: PresenceEntry,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Closed {
        conn: ConnId,
        entry: PresenceEntry,
    },
    MarkRead {
        conn: ConnId,
        user_id: i64,
        is_guest: bool,
        conversation_id: String,
        seq_id: i64,
    },
}

/// A client message on its way to the bus, with the connection to tell if it fails.
#[derive(Debug)]
pub struct Outgoing {
    pub conn: ConnId,
    pub message: UpstreamMessage,
}

/// State shared by every shard's handler.
pub struct WsShared {
    pub keys: TokenKeys,
    pub revoked: RevokedSet,
    pub gateway_id: String,
    pub events: mpsc::UnboundedSender<BridgeEvent>,
    pub upstream: mpsc::Sender<Outgoing>,
    pub heartbeat_secs: u64,
    pub max_content: usize,
    /// Read when a connection opens: `ws.rate_per_sec` / `ws.burst` changes apply to new connections.
    pub config: gochat_infra::config::LiveConfig,
}

impl WsShared {
    /// The per-connection message quota from the current configuration.
    fn quota(&self) -> Quota {
        let c = self.config.get();
        let per_sec = std::num::NonZeroU32::new(c.ws.rate_per_sec).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(c.ws.burst).unwrap_or(per_sec);
        Quota::per_second(per_sec).allow_burst(burst)
    }
}

/// The string form of a connection id: unique across gateways.
pub fn conn_id_string(gateway_id: &str, conn: ConnId) -> String {
    format!("{gateway_id}:{conn}")
}

/// The engine connection id in a string from [`conn_id_string`], if it belongs to this gateway.
pub fn parse_conn_id(gateway_id: &str, s: &str) -> Option<ConnId> {
    let (gw, n) = s.rsplit_once(':')?;
    if gw != gateway_id {
        return None;
    }
    n.parse().ok()
}

/// Per-connection state.
pub struct Session {
    user_id: i64,
    is_guest: bool,
    limiter: DefaultDirectRateLimiter,
}

/// The handler of one shard.
pub struct WsHandler {
    shared: Arc<WsShared>,
}

impl WsHandler {
    pub fn new(shared: Arc<WsShared>) -> Self {
        Self { shared }
    }

    fn entry(&self, conn: &ConnInfo) -> PresenceEntry {
        PresenceEntry {
            user_id: conn.user_id as i64,
            conn_id: conn_id_string(&self.shared.gateway_id, conn.id),
            gateway_id: self.shared.gateway_id.clone(),
        }
    }
}

fn reject(status: u16, code: ErrorCode, message: &str) -> Reject {
    Reject { status, body: serde_json::json!({"success": false, "message": message, "code": code.as_str()}).to_string() }
}

/// The token from `?token=` or `Authorization: Bearer`.
fn token_of<'a>(req: &'a HandshakeRequest<'_>) -> Option<&'a str> {
    let from_query = req.query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))).filter(|t| !t.is_empty());
    from_query.or_else(|| {
        req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
    })
}

impl Handler for WsHandler {
    type Session = Session;

    fn on_handshake(&self, req: &HandshakeRequest<'_>) -> Result<Accept<Session>, Reject> {
        let token = token_of(req).ok_or_else(|| reject(401, ErrorCode::Unauthorized, "missing token"))?;
        let claims = verify_access(&self.shared.keys, &self.shared.revoked, token)
            .map_err(|e| reject(401, ErrorCode::Unauthorized, &format!("invalid token: {e}")))?;
        let user_id = claims.user_id().ok_or_else(|| reject(401, ErrorCode::Unauthorized, "invalid token"))?;
        Ok(Accept {
            user_id: user_id as u64,
            tag: tag_of(&claims.jti),
            session: Session { user_id, is_guest: claims.guest, limiter: RateLimiter::direct(self.shared.quota()) },
        })
    }

    fn on_open(&self, conn: ConnInfo, session: &Session) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static {
        let entry = self.entry(&conn);
        let (tx, rx) = oneshot::channel();
        let conn_str = entry.conn_id.clone();
        let sent = self.shared.events.send(BridgeEvent::Opened { conn: conn.id, entry, reply: tx }).is_ok();
        let hello = frames::connected(session.user_id, &conn_str, &self.shared.gateway_id, self.shared.heartbeat_secs);
        async move {
            if !sent {
                return Err((1001, "gateway is shutting down".to_string()));
            }
            match rx.await {
                Ok(Ok(())) => Ok(vec![hello]),
                Ok(Err(msg)) => Err((1011, msg)),
                Err(_) => Err((1001, "gateway is shutting down".to_string())),
            }
        }
    }

    fn on_text(&self, conn: ConnInfo, session: &mut Session, text: &str, reply: &dyn Reply) {
        let frame = match frames::parse(text, self.shared.max_content) {
            Ok(f) => f,
            Err(e) => {
                reply.send(frames::error_code(e.code, &e.message, e.client_msg_id.as_deref()));
                return;
            }
        };
        let rate_limited =
            |client_msg_id: Option<&str>| frames::error_code(ErrorCode::RateLimited, "too many messages; slow down", client_msg_id);
        match frame {
            ClientFrame::Ping => {
                reply.send(frames::pong());
            }
            ClientFrame::Send { conversation_id, content, message_type, client_msg_id } => {
                if session.limiter.check().is_err() {
                    reply.send(rate_limited(client_msg_id.as_deref()));
                    return;
                }
                let message = UpstreamMessage {
                    user_id: session.user_id,
                    conn_id: conn_id_string(&self.shared.gateway_id, conn.id),
                    gateway_id: self.shared.gateway_id.clone(),
                    conversation_id,
                    message_type,
                    content,
                    client_msg_id,
                    timestamp_ms: now_ms(),
                    is_guest: session.is_guest,
                };
                if let Err(e) = self.shared.upstream.try_send(Outgoing { conn: conn.id, message }) {
                    let (msg, id) = match &e {
                        mpsc::error::TrySendError::Full(o) => ("the gateway is busy; retry shortly", o.message.client_msg_id.clone()),
                        mpsc::error::TrySendError::Closed(o) => ("the gateway is shutting down", o.message.client_msg_id.clone()),
                    };
                    reply.send(frames::error_code(ErrorCode::Unavailable, msg, id.as_deref()));
                }
            }
            ClientFrame::MarkRead { conversation_id, seq_id } => {
                if session.limiter.check().is_err() {
                    reply.send(rate_limited(None));
                    return;
                }
                let ev =
                    BridgeEvent::MarkRead { conn: conn.id, user_id: session.user_id, is_guest: session.is_guest, conversation_id, seq_id };
                if self.shared.events.send(ev).is_err() {
                    reply.send(frames::error_code(ErrorCode::Unavailable, "the gateway is shutting down", None));
                }
            }
        }
    }

    fn on_binary(&self, _conn: ConnInfo, _session: &mut Session, _data: &[u8], reply: &dyn Reply) {
        reply.send(frames::error_code(ErrorCode::InvalidMessage, "binary frames are not supported; send JSON text frames", None));
    }

    fn on_close(&self, conn: ConnInfo, _session: Session) {
        let entry = self.entry(&conn);
        // If the bridge is gone the process is stopping; presence expires by itself.
        let _ = self.shared.events.send(BridgeEvent::Closed { conn: conn.id, entry });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_round_trip_only_for_their_gateway() {
        let s = conn_id_string("gw-1-ab", 77);
        assert_eq!(parse_conn_id("gw-1-ab", &s), Some(77));
        assert_eq!(parse_conn_id("gw-2", &s), None);
        assert_eq!(parse_conn_id("gw-1-ab", "garbage"), None);
    }
}
