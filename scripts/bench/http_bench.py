"""The HTTP side of the benchmark (run through scripts/bench/http.sh). Parts, chosen with
PARTS (comma-separated, default all):

  hit    a cache hit of the SIZE_MIB blob (page cache warm): 1 stream and 16 parallel ranges,
         lancached vs nginx (sendfile) serving the same file; throughput and server CPU-s/GiB.
  cold   a cold pull of the same blob: 16 ranges and 1 stream through lancached vs straight from
         the upstream (nginx), and 1 stream through docker-registry in proxy mode (its cold path
         answers a Range request with the whole blob, so 16 ranges would be wrong there).
  link   the cold pull again with the upstream behind a veth into a network namespace shaped to
         LINK_RATE (tc tbf, default 1gbit), direct vs through lancached (needs root).
  bytes  16 concurrent cold pulls of one BYTES_MIB blob: bytes upstream sent, for lancached and
         for docker-registry, divided by the blob size.
  rss    peak memory of a freshly started lancached during 200 and 1000 concurrent ranged
         downloads of the cached blob (RssAnon sampled every 20 ms, and VmHWM).

Each figure is the median of RUNS runs; the servers alternate run by run so they share the
machine's noise. Prints a readable summary and `RESULT key=value` lines."""

import asyncio
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, RUNS, DockerRegistry, Lancached, RssSampler, Upstream, cleanup,
                      cpu_of, fetch, free_port, median, netns_setup, random_file, raise_nofile,
                      result, warm, workdir, at_exit)

SIZE = int(os.environ.get("SIZE_MIB", "1024")) * MIB
BYTES_SIZE = int(os.environ.get("BYTES_MIB", "256")) * MIB
LINK_SIZE = int(os.environ.get("LINK_MIB", "256")) * MIB
LINK_RATE = os.environ.get("LINK_RATE", "1gbit")
PARTS = os.environ.get("PARTS", "hit,cold,link,bytes,rss").split(",")
REPO = "library/bench"


def say(msg):
    print(msg, flush=True)


def part_hit(work, lc, ng_pids, nginx_url, hexd):
    lc_url = lc.url(f"/blobs/sha256:{hexd}")
    warm(lc.blob_path(hexd))
    res = {}
    for _ in range(RUNS):
        for parts in (1, 16):
            for name, url, pids in (("nginx", nginx_url, ng_pids), ("lancached", lc_url, lambda: [lc.pid])):
                p = pids()
                c0 = cpu_of(p)
                dt = fetch(url, SIZE, parts)
                c1 = cpu_of(p)
                r = res.setdefault((name, parts), ([], []))
                r[0].append(SIZE / GIB / dt)
                r[1].append((c1 - c0) / (SIZE / GIB))
    say(f"(hit) {SIZE >> 20} MiB blob in page cache, median of {RUNS}")
    say(f"    {'server':10} {'streams':>7} {'GiB/s':>7} {'CPU-s/GiB':>10}")
    for (name, parts), (rates, cpus) in sorted(res.items()):
        say(f"    {name:10} {parts:7} {median(rates):7.2f} {median(cpus):10.3f}")
        tag = "1" if parts == 1 else "16"
        result(f"hit{tag}.{name}.gibps", median(rates))
        result(f"hit{tag}.{name}.cpu_s_per_gib", median(cpus))


def part_cold(work, lc, up, hexd):
    dr = DockerRegistry(work, "http://" + up.listen)
    direct_url = f"http://{up.listen}/v2/{REPO}/blobs/sha256:{hexd}"
    cold_url = lc.url(f"/blobs/sha256:{hexd}?registry=registry.ollama.ai&repo={REPO}")
    dr_url = dr.url(f"/v2/{REPO}/blobs/sha256:{hexd}")
    upfile = os.path.join(up.dir, "blobs", hexd)
    rates = {}
    for _ in range(RUNS):
        for parts in (16, 1):
            warm(upfile)
            rates.setdefault(("direct", parts), []).append(SIZE / GIB / fetch(direct_url, SIZE, parts))
            lc.make_cold(hexd)
            warm(upfile)
            t = time.monotonic()
            fetch(cold_url, SIZE, parts)
            dt = time.monotonic() - t
            lc.wait_published(hexd)
            rates.setdefault(("lancached", parts), []).append(SIZE / GIB / dt)
        dr.start()
        warm(upfile)
        rates.setdefault(("docker-registry", 1), []).append(SIZE / GIB / fetch(dr_url, SIZE, 1))
        dr.stop()
    say(f"(cold) {SIZE >> 20} MiB blob, upstream nginx on loopback, median of {RUNS}")
    for (name, parts), r in sorted(rates.items()):
        say(f"    {name:16} {parts:2} stream(s) {median(r):6.2f} GiB/s")
        result(f"cold{parts}.{name}.gibps", median(r))


def part_link(work):
    if os.geteuid() != 0:
        say("(link) skipped: needs root for ip netns and tc")
        return
    ns = netns_setup(LINK_RATE)
    port = 8080
    up = Upstream(work, f"10.231.0.2:{port}", netns=ns, name="linkup")
    blob = os.path.join(work, "linkblob")
    hexd = random_file(blob, LINK_SIZE)
    up.add_blob_file(blob, hexd)
    os.remove(blob)
    up.start()
    lc = Lancached(work, f"http://10.231.0.2:{port}", name="linklc").start()
    direct_url = f"http://10.231.0.2:{port}/v2/{REPO}/blobs/sha256:{hexd}"
    cold_url = lc.url(f"/blobs/sha256:{hexd}?registry=registry.ollama.ai&repo={REPO}")
    d, c = [], []
    for _ in range(RUNS):
        d.append(LINK_SIZE / GIB / fetch(direct_url, LINK_SIZE, 16))
        lc.make_cold(hexd)
        t = time.monotonic()
        fetch(cold_url, LINK_SIZE, 16)
        c.append(LINK_SIZE / GIB / (time.monotonic() - t))
        lc.wait_published(hexd)
    lc.stop()
    say(f"(link) {LINK_SIZE >> 20} MiB cold pull over a veth shaped to {LINK_RATE}, 16 ranges, median of {RUNS}")
    say(f"    direct {median(d) * 8.59:6.3f} Gbit/s, through lancached {median(c) * 8.59:6.3f} Gbit/s")
    result("link16.direct.gibps", median(d))
    result("link16.lancached.gibps", median(c))


def part_bytes(work, up):
    blob = os.path.join(work, "bytesblob")
    hexd = random_file(blob, BYTES_SIZE)
    up.add_blob_file(blob, hexd)
    os.remove(blob)
    lc = Lancached(work, "http://" + up.listen, name="byteslc").start()
    dr = DockerRegistry(work, "http://" + up.listen, name="bytesreg")
    url_lc = lc.url(f"/blobs/sha256:{hexd}?registry=registry.ollama.ai&repo={REPO}")
    url_dr = dr.url(f"/v2/{REPO}/blobs/sha256:{hexd}")
    ratios = {"lancached": [], "docker-registry": []}
    for _ in range(RUNS):
        lc.make_cold(hexd)
        mark = up.log_mark()
        ps = [subprocess.Popen(["curl", "-sSf", "-o", "/dev/null", url_lc]) for _ in range(16)]
        if any(p.wait() for p in ps):
            raise SystemExit("a cold pull through lancached failed")
        lc.wait_published(hexd)
        time.sleep(0.3)
        ratios["lancached"].append(up.blob_bytes(hexd, mark) / BYTES_SIZE)
        dr.start()
        mark = up.log_mark()
        ps = [subprocess.Popen(["curl", "-sSf", "-o", "/dev/null", url_dr]) for _ in range(16)]
        if any(p.wait() for p in ps):
            raise SystemExit("a cold pull through docker-registry failed")
        time.sleep(1.0)  # its background copy into storage may still be running
        dr.stop()
        time.sleep(0.3)
        ratios["docker-registry"].append(up.blob_bytes(hexd, mark) / BYTES_SIZE)
    lc.stop()
    say(f"(bytes) 16 concurrent cold pulls of a {BYTES_SIZE >> 20} MiB blob: upstream bytes / blob size, max of {RUNS}")
    for name, r in ratios.items():
        say(f"    {name:16} {max(r):6.2f}x  (runs: {' '.join(f'{x:.2f}' for x in r)})")
        result(f"bytes16.{name}.ratio", max(r))


async def _download_all(port, hexd, n, chunk, size):
    """n connections opened first, then n ranged GETs sent, then all read: n downloads really in
    flight at once."""
    conns = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port) for _ in range(n)])
    for i, (_, w) in enumerate(conns):
        a = (i * chunk) % (size - chunk)
        w.write(f"GET /blobs/sha256:{hexd} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes={a}-{a + chunk - 1}\r\n"
                f"Connection: close\r\n\r\n".encode())
    await asyncio.gather(*[w.drain() for _, w in conns])

    async def read(r, w):
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 206"):
            raise SystemExit(f"unexpected answer: {head[:40]!r}")
        got = 0
        while True:
            b = await r.read(1 << 20)
            if not b:
                break
            got += len(b)
        w.close()
        if got != chunk:
            raise SystemExit(f"short body: {got} of {chunk}")

    await asyncio.gather(*[read(r, w) for r, w in conns])


def part_rss(work, up, cache, hexd):
    raise_nofile()
    for n in (200, 1000):
        lc = Lancached(work, "http://" + up.listen, cache=cache, name=f"rss{n}").start()
        chunk = min(4 * MIB, SIZE // n)
        with RssSampler(lc.pid) as s:
            asyncio.run(_download_all(lc.port, hexd, n, chunk, SIZE))
        lc.stop()
        say(f"(rss) {n} concurrent ranged downloads of {chunk >> 10} KiB: peak RssAnon {s.peak_anon / 1024:.1f} MiB,"
            f" VmHWM {s.hwm / 1024:.1f} MiB (counts the mapped blob's page-cache pages the process touched)")
        result(f"rss{n}.rss_anon_mib", s.peak_anon / 1024)
        result(f"rss{n}.vmhwm_mib", s.hwm / 1024)


def main():
    raise_nofile()
    work = workdir()
    up = Upstream(work, f"127.0.0.1:{free_port()}", name="upstream")
    cache = os.path.join(work, "cache")
    os.makedirs(os.path.join(cache, "blobs"))
    need_blob = any(p in PARTS for p in ("hit", "cold", "rss"))
    hexd = None
    if need_blob:
        blob = os.path.join(work, "blob")
        hexd = random_file(blob, SIZE)
        up.add_blob_file(blob, hexd)
        os.rename(blob, os.path.join(cache, "blobs", "sha256-" + hexd))
    np_ = free_port()
    up.extra = f"  server {{ listen 127.0.0.1:{np_}; access_log off; root {cache}; }}"
    up.start()
    lc = Lancached(work, "http://" + up.listen, cache=cache).start()
    if "hit" in PARTS:
        part_hit(work, lc, up.pids, f"http://127.0.0.1:{np_}/blobs/sha256-{hexd}", hexd)
    if "cold" in PARTS:
        part_cold(work, lc, up, hexd)
    lc.stop()
    if "rss" in PARTS:
        if not os.path.exists(os.path.join(cache, "blobs", "sha256-" + hexd)):
            os.link(os.path.join(up.dir, "blobs", hexd), os.path.join(cache, "blobs", "sha256-" + hexd))
        part_rss(work, up, cache, hexd)
    if "bytes" in PARTS:
        part_bytes(work, up)
    if "link" in PARTS:
        part_link(work)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
