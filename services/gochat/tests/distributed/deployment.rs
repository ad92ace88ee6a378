//! A distributed deployment for one test: real `gochat gateway|logic|repo|task`
//! processes on ephemeral ports, on the MariaDB, Redis, etcd and broker
//! that `deploy/dev-services.sh up` runs (the README test command starts them).
//!
//! Each deployment is isolated on the shared backends by a tag: its own etcd
//! environment, MySQL database, Redis key prefix and Kafka namespace. Its
//! configuration is written to etcd as the `common` document and the
//! database is created by `gochat migrate`, exactly as an operator would.
//! Processes are killed when the deployment is dropped (also when a test
//! fails); their logs stay in `<target>/tmp/distributed-logs/<tag>/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use gochat_infra::config::Config;
use gochat_infra::coord::Coord;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{TestApp, test_config};

pub fn etcd_endpoint() -> String {
    std::env::var("GOCHATTEST_ETCD").unwrap_or_else(|_| "127.0.0.1:2379".into())
}
fn mysql_server() -> String {
    std::env::var("GOCHATTEST_MYSQL_URL").unwrap_or_else(|_| "mysql://gochat:gochat@127.0.0.1:3306".into())
}
fn redis_url() -> String {
    std::env::var("GOCHATTEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
fn kafka_brokers() -> String {
    std::env::var("GOCHATTEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// How many processes of each service.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub gateways: usize,
    pub logic: usize,
    pub repo: usize,
    pub task: usize,
}

/// What the issue asks for: 2 gateways, 2 logic, 1 repo, 2 task.
pub const STANDARD: Spec = Spec { gateways: 2, logic: 2, repo: 1, task: 2 };

pub struct Proc {
    pub service: &'static str,
    pub id: String,
    pub addrs: HashMap<String, SocketAddr>,
    child: Option<Child>,
}

pub struct Deployment {
    pub tag: String,
    pub procs: Vec<Proc>,
    logs: PathBuf,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}

/// The deployment's configuration: the test defaults, the test's tweak,
/// and the isolation settings.
pub fn deployment_config(tag: &str, tweak: impl FnOnce(&mut Config)) -> Config {
    let dir = std::env::temp_dir();
    let mut c = test_config(&dir);
    tweak(&mut c);
    c.env = tag.to_string();
    c.auth.jwt_secret = format!("test-secret-{tag}-0123456789abcdefghijklmnop");
    c.store.mysql_url = format!("{}/gochat_{tag}", mysql_server());
    c.store.max_connections = 10;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("{tag}:");
    c.kafka.brokers = kafka_brokers();
    c.kafka.namespace = format!("{tag}.");
    c.kafka.session_timeout_ms = 6_000;
    c.bus.partitions = 4;
    c.grpc.lease_ttl_secs = 5;
    c.log.format = "json".into();
    c.log.level = "info".into();
    c
}

impl Deployment {
    /// Writes the configuration, migrates, and starts `spec`'s processes
    /// (repo first, then logic and task, then the gateways).
    pub async fn start(spec: Spec, tweak: impl FnOnce(&mut Config)) -> Deployment {
        let tag = format!("t{}", gochat_infra::ids::random_token(8).to_lowercase());
        let config = deployment_config(&tag, tweak);
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("distributed-logs").join(&tag);
        std::fs::create_dir_all(&logs).expect("log dir");
        let coord = Coord::connect(&[etcd_endpoint()], &tag).await.expect("etcd reachable (deploy/dev-services.sh up)");
        coord.put_document("common", &serde_json::to_value(&config).expect("config json")).await.expect("config written");
        let mut d = Deployment { tag, procs: Vec::new(), logs };
        d.run_to_end(&["migrate"]).await;
        for i in 0..spec.repo {
            d.spawn("repo", i).await;
        }
        let mut middle = Vec::new();
        for i in 0..spec.logic {
            middle.push(("logic", i));
        }
        for i in 0..spec.task {
            middle.push(("task", i));
        }
        d.spawn_many(&middle).await;
        let gws: Vec<_> = (0..spec.gateways).map(|i| ("gateway", i)).collect();
        d.spawn_many(&gws).await;
        d
    }

    fn base_args(&self) -> Vec<String> {
        vec!["--etcd".into(), etcd_endpoint(), "--env".into(), self.tag.clone()]
    }

    /// Runs a one-shot `gochat` command against this deployment (60 s at most).
    async fn run(&self, args: &[&str]) -> (std::process::Output, Vec<String>) {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.base_args());
        let out = tokio::time::timeout(Duration::from_secs(60), Command::new(env!("CARGO_BIN_EXE_gochat")).args(&all).output())
            .await
            .expect("ends within 60 s")
            .expect("gochat runs");
        (out, all)
    }

    /// [`Deployment::run`] that must succeed; returns its stdout.
    pub async fn run_to_end(&self, args: &[&str]) -> String {
        let (out, all) = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "gochat {all:?} failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// [`Deployment::run`] that must fail; returns its stderr.
    pub async fn run_fails(&self, args: &[&str]) -> String {
        let (out, all) = self.run(args).await;
        assert!(!out.status.success(), "gochat {all:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn command(&self, service: &str, id: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gochat"));
        cmd.arg(service).args(self.base_args()).args(["--instance-id", id]);
        match service {
            "gateway" => cmd.args(["--http-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--shards", "1"]),
            "task" => cmd.args(["--metrics-addr", "127.0.0.1:0"]),
            _ => cmd.args(["--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]),
        };
        let log = std::fs::File::create(self.logs.join(format!("{id}.log"))).expect("log file");
        cmd.stdout(Stdio::piped()).stderr(log).env("RUST_BACKTRACE", "1").env_remove("GOCHAT_LOG").kill_on_drop(true);
        cmd
    }

    /// Starts process `n` of `service` and waits until it is ready; returns its index.
    pub async fn spawn(&mut self, service: &'static str, n: usize) -> usize {
        self.spawn_many(&[(service, n)]).await[0]
    }

    /// Starts several processes at once and waits until each says `ready`.
    async fn spawn_many(&mut self, which: &[(&'static str, usize)]) -> Vec<usize> {
        let mut starting = Vec::new();
        for (service, n) in which {
            let id = format!("{service}-{n}-{}", self.tag);
            let child = self.command(service, &id).spawn().expect("gochat starts");
            starting.push((*service, id, child));
        }
        let logs = self.logs.clone();
        let ready = futures::future::join_all(starting.into_iter().map(|(service, id, child)| {
            let logs = logs.clone();
            async move { wait_ready(service, id, child, &logs).await }
        }))
        .await;
        let mut idx = Vec::new();
        for p in ready {
            idx.push(self.procs.len());
            self.procs.push(p);
        }
        idx
    }

    /// What process `idx` has logged so far (JSON lines).
    pub fn log_of(&self, idx: usize) -> String {
        std::fs::read_to_string(self.logs.join(format!("{}.log", self.procs[idx].id))).unwrap_or_default()
    }

    /// Index of the `n`th process of `service`.
    pub fn find(&self, service: &str, n: usize) -> usize {
        let id = format!("{service}-{n}-{}", self.tag);
        self.procs.iter().position(|p| p.id == id).unwrap_or_else(|| panic!("no process {id}"))
    }

    /// `kill -9`.
    pub async fn kill9(&mut self, idx: usize) {
        if let Some(mut c) = self.procs[idx].child.take() {
            c.kill().await.expect("kill -9");
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn terminate(&mut self, idx: usize) {
        if let Some(mut c) = self.procs[idx].child.take() {
            let pid = c.id().expect("pid");
            let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
            assert!(status.success());
            let exit = tokio::time::timeout(Duration::from_secs(30), c.wait()).await.expect("stops within 30 s").expect("wait");
            assert!(exit.success(), "{} exits cleanly on SIGTERM: {exit}", self.procs[idx].id);
        }
    }

    /// Starts a stopped process again with the same instance id.
    pub async fn restart(&mut self, idx: usize) {
        let (service, id) = (self.procs[idx].service, self.procs[idx].id.clone());
        let child = self.command(service, &id).spawn().expect("gochat starts");
        self.procs[idx] = wait_ready(service, id, child, &self.logs).await;
    }

    pub fn gateways(&self) -> Vec<&Proc> {
        self.procs.iter().filter(|p| p.service == "gateway" && p.child.is_some()).collect()
    }

    /// A client of this deployment: HTTP on the first gateway, WebSockets on all in turn.
    pub fn app(&self) -> TestApp {
        let gws = self.gateways();
        let ws: Vec<SocketAddr> = gws.iter().map(|g| g.addrs["ws"]).collect();
        let mut app = TestApp::external(&format!("http://{}", gws[0].addrs["http"]), &ws);
        app.more_metrics =
            self.procs.iter().filter(|p| p.child.is_some()).filter_map(|p| p.addrs.get("metrics")).map(|a| format!("http://{a}")).collect();
        app
    }

    /// A client that talks only to gateway `n`.
    pub fn app_on(&self, n: usize) -> TestApp {
        let g = self.gateways()[n];
        TestApp::external(&format!("http://{}", g.addrs["http"]), &[g.addrs["ws"]])
    }

    pub async fn coord(&self) -> Coord {
        Coord::connect(&[etcd_endpoint()], &self.tag).await.expect("etcd")
    }
}

async fn wait_ready(service: &'static str, id: String, mut child: Child, logs: &std::path::Path) -> Proc {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addrs = HashMap::new();
    let found = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [_, _, "ready"] => return true,
                [_, _, what, addr] => {
                    if let Ok(a) = addr.parse() {
                        addrs.insert(what.to_string(), a);
                    }
                }
                _ => {}
            }
        }
        false
    })
    .await;
    if found != Ok(true) {
        let log = std::fs::read_to_string(logs.join(format!("{id}.log"))).unwrap_or_default();
        let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!("{id} did not become ready ({found:?}); log tail:\n{tail}");
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc { service, id, addrs, child: Some(child) }
}

/// Starts a standard deployment with `tweak` and returns a client holding it.
pub async fn spawn_deployment(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let d = Deployment::start(STANDARD, tweak).await;
    let app = d.app();
    app.wait_ready().await;
    app.with_guard(d)
}
