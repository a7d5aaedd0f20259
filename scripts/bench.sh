#!/usr/bin/env bash
# The benchmark suite in one command: builds the release binaries if needed, installs the peers
# it measures against from Debian if they are missing, runs every part side by side with its
# anchor in one run (medians of RUNS runs), and prints one table:
#   measure | lancached | anchor | ratio | goal | met?
# The parts are scripts/bench/{http,https,dns,startup,uplink,hf,cluster,cold}.sh, which also run stand-alone; each prints
# `RESULT key=value` lines, collected here. Loopback and the script's own network namespace only.
# See docs/benchmarks.md.
#   usage: scripts/bench.sh
#   env:   RUNS=5 (medians of), SKIP_BUILD=1, PARTS=http,https,dns,startup,uplink,hf,cluster (and cold,
#          about 10 minutes at RUNS=5, so not in the default), LOG=<file for all output>,
#          and each part's own (SIZE_MIB, BYTES_MIB, LINK_MIB, LINK_RATE, SECS, BLOBS, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export RUNS=${RUNS:-5}
PARTS=${PARTS:-http,https,dns,startup,uplink,hf,cluster}
log=${LOG:-$(mktemp /tmp/lancache-bench.XXXXXX.log)}

# Debian peers: "command package" pairs; install only what is missing.
missing=()
for pair in "nginx nginx" "unbound unbound" "dnsmasq dnsmasq-base" "dnsperf dnsperf" "wrk wrk" \
  "docker-registry docker-registry" "curl curl" "tc iproute2" "ip iproute2" "dig bind9-dnsutils" \
  "python3 python3" "openssl openssl"; do
  set -- $pair
  command -v "$1" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$1" >/dev/null 2>&1 ||
    missing+=("$2")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "bench.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" ||
    { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
export PATH=$PATH:/usr/sbin:/sbin

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p lancached -p lancachectl
  # The HTTPS part's client (rustls + hyper, Go's h2 windows): see scripts/bench/https_bench.py.
  cargo build --release -p lancached --example https_bench_client
fi
export LANCACHED_BIN=${LANCACHED_BIN:-$root/target/release/lancached}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench.sh: RUNS=$RUNS, all output in $log" >&2
for part in ${PARTS//,/ }; do
  echo "== $part" | tee -a "$log" >&2
  bash "scripts/bench/$part.sh" 2>&1 | tee -a "$log" >&2
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A R
while IFS='=' read -r k v; do R[${k#RESULT }]=$v; done < <(grep '^RESULT ' "$log")

get() { printf '%s' "${R[$1]:-}"; }
fmt() { [ -n "$1" ] && awk -v x="$1" -v d="${2:-2}" 'BEGIN { printf "%.*f", d, x }' || printf 'n/a'; }

# row MEASURE OURS_KEY ANCHOR_KEY ANCHOR_NAME OP GOAL [DECIMALS]
#   OP: ge/le compare ours/anchor with GOAL; absle compares ours itself with GOAL;
#   eq compares ours itself with GOAL at two decimals; within: ours/anchor within 1 ± GOAL;
#   peer: no goal, the ratio only.
row() {
  local measure=$1 ours anchor ratio met goal_txt d=${7:-2}
  ours=$(get "$2"); anchor=$([ -n "$3" ] && get "$3" || true)
  ratio=n/a; met=n/a
  case $5 in
    ge | le | peer | within)
      if [ -n "$ours" ] && [ -n "$anchor" ]; then
        ratio=$(awk -v a="$ours" -v b="$anchor" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }')
      fi ;;
  esac
  case $5 in
    ge) goal_txt="≥ $6×"; [ "$ratio" != n/a ] && met=$(awk -v r="${ratio%×}" -v g="$6" 'BEGIN { print (r >= g ? "yes" : "NO") }') ;;
    le) goal_txt="≤ $6×"; [ "$ratio" != n/a ] && met=$(awk -v r="${ratio%×}" -v g="$6" 'BEGIN { print (r <= g ? "yes" : "NO") }') ;;
    absle) goal_txt="≤ $6"; [ -n "$ours" ] && met=$(awk -v r="$ours" -v g="$6" 'BEGIN { print (r <= g ? "yes" : "NO") }') ;;
    eq) goal_txt="= $6×"; [ -n "$ours" ] && ratio=$(fmt "$ours")× && met=$(awk -v r="$ours" -v g="$6" 'BEGIN { print (sprintf("%.2f", r) == sprintf("%.2f", g) ? "yes" : "NO") }') ;;
    within) goal_txt="1 ± $6×"; [ "$ratio" != n/a ] && met=$(awk -v r="${ratio%×}" -v g="$6" 'BEGIN { d = r - 1; if (d < 0) d = -d; print (d <= g + 1e-9 ? "yes" : "NO") }') ;;
    peer) goal_txt="(peer)"; met="—" ;;
    info) goal_txt="(info)"; met="—" ;;
  esac
  local anchor_txt="—"
  [ -n "$4" ] && anchor_txt="$(fmt "$anchor" "$d") ($4)"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$measure" "$(fmt "$ours" "$d")" "$anchor_txt" "$ratio" "$goal_txt" "$met"
}

{
  echo
  echo "lancache benchmark, $started, $(nproc) cores, load average before $load_before, after $load_after; medians of $RUNS runs"
  echo
  echo "| measure | lancached | anchor | ratio | goal | met? |"
  echo "|---|---|---|---|---|---|"
  if [[ ,$PARTS, == *,http,* ]]; then
    row "hit, 1 stream (GiB/s)" hit1.lancached.gibps hit1.nginx.gibps "nginx sendfile" ge 1.0
    row "hit, 16 ranges (GiB/s)" hit16.lancached.gibps hit16.nginx.gibps "nginx sendfile" ge 1.0
    row "hit server CPU-s per GiB, 1 stream" hit1.lancached.cpu_s_per_gib hit1.nginx.cpu_s_per_gib "nginx" le 1.0 3
    row "hit server CPU-s per GiB, 16 ranges" hit16.lancached.cpu_s_per_gib hit16.nginx.cpu_s_per_gib "nginx" le 1.0 3
    row "cold pull, 16 ranges (GiB/s)" cold16.lancached.gibps cold16.direct.gibps "direct from upstream" ge 0.9
    row "cold pull, 1 stream (GiB/s)" cold1.lancached.gibps cold1.direct.gibps "direct from upstream" ge 0.9
    row "cold pull, 1 stream (GiB/s)" cold1.lancached.gibps cold1.docker-registry.gibps "docker-registry proxy" peer ""
    row "cold pull over a ${LINK_RATE:-1gbit} veth, 16 ranges (GiB/s)" link16.lancached.gibps link16.direct.gibps "direct over the link" ge 0.9 3
    row "upstream bytes / blob size, 16 concurrent cold pulls" bytes16.lancached.ratio bytes16.docker-registry.ratio "docker-registry proxy" eq 1.00
    row "peak RssAnon, 200 concurrent downloads (MiB)" rss200.rss_anon_mib "" "" absle 64 1
    row "peak VmHWM, 200 concurrent downloads (MiB, mapped pages touched)" rss200.vmhwm_mib "" "" info "" 1
    row "peak RssAnon, 1000 concurrent downloads (MiB)" rss1000.rss_anon_mib "" "" absle 64 1
    row "peak VmHWM, 1000 concurrent downloads (MiB, mapped pages touched)" rss1000.vmhwm_mib "" "" info "" 1
  fi
  if [[ ,$PARTS, == *,https,* ]]; then
    for c in "h1 1 HTTP/1.1, 1 stream" "h1 16 HTTP/1.1, 16 ranges" "h2 1 h2, 1 stream" "h2 16 h2, 16 ranges on one connection" \
      "h2 16.f16k h2, 16 ranges, 16 KiB frames (Go < 1.24)"; do
      set -- $c
      k=https.$1.$2; what=${c#* * }
      row "HTTPS hit, $what (GiB/s)" $k.lancached.gibps $k.nginx.gibps "nginx TLS" ge 1.0
      row "HTTPS hit server CPU-s per GiB, $what" $k.lancached.cpu_s_per_gib $k.nginx.cpu_s_per_gib "nginx TLS" le 1.0 3
    done
  fi
  if [[ ,$PARTS, == *,dns,* ]]; then
    for w in intercepted forwarded; do
      row "DNS $w qps" dns.$w.lancached.qps dns.$w.unbound.qps "unbound, 1 thread" ge 1.0 0
      row "DNS $w qps" dns.$w.lancached.qps dns.$w.dnsmasq.qps "dnsmasq" peer "" 0
    done
    row "DNS one source, default rate_limit, qps" dns.limited.lancached-default.qps dns.limited.unbound.qps "unbound, 1 thread" ge 0.8 0
    row "DNS one source, rate_limit 2000, queries lost" dns.limited.lancached-2000.lost "" "" absle 0 0
  fi
  if [[ ,$PARTS, == *,uplink,* ]]; then
    row "upstream rate under a ${CAP:-100Mbit} cap, ~30 s fill (Mbit/s)" uplink.capped.mbps uplink.cap.mbps "the cap" within 0.05 1
    row "hit while the capped fill runs (GiB/s)" uplink.hit_during.gibps uplink.hit_idle.gibps "hit, no fill running" ge 0.9
  fi
  if [[ ,$PARTS, == *,hf,* ]]; then
    n=${HF_CLIENTS:-16}
    row "HF upstream bytes / repo size, $n concurrent cold snapshot_downloads" hf.cold.lancached.upstream_ratio hf.cold.olah.upstream_ratio "olah" eq 1.00
    row "HF cold, $n concurrent snapshot_downloads (GiB/s, all clients)" hf.cold.lancached.gibps hf.cold.olah.gibps "olah" peer ""
    row "HF cold, $n concurrent snapshot_downloads (GiB/s, all clients)" hf.cold.lancached.gibps hf.cold.direct.gibps "direct from the stand-in, ${n}× the bytes" peer ""
    row "HF warm, $n concurrent snapshot_downloads (GiB/s, all clients)" hf.warm.lancached.gibps hf.warm.direct.gibps "nginx stand-in" ge 0.9
    row "HF warm, $n concurrent snapshot_downloads (GiB/s, all clients)" hf.warm.lancached.gibps hf.warm.olah.gibps "olah" peer ""
    row "HF hit, 1 stream (GiB/s)" hf.hit1.lancached.gibps hf.hit1.nginx.gibps "nginx sendfile" ge 1.0
    row "HF hit, 16 ranges (GiB/s)" hf.hit16.lancached.gibps hf.hit16.nginx.gibps "nginx sendfile" ge 1.0
    row "HF hit, 1 stream (GiB/s)" hf.hit1.lancached.gibps hf.hit1.olah.gibps "olah" peer ""
    row "HF hit server CPU-s per GiB, 1 stream" hf.hit1.lancached.cpu_s_per_gib hf.hit1.nginx.cpu_s_per_gib "nginx" le 1.0 3
    row "HF hit over TLS (huggingface.co), HTTP/1.1, 1 stream (GiB/s)" hf.tls.h1.1.lancached.gibps hf.tls.h1.1.nginx.gibps "nginx TLS" ge 1.0
    row "HF hit over TLS (huggingface.co), h2, 16 ranges (GiB/s)" hf.tls.h2.16.lancached.gibps hf.tls.h2.16.nginx.gibps "nginx TLS" ge 1.0
    row "HF cold snapshot_download, upstream over a ${LINK_RATE:-1gbit} veth (GiB/s)" hf.link.lancached.gibps hf.link.direct.gibps "direct over the same link" ge 0.95 3
  fi
  if [[ ,$PARTS, == *,cluster,* ]]; then
    for n in 1 2 3; do
      row "cluster hit, $n node(s), one stream each (GiB/s, all)" hit$n.cluster.gibps hit$n.solo.gibps "one standalone node, $n stream(s)" ge 0.9
      row "cluster hit server CPU-s per GiB, $n node(s)" hit$n.cluster.cpu_per_gib hit$n.solo.cpu_per_gib "one standalone node" le 1.1 3
    done
    row "cluster cold, node B while A fills (GiB/s)" cold.b_while_a.gibps cold.solo.gibps "one standalone node, cold" ge 0.9
    row "cluster upstream bytes / blob, A and B cold at once" cold.upstream_ratio "" "" eq 1.00
    row "cluster node B from the store (GiB/s)" store.b.gibps store.upstream.gibps "fresh pull over a ${LINK_RATE:-1gbit} veth" ge 1.0
  fi
  if [[ ,$PARTS, == *,cold,* ]]; then
    row "sha256, one core (GiB/s; openssl speed -evp)" sha256.gibps "" "" info ""
    row "writing a new GiB into the page cache (dd), CPU-s" pagecache.cpu_s_per_gib "" "" info "" 3
    for up in http tls; do
      sizes=${COLD_SIZES:-64,256,1024}${COLD_4G:+,4096}
      for mib in ${sizes//,/ }; do
        for c in "s1 1 stream" "plan Ollama's part plan"; do
          set -- $c; mode=$1; what=${c#* }
          k=cold.$up.$mib.$mode.lancached
          row "cold $up ${mib} MiB, $what (GiB/s)" $k.gibps sha256.gibps "sha256 rate" ge 0.5
          row "cold $up ${mib} MiB, $what, cache CPU-s/GiB" $k.cpu_s_per_gib sha256.cpu_s_per_gib "hashing a GiB" le 1.5 3
          row "cold $up ${mib} MiB, $what, cache CPU-s/GiB" $k.cpu_s_per_gib floor.cpu_s_per_gib "hash + page-cache write" peer "" 3
        done
        k=cold.$up.$mib
        row "cold $up ${mib} MiB, Ollama's part plan (GiB/s)" $k.plan.lancached.gibps $k.s1.lancached.gibps "cold, 1 stream" ge 1.0
        row "cold $up ${mib} MiB, 16 whole-blob clients, all bytes (GiB/s)" $k.c16.lancached.gibps $k.s1.lancached.gibps "cold, 1 stream" ge 1.0
        row "cold $up ${mib} MiB, 16 whole-blob clients, CPU-s per GiB delivered" $k.c16.lancached.cpu_s_per_gib "" "" info "" 3
        row "cold $up ${mib} MiB, 1 stream (GiB/s)" $k.s1.lancached.gibps $k.s1.docker-registry.gibps "docker-registry proxy" ge 1.0
        row "cold $up ${mib} MiB, 1 stream (GiB/s)" $k.s1.lancached.gibps $k.s1.direct.gibps "direct from upstream" peer ""
      done
    done
    links=${COLD_LINKS-1gbit,10gbit}
    for rate in ${links//,/ }; do
      [ -n "$rate" ] || continue
      goal=0.95; [ "$rate" = 1gbit ] || goal=min
      for c in "s1 1 stream" "plan Ollama's part plan"; do
        set -- $c; mode=$1; what=${c#* }
        k=coldlink.$rate.$mode
        if [ "$goal" = min ]; then
          # At 10 Gbit/s the goal is min(0.95x direct, 0.5x the sha256 rate): the anchor is
          # whichever of the two is lower.
          d=$(get $k.direct.gibps); h=$(get sha256.gibps)
          if [ -n "$d" ] && [ -n "$h" ]; then
            R[$k.goal.gibps]=$(awk -v d="$d" -v h="$h" 'BEGIN { a = 0.95 * d; b = 0.5 * h; print (a < b ? a : b) }')
          fi
          row "cold over a $rate veth, $what (GiB/s)" $k.lancached.gibps $k.goal.gibps "min(0.95x direct, 0.5x sha256)" ge 1.0 3
          row "cold over a $rate veth, $what (GiB/s)" $k.lancached.gibps $k.direct.gibps "direct over the same link" peer "" 3
        else
          row "cold over a $rate veth, $what (GiB/s)" $k.lancached.gibps $k.direct.gibps "direct over the same link" ge 0.95 3
        fi
      done
    done
    row "hit after the fill, 1 stream, server CPU-s/GiB" coldhit1.lancached.cpu_s_per_gib coldhit1.nginx.cpu_s_per_gib "nginx sendfile" le 1.0 3
    row "hit after the fill, 1 stream, server + client CPU-s/GiB" coldhit1.lancached.total_cpu_s_per_gib coldhit1.nginx.total_cpu_s_per_gib "nginx sendfile" le 1.0 3
  fi
  if [[ ,$PARTS, == *,startup,* ]]; then
    row "start-up to READY=1, ${BLOBS:-10000} blobs, index present (ms)" startup.warm_index.ready_ms "" "" absle 100 1
    row "start-up to READY=1, ${BLOBS:-10000} blobs, index rebuilt (ms)" startup.cold_index.ready_ms "" "" absle 100 1
    row "access index ready after start, index present (ms, background)" startup.warm_index.index_ms "" "" info "" 0
    row "access index ready after start, index rebuilt (ms, background)" startup.cold_index.index_ms "" "" info "" 0
  fi
} | tee -a "$log"
