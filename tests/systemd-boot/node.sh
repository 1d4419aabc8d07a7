#!/usr/bin/env bash
# A Debian bookworm "node" booted with systemd as PID 1 in systemd-nspawn, for tests/systemd_boot.rs.
#
#   node.sh setup           install debootstrap and systemd-container when missing (root), and
#                           build the pristine root filesystem tar unless cached
#   node.sh rootfs DIR      DIR/rootfs from the cached pristine tar (built once, ~50 s), prepared
#   node.sh boot DIR        boot DIR/rootfs; prints the container's PID 1 once systemd is running
#   node.sh enter DIR CMD…  run CMD inside (nsenter on the container's PID 1)
#   node.sh stop DIR        clean shutdown (poweroff), then wait for nspawn to exit
#   node.sh teardown DIR    stop what this script started under DIR, unmount leftovers, remove DIR
#
# The container shares the host's kernel, and its /proc/sys and /sys are writable
# (SYSTEMD_NSPAWN_API_VFS_WRITABLE=1): callers hold the host-knob lock for as long as it exists.
# It has its own network namespace (--private-network), so net.* settings are its own.
set -euo pipefail

SUITE=bookworm
MIRROR=${REDIS_NODE_TUNER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,dbus,redis-server,procps,iproute2,curl,sudo
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/redis-node-tuner
# The pristine tar is keyed by everything that goes into it.
KEY=$(printf '%s\n' "debootstrap --variant=minbase" "$SUITE" "$MIRROR" "$PACKAGES" "apt clean, no lists" |
  sha256sum | cut -c1-16)
TAR=$CACHE/systemd-boot-rootfs-$KEY.tar

die() { echo "node.sh: $*" >&2; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/apt-lib.sh"
# Path of /proc/sys/... knobs the container's early boot sets to a fresh, untuned kernel's values.
THP=/sys/kernel/mm/transparent_hugepage

setup() {
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v systemd-nspawn >/dev/null || need+=(systemd-container)
  command -v nsenter >/dev/null || need+=(util-linux)
  apt_install ${need[@]+"${need[@]}"}
}

pristine() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/systemd-boot-rootfs.lock"
  flock 9
  [ -s "$TAR" ] && return 0
  local tmp
  tmp=$(mktemp -d /var/tmp/redis-node-tuner-debootstrap.XXXXXX)
  local start=$SECONDS
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/root" "$MIRROR" \
    >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    tail -n 30 "$tmp/root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    rm -rf "$tmp"
    die "debootstrap failed"
  fi
  chroot "$tmp/root" apt-get clean
  rm -rf "$tmp/root/var/lib/apt/lists/"*
  tar -C "$tmp/root" --numeric-owner -cf "$tmp/rootfs.tar" .
  mv "$tmp/rootfs.tar" "$TAR"
  rm -rf "$tmp"
  echo "node.sh: built $TAR in $((SECONDS - start)) s" >&2
}

rootfs() {
  local dir=$1 r=$1/rootfs
  pristine
  mkdir -p "$r"
  tar -C "$r" --numeric-owner -xf "$TAR"
  # With a writable /proc/sys and /sys, these would change the host's kernel or devices.
  for u in systemd-sysctl.service systemd-modules-load.service systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount systemd-udevd.service \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service \
    systemd-random-seed.service; do
    ln -sf /dev/null "$r/etc/systemd/system/$u"
  done
  # A real reboot starts from the kernel's defaults; a container "reboot" keeps the host's
  # values. This unit puts an untuned kernel's values back early in every boot, so that what
  # Redis sees at its start is what the boot order made of them.
  cat >"$r/etc/systemd/system/untuned-kernel.service" <<EOF
[Unit]
Description=Kernel settings of an untuned node (stands in for a reboot's kernel defaults)
DefaultDependencies=no
Before=sysinit.target redis-node-tuner.service redis-server.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo 0 >/proc/sys/vm/overcommit_memory; echo 128 >/proc/sys/net/core/somaxconn; echo always >$THP/enabled; echo madvise >$THP/defrag'

[Install]
WantedBy=sysinit.target
EOF
  ln -sf ../untuned-kernel.service "$r/etc/systemd/system/sysinit.target.wants/untuned-kernel.service" 2>/dev/null ||
    { mkdir -p "$r/etc/systemd/system/sysinit.target.wants" &&
      ln -sf ../untuned-kernel.service "$r/etc/systemd/system/sysinit.target.wants/untuned-kernel.service"; }
  # Redis 7 hides its THP warning when it may disable THP for itself (disable-thp yes).
  echo "disable-thp no" >>"$r/etc/redis/redis.conf"
  echo node >"$r/etc/hostname"
}

pid_file() { echo "$1/nspawn.pid"; }

# The recorded nspawn PID, if it is still that nspawn (not a recycled PID).
nspawn_pid() {
  local f pid
  f=$(pid_file "$1")
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "systemd-nspawn .*-D $1/rootfs" || return 1
  echo "$pid"
}

# The container's PID 1: the nspawn process's child.
leader() {
  local n
  n=$(nspawn_pid "$1") || return 1
  local c
  c=$(cat "/proc/$n/task/$n/children" 2>/dev/null) || return 1
  set -- $c
  [ $# -ge 1 ] || return 1
  echo "$1"
}

enter() {
  local dir=$1
  shift
  local l
  l=$(leader "$dir") || die "no container running under $dir"
  exec nsenter -t "$l" -m -u -i -n -p -C -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

boot() {
  local dir=$1
  nspawn_pid "$dir" >/dev/null && die "already booted under $dir"
  SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 \
    setsid systemd-nspawn --quiet --register=no --keep-unit --private-network \
    --system-call-filter=bpf --console=read-only --machine=redis-node -b -D "$dir/rootfs" \
    </dev/null >>"$dir/console.log" 2>&1 &
  echo $! >"$(pid_file "$dir")"
  local i state=
  for i in $(seq 1 300); do
    if ! nspawn_pid "$dir" >/dev/null; then
      tail -n 40 "$dir/console.log" >&2
      die "systemd-nspawn exited during boot"
    fi
    if leader "$dir" >/dev/null; then
      state=$(enter "$dir" systemctl is-system-running 2>/dev/null) || true
      case $state in
        running) leader "$dir"; return 0 ;;
        degraded)
          (enter "$dir" systemctl --failed --no-legend) >&2 || true
          die "the container booted degraded" ;;
      esac
    fi
    sleep 0.1
  done
  tail -n 40 "$dir/console.log" >&2
  die "systemd in the container did not reach running within 30 s (last state: ${state:-none})"
}

# Waits up to $2 tenths of a second for the recorded nspawn to exit.
wait_gone() {
  local i
  for i in $(seq 1 "$2"); do
    nspawn_pid "$1" >/dev/null || return 0
    sleep 0.1
  done
  return 1
}

stop() {
  local dir=$1 l
  l=$(leader "$dir") || { rm -f "$(pid_file "$dir")"; return 0; }
  kill -s SIGRTMIN+4 "$l" 2>/dev/null || true # systemd: poweroff
  if ! wait_gone "$dir" 300; then
    echo "node.sh: the container did not power off within 30 s; killing it" >&2
    kill -KILL "$(nspawn_pid "$dir")" 2>/dev/null || true
    wait_gone "$dir" 100 || die "systemd-nspawn did not exit"
  fi
  rm -f "$(pid_file "$dir")"
}

teardown() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if n=$(nspawn_pid "$dir"); then
    if l=$(leader "$dir"); then kill -s SIGRTMIN+4 "$l" 2>/dev/null || true; fi
    wait_gone "$dir" 100 || { kill -KILL "$n" 2>/dev/null || true; wait_gone "$dir" 100 || true; }
  fi
  # Mounts left under the rootfs (a killed nspawn), deepest first.
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$dir"
}

cmd=${1:-}
shift || true
case $cmd in
  setup) setup; pristine ;;
  pristine) pristine; echo "$TAR" ;;
  rootfs) rootfs "$@" ;;
  boot) boot "$@" ;;
  enter) enter "$@" ;;
  stop) stop "$@" ;;
  teardown) teardown "$@" ;;
  *) die "usage: node.sh setup|pristine|rootfs DIR|boot DIR|enter DIR CMD...|stop DIR|teardown DIR" ;;
esac
