"""Load test (run through scripts/bench/load.sh), loopback only, bounded in time and count.

(a) hits: wrk with CONNECTIONS (1000) connections on 2 threads for DURATION (60) seconds against
    a cached model: 7 of 8 requests are 1 MiB `Range` GETs at random offsets of a cached layer
    (as Ollama's parts are), 1 of 8 the model's manifest through the registry API. Reports
    requests, throughput, errors (socket errors and non-2xx/3xx answers; must be 0) and
    lancached's peak RssAnon sampled every 100 ms.
(b) mixed pulls: CLIENTS (50) threads, each doing what `ollama pull` does against the cache:
    GET the manifest from the registry host, then per blob HEAD + GET
    /v2/<repo>/blobs/<digest>, follow the 307, fetch the blob as up to 16 parallel Range GETs
    without looking at their status, assemble, sha256. MODELS (10) models, the first half
    pulled once beforehand (warm), the rest cold, client i pulling model i mod MODELS, so each
    cold model has several clients racing for it. Asserts every blob verifies and that
    upstream sent every blob's bytes exactly once over the whole run.

The real client's parts are clamp(size/16, 100 MB, 1000 MB); here PART_MIN (1 MiB) replaces the
100 MB floor so that the LAYER_MIB (32) layers are fetched as 16 ranges too."""

import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MANIFEST_TYPE, MIB, REGISTRY, Lancached, RssSampler, Upstream, cleanup,
                      free_port, raise_nofile, result, workdir)

DURATION = int(os.environ.get("DURATION", "60"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "1000"))
CLIENTS = int(os.environ.get("CLIENTS", "50"))
MODELS = int(os.environ.get("MODELS", "10"))
LAYER = int(os.environ.get("LAYER_MIB", "32")) * MIB
PART_MIN = int(os.environ.get("PART_MIN_KIB", "1024")) * 1024
PARTS = os.environ.get("PARTS", "hits,pulls").split(",")
TIMEOUT = 120


def say(msg):
    print(msg, flush=True)


# ---- an Ollama-like client ------------------------------------------------------------------

def request(host, port, method, path, headers):
    c = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        c.request(method, path, headers=headers)
        r = c.getresponse()
        body = r.read()
        return r.status, r.headers, body
    finally:
        c.close()


def fetch_range(loc, a, b, out):
    """One part, written where it belongs whatever the status (as Ollama does)."""
    u = urllib.parse.urlsplit(loc)
    path = u.path + ("?" + u.query if u.query else "")
    _, _, body = request(u.hostname, u.port or 80, "GET", path, {"Range": f"bytes={a}-{b}"})
    out[a:a + len(body[: b - a + 1])] = body[: b - a + 1]
    return len(body)


def pull_blob(port, repo, desc, pool):
    digest, size = desc["digest"], desc["size"]
    path = f"/v2/{repo}/blobs/{digest}"
    hdr = {"Host": REGISTRY}
    st, _, _ = request("127.0.0.1", port, "HEAD", path, hdr)
    if st not in (200, 307):
        raise RuntimeError(f"HEAD {path}: {st}")
    st, h, _ = request("127.0.0.1", port, "GET", path, hdr)
    if st != 307 or not h.get("Location"):
        raise RuntimeError(f"GET {path}: {st} without a redirect")
    loc = h["Location"]
    part = min(max(size // 16, PART_MIN), 1000 * 1000 * 1000)
    bounds = [(a, min(a + part, size) - 1) for a in range(0, size, part)]
    out = bytearray(size)
    got = sum(f.result() for f in [pool.submit(fetch_range, loc, a, b, out) for a, b in bounds])
    ok = got == size and "sha256:" + hashlib.sha256(out).hexdigest() == digest
    return ok, size


def pull(port, repo):
    """One `ollama pull`: returns (blobs verified, blobs failed, bytes)."""
    st, _, body = request("127.0.0.1", port, "GET", f"/v2/{repo}/manifests/latest",
                          {"Host": REGISTRY, "Accept": MANIFEST_TYPE})
    if st != 200:
        raise RuntimeError(f"manifest of {repo}: {st}")
    m = json.loads(body)
    descs = [m["config"]] + m["layers"]
    good = bad = nbytes = 0
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for d in descs:
            ok, n = pull_blob(port, repo, d, pool)
            good += ok
            bad += not ok
            nbytes += n
    return good, bad, nbytes


# ---- the run ----------------------------------------------------------------------------------

def make_models(up):
    """MODELS models: a config, a LAYER_MIB model layer and a small template layer each."""
    models = []
    for i in range(MODELS):
        repo = f"library/load{i}"
        cfg = json.dumps({"model_format": "gguf", "model_family": "bench", "n": i}).encode()
        layer = os.urandom(LAYER)
        tmpl = f"{{{{ .Prompt }}}} {i}".encode()
        c, l, t = (up.add_blob_bytes(b) for b in (cfg, layer, tmpl))
        up.add_manifest(repo, "latest",
                        [(l, len(layer), "application/vnd.ollama.image.model"),
                         (t, len(tmpl), "application/vnd.ollama.image.template")],
                        (c, len(cfg), "application/vnd.docker.container.image.v1+json"))
        models.append((repo, {c: len(cfg), l: len(layer), t: len(tmpl)}, l))
    return models


def part_hits(work, lc, models):
    repo, _, layer = models[0]
    lua = os.path.join(work, "hits.lua")
    open(lua, "w").write(f"""
local blob = "/blobs/sha256:{layer}"
local chunks = {LAYER // MIB}
local n = 0
request = function()
  n = n + 1
  if n % 8 == 0 then
    return wrk.format("GET", "/v2/{repo}/manifests/latest",
      {{ ["Host"] = "{REGISTRY}", ["Accept"] = "{MANIFEST_TYPE}" }})
  end
  local a = math.random(0, chunks - 1) * {MIB}
  return wrk.format("GET", blob, {{ ["Range"] = "bytes=" .. a .. "-" .. (a + {MIB - 1}) }})
end
""")
    cmd = ["wrk", f"-c{CONNECTIONS}", "-t2", f"-d{DURATION}s", "--timeout", "30s", "-s", lua,
           lc.url("/")]
    say(f"(hits) {' '.join(cmd)}")
    with RssSampler(lc.pid, every=0.1) as s:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 120)
    say(out.stdout.rstrip())
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr}")
    reqs = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout)
    sock = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Transfer/sec:\s+([0-9.]+)(\w+)", out.stdout)
    unit = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}.get(m.group(2), 1)
    rate = float(m.group(1)) * unit / GIB
    say(f"(hits) {reqs} requests, {sock} socket errors, {non2xx} non-2xx/3xx, {rate:.2f} GiB/s,"
        f" peak RssAnon {s.peak_anon / 1024:.1f} MiB (VmHWM {s.hwm / 1024:.1f} MiB incl. mapped page cache)")
    result("load.hits.requests", reqs)
    result("load.hits.socket_errors", sock)
    result("load.hits.non2xx", non2xx)
    result("load.hits.gibps", rate)
    result("load.hits.rss_anon_mib", s.peak_anon / 1024)
    result("load.hits.vmhwm_mib", s.hwm / 1024)
    return sock + non2xx


def part_pulls(lc, up, models, mark):
    warm = models[: MODELS // 2]
    failures = []
    lock = threading.Lock()
    done = []

    def client(i):
        repo = models[i % MODELS][0]
        try:
            good, bad, n = pull(lc.port, repo)
            with lock:
                done.append((repo, good, bad, n))
                if bad:
                    failures.append(f"client {i} ({repo}): {bad} blobs failed to verify")
        except Exception as e:  # every failure is reported, none stops the others
            with lock:
                failures.append(f"client {i} ({repo}): {e}")

    t = time.monotonic()
    with RssSampler(lc.pid, every=0.1) as s:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(TIMEOUT * 3)
    dt = time.monotonic() - t
    time.sleep(0.5)  # nginx logs a request when it ends
    served = up.served(mark)
    upstream_bad = []
    for repo, blobs, _ in models:
        for hexd, size in blobs.items():
            sent = sum(b for m, u, st, b, _ in served if m == "GET" and u.endswith(hexd))
            if sent != size:
                upstream_bad.append(f"{repo} sha256:{hexd[:12]}: upstream sent {sent} bytes for {size}")
    total = sum(n for *_, n in done)
    verified = sum(g for _, g, _, _ in done)
    cold = sum(1 for i in range(CLIENTS) if models[i % MODELS] not in warm)
    say(f"(pulls) {CLIENTS} clients ({CLIENTS - cold} warm, {cold} cold) over {MODELS} models: {len(done)} pulls"
        f" done in {dt:.1f}s, {verified} blobs verified, {total / GIB:.2f} GiB, {total / GIB / dt:.2f} GiB/s,"
        f" peak RssAnon {s.peak_anon / 1024:.1f} MiB")
    for f in failures + upstream_bad:
        say("    FAIL " + f)
    result("load.pulls.clients", CLIENTS)
    result("load.pulls.completed", len(done))
    result("load.pulls.blobs_verified", verified)
    result("load.pulls.failures", len(failures))
    result("load.pulls.upstream_mismatches", len(upstream_bad))
    result("load.pulls.seconds", dt)
    result("load.pulls.rss_anon_mib", s.peak_anon / 1024)
    return len(failures) + len(upstream_bad) + (CLIENTS - len(done))


def main():
    raise_nofile()
    work = workdir("lancache-load-")
    up = Upstream(work, f"127.0.0.1:{free_port()}")
    models = make_models(up)
    up.start()
    lc = Lancached(work, "http://" + up.listen).start()
    mark = up.log_mark()
    for repo, _, _ in models[: MODELS // 2]:
        good, bad, _ = pull(lc.port, repo)
        if bad:
            raise SystemExit(f"warming {repo}: {bad} blobs failed to verify")
    errors = 0
    if "hits" in PARTS:
        errors += part_hits(work, lc, models)
    if "pulls" in PARTS:
        errors += part_pulls(lc, up, models, mark)
    lc.stop()
    if errors:
        raise SystemExit(f"load: {errors} errors")
    say("load: no errors")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
