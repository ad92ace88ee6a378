//! This binary's backend: the embedded app, in process, with a fresh data directory.

use gochat_infra::config::Config;

use crate::helpers::{TestApp, spawn_app_in};

pub async fn spawn(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    spawn_app_in(dir, tweak).await
}
