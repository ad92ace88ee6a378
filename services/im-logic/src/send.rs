//! The send pipeline (ARCHITECTURE.md §2), one implementation for both the
//! WebSocket path (upstream consumer) and `POST …/messages`:
//!
//! 1. validate size and shape; the conversation must exist and the sender
//!    must be a member and not muted;
//! 2. claim `msg:idem:{user}:{client_msg_id}` — a repeat gets the first
//!    send's id and seq back and nothing else happens;
//! 3. take the next `seqId` (atomic per conversation) and a snowflake id;
//! 4. produce the message to `gochat.messages.persist` and wait until the bus
//!    holds it durably — only then is the message acknowledged;
//! 5. push: small conversations are routed here by presence, one downstream
//!    record per gateway (the ack rides on the sender's gateway record);
//!    large groups and the world room go to `gochat.tasks.fanout`.

use std::time::Duration;

use gochat_infra::bus::topics;
use gochat_infra::error::{AppError, AppResult, ErrorCode};
use gochat_infra::push::AckRoute;
use gochat_infra::{codec, now_ms, push, rpc};
use gochat_proto::common::{Message, User};
use gochat_proto::events::{AckTarget, FanoutTask, PersistMessage, downstream_message::Payload};
use gochat_proto::logic::SendMessageRequest;
use gochat_proto::repo::{ClientMsgKey, ConversationId, IdempotencyClaim, IdempotencyRecord, IdempotencyResult, ListMemberIdsRequest};
use tonic::Request;

use crate::{Logic, WORLD};

/// Longest accepted `client_msg_id`.
pub const MAX_CLIENT_MSG_ID: usize = 64;

impl Logic {
    /// Sends a message; returns it with its `seq_id`. `path` labels metrics (`ws`, `http`).
    pub async fn send_message(&self, r: SendMessageRequest, path: &str, trace_id: &str) -> AppResult<Message> {
        let caller = crate::caller(r.caller)?;
        if !(1..=3).contains(&r.message_type) {
            return Err(AppError::validation("messageType must be 1 (text), 2 (image) or 3 (file)"));
        }
        if r.content.trim().is_empty() {
            return Err(AppError::validation("content must not be empty"));
        }
        if r.content.len() > self.config.chat.max_content_bytes {
            return Err(AppError::new(
                ErrorCode::MessageTooLarge,
                format!("content is {} bytes; the limit is {}", r.content.len(), self.config.chat.max_content_bytes),
            ));
        }
        let client_msg_id = r.client_msg_id.filter(|s| !s.is_empty());
        if client_msg_id.as_ref().is_some_and(|id| id.len() > MAX_CLIENT_MSG_ID) {
            return Err(AppError::validation(format!("client_msg_id must be at most {MAX_CLIENT_MSG_ID} characters")));
        }
        let (conv, member) = self.member_view(&caller, &r.conversation_id).await?;
        if member.muted {
            return Err(AppError::forbidden("you are muted in this conversation"));
        }

        let ack_route = |message_id: i64, seq_id: i64| match (&r.conn_id, &r.gateway_id) {
            (Some(conn), Some(gw)) if !conn.is_empty() && !gw.is_empty() => Some(AckRoute {
                gateway_id: gw.clone(),
                ack: AckTarget { conn_id: conn.clone(), client_msg_id: client_msg_id.clone(), message_id, seq_id },
            }),
            _ => None,
        };
        let sender = self.user(caller.user_id).await?.map(|u| User { password_hash: String::new(), ..u });
        let idem_ttl_ms = (self.config.chat.idempotency_ttl_secs * 1000) as i64;

        if let Some(cid) = &client_msg_id
            && let Some(first) = self.claim(caller.user_id, cid, idem_ttl_ms).await?
        {
            if first.conversation_id != conv.id {
                return Err(AppError::validation("client_msg_id was already used for a message in another conversation"));
            }
            // A repeat: the same ack again, nothing stored or delivered twice.
            self.metrics.messages_sent.with_label_values(&["duplicate"]).inc();
            if let Some(ack) = ack_route(first.message_id, first.seq_id) {
                let payload = Payload::Message(Message { id: first.message_id, seq_id: first.seq_id, ..Default::default() });
                push::push(self.bus.as_ref(), &conv.id, trace_id, &[], &payload, "", Some(&ack)).await?;
            }
            // The stored message when it is already in the database; until then, its id and seq with this request's fields.
            let stored = rpc(self
                .repo
                .find_message_by_client_id(Request::new(ClientMsgKey { sender_id: caller.user_id, client_msg_id: cid.clone() })))
            .await?
            .message
            .filter(|m| m.id == first.message_id);
            return Ok(stored.unwrap_or(Message {
                id: first.message_id,
                conversation_id: conv.id,
                sender_id: caller.user_id,
                message_type: r.message_type,
                content: r.content,
                seq_id: first.seq_id,
                client_msg_id,
                created_at_ms: now_ms(),
                sender,
                ..Default::default()
            }));
        }

        let conv_id = conv.id.clone();
        let result = self
            .persist_and_push(
                &conv,
                caller.user_id,
                r.message_type,
                r.content,
                client_msg_id.clone(),
                r.extra,
                sender,
                &ack_route,
                trace_id,
                r.conn_id.as_deref().unwrap_or(""),
            )
            .await;
        if let Some(cid) = &client_msg_id {
            let (message_id, seq_id, release) = match &result {
                Ok(m) => (m.id, m.seq_id, false),
                Err(_) => (0, 0, true),
            };
            let rec = IdempotencyRecord {
                user_id: caller.user_id,
                client_msg_id: cid.clone(),
                message_id,
                seq_id,
                ttl_ms: idem_ttl_ms,
                release,
                conversation_id: conv_id.clone(),
            };
            if let Err(e) = rpc(self.repo.set_idempotency(Request::new(rec))).await {
                tracing::warn!(error = %e, "idempotency record not updated");
            }
        }
        if result.is_ok() {
            self.metrics.messages_sent.with_label_values(&[path]).inc();
        }
        result
    }

    /// The first send's result when this client message id was used before.
    async fn claim(&self, user_id: i64, client_msg_id: &str, ttl_ms: i64) -> AppResult<Option<IdempotencyResult>> {
        // A concurrent send of the same id is in flight: wait (briefly) for it to finish.
        for _ in 0..100 {
            let claim = IdempotencyClaim { user_id, client_msg_id: client_msg_id.to_string(), ttl_ms };
            let r = rpc(self.repo.claim_idempotency(Request::new(claim))).await?;
            if r.claimed {
                return Ok(None);
            }
            if !r.pending {
                return Ok(Some(r));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Not retryable on purpose: the client retries the send itself.
        Err(AppError::new(ErrorCode::RateLimited, "an earlier send with this client_msg_id is still in progress; retry shortly"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn persist_and_push(
        &self,
        conv: &gochat_proto::common::Conversation,
        sender_id: i64,
        message_type: i32,
        content: String,
        client_msg_id: Option<String>,
        extra: Option<String>,
        sender: Option<User>,
        ack_route: &(dyn Fn(i64, i64) -> Option<AckRoute> + Sync),
        trace_id: &str,
        exclude_conn: &str,
    ) -> AppResult<Message> {
        let seq_id = rpc(self.repo.next_seq(Request::new(ConversationId { conversation_id: conv.id.clone() }))).await?.seq_id;
        let message = Message {
            id: self.ids.next_id(),
            conversation_id: conv.id.clone(),
            sender_id,
            message_type,
            content,
            seq_id,
            client_msg_id,
            deleted: false,
            extra,
            created_at_ms: now_ms(),
            sender,
        };
        // Persistence first: once this returns, the message survives crashes.
        let persist = PersistMessage { message: Some(message.clone()) };
        self.bus.produce(vec![codec::encode(topics::PERSIST, conv.id.clone(), &persist, trace_id)]).await?;

        let ack = ack_route(message.id, message.seq_id);
        let payload = Payload::Message(message.clone());
        let large = conv.r#type == WORLD || conv.member_count as u64 > self.config.chat.large_group_threshold;
        let pushed: AppResult<()> = async {
            if large {
                let task =
                    FanoutTask { message: Some(message.clone()), exclude_user_ids: vec![], exclude_conn_id: exclude_conn.to_string() };
                self.bus.produce(vec![codec::encode(topics::FANOUT, conv.id.clone(), &task, trace_id)]).await?;
                if let Some(ack) = &ack {
                    push::push(self.bus.as_ref(), &conv.id, trace_id, &[], &payload, exclude_conn, Some(ack)).await?;
                }
            } else {
                let members = self.all_member_ids(&conv.id).await?;
                let presence = self.presence_of(&members).await?;
                push::push(self.bus.as_ref(), &conv.id, trace_id, &presence, &payload, exclude_conn, ack.as_ref()).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = pushed {
            // Stored but not pushed: clients catch up with `?after=`. The
            // sender must still learn that the message is safe: ack alone.
            tracing::warn!(conversation_id = %conv.id, seq_id = message.seq_id, error = %e, "push failed after persist");
            if let Some(ack) = &ack {
                let bare = Payload::Message(Message { id: message.id, seq_id: message.seq_id, ..Default::default() });
                if let Err(e) = push::push(self.bus.as_ref(), &conv.id, trace_id, &[], &bare, "", Some(ack)).await {
                    tracing::warn!(error = %e, "ack not delivered; the client's retry with the same client_msg_id gets it");
                }
            }
        }
        Ok(message)
    }

    /// Every member id of a (small) conversation.
    pub(crate) async fn all_member_ids(&self, conversation_id: &str) -> AppResult<Vec<i64>> {
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let req = ListMemberIdsRequest { conversation_id: conversation_id.to_string(), after_user_id: after, limit: 1000 };
            let page = rpc(self.repo.list_member_ids(Request::new(req))).await?;
            if let Some(last) = page.user_ids.last() {
                after = *last;
            }
            ids.extend(page.user_ids);
            if !page.has_more {
                return Ok(ids);
            }
        }
    }
}
