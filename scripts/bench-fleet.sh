#!/usr/bin/env bash
# Fleet benchmark: N agents (each its own process, own fake kernel tree, own Pod-bound
# ServiceAccount token of deploy/base/access, so RBAC, the admission policy and API Priority and
# Fairness apply as in a cluster) started at once against ONE real test kube-apiserver
# (tests/apiserver). Reports, from the apiserver's audit log and /metrics:
#   - time from the simultaneous start to all N nodes labelled, untainted, condition True;
#   - requests per agent at start by verb and resource; 409 / 429 / 5xx counts;
#   - heartbeat spread over WINDOW seconds (max heartbeats in one second vs the mean), and the
#     spread of watch renewals;
#   - apiserver CPU and RSS (etcd is embedded in the same process), agent RSS;
#   - an apiserver restart storm: the apiserver is stopped (SIGTERM; its graceful stop takes up
#     to a minute with watches open, and the outage is at least OUTAGE seconds, longer than the
#     heartbeat, so every agent has a condition to write), then started again on the same data:
#     peak requests/s in the first minute after it is ready, the time from ready until every
#     node's condition carries a heartbeat written after the stop (the marks converged), log
#     lines per agent from the stop to then.
#
# Usage: scripts/bench-fleet.sh N        (e.g. 20, 100, 500)
# Environment: HEARTBEAT (30s), WINDOW (300 s), OUTAGE (60 s), BIN (release binary, built when
#   missing), OUT (directory for the raw output; default a temp dir that is kept), KEEP=1 keeps
#   the work dir (apiserver data, agent logs, audit log), FLOWCONTROL=0 leaves
#   deploy/base/access/flowcontrol.yaml out (to measure a build from before it).
# Only loopback; the kernel knobs are N fake trees in a temp dir. Nothing on the host changes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: scripts/bench-fleet.sh N}
export BIN=${BIN:-$PWD/target/release/redis-node-tuner}
if [[ ! -x $BIN ]]; then cargo build --release --quiet; fi
APISERVER=$(bash tests/apiserver/build.sh | tail -n1)
export APISERVER
exec python3 scripts/bench_fleet.py "$N"
