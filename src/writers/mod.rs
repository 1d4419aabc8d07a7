//! The watchers: writes to the profile's knobs, seen the moment they happen.
//!
//! Three watchers, each used where the agent has what it needs, none hooking unrelated system
//! calls:
//! - **inotify** (`inotify.rs`), no privilege: every knob file the profile names fires on a
//!   write through the VFS; who wrote it is unknown. The base install's event path.
//! - **fanotify** (`fanotify.rs`), `CAP_SYS_ADMIN`: the same files, with the writer's pid (then
//!   its name, parent, cgroup and Pod from `/proc`, `origin.rs`); for the files the sysctl
//!   program does not cover.
//! - **the sysctl program** (`sysctl.rs`, `bpf.rs`), `CAP_BPF` + `CAP_PERFMON` +
//!   `CAP_NET_ADMIN` (or `CAP_SYS_ADMIN`): `/proc/sys` writes before the kernel applies them,
//!   with the old and new value; in `lock` mode it refuses those that would leave the profile.
//!
//! A watcher only reports: each write becomes a [`Notice`](crate::foreign::Notice) posted
//! through the [`Port`] the daemon wires to the enforce thread, which decides what it meant,
//! logs and counts it. What a watcher cannot load is an [`Unavailable`] reason in [`Status`];
//! the poll still corrects what no watcher sees (writes that bypass the VFS notification).

mod bpf;
mod checks;
pub mod fanotify;
pub mod inotify;
mod origin;
mod sysctl;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::foreign::{Notice, Port, Source, WatchedKnob};
use crate::kernel::Root;
use crate::profile::WritersMode;

pub use bpf::{EVENT_SIZE, Op, RULE_SIZE, RawWrite, Rule, layout};
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

/// Why a watcher is not running: a stable `reason` (the metric label) and the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Unavailable {
    /// `off`, `unsupported_arch`, `fake_root`, `no_btf`, `no_cgroup2`, `cgroup_namespace`,
    /// `permission`, `load_failed`, `not_requested`, `break_glass`, `detached`, `stopped`.
    pub reason: &'static str,
    pub message: String,
}

impl Unavailable {
    fn new(reason: &'static str, message: impl Into<String>) -> Unavailable {
        Unavailable {
            reason,
            message: message.into(),
        }
    }
}

/// What the watchers need to start.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub mode: WritersMode,
    /// The cgroup v2 root to attach to; `None`: the first cgroup2 mount, unless the agent is in
    /// a cgroup namespace (then it would see only its own subtree).
    pub cgroup_root: Option<PathBuf>,
    /// The host's network namespace inode, when the agent's `net.*` files are proven to be the
    /// host's; `None`: `net.*` knobs are not watched (until [`Watch::host_network`]).
    pub host_netns: Option<u64>,
    /// Indexed as the agent's knobs.
    pub knobs: Vec<WatchedKnob>,
    /// While this file exists, `lock` refuses nothing (the break-glass: `touch` it on the
    /// node); `None`: no break-glass.
    pub unlock_file: Option<PathBuf>,
    /// Whether a knob's file is the kernel's (tests judge by name).
    pub is_kernel_file: fn(&WatchedKnob) -> bool,
}

impl WatchConfig {
    pub fn new(
        mode: WritersMode,
        cgroup_root: Option<PathBuf>,
        host_netns: Option<u64>,
        knobs: Vec<WatchedKnob>,
        unlock_file: Option<PathBuf>,
    ) -> WatchConfig {
        WatchConfig {
            mode,
            cgroup_root,
            host_netns,
            knobs,
            unlock_file,
            is_kernel_file: checks::is_kernel_file,
        }
    }

    /// The files a VFS watcher (inotify, fanotify) marks: every knob's, but `net.*` ones only
    /// when the agent's own network namespace is the host's (a path is resolved in the
    /// namespace of the thread that opens it).
    fn vfs_files(&self, skip: impl Fn(&WatchedKnob) -> bool) -> Vec<(usize, PathBuf)> {
        let own_netns = own_netns();
        self.knobs
            .iter()
            .enumerate()
            .filter(|(_, k)| !skip(k))
            // A knob this kernel does not have (no per-size THP before 6.8): the poll says so.
            .filter(|(_, k)| k.path.exists())
            .filter(|(_, k)| {
                !k.location.is_net() || (self.host_netns.is_some() && self.host_netns == own_netns)
            })
            .map(|(i, k)| (i, k.path.clone()))
            .collect()
    }
}

fn own_netns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// What runs, per watcher: `Ok` or why not.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub mode: WritersMode,
    pub inotify: Result<(), Unavailable>,
    pub fanotify: Result<(), Unavailable>,
    pub sysctl: Result<(), Unavailable>,
    /// `lock` mode only: whether the kernel refuses writes that would leave the profile.
    pub lock: Option<Result<(), Unavailable>>,
}

impl Status {
    /// Each watcher with its state: (`inotify`|`fanotify`|`sysctl`, the result).
    pub fn sources(&self) -> [(&'static str, &Result<(), Unavailable>); 3] {
        [
            ("inotify", &self.inotify),
            ("fanotify", &self.fanotify),
            ("sysctl", &self.sysctl),
        ]
    }

    fn off(mode: WritersMode, why: &Unavailable) -> Status {
        Status {
            mode,
            inotify: Err(why.clone()),
            fanotify: Err(why.clone()),
            sysctl: Err(why.clone()),
            lock: (mode == WritersMode::Lock).then(|| Err(why.clone())),
        }
    }
}

/// What the watcher thread learnt since it started, for the enforce thread to report.
#[derive(Debug, Default)]
pub struct Health {
    /// The thread ended on its own (a panic, a failed poll): nothing is watched any more.
    stopped: AtomicBool,
    /// 0: the lock holds (or was never asked for); else why not, as [`LOCK_REASONS`] index+1.
    lock_lost: AtomicU64,
    /// Sysctl events the kernel dropped (ring buffer full).
    lost: AtomicU64,
    /// VFS events that overflowed the queue (a full pass was run).
    overflows: AtomicU64,
}

/// Why a lock that loaded is no longer in force.
const LOCK_REASONS: [&str; 2] = ["break_glass", "detached"];

impl Health {
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Why the lock that loaded no longer refuses anything, if so.
    pub fn lock_lost(&self) -> Option<&'static str> {
        match self.lock_lost.load(Ordering::Relaxed) {
            0 => None,
            n => LOCK_REASONS.get(n as usize - 1).copied(),
        }
    }

    fn set_lock_lost(&self, why: Option<&'static str>) {
        let n = why
            .and_then(|w| LOCK_REASONS.iter().position(|r| *r == w))
            .map_or(0, |i| i as u64 + 1);
        self.lock_lost.store(n, Ordering::Relaxed);
    }

    /// Sysctl events lost and VFS queue overflows since the last call.
    pub fn take_lost(&self) -> (u64, u64) {
        (
            self.lost.swap(0, Ordering::Relaxed),
            self.overflows.swap(0, Ordering::Relaxed),
        )
    }
}

/// Messages to the watcher thread.
enum Control {
    /// The agent's `net.*` files are proven to be in this (the host's) network namespace.
    HostNetwork(u64),
}

/// The running watchers: they stop (and the programs detach) when this is dropped.
#[derive(Debug)]
pub struct Watch {
    stop: Arc<AtomicBool>,
    ctl: mpsc::Sender<Control>,
    ended: mpsc::Receiver<()>,
    pub health: Arc<Health>,
}

/// How long dropping a [`Watch`] waits for its thread (it wakes at least every [`POLL_MS`]).
const DROP_WAIT: Duration = Duration::from_secs(2);

impl Watch {
    /// `net.*` knobs are now proven to be the host's: watch them too.
    pub fn host_network(&self, netns: u64) {
        let _ = self.ctl.send(Control::HostNetwork(netns));
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.ended.recv_timeout(DROP_WAIT).is_err() {
            tracing::warn!("the writer watch did not stop in time; leaving it to the exit");
        }
    }
}

/// The watchers that loaded, owned by their thread.
struct Running {
    cfg: WatchConfig,
    inotify: Option<inotify::KnobInotify>,
    fanotify: Option<fanotify::KnobFanotify>,
    sysctl: Option<bpf::Loaded>,
    /// Names the writers of fanotify's and the sysctl program's events from `/proc`.
    resolver: origin::Resolver,
    lock: bool,
}

/// Starts every watcher the mode and the agent's privileges allow; says which run and why the
/// others do not. `None` when none runs.
pub fn start(cfg: WatchConfig, port: Port) -> (Option<Watch>, Status) {
    let mode = cfg.mode;
    if mode == WritersMode::Off {
        return (
            None,
            Status::off(mode, &Unavailable::new("off", "writers: off")),
        );
    }
    let own_pid = std::process::id();
    // The sysctl program first: the VFS watchers skip what it covers.
    let root = checks::cgroup_root(cfg.cgroup_root.as_deref());
    let sysctl = match (&root, sysctl_prerequisites()) {
        (_, Err(u)) => Err(u),
        (Err(u), _) => Err(u.clone()),
        (Ok(root), Ok(())) => sysctl::load(&cfg, root),
    };
    let covered = |k: &WatchedKnob| {
        sysctl.is_ok() && k.location.root == Root::Proc && (cfg.is_kernel_file)(k)
    };
    let fanotify = if checks::has_cap(checks::CAP_SYS_ADMIN) {
        let files = cfg.vfs_files(covered);
        if files.is_empty() {
            Err(Unavailable::new(
                "not_requested",
                "every knob is watched by the sysctl program",
            ))
        } else {
            vfs_watch(
                "fanotify",
                fanotify::KnobFanotify::with_files(own_pid as i32, files),
                |e| matches!(e, fanotify::Error::Permission(_)),
            )
        }
    } else {
        Err(Unavailable::new(
            "permission",
            "fanotify needs CAP_SYS_ADMIN in the effective capability set",
        ))
    };
    let inotify = vfs_watch(
        "inotify",
        inotify::KnobInotify::with_files(cfg.vfs_files(|_| false)),
        |_| false,
    );
    let lock = mode == WritersMode::Lock;
    let status = Status {
        mode,
        inotify: inotify.as_ref().map(|_| ()).map_err(Clone::clone),
        fanotify: fanotify.as_ref().map(|_| ()).map_err(Clone::clone),
        sysctl: sysctl.as_ref().map(|_| ()).map_err(Clone::clone),
        lock: lock.then(|| sysctl.as_ref().map(|_| ()).map_err(Clone::clone)),
    };
    if inotify.is_err() && fanotify.is_err() && sysctl.is_err() {
        return (None, status);
    }
    let resolver = origin::Resolver::new(
        Path::new("/proc"),
        root.as_deref().unwrap_or(Path::new("/sys/fs/cgroup")),
    );
    let running = Running {
        cfg,
        inotify: inotify.ok(),
        fanotify: fanotify.ok(),
        sysctl: sysctl.ok(),
        resolver,
        lock,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health::default());
    let (ctl, ctl_rx) = mpsc::channel();
    let (ended_tx, ended) = mpsc::channel();
    let (stop2, health2) = (stop.clone(), health.clone());
    let spawned = std::thread::Builder::new()
        .name("writers".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                read_loop(running, &port, &ctl_rx, &health2, &stop2)
            }));
            if !stop2.load(Ordering::Relaxed) || ran.is_err() {
                tracing::error!(
                    "writer watch stopped: drift is found by the poll, writers are not named"
                );
                health2.stopped.store(true, Ordering::Relaxed);
            }
            let _ = ended_tx.send(());
        });
    match spawned {
        Ok(_) => (
            Some(Watch {
                stop,
                ctl,
                ended,
                health,
            }),
            status,
        ),
        Err(e) => {
            let u = Unavailable::new("load_failed", format!("cannot start the watch thread: {e}"));
            (None, Status::off(mode, &u))
        }
    }
}

/// A VFS watcher that marked at least one file, or why not; the files it could not mark are
/// logged (a knob file missing on this kernel is the poll's to report).
fn vfs_watch<W, E: std::fmt::Display>(
    what: &str,
    made: Result<(W, Vec<E>), E>,
    permission: impl Fn(&E) -> bool,
) -> Result<W, Unavailable> {
    match made {
        Ok((w, failed)) => {
            for e in &failed {
                tracing::warn!(watcher = what, error = %e, "writer watch: a knob file is not watched");
            }
            Ok(w)
        }
        Err(e) if permission(&e) => Err(Unavailable::new("permission", format!("{what}: {e}"))),
        Err(e) => Err(Unavailable::new("load_failed", format!("{what}: {e}"))),
    }
}

/// What the sysctl program needs before it is loaded: an object for this architecture, the
/// capabilities, BTF.
fn sysctl_prerequisites() -> Result<(), Unavailable> {
    object().ok_or_else(|| {
        Unavailable::new(
            "unsupported_arch",
            format!("no writer-watch program for {}", std::env::consts::ARCH),
        )
    })?;
    let missing = checks::missing_caps();
    if !missing.is_empty() {
        return Err(Unavailable::new(
            "permission",
            format!(
                "missing {} (or CAP_SYS_ADMIN) in the effective capability set",
                missing.join(", ")
            ),
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Unavailable::new(
            "no_btf",
            "/sys/kernel/btf/vmlinux is missing (a kernel built without BTF)",
        ));
    }
    Ok(())
}

/// How long the reader sleeps in `poll` before it looks at the stop flag and the lock.
const POLL_MS: u16 = 250;
/// How often the lock's attachment and the break-glass file are checked.
const LOCK_CHECK: Duration = Duration::from_secs(2);

fn read_loop(
    mut w: Running,
    port: &Port,
    ctl: &mpsc::Receiver<Control>,
    health: &Health,
    stop: &AtomicBool,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut lost_seen = 0u64;
    let (mut lost_unlogged, mut next_lost_line) = (0u64, Instant::now());
    let mut next_lock_check = Instant::now();
    let mut knobs = Vec::new();
    let mut writers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let polled = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
            if let Some(i) = &w.inotify {
                fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
            }
            if let Some(f) = &w.fanotify {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
            if let Some(s) = &w.sysctl {
                fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
            }
            poll(&mut fds, PollTimeout::from(POLL_MS))
        };
        if let Err(e) = polled
            && e != nix::errno::Errno::EINTR
        {
            tracing::error!(error = %e, "writer watch: poll failed; the poll interval still catches drift");
            std::thread::sleep(Duration::from_millis(u64::from(POLL_MS)));
        }
        let now = Instant::now();
        if let Some(i) = &mut w.inotify {
            knobs.clear();
            match i.drain(&mut knobs) {
                Ok(d) => {
                    if d.overflowed {
                        health.overflows.fetch_add(1, Ordering::Relaxed);
                    }
                    for k in &d.gone {
                        tracing::warn!(knob = %w.cfg.knobs.get(*k).map_or("?", |k| k.name.as_str()),
                            "writer watch: a knob file went away; the poll still reads it");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "writer watch: inotify read failed"),
            }
        }
        // Named notices before anonymous ones. inotify is read first and posted last: the
        // kernel queues a write's fanotify event beside its inotify event (and the sysctl
        // program's before both), so whatever inotify showed, its named twin is read below
        // and in the inbox, with its writer, before inotify's notice wakes a pass.
        if let Some(s) = &mut w.sysctl {
            while let Some(item) = s.ring.next() {
                let Some(raw) = RawWrite::decode(&item) else {
                    continue;
                };
                drop(item);
                port.post(sysctl::notice(&raw, &mut w.resolver));
            }
            let lost = s.lost();
            if lost > lost_seen {
                health.lost.fetch_add(lost - lost_seen, Ordering::Relaxed);
                lost_unlogged += lost - lost_seen;
                lost_seen = lost;
            }
            if lost_unlogged > 0 && now >= next_lost_line {
                tracing::warn!(
                    lost = lost_unlogged,
                    "writer watch: sysctl events lost (ring buffer full); the pass still corrects"
                );
                lost_unlogged = 0;
                next_lost_line = now + Duration::from_secs(1);
            }
        }
        if let Some(f) = &mut w.fanotify {
            writers.clear();
            match f.drain(&mut writers) {
                Ok(d) if d.overflowed => {
                    health.overflows.fetch_add(1, Ordering::Relaxed);
                    for k in 0..w.cfg.knobs.len() {
                        port.post(Notice::anonymous(k, now));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "writer watch: fanotify read failed"),
            }
            for &(knob, pid) in &writers {
                let writer = u32::try_from(pid)
                    .ok()
                    .and_then(|pid| w.resolver.writer_of(pid))
                    .map(Arc::new);
                port.post(Notice {
                    knob,
                    source: Source::Fanotify,
                    writer,
                    old: None,
                    new: None,
                    refused: false,
                    at: now,
                    count: 1,
                });
            }
        }
        for &k in &knobs {
            port.post(Notice::anonymous(k, now));
        }
        while let Ok(Control::HostNetwork(netns)) = ctl.try_recv() {
            w.add_net_knobs(netns);
        }
        if w.lock && now >= next_lock_check {
            next_lock_check = now + LOCK_CHECK;
            if w.check_lock(health) {
                port.nudge(); // the report and the metric say it at once
            }
        }
    }
}

impl Running {
    /// Starts watching the `net.*` knobs, now proven to be the host's.
    fn add_net_knobs(&mut self, netns: u64) {
        if self.cfg.host_netns.is_some() {
            return;
        }
        self.cfg.host_netns = Some(netns);
        if let Some(s) = &mut self.sysctl {
            let list = sysctl::watchlist(&self.cfg);
            let rules: Vec<_> = list
                .sysctls
                .into_iter()
                .filter(|(_, r)| r.netns != 0)
                .collect();
            if let Err(e) = s.add_rules(&rules) {
                tracing::warn!(error = %e, "writer watch: cannot watch the net.* sysctls");
            }
        }
        let files = self.cfg.vfs_files(|k| !k.location.is_net());
        for (knob, path) in &files {
            if let Some(i) = &mut self.inotify
                && let Err(e) = i.watch(*knob, path)
            {
                tracing::warn!(error = %e, "writer watch: cannot watch a net.* knob file");
            }
            if self.sysctl.is_none()
                && let Some(f) = &mut self.fanotify
                && let Err(e) = f.mark(*knob, path)
            {
                tracing::warn!(error = %e, "writer watch: cannot name a net.* knob's writers");
            }
        }
        tracing::info!(files = files.len(), "writer watch: net.* knobs watched");
    }

    /// Whether the lock still holds: the break-glass file, and the program's attachment. True
    /// when that changed.
    fn check_lock(&mut self, health: &Health) -> bool {
        let Some(s) = &mut self.sysctl else {
            return false;
        };
        let glass = self.cfg.unlock_file.as_deref().is_some_and(Path::exists);
        let was = health.lock_lost();
        let now = if glass {
            Some("break_glass")
        } else if !s.attached() {
            Some("detached")
        } else {
            None
        };
        if glass != (was == Some("break_glass")) {
            // Lock rules on (off) while the file is absent (present); observation stays.
            let list = sysctl::watchlist(&self.cfg);
            let rules: Vec<_> = list
                .sysctls
                .into_iter()
                .map(|(n, mut r)| {
                    r.lock = u32::from(!glass);
                    (n, r)
                })
                .collect();
            if let Err(e) = s.add_rules(&rules) {
                tracing::error!(error = %e, "writer watch: cannot change the lock rules");
            }
        }
        if now != was {
            match now {
                Some("break_glass") => tracing::warn!(
                    file = %self.cfg.unlock_file.as_deref().unwrap_or(Path::new("")).display(),
                    "writers lock lifted by the break-glass file: writes are observed, not refused"
                ),
                Some(why) => tracing::error!(
                    reason = why,
                    "writers lock no longer attached: writes are not refused (restart the agent to re-attach)"
                ),
                None => tracing::info!("writers lock in force again"),
            }
            health.set_lock_lost(now);
            return true;
        }
        false
    }
}
