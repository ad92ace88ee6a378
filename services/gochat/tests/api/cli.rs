//! The `gochat` command line: help, and one-line errors with exit code 64.

use std::process::Command;

fn gochat(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gochat"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("gochat runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_command_has_help() {
    let (code, out, _) = gochat(&["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("up"), "{out}");
    let (code, out, _) = gochat(&["up", "--help"], &[]);
    assert_eq!(code, Some(0));
    for flag in ["--http-addr", "--ws-addr", "--data-dir", "--shards", "--config"] {
        assert!(out.contains(flag), "{flag} in {out}");
    }
}

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "[ws]\nheartbeat_secs = \"often\"\n").expect("write");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf8");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec!["up", "--config", bad_file.to_str().expect("utf8"), "--data-dir", data], vec![]),
        (vec!["up", "--config", "/nonexistent/gochat.toml", "--data-dir", data], vec![]),
        (vec!["up", "--data-dir", data], vec![("GOCHAT_WS__SHARDS", "100000")]),
        (vec!["up", "--data-dir", data], vec![("GOCHAT_CHAT__LARGE_GROUP_THRESHOLD", "lots")]),
        (vec!["up", "--http-addr", "not-an-address", "--data-dir", data], vec![]),
        (vec!["launch"], vec![]),
    ];
    for (args, envs) in cases {
        let (code, _, err) = gochat(&args, &envs);
        assert_eq!(code, Some(64), "{args:?} {envs:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("gochat: "), "{err}");
    }
}

#[tokio::test]
async fn gochat_shards_prints_a_table_of_a_running_gateway() {
    let app = crate::helpers::spawn_app().await;
    let a = app.user("alice").await;
    let _ws = app.ws(&a).await;
    let base = app.base.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || gochat(&["shards", "--url", &base, "--interval", "0.2", "--once"], &[])).await.expect("joined");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("frames_out/s"), "{out}");
    let row = out.lines().find(|l| l.trim_start().starts_with("0 ")).unwrap_or_else(|| panic!("shard row in {out}"));
    assert_eq!(row.split_whitespace().nth(1), Some("1"), "one connection: {out}");
    let (code, _, err) = gochat(&["shards", "--url", "http://127.0.0.1:9", "--once"], &[]);
    assert_eq!(code, Some(69), "unreachable gateway: {err}");
    assert!(err.contains("cannot reach"), "{err}");
}
