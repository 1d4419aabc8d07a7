#!/usr/bin/env bash
# Two builds of redis-node-tuner side by side, in the same run (e.g. the release profile before
# and after a change of [profile.release]): start-up, enforce pass cost, CPU and RSS, on a FAKE
# /proc + /sys tree (nothing on the host is read or written; listens on 127.0.0.1 only).
#
#   scripts/bench-binaries.sh OLD_BINARY NEW_BINARY
#
# Environment: ROUNDS (default 5), STARTS (one-shot `check` runs per round and binary, default
# 20), DURATION (seconds of `run --interval 100ms` measured per round and binary, default 10).
# The binaries alternate within every round (ABBA...), so background load hits both alike;
# medians over the rounds are reported.
#
# Measured, per binary:
#   start-up   wall time and CPU time (user + system, from wait4) of `check -o json` on a tuned
#              tree (exec, profile, one pass, output),
#   pass       mean of redis_node_tuner_check_duration_seconds (sum/count over DURATION): the
#              enforce pass as the daemon times it,
#   cpu/pass   on-CPU time of all the daemon's threads (/proc/PID/task/*/schedstat) per pass,
#   RSS        VmHWM (peak since start) and VmRSS at the end of the round.
# Output: a table, and one parseable line per binary starting with "BENCH_BIN ".
set -euo pipefail
[[ $# -eq 2 ]] || { sed -n '2,20p' "$0" >&2; exit 2; }
for b in "$1" "$2"; do [[ -x $b ]] || { echo "error: $b is not an executable" >&2; exit 2; }; done

exec python3 - "$1" "$2" <<'EOF'
import os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

old, new = sys.argv[1], sys.argv[2]
ROUNDS = int(os.environ.get("ROUNDS", "5"))
STARTS = int(os.environ.get("STARTS", "20"))
DURATION = float(os.environ.get("DURATION", "10"))

def tree(tuned):
    d = tempfile.mkdtemp(prefix="rnt-binbench.")
    p, s = f"{d}/proc", f"{d}/sys"
    thp = f"{s}/kernel/mm/transparent_hugepage"
    for x in (f"{p}/sys/vm", f"{p}/sys/net/core", f"{p}/1/ns", f"{thp}/hugepages-64kB",
              f"{thp}/hugepages-2048kB", f"{d}/state"):
        os.makedirs(x)
    os.symlink("/proc/self/ns/net", f"{p}/1/ns/net")
    files = {
        f"{p}/sys/vm/overcommit_memory": ("1", "0"),
        f"{p}/sys/net/core/somaxconn": ("4096", "128"),
        f"{thp}/enabled": ("always madvise [never]", "always [madvise] never"),
        f"{thp}/defrag": ("always defer defer+madvise madvise [never]",
                          "always defer defer+madvise [madvise] never"),
        f"{thp}/hugepages-64kB/enabled": ("always inherit madvise [never]", "always [inherit] madvise never"),
        f"{thp}/hugepages-2048kB/enabled": ("always inherit madvise [never]", "always [inherit] madvise never"),
    }
    for f, (good, bad) in files.items():
        with open(f, "w") as fh:
            fh.write((good if tuned else bad) + "\n")
    return d

def roots(d):
    return ["--proc-root", f"{d}/proc", "--sys-root", f"{d}/sys", "--state-dir", f"{d}/state"]

def startup(binary, d):
    wall, cpu = [], []
    for _ in range(STARTS):
        t0 = time.perf_counter_ns()
        p = subprocess.Popen([binary, *roots(d), "check", "-o", "json"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        wall.append((time.perf_counter_ns() - t0) / 1e3)
        cpu.append((ru.ru_utime + ru.ru_stime) * 1e6)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            sys.exit(f"{binary} check exited {p.returncode}")
    return statistics.median(wall), statistics.median(cpu)

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    val = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))
    return (val("redis_node_tuner_check_duration_seconds_sum"),
            val("redis_node_tuner_check_duration_seconds_count"))

def sched_ns(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except OSError:
            pass
    return total

def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0

def daemon(binary):
    d = tree(tuned=False)
    port = free_port()
    log = open(f"{d}/daemon.log", "w")
    p = subprocess.Popen([binary, *roots(d), "run", "--listen", f"127.0.0.1:{port}",
                          "--interval", "100ms", "--log-level", "warn"], stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            if p.poll() is not None:
                sys.exit(f"{binary} run exited {p.returncode}: {open(f'{d}/daemon.log').read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"{binary} run: /readyz not 200 within 15 s")
            time.sleep(0.05)
        time.sleep(2)
        s0, c0 = metrics(port)
        n0 = sched_ns(p.pid)
        time.sleep(DURATION)
        s1, c1 = metrics(port)
        n1 = sched_ns(p.pid)
        passes = c1 - c0
        return {
            "pass_us": (s1 - s0) / passes * 1e6,
            "cpu_per_pass_us": (n1 - n0) / passes / 1e3,
            "hwm_kib": status_kib(p.pid, "VmHWM"),
            "rss_kib": status_kib(p.pid, "VmRSS"),
            "passes": passes,
        }
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)

res = {old: [], new: []}
tuned = tree(tuned=True)
try:
    for r in range(ROUNDS):
        order = (old, new) if r % 2 == 0 else (new, old)
        for b in order:
            row = daemon(b)
            row["startup_us"], row["startup_cpu_us"] = startup(b, tuned)
            res[b].append(row)
        print(f"# round {r + 1}/{ROUNDS} done", file=sys.stderr)
finally:
    shutil.rmtree(tuned, ignore_errors=True)

med = {b: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for b, rows in res.items()}
print(f"# machine: nproc={os.cpu_count()} kernel={os.uname().release} load={os.getloadavg()}")
print(f"# medians of {ROUNDS} rounds; start-up over {STARTS} runs per round; "
      f"daemon at --interval 100ms for {DURATION:g} s per round")
cols = [("size (bytes)", None), ("start-up check, wall (µs)", "startup_us"),
        ("start-up check, CPU (µs)", "startup_cpu_us"), ("pass (µs)", "pass_us"),
        ("CPU per pass (µs)", "cpu_per_pass_us"), ("VmHWM (KiB)", "hwm_kib"), ("VmRSS (KiB)", "rss_kib")]
print("| binary | " + " | ".join(c for c, _ in cols) + " |")
print("|---|" + "---|" * len(cols))
for label, b in (("old", old), ("new", new)):
    vals = [str(os.path.getsize(b))] + [f"{med[b][k]:.1f}" for _, k in cols[1:]]
    print(f"| {label} | " + " | ".join(vals) + " |")
ratio = [f"{os.path.getsize(new) / os.path.getsize(old):.3f}"] + \
        [f"{med[new][k] / med[old][k]:.3f}" for _, k in cols[1:]]
print("| new/old | " + " | ".join(ratio) + " |")
for label, b in (("old", old), ("new", new)):
    print(f"BENCH_BIN which={label} path={b} size={os.path.getsize(b)} " +
          " ".join(f"{k}={med[b][k]:.2f}" for _, k in cols[1:]))
EOF
