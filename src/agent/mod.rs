//! The agent: one pass observes every knob, diffs it against the profile, corrects enforce-mode
//! drift (after journalling the original), decides what each foreign write meant, and produces
//! a [`Report`] plus the [`Event`]s of the pass.
//!
//! - `report.rs`: the report, the events and their log lines.
//! - `writes.rs`: what a foreign write means (the one place that decides it).
//! - here: the pass, knob by knob, and the correction with its backoff.

mod report;
mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use report::{Event, Failure, FailureKind, KnobReport, Report};
pub use writes::{LINES_PER_SECOND, Outcome, PENDING_GRACE};

use crate::backoff::jittered;
use crate::foreign::{Inbox, WatchedKnob};
use crate::journal::Journal;
use crate::kernel::{HostFs, KernelError, Reading};
use crate::profile::{Mode, Profile};
use crate::reconcile::{self, Action, Observed, State, StateKind, Target};

use report::log_event;

/// Longest wait between two correction attempts of a knob that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A knob that had to be corrected again on this many consecutive passes after a successful
/// correction is `Contested`: something keeps rewriting it.
pub const CONTESTED_PASSES: u32 = 3;

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
    /// Foreign writes posted by the watchers.
    inbox: Option<Arc<Inbox>>,
    writes: writes::Writes,
    /// `writers: lock` asked for and not in force: why.
    lock_missing: Option<String>,
    /// A change of [`Agent::set_lock_missing`] to announce at the next pass.
    lock_event: Option<Event>,
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
        let targets = reconcile::resolve(&fs, profile);
        Agent {
            memory: vec![Memory::default(); targets.len()],
            targets,
            fs,
            journal,
            interval: profile.interval,
            last: None,
            dirty: true,
            inbox: None,
            writes: writes::Writes::default(),
            lock_missing: None,
            lock_event: None,
        }
    }

    /// The knobs as the watchers need them, indexed as the agent's.
    pub fn watched_knobs(&self) -> Vec<WatchedKnob> {
        self.targets
            .iter()
            .map(|t| WatchedKnob {
                name: t.name().to_string(),
                location: t.location().clone(),
                path: self.fs.path(t.location()),
                desired: t.desired.clone(),
                mode: t.mode,
            })
            .collect()
    }

    /// Takes foreign writes from the watchers: a knob with one runs a full pass.
    pub fn attach_inbox(&mut self, inbox: Arc<Inbox>) {
        self.inbox = Some(inbox);
    }

    /// Foreign writes waiting for a pass.
    pub fn has_pending(&self) -> bool {
        self.inbox.as_ref().is_some_and(|p| p.any())
    }

    /// What became of the foreign writes of the passes since the last call.
    pub fn take_foreign_outcomes(&mut self) -> Vec<Outcome> {
        self.writes.take_outcomes()
    }

    /// Whether `writers: lock` is in force (`None`, or not asked for) or why not: in the
    /// report from the next pass on, announced by an [`Event::Lock`] when it changes.
    pub fn set_lock_missing(&mut self, why: Option<String>) {
        if why != self.lock_missing {
            self.lock_event = Some(Event::Lock {
                reason: why.clone(),
            });
            self.lock_missing = why;
            self.dirty = true;
        }
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
            let obs = self.fs.read(&mut t.file);
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
            let obs = self.fs.read(&mut t.file);
            let state = reconcile::evaluate(&t.desired, &obs);
            if let (Action::Correct(v), Ok(Some(r))) =
                (reconcile::decide(t.mode, &t.desired, &state), &obs)
            {
                changes.push((t.name().to_string(), r.value.clone(), v));
            }
            settings.push(knob_report(t, &obs, &state, None));
        }
        (self.report(settings), changes)
    }

    /// One pass: observe, correct enforce-mode drift (journal first), report. In the steady
    /// state (no knob's bytes changed since the last pass, no correction pending or just made,
    /// no foreign write posted, nothing else changed) the previous report is returned as it
    /// is, without events: one `pread` per knob and no allocation.
    pub fn reconcile(&mut self, now: Instant) -> (Arc<Report>, Vec<Event>) {
        if let Some(last) = &self.last
            && !self.dirty
            && !self.has_pending()
            && self
                .memory
                .iter()
                .all(|m| m.retry_at.is_none() && !m.corrected)
            && self.targets.iter().all(|t| self.fs.unchanged(&t.file))
        {
            return (last.clone(), Vec::new());
        }
        self.reconcile_uncached(now)
    }

    /// One pass without the steady-state shortcut: every knob read, evaluated, corrected where
    /// the profile says so, and its foreign writes settled.
    pub fn reconcile_uncached(&mut self, now: Instant) -> (Arc<Report>, Vec<Event>) {
        self.dirty = false;
        let mut events = vec![];
        let mut settings = Vec::with_capacity(self.targets.len());
        for i in 0..self.targets.len() {
            settings.push(self.pass_knob(i, now, &mut events));
        }
        events.extend(self.lock_event.take());
        for e in &events {
            log_event(e);
        }
        let report = Arc::new(self.report(settings));
        self.last = Some(report.clone());
        (report, events)
    }

    /// One knob's part of a pass: read it, announce what changed, correct it if the profile
    /// says so, and settle its foreign writes.
    fn pass_knob(&mut self, i: usize, now: Instant, events: &mut Vec<Event>) -> KnobReport {
        let t = &mut self.targets[i];
        let mem = &mut self.memory[i];
        let mut obs = self.fs.read(&mut t.file);
        let mut state = reconcile::evaluate(&t.desired, &obs);
        let taken = match &self.inbox {
            Some(inbox) => self.writes.take(inbox, i, t, now),
            None => Default::default(),
        };
        let writer = taken.writer();
        let drift = state == State::Drift;
        announce(t, mem, &obs, &state, writer.clone(), events);
        let mut note = None;
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
                            knob: t.name().to_string(),
                            from,
                            to: r.value.clone(),
                            writer,
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
                            knob: t.name().to_string(),
                            error: failure.message.clone(),
                            kind: failure.kind,
                        });
                        note = Some(failure.message);
                    }
                }
            }
        }
        if taken.any()
            && let Some(inbox) = &self.inbox
        {
            let found = writes::Found { drift, undone };
            self.writes.settle(inbox, i, t, taken, found, now);
        }
        let mut k = knob_report(t, &obs, &state, note);
        k.contested = mem.redrifts >= CONTESTED_PASSES;
        k
    }

    fn report(&self, settings: Vec<KnobReport>) -> Report {
        Report {
            ready: settings
                .iter()
                .all(|k| k.in_sync || k.mode != Mode::Enforce),
            netns: self.fs.netns().describe(),
            settings,
            lock_missing: self.lock_missing.clone(),
        }
    }
}

/// The events of a knob's new state (drift, a failed read, contested), each once, and the
/// memory of it.
fn announce(
    t: &Target,
    mem: &mut Memory,
    obs: &Observed,
    state: &State,
    writer: Option<Arc<crate::foreign::Writer>>,
    events: &mut Vec<Event>,
) {
    if *state == State::Drift && mem.last != Some(StateKind::Drift) {
        events.push(Event::DriftDetected {
            knob: t.name().to_string(),
            desired: t.desired.to_string(),
            actual: actual_text(obs),
            mode: t.mode,
            writer: writer.clone(),
        });
    }
    if let State::Error(e) = state
        && mem.last != Some(StateKind::Error)
    {
        events.push(Event::ReadFailed {
            knob: t.name().to_string(),
            error: e.to_string(),
            kind: FailureKind::from(e),
        });
    }
    if *state == State::Drift && mem.corrected {
        mem.redrifts += 1;
        if mem.redrifts == CONTESTED_PASSES {
            events.push(Event::Contested {
                knob: t.name().to_string(),
                passes: CONTESTED_PASSES,
                writer,
            });
        }
    } else if *state != State::Drift {
        mem.redrifts = 0;
    }
    mem.corrected = false;
    mem.last = Some(state.kind());
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
            let netns = if t.location().is_net() {
                fs.net_ns_ino()
            } else {
                None
            };
            j.record(t.name(), t.location(), original, netns)
                .map_err(|e| {
                    journal_failure(format!(
                        "{}: not changed, the original could not be recorded: {e}",
                        t.name()
                    ))
                })?;
        }
        JournalSlot::Broken(why) => {
            return Err(journal_failure(format!(
                "{}: not changed, the state journal is unusable: {why}",
                t.name()
            )));
        }
        JournalSlot::None => {
            return Err(Failure {
                kind: FailureKind::ReadOnlyAgent,
                message: format!("{}: not changed (read-only agent)", t.name()),
            });
        }
    }
    let r = fs.write(&mut t.file, value)?;
    if reconcile::satisfies(&t.desired, &r) {
        Ok(r)
    } else {
        Err(KernelError::NotApplied {
            knob: t.name().to_string(),
            path: fs.path(t.location()),
            wrote: value.to_string(),
            read: r.value,
        }
        .into())
    }
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
        name: t.name().to_string(),
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
            .find(|t| t.name() == "thp.enabled")
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
            FailureKind::Kernel(crate::kernel::ErrorKind::NotApplied),
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
