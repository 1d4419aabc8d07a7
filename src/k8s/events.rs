//! Kubernetes events from the agent's [`Event`]s, and the bounded queue that holds them while
//! the Node is not known yet.

use std::collections::VecDeque;

use kube::runtime::events::{Event as KEvent, EventType};

use super::marks::{MESSAGE_MAX, truncate};
use crate::agent::Event;

/// Events kept while they cannot be published; the oldest are dropped first (and counted).
pub const QUEUE_MAX: usize = 100;

/// The Kubernetes event for an agent event. Repeats aggregate per reason and knob (the
/// recorder's series key includes the action).
pub fn event_for(e: &Event) -> KEvent {
    let (type_, reason, note) = match e {
        Event::DriftDetected {
            knob,
            desired,
            actual,
            mode,
            writer,
            ..
        } => (
            EventType::Warning,
            "DriftDetected",
            format!(
                "{knob} is {actual}, want {desired} ({mode} mode){}",
                written_by(writer)
            ),
        ),
        Event::Corrected {
            knob,
            from,
            to,
            writer,
        } => (
            EventType::Normal,
            "DriftCorrected",
            format!("{knob} set from {from} to {to}{}", written_by(writer)),
        ),
        Event::CorrectionFailed { error, .. } | Event::ReadFailed { error, .. } => {
            (EventType::Warning, "CorrectionFailed", error.to_string())
        }
        Event::Contested {
            knob,
            passes,
            writer,
        } => (
            EventType::Warning,
            "Contested",
            match writer {
                Some(w) => format!(
                    "{knob} had to be corrected on {passes} consecutive passes: {w} keeps rewriting it"
                ),
                None => format!(
                    "{knob} had to be corrected on {passes} consecutive passes: something keeps rewriting it"
                ),
            },
        ),
        Event::Lock { reason: Some(r) } => (
            EventType::Warning,
            "LockUnavailable",
            format!(
                "writers: lock is not in force ({r}): foreign writes are corrected, not refused"
            ),
        ),
        Event::Lock { reason: None } => (
            EventType::Normal,
            "LockActive",
            "writers: lock is in force: writes that would leave the profile are refused".into(),
        ),
        Event::RedisViewOutOfSync {
            pid,
            owner,
            check,
            detail,
            ..
        } => (
            EventType::Warning,
            "RedisViewOutOfSync",
            format!("Redis process {pid} ({owner}) sees {check} out of sync: {detail}"),
        ),
    };
    KEvent {
        type_,
        reason: reason.into(),
        note: Some(truncate(&note, MESSAGE_MAX).to_string()),
        action: truncate(&format!("Tune {}", e.knob()), 128).to_string(),
        secondary: None,
    }
}

/// `; written by <writer>`, when the writer watch named it.
fn written_by(w: &Option<std::sync::Arc<crate::foreign::Writer>>) -> String {
    w.as_ref()
        .map(|w| format!("; written by {w}"))
        .unwrap_or_default()
}

/// The event published when the node becomes Redis-ready.
pub fn node_ready() -> KEvent {
    KEvent {
        type_: EventType::Normal,
        reason: "NodeReady".into(),
        note: Some("every enforce-mode kernel setting is in sync; label set, taint removed".into()),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// Reasons folded into one [`drift_summary`] when more than one of them waits.
const SUMMARIZED: [&str; 2] = ["DriftDetected", "DriftCorrected"];

/// The reason of a summary event.
pub const SUMMARY_REASON: &str = "DriftSummary";

/// One event for several drift events published together (the first pass at start, or a backlog
/// after an API outage): the note lists every folded event as `Reason: note`, in order, so it
/// says exactly what the separate events said. It is a warning if a detected drift was not
/// corrected in the same batch (an audit-mode setting), a normal event otherwise.
pub fn drift_summary(events: &[KEvent]) -> KEvent {
    let knob = |e: &KEvent| {
        e.action
            .strip_prefix("Tune ")
            .unwrap_or(&e.action)
            .to_string()
    };
    let corrected: Vec<String> = events
        .iter()
        .filter(|e| e.reason == "DriftCorrected")
        .map(knob)
        .collect();
    let uncorrected = events
        .iter()
        .any(|e| e.reason == "DriftDetected" && !corrected.contains(&knob(e)));
    let mut note = format!("{} drift events in one pass:", events.len());
    for (i, e) in events.iter().enumerate() {
        let item = format!(
            " {}: {}{}",
            e.reason,
            e.note.as_deref().unwrap_or_default(),
            if i + 1 < events.len() { ";" } else { "" }
        );
        let more = format!(" ... and {} more", events.len() - i);
        if note.len() + item.len() + more.len() > MESSAGE_MAX {
            note.push_str(&more);
            break;
        }
        note.push_str(&item);
    }
    KEvent {
        type_: if uncorrected {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: SUMMARY_REASON.into(),
        note: Some(truncate(&note, MESSAGE_MAX).to_string()),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// Events waiting to be published, bounded.
#[derive(Default)]
pub struct Queue {
    items: VecDeque<KEvent>,
    dropped: u64,
}

impl Queue {
    pub fn push(&mut self, e: KEvent) {
        if self.items.len() >= QUEUE_MAX {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(e);
    }

    pub fn pop(&mut self) -> Option<KEvent> {
        self.items.pop_front()
    }

    /// Puts back an event that could not be published, at the front.
    pub fn unpop(&mut self, e: KEvent) {
        if self.items.len() < QUEUE_MAX {
            self.items.push_front(e);
        } else {
            self.dropped += 1;
        }
    }

    /// Folds the waiting drift events into one [`drift_summary`], in the place of the first of
    /// them, when more than one waits; every other event keeps its place.
    pub fn summarize_drift(&mut self) {
        let drift = |e: &KEvent| SUMMARIZED.contains(&e.reason.as_str());
        if self.items.iter().filter(|e| drift(e)).count() < 2 {
            return;
        }
        let Some(first) = self.items.iter().position(drift) else {
            return;
        };
        let (folded, kept): (Vec<KEvent>, Vec<KEvent>) = self.items.drain(..).partition(drift);
        self.items = kept.into();
        self.items.insert(first, drift_summary(&folded));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::FailureKind;

    #[test]
    fn a_long_multibyte_note_is_cut_on_a_character_boundary() {
        // What a knob file of 512 bytes of 0xFF produces: 1,569 bytes of error text.
        let error = format!(
            "thp.enabled: unexpected content {:?} in /sys/kernel/mm/transparent_hugepage/enabled",
            String::from_utf8_lossy(&[0xFF; 512])
        );
        assert!(error.len() > 1500);
        let e = event_for(&Event::ReadFailed {
            knob: "thp.enabled".into(),
            error: error.clone(),
            kind: FailureKind::Kernel(crate::kernel::ErrorKind::Parse),
        });
        let note = e.note.unwrap_or_default();
        assert!(note.len() <= MESSAGE_MAX && error.starts_with(&note));
        assert_eq!(e.reason, "CorrectionFailed");
        assert_eq!(e.action, "Tune thp.enabled");
    }

    fn drift(knob: &str, from: &str, to: &str) -> [Event; 2] {
        [
            Event::DriftDetected {
                knob: knob.into(),
                desired: to.into(),
                actual: from.into(),
                mode: crate::profile::Mode::Enforce,
                writer: None,
                seen_by: "poll",
            },
            Event::Corrected {
                knob: knob.into(),
                from: from.into(),
                to: to.into(),
                writer: None,
            },
        ]
    }

    #[test]
    fn a_pass_of_drift_events_is_one_summary_that_says_everything_they_said() {
        let mut q = Queue::default();
        let mut separate = vec![];
        for (k, from, to) in [
            ("vm.overcommit_memory", "0", "1"),
            ("net.core.somaxconn", "128", "4096"),
            ("thp.enabled", "madvise", "never"),
            ("thp.defrag", "madvise", "never"),
        ] {
            for e in drift(k, from, to) {
                separate.push(event_for(&e));
                q.push(event_for(&e));
            }
        }
        let failed = || {
            event_for(&Event::CorrectionFailed {
                knob: "vm.swappiness".into(),
                error: "vm.swappiness: read-only file system".into(),
                kind: FailureKind::Kernel(crate::kernel::ErrorKind::ReadOnly),
            })
        };
        q.push(failed());
        q.push(node_ready());
        q.summarize_drift();
        let out: Vec<KEvent> = std::iter::from_fn(|| q.pop()).collect();
        let reasons: Vec<&str> = out.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, [SUMMARY_REASON, "CorrectionFailed", "NodeReady"]);
        let summary = &out[0];
        assert_eq!(
            summary.type_,
            EventType::Normal,
            "every drift was corrected"
        );
        let note = summary.note.clone().unwrap_or_default();
        assert!(
            note.starts_with("8 drift events in one pass: DriftDetected: "),
            "{note}"
        );
        for e in &separate {
            let item = format!("{}: {}", e.reason, e.note.as_deref().unwrap_or_default());
            assert!(note.contains(&item), "{item:?} missing from {note}");
        }
        assert_eq!(out[1].note, failed().note, "failures are never folded");
    }

    #[test]
    fn an_uncorrected_drift_makes_the_summary_a_warning_and_one_event_stays_as_it_is() {
        let mut q = Queue::default();
        let [detected, corrected] = drift("thp.enabled", "always", "never");
        q.push(event_for(&detected));
        q.summarize_drift();
        assert_eq!(q.pop().map(|e| e.reason), Some("DriftDetected".into()));
        q.push(event_for(&detected));
        q.push(event_for(&corrected));
        let [audit, _] = drift("vm.swappiness", "60", "10");
        q.push(event_for(&audit));
        q.summarize_drift();
        let s = q.pop().unwrap_or_else(node_ready);
        assert_eq!(
            (s.reason.as_str(), s.type_),
            (SUMMARY_REASON, EventType::Warning)
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_long_summary_stays_within_the_note_limit_and_says_how_many_are_left_out() {
        let mut q = Queue::default();
        for i in 0..40 {
            for e in drift(&format!("vm.knob_with_a_long_name_{i}"), "0", "1") {
                q.push(event_for(&e));
            }
        }
        q.summarize_drift();
        assert_eq!(q.len(), 1);
        let note = q.pop().and_then(|e| e.note).unwrap_or_default();
        assert!(note.len() <= MESSAGE_MAX, "{}", note.len());
        assert!(note.starts_with("80 drift events in one pass:"), "{note}");
        assert!(note.contains(" more"), "{note}");
    }

    #[test]
    fn a_redis_process_out_of_sync_is_a_warning_on_the_node_never_folded() {
        let e = Event::RedisViewOutOfSync {
            key: "redis pod:cache/redis-0 somaxconn".into(),
            pid: 4242,
            owner: "pod:cache/redis-0".into(),
            check: "somaxconn",
            detail: "net.core.somaxconn of its network namespace (kernel_default) is 128, below tcp-backlog 511".into(),
        };
        let k = event_for(&e);
        assert_eq!(
            (k.type_, k.reason.as_str()),
            (EventType::Warning, "RedisViewOutOfSync")
        );
        assert_eq!(
            k.note.as_deref(),
            Some(
                "Redis process 4242 (pod:cache/redis-0) sees somaxconn out of sync: net.core.somaxconn of its network namespace (kernel_default) is 128, below tcp-backlog 511"
            )
        );
        assert_eq!(k.action, "Tune redis pod:cache/redis-0 somaxconn");
        let mut q = Queue::default();
        q.push(k);
        q.push(event_for(&e));
        q.summarize_drift();
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_queue_drops_the_oldest_and_counts_them() {
        let mut q = Queue::default();
        for i in 0..(QUEUE_MAX + 5) {
            q.push(KEvent {
                type_: EventType::Normal,
                reason: format!("R{i}"),
                note: None,
                action: "a".into(),
                secondary: None,
            });
        }
        assert_eq!((q.len(), q.dropped()), (QUEUE_MAX, 5));
        assert_eq!(q.pop().map(|e| e.reason), Some("R5".into()));
    }

    #[test]
    fn drift_and_contested_notes_name_the_writer_when_known() {
        let w = std::sync::Arc::new(crate::foreign::Writer {
            pid: 4242,
            tid: 4242,
            comm: "tuned".into(),
            ppid: 1,
            parent_comm: "systemd".into(),
            uid: 0,
            cgroup: Some("/system.slice/tuned.service".into()),
            pod_uid: None,
            container_id: None,
            cmdline: None,
        });
        let by = "written by pid 4242 (tuned), parent 1 (systemd), uid 0, cgroup /system.slice/tuned.service";
        let e = event_for(&Event::DriftDetected {
            knob: "vm.overcommit_memory".into(),
            desired: "1".into(),
            actual: "0".into(),
            mode: crate::profile::Mode::Enforce,
            writer: Some(w.clone()),
            seen_by: "poll",
        });
        assert_eq!(
            e.note.as_deref(),
            Some(format!("vm.overcommit_memory is 0, want 1 (enforce mode); {by}").as_str())
        );
        let e = event_for(&Event::Corrected {
            knob: "vm.overcommit_memory".into(),
            from: "0".into(),
            to: "1".into(),
            writer: Some(w.clone()),
        });
        assert!(
            e.note.as_deref().is_some_and(|n| n.ends_with(by)),
            "{:?}",
            e.note
        );
        let e = event_for(&Event::Contested {
            knob: "vm.overcommit_memory".into(),
            passes: 3,
            writer: Some(w),
        });
        assert!(
            e.note
                .as_deref()
                .is_some_and(|n| n.contains("pid 4242 (tuned)") && n.contains("keeps rewriting")),
            "{:?}",
            e.note
        );
        let e = event_for(&Event::Corrected {
            knob: "vm.overcommit_memory".into(),
            from: "0".into(),
            to: "1".into(),
            writer: None,
        });
        assert_eq!(
            e.note.as_deref(),
            Some("vm.overcommit_memory set from 0 to 1")
        );
    }
}
