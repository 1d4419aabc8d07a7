//! Against the real kernel: network namespaces the test creates, and the host's global knobs
//! (overcommit, THP), whose values are put back when each test ends, also on failure. Needs
//! root, `ip` (iproute2) and `redis-server`. The tests of this file run one at a time.

mod common;
use common::host::{HostGuard, OVERCOMMIT_PATH, THP, read, selected, write};
use common::netns::NetNs;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::fs::MetadataExt;

use redis_node_tuner::kernel::{HostFs, NetnsStatus};
use redis_node_tuner::profile::Profile;

fn host_somaxconn() -> String {
    read(Path::new("/proc/sys/net/core/somaxconn"))
        .trim()
        .to_string()
}

fn somaxconn_only(dir: &Path) -> String {
    let p = dir.join("somaxconn-only.yaml");
    write(
        &p,
        "mode: off\nsysctls:\n  net.core.somaxconn: {mode: enforce}\n",
    );
    p.to_string_lossy().into_owned()
}

#[test]
fn somaxconn_is_set_in_the_agents_network_namespace_only() {
    let _g = HostGuard::take();
    let ns = NetNs::new("own");
    ns.set_somaxconn("128");
    let host_before = host_somaxconn();
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let cfg = somaxconn_only(tmp.path());

    let out = ns.tuner(&state, &["--config", &cfg, "check"]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = ns.tuner(&state, &["--config", &cfg, "apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(ns.somaxconn().parse::<i64>().expect("int") >= 2048);
    assert_eq!(
        host_somaxconn(),
        host_before,
        "the host's value must not change"
    );

    // A restore from another namespace refuses to write this namespace's original there.
    let out = Out::of(
        Command::new(BIN)
            .args(["--state-dir", &state.to_string_lossy(), "restore"])
            .output()
            .expect("spawn"),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("was recorded in network namespace"),
        "{out:?}"
    );
    assert_eq!(host_somaxconn(), host_before);

    let out = ns.tuner(&state, &["restore"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(ns.somaxconn(), "128");
}

/// A proc root whose `sys` is the real /proc/sys and whose PID 1 lives in `ns`: the agent must
/// enter that namespace (on its own thread) to reach "the host's" somaxconn.
fn proc_root_in(ns: &NetNs, dir: &Path) -> PathBuf {
    let root = dir.join("hostproc");
    std::fs::create_dir_all(root.join("1/ns")).expect("mkdir");
    std::os::unix::fs::symlink("/proc/sys", root.join("sys")).expect("symlink sys");
    std::os::unix::fs::symlink(ns.path(), root.join("1/ns/net")).expect("symlink ns");
    root
}

#[test]
fn a_foreign_proc_root_makes_the_agent_enter_pid1s_network_namespace() {
    let _g = HostGuard::take();
    let ns = NetNs::new("enter");
    ns.set_somaxconn("128");
    let host_before = host_somaxconn();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = proc_root_in(&ns, tmp.path());
    let cfg = somaxconn_only(tmp.path());
    let state = tmp.path().join("state");
    let run = |args: &[&str]| {
        Out::of(
            Command::new(BIN)
                .arg("--proc-root")
                .arg(&root)
                .arg("--state-dir")
                .arg(&state)
                .args(["--config", &cfg])
                .args(args)
                .output()
                .expect("spawn"),
        )
    };
    let out = run(&["check", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(
        v["netns"].as_str().unwrap_or("").starts_with("entered"),
        "{v}"
    );
    assert_eq!(v["settings"][0]["actual"], "128", "{v}");
    let out = run(&["apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(ns.somaxconn(), "2048");
    assert_eq!(host_somaxconn(), host_before);

    // The kernel's EINVAL comes back as a clear error naming knob and file; value unchanged.
    let mut fs = HostFs::new(&root, "/sys");
    let profile = Profile::from_yaml(&read(Path::new(&cfg))).expect("profile");
    let mut targets = redis_node_tuner::reconcile::resolve(&fs, &profile);
    let e = fs.write(&mut targets[0].file, "-1").expect_err("EINVAL");
    assert_eq!(e.kind(), "invalid", "{e}");
    assert!(
        e.to_string().contains("net.core.somaxconn")
            && e.to_string().contains("somaxconn (EINVAL)"),
        "{e}"
    );
    assert_eq!(ns.somaxconn(), "2048");

    // The agent entered PID 1's namespace: its net.* files are opened in the test's namespace
    // (not this process's), and an outside proof does not replace that.
    let ns_ino = std::fs::metadata(ns.path()).expect("netns file").ino();
    let own_ino = std::fs::metadata("/proc/self/ns/net")
        .expect("own netns")
        .ino();
    assert_ne!(ns_ino, own_ino);
    let entered = NetnsStatus::Entered {
        ns_file: root.join("1/ns/net"),
    };
    assert_eq!(fs.netns(), &entered);
    assert_eq!(fs.net_ns_ino(), Some(ns_ino));
    fs.assert_host_netns("no effect once entered");
    assert_eq!(fs.netns(), &entered);
    assert_eq!(fs.net_ns_ino(), Some(ns_ino));
}

#[test]
fn overcommit_and_thp_are_applied_and_restored_on_the_host() {
    let _g = HostGuard::take();
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    write(Path::new(OVERCOMMIT_PATH), "0");
    write(&Path::new(THP).join("enabled"), "always");
    write(&Path::new(THP).join("defrag"), "madvise");
    let size_2m = Path::new(THP).join("hugepages-2048kB/enabled");
    let has_2m = size_2m.exists();
    if has_2m {
        write(&size_2m, "always");
    }
    let tuner = |args: &[&str]| {
        Out::of(
            Command::new(BIN)
                .arg("--state-dir")
                .arg(&state)
                .args(args)
                .output()
                .expect("spawn"),
        )
    };
    let out = tuner(&["check"]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = tuner(&["apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(read(Path::new(OVERCOMMIT_PATH)).trim(), "1");
    assert_eq!(selected(&read(&Path::new(THP).join("enabled"))), "never");
    assert_eq!(selected(&read(&Path::new(THP).join("defrag"))), "never");
    if has_2m {
        assert_eq!(selected(&read(&size_2m)), "never");
    }
    assert_eq!(tuner(&["check"]).code, 0);

    let out = tuner(&["restore"]);
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "restored vm.overcommit_memory: 0",
        "restored thp.enabled: always",
        "restored thp.defrag: madvise",
    ] {
        assert!(out.stdout.contains(line), "{line:?} missing: {out:?}");
    }
    assert!(
        !state.join("originals.json").exists(),
        "journal left after a full restore"
    );
    assert_eq!(read(Path::new(OVERCOMMIT_PATH)).trim(), "0");
    assert_eq!(selected(&read(&Path::new(THP).join("enabled"))), "always");
    assert_eq!(selected(&read(&Path::new(THP).join("defrag"))), "madvise");
    if has_2m {
        assert_eq!(selected(&read(&size_2m)), "always");
    }
    // The values are the host's, read back by another reader than the agent.
    assert_eq!(tuner(&["check"]).code, 1);
}

/// Starts redis-server in `ns`, waits until it is ready (or exits), stops it, and returns the
/// `# WARNING` lines it logged.
fn redis_warnings(ns: &NetNs, extra: &[&str]) -> Vec<String> {
    require("redis-server");
    let mut args = vec![
        "redis-server",
        "--port",
        "6390",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.extend_from_slice(extra);
    let mut child = ns
        .exec(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = vec![];
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let ready = l.contains("Ready to accept connections");
                lines.push(l);
                if ready {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Ready to accept connections")),
        "redis-server did not start:\n{}",
        lines.join("\n")
    );
    lines
        .into_iter()
        .filter(|l| l.contains("WARNING"))
        .collect()
}

const BACKLOG: &str = "TCP backlog setting of 511 cannot be enforced";
const OVERCOMMIT_WARN: &str = "Memory overcommit must be enabled";
const THP_WARN: &str = "Transparent Huge Pages (THP) support enabled";

#[test]
fn redis_startup_warnings_disappear_after_apply() {
    let _g = HostGuard::take();
    let ns = NetNs::new("redis");
    ns.set_somaxconn("128");
    write(Path::new(OVERCOMMIT_PATH), "0");
    write(&Path::new(THP).join("enabled"), "always");

    let before = redis_warnings(&ns, &["--disable-thp", "no"]);
    for w in [BACKLOG, OVERCOMMIT_WARN, THP_WARN] {
        assert!(
            before.iter().any(|l| l.contains(w)),
            "expected {w:?} before apply: {before:#?}"
        );
    }
    let (code, report) = check_system(&ns);
    assert_eq!(code, Some(1), "{report}");

    let tmp = tempfile::tempdir().expect("tmp");
    let out = ns.tuner(&tmp.path().join("state"), &["apply"]);
    assert_eq!(out.code, 0, "{out:?}");

    let after = redis_warnings(&ns, &["--disable-thp", "no"]);
    assert!(after.is_empty(), "warnings after apply: {after:#?}");
    let after_default = redis_warnings(&ns, &[]);
    assert!(
        after_default.is_empty(),
        "warnings after apply: {after_default:#?}"
    );
    let (code, report) = check_system(&ns);
    assert_eq!(
        code,
        Some(0),
        "redis-server --check-system after apply:\n{report}"
    );
}

/// `redis-server --check-system` in the namespace: (exit code, what it printed).
fn check_system(ns: &NetNs) -> (Option<i32>, String) {
    let out = ns
        .exec(&["redis-server", "--check-system"])
        .output()
        .expect("redis-server --check-system");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_read_only_proc_sys_is_a_clear_erofs_error_and_nothing_else_is_touched() {
    let _g = HostGuard::take();
    write(Path::new(OVERCOMMIT_PATH), "0");
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("overcommit-only.yaml");
    write(
        &cfg,
        "mode: off\nsysctls:\n  vm.overcommit_memory: {mode: enforce}\n",
    );
    // A private mount namespace whose /proc/sys is a read-only bind mount.
    let out = Out::of(
        Command::new("unshare")
            .args([
                "-m",
                "sh",
                "-c",
                "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$0\" \"$@\"",
                BIN,
                "--state-dir",
            ])
            .arg(tmp.path().join("state"))
            .arg("--config")
            .arg(&cfg)
            .arg("apply")
            .output()
            .expect("unshare"),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(
            "vm.overcommit_memory: /proc/sys/vm/overcommit_memory is on a read-only file system"
        ),
        "{out:?}"
    );
    assert_eq!(read(Path::new(OVERCOMMIT_PATH)).trim(), "0");
}

/// The child half of `a_test_killed_while_holding_the_host_knobs_is_undone_by_the_next`: takes
/// the guard, flips overcommit, reports both values and waits to be killed. Only runs when that
/// test starts it (ignored otherwise).
#[test]
#[ignore = "started by a_test_killed_while_holding_the_host_knobs_is_undone_by_the_next"]
fn host_knob_holder_that_gets_killed() {
    if std::env::var_os("RNT_KILLED_HOLDER").is_none() {
        return;
    }
    let g = HostGuard::take();
    let before = g.get(OVERCOMMIT_PATH).expect("saved").to_string();
    let changed = if before == "2" { "0" } else { "2" };
    write(Path::new(OVERCOMMIT_PATH), changed);
    // Straight to fd 1: libtest's capture of `println!` would keep the line from the parent.
    let mut out = std::io::stdout();
    writeln!(out, "holding {before} {changed}").expect("stdout");
    out.flush().expect("stdout");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_test_killed_while_holding_the_host_knobs_is_undone_by_the_next() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "host_knob_holder_that_gets_killed",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RNT_KILLED_HOLDER", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the holder");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (before, changed) = loop {
        let line = lines
            .next()
            .expect("the holder ended before it held the knobs")
            .expect("read the holder's stdout");
        // libtest's "test <name> ... " has no newline: the report ends that line.
        if let Some((_, rest)) = line.rsplit_once("holding ") {
            let (b, c) = rest.split_once(' ').expect("two values");
            break (b.to_string(), c.to_string());
        }
    };
    assert_eq!(read(Path::new(OVERCOMMIT_PATH)).trim(), changed);
    child.kill().expect("SIGKILL the holder");
    let _ = child.wait();

    // No drop ran in the holder. Without the file it left, this guard (or another test's that
    // came first) would save `changed` as the host's value and put it back at the end.
    let g = HostGuard::take();
    assert_eq!(read(Path::new(OVERCOMMIT_PATH)).trim(), before);
    assert_eq!(g.get(OVERCOMMIT_PATH), Some(before.as_str()));
}

/// The binary copied where an unprivileged user can run it (the checkout may not be readable
/// to others): `wait` runs as nobody, as an init container of a Redis pod would.
fn unprivileged_bin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("redis-node-tuner");
    std::fs::copy(BIN, &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    bin
}

/// `wait` as nobody in `ns`.
fn wait_cmd(ns: &NetNs, bin: &Path, args: &[&str]) -> Command {
    let mut c = ns.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--no-new-privs",
        &bin.to_string_lossy(),
        "wait",
        "--interval",
        "100ms",
    ]);
    c.args(args);
    c
}

#[test]
fn wait_blocks_on_what_redis_warns_about_and_returns_once_it_would_not() {
    require("setpriv");
    let _g = HostGuard::take();
    let tmp = tempfile::tempdir().expect("tmp");
    let bin = unprivileged_bin(tmp.path());
    let ns = NetNs::new("wait");
    ns.set_somaxconn("128");
    write(Path::new(OVERCOMMIT_PATH), "0");
    write(&Path::new(THP).join("enabled"), "always");

    // Never in sync: exit 9, every reason Redis has to warn named, with the remedy for the
    // namespace's backlog.
    let out = Out::of(
        wait_cmd(&ns, &bin, &["--timeout", "1s"])
            .output()
            .expect("wait"),
    );
    assert_eq!(out.code, 9, "{out:?}");
    for l in [
        "vm.overcommit_memory = 0 (want 1)",
        "thp.enabled = always (want never)",
        "net.core.somaxconn = 128 (want >= 511 (tcp-backlog))",
        "--allowed-unsafe-sysctls=net.core.somaxconn",
    ] {
        assert!(out.stdout.contains(l), "{l:?} not in: {out:?}");
    }
    assert!(out.stdout.starts_with("waiting for"), "{out:?}");
    assert!(out.stdout.contains("\nnot in sync after 1s"), "{out:?}");
    // Redis, started there now, warns about the same three.
    let warned = redis_warnings(&ns, &["--disable-thp", "no"]);
    for w in [BACKLOG, OVERCOMMIT_WARN, THP_WARN] {
        assert!(warned.iter().any(|l| l.contains(w)), "{w:?}: {warned:#?}");
    }

    // Waiting: it returns once the kernel changes, not before.
    let mut child = wait_cmd(&ns, &bin, &["--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wait");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "wait returned on an untuned kernel"
    );
    write(Path::new(OVERCOMMIT_PATH), "1");
    for f in std::fs::read_dir(THP).expect("THP dir").flatten() {
        let p = f.path().join("enabled");
        if f.file_name().to_string_lossy().starts_with("hugepages-") && p.is_file() {
            write(&p, "never");
        }
    }
    write(&Path::new(THP).join("enabled"), "never");
    write(&Path::new(THP).join("defrag"), "never");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "wait returned while the namespace's somaxconn is 128"
    );
    ns.set_somaxconn("1024");
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < end,
            "wait did not return on a tuned kernel"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Out::of(child.wait_with_output().expect("wait's output"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\nin sync after"), "{out:?}");
    assert!(
        out.stdout.contains(
            "net.core.somaxconn = 1024 (want >= 511 (tcp-backlog)): set for this network namespace"
        ),
        "{out:?}"
    );
    // And Redis, started now, does not warn.
    let quiet = redis_warnings(&ns, &["--disable-thp", "no"]);
    assert!(
        quiet.is_empty(),
        "Redis warns after wait returned: {quiet:#?}"
    );
}

#[test]
fn wait_refuses_bad_flags_with_exit_2() {
    for (args, what) in [
        (&["wait", "--tcp-backlog", "0"][..], "--tcp-backlog"),
        (&["wait", "--timeout", "soon"][..], "--timeout \"soon\""),
        (&["wait", "--interval", "1ms"][..], "--interval \"1ms\""),
    ] {
        let out = Out::of(Command::new(BIN).args(args).output().expect("wait"));
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(what), "{args:?}: {out:?}");
    }
}
