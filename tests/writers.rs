//! The writer watch on the real kernel (as root; every knob is restored by the host guard).
//!
//! The agent runs on the host's /proc and /sys with a one-hour interval: after its first pass
//! the poll is out of the picture, so a correction within seconds can only come from the watch.
//! Each foreign write is made by a child of this test, so its pid and name are known.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::host::{self, HostGuard, OVERCOMMIT_PATH, THP};
use common::{BIN, free_port, has_line, http_get, repo, wait_for};
use serde_json::Value;

const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// Puts the knobs in the profile first, so the agent's first pass finds no drift.
fn tuned() {
    host::write(Path::new(OVERCOMMIT_PATH), "1");
    host::write(Path::new(SOMAXCONN_PATH), "4096");
    host::write(&Path::new(THP).join("enabled"), "never");
    host::write(&Path::new(THP).join("defrag"), "never");
}

struct Agent {
    child: Child,
    addr: String,
    log: PathBuf,
    _state: tempfile::TempDir,
}

impl Agent {
    /// `run` on the host's kernel, interval 1 h, JSON logs; waits until the watch said
    /// whether it runs and the first pass tuned the node.
    fn start(extra: &[&str]) -> Agent {
        let state = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = state.path().join("agent.log");
        let child = Command::new(BIN)
            .args(["--state-dir"])
            .arg(state.path().join("state"))
            .args([
                "run",
                "--no-kubernetes",
                "--interval",
                "1h",
                "--log-format",
                "json",
            ])
            .args(["--listen", &addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn the agent");
        let a = Agent {
            child,
            addr,
            log,
            _state: state,
        };
        let started = wait_for(Duration::from_secs(30), || {
            let l = a.logs();
            l.contains("writer watch") && l.contains("node ready")
        });
        assert!(started, "the agent did not start:\n{}", a.logs());
        assert!(
            wait_for(Duration::from_secs(10), || http_get(&a.addr, "/metrics")
                .is_ok()),
            "no /metrics:\n{}",
            a.logs()
        );
        a
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn lines(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Log lines with this message about this knob.
    fn about(&self, message: &str, knob: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["message"] == message && l["knob"] == knob)
            .collect()
    }

    fn metrics(&self) -> String {
        http_get(&self.addr, "/metrics").expect("GET /metrics").1
    }

    /// Waits for every sample (counted right after the pass that wrote the knob).
    fn wait_metrics(&self, want: &[String]) {
        let ok = wait_for(Duration::from_secs(10), || {
            let m = self.metrics();
            want.iter().all(|w| has_line(&m, w))
        });
        let m = self.metrics();
        let missing: Vec<&String> = want.iter().filter(|w| !has_line(&m, w)).collect();
        assert!(ok, "missing {missing:?}:\n{m}\n{}", self.logs());
    }

    fn foreign(&self, setting: &str, writer: &str, action: &str) -> String {
        format!(
            "redis_node_tuner_foreign_writes_total{{setting=\"{setting}\",writer=\"{writer}\",action=\"{action}\"}} 1"
        )
    }
}

/// `run` (with `args`) as root without CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN
/// (none survives exec), as the base DaemonSet and the plain systemd unit run it.
fn unprivileged(state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--bounding-set",
        "-bpf,-perfmon,-net_admin,-sys_admin",
        "--inh-caps",
        "-all",
    ])
    .arg(BIN)
    .arg("--state-dir")
    .arg(state.join("state"))
    .args(["run", "--no-kubernetes"])
    .args(args);
    c
}

impl Agent {
    /// [`unprivileged`] `run` with JSON logs in `state` and HTTP on a free port; not waited for.
    fn spawn_unprivileged(state: tempfile::TempDir, args: &[&str]) -> Agent {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = state.path().join("agent.log");
        let child = unprivileged(state.path(), args)
            .args(["--listen", &addr, "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("setpriv");
        Agent {
            child,
            addr,
            log,
            _state: state,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion: (pid, exit success, stderr).
fn run(cmd: &mut Command) -> (u32, bool, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    (
        pid,
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn overcommit() -> String {
    host::read(Path::new(OVERCOMMIT_PATH)).trim().to_string()
}

fn thp_enabled() -> String {
    host::selected(&host::read(&Path::new(THP).join("enabled")))
}

/// The "foreign write ..." line of the write by `pid`, waited for.
fn line_of(a: &Agent, knob: &str, pid: u32) -> Value {
    let mut found = None;
    wait_for(Duration::from_secs(10), || {
        found = a
            .lines()
            .into_iter()
            .find(|l| l["knob"] == knob && l["pid"] == pid && l.get("action").is_some());
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no foreign-write line for {knob} by pid {pid}:\n{}",
            a.logs()
        )
    })
}

#[test]
fn a_foreign_sysctl_and_a_shell_thp_write_are_named_and_corrected_at_once() {
    let _g = HostGuard::take();
    tuned();
    let a = Agent::start(&[]);
    assert!(has_line(
        &a.metrics(),
        "redis_node_tuner_writer_watch_active{mode=\"observe\",source=\"sysctl\",reason=\"active\"} 1"
    ));
    assert_eq!(overcommit(), "1");

    let (pid, ok, err) = run(Command::new("sysctl")
        .arg("-w")
        .arg("vm.overcommit_memory=0"));
    assert!(ok, "{err}");
    let l = line_of(&a, "vm.overcommit_memory", pid);
    assert_eq!(l["comm"], "sysctl", "{l}");
    assert_eq!(l["ppid"], std::process::id(), "{l}");
    assert_eq!(
        (l["old"].as_str(), l["new"].as_str()),
        (Some("1"), Some("0")),
        "{l}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || overcommit() == "1"),
        "not corrected:\n{}",
        a.logs()
    );
    let named = format!("pid {pid} (sysctl), parent {}", std::process::id());
    let corrected = a.about("drift corrected", "vm.overcommit_memory");
    assert!(
        corrected
            .iter()
            .any(|l| l["writer"].as_str().is_some_and(|w| w.starts_with(&named))),
        "the correction does not name {named}:\n{}",
        a.logs()
    );

    let (pid, ok, err) = run(Command::new("sh")
        .arg("-c")
        // fanotify gives a pid: the writer is named from /proc/<pid> while it lives (one that
        // has already exited is named by its pid alone, comm "(exited)").
        .arg(format!("echo always > {THP}/enabled; sleep 1; true")));
    assert!(ok, "{err}");
    let l = line_of(&a, "thp.enabled", pid);
    assert_eq!(
        (l["comm"].as_str(), l["new"].as_str()),
        (Some("sh"), Some("always")),
        "{l}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || thp_enabled() == "never"),
        "THP not corrected:\n{}",
        a.logs()
    );
    // Exactly one each: the agent's own corrections are not foreign writes.
    a.wait_metrics(&[
        a.foreign("vm.overcommit_memory", "sysctl", "corrected"),
        a.foreign("thp.enabled", "sh", "corrected"),
    ]);
    let m = a.metrics();
    assert_eq!(
        m.matches("redis_node_tuner_foreign_writes_total{").count(),
        2,
        "{m}"
    );
}

/// The first cgroup v2 mount of this process.
fn cgroup2_root() -> PathBuf {
    let info = host::read(Path::new("/proc/self/mountinfo"));
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.starts_with("cgroup2 ")).then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
        })
        .expect("a cgroup v2 mount")
}

struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_writer_in_its_own_cgroup_and_network_namespace_is_named_with_its_cgroup() {
    let _g = HostGuard::take();
    let name = format!("rnt-writer-test-{}", std::process::id());
    let cg = Cgroup(cgroup2_root().join(&name));
    std::fs::create_dir(&cg.0).unwrap();
    let a = Agent::start(&[]);
    // unshare execs sh, which moves itself into the cgroup and execs sysctl: one pid.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec sysctl -w vm.overcommit_memory=0",
        cg.0.display()
    );
    let (pid, ok, err) = run(Command::new("unshare").args(["-n", "sh", "-c", &script]));
    assert!(ok, "{err}");
    let l = line_of(&a, "vm.overcommit_memory", pid);
    assert_eq!(l["comm"], "sysctl", "{l}");
    assert_eq!(l["cgroup"], format!("/{name}"), "{l}");
    assert!(
        wait_for(Duration::from_secs(10), || overcommit() == "1"),
        "not corrected:\n{}",
        a.logs()
    );
    a.wait_metrics(&[a.foreign("vm.overcommit_memory", "sysctl", "corrected")]);
}

#[test]
fn somaxconn_written_in_another_network_namespace_is_not_drift() {
    let _g = HostGuard::take();
    let a = Agent::start(&[]);
    let host_before = host::read(Path::new(SOMAXCONN_PATH));
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c"])
        .arg(format!(
            "sysctl -qw net.core.somaxconn=100 && sleep 1 && cat {SOMAXCONN_PATH}"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(host::read(Path::new(SOMAXCONN_PATH)), host_before);
    // No watcher reported it: no line about the knob at all (a sysctl program without its
    // network-namespace filter would log `foreign write drifted a knob` for this write, and
    // the pass would find nothing to correct in the host's namespace).
    let about_it: Vec<Value> = a
        .lines()
        .into_iter()
        .filter(|l| {
            l["knob"] == "net.core.somaxconn"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("foreign write") || m == "drift detected")
        })
        .collect();
    assert!(about_it.is_empty(), "{about_it:#?}");
    assert!(
        !a.metrics()
            .contains("setting=\"net.core.somaxconn\",writer")
    );

    // The same write in the host's namespace is drift: named and corrected.
    let (pid, ok, err) = run(Command::new("sysctl")
        .arg("-w")
        .arg("net.core.somaxconn=100"));
    assert!(ok, "{err}");
    let l = line_of(&a, "net.core.somaxconn", pid);
    assert_eq!(l["comm"], "sysctl", "{l}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            host::read(Path::new(SOMAXCONN_PATH))
                .trim()
                .parse::<i64>()
                .unwrap()
                >= 2048
        }),
        "host somaxconn not corrected:\n{}",
        a.logs()
    );
}

#[test]
fn lock_mode_refuses_what_leaves_the_profile_and_lets_the_desired_value_through() {
    let _g = HostGuard::take();
    tuned();
    let a = Agent::start(&["--writers", "lock"]);
    assert!(has_line(
        &a.metrics(),
        "redis_node_tuner_writer_watch_active{mode=\"lock\",source=\"sysctl\",reason=\"active\"} 1"
    ));
    assert!(has_line(
        &a.metrics(),
        "redis_node_tuner_writer_lock_active{reason=\"active\"} 1"
    ));
    let (pid, ok, err) = run(Command::new("sysctl")
        .arg("-w")
        .arg("vm.overcommit_memory=0"));
    assert!(
        !ok && err.contains("Operation not permitted"),
        "not refused: {err}"
    );
    assert_eq!(overcommit(), "1");
    let l = line_of(&a, "vm.overcommit_memory", pid);
    assert_eq!(
        (l["action"].as_str(), l["comm"].as_str()),
        (Some("refused"), Some("sysctl"))
    );
    // The kubelet's write of the desired value passes.
    let (_, ok, err) = run(Command::new("sysctl")
        .arg("-w")
        .arg("vm.overcommit_memory=1"));
    assert!(ok, "the desired value was refused: {err}");
    let (_, ok, _) = run(Command::new("sysctl")
        .arg("-w")
        .arg("net.core.somaxconn=100"));
    assert!(!ok, "somaxconn below the profile was not refused");
    let (_, ok, err) = run(Command::new("sysctl")
        .arg("-w")
        .arg("net.core.somaxconn=8192"));
    assert!(ok, "somaxconn above the bound was refused: {err}");
    // THP is sysfs: observed and corrected, never refused.
    let (_, ok, err) = run(Command::new("sh")
        .arg("-c")
        // fanotify gives a pid: the writer is named from /proc/<pid> while it lives (one that
        // has already exited is named by its pid alone, comm "(exited)").
        .arg(format!("echo always > {THP}/enabled; sleep 1; true")));
    assert!(ok, "{err}");
    assert!(wait_for(Duration::from_secs(10), || thp_enabled() == "never"));
    // The refused value never landed: no drift was ever seen on overcommit or somaxconn.
    assert!(
        a.about("drift detected", "vm.overcommit_memory").is_empty(),
        "{}",
        a.logs()
    );
    assert!(
        a.about("drift detected", "net.core.somaxconn").is_empty(),
        "{}",
        a.logs()
    );
    a.wait_metrics(&[
        a.foreign("vm.overcommit_memory", "sysctl", "refused"),
        a.foreign("vm.overcommit_memory", "sysctl", "observed"),
        a.foreign("net.core.somaxconn", "sysctl", "refused"),
        a.foreign("net.core.somaxconn", "sysctl", "observed"),
        a.foreign("thp.enabled", "sh", "corrected"),
    ]);
}

#[test]
fn without_its_capabilities_the_sysctl_program_is_unavailable_and_inotify_still_corrects_at_once() {
    let _g = HostGuard::take();
    tuned();
    // Root without CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN (none survives exec),
    // as the base DaemonSet and the plain systemd unit run it. The interval is an hour: only
    // the inotify watch, which needs no privilege, can correct within seconds.
    let a = Agent::spawn_unprivileged(
        tempfile::tempdir().unwrap(),
        &["--interval", "1h", "--writers", "observe"],
    );
    assert!(
        wait_for(Duration::from_secs(30), || a
            .logs()
            .contains("writer watch unavailable")),
        "{}",
        a.logs()
    );
    assert!(
        wait_for(Duration::from_secs(10), || has_line(
            &a.metrics(),
            "redis_node_tuner_writer_watch_active{mode=\"observe\",source=\"sysctl\",reason=\"permission\"} 0"
        )),
        "{}",
        a.metrics()
    );
    let m = a.metrics();
    assert!(
        has_line(
            &m,
            "redis_node_tuner_writer_watch_active{mode=\"observe\",source=\"inotify\",reason=\"active\"} 1"
        ) && has_line(
            &m,
            "redis_node_tuner_writer_watch_active{mode=\"observe\",source=\"fanotify\",reason=\"permission\"} 0"
        ),
        "{m}"
    );
    let (_, ok, err) = run(Command::new("sysctl")
        .arg("-w")
        .arg("vm.overcommit_memory=0"));
    assert!(ok, "{err}");
    assert!(
        wait_for(Duration::from_secs(10), || overcommit() == "1"),
        "inotify did not correct:\n{}",
        a.logs()
    );
    let corrected = a.about("drift corrected", "vm.overcommit_memory");
    assert!(!corrected.is_empty(), "{}", a.logs());
    assert!(
        corrected.iter().all(|l| l.get("writer").is_none()),
        "a writer without a watch?"
    );
}

#[test]
fn a_fake_tree_has_no_writes_to_watch() {
    let t = common::Tree::untuned();
    let d = common::Daemon::start(&t, &["--writers", "observe"]);
    assert!(
        wait_for(Duration::from_secs(10), || has_line(
            &d.metrics(),
            "redis_node_tuner_writer_watch_active{mode=\"observe\",source=\"sysctl\",reason=\"fake_root\"} 0"
        )),
        "{}",
        d.metrics()
    );
}

#[test]
fn the_committed_bpf_object_is_built_from_its_source() {
    let out = tempfile::tempdir().unwrap();
    let rebuilt = out.path().join("writers.bpf.o");
    let st = Command::new("bash")
        .arg(repo().join("bpf/build.sh"))
        .arg(&rebuilt)
        .status()
        .expect("bpf/build.sh (needs clang, llvm and libbpf-dev)");
    assert!(st.success(), "bpf/build.sh failed");
    let committed = std::fs::read(repo().join("bpf/writers.bpf.o")).unwrap();
    assert!(
        std::fs::read(&rebuilt).unwrap() == committed,
        "bpf/writers.bpf.o is not the build of bpf/writers.bpf.c: run bpf/build.sh and commit it"
    );
}

/// The agent's resident memory (`VmRSS`), in kB.
fn rss_kb(pid: u32) -> u64 {
    host::read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A writer rewriting `vm.overcommit_memory` to 0 as fast as it can for 5 s (measured before
/// the bounds: 15,600 log lines a second): the agent keeps correcting, stays under the
/// DaemonSet's 32 MiB memory limit, and its log stays bounded (one line per writer and knob a
/// second for the writes, one event line of a kind per knob a second).
#[test]
fn a_write_storm_is_corrected_with_a_bounded_log_and_memory() {
    const SECONDS: u64 = 5;
    let _g = HostGuard::take();
    tuned();
    let a = Agent::start(&[]);
    let before = a.logs().lines().count();
    let storm = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import time\nend = time.time() + {SECONDS}\nn = 0\nwhile time.time() < end:\n    \
             with open('{OVERCOMMIT_PATH}', 'w') as f:\n        f.write('0')\n    n += 1\nprint(n)"
        ))
        .output()
        .expect("python3");
    assert!(storm.status.success(), "{storm:?}");
    let writes: u64 = String::from_utf8_lossy(&storm.stdout)
        .trim()
        .parse()
        .expect("the count of writes");
    assert!(
        wait_for(Duration::from_secs(10), || overcommit() == "1"),
        "not corrected after the storm:\n{}",
        a.logs()
    );
    let lines = a.logs().lines().count() - before;
    eprintln!("storm: {writes} writes in {SECONDS} s, {lines} log lines");
    assert!(writes > 1000, "the storm wrote only {writes} times");
    // 20 write lines a second in all, 1 drift and 1 correction line a second, and slack for
    // the lines of the last second and the watch's own.
    let bound = SECONDS * 30;
    assert!(
        (lines as u64) <= bound,
        "{lines} log lines for {writes} writes in {SECONDS} s (bound {bound}):\n{}",
        a.logs()
    );
    let rss = rss_kb(a.child.id());
    assert!(rss > 0 && rss < 32 * 1024, "RSS {rss} kB after the storm");
    // Still counted: the writes of the storm, by the writer's name.
    let m = a.metrics();
    let counted: u64 = m
        .lines()
        .filter(|l| {
            l.starts_with(
                "redis_node_tuner_foreign_writes_total{setting=\"vm.overcommit_memory\",writer=\"python3\"",
            )
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    assert!(counted > 0, "no foreign write counted:\n{m}");
}

/// The id of the writer watch's cgroup link (`bpftool`, Debian package `bpftool`): the newest
/// link of a program named `sysctl_write` (one agent with the watch runs at a time: the host
/// guard).
fn lock_link_id() -> Option<u64> {
    let json = |args: &[&str]| -> Option<Value> {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool (Debian package bpftool)");
        serde_json::from_slice(&out.stdout).ok()
    };
    let progs = json(&["prog", "show"])?;
    let ours: Vec<u64> = progs
        .as_array()?
        .iter()
        .filter(|p| p["name"] == "sysctl_write")
        .filter_map(|p| p["id"].as_u64())
        .collect();
    json(&["link", "show"])?
        .as_array()?
        .iter()
        .filter(|l| {
            l["type"] == "cgroup" && l["prog_id"].as_u64().is_some_and(|p| ours.contains(&p))
        })
        .filter_map(|l| l["id"].as_u64())
        .max()
}

/// `lock` is checked while it runs: the break-glass file in the state directory lifts it
/// (writes are then corrected, not refused) and its removal puts it back; a link detached
/// behind the agent's back shows as `detached`. The condition's reason follows (the report's
/// `lock_missing`, which the gate turns into `LockUnavailable`).
#[test]
fn the_lock_is_lifted_by_the_break_glass_file_and_a_detached_link_is_seen() {
    let _g = HostGuard::take();
    tuned();
    let a = Agent::start(&["--writers", "lock"]);
    let lock = |reason: &str, v: u8| {
        format!("redis_node_tuner_writer_lock_active{{reason=\"{reason}\"}} {v}")
    };
    a.wait_metrics(&[lock("active", 1)]);
    let refused = || {
        let (_, ok, _) = run(Command::new("sysctl")
            .arg("-w")
            .arg("vm.overcommit_memory=0"));
        !ok
    };
    assert!(refused(), "lock not in force");

    let glass = a._state.path().join("state").join("unlock");
    std::fs::write(&glass, "").unwrap();
    a.wait_metrics(&[lock("break_glass", 0)]);
    let readyz = http_get(&a.addr, "/readyz").expect("GET /readyz").1;
    assert!(readyz.contains("break_glass"), "{readyz}");
    assert!(!refused(), "refused with the break-glass file in place");
    assert!(
        wait_for(Duration::from_secs(10), || overcommit() == "1"),
        "not corrected under the break-glass:\n{}",
        a.logs()
    );
    std::fs::remove_file(&glass).unwrap();
    a.wait_metrics(&[lock("active", 1)]);
    assert!(refused(), "the lock did not come back");

    let id = lock_link_id().expect("the agent's cgroup link");
    let out = Command::new("bpftool")
        .args(["link", "detach", "id", &id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    a.wait_metrics(&[lock("detached", 0)]);
    assert!(
        a.logs().contains("writers lock no longer attached"),
        "{}",
        a.logs()
    );
    assert!(!refused(), "a detached lock still refused");
    assert!(wait_for(Duration::from_secs(10), || overcommit() == "1"));
}

/// `--lock-unavailable exit`: without the capabilities the lock needs, `run` exits 8 before
/// its first pass; by default it runs, says why, and the values are still enforced.
#[test]
fn a_lock_that_cannot_load_exits_8_when_asked_and_is_reported_otherwise() {
    let _g = HostGuard::take();
    tuned();
    let dir = tempfile::tempdir().unwrap();
    let out = unprivileged(
        dir.path(),
        &[
            "--writers",
            "lock",
            "--listen",
            "",
            "--lock-unavailable",
            "exit",
        ],
    )
    .output()
    .expect("setpriv");
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--lock-unavailable is exit"),
        "{out:?}"
    );
    assert_eq!(overcommit(), "1", "nothing written");

    let a = Agent::spawn_unprivileged(dir, &["--writers", "lock"]);
    assert!(
        wait_for(Duration::from_secs(30), || http_get(&a.addr, "/metrics")
            .is_ok()),
        "{}",
        a.logs()
    );
    a.wait_metrics(&["redis_node_tuner_writer_lock_active{reason=\"permission\"} 0".to_string()]);
    let readyz = http_get(&a.addr, "/readyz").expect("GET /readyz").1;
    assert!(
        readyz.contains("writers lock not in force (permission)"),
        "{readyz}"
    );
    assert!(
        a.logs().contains("writers lock requested but not in force"),
        "{}",
        a.logs()
    );
}

/// The members of a struct in an object's BTF: (name, byte offset), and its size (`bpftool btf
/// dump ... format raw`).
fn btf_struct(object: &Path, name: &str) -> (usize, Vec<(String, usize)>) {
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(object)
        .args(["format", "raw"])
        .output()
        .expect("bpftool (Debian package bpftool)");
    let text = String::from_utf8_lossy(&out.stdout);
    let head = format!("STRUCT '{name}' size=");
    let mut lines = text.lines().skip_while(|l| !l.contains(&head));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no struct {name} in the BTF of {}", object.display()));
    let size = first
        .split("size=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("size");
    let members = lines
        .take_while(|l| l.starts_with('\t'))
        .map(|l| {
            let name = l.split('\'').nth(1).expect("member name").to_string();
            let bits: usize = l
                .split("bits_offset=")
                .nth(1)
                .and_then(|b| b.trim().parse().ok())
                .expect("bits_offset");
            (name, bits / 8)
        })
        .collect();
    (size, members)
}

/// The decoder's and encoder's offsets are the C structs' as the committed object's BTF lays
/// them out: every member by name, and the sizes (two swapped members fail here).
#[test]
fn the_event_and_rule_layouts_are_the_objects_btf() {
    use redis_node_tuner::writers::{EVENT_SIZE, RULE_SIZE, layout};
    let object = repo().join("bpf/writers.bpf.o");
    for (name, size, ours) in [
        ("event", EVENT_SIZE, &layout::EVENT[..]),
        ("rule", RULE_SIZE, &layout::RULE[..]),
    ] {
        let (btf_size, members) = btf_struct(&object, name);
        assert_eq!(btf_size, size, "sizeof(struct {name})");
        let ours: Vec<(String, usize)> = ours.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(
            members, ours,
            "struct {name}: BTF (left) vs the decoder (right)"
        );
    }
}

/// `lock` lives with the agent's process: SIGKILLed, the kernel drops its link and writes go
/// through (fail-open) until the next agent attaches it again, corrects what was written
/// meanwhile, and refuses again.
#[test]
fn a_killed_locking_agent_fails_open_and_the_next_one_locks_again() {
    let _g = HostGuard::take();
    tuned();
    let mut a = Agent::start(&["--writers", "lock"]);
    a.wait_metrics(&["redis_node_tuner_writer_lock_active{reason=\"active\"} 1".to_string()]);
    a.child.kill().expect("SIGKILL");
    let _ = a.child.wait();
    assert!(
        wait_for(Duration::from_secs(10), || lock_link_id().is_none()),
        "the link outlived its agent"
    );
    let (_, ok, err) = run(Command::new("sysctl")
        .arg("-w")
        .arg("vm.overcommit_memory=0"));
    assert!(ok, "refused with no agent: {err}");
    assert_eq!(overcommit(), "0");
    let b = Agent::start(&["--writers", "lock"]);
    assert_eq!(overcommit(), "1", "the next agent corrected it");
    b.wait_metrics(&["redis_node_tuner_writer_lock_active{reason=\"active\"} 1".to_string()]);
    let (_, ok, _) = run(Command::new("sysctl")
        .arg("-w")
        .arg("vm.overcommit_memory=0"));
    assert!(!ok, "not refused again");
}
