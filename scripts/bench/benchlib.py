"""Shared pieces of the benchmark scripts (scripts/bench/*.py): the local upstream registry
(nginx speaking enough of the registry v2 API for lancached and for docker-registry's proxy
mode, with an access log of bytes sent), lancached and docker-registry started on loopback,
/proc readings (CPU ticks, RSS), and the `RESULT key=value` lines that scripts/bench.sh
collects. Standard library only; every server listens on 127.0.0.1 (or inside a network
namespace the caller created) and is killed on exit."""

import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

GIB = 1 << 30
MIB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("LANCACHED_BIN") or os.path.join(ROOT, "target/release/lancached")
RUNS = int(os.environ.get("RUNS", "5"))
REGISTRY = "registry.ollama.ai"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

_procs = []
_cleanups = []


def result(key, value):
    """One machine-readable figure for scripts/bench.sh (stand-alone runs show it too)."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"RESULT {key}={value}", flush=True)


def median(xs):
    return statistics.median(xs)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, host="127.0.0.1", netns=None):
    for _ in range(400):
        if netns:
            ok = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                                 f"import socket; socket.create_connection(('{host}', {port}), 0.2)"],
                                capture_output=True).returncode == 0
            if ok:
                return
        else:
            try:
                socket.create_connection((host, port), 0.2).close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on {host}:{port}")


def netns_setup(rate, net="10.231.0", tag="", burst="1mbit"):
    """A namespace with the far end of a veth pair, both directions shaped by tbf (RATE, e.g.
    "1gbit"; BURST at least rate/HZ, so 10gbit wants about 16mbit); the host end is NET.1, the
    namespace end NET.2. TAG (one character) tells several such namespaces of one run apart.
    Removed at exit (deleting the namespace deletes the pair)."""
    ns = f"lcbench{os.getpid()}{tag}"
    host_if, ns_if = f"lcb{os.getpid() % 100000}{tag}a", f"lcb{os.getpid() % 100000}{tag}b"
    run = lambda *c: subprocess.run(list(c), check=True)
    run("ip", "netns", "add", ns)
    at_exit(lambda: subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL))
    at_exit(lambda: subprocess.run(["ip", "link", "del", host_if], stderr=subprocess.DEVNULL))
    run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    run("ip", "link", "set", ns_if, "netns", ns)
    run("ip", "addr", "add", f"{net}.1/30", "dev", host_if)
    run("ip", "link", "set", host_if, "up")
    run("ip", "-n", ns, "addr", "add", f"{net}.2/30", "dev", ns_if)
    run("ip", "-n", ns, "link", "set", ns_if, "up")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    for pre, dev in (([], host_if), (["ip", "netns", "exec", ns], ns_if)):
        run(*pre, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
            "burst", burst, "latency", "20ms")
    return ns


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    _procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=10):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in _procs:
        _procs.remove(p)


def at_exit(fn):
    _cleanups.append(fn)


def cleanup():
    # SIGTERM first: an nginx master killed with SIGKILL leaves its workers behind, and they
    # would keep the caller's stdout pipe open (and the namespace alive).
    for p in list(_procs):
        try:
            stop(p, timeout=5)
        except Exception:
            pass
    for fn in reversed(_cleanups):
        try:
            fn()
        except Exception:
            pass


def workdir(prefix="lancache-bench-"):
    d = tempfile.mkdtemp(prefix=prefix)
    at_exit(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


# ---- /proc readings -------------------------------------------------------------------------

def cpu_of(pids):
    """CPU seconds of the given processes: the sum of their threads' on-CPU time from
    /proc/PID/task/*/schedstat (nanoseconds), where utime+stime would be 10 ms ticks (a 1 GiB
    hit costs only 10-20 of them). Falls back to the ticks without schedstats."""
    t = 0
    try:
        for pid in pids:
            for task in os.listdir(f"/proc/{pid}/task"):
                try:
                    t += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
                except FileNotFoundError:
                    pass
        return t / 1e9
    except FileNotFoundError:
        return cpu_ticks_of(pids)


def cpu_ticks_of(pids):
    """utime+stime in seconds of the given processes."""
    t = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return t / TICK


def tree(pid):
    """pid and its direct children (nginx master + workers)."""
    out = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except Exception:
                continue
            if ppid == pid:
                out.append(int(d))
    return out


def status_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Samples RssAnon of a process every `every` seconds in a thread; VmHWM read at the end."""

    def __init__(self, pid, every=0.02):
        self.pid, self.every, self.peak_anon = pid, every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak_anon = max(self.peak_anon, status_kib(self.pid, "RssAnon"))
            except FileNotFoundError:
                return
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        self.hwm = status_kib(self.pid, "VmHWM")


# ---- blobs and the local upstream -----------------------------------------------------------

def random_file(path, size):
    """Writes `size` random bytes; returns the sha256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f, open("/dev/urandom", "rb") as r:
        left = size
        while left:
            b = r.read(min(left, 4 * MIB))
            h.update(b)
            f.write(b)
            left -= len(b)
    return h.hexdigest()


def warm(path):
    """Reads a file once so both sides of a comparison start from the page cache."""
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


class Upstream:
    """nginx playing the upstream registry: `/v2/` answers 200 (no auth, so docker-registry's
    proxy finds no challenge), manifests by tag with their media type and Docker-Content-Digest,
    blobs with Docker-Content-Digest, and every request logged with the bytes sent, so a run can
    count what upstream really served. Files live in `<dir>/blobs/<hex>` and
    `<dir>/manifests/<repo>/<tag>`. `extra` adds server blocks (e.g. the nginx hit baseline)."""

    def __init__(self, work, listen, extra="", netns=None, name="upstream", tls=None):
        self.work, self.listen, self.netns = work, listen, netns
        # (certificate, key): the server speaks TLS (user-space encryption, as a CDN does).
        self.tls = tls
        self.dir = os.path.join(work, name)
        self.log = os.path.join(work, name + ".access.log")
        os.makedirs(os.path.join(self.dir, "blobs"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "manifests"), exist_ok=True)
        self.extra, self.name = extra, name
        self.manifest_digests = {}
        self.proc = None

    def add_blob_file(self, path, hexd, link=True):
        dst = os.path.join(self.dir, "blobs", hexd)
        if not os.path.exists(dst):
            (os.link if link else shutil.copy)(path, dst)

    def add_blob_bytes(self, data):
        hexd = hashlib.sha256(data).hexdigest()
        open(os.path.join(self.dir, "blobs", hexd), "wb").write(data)
        return hexd

    def add_manifest(self, repo, tag, layers, config):
        """layers/config: (hex, size, mediaType). Returns the manifest bytes."""
        m = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": config[2], "digest": "sha256:" + config[0], "size": config[1]},
            "layers": [{"mediaType": t, "digest": "sha256:" + h, "size": s} for h, s, t in layers],
        }
        data = json.dumps(m).encode()
        d = os.path.join(self.dir, "manifests", repo)
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, tag), "wb").write(data)
        self.manifest_digests[f"/v2/{repo}/manifests/{tag}"] = "sha256:" + hashlib.sha256(data).hexdigest()
        return data

    def conf(self):
        digests = "\n".join(f'    "{u}" "{d}";' for u, d in self.manifest_digests.items())
        w, d = self.work, self.dir
        ssl = ""
        tls_conf = ""
        if self.tls:
            ssl = " ssl"
            tls_conf = f"ssl_certificate {self.tls[0]}; ssl_certificate_key {self.tls[1]}; ssl_protocols TLSv1.3;"
        return f"""
user root; worker_processes auto; daemon off; pid {w}/{self.name}.nginx.pid; error_log {w}/{self.name}.nginx.err;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  sendfile on; tcp_nopush on; keepalive_timeout 30; keepalive_requests 100000;
  default_type application/octet-stream;
  access_log off;
  log_format bytes '$request_method $uri $status $body_bytes_sent $bytes_sent';
  map $uri $manifest_digest {{
    default "";
{digests}
  }}
  server {{
    listen {self.listen}{ssl} reuseport backlog=4096;
    {tls_conf}
    access_log {self.log} bytes;
    location = /v2/ {{
      default_type application/json;
      add_header Docker-Distribution-Api-Version registry/2.0;
      return 200 '{{}}';
    }}
    location ~ "^/v2/(?<repo>.+)/manifests/(?<ref>[^/:]+)$" {{
      default_type {MANIFEST_TYPE};
      add_header Docker-Content-Digest $manifest_digest;
      add_header Docker-Distribution-Api-Version registry/2.0;
      alias {d}/manifests/$repo/$ref;
    }}
    location ~ "^/v2/.+/blobs/sha256:(?<hex>[0-9a-f]{{64}})$" {{
      add_header Docker-Content-Digest sha256:$hex;
      add_header Docker-Distribution-Api-Version registry/2.0;
      alias {d}/blobs/$hex;
    }}
  }}
{self.extra}
}}"""

    def start(self):
        conf = os.path.join(self.work, self.name + ".nginx.conf")
        open(conf, "w").write(self.conf())
        cmd = ["nginx", "-c", conf, "-p", self.work]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        self.proc = spawn(cmd)
        host, port = self.listen.rsplit(":", 1)
        wait_port(int(port), host, self.netns)
        return self

    def reload(self):
        """Rewrites the config (new manifests) and reloads without dropping the log."""
        open(os.path.join(self.work, self.name + ".nginx.conf"), "w").write(self.conf())
        os.kill(self.proc.pid if not self.netns else self.master_pid(), signal.SIGHUP)
        time.sleep(0.5)

    def master_pid(self):
        return int(open(os.path.join(self.work, self.name + ".nginx.pid")).read())

    def pids(self):
        return tree(self.master_pid())

    def log_mark(self):
        try:
            return os.path.getsize(self.log)
        except FileNotFoundError:
            return 0

    def served(self, since=0):
        """[(method, uri, status, body_bytes, bytes)] logged after offset `since`. nginx writes
        each line when the request ends, so callers wait for their downloads first."""
        out = []
        try:
            with open(self.log) as f:
                f.seek(since)
                for line in f:
                    p = line.split()
                    if len(p) == 5:
                        out.append((p[0], p[1], int(p[2]), int(p[3]), int(p[4])))
        except FileNotFoundError:
            pass
        return out

    def blob_bytes(self, hexd, since=0):
        """Body bytes upstream sent for one blob (GETs only) after `since`."""
        return sum(b for m, u, s, b, _ in self.served(since) if m == "GET" and u.endswith(hexd))


# ---- lancached --------------------------------------------------------------------------------

class LocalServer:
    """A server process of the bench's own, on loopback at `self.port`, started into `self.proc`."""

    def stop(self):
        if self.proc:
            stop(self.proc)
            self.proc = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


class Lancached(LocalServer):
    def __init__(self, work, upstream_url, cache=None, http_port=None, name="lancached",
                 log_filter="warn", extra_cache="", env=None, tls_port=None, extra="", extra_upstream=""):
        self.work, self.name = work, name
        self.tls_port = tls_port
        tls_listen = f'"127.0.0.1:{tls_port}"' if tls_port else ""
        self.cache = cache or os.path.join(work, name + "-cache")
        self.port = http_port or free_port()
        self.cfg = os.path.join(work, name + ".toml")
        self.log = os.path.join(work, name + ".log")
        open(self.cfg, "w").write(f"""
[cache]
dir = "{self.cache}"
min_free = "1GiB"
{extra_cache}
[upstream]
resolvers = []
{extra_upstream}
[upstream.registries]
"{REGISTRY}" = "{upstream_url}"
[dns]
listen = []
[http]
listen = ["127.0.0.1:{self.port}"]
[tls]
listen = [{tls_listen}]
ca_dir = "{work}/{name}-ca"
[control]
socket = "{work}/{name}-ctl.sock"
[log]
filter = "{log_filter}"
{extra}
""")
        self.env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "RUST_LOG"):
            self.env.pop(k, None)
        self.env.update(env or {})
        self.proc = None

    def start(self, wait=True):
        self.proc = spawn([BIN, "--config", self.cfg], env=self.env, stderr=open(self.log, "ab"))
        if wait:
            wait_port(self.port)
            if self.tls_port:
                wait_port(self.tls_port)
        return self

    @property
    def ca_dir(self):
        return os.path.join(self.work, self.name + "-ca")

    @property
    def pid(self):
        return self.proc.pid

    def blob_path(self, hexd):
        return os.path.join(self.cache, "blobs", "sha256-" + hexd)

    def make_cold(self, hexd):
        """Forgets a blob: the published file and any partial fill state."""
        try:
            os.remove(self.blob_path(hexd))
        except FileNotFoundError:
            pass
        partial = os.path.join(self.cache, ".lancached", "partial")
        if os.path.isdir(partial):
            for f in os.listdir(partial):
                p = os.path.join(partial, f)
                try:
                    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
                except FileNotFoundError:
                    pass  # a fill finishing removes its own partial state

    def wait_published(self, hexd, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(self.blob_path(hexd)):
                return
            time.sleep(0.02)
        raise SystemExit(f"lancached never published sha256:{hexd}")


# ---- docker-registry (distribution 2.8) as a pull-through cache -------------------------------

class DockerRegistry(LocalServer):
    """Debian's docker-registry in proxy mode (`proxy: remoteurl:`) in front of the same upstream."""

    def __init__(self, work, remote_url, name="registry", env=None):
        self.work, self.remote, self.name = work, remote_url, name
        # e.g. SSL_CERT_FILE: Go's trust store for a TLS remote with a test CA.
        self.env = dict(os.environ, **(env or {}))
        self.root = os.path.join(work, name + "-storage")
        self.port = free_port()
        self.cfg = os.path.join(work, name + ".yml")
        open(self.cfg, "w").write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{self.port}
proxy:
  remoteurl: {remote_url}
""")
        self.proc = None

    def start(self):
        """Starts with empty storage: every start is a cold cache."""
        shutil.rmtree(self.root, ignore_errors=True)
        os.makedirs(self.root)
        self.proc = spawn(["docker-registry", "serve", self.cfg], env=self.env,
                          stdout=open(os.path.join(self.work, self.name + ".log"), "ab"),
                          stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self


# ---- TLS test CA and the box's hash rate -------------------------------------------------------

def issue_leaf(work, ca_crt, ca_key, name, ip=None, prefix="leaf"):
    """An ECDSA P-256 server leaf for `name` (and `ip`, if given) signed by the CA in
    `ca_crt`/`ca_key`, like the ones lancached issues; returns (leaf.crt, leaf.key) under
    `work`, named after `prefix`."""
    key, csr, crt, ext = (os.path.join(work, f"{prefix}.{x}") for x in ("key", "csr", "crt", "ext"))
    san = f"DNS:{name}" + (f",IP:{ip}" if ip else "")
    open(ext, "w").write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
                         "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n")
    run = lambda *c: subprocess.run(list(c), check=True, capture_output=True)
    run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-sha256", "-extfile", ext, "-out", crt)
    return crt, key


def test_ca(work, name="upstream.test", ip="127.0.0.1"):
    """A throw-away CA (ECDSA P-256) and a leaf for `name` and `ip` signed by it; returns
    (ca.crt, leaf.crt, leaf.key)."""
    ca_crt, ca_key = os.path.join(work, "testca.crt"), os.path.join(work, "testca.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "2", "-subj", "/CN=bench test CA",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
                   check=True, capture_output=True)
    return (ca_crt, *issue_leaf(work, ca_crt, ca_key, name, ip))


def sha256_gibps(seconds=2):
    """This box's single-core sha256 rate (OpenSSL's EVP path, SHA-NI where the CPU has it, as
    fast as the sha2 crate's), in GiB/s, from `openssl speed -evp sha256` on 1 MiB blocks."""
    out = subprocess.run(["openssl", "speed", "-evp", "sha256", "-bytes", str(MIB), "-seconds", str(seconds)],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("sha256") and line.rstrip().endswith("k"):
            return float(line.split()[-1][:-1]) * 1000 / GIB
    raise SystemExit(f"cannot read openssl speed's output: {out!r}")


# ---- clients ----------------------------------------------------------------------------------

def curl(url, rng=None, out="/dev/null", extra=()):
    cmd = ["curl", "-sS", "-f", "-o", out, *extra, url]
    if rng:
        cmd[1:1] = ["-r", rng]
    return subprocess.Popen(cmd)


def ranges(size, parts):
    step = size // parts
    return [(i * step, size - 1 if i == parts - 1 else (i + 1) * step - 1) for i in range(parts)]


def fetch(url, size, parts, extra=()):
    """Downloads `size` bytes from url as `parts` parallel curl ranges (1 = one plain GET);
    returns seconds."""
    t = time.monotonic()
    if parts == 1:
        ps = [curl(url, extra=extra)]
    else:
        ps = [curl(url, f"{a}-{b}", extra=extra) for a, b in ranges(size, parts)]
    bad = [p for p in ps if p.wait() != 0]
    if bad:
        raise SystemExit(f"curl failed on {url}")
    return time.monotonic() - t


def raise_nofile(n=65536):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
