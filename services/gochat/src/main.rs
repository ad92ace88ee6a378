//! `gochat`: the GoChat server command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gochat_infra::config::{Config, EXIT_CONFIG, FlagOverrides};
use gochat_infra::shutdown::{self, Shutdown};

/// GoChat: an instant-messaging backend.
#[derive(Parser)]
#[command(name = "gochat", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in one process (SQLite, in-process bus): nothing else to install.
    Up(UpArgs),
    /// Bulk-create load-test users and conversations in a stopped server's data directory.
    Seed(SeedArgs),
    /// Live per-shard table of a running gateway (from its /admin/shards endpoint).
    Shards(ShardsArgs),
    /// Distributed mode: run a gateway (HTTP API + WebSocket shards).
    Gateway(NodeCli),
    /// Distributed mode: run a logic instance (business rules, upstream consumer).
    Logic(NodeCli),
    /// Distributed mode: run a repo instance (MySQL and Redis access).
    Repo(NodeCli),
    /// Distributed mode: run a task instance (persistence and fan-out consumers).
    Task(NodeCli),
    /// Distributed mode: create the database, apply migrations, create the Kafka topics.
    Migrate(EtcdArgs),
    /// Distributed mode: the configuration in etcd.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(clap::Args, Clone)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "GOCHAT_ETCD", default_value = "127.0.0.1:2379", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Environment name: the configuration lives under /gochat/config/<env>/.
    #[arg(long = "env", env = "GOCHAT_ENV", default_value = "dev")]
    environment: String,
}

#[derive(clap::Args, Clone)]
struct NodeCli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Unique instance id (names a gateway's downstream topic; keep it stable across restarts). Default: random.
    #[arg(long, env = "GOCHAT_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Gateway HTTP API address.
    #[arg(long, env = "GOCHAT_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Gateway WebSocket address.
    #[arg(long, env = "GOCHAT_WS_ADDR")]
    ws_addr: Option<SocketAddr>,
    /// Gateway WebSocket shards; 0 = one per core.
    #[arg(long, env = "GOCHAT_SHARDS")]
    shards: Option<usize>,
    /// gRPC address of logic (default 127.0.0.1:9000) or repo (127.0.0.1:9001).
    #[arg(long, env = "GOCHAT_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// /healthz and /metrics of logic (9093), repo (9091), task (9094).
    #[arg(long, env = "GOCHAT_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Push a configuration directory (e.g. deploy/config/dev) into etcd.
    Sync {
        dir: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the documents in etcd, or one service's resulting configuration.
    Get {
        /// gateway, logic, repo or task.
        service: Option<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Print the documents now and after every change.
    Watch {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(clap::Args)]
struct ShardsArgs {
    /// The gateway's HTTP address, e.g. http://127.0.0.1:8081.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    url: String,
    /// Seconds between two samples (the table shows rates over that window).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one table and exit.
    #[arg(long)]
    once: bool,
}

#[derive(clap::Args)]
struct UpArgs {
    /// HTTP API address (port 0 picks a free port).
    #[arg(long, env = "GOCHAT_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// WebSocket address (port 0 picks a free port).
    #[arg(long, env = "GOCHAT_WS_ADDR")]
    ws_addr: Option<SocketAddr>,
    /// Where the database, the bus log and the JWT secret live.
    #[arg(long, env = "GOCHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// WebSocket shards (pinned threads); 0 = one per core.
    #[arg(long, env = "GOCHAT_SHARDS")]
    shards: Option<usize>,
    /// TOML configuration file.
    #[arg(long, env = "GOCHAT_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SeedArgs {
    /// Data directory of a stopped `gochat up` (created if missing, JWT secret included).
    #[arg(long, env = "GOCHAT_DATA_DIR")]
    data_dir: PathBuf,
    /// Users to create (registered, one known password).
    #[arg(long)]
    users: usize,
    /// 1:1 chats over users 2p and 2p+1.
    #[arg(long, default_value_t = 0)]
    pairs: usize,
    /// Groups over consecutive blocks of --group-size users.
    #[arg(long, default_value_t = 0)]
    groups: usize,
    /// Members per group, the owner included.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// The first M users also join the world room.
    #[arg(long, default_value_t = 0)]
    room_members: usize,
    /// Where to write the users file for `gochat-loadgen --users-file`.
    #[arg(long)]
    out: PathBuf,
}

/// sysexits EX_UNAVAILABLE / EX_SOFTWARE.
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_FAILED: u8 = 70;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Err(e) => {
            // One line, like every other configuration error.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("gochat: invalid arguments: {first} (see gochat --help)");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match cli.command {
        Command::Up(args) => up(args),
        Command::Seed(args) => seed(args),
        Command::Shards(args) => shards(args),
        #[cfg(feature = "distributed")]
        other => distributed_main(other),
        #[cfg(not(feature = "distributed"))]
        _ => {
            eprintln!(
                "gochat: this build has no distributed mode; build it with `cargo build --release -p gochat --features distributed` (needs protoc)"
            );
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

#[cfg(feature = "distributed")]
fn distributed_main(command: Command) -> ExitCode {
    use gochat::distributed::{self, NodeArgs, Service};
    use gochat_infra::coord::Coord;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gochat: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let (service, cli) = match command {
        Command::Gateway(c) => (Service::Gateway, c),
        Command::Logic(c) => (Service::Logic, c),
        Command::Repo(c) => (Service::Repo, c),
        Command::Task(c) => (Service::Task, c),
        Command::Migrate(e) => {
            gochat_infra::telemetry::init_tracing(&Default::default());
            return report(runtime.block_on(async {
                let coord = Coord::connect(&e.etcd, &e.environment).await?;
                distributed::ops::migrate(&coord).await
            }));
        }
        Command::Config { command } => {
            return report(runtime.block_on(async {
                match command {
                    ConfigCommand::Sync { dir, etcd, dry_run } => {
                        // Refuse a bad directory before touching etcd.
                        distributed::ops::read_dir(&dir)?;
                        let coord = Coord::connect(&etcd.etcd, &etcd.environment).await?;
                        distributed::ops::sync(&coord, &dir, dry_run).await
                    }
                    ConfigCommand::Get { service, etcd } => {
                        let coord = Coord::connect(&etcd.etcd, &etcd.environment).await?;
                        distributed::ops::get(&coord, service.as_deref()).await
                    }
                    ConfigCommand::Watch { etcd } => {
                        let coord = Coord::connect(&etcd.etcd, &etcd.environment).await?;
                        distributed::ops::watch(&coord).await
                    }
                }
            }));
        }
        Command::Up(_) | Command::Seed(_) | Command::Shards(_) => return ExitCode::from(EXIT_FAILED),
    };
    let flags = FlagOverrides::new(cli.http_addr, cli.ws_addr, cli.shards, None).with_grpc(cli.grpc_addr, cli.metrics_addr);
    let args = NodeArgs { etcd: cli.etcd.etcd, env: cli.etcd.environment, instance_id: cli.instance_id, flags };
    let code = runtime.block_on(async move {
        let shutdown = Shutdown::new();
        let node = match distributed::start(service, args, shutdown.clone()).await {
            Ok(n) => n,
            Err(e) => {
                shutdown.trigger();
                eprintln!("gochat {}: {e}", service.name());
                return ExitCode::from(if e.is_config() { EXIT_CONFIG as u8 } else { EXIT_UNAVAILABLE });
            }
        };
        // One line per address, parsed by scripts and tests.
        for (what, addr) in &node.addrs {
            println!("{} {} {what} {addr}", service.name(), node.instance_id);
        }
        println!("{} {} ready", service.name(), node.instance_id);
        if node.run().await { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) }
    });
    // Do not wait forever for blocking work (a Kafka client leaving its group)
    // once the services have stopped or failed to start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    code
}

#[cfg(feature = "distributed")]
fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gochat: {e:#}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn shards(args: ShardsArgs) -> ExitCode {
    if !(0.1..=3600.0).contains(&args.interval) {
        eprintln!("gochat: invalid arguments: --interval must be between 0.1 and 3600 seconds");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gochat: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let interval = std::time::Duration::from_secs_f64(args.interval);
    match runtime.block_on(async {
        tokio::select! {
            r = gochat::shards::run(&args.url, interval, args.once) => r,
            _ = shutdown::signal() => Ok(()),
        }
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gochat: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn seed(args: SeedArgs) -> ExitCode {
    let spec = gochat::seed::Spec {
        users: args.users,
        pairs: args.pairs,
        groups: args.groups,
        group_size: args.group_size,
        room_members: args.room_members,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gochat: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let out = match runtime.block_on(gochat::seed::seed(&args.data_dir, spec)) {
        Ok(v) => v,
        Err(gochat::seed::SeedError::Spec(m)) => {
            eprintln!("gochat: invalid arguments: {m}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Err(e) => {
            eprintln!("gochat: seed failed: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    if let Err(e) = std::fs::write(&args.out, out.to_string()) {
        eprintln!("gochat: cannot write {}: {e}", args.out.display());
        return ExitCode::from(EXIT_FAILED);
    }
    println!("seeded {} users into {}; users file {}", args.users, args.data_dir.display(), args.out.display());
    println!("secret: {}", args.data_dir.join("jwt.secret").display());
    ExitCode::SUCCESS
}

fn up(args: UpArgs) -> ExitCode {
    let flags = FlagOverrides::new(args.http_addr, args.ws_addr, args.shards, args.data_dir);
    let config = match Config::load(args.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gochat: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    gochat_infra::telemetry::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gochat: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        let app = match gochat::embedded::build(config, shutdown.clone()).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("gochat: {e}");
                let code = if matches!(e, gochat::embedded::StartError::Platform(_)) { EXIT_UNAVAILABLE } else { EXIT_FAILED };
                return ExitCode::from(code);
            }
        };
        println!("GoChat is up");
        println!("  HTTP API:   http://{}/api", app.http_addr());
        println!("  WebSocket:  ws://{}/ws?token=<accessToken>", app.ws_addr());
        println!("  Health:     http://{}/healthz", app.http_addr());
        println!("  Metrics:    http://{}/metrics", app.http_addr());
        println!("Press Ctrl-C to stop.");
        let s = shutdown.clone();
        tokio::spawn(async move {
            shutdown::signal().await;
            tracing::info!("signal received; shutting down");
            s.trigger();
        });
        app.run_until_stopped().await;
        ExitCode::SUCCESS
    })
}
