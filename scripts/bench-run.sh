#!/usr/bin/env bash
# Steady-state footprint of `redis-node-tuner run` on a FAKE /proc + /sys tree (nothing drifts
# after the first pass): resident memory and CPU share of one core.
#
#   scripts/bench-run.sh                 # 10 s warm-up, 60 s measurement, 1 s interval
#   DURATION=300 scripts/bench-run.sh
#
# Environment:
#   DURATION      measured seconds (default 60)
#   WARMUP        seconds between "ready" and the start of the measurement (default 10)
#   INTERVAL      the daemon's --interval (default 1s, the profile default)
#   SCRAPE_EVERY  scrape /metrics every N seconds during the measurement (default 0: never)
#   BIN           binary (default target/release/redis-node-tuner; built if missing)
#   SKIP_BUILD=1  never run cargo; KEEP_TMP=1 keep the fake tree; LOG_LEVEL (default warn)
#
# Measured:
#   CPU  = delta(utime + stime) of /proc/PID/stat (all threads, clock ticks) / wall time;
#          also, at ns resolution, delta of the sum of /proc/PID/task/*/schedstat run time.
#   RSS  = VmRSS at the end, the largest VmRSS sampled (once a second), and VmHWM (peak
#          RSS since start, including start-up and the first correcting pass).
#
# Output: human-readable lines and one parseable line starting with "BENCH_RUN ".
# Never touches the real /proc/sys or /sys; listens on 127.0.0.1 only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

DURATION=${DURATION:-60}
WARMUP=${WARMUP:-10}
SCRAPE_EVERY=${SCRAPE_EVERY:-0}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 86400 ]] || die "DURATION must be 1..86400 seconds"
[[ $WARMUP =~ ^[0-9]+$ && $WARMUP -le 3600 ]] || die "WARMUP must be 0..3600 seconds"
[[ $SCRAPE_EVERY =~ ^[0-9]+$ ]] || die "SCRAPE_EVERY must be a number of seconds"

ensure_binary
trap cleanup EXIT
trap 'exit 130' INT TERM
make_fake_tree
start_daemon
wait_ready 15

CLK_TCK=$(getconf CLK_TCK)

# utime + stime (fields 14 and 15; the command name in field 2 may contain spaces).
cpu_ticks() {
    local stat rest
    stat=$(</proc/"$DAEMON_PID"/stat)
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    # after "pid (comm) ": $1 = state (field 3) ... utime = field 14 = $12, stime = $13
    echo $(( ${12} + ${13} ))
}

# Sum of on-CPU nanoseconds of the live threads.
sched_ns() {
    local total=0 f v
    for f in /proc/"$DAEMON_PID"/task/*/schedstat; do
        read -r v _ <"$f" 2>/dev/null || continue
        total=$((total + v))
    done
    echo "$total"
}

status_kib() { # $1 = VmRSS | VmHWM | Threads
    local k v _u
    while read -r k v _u; do
        [[ $k == "$1:" ]] && { echo "$v"; return; }
    done </proc/"$DAEMON_PID"/status
    echo 0
}

machine_line
echo "# binary: $BIN"
echo "# daemon pid $DAEMON_PID on 127.0.0.1:$LISTEN_PORT, interval $INTERVAL, fake tree $BENCH_TMP"
echo "# ready; warm-up ${WARMUP}s, then measuring ${DURATION}s"
sleep "$WARMUP"

t0=$(date +%s%N)
c0=$(cpu_ticks)
s0=$(sched_ns)
rss_max=0
for ((i = 1; i <= DURATION; i++)); do
    sleep 1
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DAEMON_LOG" >&2; die "daemon exited during the measurement"; }
    if ((SCRAPE_EVERY > 0 && i % SCRAPE_EVERY == 0)); then metrics >/dev/null; fi
    r=$(status_kib VmRSS)
    ((r > rss_max)) && rss_max=$r
done
t1=$(date +%s%N)
c1=$(cpu_ticks)
s1=$(sched_ns)

rss=$(status_kib VmRSS)
hwm=$(status_kib VmHWM)
threads=$(status_kib Threads)
passes=$(metrics | awk '/^redis_node_tuner_(check|pass)_duration_seconds_count/ {print $2; exit}')
corrections=$(metrics | awk '/^redis_node_tuner_corrections_total\{.*result="success"/ {s += $2} END {print s + 0}')

read -r cpu_pct cpu_pct_ns wall rss_mib hwm_mib rss_max_mib <<<"$(python3 - "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" "$CLK_TCK" "$rss" "$hwm" "$rss_max" <<'EOF'
import sys
c0, c1, s0, s1, t0, t1, tck, rss, hwm, rmax = map(int, sys.argv[1:])
wall = (t1 - t0) / 1e9
print(f"{(c1 - c0) / tck / wall * 100:.4f} {(s1 - s0) / 1e9 / wall * 100:.4f} {wall:.2f} "
      f"{rss / 1024:.2f} {hwm / 1024:.2f} {rmax / 1024:.2f}")
EOF
)"

ok() { python3 -c "import sys; print('yes' if float(sys.argv[1]) <= float(sys.argv[2]) else 'no')" "$1" "$2"; }
rss_ok=$(ok "$hwm_mib" 12)
cpu_ok=$(ok "$cpu_pct" 0.1)

echo "wall ${wall}s  cpu ticks $((c1 - c0)) (1 tick = 1/${CLK_TCK}s)  threads $threads  passes ${passes:-?}  corrections ${corrections:-?}"
echo "CPU  ${cpu_pct}% of one core (utime+stime)   ${cpu_pct_ns}% (schedstat, ns)   target <= 0.1%: $cpu_ok"
echo "RSS  VmRSS ${rss_mib} MiB   max sampled ${rss_max_mib} MiB   VmHWM ${hwm_mib} MiB   target <= 12 MiB: $rss_ok"
echo "BENCH_RUN interval=$INTERVAL duration_s=$wall cpu_ticks=$((c1 - c0)) clk_tck=$CLK_TCK cpu_pct=$cpu_pct cpu_pct_schedstat=$cpu_pct_ns vmrss_kib=$rss vmrss_max_kib=$rss_max vmhwm_kib=$hwm threads=$threads passes=${passes:-NA} cpu_ok=$cpu_ok rss_ok=$rss_ok"
