#!/usr/bin/env bash
# The project's test command: installs what the tests need (as root, from Debian and the
# toolchains' registries), checks formatting and lints, then runs every test.
# The real-kernel tests need root: they create network namespaces and change (then restore)
# this machine's vm.overcommit_memory and transparent hugepage settings.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${need[*]}: run as root, or install them first" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's package may start a Redis on 6379; the tests start their own in namespaces.
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The real kube-apiserver the Kubernetes tests start (Go, built once and cached; the first
# build takes about 8 minutes on 2 cores).
command -v go >/dev/null || { echo "go is required to build the test kube-apiserver" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubectl is required by the Kubernetes tests" >&2; exit 1; }
bash tests/apiserver/build.sh

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
