#!/usr/bin/env bash
# Where a cold fill's CPU goes: perf record on lancached during cold one-stream pulls from a
# local nginx over plain HTTP or TLS; prints CPU-s per GiB and perf's flat profile. The work is
# done by cold_profile.py next to this script. Not a part of scripts/bench.sh (a profile, not
# a figure against an anchor); docs/proxy.md quotes its output.
#   usage: scripts/bench/cold_profile.sh
#   env:   PROF_MODE=cold or hit, PROF_UPSTREAM=http or tls, PROF_MIB=1024 PROF_PULLS=3
#          PROF_OUT=/tmp/lancache-cold.perf.data
#          LANCACHED_BIN=target/release/lancached
# Needs root (perf), a release build, nginx, curl, openssl, python3. Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${LANCACHED_BIN:-$root/target/release/lancached}
for p in perf nginx curl openssl python3; do
  command -v "$p" >/dev/null || { echo "cold_profile.sh: $p is needed" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "cold_profile.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
export LANCACHED_BIN=$bin
exec python3 "$here/cold_profile.py"
