//! This binary's backend: a fresh distributed deployment per app.

use gochat_infra::config::Config;

use crate::helpers::TestApp;

pub async fn spawn(tweak: impl FnOnce(&mut Config)) -> TestApp {
    crate::deployment::spawn_deployment(tweak).await
}
