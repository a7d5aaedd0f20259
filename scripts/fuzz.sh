#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time each and prints one line per
# target: executions, executions per second, corpus size, result. Exits non-zero if any target
# crashed, hung or leaked; the input that did it is left in fuzz/artifacts/<target>/ and the
# line says how to replay it.
#
#   usage: scripts/fuzz.sh [TARGET ...]        env: FUZZ_SECONDS (default 60 per target)
#
# CI runs it with FUZZ_SECONDS=20 (.ci/run). By hand, run it longer; the corpus grows in
# fuzz/corpus/<target> (ignored by git) and is reused by the next run.
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address) to rustc. CI machines have only the
# one stable toolchain and cannot fetch another, so RUSTC_BOOTSTRAP=1 lets that toolchain accept
# them; on a nightly toolchain the variable changes nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz --version 0.13.2

cd "$root/fuzz"
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
# One build of all targets (release, ASan, debug assertions), so the runs below only run.
cargo fuzz build

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$logs/$t.log"
  # corpus/<t> first, so new inputs are saved there and never into the committed seeds.
  # -timeout: one input taking longer than this is a hang, reported like a crash.
  if cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    result="no crash"
  else
    result="FAILED"
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  corpus=$(find "corpus/$t" -type f | wc -l)
  summary+=("$(printf '%-15s %12s %10s %8s  %s' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$result")")
  if [ "$result" = "FAILED" ]; then
    echo "fuzz: $t failed; the last lines of its log:" >&2
    tail -n 40 "$log" >&2
    artifact=$(grep -o 'artifacts/[^ ]*' "$log" | tail -n1 || true)
    [ -n "$artifact" ] && echo "fuzz: replay with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $artifact)" >&2
  fi
done

printf '%-15s %12s %10s %8s  %s\n' target executions exec/s corpus result
printf '%s\n' "${summary[@]}"
printf 'fuzz: %s s per target\n' "$seconds"
exit "$failed"
