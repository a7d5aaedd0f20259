#!/usr/bin/env bash
# Benchmark of the data plane and the cold fill, side by side with nginx on this machine.
#
#   (a) cache hit of a 1 GiB blob: one stream, and 16 parallel ranges (as Ollama pulls), from
#       lancached vs nginx (sendfile on) serving the same file from the page cache; throughput
#       and server CPU-seconds per GiB served (from /proc/PID/stat, all server processes);
#   (b) cold pull of the blob through lancached (16 ranges, fill from upstream) vs the same 16
#       ranges straight from the same local upstream (nginx on loopback);
#   (c) peak RSS of lancached (VmHWM) during 200 concurrent ranged downloads of the cached blob.
#
# Median of RUNS (default 5) runs each; prints ratios. Needs: a release build
# (cargo build --release -p lancached), nginx, curl, python3. Only loopback is used.
#   usage: scripts/bench/http.sh            env: RUNS=5 SIZE_MIB=1024 LANCACHED_BIN=...
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export BENCH_BIN=${LANCACHED_BIN:-$root/target/release/lancached}
export BENCH_RUNS=${RUNS:-5}
export BENCH_SIZE_MIB=${SIZE_MIB:-1024}
for p in nginx curl python3 sha256sum; do
  command -v "$p" >/dev/null || { echo "http.sh: $p is needed" >&2; exit 1; }
done
[ -x "$BENCH_BIN" ] || { echo "http.sh: build first: cargo build --release -p lancached" >&2; exit 1; }
exec python3 - <<'PY'
import os, subprocess, tempfile, time, statistics, socket, shutil, signal, sys

BIN = os.environ["BENCH_BIN"]; RUNS = int(os.environ["BENCH_RUNS"]); SIZE = int(os.environ["BENCH_SIZE_MIB"]) << 20
GIB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")
work = tempfile.mkdtemp(prefix="lancache-bench-")
procs = []

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def cleanup():
    for p in procs:
        try: p.kill(); p.wait()
        except Exception: pass
    shutil.rmtree(work, ignore_errors=True)

def cpu_of(pids):
    t = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return t / TICK

def tree(pid):
    out = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except Exception:
                continue
            if ppid == pid: out.append(int(d))
    return out

def wait_port(port):
    for _ in range(200):
        try: socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")

def curl(url, rng=None):
    cmd = ["curl", "-sf", "-o", "/dev/null", url]
    if rng: cmd[1:1] = ["-r", rng]
    return subprocess.Popen(cmd)

def fetch(url, parts):
    """Downloads SIZE bytes from url as `parts` parallel ranges; returns seconds."""
    t = time.monotonic()
    if parts == 1:
        ps = [curl(url)]
    else:
        step = SIZE // parts
        ps = [curl(url, f"{i*step}-{SIZE-1 if i == parts-1 else (i+1)*step-1}") for i in range(parts)]
    for p in ps:
        if p.wait() != 0: raise SystemExit(f"curl failed on {url}")
    return time.monotonic() - t

def measure(url, parts, pids_fn, before_each=None):
    rates, cpus = [], []
    for _ in range(RUNS):
        if before_each: before_each()
        pids = pids_fn(); c0 = cpu_of(pids)
        dt = fetch(url, parts)
        c1 = cpu_of(pids)
        rates.append(SIZE / GIB / dt); cpus.append((c1 - c0) / (SIZE / GIB))
    return statistics.median(rates), statistics.median(cpus)

try:
    blob = os.path.join(work, "blob")
    subprocess.run(["head", "-c", str(SIZE), "/dev/urandom"], stdout=open(blob, "wb"), check=True)
    hexd = subprocess.run(["sha256sum", blob], capture_output=True, text=True).stdout.split()[0]
    digest = "sha256:" + hexd
    cache = os.path.join(work, "cache"); os.makedirs(cache + "/blobs")
    upstream_dir = os.path.join(work, "upstream"); os.makedirs(upstream_dir)
    shutil.copy(blob, os.path.join(upstream_dir, "blob"))
    os.rename(blob, os.path.join(cache, "blobs", "sha256-" + hexd))

    # nginx: serves the cache's blob (hit baseline) and plays the upstream registry (cold pull).
    np_, up = free_port(), free_port()
    conf = os.path.join(work, "nginx.conf")
    open(conf, "w").write(f"""
user root; worker_processes auto; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_timeout 30;
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{np_}; root {cache}; }}
  server {{ listen 127.0.0.1:{up};
    location ~ ^/v2/.+/blobs/sha256:[0-9a-f]+$ {{ alias {upstream_dir}/blob; }}
  }}
}}""")
    ng = subprocess.Popen(["nginx", "-c", conf, "-p", work]); procs.append(ng)
    lp = free_port()
    cfg = os.path.join(work, "lancached.toml")
    open(cfg, "w").write(f"""
[cache]
dir = "{cache}"
[upstream]
resolvers = []
[upstream.registries]
"registry.ollama.ai" = "http://127.0.0.1:{up}"
[dns]
listen = []
[http]
listen = ["127.0.0.1:{lp}"]
[tls]
listen = []
ca_dir = "{work}/ca"
[control]
socket = "{work}/ctl.sock"
[log]
filter = "warn"
""")
    env = dict(os.environ); env.pop("NOTIFY_SOCKET", None); env.pop("LISTEN_FDS", None)
    lc = subprocess.Popen([BIN, "--config", cfg], env=env); procs.append(lc)
    for p in (np_, up, lp): wait_port(p)
    subprocess.run(["cat", os.path.join(cache, "blobs", "sha256-" + hexd)], stdout=subprocess.DEVNULL)

    nginx_url = f"http://127.0.0.1:{np_}/blobs/sha256-{hexd}"
    lc_url = f"http://127.0.0.1:{lp}/blobs/{digest}"
    ng_pids = lambda: tree(ng.pid)
    lc_pids = lambda: [lc.pid]
    res = {}
    for parts in (1, 16):
        res[("nginx", parts)] = measure(nginx_url, parts, ng_pids)
        res[("lancached", parts)] = measure(lc_url, parts, lc_pids)

    print(f"(a) cache hit, {SIZE >> 20} MiB blob in page cache, median of {RUNS}")
    print(f"    {'server':10} {'streams':>7} {'GiB/s':>7} {'CPU-s/GiB':>10}")
    for (name, parts), (rate, cpu) in sorted(res.items()):
        print(f"    {name:10} {parts:7} {rate:7.2f} {cpu:10.3f}")
    for parts in (1, 16):
        (rn, cn), (rl, cl) = res[("nginx", parts)], res[("lancached", parts)]
        print(f"    {parts:2} stream(s): throughput lancached/nginx = {rl/rn:.2f}x, CPU per GiB lancached/nginx = {cl/max(cn,1e-9):.2f}x")

    # (b) cold pull: 16 ranges, the blob removed from the cache before each run.
    blobfile = os.path.join(cache, "blobs", "sha256-" + hexd)
    def make_cold():
        try: os.remove(blobfile)
        except FileNotFoundError: pass
        for f in os.listdir(os.path.join(cache, ".lancached", "partial")) if os.path.isdir(os.path.join(cache, ".lancached", "partial")) else []:
            os.remove(os.path.join(cache, ".lancached", "partial", f))
        subprocess.run(["cat", os.path.join(upstream_dir, "blob")], stdout=subprocess.DEVNULL)
    def wait_published():
        for _ in range(600):
            if os.path.exists(blobfile): return
            time.sleep(0.05)
        raise SystemExit("cold fill never published")
    direct_url = f"http://127.0.0.1:{up}/v2/library/bench/blobs/{digest}"
    cold_url = lc_url + "?registry=registry.ollama.ai&repo=library/bench"
    direct = measure(direct_url, 16, ng_pids)
    cold_rates = []
    for _ in range(RUNS):
        make_cold()
        dt = fetch(cold_url, 16)
        wait_published()
        cold_rates.append(SIZE / GIB / dt)
    cold = statistics.median(cold_rates)
    print(f"(b) cold pull, 16 ranges: direct from upstream {direct[0]:.2f} GiB/s, through lancached {cold:.2f} GiB/s -> {cold/direct[0]:.2f}x")

    # (c) peak RSS with 200 concurrent ranged downloads of 16 MiB each.
    step = min(16 << 20, SIZE // 200)
    # Published blobs are served from a shared mapping: its page-cache pages count in RSS as
    # RssFile (shared, evictable), so anonymous memory (RssAnon) is what the daemon itself holds.
    def status(key):
        return int([l for l in open(f"/proc/{lc.pid}/status") if l.startswith(key)][0].split()[1])
    ps = [curl(lc_url, f"{i*step}-{(i+1)*step-1}") for i in range(200)]
    peak_anon = 0
    while any(p.poll() is None for p in ps):
        peak_anon = max(peak_anon, status("RssAnon:")); time.sleep(0.02)
    print(f"(c) 200 concurrent downloads: lancached peak RssAnon {peak_anon/1024:.1f} MiB (VmHWM incl. mapped page cache {status('VmHWM:')/1024:.1f} MiB)")
finally:
    cleanup()
PY
