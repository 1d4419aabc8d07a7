#!/usr/bin/env bash
# The project's test command: installs what the tests need (as root, from Debian and the
# toolchains' registries), checks formatting and lints, then runs every test.
# The real-kernel tests need root: they create network namespaces and change (then restore)
# this machine's vm.overcommit_memory and transparent hugepage settings.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt-lib.sh
# Each step's wall time goes to stderr (the cold/warm budget of CI: README, "Tests").
phase() { local t=$SECONDS; "$@"; echo "test.sh: $* took $((SECONDS - t)) s (total $SECONDS s)" >&2; }

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)           # promtool and the prometheus server
command -v amtool >/dev/null || need+=(prometheus-alertmanager)  # amtool check-config of the inhibit rules
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
# tests/writers.rs detaches the writer lock's BPF link behind the agent's back.
command -v bpftool >/dev/null || need+=(bpftool)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v sysctl >/dev/null || need+=(procps)
apt_install ${need[@]+"${need[@]}"}
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
phase bash scripts/release-tools.sh prepare  # helm, the arm64 toolchain, qemu
phase bash tests/kernel-matrix/setup.sh >/dev/null  # tests/kernel_matrix.rs: qemu-system-x86, busybox-static, the Debian 6.1/6.12 kernels (cached)

# cargo-cyclonedx, cargo-deny (and `cargo deny check`, offline) and the arm64 release binary are
# CPU-bound and needed only by tests/release.rs, one of the last test binaries: they are built in
# the background while fmt, clippy and the tests run (the tests spend most of their time waiting
# on processes, namespaces and clusters). The job holds the release-tools lock, which
# scripts/build-release.sh waits for; its log is printed at the end, and its failure fails this
# script.
lock=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/release-tools.lock
mkdir -p "$(dirname "$lock")" target
bg_log=target/release-tools-build.log
exec 8>"$lock"
flock 8
RNT_RELEASE_TOOLS_LOCK_HELD=1 setsid bash scripts/release-tools.sh build >"$bg_log" 2>&1 &
bg=$!
exec 8>&-
bg_start=$SECONDS
trap 'kill -- -"$bg" 2>/dev/null || true' EXIT

phase cargo fmt --all -- --check
phase cargo clippy --all-targets --quiet -- -D warnings
phase cargo test --all-targets

bg_rc=0
wait "$bg" || bg_rc=$?
trap - EXIT
echo "test.sh: scripts/release-tools.sh build (background, started at $bg_start s) exit $bg_rc:" >&2
cat "$bg_log" >&2
exit "$bg_rc"
