//! The agent: observe every knob, diff against the profile, correct enforce-mode drift (after
//! journalling the original), and produce a [`Report`] plus the [`Event`]s of this pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backoff::jittered;
use crate::journal::Journal;
use crate::kernel::{ErrorKind, HostFs, KernelError, Reading, Target};
use crate::profile::{Mode, Profile};
use crate::reconcile::{self, Action, Observed, State, StateKind};
use crate::writers::{Pending, PendingWrite, WatchedKnob, WriteAction, Writer};

/// A foreign write not yet visible to a pass is kept this long for the next passes, then
/// counted as observed (it was rejected by the kernel, or undone by its writer).
pub const PENDING_GRACE: Duration = Duration::from_secs(1);

/// Longest wait between two correction attempts of a knob that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A knob that had to be corrected again on this many consecutive passes after a successful
/// correction is `Contested`: something keeps rewriting it.
pub const CONTESTED_PASSES: u32 = 3;

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
    /// Corrected on [`CONTESTED_PASSES`] consecutive passes: something keeps rewriting it.
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
}

impl Report {
    /// Enforce-mode knobs that are not in sync.
    pub fn failing(&self) -> impl Iterator<Item = &KnobReport> {
        self.settings
            .iter()
            .filter(|k| k.mode == Mode::Enforce && !k.in_sync)
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
    /// Corrected on [`CONTESTED_PASSES`] consecutive passes.
    Contested {
        knob: String,
        passes: u32,
        /// The last writer, when the writer watch saw it.
        writer: Option<Arc<Writer>>,
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
        }
    }
}

/// Where originals are recorded before a change.
#[derive(Debug)]
pub enum JournalSlot {
    /// No state directory: this agent never writes (check).
    None,
    Ready(Journal),
    /// The journal could not be loaded: no knob is changed until it is fixed.
    Broken(String),
}

#[derive(Debug, Default, Clone)]
struct Memory {
    last: Option<StateKind>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// The previous pass corrected this knob.
    corrected: bool,
    /// Consecutive passes that found it drifted right after a correction.
    redrifts: u32,
}

/// One node agent over a resolved profile.
#[derive(Debug)]
pub struct Agent {
    fs: HostFs,
    targets: Vec<Target>,
    memory: Vec<Memory>,
    journal: JournalSlot,
    interval: Duration,
    /// The last pass's report, reused while nothing changed.
    last: Option<Arc<Report>>,
    /// Something outside the knobs changed (the network-namespace proof): the next pass is full.
    dirty: bool,
    /// Foreign writes handed over by the writer watch.
    pending: Option<Arc<Pending>>,
    /// What became of them, for the metrics: (knob, writer's name, action).
    foreign: Vec<(String, String, WriteAction)>,
}

/// The wait after `failures` failed corrections: the interval doubling up to [`MAX_BACKOFF`],
/// ±20 % jitter.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_BACKOFF);
    jittered(base, 0.2)
}

impl Agent {
    pub fn new(fs: HostFs, profile: &Profile, journal: JournalSlot) -> Agent {
        let targets = fs.resolve(profile);
        Agent {
            memory: vec![Memory::default(); targets.len()],
            targets,
            fs,
            journal,
            interval: profile.interval,
            last: None,
            dirty: true,
            pending: None,
            foreign: Vec::new(),
        }
    }

    /// The knobs as the writer watch needs them, indexed as the agent's.
    pub fn watched_knobs(&self) -> Vec<WatchedKnob> {
        self.targets
            .iter()
            .map(|t| WatchedKnob {
                name: t.name.clone(),
                location: t.location.clone(),
                path: self.fs.path(&t.location),
                desired: t.desired.clone(),
                mode: t.mode,
            })
            .collect()
    }

    /// Takes foreign writes from the writer watch: a knob with one runs a full pass.
    pub fn attach_pending(&mut self, pending: Arc<Pending>) {
        self.pending = Some(pending);
    }

    /// Foreign writes waiting for a pass (the write not yet visible).
    pub fn has_pending(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.any())
    }

    /// What became of the foreign writes of the passes since the last call.
    pub fn take_foreign_outcomes(&mut self) -> Vec<(String, String, WriteAction)> {
        std::mem::take(&mut self.foreign)
    }

    pub fn fs(&self) -> &HostFs {
        &self.fs
    }

    pub fn fs_mut(&mut self) -> &mut HostFs {
        self.dirty = true;
        &mut self.fs
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Reads every knob; writes nothing.
    pub fn observe(&mut self) -> Report {
        let mut settings = Vec::with_capacity(self.targets.len());
        for t in &mut self.targets {
            let obs = self.fs.read(t);
            let state = reconcile::evaluate(&t.desired, &obs);
            settings.push(knob_report(t, &obs, &state, None));
        }
        self.report(settings)
    }

    /// What `apply` would write, (knob, actual, value to write), with the report of the same
    /// read; writes nothing.
    pub fn plan(&mut self) -> (Report, Vec<(String, String, String)>) {
        let mut changes = vec![];
        let mut settings = Vec::with_capacity(self.targets.len());
        for t in &mut self.targets {
            let obs = self.fs.read(t);
            let state = reconcile::evaluate(&t.desired, &obs);
            if let (Action::Correct(v), Ok(Some(r))) =
                (reconcile::decide(t.mode, &t.desired, &state), &obs)
            {
                changes.push((t.name.clone(), r.value.clone(), v));
            }
            settings.push(knob_report(t, &obs, &state, None));
        }
        (self.report(settings), changes)
    }

    /// One pass: observe, correct enforce-mode drift (journal first), report. In the steady
    /// state (no knob's bytes changed since the last pass, no correction pending or just made,
    /// nothing else changed) the previous report is returned as it is, without events: one
    /// `pread` per knob and no allocation.
    pub fn reconcile(&mut self, now: Instant) -> (Arc<Report>, Vec<Event>) {
        if let Some(last) = &self.last
            && !self.dirty
            && !self.has_pending()
            && self
                .memory
                .iter()
                .all(|m| m.retry_at.is_none() && !m.corrected)
            && self.targets.iter().all(|t| self.fs.unchanged(t))
        {
            return (last.clone(), Vec::new());
        }
        self.reconcile_uncached(now)
    }

    /// One pass without the steady-state shortcut: every knob read, parsed and evaluated.
    pub fn reconcile_uncached(&mut self, now: Instant) -> (Arc<Report>, Vec<Event>) {
        self.dirty = false;
        let mut events = vec![];
        let mut settings = Vec::with_capacity(self.targets.len());
        for (i, (t, mem)) in self
            .targets
            .iter_mut()
            .zip(self.memory.iter_mut())
            .enumerate()
        {
            let mut obs = self.fs.read(t);
            let mut state = reconcile::evaluate(&t.desired, &obs);
            let mut note = None;
            let mut writes = self.pending.as_ref().map(|p| p.take(i)).unwrap_or_default();
            if state != State::Drift && !writes.is_empty() {
                if writes
                    .iter()
                    .all(|w| now.saturating_duration_since(w.at) < PENDING_GRACE)
                    && let Some(p) = &self.pending
                {
                    p.put_back(i, std::mem::take(&mut writes)); // not visible yet
                } else {
                    count(&mut self.foreign, &t.name, &writes, WriteAction::Observed);
                    writes.clear();
                }
            }
            let writer = writes.last().map(|w| w.writer.clone());
            if state == State::Drift && mem.last != Some(StateKind::Drift) {
                events.push(Event::DriftDetected {
                    knob: t.name.clone(),
                    desired: t.desired.to_string(),
                    actual: actual_text(&obs),
                    mode: t.mode,
                    writer: writer.clone(),
                });
            }
            if let State::Error(e) = &state
                && mem.last != Some(StateKind::Error)
            {
                events.push(Event::ReadFailed {
                    knob: t.name.clone(),
                    error: e.to_string(),
                    kind: FailureKind::from(e),
                });
            }
            if state == State::Drift && mem.corrected {
                mem.redrifts += 1;
                if mem.redrifts == CONTESTED_PASSES {
                    events.push(Event::Contested {
                        knob: t.name.clone(),
                        passes: CONTESTED_PASSES,
                        writer: writer.clone(),
                    });
                }
            } else if state != State::Drift {
                mem.redrifts = 0;
            }
            mem.corrected = false;
            mem.last = Some(state.kind());
            let mut undone = false;
            if let Action::Correct(value) = reconcile::decide(t.mode, &t.desired, &state) {
                if mem.retry_at.is_some_and(|at| now < at) {
                    note = mem
                        .last_error
                        .clone()
                        .map(|e| format!("{e} (retrying with backoff)"));
                } else {
                    let from = actual_text(&obs);
                    match correct(&self.fs, &mut self.journal, t, &from, &value) {
                        Ok(r) => {
                            events.push(Event::Corrected {
                                knob: t.name.clone(),
                                from,
                                to: r.value.clone(),
                                writer: writer.clone(),
                            });
                            undone = true;
                            obs = Ok(Some(r));
                            state = State::InSync;
                            *mem = Memory {
                                last: Some(state.kind()),
                                corrected: true,
                                redrifts: mem.redrifts,
                                ..Memory::default()
                            };
                        }
                        Err(failure) => {
                            mem.failures += 1;
                            mem.retry_at = Some(now + backoff(self.interval, mem.failures));
                            mem.last_error = Some(failure.message.clone());
                            events.push(Event::CorrectionFailed {
                                knob: t.name.clone(),
                                error: failure.message.clone(),
                                kind: failure.kind,
                            });
                            note = Some(failure.message);
                        }
                    }
                }
            }
            let action = if undone {
                WriteAction::Corrected
            } else {
                WriteAction::Observed
            };
            count(&mut self.foreign, &t.name, &writes, action);
            let mut k = knob_report(t, &obs, &state, note);
            k.contested = mem.redrifts >= CONTESTED_PASSES;
            settings.push(k);
        }
        for e in &events {
            log_event(e);
        }
        let report = Arc::new(self.report(settings));
        self.last = Some(report.clone());
        (report, events)
    }

    fn report(&self, settings: Vec<KnobReport>) -> Report {
        Report {
            ready: settings
                .iter()
                .all(|k| k.in_sync || k.mode != Mode::Enforce),
            netns: self.fs.netns().describe(),
            settings,
        }
    }
}

/// Journal the original, write, and verify by read-back.
fn correct(
    fs: &HostFs,
    journal: &mut JournalSlot,
    t: &mut Target,
    original: &str,
    value: &str,
) -> Result<Reading, Failure> {
    let journal_failure = |message: String| Failure {
        kind: FailureKind::Journal,
        message,
    };
    match journal {
        JournalSlot::Ready(j) => {
            let netns = if t.location.is_net() {
                fs.net_ns_ino()
            } else {
                None
            };
            j.record(&t.name, &t.location, original, netns)
                .map_err(|e| {
                    journal_failure(format!(
                        "{}: not changed, the original could not be recorded: {e}",
                        t.name
                    ))
                })?;
        }
        JournalSlot::Broken(why) => {
            return Err(journal_failure(format!(
                "{}: not changed, the state journal is unusable: {why}",
                t.name
            )));
        }
        JournalSlot::None => {
            return Err(Failure {
                kind: FailureKind::ReadOnlyAgent,
                message: format!("{}: not changed (read-only agent)", t.name),
            });
        }
    }
    let r = fs.write(t, value)?;
    if reconcile::satisfies(&t.desired, &r) {
        Ok(r)
    } else {
        Err(KernelError::NotApplied {
            knob: t.name.clone(),
            path: fs.path(&t.location),
            wrote: value.to_string(),
            read: r.value,
        }
        .into())
    }
}

fn count(
    out: &mut Vec<(String, String, WriteAction)>,
    knob: &str,
    writes: &[PendingWrite],
    a: WriteAction,
) {
    out.extend(
        writes
            .iter()
            .map(|w| (knob.to_string(), w.writer.comm.clone(), a)),
    );
}

fn actual_text(obs: &Observed) -> String {
    match obs {
        Ok(Some(r)) => r.value.clone(),
        Ok(None) => "n/a".into(),
        Err(_) => "?".into(),
    }
}

fn knob_report(t: &Target, obs: &Observed, state: &State, note: Option<String>) -> KnobReport {
    let (actual, actual_number) = match obs {
        Ok(Some(r)) => (Some(r.value.clone()), r.number),
        _ => (None, None),
    };
    let error = match state {
        State::Error(e) => Some(e.to_string()),
        _ => note,
    };
    KnobReport {
        name: t.name.clone(),
        setting: t.setting.clone(),
        desired: t.desired.to_string(),
        actual,
        in_sync: state.is_ok(),
        mode: t.mode,
        state: state.kind(),
        error,
        contested: false,
        desired_number: t.desired.numeric(),
        actual_number,
    }
}

fn log_event(e: &Event) {
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
        } => with_writer!(
            warn,
            writer,
            knob,
            desired,
            actual,
            mode = mode.as_str(),
            "drift detected"
        ),
        Event::Corrected {
            knob,
            from,
            to,
            writer,
        } => with_writer!(info, writer, knob, from, to, "drift corrected"),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Desired;
    use crate::testing::FakeTree;

    fn agent(tree: &FakeTree, profile: &Profile, state: &std::path::Path) -> Agent {
        let j = Journal::load(state).unwrap();
        Agent::new(tree.fs(), profile, JournalSlot::Ready(j))
    }

    #[test]
    fn corrects_enforce_drift_and_journals_originals_first() {
        let tree = FakeTree::untuned();
        let state = tree.dir.path().join("state");
        let mut a = agent(&tree, &Profile::default(), &state);
        let before = a.observe();
        assert!(!before.ready);
        assert_eq!(before.failing().count(), 5);
        let (r, events) = a.reconcile(Instant::now());
        assert!(r.ready, "{r:#?}");
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::DriftDetected { .. }))
                .count(),
            5
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Corrected { .. }))
                .count(),
            5
        );
        assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "1\n");
        assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "2048\n");
        // Fake files hold what was written; the kernel would show the bracketed list.
        assert_eq!(
            tree.get("sys/kernel/mm/transparent_hugepage/enabled"),
            "never\n"
        );
        let j = Journal::load(&state).unwrap();
        let o: Vec<_> = j
            .originals()
            .iter()
            .map(|(k, v)| (k.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(
            o,
            [
                ("net.core.somaxconn", "128"),
                ("thp.defrag", "madvise"),
                ("thp.enabled", "always"),
                ("thp.hugepages-2048kB.enabled", "always"),
                ("vm.overcommit_memory", "0"),
            ]
        );
    }

    #[test]
    fn higher_somaxconn_is_never_lowered_and_audit_is_never_written() {
        let tree = FakeTree::untuned();
        tree.put("proc/sys/net/core/somaxconn", "65535\n");
        let p = Profile::from_yaml("sysctls:\n  vm.overcommit_memory: {mode: audit}\n").unwrap();
        let mut a = agent(&tree, &p, &tree.dir.path().join("state"));
        let (r, events) = a.reconcile(Instant::now());
        assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "65535\n");
        assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "0\n");
        assert!(events.contains(&Event::DriftDetected {
            knob: "vm.overcommit_memory".into(),
            desired: "1".into(),
            actual: "0".into(),
            mode: Mode::Audit,
            writer: None
        }));
        // Audit-mode drift does not make the node unready.
        assert!(r.ready, "{r:#?}");
        let k = r
            .settings
            .iter()
            .find(|k| k.name == "vm.overcommit_memory")
            .unwrap();
        assert_eq!(
            (k.in_sync, k.state, k.mode),
            (false, StateKind::Drift, Mode::Audit)
        );
    }

    #[test]
    fn broken_journal_blocks_writes_and_failures_back_off() {
        let tree = FakeTree::untuned();
        let mut a = Agent::new(
            tree.fs(),
            &Profile::default(),
            JournalSlot::Broken("corrupt".into()),
        );
        let t0 = Instant::now();
        let (r, events) = a.reconcile(t0);
        assert!(!r.ready);
        assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "0\n");
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::CorrectionFailed { .. }))
                .count(),
            5
        );
        let k = &r.settings[0];
        assert!(
            k.error
                .as_deref()
                .unwrap_or("")
                .contains("state journal is unusable"),
            "{k:?}"
        );
        // Within the backoff nothing is retried and drift is not re-announced.
        let (_, events) = a.reconcile(t0 + Duration::from_millis(10));
        assert!(events.is_empty(), "{events:?}");
        // After it, it retries.
        let (_, events) = a.reconcile(t0 + MAX_BACKOFF + Duration::from_secs(1));
        assert_eq!(events.len(), 5, "{events:?}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_secs(1);
        assert!(
            backoff(i, 1) <= Duration::from_millis(1200)
                && backoff(i, 1) >= Duration::from_millis(800)
        );
        assert!(backoff(i, 4) >= Duration::from_millis(6400));
        assert!(backoff(i, 30) <= MAX_BACKOFF.mul_f64(1.2));
    }

    #[test]
    fn a_write_the_profile_does_not_accept_is_not_a_correction() {
        // The value written reads back as written, but the profile does not accept it (what
        // validation prevents for configs; built here by hand): reported as not applied, with
        // what was written and what was read. A kernel that reads back something else than was
        // written is covered against the real kernel in tests/hardening.rs.
        let tree = FakeTree::untuned();
        let mut a = agent(&tree, &Profile::default(), &tree.dir.path().join("state"));
        let t = a
            .targets
            .iter_mut()
            .find(|t| t.name == "thp.enabled")
            .unwrap();
        t.desired = Desired::Word {
            allowed: vec!["never".into()],
            set: "madvise".into(),
        };
        let err = correct(&a.fs, &mut JournalSlot::None, t, "always", "madvise").unwrap_err();
        assert_eq!(err.kind, FailureKind::ReadOnlyAgent, "{err:?}");
        assert_eq!(
            tree.get("sys/kernel/mm/transparent_hugepage/enabled"),
            "[always] madvise never\n",
            "a read-only agent writes nothing"
        );
        let mut slot = JournalSlot::Ready(Journal::load(&tree.dir.path().join("state2")).unwrap());
        let err = correct(&a.fs, &mut slot, t, "always", "madvise").unwrap_err();
        assert_eq!(
            err.kind,
            FailureKind::Kernel(ErrorKind::NotApplied),
            "{err:?}"
        );
        assert!(
            err.message.contains("wrote \"madvise\"")
                && err.message.contains("reads back \"madvise\""),
            "{err:?}"
        );
    }

    #[test]
    fn a_knob_rewritten_on_every_pass_becomes_contested_and_clears_when_it_stays() {
        let tree = FakeTree::untuned();
        let mut a = agent(&tree, &Profile::default(), &tree.dir.path().join("state"));
        let t0 = Instant::now();
        let contested = |events: &[Event]| {
            events
                .iter()
                .filter(|e| matches!(e, Event::Contested { knob, .. } if knob == "vm.overcommit_memory"))
                .count()
        };
        let flag = |r: &Report| {
            r.settings
                .iter()
                .find(|k| k.name == "vm.overcommit_memory")
                .map(|k| k.contested)
        };
        let (r, events) = a.reconcile(t0);
        assert_eq!((contested(&events), flag(&r)), (0, Some(false)));
        // Someone writes 0 again before every pass.
        for pass in 1..=CONTESTED_PASSES {
            tree.put("proc/sys/vm/overcommit_memory", "0\n");
            let (r, events) = a.reconcile(t0);
            let last = pass == CONTESTED_PASSES;
            assert_eq!(
                (contested(&events), flag(&r)),
                (usize::from(last), Some(last)),
                "pass {pass}"
            );
            assert!(r.ready, "each pass still corrects it");
        }
        // Announced once, flagged while it lasts.
        tree.put("proc/sys/vm/overcommit_memory", "0\n");
        let (r, events) = a.reconcile(t0);
        assert_eq!((contested(&events), flag(&r)), (0, Some(true)));
        // Left alone for a pass: no longer contested.
        let (r, _) = a.reconcile(t0);
        assert_eq!(flag(&r), Some(false));
        // A single drift after that is not contested.
        tree.put("proc/sys/vm/overcommit_memory", "0\n");
        let (r, _) = a.reconcile(t0);
        assert_eq!(flag(&r), Some(false));
    }

    #[test]
    fn the_steady_state_reuses_the_report_until_a_byte_changes() {
        let tree = FakeTree::untuned();
        let mut a = agent(&tree, &Profile::default(), &tree.dir.path().join("state"));
        let t0 = Instant::now();
        let (first, events) = a.reconcile(t0);
        assert!(!events.is_empty());
        // The pass after a correction is a full one; then nothing changes.
        let (second, _) = a.reconcile(t0);
        assert!(!Arc::ptr_eq(&first, &second));
        let (third, events) = a.reconcile(t0);
        assert!(Arc::ptr_eq(&second, &third) && events.is_empty());
        // The same length, other bytes: noticed and corrected.
        tree.put("proc/sys/vm/overcommit_memory", "2\n");
        let (fourth, events) = a.reconcile(t0);
        assert!(!Arc::ptr_eq(&third, &fourth));
        assert!(
            events.iter().any(
                |e| matches!(e, Event::Corrected { knob, .. } if knob == "vm.overcommit_memory")
            )
        );
        assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "1\n");
        // A changed network-namespace status makes the next pass full.
        let (fifth, _) = a.reconcile(t0);
        let (sixth, _) = a.reconcile(t0);
        assert!(Arc::ptr_eq(&fifth, &sixth));
        a.fs_mut().assert_host_netns("test");
        let (seventh, _) = a.reconcile(t0);
        assert!(!Arc::ptr_eq(&sixth, &seventh));
    }
}
