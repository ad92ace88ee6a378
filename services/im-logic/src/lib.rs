//! im-logic: every business rule of GoChat.
//!
//! Logic owns no data: it reads and writes through the `Repo` contract and
//! talks to gateways and task through the bus. The gateway authenticates
//! clients and passes the [`Caller`](gochat_proto::logic::Caller).
//!
//! # Layout
//! - [`auth`]: register, login, guests, token refresh and logout.
//! - [`send`]: the send pipeline (membership, idempotency, `seqId`, persist
//!   record, push routing) shared by the REST call and the upstream consumer.
//! - [`conversations`]: conversations, members and roles, history, read pointers.
//! - [`friends`]: friend requests and friend lists.
//! - [`presence`]: connections reported by gateways, online status to friends.
//! - [`upstream`]: the `logic.upstream.group` consumer.
//! - [`service`]: the `Logic` gRPC service over all of the above.

#![forbid(unsafe_code)]

pub mod auth;
pub mod conversations;
pub mod friends;
pub mod presence;
pub mod send;
pub mod service;
pub mod upstream;

use std::sync::Arc;

use gochat_infra::auth::TokenKeys;
use gochat_infra::bus::Bus;
use gochat_infra::config::LiveConfig;
use gochat_infra::error::{AppError, AppResult};
use gochat_infra::ids::Snowflake;
use gochat_infra::rpc;
use gochat_infra::telemetry::Metrics;
use gochat_proto::common::{Conversation, Member, User};
use gochat_proto::logic::Caller;
use gochat_proto::repo::repo_server::Repo;
use gochat_proto::repo::{ConversationId, ConversationIds, MemberKey, UserIds};
use tonic::Request;

pub use service::LogicService;

/// Conversation types.
pub const SINGLE: i32 = 1;
pub const GROUP: i32 = 2;
pub const WORLD: i32 = 3;
/// Member roles.
pub const MEMBER: i32 = 1;
pub const ADMIN: i32 = 2;
pub const OWNER: i32 = 3;
/// The world room's id.
pub const WORLD_ID: &str = "world";

/// Everything the rules need; cheap to clone.
#[derive(Clone)]
pub struct Logic {
    pub(crate) repo: Arc<dyn Repo>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) config: LiveConfig,
    pub(crate) keys: TokenKeys,
    pub(crate) ids: Arc<Snowflake>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Logic {
    pub fn new(repo: Arc<dyn Repo>, bus: Arc<dyn Bus>, config: LiveConfig, keys: TokenKeys, metrics: Arc<Metrics>) -> Self {
        let ids = Arc::new(Snowflake::new(config.get().node_id));
        Self { repo, bus, config, keys, ids, metrics }
    }

    pub(crate) async fn user(&self, id: i64) -> AppResult<Option<User>> {
        Ok(rpc(self.repo.get_users(Request::new(UserIds { user_ids: vec![id] }))).await?.users.into_iter().next())
    }

    pub(crate) async fn users(&self, ids: Vec<i64>) -> AppResult<Vec<User>> {
        Ok(rpc(self.repo.get_users(Request::new(UserIds { user_ids: ids }))).await?.users)
    }

    /// The conversation, or `CONVERSATION_NOT_FOUND`.
    pub(crate) async fn conversation(&self, id: &str) -> AppResult<Conversation> {
        self.conversation_view(id, View::Full).await
    }

    async fn conversation_view(&self, id: &str, view: View) -> AppResult<Conversation> {
        if !valid_conversation_id(id) {
            return Err(conversation_not_found());
        }
        if let View::Meta = view {
            let ids = ConversationIds { conversation_ids: vec![id.to_string()] };
            let found = rpc(self.repo.get_conversation_metas(Request::new(ids))).await?;
            return found.conversations.into_iter().next().ok_or_else(conversation_not_found);
        }
        rpc(self.repo.get_conversation(Request::new(ConversationId { conversation_id: id.to_string() })))
            .await
            .map_err(|e| if e.code == gochat_infra::error::ErrorCode::NotFound { conversation_not_found() } else { e })
    }

    pub(crate) async fn membership(&self, conversation_id: &str, user_id: i64) -> AppResult<Option<Member>> {
        match rpc(self.repo.get_member(Request::new(MemberKey { conversation_id: conversation_id.to_string(), user_id }))).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.code == gochat_infra::error::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The conversation and the caller's membership; 404 unknown, 403 not a member.
    pub(crate) async fn member_view(&self, caller: &Caller, conversation_id: &str) -> AppResult<(Conversation, Member)> {
        self.member_view_of(caller, conversation_id, View::Full).await
    }

    /// [`Self::member_view`] without the fields each new message changes
    /// (last message, last seq): the send path's view, which stays cached
    /// while messages flow.
    pub(crate) async fn sender_view(&self, caller: &Caller, conversation_id: &str) -> AppResult<(Conversation, Member)> {
        self.member_view_of(caller, conversation_id, View::Meta).await
    }

    async fn member_view_of(&self, caller: &Caller, conversation_id: &str, view: View) -> AppResult<(Conversation, Member)> {
        let conv = self.conversation_view(conversation_id, view).await?;
        let member = self.membership(conversation_id, caller.user_id).await?.ok_or_else(not_a_member)?;
        Ok((conv, member))
    }
}

/// Conversation ids are at most 64 characters (`VARCHAR(64)`); anything else
/// cannot exist.
pub(crate) fn valid_conversation_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64
}

pub(crate) fn conversation_not_found() -> AppError {
    AppError::new(gochat_infra::error::ErrorCode::ConversationNotFound, "conversation not found")
}

pub(crate) fn not_a_member() -> AppError {
    AppError::forbidden("you are not a member of this conversation")
}

/// Which conversation fields a read needs.
#[derive(Clone, Copy)]
enum View {
    Full,
    /// Without `last_message_id`, `last_seq_id`, `updated_at_ms`.
    Meta,
}

/// The caller from a request, or a validation error.
pub(crate) fn caller(c: Option<Caller>) -> AppResult<Caller> {
    c.filter(|c| c.user_id > 0).ok_or_else(|| AppError::unauthorized("caller missing"))
}

pub(crate) fn no_guests(c: &Caller) -> AppResult<()> {
    if c.is_guest { Err(AppError::forbidden("guests cannot do this; register an account")) } else { Ok(()) }
}
