#!/usr/bin/env bash
# Short fuzz run (CI): builds the cargo-fuzz targets in fuzz/ and runs each one for
# MOAT_FUZZ_SECONDS (default 20) seconds over its committed corpus (fuzz/corpus/<target>).
# Fails if any target crashes (panic, failed check, sanitizer report, timeout, out of
# memory); the crashing input is left in fuzz/artifacts/<target>/. Inputs found during the
# run go to a scratch directory, so the checkout stays clean. See docs/fuzzing.md.
# Idempotent: installs the nightly toolchain and cargo-fuzz 0.13 only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[fuzz-short] %s\n' "$*" >&2; }

SECONDS_PER_TARGET=${MOAT_FUZZ_SECONDS:-20}
# The flags of docs/fuzzing.md (debug assertions and overflow checks; AddressSanitizer is
# cargo-fuzz's default), so a long run and this one share one build.
BUILD_FLAGS=(--debug-assertions)

command -v rustup >/dev/null || { log "rustup not found"; exit 1; }
rustup toolchain list | grep -q '^nightly' || {
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
}
if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
  log "cargo install cargo-fuzz 0.13"
  cargo install cargo-fuzz --version '^0.13' --locked
fi
cargo fuzz --version >&2

mapfile -t targets < <(cargo +nightly fuzz list)
[ "${#targets[@]}" -gt 0 ] || { log "no fuzz targets found"; exit 1; }
log "building ${targets[*]}"
cargo +nightly fuzz build "${BUILD_FLAGS[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  corpus="$PWD/fuzz/corpus/$t"
  mkdir -p "$scratch/$t" "$corpus"
  extra=()
  # The policy target memoises parsed documents, which libFuzzer's leak check mistakes
  # for leaks (and re-runs inputs to confirm): off for it.
  [ "$t" = policy_compiler ] && extra=(-detect_leaks=0)
  log "$t: ${SECONDS_PER_TARGET}s over fuzz/corpus/$t ($(ls "$corpus" | wc -l) inputs)"
  if cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "$scratch/$t" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=60 -print_final_stats=1 "${extra[@]}" \
    >"$scratch/$t.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t.log")
    log "$t: ok, ${runs:-?} executions (${rate:-?}/s)"
  else
    failed+=("$t")
    log "$t: FAILED; the end of its log:"
    tail -n 60 "$scratch/$t.log" >&2
    log "crashing input(s) in fuzz/artifacts/$t/: $(ls "fuzz/artifacts/$t" 2>/dev/null | tr '\n' ' ')"
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  log "crashed: ${failed[*]}"
  exit 1
fi
log "ok: ${targets[*]}"
