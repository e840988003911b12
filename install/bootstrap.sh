#!/usr/bin/env bash
# Idempotent bootstrap: installs everything a bare machine needs to build and test Moat.
#   - Debian packages (iproute2, CNI reference plugins, containerd/runc, busybox-static, iperf3, protoc, bpftool,
#     nginx and wrk for the HTTP tests and benchmarks)
#   - rust-src for the nightly toolchain (eBPF crate is built with -Z build-std=core)
#   - bpf-linker 0.13 linked against the nightly's own libLLVM (LLVM 22)
# Safe to run again: each step checks first.
set -euo pipefail

log() { printf '[bootstrap] %s\n' "$*" >&2; }

PKGS=(iproute2 iputils-ping iptables procps util-linux containernetworking-plugins containerd runc
      busybox-static iperf3 protobuf-compiler bpftool curl ca-certificates nginx wrk)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages must not start services (nginx would take port 80): tests start their own.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; own_policy=1; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$own_policy" ] || rm -f "$policy"
fi

command -v rustup >/dev/null || { log "rustup not found: this machine kind ships it"; exit 1; }
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || { log "rustup component add $c"; rustup component add "$c"; }
done
rustup toolchain list | grep -q '^nightly' || { log "installing nightly toolchain"; rustup toolchain install nightly --profile minimal; }
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

# bpf-linker must use the same LLVM as the nightly that emits the bitcode.
LLVM_DIR=${MOAT_LLVM_DIR:-/opt/moat-llvm}
SYSROOT=$(rustc +nightly --print sysroot)
LIBLLVM=$(ls "$SYSROOT"/lib/libLLVM.so.* 2>/dev/null | head -n1)
[ -n "$LIBLLVM" ] || { log "no libLLVM in $SYSROOT/lib"; exit 1; }
mkdir -p "$LLVM_DIR/lib"
ln -sf "$LIBLLVM" "$LLVM_DIR/lib/libLLVM.so"
ln -sf "$LIBLLVM" "$LLVM_DIR/lib/$(basename "$LIBLLVM")"
if ! env -u LD_LIBRARY_PATH bpf-linker --version 2>/dev/null | grep -q '0\.13'; then
  log "cargo install bpf-linker (against $LIBLLVM)"
  LLVM_PREFIX="$LLVM_DIR" cargo install bpf-linker --version '^0.13' --locked --no-default-features --features llvm-22
fi
env -u LD_LIBRARY_PATH bpf-linker --version >&2
log "ok"
