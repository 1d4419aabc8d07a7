//! Foreign writes: what the watchers (`writers`) tell the agent, in words both understand.
//!
//! A watcher that sees a knob written posts a [`Notice`] to the [`Inbox`] through a [`Port`]
//! the daemon wires; the enforce thread takes the notices at its next pass, and the agent alone
//! decides what each write meant ([`WriteAction`]) and counts it. Nothing here judges a write.
//!
//! The inbox is bounded whatever the writers do: per knob it keeps a "written" flag (an
//! anonymous inotify notice costs nothing more), at most [`NAMED_MAX`] named writes (a writer
//! that writes again is counted on its last notice, not stored twice), and it asks for at most
//! one wake-up until the enforce thread takes what is there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::kernel::Location;
use crate::profile::{Desired, Mode};

/// A knob as the watchers need it, indexed as the agent's.
#[derive(Debug, Clone)]
pub struct WatchedKnob {
    pub name: String,
    pub location: Location,
    /// Its file under the agent's roots.
    pub path: std::path::PathBuf,
    pub desired: Desired,
    pub mode: Mode,
}

/// The process behind a foreign write, as the watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Writer {
    /// Thread-group id (the process), in the initial PID namespace (the agent's, when it runs
    /// without the host's PID namespace and saw the write by fanotify).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Which watcher saw a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// inotify: the file was modified; by whom is unknown.
    Inotify,
    /// fanotify: the file was modified by a process (after the write).
    Fanotify,
    /// The `cgroup/sysctl` BPF program: a sysctl write, seen before the kernel applies it, with
    /// the old and the new value (and refused in lock mode).
    Sysctl,
}

/// A write a watcher saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The knob's index in the agent's list.
    pub knob: usize,
    pub source: Source,
    /// Who wrote it, when the watcher can tell.
    pub writer: Option<Arc<Writer>>,
    /// The value before the write (the sysctl program only).
    pub old: Option<String>,
    /// The bytes written (the sysctl program only: the kernel has not applied them yet).
    pub new: Option<String>,
    /// Refused in the kernel (lock mode).
    pub refused: bool,
    pub at: Instant,
    /// Writes this notice stands for (the same writer again, before the pass took them).
    pub count: u64,
}

impl Notice {
    /// A write seen with no more than the knob (inotify).
    pub fn anonymous(knob: usize, at: Instant) -> Notice {
        Notice {
            knob,
            source: Source::Inotify,
            writer: None,
            old: None,
            new: None,
            refused: false,
            at,
            count: 1,
        }
    }
}

/// Named writes kept per knob between two passes; more are counted as dropped.
pub const NAMED_MAX: usize = 16;

#[derive(Debug, Default, Clone)]
struct Slot {
    /// Written since the last pass (by anyone).
    written: bool,
    named: Vec<Notice>,
}

/// What a pass takes for one knob.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Taken {
    /// The file was written since the last pass (a notice of any kind).
    pub written: bool,
    /// The named writes, oldest first.
    pub named: Vec<Notice>,
}

/// Notices waiting for the enforce pass, per knob.
#[derive(Debug)]
pub struct Inbox {
    slots: Mutex<Vec<Slot>>,
    /// A wake-up was asked for and the enforce thread has not taken the notices since.
    waking: AtomicBool,
    dropped: AtomicU64,
}

impl Inbox {
    pub fn new(knobs: usize) -> Inbox {
        Inbox {
            slots: Mutex::new(vec![Slot::default(); knobs]),
            waking: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a notice; true when the enforce thread must be woken (the first notice since it
    /// last took them).
    pub fn post(&self, n: Notice) -> bool {
        {
            let mut s = self.slots();
            let Some(slot) = s.get_mut(n.knob) else {
                return false;
            };
            slot.written = true;
            if n.writer.is_some() {
                let same = slot.named.last_mut().filter(|l| {
                    l.writer.as_ref().map(|w| w.pid) == n.writer.as_ref().map(|w| w.pid)
                        && l.source == n.source
                        && l.refused == n.refused
                        && l.new == n.new
                });
                if let Some(last) = same {
                    last.count += n.count;
                    last.at = n.at;
                } else if slot.named.len() < NAMED_MAX {
                    slot.named.push(n);
                } else {
                    self.dropped.fetch_add(n.count, Ordering::Relaxed);
                }
            }
        }
        !self.waking.swap(true, Ordering::AcqRel)
    }

    /// Called by the enforce thread before it takes the notices of a pass: a notice posted
    /// from now on wakes it again.
    pub fn rearm(&self) {
        self.waking.store(false, Ordering::Release);
    }

    /// The notices of `knob`, leaving none.
    pub fn take(&self, knob: usize) -> Taken {
        let mut s = self.slots();
        s.get_mut(knob)
            .map(|slot| Taken {
                written: std::mem::take(&mut slot.written),
                named: std::mem::take(&mut slot.named),
            })
            .unwrap_or_default()
    }

    /// Puts back named writes taken too early (a sysctl write seen before the kernel applied
    /// it); they go before any posted since.
    pub fn put_back(&self, knob: usize, mut named: Vec<Notice>) {
        let mut s = self.slots();
        if let Some(slot) = s.get_mut(knob) {
            named.append(&mut slot.named);
            named.truncate(NAMED_MAX);
            slot.named = named;
        }
    }

    /// Any notice waiting.
    pub fn any(&self) -> bool {
        self.slots()
            .iter()
            .any(|s| s.written || !s.named.is_empty())
    }

    /// Named writes dropped since the last call (more than [`NAMED_MAX`] between two passes).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// Where watchers deliver: the inbox, and the enforce thread's wake-up (coalesced).
pub struct Port {
    inbox: Arc<Inbox>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Port {
    pub fn new(inbox: Arc<Inbox>, wake: Box<dyn Fn() + Send + Sync>) -> Port {
        Port { inbox, wake }
    }

    pub fn post(&self, n: Notice) {
        if self.inbox.post(n) {
            (self.wake)();
        }
    }

    /// Asks for a pass with no notice: the watchers' own state changed (the lock).
    pub fn nudge(&self) {
        (self.wake)();
    }
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port").field("inbox", &self.inbox).finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn writer(pid: u32, comm: &str) -> Arc<Writer> {
        Arc::new(Writer {
            pid,
            tid: pid,
            comm: comm.into(),
            ppid: 1,
            parent_comm: "init".into(),
            uid: 0,
            cgroup: None,
            pod_uid: None,
            container_id: None,
            cmdline: None,
        })
    }

    fn named(knob: usize, pid: u32, new: &str) -> Notice {
        Notice {
            knob,
            source: Source::Sysctl,
            writer: Some(writer(pid, "w")),
            old: None,
            new: Some(new.into()),
            refused: false,
            at: Instant::now(),
            count: 1,
        }
    }

    #[test]
    fn a_storm_asks_for_one_wake_and_keeps_a_bounded_inbox() {
        let inbox = Inbox::new(2);
        let mut wakes = 0;
        for i in 0..100_000u32 {
            // One writer rewriting, and many short-lived writers.
            wakes += usize::from(inbox.post(named(0, 7, "0")));
            wakes += usize::from(inbox.post(named(1, 1000 + i, "0")));
            wakes += usize::from(inbox.post(Notice::anonymous(0, Instant::now())));
        }
        assert_eq!(
            wakes, 1,
            "one wake until the enforce thread takes the notices"
        );
        let t = inbox.take(0);
        assert!(t.written);
        assert_eq!(
            t.named.len(),
            1,
            "the same writer again is counted, not stored"
        );
        assert_eq!(t.named[0].count, 100_000);
        let t = inbox.take(1);
        assert_eq!(t.named.len(), NAMED_MAX);
        assert_eq!(inbox.take_dropped(), 100_000 - NAMED_MAX as u64);
        assert!(!inbox.any());
        // Still armed off until the enforce thread re-arms.
        assert!(!inbox.post(Notice::anonymous(0, Instant::now())));
        inbox.rearm();
        assert!(inbox.post(Notice::anonymous(0, Instant::now())));
    }

    #[test]
    fn notices_of_an_unknown_knob_are_ignored_and_put_back_ones_come_first() {
        let inbox = Inbox::new(1);
        assert!(!inbox.post(named(5, 1, "0")));
        assert!(!inbox.any());
        inbox.post(named(0, 1, "0"));
        let early = inbox.take(0).named;
        inbox.post(named(0, 2, "2"));
        inbox.put_back(0, early);
        let t = inbox.take(0);
        let pids: Vec<u32> = t
            .named
            .iter()
            .filter_map(|n| n.writer.as_ref().map(|w| w.pid))
            .collect();
        assert_eq!(pids, [1, 2]);
        assert!(
            t.written,
            "set by the second write, after the first was taken"
        );
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
