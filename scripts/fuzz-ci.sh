#!/usr/bin/env bash
# Bounded fuzzing for CI (issue 7): build every cargo-fuzz target in fuzz/ and run each for
# FUZZ_SECONDS (default 30), starting from the committed seeds in fuzz/seeds/<target>/.
# Fails on the first crash, panic, leak, timeout or out-of-memory, leaving the input in
# fuzz/artifacts/<target>/ and the log in fuzz/target/logs/<target>.log.
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it accept the nightly-only
# flags cargo-fuzz passes (-Zsanitizer=address, -Cpasses=sancov-module, ...). Needs
# `cargo install cargo-fuzz` (crates.io) once. See docs/testing.md ("Fuzzing").
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 30: 11 targets = 5.5 min of fuzzing, plus the build)
#   FUZZ_TARGETS   space-separated subset (default: every target `cargo fuzz list` prints)
#   FUZZ_SANITIZER address (default) or none (faster, finds panics but not memory errors)
#   FUZZ_JOBS      parallel fuzzing processes per target (default 1)
#   FUZZ_FLAGS     extra libFuzzer flags, e.g. "-max_len=65536"
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-30}
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || {
  echo "fuzz-ci: cargo-fuzz is not installed; run: cargo install --locked cargo-fuzz" >&2
  exit 2
}

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
echo "fuzz-ci: building (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" >/dev/null

mkdir -p target/logs
failed=()
for t in $targets; do
  corpus="corpus/$t"          # grows run to run; ignored by git
  mkdir -p "$corpus" "artifacts/$t"
  log="target/logs/$t.log"
  echo "fuzz-ci: $t for ${seconds}s"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb bounds memory.
  # shellcheck disable=SC2086
  if cargo fuzz run --sanitizer "$sanitizer" --jobs "$jobs" "$t" "$corpus" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      ${FUZZ_FLAGS:-} >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
    echo "fuzz-ci: $t ok, $execs execs"
  else
    echo "fuzz-ci: $t FAILED; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  echo "fuzz-ci: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz-ci: all targets ran ${seconds}s without a crash"
