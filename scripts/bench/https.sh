#!/usr/bin/env bash
# HTTPS benchmark: cache hits over TLS, lancached's HTTPS listener vs nginx over TLS (same CA,
# same ECDSA P-256 key type, same TLS 1.3 cipher, same file in page cache): 1 stream and 16
# ranges, HTTP/1.1 and h2. The work is done by https_bench.py next to this script (its docstring
# says how); the client is examples/https_bench_client.rs, built here if missing. Prints a summary
# and `RESULT key=value` lines (collected by scripts/bench.sh).
#   usage: scripts/bench/https.sh
#   env:   RUNS=5 SIZE_MIB=1024 LANCACHED_BIN=target/release/lancached HTTPS_CLIENT=<path>
# Needs a release build, nginx with the ssl and http_v2 modules, openssl, python3. Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${LANCACHED_BIN:-$root/target/release/lancached}
client=${HTTPS_CLIENT:-$root/target/release/examples/https_bench_client}
for p in nginx openssl python3; do
  command -v "$p" >/dev/null || { echo "https.sh: $p is needed (scripts/bench.sh installs it)" >&2; exit 1; }
done
for m in http_ssl_module http_v2_module; do
  nginx -V 2>&1 | grep -q -- "--with-$m" ||
    { echo "https.sh: this nginx lacks $m (install nginx-light or nginx-full)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "https.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
if [ ! -x "$client" ]; then
  (cd "$root" && cargo build --release --example https_bench_client)
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export LANCACHED_BIN=$bin HTTPS_CLIENT=$client
exec python3 "$here/https_bench.py"
