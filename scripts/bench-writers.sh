#!/usr/bin/env bash
# The writer watch on this machine's REAL kernel (root; every knob is restored on exit, and the
# host-knob lock shared with the tests is held throughout):
#   1. foreign write -> corrected latency, watch on (`--interval 1h`: only the watch corrects)
#      and off (`--interval 1s`: the poll): a process writes the wrong value, then polls the
#      file until the agent has put the profile's value back; for vm.overcommit_memory (the
#      cgroup/sysctl program) and thp.enabled (the sys_exit tracepoint);
#   2. the cost of the sys_exit tracepoint on a syscall-heavy workload: `dd bs=1` copying
#      /dev/zero to /dev/null (2 syscalls per byte), wall time with the watch attached and not;
#   3. the agent's own CPU (utime+stime from /proc/<pid>/stat) over IDLE seconds at the
#      default 1 s interval, watch on and off.
#
#   scripts/bench-writers.sh
#   WRITES=500 IDLE=120 scripts/bench-writers.sh
#
# Environment: WRITES (latency samples per knob, default 200), POLL_WRITES (samples with the
# watch off, default 10), DD_BYTES (default 2000000), IDLE (seconds, default 60), BIN,
# SKIP_BUILD as in bench-lib.sh. Output: readable lines, and "BENCH_WRITERS " lines to parse.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

WRITES=${WRITES:-200}
POLL_WRITES=${POLL_WRITES:-10}
DD_BYTES=${DD_BYTES:-2000000}
IDLE=${IDLE:-60}
[[ $(id -u) == 0 ]] || die "needs root: it writes this machine's kernel settings"
ensure_binary

THP_DIR=/sys/kernel/mm/transparent_hugepage
exec 9>/tmp/redis-node-tuner-host-knobs.lock
flock 9
sel() { sed 's/.*\[\(.*\)\].*/\1/' "$1"; }
SAVED_OC=$(cat /proc/sys/vm/overcommit_memory)
SAVED_SC=$(cat /proc/sys/net/core/somaxconn)
SAVED_EN=$(sel $THP_DIR/enabled)
SAVED_DF=$(sel $THP_DIR/defrag)
WORK=$(mktemp -d /tmp/rnt-bench-writers.XXXXXX)
AGENT=""
restore() {
    [[ -n $AGENT ]] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
    echo "$SAVED_OC" >/proc/sys/vm/overcommit_memory
    echo "$SAVED_SC" >/proc/sys/net/core/somaxconn
    echo "$SAVED_EN" >$THP_DIR/enabled
    echo "$SAVED_DF" >$THP_DIR/defrag
    rm -rf "$WORK"
}
trap restore EXIT

start_agent() { # mode interval
    mkdir -p "$WORK/state-$1"
    "$BIN" --state-dir "$WORK/state-$1" run --no-kubernetes --listen "" --writers "$1" \
        --interval "$2" 2>"$WORK/agent-$1.log" &
    AGENT=$!
    for _ in $(seq 100); do
        grep -q "writer watch" "$WORK/agent-$1.log" && grep -q "node ready" "$WORK/agent-$1.log" && return
        sleep 0.1
    done
    die "agent did not start: $(cat "$WORK/agent-$1.log")"
}
stop_agent() { kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=""; }

latency() { # label path bad good n
    python3 - "$@" <<'EOF'
import statistics, sys, time
label, path, bad, good, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def selected(t):
    t = t.strip()
    return t[t.index("[") + 1:t.index("]")] if "[" in t else t
lat, lost = [], 0
for _ in range(n):
    time.sleep(0.02)
    with open(path, "w") as f:
        f.write(bad)
    t0 = time.perf_counter_ns()
    while True:
        with open(path) as f:
            if selected(f.read()) == good:
                break
        if time.perf_counter_ns() - t0 > 5e9:
            lost += 1
            break
    lat.append((time.perf_counter_ns() - t0) / 1e6)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{label}: n={n} p50={statistics.median(lat):.3f} ms p90={q(0.9):.3f} ms p99={q(0.99):.3f} ms max={lat[-1]:.3f} ms lost={lost}")
print(f"BENCH_WRITERS latency label={label} n={n} p50_ms={statistics.median(lat):.3f} p90_ms={q(0.9):.3f} p99_ms={q(0.99):.3f} max_ms={lat[-1]:.3f} lost={lost}")
EOF
}

dd_time() {
    local best=""
    for _ in 1 2 3; do
        local t0 t1
        t0=$(date +%s%N)
        dd if=/dev/zero of=/dev/null bs=1 count="$DD_BYTES" status=none
        t1=$(date +%s%N)
        local ms=$(((t1 - t0) / 1000000))
        [[ -z $best || $ms -lt $best ]] && best=$ms
    done
    echo "$best"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(uname -r)"

start_agent observe 1h
latency "observe vm.overcommit_memory" /proc/sys/vm/overcommit_memory 0 1 "$WRITES"
latency "observe thp.enabled" $THP_DIR/enabled always never "$WRITES"
DD_ON=$(dd_time)
stop_agent

start_agent off 1s
latency "off vm.overcommit_memory" /proc/sys/vm/overcommit_memory 0 1 "$POLL_WRITES"
DD_OFF=$(dd_time)
stop_agent
echo "dd bs=1 count=$DD_BYTES (best of 3): ${DD_OFF} ms without the watch, ${DD_ON} ms with it"
echo "BENCH_WRITERS dd bytes=$DD_BYTES off_ms=$DD_OFF on_ms=$DD_ON"

HZ=$(getconf CLK_TCK)
for mode in observe off; do
    start_agent "$mode" 1s
    sleep 2
    c0=$(cpu_ticks "$AGENT")
    sleep "$IDLE"
    c1=$(cpu_ticks "$AGENT")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT/status")
    stop_agent
    pct=$(python3 -c "print(f'{($c1 - $c0) / $HZ / $IDLE * 100:.4f}')")
    echo "idle agent, writers $mode, interval 1s: ${pct} % of a core over ${IDLE} s, RSS ${rss} kB"
    echo "BENCH_WRITERS idle mode=$mode cpu_pct=$pct idle_s=$IDLE rss_kb=$rss"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
