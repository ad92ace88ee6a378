//! The send pipeline (ARCHITECTURE.md §2), one implementation for both the
//! WebSocket path (upstream consumer) and `POST …/messages`, in three phases:
//!
//! 1. **prepare** (per message, in arrival order): validate size and shape;
//!    the conversation must exist and the sender must be a member and not
//!    muted; claim `msg:idem:{user}:{client_msg_id}` (a repeat gets the
//!    first send's id and seq back and nothing else happens); take the next
//!    `seqId` (atomic per conversation) and a snowflake id;
//! 2. **persist** (per batch): produce the prepared messages to
//!    `gochat.messages.persist` in one call and wait until the bus holds
//!    them durably — only then is anything acknowledged;
//! 3. **finish** (per message): record the idempotency result and push:
//!    small conversations are routed here by presence, one downstream record
//!    per gateway (the ack rides on the sender's gateway record); large
//!    groups and the world room go to `gochat.tasks.fanout`.
//!
//! The upstream consumer prepares a whole partition's batch before one
//! durable write, so a partition's throughput is not one bus-log commit per
//! message; `POST …/messages` is a batch of one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gochat_infra::bus::topics;
use gochat_infra::error::{AppError, AppResult, ErrorCode};
use gochat_infra::push::AckRoute;
use gochat_infra::{codec, now_ms, push, rpc};
use gochat_proto::common::{Conversation, Member, Message, User};
use gochat_proto::events::{AckTarget, FanoutTask, PersistMessage, downstream_message::Payload};
use gochat_proto::logic::{Caller, SendMessageRequest};
use gochat_proto::repo::{
    ClientMsgKey, ClientMsgKeys, ConversationId, ConversationIds, IdempotencyClaim, IdempotencyRecord, IdempotencyResult,
    ListMemberIdsRequest, MemberKey, MemberKeys,
};
use tonic::Request;

use crate::{Logic, WORLD};

/// Longest accepted `client_msg_id`.
pub const MAX_CLIENT_MSG_ID: usize = 64;

/// A message with its seq, not yet durable.
pub(crate) struct Draft {
    conv: Conversation,
    message: Message,
    ack: Option<AckRoute>,
    exclude_conn: String,
    trace_id: String,
    /// The conversation's members, when the batch read them.
    member_ids: Option<Arc<Vec<i64>>>,
}

/// The outcome of [`Logic::prepare`].
pub(crate) enum Prepared {
    /// New: persist it, then [`Logic::finish`] it.
    Fresh(Box<Draft>),
    /// A repeat of an earlier send: already answered (the same ack again).
    Repeat(Box<Message>),
    /// The same `client_msg_id` is being sent right now (only when not waiting).
    Pending,
}

impl Logic {
    /// Sends one message; returns it with its `seq_id`. `path` labels metrics (`ws`, `http`).
    pub async fn send_message(&self, r: SendMessageRequest, path: &str, trace_id: &str) -> AppResult<Message> {
        match self.prepare(r, trace_id, true, None).await? {
            Prepared::Repeat(m) => Ok(*m),
            Prepared::Pending => Err(in_progress()),
            Prepared::Fresh(draft) => {
                self.persist(std::slice::from_ref(&draft)).await?;
                Ok(self.finish(*draft, path).await)
            }
        }
    }

    /// Sends messages in order with one durable write for the batch; one
    /// result per request, in order.
    /// `reads`: [`Logic::batch_reads`] of these requests (or more).
    pub async fn send_batch(&self, requests: Vec<(SendMessageRequest, String)>, reads: &BatchReads, path: &str) -> Vec<AppResult<Message>> {
        let mut results: Vec<Option<AppResult<Message>>> = Vec::with_capacity(requests.len());
        let mut drafts: Vec<(usize, Box<Draft>)> = Vec::new();
        for (r, trace) in requests {
            let i = results.len();
            results.push(None);
            let mut prepared = self.prepare(r.clone(), &trace, false, Some(reads)).await;
            if matches!(prepared, Ok(Prepared::Pending)) {
                // Its twin may be one of ours: settle those first, then wait.
                self.settle(&mut drafts, &mut results, path).await;
                prepared = self.prepare(r, &trace, true, Some(reads)).await;
            }
            match prepared {
                Ok(Prepared::Fresh(d)) => drafts.push((i, d)),
                Ok(Prepared::Repeat(m)) => results[i] = Some(Ok(*m)),
                Ok(Prepared::Pending) => results[i] = Some(Err(in_progress())),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        self.settle(&mut drafts, &mut results, path).await;
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(AppError::internal("message was not processed")))).collect()
    }

    /// What every message of the batch reads, read once for the batch:
    /// stored client ids, conversations, the senders' memberships and the
    /// senders (a cold cache then costs a few queries per batch, not a few
    /// per message).
    pub async fn batch_reads(&self, requests: &[&SendMessageRequest]) -> BatchReads {
        let mut conv_ids = BTreeSet::new();
        let mut member_keys = BTreeSet::new();
        let mut user_ids = BTreeSet::new();
        for r in requests {
            let Some(user_id) = r.caller.as_ref().map(|c| c.user_id).filter(|u| *u > 0) else { continue };
            user_ids.insert(user_id);
            if crate::valid_conversation_id(&r.conversation_id) {
                conv_ids.insert(r.conversation_id.clone());
                member_keys.insert((r.conversation_id.clone(), user_id));
            }
        }
        let convs =
            rpc(self.repo.get_conversation_metas(Request::new(ConversationIds { conversation_ids: conv_ids.into_iter().collect() })));
        let keys = member_keys.into_iter().map(|(conversation_id, user_id)| MemberKey { conversation_id, user_id }).collect();
        let members = rpc(self.repo.get_members(Request::new(MemberKeys { keys })));
        let (stored, convs, members, users) =
            tokio::join!(self.stored_client_ids(requests), convs, members, self.users(user_ids.into_iter().collect()));
        let views = match (convs, members, users) {
            (Ok(c), Ok(m), Ok(u)) => {
                let convs: HashMap<String, Conversation> = c.conversations.into_iter().map(|c| (c.id.clone(), c)).collect();
                // The push reads small conversations' member lists: those too, in one call.
                let small: Vec<String> = convs.values().filter(|c| !self.is_large(c)).map(|c| c.id.clone()).collect();
                let member_ids = if small.is_empty() {
                    HashMap::new()
                } else {
                    match rpc(self.repo.get_member_id_lists(Request::new(ConversationIds { conversation_ids: small }))).await {
                        Ok(l) => l.lists.into_iter().map(|l| (l.conversation_id, Arc::new(l.user_ids))).collect(),
                        // Not needed for the checks: each push then reads its own list.
                        Err(e) => {
                            tracing::warn!(error = %e, "batched member lists failed; each push reads its own");
                            HashMap::new()
                        }
                    }
                };
                Some(Views {
                    convs,
                    members: m.members.into_iter().map(|m| ((m.conversation_id.clone(), m.user_id), m)).collect(),
                    users: u.into_iter().map(|u| (u.id, u)).collect(),
                    member_ids,
                })
            }
            (c, m, u) => {
                let e = [c.err(), m.err(), u.err()].into_iter().flatten().next();
                tracing::warn!(error = ?e, "batched reads failed; each message reads on its own");
                None
            }
        };
        BatchReads { stored, views }
    }

    /// The batch's client message ids already in the database, in one query
    /// (instead of one per message); `None` if the lookup failed, and then
    /// each claim checks the database itself.
    async fn stored_client_ids(&self, requests: &[&SendMessageRequest]) -> Option<StoredIds> {
        let keys: Vec<ClientMsgKey> = requests
            .iter()
            .filter_map(|r| {
                let cid = r.client_msg_id.as_ref().filter(|c| !c.is_empty() && c.len() <= MAX_CLIENT_MSG_ID)?;
                Some(ClientMsgKey { sender_id: r.caller.as_ref()?.user_id, client_msg_id: cid.clone() })
            })
            .collect();
        if keys.is_empty() {
            return Some(StoredIds::new());
        }
        match rpc(self.repo.find_messages_by_client_ids(Request::new(ClientMsgKeys { keys }))).await {
            Ok(found) => Some(found.messages.into_iter().filter_map(|m| Some(((m.sender_id, m.client_msg_id.clone()?), m))).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "batched client id lookup failed; checking one by one");
                None
            }
        }
    }

    /// Persists the pending drafts in one write and finishes them.
    async fn settle(&self, drafts: &mut Vec<(usize, Box<Draft>)>, results: &mut [Option<AppResult<Message>>], path: &str) {
        if drafts.is_empty() {
            return;
        }
        let batch: Vec<(usize, Box<Draft>)> = std::mem::take(drafts);
        let only: Vec<&Draft> = batch.iter().map(|(_, d)| d.as_ref()).collect();
        match self.persist_refs(&only).await {
            Ok(()) => {
                for (i, d) in batch {
                    results[i] = Some(Ok(self.finish(*d, path).await));
                }
            }
            Err(e) => {
                for (i, _) in batch {
                    results[i] = Some(Err(e.clone()));
                }
            }
        }
    }

    /// Phase 1: checks and a seq, or the earlier result of a repeat.
    pub(crate) async fn prepare(
        &self,
        r: SendMessageRequest,
        trace_id: &str,
        wait_pending: bool,
        batch: Option<&BatchReads>,
    ) -> AppResult<Prepared> {
        let stored = batch.and_then(|b| b.stored.as_ref());
        let views = batch.and_then(|b| b.views.as_ref());
        let caller = crate::caller(r.caller)?;
        if !(1..=3).contains(&r.message_type) {
            return Err(AppError::validation("messageType must be 1 (text), 2 (image) or 3 (file)"));
        }
        if r.content.trim().is_empty() {
            return Err(AppError::validation("content must not be empty"));
        }
        if r.content.len() > self.config.get().chat.max_content_bytes {
            return Err(AppError::new(
                ErrorCode::MessageTooLarge,
                format!("content is {} bytes; the limit is {}", r.content.len(), self.config.get().chat.max_content_bytes),
            ));
        }
        let client_msg_id = r.client_msg_id.filter(|s| !s.is_empty());
        if client_msg_id.as_ref().is_some_and(|id| id.len() > MAX_CLIENT_MSG_ID) {
            return Err(AppError::validation(format!("client_msg_id must be at most {MAX_CLIENT_MSG_ID} characters")));
        }
        let (conv, member) = match views {
            Some(v) => v.sender_view(&caller, &r.conversation_id)?,
            None => self.sender_view(&caller, &r.conversation_id).await?,
        };
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
        let sender = match views {
            Some(v) => v.users.get(&caller.user_id).cloned(),
            None => self.user(caller.user_id).await?,
        }
        .map(|u| User { password_hash: String::new(), ..u });

        if let Some(cid) = &client_msg_id {
            let first = match self.claim(caller.user_id, cid, wait_pending, stored.is_some()).await? {
                Claim::Mine => match stored.and_then(|s| s.get(&(caller.user_id, cid.clone()))) {
                    // New to the KV store, but stored long ago: a repeat after all.
                    Some(m) => {
                        let rec = IdempotencyRecord {
                            user_id: caller.user_id,
                            client_msg_id: cid.clone(),
                            message_id: m.id,
                            seq_id: m.seq_id,
                            ttl_ms: self.idempotency_ttl_ms(),
                            release: false,
                            conversation_id: m.conversation_id.clone(),
                        };
                        rpc(self.repo.set_idempotency(Request::new(rec))).await?;
                        Some(IdempotencyResult {
                            claimed: false,
                            message_id: m.id,
                            seq_id: m.seq_id,
                            pending: false,
                            conversation_id: m.conversation_id.clone(),
                        })
                    }
                    None => None,
                },
                Claim::Pending => return Ok(Prepared::Pending),
                Claim::Earlier(first) => Some(first),
            };
            if let Some(first) = first {
                if first.conversation_id != conv.id {
                    return Err(AppError::validation("client_msg_id was already used for a message in another conversation"));
                }
                // A repeat: the same ack again, nothing stored or delivered twice.
                self.metrics.messages_sent.with_label_values(&["duplicate"]).inc();
                if let Some(ack) = ack_route(first.message_id, first.seq_id) {
                    let payload = Payload::Message(Message { id: first.message_id, seq_id: first.seq_id, ..Default::default() });
                    push::push(self.bus.as_ref(), &conv.id, trace_id, &[], &payload, "", Some(&ack)).await?;
                }
                // The stored message once it is in the database; until then, its id and seq with this request's fields.
                let key = ClientMsgKey { sender_id: caller.user_id, client_msg_id: cid.clone() };
                let stored =
                    rpc(self.repo.find_message_by_client_id(Request::new(key))).await?.message.filter(|m| m.id == first.message_id);
                return Ok(Prepared::Repeat(Box::new(stored.unwrap_or(Message {
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
                }))));
            }
        }

        let seq_id = match rpc(self.repo.next_seq(Request::new(ConversationId { conversation_id: conv.id.clone() }))).await {
            Ok(s) => s.seq_id,
            Err(e) => {
                self.release(caller.user_id, client_msg_id.as_deref()).await;
                return Err(e);
            }
        };
        let id = self.ids.next_id();
        let ack = ack_route(id, seq_id);
        let message = Message {
            id,
            conversation_id: conv.id.clone(),
            sender_id: caller.user_id,
            message_type: r.message_type,
            content: r.content,
            seq_id,
            client_msg_id,
            deleted: false,
            extra: r.extra,
            created_at_ms: now_ms(),
            sender,
        };
        let member_ids = views.and_then(|v| v.member_ids.get(&conv.id).cloned());
        Ok(Prepared::Fresh(Box::new(Draft {
            conv,
            message,
            ack,
            exclude_conn: r.conn_id.unwrap_or_default(),
            trace_id: trace_id.to_string(),
            member_ids,
        })))
    }

    /// Phase 2 for a batch of one.
    async fn persist(&self, drafts: &[Box<Draft>]) -> AppResult<()> {
        let refs: Vec<&Draft> = drafts.iter().map(|d| d.as_ref()).collect();
        self.persist_refs(&refs).await
    }

    /// Phase 2: one durable write for the batch. On failure the claims are
    /// released so the client can retry with the same `client_msg_id`.
    async fn persist_refs(&self, drafts: &[&Draft]) -> AppResult<()> {
        let records = drafts
            .iter()
            .map(|d| codec::encode(topics::PERSIST, d.conv.id.clone(), &PersistMessage { message: Some(d.message.clone()) }, &d.trace_id))
            .collect();
        if let Err(e) = self.bus.produce(records).await {
            for d in drafts {
                self.release(d.message.sender_id, d.message.client_msg_id.as_deref()).await;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Phase 3: the message is durable; remember it and push it. Never
    /// fails: a message that is stored is sent, and what cannot be pushed is
    /// fetched by clients with `?after=`.
    async fn finish(&self, d: Draft, path: &str) -> Message {
        let Draft { conv, message, ack, exclude_conn, trace_id, member_ids } = d;
        if let Some(cid) = &message.client_msg_id {
            let rec = IdempotencyRecord {
                user_id: message.sender_id,
                client_msg_id: cid.clone(),
                message_id: message.id,
                seq_id: message.seq_id,
                ttl_ms: self.idempotency_ttl_ms(),
                release: false,
                conversation_id: conv.id.clone(),
            };
            if let Err(e) = rpc(self.repo.set_idempotency(Request::new(rec))).await {
                // The claim expires on its own; a repeat is then found in the database.
                tracing::warn!(error = %e, "idempotency record not updated");
            }
        }
        self.metrics.messages_sent.with_label_values(&[path]).inc();
        let payload = Payload::Message(message.clone());
        let large = self.is_large(&conv);
        let pushed: AppResult<()> = async {
            if large {
                let task = FanoutTask { message: Some(message.clone()), exclude_user_ids: vec![], exclude_conn_id: exclude_conn.clone() };
                self.bus.produce(vec![codec::encode(topics::FANOUT, conv.id.clone(), &task, &trace_id)]).await?;
                if let Some(ack) = &ack {
                    push::push(self.bus.as_ref(), &conv.id, &trace_id, &[], &payload, &exclude_conn, Some(ack)).await?;
                }
            } else {
                let members = match member_ids {
                    Some(ids) => ids,
                    None => Arc::new(self.all_member_ids(&conv.id).await?),
                };
                let presence = self.presence_of(&members).await?;
                push::push(self.bus.as_ref(), &conv.id, &trace_id, &presence, &payload, &exclude_conn, ack.as_ref()).await?;
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
                if let Err(e) = push::push(self.bus.as_ref(), &conv.id, &trace_id, &[], &bare, "", Some(ack)).await {
                    tracing::warn!(error = %e, "ack not delivered; the client's retry with the same client_msg_id gets it");
                }
            }
        }
        message
    }

    fn idempotency_ttl_ms(&self) -> i64 {
        (self.config.get().chat.idempotency_ttl_secs * 1000) as i64
    }

    async fn release(&self, user_id: i64, client_msg_id: Option<&str>) {
        let Some(cid) = client_msg_id else { return };
        let rec = IdempotencyRecord { user_id, client_msg_id: cid.to_string(), release: true, ..Default::default() };
        if let Err(e) = rpc(self.repo.set_idempotency(Request::new(rec))).await {
            tracing::warn!(error = %e, "idempotency claim not released; it expires on its own");
        }
    }

    /// Claims the client message id for this send.
    async fn claim(&self, user_id: i64, client_msg_id: &str, wait_pending: bool, store_checked: bool) -> AppResult<Claim> {
        let ttl_ms = self.idempotency_ttl_ms();
        // A concurrent send of the same id is in flight: wait (briefly) for it to finish.
        for _ in 0..100 {
            let claim = IdempotencyClaim { user_id, client_msg_id: client_msg_id.to_string(), ttl_ms, store_checked };
            let r = rpc(self.repo.claim_idempotency(Request::new(claim))).await?;
            if r.claimed {
                return Ok(Claim::Mine);
            }
            if !r.pending {
                return Ok(Claim::Earlier(r));
            }
            if !wait_pending {
                return Ok(Claim::Pending);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(in_progress())
    }

    /// The world room and groups over `chat.large_group_threshold` members:
    /// pushed by im-task's fan-out, not inline.
    pub(crate) fn is_large(&self, conv: &Conversation) -> bool {
        conv.r#type == WORLD || conv.member_count as u64 > self.config.get().chat.large_group_threshold
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

/// Messages already stored, by (sender, client_msg_id).
type StoredIds = HashMap<(i64, String), Message>;

/// Reads shared by a batch of sends ([`Logic::batch_reads`]).
pub struct BatchReads {
    /// Client ids already stored; `None` when the lookup failed (each claim
    /// then checks the database itself).
    stored: Option<StoredIds>,
    /// `None` when a batched read failed: each message reads on its own.
    views: Option<Views>,
}

/// Conversations (without the fields new messages change), the senders'
/// memberships and the senders, as found; what is absent does not exist.
struct Views {
    convs: HashMap<String, Conversation>,
    members: HashMap<(String, i64), Member>,
    users: HashMap<i64, User>,
    /// Whole member-id lists of the small conversations.
    member_ids: HashMap<String, Arc<Vec<i64>>>,
}

impl Views {
    /// [`Logic::sender_view`] from the batch's reads, with the same errors.
    fn sender_view(&self, caller: &Caller, conversation_id: &str) -> AppResult<(Conversation, Member)> {
        let conv = self.convs.get(conversation_id).cloned().ok_or_else(crate::conversation_not_found)?;
        let member = self.members.get(&(conversation_id.to_string(), caller.user_id)).cloned().ok_or_else(crate::not_a_member)?;
        Ok((conv, member))
    }
}

enum Claim {
    Mine,
    Pending,
    Earlier(IdempotencyResult),
}

/// Not retryable on purpose: the client retries the send itself.
fn in_progress() -> AppError {
    AppError::new(ErrorCode::RateLimited, "an earlier send with this client_msg_id is still in progress; retry shortly")
}
