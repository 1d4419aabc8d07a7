#!/usr/bin/env bash
# A simulated power cycle of the test node (the kernel's own knobs are the caller's to put
# back to boot values between the two halves):
#
#   tests/cluster/power-cycle.sh off   # kubelet SIGKILLed, every pod sandbox removed (its
#                                      # processes die), containerd SIGKILLed
#   tests/cluster/power-cycle.sh on    # containerd and the kubelet started again, as at boot
#
# The Node, its Pods and their bindings stay in the apiserver, as after a real reboot: the
# kubelet recreates every bound pod's sandbox, init containers included, whatever the node's
# NoSchedule taints say.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/lib.sh"
NODE_BIN="${RNT_NODE_BIN_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/node}"
[[ $(id -u) == 0 ]] || { echo "power-cycle.sh: needs root" >&2; exit 1; }

kill_pid() { # name
  local f="$D/pids/$1.pid" pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  for _ in $(seq 50); do pid_alive "$pid" || break; sleep 0.1; done
  rm -f "$f"
}

case ${1:-} in
off)
  kill_pid kubelet
  for p in $(crictl_ pods -q 2>/dev/null); do
    crictl_ stopp "$p" >/dev/null 2>&1 || log "stopp $p failed"
    crictl_ rmp -f "$p" >/dev/null 2>&1 || log "rmp $p failed"
  done
  kill_pid containerd
  # Shims that outlived their sandbox (none expected).
  for f in /proc/[0-9]*/cmdline; do
    if { tr "\0" " " <"$f"; } 2>/dev/null | grep -q -- "containerd-shim.*-address $SOCK"; then
      p=${f#/proc/}; kill -KILL "${p%/cmdline}" 2>/dev/null || true
    fi
  done
  log "power off: kubelet and containerd killed, every sandbox removed"
  ;;
on)
  start_containerd
  for _ in $(seq 150); do ctr --address "$SOCK" version >/dev/null 2>&1 && break; sleep 0.2; done
  ctr --address "$SOCK" version >/dev/null 2>&1 || { log "containerd did not answer"; exit 1; }
  start_kubelet
  log "power on: containerd and kubelet started"
  ;;
*)
  echo "usage: power-cycle.sh off|on" >&2
  exit 2
  ;;
esac
