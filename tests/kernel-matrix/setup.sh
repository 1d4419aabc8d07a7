#!/usr/bin/env bash
# The kernel matrix's set-up (scripts/test.sh runs it; running it again is cheap): the Debian
# packages vm.sh needs (qemu-system-x86, busybox-static, cpio; through scripts/apt-lib.sh, as
# root) and the kernels of tests/kernel_matrix.rs (fetch.sh: Debian 12's 6.1 and the bookworm
# 6.12, cached by package version; a warm run downloads nothing). Prints the vmlinuz paths.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/apt-lib.sh

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v gzip >/dev/null || need+=(gzip)
apt_install ${need[@]+"${need[@]}"}
bash tests/kernel-matrix/fetch.sh 6.1 6.12
