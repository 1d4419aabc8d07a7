#!/usr/bin/env bash
# The writer watch (inotify, fanotify, the cgroup/sysctl BPF program) on this machine's REAL
# kernel. Root; every knob the agent or the script changes is restored on exit, and the
# host-knob lock shared with the tests is held throughout (so this never runs beside a test
# that changes knobs). Traffic goes to 127.0.0.1 only. Steps (STEPS, comma-separated):
#   redis    redis-benchmark -t set,get -P 1 -c 50 -n 150000 against a redis-server of its own
#            (127.0.0.1, a free port, --save "" --appendonly no), with the agent running
#            `run --no-kubernetes --writers off` and `--writers observe` (root, every
#            capability: the full watch) alternated off/observe for REDIS_ROUNDS rounds after one
#            discarded warm-up run; requests/s per round, the mean of each mode, the difference;
#            and the CPU time redis-server ran per request (/proc/<pid>/task/*/schedstat, so
#            less at the mercy of other work on the machine than requests/s);
#   dd       `dd if=/dev/zero of=/dev/null bs=1` (a pure syscall loop, 2 syscalls per byte),
#            wall time with the agent at --writers off and at --writers observe (full
#            capabilities) alternated for DD_ROUNDS rounds: each round's time, the ratio of
#            the means;
#   latency  foreign write -> corrected: a process writes the wrong value, then polls the file
#            until the agent has put the profile's value back, WRITES times, for
#            vm.overcommit_memory and THP enabled, in three cases:
#              base     the agent without any capability (setpriv --bounding-set
#                       -bpf,-perfmon,-net_admin,-sys_admin --inh-caps -all): inotify only,
#                       --interval 1h, so only the watch can correct within seconds;
#              full     every capability (inotify + fanotify names THP writers, the sysctl
#                       program names sysctl writers), --interval 1h;
#              poll     --writers off at --interval 1s (POLL_WRITES samples, overcommit only):
#                       what the poll alone gives, for comparison;
#            and, from the agent's log, which watcher saw each drift (`seen_by`);
#   idle     the agent's own CPU (utime+stime from /proc/<pid>/stat) over IDLE seconds at the
#            default 1 s interval and its RSS: writers off, observe without capabilities,
#            observe with all of them.
# Before every step and every round the load average is printed ("load" lines): the machine
# may be shared.
#
#   scripts/bench-writers.sh
#   STEPS=redis,dd REDIS_ROUNDS=5 scripts/bench-writers.sh
#
# Environment: STEPS (default redis,dd,latency,idle), REDIS_ROUNDS (default 10), REDIS_N
# (default 150000), REDIS_CLIENTS (default 50), DD_ROUNDS (default 3), DD_BYTES (default
# 2000000), WRITES (latency samples per knob and case, default 200), POLL_WRITES (default 10),
# IDLE (seconds, default 60), LOG_DIR (an existing directory: the agents' logs and every latency
# sample, `<write time, ns since the epoch> <ms>`, are kept there), BIN, SKIP_BUILD as in
# bench-lib.sh. Output: readable lines, and
# "BENCH_WRITERS " lines to parse.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
{ # the whole script is parsed before it runs: an edit of this file during a run cannot
  # make bash go on with other commands

STEPS=${STEPS:-redis,dd,latency,idle}
REDIS_ROUNDS=${REDIS_ROUNDS:-10}
REDIS_N=${REDIS_N:-150000}
REDIS_CLIENTS=${REDIS_CLIENTS:-50}
DD_ROUNDS=${DD_ROUNDS:-3}
DD_BYTES=${DD_BYTES:-2000000}
WRITES=${WRITES:-200}
POLL_WRITES=${POLL_WRITES:-10}
IDLE=${IDLE:-60}
[[ $(id -u) == 0 ]] || die "needs root: it writes this machine's kernel settings"
step() { [[ ,$STEPS, == *,$1,* ]]; }
if step redis; then
    command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null &&
        command -v redis-cli >/dev/null || die "the redis step needs redis-server, redis-benchmark, redis-cli"
fi
command -v setpriv >/dev/null || die "needs setpriv (util-linux)"
ensure_binary

# --- the host's knobs: the same lock and left-behind file as tests/common/host.rs ----------
LOCK=/tmp/redis-node-tuner-host-knobs.lock
SAVED=/tmp/redis-node-tuner-host-knobs.saved
THP_DIR=/sys/kernel/mm/transparent_hugepage
exec 9>"$LOCK"
echo "waiting for the host-knob lock $LOCK"
flock 9
sel() { sed 's/.*\[\(.*\)\].*/\1/' "$1"; }
BOOT=$(cat /proc/sys/kernel/random/boot_id)
# A test or run killed while holding the lock left its saved values: put them back first.
if [[ -f $SAVED ]]; then
    if [[ $(head -1 "$SAVED") == "boot $BOOT" ]]; then
        echo "$SAVED: a killed run left the host knobs changed; restoring them"
        tail -n +2 "$SAVED" | while IFS=$'\t' read -r p v; do echo "$v" >"$p"; done
    fi
    rm -f "$SAVED"
fi
KNOBS=(/proc/sys/vm/overcommit_memory /proc/sys/net/core/somaxconn "$THP_DIR/enabled" "$THP_DIR/defrag")
for f in "$THP_DIR"/hugepages-*/enabled; do [[ -f $f ]] && KNOBS+=("$f"); done
declare -A ORIG
{
    echo "boot $BOOT"
    for p in "${KNOBS[@]}"; do
        ORIG[$p]=$(sel "$p")
        printf '%s\t%s\n' "$p" "${ORIG[$p]}"
    done
} >"$SAVED.tmp"
mv "$SAVED.tmp" "$SAVED"

WORK=$(mktemp -d /tmp/rnt-bench-writers.XXXXXX)
AGENT=""
REDIS=""
stop_pid() { # pid: TERM, then KILL after 5 s; only the pid we started
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
restore() {
    set +e
    [[ -n $AGENT ]] && stop_pid "$AGENT"
    [[ -n $REDIS ]] && stop_pid "$REDIS"
    local ok=1 p
    for p in "${KNOBS[@]}"; do
        echo "${ORIG[$p]}" >"$p" || { echo "could not restore $p to ${ORIG[$p]}" >&2; ok=0; }
    done
    [[ $ok == 1 ]] && rm -f "$SAVED"
    rm -rf "$WORK"
}
trap restore EXIT
trap 'exit 130' INT TERM HUP

load() { # what is about to run
    echo "load before $1: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "BENCH_WRITERS load what=${1// //} load1=$(cut -d' ' -f1 /proc/loadavg) load5=$(cut -d' ' -f2 /proc/loadavg)"
}

# start_agent mode interval caps(full|none): the agent on the real kernel, waits until the
# first pass has made the node ready and the watch has reported; prints which watchers run.
N_AGENT=0
start_agent() {
    local mode=$1 interval=$2 caps=$3 state log
    N_AGENT=$((N_AGENT + 1))
    state=$WORK/state-$N_AGENT
    AGENT_LOG=$WORK/agent-$N_AGENT-$mode-$caps.log
    mkdir -p "$state"
    local prefix=()
    [[ $caps == none ]] && prefix=(setpriv --bounding-set -bpf,-perfmon,-net_admin,-sys_admin --inh-caps -all)
    "${prefix[@]}" "$BIN" --state-dir "$state" run --no-kubernetes --listen "" --writers "$mode" \
        --interval "$interval" 2>"$AGENT_LOG" &
    AGENT=$!
    for _ in $(seq 300); do
        kill -0 "$AGENT" 2>/dev/null || die "agent exited: $(cat "$AGENT_LOG")"
        if grep -q "writer watch" "$AGENT_LOG" && grep -q "node ready" "$AGENT_LOG"; then
            sleep 1 # let start-up (BPF load, first pass) settle
            local watch
            watch=$(grep "writer watch" "$AGENT_LOG" | tr -d '"' |
                sed -n 's/.*writer watch \([a-z]*\).*source=\([a-z]*\).*/\2 \1/p; s/.*writer watch off.*/off/p' |
                paste -sd, -)
            echo "agent pid $AGENT: writers $mode, interval $interval, capabilities $caps; watchers: $watch"
            return
        fi
        sleep 0.1
    done
    die "agent did not start: $(cat "$AGENT_LOG")"
}
stop_agent() {
    stop_pid "$AGENT"
    AGENT=""
    [[ -n ${LOG_DIR:-} ]] && cp "$AGENT_LOG" "$LOG_DIR/"
    return 0
}

seen_by() { # which watcher found the drifts in the current agent's log
    local s
    s=$(grep "drift detected" "$AGENT_LOG" | grep -o 'seen_by=[a-z"]*' | tr -d '"' | sort | uniq -c |
        awk '{printf "%s%s:%s", (NR > 1 ? "," : ""), substr($2, 9), $1}' || true)
    echo "  drift detected lines by seen_by: ${s:-none}; drift corrected lines: $(grep -c "drift corrected" "$AGENT_LOG" || true)"
}

echo "$(machine_line | sed 's/^# //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "binary: $BIN ($(stat -c %y "$BIN" | cut -d. -f1))"
echo "knobs before: $(for p in "${KNOBS[@]:0:3}"; do printf '%s=%s ' "${p##*/}" "${ORIG[$p]}"; done)"

# --- 1. redis-benchmark ------------------------------------------------------------------------
if step redis; then
    RPORT=$(free_port)
    redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
        --dir "$WORK" --logfile "$WORK/redis.log" &
    REDIS=$!
    for _ in $(seq 100); do
        redis-cli -h 127.0.0.1 -p "$RPORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$RPORT" ping | grep -q PONG || die "redis-server did not start: $(cat "$WORK/redis.log")"
    echo "redis-server pid $REDIS on 127.0.0.1:$RPORT ($(redis-server --version | cut -d' ' -f3))"
    # CPU time (ns) a process has run, all its threads (schedstat: not tick-sampled)
    run_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
    bench() { # label round mode: one redis-benchmark run; SET and GET requests/s, and the CPU
        # time redis-server and the agent spent per request (2 x REDIS_N requests)
        local csv set get r0 r1 a0 a1 us ag
        r0=$(run_ns "$REDIS") a0=$(run_ns "$AGENT")
        csv=$(redis-benchmark -h 127.0.0.1 -p "$RPORT" -t set,get -P 1 -c "$REDIS_CLIENTS" \
            -n "$REDIS_N" --csv 2>/dev/null)
        r1=$(run_ns "$REDIS") a1=$(run_ns "$AGENT")
        set=$(awk -F'","' '/^"SET"/ {print $2}' <<<"$csv")
        get=$(awk -F'","' '/^"GET"/ {print $2}' <<<"$csv")
        us=$(python3 -c "print(f'{($r1 - $r0) / 1000 / (2 * $REDIS_N):.3f}')")
        ag=$(python3 -c "print(f'{($a1 - $a0) / 1e6:.1f}')")
        echo "redis $1 round $2 writers $3: SET $set req/s, GET $get req/s; redis-server CPU $us µs/request; agent CPU $ag ms"
        echo "BENCH_WRITERS redis what=$1 round=$2 mode=$3 set_rps=$set get_rps=$get server_us_per_req=$us agent_ms=$ag" | tee -a "$WORK/redis.txt" >/dev/null
    }
    load "redis warm-up"
    start_agent off 1s full
    bench warm-up 0 off
    stop_agent
    for r in $(seq "$REDIS_ROUNDS"); do
        for mode in off observe; do
            start_agent "$mode" 1s full
            load "redis round $r $mode"
            bench run "$r" "$mode"
            stop_agent
        done
    done
    stop_pid "$REDIS"
    REDIS=""
    python3 - "$WORK/redis.txt" <<'EOF'
import statistics, sys
sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
rows = []
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split()[2:])
    if f["what"] == "run":
        rows.append(f)
for op in ("set", "get"):
    m = {mode: [float(r[op + "_rps"]) for r in rows if r["mode"] == mode] for mode in ("off", "observe")}
    off, on = statistics.mean(m["off"]), statistics.mean(m["observe"])
    pairs = [(b / a - 1) * 100 for a, b in zip(m["off"], m["observe"])]
    print(f"redis {op.upper()}: mean off {off:,.0f} req/s, observe {on:,.0f} req/s, difference {(on / off - 1) * 100:+.2f} % "
          f"(per round: {', '.join(f'{p:+.1f}' for p in pairs)} %; stdev off {sd(m['off']):,.0f}, observe {sd(m['observe']):,.0f})")
    print(f"BENCH_WRITERS redis_summary op={op} off_rps={off:.0f} observe_rps={on:.0f} diff_pct={(on / off - 1) * 100:.2f}")
m = {mode: [float(r["server_us_per_req"]) for r in rows if r["mode"] == mode] for mode in ("off", "observe")}
off, on = statistics.mean(m["off"]), statistics.mean(m["observe"])
print(f"redis-server CPU per request: mean off {off:.3f} µs, observe {on:.3f} µs, difference {(on / off - 1) * 100:+.2f} % "
      f"(stdev off {sd(m['off']):.3f}, observe {sd(m['observe']):.3f})")
print(f"BENCH_WRITERS redis_cpu off_us={off:.3f} observe_us={on:.3f} diff_pct={(on / off - 1) * 100:.2f}")
EOF
fi

# --- 2. dd bs=1 --------------------------------------------------------------------------------
if step dd; then
    dd_ms() {
        local t0 t1
        t0=$(date +%s%N)
        dd if=/dev/zero of=/dev/null bs=1 count="$DD_BYTES" status=none
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000))
    }
    DD_OFF=() DD_ON=()
    for r in $(seq "$DD_ROUNDS"); do
        for mode in off observe; do
            start_agent "$mode" 1s full
            load "dd round $r $mode"
            ms=$(dd_ms)
            stop_agent
            echo "dd bs=1 count=$DD_BYTES round $r writers $mode: $ms ms"
            echo "BENCH_WRITERS dd round=$r mode=$mode bytes=$DD_BYTES ms=$ms"
            if [[ $mode == off ]]; then DD_OFF+=("$ms"); else DD_ON+=("$ms"); fi
        done
    done
    python3 - "${DD_OFF[*]}" "${DD_ON[*]}" <<'EOF'
import statistics, sys
off = [int(x) for x in sys.argv[1].split()]
on = [int(x) for x in sys.argv[2].split()]
r = statistics.mean(on) / statistics.mean(off)
print(f"dd: mean off {statistics.mean(off):.0f} ms, observe {statistics.mean(on):.0f} ms, ratio {r:.3f}x "
      f"(per round: {', '.join(f'{b / a:.3f}' for a, b in zip(off, on))})")
print(f"BENCH_WRITERS dd_summary off_ms={statistics.mean(off):.0f} on_ms={statistics.mean(on):.0f} ratio={r:.3f}")
EOF
fi

# --- 3. foreign write -> corrected -------------------------------------------------------------
latency() { # label path bad good n
    python3 - "$@" <<'EOF'
import os, statistics, sys, time
label, path, bad, good, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def selected(t):
    t = t.strip()
    return t[t.index("[") + 1:t.index("]")] if "[" in t else t
raw = open(f"{os.environ['LOG_DIR']}/{label.replace('/', '-')}.samples", "w") if os.environ.get("LOG_DIR") else None
lat, lost = [], 0
for _ in range(n):
    time.sleep(0.02)
    wall = time.time_ns()
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
    if raw:
        raw.write(f"{wall} {lat[-1]:.3f}\n")
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{label}: n={n} p50={statistics.median(lat):.3f} ms p90={q(0.9):.3f} ms p99={q(0.99):.3f} ms max={lat[-1]:.3f} ms lost={lost}")
print(f"BENCH_WRITERS latency label={label} n={n} p50_ms={statistics.median(lat):.3f} p90_ms={q(0.9):.3f} p99_ms={q(0.99):.3f} max_ms={lat[-1]:.3f} lost={lost}")
EOF
}
if step latency; then
    for c in base:none full:full; do
        case=${c%%:*} caps=${c#*:}
        start_agent observe 1h "$caps"
        load "latency $case vm.overcommit_memory"
        latency "$case/vm.overcommit_memory" /proc/sys/vm/overcommit_memory 0 1 "$WRITES"
        load "latency $case thp.enabled"
        latency "$case/thp.enabled" "$THP_DIR/enabled" always never "$WRITES"
        seen_by
        stop_agent
    done
    start_agent off 1s full
    load "latency poll vm.overcommit_memory"
    latency "poll/vm.overcommit_memory" /proc/sys/vm/overcommit_memory 0 1 "$POLL_WRITES"
    stop_agent
fi

# --- 4. the idle agent -------------------------------------------------------------------------
if step idle; then
    HZ=$(getconf CLK_TCK)
    cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
    for c in off:full observe:none observe:full; do
        mode=${c%%:*} caps=${c#*:}
        start_agent "$mode" 1s "$caps"
        load "idle $mode/$caps"
        sleep 2
        c0=$(cpu_ticks "$AGENT")
        sleep "$IDLE"
        c1=$(cpu_ticks "$AGENT")
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT/status")
        stop_agent
        pct=$(python3 -c "print(f'{($c1 - $c0) / $HZ / $IDLE * 100:.4f}')")
        echo "idle agent, writers $mode, capabilities $caps, interval 1s: ${pct} % of a core over ${IDLE} s, RSS ${rss} kB"
        echo "BENCH_WRITERS idle mode=$mode caps=$caps cpu_pct=$pct idle_s=$IDLE rss_kb=$rss"
    done
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit
}
