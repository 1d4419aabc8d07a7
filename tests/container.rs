//! The container image (`Containerfile`, `scripts/build-image.sh`): a static musl binary in a
//! `FROM scratch` image, built and run with podman exactly as the DaemonSet runs it — uid 0 with
//! every capability dropped, host network, read-only root, no new privileges, and rw bind mounts
//! of ONLY the host's `/proc/sys/vm`, `/proc/sys/net/core` and
//! `/sys/kernel/mm/transparent_hugepage` under `/host` — and shown to read and correct this
//! machine's knobs. Every test that changes a host knob holds a guard that writes the saved
//! values back when it ends (panic included); they run one at a time.
//!
//! Needs root, `podman` + `runc` (Debian), and the rustup target `x86_64-unknown-linux-musl`.

mod common;
use common::host::{HostGuard, is_root, selected};
use common::require;
use common::{has_line, repo, text};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/redis-node-tuner:test";
const THP: &str = "/sys/kernel/mm/transparent_hugepage";
const OVERCOMMIT: &str = "/proc/sys/vm/overcommit_memory";
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

static SERIAL: Mutex<()> = Mutex::new(());
static BUILT: OnceLock<()> = OnceLock::new();

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Podman as it works on these machines (crun fails on their cgroup layout).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// Builds the image once per test binary with the project's own script.
fn image() -> &'static str {
    BUILT.get_or_init(|| {
        assert!(is_root(), "the container tests need root");
        require("podman");
        require("runc");
        let t = Instant::now();
        let out = Command::new(repo().join("scripts/build-image.sh"))
            .arg(IMAGE)
            .current_dir(repo())
            .env(
                "CARGO",
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .output()
            .expect("run scripts/build-image.sh");
        assert!(out.status.success(), "build-image.sh: {}", text(&out));
        let last = String::from_utf8_lossy(&out.stdout);
        assert_eq!(last.lines().last(), Some(IMAGE), "{}", text(&out));
        eprintln!("image {IMAGE} built in {:.1?}", t.elapsed());
    });
    IMAGE
}

fn inspect(format: &str) -> String {
    let out = podman()
        .args(["image", "inspect", "--format", format, image()])
        .output()
        .expect("podman image inspect");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn read(p: &str) -> String {
    selected(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {p}: {e}")))
}

fn write(p: &str, v: &str) {
    std::fs::write(p, v).unwrap_or_else(|e| panic!("write {v:?} to {p}: {e}"));
}

/// What the DaemonSet gives the agent, and why.
struct Privileges {
    /// Mount the three knob directories read-only instead (to prove rw is what writes).
    knobs_ro: bool,
    /// Also bind-mount the host's network namespace file at /host/proc/1/ns/net (read-only), as
    /// a DaemonSet can with a hostPath of the node's /proc/1/ns/net. (On the test machines PID
    /// 1's namespace links answer EACCES even to root, so the test mounts its own process's,
    /// which is the namespace of the host's knobs.)
    netns_file: bool,
    /// `podman run -d` instead of `--rm` in the foreground.
    detach: Option<String>,
}

const DAEMONSET: Privileges = Privileges {
    knobs_ro: false,
    netns_file: false,
    detach: None,
};

fn run_args(p: &Privileges, state: &Path, args: &[&str]) -> Command {
    let mode = if p.knobs_ro { "ro" } else { "rw" };
    let mut c = podman();
    c.arg("run");
    match &p.detach {
        Some(name) => c.args(["-d", "--name", name]),
        None => c.args(["--rm"]),
    };
    c.args([
        "--ulimit=nofile=1024:1024",
        "--ulimit=nproc=1000:1000",
        // securityContext: runAsUser 0, capabilities drop ALL, allowPrivilegeEscalation false,
        // readOnlyRootFilesystem true; hostNetwork true (somaxconn is per network namespace).
        "--user=0:0",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--read-only",
        "--network=host",
        // hostPath mounts: only the knobs' directories, and the journal.
        &format!("--volume=/proc/sys/vm:/host/proc/sys/vm:{mode}"),
        &format!("--volume=/proc/sys/net/core:/host/proc/sys/net/core:{mode}"),
        &format!("--volume={THP}:/host{THP}:{mode}"),
        &format!("--volume={}:/var/lib/redis-node-tuner:rw", state.display()),
    ]);
    if p.netns_file {
        c.arg(format!(
            "--volume=/proc/{}/ns/net:/host/proc/1/ns/net:ro",
            std::process::id()
        ));
    }
    c.arg(image());
    c.args(args);
    c.args(["--proc-root", "/host/proc", "--sys-root", "/host/sys"]);
    c
}

fn run(p: &Privileges, state: &Path, args: &[&str]) -> Output {
    let out = run_args(p, state, args)
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    eprintln!("podman run ... {}: {}", args.join(" "), text(&out));
    out
}

/// The STATE column (the last) of `knob`'s row in the text table.
fn knob_state(stdout: &str, knob: &str) -> String {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(knob))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no row {knob} in:\n{stdout}"))
        .to_string()
}

fn state_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn image_is_scratch_static_small_and_runs_the_agent() {
    let _s = serial();
    let image = image();
    assert_eq!(
        inspect("{{json .Config.Entrypoint}}"),
        r#"["/usr/bin/redis-node-tuner"]"#
    );
    assert_eq!(
        inspect("{{json .Config.Cmd}}"),
        r#"["run","--listen",":9977"]"#
    );
    assert_eq!(inspect("{{.Config.User}}"), "0:0");
    assert!(
        inspect("{{json .Config.Volumes}}").contains("/var/lib/redis-node-tuner"),
        "state dir volume"
    );
    // FROM scratch: one layer, the binary.
    assert_eq!(
        inspect("{{len .RootFS.Layers}}"),
        "1",
        "FROM scratch + one COPY"
    );
    let size: u64 = inspect("{{.Size}}").parse().expect("size");
    eprintln!(
        "image size: {size} bytes ({:.1} MiB)",
        size as f64 / 1048576.0
    );
    assert!(size < 40 << 20, "image is {size} bytes");

    let out = podman()
        .args([
            "run",
            "--rm",
            "--ulimit=nofile=1024:1024",
            "--ulimit=nproc=1000:1000",
        ])
        .args([
            "--network=none",
            "--cap-drop=all",
            "--read-only",
            image,
            "--version",
        ])
        .output()
        .expect("podman run");
    assert!(out.status.success(), "{}", text(&out));
    let version = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        version.trim(),
        format!("redis-node-tuner {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn daemonset_privileges_read_and_correct_the_host_knobs_then_restore() {
    // Build the image first: the release build must not hold the host-knob lock.
    image();
    let _g = HostGuard::take();
    let state = state_dir();
    write(OVERCOMMIT, "0");
    write(&format!("{THP}/enabled"), "always");
    write(&format!("{THP}/defrag"), "always");

    // check: reads the host's values through the mounts; writes nothing.
    let out = run(&DAEMONSET, state.path(), &["check", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check json");
    let actual = |name: &str| {
        json["settings"]
            .as_array()
            .expect("settings")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {json}"))["actual"]
            .clone()
    };
    assert_eq!(actual("vm.overcommit_memory"), "0");
    assert_eq!(actual("thp.enabled"), "always");
    assert_eq!(actual("thp.defrag"), "always");
    assert_eq!(json["ready"], false);
    assert!(
        json["netns"]
            .as_str()
            .is_some_and(|n| n.starts_with("unverified: cannot read /host/proc/1/ns/net")),
        "{json}"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "somaxconn unreadable: {}",
        text(&out)
    );
    assert_eq!(read(OVERCOMMIT), "0", "check wrote");

    // apply: corrects the host's global knobs. somaxconn cannot be verified: with only these
    // mounts there is no /host/proc/1/ns/net, so it is reported (not written, not in sync).
    let out = run(&DAEMONSET, state.path(), &["apply"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.contains("changed vm.overcommit_memory: 0 -> 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("changed thp.enabled: always -> never"),
        "{stdout}"
    );
    assert!(
        stdout.contains("changed thp.defrag: always -> never"),
        "{stdout}"
    );
    assert_eq!(knob_state(&stdout, "vm.overcommit_memory"), "in_sync");
    assert_eq!(knob_state(&stdout, "thp.enabled"), "in_sync");
    assert_eq!(knob_state(&stdout, "thp.defrag"), "in_sync");
    assert_eq!(knob_state(&stdout, "net.core.somaxconn"), "error");
    assert!(
        stdout.contains("net.core.somaxconn: not verified to be the host's network namespace")
            && stdout.contains("/host/proc/1/ns/net"),
        "{stdout}"
    );
    assert!(!stdout.contains("changed net.core.somaxconn"), "{stdout}");
    assert_eq!(read(OVERCOMMIT), "1");
    assert_eq!(read(&format!("{THP}/enabled")), "never");
    assert_eq!(read(&format!("{THP}/defrag")), "never");

    // The journal in the mounted state dir holds the host's originals.
    let journal = std::fs::read_to_string(state.path().join("originals.json")).expect("journal");
    assert!(journal.contains("vm.overcommit_memory"), "{journal}");
    assert!(journal.contains("always"), "{journal}");

    // restore (from the same state volume) puts the host back.
    let out = run(&DAEMONSET, state.path(), &["restore"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(read(OVERCOMMIT), "0");
    assert_eq!(read(&format!("{THP}/enabled")), "always");
    assert_eq!(read(&format!("{THP}/defrag")), "always");
    assert!(!state.path().join("originals.json").exists());
}

#[test]
fn read_only_knob_mounts_write_nothing() {
    // Build the image first: the release build must not hold the host-knob lock.
    image();
    let _g = HostGuard::take();
    let state = state_dir();
    write(OVERCOMMIT, "0");
    write(&format!("{THP}/enabled"), "always");
    let ro = Privileges {
        knobs_ro: true,
        ..DAEMONSET
    };
    let out = run(&ro, state.path(), &["apply"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout.contains("failed"), "{stdout}");
    assert_eq!(knob_state(&stdout, "vm.overcommit_memory"), "drift");
    assert_eq!(read(OVERCOMMIT), "0");
    assert_eq!(read(&format!("{THP}/enabled")), "always");
}

#[test]
fn with_the_host_netns_file_somaxconn_is_verified_and_corrected() {
    // Build the image first: the release build must not hold the host-knob lock.
    image();
    let _g = HostGuard::take();
    let state = state_dir();
    write(OVERCOMMIT, "0");
    write(SOMAXCONN, "1024");
    let p = Privileges {
        netns_file: true,
        ..DAEMONSET
    };
    let out = run(&p, state.path(), &["apply"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout.contains("changed net.core.somaxconn: 1024 -> 2048"),
        "{stdout}"
    );
    assert_eq!(knob_state(&stdout, "net.core.somaxconn"), "in_sync");
    assert!(stdout.contains("node: ready"), "{stdout}");
    assert_eq!(read(SOMAXCONN), "2048");
    assert_eq!(read(OVERCOMMIT), "1");

    let out = run(&p, state.path(), &["check", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["netns"], "shared with PID 1 under --proc-root");
}

/// One HTTP/1.0 GET on loopback: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Some((status, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Removes the named container on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "-f", "-t", "2", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn daemon_in_the_container_keeps_the_host_tuned_and_stops_on_sigterm() {
    // Build the image first: the release build must not hold the host-knob lock.
    image();
    let _g = HostGuard::take();
    let state = state_dir();
    write(OVERCOMMIT, "0");
    let port = free_port();
    let name = format!("rnt-test-{}", std::process::id());
    let _c = Container(name.clone());
    let p = Privileges {
        netns_file: true,
        detach: Some(name.clone()),
        ..DAEMONSET
    };
    let listen = format!("127.0.0.1:{port}");
    let out = run(
        &p,
        state.path(),
        &["run", "--listen", &listen, "--interval", "200ms"],
    );
    assert!(out.status.success(), "{}", text(&out));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, _)) = get(port, "/readyz") {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never 200");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(read(OVERCOMMIT), "1");
    // Drift behind its back is corrected.
    write(&format!("{THP}/enabled"), "always");
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&format!("{THP}/enabled")) != "never" {
        assert!(Instant::now() < deadline, "THP drift not corrected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, metrics) = get(port, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    assert!(
        has_line(&metrics, "redis_node_tuner_node_ready 1"),
        "{metrics}"
    );

    // podman stop sends SIGTERM: the agent exits 0.
    let out = podman()
        .args(["stop", "-t", "10", &name])
        .output()
        .expect("podman stop");
    assert!(out.status.success(), "{}", text(&out));
    let out = podman()
        .args(["inspect", "--format", "{{.State.ExitCode}}", &name])
        .output()
        .expect("podman inspect");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        text(&out)
    );
    let logs = podman().args(["logs", &name]).output().expect("logs");
    let logs =
        String::from_utf8_lossy(&logs.stderr).to_string() + &String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("SIGTERM"), "{logs}");
}
