//! The repo and logic services over gRPC, behind the same service traits
//! the embedded mode calls in process, so logic, task and the gateway do
//! not know which mode they run in.
//!
//! Every call to a downstream service goes through one stack per service:
//! - load balancing over the instances registered in etcd (tonic's
//!   balanced channel, fed by [`Coord::discover`](gochat_infra::coord::Coord::discover));
//! - a deadline (`grpc.deadline_ms`, also sent as `grpc-timeout` so the
//!   server gives up too);
//! - a circuit breaker (`tower-resilience-circuitbreaker`), one per
//!   downstream service, around each whole attempt (waiting for a ready
//!   instance included): it counts failures to reach the service (transport
//!   errors, timeouts), not answers the service gave (even an `UNAVAILABLE`
//!   about its own backend, which would otherwise open the circuit of every
//!   hop in front of it), and while
//!   open, calls fail at once with `UNAVAILABLE` (HTTP 503) instead of each
//!   waiting out the deadline; with no instance registered at all, calls
//!   fail at once too;
//! - retries with exponential backoff (`tower::retry`) for idempotent calls
//!   only, on `UNAVAILABLE` and `DEADLINE_EXCEEDED`.
//!
//! Errors the server returned (not found, validation, ...) pass through
//! untouched; failures of the transport become `UNAVAILABLE` naming the service.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use gochat_infra::config::GrpcConfig;
use gochat_infra::coord::Instance;
use gochat_proto::common;
use gochat_proto::logic::logic_client::LogicClient;
use gochat_proto::repo::repo_client::RepoClient;
use gochat_proto::{logic, repo};
use tokio::sync::watch;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tower::ServiceExt;
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::BoxCloneSyncService;
use tower::util::rng::HasherRng;
use tower_resilience_circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer, DefaultClassifier};

/// The balanced channel under every client.
pub type Transport = Channel;

/// One attempt of a call, as the breaker sees it: `Err` only when the
/// service itself looks unhealthy (the typed result travels separately).
struct Attempt(std::pin::Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'static>>);
type Breaker = BoxCloneSyncService<Attempt, (), CircuitBreakerError<Status>>;

/// One downstream service: its balanced, guarded channel and call policy.
#[derive(Clone)]
pub struct Downstream {
    name: &'static str,
    transport: Transport,
    breaker: Breaker,
    deadline: Duration,
    retries: u32,
    backoff: ExponentialBackoffMaker,
    /// The registered instances: with none, a call fails at once.
    instances: watch::Receiver<Vec<Instance>>,
}

impl Downstream {
    /// A client of `name` whose instances come from `instances` (kept current).
    pub fn new(name: &'static str, config: &GrpcConfig, instances: watch::Receiver<Vec<Instance>>) -> anyhow::Result<Self> {
        let (channel, changes) = Channel::balance_channel::<String>(64);
        let watched = instances.clone();
        let mut instances = instances;
        tokio::spawn(async move {
            let mut known: Vec<Instance> = Vec::new();
            loop {
                let now = instances.borrow_and_update().clone();
                for gone in known.iter().filter(|k| !now.contains(k)) {
                    if changes.send(Change::Remove(gone.id.clone())).await.is_err() {
                        return;
                    }
                }
                for new in now.iter().filter(|n| !known.contains(n)) {
                    match Endpoint::from_shared(format!("http://{}", new.addr)) {
                        Ok(e) => {
                            let e = e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true);
                            if changes.send(Change::Insert(new.id.clone(), e)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(service = name, addr = %new.addr, error = %e, "ignoring an instance with a bad address"),
                    }
                }
                tracing::info!(service = name, instances = now.len(), "instances changed");
                known = now;
                if instances.changed().await.is_err() {
                    return;
                }
            }
        });
        let deadline = Duration::from_millis(config.deadline_ms);
        let breaker: CircuitBreakerLayer<DefaultClassifier> = CircuitBreakerLayer::builder()
            .name(name)
            .failure_rate_threshold(config.breaker_failure_rate)
            .minimum_number_of_calls(config.breaker_min_calls as usize)
            .sliding_window_size(config.breaker_min_calls.max(1) as usize)
            .wait_duration_in_open(Duration::from_millis(config.breaker_open_ms))
            .build()
            .map_err(|e| anyhow::anyhow!("circuit breaker for {name}: {e}"))?;
        let breaker = BoxCloneSyncService::new(breaker.layer_fn(tower::service_fn(run_attempt)));
        let transport = channel;
        let backoff = ExponentialBackoffMaker::new(Duration::from_millis(50), Duration::from_secs(1), 0.5, HasherRng::default())
            .map_err(|e| anyhow::anyhow!("backoff for {name}: {e}"))?;
        Ok(Self { name, transport, breaker, deadline, retries: config.retries, backoff, instances: watched })
    }

    /// How many instances are registered now.
    pub fn instance_count(&self) -> usize {
        self.instances.borrow().len()
    }

    /// Runs `f` with a fresh client for each attempt.
    async fn call<M, R, F, Fut>(&self, idempotent: bool, request: Request<M>, f: F) -> Result<Response<R>, Status>
    where
        M: Clone + Send + 'static,
        R: Send + 'static,
        F: Fn(Transport, Request<M>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Response<R>, Status>> + Send + 'static,
    {
        if self.instance_count() == 0 {
            return Err(Status::unavailable(format!("{} unavailable: no instance is registered in etcd", self.name)));
        }
        let (metadata, _, message) = request.into_parts();
        let (transport, breaker, deadline, name) = (self.transport.clone(), self.breaker.clone(), self.deadline, self.name);
        let attempt = tower::service_fn(move |m: M| {
            let mut req = Request::new(m);
            *req.metadata_mut() = metadata.clone();
            req.set_timeout(deadline);
            let (t, f, breaker) = (transport.clone(), f.clone(), breaker.clone());
            async move {
                let slot = Arc::new(Mutex::new(None));
                let out = slot.clone();
                let guarded = Attempt(Box::pin(async move {
                    // The deadline covers waiting for a ready instance too.
                    let r = match tokio::time::timeout(deadline, f(t, req)).await {
                        Ok(r) => r.map_err(|s| transport_failure(name, s)),
                        Err(_) => Err(local(Status::deadline_exceeded(format!("{name} did not answer within {deadline:?}")))),
                    };
                    // Only failures to reach the service count against it: an
                    // UNAVAILABLE it answered (its own backend is down) does not.
                    let health = match &r {
                        Err(s) if s.metadata().contains_key(LOCAL_FAILURE) => Err(s.clone()),
                        _ => Ok(()),
                    };
                    *out.lock() = Some(r);
                    health
                }));
                match breaker.oneshot(guarded).await {
                    Err(CircuitBreakerError::OpenCircuit) => {
                        let mut s = Status::unavailable(format!("{name} unavailable: circuit open after repeated failures"));
                        s.metadata_mut().insert(CIRCUIT_OPEN, tonic::metadata::MetadataValue::from_static("1"));
                        Err(s)
                    }
                    Ok(()) | Err(CircuitBreakerError::Inner(_)) => {
                        slot.lock().take().unwrap_or_else(|| Err(Status::internal(format!("{name}: the call produced no result"))))
                    }
                }
            }
        });
        let retries = if idempotent { self.retries } else { 0 };
        let policy = RetryPolicy { left: retries, backoff: self.backoff.clone().make_backoff() };
        tower::retry::Retry::new(policy, attempt).oneshot(message).await
    }
}

/// Marks a status made by an open circuit: retrying it at once is pointless.
const CIRCUIT_OPEN: &str = "x-gochat-circuit-open";
/// Marks a status made on this side because the service could not be reached in time.
const LOCAL_FAILURE: &str = "x-gochat-unreachable";

fn local(mut s: Status) -> Status {
    s.metadata_mut().insert(LOCAL_FAILURE, tonic::metadata::MetadataValue::from_static("1"));
    s
}

fn run_attempt(a: Attempt) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'static>> {
    a.0
}

/// A status made on this side from a transport error (it has a source;
/// statuses sent by the server have none) becomes `UNAVAILABLE`.
fn transport_failure(name: &str, s: Status) -> Status {
    if std::error::Error::source(&s).is_some()
        && matches!(s.code(), tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable)
    {
        local(Status::unavailable(format!("{name} unavailable: {}", s.message())))
    } else {
        s
    }
}

#[derive(Clone)]
struct RetryPolicy {
    left: u32,
    backoff: ExponentialBackoff,
}

impl<M: Clone, R> tower::retry::Policy<M, Response<R>, Status> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut M, result: &mut Result<Response<R>, Status>) -> Option<Self::Future> {
        match result {
            Err(s)
                if self.left > 0
                    && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
                    && !s.metadata().contains_key(CIRCUIT_OPEN) =>
            {
                self.left -= 1;
                Some(self.backoff.next_backoff())
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &M) -> Option<M> {
        (self.left > 0).then(|| req.clone())
    }
}

/// Implements a service trait by forwarding each method to the generated
/// client; `retry` marks the idempotent ones.
macro_rules! forward {
    ($remote:ident: $trait_:path, $client:ident, $pkg:ident { $($method:ident($req:ty) -> $resp:ty: $mode:ident;)* }) => {
        #[tonic::async_trait]
        impl $trait_ for $remote {
            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.0
                        .call(forward!(@idempotent $mode), request, |t, r| async move { $client::new(t).$method(r).await })
                        .await
                }
            )*
        }
    };
    (@idempotent retry) => { true };
    (@idempotent once) => { false };
}

/// `Repo` over gRPC.
#[derive(Clone)]
pub struct RemoteRepo(pub Downstream);

/// `Logic` over gRPC.
#[derive(Clone)]
pub struct RemoteLogic(pub Downstream);

use repo::*;
forward!(RemoteRepo: repo::repo_server::Repo, RepoClient, repo {
    create_user(CreateUserRequest) -> common::User: once;
    get_users(UserIds) -> Users: retry;
    get_user_by_name(UserByNameRequest) -> common::User: retry;
    update_user(UpdateUserRequest) -> common::User: retry;
    search_users(repo::SearchUsersRequest) -> Users: retry;
    create_conversation(repo::CreateConversationRequest) -> repo::CreateConversationResponse: once;
    get_conversation(ConversationId) -> common::Conversation: retry;
    get_conversation_metas(repo::ConversationIds) -> repo::Conversations: retry;
    update_conversation(repo::UpdateConversationRequest) -> common::Conversation: retry;
    list_user_conversations(ListUserConversationsRequest) -> ConversationPage: retry;
    get_member(MemberKey) -> common::Member: retry;
    get_members(repo::MemberKeys) -> repo::Members: retry;
    get_member_id_lists(repo::ConversationIds) -> repo::MemberIdLists: retry;
    list_members(repo::ListMembersRequest) -> MemberPage: retry;
    list_member_ids(ListMemberIdsRequest) -> MemberIdPage: retry;
    add_members(repo::AddMembersRequest) -> AddMembersResponse: once;
    remove_member(MemberKey) -> RemoveMemberResponse: once;
    update_member_role(repo::UpdateMemberRoleRequest) -> common::Member: retry;
    batch_save_messages(BatchSaveMessagesRequest) -> BatchSaveMessagesResponse: retry;
    get_history(repo::HistoryRequest) -> repo::HistoryResponse: retry;
    find_message_by_client_id(ClientMsgKey) -> FindMessageResponse: retry;
    find_messages_by_client_ids(ClientMsgKeys) -> FoundMessages: retry;
    update_read_pointer(ReadPointerRequest) -> ReadPointerResponse: retry;
    create_friend_request(CreateFriendRequestRequest) -> common::FriendRequest: once;
    get_friend_request(FriendRequestId) -> common::FriendRequest: retry;
    list_friend_requests(repo::ListFriendRequestsRequest) -> FriendRequests: retry;
    set_friend_request_status(SetFriendRequestStatusRequest) -> common::FriendRequest: once;
    list_friends(UserId) -> Friends: retry;
    are_friends(UserPair) -> BoolValue: retry;
    next_seq(ConversationId) -> SeqValue: once;
    claim_idempotency(IdempotencyClaim) -> IdempotencyResult: once;
    set_idempotency(IdempotencyRecord) -> repo::Empty: retry;
    presence_online(PresenceChange) -> PresenceCount: retry;
    presence_offline(PresenceChange) -> PresenceCount: retry;
    presence_refresh(PresenceRefreshRequest) -> repo::Empty: retry;
    get_presence(UserIds) -> PresenceResponse: retry;
    revoke_token(RevokeTokenRequest) -> RevokeTokenResponse: retry;
    is_token_revoked(TokenId) -> BoolValue: retry;
    list_revoked_tokens(repo::Empty) -> RevokedTokens: retry;
});

forward!(RemoteLogic: logic::logic_server::Logic, LogicClient, logic {
    register(logic::Credentials) -> common::User: once;
    login(logic::Credentials) -> logic::AuthTokens: once;
    guest(logic::Empty) -> logic::AuthTokens: once;
    refresh(logic::RefreshRequest) -> logic::AuthTokens: once;
    logout(logic::LogoutRequest) -> logic::Empty: once;
    list_revoked_tokens(logic::Empty) -> logic::RevokedTokenList: retry;
    get_profile(logic::Caller) -> common::User: retry;
    update_profile(logic::UpdateProfileRequest) -> common::User: retry;
    search_users(logic::SearchUsersRequest) -> logic::UserList: retry;
    list_conversations(logic::ListConversationsRequest) -> logic::ConversationList: retry;
    create_conversation(logic::CreateConversationRequest) -> logic::CreateConversationResponse: once;
    get_conversation(logic::ConversationRef) -> logic::ConversationDetail: retry;
    update_conversation(logic::UpdateConversationRequest) -> common::Conversation: retry;
    get_history(logic::HistoryRequest) -> logic::HistoryResponse: retry;
    send_message(logic::SendMessageRequest) -> common::Message: once;
    mark_read(logic::MarkReadRequest) -> logic::MarkReadResponse: retry;
    list_members(logic::ListMembersRequest) -> logic::MemberList: retry;
    add_members(logic::AddMembersRequest) -> logic::MemberList: once;
    remove_member(logic::MemberRef) -> logic::Empty: once;
    update_member_role(logic::UpdateMemberRoleRequest) -> common::Member: retry;
    send_friend_request(logic::FriendRequestCreate) -> common::FriendRequest: once;
    list_friend_requests(logic::ListFriendRequestsRequest) -> logic::FriendRequestList: retry;
    handle_friend_request(logic::HandleFriendRequestRequest) -> common::FriendRequest: once;
    list_friends(logic::Caller) -> logic::FriendList: retry;
    connection_opened(logic::ConnectionEvent) -> logic::Empty: retry;
    connection_closed(logic::ConnectionEvent) -> logic::Empty: retry;
    refresh_presence(logic::PresenceRefresh) -> logic::Empty: retry;
});

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_proto::repo::repo_server::Repo;

    fn config() -> GrpcConfig {
        GrpcConfig { deadline_ms: 500, retries: 1, breaker_min_calls: 4, breaker_open_ms: 60_000, ..GrpcConfig::default() }
    }

    #[tokio::test]
    async fn with_no_instance_registered_calls_fail_at_once() {
        let (_tx, rx) = watch::channel(Vec::new());
        let repo = RemoteRepo(Downstream::new("repo", &config(), rx).expect("client"));
        let started = std::time::Instant::now();
        let e = repo.get_users(Request::new(UserIds { user_ids: vec![1] })).await.expect_err("no instance");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("no instance"), "{e}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_dead_instance_opens_the_circuit_and_calls_then_fail_fast() {
        // A port nothing listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let (_tx, rx) = watch::channel(vec![Instance { id: "r1".into(), addr: addr.to_string() }]);
        let repo = RemoteRepo(Downstream::new("repo", &config(), rx).expect("client"));
        let mut last = None;
        for _ in 0..10 {
            let e = repo.get_users(Request::new(UserIds { user_ids: vec![1] })).await.expect_err("dead");
            assert!(matches!(e.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded), "{e}");
            last = Some(e);
        }
        let e = last.expect("calls made");
        assert!(e.message().contains("circuit"), "the breaker answers by now: {e}");
        let started = std::time::Instant::now();
        let e = repo.get_users(Request::new(UserIds { user_ids: vec![1] })).await.expect_err("open");
        assert!(e.message().contains("circuit") && started.elapsed() < Duration::from_millis(50), "{e} after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn only_idempotent_calls_are_retried() {
        let mut policy = RetryPolicy {
            left: 2,
            backoff: ExponentialBackoffMaker::new(Duration::from_millis(1), Duration::from_millis(2), 0.0, HasherRng::default())
                .expect("backoff")
                .make_backoff(),
        };
        let mut unavailable: Result<Response<()>, Status> = Err(Status::unavailable("down"));
        let mut req = 1u8;
        assert!(tower::retry::Policy::retry(&mut policy, &mut req, &mut unavailable).is_some());
        let mut refused: Result<Response<()>, Status> = Err(Status::invalid_argument("bad"));
        assert!(tower::retry::Policy::retry(&mut policy, &mut req, &mut refused).is_none(), "a refusal is final");
        assert!(tower::retry::Policy::retry(&mut policy, &mut req, &mut unavailable).is_some());
        assert!(tower::retry::Policy::retry(&mut policy, &mut req, &mut unavailable).is_none(), "two retries, then the error");
    }
}
