//! The `Logic` gRPC service: maps each call onto the rules in the other
//! modules. The same object serves in-process callers (embedded mode) and
//! the network (distributed mode).

use gochat_infra::codec;
use gochat_infra::error::{AppError, AppResult};
use gochat_infra::rpc;
use gochat_proto::common::{Conversation, FriendRequest, Member, Message, User};
use gochat_proto::logic::logic_server::Logic as LogicRpc;
use gochat_proto::logic::*;
use gochat_proto::repo::{self as r};
use tonic::{Request, Response, Status};

use crate::{Logic, caller, no_guests};

/// The gRPC face of [`Logic`].
#[derive(Clone)]
pub struct LogicService {
    logic: Logic,
}

impl LogicService {
    pub fn new(logic: Logic) -> Self {
        Self { logic }
    }
    pub fn logic(&self) -> &Logic {
        &self.logic
    }
}

type R<T> = Result<Response<T>, Status>;

fn reply<T>(r: AppResult<T>) -> R<T> {
    r.map(Response::new).map_err(|e| e.to_status())
}

impl Logic {
    pub async fn profile(&self, c: Caller) -> AppResult<User> {
        let c = caller(Some(c))?;
        self.user(c.user_id).await?.ok_or_else(|| AppError::unauthorized("user no longer exists"))
    }

    pub async fn update_profile(&self, q: UpdateProfileRequest) -> AppResult<User> {
        let c = caller(q.caller)?;
        no_guests(&c)?;
        if let Some(url) = &q.avatar_url
            && url.len() > 255
        {
            return Err(AppError::validation("avatarUrl must be at most 255 characters"));
        }
        let avatar = q.avatar_url.filter(|u| !u.is_empty());
        rpc(self.repo.update_user(Request::new(r::UpdateUserRequest { user_id: c.user_id, avatar_url: avatar }))).await
    }

    pub async fn search_users(&self, q: SearchUsersRequest) -> AppResult<UserList> {
        let c = caller(q.caller)?;
        no_guests(&c)?;
        let query = q.query.trim();
        if query.is_empty() || query.chars().count() > 32 {
            return Err(AppError::validation("q must be 1-32 characters"));
        }
        if !(0..=20).contains(&q.limit) {
            return Err(AppError::validation("limit must be 1-20"));
        }
        let limit = if q.limit == 0 { 10 } else { q.limit };
        let users = rpc(self.repo.search_users(Request::new(r::SearchUsersRequest { query: query.to_string(), limit }))).await?.users;
        Ok(UserList { users })
    }
}

#[tonic::async_trait]
impl LogicRpc for LogicService {
    async fn register(&self, req: Request<Credentials>) -> R<User> {
        reply(self.logic.register(req.into_inner()).await)
    }
    async fn login(&self, req: Request<Credentials>) -> R<AuthTokens> {
        reply(self.logic.login(req.into_inner()).await)
    }
    async fn guest(&self, _req: Request<Empty>) -> R<AuthTokens> {
        reply(self.logic.guest().await)
    }
    async fn refresh(&self, req: Request<RefreshRequest>) -> R<AuthTokens> {
        reply(self.logic.refresh(&req.into_inner().refresh_token).await)
    }
    async fn logout(&self, req: Request<LogoutRequest>) -> R<Empty> {
        reply(self.logic.logout(req.into_inner()).await.map(|_| Empty {}))
    }
    async fn list_revoked_tokens(&self, _req: Request<Empty>) -> R<RevokedTokenList> {
        let rows = rpc(self.logic.repo.list_revoked_tokens(Request::new(r::Empty {}))).await;
        reply(rows.map(|t| RevokedTokenList {
            tokens: t.tokens.into_iter().map(|t| RevokedToken { jti: t.jti, expires_at_ms: t.expires_at_ms }).collect(),
        }))
    }
    async fn get_profile(&self, req: Request<Caller>) -> R<User> {
        reply(self.logic.profile(req.into_inner()).await)
    }
    async fn update_profile(&self, req: Request<UpdateProfileRequest>) -> R<User> {
        reply(self.logic.update_profile(req.into_inner()).await)
    }
    async fn search_users(&self, req: Request<SearchUsersRequest>) -> R<UserList> {
        reply(self.logic.search_users(req.into_inner()).await)
    }
    async fn list_conversations(&self, req: Request<ListConversationsRequest>) -> R<ConversationList> {
        reply(self.logic.list_conversations(req.into_inner()).await)
    }
    async fn create_conversation(&self, req: Request<CreateConversationRequest>) -> R<CreateConversationResponse> {
        reply(self.logic.create_conversation(req.into_inner()).await)
    }
    async fn get_conversation(&self, req: Request<ConversationRef>) -> R<ConversationDetail> {
        reply(self.logic.get_conversation(req.into_inner()).await)
    }
    async fn update_conversation(&self, req: Request<UpdateConversationRequest>) -> R<Conversation> {
        reply(self.logic.update_conversation(req.into_inner()).await)
    }
    async fn get_history(&self, req: Request<HistoryRequest>) -> R<HistoryResponse> {
        reply(self.logic.history(req.into_inner()).await)
    }
    async fn send_message(&self, req: Request<SendMessageRequest>) -> R<Message> {
        let trace = req.metadata().get("trace-id").and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_else(codec::new_trace_id);
        reply(self.logic.send_message(req.into_inner(), "http", &trace).await)
    }
    async fn mark_read(&self, req: Request<MarkReadRequest>) -> R<MarkReadResponse> {
        reply(self.logic.mark_read(req.into_inner()).await)
    }
    async fn list_members(&self, req: Request<ListMembersRequest>) -> R<MemberList> {
        reply(self.logic.list_members(req.into_inner()).await)
    }
    async fn add_members(&self, req: Request<AddMembersRequest>) -> R<MemberList> {
        reply(self.logic.add_members(req.into_inner()).await)
    }
    async fn remove_member(&self, req: Request<MemberRef>) -> R<Empty> {
        reply(self.logic.remove_member(req.into_inner()).await.map(|_| Empty {}))
    }
    async fn update_member_role(&self, req: Request<UpdateMemberRoleRequest>) -> R<Member> {
        reply(self.logic.update_member_role(req.into_inner()).await)
    }
    async fn send_friend_request(&self, req: Request<FriendRequestCreate>) -> R<FriendRequest> {
        reply(self.logic.send_friend_request(req.into_inner()).await)
    }
    async fn list_friend_requests(&self, req: Request<ListFriendRequestsRequest>) -> R<FriendRequestList> {
        reply(self.logic.list_friend_requests(req.into_inner()).await)
    }
    async fn handle_friend_request(&self, req: Request<HandleFriendRequestRequest>) -> R<FriendRequest> {
        reply(self.logic.handle_friend_request(req.into_inner()).await)
    }
    async fn list_friends(&self, req: Request<Caller>) -> R<FriendList> {
        reply(self.logic.list_friends(req.into_inner()).await)
    }
    async fn connection_opened(&self, req: Request<ConnectionEvent>) -> R<Empty> {
        reply(self.logic.connection_opened(req.into_inner()).await.map(|_| Empty {}))
    }
    async fn connection_closed(&self, req: Request<ConnectionEvent>) -> R<Empty> {
        reply(self.logic.connection_closed(req.into_inner()).await.map(|_| Empty {}))
    }
    async fn refresh_presence(&self, req: Request<PresenceRefresh>) -> R<Empty> {
        reply(self.logic.refresh_presence(req.into_inner()).await.map(|_| Empty {}))
    }
}
