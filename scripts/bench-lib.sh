# Shared helpers for scripts/bench-run.sh and scripts/bench-drift.sh (sourced, not run).
#
# Everything here works on a FAKE /proc + /sys tree of plain files in a temp dir. Nothing
# touches the real /proc/sys or /sys, and the daemon only listens on 127.0.0.1.

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT_DIR/target/release/redis-node-tuner}
INTERVAL=${INTERVAL:-1s}
DAEMON_PID=""
BENCH_TMP=""

die() { echo "error: $*" >&2; exit 1; }

# Builds the release binary unless BIN exists (SKIP_BUILD=1: never build).
ensure_binary() {
    if [[ ! -x $BIN ]]; then
        [[ ${SKIP_BUILD:-0} == 1 ]] && die "$BIN not found (SKIP_BUILD=1)"
        (cd "$ROOT_DIR" && cargo build --release) || die "cargo build --release failed"
    fi
    [[ -x $BIN ]] || die "$BIN not found"
}

# Creates $BENCH_TMP/{proc,sys,state} with the default profile's knob files, all drifted
# (the daemon corrects them on its first pass).
make_fake_tree() {
    BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/rnt-bench.XXXXXX")
    FAKE_PROC=$BENCH_TMP/proc
    FAKE_SYS=$BENCH_TMP/sys
    STATE_DIR=$BENCH_TMP/state
    THP=$FAKE_SYS/kernel/mm/transparent_hugepage
    mkdir -p "$FAKE_PROC/sys/vm" "$FAKE_PROC/sys/net/core" "$FAKE_PROC/1/ns" \
        "$THP/hugepages-64kB" "$THP/hugepages-2048kB" "$STATE_DIR"
    printf '0\n' >"$FAKE_PROC/sys/vm/overcommit_memory"
    printf '128\n' >"$FAKE_PROC/sys/net/core/somaxconn"
    # PID 1 "shares" our network namespace, so net.core.somaxconn is enforced.
    ln -s /proc/self/ns/net "$FAKE_PROC/1/ns/net"
    printf 'always [madvise] never\n' >"$THP/enabled"
    printf 'always defer defer+madvise [madvise] never\n' >"$THP/defrag"
    printf 'always [inherit] madvise never\n' >"$THP/hugepages-64kB/enabled"
    printf 'always [inherit] madvise never\n' >"$THP/hugepages-2048kB/enabled"
}

# A free TCP port on 127.0.0.1 (PORT env overrides).
free_port() {
    if [[ -n ${PORT:-} ]]; then echo "$PORT"; return; fi
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts the daemon on the fake tree; sets DAEMON_PID, LISTEN_PORT, DAEMON_LOG.
start_daemon() {
    LISTEN_PORT=$(free_port)
    DAEMON_LOG=$BENCH_TMP/daemon.log
    "$BIN" run --proc-root "$FAKE_PROC" --sys-root "$FAKE_SYS" --state-dir "$STATE_DIR" \
        --listen "127.0.0.1:$LISTEN_PORT" --interval "$INTERVAL" --log-level "${LOG_LEVEL:-warn}" \
        2>"$DAEMON_LOG" &
    DAEMON_PID=$!
}

# Waits (at most $1 seconds, default 15) until /readyz answers 200: every knob in sync.
wait_ready() {
    local limit=${1:-15} i
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DAEMON_LOG" >&2; die "daemon exited"; }
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$LISTEN_PORT/readyz" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    cat "$DAEMON_LOG" >&2
    die "daemon not ready after ${limit}s"
}

metrics() {
    curl -fsS --max-time 2 "http://127.0.0.1:$LISTEN_PORT/metrics"
}

# Stops the daemon we started (by its PID only) and removes the fake tree.
cleanup() {
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$DAEMON_PID" 2>/dev/null && kill -KILL "$DAEMON_PID" 2>/dev/null
        wait "$DAEMON_PID" 2>/dev/null
    fi
    DAEMON_PID=""
    if [[ -n $BENCH_TMP && -d $BENCH_TMP && ${KEEP_TMP:-0} != 1 ]]; then
        rm -rf -- "$BENCH_TMP"
    fi
}

machine_line() {
    echo "# machine: nproc=$(nproc) kernel=$(uname -r) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')\""
}
