#!/usr/bin/env bash
# Installs (once) what the release artefacts and their tests need, then runs the offline
# dependency checks. Called by scripts/test.sh; safe to run again (each step is skipped when
# already done).
#
#   helm v3.22.0                  tests/helm/build.sh (Go module proxy; cached by input hash)
#   arm64 cross build             rustup target aarch64-unknown-linux-musl, Debian's
#                                 gcc-aarch64-linux-gnu (ring's C; rust-lld links)
#   qemu-aarch64-static           Debian's qemu-user-static (tests run the arm64 binary)
#   cargo-cyclonedx 0.5.9         the SBOM (scripts/build-release.sh)
#   cargo-deny 0.20.2             `cargo deny check licenses bans sources` (deny.toml):
#                                 licenses, duplicate versions, registries; the advisories
#                                 check needs the RustSec database from the network and is
#                                 not run here
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${need[*]}: run as root, or install them first" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done

tool() { # crate version: `cargo install --locked` unless that version is installed
  cargo install --list | grep -qx "$1 v$2:" || cargo install --locked "$1" --version "$2"
}
tool cargo-cyclonedx 0.5.9
tool cargo-deny 0.20.2

bash tests/helm/build.sh >/dev/null

cargo deny --locked check licenses bans sources
