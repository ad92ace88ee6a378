#!/usr/bin/env bash
# The one test command (README "Test"; .ci/run calls exactly this).
#
# 1. Brings up the distributed mode's backends natively (deploy/dev-services.sh:
#    installs MariaDB, Redis, etcd, protoc with apt-get if missing, builds the
#    tansu broker once and caches it); stops them again at the end only if
#    none of them was running before (someone else's are left alone).
# 2. fmt, clippy (every feature, and the embedded-only build), then every
#    test of the workspace with every feature: the embedded suite, the store,
#    KV and bus behaviour suites against SQLite/memory and MySQL/Redis/Kafka,
#    and the distributed suite (real processes on those backends).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== backends"
# (Not `status | grep -q`: with pipefail, grep's early exit can make the
# pipeline fail by SIGPIPE and skip the start.)
backends=$(deploy/dev-services.sh status)
if [[ $backends != *running* ]]; then
    trap 'echo "== stopping backends"; deploy/dev-services.sh down' EXIT
fi
if [[ $backends == *stopped* ]]; then
    deploy/dev-services.sh up
fi
eval "$(deploy/dev-services.sh env)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all features)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== cargo clippy (embedded build: what 'gochat up' compiles)"
cargo clippy -p gochat --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --all-features --locked
