#!/usr/bin/env bash
# Drift-correction latency of `redis-node-tuner run` on a FAKE /proc + /sys tree.
#
# The daemon runs at its default 1 s interval. DRIFTS times (default 100), the script writes a
# wrong value into one knob file (in place: O_TRUNC + one write, the agent keeps descriptors
# open), then polls that file every ~1 ms until the agent has put a desired value back, and
# records the time from the end of the injecting write to the first poll that sees the desired
# value. The knobs are taken in turn: vm.overcommit_memory, net.core.somaxconn, thp.enabled,
# thp.defrag, thp.hugepages-64kB.enabled, thp.hugepages-2048kB.enabled.
#
# Injection phase: after a correction is seen (which is just after one of the agent's ticks),
# the script waits an offset before the next injection. The offsets are stratified over one
# interval ((k + U[0,1)) / DRIFTS * interval for k = 0..DRIFTS-1) and shuffled, so injections
# cover the whole tick period evenly (expected latency: uniform on [0, interval]).
#
#   scripts/bench-drift.sh
#   DRIFTS=300 SEED=7 scripts/bench-drift.sh
#
# Environment:
#   DRIFTS        number of injected drifts (default 100, at most 10000)
#   INTERVAL      the daemon's --interval (default 1s; must be given in s or ms)
#   SEED          RNG seed for the offsets (default 1)
#   TIMEOUT       seconds to wait for one correction before counting it lost (default 5)
#   SAMPLES_CSV   write every sample (i,knob,offset_ms,latency_ms) to this file
#   BIN, SKIP_BUILD, KEEP_TMP, LOG_LEVEL as in bench-lib.sh
#
# Output: human-readable lines and one parseable line starting with "BENCH_DRIFT ".
# Never touches the real /proc/sys or /sys; talks to 127.0.0.1 only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

DRIFTS=${DRIFTS:-100}
SEED=${SEED:-1}
TIMEOUT=${TIMEOUT:-5}
[[ $DRIFTS =~ ^[0-9]+$ && $DRIFTS -ge 1 && $DRIFTS -le 10000 ]] || die "DRIFTS must be 1..10000"
[[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -ge 1 && $TIMEOUT -le 600 ]] || die "TIMEOUT must be 1..600 seconds"
case $INTERVAL in
    *ms) INTERVAL_S=$(python3 -c "print(${INTERVAL%ms}/1000)") ;;
    *s) INTERVAL_S=${INTERVAL%s} ;;
    *) die "INTERVAL must end in s or ms" ;;
esac

ensure_binary
trap cleanup EXIT
trap 'exit 130' INT TERM
make_fake_tree
start_daemon
wait_ready 15

machine_line
echo "# binary: $BIN"
echo "# daemon pid $DAEMON_PID on 127.0.0.1:$LISTEN_PORT, interval $INTERVAL, $DRIFTS drifts, seed $SEED"

export FAKE_PROC FAKE_SYS LISTEN_PORT DAEMON_PID DRIFTS SEED TIMEOUT INTERVAL INTERVAL_S
export SAMPLES_CSV=${SAMPLES_CSV:-}
python3 - <<'EOF'
import math, os, random, re, sys, time, urllib.request

P, S = os.environ["FAKE_PROC"], os.environ["FAKE_SYS"]
port, pid = os.environ["LISTEN_PORT"], int(os.environ["DAEMON_PID"])
n, seed = int(os.environ["DRIFTS"]), int(os.environ["SEED"])
timeout, interval = float(os.environ["TIMEOUT"]), float(os.environ["INTERVAL_S"])
thp = f"{S}/kernel/mm/transparent_hugepage"

def selected(text):
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip()

def number(text):
    try:
        return int(text.strip())
    except ValueError:
        return None

# (knob, path, wrong content, "content is desired")
KNOBS = [
    ("vm.overcommit_memory", f"{P}/sys/vm/overcommit_memory", "0\n", lambda t: t.strip() == "1"),
    ("net.core.somaxconn", f"{P}/sys/net/core/somaxconn", "128\n", lambda t: (number(t) or 0) >= 2048),
    ("thp.enabled", f"{thp}/enabled", "[always] madvise never\n", lambda t: selected(t) == "never"),
    ("thp.defrag", f"{thp}/defrag", "[always] defer defer+madvise madvise never\n", lambda t: selected(t) == "never"),
    ("thp.hugepages-64kB.enabled", f"{thp}/hugepages-64kB/enabled", "[always] inherit madvise never\n",
     lambda t: selected(t) in ("never", "inherit")),
    ("thp.hugepages-2048kB.enabled", f"{thp}/hugepages-2048kB/enabled", "[always] inherit madvise never\n",
     lambda t: selected(t) in ("never", "inherit")),
]
fds = {k[0]: os.open(k[1], os.O_RDONLY) for k in KNOBS}

def content(name):
    return os.pread(fds[name], 512, 0).decode(errors="replace")

def metrics():
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    out = {"corrections": 0.0, "drift": 0.0}
    for line in text.splitlines():
        if line.startswith("redis_node_tuner_corrections_total{") and 'result="success"' in line:
            out["corrections"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("redis_node_tuner_drift_detected_total{"):
            out["drift"] += float(line.rsplit(" ", 1)[1])
    return out

def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False

def wait_desired(name, ok, limit):
    """Polls every ~1 ms; returns the monotonic time the desired content was first seen."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if ok(content(name)):
            return time.monotonic()
        time.sleep(0.001)
    return None

rng = random.Random(seed)
offsets = [(k + rng.random()) / n * interval for k in range(n)]
rng.shuffle(offsets)

before = metrics()
samples, lost = [], []
deadline = time.monotonic() + n * (2 * interval + timeout) + 30
for i in range(n):
    if time.monotonic() > deadline or not alive():
        print(f"stopping early at drift {i}: {'deadline' if alive() else 'daemon exited'}", file=sys.stderr)
        break
    name, path, wrong, ok = KNOBS[i % len(KNOBS)]
    if wait_desired(name, ok, timeout) is None:
        print(f"{name} not in the desired state before drift {i}; skipped", file=sys.stderr)
        lost.append(name)
        continue
    time.sleep(offsets[i])
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, wrong.encode())
    os.close(fd)
    t_inject = time.monotonic()
    t_fixed = wait_desired(name, ok, timeout)
    if t_fixed is None:
        lost.append(name)
        print(f"drift {i} ({name}) not corrected within {timeout:.0f}s", file=sys.stderr)
        continue
    samples.append((i, name, offsets[i], t_fixed - t_inject))
after = metrics()

if os.environ.get("SAMPLES_CSV"):
    with open(os.environ["SAMPLES_CSV"], "w") as f:
        f.write("i,knob,offset_ms,latency_ms\n")
        for i, name, off, lat in samples:
            f.write(f"{i},{name},{off * 1000:.3f},{lat * 1000:.3f}\n")

if not samples:
    print("BENCH_DRIFT samples=0 lost=%d ok=no" % len(lost))
    sys.exit(1)

lat = sorted(s[3] for s in samples)
def pct(p):  # nearest rank
    return lat[max(0, math.ceil(p / 100 * len(lat)) - 1)]
ms = lambda x: f"{x * 1000:.1f}"
target = interval + 0.050
p50, p90, p99, mx = pct(50), pct(90), pct(99), lat[-1]
ok = p50 <= target and p99 <= target and not lost

print(f"{len(samples)} corrections measured, {len(lost)} lost; latency from injection to the desired value seen:")
print(f"  min {ms(lat[0])} ms  mean {ms(sum(lat) / len(lat))} ms  p50 {ms(p50)} ms  p90 {ms(p90)} ms  "
      f"p99 {ms(p99)} ms  max {ms(mx)} ms   target p50,p99 <= {ms(target)} ms: {'yes' if ok else 'no'}")
for name, *_ in KNOBS:
    ks = sorted(s[3] for s in samples if s[1] == name)
    if ks:
        print(f"  {name:30} n={len(ks):3}  p50 {ms(ks[(len(ks) - 1) // 2])} ms  max {ms(ks[-1])} ms")
# (offset + latency) mod interval: where in the tick period the fix landed, measured from the
# previous fix; near 0 (plus the ~1 ms poll) means the agent corrected on the very next tick.
# The first drift is not anchored to a previous fix, so it is left out.
res = [((s[2] + s[3]) % interval) for s in samples if s[0] > 0] or [0.0]
res = sorted(r - interval if r > interval / 2 else r for r in res)
print(f"  next-tick check: (offset + latency) mod interval p50 {ms(res[(len(res) - 1) // 2])} ms, "
      f"range {ms(res[0])} .. {ms(res[-1])} ms (near 0: fixed on the first tick after injection)")
print(f"  daemon counted {after['corrections'] - before['corrections']:.0f} successful corrections and "
      f"{after['drift'] - before['drift']:.0f} drifts during the run")
print(f"BENCH_DRIFT interval_s={interval} drifts={n} samples={len(samples)} lost={len(lost)} "
      f"min_ms={ms(lat[0])} p50_ms={ms(p50)} p90_ms={ms(p90)} p99_ms={ms(p99)} max_ms={ms(mx)} "
      f"target_ms={ms(target)} corrections_counted={after['corrections'] - before['corrections']:.0f} "
      f"ok={'yes' if ok else 'no'}")
EOF
