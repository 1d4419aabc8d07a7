#!/usr/bin/env python3
"""The fleet benchmark driven by scripts/bench-fleet.sh (read that file's header first).

Standard library only. Talks to the test apiserver on 127.0.0.1 with the admin token (setup and
observation) and reads the agents' requests from the apiserver's audit log, filtered to the
agents' ServiceAccount user, so the benchmark's own requests are never counted.
"""

import atexit
import collections
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

N = int(sys.argv[1])
BIN = os.environ["BIN"]
APISERVER = os.environ["APISERVER"]
HEARTBEAT = os.environ.get("HEARTBEAT", "30s")
WINDOW = int(os.environ.get("WINDOW", "300"))
OUTAGE = int(os.environ.get("OUTAGE", "60"))
KEEP = os.environ.get("KEEP") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "redis-node-tuner"
SA = "redis-node-tuner"
SA_USER = f"system:serviceaccount:{NS}:{SA}"
LABEL = "redis-node-tuner.io/ready"
TAINT = "redis-node-tuner.io/not-ready"
CONDITION = "RedisKernelTuned"

W = tempfile.mkdtemp(prefix="rnt-fleet.")
OUT = os.environ.get("OUT") or os.path.join(W, "out")
os.makedirs(OUT, exist_ok=True)
REPORT = open(os.path.join(OUT, f"fleet-N{N}.txt"), "w")
results = {"N": N, "heartbeat": HEARTBEAT, "window_s": WINDOW, "outage_s": OUTAGE}


def say(line=""):
    print(line, flush=True)
    REPORT.write(line + "\n")
    REPORT.flush()


def uptime():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


api_proc = None
agents = []


def cleanup(*_):
    for p in agents:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 20
    for p in agents:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if api_proc is not None and api_proc.poll() is None:
        api_proc.terminate()
        try:
            api_proc.wait(timeout=70)
        except subprocess.TimeoutExpired:
            api_proc.kill()
            api_proc.wait()
    if not KEEP:
        shutil.rmtree(os.path.join(W, "api"), ignore_errors=True)
        shutil.rmtree(os.path.join(W, "agents"), ignore_errors=True)
        if not OUT.startswith(W):
            shutil.rmtree(W, ignore_errors=True)
        else:
            try:
                os.remove(os.path.join(W, "audit.log"))
            except OSError:
                pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
atexit.register(cleanup)

# ---------------------------------------------------------------------------- apiserver

AUDIT = os.path.join(W, "audit.log")
with open(os.path.join(W, "audit-policy.yaml"), "w") as f:
    f.write(
        f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["{SA_USER}"]
  - level: None
"""
    )


def start_apiserver():
    global api_proc
    out = open(os.path.join(W, "api.out"), "a")
    err = open(os.path.join(W, "api.log"), "a")
    api_proc = subprocess.Popen(
        [
            APISERVER,
            "-dir",
            os.path.join(W, "api"),
            "--",
            f"--audit-log-path={AUDIT}",
            f"--audit-policy-file={os.path.join(W, 'audit-policy.yaml')}",
            "--audit-log-maxsize=4000",
            "--audit-log-mode=blocking",
        ],
        stdout=out,
        stderr=err,
    )
    ready = os.path.join(W, "api", "ready")
    for _ in range(1500):
        if os.path.exists(ready):
            with open(ready) as f:
                return f.read().strip()
        if api_proc.poll() is not None:
            break
        time.sleep(0.2)
    sys.exit(f"apiserver did not become ready; see {W}/api.log")


URL = start_apiserver()
T_READY0 = time.time()
with open(os.path.join(W, "api", "admin.token")) as f:
    ADMIN = f.read().strip()
CA = os.path.join(W, "api", "ca.crt")
CTX = ssl.create_default_context(cafile=CA)


def req(method, path, body=None, ctype="application/json", timeout=30):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(URL + path, data=data, method=method)
    r.add_header("Authorization", "Bearer " + ADMIN)
    if data is not None:
        r.add_header("Content-Type", ctype)
    with urllib.request.urlopen(r, context=CTX, timeout=timeout) as resp:
        raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()


def kubectl(*args):
    subprocess.run(
        ["kubectl", "--kubeconfig", os.path.join(W, "api", "admin.kubeconfig"), *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def api_stats():
    """(cpu seconds, RSS kB) of the apiserver process (etcd embedded)."""
    with open(f"/proc/{api_proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{api_proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss


def metric_sum(name, **match):
    text = req("GET", "/metrics")
    total = 0.0
    by = collections.Counter()
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels = dict(
            kv.split("=", 1) for kv in line[len(name) + 1 : line.index("}")].replace('"', "").split(",") if "=" in kv
        )
        if all(labels.get(k) == v for k, v in match.items()):
            v = float(line.rsplit(" ", 1)[1])
            total += v
            by[(labels.get("code", ""), labels.get("priority_level", ""))] += v
    return total, by


# ---------------------------------------------------------------------------- setup

kubectl("create", "namespace", NS)
# deploy/base/access: RBAC, admission policy and (when present) flowcontrol.yaml, the FlowSchema
# and PriorityLevelConfiguration; FLOWCONTROL=0 leaves the latter out (how the code before it ran).
ACCESS = os.path.join(ROOT, "deploy/base/access")
FLOW = os.path.join(ACCESS, "flowcontrol.yaml")
results["flowcontrol_manifest"] = os.path.exists(FLOW) and os.environ.get("FLOWCONTROL", "1") != "0"
for name in sorted(os.listdir(ACCESS)):
    if name.endswith(".yaml") and (name != "flowcontrol.yaml" or results["flowcontrol_manifest"]):
        kubectl("apply", "--server-side", "-f", os.path.join(ACCESS, name))


def setup_one(i):
    node = f"fleet-{i:04d}"
    pod = f"redis-node-tuner-{node}"
    req(
        "POST",
        "/api/v1/nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node},
            "spec": {"taints": [{"key": TAINT, "effect": "NoSchedule"}]},
        },
    )
    p = req(
        "POST",
        f"/api/v1/namespaces/{NS}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": NS},
            "spec": {
                "nodeName": node,
                "serviceAccountName": SA,
                "hostNetwork": True,
                "tolerations": [{"key": TAINT, "operator": "Exists"}],
                "containers": [{"name": "agent", "image": "redis-node-tuner:bench"}],
            },
        },
    )
    tr = req(
        "POST",
        f"/api/v1/namespaces/{NS}/serviceaccounts/{SA}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": p["metadata"]["uid"]},
            },
        },
    )
    d = os.path.join(W, "agents", node)
    proc_root, sys_root, state = f"{d}/proc", f"{d}/sys", f"{d}/state"
    thp = f"{sys_root}/kernel/mm/transparent_hugepage"
    for sub in ("sys/vm", "sys/net/core", "1/ns"):
        os.makedirs(f"{proc_root}/{sub}")
    for sub in ("hugepages-64kB", "hugepages-2048kB"):
        os.makedirs(f"{thp}/{sub}")
    os.makedirs(state)
    for path, text in [
        (f"{proc_root}/sys/vm/overcommit_memory", "0\n"),
        (f"{proc_root}/sys/net/core/somaxconn", "128\n"),
        (f"{thp}/enabled", "always [madvise] never\n"),
        (f"{thp}/defrag", "always defer defer+madvise [madvise] never\n"),
        (f"{thp}/hugepages-64kB/enabled", "always [inherit] madvise never\n"),
        (f"{thp}/hugepages-2048kB/enabled", "always [inherit] madvise never\n"),
    ]:
        with open(path, "w") as f:
            f.write(text)
    os.symlink("/proc/self/ns/net", f"{proc_root}/1/ns/net")
    with open(CA, "rb") as f:
        import base64

        ca = base64.b64encode(f.read()).decode()
    kc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "t", "cluster": {"server": URL, "certificate-authority-data": ca}}],
        "users": [{"name": "a", "user": {"token": tr["status"]["token"]}}],
        "contexts": [{"name": "a", "context": {"cluster": "t", "user": "a"}}],
        "current-context": "a",
    }
    with open(f"{d}/kubeconfig", "w") as f:
        json.dump(kc, f)
    return node, d


t = time.time()
with ThreadPoolExecutor(16) as ex:
    NODES = list(ex.map(setup_one, range(N)))
say(f"# fleet benchmark N={N} heartbeat={HEARTBEAT} window={WINDOW}s outage={OUTAGE}s")
say(f"# binary {BIN}; apiserver {APISERVER}")
say(f"# flowcontrol manifest applied: {results['flowcontrol_manifest']}")
say(f"# setup of {N} nodes, pods, tokens, fake trees: {time.time() - t:.1f}s")


def audit_entries(since=0.0, until=None):
    """The agents' requests (deduplicated by auditID) received in [since, until)."""
    seen = {}
    try:
        f = open(AUDIT)
    except OSError:
        return []
    with f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("user", {}).get("username") != SA_USER:
                continue
            aid = e["auditID"]
            if aid in seen:
                continue
            ts = e["requestReceivedTimestamp"]
            # RFC 3339 with microseconds, UTC
            sec = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            sec += float("0." + ts[20:-1]) if len(ts) > 20 else 0.0
            if sec < since or (until is not None and sec >= until):
                continue
            ref = e.get("objectRef", {})
            res = ref.get("resource", "?") + ("/" + ref["subresource"] if ref.get("subresource") else "")
            seen[aid] = {
                "t": sec,
                "verb": e.get("verb"),
                "res": res,
                "code": e.get("responseStatus", {}).get("code", 0),
                "uri": e.get("requestURI", ""),
                "node": ref.get("name") if ref.get("resource") == "nodes" else None,
            }
    return sorted(seen.values(), key=lambda x: x["t"])


def nodes():
    return req("GET", "/api/v1/nodes", timeout=60)["items"]


def is_ready(n):
    labels = n["metadata"].get("labels") or {}
    taints = (n.get("spec") or {}).get("taints") or []
    conds = (n.get("status") or {}).get("conditions") or []
    ok = any(c["type"] == CONDITION and c["status"] == "True" for c in conds)
    return labels.get(LABEL) == "true" and not any(t["key"] == TAINT for t in taints) and ok


def codes(entries):
    c = collections.Counter(e["code"] for e in entries)
    return (
        c.get(409, 0),
        c.get(429, 0),
        sum(v for k, v in c.items() if k >= 500),
    )


def by_verb(entries, per):
    c = collections.Counter(f"{e['verb']} {e['res']}" for e in entries)
    return ", ".join(f"{k} {v / per:.2f}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))


def peak_per_second(entries, start, length):
    buckets = collections.Counter(int(e["t"] - start) for e in entries if start <= e["t"] < start + length)
    return max(buckets.values(), default=0), buckets


def agent_rss():
    vals = []
    for p in agents:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        vals.append(int(line.split()[1]))
        except OSError:
            pass
    return vals


try:
    # ------------------------------------------------------------------------ start
    time.sleep(2)
    say(f"# load before start (uptime): {uptime()}")
    cpu0, _ = api_stats()
    t0 = time.time()
    for node, d in NODES:
        log = open(f"{d}/agent.log", "w")
        agents.append(
            subprocess.Popen(
                [
                    BIN,
                    "--proc-root",
                    f"{d}/proc",
                    "--sys-root",
                    f"{d}/sys",
                    "--state-dir",
                    f"{d}/state",
                    "run",
                    "--kubeconfig",
                    f"{d}/kubeconfig",
                    "--node-name",
                    node,
                    "--heartbeat",
                    HEARTBEAT,
                    "--listen",
                    "",
                    "--log-format",
                    "json",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
    spawn_s = time.time() - t0
    t_all_ready = None
    while time.time() - t0 < 300:
        items = nodes()
        ready = sum(1 for n in items if is_ready(n))
        if ready == N:
            t_all_ready = time.time() - t0
            break
        dead = [p for p in agents if p.poll() is not None]
        if dead:
            sys.exit(f"{len(dead)} agent(s) exited; logs under {W}/agents")
        time.sleep(0.25)
    if t_all_ready is None:
        sys.exit(f"not all nodes ready after 300 s ({ready}/{N}); logs under {W}/agents")
    # Let the last events of the start land, then count the start.
    time.sleep(10)
    t_start_end = time.time()
    cpu1, rss1 = api_stats()
    start_all = audit_entries(t0 - 1, t_start_end)
    # A node's status writes after its first are heartbeats that fell into the start window (a
    # node's first beat comes at its phase, anywhere in the period after its first write): they
    # are counted apart, as heartbeats, not as the cost of a start.
    seen_status, start, early_beats = set(), [], []
    for e in start_all:
        if e["verb"] == "patch" and e["res"] == "nodes/status" and e["code"] < 300:
            if e["node"] in seen_status:
                early_beats.append(e)
                continue
            seen_status.add(e["node"])
        start.append(e)
    c409, c429, c5xx = codes(start_all)
    results.update(
        ready_s=round(t_all_ready, 2),
        start_requests_per_agent=round(len(start) / N, 2),
        start_409=c409,
        start_429=c429,
        start_5xx=c5xx,
    )
    say(f"# load after start (uptime): {uptime()}")
    say(f"spawn of {N} agents: {spawn_s:.2f}s")
    say(f"time to all ready (label + no taint + condition True): {t_all_ready:.2f}s")
    say(f"requests per agent at start: {len(start) / N:.2f} ({by_verb(start, N)})")
    say(f"heartbeats within the start window (not counted above): {len(early_beats)}")
    say(f"start codes: 409={c409} 429={c429} 5xx={c5xx}")
    peak, _ = peak_per_second(start, t0, t_start_end - t0)
    say(f"start peak requests/s: {peak}")
    total429, by_pl = metric_sum("apiserver_flowcontrol_rejected_requests_total")
    say(f"apiserver_flowcontrol_rejected_requests_total (all users, since boot): {int(total429)}")
    disp = collections.Counter()
    for (_, pl), v in metric_sum("apiserver_flowcontrol_dispatched_requests_total")[1].items():
        disp[pl] += v
    say("dispatched by priority level (all users, since boot): " + ", ".join(f"{k}={int(v)}" for k, v in sorted(disp.items())))
    say(f"apiserver during start: cpu {cpu1 - cpu0:.1f}s over {t_start_end - t0:.1f}s, RSS {rss1 / 1024:.0f} MiB")
    rs = agent_rss()
    say(f"agent RSS after start: mean {sum(rs) / len(rs) / 1024:.1f} MiB, max {max(rs) / 1024:.1f} MiB")
    results.update(api_rss_mib_start=round(rss1 / 1024), agent_rss_mib=round(sum(rs) / len(rs) / 1024, 1))

    # ------------------------------------------------------------------------ steady window
    w0 = time.time()
    cpuw0, _ = api_stats()
    say(f"# heartbeat window {WINDOW}s; load at its start: {uptime()}")
    time.sleep(WINDOW)
    w1 = time.time()
    cpuw1, rssw = api_stats()
    win = audit_entries(w0, w1)
    beats = [e for e in win if e["verb"] == "patch" and e["res"] == "nodes/status"]
    hb_peak, _ = peak_per_second(beats, w0, WINDOW)
    hb_mean = len(beats) / WINDOW
    watches = [e for e in win if e["verb"] == "watch"]
    w_peak, w_b = peak_per_second(watches, w0, WINDOW)
    other = [e for e in win if e not in beats and e not in watches]
    say(f"# load at the window's end: {uptime()}")
    say(
        f"heartbeats in window: {len(beats)} (mean {hb_mean:.2f}/s, max {hb_peak}/s in one second, "
        f"ratio {hb_peak / hb_mean if hb_mean else 0:.1f}x)"
    )
    say(f"watch renewals in window: {len(watches)} (max {w_peak}/s; seconds with any: {len(w_b)})")
    say(f"other agent requests in window: {len(other)} ({by_verb(other, 1)})")
    say(f"window codes: 409/429/5xx = {codes(win)}")
    say(f"apiserver steady: cpu {100 * (cpuw1 - cpuw0) / (w1 - w0):.1f}% of one core, RSS {rssw / 1024:.0f} MiB")
    rs = agent_rss()
    say(f"agent RSS after window: mean {sum(rs) / len(rs) / 1024:.1f} MiB, max {max(rs) / 1024:.1f} MiB")
    results.update(
        hb_count=len(beats),
        hb_mean=round(hb_mean, 2),
        hb_peak=hb_peak,
        watch_peak=w_peak,
        api_cpu_pct_steady=round(100 * (cpuw1 - cpuw0) / (w1 - w0), 1),
        api_rss_mib=round(rssw / 1024),
    )

    # ------------------------------------------------------------------------ restart storm
    def log_lines():
        out = []
        for _, d in NODES:
            with open(f"{d}/agent.log", "rb") as f:
                out.append(f.read().count(b"\n"))
        return out

    lines0 = log_lines()
    k0 = time.time()
    api_proc.terminate()
    api_proc.wait(timeout=90)
    stopped = time.time() - k0
    say(f"# apiserver stopped in {stopped:.1f}s; outage {OUTAGE}s; load: {uptime()}")
    time.sleep(max(0, OUTAGE - stopped))
    URL2 = start_apiserver()
    assert URL2 == URL, (URL, URL2)
    r0 = time.time()
    cpur0, _ = api_stats()
    say(f"# apiserver ready again {r0 - k0:.1f}s after the stop")
    conv = None
    # Every condition written after the stop (no write can succeed during the outage; the
    # timestamps have whole seconds). Not "after ready": an agent may get through while the
    # apiserver starts, before it reports ready.
    floor = int(k0) + 1
    while time.time() - r0 < 180:
        try:
            items = nodes()
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
            continue

        def fresh(n):
            for c in (n.get("status") or {}).get("conditions") or []:
                if c["type"] == CONDITION and c.get("lastHeartbeatTime"):
                    hb = time.mktime(time.strptime(c["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
                    return hb >= floor and is_ready(n)
            return False

        done = sum(1 for n in items if fresh(n))
        if done == N:
            conv = time.time() - r0
            break
        time.sleep(0.5)
    c_end = time.time()
    time.sleep(3)
    lines1 = log_lines()
    per_agent = [b - a for a, b in zip(lines0, lines1)]
    remaining = max(0.0, r0 + 60 - time.time())
    time.sleep(remaining)
    cpur1, rssr = api_stats()
    after = audit_entries(r0 - 5, r0 + 60)
    peak_r, buckets = peak_per_second(after, r0 - 5, 65)
    peak_ready = max((v for k, v in buckets.items() if k >= 5), default=0)
    c409, c429, c5xx = codes(after)
    say(f"# load after the restart minute: {uptime()}")
    say(
        f"restart: peak {peak_r} requests/s in the first minute (N/5 = {N / 5:.0f}); "
        f"{len(after) / N:.2f} requests per agent ({by_verb(after, N)})"
    )
    say(
        f"restart: peak {peak_ready} requests/s from ready on (the peak above includes the 5 s before "
        "ready: requests held in the listening socket's backlog while the apiserver started)"
    )
    say(
        "restart: busiest seconds (second 5 = ready): "
        f"{sorted(buckets.items(), key=lambda kv: -kv[1])[:5]}"
    )
    say(f"restart codes: 409={c409} 429={c429} 5xx={c5xx}")
    say(
        "restart: every condition re-written, after ready: "
        + (f"{conv:.1f}s" if conv is not None else "NOT within 180 s")
    )
    say(
        f"log lines per agent from stop to convergence: mean {sum(per_agent) / N:.1f}, max {max(per_agent)}, "
        f"min {min(per_agent)} (outage {c_end - k0:.0f}s)"
    )
    say(f"apiserver first restart minute: cpu {cpur1 - cpur0:.1f}s, RSS {rssr / 1024:.0f} MiB")
    example = max(range(N), key=lambda i: per_agent[i])
    with open(f"{NODES[example][1]}/agent.log", "rb") as f:
        f.seek(0)
        tail = f.read().splitlines()[lines0[example] : lines1[example]]
    say(f"# the noisiest agent's lines during the outage ({NODES[example][0]}):")
    for line in tail[:12]:
        say("#   " + line.decode(errors="replace")[:300])
    results.update(
        restart_peak_rps=peak_r,
        restart_peak_rps_from_ready=peak_ready,
        restart_requests_per_agent=round(len(after) / N, 2),
        restart_converge_s=None if conv is None else round(conv, 1),
        outage_log_lines_mean=round(sum(per_agent) / N, 1),
        outage_log_lines_max=max(per_agent),
        restart_429=c429,
        restart_409=c409,
    )
    with open(os.path.join(OUT, f"fleet-N{N}.json"), "w") as f:
        json.dump(results, f, indent=1)
    say("RESULT " + json.dumps(results))
    say(f"# raw output in {OUT}" + (f"; work dir kept: {W}" if KEEP else ""))
finally:
    cleanup()
