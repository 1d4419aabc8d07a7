#!/usr/bin/env bash
# Smoke test of the test kube-apiserver with kubectl: readyz, Node create /
# label / status patch, ServiceAccount + pod-bound token carrying the node-name
# extra, SIGTERM, restart on the same dir and port, data still there.
#
#   tests/apiserver/smoke.sh            # builds (if needed) via build.sh
#   KEEP=1 tests/apiserver/smoke.sh     # keep the work dir for inspection
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$("$here/build.sh" | tail -n1)"
dir="$(mktemp -d "${TMPDIR:-/tmp}/rnt-apiserver.XXXXXX")"
pid=""

cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [[ -z "${KEEP:-}" ]]; then rm -rf "$dir"; else echo "work dir kept: $dir"; fi
}
trap cleanup EXIT

# start PORT: run the server in the background, wait for DIR/ready.
start() {
  local t0=$SECONDS
  "$bin" -dir "$dir" -port "$1" >>"$dir/stdout.log" 2>>"$dir/stderr.log" &
  pid=$!
  for _ in $(seq 1 600); do
    if [[ -f "$dir/ready" ]]; then
      echo "ready after $((SECONDS - t0))s: $(cat "$dir/ready")"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server exited early; stderr tail:" >&2
      tail -n 50 "$dir/stderr.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "server not ready after 120s" >&2
  return 1
}

stop() {
  local t0=$SECONDS rc=0
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  echo "stopped after $((SECONDS - t0))s, exit code $rc"
  pid=""
  [[ $rc -eq 0 ]]
}

k() { kubectl --kubeconfig "$dir/admin.kubeconfig" "$@"; }

echo "== start (port 0 = pick a free one)"
start 0
grep READY "$dir/stdout.log"
port="$(sed -E 's#.*:([0-9]+).*#\1#' "$dir/ready")"
echo "port: $port"

echo "== readyz"
k get --raw /readyz
echo
k version

echo "== node: create, label, status patch (strategic merge on nodes/status)"
k create -f - <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: node-a
EOF
k label node node-a redis-node-tuner.io/tuned=pending
now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k patch node node-a --subresource=status --type=strategic -p "{\"status\":{\"conditions\":[{\"type\":\"RedisTuned\",\"status\":\"True\",\"reason\":\"Smoke\",\"message\":\"patched by smoke.sh\",\"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}]}}"
k get node node-a -o jsonpath='{.metadata.labels}{"\n"}{.status.conditions}{"\n"}'

echo "== serviceaccount + pod bound to node-a + pod-bound token"
k create serviceaccount tuner
k create -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: tuner-pod
spec:
  nodeName: node-a
  serviceAccountName: tuner
  containers:
  - name: c
    image: example.invalid/none
EOF
uid="$(k get pod tuner-pod -o jsonpath='{.metadata.uid}')"
token="$(k create token tuner --bound-object-kind Pod --bound-object-name tuner-pod --bound-object-uid "$uid")"
echo "JWT claims:"
payload="$(cut -d. -f2 <<<"$token" | tr '_-' '/+')"
while (( ${#payload} % 4 )); do payload+="="; done
base64 -d <<<"$payload"
echo
echo "whoami as the ServiceAccount:"
who="$(k --token "$token" auth whoami -o json)"
echo "$who"
grep -q '"authentication.kubernetes.io/node-name"' <<<"$who"
grep -A2 '"authentication.kubernetes.io/node-name"' <<<"$who" | grep -q '"node-a"'
echo "RBAC applies to the ServiceAccount (expect 'no'):"
k --token "$token" auth can-i get nodes || true
if k --token "$token" get node node-a >/dev/null 2>&1; then
  echo "unexpected: SA without RBAC could read nodes" >&2
  exit 1
fi

echo "== SIGTERM, restart on the same dir and port $port"
stop
[[ ! -f "$dir/ready" ]]
start "$port"
[[ "$(cat "$dir/ready")" == "https://127.0.0.1:$port" ]]
k get node node-a -o jsonpath='{.metadata.name} {.metadata.labels} {.status.conditions[0].type}={.status.conditions[0].status}{"\n"}'
k get node node-a -o jsonpath='{.metadata.labels.redis-node-tuner\.io/tuned}' | grep -qx pending
k get serviceaccount tuner >/dev/null
echo "old pod-bound token still valid after restart:"
k --token "$token" auth whoami
stop
echo "SMOKE OK"
