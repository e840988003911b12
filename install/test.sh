#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, then unit tests (no root needed)
# and the netns integration tests (root: real namespaces, veths, eBPF, containerd), then a
# short run of each fuzz target (install/fuzz-short.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (the tests create network namespaces and load eBPF)" >&2; exit 1; }
bash install/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
# aya-build relays the nested eBPF build's progress lines as cargo warnings; hide those.
quiet() { "$@" 2>&1 | { grep -v '^warning: moat-dataplane@[^:]*:  *\(Compiling\|Finished\)' || true; }; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
quiet cargo clippy --release --all-targets -- -D warnings
echo "== build (release; dataplane/build.rs builds the eBPF object)"
quiet cargo build --release --bins
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
quiet cargo test --release --no-fail-fast | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one "test result" per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
echo "== fuzz (short run of each cargo-fuzz target over its corpus; docs/fuzzing.md)"
set +e
bash install/fuzz-short.sh
fuzz_status=$?
set -e
[ "$status" -eq 0 ] || exit "$status"
exit "$fuzz_status"
