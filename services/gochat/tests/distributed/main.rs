//! The distributed mode, end to end: the behaviour suite of the embedded
//! mode (the same modules, compiled again with a distributed backend)
//! against deployments of 2 gateways, 2 logic, 1 repo and 2 task processes,
//! plus what only a distributed deployment can show: crossing gateways,
//! instances dying and restarting, configuration changing in etcd.
//!
//! Needs the backends of `deploy/dev-services.sh up` (the README test
//! command starts them) and the `distributed` feature.

mod backend;
mod deployment;
mod faults;

// The behaviour suite, shared with tests/api (embedded).
#[path = "../api/auth.rs"]
mod auth;
#[path = "../api/conversations.rs"]
mod conversations;
#[path = "../api/friends.rs"]
mod friends;
#[path = "../api/helpers.rs"]
#[allow(dead_code, reason = "the embedded-only helpers (restart, push) are unused here")]
mod helpers;
#[path = "../api/http_contract.rs"]
mod http_contract;
#[path = "../api/messaging.rs"]
mod messaging;
#[path = "../api/ws_protocol.rs"]
mod ws_protocol;
