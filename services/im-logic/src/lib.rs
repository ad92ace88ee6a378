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
use gochat_proto::repo::{ConversationId, MemberKey, UserIds};
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
        if id.is_empty() || id.len() > 64 {
            return Err(AppError::new(gochat_infra::error::ErrorCode::ConversationNotFound, "conversation not found"));
        }
        rpc(self.repo.get_conversation(Request::new(ConversationId { conversation_id: id.to_string() }))).await.map_err(|e| {
            if e.code == gochat_infra::error::ErrorCode::NotFound {
                AppError::new(gochat_infra::error::ErrorCode::ConversationNotFound, "conversation not found")
            } else {
                e
            }
        })
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
        let conv = self.conversation(conversation_id).await?;
        let member = self
            .membership(conversation_id, caller.user_id)
            .await?
            .ok_or_else(|| AppError::forbidden("you are not a member of this conversation"))?;
        Ok((conv, member))
    }
}

/// The caller from a request, or a validation error.
pub(crate) fn caller(c: Option<Caller>) -> AppResult<Caller> {
    c.filter(|c| c.user_id > 0).ok_or_else(|| AppError::unauthorized("caller missing"))
}

pub(crate) fn no_guests(c: &Caller) -> AppResult<()> {
    if c.is_guest { Err(AppError::forbidden("guests cannot do this; register an account")) } else { Ok(()) }
}
