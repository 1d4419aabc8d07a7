#!/usr/bin/env bash
# Measures a cold CI run on this machine: a clean clone of HEAD runs .ci/run with every cache
# empty (cargo's home: registry, git checkouts and installed subcommands; Go's module and build
# caches; ~/.cache/redis-node-tuner: the apiserver, node components, Helm, the systemd-boot root
# filesystem, the images, the arm64 target dir), all under one scratch directory. What stays:
# Debian's packages and the rustup toolchain with its targets (removing them would change this
# machine), so a fresh machine adds their download and install time.
#
#   scripts/ci-cold.sh [SCRATCH]     # default: a new /tmp/rnt-cold.XXXXXX; log in SCRATCH/ci.log
#
# Prints the wall time and each step's time (scripts/test.sh "took" lines). Run as root, with no
# other test run of this project at the same time (one test cluster fits a machine).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-$(mktemp -d /tmp/rnt-cold.XXXXXX)}
mkdir -p "$scratch"
rm -rf "$scratch/src"
git clone -q "$repo" "$scratch/src"
mkdir -p "$scratch/proxies" "$scratch/cargo/bin" "$scratch/go" "$scratch/cache"
# The rustup proxies only (cargo, rustc, ... dispatch on their name): none of the cargo
# subcommands installed in the usual home.
rustup=$(command -v rustup)
for t in rustup cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
  ln -sf "$rustup" "$scratch/proxies/$t"
done
path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vx -e "$HOME/.cargo/bin" -e "$HOME/go/bin" | paste -sd:)
start=$SECONDS
set +e
env CARGO_HOME="$scratch/cargo" GOPATH="$scratch/go" GOMODCACHE="$scratch/go/pkg/mod" \
  XDG_CACHE_HOME="$scratch/cache" GOCACHE="$scratch/cache/go-build" CI=true \
  PATH="$scratch/cargo/bin:$scratch/proxies:$path" \
  bash "$scratch/src/.ci/run" >"$scratch/ci.log" 2>&1
rc=$?
set -e
echo "ci-cold.sh: .ci/run exit $rc after $((SECONDS - start)) s (log: $scratch/ci.log)"
grep -E '^test\.sh: .* took ' "$scratch/ci.log" || true
exit $rc
