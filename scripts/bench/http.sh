#!/usr/bin/env bash
# HTTP benchmark: cache hits vs nginx (sendfile), cold pulls vs the upstream and vs
# docker-registry's pull-through cache, a cold pull over a rate-limited veth link, upstream bytes
# for 16 concurrent cold pulls, and peak RSS at 200 and 1000 concurrent downloads. The work is
# done by http_bench.py next to this script (its docstring describes each part); this wrapper checks
# the tools. Prints a summary and `RESULT key=value` lines (collected by scripts/bench.sh).
#   usage: scripts/bench/http.sh
#   env:   RUNS=5 SIZE_MIB=1024 BYTES_MIB=256 LINK_MIB=256 LINK_RATE=1gbit
#          PARTS=hit,cold,link,bytes,rss LANCACHED_BIN=target/release/lancached
# Needs a release build (cargo build --release -p lancached), nginx, docker-registry, curl,
# python3, and for the link part root, iproute2 (ip, tc). Loopback and its own netns only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${LANCACHED_BIN:-$root/target/release/lancached}
for p in nginx docker-registry curl python3 ip tc; do
  command -v "$p" >/dev/null || { echo "http.sh: $p is needed (scripts/bench.sh installs it)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "http.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export LANCACHED_BIN=$bin
exec python3 "$here/http_bench.py"
