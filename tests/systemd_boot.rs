//! Bare metal under a real systemd as PID 1: a Debian bookworm node (debootstrap, cached as a
//! pristine tar) booted in systemd-nspawn by `tests/systemd-boot/node.sh`, the project's `.deb`
//! installed in it with apt, and everything asserted from outside the agent: the kernel's knob
//! files, `systemctl show`, the journal, Redis's own log.
//!
//! The container shares this machine's kernel and its `/proc/sys` and `/sys` are writable (the
//! agent's job), so each test holds the host-knob lock (`HostGuard`) while a container exists,
//! records every writable kernel setting first, and puts back whatever changed on every path,
//! panic included; on the normal path it then asserts that the host's settings equal those
//! from before. It has its own network namespace: `net.core.somaxconn` is the container's.
//!
//! Needs root (skipped with a message otherwise), `debootstrap` and `systemd-nspawn` (installed
//! by `tests/systemd-boot/node.sh setup`, called from scripts/test.sh), cargo-deb and the musl
//! target (as tests/systemd.rs).

mod common;
use common::deb::{build_deb, exposure_level};
use common::host::{HostGuard, OVERCOMMIT_PATH, THP, is_root, selected};
use common::{repo, text, wait_for};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the nodes live (one directory per test; a fixed path so that a run's tear-down finds
/// what an interrupted run left).
const WORK: &str = "/var/tmp/redis-node-tuner-systemd-boot";
const UNIT: &str = "redis-node-tuner.service";
const REDIS_LOG: &str = "var/log/redis/redis-server.log";
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

const BACKLOG_WARN: &str = "TCP backlog setting of 511 cannot be enforced";
const OVERCOMMIT_WARN: &str = "Memory overcommit must be enabled";
const THP_WARN: &str = "Transparent Huge Pages (THP) support enabled";

fn node_sh() -> PathBuf {
    repo().join("tests/systemd-boot/node.sh")
}

/// `node.sh ARGS…`, bounded (a cold root filesystem takes about a minute, other steps seconds).
fn script(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("timeout")
        .args(["--kill-after=10", "600", "bash"])
        .arg(node_sh())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tests/systemd-boot/node.sh")
}

/// The package, built once per test binary.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let dir = Path::new(WORK).join("deb");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let t = Instant::now();
        let d = build_deb(&dir);
        eprintln!("timing: cargo deb {:.1?}", t.elapsed());
        d
    })
}

/// Every writable kernel setting of the host the container could reach: `/proc/sys` except
/// `net/` (whose `net/core` is read in the host's namespace) and the THP files.
#[derive(PartialEq)]
struct Settings(BTreeMap<PathBuf, String>);

impl Settings {
    fn read() -> Settings {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.filter_map(Result::ok) {
                let p = e.path();
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                let skip = [
                    "/proc/sys/net",
                    "/proc/sys/fs/binfmt_misc",
                    // A counter, not a setting.
                    "/proc/sys/kernel/ns_last_pid",
                ];
                if skip.iter().any(|s| p == Path::new(s)) {
                    continue;
                }
                if m.is_dir() {
                    walk(&p, out);
                } else if m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o200 != 0
                {
                    // Write-only files (drop_caches, compact_memory) do not read.
                    if let Ok(v) = std::fs::read_to_string(&p) {
                        out.insert(p, v);
                    }
                }
            }
        }
        let mut m = BTreeMap::new();
        walk(Path::new("/proc/sys"), &mut m);
        walk(Path::new("/proc/sys/net/core"), &mut m);
        walk(Path::new(THP), &mut m);
        Settings(m)
    }

    /// `path: before -> now` of every setting that differs.
    fn diff(&self, now: &Settings) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|(p, v)| {
                let n = now.0.get(p).map(String::as_str).unwrap_or("(gone)");
                (n != v).then(|| format!("{}: {:?} -> {:?}", p.display(), v.trim(), n.trim()))
            })
            .collect()
    }

    /// Writes back every setting that differs from this record; returns what it put back. THP
    /// first: the kernel recomputes vm.min_free_kbytes when THP is switched, so that one is
    /// written only if it still differs afterwards.
    fn restore(&self) -> Vec<String> {
        let changed = self.diff(&Settings::read());
        for thp_first in [true, false] {
            let now = Settings::read();
            for (p, v) in &self.0 {
                if p.starts_with(THP) != thp_first || now.0.get(p) == Some(v) {
                    continue;
                }
                let value = if v.contains('[') {
                    selected(v)
                } else {
                    v.trim().to_string()
                };
                if let Err(e) = std::fs::write(p, &value) {
                    eprintln!("could not restore {} to {value:?}: {e}", p.display());
                }
            }
        }
        changed
    }
}

/// A booted node. Drop (panic included) tears it down and puts the host's settings back;
/// `finish` does the same and then asserts that they equal those from before.
struct Node {
    dir: PathBuf,
    before: Settings,
    finished: bool,
    _guard: HostGuard,
}

impl Node {
    /// Tears down what an earlier run left under this test's directory, extracts the root
    /// filesystem and boots it. None (with the reason printed) when not root.
    fn boot(name: &str) -> Option<Node> {
        if !is_root() {
            eprintln!(
                "SKIPPED: booting systemd in a container needs root (./scripts/test.sh runs as root)"
            );
            return None;
        }
        let deb = deb();
        let guard = HostGuard::take();
        let dir = Path::new(WORK).join(name);
        let o = script(&["teardown".as_ref(), dir.as_os_str()]);
        assert!(o.status.success(), "node.sh teardown: {}", text(&o));
        let node = Node {
            dir,
            before: Settings::read(),
            finished: false,
            _guard: guard,
        };
        let t = Instant::now();
        node.script_ok("rootfs", &[]);
        eprintln!(
            "timing: root filesystem from the cached tar {:.1?}",
            t.elapsed()
        );
        std::fs::copy(deb, node.rootfs("root/redis-node-tuner.deb")).expect("copy the .deb");
        node.start();
        Some(node)
    }

    fn script_ok(&self, cmd: &str, extra: &[&str]) -> String {
        let mut args = vec![std::ffi::OsStr::new(cmd), self.dir.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let o = script(&args);
        assert!(
            o.status.success(),
            "node.sh {cmd} {}: {}",
            self.dir.display(),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn rootfs(&self, rel: &str) -> PathBuf {
        self.dir.join("rootfs").join(rel)
    }

    fn start(&self) {
        let t = Instant::now();
        self.script_ok("boot", &[]);
        eprintln!("timing: boot to `running` {:.1?}", t.elapsed());
    }

    /// `sh -c CMD` inside the node.
    fn sh(&self, cmd: &str) -> Output {
        script(&[
            "enter".as_ref(),
            self.dir.as_os_str(),
            "sh".as_ref(),
            "-c".as_ref(),
            cmd.as_ref(),
        ])
    }

    /// `sh -c CMD` inside the node, which must succeed; its stdout.
    fn ok(&self, cmd: &str) -> String {
        let o = self.sh(cmd);
        assert!(o.status.success(), "in the node: {cmd}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `systemctl show` of these properties (timestamps in UTC with microseconds).
    fn show(&self, unit: &str, props: &[&str]) -> HashMap<String, String> {
        let out = self.ok(&format!(
            "systemctl show --timestamp=us+utc -p {} {unit}",
            props.join(",")
        ));
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The journal's cursor now.
    fn cursor(&self) -> String {
        let out = self.ok("journalctl -q -n 0 --show-cursor");
        out.lines()
            .find_map(|l| l.strip_prefix("-- cursor: "))
            .unwrap_or_else(|| panic!("no cursor in {out:?}"))
            .to_string()
    }

    /// The agent's log lines (this boot, after `cursor`) once `done` holds for them (journald
    /// reads the agent's stderr asynchronously), at most 15 s.
    fn agent_log(&self, after: Option<&str>, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let after = after
            .map(|c| format!(" --after-cursor='{c}'"))
            .unwrap_or_default();
        let mut lines = vec![];
        let complete = wait_for(Duration::from_secs(15), || {
            let raw = self.ok(&format!("journalctl -b -u {UNIT} -o cat --no-pager{after}"));
            assert!(
                !raw.contains('\u{1b}'),
                "escape sequences in the journal: {raw:?}"
            );
            lines = raw.lines().map(String::from).collect();
            done(&lines)
        });
        eprintln!("{UNIT} journal:\n{}", lines.join("\n"));
        assert!(
            complete,
            "the journal does not show what was expected (above)"
        );
        lines
    }

    /// The knob inside the node (its own network namespace for net.*).
    fn knob(&self, path: &str) -> String {
        selected(&self.ok(&format!("cat {path}")))
    }

    fn install(&self) {
        let o =
            self.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y /root/redis-node-tuner.deb");
        assert!(o.status.success(), "apt-get install the .deb: {}", text(&o));
    }

    /// The agent's main PID (in the node's PID namespace).
    fn main_pid(&self) -> String {
        let pid = self.show(UNIT, &["MainPID"])["MainPID"].clone();
        assert_ne!(pid, "0", "{UNIT} has no main process");
        pid
    }

    fn teardown(&self) {
        if std::thread::panicking() {
            let o =
                self.sh("journalctl -b --no-pager | tail -n 150; systemctl --failed --no-pager");
            eprintln!("--- the node's journal (end)\n{}", text(&o));
            let console = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
            eprintln!("--- console (end)\n{}", tail(&console, 60));
        }
        let o = script(&["teardown".as_ref(), self.dir.as_os_str()]);
        if !o.status.success() {
            eprintln!("node.sh teardown: {}", text(&o));
        }
    }

    /// Tears down, puts the host's settings back, and asserts that they equal those from
    /// before the node existed (point 6).
    fn finish(mut self) {
        self.finished = true;
        self.teardown();
        assert!(!self.dir.exists(), "teardown left {}", self.dir.display());
        let put_back = self.before.restore();
        eprintln!("host settings changed by this test, put back: {put_back:#?}");
        let diff = self.before.diff(&Settings::read());
        assert!(
            diff.is_empty(),
            "host kernel settings differ from before: {diff:#?}"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.finished {
            self.teardown();
            let put_back = self.before.restore();
            eprintln!("host settings put back: {put_back:#?}");
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The host's knob file (the container shares this kernel).
fn host(path: &str) -> String {
    selected(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}")))
}

fn host_write(path: &str, v: &str) {
    std::fs::write(path, v).unwrap_or_else(|e| panic!("write {v} to {path}: {e}"));
}

fn thp(file: &str) -> String {
    format!("{THP}/{file}")
}

/// The per-size THP `enabled` files of this kernel (Linux 6.8+).
fn thp_sizes() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(THP)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("enabled"))
                .filter(|p| p.to_string_lossy().contains("hugepages-") && p.is_file())
                .map(|p| p.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A systemd timestamp (`Thu 2026-11-26 14:09:36.559123 UTC`) or the agent's log timestamp
/// (`2026-11-26T14:09:36.559123Z`) as `2026-11-26 14:09:36.559123`: comparable as text.
fn instant(s: &str) -> String {
    let s = s.trim();
    let s = s
        .split_once(' ')
        .filter(|(d, _)| d.len() == 3)
        .map_or(s, |(_, r)| r);
    let s = s
        .trim_end_matches(" UTC")
        .trim_end_matches('Z')
        .replacen('T', " ", 1);
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    assert_eq!(whole.len(), 19, "not a timestamp: {s:?}");
    format!("{whole}.{:0<6}", &frac[..frac.len().min(6)])
}

/// The timestamps of the agent's log lines holding `message` and `knob`.
fn logged_at(log: &[String], message: &str, knob: &str) -> Vec<String> {
    log.iter()
        .filter(|l| l.contains(message) && l.contains(knob))
        .filter_map(|l| l.split_whitespace().next())
        .map(instant)
        .collect()
}

/// Redis's own log in the node's root filesystem, once it says it is ready.
fn redis_log(node: &Node) -> String {
    let p = node.rootfs(REDIS_LOG);
    let mut log = String::new();
    let ready = wait_for(Duration::from_secs(20), || {
        log = std::fs::read_to_string(&p).unwrap_or_default();
        log.contains("Ready to accept connections")
    });
    assert!(ready, "redis-server did not log that it is ready: {log}");
    log
}

fn assert_tuned(node: &Node) {
    assert_eq!(host(OVERCOMMIT_PATH), "1");
    assert_eq!(node.knob(SOMAXCONN), "2048");
    assert_eq!(host(&thp("enabled")), "never");
    assert_eq!(host(&thp("defrag")), "never");
    for f in thp_sizes() {
        let v = host(&f);
        assert!(v == "never" || v == "inherit", "{f}: {v}");
    }
}

/// Point 1: the package installs in the booted node; the unit is enabled and reaches
/// active (running) only after its first pass, with a status saying whether it is in tune.
#[test]
fn deb_installs_enabled_and_active_only_after_the_first_pass() {
    let Some(node) = Node::boot("install") else {
        return;
    };
    // The node booted untuned (untuned-kernel.service: overcommit 0, somaxconn 128, THP always/madvise).
    assert_eq!(host(OVERCOMMIT_PATH), "0");
    assert_eq!(node.knob(SOMAXCONN), "128");
    assert_eq!(host(&thp("enabled")), "always");

    node.install();
    // No wait: the postinst's `systemctl start` returned once systemd saw READY=1.
    assert_tuned(&node);
    assert_eq!(
        node.ok(&format!("systemctl is-enabled {UNIT}")).trim(),
        "enabled"
    );
    let s = node.show(
        UNIT,
        &[
            "Type",
            "ActiveState",
            "SubState",
            "StatusText",
            "ExecMainStartTimestamp",
            "ActiveEnterTimestamp",
            "NRestarts",
        ],
    );
    eprintln!("{s:#?}");
    assert_eq!(s["Type"], "notify");
    assert_eq!(
        (s["ActiveState"].as_str(), s["SubState"].as_str()),
        ("active", "running")
    );
    assert_eq!(s["StatusText"], "every enforce-mode setting is in sync");
    assert_eq!(s["NRestarts"], "0");
    let started = instant(&s["ExecMainStartTimestamp"]);
    let active = instant(&s["ActiveEnterTimestamp"]);
    let log = node.agent_log(None, |l| l.iter().any(|l| l.contains("node ready")));
    // Every correction of the first pass was logged (by the agent, with its own clock) before
    // systemd recorded the unit active: Type=notify waited for the pass.
    for knob in [
        "vm.overcommit_memory",
        "net.core.somaxconn",
        "thp.enabled",
        "thp.defrag",
    ] {
        let at = logged_at(&log, "drift corrected", knob);
        assert_eq!(at.len(), 1, "one `drift corrected` of {knob}: {log:#?}");
        assert!(
            started <= at[0] && at[0] <= active,
            "{knob} corrected at {} (started {started}, active {active})",
            at[0]
        );
    }
    let status = node.ok(&format!("systemctl status --no-pager {UNIT}"));
    assert!(status.contains("active (running)"), "{status}");
    assert!(
        status.contains("Status: \"every enforce-mode setting is in sync\""),
        "{status}"
    );
    node.finish();
}

fn warnings(log: &str) -> Vec<&str> {
    [BACKLOG_WARN, OVERCOMMIT_WARN, THP_WARN]
        .into_iter()
        .filter(|w| log.contains(w))
        .collect()
}

/// Point 2: on an untuned node without the tuner Redis warns (backlog, overcommit, THP); with
/// the package installed, after a reboot redis-server starts after the tuner and its log has
/// none of these warnings.
#[test]
fn after_a_reboot_redis_starts_after_the_tuner_and_does_not_warn() {
    let Some(node) = Node::boot("reboot") else {
        return;
    };
    // Without the tuner: the node as it boots.
    let untuned = redis_log(&node);
    assert_eq!(
        warnings(&untuned),
        [BACKLOG_WARN, OVERCOMMIT_WARN, THP_WARN],
        "Redis's log on an untuned node:\n{untuned}"
    );

    node.install();
    let after = node.show("redis-server.service", &["After", "Wants", "DropInPaths"]);
    assert!(
        after["After"].split_whitespace().any(|u| u == UNIT),
        "{after:?}"
    );
    assert!(
        after["Wants"].split_whitespace().any(|u| u == UNIT),
        "{after:?}"
    );

    // Reboot, with Redis's log emptied. The boot sets the untuned values again
    // (untuned-kernel.service, early): Redis sees tuned ones only if the tuner ran first.
    node.script_ok("stop", &[]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(node.rootfs(REDIS_LOG))
        .and_then(|f| f.set_len(0))
        .expect("empty Redis's log");
    node.start();

    let untune = node.show("untuned-kernel.service", &["ActiveState", "ExecMainStatus"]);
    assert_eq!(untune["ActiveState"], "active", "{untune:?}");
    assert_eq!(untune["ExecMainStatus"], "0", "{untune:?}");
    let log = node.agent_log(None, |l| l.iter().any(|l| l.contains("node ready")));
    for knob in ["vm.overcommit_memory", "net.core.somaxconn", "thp.enabled"] {
        assert_eq!(
            logged_at(&log, "drift corrected", knob).len(),
            1,
            "{knob} corrected at boot: {log:#?}"
        );
    }
    let tuner = node.show(UNIT, &["ActiveEnterTimestamp", "ActiveState"]);
    let redis = node.show(
        "redis-server.service",
        &["ExecMainStartTimestamp", "ActiveState"],
    );
    eprintln!("tuner: {tuner:?}\nredis-server: {redis:?}");
    assert_eq!(tuner["ActiveState"], "active");
    assert_eq!(redis["ActiveState"], "active");
    let (ready, forked) = (
        instant(&tuner["ActiveEnterTimestamp"]),
        instant(&redis["ExecMainStartTimestamp"]),
    );
    assert!(
        ready <= forked,
        "redis-server started at {forked}, before the tuner was ready at {ready}"
    );
    let chain = node.ok("systemd-analyze critical-chain --no-pager redis-server.service");
    eprintln!("systemd-analyze critical-chain redis-server.service:\n{chain}");
    assert!(chain.contains("redis-server.service"), "{chain}");

    let tuned = redis_log(&node);
    assert!(
        warnings(&tuned).is_empty(),
        "Redis's log after a reboot with the tuner:\n{tuned}"
    );
    node.finish();
}

/// HTTP GET from inside the node with bash's /dev/tcp; None when no connection within 3 s.
fn node_get(node: &Node, host: &str, path: &str) -> Option<String> {
    let o = node.sh(&format!(
        "timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/9977 && printf \"GET {path} HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'"
    ));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The status code of an HTTP response.
fn status(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Writes to `paths` from inside the agent's own mount namespace (as root with every
/// capability: only the mounts decide); `path: ok` or `path: <error>` per path. Knobs get their
/// current value back.
fn probe_writes(node: &Node, pid: &str, paths: &[&str]) -> BTreeMap<String, String> {
    let mut script = String::new();
    for p in paths {
        script += &format!(
            "if [ -d {p} ]; then f={p}/.probe; (: >$f && rm $f) 2>/tmp/e; else \
             v=$(cat {p}); case $v in *'['*) v=${{v#*[}}; v=${{v%%]*}};; esac; \
             (printf '%s\\n' \"$v\" >{p}) 2>/tmp/e; fi && echo '{p}: ok' || echo \"{p}: $(cat /tmp/e)\"; "
        );
    }
    let out = node.ok(&format!(
        "nsenter -t {pid} -m sh -c '{}'",
        script.replace('\'', "'\\''")
    ));
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Point 3: the unit's sandbox is in force under systemd (nspawn lets bpf() through): the agent
/// can write its knobs and its state directory and nothing else; IPAddressDeny= drops other
/// addresses; without ReadWritePaths= every write fails with EROFS and the unit reports not
/// ready.
#[test]
fn the_sandbox_is_in_force() {
    let Some(node) = Node::boot("sandbox") else {
        return;
    };
    node.install();
    assert_tuned(&node);
    let security = node.ok(&format!("systemd-analyze security --no-pager {UNIT}"));
    let level = exposure_level(&security).unwrap_or_else(|| panic!("{security}"));
    eprintln!("systemd-analyze security {UNIT} (under systemd): {level}");
    assert!(level <= 2.0, "{security}");

    let writable = [
        "/proc/sys/vm/overcommit_memory",
        SOMAXCONN,
        &thp("enabled"),
        &thp("defrag"),
        "/var/lib/redis-node-tuner",
    ];
    let read_only = [
        "/proc/sys/fs/file-max",
        "/proc/sys/kernel/panic",
        "/sys/kernel/mm/ksm/run",
        "/etc",
        "/usr/lib",
        "/var/lib",
        "/var/log",
    ];
    let all: Vec<&str> = writable.iter().chain(&read_only).map(|s| &**s).collect();
    let probe = probe_writes(&node, &node.main_pid(), &all);
    eprintln!("writes from the agent's mount namespace: {probe:#?}");
    for p in writable {
        assert_eq!(
            probe.get(p).map(String::as_str),
            Some("ok"),
            "{p}: {probe:#?}"
        );
    }
    for p in read_only
        .into_iter()
        .filter(|p| Path::new(p).exists() || !p.starts_with("/sys"))
    {
        let r = probe.get(p).map(String::as_str).unwrap_or("(missing)");
        assert!(r.contains("Read-only file system"), "{p}: {r}");
    }

    // IPAddressDeny=any, IPAddressAllow=localhost: listening on every address, the agent answers
    // 127.0.0.1 but a connection from another local address is dropped; the README's recipe
    // (IPAddressAllow= in a drop-in) lets it in.
    node.ok("ip address add 192.0.2.1/32 dev lo");
    let dropin = "/etc/systemd/system/redis-node-tuner.service.d";
    node.ok(&format!(
        "mkdir -p {dropin} && printf '[Service]\\nEnvironment=REDIS_NODE_TUNER_LISTEN=0.0.0.0:9977\\n' >{dropin}/listen.conf && systemctl daemon-reload && systemctl restart {UNIT}"
    ));
    let local = node_get(&node, "127.0.0.1", "/readyz").unwrap_or_default();
    assert!(
        status(&local) == Some(200),
        "/readyz on 127.0.0.1: {local:?}"
    );
    assert_eq!(
        node_get(&node, "192.0.2.1", "/readyz"),
        None,
        "IPAddressDeny=any let 192.0.2.1 in"
    );
    node.ok(&format!(
        "printf '[Service]\\nIPAddressAllow=192.0.2.1\\n' >{dropin}/allow.conf && systemctl daemon-reload && systemctl restart {UNIT}"
    ));
    let other = node_get(&node, "192.0.2.1", "/readyz").unwrap_or_default();
    assert!(
        status(&other) == Some(200),
        "/readyz on 192.0.2.1 once allowed: {other:?}"
    );

    // Negative control: ReadWritePaths= emptied. The node untuned from outside stays untuned.
    node.ok(&format!(
        "rm {dropin}/*.conf && printf '[Service]\\nReadWritePaths=\\n' >{dropin}/no-rw.conf && systemctl daemon-reload && systemctl stop {UNIT}"
    ));
    host_write(OVERCOMMIT_PATH, "0");
    host_write(&thp("enabled"), "always");
    node.ok(&format!("echo 128 >{SOMAXCONN}"));
    let cursor = node.cursor();
    node.ok(&format!("systemctl start {UNIT}"));
    let s = node.show(UNIT, &["ActiveState", "SubState", "StatusText"]);
    assert_eq!(
        (s["ActiveState"].as_str(), s["SubState"].as_str()),
        ("active", "running")
    );
    assert_eq!(s["StatusText"], "not ready: see /readyz or the logs");
    let log = node.agent_log(Some(&cursor), |l| {
        l.iter().filter(|l| l.contains("correction failed")).count() >= 3
    });
    for knob in ["vm.overcommit_memory", "net.core.somaxconn", "thp.enabled"] {
        assert!(
            log.iter().any(|l| l.contains("correction failed")
                && l.contains(knob)
                && l.contains("read-only file system")),
            "no EROFS `correction failed` for {knob}: {log:#?}"
        );
    }
    assert_eq!(host(OVERCOMMIT_PATH), "0");
    assert_eq!(host(&thp("enabled")), "always");
    assert_eq!(node.knob(SOMAXCONN), "128");
    let readyz = node_get(&node, "127.0.0.1", "/readyz").unwrap_or_default();
    assert!(status(&readyz) == Some(503), "{readyz}");

    // The drop-in gone, the shipped unit tunes again.
    node.ok(&format!(
        "rm {dropin}/no-rw.conf && systemctl daemon-reload && systemctl restart {UNIT}"
    ));
    assert_tuned(&node);
    node.finish();
}

/// Point 4: a foreign write is corrected, and the journal says so.
#[test]
fn drift_is_corrected_and_journalled() {
    let Some(node) = Node::boot("drift") else {
        return;
    };
    node.install();
    assert_tuned(&node);
    let cursor = node.cursor();
    host_write(OVERCOMMIT_PATH, "0");
    host_write(&thp("enabled"), "always");
    node.ok(&format!("echo 128 >{SOMAXCONN}"));
    let corrected = wait_for(Duration::from_secs(15), || {
        host(OVERCOMMIT_PATH) == "1"
            && host(&thp("enabled")) == "never"
            && node.knob(SOMAXCONN) == "2048"
    });
    assert!(corrected, "drift not corrected within 15 s");
    let log = node.agent_log(Some(&cursor), |l| {
        l.iter().filter(|l| l.contains("drift corrected")).count() >= 3
    });
    for knob in ["vm.overcommit_memory", "net.core.somaxconn", "thp.enabled"] {
        let detected = log
            .iter()
            .position(|l| l.contains("drift detected") && l.contains(knob));
        let fixed = log
            .iter()
            .position(|l| l.contains("drift corrected") && l.contains(knob));
        match (detected, fixed) {
            (Some(d), Some(f)) => assert!(d < f, "{knob}: corrected before detected: {log:#?}"),
            _ => panic!("{knob}: no `drift detected` then `drift corrected`: {log:#?}"),
        }
    }
    // The unit holds no capability: inotify found the write made through the procfs the agent
    // watches (the node's own `echo`). The node is a container with a procfs of its own and
    // the sysfs of its own network namespace, so the host's writes to overcommit and THP came
    // through another procfs and another sysfs: no watch sees those, the poll did (README,
    // "Writer watch"). On a real host there is one of each.
    for (knob, by) in [
        ("net.core.somaxconn", "inotify"),
        ("thp.enabled", "poll"),
        ("vm.overcommit_memory", "poll"),
    ] {
        assert!(
            log.iter().any(|l| l.contains("drift detected")
                && l.contains(knob)
                && (l.contains(&format!("seen_by={by}"))
                    || l.contains(&format!("seen_by=\"{by}\"")))),
            "{knob}: not found by {by}: {log:#?}"
        );
    }
    assert_eq!(
        node.show(UNIT, &["StatusText"])["StatusText"],
        "every enforce-mode setting is in sync"
    );
    node.finish();
}

/// Point 5: `systemctl stop` leaves the knobs as they are; `restore` puts the originals back;
/// `apt-get remove` leaves the kernel, the config and the journal; `purge` prints the journal
/// and removes config and state. Nothing else is left: no unit, no drop-in, no enablement.
#[test]
fn stop_restore_remove_and_purge_do_what_the_readme_says() {
    let Some(node) = Node::boot("uninstall") else {
        return;
    };
    node.install();
    assert_tuned(&node);
    node.ok(&format!("systemctl stop {UNIT}"));
    assert_eq!(node.show(UNIT, &["ActiveState"])["ActiveState"], "inactive");
    assert_tuned(&node);

    // The journal holds the values from before the first install: what the node booted with.
    let journal = node.ok("cat /var/lib/redis-node-tuner/originals.json");
    let out = node.ok("redis-node-tuner restore");
    eprintln!("restore: {out}");
    assert_eq!(host(OVERCOMMIT_PATH), "0");
    assert_eq!(node.knob(SOMAXCONN), "128");
    assert_eq!(host(&thp("enabled")), "always");
    assert_eq!(host(&thp("defrag")), "madvise");
    assert!(
        !node
            .rootfs("var/lib/redis-node-tuner/originals.json")
            .exists()
    );

    // Started again, it tunes (and journals the originals again); remove leaves the kernel tuned.
    node.ok(&format!("systemctl start {UNIT}"));
    assert_tuned(&node);
    let o = node.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y redis-node-tuner");
    assert!(o.status.success(), "apt-get remove: {}", text(&o));
    assert_tuned(&node);
    let gone = |rel: &str| !node.rootfs(rel).exists();
    assert!(gone("usr/bin/redis-node-tuner"));
    assert!(gone("usr/lib/systemd/system/redis-node-tuner.service"));
    assert!(gone(
        "usr/lib/systemd/system/redis-server.service.d/redis-node-tuner.conf"
    ));
    assert!(
        !gone("etc/redis-node-tuner/config.yaml"),
        "remove keeps the config"
    );
    assert!(
        !gone("var/lib/redis-node-tuner/originals.json"),
        "remove keeps the journal"
    );
    // deb-systemd-helper masks a removed package's unit until purge.
    let s = node.show(UNIT, &["LoadState", "ActiveState"]);
    eprintln!("after remove: {s:?}");
    assert!(
        matches!(s["LoadState"].as_str(), "not-found" | "masked"),
        "{s:?}"
    );
    assert_eq!(s["ActiveState"], "inactive");
    let after = node.show("redis-server.service", &["After", "DropInPaths"]);
    assert!(!after["After"].contains(UNIT), "{after:?}");

    let o = node.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y redis-node-tuner");
    assert!(o.status.success(), "apt-get purge: {}", text(&o));
    let printed =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("the node's values before tuning were"),
        "{}",
        text(&o)
    );
    assert!(journal.contains("vm.overcommit_memory"), "{journal}");
    assert_tuned(&node);
    assert!(gone("etc/redis-node-tuner"));
    assert!(gone("var/lib/redis-node-tuner"));
    let leftovers = node.ok(
        "find / -xdev -name '*redis-node-tuner*' ! -path /root/redis-node-tuner.deb ! -path '/var/log/*' ! -path '/var/tmp/systemd-private-*'; \
         grep -h redis-node-tuner /etc/passwd /etc/group || true",
    );
    assert_eq!(leftovers.trim(), "", "left after purge");
    node.finish();
}

/// The README's bare-metal quickstart, as written (issue 22): its build block's `cargo deb` is
/// the one [`deb`] runs (which adds only `--no-strip` and `--output`); its node block runs line
/// by line, in /root of a booted node holding the package under its own name: `check` exits 1
/// on the untuned kernel, every other line 0, and the node ends tuned with the unit running.
#[test]
fn the_readme_bare_metal_quickstart_runs_as_written() {
    let blocks = common::readme_sh_blocks("## Bare-metal quickstart (systemd)");
    assert!(
        blocks.len() >= 2,
        "a build block and a node block first: {blocks:#?}"
    );
    assert!(
        blocks[0]
            .lines()
            .any(|l| l == "cargo install cargo-deb --version 3.8.0 --locked"),
        "{}",
        blocks[0]
    );
    let cargo_deb: Vec<&str> = blocks[0]
        .lines()
        .find(|l| l.starts_with("cargo deb"))
        .and_then(|l| l.split('#').next())
        .expect("a `cargo deb` line")
        .split_whitespace()
        .collect();
    assert_eq!(cargo_deb, ["cargo", "deb", "--target", common::deb::TARGET]);

    let Some(node) = Node::boot("readme") else {
        return;
    };
    let name = format!("redis-node-tuner_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    std::fs::copy(deb(), node.rootfs(&format!("root/{name}"))).expect("copy the .deb");
    let mut ran = 0;
    for line in blocks[1]
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let o = node.sh(&format!("cd /root && {line}"));
        let want = if line.contains("redis-node-tuner check") {
            1
        } else {
            0
        };
        eprintln!("node$ {line}\n{}", tail(&text(&o), 12));
        assert_eq!(o.status.code(), Some(want), "{line}: {}", text(&o));
        if line.starts_with("systemctl status") {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.contains("active (running)"), "{out}");
        }
        if line.starts_with("curl") {
            assert!(!o.stdout.is_empty(), "/readyz answered nothing");
        }
        ran += 1;
    }
    assert_eq!(ran, 5, "the node block's five commands");
    assert_tuned(&node);
    node.finish();
}
