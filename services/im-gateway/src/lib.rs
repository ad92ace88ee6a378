//! im-gateway: the client edge of GoChat.
//!
//! The HTTP API (axum on tokio) and the WebSocket protocol (a handler on
//! `gateway-core`'s glommio shards) in one service. It authenticates
//! clients locally, turns frames into upstream records, and writes
//! downstream records to the right sockets.
//!
//! # Layout
//! - [`http`]: routes, envelope, auth extractor, rate limit, CORS, metrics.
//! - [`dto`]: the client-facing JSON objects.
//! - [`frames`]: WebSocket frame encoding (once per message) and parsing.
//! - [`ws`]: the per-shard `gateway_core::Handler`.
//! - [`bridge`]: the tokio tasks between shards, logic and the bus.

#![forbid(unsafe_code)]

pub mod bridge;
pub mod dto;
pub mod frames;
pub mod http;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::{Engine, EngineConfig, EngineHandle, ShardStats};
use gochat_infra::auth::{RevokedSet, TokenKeys};
use gochat_infra::bus::Bus;
use gochat_infra::config::LiveConfig;
use gochat_infra::shutdown::Shutdown;
use gochat_infra::telemetry::Metrics;
use gochat_proto::logic::logic_server::Logic as LogicRpc;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

pub use http::HealthCheck;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot bind the HTTP address {addr}: {source}")]
    HttpBind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Engine(#[from] gateway_core::EngineError),
    #[error("cannot load revoked tokens from logic: {0}")]
    Revocations(gochat_infra::error::AppError),
    #[error("gateway startup was interrupted")]
    Interrupted,
}

/// What the gateway needs from the process that runs it.
pub struct GatewayDeps {
    pub logic: Arc<dyn LogicRpc>,
    pub bus: Arc<dyn Bus>,
    pub config: LiveConfig,
    /// Per-IP HTTP limits; `None` = this process's own (embedded mode).
    pub rate_limiter: Option<Arc<dyn http::HttpRateLimiter>>,
    pub keys: TokenKeys,
    pub metrics: Arc<Metrics>,
    /// Unique among running gateways; names this gateway's downstream topic.
    pub gateway_id: String,
    pub health: Vec<(String, HealthCheck)>,
}

/// A running gateway.
pub struct Gateway {
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    gateway_id: String,
    engine: Arc<Mutex<Option<EngineHandle>>>,
    push: bridge::PushService,
    http: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: Shutdown,
}

impl Gateway {
    /// Binds both ports, starts the shards and the bridge tasks.
    pub async fn start(deps: GatewayDeps, shutdown: Shutdown) -> Result<Gateway, GatewayError> {
        let cfg = deps.config.get();
        let revoked = RevokedSet::default();
        let known = gochat_infra::rpc(deps.logic.list_revoked_tokens(tonic::Request::new(gochat_proto::logic::Empty {})))
            .await
            .map_err(GatewayError::Revocations)?;
        for t in known.tokens {
            revoked.insert(&t.jti, t.expires_at_ms);
        }

        let listener =
            tokio::net::TcpListener::bind(cfg.http.addr).await.map_err(|source| GatewayError::HttpBind { addr: cfg.http.addr, source })?;
        let http_addr = listener.local_addr().map_err(|source| GatewayError::HttpBind { addr: cfg.http.addr, source })?;

        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let (up_tx, up_rx) = tokio::sync::mpsc::channel(16 * 1024);
        let shared = Arc::new(ws::WsShared {
            keys: deps.keys.clone(),
            revoked: revoked.clone(),
            gateway_id: deps.gateway_id.clone(),
            events: events_tx,
            upstream: up_tx,
            heartbeat_secs: cfg.ws.heartbeat_secs,
            max_content: cfg.chat.max_content_bytes,
            config: deps.config.clone(),
        });
        let shards = if cfg.ws.shards == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.ws.shards };
        let engine_cfg = EngineConfig {
            addr: cfg.ws.addr,
            shards,
            cpu_set: (!cfg.ws.cpu_set.is_empty()).then(|| cfg.ws.cpu_set.clone()),
            max_frame_bytes: cfg.ws.max_frame_bytes,
            max_outbound_bytes: cfg.ws.max_outbound_bytes,
            heartbeat: Duration::from_secs(cfg.ws.heartbeat_secs),
            handshake_timeout: Duration::from_secs(cfg.ws.handshake_timeout_secs),
            ws_path: "/ws".into(),
        };
        let engine = tokio::task::spawn_blocking(move || Engine::start(engine_cfg, move |_shard| ws::WsHandler::new(shared.clone())))
            .await
            .map_err(|_| GatewayError::Interrupted)??;
        let ws_addr = engine.local_addr();
        let pusher = engine.pusher();
        let push = bridge::PushService::new(deps.gateway_id.clone(), pusher.clone());
        let engine = Arc::new(Mutex::new(Some(engine)));

        let mut tasks = Vec::new();
        let bridge_cfg = bridge::BridgeConfig {
            gateway_id: deps.gateway_id.clone(),
            max_per_user: cfg.ws.max_connections_per_user,
            refresh_every: Duration::from_secs(cfg.ws.heartbeat_secs),
        };
        tasks.push(tokio::spawn(bridge::run_bridge(deps.logic.clone(), pusher.clone(), events_rx, bridge_cfg)));
        tasks.push(tokio::spawn(bridge::run_upstream(deps.bus.clone(), up_rx, pusher.clone())));
        let (bus, m, gw, p, s) = (deps.bus.clone(), deps.metrics.clone(), deps.gateway_id.clone(), pusher.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = bridge::run_downstream(bus, m, gw, p, s.clone()).await {
                tracing::error!(error = %e, "downstream consumer failed; stopping");
                s.trigger();
            }
        }));
        // Live shard knob: the per-connection outbound limit follows the configuration.
        let p = pusher.clone();
        tasks.push(tokio::spawn(deps.config.on_change(
            shutdown.clone(),
            |c| c.ws.max_outbound_bytes,
            move |&bytes| {
                p.set_max_outbound_bytes(bytes);
                tracing::info!(max_outbound_bytes = bytes, "outbound limit changed");
            },
        )));
        let (bus, gw, rv, s) = (deps.bus.clone(), deps.gateway_id.clone(), revoked.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = bridge::run_user_events(bus, gw, rv, s.clone()).await {
                tracing::error!(error = %e, "user-events consumer failed; stopping");
                s.trigger();
            }
        }));

        let mut health = deps.health;
        let probe = engine.clone();
        health.push((
            "gateway".into(),
            Arc::new(move || {
                let up = probe.lock().is_some();
                Box::pin(async move { if up { Ok(()) } else { Err("websocket engine stopped".to_string()) } })
            }),
        ));
        let limiter = deps.rate_limiter.unwrap_or_else(|| Arc::new(http::LocalRateLimiter::new(deps.config.clone())));
        let (l, s) = (limiter.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => l.sweep(),
                    _ = s.wait() => break,
                }
            }
        }));
        let state = http::HttpState {
            logic: deps.logic,
            keys: deps.keys,
            revoked,
            config: deps.config.clone(),
            metrics: deps.metrics.clone(),
            health: Arc::new(health),
            limiter,
            on_scrape: scrape_hook(engine.clone(), deps.metrics),
            shard_stats: {
                let engine = engine.clone();
                Arc::new(move || engine.lock().as_ref().map(EngineHandle::stats).unwrap_or_default())
            },
            gateway_id: deps.gateway_id.clone(),
        };
        let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let s = shutdown.clone();
        let http = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { s.wait().await }).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(%http_addr, %ws_addr, gateway_id = %deps.gateway_id, shards, "gateway listening");
        Ok(Gateway { http_addr, ws_addr, gateway_id: deps.gateway_id, engine, push, http, tasks, shutdown })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// This gateway's `Gateway.Push` service (served over gRPC in the distributed mode).
    pub fn push_service(&self) -> bridge::PushService {
        self.push.clone()
    }

    /// Waits for shutdown, then stops HTTP, closes every WebSocket (1001),
    /// unregisters their presence and drains the bridge.
    pub async fn run_until_stopped(self) {
        self.shutdown.wait().await;
        let _ = self.http.await;
        let engine = self.engine.lock().take();
        if let Some(engine) = engine {
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        }
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), t).await.is_err() {
                tracing::warn!("a gateway task did not stop in time");
            }
        }
        tracing::info!("gateway stopped");
    }
}

/// Copies the engine's per-shard figures into the metrics registry.
fn scrape_hook(engine: Arc<Mutex<Option<EngineHandle>>>, metrics: Arc<Metrics>) -> Arc<dyn Fn() + Send + Sync> {
    let last: Mutex<Vec<ShardStats>> = Mutex::new(Vec::new());
    Arc::new(move || {
        let Some(stats) = engine.lock().as_ref().map(EngineHandle::stats) else { return };
        let mut last = last.lock();
        for s in &stats {
            let shard = s.shard.to_string();
            metrics.gateway_connections.with_label_values(&[&shard]).set(s.connections as i64);
            metrics.gateway_queue_bytes.with_label_values(&[&shard]).set(s.outbound_queue_bytes as i64);
            metrics.gateway_loop_lag.with_label_values(&[&shard]).set(s.loop_lag_us as f64 / 1e6);
            let prev = last.iter().find(|p| p.shard == s.shard);
            let pairs = [
                ("accepts", s.accepted_total, prev.map(|p| p.accepted_total)),
                ("accepts_refused", s.accepts_refused, prev.map(|p| p.accepts_refused)),
                ("frames_in", s.frames_in, prev.map(|p| p.frames_in)),
                ("frames_out", s.frames_out, prev.map(|p| p.frames_out)),
                ("bytes_in", s.bytes_in, prev.map(|p| p.bytes_in)),
                ("bytes_out", s.bytes_out, prev.map(|p| p.bytes_out)),
                ("slow_closes", s.slow_closes, prev.map(|p| p.slow_closes)),
                ("handshake_rejects", s.handshake_rejects, prev.map(|p| p.handshake_rejects)),
            ];
            for (kind, now, before) in pairs {
                metrics.gateway_counters.with_label_values(&[&shard, kind]).inc_by(now.saturating_sub(before.unwrap_or(0)));
            }
        }
        *last = stats;
    })
}
