#!/usr/bin/env bash
# Boots a real kernel under qemu (TCG, -cpu max, no KVM, no network, 1 GiB) with a small
# initramfs and runs one script in it:
#
#   tests/kernel-matrix/vm.sh KERNEL_VERSION_OR_VMLINUZ BINARY SCRIPT [EXTRA_FILE...]
#
#   KERNEL_VERSION_OR_VMLINUZ  6.1 | 6.12 | linux-image-<...> (fetched and cached by fetch.sh),
#                              or the path of a vmlinuz
#   BINARY                     put at /bin/<its name> (a dynamic one gets its ldd libraries);
#                              the script finds it as $RNT_BIN
#   SCRIPT                     run by busybox sh as /suite.sh; it must print a line starting
#                              with the end marker (RNT-END) when it got to its end
#   EXTRA_FILE...              copied to /extra/<name> (e.g. a BPF object)
#
# The init mounts proc, sysfs, devtmpfs, cgroup2 on /sys/fs/cgroup, bpffs on /sys/fs/bpf,
# tracefs, and tmpfs on /tmp and /var/lib/redis-node-tuner (the state dir, $RNT_STATE_DIR),
# runs the script with PATH=/bin:/sbin, prints `RNT-INIT script exited N`, then `poweroff -f`.
#
# The console (ttyS0) goes to stdout when the VM has ended (also kept in $RNT_VM_LOG if set). Exit: the script's exit code when the log has the end marker; 1 with
# the log's tail when it has not (the VM hung, panicked, or the script died first); 124 after
# the hard timeout (qemu killed).
#
# Environment: RNT_VM_TIMEOUT (seconds, default 300), RNT_VM_MEM (default 1024, MiB),
# RNT_VM_SMP (default 1), RNT_VM_APPEND (more kernel command line), RNT_END_MARKER (default
# RNT-END), RNT_VM_LOG. Needs qemu-system-x86_64 (qemu-system-x86), busybox (busybox-static),
# cpio, gzip. Boot to /init takes about 15 s under TCG.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
  echo "usage: $0 KERNEL_VERSION_OR_VMLINUZ BINARY SCRIPT [EXTRA_FILE...]" >&2
  echo "  e.g. $0 6.1 target/x86_64-unknown-linux-musl/debug/redis-node-tuner tests/kernel-matrix/suite.sh" >&2
  exit 2
}
[[ $# -ge 3 ]] || usage
kernel=$1 binary=$2 script=$3
shift 3

for tool in qemu-system-x86_64 cpio gzip; do
  command -v "$tool" >/dev/null ||
    { echo "vm.sh: $tool is required (apt-get install qemu-system-x86 cpio gzip)" >&2; exit 1; }
done
busybox=$(command -v busybox || true)
[[ -n $busybox ]] || { echo "vm.sh: busybox is required (apt-get install busybox-static)" >&2; exit 1; }
# Dynamic: ldd names libraries (a static-pie binary is "statically linked", exit 0).
dynamic() { ldd "$1" 2>/dev/null | grep -q '=>'; }
if dynamic "$busybox"; then
  echo "vm.sh: $busybox is dynamically linked: install busybox-static" >&2
  exit 1
fi
[[ -f $binary ]] || { echo "vm.sh: no such binary: $binary" >&2; exit 1; }
[[ -f $script ]] || { echo "vm.sh: no such script: $script" >&2; exit 1; }
for f in "$@"; do [[ -f $f ]] || { echo "vm.sh: no such extra file: $f" >&2; exit 1; }; done

if [[ -f $kernel ]]; then
  vmlinuz=$kernel
else
  vmlinuz=$(bash "$here/fetch.sh" "$kernel")
fi

timeout_s=${RNT_VM_TIMEOUT:-300}
marker=${RNT_END_MARKER:-RNT-END}
work=$(mktemp -d "${TMPDIR:-/tmp}/rnt-vm.XXXXXX")
qemu_pid=
cleanup() {
  if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill -KILL "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log=${RNT_VM_LOG:-$work/console.log}
echo "vm.sh: booting $vmlinuz${RNT_VM_LOG:+, console log $RNT_VM_LOG}" >&2

# The initramfs.
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,extra,var/lib/redis-node-tuner}
cp "$busybox" "$root/bin/busybox"
name=$(basename "$binary")
cp "$binary" "$root/bin/$name"
chmod 755 "$root/bin/$name"
# A dynamic binary brings its libraries (and loader) at their paths.
if dynamic "$binary"; then
  ldd "$binary" | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
fi
cp "$script" "$root/suite.sh"
for f in "$@"; do cp "$f" "$root/extra/$(basename "$f")"; done
[[ $(id -u) -eq 0 ]] && mknod -m 600 "$root/dev/console" c 5 1
cat >"$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/lib/redis-node-tuner
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname rnt-vm
echo "RNT-INIT kernel \$(uname -r)"
export RNT_BIN=/bin/$name RNT_STATE_DIR=/var/lib/redis-node-tuner RNT_EXTRA=/extra HOME=/tmp
cd /
sh /suite.sh
echo "RNT-INIT script exited \$?"
sync
poweroff -f
INIT
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

qemu-system-x86_64 -accel tcg -cpu max -m "${RNT_VM_MEM:-1024}" -smp "${RNT_VM_SMP:-1}" \
  -nographic -no-reboot -nic none -monitor none \
  -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet loglevel=4 ${RNT_VM_APPEND:-}" \
  </dev/null >"$log" 2>&1 &
qemu_pid=$!

deadline=$((SECONDS + timeout_s))
timed_out=0
while kill -0 "$qemu_pid" 2>/dev/null; do
  if ((SECONDS >= deadline)); then
    timed_out=1
    kill -KILL "$qemu_pid" 2>/dev/null || true
    break
  fi
  sleep 0.5
done
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=

# Without carriage returns and the firmware's terminal escapes.
clean=$(tr -d '\r' <"$log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g')
printf '%s\n' "$clean"
if ! grep -q "^$marker" <<<"$clean"; then
  if ((timed_out)); then
    echo "vm.sh: the VM did not end within ${timeout_s} s (RNT_VM_TIMEOUT); no $marker; its tail:" >&2
  else
    echo "vm.sh: the VM ended without printing $marker; its tail:" >&2
  fi
  tail -n 40 <<<"$clean" >&2
  ((timed_out)) && exit 124
  exit 1
fi
rc=$(sed -n 's/^RNT-INIT script exited \([0-9]*\)$/\1/p' <<<"$clean" | tail -n1)
exit "${rc:-0}"
