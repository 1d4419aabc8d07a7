#!/usr/bin/env bash
# Tears the real-node test cluster down and puts the machine back as up.sh found it:
# idempotent, run first by up.sh and last by the tests, and safe after a SIGKILLed run
# (containerd is started again briefly so that pod sandboxes are removed through CRI and CNI
# cleans their network up). Keeps the components' logs in $D/logs.
#
#   tests/cluster/down.sh
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/lib.sh"
NODE_BIN="${RNT_NODE_BIN_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redis-node-tuner/node}"
start=$SECONDS

# 1. Nothing may restart pods while we remove them.
stop_pid kubelet 20
stop_pid kube-scheduler
stop_pid kube-controller-manager

# 2. Pod sandboxes through CRI (CNI DEL releases addresses and veths, netns are removed).
if [[ -f "$D/containerd/config.toml" && -x "$NODE_BIN/crictl" ]]; then
  if ! pid_alive "$(cat "$D/pids/containerd.pid" 2>/dev/null)"; then
    log "containerd not running: starting it again to remove pod sandboxes"
    mkdir -p "$LOGS" "$D/pids"
    setsid containerd --config "$D/containerd/config.toml" >>"$LOGS/containerd.log" 2>&1 </dev/null &
    echo $! >"$D/pids/containerd.pid"
    for _ in $(seq 100); do [[ -S $SOCK ]] && ctr --address "$SOCK" version >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  if [[ -S $SOCK ]]; then
    for p in $(crictl_ pods -q 2>/dev/null); do
      crictl_ stopp "$p" >/dev/null 2>&1 || log "stopp $p failed"
      crictl_ rmp -f "$p" >/dev/null 2>&1 || log "rmp $p failed"
    done
  fi
fi
stop_pid containerd 20

# 3. Whatever survived: shims of our containerd, processes in our cgroups.
for _ in 1 2 3; do
  pids=""
  for f in /proc/[0-9]*/cmdline; do
    if { tr "\0" " " <"$f"; } 2>/dev/null | grep -q -- "containerd-shim.*-address $SOCK"; then
      p=${f#/proc/}; pids+=" ${p%/cmdline}"
    fi
  done
  for c in /sys/fs/cgroup/*$CGROUP_ROOT /sys/fs/cgroup/unified$CGROUP_ROOT; do
    [[ -d $c ]] && pids+=" $(find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
  done
  pids=$(echo $pids | tr ' ' '\n' | sort -u | tr '\n' ' ')
  pids=$(echo $pids)
  [[ -z $pids ]] && break
  log "killing leftover processes: $pids"
  kill -KILL $pids 2>/dev/null || true
  sleep 0.5
done

stop_pid apiserver 30
stop_pid host-lock 2

# Network namespaces of our sandboxes that CRI did not remove (containerd names them cni-*;
# those present before up.sh are left alone).
for ns in /run/netns/cni-*; do
  [[ -e $ns ]] || continue
  if [[ -f "$D/netns.before" ]] && grep -qx "$ns" "$D/netns.before"; then continue; fi
  [[ -f "$D/netns.before" ]] || continue
  log "removing leftover network namespace $ns"
  ip netns delete "${ns#/run/netns/}" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
done

# 4. Mounts under the state dir (container rootfs, kubelet volumes), deepest first.
if [[ -d $D ]]; then
  for _ in 1 2 3; do
    mps=$(awk -v d="$D/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | uniq)
    [[ -z $mps ]] && break
    for m in $mps; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
fi

# 5. cgroups of the test (kubelet --cgroup-root), deepest first.
for c in /sys/fs/cgroup/*$CGROUP_ROOT /sys/fs/cgroup/unified$CGROUP_ROOT; do
  [[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  [[ -d $c ]] && log "cgroup $c could not be removed"
done

# 6. Links: veths left on the pods' bridge, the bridges.
for l in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$l" 2>/dev/null || true
done
for b in "$CNI_BRIDGE" "$NODE_BRIDGE"; do
  ip link show "$b" >/dev/null 2>&1 && ip link del "$b"
done

# 7. iptables chains the kubelet (and CNI) created: those absent before up.sh.
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  before="$D/$ipt.before"
  for table in filter nat mangle; do
    for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p'); do
      if [[ -f $before ]] && grep -qx "$table $chain" "$before"; then continue; fi
      # Rules jumping to it, then the chain itself.
      "$ipt-save" -t "$table" | grep -- "-j $chain\( \|$\)" | sed 's/^-A /-D /' | while read -r rule; do
        eval "$ipt -w -t $table $rule" 2>/dev/null || true
      done
      "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
      "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || log "$ipt -t $table -X $chain failed"
    done
  done
done

# 8. Host settings the kubelet and CNI changed.
if [[ -f "$D/sysctls.saved" ]]; then
  while read -r k v; do sysctl -q -w "$k=$v" >/dev/null || log "could not restore $k=$v"; done <"$D/sysctls.saved"
fi
if [[ -f "$D/remove-agent-state" ]]; then rm -rf /var/lib/redis-node-tuner; fi

# 9. The state dir, logs kept.
if [[ -d $D ]]; then
  find "$D" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf --one-file-system {} + 2>/dev/null || log "could not remove all of $D"
fi
log "down in $((SECONDS - start))s"
