#!/usr/bin/env bash
# Load test, loopback only, bounded: (a) CONNECTIONS=1000 wrk connections for DURATION=60 s on
# cache hits (ranged blob GETs and manifests) -> requests, errors (must be 0), throughput, peak
# RSS; (b) CLIENTS=50 Ollama-protocol clients pulling a mix of cold and warm models -> every
# blob verified, upstream sent each blob once. The work is done by load.py next to this script
# (its docstring has the details). Exits non-zero on any error.
#   usage: scripts/bench/load.sh         quick: DURATION=10 CLIENTS=10 scripts/bench/load.sh
#   env:   DURATION=60 CONNECTIONS=1000 CLIENTS=50 MODELS=10 LAYER_MIB=32 PARTS=hits,pulls
# Needs a release build (cargo build --release -p lancached), nginx, wrk, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${LANCACHED_BIN:-$here/../../target/release/lancached}
for p in nginx wrk python3; do
  command -v "$p" >/dev/null || { echo "load.sh: $p is needed (apt-get install $p)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "load.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
# 1000 client sockets in wrk, as many in lancached: both inherit this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export LANCACHED_BIN=$bin
exec timeout $(( ${DURATION:-60} + 900 )) python3 "$here/load.py"
