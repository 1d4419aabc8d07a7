#!/usr/bin/env bash
# Brings one real Kubernetes node up on this machine, against the test kube-apiserver
# (tests/apiserver): containerd (own config, state and socket under $D), kubelet,
# kube-scheduler and kube-controller-manager. Needs root. Tear down with down.sh (run first
# here too, so a SIGKILLed run is cleaned up). See README.md beside this file.
#
#   tests/cluster/up.sh
#   export KUBECONFIG=/var/lib/redis-node-tuner-cluster/apiserver/admin.kubeconfig
#
# Environment:
#   RNT_CLUSTER_TAINT_EFFECT   effect of the startup taint redis-node-tuner.io/not-ready the
#                              node registers with (default NoSchedule; "none": no taint)
#   RNT_CLUSTER_NODE_LABELS    node labels (default dedicated=redis,pool=redis-db)
#   RNT_CLUSTER_LOCK_HELD=1    the caller already holds the host-knob lock (the kubelet writes
#                              vm.overcommit_memory at start); otherwise up.sh takes it and
#                              keeps it until down.sh
#   RNT_CLUSTER_SKIP_IMAGES=1  do not build/import the images (images.sh)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/lib.sh"
effect=${RNT_CLUSTER_TAINT_EFFECT:-NoSchedule}
labels=${RNT_CLUSTER_NODE_LABELS:-dedicated=redis,pool=redis-db}
[[ $(id -u) == 0 ]] || { echo "up.sh: needs root" >&2; exit 1; }

bash "$HERE/down.sh"
node_bins
start=$SECONDS
mkdir -p "$D"/{pids,logs,containerd,kubelet,pod-logs,cni/net.d,cni/ipam}
: >"$LOGS/up.log"
for f in "$LOGS"/*.log; do [[ $f == "$LOGS/up.log" ]] || : >"$f"; done

fail() {
  log "FAILED: $*"
  for c in $COMPONENTS; do [[ -f "$LOGS/$c.log" ]] && { echo "--- tail of $LOGS/$c.log" >&2; tail -n 25 "$LOGS/$c.log" >&2; }; done
  exit 1
}
wait_for() { # seconds what command...
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "$what did not happen within ${secs}s"
}

# The host-knob lock, for the cluster's whole life (released by down.sh).
if [[ ${RNT_CLUSTER_LOCK_HELD:-} != 1 ]]; then
  (exec 9>"$HOST_LOCK"; flock 9; touch "$D/locked"; exec -a "rnt-cluster-lock $D" sleep infinity) </dev/null >/dev/null 2>&1 &
  echo $! >"$D/pids/host-lock.pid"
  log "waiting for the host-knob lock $HOST_LOCK"
  wait_for 900 "taking the host-knob lock" test -f "$D/locked"
fi

# What down.sh puts back.
for k in $SAVED_SYSCTLS; do echo "$k $(sysctl -n "$k")"; done >"$D/sysctls.saved"
for ipt in iptables ip6tables; do
  command -v "$ipt-save" >/dev/null || continue
  for t in filter nat mangle; do "$ipt-save" -t "$t" 2>/dev/null | sed -n "s/^:\([^ ]*\) .*/$t \1/p"; done >"$D/$ipt.before"
done
[[ -e /var/lib/redis-node-tuner ]] || touch "$D/remove-agent-state"
ls -d /run/netns/cni-* 2>/dev/null >"$D/netns.before" || true

# The node IP lives on an empty bridge: nothing is routed off the machine.
ip link add "$NODE_BRIDGE" type bridge
ip addr add "$NODE_IP/32" dev "$NODE_BRIDGE"
ip link set "$NODE_BRIDGE" up

# Pod cgroups live under $CGROUP_ROOT (cgroup v1 hierarchies and the unified one).
for c in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
  [[ -f "$c/cgroup.procs" ]] || continue
  mkdir -p "$c$CGROUP_ROOT"
  if [[ -f "$c/cpuset.cpus" ]]; then
    cat "$c/cpuset.cpus" >"$c$CGROUP_ROOT/cpuset.cpus"
    cat "$c/cpuset.mems" >"$c$CGROUP_ROOT/cpuset.mems"
  fi
done

# kube-apiserver (test build, embedded etcd) with a token for the node (Node authorizer,
# NodeRestriction) next to the admin's; MutatingAdmissionPolicy (beta, off by default in 1.35)
# on, for the test's stand-in of kube-proxy when it runs the README's quickstarts as written.
mkdir -p "$D/apiserver"
admin=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
nodetok=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$admin" >"$D/apiserver/admin.token"
printf '%s,admin,admin,"system:masters"\n%s,system:node:%s,node-%s,"system:nodes"\n' \
  "$admin" "$nodetok" "$NODE" "$NODE" >"$D/tokens.csv"
chmod 600 "$D/tokens.csv" "$D/apiserver/admin.token"
setsid "$API_BIN" -dir "$D/apiserver" -port "$API_PORT" -- --token-auth-file="$D/tokens.csv" \
  --feature-gates=MutatingAdmissionPolicy=true \
  --runtime-config=admissionregistration.k8s.io/v1beta1=true \
  >"$LOGS/apiserver.stdout" 2>>"$LOGS/apiserver.log" </dev/null &
echo $! >"$D/pids/apiserver.pid"
wait_for 180 "kube-apiserver ready on 127.0.0.1:$API_PORT" test -f "$D/apiserver/ready"
ADMIN="$D/apiserver/admin.kubeconfig"
server=$(cat "$D/apiserver/ready")
ca=$(base64 -w0 <"$D/apiserver/ca.crt")
cat >"$D/kubelet/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: node, user: {token: "$nodetok"}}]
contexts: [{name: node, context: {cluster: test, user: node}}]
current-context: node
KC

# containerd: Debian's 1.6, own root/state/socket; CRI with our CNI conf dir and pause image.
cat >"$D/cni/net.d/10-rnt.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "rnt", "plugins": [{"type": "bridge", "bridge": "$CNI_BRIDGE",
  "isGateway": false, "ipMasq": false, "ipam": {"type": "host-local",
  "ranges": [[{"subnet": "$POD_SUBNET"}]], "dataDir": "$D/cni/ipam"}}]}
CNI
cat >"$D/containerd/config.toml" <<TOML
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/rnt-pause:1"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails in runc create.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
TOML
start_containerd
wait_for 30 "containerd answering on $SOCK" ctr --address "$SOCK" version
if [[ ${RNT_CLUSTER_SKIP_IMAGES:-} != 1 ]]; then
  for a in $(bash "$HERE/images.sh"); do
    ctr --address "$SOCK" -n k8s.io images import "$a" >>"$LOGS/up.log" 2>&1 || fail "ctr import $a"
  done
fi

# Control plane controllers and scheduler (admin credentials, no serving port).
setsid "$NODE_BIN/kube-controller-manager" --kubeconfig="$ADMIN" --leader-elect=false \
  --secure-port=0 --service-account-private-key-file="$D/apiserver/sa.key" \
  --root-ca-file="$D/apiserver/ca.crt" --use-service-account-credentials=false \
  --concurrent-daemonset-syncs=1 >>"$LOGS/kube-controller-manager.log" 2>&1 </dev/null &
echo $! >"$D/pids/kube-controller-manager.pid"
setsid "$NODE_BIN/kube-scheduler" --kubeconfig="$ADMIN" --leader-elect=false --secure-port=0 \
  >>"$LOGS/kube-scheduler.log" 2>&1 </dev/null &
echo $! >"$D/pids/kube-scheduler.pid"

# kubelet.
taints=""
[[ $effect == none ]] || taints="registerWithTaints: [{key: redis-node-tuner.io/not-ready, effect: $effect}]"
cat >"$D/kubelet/config.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
podLogsDir: $D/pod-logs
resolvConf: /etc/resolv.conf
# Never collect the imported images, never evict for this shared machine's disk or memory.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
localStorageCapacityIsolation: false
$taints
CFG
echo "$labels" >"$D/kubelet/node-labels"
start_kubelet
wait_for 90 "node $NODE Ready" node_ready
# The default ServiceAccount exists once the controller-manager has run its controllers.
wait_for 60 "ServiceAccount default/default created" kubectl --kubeconfig "$ADMIN" get sa default
log "up in $((SECONDS - start))s: KUBECONFIG=$ADMIN"
