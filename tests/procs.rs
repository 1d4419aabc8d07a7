//! Redis's own view, against the real kernel: a real `redis-server` in a network namespace the
//! test makes (with its own `net.core.somaxconn`) and one on the host's network, found by the
//! built binary's `check`, with the somaxconn of its namespace, the backlog the kernel gave its
//! listener (sock_diag) and the verdicts. Needs root, `ip` (iproute2) and `redis-server`. The
//! host's knobs are never changed; the namespaces and servers are removed on drop, also on
//! failure.

mod common;
use common::netns::NetNs;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running redis-server, killed on drop. Its pid is the child's: `ip netns exec` execs it.
struct Redis {
    child: Child,
}

impl Redis {
    /// Starts `redis-server` (through `ns` when given) on loopback and waits until it accepts.
    fn start(ns: Option<&NetNs>, port: u16, extra: &[&str]) -> Redis {
        require("redis-server");
        let port = port.to_string();
        let mut args = vec![
            "redis-server",
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--tcp-backlog",
            "511",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend_from_slice(extra);
        let mut cmd = match ns {
            Some(ns) => ns.exec(&args),
            None => {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            }
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("stdout");
        let redis = Redis { child };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let end = Instant::now() + Duration::from_secs(20);
        let mut lines = vec![];
        while Instant::now() < end {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains("Ready to accept connections") => return redis,
                Ok(l) => lines.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("redis-server did not start:\n{}", lines.join("\n"));
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `check` of the host (the real /proc and /sys), with an optional config file.
fn check(args: &[&str]) -> Out {
    let state = tempfile::tempdir().expect("tmp");
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .args(args);
    Out::of(c.output().expect("spawn redis-node-tuner"))
}

/// The `processes` entry of `pid` in `check --output json`.
fn process(pid: u32) -> Value {
    let out = check(&["check", "--output", "json"]);
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("check JSON: {e}\n{out:?}"));
    v["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
        .cloned()
        .unwrap_or_else(|| panic!("pid {pid} not among the processes: {}", out.stdout))
}

/// A free TCP port of the host's loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn a_pod_network_redis_at_somaxconn_128_gets_a_backlog_of_128() {
    let ns = NetNs::new("low");
    ns.set_somaxconn("128");
    // set-proc-title no: the command line keeps --tcp-backlog, the configured value is known.
    let redis = Redis::start(Some(&ns), 6390, &["--set-proc-title", "no"]);
    let p = process(redis.pid());
    assert_eq!(p["name"], "redis-server", "{p:#}");
    assert_eq!(p["owner_label"], format!("pid:{}", redis.pid()), "{p:#}");
    assert_eq!(p["netns"]["kind"], "set_in_namespace", "{p:#}");
    assert_eq!(p["netns"]["somaxconn"], 128, "{p:#}");
    assert_eq!(p["tcp_backlog"]["value"], 511, "{p:#}");
    assert_eq!(p["tcp_backlog"]["source"], "cmdline", "{p:#}");
    assert_eq!(p["listen_backlog"], 128, "{p:#}");
    assert_eq!(p["listeners"][0]["port"], 6390, "{p:#}");
    assert_eq!(p["listeners"][0]["address"], "127.0.0.1", "{p:#}");
    assert_eq!(p["checks"]["backlog"], "out_of_sync", "{p:#}");
    assert_eq!(p["checks"]["somaxconn"], "out_of_sync", "{p:#}");
    assert_eq!(p["in_sync"], false, "{p:#}");
    assert!(p["thp"]["thp_enabled"].is_boolean(), "{p:#}");
    assert!(p["thp"]["anon_hugepages_bytes"].is_u64(), "{p:#}");

    // The text output: the second table, with this process's row.
    let out = check(&["check"]);
    assert!(
        out.stdout.contains("\nRedis processes (under /proc):\n"),
        "{out:?}"
    );
    let header = out
        .stdout
        .lines()
        .find(|l| l.starts_with("PID "))
        .unwrap_or_default();
    for col in [
        "OWNER",
        "NETNS",
        "SOMAXCONN",
        "TCP-BACKLOG",
        "LISTEN-BACKLOG",
        "THP",
        "IN-SYNC",
        "WHY-NOT",
    ] {
        assert!(header.contains(col), "{col} missing from {header:?}");
    }
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{} ", redis.pid())))
        .unwrap_or_else(|| panic!("no row for {}: {}", redis.pid(), out.stdout));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[1..7],
        [
            format!("pid:{}", redis.pid()).as_str(),
            "set_in_namespace",
            "128",
            "511",
            "(cmdline)",
            "128"
        ],
        "{row}"
    );
    assert!(row.contains("below tcp-backlog 511"), "{row}");
    eprintln!("{}", out.stdout);

    // Reported only, unless the profile's gate says otherwise (no knob in this profile: the
    // exit code is the processes' alone).
    let tmp = tempfile::tempdir().expect("tmp");
    let off = tmp.path().join("off.yaml");
    let gated = tmp.path().join("gated.yaml");
    std::fs::write(&off, "mode: off\n").expect("write");
    std::fs::write(&gated, "mode: off\nredis_processes: {gate: true}\n").expect("write");
    let out = check(&["--config", &off.to_string_lossy(), "check"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("reported only: redis_processes.gate is false"),
        "{out:?}"
    );
    let out = check(&["--config", &gated.to_string_lossy(), "check"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("node: not ready (")
            && out.stdout.contains("redis_processes.gate: true"),
        "{out:?}"
    );
}

#[test]
fn a_pod_network_redis_at_the_kernel_default_has_its_full_backlog() {
    let ns = NetNs::new("default");
    // 4096: what a new namespace starts with since Linux 5.4 (set explicitly for older ones).
    ns.set_somaxconn("4096");
    // The process title replaces the command line (Redis's default): tcp-backlog is assumed.
    let redis = Redis::start(Some(&ns), 6391, &[]);
    let p = process(redis.pid());
    let release = redis_node_tuner::kernel::kernel_release();
    let kind = if redis_node_tuner::kernel::new_netns_somaxconn(&release) == Some(4096) {
        "kernel_default"
    } else {
        "set_in_namespace"
    };
    assert_eq!(p["netns"]["kind"], kind, "{p:#}");
    assert_eq!(p["netns"]["somaxconn"], 4096, "{p:#}");
    assert_eq!(p["tcp_backlog"]["source"], "assumed_default", "{p:#}");
    assert_eq!(p["listen_backlog"], 511, "{p:#}");
    assert_eq!(p["checks"]["backlog"], "in_sync", "{p:#}");
    assert_eq!(p["checks"]["somaxconn"], "in_sync", "{p:#}");
}

#[test]
fn a_host_network_redis_sees_the_hosts_somaxconn() {
    let port = free_port();
    let redis = Redis::start(None, port, &["--set-proc-title", "no"]);
    let p = process(redis.pid());
    let host: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(p["netns"]["kind"], "host_network", "{p:#}");
    assert_eq!(p["netns"]["somaxconn"], host, "{p:#}");
    assert_eq!(p["listen_backlog"], host.min(511), "{p:#}");
    assert_eq!(p["listeners"][0]["port"], port, "{p:#}");
    let verdict = if host >= 511 {
        "in_sync"
    } else {
        "out_of_sync"
    };
    assert_eq!(p["checks"]["backlog"], verdict, "{p:#}");
}

/// `run` on the host's real /proc and /sys, audit only (never writes a knob), no writer watch:
/// killed on drop.
struct Run {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn start() -> Run {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("audit.yaml");
        std::fs::write(&cfg, "mode: audit\n").expect("write");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("agent.log");
        let child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--config", &cfg.to_string_lossy(), "--state-dir"])
            .arg(dir.path().join("state"))
            .args([
                "run",
                "--listen",
                &addr,
                "--log-format",
                "json",
                "--writers",
                "off",
                "--no-kubernetes",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn run");
        let r = Run {
            child,
            addr,
            log,
            _dir: dir,
        };
        assert!(
            wait_for(Duration::from_secs(20), || http_get(&r.addr, "/healthz")
                .is_ok_and(|(c, _)| c == 200)),
            "run did not serve /healthz:\n{}",
            r.logs()
        );
        r
    }

    fn metrics(&self) -> String {
        http_get(&self.addr, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_meters_each_redis_process_logs_it_out_of_sync_and_drops_its_series_when_it_goes() {
    let ns = NetNs::new("run");
    ns.set_somaxconn("128");
    let redis = Redis::start(Some(&ns), 6392, &["--set-proc-title", "no"]);
    let owner = format!("pid:{}", redis.pid());
    let run = Run::start();
    let in_sync = |check: &str| {
        format!("redis_node_tuner_redis_process_in_sync{{owner=\"{owner}\",check=\"{check}\"}}")
    };
    let backlog = format!("redis_node_tuner_redis_process_listen_backlog{{owner=\"{owner}\"}}");
    assert!(
        wait_for(Duration::from_secs(15), || has_line(
            &run.metrics(),
            &format!("{backlog} 128")
        )),
        "{}\n{}",
        run.metrics(),
        run.logs()
    );
    let m = run.metrics();
    for (check, v) in [("backlog", 0), ("somaxconn", 0)] {
        assert!(
            has_line(&m, &format!("{} {v}", in_sync(check))),
            "{check}: {m}"
        );
    }
    assert!(
        has_line(
            &m,
            &format!("redis_node_tuner_redis_process_somaxconn{{owner=\"{owner}\"}} 128")
        ),
        "{m}"
    );
    assert!(
        sample(&m, "redis_node_tuner_redis_processes ") >= 1.0,
        "{m}"
    );
    // The scan of this machine's /proc sees the host's processes when this test runs in the
    // initial PID namespace (kernel threads visible), as on the CI machine.
    let host = std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim_end() == "kthreadd");
    assert!(
        has_line(
            &m,
            &format!("redis_node_tuner_redis_view_sees_host {}", u8::from(host))
        ),
        "{m}"
    );
    // A warning per check out of sync, with the process, its owner and why.
    let logs = run.logs();
    let line = logs
        .lines()
        .find(|l| {
            l.contains("redis process sees a setting out of sync")
                && l.contains(&format!("\"pid\":{}", redis.pid()))
                && l.contains("\"check\":\"backlog\"")
        })
        .unwrap_or_else(|| panic!("no warning for the backlog:\n{logs}"));
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert!(line.contains(&format!("\"owner\":\"{owner}\"")), "{line}");
    assert!(line.contains("below tcp-backlog 511"), "{line}");
    // Audit only: the node's readiness is the knobs' (no gate), whatever the process sees.
    // The process goes away: its series follow within a scan (at most every 10 s).
    drop(redis);
    assert!(
        wait_for(Duration::from_secs(25), || !run.metrics().contains(&owner)),
        "series of {owner} still there:\n{}",
        run.metrics()
    );
}
