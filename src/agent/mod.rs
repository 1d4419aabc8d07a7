//! The agent: one pass observes every knob, diffs it against the profile, corrects enforce-mode
//! drift (after journalling the original), decides what each foreign write meant, and produces
//! a [`Report`] plus the [`Event`]s of the pass.
//!
//! - `report.rs`: the report, the events and their log lines.
//! - `writes.rs`: what a foreign write means (the one place that decides it).
//! - here: the pass, knob by knob, and the correction with its backoff.

mod clock;
mod report;
mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use clock::{PassClock, STALL_INTERVALS, STALL_MIN, stall_bound};
pub use report::{Event, EventLimit, Failure, FailureKind, KnobReport, Report, log_event};
pub use writes::{LINES_PER_SECOND, Outcome, PENDING_GRACE};

use crate::backoff::jittered;
use crate::foreign::{Inbox, WatchedKnob};
use crate::journal::Journal;
use crate::kernel::{ErrorKind, HostFs, KernelError, Reading};
use crate::profile::{Mode, Profile};
use crate::reconcile::{self, Action, Observed, State, StateKind, Target};

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
    /// The log lines of events, at most one of a kind per knob a second.
    log_limit: EventLimit,
    /// `redis_processes.gate: true`: the Redis processes out of sync, which hold readiness.
    redis_gate: Vec<String>,
}

/// The first wait after a failed correction, at most: with a long interval (the watchers do the
/// work), a write that a concurrent writer undid at once is retried soon after the contest
/// ends, not an interval later.
pub const FIRST_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The wait after `failures` failed corrections: the interval (at most [`FIRST_BACKOFF_MAX`])
/// doubling up to [`MAX_BACKOFF`], ±20 % jitter.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval
        .min(FIRST_BACKOFF_MAX)
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
            log_limit: EventLimit::default(),
            redis_gate: Vec::new(),
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

    /// When the earliest correction waiting on its backoff is due.
    pub fn next_retry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.memory
            .iter()
            .filter_map(|m| m.retry_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Foreign writes waiting for a pass (or a correction waiting for its writer's name).
    pub fn has_pending(&self) -> bool {
        self.inbox.as_ref().is_some_and(|p| p.any()) || self.writes.waiting()
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

    /// `redis_processes.gate: true`: the Redis processes whose own view is out of sync (each
    /// `<owner> <check>: <why>`); while any is, the report is not ready. From the next pass on.
    pub fn set_redis_gate(&mut self, out_of_sync: Vec<String>) {
        if out_of_sync != self.redis_gate {
            self.redis_gate = out_of_sync;
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
        self.writes.expire_unnamed(&self.targets, now);
        events.extend(self.lock_event.take());
        for e in &events {
            if let Some(repeated) = self.log_limit.admit(e, now) {
                log_event(e, repeated);
            }
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
        let seen_by = taken.seen_by();
        let drift = state == State::Drift;
        // The value as read, before any correction, for the writes that wait on this pass.
        let read = taken.any().then(|| actual_text(&obs));
        announce(t, mem, &obs, &state, (writer.clone(), seen_by), events);
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
                        // Written, then rewritten by someone else before the read-back: a
                        // contest, not a fault of ours; retried within a second, never later.
                        let failures = if failure.kind == FailureKind::Kernel(ErrorKind::NotApplied)
                        {
                            1
                        } else {
                            mem.failures
                        };
                        mem.retry_at = Some(now + backoff(self.interval, failures));
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
        } else {
            // Nothing to correct (in sync, audit mode, unreadable): no retry is due.
            mem.retry_at = None;
            mem.failures = 0;
        }
        if taken.any()
            && let Some(inbox) = &self.inbox
        {
            let before = self
                .last
                .as_ref()
                .and_then(|r| r.settings.get(i))
                .and_then(|k| k.actual.as_deref());
            let found = writes::Found {
                drift,
                undone,
                before,
                read: read.as_deref(),
            };
            self.writes.settle(inbox, i, t, taken, found, now);
        }
        let mut k = knob_report(t, &obs, &state, note);
        k.contested = mem.redrifts >= CONTESTED_PASSES;
        k
    }

    fn report(&self, settings: Vec<KnobReport>) -> Report {
        Report {
            ready: self.redis_gate.is_empty()
                && settings
                    .iter()
                    .all(|k| k.in_sync || k.mode != Mode::Enforce),
            netns: self.fs.netns().describe(),
            settings,
            lock_missing: self.lock_missing.clone(),
            redis_out_of_sync: self.redis_gate.clone(),
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
    (writer, seen_by): (Option<Arc<crate::foreign::Writer>>, &'static str),
    events: &mut Vec<Event>,
) {
    if *state == State::Drift && mem.last != Some(StateKind::Drift) {
        events.push(Event::DriftDetected {
            knob: t.name().to_string(),
            desired: t.desired.to_string(),
            actual: actual_text(obs),
            mode: t.mode,
            writer: writer.clone(),
            seen_by,
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
mod tests;
