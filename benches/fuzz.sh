#!/usr/bin/env bash
# A bounded fuzzing pass over flaghook's decoders: each cargo-fuzz target in fuzz/ runs for
# SECONDS (default 60), one after the other, on one core. Exits non-zero on the first crash,
# with the input that caused it under fuzz/artifacts/TARGET/.
#
#   bash benches/fuzz.sh                 # every target, 60 s each
#   bash benches/fuzz.sh 300             # every target, 5 minutes each
#   bash benches/fuzz.sh 30 config       # some targets
#   SANITIZER=none bash benches/fuzz.sh  # without AddressSanitizer: more executions per second
#
# Not part of .ci/run: it takes minutes. See benches/README.md ("Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  echo "targets: $(targets | tr '\n' ' ')"
}

targets() {
  sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^flaghook-fuzz$'
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac
seconds="${1:-60}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }
shift || true
if [ "$#" -gt 0 ]; then
  chosen=("$@")
  for target in "${chosen[@]}"; do
    targets | grep -qx "$target" || { echo "unknown target: $target" >&2; usage >&2; exit 2; }
  done
else
  mapfile -t chosen < <(targets)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)" >&2
  cargo install --locked cargo-fuzz
fi

# cargo fuzz passes -Z flags (sanitizer coverage) that only a nightly rustc accepts;
# RUSTC_BOOTSTRAP=1 makes a stable rustc accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
# --debug-assertions: integer overflow panics too (an offset or length that would wrap).
fuzz_flags=(--debug-assertions --sanitizer "${SANITIZER:-address}")

cargo fuzz build "${fuzz_flags[@]}"

declare -A executions
for target in "${chosen[@]}"; do
  log="fuzz/artifacts/$target.log"
  mkdir -p fuzz/artifacts
  dict=()
  [ -f "fuzz/dict/$target.dict" ] && dict=("-dict=fuzz/dict/$target.dict")
  echo "== $target: $seconds s (log: $log)"
  # No -jobs/-workers: one process on one core, its progress in the log as it goes.
  # New inputs go to fuzz/corpus/$target/ (git keeps only its seed-* files).
  if ! cargo fuzz run "${fuzz_flags[@]}" "$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" \
    >"$log" 2>&1; then
    grep -E -m1 -A4 "panicked at" "$log" >&2 || grep -E -m1 -A3 "ERROR: " "$log" >&2 || true
    grep -E "Test unit written to" "$log" >&2 || true
    echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${fuzz_flags[*]} $target fuzz/artifacts/$target/crash-..." >&2
    echo "FAILED: $target (full log: $log)" >&2
    exit 1
  fi
  executions[$target]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  grep -E "^#[0-9]+[[:space:]]+DONE" "$log" || true
done

echo "== no crash; executions per target:"
for target in "${chosen[@]}"; do
  printf '%-12s %s\n' "$target" "${executions[$target]:-?}"
done
