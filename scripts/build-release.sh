#!/usr/bin/env bash
# The release artefacts of both architectures, from ONE static (musl) release binary per
# architecture, into target/dist/:
#
#   scripts/build-release.sh                 # amd64 and arm64
#   ARCHES=arm64 scripts/build-release.sh    # one of them
#
#   target/dist/redis-node-tuner-<version>-<arch>             the static binary (also in the image)
#   target/dist/redis-node-tuner_<version>-1_<arch>.deb       cargo deb --target <triple> --no-build
#   target/dist/redis-node-tuner-<version>-<arch>.cdx.json    CycloneDX SBOM of the binary's crates
#   localhost/redis-node-tuner:<version>-<arch>              the FROM scratch image (podman)
#   localhost/redis-node-tuner:<version>-multiarch           manifest list of those images
#                                                            (`podman manifest push --all ...`)
#
# Needs (scripts/release-tools.sh installs them): the rustup targets
# x86_64-unknown-linux-musl and aarch64-unknown-linux-musl, gcc-aarch64-linux-gnu (ring's C for
# arm64; linking is done by rust-lld, see .cargo/config.toml), cargo-deb 3.8.0, cargo-cyclonedx
# 0.5.9, podman. Environment: ARCHES (default "amd64 arm64"), TAG (image name without tag,
# default localhost/redis-node-tuner), IMAGES=0 to skip the images, CARGO (default cargo),
# RNT_CROSS_TARGET_DIR (cargo's target directory of the arm64 build, default
# ~/.cache/redis-node-tuner/cargo-target-arm64).
# Prints the dist directory as its last line.
#
#   scripts/build-release.sh --binaries-only   # only the static binaries (no .deb, SBOM, image)
#
# While scripts/test.sh builds the release tools in the background (scripts/release-tools.sh
# build), it holds ~/.cache/redis-node-tuner/release-tools.lock; this script waits for it.
set -euo pipefail
cd "$(dirname "$0")/.."

binaries_only=0
case "${1:-}" in
  "") ;;
  --binaries-only) binaries_only=1 ;;
  *) echo "usage: $0 [--binaries-only]" >&2; exit 2 ;;
esac
if [[ ${RNT_RELEASE_TOOLS_LOCK_HELD:-0} != 1 ]]; then
  lock=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/release-tools.lock
  mkdir -p "$(dirname "$lock")"
  exec 9>"$lock"
  if ! flock -s -n 9; then
    echo "build-release.sh: waiting for the release tools (scripts/release-tools.sh build)" >&2
    flock -s 9
  fi
  exec 9>&- # a barrier only: nothing this script starts keeps the lock
fi

arches=${ARCHES:-amd64 arm64}
cargo=${CARGO:-cargo}
name=${TAG:-localhost/redis-node-tuner}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
target_dir=${CARGO_TARGET_DIR:-target}
dist=$target_dir/dist
mkdir -p "$dist"

triple() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    *) echo "error: unknown architecture $1 (amd64, arm64)" >&2; exit 2 ;;
  esac
}

podman() { command podman --runtime runc "$@"; }

images=()
for arch in $arches; do
  t=$(triple "$arch")
  # amd64 shares target/ with the tests that build the same binary (tests/container.rs,
  # tests/systemd.rs); arm64 is built nowhere else, so its target directory is kept in the cache
  # across clones (cargo's fingerprints decide what is rebuilt: warm, only this crate).
  tdir=$target_dir
  [[ $arch == amd64 ]] || tdir=${RNT_CROSS_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/cargo-target-$arch}
  echo "build-release.sh: $arch ($t) in $tdir" >&2
  # ring's build script reruns when CARGO_MANIFEST_DIR changes (cargo test sets it to the
  # clone's path): the cached arm64 build drops it, so a clone elsewhere still finds it warm.
  # amd64 keeps the caller's environment, to share target/ with the tests' own builds.
  unset_env=()
  [[ $arch == amd64 ]] || unset_env=(-u CARGO_MANIFEST_DIR)
  env "${unset_env[@]}" CARGO_TARGET_DIR="$tdir" "$cargo" build --release --locked --target "$t" \
    --bin redis-node-tuner >&2
  bin=$tdir/$t/release/redis-node-tuner
  cp -f "$bin" "$dist/redis-node-tuner-$version-$arch"
  [[ $binaries_only == 1 ]] && continue

  # The .deb of this very binary (no second build).
  CARGO_TARGET_DIR=$tdir "$cargo" deb --target "$t" --no-build --no-strip --output "$dist/redis-node-tuner_${version}-1_${arch}.deb" >&2

  # SBOM: the crates linked into this target's binary (normal dependencies resolved for this
  # target from Cargo.lock; no build or dev dependencies; no network). cargo-cyclonedx writes
  # <bin>_bin.cdx.json next to Cargo.toml.
  rm -f redis-node-tuner_bin.cdx.json
  "$cargo" cyclonedx --format json --spec-version 1.5 --target "$t" --describe binaries \
    --no-build-deps -q >&2
  mv -f redis-node-tuner_bin.cdx.json "$dist/redis-node-tuner-$version-$arch.cdx.json"

  if [[ ${IMAGES:-1} == 1 ]]; then
    ctx=$(mktemp -d)
    cp "$bin" "$ctx/redis-node-tuner"
    tag="$name:$version-$arch"
    old=$(podman images --quiet --no-trunc "$tag" 2>/dev/null || true)
    # FROM scratch with COPY only: no instruction runs, so no emulation is needed for arm64.
    podman build --layers=false --arch "$arch" --os linux --build-arg VERSION="$version" \
      -f Containerfile -t "$tag" "$ctx" >&2
    rm -rf "$ctx"
    new=$(podman images --quiet --no-trunc "$tag")
    if [[ -n $old && $old != "$new" ]]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
    images+=("$tag")
  fi
done

if [[ ${#images[@]} -gt 0 ]]; then
  list="$name:$version-multiarch"
  podman manifest rm "$list" >/dev/null 2>&1 || true
  podman manifest create "$list" >&2
  for i in "${images[@]}"; do podman manifest add "$list" "containers-storage:$i" >&2; done
fi
echo "$dist"
