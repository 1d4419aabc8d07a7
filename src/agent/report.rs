//! What a pass produces: the node's [`Report`] (one [`KnobReport`] per knob) and the [`Event`]s
//! of the pass, with the log line of each event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::foreign::Writer;
use crate::kernel::{ErrorKind, KernelError};
use crate::profile::Mode;
use crate::reconcile::StateKind;

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a knob could not be read or corrected: the `kind` label of failure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The kernel layer failed (see [`ErrorKind`]).
    Kernel(ErrorKind),
    /// The original could not be recorded (or the journal is unusable): nothing was written.
    Journal,
    /// A read-only command (`check`): nothing is ever written.
    ReadOnlyAgent,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Kernel(k) => k.as_str(),
            FailureKind::Journal => "journal",
            FailureKind::ReadOnlyAgent => "read_only_agent",
        }
    }
}

impl From<&KernelError> for FailureKind {
    fn from(e: &KernelError) -> Self {
        FailureKind::Kernel(e.kind())
    }
}

/// A correction that did not happen: why (for metrics) and the message (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl From<KernelError> for Failure {
    fn from(e: KernelError) -> Self {
        Failure {
            kind: FailureKind::from(&e),
            message: e.to_string(),
        }
    }
}

/// One knob in a report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KnobReport {
    pub name: String,
    /// The profile setting it belongs to (per-size THP knobs share `thp.per_size`).
    pub setting: String,
    pub desired: String,
    pub actual: Option<String>,
    pub in_sync: bool,
    pub mode: Mode,
    pub state: StateKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Corrected on [`super::CONTESTED_PASSES`] consecutive passes: something keeps rewriting it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub contested: bool,
    #[serde(skip)]
    pub desired_number: Option<i64>,
    #[serde(skip)]
    pub actual_number: Option<i64>,
}

/// The node's state after one pass.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Every enforce-mode knob is in sync (or not applicable).
    pub ready: bool,
    /// How `net.*` knobs are tied to the host's network namespace.
    pub netns: String,
    pub settings: Vec<KnobReport>,
    /// `writers: lock` was asked for but the kernel does not refuse writes: why (a stable
    /// reason: `permission`, `load_failed`, `no_btf`, `detached`, `break_glass`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_missing: Option<String>,
    /// `redis_processes.gate: true` only: the Redis processes whose own view is out of sync
    /// (`<owner> <check>: <why>`); any makes the node not ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redis_out_of_sync: Vec<String>,
}

impl Report {
    /// Enforce-mode knobs that are not in sync.
    pub fn failing(&self) -> impl Iterator<Item = &KnobReport> {
        self.settings
            .iter()
            .filter(|k| k.mode == Mode::Enforce && !k.in_sync)
    }

    /// Made before the `net.*` knobs' namespace was proven to be the host's.
    pub fn netns_unverified(&self) -> bool {
        self.netns.starts_with("unverified")
    }

    /// An enforce-mode knob could not be read.
    pub fn unreadable(&self) -> bool {
        self.failing().any(|k| k.state == StateKind::Error)
    }
}

/// Something that happened in a pass (logged, counted, and sent to reporters).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    DriftDetected {
        knob: String,
        desired: String,
        actual: String,
        mode: Mode,
        /// The process whose write drifted it, when the writer watch saw it.
        writer: Option<Arc<Writer>>,
        /// What found it: `inotify`, `fanotify` or `sysctl` (a watcher's notice woke the
        /// pass), or `poll`.
        seen_by: &'static str,
    },
    Corrected {
        knob: String,
        from: String,
        to: String,
        /// The process whose write was undone, when the writer watch saw it.
        writer: Option<Arc<Writer>>,
    },
    CorrectionFailed {
        knob: String,
        error: String,
        kind: FailureKind,
    },
    ReadFailed {
        knob: String,
        error: String,
        kind: FailureKind,
    },
    /// Corrected on [`super::CONTESTED_PASSES`] consecutive passes.
    Contested {
        knob: String,
        passes: u32,
        /// The last writer, when the writer watch saw it.
        writer: Option<Arc<Writer>>,
    },
    /// `writers: lock` is not in force (it could not load, was detached, or the break-glass
    /// file lifted it); `reason` is `None` when it is in force again.
    Lock { reason: Option<String> },
    /// A Redis process's own view of a setting became out of sync (see [`crate::procs`]).
    RedisViewOutOfSync {
        /// `redis <owner> <check>`: the key of the rate limit and of the Kubernetes series.
        key: String,
        pid: u32,
        /// `pod:<ns>/<name>`, `unit:<name>.service` or `pid:<pid>`.
        owner: String,
        /// `overcommit`, `thp`, `somaxconn` or `backlog`.
        check: &'static str,
        detail: String,
    },
}

impl Event {
    pub fn knob(&self) -> &str {
        match self {
            Event::DriftDetected { knob, .. }
            | Event::Corrected { knob, .. }
            | Event::CorrectionFailed { knob, .. }
            | Event::ReadFailed { knob, .. }
            | Event::Contested { knob, .. } => knob,
            Event::Lock { .. } => "writers.lock",
            Event::RedisViewOutOfSync { key, .. } => key,
        }
    }

    /// The kind of event (the Kubernetes event's reason).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DriftDetected { .. } => "DriftDetected",
            Event::Corrected { .. } => "DriftCorrected",
            Event::CorrectionFailed { .. } | Event::ReadFailed { .. } => "CorrectionFailed",
            Event::Contested { .. } => "Contested",
            Event::Lock { .. } => "Lock",
            Event::RedisViewOutOfSync { .. } => "RedisViewOutOfSync",
        }
    }
}

/// At most [`EVENTS_PER_SECOND`] events of a kind per knob a second go through (to the log, to
/// the Kubernetes reporter); the others are counted and reported with the next that goes
/// through. A knob rewritten a thousand times a second is corrected a thousand times, and
/// logged a few times.
#[derive(Debug, Default)]
pub struct EventLimit {
    /// (kind, knob) → (start of its current second, let through in it, held back since the
    /// last let through).
    last: HashMap<(&'static str, String), (Instant, u32, u64)>,
}

/// Events of a kind per knob let through in any second.
pub const EVENTS_PER_SECOND: u32 = 3;

/// Keys kept before the quiet ones are forgotten.
const LIMIT_KEYS_MAX: usize = 256;

impl EventLimit {
    /// `Some(repeated)`: `e` goes through, with the events of its kind and knob held back since
    /// the last that went through; `None`: held back.
    pub fn admit(&mut self, e: &Event, now: Instant) -> Option<u64> {
        if self.last.len() >= LIMIT_KEYS_MAX {
            self.last.retain(|_, (at, _, _)| {
                now.saturating_duration_since(*at) < Duration::from_secs(1)
            });
        }
        let (start, passed, held) = self
            .last
            .entry((e.kind(), e.knob().to_string()))
            .or_insert((now, 0, 0));
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *passed = 0;
        }
        if *passed >= EVENTS_PER_SECOND {
            *held += 1;
            return None;
        }
        *passed += 1;
        Some(std::mem::take(held))
    }
}

pub fn log_event(e: &Event, repeated: u64) {
    // The writer, when the writer watch named it, as one more field.
    macro_rules! with_writer {
        ($lvl:ident, $w:expr, $($rest:tt)*) => {
            match $w {
                Some(w) => tracing::$lvl!(writer = %w, $($rest)*),
                None => tracing::$lvl!($($rest)*),
            }
        };
    }
    match e {
        Event::DriftDetected {
            knob,
            desired,
            actual,
            mode,
            writer,
            seen_by,
        } => with_writer!(
            warn,
            writer,
            knob,
            desired,
            actual,
            mode = mode.as_str(),
            seen_by,
            repeated,
            "drift detected"
        ),
        Event::Corrected {
            knob,
            from,
            to,
            writer,
        } => with_writer!(info, writer, knob, from, to, repeated, "drift corrected"),
        Event::CorrectionFailed { knob, error, kind } => {
            tracing::error!(knob, error, kind = kind.as_str(), "correction failed")
        }
        Event::ReadFailed { knob, error, kind } => {
            tracing::error!(knob, error, kind = kind.as_str(), "cannot read knob")
        }
        Event::Contested {
            knob,
            passes,
            writer,
        } => with_writer!(
            warn,
            writer,
            knob,
            passes,
            "contested: corrected on consecutive passes, something keeps rewriting it"
        ),
        Event::Lock { reason: Some(r) } => tracing::error!(
            reason = %r,
            "writers lock not in force: foreign writes are corrected, not refused"
        ),
        Event::Lock { reason: None } => tracing::info!("writers lock in force"),
        Event::RedisViewOutOfSync {
            pid,
            owner,
            check,
            detail,
            ..
        } => tracing::warn!(
            pid,
            owner,
            check,
            detail,
            repeated,
            "redis process sees a setting out of sync"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_of_one_event_goes_through_a_few_times_a_second_with_its_count() {
        let e = Event::Corrected {
            knob: "vm.overcommit_memory".into(),
            from: "0".into(),
            to: "1".into(),
            writer: None,
        };
        let other = Event::Corrected {
            knob: "thp.enabled".into(),
            from: "always".into(),
            to: "never".into(),
            writer: None,
        };
        let mut l = EventLimit::default();
        let t0 = Instant::now();
        for _ in 0..EVENTS_PER_SECOND {
            assert_eq!(l.admit(&e, t0), Some(0), "a few in a second all go through");
        }
        assert_eq!(
            l.admit(&other, t0),
            Some(0),
            "another knob is not held back"
        );
        let held = (0..5000)
            .filter(|_| l.admit(&e, t0 + Duration::from_millis(500)).is_none())
            .count();
        assert_eq!(held, 5000);
        assert_eq!(l.admit(&e, t0 + Duration::from_secs(1)), Some(5000));
    }
}
