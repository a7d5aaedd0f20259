"""The cold-fill benchmark (run through scripts/bench/cold.sh): one blob that is not in the cache,
pulled through lancached from a local upstream, against this box's sha256 rate (the ceiling of
any verified fill: every byte of one blob is hashed in order, on one core), against the direct
download from the same upstream, and against docker-registry's pull-through cache.

For each blob size (COLD_SIZES, MiB, default 64,256,1024; COLD_4G=1 adds 4096) and each upstream
(nginx over plain HTTP, and nginx over TLS 1.3 with a throw-away CA that lancached trusts through
`upstream.ca_file`, curl through `--cacert` and docker-registry through SSL_CERT_FILE):

  s1    one client, one plain GET of the whole blob;
  plan  Ollama's part plan: parts of clamp(size/16, 100 MB, 1000 MB), all at once, each a ranged
        GET (so 1 part at 64 MiB, 3 at 256 MiB, 11 at 1 GiB, 16 at 4 GiB);
  c16   16 clients starting at once, each a plain GET of the whole blob (lancached only); its
        GiB/s counts all 16 blobs' bytes over the time to the last byte, and its CPU is per GiB
        delivered (one fill and fifteen more sends of the same bytes).

A cold run removes the published blob and any partial fill first, warms the upstream's file in
the page cache, then times from the first request to the last client's last byte. lancached's
CPU is every thread's on-CPU time (schedstat) from the first request until the blob is
published, divided by the blob's GiB. The direct download is the same requests sent straight to
the upstream; docker-registry (Debian's, proxy mode, empty storage each run) gets s1 only (its
cold path answers a Range with the whole blob).

The sha256 rate is `openssl speed -evp sha256` on 1 MiB blocks, once per run, in the same run.
Last, the hit: the largest blob of at most 1 GiB, now published, downloaded as one stream from
lancached and from nginx (sendfile) serving the same file; throughput and server CPU-s per GiB.

Also in the same run: the CPU of writing a new GiB into the page cache (dd from /dev/zero into
a new file, no sync), the other cost a fill cannot avoid besides the hash; and, with root, the
cold pull over a veth to a namespace shaped by tbf to each of COLD_LINKS (default 1gbit,10gbit),
1 stream and the part plan, direct vs through lancached, for a COLD_LINK_MIB blob (default 1024,
or the largest size at most that). The hit's CPU is given for the server alone and with its
client's (the sum is what compares on loopback; see the comment there).

Each figure is the median of RUNS runs; every contender runs once per run, in turn, so they share
the machine's noise. Prints a readable summary and `RESULT key=value` lines."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (GIB, MIB, RUNS, DockerRegistry, Lancached, Upstream, cleanup, cpu_of, curl,
                      free_port, median, netns_setup, random_file, raise_nofile, result,
                      sha256_gibps, test_ca, warm, workdir)

SIZES = [int(x) for x in os.environ.get("COLD_SIZES", "64,256,1024").split(",") if x]
if os.environ.get("COLD_4G"):
    SIZES.append(4096)
REPO = "library/bench"
MB = 1000 * 1000
# Shaped links for the cold pull over a real-ish uplink (empty: skip), and the blob size used.
LINKS = [x for x in os.environ.get("COLD_LINKS", "1gbit,10gbit").split(",") if x]
LINK_MIB = int(os.environ.get("COLD_LINK_MIB", "1024"))


def say(msg):
    print(msg, flush=True)


def ollama_plan(size):
    """Ollama's downloader: parts of clamp(size/16, 100 MB, 1000 MB), the last one shorter."""
    part = min(max(size // 16, 100 * MB), 1000 * MB)
    return [(a, min(a + part, size) - 1) for a in range(0, size, part)]


def pull(url, size, mode, extra=()):
    """Runs one pull in `mode` (s1, plan, c16); returns (seconds to the last byte, the
    clients' CPU seconds)."""
    t = time.monotonic()
    if mode == "s1":
        ps = [curl(url, extra=extra)]
    elif mode == "plan":
        ps = [curl(url, f"{a}-{b}", extra=extra) for a, b in ollama_plan(size)]
    else:
        ps = [curl(url, extra=extra) for _ in range(16)]
    cpu, bad = 0.0, False
    for p in ps:
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        bad = bad or p.returncode != 0
        cpu += ru.ru_utime + ru.ru_stime
    if bad:
        raise SystemExit(f"curl failed on {url} ({mode})")
    return time.monotonic() - t, cpu


def delivered(size, mode):
    """Bytes a pull delivers: 16 whole blobs for c16, one blob otherwise."""
    return size * (16 if mode == "c16" else 1)


def pagecache_write_cpu(work, size):
    """CPU-s per GiB of writing `size` new bytes into the page cache of a new file on the
    cache's filesystem (dd from /dev/zero, no sync): the other cost a fill cannot avoid."""
    path = os.path.join(work, "ddfile")
    p = subprocess.Popen(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size // MIB}",
                          "status=none"])
    _, _, ru = os.wait4(p.pid, 0)
    os.remove(path)
    return (ru.ru_utime + ru.ru_stime) / (size / GIB)


def main():
    raise_nofile()
    work = workdir("lancache-cold-")
    ca, crt, key = test_ca(work)
    ups = {
        "http": Upstream(work, f"127.0.0.1:{free_port()}", name="up-http"),
        "tls": Upstream(work, f"127.0.0.1:{free_port()}", name="up-tls", tls=(crt, key)),
    }
    blobs = {}
    for mib in SIZES:
        path = os.path.join(work, f"blob{mib}")
        hexd = random_file(path, mib * MIB)
        for up in ups.values():
            up.add_blob_file(path, hexd)
        os.remove(path)
        blobs[mib] = hexd
    for up in ups.values():
        up.start()
    scheme = {"http": "http", "tls": "https"}
    lcs = {
        name: Lancached(work, f"{scheme[name]}://{up.listen}", name=f"lc-{name}",
                        extra_upstream=f'ca_file = "{ca}"').start()
        for name, up in ups.items()
    }
    drs = {
        name: DockerRegistry(work, f"{scheme[name]}://{up.listen}", name=f"dr-{name}",
                             env={"SSL_CERT_FILE": ca})
        for name, up in ups.items()
    }
    curl_extra = {"http": (), "tls": ("--cacert", ca)}
    res = {}  # key -> ([GiB/s], [CPU-s/GiB])

    def add(key, gibps, cpu=None):
        r = res.setdefault(key, ([], []))
        r[0].append(gibps)
        if cpu is not None:
            r[1].append(cpu)

    for run in range(RUNS):
        sha = sha256_gibps(1)
        add(("sha256",), sha, 1 / sha)
        add(("pagecache",), 0, pagecache_write_cpu(work, GIB))
        for mib, hexd in blobs.items():
            size = mib * MIB
            for name, up in ups.items():
                upfile = os.path.join(up.dir, "blobs", hexd)
                direct = f"{scheme[name]}://{up.listen}/v2/{REPO}/blobs/sha256:{hexd}"
                for mode in ("s1", "plan"):
                    warm(upfile)
                    add((name, mib, mode, "direct"), size / GIB / pull(direct, size, mode, curl_extra[name])[0])
                lc = lcs[name]
                url = lc.url(f"/blobs/sha256:{hexd}?registry=registry.ollama.ai&repo={REPO}")
                for mode in ("s1", "plan", "c16"):
                    lc.make_cold(hexd)
                    warm(upfile)
                    c0 = cpu_of([lc.pid])
                    dt, _ = pull(url, size, mode)
                    lc.wait_published(hexd)
                    cpu = cpu_of([lc.pid]) - c0
                    # c16: all 16 blobs' bytes over the time to the last one, and CPU per GiB
                    # delivered (one fill, 15 more sends).
                    gib = delivered(size, mode) / GIB
                    add((name, mib, mode, "lancached"), gib / dt, cpu / gib)
                dr = drs[name]
                dr.start()
                warm(upfile)
                c0 = cpu_of([dr.proc.pid])
                dt, _ = pull(dr.url(f"/v2/{REPO}/blobs/sha256:{hexd}"), size, "s1")
                time.sleep(0.2)
                cpu = cpu_of([dr.proc.pid]) - c0
                dr.stop()
                add((name, mib, "s1", "docker-registry"), size / GIB / dt, cpu / (size / GIB))
        say(f"(cold) run {run + 1} of {RUNS} done")

    sha = median(res[("sha256",)][0])
    say(f"(cold) sha256 on one core (openssl speed -evp sha256): {sha:.2f} GiB/s = {1 / sha:.3f} CPU-s/GiB")
    result("sha256.gibps", sha)
    result("sha256.cpu_s_per_gib", 1 / sha)
    pc = median(res[("pagecache",)][1])
    say(f"(cold) writing a new GiB into the page cache (dd): {pc:.3f} CPU-s/GiB; "
        f"hash + page-cache write: {1 / sha + pc:.3f} CPU-s/GiB")
    result("pagecache.cpu_s_per_gib", pc)
    result("floor.cpu_s_per_gib", 1 / sha + pc)
    for name in ups:
        say(f"(cold) upstream nginx over {name}, medians of {RUNS}")
        say(f"    {'MiB':>5} {'mode':5} {'who':16} {'GiB/s':>6} {'x sha':>6} {'CPU-s/GiB':>9}")
        for mib in blobs:
            for mode in ("s1", "plan", "c16"):
                for who in ("direct", "lancached", "docker-registry"):
                    r = res.get((name, mib, mode, who))
                    if not r:
                        continue
                    g = median(r[0])
                    cpu = median(r[1]) if r[1] else None
                    cpu_txt = f"{cpu:9.3f}" if cpu is not None else f"{'':9}"
                    say(f"    {mib:5} {mode:5} {who:16} {g:6.2f} {g / sha:6.2f} {cpu_txt}")
                    k = f"cold.{name}.{mib}.{mode}.{who}"
                    result(f"{k}.gibps", g)
                    if cpu is not None:
                        result(f"{k}.cpu_s_per_gib", cpu)

    # The hit, 1 stream: the largest blob of at most 1 GiB, published by the last cold run.
    mib = max([m for m in blobs if m <= 1024] or [min(blobs)])
    hexd, size = blobs[mib], mib * MIB
    lc, up = lcs["http"], ups["http"]
    if not os.path.exists(lc.blob_path(hexd)):
        pull(lc.url(f"/blobs/sha256:{hexd}?registry=registry.ollama.ai&repo={REPO}"), size, "s1")
        lc.wait_published(hexd)
    warm(lc.blob_path(hexd))
    servers = (("nginx", f"http://{up.listen}/v2/{REPO}/blobs/sha256:{hexd}", up.pids),
               ("lancached", lc.url(f"/blobs/sha256:{hexd}"), lambda: [lc.pid]))
    hit = {}
    for _ in range(RUNS):
        for who, url, pids in servers:
            p = pids()
            c0 = cpu_of(p)
            dt, client = pull(url, size, "s1")
            c1 = cpu_of(p)
            r = hit.setdefault(who, ([], [], []))
            r[0].append(size / GIB / dt)
            r[1].append((c1 - c0) / (size / GIB))
            r[2].append((c1 - c0 + client) / (size / GIB))
    # On loopback the receiver's TCP input runs in whichever context sends or releases the
    # socket, so the split of CPU between server and client is not the server's alone: the
    # sum is the comparable figure.
    say(f"(cold) then the hit: {mib} MiB published, 1 stream, median of {RUNS}")
    for who, (rates, cpus, totals) in hit.items():
        say(f"    {who:10} {median(rates):6.2f} GiB/s {median(cpus):7.3f} CPU-s/GiB server,"
            f" {median(totals):7.3f} server + client")
        result(f"coldhit1.{who}.gibps", median(rates))
        result(f"coldhit1.{who}.cpu_s_per_gib", median(cpus))
        result(f"coldhit1.{who}.total_cpu_s_per_gib", median(totals))

    if LINKS:
        part_link(work, blobs, curl_extra)


def part_link(work, blobs, curl_extra):
    """Cold pulls with the upstream in a namespace behind a veth shaped to each of LINKS (tbf
    both ways), 1 stream and the part plan, direct vs through lancached over the same link."""
    if os.geteuid() != 0:
        say("(cold link) skipped: needs root for ip netns and tc")
        return
    mib = min(LINK_MIB, max(blobs))
    mib = max(m for m in blobs if m <= mib)
    hexd, size = blobs[mib], mib * MIB
    res = {}
    for n, rate in enumerate(LINKS):
        net = f"10.232.{n}"
        burst = "16mbit" if rate.endswith("gbit") and int(rate[:-4]) >= 10 else "1mbit"
        ns = netns_setup(rate, net=net, tag=str(n), burst=burst)
        port = 8080
        up = Upstream(work, f"{net}.2:{port}", netns=ns, name=f"linkup{n}")
        up.add_blob_file(os.path.join(work, "up-http", "blobs", hexd), hexd)
        up.start()
        lc = Lancached(work, f"http://{net}.2:{port}", name=f"linklc{n}").start()
        direct = f"http://{net}.2:{port}/v2/{REPO}/blobs/sha256:{hexd}"
        url = lc.url(f"/blobs/sha256:{hexd}?registry=registry.ollama.ai&repo={REPO}")
        upfile = os.path.join(up.dir, "blobs", hexd)
        for _ in range(RUNS):
            for mode in ("s1", "plan"):
                warm(upfile)
                res.setdefault((rate, mode, "direct"), []).append(size / GIB / pull(direct, size, mode)[0])
                lc.make_cold(hexd)
                warm(upfile)
                dt, _ = pull(url, size, mode)
                lc.wait_published(hexd)
                res.setdefault((rate, mode, "lancached"), []).append(size / GIB / dt)
        lc.stop()
    say(f"(cold link) {mib} MiB cold pull over a shaped veth, median of {RUNS}")
    for (rate, mode, who), r in sorted(res.items()):
        say(f"    {rate:7} {mode:5} {who:10} {median(r):6.3f} GiB/s = {median(r) * 8.59:6.2f} Gbit/s")
        result(f"coldlink.{rate}.{mode}.{who}.gibps", median(r))


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
