//! Layered configuration: defaults in code → a TOML file → `GOCHAT_*`
//! environment variables → command-line flags (each layer overrides the one
//! before). Nested keys come from the environment as
//! `GOCHAT_<SECTION>__<KEY>`, e.g. `GOCHAT_CHAT__LARGE_GROUP_THRESHOLD=200`.
//! Invalid configuration is one clear line; binaries exit with code 64.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        }
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
        // Flag-style variables (GOCHAT_HTTP_ADDR, ...) are handled by the CLI.
        let env = Env::prefixed("GOCHAT_").split("__").ignore(&[
            "CONFIG",
            "HTTP_ADDR",
            "WS_ADDR",
            "DATA_DIR",
            "SHARDS",
            "ETCD",
            "GRPC_ADDR",
            "LOG",
        ]);
        fig = fig.merge(env).merge(Serialized::defaults(flags));
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
}
