# Shared by up.sh and down.sh (sourced). One test cluster per machine: fixed paths and ports.
D="${RNT_CLUSTER_DIR:-/var/lib/redis-node-tuner-cluster}"   # all state; logs in $D/logs
LOGS="$D/logs"
NODE="${RNT_CLUSTER_NODE:-rnt-node}"
API_PORT="${RNT_CLUSTER_API_PORT:-16443}"
NODE_BRIDGE=rntnode0          # empty bridge holding the node IP (no traffic leaves the host)
NODE_IP=10.213.0.1
CNI_BRIDGE=rntcni0            # the pods' bridge (CNI bridge plugin, no masquerade, no gateway)
POD_SUBNET=10.213.1.0/24
CGROUP_ROOT=/rnt-cluster      # kubelet --cgroup-root: every pod cgroup of the test is under it
SOCK="$D/containerd/containerd.sock"
HOST_LOCK=/tmp/redis-node-tuner-host-knobs.lock
# Host settings the kubelet (setupKernelTunables) and the CNI bridge plugin may change.
SAVED_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward"
COMPONENTS="kubelet kube-scheduler kube-controller-manager containerd apiserver"

log() { echo "cluster: $*" >&2; }

# Running, not a zombie (a killed component's parent may be gone and its zombie never reaped).
pid_alive() {
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null &&
    ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null
}

# Stops a recorded PID: SIGTERM, up to $2 seconds, then SIGKILL.
stop_pid() {
  local name=$1 wait=${2:-15} f="$D/pids/$1.pid" pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  # Only the process we started: its command line must mention our state dir or binary.
  if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$D\|redis-node-tuner/node\|kube-apiserver-test\|$HOST_LOCK"; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < wait * 10; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then log "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  fi
  rm -f "$f"
}

crictl_() { "$NODE_BIN/crictl" --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --timeout 20s "$@"; }

node_bins() {
  NODE_BIN="$(bash "$HERE/build.sh" | tail -n1)"
  API_BIN="$(bash "$HERE/../apiserver/build.sh" | tail -n1)"
}

# containerd with the config up.sh wrote (also after a simulated power cycle).
start_containerd() {
  mkdir -p "$LOGS" "$D/pids"
  setsid containerd --config "$D/containerd/config.toml" >>"$LOGS/containerd.log" 2>&1 </dev/null &
  echo $! >"$D/pids/containerd.pid"
}

# The kubelet with the config up.sh wrote (also after a simulated power cycle).
start_kubelet() {
  setsid "$NODE_BIN/kubelet" --config="$D/kubelet/config.yaml" --kubeconfig="$D/kubelet/kubeconfig" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --root-dir="$D/kubelet" \
    --cert-dir="$D/kubelet/pki" --node-labels="$(cat "$D/kubelet/node-labels")" \
    >>"$LOGS/kubelet.log" 2>&1 </dev/null &
  echo $! >"$D/pids/kubelet.pid"
}

node_ready() {
  [[ $(kubectl --kubeconfig "$D/apiserver/admin.kubeconfig" get node "$NODE" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
