"""The upstream bandwidth cap (run through scripts/bench/uplink.sh): lancached with
`upstream.max_rate = CAP` (default 100Mbit) fills a cold blob of UPLINK_MIB (default 360 MiB,
about 30 s at 100 Mbit/s) from a local nginx upstream over unshaped loopback, and

  rate   the upstream rate averaged over the whole transfer (nginx's bytes sent / the time from
         the first request to publication), against the cap (goal: within ±5 %);
  hits   cache hits of a HIT_MIB blob (one stream, page cache warm) while the capped fill runs,
         against the same hits with no fill running (goal: within 10 %).

Each hit figure is the median of RUNS downloads; the capped transfer runs once (it is 30 s).
Prints a readable summary and `RESULT key=value` lines."""

import os
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, RUNS, Lancached, Upstream, cleanup, fetch, free_port, median,
                      random_file, raise_nofile, result, warm, workdir)

SIZE = int(os.environ.get("UPLINK_MIB", "360")) * MIB
HIT = int(os.environ.get("HIT_MIB", "256")) * MIB
CAP = os.environ.get("CAP", "100Mbit")
REPO = "library/bench"


def cap_bits(cap):
    m = re.fullmatch(r"([0-9.]+)(bit|Kbit|Mbit|Gbit)", cap)
    if not m:
        raise SystemExit(f"uplink.py: CAP in bits please (e.g. 100Mbit), not {cap!r}")
    return float(m.group(1)) * {"bit": 1, "Kbit": 1e3, "Mbit": 1e6, "Gbit": 1e9}[m.group(2)]


def say(msg):
    print(msg, flush=True)


def set_cap(lc, cap):
    text = open(lc.cfg).read()
    text = re.sub(r'(?m)^max_rate = .*\n', "", text)
    text = text.replace("[upstream]\n", f'[upstream]\nmax_rate = "{cap}"\n', 1)
    open(lc.cfg, "w").write(text)
    os.kill(lc.pid, signal.SIGHUP)
    time.sleep(0.5)


def hits(lc, hexd, n):
    url = lc.url(f"/blobs/sha256:{hexd}")
    warm(lc.blob_path(hexd))
    return [HIT / GIB / fetch(url, HIT, 1) for _ in range(n)]


def main():
    raise_nofile()
    work = workdir()
    up = Upstream(work, f"127.0.0.1:{free_port()}", name="upstream")
    cache = os.path.join(work, "cache")
    os.makedirs(os.path.join(cache, "blobs"))
    blob = os.path.join(work, "cold")
    cold = random_file(blob, SIZE)
    up.add_blob_file(blob, cold)
    hot_file = os.path.join(work, "hot")
    hot = random_file(hot_file, HIT)
    os.rename(hot_file, os.path.join(cache, "blobs", "sha256-" + hot))
    up.start()
    lc = Lancached(work, "http://" + up.listen, cache=cache).start()
    time.sleep(1)

    base = hits(lc, hot, RUNS)
    set_cap(lc, CAP)
    mark = up.log_mark()
    cold_url = lc.url(f"/blobs/sha256:{cold}?registry=registry.ollama.ai&repo={REPO}")
    t0 = time.monotonic()
    done = {}

    def pull():
        fetch(cold_url, SIZE, 1)
        done["t"] = time.monotonic()

    th = threading.Thread(target=pull)
    th.start()
    # Hits while the capped fill runs: spread over its middle, after its start.
    time.sleep(3)
    during = []
    for _ in range(RUNS):
        during += hits(lc, hot, 1)
        time.sleep(2)
    th.join()
    lc.wait_published(cold)
    dt = time.monotonic() - t0
    sent = up.blob_bytes(cold, mark)
    rate = sent * 8 / dt
    cap = cap_bits(CAP)
    say(f"(uplink) cap {CAP}: {sent / MIB:.0f} MiB from upstream in {dt:.1f} s = "
        f"{rate / 1e6:.1f} Mbit/s ({rate / cap:.3f}× the cap)")
    say(f"    hits of a {HIT >> 20} MiB blob: {median(base):.2f} GiB/s idle, "
        f"{median(during):.2f} GiB/s while the capped fill runs (medians of {RUNS})")
    result("uplink.cap.mbps", cap / 1e6)
    result("uplink.capped.mbps", rate / 1e6)
    result("uplink.upstream_ratio", sent / SIZE)
    result("uplink.secs", dt)
    result("uplink.hit_idle.gibps", median(base))
    result("uplink.hit_during.gibps", median(during))
    lc.stop()


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
