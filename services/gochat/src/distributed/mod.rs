//! The distributed mode: `gochat gateway|logic|repo|task`, each its own
//! process, any number of instances, on Kafka, MySQL, Redis and etcd.
//!
//! Every process starts from the etcd endpoints and an environment name:
//! 1. its configuration is `/gochat/config/{env}/common` and
//!    `/gochat/config/{env}/{service}` over the defaults, then `GOCHAT_*`
//!    variables and flags; it is watched, and live values change in place;
//! 2. it claims a snowflake node id in etcd (unique among running processes);
//! 3. it builds the same services as `gochat up`, with the distributed
//!    adapters, and reaches repo and logic over gRPC ([`remote`]), finding
//!    their instances in etcd;
//! 4. it registers itself under a lease, and on SIGTERM/SIGINT stops
//!    accepting, drains, commits its consumers' offsets and deregisters.

pub mod ops;
pub mod remote;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gochat_infra::auth::TokenKeys;
use gochat_infra::bus::kafka::{KafkaBus, KafkaOptions};
use gochat_infra::bus::{Bus, topics};
use gochat_infra::config::{Config, FlagOverrides, LiveConfig};
use gochat_infra::coord::{Coord, Instance};
use gochat_infra::ids::random_token;
use gochat_infra::kv::redis::RedisKv;
use gochat_infra::shutdown::{self, Shutdown};
use gochat_infra::store::mysql::MySqlStore;
use gochat_infra::telemetry::Metrics;
use gochat_proto::logic::logic_server::{Logic as LogicRpc, LogicServer};
use gochat_proto::repo::repo_server::{Repo, RepoServer};
use tokio::task::JoinHandle;

use crate::embedded::spawn_service;
use remote::{Downstream, RemoteLogic, RemoteRepo};

/// The four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Gateway,
    Logic,
    Repo,
    Task,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Logic => "logic",
            Service::Repo => "repo",
            Service::Task => "task",
        }
    }

    /// Default gRPC port (logic, repo) — ARCHITECTURE.md §6.
    fn default_grpc_port(self) -> u16 {
        match self {
            Service::Logic => 9000,
            _ => 9001,
        }
    }

    /// Default `/healthz` + `/metrics` port. Logic's is 9093, not the 9092
    /// of the design: 9092 is the Kafka broker's port on the same host.
    fn default_metrics_port(self) -> u16 {
        match self {
            Service::Logic => 9093,
            Service::Repo => 9091,
            _ => 9094,
        }
    }
}

/// What a service process is started with.
#[derive(Debug, Clone)]
pub struct NodeArgs {
    pub etcd: Vec<String>,
    pub env: String,
    pub instance_id: Option<String>,
    pub flags: FlagOverrides,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Coord(#[from] gochat_infra::coord::CoordError),
    #[error("{0}")]
    Config(#[from] gochat_infra::config::ConfigError),
    #[error("{what}: {reason}")]
    Backend { what: &'static str, reason: String },
    #[error("{0}")]
    Platform(String),
}

impl NodeError {
    fn backend(what: &'static str, e: impl std::fmt::Display) -> Self {
        NodeError::Backend { what, reason: e.to_string() }
    }

    /// A problem with the configuration (exit 64) rather than with a backend (exit 69).
    pub fn is_config(&self) -> bool {
        use gochat_infra::coord::CoordError;
        matches!(self, NodeError::Config(_) | NodeError::Coord(CoordError::Config(_) | CoordError::BadDocument { .. }))
    }
}

/// A started service process.
pub struct Node {
    pub service: Service,
    pub instance_id: String,
    pub config: LiveConfig,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
    gateway: Option<im_gateway::Gateway>,
    /// Addresses this process listens on (for tests and the startup banner).
    pub addrs: Vec<(&'static str, SocketAddr)>,
}

/// Connects to etcd, loads the configuration and starts `service`.
pub async fn start(service: Service, args: NodeArgs, shutdown: Shutdown) -> Result<Node, NodeError> {
    let coord = Coord::connect(&args.etcd, &args.env).await?;
    let mut flags = args.flags.clone();
    let config = coord.load_config(service.name(), &flags).await?;
    let log_setter = gochat_infra::telemetry::init_tracing_reloadable(&config.log);
    if config.auth.jwt_secret.is_empty() {
        return Err(gochat_infra::config::ConfigError(
            "auth.jwt_secret must be set in the distributed mode (every gateway and logic instance shares it); put it in deploy/config/<env>/gochat.toml and run `gochat config sync`".into(),
        )
        .into());
    }
    if service == Service::Gateway && args.instance_id.is_none() {
        return Err(gochat_infra::config::ConfigError(
            "a gateway needs --instance-id (GOCHAT_INSTANCE_ID): it names the gateway's downstream topic and consumer groups, so keep it stable across restarts".into(),
        )
        .into());
    }
    let instance_id = args.instance_id.clone().unwrap_or_else(|| format!("{}-{}", service.name(), random_token(8)));
    coord.ensure_instance_free(service.name(), &instance_id, config.grpc.lease_ttl_secs).await?;
    let node_id = coord.claim_node_id(&instance_id, config.grpc.lease_ttl_secs, shutdown.clone()).await?;
    flags.node_id = Some(node_id);
    let config = LiveConfig::new(coord.load_config(service.name(), &flags).await?);
    tracing::info!(service = service.name(), %instance_id, node_id, env = %args.env, "starting");

    let mut tasks = Vec::new();
    // Follow the configuration; apply the log level when it changes.
    {
        let (c, f, live, s) = (coord.clone(), flags.clone(), config.clone(), shutdown.clone());
        let name = service.name();
        tasks.push(tokio::spawn(async move { c.follow_config(name, f, live, s).await }));
        if let Some(set) = log_setter {
            tasks.push(tokio::spawn(config.on_change(
                shutdown.clone(),
                |c| c.log.level.clone(),
                move |level| match set(level) {
                    Ok(()) => tracing::info!(%level, "log level changed"),
                    Err(e) => tracing::error!(%level, error = %e, "log level refused"),
                },
            )));
        }
    }

    let cfg = config.get();
    let metrics = Arc::new(Metrics::new());
    let mut addrs = Vec::new();
    let mut gateway = None;
    let grpc_addr = cfg.grpc.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], service.default_grpc_port())));
    let metrics_addr = cfg.grpc.metrics_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], service.default_metrics_port())));
    let registered: String;

    match service {
        Service::Repo => {
            let store =
                MySqlStore::connect(&cfg.store.mysql_url, cfg.store.max_connections).await.map_err(|e| NodeError::backend("MySQL", e))?;
            if cfg.store.migrate_on_start {
                store.migrate().await.map_err(|e| NodeError::backend("MySQL migrations", e))?;
            }
            let pool = store.pool().clone();
            let kv = Arc::new(RedisKv::connect(&cfg.redis.url, &cfg.redis.key_prefix).await.map_err(|e| NodeError::backend("Redis", e))?);
            let repo = im_repo::RepoService::new(Arc::new(store), kv);
            repo.ensure_world().await.map_err(|e| NodeError::backend("MySQL", e))?;
            let (listener, bound) = bind(grpc_addr).await?;
            addrs.push(("grpc", bound));
            tasks.push(serve_grpc("repo", listener, tonic::service::Routes::new(RepoServer::new(repo)), shutdown.clone()));
            let check = health_sql(pool);
            addrs.push(("metrics", serve_ops(metrics_addr, metrics.clone(), vec![("mysql".into(), check)], &shutdown, &mut tasks).await?));
            registered = advertised(&cfg, bound)?;
        }
        Service::Logic => {
            let bus = kafka(&cfg, &instance_id).await?;
            let repo: Arc<dyn Repo> = Arc::new(RemoteRepo(downstream("repo", &coord, &cfg, &shutdown).await?));
            let keys = TokenKeys::new(cfg.auth.jwt_secret.as_bytes());
            let logic = im_logic::Logic::new(repo, bus, config.clone(), keys, metrics.clone());
            tasks.push(spawn_service("logic.upstream", &shutdown, im_logic::upstream::run(logic.clone(), shutdown.clone())));
            let (listener, bound) = bind(grpc_addr).await?;
            addrs.push(("grpc", bound));
            let svc = im_logic::LogicService::new(logic);
            tasks.push(serve_grpc("logic", listener, tonic::service::Routes::new(LogicServer::new(svc)), shutdown.clone()));
            addrs.push(("metrics", serve_ops(metrics_addr, metrics.clone(), Vec::new(), &shutdown, &mut tasks).await?));
            registered = advertised(&cfg, bound)?;
        }
        Service::Task => {
            let bus = kafka(&cfg, &instance_id).await?;
            let repo: Arc<dyn Repo> = Arc::new(RemoteRepo(downstream("repo", &coord, &cfg, &shutdown).await?));
            let task = im_task::Task::new(repo, bus, config.clone(), metrics.clone());
            tasks.push(spawn_service("task.persist", &shutdown, im_task::run_persist(task.clone(), shutdown.clone())));
            tasks.push(spawn_service("task.fanout", &shutdown, im_task::run_fanout(task, shutdown.clone())));
            let bound = serve_ops(metrics_addr, metrics.clone(), Vec::new(), &shutdown, &mut tasks).await?;
            addrs.push(("metrics", bound));
            registered = advertised(&cfg, bound)?;
        }
        Service::Gateway => {
            gateway_core::check_platform().map_err(|e| NodeError::Platform(e.to_string()))?;
            let bus = kafka(&cfg, &instance_id).await?;
            bus.create_topic(&topics::downstream(&instance_id), cfg.bus.partitions).await.map_err(|e| NodeError::backend("Kafka", e))?;
            let to_logic = downstream("logic", &coord, &cfg, &shutdown).await?;
            let logic_check = {
                let d = to_logic.clone();
                let check: im_gateway::HealthCheck = Arc::new(move || {
                    let n = d.instance_count();
                    Box::pin(async move { if n > 0 { Ok(()) } else { Err("no logic instance registered".to_string()) } })
                });
                check
            };
            let logic: Arc<dyn LogicRpc> = Arc::new(RemoteLogic(to_logic));
            let kv = Arc::new(RedisKv::connect(&cfg.redis.url, &cfg.redis.key_prefix).await.map_err(|e| NodeError::backend("Redis", e))?);
            let redis_check = {
                let kv = kv.clone();
                let check: im_gateway::HealthCheck = Arc::new(move || {
                    let kv = kv.clone();
                    Box::pin(async move {
                        use gochat_infra::kv::Kv;
                        kv.get("healthz").await.map(|_| ()).map_err(|e| e.to_string())
                    })
                });
                check
            };
            let limiter = Arc::new(SharedRateLimiter {
                kv,
                local: im_gateway::http::LocalRateLimiter::new(config.clone()),
                config: config.clone(),
                local_until_ms: Default::default(),
            });
            let deps = im_gateway::GatewayDeps {
                logic,
                bus,
                config: config.clone(),
                rate_limiter: Some(limiter),
                keys: TokenKeys::new(cfg.auth.jwt_secret.as_bytes()),
                metrics: metrics.clone(),
                gateway_id: instance_id.clone(),
                health: vec![("logic".into(), logic_check), ("redis".into(), redis_check)],
            };
            let g = im_gateway::Gateway::start(deps, shutdown.clone()).await.map_err(|e| NodeError::backend("gateway", e))?;
            addrs.push(("http", g.http_addr()));
            addrs.push(("ws", g.ws_addr()));
            registered = advertised(&cfg, g.http_addr())?;
            gateway = Some(g);
        }
    }

    let me = Instance { id: instance_id.clone(), addr: registered };
    tasks.push(coord.register(service.name(), me, cfg.grpc.lease_ttl_secs, shutdown.clone()).await?);
    Ok(Node { service, instance_id, config, shutdown, tasks, gateway, addrs })
}

impl Node {
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs until SIGTERM/SIGINT (or an internal failure), then stops in
    /// order: no new work, drain, commit, deregister. True when a signal
    /// stopped it, false when a failure did (the process should exit non-zero
    /// so a supervisor restarts it).
    pub async fn run(self) -> bool {
        let s = self.shutdown.clone();
        let by_signal = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = by_signal.clone();
        tokio::spawn(async move {
            shutdown::signal().await;
            tracing::info!("signal received; shutting down");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            s.trigger();
        });
        if let Some(g) = self.gateway {
            g.run_until_stopped().await;
        } else {
            self.shutdown.wait().await;
        }
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(15), t).await.is_err() {
                tracing::warn!("a task did not stop within 15 s");
            }
        }
        let clean = by_signal.load(std::sync::atomic::Ordering::SeqCst);
        if clean {
            tracing::info!(service = self.service.name(), instance = %self.instance_id, "stopped");
        } else {
            tracing::error!(service = self.service.name(), instance = %self.instance_id, "stopped after a failure");
        }
        clean
    }
}

/// Serves `routes` on `listener` until shutdown; a server that fails stops the process.
fn serve_grpc(name: &'static str, listener: tokio::net::TcpListener, routes: tonic::service::Routes, shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let stop = {
            let s = shutdown.clone();
            async move { s.wait().await }
        };
        if let Err(e) = tonic::transport::Server::builder().add_routes(routes).serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!(service = name, error = %e, "gRPC server failed; shutting down");
            shutdown.trigger();
        }
    })
}

/// The address other processes should use to reach `bound`.
fn advertised(cfg: &Config, bound: SocketAddr) -> Result<String, NodeError> {
    match &cfg.grpc.advertise_addr {
        Some(a) => Ok(a.clone()),
        None if bound.ip().is_unspecified() => Err(gochat_infra::config::ConfigError(format!(
            "listening on {bound}: set grpc.advertise_addr (GOCHAT_GRPC__ADVERTISE_ADDR) to the address other hosts reach this instance at"
        ))
        .into()),
        None => Ok(bound.to_string()),
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), NodeError> {
    let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| NodeError::backend("listen", format!("{addr}: {e}")))?;
    let bound = l.local_addr().map_err(|e| NodeError::backend("listen", e))?;
    Ok((l, bound))
}

/// The Kafka bus of `cfg`, with the shared topics created.
pub(crate) async fn kafka(cfg: &Config, instance_id: &str) -> Result<Arc<dyn Bus>, NodeError> {
    let bus = KafkaBus::connect(KafkaOptions {
        brokers: cfg.kafka.brokers.clone(),
        namespace: cfg.kafka.namespace.clone(),
        client_id: instance_id.to_string(),
        default_partitions: cfg.bus.partitions,
        replication_factor: cfg.kafka.replication_factor,
        session_timeout_ms: cfg.kafka.session_timeout_ms,
        message_timeout_ms: cfg.kafka.message_timeout_ms,
    })
    .await
    .map_err(|e| NodeError::backend("Kafka", e))?;
    create_topics(bus.as_ref(), cfg.bus.partitions).await?;
    Ok(bus)
}

/// Creates the shared topics (idempotent); `gochat migrate` runs the same step.
async fn create_topics(bus: &dyn Bus, partitions: u32) -> Result<(), NodeError> {
    for t in
        [topics::UPSTREAM, topics::PERSIST, topics::FANOUT, topics::USER_EVENTS, topics::MESSAGE_EVENTS, topics::NOTIFICATIONS, topics::DLQ]
    {
        bus.create_topic(t, partitions).await.map_err(|e| NodeError::backend("Kafka", format!("creating topic {t}: {e}")))?;
    }
    Ok(())
}

async fn downstream(name: &'static str, coord: &Coord, cfg: &Config, shutdown: &Shutdown) -> Result<Downstream, NodeError> {
    let instances = coord.discover(name, shutdown.clone()).await?;
    Downstream::new(name, &cfg.grpc, instances).map_err(|e| NodeError::backend("gRPC client", e))
}

fn health_sql(pool: sqlx::MySqlPool) -> im_gateway::HealthCheck {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move { sqlx::query("SELECT 1").execute(&pool).await.map(|_| ()).map_err(|e| e.to_string()) })
    })
}

/// `/healthz` and `/metrics` of logic, repo and task.
async fn serve_ops(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    checks: Vec<(String, im_gateway::HealthCheck)>,
    shutdown: &Shutdown,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr, NodeError> {
    use axum::routing::get;
    let (listener, bound) = bind(addr).await?;
    let checks = Arc::new(checks);
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let checks = checks.clone();
                async move {
                    let mut out = serde_json::Map::new();
                    let mut ok = true;
                    for (name, check) in checks.iter() {
                        match check().await {
                            Ok(()) => out.insert(name.clone(), "ok".into()),
                            Err(e) => {
                                ok = false;
                                out.insert(name.clone(), e.into())
                            }
                        };
                    }
                    let status = if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
                    (status, axum::Json(serde_json::json!({"status": if ok { "ok" } else { "degraded" }, "checks": out})))
                }
            }),
        )
        .route("/metrics", get(move || async move { metrics.render() }));
    let s = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { s.wait().await }).await {
            tracing::error!(error = %e, "ops HTTP server failed");
        }
    }));
    Ok(bound)
}

/// HTTP rate limits shared by every gateway (Redis, GCRA). If Redis does
/// not answer within 100 ms, the gateway's own limiter decides, and keeps
/// deciding alone for 5 s before Redis is tried again: a Redis outage
/// neither opens the gates nor slows every request down.
struct SharedRateLimiter {
    kv: Arc<RedisKv>,
    local: im_gateway::http::LocalRateLimiter,
    config: LiveConfig,
    /// Until when (ms since the Unix epoch) only the local limiter is used.
    local_until_ms: std::sync::atomic::AtomicI64,
}

#[async_trait::async_trait]
impl im_gateway::http::HttpRateLimiter for SharedRateLimiter {
    async fn allow(&self, ip: std::net::IpAddr, kind: im_gateway::http::LimitKind) -> bool {
        let (rate, burst) = kind.limits(&self.config.get());
        let name = kind.name();
        use std::sync::atomic::Ordering;
        if gochat_infra::now_ms() < self.local_until_ms.load(Ordering::Relaxed) {
            return self.local.check(ip, kind);
        }
        let shared =
            tokio::time::timeout(Duration::from_millis(100), self.kv.rate_limit(&format!("ratelimit:{name}:{ip}"), rate, burst)).await;
        match shared {
            Ok(Ok(allowed)) => allowed,
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 100 ms".to_string(),
                };
                if self.local_until_ms.swap(gochat_infra::now_ms() + 5_000, Ordering::Relaxed) < gochat_infra::now_ms() {
                    tracing::warn!(error = %reason, "shared rate limit unavailable; this gateway limits alone for 5 s");
                }
                self.local.check(ip, kind)
            }
        }
    }

    fn sweep(&self) {
        im_gateway::http::HttpRateLimiter::sweep(&self.local);
    }
}
