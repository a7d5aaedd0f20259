"""Profiles lancached's cold fill (run through scripts/bench/cold_profile.sh): one PROF_MIB blob
pulled cold as one stream from an upstream nginx over plain HTTP or TLS (PROF_UPSTREAM=http|tls),
PROF_PULLS times, with `perf record -g` attached to the daemon for every pull. Prints the
daemon's CPU-s per GiB per pull (schedstat, every thread, until the blob is published), the
pull's GiB/s, and perf's report by symbol (self time, children folded in the call graph) so
that docs/proxy.md can show where a cold GiB's time goes."""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, Lancached, Upstream, cleanup, cpu_of, curl, free_port, median,
                      random_file, raise_nofile, result, test_ca, warm, workdir)

SIZE = int(os.environ.get("PROF_MIB", "1024")) * MIB
PULLS = int(os.environ.get("PROF_PULLS", "3"))
KIND = os.environ.get("PROF_UPSTREAM", "http")
OUT = os.environ.get("PROF_OUT", "/tmp/lancache-cold.perf.data")
REPO = "library/bench"


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
    rates, cpus = [], []
    perf = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-q", "-o", OUT, "-p", str(lc.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    for _ in range(PULLS):
        lc.make_cold(hexd)
        warm(upfile)
        c0 = cpu_of([lc.pid])
        t = time.monotonic()
        if curl(url).wait() != 0:
            raise SystemExit("the cold pull failed")
        dt = time.monotonic() - t
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
    rep = subprocess.run(["perf", "report", "-i", OUT, "--no-children", "--sort", "symbol",
                          "--stdio", "-g", "none", "--percent-limit", "1"],
                         capture_output=True, text=True).stdout
    print("\n".join(line for line in rep.splitlines() if line and not line.startswith("#")))


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
