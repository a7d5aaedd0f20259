"""Start-up benchmark (run through scripts/bench/startup.sh): time from exec of lancached to
READY=1 on its NOTIFY_SOCKET (a datagram socket this script listens on, as systemd would),
with a cache directory holding BLOBS small blobs (default 10 000) referenced by BLOBS/5
manifests (config + 4 layers each). Two cases, RUNS starts each, median reported:

  cold-index  the access index removed before each start, so the daemon rebuilds it from the
              directory (the first start on an existing models directory, or after a loss);
  warm-index  the index left from the previous start in place (every ordinary restart).

READY does not wait for the index (it is opened and reconciled in the background while the
listeners already serve), so the daemon's own "access index ready in ..." log line is reported
too. Prints a summary and `RESULT key=value` lines."""

import hashlib
import json
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (MANIFEST_TYPE, REGISTRY, RUNS, Lancached, cleanup, median, result, spawn,
                      stop, workdir)

BLOBS = int(os.environ.get("BLOBS", "10000"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
INDEX_LINE = re.compile(r"access index ready in ([0-9.]+)(µs|us|ms|s) \((.*)\)")


def populate(cache):
    blobs = os.path.join(cache, "blobs")
    os.makedirs(blobs)
    per = 5
    for m in range(BLOBS // per):
        descs = []
        for j in range(per):
            data = f"lancache start-up bench model {m} blob {j}\n".encode() + os.urandom(64)
            hexd = hashlib.sha256(data).hexdigest()
            open(os.path.join(blobs, "sha256-" + hexd), "wb").write(data)
            descs.append({"digest": "sha256:" + hexd, "size": len(data)})
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": dict(mediaType="application/vnd.docker.container.image.v1+json", **descs[0]),
            "layers": [dict(mediaType="application/vnd.ollama.image.model", **d) for d in descs[1:]],
        }
        d = os.path.join(cache, "manifests", REGISTRY, "library", f"model{m}")
        os.makedirs(d)
        open(os.path.join(d, "latest"), "w").write(json.dumps(manifest))


def index_seconds(log, since):
    with open(log, errors="replace") as f:
        f.seek(since)
        for line in f:
            m = INDEX_LINE.search(ANSI.sub("", line))
            if m:
                v, unit = float(m.group(1)), m.group(2)
                return v * {"s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6}[unit], m.group(3)
    return None, None


def one_start(lc, notify_path):
    """Returns (seconds to READY=1, seconds the daemon took to ready its index, index path)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.unlink(notify_path)
    except FileNotFoundError:
        pass
    sock.bind(notify_path)
    sock.settimeout(30)
    mark = os.path.getsize(lc.log) if os.path.exists(lc.log) else 0
    t0 = time.monotonic()
    lc.start(wait=False)
    try:
        while True:
            msg = sock.recv(4096).decode(errors="replace")
            if "READY=1" in msg.split("\n"):
                ready = time.monotonic() - t0
                break
    finally:
        sock.close()
    idx, path = None, None
    end = time.monotonic() + 60
    while idx is None and time.monotonic() < end:
        idx, path = index_seconds(lc.log, mark)
        time.sleep(0.02)
    lc.stop()
    return ready, idx, path


def remove_index(path):
    d, base = os.path.dirname(path), os.path.basename(path)
    for f in os.listdir(d):
        if f.startswith(base):
            os.remove(os.path.join(d, f))


def main():
    work = workdir()
    cache = os.path.join(work, "cache")
    t = time.monotonic()
    populate(cache)
    print(f"(start-up) {BLOBS} blobs, {BLOBS // 5} manifests written in {time.monotonic() - t:.1f}s", flush=True)
    notify = os.path.join(work, "notify.sock")
    lc = Lancached(work, "http://127.0.0.1:9", cache=cache, log_filter="info",
                   env={"NOTIFY_SOCKET": notify})
    # A first start makes the index (and the daemon's state dir), and says where it lives.
    _, _, path = one_start(lc, notify)
    if not path:
        raise SystemExit("the daemon never logged 'access index ready'")
    res = {}
    for _ in range(RUNS):
        remove_index(path)
        res.setdefault("cold", []).append(one_start(lc, notify))
        res.setdefault("warm", []).append(one_start(lc, notify))
    for case, runs in res.items():
        ready = median([r[0] for r in runs]) * 1e3
        idx = median([r[1] for r in runs]) * 1e3
        print(f"    {case}-index: READY after {ready:.1f} ms (median of {RUNS}), index ready after {idx:.1f} ms",
              flush=True)
        result(f"startup.{case}_index.ready_ms", ready)
        result(f"startup.{case}_index.index_ms", idx)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
