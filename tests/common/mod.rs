//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod apiserver;
pub mod deb;
pub mod helm;
pub mod host;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_redis-node-tuner");

use redis_node_tuner::testing::FakeTree;
// Not every test file uses every knob.
#[allow(unused_imports)]
pub use redis_node_tuner::testing::{OVERCOMMIT, SOMAXCONN, THP_2M, THP_DEFRAG, THP_ENABLED};

/// A fake /proc + /sys tree (plain files) standing in for the host: the library's
/// [`FakeTree`] (whose methods it derefs to) with a state directory and the agent's command.
pub struct Tree {
    tree: FakeTree,
}

impl std::ops::Deref for Tree {
    type Target = FakeTree;
    fn deref(&self) -> &FakeTree {
        &self.tree
    }
}

impl Tree {
    /// An untuned host: overcommit 0, somaxconn 128, THP always/madvise, 2 MiB size always.
    pub fn untuned() -> Tree {
        let tree = FakeTree::untuned_2m_only();
        // PID 1 under this proc root shares the test's network namespace.
        tree.share_init_netns();
        Tree { tree }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// The command with --proc-root/--sys-root/--state-dir pointing into the tree.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--proc-root")
            .arg(self.path("proc"))
            .arg("--sys-root")
            .arg(self.path("sys"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        Out::of(self.cmd(args).output().expect("spawn redis-node-tuner"))
    }
}

/// Whether `text` holds `line` as a whole line (a metric sample, not a HELP text that starts
/// with the same words).
/// The value of one series of `/metrics` (0 when absent).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A finished command's exit code and output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("{:?}", Out::of(o.clone()))
}

/// A finished command's exit code and output.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn of(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Fails the test with a clear message when a required program is missing.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let p = dir.join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!("{program} is required by this test (install it: see .ci/run)");
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A minimal HTTP/1.0 GET on loopback (never a chunked answer): (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until `f` holds, up to `timeout`; returns whether it did.
pub fn wait_for(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// `redis-node-tuner run` as a child process, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `run` on the tree (JSON logs on a pipe) and waits for /healthz. The port is
    /// free when picked but another test may take it first: the daemon counts as started only
    /// once its own log says it listens, and a daemon that lost the port race (exit 5) is
    /// started again on another port.
    pub fn start(t: &Tree, extra: &[&str]) -> Daemon {
        for attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut args = vec!["run", "--listen", addr.as_str(), "--log-format", "json"];
            args.extend_from_slice(extra);
            let log = t.path(&format!("agent-{}.log", addr.replace([':', '.'], "-")));
            let file = std::fs::File::create(&log).expect("log file");
            let child = t
                .cmd(&args)
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .expect("spawn run");
            let mut d = Daemon { child, addr, log };
            let mut exited = None;
            let listening = wait_for(Duration::from_secs(20), || {
                if let Ok(Some(s)) = d.child.try_wait() {
                    exited = Some(s.code().unwrap_or(-1));
                    return true;
                }
                d.logs().contains("serving /metrics")
            });
            if exited == Some(5) && attempt < 4 && d.logs().contains("in use") {
                continue;
            }
            let up = listening
                && exited.is_none()
                && wait_for(Duration::from_secs(20), || {
                    http_get(&d.addr, "/healthz").is_ok_and(|(c, _)| c == 200)
                });
            if !up {
                let (code, logs) = d.stop_now();
                panic!("daemon did not serve /healthz (exit {code}):\n{logs}");
            }
            return d;
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `run` in Kubernetes mode for `node` (interval 200 ms, heartbeat 1 h).
    pub fn start_kube(t: &Tree, kubeconfig: &Path, node: &str, extra: &[&str]) -> Daemon {
        let kc = kubeconfig.to_string_lossy().into_owned();
        let mut args = vec![
            "--kubeconfig",
            &kc,
            "--node-name",
            node,
            "--interval",
            "200ms",
            "--heartbeat",
            "1h",
        ];
        args.extend_from_slice(extra);
        Daemon::start(t, &args)
    }

    pub fn metrics(&self) -> String {
        http_get(&self.addr, "/metrics").expect("GET /metrics").1
    }

    fn stop_now(&mut self) -> (i32, String) {
        let _ = self.child.kill();
        self.collect()
    }

    /// The agent's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn collect(&mut self) -> (i32, String) {
        let end = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s;
            }
            assert!(Instant::now() < end, "daemon did not stop within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code().unwrap_or(-1), self.logs())
    }

    /// Sends SIGTERM and waits: (exit code, stderr).
    pub fn sigterm(mut self) -> (i32, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `sh` blocks of the README section `heading` (`## …`, up to the next `## `), in order:
/// what the suites that run the README's commands as written take them from.
pub fn readme_sh_blocks(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let at = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {heading}"));
    let section = &readme[at + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    section
        .split("\n```sh\n")
        .skip(1)
        .map(|b| b.split("\n```\n").next().unwrap_or_default().to_string())
        .collect()
}
