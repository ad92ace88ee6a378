//! `gochat-loadgen`: see the library docs and README.md.

use std::process::ExitCode;

use clap::Parser;
use gochat_loadgen::{Args, Error};

/// Something was lost or duplicated.
const EXIT_LOST: u8 = 1;
/// The run could not be carried out (bad flags, provisioning failed, ...).
const EXIT_SETUP: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gochat-loadgen: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let json = args.common.json.clone();
    if args.common.child_index.is_some() {
        return match runtime.block_on(gochat_loadgen::run_child(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gochat-loadgen (child): {e}");
                ExitCode::from(EXIT_SETUP)
            }
        };
    }
    let report = match runtime.block_on(gochat_loadgen::run(args)) {
        Ok(r) => r,
        Err(e) => {
            let kind = if matches!(e, Error::Usage(_)) { "usage" } else { "setup failed" };
            eprintln!("gochat-loadgen: {kind}: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    println!("{report}");
    if let Some(path) = json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|s| std::fs::write(&path, s + "\n").map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("gochat-loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_SETUP);
        }
    }
    if report.failed() { ExitCode::from(EXIT_LOST) } else { ExitCode::SUCCESS }
}
