"""Profiles lancached's cold fill (run through scripts/bench/cold_profile.sh): one PROF_MIB blob
pulled cold as one stream from an upstream nginx over plain HTTP or TLS (PROF_UPSTREAM=http|tls),
PROF_PULLS times, with `perf record -g` attached to the daemon for every pull. Prints the
daemon's CPU-s per GiB per pull (schedstat, every thread, until the blob is published), the
pull's GiB/s, and perf's report by symbol (self time, children folded in the call graph) so
that docs/proxy.md can show where a cold GiB's time goes.

PROF_MODE=hit profiles the hit instead: the blob, once published, downloaded PROF_PULLS times
as one stream from lancached and from the upstream nginx (sendfile) serving the same file, each
server under its own `perf record`; CPU-s per GiB (schedstat) and both flat profiles."""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, Lancached, Upstream, cleanup, cpu_of, fetch, free_port, median,
                      random_file, raise_nofile, result, test_ca, warm, workdir)

SIZE = int(os.environ.get("PROF_MIB", "1024")) * MIB
PULLS = int(os.environ.get("PROF_PULLS", "3"))
KIND = os.environ.get("PROF_UPSTREAM", "http")
OUT = os.environ.get("PROF_OUT", "/tmp/lancache-cold.perf.data")
REPO = "library/bench"
MODE = os.environ.get("PROF_MODE", "cold")


def report(path):
    rep = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "symbol",
                          "--stdio", "-g", "none", "--percent-limit", "1"],
                         capture_output=True, text=True).stdout
    return "\n".join(line.rstrip() for line in rep.splitlines() if line and not line.startswith("#"))


def record(pids, out):
    return subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-q", "-o", out, "-p",
                             ",".join(str(p) for p in pids)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_hit(lc, up, url, hexd):
    """Both servers, one stream each, PULLS times, alternating; a perf.data per server."""
    fetch(url, SIZE, 1)
    lc.wait_published(hexd)
    warm(lc.blob_path(hexd))
    servers = (("lancached", lc.url(f"/blobs/sha256:{hexd}"), lambda: [lc.pid]),
               ("nginx", f"http://{up.listen}/v2/{REPO}/blobs/sha256:{hexd}", up.pids))
    cpus = {}
    for who, u, pids in servers:
        perf = record(pids(), f"{OUT}.{who}")
        time.sleep(1.0)
        for _ in range(PULLS):
            c0 = cpu_of(pids())
            fetch(u, SIZE, 1)
            cpus.setdefault(who, []).append((cpu_of(pids()) - c0) / (SIZE / GIB))
        perf.send_signal(signal.SIGINT)
        perf.wait()
    for who, c in cpus.items():
        print(f"(profile) hit, 1 stream, {who}: {median(c):.3f} CPU-s/GiB (runs: "
              f"{' '.join(f'{x:.3f}' for x in c)})", flush=True)
        result(f"prof.hit.{who}.cpu_s_per_gib", median(c))
        print(report(f"{OUT}.{who}"))


def main():
    raise_nofile()
    work = workdir("lancache-prof-")
    tls = None
    extra = ""
    if KIND == "tls":
        ca, crt, key = test_ca(work)
        tls = (crt, key)
        extra = f'ca_file = "{ca}"'
    up = Upstream(work, f"127.0.0.1:{free_port()}", name="up", tls=tls)
    path = os.path.join(work, "blob")
    hexd = random_file(path, SIZE)
    up.add_blob_file(path, hexd)
    os.remove(path)
    up.start()
    scheme = "https" if tls else "http"
    lc = Lancached(work, f"{scheme}://{up.listen}", extra_upstream=extra).start()
    url = lc.url(f"/blobs/sha256:{hexd}?registry=registry.ollama.ai&repo={REPO}")
    upfile = os.path.join(up.dir, "blobs", hexd)
    if MODE == "hit":
        profile_hit(lc, up, url, hexd)
        lc.stop()
        return
    rates, cpus = [], []
    perf = record([lc.pid], OUT)
    time.sleep(1.0)
    for _ in range(PULLS):
        lc.make_cold(hexd)
        warm(upfile)
        c0 = cpu_of([lc.pid])
        dt = fetch(url, SIZE, 1)
        lc.wait_published(hexd)
        cpus.append((cpu_of([lc.pid]) - c0) / (SIZE / GIB))
        rates.append(SIZE / GIB / dt)
    perf.send_signal(signal.SIGINT)
    perf.wait()
    lc.stop()
    print(f"(profile) {KIND} upstream, {SIZE >> 20} MiB, {PULLS} cold pulls: "
          f"{median(rates):.2f} GiB/s, {median(cpus):.3f} CPU-s/GiB (runs: "
          f"{' '.join(f'{c:.3f}' for c in cpus)})", flush=True)
    result(f"prof.{KIND}.gibps", median(rates))
    result(f"prof.{KIND}.cpu_s_per_gib", median(cpus))
    print(report(OUT))


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
