#!/usr/bin/env bash
# The project's test command: installs what the tests need (as root, from Debian and the
# toolchains' registries), checks formatting and lints, then runs every test.
# The real-kernel tests need root: they create network namespaces and change (then restore)
# this machine's vm.overcommit_memory and transparent hugepage settings.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's wall time goes to stderr (the cold/warm budget of CI: README, "Tests").
phase() { local t=$SECONDS; "$@"; echo "test.sh: $* took $((SECONDS - t)) s (total $SECONDS s)" >&2; }

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)           # promtool and the prometheus server
command -v ip >/dev/null || need+=(iproute2)
command -v podman >/dev/null || need+=(podman buildah)
command -v runc >/dev/null || need+=(runc)                     # crun fails on these machines
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v man >/dev/null || need+=(man-db)
command -v unshare >/dev/null || need+=(util-linux)
# tests/writers.rs rebuilds the committed BPF object (bpf/build.sh) and compares.
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v sysctl >/dev/null || need+=(procps)
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
# The container image and the .deb package the static musl binary.
rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
  rustup target add x86_64-unknown-linux-musl
cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3.8.0' ||
  cargo install cargo-deb --version 3.8.0 --locked

# The real kube-apiserver the Kubernetes tests start (Go, built once and cached; the first
# build takes about 8 minutes on 2 cores).
command -v go >/dev/null || { echo "go is required to build the test kube-apiserver" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubectl is required by the Kubernetes tests" >&2; exit 1; }
phase bash tests/apiserver/build.sh
# debootstrap, systemd-nspawn and the cached Debian root filesystem of tests/systemd_boot.rs.
phase bash tests/systemd-boot/node.sh setup
phase bash tests/cluster/setup.sh  # the real-node tests: containerd, CNI plugins, kubelet, scheduler, controller-manager
phase bash scripts/release-tools.sh  # helm, arm64 cross build + qemu, cargo-cyclonedx, cargo-deny; `cargo deny check` (offline)

phase cargo fmt --all -- --check
phase cargo clippy --all-targets --quiet -- -D warnings
phase cargo test --all-targets
