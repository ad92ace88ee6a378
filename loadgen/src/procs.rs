//! `--procs N`: the same run spread over N child processes of this program,
//! for more connections than one process may hold open files.
//!
//! The parent writes the plan (users, tokens, conversations) to a temporary
//! users file and starts each child with `--child-index k --child-count N`.
//! Children talk back on stdout, one line each:
//!
//! | line | when |
//! |---|---|
//! | `READY` | its connections are up (or failed) |
//! | `STAT <json Snapshot>` | every second |
//! | `PART <json Part>` | at the end: its raw counts |
//!
//! When every child is `READY` the parent writes `GO` to all stdins at once,
//! so all senders share one timeline; the report merges the parts.

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Error;
use crate::cli::{Args, AuthMode};
use crate::plan::Plan;
use crate::report::{Part, Report};
use crate::runner::measured_seconds;
use crate::stats::{Snapshot, Stats};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Child → parent: connections are up.
pub fn child_ready() {
    say("READY");
}

/// Child → parent: progress.
pub fn child_stat(s: &Snapshot) {
    say(&format!("STAT {}", serde_json::to_string(s).unwrap_or_default()));
}

/// Child → parent: final counts.
pub fn child_part(p: &Part) {
    say(&format!("PART {}", serde_json::to_string(p).unwrap_or_default()));
}

/// The argv of child `k` of `n`.
fn child_argv(args: &Args, users_file: &std::path::Path, k: usize, n: usize) -> Vec<String> {
    let c = &args.common;
    let mut v = args.scenario.argv();
    let mut push = |key: &str, val: String| {
        v.push(format!("--{key}"));
        v.push(val);
    };
    push("ws", c.ws.clone());
    push("http", c.http.clone());
    push("auth", if c.auth == AuthMode::Secret { "secret" } else { "http" }.into());
    if let Some(f) = &c.jwt_secret_file {
        push("jwt-secret-file", f.display().to_string());
    }
    push("users-file", users_file.display().to_string());
    push("duration", c.duration.to_string());
    push("warmup", c.warmup.to_string());
    push("drain", c.drain.to_string());
    if let Some(s) = &c.source_ips {
        push("source-ips", s.clone());
    }
    push("connect-rate", c.connect_rate.to_string());
    push("connect-concurrency", c.connect_concurrency.to_string());
    push("child-index", k.to_string());
    push("child-count", n.to_string());
    v
}

enum Line {
    Ready,
    Stat(Snapshot),
    Part(Box<Part>),
    Exited,
}

/// Removes the hand-off file however the run ends.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `plan` over `--procs` children and merges their reports.
pub async fn parent(args: &Args, plan: Plan, provisioning: &Stats) -> Result<Report, Error> {
    let n = args.common.procs;
    let file = TempFile(std::env::temp_dir().join(format!("gochat-loadgen-{}-{}.json", std::process::id(), crate::run_tag())));
    plan.to_file(&args.scenario).write(&file.0)?;
    let exe = std::env::current_exe().map_err(|e| Error::Setup(format!("cannot find my own executable: {e}")))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Line)>();
    let mut stdins = Vec::new();
    let mut children = Vec::new();
    for k in 0..n {
        let mut child = Command::new(&exe)
            .args(child_argv(args, &file.0, k, n))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot start child {k}: {e}")))?;
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().ok_or_else(|| Error::Setup("child without stdout".into()))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let parsed = if l == "READY" {
                    Some(Line::Ready)
                } else if let Some(j) = l.strip_prefix("STAT ") {
                    serde_json::from_str(j).ok().map(Line::Stat)
                } else if let Some(j) = l.strip_prefix("PART ") {
                    serde_json::from_str(j).ok().map(|p| Line::Part(Box::new(p)))
                } else {
                    None
                };
                if let Some(p) = parsed {
                    let _ = tx.send((k, p));
                }
            }
            let _ = tx.send((k, Line::Exited));
        });
        children.push(child);
    }
    drop(tx);

    let started = Instant::now();
    let mut ready = vec![false; n];
    let mut exited = vec![false; n];
    let mut parts: HashMap<usize, Part> = HashMap::new();
    let mut stats: Vec<Snapshot> = vec![Snapshot::default(); n];
    let mut prev = (Snapshot::default(), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut go_sent = false;
    while exited.iter().any(|e| !e) {
        tokio::select! {
            m = rx.recv() => {
                let Some((k, line)) = m else { break };
                match line {
                    Line::Ready => ready[k] = true,
                    Line::Stat(s) => stats[k] = s,
                    Line::Part(p) => { parts.insert(k, *p); }
                    Line::Exited => exited[k] = true,
                }
            }
            _ = tick.tick() => {
                if !args.common.quiet {
                    let now = Instant::now();
                    let total = stats.iter().fold(Snapshot::default(), |a, s| a.merge(*s));
                    eprintln!("{}", total.progress_line(&prev.0, (now - started).as_secs_f64(), (now - prev.1).as_secs_f64()));
                    prev = (total, now);
                }
            }
        }
        if !go_sent && (0..n).all(|k| ready[k] || exited[k]) {
            go_sent = true;
            for s in stdins.iter_mut().flatten() {
                let _ = s.write_all(b"GO\n").await;
                let _ = s.flush().await;
            }
        }
    }
    for mut c in children {
        let _ = c.wait().await;
    }
    let mut all: Vec<Part> = (0..n).filter_map(|k| parts.remove(&k)).collect();
    let missing = n - all.len();
    let mut extra = Part::from_stats(provisioning, 0.0);
    if missing > 0 {
        *extra.errors.entry("CHILD_FAILED".into()).or_insert(0) += missing as u64;
    }
    all.push(extra);
    let mut r = Report::from_parts(args.scenario.name(), measured_seconds(args), &all);
    r.procs = n;
    Ok(r)
}
