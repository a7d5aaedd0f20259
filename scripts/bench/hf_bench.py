"""The Hugging Face side of the benchmark (run through scripts/bench/hf.sh): the real
`huggingface_hub` client (PyPI, the version scripts/test-deps.sh pins) downloading one model repo
through lancached (`HF_ENDPOINT=http://CACHE/hf`), through olah (PyPI `olah`, the HF mirror
proxy most labs would reach for) and straight from the stand-in Hub, in one run.

The stand-in Hub is nginx, two server blocks on loopback: the "Hub" (127.0.0.1) answers
`/api/models/{repo}/revision/{main,commit}` and `.../tree/...` with fixed JSON, `HEAD`/`GET
/{repo}/resolve/{main,commit}/{file}` with the headers the real Hub sends (`X-Repo-Commit`,
`ETag` = the git blob SHA-1 for small files, and for LFS files a 302 to the CDN with
`X-Linked-Etag` = sha256 and `X-Linked-Size`); the "CDN" (127.0.0.2) serves the LFS blobs with
ranges. Both log every response's body bytes, so a run counts what upstream really sent.

Measured (medians of RUNS runs, servers alternating):
- cold: CLIENTS concurrent `snapshot_download` processes (each with its own HF_HUB_CACHE in
  /dev/shm, so client disks are not the limit) of a cold repo; aggregate GiB/s and upstream bytes
  per repo byte (the cache's goal is 1.00: one fill however many clients);
- warm: the same CLIENTS downloads again, everything cached, against the same clients straight
  from the stand-in (nginx, sendfile);
- hit: the largest LFS file as 1 stream and as 16 ranges (curl), lancached's HTTP listener
  against nginx serving the same file, and over TLS (the `https_bench_client`, SNI and Host
  `huggingface.co`, i.e. the transparent way in) against nginx over TLS with a leaf from the
  same CA; olah's hit as a peer figure; server CPU-s per GiB from schedstat;
- link: one cold `snapshot_download` with the stand-in in a network namespace behind a veth
  shaped to LINK_RATE (default 1gbit, tc tbf both ways), straight from it and through the cache
  (needs root).

HF_PARTS=loopback,link picks the parts (both by default).

Prints a readable summary and `RESULT key=value` lines."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, RUNS, Lancached, cleanup, cpu_of, curl, fetch, free_port,
                      median, netns_setup, raise_nofile, ranges, result, spawn, stop, tree,
                      wait_port, warm, workdir)
import https_bench

REPO = "bench/model"
COMMIT = hashlib.sha1(b"lancache bench repo").hexdigest()
LFS_MIB = [int(x) for x in os.environ.get("HF_LFS_MIB", "192,64").split(",")]
CLIENTS = int(os.environ.get("HF_CLIENTS", "16"))
LINK_RATE = os.environ.get("LINK_RATE", "1gbit")
PARTS = os.environ.get("HF_PARTS", "loopback,link").split(",")
OLAH = os.environ.get("OLAH_BIN", "/var/tmp/lancache-olah/bin/olah-cli")
HTTPS_CLIENT = https_bench.CLIENT
HUB_NAME = "huggingface.co"


def say(msg):
    print(msg, flush=True)


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    """A model repo on disk: small files (answered in place) and LFS files (302 to the CDN)."""

    def __init__(self, work):
        self.dir = os.path.join(work, "repo")
        self.cdn = os.path.join(work, "cdn")
        os.makedirs(self.dir)
        self.files = []  # (path, size, etag, sha256 or None)
        small = {
            "config.json": json.dumps({"architectures": ["Bench"], "hidden_size": 4096}).encode(),
            "README.md": b"# bench/model\n\nA repo of random bytes for scripts/bench/hf.sh.\n",
            "tokenizer.json": json.dumps({"vocab": {f"t{i}": i for i in range(60000)}}).encode(),
        }
        for name, data in small.items():
            open(os.path.join(self.dir, name), "wb").write(data)
            self.files.append((name, len(data), git_blob_sha1(data), None))
        for i, mib in enumerate(LFS_MIB):
            name = f"model-{i + 1:05d}-of-{len(LFS_MIB):05d}.safetensors"
            path = os.path.join(self.dir, name)
            h = hashlib.sha256()
            with open(path, "wb") as f, open("/dev/urandom", "rb") as r:
                for _ in range(mib // 4):
                    b = r.read(4 * MIB)
                    h.update(b)
                    f.write(b)
            sha = h.hexdigest()
            d = os.path.join(self.cdn, sha[:2], sha[2:4])
            os.makedirs(d, exist_ok=True)
            os.link(path, os.path.join(d, sha))
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {mib * MIB}\n"
            self.files.append((name, mib * MIB, git_blob_sha1(pointer.encode()), sha))
        self.size = sum(f[1] for f in self.files)
        self.largest = max((f for f in self.files if f[3]), key=lambda f: f[1])

    def info(self):
        return json.dumps({
            "_id": COMMIT[:24], "id": REPO, "modelId": REPO, "author": "bench", "sha": COMMIT,
            "lastModified": "2026-01-01T00:00:00.000Z", "private": False, "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": [{"rfilename": f[0]} for f in self.files],
            "createdAt": "2026-01-01T00:00:00.000Z", "usedStorage": self.size,
        })

    def tree(self):
        out = []
        for name, size, etag, sha in self.files:
            e = {"type": "file", "oid": etag, "size": size, "path": name}
            if sha:
                e["lfs"] = {"oid": sha, "size": size, "pointerSize": 134}
            out.append(e)
        return json.dumps(out)


class PathsInfo:
    """`POST .../paths-info/{rev}` answers one entry per asked path, which nginx cannot do from a
    request body: a small stdlib server behind the stand-in's nginx (olah asks it instead of a
    `HEAD`; huggingface_hub does not)."""

    def __init__(self, repo):
        import http.server
        import threading
        import urllib.parse
        entries = {e["path"]: e for e in json.loads(repo.tree())}

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-type", "").startswith("application/json"):
                    paths = json.loads(body).get("paths", [])
                else:
                    paths = urllib.parse.parse_qs(body.decode()).get("paths", [])
                out = json.dumps([entries[p] for p in paths if p in entries]).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class StandIn:
    """nginx as the Hub (HUB_HOST:port) and its CDN (CDN_HOST:cdn_port), by default on loopback;
    with NETNS, inside that network namespace (the far end of a shaped veth)."""

    def __init__(self, work, repo, hub_host="127.0.0.1", cdn_host="127.0.0.2", netns=None,
                 name="hub"):
        self.work, self.repo, self.netns = work, repo, netns
        self.hub_host, self.cdn_host = hub_host, cdn_host
        self.port, self.cdn_port = free_port(), free_port()
        self.name = name
        self.log = os.path.join(work, f"{self.name}.access.log")
        api = os.path.join(work, f"{self.name}-api")
        os.makedirs(api)
        open(os.path.join(api, "info.json"), "w").write(repo.info())
        open(os.path.join(api, "tree.json"), "w").write(repo.tree())
        # olah asks for the repo's info without a revision to learn that it exists, and probes a
        # well-known public file at start to decide whether the Hub is reachable.
        self.paths_info = PathsInfo(repo)
        locs = [f"location = /api/models/{REPO} {{ default_type application/json; alias {api}/info.json; }}",
                "location = /datasets/Salesforce/wikitext/resolve/main/.gitattributes { return 200 ''; }"]
        for rev in ("main", COMMIT):
            base = f"/api/models/{REPO}"
            locs.append(f"location = {base}/revision/{rev} {{ default_type application/json; alias {api}/info.json; }}")
            locs.append(f"location = {base}/paths-info/{rev} {{ proxy_pass http://127.0.0.1:{self.paths_info.port}; }}")
            for slash in ("", "/"):  # olah asks for the tree with a trailing slash
                locs.append(f"location = {base}/tree/{rev}{slash} {{ default_type application/json; "
                            f"root {api}; try_files /tree.json =404; }}")
            for name, size, etag, sha in repo.files:
                common = (f'add_header X-Repo-Commit {COMMIT}; add_header ETag \'"{etag}"\'; '
                          'add_header Accept-Ranges bytes;')
                if sha:
                    loc = (f"http://{cdn_host}:{self.cdn_port}/repos/{sha[:2]}/{sha[2:4]}/{sha}"
                           f"?response-content-disposition=attachment&Expires=9999999999&Signature=x")
                    locs.append(f"location = /{REPO}/resolve/{rev}/{name} {{ {common} "
                                f"add_header X-Linked-Etag '\"{sha}\"'; add_header X-Linked-Size {size}; "
                                f"return 302 {loc}; }}")
                else:
                    locs.append(f"location = /{REPO}/resolve/{rev}/{name} {{ {common} "
                                f"alias {repo.dir}/{name}; }}")
        locs = "\n    ".join(locs)
        w = work
        self.conf = os.path.join(work, f"{self.name}.nginx.conf")
        open(self.conf, "w").write(f"""
user root; worker_processes auto; daemon off; pid {w}/{self.name}.nginx.pid; error_log {w}/{self.name}.nginx.err;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  sendfile on; tcp_nopush on; keepalive_timeout 30; keepalive_requests 100000;
  default_type application/octet-stream; etag off;
  log_format bytes '$server_port $request_method $uri $status $body_bytes_sent';
  access_log {self.log} bytes;
  server {{
    listen {hub_host}:{self.port} reuseport backlog=4096;
    {locs}
  }}
  server {{
    listen {cdn_host}:{self.cdn_port} reuseport backlog=4096;
    location /repos/ {{ alias {repo.cdn}/; }}
    location /plain/ {{ alias {repo.dir}/; }}
  }}
}}""")

    def start(self):
        pre = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = spawn(pre + ["nginx", "-c", self.conf, "-p", self.work])
        wait_port(self.port, self.hub_host, self.netns)
        wait_port(self.cdn_port, self.cdn_host, self.netns)
        return self

    def url(self):
        return f"http://{self.hub_host}:{self.port}"

    def pids(self):
        return tree(int(open(os.path.join(self.work, f"{self.name}.nginx.pid")).read()))

    def stop(self):
        stop(self.proc)

    def mark(self):
        try:
            return os.path.getsize(self.log)
        except FileNotFoundError:
            return 0

    def sent(self, since):
        """(body bytes, [non-2xx/3xx lines]) logged after offset `since`."""
        total, bad = 0, []
        with open(self.log) as f:
            f.seek(since)
            for line in f:
                p = line.split()
                if len(p) == 5:
                    total += int(p[4])
                    if int(p[3]) >= 400:
                        bad.append(line.strip())
        return total, bad


class Olah:
    """olah (PyPI) in front of the stand-in, a fresh repos dir per start (a cold mirror)."""

    def __init__(self, work, hub):
        self.work, self.hub = work, hub
        self.port = free_port()
        self.n = 0
        self.proc = None

    def start(self):
        self.n += 1
        self.repos = os.path.join(self.work, f"olah-repos-{self.n}")
        os.makedirs(self.repos)
        self.proc = spawn([OLAH, "--host", "127.0.0.1", "--port", str(self.port),
                           "--hf-scheme", "http", "--hf-netloc", f"127.0.0.1:{self.hub.port}",
                           "--hf-lfs-netloc", f"127.0.0.2:{self.hub.cdn_port}",
                           "--mirror-scheme", "http",
                           "--mirror-netloc", f"127.0.0.1:{self.port}",
                           "--mirror-lfs-netloc", f"127.0.0.1:{self.port}",
                           "--repos-path", self.repos],
                          stdout=open(os.path.join(self.work, "olah.log"), "ab"),
                          stderr=subprocess.STDOUT, cwd=self.work)
        wait_port(self.port)
        return self

    def stop(self):
        if self.proc:
            stop(self.proc)
            self.proc = None
        shutil.rmtree(self.repos, ignore_errors=True)

    def pids(self):
        return [self.proc.pid]


CLIENT_PY = """
import os, sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], cache_dir=os.environ["HF_HUB_CACHE"])
"""


LOGS = []  # log files whose tails a failed run prints


def snapshot_clients(endpoint, scratch, n=CLIENTS):
    """n concurrent snapshot_download processes, each with its own hub cache; returns seconds."""
    shutil.rmtree(scratch, ignore_errors=True)
    procs = []
    t = time.monotonic()
    for i in range(n):
        env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_CACHE=os.path.join(scratch, f"c{i}"),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   HF_HUB_ENABLE_HF_TRANSFER="0", HF_HUB_DISABLE_XET="1", HF_HUB_ETAG_TIMEOUT="60",
                   HF_HUB_DOWNLOAD_TIMEOUT="120")
        for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            env.pop(k, None)
        procs.append(subprocess.Popen([sys.executable, "-c", CLIENT_PY, REPO], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errs = [p.communicate()[1].decode(errors="replace") for p in procs if p.wait() != 0]
    dt = time.monotonic() - t
    if errs:
        tails = ""
        for log in LOGS:
            try:
                tails += f"\n--- {log} (last lines):\n" + "".join(open(log).readlines()[-15:])
            except OSError:
                pass
        raise SystemExit(f"snapshot_download through {endpoint} failed:\n{errs[0][-1500:]}{tails}")
    return dt


def check_snapshot(scratch, repo, n=CLIENTS):
    """Every client's snapshot holds every file whole (sizes; LFS files by sha256 on one)."""
    for i in range(n):
        snap = os.path.join(scratch, f"c{i}", "models--bench--model", "snapshots", COMMIT)
        for name, size, _, sha in repo.files:
            p = os.path.join(snap, name)
            if os.path.getsize(p) != size:
                raise SystemExit(f"client {i}: {name} is {os.path.getsize(p)} bytes, not {size}")
            if sha and i == 0:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while b := f.read(4 * MIB):
                        h.update(b)
                if h.hexdigest() != sha:
                    raise SystemExit(f"client {i}: {name} has the wrong sha256")


def timed_fetch(url, size, parts, pids):
    c0 = cpu_of(pids())
    dt = fetch(url, size, parts, extra=("-L",))
    return size / GIB / dt, (cpu_of(pids()) - c0) / (size / GIB)


def part_link(work, repo, scratch, add):
    """One cold `snapshot_download` with the stand-in Hub and CDN behind a veth shaped to
    LINK_RATE (a namespace of its own): straight from it, and through a fresh lancached on the
    host whose upstream is that link. The two alternate; each cache run starts cold."""
    if os.geteuid() != 0:
        say("(hf link) skipped: needs root for ip netns and tc")
        return
    ns = netns_setup(LINK_RATE, net="10.231.1")
    hub = StandIn(work, repo, "10.231.1.2", "10.231.1.2", netns=ns, name="linkhub").start()
    extra = f'[huggingface]\nupstream = "{hub.url()}"\n'
    for run in range(RUNS):
        lc = Lancached(work, "http://127.0.0.1:9", name=f"linklc{run}", extra=extra).start()
        sides = [("direct", hub.url()), ("lancached", lc.url("/hf"))]
        for who, endpoint in sides if run % 2 == 0 else sides[::-1]:
            dt = snapshot_clients(endpoint, scratch, 1)
            check_snapshot(scratch, repo, 1)
            add(f"link.{who}.gibps", repo.size / GIB / dt)
        lc.stop()
    hub.stop()
    shutil.rmtree(scratch, ignore_errors=True)


def main():
    raise_nofile()
    have_olah = os.access(OLAH, os.X_OK)
    if not have_olah:
        say(f"(hf) olah is not installed at {OLAH}: its rows are skipped (hf.sh installs it)")
    work = workdir("lancache-bench-hf-")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else work
    scratch = os.path.join(shm, f"lancache-bench-hf-clients-{os.getpid()}")
    repo = Repo(work)
    hub = StandIn(work, repo).start()
    LOGS.extend([hub.log, os.path.join(work, "olah.log")])
    hub_url = f"http://127.0.0.1:{hub.port}"
    hf_extra = f'[huggingface]\nupstream = "{hub_url}"\n'
    olah = Olah(work, hub) if have_olah else None
    res = {}
    add = lambda k, v: res.setdefault(k, []).append(v)
    gib = CLIENTS * repo.size / GIB
    lc = None
    try:
        for run in range(RUNS if "loopback" in PARTS else 0):
            # Cold: a fresh cache each run (and a fresh olah mirror).
            # One CA for every run's cache, so nginx's TLS leaf (made once) is signed by it.
            if run > 0:
                shutil.copytree(os.path.join(work, "lancached0-ca"), os.path.join(work, f"lancached{run}-ca"))
            lc = Lancached(work, "http://127.0.0.1:9", name=f"lancached{run}", extra=hf_extra,
                           tls_port=free_port()).start()
            m = hub.mark()
            dt = snapshot_clients(lc.url("/hf"), scratch)
            sent, bad = hub.sent(m)
            if bad:
                raise SystemExit(f"the stand-in refused lancached's requests: {bad[:3]}")
            check_snapshot(scratch, repo)
            add("cold.lancached.gibps", gib / dt)
            add("cold.lancached.upstream_ratio", sent / repo.size)
            if olah:
                olah.start()
                m = hub.mark()
                dt = snapshot_clients(f"http://127.0.0.1:{olah.port}", scratch)
                sent, _ = hub.sent(m)
                check_snapshot(scratch, repo)
                add("cold.olah.gibps", gib / dt)
                add("cold.olah.upstream_ratio", sent / repo.size)
            m = hub.mark()
            dt = snapshot_clients(hub_url, scratch)
            sent, _ = hub.sent(m)
            check_snapshot(scratch, repo)
            add("cold.direct.gibps", gib / dt)
            add("cold.direct.upstream_ratio", sent / repo.size)

            # Warm: everything cached.
            m = hub.mark()
            add("warm.lancached.gibps", gib / snapshot_clients(lc.url("/hf"), scratch))
            add("warm.lancached.upstream_bytes", hub.sent(m)[0])
            if olah:
                add("warm.olah.gibps", gib / snapshot_clients(f"http://127.0.0.1:{olah.port}", scratch))
            add("warm.direct.gibps", gib / snapshot_clients(hub_url, scratch))
            shutil.rmtree(scratch, ignore_errors=True)

            # Hits of the largest file, 1 stream and 16 ranges, plain HTTP and TLS.
            name, size, _, sha = repo.largest
            lc_pids = lambda: [lc.pid]
            plain = f"http://127.0.0.2:{hub.cdn_port}/plain/{name}"
            path = f"/{REPO}/resolve/main/{name}"
            warm(os.path.join(repo.dir, name))
            for parts in (1, 16):
                r, c = timed_fetch(plain, size, parts, hub.pids)
                add(f"hit{parts}.nginx.gibps", r)
                add(f"hit{parts}.nginx.cpu_s_per_gib", c)
                r, c = timed_fetch(lc.url("/hf" + path), size, parts, lc_pids)
                add(f"hit{parts}.lancached.gibps", r)
                add(f"hit{parts}.lancached.cpu_s_per_gib", c)
                if olah:
                    r, c = timed_fetch(f"http://127.0.0.1:{olah.port}{path}", size, parts, olah.pids)
                    add(f"hit{parts}.olah.gibps", r)
            if run == 0:
                ca = os.path.join(lc.ca_dir, "ca.crt")
                crt, key = https_bench.nginx_leaf(work, lc.ca_dir, HUB_NAME)
                ng = https_bench.NginxTls(work, repo.dir, crt, key).start()
            for proto, parts in (("h1", 1), ("h2", 16)):
                for who, port, p, pids in (("nginx", ng.port, f"/{name}", ng.pids),
                                           ("lancached", lc.tls_port, path, lc_pids)):
                    c0 = cpu_of(pids())
                    dt, _, _ = https_bench.fetch(port, p, ca, proto, parts, sni=HUB_NAME, size=size)
                    add(f"tls.{proto}.{parts}.{who}.gibps", size / GIB / dt)
                    add(f"tls.{proto}.{parts}.{who}.cpu_s_per_gib",
                        (cpu_of(pids()) - c0) / (size / GIB))
            if olah:
                olah.stop()
            if run < RUNS - 1:
                lc.stop()
        if "link" in PARTS:
            part_link(work, repo, scratch, add)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say(f"(hf) repo of {repo.size / MIB:.0f} MiB ({len(repo.files)} files, LFS {LFS_MIB} MiB), "
        f"{CLIENTS} concurrent snapshot_download clients, median of {RUNS}")
    for k in sorted(res):
        v = median(res[k])
        say(f"    {k:40} {v:10.3f}")
        result(f"hf.{k}", v)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
