//! Layered configuration: defaults in code → a TOML file → `GOCHAT_*`
//! environment variables → command-line flags (each layer overrides the one
//! before). Nested keys come from the environment as
//! `GOCHAT_<SECTION>__<KEY>`, e.g. `GOCHAT_CHAT__LARGE_GROUP_THRESHOLD=200`.
//! Invalid configuration is one clear line; binaries exit with code 64.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arc_swap::ArcSwap;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration of a GoChat process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Deployment environment name (`dev`, `prod`, ...).
    pub env: String,
    /// Snowflake node id, unique per process that generates ids (0..=1023).
    pub node_id: u16,
    pub http: HttpConfig,
    pub ws: WsConfig,
    pub auth: AuthConfig,
    pub chat: ChatConfig,
    pub data: DataConfig,
    pub bus: BusConfig,
    pub task: TaskConfig,
    pub log: LogConfig,
    /// Distributed mode: the relational store (MySQL).
    pub store: StoreConfig,
    /// Distributed mode: presence, sequences, idempotency, caches, rate limits.
    pub redis: RedisConfig,
    /// Distributed mode: the message bus.
    pub kafka: KafkaConfig,
    /// Distributed mode: calls between services, and where they listen.
    pub grpc: GrpcConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Allowed CORS origins; `["*"]` allows any.
    pub cors_origins: Vec<String>,
    /// Requests per second per client IP (token bucket), and its burst.
    pub rate_per_ip: u32,
    pub burst_per_ip: u32,
    /// Account creations (register, guest) per second per IP, and the burst.
    pub signup_rate_per_ip: u32,
    pub signup_burst_per_ip: u32,
    /// Bearer token for `/admin/*`; empty = those endpoints answer loopback clients only.
    pub admin_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    pub addr: SocketAddr,
    /// Gateway shards (pinned threads); 0 = one per available core.
    pub shards: usize,
    /// Cores to pin shards to; empty = 0..shards.
    pub cpu_set: Vec<usize>,
    pub max_frame_bytes: usize,
    /// Queued outbound bytes per connection before it is closed as a slow reader (1013).
    pub max_outbound_bytes: usize,
    pub heartbeat_secs: u64,
    pub handshake_timeout_secs: u64,
    /// Connections one user may hold; the oldest is closed (4001) beyond it.
    pub max_connections_per_user: usize,
    /// Client messages per second per connection, and the burst.
    pub rate_per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret for JWTs. Empty in embedded mode: one is generated and
    /// kept in `<data_dir>/jwt.secret` so tokens survive restarts.
    pub jwt_secret: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Largest message content in bytes of UTF-8.
    pub max_content_bytes: usize,
    /// Groups with more members than this are fanned out by im-task.
    pub large_group_threshold: u64,
    /// How long the KV store remembers a `client_msg_id` (fast path). The
    /// database (unique per sender + client_msg_id) remembers it for good,
    /// so this only bounds memory: 24 h × thousands of msg/s would not fit.
    pub idempotency_ttl_secs: u64,
    pub max_group_members: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Embedded mode: SQLite database, bus log and secrets live here.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    pub partitions: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// Most messages written in one transaction.
    pub persist_batch: usize,
    /// Members read per page while fanning out.
    pub fanout_page: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `mysql://user:password@host:port/database`.
    pub mysql_url: String,
    /// Connections in each repo instance's pool.
    pub max_connections: u32,
    /// Apply pending migrations when repo starts (otherwise run `gochat migrate`).
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prepended to every key, so deployments can share one server.
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Prepended to every topic and consumer-group name (empty: the names of DATA.md).
    pub namespace: String,
    pub replication_factor: i16,
    /// A consumer silent this long leaves its group; its partitions move to the others.
    pub session_timeout_ms: u32,
    /// How long a produce may wait for the broker before it fails.
    pub message_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// This instance's gRPC address (logic, repo); unset = the service's default port.
    pub addr: Option<SocketAddr>,
    /// `host:port` registered in etcd for others to call; unset = the bound address.
    pub advertise_addr: Option<String>,
    /// `/healthz` and `/metrics` of logic, repo and task; unset = the service's default port.
    pub metrics_addr: Option<SocketAddr>,
    /// Deadline of every call to another service.
    pub deadline_ms: u64,
    /// Retries of an idempotent call that failed with `UNAVAILABLE` (with exponential backoff).
    pub retries: u32,
    /// The circuit to a service opens when this share of recent calls failed...
    pub breaker_failure_rate: f64,
    /// ...out of at least this many calls in the window...
    pub breaker_min_calls: u32,
    /// ...and stays open (calls fail at once) this long before probing again.
    pub breaker_open_ms: u64,
    /// An instance's etcd registration lapses this long after it stops renewing it.
    pub lease_ttl_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `info,im_logic=debug`.
    pub level: String,
    /// `pretty`, `json`, or `auto` (pretty on a terminal, JSON otherwise).
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            env: "dev".into(),
            node_id: 1,
            http: HttpConfig::default(),
            ws: WsConfig::default(),
            auth: AuthConfig::default(),
            chat: ChatConfig::default(),
            data: DataConfig::default(),
            bus: BusConfig::default(),
            task: TaskConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            redis: RedisConfig::default(),
            kafka: KafkaConfig::default(),
            grpc: GrpcConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { mysql_url: "mysql://gochat:gochat@127.0.0.1:3306/gochat".into(), max_connections: 20, migrate_on_start: false }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: "redis://127.0.0.1:6379".into(), key_prefix: String::new() }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            namespace: String::new(),
            replication_factor: 1,
            session_timeout_ms: 10_000,
            message_timeout_ms: 30_000,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            addr: None,
            advertise_addr: None,
            metrics_addr: None,
            deadline_ms: 3_000,
            retries: 2,
            breaker_failure_rate: 0.5,
            breaker_min_calls: 20,
            breaker_open_ms: 5_000,
            lease_ttl_secs: 10,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_body_bytes: 64 * 1024,
            cors_origins: vec!["*".into()],
            rate_per_ip: 200,
            burst_per_ip: 400,
            signup_rate_per_ip: 5,
            signup_burst_per_ip: 50,
            admin_token: String::new(),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            shards: 0,
            cpu_set: Vec::new(),
            max_frame_bytes: 64 * 1024,
            max_outbound_bytes: 1024 * 1024,
            heartbeat_secs: 30,
            handshake_timeout_secs: 10,
            max_connections_per_user: 8,
            rate_per_sec: 20,
            burst: 40,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { jwt_secret: String::new(), access_ttl_secs: 2 * 3600, refresh_ttl_secs: 30 * 24 * 3600 }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self { max_content_bytes: 4096, large_group_threshold: 500, idempotency_ttl_secs: 600, max_group_members: 100_000 }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("./data") }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { partitions: 8 }
    }
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self { persist_batch: 512, fanout_page: 1000 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: "auto".into() }
    }
}

/// A configuration problem, reported as one line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Exit code for invalid configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws: Option<WsOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcOverride>,
    /// Set by the process itself (distributed mode: claimed in etcd), never by users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GrpcOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpOverride {
    pub addr: SocketAddr,
}
#[derive(Debug, Clone, Default, Serialize)]
pub struct WsOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
}
#[derive(Debug, Clone, Serialize)]
pub struct DataOverride {
    pub dir: PathBuf,
}

impl FlagOverrides {
    pub fn new(http_addr: Option<SocketAddr>, ws_addr: Option<SocketAddr>, shards: Option<usize>, data_dir: Option<PathBuf>) -> Self {
        Self {
            http: http_addr.map(|addr| HttpOverride { addr }),
            ws: (ws_addr.is_some() || shards.is_some()).then_some(WsOverride { addr: ws_addr, shards }),
            data: data_dir.map(|dir| DataOverride { dir }),
            grpc: None,
            node_id: None,
        }
    }

    /// Adds the distributed services' listen addresses.
    pub fn with_grpc(mut self, addr: Option<SocketAddr>, metrics_addr: Option<SocketAddr>) -> Self {
        if addr.is_some() || metrics_addr.is_some() {
            self.grpc = Some(GrpcOverride { addr, metrics_addr });
        }
        self
    }
}

impl Config {
    /// Builds the configuration from every layer, then validates it.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            fig = fig.merge(Toml::file(path));
        }
        Self::finish(fig, flags)
    }

    /// Like [`Config::load`], with JSON documents (from etcd) in place of
    /// the file, applied in order.
    pub fn from_documents(docs: &[&serde_json::Value], flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        for doc in docs {
            fig = fig.merge(Serialized::defaults(*doc));
        }
        Self::finish(fig, flags)
    }

    /// Environment variables and flags over `fig`, then validation.
    fn finish(fig: Figment, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        // Flag-style variables (GOCHAT_HTTP_ADDR, ...) are handled by the CLI.
        let env = Env::prefixed("GOCHAT_").split("__").ignore(&[
            "CONFIG",
            "HTTP_ADDR",
            "WS_ADDR",
            "DATA_DIR",
            "SHARDS",
            "ETCD",
            "GRPC_ADDR",
            "METRICS_ADDR",
            "INSTANCE_ID",
            "LOG",
        ]);
        let fig = fig.merge(env).merge(Serialized::defaults(flags));
        let config: Config = fig.extract().map_err(|e| ConfigError(one_line(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.node_id > crate::ids::MAX_NODE {
            return bad(format!("node_id must be 0..={}, got {}", crate::ids::MAX_NODE, self.node_id));
        }
        if self.ws.shards > 256 {
            return bad(format!("ws.shards must be 0..=256, got {}", self.ws.shards));
        }
        if self.ws.heartbeat_secs == 0 || self.ws.handshake_timeout_secs == 0 {
            return bad("ws.heartbeat_secs and ws.handshake_timeout_secs must be > 0".into());
        }
        if self.ws.max_frame_bytes < 1024 {
            return bad(format!("ws.max_frame_bytes must be >= 1024, got {}", self.ws.max_frame_bytes));
        }
        if self.ws.max_outbound_bytes < self.ws.max_frame_bytes {
            return bad("ws.max_outbound_bytes must be >= ws.max_frame_bytes".into());
        }
        if self.ws.max_connections_per_user == 0 || self.ws.rate_per_sec == 0 || self.ws.burst == 0 {
            return bad("ws.max_connections_per_user, ws.rate_per_sec and ws.burst must be > 0".into());
        }
        if self.http.rate_per_ip == 0
            || self.http.burst_per_ip == 0
            || self.http.signup_rate_per_ip == 0
            || self.http.signup_burst_per_ip == 0
        {
            return bad("http.rate_per_ip, http.burst_per_ip, http.signup_rate_per_ip and http.signup_burst_per_ip must be > 0".into());
        }
        if self.chat.max_content_bytes == 0 || self.chat.max_content_bytes > self.ws.max_frame_bytes {
            return bad("chat.max_content_bytes must be > 0 and <= ws.max_frame_bytes".into());
        }
        if self.auth.access_ttl_secs < 60 || self.auth.refresh_ttl_secs < self.auth.access_ttl_secs {
            return bad("auth.access_ttl_secs must be >= 60 and <= auth.refresh_ttl_secs".into());
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return bad("auth.jwt_secret must be at least 32 characters".into());
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            return bad(format!("bus.partitions must be 1..=1024, got {}", self.bus.partitions));
        }
        if self.task.persist_batch == 0 || self.task.fanout_page == 0 {
            return bad("task.persist_batch and task.fanout_page must be > 0".into());
        }
        if self.store.max_connections == 0 {
            return bad("store.max_connections must be > 0".into());
        }
        if self.kafka.replication_factor < 1 || self.kafka.session_timeout_ms < 1000 || self.kafka.message_timeout_ms < 1000 {
            return bad("kafka.replication_factor must be >= 1, kafka.session_timeout_ms and kafka.message_timeout_ms >= 1000".into());
        }
        if self.grpc.deadline_ms == 0 || self.grpc.breaker_open_ms == 0 || self.grpc.lease_ttl_secs < 2 {
            return bad("grpc.deadline_ms and grpc.breaker_open_ms must be > 0, grpc.lease_ttl_secs >= 2".into());
        }
        if let Some(a) = &self.grpc.advertise_addr
            && a.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return bad(format!("grpc.advertise_addr must be host:port, got {a:?}"));
        }
        if !(self.grpc.breaker_failure_rate > 0.0 && self.grpc.breaker_failure_rate <= 1.0) {
            return bad(format!("grpc.breaker_failure_rate must be in (0, 1], got {}", self.grpc.breaker_failure_rate));
        }
        if !matches!(self.log.format.as_str(), "auto" | "pretty" | "json") {
            return bad(format!("log.format must be auto, pretty or json, got {:?}", self.log.format));
        }
        Ok(())
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ws.heartbeat_secs)
    }
}

/// The configuration of a running process. Reads are lock-free; in the
/// distributed mode the etcd watcher replaces the whole value when the
/// configuration changes, and the values documented as live take effect at
/// their next use (the others need a restart; the watcher says which).
#[derive(Clone)]
pub struct LiveConfig {
    current: Arc<ArcSwap<Config>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LiveConfig").field(&self.current.load()).finish()
    }
}

impl LiveConfig {
    pub fn new(config: Config) -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(config)), changes: tokio::sync::watch::Sender::new(0) }
    }

    /// The configuration now.
    pub fn get(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Replaces the configuration and wakes every [`LiveConfig::subscribe`]r.
    pub fn replace(&self, config: Config) {
        self.current.store(Arc::new(config));
        self.changes.send_modify(|v| *v += 1);
    }

    /// A receiver that is marked changed at every [`LiveConfig::replace`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Calls `apply` with `pick(config)` each time a replacement changes it,
    /// until shutdown (spawn the returned future).
    pub fn on_change<T, P, A>(
        &self,
        shutdown: crate::shutdown::Shutdown,
        pick: P,
        mut apply: A,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        T: PartialEq + Send + 'static,
        P: Fn(&Config) -> T + Send + 'static,
        A: FnMut(&T) + Send + 'static,
    {
        let live = self.clone();
        async move {
            let mut changes = live.subscribe();
            let mut current = pick(&live.get());
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = shutdown.wait() => break,
                }
                let now = pick(&live.get());
                if now != current {
                    apply(&now);
                    current = now;
                }
            }
        }
    }
}

impl Config {
    /// `self` with the live keys taken from `new`; every other key keeps the
    /// value this process started with (so no component sees a value it
    /// cannot apply while another part of the process still runs on the old one).
    pub fn with_live_values_of(&self, new: &Config) -> Config {
        let mut c = self.clone();
        c.log.level = new.log.level.clone();
        c.http.rate_per_ip = new.http.rate_per_ip;
        c.http.burst_per_ip = new.http.burst_per_ip;
        c.http.signup_rate_per_ip = new.http.signup_rate_per_ip;
        c.http.signup_burst_per_ip = new.http.signup_burst_per_ip;
        c.ws.rate_per_sec = new.ws.rate_per_sec;
        c.ws.burst = new.ws.burst;
        c.ws.max_outbound_bytes = new.ws.max_outbound_bytes;
        c.chat.large_group_threshold = new.chat.large_group_threshold;
        c.chat.max_group_members = new.chat.max_group_members;
        c.chat.idempotency_ttl_secs = new.chat.idempotency_ttl_secs;
        c.auth.access_ttl_secs = new.auth.access_ttl_secs;
        c.auth.refresh_ttl_secs = new.auth.refresh_ttl_secs;
        c.task.fanout_page = new.task.fanout_page;
        c
    }

    /// The keys whose new value only takes effect after a restart, among
    /// those that differ between `self` and `new` (the live ones are log
    /// level, HTTP rate limits, the per-connection WebSocket rate limit for
    /// new connections and outbound limit, the large-group threshold, group size, idempotency
    /// TTL, token lifetimes and the fan-out page).
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |changed: bool, key: &'static str| {
            if changed {
                keys.push(key);
            }
        };
        check(self.node_id != new.node_id, "node_id");
        check(self.http.addr != new.http.addr, "http.addr");
        check(self.http.max_body_bytes != new.http.max_body_bytes, "http.max_body_bytes");
        check(self.http.cors_origins != new.http.cors_origins, "http.cors_origins");
        check(self.http.admin_token != new.http.admin_token, "http.admin_token");
        check(self.ws.addr != new.ws.addr, "ws.addr");
        check(self.ws.shards != new.ws.shards, "ws.shards");
        check(self.ws.cpu_set != new.ws.cpu_set, "ws.cpu_set");
        check(self.ws.max_frame_bytes != new.ws.max_frame_bytes, "ws.max_frame_bytes");
        check(self.ws.heartbeat_secs != new.ws.heartbeat_secs, "ws.heartbeat_secs");
        check(self.ws.handshake_timeout_secs != new.ws.handshake_timeout_secs, "ws.handshake_timeout_secs");
        check(self.ws.max_connections_per_user != new.ws.max_connections_per_user, "ws.max_connections_per_user");
        check(self.chat.max_content_bytes != new.chat.max_content_bytes, "chat.max_content_bytes");
        check(self.task.persist_batch != new.task.persist_batch, "task.persist_batch");
        check(self.auth.jwt_secret != new.auth.jwt_secret, "auth.jwt_secret");
        check(self.data != new.data, "data.dir");
        check(self.bus != new.bus, "bus.partitions");
        check(self.log.format != new.log.format, "log.format");
        check(self.store != new.store, "store.*");
        check(self.redis != new.redis, "redis.*");
        check(self.kafka != new.kafka, "kafka.*");
        check(self.grpc != new.grpc, "grpc.*");
        keys
    }
}

fn one_line(e: &figment::Error) -> String {
    e.to_string().replace('\n', " ")
}

#[cfg(test)]
// figment's Jail closures return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn layers_override_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file("gochat.toml", "[chat]\nlarge_group_threshold = 7\n[http]\naddr = \"127.0.0.1:1111\"\n[ws]\nshards = 3")?;
            jail.set_env("GOCHAT_CHAT__LARGE_GROUP_THRESHOLD", "9");
            jail.set_env("GOCHAT_HTTP_ADDR", "127.0.0.1:3333");
            let flags = FlagOverrides::new(Some("127.0.0.1:2222".parse().expect("addr")), None, None, None);
            let cfg = Config::load(Some(Path::new("gochat.toml")), &flags).expect("loads");
            assert_eq!(cfg.chat.large_group_threshold, 9, "env beats file");
            assert_eq!(cfg.http.addr.port(), 2222, "flag beats file");
            assert_eq!(cfg.ws.shards, 3, "file beats default");
            assert_eq!(cfg.ws.heartbeat_secs, 30, "default stays");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        Jail::expect_with(|jail| {
            let none = FlagOverrides::default();
            jail.create_file("a.toml", "[ws]\nheartbeat_secs = \"soon\"")?;
            let err = Config::load(Some(Path::new("a.toml")), &none).expect_err("fails").to_string();
            assert!(!err.contains('\n'));
            assert!(err.contains("heartbeat_secs"), "{err}");

            jail.create_file("b.toml", "[ws]\nshards = 1000")?;
            let err = Config::load(Some(Path::new("b.toml")), &none).expect_err("fails").to_string();
            assert!(err.contains("ws.shards"), "{err}");

            jail.create_file("c.toml", "[nonsense]\nx = 1")?;
            assert!(Config::load(Some(Path::new("c.toml")), &none).is_err());

            let missing = Config::load(Some(Path::new("/nonexistent/x.toml")), &none);
            assert!(missing.expect_err("fails").to_string().contains("does not exist"));

            jail.set_env("GOCHAT_BUS__PARTITIONS", "zero");
            assert!(Config::load(None, &none).is_err(), "bad env value");
            Ok(())
        });
    }

    #[test]
    fn live_config_replaces_and_notifies_and_names_restart_keys() {
        let live = LiveConfig::new(Config::default());
        let rx = live.subscribe();
        let mut next = Config::default();
        next.chat.large_group_threshold = 7;
        next.http.rate_per_ip = 1;
        assert!(Config::default().restart_needed(&next).is_empty(), "both are live");
        next.ws.shards = 3;
        assert_eq!(Config::default().restart_needed(&next), ["ws.shards"]);
        let merged = Config::default().with_live_values_of(&next);
        assert_eq!((merged.ws.shards, merged.chat.large_group_threshold, merged.http.rate_per_ip), (0, 7, 1), "only live keys move");
        live.replace(merged);
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(live.get().chat.large_group_threshold, 7);
    }

    #[test]
    fn documents_layer_in_order_under_env_and_flags() {
        Jail::expect_with(|jail| {
            let common = serde_json::json!({"chat": {"large_group_threshold": 3}, "http": {"rate_per_ip": 9}});
            let service = serde_json::json!({"chat": {"large_group_threshold": 4}});
            jail.set_env("GOCHAT_HTTP__RATE_PER_IP", "11");
            let cfg = Config::from_documents(&[&common, &service], &FlagOverrides::default()).expect("loads");
            assert_eq!(cfg.chat.large_group_threshold, 4, "service beats common");
            assert_eq!(cfg.http.rate_per_ip, 11, "env beats documents");
            let bad = serde_json::json!({"grpc": {"advertise_addr": "no-port"}});
            let err = Config::from_documents(&[&bad], &FlagOverrides::default()).expect_err("refused").to_string();
            assert!(err.contains("advertise_addr"), "{err}");
            let unknown = serde_json::json!({"nonsense": 1});
            assert!(Config::from_documents(&[&unknown], &FlagOverrides::default()).is_err());
            Ok(())
        });
    }
}
