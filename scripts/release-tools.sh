#!/usr/bin/env bash
# What the release artefacts and their tests need, in two parts (scripts/test.sh runs both; each
# step is skipped when already done, so running it again is cheap):
#
#   scripts/release-tools.sh prepare      Debian packages, rustup targets, Helm
#     helm v3.22.0                  tests/helm/build.sh (Go module proxy; cached by input hash)
#     arm64 cross build             rustup target aarch64-unknown-linux-musl, Debian's
#                                   gcc-aarch64-linux-gnu (ring's C; rust-lld links)
#     qemu-aarch64-static           Debian's qemu-user-static (tests run the arm64 binary)
#
#   scripts/release-tools.sh build        the CPU-bound rest, needed only by tests/release.rs
#     cargo-cyclonedx 0.5.9         the SBOM (scripts/build-release.sh)
#     cargo-deny 0.20.2             `cargo deny check licenses bans sources` (deny.toml):
#                                   licenses, duplicate versions, registries; the advisories
#                                   check needs the RustSec database from the network and is
#                                   not run here
#     the arm64 release binary      scripts/build-release.sh --binaries-only (cached target dir)
#
#   scripts/release-tools.sh              both, in that order
#
# scripts/test.sh runs `build` in the background while the tests run, holding the release-tools
# lock (see scripts/build-release.sh, which waits for it), with RNT_RELEASE_TOOLS_LOCK_HELD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt-lib.sh

prepare() {
  local need=()
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  apt_install ${need[@]+"${need[@]}"}
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  done
  bash tests/helm/build.sh >/dev/null
}

build() {
  tool() { # crate version: `cargo install --locked` unless that version is installed
    cargo install --list | grep -qx "$1 v$2:" || cargo install -q --locked "$1" --version "$2"
  }
  tool cargo-cyclonedx 0.5.9
  tool cargo-deny 0.20.2
  cargo deny --locked check licenses bans sources
  ARCHES=arm64 bash scripts/build-release.sh --binaries-only >/dev/null
  echo "release-tools.sh build: done in $SECONDS s" >&2
}

case "${1:-all}" in
  prepare) prepare ;;
  build) build ;;
  all) prepare; build ;;
  *) echo "usage: $0 [prepare|build]" >&2; exit 2 ;;
esac
