#!/usr/bin/env bash
# Builds the FROM scratch image of redis-node-tuner: a static musl binary built on the host,
# copied in by ./Containerfile (no builder image is pulled from any registry).
#
#   scripts/build-image.sh [TAG]          # default tag: localhost/redis-node-tuner:<version>
#
# Needs: rustup target x86_64-unknown-linux-musl, and podman (or buildah). Environment:
#   RNT_BUILDER=podman|buildah   which one builds (default: podman if installed)
#   CARGO=...                    the cargo to run (default: cargo)
# Prints the image reference as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
tag=${1:-localhost/redis-node-tuner:${version}}
builder=${RNT_BUILDER:-$(command -v podman >/dev/null && echo podman || echo buildah)}
cargo=${CARGO:-cargo}

"$cargo" build --release --target "$target" --bin redis-node-tuner >&2
bin="${CARGO_TARGET_DIR:-target}/$target/release/redis-node-tuner"  # static: musl links statically
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/redis-node-tuner"

# --layers=false: no intermediate image per instruction; the previous image of the same tag is
# removed once replaced (storage stays at one image per tag across rebuilds).
case "$builder" in
  podman|buildah) ;;
  *) echo "error: RNT_BUILDER must be podman or buildah, not $builder" >&2; exit 2 ;;
esac
old=$("$builder" images --quiet --no-trunc "$tag" 2>/dev/null || true)
case "$builder" in
  podman)
    podman --runtime runc build --layers=false --ulimit nofile=1024:1024 \
      --ulimit nproc=1000:1000 --build-arg VERSION="$version" -f Containerfile -t "$tag" "$ctx" >&2 ;;
  buildah)
    buildah --runtime runc build-using-dockerfile --layers=false --ulimit nofile=1024:1024 \
      --ulimit nproc=1000:1000 --build-arg VERSION="$version" -f Containerfile -t "$tag" "$ctx" >&2 ;;
esac
new=$("$builder" images --quiet --no-trunc "$tag")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  "$builder" rmi "$old" >/dev/null 2>&1 || true
fi
echo "$tag"
