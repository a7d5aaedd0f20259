#!/usr/bin/env bash
# Upstream bandwidth cap benchmark: with `upstream.max_rate` at CAP (100Mbit) over unshaped
# loopback, the upstream rate averaged over a ~30 s cold fill against the cap, and cache-hit
# throughput while that capped fill runs against hits with nothing running. The work is done by
# uplink.py next to this script (its docstring describes it). Prints a summary and
# `RESULT key=value` lines (collected by scripts/bench.sh).
#   usage: scripts/bench/uplink.sh
#   env:   RUNS=5 CAP=100Mbit UPLINK_MIB=360 HIT_MIB=256 LANCACHED_BIN=target/release/lancached
# Needs a release build, nginx, curl and python3. Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${LANCACHED_BIN:-$root/target/release/lancached}
for p in nginx curl python3; do
  command -v "$p" >/dev/null || { echo "uplink.sh: $p is needed (scripts/bench.sh installs it)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "uplink.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
export LANCACHED_BIN=$bin
exec python3 "$here/uplink.py"
