//! `gochat up`: every service in one process.
//!
//! Same services, contracts and code paths as the distributed mode; only
//! the adapters differ. Logic and task call repo, and the gateway calls
//! logic, through the generated gRPC service traits, in process.
//!
//! Durability: the bus keeps `gochat.messages.persist` and
//! `gochat.tasks.fanout` in a SQLite log (`bus.db`), and logic acks a
//! message only after its persist record is committed there. At start, task
//! drains what the log still holds into the database *before* logic takes
//! new messages, so sequence counters are seeded from the true highest
//! `seqId` and an acked message is never lost or renumbered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gochat_infra::auth::TokenKeys;
use gochat_infra::bus::memory::{MemoryBus, MemoryBusConfig};
use gochat_infra::bus::{Bus, groups, topics};
use gochat_infra::config::Config;
use gochat_infra::ids::random_token;
use gochat_infra::kv::memory::MemoryKv;
use gochat_infra::shutdown::Shutdown;
use gochat_infra::store::sqlite::SqliteStore;
use gochat_infra::telemetry::Metrics;
use gochat_proto::logic::logic_server::Logic as LogicRpc;
use gochat_proto::repo::repo_server::Repo;
use im_gateway::{Gateway, GatewayDeps, HealthCheck};
use tokio::task::JoinHandle;

/// Why `gochat up` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Platform(String),
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("database: {0}")]
    Store(#[from] gochat_infra::store::StoreError),
    #[error("message bus: {0}")]
    Bus(#[from] gochat_infra::bus::BusError),
    #[error("recovery: {0}")]
    Recovery(String),
    #[error("gateway: {0}")]
    Gateway(#[from] im_gateway::GatewayError),
}

/// The running embedded deployment.
pub struct App {
    gateway: Gateway,
    bus: Arc<MemoryBus>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: Shutdown,
}

/// Runs a long-lived service task (a consumer); if it fails, the process shuts down.
pub(crate) fn spawn_service<F>(name: &'static str, shutdown: &Shutdown, fut: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), gochat_infra::error::AppError>> + Send + 'static,
{
    let s = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            // A consumer that cannot go on stops the process rather than
            // silently leaving messages unprocessed.
            tracing::error!(service = name, error = %e, "service failed; shutting down");
            s.trigger();
        }
    })
}

/// Starts everything; returns once the HTTP and WebSocket ports accept.
pub async fn build(config: Config, shutdown: Shutdown) -> Result<App, StartError> {
    gateway_core::check_platform().map_err(|e| StartError::Platform(e.to_string()))?;
    let dir = config.data.dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir { path: dir.clone(), source })?;
    let mut config = config;
    if config.auth.jwt_secret.is_empty() {
        config.auth.jwt_secret = crate::secret::load_or_create(&dir).map_err(|source| StartError::DataDir { path: dir.clone(), source })?;
    }
    let config = gochat_infra::config::LiveConfig::new(config);
    let metrics = Arc::new(Metrics::new());
    let keys = TokenKeys::new(config.get().auth.jwt_secret.as_bytes());

    let store = SqliteStore::open(&dir.join("gochat.db")).await?;
    let pool = store.pool().clone();
    let bus = MemoryBus::open(MemoryBusConfig {
        default_partitions: config.get().bus.partitions,
        log_path: Some(dir.join("bus.db")),
        // Acked messages live in these until stored; the DLQ may hold acked
        // messages the store refused, kept for an operator.
        durable_topics: vec![topics::PERSIST.into(), topics::FANOUT.into(), topics::DLQ.into()],
        ..MemoryBusConfig::default()
    })
    .await?;
    let bus_dyn: Arc<dyn Bus> = bus.clone();
    let kv = Arc::new(MemoryKv::new());
    let mut tasks = Vec::new();
    let (k, s) = (kv.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tick.tick() => k.sweep(),
                _ = s.wait() => break,
            }
        }
    }));

    let repo_svc = im_repo::RepoService::new(Arc::new(store), kv);
    repo_svc.ensure_world().await?;
    let revoked =
        repo_svc.load_revocations().await.map_err(|e| StartError::Recovery(format!("cannot load token revocations: {}", e.message())))?;
    tracing::debug!(revoked, "token revocations loaded");
    let repo: Arc<dyn Repo> = Arc::new(repo_svc);

    let task = im_task::Task::new(repo.clone(), bus_dyn.clone(), config.clone(), metrics.clone());
    tasks.push(spawn_service("task.persist", &shutdown, im_task::run_persist(task.clone(), shutdown.clone())));
    tasks.push(spawn_service("task.fanout", &shutdown, im_task::run_fanout(task, shutdown.clone())));
    // Store everything the log still holds before any new seqId is handed out.
    let caught_up = tokio::select! {
        ok = bus.wait_caught_up(groups::TASK_PERSIST, topics::PERSIST, Duration::from_secs(120)) => ok,
        // The persist consumer failed (and triggered shutdown): no point waiting.
        _ = shutdown.wait() => false,
    };
    if !caught_up {
        shutdown.trigger();
        return Err(StartError::Recovery("could not store the messages left in the bus log (see the log above)".into()));
    }

    let logic = im_logic::Logic::new(repo, bus_dyn.clone(), config.clone(), keys.clone(), metrics.clone());
    tasks.push(spawn_service("logic.upstream", &shutdown, im_logic::upstream::run(logic.clone(), shutdown.clone())));
    let logic_rpc: Arc<dyn LogicRpc> = Arc::new(im_logic::LogicService::new(logic));

    let store_check: HealthCheck = Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move { sqlx::query("SELECT 1").execute(&pool).await.map(|_| ()).map_err(|e| e.to_string()) })
    });
    let deps = GatewayDeps {
        logic: logic_rpc,
        bus: bus_dyn,
        config: config.clone(),
        rate_limiter: None,
        keys,
        metrics,
        gateway_id: format!("gw-{}-{}", config.get().node_id, random_token(6)),
        health: vec![("store".into(), store_check)],
    };
    let gateway = match Gateway::start(deps, shutdown.clone()).await {
        Ok(g) => g,
        Err(e) => {
            shutdown.trigger();
            return Err(e.into());
        }
    };
    Ok(App { gateway, bus, tasks, shutdown })
}

impl App {
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.gateway.http_addr()
    }

    pub fn ws_addr(&self) -> std::net::SocketAddr {
        self.gateway.ws_addr()
    }

    /// The gateway's push service and id (admin tools, tests).
    pub fn gateway_push(&self) -> (String, im_gateway::bridge::PushService) {
        (self.gateway.gateway_id().to_string(), self.gateway.push_service())
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs until the shutdown is triggered, then stops in order: gateway
    /// (no new work, sockets closed), consumers (commit what they did), bus log.
    pub async fn run_until_stopped(self) {
        self.gateway.run_until_stopped().await;
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(15), t).await.is_err() {
                tracing::warn!("a service did not stop within 15 s");
            }
        }
        self.bus.close().await;
        tracing::info!("stopped");
    }
}
