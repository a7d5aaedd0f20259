#!/usr/bin/env bash
# Hugging Face benchmark: the real huggingface_hub client downloading one repo through lancached
# (HF_ENDPOINT=http://CACHE/hf), through olah (PyPI, the usual HF mirror proxy) and straight from
# a stand-in Hub (nginx playing huggingface.co and its CDN): cold with CLIENTS concurrent clients
# (time and upstream bytes per repo byte), warm, and hits of the largest file over HTTP and TLS
# against nginx. The work is done by hf_bench.py next to this script (its docstring says how).
# Prints a summary and `RESULT key=value` lines (collected by scripts/bench.sh).
#   usage: scripts/bench/hf.sh
#   env:   RUNS=5 HF_CLIENTS=16 HF_LFS_MIB=192,64 LANCACHED_BIN=target/release/lancached
#          OLAH_BIN=<olah-cli; default: a venv in /var/tmp/lancache-olah, made here>
# Needs a release build, nginx (ssl, http_v2), curl, openssl, python3 with huggingface_hub
# (scripts/test-deps.sh installs it). Loopback only (127.0.0.1 and 127.0.0.2).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${LANCACHED_BIN:-$root/target/release/lancached}
client=${HTTPS_CLIENT:-$root/target/release/examples/https_bench_client}
for p in nginx curl openssl python3; do
  command -v "$p" >/dev/null || { echo "hf.sh: $p is needed (scripts/bench.sh installs it)" >&2; exit 1; }
done
python3 -c 'import huggingface_hub' 2>/dev/null ||
  { echo "hf.sh: huggingface_hub is needed: bash scripts/test-deps.sh" >&2; exit 1; }
[ -x "$bin" ] || { echo "hf.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
if [ ! -x "$client" ]; then
  (cd "$root" && cargo build --release -p lancached --example https_bench_client)
fi
# olah 0.5.4 pins its own dependency versions, so it gets a venv of its own.
olah_venv=/var/tmp/lancache-olah
if [ -z "${OLAH_BIN:-}" ] && [ ! -x "$olah_venv/bin/olah-cli" ]; then
  echo "hf.sh: installing olah 0.5.4 (PyPI) into $olah_venv" >&2
  python3 -m venv "$olah_venv" && "$olah_venv/bin/pip" install -q --disable-pip-version-check olah==0.5.4 ||
    echo "hf.sh: olah could not be installed; its rows are skipped" >&2
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export LANCACHED_BIN=$bin HTTPS_CLIENT=$client
exec python3 "$here/hf_bench.py"
