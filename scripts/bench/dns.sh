#!/usr/bin/env bash
# DNS benchmark: lancached vs unbound (1 thread) vs dnsmasq, side by side in one run, on
# loopback only, with dnsperf. Two workloads:
#   intercepted  every server answers registry.ollama.ai A locally with 192.0.2.10
#   forwarded    names under fwd.test, which each server forwards to one dnsmasq upstream
#                and caches (a warm-up fills the caches first)
# For each server and workload: the median of RUNS runs of SECS seconds of queries per second,
# queries lost, and server CPU microseconds per query (utime+stime from /proc/PID/stat).
# Prints a table, then `RESULT dns.<workload>.<server>.<figure>=<value>` lines for
# scripts/bench.sh. A third workload, limited, runs the intercepted queries from dnsperf's one
# source against lancached with its default rate_limit and with rate_limit = 2000 (the old
# default): past the limit UDP gets TC=1 instead of silence, so nothing is lost (dnsperf counts a
# truncated answer as an answer; it does not retry over TCP).
#   env: RUNS=5 SECS=4 CLIENTS=4 RATE=40000 LANCACHED_BIN=...
# Needs: a release build (cargo build --release), dnsperf, unbound, dnsmasq. Bounded: about
# 2 x 3 x RUNS x SECS seconds plus start-up.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${LANCACHED_BIN:-$here/target/release/lancached}
RUNS=${RUNS:-5}
SECS=${SECS:-4}
CLIENTS=${CLIENTS:-4}
for p in dnsperf unbound dnsmasq; do command -v $p >/dev/null || { echo "need $p (scripts/test-deps.sh)" >&2; exit 1; }; done
[ -x "$bin" ] || { echo "need $bin: cargo build --release" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

UP=127.0.0.62; UPPORT=5362     # the upstream every server forwards fwd.test to
LC=127.0.0.60;  LCPORT=5360    # lancached
UB=127.0.0.61;  UBPORT=5361    # unbound, 1 thread
DM=127.0.0.63;  DMPORT=5363    # dnsmasq

dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces --pid-file= --user=root \
  --listen-address=$UP --port=$UPPORT --local-ttl=3600 --address=/fwd.test/192.0.2.7 &
pids+=($!)

cat > "$tmp/lancached.toml" <<CONF
[cache]
dir = "$tmp/cache"
[upstream]
resolvers = ["$UP:$UPPORT"]
[dns]
listen = ["$LC:$LCPORT"]
advertise = ["192.0.2.10"]
rate_limit = 0
cache = true
[http]
listen = []
[tls]
listen = []
[control]
socket = "$tmp/control.sock"
[log]
filter = "warn"
CONF
"$bin" --config "$tmp/lancached.toml" 2>"$tmp/lancached.log" &
lc_pid=$!; pids+=($lc_pid)

# The same daemon twice more for the limited workload: default rate_limit, and 2000.
LD=127.0.0.64; LDPORT=5364; LL=127.0.0.65; LLPORT=5365
sed -e "s/$LC:$LCPORT/$LD:$LDPORT/" -e '/^rate_limit = 0$/d' -e "s#$tmp/cache#$tmp/cache-d#" \
  -e "s#$tmp/control.sock#$tmp/control-d.sock#" "$tmp/lancached.toml" > "$tmp/lancached-default.toml"
sed -e "s/$LC:$LCPORT/$LL:$LLPORT/" -e 's/^rate_limit = 0$/rate_limit = 2000/' -e "s#$tmp/cache#$tmp/cache-l#" \
  -e "s#$tmp/control.sock#$tmp/control-l.sock#" "$tmp/lancached.toml" > "$tmp/lancached-2000.toml"
"$bin" --config "$tmp/lancached-default.toml" 2>"$tmp/lancached-default.log" &
ld_pid=$!; pids+=($ld_pid)
"$bin" --config "$tmp/lancached-2000.toml" 2>"$tmp/lancached-2000.log" &
ll_pid=$!; pids+=($ll_pid)

cat > "$tmp/unbound.conf" <<CONF
server:
  num-threads: 1
  interface: $UB@$UBPORT
  port: $UBPORT
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  username: ""
  chroot: ""
  directory: "$tmp"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  so-rcvbuf: 4m
  so-sndbuf: 4m
  module-config: "iterator"
  local-zone: "registry.ollama.ai." static
  local-data: "registry.ollama.ai. 60 IN A 192.0.2.10"
forward-zone:
  name: "fwd.test."
  forward-addr: $UP@$UPPORT
CONF
unbound -d -c "$tmp/unbound.conf" 2>"$tmp/unbound.log" &
ub_pid=$!; pids+=($ub_pid)

dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces --pid-file= --user=root \
  --listen-address=$DM --port=$DMPORT --cache-size=10000 --dns-forward-max=1000 \
  --address=/registry.ollama.ai/192.0.2.10 --server=/fwd.test/$UP#$UPPORT &
dm_pid=$!; pids+=($dm_pid)

for s in "$LC $LCPORT" "$UB $UBPORT" "$DM $DMPORT" "$UP $UPPORT"; do
  set -- $s
  for _ in $(seq 50); do
    dig +short +tries=1 +time=1 @"$1" -p "$2" fwd.test A 2>/dev/null | grep -q 192.0.2.7 && break
    sleep 0.1
  done
done

for _ in $(seq 20); do echo "registry.ollama.ai A"; done > "$tmp/intercepted.txt"
for i in $(seq 100); do echo "n$i.fwd.test A"; done > "$tmp/forwarded.txt"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run SERVER_IP PORT PID FILE [dnsperf args] -> "qps lost cpu_us_per_query"
run() {
  local before after out qps lost sent
  before=$(ticks "$3")
  out=$(dnsperf -s "$1" -p "$2" -d "$4" -c "$CLIENTS" -l "$SECS" -q 200 "${@:5}" 2>&1)
  after=$(ticks "$3")
  qps=$(awk '/Queries per second/ {print $4}' <<<"$out")
  lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
  sent=$(awk '/Queries completed/ {print $3}' <<<"$out")
  awk -v q="$qps" -v l="$lost" -v t=$((after - before)) -v hz="$hz" -v n="$sent" \
    'BEGIN { printf "%s %s %.2f\n", q, l, (n > 0 ? t * 1e6 / hz / n : 0) }'
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Warm the forwarders' caches.
for s in "$LC $LCPORT $lc_pid" "$UB $UBPORT $ub_pid" "$DM $DMPORT $dm_pid"; do
  set -- $s; run "$1" "$2" "$3" "$tmp/forwarded.txt" >/dev/null
done

# Saturated runs give qps and lost queries (and CPU per query at full load); runs at a fixed
# RATE give CPU per query at the same load for every server.
RATE=${RATE:-40000}
declare -A qps lost cpu cpufixed
results=
for work in intercepted forwarded; do
  for r in $(seq "$RUNS"); do
    for s in "lancached $LC $LCPORT $lc_pid" "unbound $UB $UBPORT $ub_pid" "dnsmasq $DM $DMPORT $dm_pid"; do
      set -- $s
      read -r q l c < <(run "$2" "$3" "$4" "$tmp/$work.txt")
      qps[$1.$work]+="$q "; lost[$1.$work]+="$l "; cpu[$1.$work]+="$c "
      read -r q l c < <(run "$2" "$3" "$4" "$tmp/$work.txt" -Q "$RATE")
      cpufixed[$1.$work]+="$c "
    done
  done
done

# One source against the rate limit (dnsperf's sockets share one address).
for r in $(seq "$RUNS"); do
  for s in "lancached-default $LD $LDPORT $ld_pid" "lancached-2000 $LL $LLPORT $ll_pid" "unbound $UB $UBPORT $ub_pid"; do
    set -- $s
    read -r q l c < <(run "$2" "$3" "$4" "$tmp/intercepted.txt")
    qps[$1.limited]+="$q "; lost[$1.limited]+="$l "; cpu[$1.limited]+="$c "
  done
done

echo
echo "dnsperf -c $CLIENTS, $RUNS runs x ${SECS}s each, median; loopback; $(nproc) cores"
printf '| %-11s | %-9s | %10s | %10s | %10s | %18s | %18s |\n' workload server qps "vs unbound" "lost (sum)" "CPU µs/q saturated" "CPU µs/q at $RATE/s"
printf '|-------------|-----------|------------|------------|------------|--------------------|--------------------|\n'
for work in intercepted forwarded; do
  base=$(tr ' ' '\n' <<<"${qps[unbound.$work]}" | grep . | median)
  for srv in lancached unbound dnsmasq; do
    m=$(tr ' ' '\n' <<<"${qps[$srv.$work]}" | grep . | median)
    c=$(tr ' ' '\n' <<<"${cpu[$srv.$work]}" | grep . | median)
    f=$(tr ' ' '\n' <<<"${cpufixed[$srv.$work]}" | grep . | median)
    l=$(tr ' ' '\n' <<<"${lost[$srv.$work]}" | grep . | awk '{s+=$1} END {print s+0}')
    ratio=$(awk -v a="$m" -v b="$base" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '| %-11s | %-9s | %10.0f | %10s | %10s | %18s | %18s |\n' "$work" "$srv" "$m" "$ratio" "$l" "$c" "$f"
    results+="RESULT dns.$work.$srv.qps=$m"$'\n'"RESULT dns.$work.$srv.lost=$l"$'\n'
    results+="RESULT dns.$work.$srv.cpu_us_per_query=$c"$'\n'
  done
done
base=$(tr ' ' '\n' <<<"${qps[unbound.limited]}" | grep . | median)
results+="RESULT dns.limited.unbound.qps=$base"$'\n'
for srv in lancached-default lancached-2000; do
  m=$(tr ' ' '\n' <<<"${qps[$srv.limited]}" | grep . | median)
  l=$(tr ' ' '\n' <<<"${lost[$srv.limited]}" | grep . | awk '{s+=$1} END {print s+0}')
  ratio=$(awk -v a="$m" -v b="$base" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  printf '| %-11s | %-9s | %10.0f | %10s | %10s | %18s | %18s |\n' limited "${srv#lancached-}" "$m" "$ratio" "$l" - -
  results+="RESULT dns.limited.$srv.qps=$m"$'\n'"RESULT dns.limited.$srv.lost=$l"$'\n'
done
# Machine-readable figures for scripts/bench.sh.
printf '%s' "$results"
