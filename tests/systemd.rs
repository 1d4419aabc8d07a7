//! Bare metal: the systemd unit (`systemd/`), the shipped config, the man page, and the `.deb`
//! built by cargo-deb — verified by `systemd-analyze`, installed with `dpkg -i`, run from
//! `/usr/bin`, and removed again, on this machine (where systemd is not PID 1): the unit is
//! checked offline, and the hardening's central claim (root with no capability writes the knobs)
//! is proven by running the installed binary under `setpriv` with an empty bounding set. Under a
//! real systemd as PID 1: tests/systemd_boot.rs.
//!
//! Needs root (dpkg, host knobs; CI runs on a throwaway machine), `systemd-analyze` (systemd),
//! `setpriv` (util-linux), `cargo-deb`, and the rustup target `x86_64-unknown-linux-musl` (the
//! package is built from the same static binary as the container image, so one release build
//! serves both). Host-changing tests restore every knob when they end, panic included.

mod common;
use common::deb::{build_deb, exposure_level};
use common::host::{HostGuard, is_root};
use common::{Tree, repo, text};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

const BIN: &str = env!("CARGO_BIN_EXE_redis-node-tuner");
const UNIT: &str = "systemd/redis-node-tuner.service";
const INSTALLED_BIN: &str = "/usr/bin/redis-node-tuner";
const INSTALLED_UNIT: &str = "/usr/lib/systemd/system/redis-node-tuner.service";
const INSTALLED_CONFIG: &str = "/etc/redis-node-tuner/config.yaml";
const THP: &str = "/sys/kernel/mm/transparent_hugepage";
const OVERCOMMIT: &str = "/proc/sys/vm/overcommit_memory";

/// dpkg and the host knobs: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn output(c: &mut Command) -> Output {
    let o = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (is it installed? see the README's tests)"));
    eprintln!("{c:?}: {}", text(&o));
    o
}

/// `systemd-analyze security --offline=true`: the overall exposure level.
fn exposure(unit: &Path) -> f64 {
    let o = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(unit),
    );
    exposure_level(&String::from_utf8_lossy(&o.stdout))
        .unwrap_or_else(|| panic!("no exposure level in {}", text(&o)))
}

#[test]
fn the_writer_watch_drop_in_adds_three_capabilities_and_bpf_only() {
    let drop_in = std::fs::read_to_string(repo().join("systemd/writer-watch.conf")).unwrap();
    let d = directives(&drop_in);
    // And the two protections the unit leaves off for inotify's sake, which the sysctl program
    // makes unneeded.
    assert_eq!(
        d.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [
            "CapabilityBoundingSet",
            "ProtectKernelTunables",
            "ProtectControlGroups",
            "SystemCallFilter"
        ],
        "{d:?}"
    );
    assert_eq!(
        directive(&d, "CapabilityBoundingSet"),
        ["CAP_BPF CAP_PERFMON CAP_NET_ADMIN"]
    );
    assert_eq!(directive(&d, "SystemCallFilter"), ["bpf"]);
    // The unit with the drop-in's lines appended (as systemd merges a drop-in).
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("redis-node-tuner.service");
    let base = std::fs::read_to_string(repo().join(UNIT)).unwrap();
    std::fs::write(&unit, format!("{base}\n{drop_in}")).unwrap();
    let score = exposure(&unit);
    eprintln!("systemd-analyze security exposure with the writer watch: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0");
}

/// The unit's `Key=value` assignments (comments and sections left out).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn directive<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn unit_is_hardened_to_exposure_at_most_2_and_can_still_write_the_knobs() {
    let unit = repo().join(UNIT);
    let score = exposure(&unit);
    eprintln!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0");

    let src = std::fs::read_to_string(&unit).expect("unit");
    let d = directives(&src);
    let one = |k: &str| {
        let v = directive(&d, k);
        assert_eq!(v.len(), 1, "{k}: {v:?}");
        v[0].to_string()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/redis-node-tuner run --config /etc/redis-node-tuner/config.yaml"
    );
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("StateDirectory"), "redis-node-tuner");
    assert_eq!(one("WantedBy"), "multi-user.target");
    let before = one("Before");
    for u in ["redis-server.service", "redis.service"] {
        assert!(before.split_whitespace().any(|b| b == u), "Before={before}");
    }
    // /proc/sys and /sys read-only except the knobs' directories (ReadWritePaths= below), as
    // bind mounts of the host's: ProtectKernelTunables=, ProtectControlGroups= and ProtectProc=
    // would mount a procfs of the unit's own, which the inotify watch cannot see shell writes
    // through (tests/systemd_boot.rs); a private network namespace would stop the agent doing
    // its job.
    assert_eq!(one("ReadOnlyPaths"), "/proc/sys /sys");
    for own_procfs in [
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "ProtectProc",
    ] {
        assert!(
            directive(&d, own_procfs).is_empty(),
            "{own_procfs}= gives the unit a procfs of its own"
        );
    }
    assert_eq!(one("PrivateNetwork"), "no");
    assert!(
        directive(&d, "ProcSubset").is_empty(),
        "ProcSubset=pid hides /proc/sys"
    );
    assert!(
        directive(&d, "PrivateUsers").is_empty(),
        "a user namespace cannot write sysctls"
    );
    // No capability at all: uid 0 + a writable mount is what writes the knobs.
    assert_eq!(one("CapabilityBoundingSet"), "");
    let rw = one("ReadWritePaths");
    for p in ["/proc/sys/vm", "/proc/sys/net/core", THP] {
        assert!(
            rw.split_whitespace()
                .any(|w| w.trim_start_matches('-') == p),
            "{rw}"
        );
    }
    let families = one("RestrictAddressFamilies");
    for f in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(families.split_whitespace().any(|w| w == f), "{families}");
    }
    // Each of the two is explained by a comment right above it.
    for c in ["ReadOnlyPaths=/proc/sys /sys", "PrivateNetwork=no"] {
        let i = src.find(c).expect(c);
        let above = src[..i].trim_end().lines().last().unwrap_or("");
        assert!(above.starts_with('#'), "no comment above {c}");
    }
}

fn check_json(bin: &str, tree: &Path, config: Option<&Path>) -> serde_json::Value {
    let mut c = Command::new(bin);
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.arg("--proc-root")
        .arg(tree.join("proc"))
        .arg("--sys-root")
        .arg(tree.join("sys"))
        .arg("--state-dir")
        .arg(tree.join("state"))
        .args(["check", "--output", "json"]);
    let o = output(&mut c);
    assert_eq!(o.status.code(), Some(1), "drift expected: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

#[test]
fn shipped_config_is_the_built_in_profile_written_out() {
    // The shared fake tree; `check` never writes it.
    let tree = Tree::untuned();
    let builtin = check_json(BIN, tree.dir.path(), None);
    let shipped = check_json(
        BIN,
        tree.dir.path(),
        Some(&repo().join("systemd/config.yaml")),
    );
    assert_eq!(builtin, shipped);
    assert_eq!(builtin["settings"].as_array().map(Vec::len), Some(5));
}

fn help(args: &[&str]) -> String {
    let o = output(Command::new(BIN).args(args));
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn man_page_documents_every_command_and_flag_of_help() {
    let man = std::fs::read_to_string(repo().join("packaging/redis-node-tuner.8"))
        .expect("man page")
        .replace("\\-", "-");
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .expect("Commands:")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    let mut helps = vec![top.clone()];
    for c in &commands {
        assert!(
            man.contains(&format!(".B {c}")) || man.contains(&format!(".BR {c}")),
            "{c}"
        );
        helps.push(help(&[c, "--help"]));
    }
    for h in helps {
        for flag in h
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
        {
            assert!(man.contains(flag), "man page lacks {flag}");
        }
        for var in h
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("REDIS_NODE_TUNER_"))
        {
            assert!(man.contains(var), "man page lacks {var}");
        }
    }
}

const STATE_DIR: &str = "/var/lib/redis-node-tuner";

/// Purges the package on drop (panic included). Purge removes /var/lib/redis-node-tuner: a
/// journal that was there before the test is put back.
struct Installed {
    journal: Option<Vec<u8>>,
}

impl Installed {
    fn new() -> Installed {
        Installed {
            journal: std::fs::read(Path::new(STATE_DIR).join("originals.json")).ok(),
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "redis-node-tuner"])
            .stdout(Stdio::null())
            .status();
        if let Some(j) = &self.journal {
            let _ = std::fs::create_dir_all(STATE_DIR);
            let _ = std::fs::write(Path::new(STATE_DIR).join("originals.json"), j);
        }
    }
}

/// The selected word of a sysfs enum file, or the trimmed value.
fn read(p: &Path) -> String {
    let raw = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    raw.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(raw.trim())
        .to_string()
}

#[test]
fn deb_installs_binary_unit_config_and_man_page_then_removes_cleanly() {
    let _s = serial();
    assert!(
        is_root(),
        "dpkg -i needs root (CI runs on a throwaway machine)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(tmp.path());

    let o = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let contents = String::from_utf8_lossy(&o.stdout);
    for f in [
        "./usr/bin/redis-node-tuner",
        "./usr/lib/systemd/system/redis-node-tuner.service",
        "./etc/redis-node-tuner/config.yaml",
        "./usr/share/man/man8/redis-node-tuner.8",
        "./usr/lib/systemd/system/redis-server.service.d/redis-node-tuner.conf",
        "./usr/lib/systemd/system/redis-server@.service.d/redis-node-tuner.conf",
        "./usr/lib/systemd/system/redis.service.d/redis-node-tuner.conf",
        "./usr/lib/systemd/system/redis@.service.d/redis-node-tuner.conf",
        "./usr/lib/systemd/system/valkey-server.service.d/redis-node-tuner.conf",
        "./usr/lib/systemd/system/valkey-server@.service.d/redis-node-tuner.conf",
        "./usr/lib/systemd/system/valkey.service.d/redis-node-tuner.conf",
        "./usr/lib/systemd/system/valkey@.service.d/redis-node-tuner.conf",
        "./usr/share/redis-node-tuner/writer-watch.conf",
        "./usr/bin/kubectl-redis_node_tuner -> redis-node-tuner",
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.ends_with(f) || l.contains(&format!("{f}.gz"))),
            "{f} not in the package:\n{contents}"
        );
    }
    let o = output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), INSTALLED_CONFIG);

    let _installed = Installed::new();
    let o = output(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(o.status.success(), "dpkg -i");

    // Upgrade (a reinstall runs the same maintainer-script paths): a locally edited conffile
    // is kept.
    let edited = std::fs::read_to_string(INSTALLED_CONFIG).expect("config") + "# local edit\n";
    std::fs::write(INSTALLED_CONFIG, &edited).expect("edit config");
    let o = output(
        Command::new("dpkg")
            .args(["-i", "--force-confold"])
            .arg(&deb),
    );
    assert!(o.status.success(), "dpkg -i (upgrade)");
    assert_eq!(std::fs::read_to_string(INSTALLED_CONFIG).unwrap(), edited);

    // The installed binary: --version, and the read-only check (0 ready, 1 drift) with a table.
    let o = output(Command::new(INSTALLED_BIN).arg("--version"));
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("redis-node-tuner {}", env!("CARGO_PKG_VERSION"))
    );
    // The kubectl plugin's name is `status` (a symlink to the binary).
    let o = output(Command::new("/usr/bin/kubectl-redis_node_tuner").arg("--help"));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: redis-node-tuner status"));
    for args in [&["check"][..], &["--config", INSTALLED_CONFIG, "check"]] {
        let o = output(Command::new(INSTALLED_BIN).args(args));
        assert!(matches!(o.status.code(), Some(0 | 1)), "check {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.starts_with("SETTING"), "{out}");
        for k in [
            "vm.overcommit_memory",
            "net.core.somaxconn",
            "thp.enabled",
            "thp.defrag",
        ] {
            assert!(out.lines().any(|l| l.starts_with(k)), "{k}: {out}");
        }
        assert!(out.contains("node: "), "{out}");
    }

    // The installed unit passes systemd-analyze verify (binary and man page in place).
    let o = output(Command::new("systemd-analyze").args(["verify", INSTALLED_UNIT]));
    assert!(
        o.status.success(),
        "systemd-analyze verify {INSTALLED_UNIT}"
    );
    assert!(exposure(Path::new(INSTALLED_UNIT)) <= 2.0);
    // With Redis installed, its unit loads with the drop-in (Wants= + After= the tuner).
    if Path::new("/usr/lib/systemd/system/redis-server.service").exists() {
        let o = output(Command::new("systemd-analyze").args(["verify", "redis-server.service"]));
        assert!(
            o.status.success(),
            "systemd-analyze verify redis-server.service"
        );
        assert!(!String::from_utf8_lossy(&o.stderr).contains("redis-node-tuner.conf"));
    }
    let o = output(Command::new("man").args(["-w", "redis-node-tuner"]));
    assert!(o.status.success(), "man -w redis-node-tuner");

    // Remove: binary and unit gone, the conffile kept until purge.
    let o = output(Command::new("dpkg").args(["-r", "redis-node-tuner"]));
    assert!(o.status.success(), "dpkg -r");
    assert!(!Path::new(INSTALLED_BIN).exists());
    assert!(!Path::new("/usr/bin/kubectl-redis_node_tuner").exists());
    assert!(!Path::new(INSTALLED_UNIT).exists());
    assert!(
        Path::new(INSTALLED_CONFIG).exists(),
        "conffile kept by dpkg -r"
    );
    // Purge: the conffile and the journal directory go too (the journal is printed first).
    std::fs::create_dir_all(STATE_DIR).expect("state dir");
    let journal = Path::new(STATE_DIR).join("originals.json");
    let saved = std::fs::read(&journal).ok();
    std::fs::write(&journal, "{\"test\": 1}\n").expect("journal");
    let o = output(Command::new("dpkg").args(["--purge", "redis-node-tuner"]));
    assert!(o.status.success(), "dpkg --purge");
    assert!(String::from_utf8_lossy(&o.stderr).contains("{\"test\": 1}"));
    assert!(!Path::new(STATE_DIR).exists());
    if let Some(j) = saved {
        std::fs::create_dir_all(STATE_DIR).expect("state dir");
        std::fs::write(&journal, j).expect("journal");
    }
    assert!(!Path::new(INSTALLED_CONFIG).exists());
    assert!(!Path::new("/etc/redis-node-tuner").exists());
}

/// The hardening's central claim, CapabilityBoundingSet= (empty) + NoNewPrivileges=: root with no
/// capability at all still writes the knobs (they are root-owned 0644 files).
#[test]
fn root_without_any_capability_writes_the_knobs() {
    let _s = serial();
    assert!(is_root(), "this test needs root");
    let _g = HostGuard::take();
    let state = tempfile::tempdir().expect("tempdir");
    let no_caps = [
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
        "--",
    ];
    let o = output(
        Command::new("setpriv")
            .args(no_caps)
            .args(["cat", "/proc/self/status"]),
    );
    let status = String::from_utf8_lossy(&o.stdout);
    for l in [
        "Uid:\t0",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(l), "{l}: {status}");
    }
    std::fs::write(OVERCOMMIT, "0").expect("write overcommit");
    std::fs::write(Path::new(THP).join("enabled"), "always").expect("write THP");
    let o = output(
        Command::new("setpriv")
            .args(no_caps)
            .arg(BIN)
            .arg("--state-dir")
            .arg(state.path())
            .args(["--config"])
            .arg(repo().join("systemd/config.yaml"))
            .arg("apply"),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("changed vm.overcommit_memory: 0 -> 1"),
        "{}",
        text(&o)
    );
    assert!(
        out.contains("changed thp.enabled: always -> never"),
        "{}",
        text(&o)
    );
    assert_eq!(read(Path::new(OVERCOMMIT)), "1");
    assert_eq!(read(&Path::new(THP).join("enabled")), "never");
}
