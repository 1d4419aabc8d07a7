//! What a foreign write means, decided in one place.
//!
//! The watchers only say that a knob was written (and, when they can, by whom and with what
//! value). At each pass the agent takes a knob's notices and, here:
//! - [`Writes::take`] settles at once what needs no pass: a write refused in the kernel
//!   (`refused`), and a write whose value the profile accepts, or to an audit-mode knob
//!   (`observed`);
//! - [`Writes::settle`] settles the rest once the pass has read (and maybe corrected) the knob:
//!   `corrected` when the pass undid it, back in the inbox when a sysctl write seen before the
//!   kernel applied it is not visible yet (for [`PENDING_GRACE`]), else `observed`.
//!
//! Every named write gets one log line, at most three a second per writer and knob (the rest
//! are counted on the next line as `repeated`) and at most [`LINES_PER_SECOND`] in all; every
//! write is counted once, by the enforce thread, as an [`Outcome`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::foreign::{Inbox, Notice, Source, WriteAction, Writer};
use crate::kernel::Reading;
use crate::profile::Mode;
use crate::reconcile::{self, Target};

/// A sysctl write seen before the kernel applied it, and not visible to a pass yet, waits this
/// long for the next passes; then it was rejected by the kernel or undone by its writer.
pub const PENDING_GRACE: Duration = Duration::from_secs(1);

/// Log lines about foreign writes, at most, in any second (the rest are counted).
pub const LINES_PER_SECOND: u32 = 20;

/// A foreign write's outcome, for the metrics: (setting, writer name, action) and how many
/// writes it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub knob: String,
    /// The writer's process name, `unknown` when no watcher could tell (inotify).
    pub writer: String,
    pub action: WriteAction,
    pub count: u64,
}

/// The writes of one knob that wait on what the pass finds.
#[derive(Debug, Default)]
pub(super) struct Taken {
    /// Named writes that drift the knob or whose value is unknown.
    named: Vec<Notice>,
    /// The file was written since the last pass (by anyone, the agent included).
    written: bool,
}

impl Taken {
    /// The process behind the last of these writes, for the pass's events.
    pub(super) fn writer(&self) -> Option<Arc<Writer>> {
        self.named.iter().rev().find_map(|n| n.writer.clone())
    }

    pub(super) fn any(&self) -> bool {
        self.written || !self.named.is_empty()
    }

    /// Which watcher woke the pass for this knob (`poll`: none did).
    pub(super) fn seen_by(&self) -> &'static str {
        let has = |s: Source| self.named.iter().any(|n| n.source == s);
        if has(Source::Sysctl) {
            "sysctl"
        } else if has(Source::Fanotify) {
            "fanotify"
        } else if self.written {
            "inotify"
        } else {
            "poll"
        }
    }
}

/// What a pass found of a knob that foreign writes wait on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Found<'a> {
    /// It was drifted when the pass read it (before any correction).
    pub drift: bool,
    /// The pass wrote the profile's value back.
    pub undone: bool,
    /// The value before the writes (the previous pass's), for a write seen without it.
    pub before: Option<&'a str>,
    /// The value the pass read, for a write seen without the bytes written.
    pub read: Option<&'a str>,
}

/// A correction waiting for its writer's name: when, and the values the pass saw.
#[derive(Debug)]
struct Unnamed {
    at: Instant,
    action: WriteAction,
    before: Option<String>,
    read: Option<String>,
}

/// The agent's memory of foreign writes: the outcomes to count, and the log limits.
#[derive(Debug, Default)]
pub(super) struct Writes {
    outcomes: Vec<Outcome>,
    lines: Lines,
    /// Per knob: a correction of a write no watcher had named yet (inotify's notice woke the
    /// pass first), waiting [`PENDING_GRACE`] for the named notice of the same write.
    unnamed: HashMap<usize, Unnamed>,
}

/// The written bytes as the agent would read them back (a THP write is the selected word).
fn as_read(text: &str) -> Reading {
    let value = text.split_whitespace().collect::<Vec<_>>().join(" ");
    Reading {
        number: value.parse().ok(),
        value,
    }
}

impl Writes {
    /// Takes the knob's notices; settles the refused ones and those the profile accepts.
    pub(super) fn take(&mut self, inbox: &Inbox, i: usize, t: &Target, now: Instant) -> Taken {
        let taken = inbox.take(i);
        let mut named = Vec::new();
        for n in taken.named {
            let accepted = n
                .new
                .as_deref()
                .is_some_and(|v| reconcile::satisfies(&t.desired, &as_read(v)));
            if n.refused {
                self.settled(t, &n, WriteAction::Refused, now);
            } else if accepted || t.mode != Mode::Enforce {
                self.settled(t, &n, WriteAction::Observed, now);
            } else {
                named.push(n);
            }
        }
        Taken {
            named,
            written: taken.written,
        }
    }

    /// Settles the writes the pass waited on, by what the pass found.
    pub(super) fn settle(
        &mut self,
        inbox: &Inbox,
        i: usize,
        t: &Target,
        taken: Taken,
        found: Found<'_>,
        now: Instant,
    ) {
        let Found { drift, undone, .. } = found;
        if !drift
            && taken
                .named
                .iter()
                .any(|n| n.new.is_some() && now.saturating_duration_since(n.at) < PENDING_GRACE)
        {
            inbox.put_back(i, taken.named); // a sysctl write the kernel has not applied yet
            return;
        }
        let mut action = if drift && undone {
            WriteAction::Corrected
        } else {
            WriteAction::Observed
        };
        let mut found = found;
        let earlier = (!drift && !taken.named.is_empty())
            .then(|| self.unnamed.remove(&i))
            .flatten();
        if let Some(u) = &earlier {
            // The named notice of a write a pass already undid: its values are that pass's.
            action = u.action;
            found.before = u.before.as_deref();
            found.read = u.read.as_deref();
        }
        let anonymous = taken.named.is_empty() && taken.written;
        for n in taken.named {
            let n = Notice {
                old: n.old.or_else(|| found.before.map(str::to_string)),
                new: n.new.or_else(|| found.read.map(str::to_string)),
                ..n
            };
            self.settled(t, &n, action, now);
        }
        if drift && anonymous {
            // Written by a process no watcher has named (yet): counted as `unknown` unless its
            // named notice follows within the grace.
            let u = Unnamed {
                at: now,
                action,
                before: found.before.map(str::to_string),
                read: found.read.map(str::to_string),
            };
            if let Some(old) = self.unnamed.insert(i, u) {
                self.unknown(t, old.action);
            }
        }
    }

    fn settled(&mut self, t: &Target, n: &Notice, action: WriteAction, now: Instant) {
        let comm = n.writer.as_ref().map_or("unknown", |w| w.comm.as_str());
        self.outcomes.push(Outcome {
            knob: t.name().to_string(),
            writer: comm.to_string(),
            action,
            count: n.count,
        });
        if let Some(w) = &n.writer
            && let Some(repeated) = self.lines.admit(t.name(), w.pid, n.count, now)
        {
            log_write(t.name(), n, w, action, repeated);
        }
    }

    fn unknown(&mut self, t: &Target, action: WriteAction) {
        self.outcomes.push(Outcome {
            knob: t.name().to_string(),
            writer: "unknown".into(),
            action,
            count: 1,
        });
    }

    /// Counts as `unknown` the corrections whose named notice did not come within the grace.
    pub(super) fn expire_unnamed(&mut self, targets: &[Target], now: Instant) {
        let expired: Vec<usize> = self
            .unnamed
            .iter()
            .filter(|(_, u)| now.saturating_duration_since(u.at) >= PENDING_GRACE)
            .map(|(i, _)| *i)
            .collect();
        for i in expired {
            if let (Some(u), Some(t)) = (self.unnamed.remove(&i), targets.get(i)) {
                self.unknown(t, u.action);
            }
        }
    }

    /// Corrections wait for their writer's name.
    pub(super) fn waiting(&self) -> bool {
        !self.unnamed.is_empty()
    }

    /// What became of the foreign writes since the last call.
    pub(super) fn take_outcomes(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.outcomes)
    }
}

fn log_write(knob: &str, n: &Notice, w: &Writer, action: WriteAction, repeated: u64) {
    let old = n.old.as_deref().unwrap_or("?");
    let new = n.new.as_deref().unwrap_or("?");
    let cgroup = w.cgroup.as_deref().unwrap_or("?");
    macro_rules! line {
        ($lvl:ident, $msg:literal) => {
            tracing::$lvl!(
                knob, old, new, pid = w.pid, comm = %w.comm, ppid = w.ppid,
                parent = %w.parent_comm, uid = w.uid, cgroup,
                pod_uid = w.pod_uid.as_deref().unwrap_or(""),
                container_id = w.container_id.as_deref().unwrap_or(""),
                cmdline = w.cmdline.as_deref().unwrap_or(""), action = action.as_str(),
                repeated, $msg
            )
        };
    }
    match action {
        WriteAction::Refused => line!(warn, "foreign write refused"),
        WriteAction::Corrected => line!(warn, "foreign write drifted a knob"),
        WriteAction::Observed => line!(info, "foreign write"),
    }
}

/// The log limits: [`LINES_PER_KEY`] lines a second per (knob, writer pid),
/// [`LINES_PER_SECOND`] in all.
#[derive(Debug, Default)]
struct Lines {
    /// (knob, pid) → (start of its current second, lines in it, writes not logged since).
    last: HashMap<(String, u32), (Instant, u32, u64)>,
    second: Option<Instant>,
    in_second: u32,
    /// Writes not logged because of the overall cap, reported on the next line.
    capped: u64,
}

/// Lines a second for one writer and knob.
const LINES_PER_KEY: u32 = 3;

/// Keys kept before the oldest are forgotten.
const LINE_KEYS_MAX: usize = 256;

impl Lines {
    /// Whether a line may be written now for `count` more writes; `Some(repeated)`: yes, with
    /// the writes not logged since this key's last line.
    fn admit(&mut self, knob: &str, pid: u32, count: u64, now: Instant) -> Option<u64> {
        let one_second = Duration::from_secs(1);
        if self.last.len() >= LINE_KEYS_MAX {
            self.last
                .retain(|_, (at, _, _)| now.saturating_duration_since(*at) < one_second);
        }
        if self
            .second
            .is_none_or(|s| now.saturating_duration_since(s) >= one_second)
        {
            self.second = Some(now);
            self.in_second = 0;
        }
        let (start, lines, skipped) = self
            .last
            .entry((knob.to_string(), pid))
            .or_insert((now, 0, 0));
        if now.saturating_duration_since(*start) >= one_second {
            *start = now;
            *lines = 0;
        }
        if *lines >= LINES_PER_KEY {
            *skipped += count;
            return None;
        }
        if self.in_second >= LINES_PER_SECOND {
            self.capped += count;
            return None;
        }
        *lines += 1;
        self.in_second += 1;
        let extra = count.saturating_sub(1);
        Some(std::mem::take(skipped) + extra + std::mem::take(&mut self.capped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_second_per_writer_and_a_cap_in_all() {
        let mut l = Lines::default();
        let t0 = Instant::now();
        for _ in 0..LINES_PER_KEY {
            assert_eq!(l.admit("k", 1, 1, t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(l.admit("k", 1, 1, t0 + Duration::from_millis(10)), None);
        }
        // The next second's line carries the writes not logged.
        assert_eq!(l.admit("k", 1, 1, t0 + Duration::from_secs(1)), Some(1000));
        // Many writers in one second: the cap.
        let t1 = t0 + Duration::from_secs(5);
        let logged = (0..1000u32)
            .filter(|pid| l.admit("k", 100 + pid, 1, t1).is_some())
            .count();
        assert_eq!(logged, LINES_PER_SECOND as usize);
        assert_eq!(
            l.admit("k", 5000, 1, t1 + Duration::from_secs(1)),
            Some(1000 - u64::from(LINES_PER_SECOND))
        );
        assert!(l.last.len() <= LINE_KEYS_MAX + 1);
    }

    #[test]
    fn written_bytes_are_judged_as_they_would_read_back() {
        use crate::profile::Desired;
        let d = Desired::Equals(1);
        assert!(reconcile::satisfies(&d, &as_read("1\n")));
        assert!(!reconcile::satisfies(&d, &as_read("0\n")));
        let w = Desired::Word {
            allowed: vec!["never".into()],
            set: "never".into(),
        };
        assert!(reconcile::satisfies(&w, &as_read("never\n")));
        assert!(!reconcile::satisfies(&w, &as_read("always")));
    }
}
