//! The writer watch: who writes the profile's knobs, learnt the moment they do.
//!
//! Two BPF programs (`bpf/writers.bpf.c`) report foreign writes: a `cgroup/sysctl` program on
//! the cgroup v2 root sees every `/proc/sys` write before it is applied (and, in `lock` mode,
//! refuses those that would move an enforce-mode numeric knob out of the profile); a raw
//! tracepoint on `sys_exit` sees successful `write`/`pwrite64` calls to the THP sysfs files.
//! The agent's own writes are filtered out in the kernel. Each foreign write is logged with its
//! writer, counted, and — when it drifts an enforce-mode knob — handed to the enforce loop,
//! which runs a pass at once and names the writer in its drift and correction events.
//!
//! The watch is optional: anything that keeps it from loading (no privileges, no BTF, no cgroup
//! v2, a fake proc/sys root, another architecture) is an [`Unavailable`] reason, metered and
//! logged; the agent then polls as it always did. Writes it cannot see (`writev`, io_uring,
//! `splice` to sysfs) are still caught by the poll.
//!
//! - `bpf.rs`: loading the committed object with aya, its maps and event records.
//! - `origin.rs`: cgroup path, Pod UID and container id, command line of a writer.

mod bpf;
mod origin;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent::Report;
use crate::kernel::{Location, Reading, Root};
use crate::metrics::Metrics;
use crate::profile::{Desired, Mode};

pub use bpf::{EVENT_SIZE, Op, RawWrite, Rule, Source};
pub use origin::{PodIdentity, pod_identity};

/// The compiled BPF object for this architecture, if there is one.
pub fn object() -> Option<&'static [u8]> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(bpf::OBJECT)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// `writers:` in the profile, `--writers` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritersMode {
    /// No watch: drift is found by the poll only.
    Off,
    /// Name every foreign write and correct drift at once.
    #[default]
    Observe,
    /// As observe, and refuse (EPERM) sysctl writes that would move an enforce-mode numeric
    /// knob out of the profile.
    Lock,
}

impl WritersMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WritersMode::Off => "off",
            WritersMode::Observe => "observe",
            WritersMode::Lock => "lock",
        }
    }

    pub fn parse(s: &str) -> Option<WritersMode> {
        match s {
            "off" => Some(WritersMode::Off),
            "observe" => Some(WritersMode::Observe),
            "lock" => Some(WritersMode::Lock),
            _ => None,
        }
    }
}

/// Why the watch is not running: a stable `reason` (the metric label) and the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Unavailable {
    /// `off`, `unsupported_arch`, `fake_root`, `no_btf`, `no_cgroup2`, `cgroup_namespace`,
    /// `permission`, `load_failed`.
    pub reason: &'static str,
    pub message: String,
}

/// The process behind a foreign write, as the kernel saw it at the write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Writer {
    /// Thread-group id (the process), in the initial PID namespace.
    pub pid: u32,
    pub tid: u32,
    /// The thread-group leader's name (`comm`).
    pub comm: String,
    pub ppid: u32,
    pub parent_comm: String,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}), parent {} ({}), uid {}",
            self.pid, self.comm, self.ppid, self.parent_comm, self.uid
        )?;
        if let Some(c) = &self.cgroup {
            write!(f, ", cgroup {c}")?;
        }
        if let Some(p) = &self.pod_uid {
            write!(f, ", pod {p}")?;
        }
        if let Some(c) = &self.container_id {
            write!(f, ", container {}", &c[..c.len().min(12)])?;
        }
        Ok(())
    }
}

/// What became of a foreign write (the `action` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAction {
    /// Seen; it left the knob in the profile, or the knob is audit-only, or no correction
    /// followed.
    Observed,
    /// It drifted an enforce-mode knob and the agent wrote the profile's value back.
    Corrected,
    /// Refused in the kernel (lock mode): the writer got EPERM, the value never changed.
    Refused,
}

impl WriteAction {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteAction::Observed => "observed",
            WriteAction::Corrected => "corrected",
            WriteAction::Refused => "refused",
        }
    }
}

/// A foreign write that drifted an enforce-mode knob, waiting for the enforce pass.
#[derive(Debug, Clone)]
pub struct PendingWrite {
    pub writer: Arc<Writer>,
    pub at: Instant,
}

/// Longest list of writers kept per knob between two passes.
const PENDING_MAX: usize = 16;

/// Drifting writes per knob index, from the watch to the enforce loop.
#[derive(Debug, Default)]
pub struct Pending {
    slots: Mutex<Vec<Vec<PendingWrite>>>,
}

impl Pending {
    pub fn new(knobs: usize) -> Pending {
        Pending {
            slots: Mutex::new(vec![Vec::new(); knobs]),
        }
    }

    pub fn push(&self, knob: usize, writer: Arc<Writer>, at: Instant) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = s.get_mut(knob) {
            if v.len() == PENDING_MAX {
                v.remove(0);
            }
            v.push(PendingWrite { writer, at });
        }
    }

    /// The writes waiting for `knob`.
    pub fn take(&self, knob: usize) -> Vec<PendingWrite> {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.get_mut(knob).map(std::mem::take).unwrap_or_default()
    }

    /// Puts back writes taken too early (the write was not visible yet).
    pub fn put_back(&self, knob: usize, mut writes: Vec<PendingWrite>) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = s.get_mut(knob) {
            writes.append(v);
            *v = writes;
        }
    }

    pub fn any(&self) -> bool {
        let s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().any(|v| !v.is_empty())
    }
}

/// A knob the watch reports on.
#[derive(Debug, Clone)]
pub struct WatchedKnob {
    pub name: String,
    pub location: Location,
    /// Its file under the agent's roots.
    pub path: PathBuf,
    pub desired: Desired,
    pub mode: Mode,
}

/// What the watch needs to start.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub mode: WritersMode,
    /// The cgroup v2 root to attach to; `None`: the first cgroup2 mount, unless the agent is in
    /// a cgroup namespace (then it would see only its own subtree).
    pub cgroup_root: Option<PathBuf>,
    /// The host's network namespace inode (`net.*` knobs); `None`: they are not watched.
    pub host_netns: Option<u64>,
    /// Indexed as the agent's knobs.
    pub knobs: Vec<WatchedKnob>,
    /// Whether a knob's file is the kernel's (tests judge by name).
    pub is_kernel_file: fn(&WatchedKnob) -> bool,
}

impl WatchConfig {
    pub fn new(
        mode: WritersMode,
        cgroup_root: Option<PathBuf>,
        host_netns: Option<u64>,
        knobs: Vec<WatchedKnob>,
    ) -> WatchConfig {
        WatchConfig {
            mode,
            cgroup_root,
            host_netns,
            knobs,
            is_kernel_file,
        }
    }
}

/// Where the watch delivers.
pub struct Sink {
    pub metrics: Arc<Metrics>,
    pub pending: Arc<Pending>,
    /// Asks the enforce loop for a pass now.
    pub wake: Box<dyn Fn() + Send>,
    /// The enforce loop's last report (the value before a sysfs write).
    pub reports: tokio::sync::watch::Receiver<Option<Arc<Report>>>,
}

/// The running watch: stops (and detaches its programs) when dropped.
#[derive(Debug)]
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Capabilities the watch needs: (bit, name). CAP_SYS_ADMIN alone also does.
const NEEDED_CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];
const CAP_SYS_ADMIN: u32 = 21;

/// The needed capabilities missing from the effective set (`/proc/self/status` `CapEff`).
fn missing_caps() -> Vec<&'static str> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    if eff & (1 << CAP_SYS_ADMIN) != 0 {
        return vec![];
    }
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The knob's file is the kernel's own (procfs for sysctls, sysfs for THP), not a fake tree.
fn is_kernel_file(k: &WatchedKnob) -> bool {
    let want = match k.location.root {
        Root::Proc => PROC_SUPER_MAGIC,
        Root::Sys => SYSFS_MAGIC,
    };
    fs_magic(&k.path) == Some(want)
}

// `f_type`'s integer type differs between libcs and architectures.
#[allow(clippy::unnecessary_cast)]
fn fs_magic(p: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(p)
        .ok()
        .map(|s| s.filesystem_type().0 as i64)
}

/// The first cgroup v2 mount in the agent's mount table.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 root to attach to.
fn cgroup_root(cfg: &WatchConfig) -> Result<PathBuf, Unavailable> {
    if let Some(p) = &cfg.cgroup_root {
        if fs_magic(p) != Some(CGROUP2_SUPER_MAGIC) {
            return Err(Unavailable {
                reason: "no_cgroup2",
                message: format!("--cgroup-root {} is not a cgroup v2 mount", p.display()),
            });
        }
        return Ok(p.clone());
    }
    let own_ns = std::fs::metadata("/proc/self/ns/cgroup")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    if own_ns.is_some_and(|ino| ino != origin::INIT_CGROUP_NS) {
        return Err(Unavailable {
            reason: "cgroup_namespace",
            message: "the agent is in a cgroup namespace: its cgroup mount shows only its own \
                      subtree; mount the host's cgroup v2 root and pass --cgroup-root"
                .into(),
        });
    }
    cgroup2_mount().ok_or_else(|| Unavailable {
        reason: "no_cgroup2",
        message: "no cgroup v2 mount in /proc/self/mountinfo".into(),
    })
}

/// How lock mode judges a knob, or `None` where it never refuses (audit mode, text and
/// sysfs knobs).
fn lock_rule(k: &WatchedKnob) -> (Op, i64) {
    match (&k.desired, k.mode) {
        (Desired::Equals(v), Mode::Enforce) => (Op::Eq, *v),
        (Desired::AtLeast(v), Mode::Enforce) => (Op::Ge, *v),
        (Desired::AtMost(v), Mode::Enforce) => (Op::Le, *v),
        _ => (Op::None, 0),
    }
}

/// The programs' watchlist for `cfg`.
fn watchlist(cfg: &WatchConfig) -> bpf::Watchlist {
    let mut list = bpf::Watchlist::default();
    for (i, k) in cfg.knobs.iter().enumerate() {
        let Ok(index) = u32::try_from(i) else { break };
        if !(cfg.is_kernel_file)(k) {
            continue;
        }
        match k.location.root {
            Root::Proc => {
                let Some(name) = k.location.rel.strip_prefix("sys/") else {
                    continue;
                };
                let netns = if k.location.is_net() {
                    match cfg.host_netns.and_then(|n| u32::try_from(n).ok()) {
                        Some(n) => n,
                        None => continue, // not the host's namespace: not watched
                    }
                } else {
                    0
                };
                let (op, value) = lock_rule(k);
                list.sysctls.push((
                    name.to_string(),
                    Rule {
                        knob: index,
                        netns,
                        lock: u32::from(cfg.mode == WritersMode::Lock),
                        op: op as u32,
                        value,
                    },
                ));
            }
            Root::Sys => list.sysfs.push((k.path.clone(), index)),
        }
    }
    list
}

/// Checks what the watch needs, loads and attaches the programs, and starts the thread that
/// reads their events.
pub fn start(cfg: WatchConfig, sink: Sink) -> Result<Watch, Unavailable> {
    if cfg.mode == WritersMode::Off {
        return Err(Unavailable {
            reason: "off",
            message: "writers: off".into(),
        });
    }
    let object = object().ok_or_else(|| Unavailable {
        reason: "unsupported_arch",
        message: format!("no writer-watch program for {}", std::env::consts::ARCH),
    })?;
    let missing = missing_caps();
    if !missing.is_empty() {
        return Err(Unavailable {
            reason: "permission",
            message: format!(
                "missing {} (or CAP_SYS_ADMIN) in the effective capability set",
                missing.join(", ")
            ),
        });
    }
    let list = watchlist(&cfg);
    if list.sysctls.is_empty() && list.sysfs.is_empty() {
        return Err(Unavailable {
            reason: "fake_root",
            message: "no knob of the profile is a file of the kernel's procfs or sysfs under \
                      --proc-root/--sys-root: there are no writes to watch"
                .into(),
        });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Unavailable {
            reason: "no_btf",
            message: "/sys/kernel/btf/vmlinux is missing (a kernel built without BTF)".into(),
        });
    }
    let root = cgroup_root(&cfg)?;
    let loaded = bpf::load(object, &root, &list)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let metrics = sink.metrics.clone();
    let mode = cfg.mode.as_str();
    // The agent's own /proc: its process table (the host's with hostPID or on bare metal).
    let resolver = origin::Resolver::new(Path::new("/proc"), &root);
    let thread = std::thread::Builder::new()
        .name("writers".into())
        .spawn(move || {
            // The watch is not critical (the poll still corrects), but its metric must not
            // say active once it has stopped reading.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                read_loop(loaded, cfg, resolver, sink, &stop2)
            }));
            if !stop2.load(Ordering::Relaxed) || ran.is_err() {
                tracing::error!(
                    "writer watch stopped: drift is found by the poll, writers are not named"
                );
                metrics.writer_watch(mode, "stopped", false);
            }
        })
        .map_err(|e| Unavailable {
            reason: "load_failed",
            message: format!("cannot start the watch thread: {e}"),
        })?;
    Ok(Watch {
        stop,
        thread: Some(thread),
    })
}

/// How long the reader sleeps in `poll` before looking at the stop flag.
const POLL_MS: u16 = 250;

fn read_loop(
    mut loaded: bpf::Loaded,
    cfg: WatchConfig,
    mut resolver: origin::Resolver,
    sink: Sink,
    stop: &AtomicBool,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut lost_seen = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let polled = {
            let mut fds = [PollFd::new(loaded.fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(POLL_MS))
        };
        if let Err(e) = polled
            && e != nix::errno::Errno::EINTR
        {
            tracing::error!(error = %e, "writer watch: poll failed; the poll interval still catches drift");
            std::thread::sleep(Duration::from_millis(u64::from(POLL_MS)));
        }
        while let Some(item) = loaded.ring.next() {
            let Some(raw) = RawWrite::decode(&item) else {
                continue;
            };
            drop(item);
            handle(&raw, &cfg, &mut resolver, &sink);
        }
        let lost = loaded.lost();
        if lost > lost_seen {
            tracing::warn!(
                lost = lost - lost_seen,
                "writer watch: events lost (ring buffer full)"
            );
            sink.metrics.writer_events_lost(lost - lost_seen);
            lost_seen = lost;
        }
    }
}

/// The written bytes as the agent would read them back (a THP write is the selected word).
fn written(text: &str) -> Reading {
    let value = text.split_whitespace().collect::<Vec<_>>().join(" ");
    Reading {
        number: value.parse().ok(),
        value,
    }
}

fn handle(raw: &RawWrite, cfg: &WatchConfig, resolver: &mut origin::Resolver, sink: &Sink) {
    let Some(k) = cfg.knobs.get(raw.knob as usize) else {
        return;
    };
    let (cgroup, cmdline) = resolver.resolve(raw.pid, raw.ppid, raw.cgroup_id);
    let id = cgroup.as_deref().map(pod_identity).unwrap_or_default();
    let writer = Arc::new(Writer {
        pid: raw.pid,
        tid: raw.tid,
        comm: raw.comm.clone(),
        ppid: raw.ppid,
        parent_comm: raw.parent_comm.clone(),
        uid: raw.uid,
        cgroup,
        pod_uid: id.pod_uid,
        container_id: id.container_id,
        cmdline,
    });
    let old = raw.old.clone().or_else(|| {
        sink.reports.borrow().as_ref().and_then(|r| {
            r.settings
                .iter()
                .find(|s| s.name == k.name)
                .and_then(|s| s.actual.clone())
        })
    });
    let drifts = !crate::reconcile::satisfies(&k.desired, &written(&raw.new));
    let action = if raw.refused {
        Some(WriteAction::Refused)
    } else if !drifts || k.mode != Mode::Enforce {
        Some(WriteAction::Observed)
    } else {
        None // the enforce pass decides: corrected, or observed if no correction followed
    };
    let w = &writer;
    let cgroup = w.cgroup.as_deref().unwrap_or("?");
    let outcome = action.map_or("correcting", WriteAction::as_str);
    macro_rules! line {
        ($lvl:ident, $msg:literal) => {
            tracing::$lvl!(
                knob = %k.name, old = old.as_deref().unwrap_or("?"), new = %raw.new,
                pid = w.pid, comm = %w.comm, ppid = w.ppid, parent = %w.parent_comm,
                uid = w.uid, cgroup, pod_uid = w.pod_uid.as_deref().unwrap_or(""),
                container_id = w.container_id.as_deref().unwrap_or(""),
                cmdline = w.cmdline.as_deref().unwrap_or(""), action = outcome, $msg
            )
        };
    }
    match action {
        Some(WriteAction::Refused) => line!(warn, "foreign write refused"),
        Some(_) if !drifts => line!(info, "foreign write"),
        _ => line!(warn, "foreign write drifted a knob"),
    }
    match action {
        Some(a) => sink.metrics.foreign_write(&k.name, &w.comm, a),
        None => {
            sink.pending
                .push(raw.knob as usize, writer.clone(), Instant::now());
            (sink.wake)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knob(name: &str, loc: Location, desired: Desired, mode: Mode) -> WatchedKnob {
        WatchedKnob {
            name: name.into(),
            path: PathBuf::from("/nonexistent").join(&loc.rel),
            location: loc,
            desired,
            mode,
        }
    }

    fn cfg(mode: WritersMode, host_netns: Option<u64>) -> WatchConfig {
        WatchConfig {
            mode,
            cgroup_root: None,
            host_netns,
            is_kernel_file: |k| !k.name.starts_with("fake."),
            knobs: vec![
                knob(
                    "vm.overcommit_memory",
                    Location::sysctl("vm.overcommit_memory"),
                    Desired::Equals(1),
                    Mode::Enforce,
                ),
                knob(
                    "net.core.somaxconn",
                    Location::sysctl("net.core.somaxconn"),
                    Desired::AtLeast(2048),
                    Mode::Enforce,
                ),
                knob(
                    "kernel.pid_max",
                    Location::sysctl("kernel.pid_max"),
                    Desired::AtLeast(4_000_000),
                    Mode::Audit,
                ),
                knob(
                    "thp.enabled",
                    Location {
                        root: Root::Sys,
                        rel: "kernel/mm/transparent_hugepage/enabled".into(),
                    },
                    Desired::Word {
                        allowed: vec!["never".into()],
                        set: "never".into(),
                    },
                    Mode::Enforce,
                ),
            ],
        }
    }

    #[test]
    fn lock_mode_locks_enforce_mode_numeric_sysctls_only() {
        let l = watchlist(&cfg(WritersMode::Lock, Some(4026531840)));
        let rule = |n: &str| {
            l.sysctls
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, r)| *r)
                .unwrap()
        };
        let r = rule("vm/overcommit_memory");
        assert_eq!(
            (r.knob, r.lock, r.op, r.value, r.netns),
            (0, 1, Op::Eq as u32, 1, 0)
        );
        let r = rule("net/core/somaxconn");
        assert_eq!(
            (r.knob, r.op, r.value, r.netns),
            (1, Op::Ge as u32, 2048, 4026531840)
        );
        assert_eq!(
            rule("kernel/pid_max").op,
            Op::None as u32,
            "audit mode is never refused"
        );
        assert_eq!(l.sysfs.len(), 1);
        assert_eq!(l.sysfs[0].1, 3);
        let o = watchlist(&cfg(WritersMode::Observe, Some(1)));
        assert!(o.sysctls.iter().all(|(_, r)| r.lock == 0));
    }

    #[test]
    fn knobs_outside_the_kernels_files_are_not_watched() {
        let mut c = cfg(WritersMode::Observe, Some(1));
        c.knobs[0].name = "fake.overcommit".into();
        let l = watchlist(&c);
        assert!(l.sysctls.iter().all(|(_, r)| r.knob != 0));
        assert_eq!(l.sysctls.len(), 2);
    }

    #[test]
    fn a_fake_tree_is_not_the_kernel() {
        let tree = crate::testing::FakeTree::untuned();
        let fs = tree.fs();
        let k = WatchedKnob {
            name: "vm.overcommit_memory".into(),
            location: Location::sysctl("vm.overcommit_memory"),
            path: fs.path(&Location::sysctl("vm.overcommit_memory")),
            desired: Desired::Equals(1),
            mode: Mode::Enforce,
        };
        assert!(!is_kernel_file(&k));
        let real = WatchedKnob {
            path: "/proc/sys/vm/overcommit_memory".into(),
            ..k
        };
        assert!(is_kernel_file(&real));
    }

    #[test]
    fn net_knobs_are_not_watched_without_the_host_netns() {
        let l = watchlist(&cfg(WritersMode::Observe, None));
        assert!(l.sysctls.iter().all(|(n, _)| !n.starts_with("net/")));
        assert_eq!(l.sysctls.len(), 2);
    }

    #[test]
    fn written_bytes_are_judged_as_they_would_read_back() {
        let d = Desired::Equals(1);
        assert!(crate::reconcile::satisfies(&d, &written("1\n")));
        assert!(!crate::reconcile::satisfies(&d, &written("0\n")));
        let w = Desired::Word {
            allowed: vec!["never".into()],
            set: "never".into(),
        };
        assert!(crate::reconcile::satisfies(&w, &written("never\n")));
        assert!(!crate::reconcile::satisfies(&w, &written("always")));
    }

    #[test]
    fn pending_writes_are_bounded_and_taken_once() {
        let p = Pending::new(2);
        let w = Arc::new(Writer {
            pid: 1,
            tid: 1,
            comm: "x".into(),
            ppid: 0,
            parent_comm: "y".into(),
            uid: 0,
            cgroup: None,
            pod_uid: None,
            container_id: None,
            cmdline: None,
        });
        for _ in 0..PENDING_MAX + 3 {
            p.push(1, w.clone(), Instant::now());
        }
        p.push(7, w.clone(), Instant::now()); // no such knob: ignored
        assert!(p.any());
        assert_eq!(p.take(1).len(), PENDING_MAX);
        assert!(p.take(1).is_empty());
        assert!(!p.any());
    }

    #[test]
    fn the_writer_reads_as_one_line() {
        let w = Writer {
            pid: 42,
            tid: 43,
            comm: "sysctl".into(),
            ppid: 7,
            parent_comm: "bash".into(),
            uid: 0,
            cgroup: Some("/kubepods/pod1/abc".into()),
            pod_uid: Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789".into()),
            container_id: Some("5f1c2b9e0d8a7c6b5a4f".into()),
            cmdline: None,
        };
        assert_eq!(
            w.to_string(),
            "pid 42 (sysctl), parent 7 (bash), uid 0, cgroup /kubepods/pod1/abc, \
             pod 0a1b2c3d-4e5f-6789-abcd-ef0123456789, container 5f1c2b9e0d8a"
        );
    }
}
