//! The kernel matrix (tests/kernel-matrix/README.md): the static release binary against real
//! Debian kernels booted under qemu (`tests/kernel-matrix/vm.sh`: 6.1 and 6.12) and against
//! this machine's own kernel (the same suite run natively, under the host-knob guard). The
//! suite (`suite.sh`) reports one `RNT-RESULT <check> <pass|fail|n/a> <detail>` line per
//! check; this test compares them with `expected.tsv`, writes the table to
//! `target/kernel-matrix.md` and fails naming every kernel and check that differ.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::host::{self, HostGuard};
use common::{repo, require};

/// Debian's kernels, booted under qemu (fetch.sh resolves and caches them).
const VM_KERNELS: [&str; 2] = ["6.1", "6.12"];
/// This machine's own kernel, the suite run natively.
const HOST: &str = "host";
/// The bound of one suite run (vm.sh's own hard timeout is the same).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Both VMs at once: measured on 2 cores (tests/kernel-matrix/README.md, "Timing"), one VM after the other is as fast
/// as two at once, and the host run beside them costs the VMs nothing.
const VMS_IN_PARALLEL: bool = true;

fn matrix_dir() -> PathBuf {
    repo().join("tests/kernel-matrix")
}

/// One suite run: the kernel's results by check.
struct Run {
    kernel: &'static str,
    /// `uname -r` as the suite saw it.
    release: String,
    /// (check, result, detail) in the suite's order.
    results: Vec<(String, String, String)>,
    /// Why the suite did not get to its end, if it did not.
    problem: Option<String>,
    secs: u64,
}

impl Run {
    fn parse(kernel: &'static str, output: &str, exit: i32, secs: u64) -> Run {
        let mut results = vec![];
        let mut release = String::from("?");
        let mut ended = false;
        for line in output.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(rest) = line.strip_prefix("RNT-RESULT ") {
                let mut parts = rest.splitn(3, ' ');
                let check = parts.next().unwrap_or_default().to_string();
                let result = parts.next().unwrap_or_default().to_string();
                let detail = parts.next().unwrap_or_default().trim().to_string();
                results.push((check, result, detail));
            } else if let Some(r) = line.strip_prefix("RNT-INFO kernel ") {
                release = r.trim().to_string();
            } else if line == "RNT-END" {
                ended = true;
            }
        }
        let problem = (!ended || exit != 0).then(|| {
            let tail: Vec<&str> = output.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "the suite did not end cleanly (exit {exit}, RNT-END {}); output tail:\n{}",
                if ended { "seen" } else { "missing" },
                tail.join("\n")
            )
        });
        Run {
            kernel,
            release,
            results,
            problem,
            secs,
        }
    }

    /// (result, detail) of `check`.
    fn get(&self, check: &str) -> Option<(&str, &str)> {
        self.results
            .iter()
            .find(|r| r.0 == check)
            .map(|r| (r.1.as_str(), r.2.as_str()))
    }
}

/// The static musl release binary: `scripts/build-release.sh --binaries-only` for amd64, the
/// very build tests/release.rs packages later (same command, same target directory: cargo
/// finds it fresh then). Built by `cargo test` on the way here, it does not wait for the
/// release-tools lock: the amd64 binary needs none of those tools (the lock guards
/// cargo-cyclonedx, cargo-deny and the arm64 target directory, which it never touches).
fn static_binary() -> PathBuf {
    let t = Instant::now();
    let out = Command::new(repo().join("scripts/build-release.sh"))
        .arg("--binaries-only")
        .env("ARCHES", "amd64")
        .env("RNT_RELEASE_TOOLS_LOCK_HELD", "1")
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        )
        .current_dir(repo())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-release.sh");
    assert!(
        out.status.success(),
        "scripts/build-release.sh --binaries-only failed"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dist = PathBuf::from(stdout.lines().last().expect("dist path").trim());
    let dist = if dist.is_absolute() {
        dist
    } else {
        repo().join(dist)
    };
    let bin = dist.join(format!(
        "redis-node-tuner-{}-amd64",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(bin.is_file(), "no static binary at {}", bin.display());
    eprintln!(
        "kernel matrix: static binary {} ({} s)",
        bin.display(),
        t.elapsed().as_secs()
    );
    bin
}

/// Runs `cmd` in a process group of its own, at most [`RUN_TIMEOUT`]; the group is killed at
/// the end whatever happened (no qemu and no agent outlives the test). (exit, stdout+stderr).
fn run_bounded(mut cmd: Command, what: &str) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let pgid = child.id();
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + RUN_TIMEOUT + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() > end {
            kill_group(pgid);
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    kill_group(pgid);
    let mut text = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !err.is_empty() {
        text.push_str("\n--- stderr\n");
        text.push_str(&err);
    }
    (code, text)
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Boots `kernel` with the binary and the suite.
fn run_vm(kernel: &'static str, bin: &Path) -> Run {
    let t = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(matrix_dir().join("vm.sh"))
        .arg(kernel)
        .arg(bin)
        .arg(matrix_dir().join("suite.sh"))
        .env("RNT_VM_TIMEOUT", RUN_TIMEOUT.as_secs().to_string());
    let (code, out) = run_bounded(cmd, &format!("vm.sh {kernel}"));
    Run::parse(kernel, &out, code, t.elapsed().as_secs())
}

/// The suite on this machine's kernel, natively, under the host-knob guard, from the values
/// a fresh Debian boot has (overcommit 0, THP enabled always, defrag madvise), so that the
/// first `check` finds drift as it does in the VMs. The guard puts the host's knobs back.
fn run_host(bin: &Path) -> Run {
    let guard = HostGuard::take();
    let thp = Path::new(host::THP);
    host::write(Path::new(host::OVERCOMMIT_PATH), "0");
    host::write(&thp.join("enabled"), "always");
    host::write(&thp.join("defrag"), "madvise");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let t = Instant::now();
    let mut cmd = Command::new(require("busybox"));
    cmd.arg("sh")
        .arg(matrix_dir().join("suite.sh"))
        .env("RNT_BIN", bin)
        .env("RNT_STATE_DIR", &state)
        .env("RNT_TMP", dir.path());
    let (code, out) = run_bounded(cmd, "suite.sh on the host");
    drop(guard);
    Run::parse(HOST, &out, code, t.elapsed().as_secs())
}

/// expected.tsv: (kernel, check) -> expected result, in the file's order.
fn expected() -> Vec<(String, String, String)> {
    let path = matrix_dir().join("expected.tsv");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut rows = vec![];
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() || line == "kernel\tcheck\texpected" {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        assert!(
            f.len() == 3 && ["pass", "fail", "n/a"].contains(&f[2]),
            "{}:{}: want kernel<TAB>check<TAB>pass|fail|n/a, got {line:?}",
            path.display(),
            n + 1
        );
        rows.push((f[0].to_string(), f[1].to_string(), f[2].to_string()));
    }
    rows
}

/// Every difference between the runs and the table: "kernel check: got X, expected Y".
fn compare(runs: &[Run], rows: &[(String, String, String)]) -> Vec<String> {
    let mut diffs = vec![];
    for run in runs {
        if let Some(p) = &run.problem {
            diffs.push(format!("{}: {p}", run.kernel));
        }
        let mine: Vec<&(String, String, String)> =
            rows.iter().filter(|r| r.0 == run.kernel).collect();
        if mine.is_empty() {
            diffs.push(format!("{}: no rows in expected.tsv", run.kernel));
        }
        for (_, check, want) in &mine {
            match run.get(check) {
                None => diffs.push(format!(
                    "{} {check}: not reported by the suite, expected {want}",
                    run.kernel
                )),
                Some((got, detail)) if got != want => diffs.push(format!(
                    "{} {check}: got {got}, expected {want} ({detail})",
                    run.kernel
                )),
                Some(_) => {}
            }
        }
        for (check, ..) in &run.results {
            if !mine.iter().any(|r| &r.1 == check) {
                diffs.push(format!(
                    "{} {check}: reported by the suite, not in expected.tsv",
                    run.kernel
                ));
            }
        }
    }
    diffs
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The Markdown report: one row per check, one column per kernel, then every detail.
fn markdown(runs: &[Run], rows: &[(String, String, String)], diffs: &[String]) -> String {
    let mut checks: Vec<&str> = vec![];
    for (_, c, _) in rows {
        if !checks.contains(&c.as_str()) {
            checks.push(c);
        }
    }
    for run in runs {
        for (c, ..) in &run.results {
            if !checks.contains(&c.as_str()) {
                checks.push(c);
            }
        }
    }
    let mut md = String::from(
        "# Kernel matrix\n\n`tests/kernel_matrix.rs`: the suite `tests/kernel-matrix/suite.sh` per kernel, compared with `tests/kernel-matrix/expected.tsv` (**bold**: differs from the expectation).\n\n| check |",
    );
    for run in runs {
        md.push_str(&format!(
            " {} (`{}`, {} s) |",
            run.kernel, run.release, run.secs
        ));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(runs.len()));
    md.push('\n');
    for c in &checks {
        md.push_str(&format!("| `{c}` |"));
        for run in runs {
            let want = rows
                .iter()
                .find(|r| r.0 == run.kernel && r.1 == *c)
                .map(|r| r.2.as_str());
            let got = run.get(c).map(|r| r.0);
            let text = match (got, want) {
                (Some(g), Some(w)) if g == w => g.to_string(),
                (Some(g), Some(w)) => format!("**{g}** (expected {w})"),
                (Some(g), None) => format!("**{g}** (not in the table)"),
                (None, Some(w)) => format!("**missing** (expected {w})"),
                (None, None) => "".into(),
            };
            md.push_str(&format!(" {text} |"));
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\n{} difference(s) from the expectation.\n",
        diffs.len()
    ));
    for d in diffs {
        md.push_str(&format!("- {}\n", d.lines().next().unwrap_or_default()));
    }
    for run in runs {
        md.push_str(&format!("\n## {} (`{}`)\n\n", run.kernel, run.release));
        if let Some(p) = &run.problem {
            md.push_str(&format!("```\n{p}\n```\n\n"));
        }
        for (c, r, d) in &run.results {
            md.push_str(&format!("- `{c}` {r}: {}\n", cell(d)));
        }
    }
    md
}

fn report_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { repo().join(p) })
        .unwrap_or_else(|| repo().join("target"))
        .join("kernel-matrix.md")
}

#[test]
fn kernel_matrix() {
    for p in ["qemu-system-x86_64", "busybox", "cpio", "gzip", "apt-get"] {
        require(p);
    }
    let rows = expected();
    let bin = static_binary();
    // The kernels first (a cold cache downloads them here, not under the VMs' clocks).
    let fetch = Command::new("bash")
        .arg(matrix_dir().join("fetch.sh"))
        .args(VM_KERNELS)
        .stderr(Stdio::inherit())
        .output()
        .expect("run fetch.sh");
    assert!(
        fetch.status.success(),
        "tests/kernel-matrix/fetch.sh failed"
    );

    let t = Instant::now();
    let mut runs: Vec<Run> = std::thread::scope(|s| {
        let b = bin.as_path();
        let vms = s.spawn(move || {
            let t = Instant::now();
            let runs = if VMS_IN_PARALLEL {
                let hs: Vec<_> = VM_KERNELS
                    .into_iter()
                    .map(|k| s.spawn(move || run_vm(k, b)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("vm thread"))
                    .collect()
            } else {
                VM_KERNELS
                    .into_iter()
                    .map(|k| run_vm(k, b))
                    .collect::<Vec<Run>>()
            };
            (runs, t.elapsed().as_secs())
        });
        let host = run_host(&bin);
        let (mut runs, vm_secs) = vms.join().expect("vm thread");
        eprintln!(
            "kernel matrix: the VMs took {vm_secs} s ({})",
            if VMS_IN_PARALLEL {
                "in parallel"
            } else {
                "one after the other"
            }
        );
        runs.push(host);
        runs
    });
    runs.sort_by_key(|r| {
        VM_KERNELS
            .iter()
            .chain([HOST].iter())
            .position(|k| *k == r.kernel)
    });
    eprintln!(
        "kernel matrix: {} ({} s in all)",
        runs.iter()
            .map(|r| format!("{} {} s", r.kernel, r.secs))
            .collect::<Vec<_>>()
            .join(", "),
        t.elapsed().as_secs()
    );

    let diffs = compare(&runs, &rows);
    let md = markdown(&runs, &rows, &diffs);
    let path = report_path();
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("report directory");
    }
    std::fs::write(&path, &md).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("kernel matrix: {}", path.display());
    assert!(
        diffs.is_empty(),
        "the kernel matrix differs from tests/kernel-matrix/expected.tsv in {} place(s) (table: {}):\n{}",
        diffs.len(),
        path.display(),
        diffs.join("\n")
    );
}
