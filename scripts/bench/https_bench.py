"""The HTTPS side of the benchmark (run through scripts/bench/https.sh): a cache hit of the
SIZE_MIB blob (page cache warm) over TLS, lancached's HTTPS listener against nginx over TLS
serving the same file, as 1 stream and as 16 parallel ranges, over HTTP/1.1 (one connection per
range) and over h2 (all ranges on one connection, as Go's client does when ALPN offers h2).

Both servers present an ECDSA P-256 leaf for registry.ollama.ai signed by the same CA (the
cache's own, created at lancached's first start; nginx's leaf is issued from it with openssl),
speak TLS 1.3 only to the client, and the client offers Go's cipher order (AES-128-GCM first), so
both negotiate TLS_AES_128_GCM_SHA256; the client prints what was negotiated and the run fails
if the two servers differ. The client is examples/https_bench_client.rs (rustls, hyper), which
advertises Go's h2 windows (4 MiB per stream, 1 GiB per connection) and frame size (1 MiB; one
more h2 case keeps the 16 KiB default, as Go before 1.24 does).

Server CPU is every server thread's on-CPU time from /proc/PID/task/*/schedstat (nginx: master
and workers). Each figure is the median of RUNS runs; the two servers alternate run by run.
Prints a readable summary and `RESULT key=value` lines."""

import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, RUNS, ROOT, Lancached, cleanup, cpu_of, free_port, issue_leaf,
                      median, random_file, raise_nofile, result, spawn, tree, wait_port, warm,
                      workdir)

SIZE = int(os.environ.get("SIZE_MIB", "1024")) * MIB
CLIENT = os.environ.get("HTTPS_CLIENT") or os.path.join(ROOT, "target/release/examples/https_bench_client")
NAME = "registry.ollama.ai"
# (protocol, streams, the client's SETTINGS_MAX_FRAME_SIZE) in the order they run. Go since 1.24
# advertises 1 MiB frames; older Go (Ollama 0.5.4's) advertises nothing, i.e. 16 KiB.
CASES = [("h1", 1, 0), ("h1", 16, 0), ("h2", 1, 1 << 20), ("h2", 16, 1 << 20), ("h2", 16, 16384)]


def case_key(proto, parts, frame):
    return f"{proto}.{parts}" + (".f16k" if frame == 16384 else "")


def say(msg):
    print(msg, flush=True)


def nginx_leaf(work, ca_dir, name=NAME):
    """An ECDSA P-256 leaf for `name` from the cache's CA, like the ones lancached issues."""
    return issue_leaf(work, os.path.join(ca_dir, "ca.crt"), os.path.join(ca_dir, "ca.key"), name,
                      prefix="nginx-tls")


class NginxTls:
    """nginx 1.22 over TLS: `listen ssl http2` (ALPN h2 and http/1.1 on one port), TLS 1.3, the
    distribution's defaults otherwise (ssl_buffer_size 16k, http2_chunk_size 8k, output_buffers
    2 32k; sendfile does not apply to TLS without kTLS). NGINX_TLS_EXTRA adds directives to the
    server block, to check a tuned anchor."""

    def __init__(self, work, root, crt, key):
        self.work, self.port = work, free_port()
        self.conf = os.path.join(work, "nginx-tls.conf")
        open(self.conf, "w").write(f"""
user root; worker_processes auto; daemon off; pid {work}/nginx-tls.pid; error_log {work}/nginx-tls.err;
events {{ worker_connections 1024; }}
http {{
  sendfile on; tcp_nopush on; keepalive_timeout 30; access_log off;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{self.port} ssl http2 reuseport;
    ssl_certificate {crt}; ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    root {root};{os.environ.get("NGINX_TLS_EXTRA", "")}
  }}
}}""")

    def start(self):
        self.proc = spawn(["nginx", "-c", self.conf, "-p", self.work])
        wait_port(self.port)
        return self

    def pids(self):
        return tree(int(open(os.path.join(self.work, "nginx-tls.pid")).read()))


def client_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fetch(port, path, ca, proto, parts, suites="go", max_frame="1048576", sni=NAME, size=None):
    """One download with the bench client (`sni` is also the Host it sends); returns (seconds,
    cipher, client CPU-s)."""
    c0 = client_cpu()
    out = subprocess.run([CLIENT, "--addr", f"127.0.0.1:{port}", "--sni", sni, "--ca", ca,
                          "--path", path, "--size", str(size or SIZE), "--parts", str(parts),
                          "--proto", proto, "--suites", suites,
                          "--max-frame", max_frame], check=True, capture_output=True, text=True).stdout
    kv = dict(f.split("=", 1) for f in out.split())
    return float(kv["seconds"]), kv["cipher"], client_cpu() - c0


def main():
    raise_nofile()
    if not os.access(CLIENT, os.X_OK):
        raise SystemExit(f"https_bench.py: build the client first: cargo build --release --example https_bench_client")
    work = workdir()
    cache = os.path.join(work, "cache")
    os.makedirs(os.path.join(cache, "blobs"))
    blob = os.path.join(work, "blob")
    hexd = random_file(blob, SIZE)
    os.rename(blob, os.path.join(cache, "blobs", "sha256-" + hexd))
    # No upstream is needed for hits; the registry entry only has to parse.
    lc = Lancached(work, "http://127.0.0.1:9", cache=cache, tls_port=free_port()).start()
    ca = os.path.join(lc.ca_dir, "ca.crt")
    crt, key = nginx_leaf(work, lc.ca_dir)
    ng = NginxTls(work, cache, crt, key).start()
    warm(lc.blob_path(hexd))
    servers = (("nginx", ng.port, f"/blobs/sha256-{hexd}", ng.pids),
               ("lancached", lc.tls_port, f"/blobs/sha256:{hexd}", lambda: [lc.pid]))
    res, ciphers = {}, {}
    for _ in range(RUNS):
        for proto, parts, frame in CASES:
            for name, port, path, pids in servers:
                p = pids()
                c0 = cpu_of(p)
                dt, cipher, ccpu = fetch(port, path, ca, proto, parts, max_frame=str(frame or 1 << 20))
                c1 = cpu_of(p)
                ciphers.setdefault(name, set()).add(cipher)
                r = res.setdefault((name, case_key(proto, parts, frame)), ([], [], []))
                r[0].append(SIZE / GIB / dt)
                r[1].append((c1 - c0) / (SIZE / GIB))
                r[2].append(ccpu / (SIZE / GIB))
    if ciphers["nginx"] != ciphers["lancached"] or len(ciphers["nginx"]) != 1:
        raise SystemExit(f"the servers negotiated different cipher suites: {ciphers}")
    say(f"(https) {SIZE >> 20} MiB blob in page cache over TLS 1.3 ({ciphers['nginx'].pop()}, "
        f"ECDSA P-256 leaf), median of {RUNS}")
    say(f"    {'server':10} {'case':>9} {'GiB/s':>7} {'CPU-s/GiB':>10} {'client CPU-s/GiB':>17}")
    for c in CASES:
        for name, *_ in servers:
            rates, cpus, ccpus = res[(name, case_key(*c))]
            say(f"    {name:10} {case_key(*c):>9} {median(rates):7.2f} {median(cpus):10.3f} {median(ccpus):17.3f}")
            key = f"https.{case_key(*c)}.{name}"
            result(f"{key}.gibps", median(rates))
            result(f"{key}.cpu_s_per_gib", median(cpus))
            result(f"{key}.client_cpu_s_per_gib", median(ccpus))


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
