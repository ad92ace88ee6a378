//! The HTTP API of API.md: routing, the JSON envelope, authentication,
//! per-IP rate limiting, CORS, request metrics.
//!
//! Errors are turned into responses in exactly one place
//! ([`ApiError::into_response`]); extractor rejections (bad JSON, wrong
//! types, oversize bodies, bad query strings) all become 400
//! `VALIDATION_ERROR` in the same envelope.

mod routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use gochat_infra::auth::{Claims, RevokedSet, TokenKeys, verify_access};
use gochat_infra::config::{Config, LiveConfig};
use gochat_infra::error::{AppError, ErrorCode};
use gochat_infra::telemetry::Metrics;
use gochat_proto::logic::Caller;
use gochat_proto::logic::logic_server::Logic as LogicRpc;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// A named readiness check for `/healthz`.
pub type HealthCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Everything a handler needs.
#[derive(Clone)]
pub struct HttpState {
    pub logic: Arc<dyn LogicRpc>,
    pub keys: TokenKeys,
    pub revoked: RevokedSet,
    pub config: LiveConfig,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Vec<(String, HealthCheck)>>,
    /// Per-IP request limits (`http.rate_per_ip`, and `http.signup_rate_per_ip` for account creation).
    pub limiter: Arc<dyn HttpRateLimiter>,
    /// Refreshes engine gauges right before `/metrics` renders.
    pub on_scrape: Arc<dyn Fn() + Send + Sync>,
    /// Current per-shard figures of the WebSocket engine (empty once stopped).
    pub shard_stats: Arc<dyn Fn() -> Vec<gateway_core::ShardStats> + Send + Sync>,
    pub gateway_id: String,
}

/// Which per-IP budget a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Every API request (`http.rate_per_ip` / `http.burst_per_ip`).
    Request,
    /// Account creation, register and guest (`http.signup_rate_per_ip` / `http.signup_burst_per_ip`).
    Signup,
}

impl LimitKind {
    /// The budget's `(per second, burst)` in `config`.
    pub fn limits(self, config: &Config) -> (u32, u32) {
        match self {
            LimitKind::Request => (config.http.rate_per_ip, config.http.burst_per_ip),
            LimitKind::Signup => (config.http.signup_rate_per_ip, config.http.signup_burst_per_ip),
        }
    }

    /// A short name for keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Request => "req",
            LimitKind::Signup => "signup",
        }
    }
}

/// Per-client-IP rate limiting. The limits are read from the live
/// configuration at each check, so a change applies without a restart.
#[async_trait::async_trait]
pub trait HttpRateLimiter: Send + Sync + 'static {
    /// Takes one unit of `ip`'s `kind` budget; false when it is spent.
    async fn allow(&self, ip: IpAddr, kind: LimitKind) -> bool;
    /// Forgets idle clients (called every minute).
    fn sweep(&self) {}
}

type Keyed = DefaultKeyedRateLimiter<IpAddr>;

/// The limiter of one gateway process (governor's GCRA), used by the
/// embedded mode and as the fallback when the shared one is unreachable.
pub struct LocalRateLimiter {
    config: LiveConfig,
    /// `(rate, burst, limiter)` per kind; rebuilt when the configured pair changes.
    request: arc_swap::ArcSwap<(u32, u32, Keyed)>,
    signup: arc_swap::ArcSwap<(u32, u32, Keyed)>,
}

impl LocalRateLimiter {
    pub fn new(config: LiveConfig) -> Self {
        let c = config.get();
        let request = keyed(c.http.rate_per_ip, c.http.burst_per_ip);
        let signup = keyed(c.http.signup_rate_per_ip, c.http.signup_burst_per_ip);
        Self { config, request: arc_swap::ArcSwap::from_pointee(request), signup: arc_swap::ArcSwap::from_pointee(signup) }
    }

    /// Synchronous check (the trait's `allow` is this).
    pub fn check(&self, ip: IpAddr, kind: LimitKind) -> bool {
        let (rate, burst) = kind.limits(&self.config.get());
        let slot = match kind {
            LimitKind::Request => &self.request,
            LimitKind::Signup => &self.signup,
        };
        let mut current = slot.load();
        if current.0 != rate || current.1 != burst {
            slot.store(Arc::new(keyed(rate, burst)));
            current = slot.load();
        }
        current.2.check_key(&ip).is_ok()
    }
}

#[async_trait::async_trait]
impl HttpRateLimiter for LocalRateLimiter {
    async fn allow(&self, ip: IpAddr, kind: LimitKind) -> bool {
        self.check(ip, kind)
    }

    fn sweep(&self) {
        // Keyed limiters keep one entry per client IP ever seen: forget idle ones.
        for slot in [&self.request, &self.signup] {
            let l = slot.load();
            l.2.retain_recent();
            l.2.shrink_to_fit();
        }
    }
}

fn keyed(rate: u32, burst: u32) -> (u32, u32, Keyed) {
    let per_sec = std::num::NonZeroU32::new(rate).unwrap_or(std::num::NonZeroU32::MIN);
    let b = std::num::NonZeroU32::new(burst).unwrap_or(per_sec);
    (rate, burst, RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(b)))
}

/// The OpenAPI document served at `/api/openapi.json` (checked against the
/// router by the `openapi_matches_routes` test).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Builds the router.
pub fn router(state: HttpState) -> Router {
    let config = state.config.get();
    let cors = cors(&config);
    let limit = config.http.max_body_bytes;
    routes::api()
        .fallback(|| async { ApiError(AppError::not_found("no such endpoint")) })
        .method_not_allowed_fallback(|| async {
            let mut r = ApiError(AppError::validation("method not allowed on this endpoint")).into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(cors)
        .with_state(state)
}

fn cors(config: &Config) -> CorsLayer {
    let origins = &config.http.cors_origins;
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([http::header::AUTHORIZATION, http::header::CONTENT_TYPE]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        layer.allow_origin(AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())))
    }
}

async fn track(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.http_requests.with_label_values(&[&method, &route, resp.status().as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    resp
}

async fn rate_limit(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    // Probes and scrapers must keep working while clients are throttled.
    if matches!(req.uri().path(), "/healthz" | "/metrics" | "/admin/shards") {
        return next.run(req).await;
    }
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = ip {
        let signup = matches!(req.uri().path(), "/api/auth/register" | "/api/auth/guest");
        if !state.limiter.allow(ip, LimitKind::Request).await || (signup && !state.limiter.allow(ip, LimitKind::Signup).await) {
            return ApiError(AppError::new(ErrorCode::RateLimited, "too many requests; slow down")).into_response();
        }
    }
    next.run(req).await
}

/// An error response in the contract's envelope.
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        ApiError(e)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ApiError(AppError::from_status(&s))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"success": false, "message": self.0.message, "code": self.0.code.as_str()});
        (status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A success response: `{"success": true, "message", "data"}` with a status.
pub struct Ok<T>(pub StatusCode, pub &'static str, pub T);

impl<T: Serialize> IntoResponse for Ok<T> {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({"success": true, "message": self.1, "data": self.2}))).into_response()
    }
}

/// JSON body whose rejections become `VALIDATION_ERROR`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Result::Ok(axum::Json(v)) => Result::Ok(Body(v)),
            Err(rej) => Err(ApiError(AppError::validation(json_rejection_message(&rej)))),
        }
    }
}

fn json_rejection_message(rej: &JsonRejection) -> String {
    match rej {
        JsonRejection::MissingJsonContentType(_) => "expected Content-Type: application/json".into(),
        JsonRejection::BytesRejection(_) => "request body is too large or unreadable".into(),
        other => other.body_text(),
    }
}

/// Path parameters whose rejections (bad percent-encoding, ...) become `VALIDATION_ERROR`.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Result::Ok(axum::extract::Path(v)) => Result::Ok(PathParams(v)),
            Err(rej) => Err(ApiError(AppError::validation(rej.body_text()))),
        }
    }
}

/// Operator access to `/admin/*`: the configured admin token as a bearer
/// token, or — when none is configured — a request from a loopback address.
pub struct Admin;

impl FromRequestParts<HttpState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Self::Rejection> {
        let config = state.config.get();
        let expected = &config.http.admin_token;
        if expected.is_empty() {
            let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
            return match peer {
                Some(ip) if ip.is_loopback() => Result::Ok(Admin),
                _ => Err(ApiError(AppError::forbidden("admin endpoints answer loopback only unless http.admin_token is set"))),
            };
        }
        let given = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
        if given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), expected.as_bytes())) {
            Result::Ok(Admin)
        } else {
            Err(ApiError(AppError::unauthorized("admin token required")))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Query string whose rejections become `VALIDATION_ERROR`.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Result::Ok(axum::extract::Query(v)) => Result::Ok(QueryParams(v)),
            Err(rej) => Err(ApiError(AppError::validation(query_rejection_message(&rej)))),
        }
    }
}

fn query_rejection_message(rej: &QueryRejection) -> String {
    rej.body_text()
}

/// The authenticated caller (valid, unrevoked access token).
pub struct Auth {
    pub claims: Claims,
    pub caller: Caller,
}

impl FromRequestParts<HttpState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError(AppError::unauthorized("missing Authorization: Bearer token")))?;
        let claims = verify_access(&state.keys, &state.revoked, token).map_err(|e| ApiError(AppError::unauthorized(format!("{e}"))))?;
        let user_id = claims.user_id().ok_or_else(|| ApiError(AppError::unauthorized("invalid token")))?;
        Result::Ok(Auth { caller: Caller { user_id, is_guest: claims.guest }, claims })
    }
}
