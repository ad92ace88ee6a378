//! Handlers, one per endpoint of API.md §2. Each validates what only HTTP
//! knows (path and query shapes), calls logic, and shapes the JSON.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use gochat_infra::error::AppError;
use gochat_infra::rpc;
use gochat_proto::logic as pb;
use serde::Deserialize;
use serde_json::json;
use tonic::Request;

use super::{ApiError, ApiResult, Auth, Body, HttpState, OPENAPI, Ok, PathParams, QueryParams};
use crate::dto;

pub fn api() -> Router<HttpState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/admin/shards", get(shards))
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/guest", post(guest))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/logout", post(logout))
        .route("/api/users/profile", get(profile).put(update_profile))
        .route("/api/users/search", get(search))
        .route("/api/conversations", get(list_conversations).post(create_conversation))
        .route("/api/conversations/{id}", get(get_conversation).put(update_conversation))
        .route("/api/conversations/{id}/messages", get(history).post(send_message))
        .route("/api/conversations/{id}/read", put(mark_read))
        .route("/api/conversations/{id}/members", get(list_members).post(add_members))
        .route("/api/conversations/{id}/members/{userId}", put(update_member).delete(remove_member))
        .route("/api/friends/requests", get(list_friend_requests).post(send_friend_request))
        .route("/api/friends/requests/{id}", put(handle_friend_request))
        .route("/api/friends", get(list_friends))
}

fn parse_id(what: &str, s: &str) -> ApiResult<i64> {
    s.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| ApiError(AppError::validation(format!("{what} must be a positive integer id"))))
}

fn parse_ids(what: &str, v: &[IdValue]) -> ApiResult<Vec<i64>> {
    v.iter().map(|x| parse_id(what, &x.to_string())).collect()
}

/// An id that clients may send as a string (the contract) or a number.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum IdValue {
    Str(String),
    Num(i64),
}

impl std::fmt::Display for IdValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdValue::Str(s) => f.write_str(s),
            IdValue::Num(n) => write!(f, "{n}"),
        }
    }
}

// ---- operations ---------------------------------------------------------------

async fn healthz(State(s): State<HttpState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut failing = Vec::new();
    for (name, check) in s.health.iter() {
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), check()).await.unwrap_or_else(|_| Err("timed out".into()));
        match r {
            Result::Ok(()) => {
                checks.insert(name.clone(), json!("ok"));
            }
            Err(e) => {
                checks.insert(name.clone(), json!(e));
                failing.push(format!("{name}: {e}"));
            }
        }
    }
    if failing.is_empty() {
        (StatusCode::OK, axum::Json(json!({"success": true, "status": "ok", "checks": checks}))).into_response()
    } else {
        let body = json!({"success": false, "code": "INTERNAL", "message": failing.join("; "), "status": "unavailable", "checks": checks});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (s.on_scrape)();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

/// Per-shard engine figures for `gochat shards` (counters are totals since
/// start; the command turns them into rates).
async fn shards(State(s): State<HttpState>, admin: super::Admin) -> Response {
    let _ = admin;
    let shards: Vec<serde_json::Value> = (s.shard_stats)()
        .into_iter()
        .map(|st| {
            json!({
                "shard": st.shard,
                "connections": st.connections,
                "acceptedTotal": st.accepted_total,
                "framesIn": st.frames_in,
                "framesOut": st.frames_out,
                "bytesIn": st.bytes_in,
                "bytesOut": st.bytes_out,
                "slowCloses": st.slow_closes,
                "handshakeRejects": st.handshake_rejects,
                "acceptsRefused": st.accepts_refused,
                "outboundQueueBytes": st.outbound_queue_bytes,
                "loopLagUs": st.loop_lag_us,
            })
        })
        .collect();
    let body = json!({"success": true, "message": "ok", "data": {"gatewayId": s.gateway_id, "timestampMs": gochat_infra::now_ms(), "shards": shards}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ---- auth -------------------------------------------------------------------------

#[derive(Deserialize)]
struct CredentialsBody {
    username: String,
    password: String,
}

async fn register(State(s): State<HttpState>, Body(b): Body<CredentialsBody>) -> ApiResult<Ok<serde_json::Value>> {
    let user = rpc(s.logic.register(Request::new(pb::Credentials { username: b.username, password: b.password }))).await?;
    Result::Ok(Ok(StatusCode::CREATED, "registered", json!({"user": dto::User::from(user)})))
}

fn tokens(t: pb::AuthTokens) -> serde_json::Value {
    json!({
        "accessToken": t.access_token,
        "refreshToken": t.refresh_token,
        "expiresIn": t.expires_at,
        "user": t.user.map(dto::User::from),
    })
}

async fn login(State(s): State<HttpState>, Body(b): Body<CredentialsBody>) -> ApiResult<Ok<serde_json::Value>> {
    let t = rpc(s.logic.login(Request::new(pb::Credentials { username: b.username, password: b.password }))).await?;
    Result::Ok(Ok(StatusCode::OK, "logged in", tokens(t)))
}

async fn guest(
    State(s): State<HttpState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Ok<serde_json::Value>> {
    let body = body.map_err(|_| ApiError(AppError::validation("request body is too large or unreadable")))?;
    // The body is optional; when present it must be a JSON object.
    if !body.iter().all(u8::is_ascii_whitespace) && !serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) {
        return Err(ApiError(AppError::validation("body must be empty or a JSON object")));
    }
    let t = rpc(s.logic.guest(Request::new(pb::Empty {}))).await?;
    Result::Ok(Ok(StatusCode::CREATED, "guest created", tokens(t)))
}

#[derive(Deserialize)]
struct RefreshBody {
    #[serde(rename = "refreshToken")]
    refresh_token: String,
}

async fn refresh(State(s): State<HttpState>, Body(b): Body<RefreshBody>) -> ApiResult<Ok<serde_json::Value>> {
    let t = rpc(s.logic.refresh(Request::new(pb::RefreshRequest { refresh_token: b.refresh_token }))).await?;
    Result::Ok(Ok(StatusCode::OK, "refreshed", tokens(t)))
}

async fn logout(State(s): State<HttpState>, auth: Auth) -> ApiResult<Ok<serde_json::Value>> {
    let c = &auth.claims;
    // Refuse this token here at once; other gateways learn it from the event.
    s.revoked.insert(&c.jti, c.exp * 1000);
    let refresh_exp = gochat_infra::now_ms() / 1000 + s.config.get().auth.refresh_ttl_secs as i64;
    let req = pb::LogoutRequest {
        caller: Some(auth.caller),
        jti: c.jti.clone(),
        refresh_jti: c.rjti.clone().unwrap_or_default(),
        expires_at: c.exp,
        refresh_expires_at: refresh_exp,
    };
    rpc(s.logic.logout(Request::new(req))).await?;
    Result::Ok(Ok(StatusCode::OK, "logged out", json!({})))
}

// ---- users ------------------------------------------------------------------------

async fn profile(State(s): State<HttpState>, auth: Auth) -> ApiResult<Ok<dto::User>> {
    let u = rpc(s.logic.get_profile(Request::new(auth.caller))).await?;
    Result::Ok(Ok(StatusCode::OK, "ok", dto::User::from(u)))
}

#[derive(Deserialize)]
struct ProfileBody {
    #[serde(rename = "avatarUrl")]
    avatar_url: Option<String>,
}

async fn update_profile(State(s): State<HttpState>, auth: Auth, Body(b): Body<ProfileBody>) -> ApiResult<Ok<dto::User>> {
    let u =
        rpc(s.logic.update_profile(Request::new(pb::UpdateProfileRequest { caller: Some(auth.caller), avatar_url: b.avatar_url }))).await?;
    Result::Ok(Ok(StatusCode::OK, "profile updated", dto::User::from(u)))
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    limit: Option<i32>,
}

async fn search(State(s): State<HttpState>, auth: Auth, QueryParams(q): QueryParams<SearchQuery>) -> ApiResult<Ok<serde_json::Value>> {
    let req = pb::SearchUsersRequest { caller: Some(auth.caller), query: q.q, limit: q.limit.unwrap_or(10) };
    let users = rpc(s.logic.search_users(Request::new(req))).await?.users;
    Result::Ok(Ok(StatusCode::OK, "ok", json!({"users": users.into_iter().map(dto::User::from).collect::<Vec<_>>()})))
}

// ---- conversations ---------------------------------------------------------------

#[derive(Deserialize)]
struct PageQuery {
    page: Option<i32>,
    size: Option<i32>,
    #[serde(rename = "type")]
    kind: Option<i32>,
    role: Option<i32>,
}

fn check_page(q: &PageQuery, max: i32) -> ApiResult<()> {
    if q.page.is_some_and(|p| p < 1) || q.size.is_some_and(|s| s < 1 || s > max) {
        return Err(ApiError(AppError::validation(format!("page must be >= 1 and size 1-{max}"))));
    }
    Result::Ok(())
}

async fn list_conversations(
    State(s): State<HttpState>,
    auth: Auth,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Ok<serde_json::Value>> {
    check_page(&q, 100)?;
    let req =
        pb::ListConversationsRequest { caller: Some(auth.caller), page: q.page.unwrap_or(1), size: q.size.unwrap_or(20), r#type: q.kind };
    let out = rpc(s.logic.list_conversations(Request::new(req))).await?;
    let convs: Vec<dto::Conversation> = out.conversations.into_iter().map(dto::Conversation::from).collect();
    Result::Ok(Ok(StatusCode::OK, "ok", json!({"conversations": convs, "hasMore": out.has_more})))
}

#[derive(Deserialize)]
struct CreateConversationBody {
    #[serde(rename = "type")]
    kind: i32,
    name: Option<String>,
    #[serde(default)]
    members: Vec<IdValue>,
    description: Option<String>,
    #[serde(rename = "avatarUrl")]
    avatar_url: Option<String>,
}

async fn create_conversation(
    State(s): State<HttpState>,
    auth: Auth,
    Body(b): Body<CreateConversationBody>,
) -> ApiResult<Ok<dto::Conversation>> {
    let req = pb::CreateConversationRequest {
        caller: Some(auth.caller),
        r#type: b.kind,
        name: b.name,
        members: parse_ids("members[]", &b.members)?,
        description: b.description,
        avatar_url: b.avatar_url,
    };
    let out = rpc(s.logic.create_conversation(Request::new(req))).await?;
    let conv = out.conversation.ok_or_else(|| ApiError(AppError::internal("no conversation returned")))?;
    let (status, msg) = if out.created { (StatusCode::CREATED, "conversation created") } else { (StatusCode::OK, "conversation exists") };
    Result::Ok(Ok(status, msg, dto::Conversation::from(conv)))
}

async fn get_conversation(State(s): State<HttpState>, auth: Auth, PathParams(id): PathParams<String>) -> ApiResult<Ok<dto::Conversation>> {
    let out = rpc(s.logic.get_conversation(Request::new(pb::ConversationRef { caller: Some(auth.caller), conversation_id: id }))).await?;
    let mut conv = dto::Conversation::from(out.conversation.ok_or_else(|| ApiError(AppError::internal("no conversation returned")))?);
    conv.members = Some(out.members.into_iter().map(dto::Member::from).collect());
    Result::Ok(Ok(StatusCode::OK, "ok", conv))
}

#[derive(Deserialize)]
struct UpdateConversationBody {
    name: Option<String>,
    #[serde(rename = "avatarUrl")]
    avatar_url: Option<String>,
    description: Option<String>,
}

async fn update_conversation(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
    Body(b): Body<UpdateConversationBody>,
) -> ApiResult<Ok<dto::Conversation>> {
    let req = pb::UpdateConversationRequest {
        caller: Some(auth.caller),
        conversation_id: id,
        name: b.name,
        avatar_url: b.avatar_url,
        description: b.description,
    };
    let conv = rpc(s.logic.update_conversation(Request::new(req))).await?;
    Result::Ok(Ok(StatusCode::OK, "conversation updated", dto::Conversation::from(conv)))
}

#[derive(Deserialize)]
struct HistoryQuery {
    cursor: Option<i64>,
    after: Option<i64>,
    limit: Option<i32>,
}

async fn history(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> ApiResult<Ok<serde_json::Value>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError(AppError::validation("limit must be 1-100")));
    }
    let req = pb::HistoryRequest { caller: Some(auth.caller), conversation_id: id, cursor: q.cursor, after: q.after, limit };
    let out = rpc(s.logic.get_history(Request::new(req))).await?;
    let messages: Vec<dto::Message> = out.messages.into_iter().map(dto::Message::from).collect();
    Result::Ok(Ok(StatusCode::OK, "ok", json!({"messages": messages, "nextCursor": out.next_cursor, "hasMore": out.has_more})))
}

#[derive(Deserialize)]
struct SendBody {
    #[serde(rename = "messageType", default = "text_type")]
    message_type: i32,
    content: String,
    client_msg_id: Option<String>,
}

fn text_type() -> i32 {
    1
}

async fn send_message(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
    Body(b): Body<SendBody>,
) -> ApiResult<Ok<dto::Message>> {
    let req = pb::SendMessageRequest {
        caller: Some(auth.caller),
        conversation_id: id,
        message_type: b.message_type,
        content: b.content,
        client_msg_id: b.client_msg_id,
        conn_id: None,
        gateway_id: None,
        extra: None,
    };
    // Detached: a client that disconnects mid-send must not cancel the send
    // half-way (its claim on the client_msg_id, a taken seqId).
    let logic = s.logic.clone();
    let m = tokio::spawn(async move { rpc(logic.send_message(Request::new(req))).await })
        .await
        .map_err(|_| ApiError(AppError::internal("send task failed")))??;
    Result::Ok(Ok(StatusCode::CREATED, "message sent", dto::Message::from(m)))
}

#[derive(Deserialize)]
struct ReadBody {
    #[serde(rename = "seqId")]
    seq_id: i64,
}

async fn mark_read(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
    Body(b): Body<ReadBody>,
) -> ApiResult<Ok<serde_json::Value>> {
    let out =
        rpc(s.logic.mark_read(Request::new(pb::MarkReadRequest { caller: Some(auth.caller), conversation_id: id, seq_id: b.seq_id })))
            .await?;
    Result::Ok(Ok(StatusCode::OK, "ok", json!({"unreadCount": out.unread_count, "lastReadSeqId": out.last_read_seq_id})))
}

async fn list_members(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Ok<serde_json::Value>> {
    check_page(&q, 200)?;
    let req = pb::ListMembersRequest {
        caller: Some(auth.caller),
        conversation_id: id,
        page: q.page.unwrap_or(1),
        size: q.size.unwrap_or(50),
        role: q.role,
    };
    let out = rpc(s.logic.list_members(Request::new(req))).await?;
    let members: Vec<dto::Member> = out.members.into_iter().map(dto::Member::from).collect();
    Result::Ok(Ok(StatusCode::OK, "ok", json!({"members": members, "hasMore": out.has_more})))
}

#[derive(Deserialize)]
struct MembersBody {
    members: Vec<IdValue>,
}

async fn add_members(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
    Body(b): Body<MembersBody>,
) -> ApiResult<Ok<serde_json::Value>> {
    let req = pb::AddMembersRequest { caller: Some(auth.caller), conversation_id: id, user_ids: parse_ids("members[]", &b.members)? };
    let out = rpc(s.logic.add_members(Request::new(req))).await?;
    let members: Vec<dto::Member> = out.members.into_iter().map(dto::Member::from).collect();
    Result::Ok(Ok(StatusCode::CREATED, "members added", json!({"members": members})))
}

async fn remove_member(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams((id, user)): PathParams<(String, String)>,
) -> ApiResult<Ok<serde_json::Value>> {
    let user_id = parse_id("userId", &user)?;
    rpc(s.logic.remove_member(Request::new(pb::MemberRef { caller: Some(auth.caller), conversation_id: id, user_id }))).await?;
    Result::Ok(Ok(StatusCode::OK, "member removed", json!({})))
}

#[derive(Deserialize)]
struct RoleBody {
    role: i32,
}

async fn update_member(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams((id, user)): PathParams<(String, String)>,
    Body(b): Body<RoleBody>,
) -> ApiResult<Ok<dto::Member>> {
    let user_id = parse_id("userId", &user)?;
    let req = pb::UpdateMemberRoleRequest { caller: Some(auth.caller), conversation_id: id, user_id, role: b.role };
    let m = rpc(s.logic.update_member_role(Request::new(req))).await?;
    Result::Ok(Ok(StatusCode::OK, "role updated", dto::Member::from(m)))
}

// ---- friends ----------------------------------------------------------------------

#[derive(Deserialize)]
struct FriendRequestBody {
    #[serde(rename = "targetUserId")]
    target_user_id: IdValue,
    message: Option<String>,
}

async fn send_friend_request(
    State(s): State<HttpState>,
    auth: Auth,
    Body(b): Body<FriendRequestBody>,
) -> ApiResult<Ok<dto::FriendRequest>> {
    let target = parse_id("targetUserId", &b.target_user_id.to_string())?;
    let req = pb::FriendRequestCreate { caller: Some(auth.caller), target_user_id: target, message: b.message };
    let fr = rpc(s.logic.send_friend_request(Request::new(req))).await?;
    Result::Ok(Ok(StatusCode::CREATED, "friend request sent", dto::FriendRequest::from(fr)))
}

#[derive(Deserialize)]
struct FriendRequestsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<i32>,
}

async fn list_friend_requests(
    State(s): State<HttpState>,
    auth: Auth,
    QueryParams(q): QueryParams<FriendRequestsQuery>,
) -> ApiResult<Ok<serde_json::Value>> {
    let received = match q.kind.as_deref() {
        None | Some("received") => true,
        Some("sent") => false,
        Some(_) => return Err(ApiError(AppError::validation("type must be received or sent"))),
    };
    let req = pb::ListFriendRequestsRequest { caller: Some(auth.caller), received, status: q.status };
    let out = rpc(s.logic.list_friend_requests(Request::new(req))).await?;
    let requests: Vec<dto::FriendRequest> = out.requests.into_iter().map(dto::FriendRequest::from).collect();
    Result::Ok(Ok(StatusCode::OK, "ok", json!({"requests": requests})))
}

#[derive(Deserialize)]
struct HandleBody {
    action: String,
}

async fn handle_friend_request(
    State(s): State<HttpState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
    Body(b): Body<HandleBody>,
) -> ApiResult<Ok<dto::FriendRequest>> {
    let request_id = parse_id("id", &id)?;
    let accept = match b.action.as_str() {
        "accept" => true,
        "reject" => false,
        _ => return Err(ApiError(AppError::validation("action must be accept or reject"))),
    };
    let req = pb::HandleFriendRequestRequest { caller: Some(auth.caller), request_id, accept };
    let fr = rpc(s.logic.handle_friend_request(Request::new(req))).await?;
    Result::Ok(Ok(StatusCode::OK, if accept { "friend request accepted" } else { "friend request rejected" }, dto::FriendRequest::from(fr)))
}

async fn list_friends(State(s): State<HttpState>, auth: Auth) -> ApiResult<Ok<serde_json::Value>> {
    let out = rpc(s.logic.list_friends(Request::new(auth.caller))).await?;
    let friends: Vec<dto::Friend> = out.friends.into_iter().map(dto::Friend::from).collect();
    Result::Ok(Ok(StatusCode::OK, "ok", json!({"friends": friends})))
}
