#!/usr/bin/env bash
# The one test command (README "Test"; .ci/run calls exactly this).
# Needs only the Rust toolchain and a C compiler: the embedded mode has no
# external services, and protobuf code is generated without a system protoc.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
