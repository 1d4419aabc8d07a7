#!/usr/bin/env bash
# Kubernetes mode, measured against the real test kube-apiserver (tests/apiserver):
#  - time from agent start on an untuned node to "label set + taint removed + condition True"
#    (agent side: the agent logs since_start_ms when it has written all three);
#  - API requests per node per hour in steady state (nothing drifts), from the apiserver's own
#    apiserver_request_total{resource=~"nodes|events"}, over DURATION seconds with a short
#    heartbeat (HEARTBEAT) so heartbeat writes are visible;
#  - the agent's RSS (VmRSS / VmHWM) with Kubernetes mode on.
# Usage: scripts/bench-kube.sh            (DURATION=600 HEARTBEAT=60s by default)
# Only loopback traffic; the kernel knobs are a fake tree in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
HEARTBEAT=${HEARTBEAT:-60s}
WARMUP=${WARMUP:-20}

cargo build --release --quiet
APISERVER=$(bash tests/apiserver/build.sh | tail -n1)
W=$(mktemp -d)
stop_all() {
  [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null || true
  [ -n "${API:-}" ] && kill "$API" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W" "${BENCH_TMP:-}"
}
trap stop_all EXIT

"$APISERVER" -dir "$W/api" >"$W/api.out" 2>"$W/api.log" &
API=$!
for _ in $(seq 1 600); do grep -q READY "$W/api.out" 2>/dev/null && break; sleep 0.2; done
grep -q READY "$W/api.out" || { echo "apiserver did not start" >&2; exit 1; }
URL=$(awk '/READY/{print $2}' "$W/api.out")
KC="$W/api/admin.kubeconfig"
TOKEN=$(cat "$W/api/admin.token")
k() { kubectl --kubeconfig "$KC" "$@"; }

k create -f - >/dev/null <<EOF
{"apiVersion":"v1","kind":"Node","metadata":{"name":"bench-1"},
 "spec":{"taints":[{"key":"redis-node-tuner.io/not-ready","effect":"NoSchedule"}]}}
EOF

# An untuned fake host (scripts/bench-lib.sh).
source scripts/bench-lib.sh
make_fake_tree
T=$BENCH_TMP

requests() {
  curl -s --cacert "$W/api/ca.crt" -H "Authorization: Bearer $TOKEN" "$URL/metrics" |
    python3 -c '
import sys, re
tot = {}
for line in sys.stdin:
    if not line.startswith("apiserver_request_total{"): continue
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", line.split("}")[0]))
    if labels.get("resource") not in ("nodes", "events"): continue
    key = labels["verb"] + " " + labels["resource"] + ("/" + labels["subresource"] if labels.get("subresource") else "")
    tot[key] = tot.get(key, 0) + float(line.rsplit(" ", 1)[1])
for k2, v in sorted(tot.items()): print(f"{k2}\t{int(v)}")
'
}

"$BIN" --proc-root "$FAKE_PROC" --sys-root "$FAKE_SYS" --state-dir "$STATE_DIR" \
  run --kubeconfig "$KC" --node-name bench-1 --heartbeat "$HEARTBEAT" --listen "" \
  --log-format json 2>"$W/agent.log" &
AGENT=$!
for _ in $(seq 1 100); do grep -q 'node marked ready' "$W/agent.log" && break; sleep 0.1; done
START_MS=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    j = json.loads(l)
    if j.get("message","").startswith("node marked ready"): print(j["since_start_ms"]); break' "$W/agent.log")
echo "start_to_marked_ready_ms_agent_side=${START_MS:-none}"

sleep "$WARMUP"
requests >"$W/before"
sleep "$DURATION"
requests >"$W/after"
python3 - "$W/before" "$W/after" "$DURATION" <<'EOF'
import sys
def load(p):
    d = {}
    for l in open(p):
        k, v = l.rstrip("\n").split("\t"); d[k] = int(v)
    return d
b, a, dur = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
total = writes = 0
for k in sorted(set(a) | set(b)):
    n = a.get(k, 0) - b.get(k, 0)
    if n == 0: continue
    verb = k.split()[0]
    total += n
    if verb in ("PATCH", "APPLY", "POST", "PUT", "DELETE", "CREATE", "UPDATE"): writes += n
    print(f"  {k}: {n} in {dur:.0f}s ({n * 3600 / dur:.1f}/h)")
print(f"api_requests_per_node_per_hour={total * 3600 / dur:.1f}")
print(f"api_writes_per_node_per_hour={writes * 3600 / dur:.1f}")
EOF
grep -E '^Vm(RSS|HWM)' "/proc/$AGENT/status" | tr -s ' \t' ' ' | sed 's/^/agent_/'
