#!/usr/bin/env bash
# The test command: installs what the tests need, builds once (and builds the .deb/.rpm the
# package tests check), then runs the whole suite (unit tests and the single integration-test
# binary) with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
profile=default; [ "${CI:-}" = "true" ] && profile=ci
cargo build --workspace --all-targets --locked
# The package tests (tests/packaging.rs) check what these two produce; both are cached/cheap
# on a second run: the chroot tarball is kept, and the release build is incremental.
bash scripts/bookworm-chroot.sh
bash scripts/package.sh
cargo nextest run --workspace --locked --profile "$profile" "$@"
