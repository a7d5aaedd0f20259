#!/usr/bin/env bash
# Cold-fill benchmark: a blob not in the cache pulled through lancached, as 1 stream, as Ollama's
# part plan and as 16 concurrent whole-blob clients, at 64 MiB, 256 MiB and 1 GiB (COLD_4G=1 adds
# 4 GiB), from an upstream nginx over plain HTTP and over TLS (a throw-away CA, trusted by the
# cache through upstream.ca_file); against this box's sha256 rate measured in the same run, the
# direct download and docker-registry's proxy; plus the 1-stream hit's CPU against nginx. The work
# is done by cold.py next to this script (its docstring describes each row). Prints a summary and
# `RESULT key=value` lines (collected by scripts/bench.sh).
#   usage: scripts/bench/cold.sh
#   env:   RUNS=5 COLD_SIZES=64,256,1024 COLD_4G= LANCACHED_BIN=target/release/lancached
# Needs a release build (cargo build --release -p lancached), nginx with ssl, docker-registry,
# curl, openssl, python3. Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${LANCACHED_BIN:-$root/target/release/lancached}
for p in nginx docker-registry curl openssl python3; do
  command -v "$p" >/dev/null || { echo "cold.sh: $p is needed (scripts/bench.sh installs it)" >&2; exit 1; }
done
nginx -V 2>&1 | grep -q -- "--with-http_ssl_module" ||
  { echo "cold.sh: this nginx lacks http_ssl_module (install nginx-light or nginx-full)" >&2; exit 1; }
[ -x "$bin" ] || { echo "cold.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export LANCACHED_BIN=$bin
exec python3 "$here/cold.py"
