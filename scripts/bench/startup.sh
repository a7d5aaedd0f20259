#!/usr/bin/env bash
# Start-up benchmark: exec -> READY=1 (sd_notify) with 10k cached blobs, with and without the
# access index present. The work is done by startup.py next to this script (its docstring says
# what is measured). Prints a summary and `RESULT key=value` lines.
#   env: RUNS=5 BLOBS=10000 LANCACHED_BIN=target/release/lancached
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${LANCACHED_BIN:-$here/../../target/release/lancached}
[ -x "$bin" ] || { echo "startup.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
export LANCACHED_BIN=$bin
exec python3 "$here/startup.py"
