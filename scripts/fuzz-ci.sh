#!/usr/bin/env bash
# Bounded fuzzing for CI (issue 7): build every cargo-fuzz target in fuzz/ and run each for
# FUZZ_SECONDS (default 30), starting from the committed seeds in fuzz/seeds/<target>/.
# Fails on any crash, panic, leak, timeout or out-of-memory, leaving the input in
# fuzz/artifacts/<target>/ and the log in fuzz/target/logs/<target>.log. tests/fuzz.rs
# runs it (VMPILOT_IT=fuzz); `--build-only` just builds (CI does that early, in the
# background, while the test bed comes up).
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it accept the nightly-only
# flags cargo-fuzz passes (-Zsanitizer=address, -Cpasses=sancov-module, ...). Needs
# cargo-fuzz (`cargo install --locked cargo-fuzz`, crates.io). See docs/testing.md.
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 30)
#   FUZZ_PARALLEL  targets fuzzed at once (default: the number of CPUs)
#   FUZZ_TARGETS   space-separated subset (default: every target `cargo fuzz list` prints)
#   FUZZ_SANITIZER address (default) or none (builds faster; finds panics, overflows and
#                  hangs, but not memory errors — vmpilot's parsers have no unsafe code)
#   FUZZ_JOBS      parallel fuzzing processes per target (default 1)
#   FUZZ_FLAGS     extra libFuzzer flags, e.g. "-max_len=65536" (later flags win)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-30}
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
parallel=${FUZZ_PARALLEL:-$(nproc)}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || {
  echo "fuzz-ci: cargo-fuzz is not installed; run: cargo install --locked cargo-fuzz" >&2
  exit 2
}

echo "fuzz-ci: building (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"
[ "${1:-}" = "--build-only" ] && exit 0

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
mkdir -p target/logs
rm -f target/logs/*.status

# One target: fuzz it, then leave its exit status beside its log.
fuzz_one() {
  local t=$1 corpus="corpus/$1" log="target/logs/$1.log" status=0
  mkdir -p "$corpus" "artifacts/$t"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb bounds memory.
  # shellcheck disable=SC2086
  cargo fuzz run --sanitizer "$sanitizer" --jobs "$jobs" "$t" "$corpus" "seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    ${FUZZ_FLAGS:-} >"$log" 2>&1 || status=$?
  echo "$status" >"target/logs/$t.status"
}

echo "fuzz-ci: fuzzing each target for ${seconds}s, $parallel at a time"
running=0
for t in $targets; do
  if ((running >= parallel)); then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait

failed=()
for t in $targets; do
  log="target/logs/$t.log"
  status=$(cat "target/logs/$t.status" 2>/dev/null || echo missing)
  if [ "$status" = 0 ]; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
    echo "fuzz-ci: $t ok, $execs execs"
  else
    echo "fuzz-ci: $t FAILED (exit $status); last lines of $log:" >&2
    tail -n 40 "$log" >&2
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  echo "fuzz-ci: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz-ci: all targets ran ${seconds}s without a crash"
