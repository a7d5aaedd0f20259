#!/usr/bin/env bash
# The test command: installs what the tests need, then builds once and runs the whole suite
# (unit tests and the single integration-test binary) with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
profile=default; [ "${CI:-}" = "true" ] && profile=ci
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --profile "$profile" "$@"
