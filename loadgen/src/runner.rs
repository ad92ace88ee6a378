//! One process's run: build the plan, connect, send on a shared timeline,
//! drain, and count.
//!
//! With `--procs N` the parent builds the plan once, hands it to N children
//! of itself as a users file and synchronises them over their stdin/stdout
//! (see [`crate::procs`]); each child runs [`execute`] on its share of the
//! connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{Args, AuthMode, Scenario, parse_source_ips};
use crate::conn::{self, Ctx, Pacer, Timeline};
use crate::plan::{Plan, UsersFile};
use crate::provision::{self, Api};
use crate::report::{Part, Report};
use crate::stats::{Snapshot, Stats};
use crate::token::Minter;
use crate::{Error, procs};

/// Resolves `--ws` (`host:port`, optionally `ws://host:port[/ws]`).
pub async fn resolve_ws(ws: &str) -> Result<(SocketAddr, String), Error> {
    let host = ws.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_string();
    let addr = tokio::net::lookup_host(&host)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Usage(format!("--ws {ws}: not a reachable host:port")))?;
    Ok((addr, host))
}

fn minter(args: &Args) -> Result<Option<Minter>, Error> {
    match (&args.common.jwt_secret_file, args.common.auth) {
        (Some(f), _) => Minter::from_file(f).map(Some).map_err(|e| Error::Setup(format!("cannot read {}: {e}", f.display()))),
        (None, AuthMode::Secret) => Err(Error::Usage("--auth secret needs --jwt-secret-file".into())),
        (None, AuthMode::Http) => Ok(None),
    }
}

/// Builds the plan in the parent (or the only process); counts provisioning errors in `stats`.
pub async fn build_plan(args: &Args, stats: Arc<Stats>) -> Result<Plan, Error> {
    let c = &args.common;
    let api = Api::new(&c.http, stats);
    let mut plan = match (&c.users_file, c.auth) {
        (Some(f), _) => Plan::from_file(&args.scenario, &UsersFile::read(f)?)?,
        (None, AuthMode::Secret) => Plan::synthetic(&args.scenario)?,
        (None, AuthMode::Http) => {
            eprintln!("provisioning users through {} ...", c.http);
            provision::provision(&api, &args.scenario, c.http_concurrency).await?
        }
    };
    if c.auth == AuthMode::Http && plan.users.iter().any(|u| u.token.is_none()) {
        eprintln!("logging in {} users through {} ...", plan.users.len(), c.http);
        provision::login_all(&api, &mut plan, c.http_concurrency).await?;
    }
    Ok(plan)
}

/// The timeline once every connection is up.
fn timeline(args: &Args) -> Timeline {
    let c = &args.common;
    let start = Instant::now();
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    match args.scenario {
        Scenario::Connect { hold, .. } => {
            let end = start + secs(hold);
            Timeline { start, measure: start, send_end: start, end }
        }
        _ => {
            let measure = start + secs(c.warmup);
            let send_end = measure + secs(c.duration);
            Timeline { start, measure, send_end, end: send_end + secs(c.drain) }
        }
    }
}

/// Measured seconds of sending (or holding).
pub fn measured_seconds(args: &Args) -> f64 {
    match args.scenario {
        Scenario::Connect { hold, .. } => hold,
        _ => args.common.duration,
    }
}

/// Where progress goes: stderr lines, or `STAT` lines to a parent.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Alone { quiet: bool },
    Child,
}

/// Runs this process's share of `plan` and returns its counts.
async fn execute(args: &Args, plan: Plan, role: Role, provisioning: &Stats) -> Result<Part, Error> {
    let c = &args.common;
    let (addr, host) = resolve_ws(&c.ws).await?;
    let source_ips = c.source_ips.as_deref().map(parse_source_ips).transpose().map_err(Error::Usage)?;
    let (k, n) = (c.child_index.unwrap_or(0), c.child_count.max(1));
    let mine: Vec<usize> = (0..plan.users.len()).filter(|i| i % n == k).collect();
    if mine.len() > 19_500 {
        eprintln!("warning: {} connections in one process; the file-descriptor limit is about 20,000: use --procs", mine.len());
    }
    let stats = Arc::new(Stats::new(plan.convs.len()));
    stats.absorb_errors(provisioning);
    let ctx = Arc::new(Ctx {
        stats: stats.clone(),
        plan: Arc::new(plan),
        addr,
        host,
        minter: minter(args)?,
        source_ips,
        pacer: Pacer::new(c.connect_rate / n as f64),
        handshakes: Semaphore::new(c.connect_concurrency.max(1)),
    });
    let started = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (go_tx, go_rx) = watch::channel(None);
    let mut tasks = JoinSet::new();
    for &i in &mine {
        tasks.spawn(conn::run(ctx.clone(), i, ready_tx.clone(), go_rx.clone()));
    }
    drop(ready_tx);

    let mut progress = Progress::new(role, stats.clone(), started);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut done = 0;
    while done < mine.len() {
        tokio::select! {
            r = ready_rx.recv() => match r { Some(_) => done += 1, None => break },
            _ = tick.tick() => progress.print(),
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    if role == Role::Child {
        procs::child_ready();
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            tokio::select! {
                l = lines.next_line() => match l {
                    Ok(Some(l)) if l.trim() == "GO" => break,
                    Ok(Some(_)) => continue,
                    _ => return Err(Error::Setup("the parent went away before GO".into())),
                },
                _ = tick.tick() => progress.print(),
            }
        }
    }
    let tl = timeline(args);
    let _ = go_tx.send(Some(tl));
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = tick.tick() => progress.print(),
        }
    }
    Ok(Part::from_stats(&stats, connect_seconds))
}

/// A progress line per second.
struct Progress {
    role: Role,
    stats: Arc<Stats>,
    started: Instant,
    prev: (Snapshot, Instant),
}

impl Progress {
    fn new(role: Role, stats: Arc<Stats>, started: Instant) -> Progress {
        Progress { role, stats, started, prev: (Snapshot::default(), started) }
    }

    fn print(&mut self) {
        let now = Instant::now();
        let snap = self.stats.snapshot();
        match self.role {
            Role::Alone { quiet: true } => {}
            Role::Alone { quiet: false } => {
                let line = snap.progress_line(&self.prev.0, (now - self.started).as_secs_f64(), (now - self.prev.1).as_secs_f64());
                eprintln!("{line}");
            }
            Role::Child => procs::child_stat(&snap),
        }
        self.prev = (snap, now);
    }
}

/// Runs a whole load test (spawning children for `--procs > 1`) and returns the report.
pub async fn run(args: Args) -> Result<Report, Error> {
    let provisioning = Arc::new(Stats::new(0));
    let plan = build_plan(&args, provisioning.clone()).await?;
    if let Some(w) = plan.rate_warning() {
        eprintln!("{w}");
    }
    if args.common.procs > 1 {
        return procs::parent(&args, plan, &provisioning).await;
    }
    let part = execute(&args, plan, Role::Alone { quiet: args.common.quiet }, &provisioning).await?;
    Ok(Report::from_parts(args.scenario.name(), measured_seconds(&args), &[part]))
}

/// A child of `--procs`: runs its share and writes its counts to stdout.
pub async fn run_child(args: Args) -> Result<(), Error> {
    let f = args.common.users_file.as_ref().ok_or_else(|| Error::Usage("a child needs --users-file".into()))?;
    let plan = Plan::from_file(&args.scenario, &UsersFile::read(f)?)?;
    let part = execute(&args, plan, Role::Child, &Stats::new(0)).await?;
    procs::child_part(&part);
    Ok(())
}
