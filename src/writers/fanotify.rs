//! Knob writes seen by fanotify, with the writer's pid (needs `CAP_SYS_ADMIN`).
//!
//! A notification-class group (`FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK`) puts an inode
//! mark with `FAN_MODIFY` on each knob file. It sees the writes inotify sees (the same
//! `fsnotify_modify` hook in the VFS) and adds the writer's process id; unlike inotify it does
//! not see an open with `O_TRUNC` (raised without a path, it has no file to open). Each event carries a
//! read-only descriptor of the file, opened by the kernel; it is mapped to knobs by the
//! `(st_dev, st_ino)` of that descriptor and closed at once.
//!
//! Choices, and what the kernel and `nix` 0.31 allow:
//! - File identifiers (`FAN_REPORT_FID`) instead of event descriptors would spare the kernel an
//!   open per event. Linux 6.18 accepts them on procfs inode marks (non-decodable handles), older
//!   kernels do not, and nix does not parse the information records they come in; the
//!   descriptor works on every kernel.
//! - `FAN_REPORT_PIDFD` (5.15+) would pin the writer against pid reuse, but the pidfd comes in
//!   an information record that nix's `read_events` steps over without closing: each event
//!   would leak a descriptor, so it is not asked for.
//! - The pid is in the PID namespace of the reader: 0 for a writer outside it (a DaemonSet
//!   without `hostPID`). The agent's own writes are filtered by its pid.
//! - Without `CAP_SYS_ADMIN`, `fanotify_init` answers `EPERM` ([`Error::Permission`]). An
//!   unprivileged group would have to report file identifiers and would get pid 0 for every
//!   other process: nothing inotify does not give.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use nix::sys::stat::{Mode, fstat};

/// Most events read in one [`KnobFanotify::drain`]; the descriptor stays readable when more
/// are queued.
pub const DRAIN_MAX_EVENTS: usize = 16_384;

/// Most distinct writers reported per knob in one drain; more are counted in
/// [`Drained::writers_dropped`].
pub const WRITERS_PER_KNOB: usize = 16;

/// What failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `CAP_SYS_ADMIN` (the metric's `reason="permission"`).
    #[error("fanotify_init: no CAP_SYS_ADMIN ({0})")]
    Permission(#[source] Errno),
    /// The kernel has no fanotify (`ENOSYS`) or refused the flags.
    #[error("fanotify_init: {0}")]
    Init(#[source] Errno),
    #[error("fanotify mark on {}: {errno}", path.display())]
    Mark {
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("reading fanotify events: {0}")]
    Read(#[source] Errno),
}

/// Besides the writes pushed, what one [`KnobFanotify::drain`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Events read, the agent's own included.
    pub events: usize,
    /// Events of the agent's own writes, not pushed.
    pub own: usize,
    /// Events lost: the kernel's queue overflowed, or it could not open an event's file
    /// (`EMFILE`, `ENFILE`). Writers went unnamed: the caller must run a full pass.
    pub overflowed: bool,
    /// Writes from more than [`WRITERS_PER_KNOB`] distinct processes to one knob in this drain:
    /// the pids beyond were not pushed.
    pub writers_dropped: usize,
    /// [`DRAIN_MAX_EVENTS`] were read and more may be queued: drain again.
    pub more: bool,
}

/// A fanotify group with a mark on each knob file.
#[derive(Debug)]
pub struct KnobFanotify {
    group: Fanotify,
    own_pid: i32,
    /// Distinct knob indices marked; a position here is a knob's slot.
    knobs: Vec<usize>,
    paths: Vec<PathBuf>,
    /// (st_dev, st_ino) of a marked file → its slots.
    by_inode: HashMap<(u64, u64), Vec<usize>>,
    /// Per slot: the pids pushed in this drain.
    seen: Vec<Vec<i32>>,
}

impl AsFd for KnobFanotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.group.as_fd()
    }
}

impl KnobFanotify {
    /// A group marking nothing yet; writes by `own_pid` (the agent's `getpid()`) are not
    /// reported.
    pub fn new(own_pid: i32) -> Result<KnobFanotify, Error> {
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE,
        )
        .map_err(|e| match e {
            Errno::EPERM => Error::Permission(e),
            e => Error::Init(e),
        })?;
        Ok(KnobFanotify {
            group,
            own_pid,
            knobs: Vec::new(),
            paths: Vec::new(),
            by_inode: HashMap::new(),
            seen: Vec::new(),
        })
    }

    /// A group marking each `(knob index, file)`; the files that could not be marked are
    /// returned with the reason, the others are marked.
    pub fn with_files<I>(own_pid: i32, files: I) -> Result<(KnobFanotify, Vec<Error>), Error>
    where
        I: IntoIterator<Item = (usize, PathBuf)>,
    {
        let mut g = KnobFanotify::new(own_pid)?;
        let mut failed = Vec::new();
        for (knob, path) in files {
            if let Err(e) = g.mark(knob, &path) {
                failed.push(e);
            }
        }
        Ok((g, failed))
    }

    /// Marks `path` for `knob`. The file is opened by the calling thread (its network
    /// namespace picks the `/proc/sys/net` file, its mount namespace the sysfs), and the mark
    /// is put on the inode of that descriptor, the one whose identity events are matched to.
    pub fn mark(&mut self, knob: usize, path: &Path) -> Result<(), Error> {
        let err = |errno| Error::Mark {
            path: path.to_path_buf(),
            errno,
        };
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .map_err(err)?;
        let st = fstat(&fd).map_err(err)?;
        self.group
            .mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_INODE,
                MaskFlags::FAN_MODIFY,
                &fd,
                None::<&Path>,
            )
            .map_err(err)?;
        let slot = match self.knobs.iter().position(|&k| k == knob) {
            Some(s) => {
                self.paths[s] = path.to_path_buf();
                s
            }
            None => {
                self.knobs.push(knob);
                self.paths.push(path.to_path_buf());
                self.seen.push(Vec::new());
                self.knobs.len() - 1
            }
        };
        let slots = self.by_inode.entry(inode_key(&st)).or_default();
        if !slots.contains(&slot) {
            slots.push(slot);
        }
        Ok(())
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.group.as_fd()
    }

    /// The knob indices marked, in the order first marked.
    pub fn knobs(&self) -> &[usize] {
        &self.knobs
    }

    /// The file marked for `knob`.
    pub fn path(&self, knob: usize) -> Option<&Path> {
        let slot = self.knobs.iter().position(|&k| k == knob)?;
        Some(&self.paths[slot])
    }

    /// Reads the queued events without blocking (at most [`DRAIN_MAX_EVENTS`]), closes each
    /// event's descriptor, and pushes onto `out` each `(knob, pid)` once, in the order first
    /// seen, the agent's own pid left out: at most [`WRITERS_PER_KNOB`] entries per knob.
    pub fn drain(&mut self, out: &mut Vec<(usize, i32)>) -> Result<Drained, Error> {
        for s in &mut self.seen {
            s.clear();
        }
        let mut d = Drained::default();
        loop {
            if d.events >= DRAIN_MAX_EVENTS {
                d.more = true;
                break;
            }
            let events = match self.group.read_events() {
                Ok(ev) => ev,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                // The kernel could not open an event's file: that event is lost.
                Err(Errno::EMFILE | Errno::ENFILE) => {
                    d.overflowed = true;
                    d.events += 1;
                    continue;
                }
                Err(e) => return Err(Error::Read(e)),
            };
            if events.is_empty() {
                break;
            }
            for ev in events {
                // `ev` owns the event's descriptor and closes it when dropped.
                d.events += 1;
                if ev.mask().contains(MaskFlags::FAN_Q_OVERFLOW) {
                    d.overflowed = true;
                    continue;
                }
                let pid = ev.pid();
                if pid == self.own_pid {
                    d.own += 1;
                    continue;
                }
                let Some(fd) = ev.fd() else {
                    continue;
                };
                let Ok(st) = fstat(fd) else {
                    continue;
                };
                let Some(slots) = self.by_inode.get(&inode_key(&st)) else {
                    continue;
                };
                for &slot in slots {
                    let seen = &mut self.seen[slot];
                    if seen.contains(&pid) {
                        continue;
                    }
                    if seen.len() == WRITERS_PER_KNOB {
                        d.writers_dropped += 1;
                        continue;
                    }
                    seen.push(pid);
                    out.push((self.knobs[slot], pid));
                }
            }
        }
        Ok(d)
    }
}

fn inode_key(st: &nix::sys::stat::FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    fn own_pid() -> i32 {
        nix::unistd::getpid().as_raw()
    }

    fn file(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "0\n").unwrap();
        p
    }

    /// Drains until `out` holds something or 5 s passed (a bounded wait: the events are
    /// queued before the writer returns).
    fn drain_some(g: &mut KnobFanotify) -> (Vec<(usize, i32)>, Drained) {
        let mut out = Vec::new();
        let mut all = Drained::default();
        for _ in 0..50 {
            let d = g.drain(&mut out).unwrap();
            all.events += d.events;
            all.own += d.own;
            all.overflowed |= d.overflowed;
            if !out.is_empty() {
                break;
            }
            let mut fds = [nix::poll::PollFd::new(g.fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        }
        (out, all)
    }

    fn sh_write(path: &Path) -> i32 {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo 1 > {}", path.display()))
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(child.wait().unwrap().success());
        pid
    }

    #[test]
    fn a_write_from_a_child_names_the_knob_and_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let b = file(dir.path(), "b");
        let (mut g, failed) =
            KnobFanotify::with_files(own_pid(), [(3, a.clone()), (7, b.clone())]).unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        let pid = sh_write(&b);
        let (out, d) = drain_some(&mut g);
        assert_eq!(out, vec![(7, pid)]);
        assert!(!d.overflowed);
        assert_eq!(g.path(7), Some(b.as_path()));
    }

    #[test]
    fn the_agents_own_writes_are_filtered_by_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let (mut g, _) = KnobFanotify::with_files(own_pid(), [(0, a.clone())]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .write_all(b"own")
            .unwrap();
        let mut out = Vec::new();
        let d = g.drain(&mut out).unwrap();
        assert!(out.is_empty(), "{out:?}");
        assert_eq!((d.events, d.own), (1, 1));
        // Another pid passed in: the same write is reported with the test's pid.
        let (mut other, _) = KnobFanotify::with_files(1, [(0, a.clone())]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .write_all(b"own")
            .unwrap();
        assert_eq!(drain_some(&mut other).0, vec![(0, own_pid())]);
    }

    #[test]
    fn a_storm_of_writes_drains_to_one_entry_per_knob_and_writer() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let b = file(dir.path(), "b");
        let c = file(dir.path(), "c");
        // pid 1 as "own": the test's writes are foreign here.
        let (mut g, _) =
            KnobFanotify::with_files(1, [(0, a.clone()), (1, b.clone()), (2, c)]).unwrap();
        let mut fa = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        let mut fb = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        for _ in 0..50_000 {
            fa.write_all(b"1").unwrap();
            fb.write_all(b"1").unwrap();
        }
        let mut out: Vec<(usize, i32)> = Vec::with_capacity(2);
        let cap = out.capacity();
        let mut d = g.drain(&mut out).unwrap();
        let mut events = d.events;
        while d.more {
            let mut again = Vec::new();
            d = g.drain(&mut again).unwrap();
            events += d.events;
        }
        // Since 5.13 the kernel merges an event into a queued one of the same file, writer and
        // mask: the storm of one writer queues one event per file.
        assert!((2..100).contains(&events), "{events} events");
        out.sort_unstable();
        assert_eq!(out, vec![(0, own_pid()), (1, own_pid())]);
        assert_eq!(
            out.capacity(),
            cap,
            "the result is bounded by knobs × writers"
        );
    }

    #[test]
    fn writers_per_knob_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let (mut g, _) = KnobFanotify::with_files(own_pid(), [(0, a.clone())]).unwrap();
        for _ in 0..WRITERS_PER_KNOB + 4 {
            sh_write(&a);
        }
        let mut out = Vec::new();
        let d = g.drain(&mut out).unwrap();
        assert_eq!(out.len(), WRITERS_PER_KNOB);
        assert_eq!(d.writers_dropped, 4);
    }

    #[test]
    fn two_knobs_on_one_inode_are_both_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let link = dir.path().join("link");
        std::fs::hard_link(&a, &link).unwrap();
        let (mut g, _) =
            KnobFanotify::with_files(own_pid(), [(4, a.clone()), (9, link.clone())]).unwrap();
        let pid = sh_write(&link);
        let (mut out, _) = drain_some(&mut g);
        out.sort_unstable();
        assert_eq!(out, vec![(4, pid), (9, pid)]);
    }

    #[test]
    fn a_failed_mark_names_the_file_and_the_errno() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let (g, failed) = KnobFanotify::with_files(own_pid(), [(0, missing.clone())]).unwrap();
        assert!(g.knobs().is_empty());
        match &failed[..] {
            [Error::Mark { path, errno }] => {
                assert_eq!(path, &missing);
                assert_eq!(*errno, Errno::ENOENT);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_write_to_a_removed_file_is_still_seen_by_its_descriptor() {
        // An inode mark pins the inode: a writer that kept the file open still raises
        // events after the name is gone (and nothing else can open it any more).
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let (mut g, _) = KnobFanotify::with_files(1, [(0, a.clone())]).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        std::fs::remove_file(&a).unwrap();
        f.write_all(b"1").unwrap();
        assert_eq!(drain_some(&mut g).0, vec![(0, own_pid())]);
    }
}
