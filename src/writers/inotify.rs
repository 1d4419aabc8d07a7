//! Knob writes seen by inotify: no privilege, no per-syscall hook.
//!
//! One inotify instance (non-blocking, close-on-exec) watches every knob file for `IN_MODIFY`,
//! which the VFS raises after each successful write to the file, whoever the writer and however
//! the write came (`write`, `pwrite`, `writev`, `sendfile`, `splice`, io_uring: see
//! `tests/knob_events.rs` for the kernel's list). A watch needs only read access to the file. A
//! write that fails (`EINVAL` for a word the kernel does not take) raises nothing: the value
//! did not change. An open with `O_TRUNC` (a shell's `>`) raises `IN_MODIFY` of its own, the
//! write that follows refused or not.
//!
//! `IN_CLOSE_WRITE` is not watched. On procfs and sysfs the value changes at the `write`, not
//! at the `close`, so `IN_MODIFY` is the timely event; `IN_CLOSE_WRITE` follows every write
//! that is closed (twice the events for no news), misses one whose descriptor stays open, and
//! fires also for an open for writing with no write at all.
//!
//! `/proc/sys/net/*` files are per network namespace: a watch is on the file of the namespace
//! of the thread that added it, and a write in another namespace does not fire it. Two knobs
//! on one inode share one watch descriptor, and both are reported.
//!
//! The kernel merges an event identical to the last queued one, so a storm of writes to one
//! file queues one event until it is read; interleaved with other files, the queue
//! (`fs.inotify.max_queued_events`, 16384 by default) fills and the kernel queues
//! `IN_Q_OVERFLOW` instead: events were lost, and [`Drained::overflowed`] tells the caller to
//! run a full pass. A procfs or sysfs file that disappears (its network namespace or device
//! gone) raises no event on the kernels measured; a file on another filesystem that is
//! deleted, or whose filesystem is unmounted, ends its watch (`IN_IGNORED`), reported in
//! [`Drained::gone`].

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Most events read in one [`KnobInotify::drain`]; a writer that keeps the queue full cannot
/// keep the caller in one drain for ever. The descriptor stays readable when more are queued.
pub const DRAIN_MAX_EVENTS: usize = 65_536;

/// What failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("inotify_init1: {0}")]
    Init(#[source] Errno),
    #[error("inotify watch on {}: {errno}", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("reading inotify events: {0}")]
    Read(#[source] Errno),
}

/// Besides the knobs pushed, what one [`KnobInotify::drain`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Events read, before deduplication.
    pub events: usize,
    /// The kernel's queue overflowed and events were lost: every knob was pushed, and the
    /// caller must run a full pass.
    pub overflowed: bool,
    /// Knobs whose watch ended (file deleted, filesystem unmounted): no event comes for them
    /// any more. They were pushed too.
    pub gone: Vec<usize>,
    /// [`DRAIN_MAX_EVENTS`] were read and more may be queued: drain again.
    pub more: bool,
}

/// An inotify watch over the knob files.
#[derive(Debug)]
pub struct KnobInotify {
    inotify: Inotify,
    /// Distinct knob indices watched; a position here is a knob's slot.
    knobs: Vec<usize>,
    /// The file of each slot.
    paths: Vec<PathBuf>,
    /// Watch descriptor → slots on that inode.
    by_wd: HashMap<i32, Vec<usize>>,
    /// Per slot: pushed in this drain.
    seen: Vec<bool>,
}

impl AsFd for KnobInotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

impl KnobInotify {
    /// An instance watching nothing yet.
    pub fn new() -> Result<KnobInotify, Error> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(Error::Init)?;
        Ok(KnobInotify {
            inotify,
            knobs: Vec::new(),
            paths: Vec::new(),
            by_wd: HashMap::new(),
            seen: Vec::new(),
        })
    }

    /// An instance watching each `(knob index, file)`; the files that could not be watched
    /// are returned with the reason, the others are watched.
    pub fn with_files<I>(files: I) -> Result<(KnobInotify, Vec<Error>), Error>
    where
        I: IntoIterator<Item = (usize, PathBuf)>,
    {
        let mut w = KnobInotify::new()?;
        let mut failed = Vec::new();
        for (knob, path) in files {
            if let Err(e) = w.watch(knob, &path) {
                failed.push(e);
            }
        }
        Ok((w, failed))
    }

    /// Watches `path` for `knob`. A path is resolved by the calling thread: its network
    /// namespace picks the `/proc/sys/net` file, its mount namespace the sysfs. Watching the
    /// same knob again replaces its file in reports, not the first watch.
    pub fn watch(&mut self, knob: usize, path: &Path) -> Result<(), Error> {
        let wd = self
            .inotify
            .add_watch(path, AddWatchFlags::IN_MODIFY)
            .map_err(|errno| Error::Watch {
                path: path.to_path_buf(),
                errno,
            })?;
        let slot = match self.knobs.iter().position(|&k| k == knob) {
            Some(s) => {
                self.paths[s] = path.to_path_buf();
                s
            }
            None => {
                self.knobs.push(knob);
                self.paths.push(path.to_path_buf());
                self.seen.push(false);
                self.knobs.len() - 1
            }
        };
        let slots = self.by_wd.entry(wd.as_raw()).or_default();
        if !slots.contains(&slot) {
            slots.push(slot);
        }
        Ok(())
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// The knob indices watched, in the order first watched.
    pub fn knobs(&self) -> &[usize] {
        &self.knobs
    }

    /// The file watched for `knob`.
    pub fn path(&self, knob: usize) -> Option<&Path> {
        let slot = self.knobs.iter().position(|&k| k == knob)?;
        Some(&self.paths[slot])
    }

    /// Reads every queued event without blocking (at most [`DRAIN_MAX_EVENTS`]) and pushes
    /// onto `out` each knob modified, once, in the order first seen: at most one entry per
    /// knob, however many writes. Costs O(events read); uses no memory beyond a 4 KiB read.
    pub fn drain(&mut self, out: &mut Vec<usize>) -> Result<Drained, Error> {
        self.seen.fill(false);
        let mut d = Drained::default();
        loop {
            if d.events >= DRAIN_MAX_EVENTS {
                d.more = true;
                break;
            }
            let events = match self.inotify.read_events() {
                Ok(ev) => ev,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::Read(e)),
            };
            if events.is_empty() {
                break;
            }
            for ev in events {
                d.events += 1;
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    d.overflowed = true;
                    for slot in 0..self.knobs.len() {
                        self.push(slot, out);
                    }
                    continue;
                }
                let wd = ev.wd.as_raw();
                let Some(slots) = self.by_wd.get(&wd) else {
                    continue; // a watch already ended
                };
                for &slot in slots {
                    if !self.seen[slot] {
                        self.seen[slot] = true;
                        out.push(self.knobs[slot]);
                    }
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED)
                    && let Some(slots) = self.by_wd.remove(&wd)
                {
                    d.gone.extend(slots.into_iter().map(|s| self.knobs[s]));
                }
            }
        }
        Ok(d)
    }

    fn push(&mut self, slot: usize, out: &mut Vec<usize>) {
        if !self.seen[slot] {
            self.seen[slot] = true;
            out.push(self.knobs[slot]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    fn file(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "0\n").unwrap();
        p
    }

    /// Drains until `out` holds something or 5 s passed (a bounded wait, not a timing
    /// assertion: the events are queued before the writer returns).
    fn drain_some(w: &mut KnobInotify) -> (Vec<usize>, Drained) {
        let mut out = Vec::new();
        let mut all = Drained::default();
        for _ in 0..50 {
            let d = w.drain(&mut out).unwrap();
            all.events += d.events;
            all.overflowed |= d.overflowed;
            all.gone.extend(d.gone);
            if !out.is_empty() {
                break;
            }
            let fd = w.fd();
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        }
        (out, all)
    }

    #[test]
    fn a_write_from_a_child_process_names_its_knob() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let b = file(dir.path(), "b");
        let (mut w, failed) = KnobInotify::with_files([(3, a.clone()), (7, b.clone())]).unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("echo 1 > {}", b.display()))
            .status()
            .unwrap();
        assert!(st.success());
        let (out, d) = drain_some(&mut w);
        assert_eq!(out, vec![7]);
        assert!(!d.overflowed);
        assert_eq!(w.path(7), Some(b.as_path()));
        // Nothing is left queued.
        let mut more = Vec::new();
        assert_eq!(w.drain(&mut more).unwrap().events, 0);
        assert!(more.is_empty());
    }

    #[test]
    fn reading_a_knob_or_opening_it_without_a_write_is_not_a_modification() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let (mut w, _) = KnobInotify::with_files([(0, a.clone())]).unwrap();
        std::fs::read_to_string(&a).unwrap();
        drop(std::fs::OpenOptions::new().write(true).open(&a).unwrap());
        let mut out = Vec::new();
        let d = w.drain(&mut out).unwrap();
        assert_eq!((d.events, out), (0, vec![]));
        std::fs::write(&a, "1").unwrap();
        assert_eq!(drain_some(&mut w).0, vec![0]);
    }

    #[test]
    fn a_storm_of_writes_drains_to_one_entry_per_knob() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let b = file(dir.path(), "b");
        let c = file(dir.path(), "c");
        let (mut w, _) = KnobInotify::with_files([(0, a.clone()), (1, b.clone()), (2, c)]).unwrap();
        let mut fa = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        let mut fb = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        // Interleaved, so that the kernel cannot merge them into one event per file: the
        // queue (16384 by default) overflows.
        for _ in 0..50_000 {
            fa.write_all(b"1").unwrap();
            fb.write_all(b"1").unwrap();
        }
        let mut out = Vec::with_capacity(3);
        let cap = out.capacity();
        let mut overflowed = false;
        let mut events = 0;
        loop {
            let before = out.len();
            let d = w.drain(&mut out).unwrap();
            events += d.events;
            overflowed |= d.overflowed;
            let mut this: Vec<usize> = out[before..].to_vec();
            this.sort_unstable();
            this.dedup();
            assert_eq!(this.len(), out.len() - before, "a knob twice in one drain");
            if !d.more {
                break;
            }
        }
        assert!(events > 1000, "{events} events");
        // An overflow reports every knob; otherwise a and b.
        out.sort_unstable();
        if overflowed {
            assert_eq!(out, vec![0, 1, 2]);
        } else {
            assert_eq!(out, vec![0, 1]);
        }
        assert_eq!(
            out.capacity(),
            cap,
            "the result is bounded by the knob count"
        );
    }

    #[test]
    fn a_storm_on_one_file_is_merged_by_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let (mut w, _) = KnobInotify::with_files([(5, a.clone())]).unwrap();
        let mut fa = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        for _ in 0..100_000 {
            fa.write_all(b"1").unwrap();
        }
        let mut out = Vec::new();
        let d = w.drain(&mut out).unwrap();
        assert_eq!(out, vec![5]);
        assert_eq!(d.events, 1, "identical consecutive events are merged");
        assert!(!d.overflowed);
    }

    #[test]
    fn two_knobs_on_one_inode_are_both_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let link = dir.path().join("link");
        std::fs::hard_link(&a, &link).unwrap();
        let (mut w, _) =
            KnobInotify::with_files([(4, a.clone()), (9, link.clone()), (2, a.clone())]).unwrap();
        assert_eq!(w.by_wd.len(), 1, "one inode, one watch descriptor");
        std::fs::write(&link, "1").unwrap();
        let (mut out, _) = drain_some(&mut w);
        out.sort_unstable();
        assert_eq!(out, vec![2, 4, 9]);
    }

    #[test]
    fn a_removed_file_is_reported_gone() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let b = file(dir.path(), "b");
        let (mut w, _) = KnobInotify::with_files([(0, a.clone()), (1, b.clone())]).unwrap();
        std::fs::remove_file(&a).unwrap();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for _ in 0..50 {
            gone.extend(w.drain(&mut out).unwrap().gone);
            if !gone.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(gone, vec![0]);
        assert_eq!(out, vec![0]);
        // The other knob is still watched.
        std::fs::write(&b, "1").unwrap();
        assert_eq!(drain_some(&mut w).0, vec![1]);
    }

    #[test]
    fn a_failed_watch_names_the_file_and_the_errno() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a");
        let missing = dir.path().join("missing");
        let (w, failed) = KnobInotify::with_files([(0, missing.clone()), (1, a)]).unwrap();
        assert_eq!(w.knobs(), &[1]);
        assert_eq!(failed.len(), 1);
        match &failed[0] {
            Error::Watch { path, errno } => {
                assert_eq!(path, &missing);
                assert_eq!(*errno, Errno::ENOENT);
            }
            e => panic!("{e:?}"),
        }
        let msg = failed[0].to_string();
        assert!(msg.contains("missing") && msg.contains("ENOENT"), "{msg}");
    }
}
