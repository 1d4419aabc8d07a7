//! Pure decisions: the label, taint and condition a node should carry for a [`Report`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::{ConditionType, LABEL, TAINT_KEY};
use crate::agent::Report;
use crate::profile::Mode;

/// Why the condition is what it is (the condition's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Every setting is in sync.
    AllSettingsInSync,
    /// Ready, but an audit-mode setting is out of sync (audit settings never gate readiness).
    AuditDrift,
    /// Ready after correcting, but a setting needed correcting on consecutive passes:
    /// something keeps rewriting it.
    Contested,
    /// An enforce-mode setting is out of sync and could not be corrected (or read).
    CorrectionFailed,
    /// Every setting is in sync, but `writers: lock` was asked for and is not in force.
    LockUnavailable,
    /// The agent stopped (SIGTERM).
    AgentStopped,
    /// No enforce pass has finished within the stall bound: nothing is known of the knobs.
    EnforceStalled,
    /// The agent's own Pod cannot be read (403, 404): marks are held.
    PodUnreadable,
    /// Every enforce-mode setting is in sync, but a Redis process sees one out of sync in its
    /// own view, and `redis_processes.gate: true` makes that hold readiness.
    RedisViewOutOfSync,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AllSettingsInSync => "AllSettingsInSync",
            Reason::AuditDrift => "AuditDrift",
            Reason::Contested => "Contested",
            Reason::CorrectionFailed => "CorrectionFailed",
            Reason::LockUnavailable => "LockUnavailable",
            Reason::AgentStopped => "AgentStopped",
            Reason::EnforceStalled => "EnforceStalled",
            Reason::PodUnreadable => "PodUnreadable",
            Reason::RedisViewOutOfSync => "RedisViewOutOfSync",
        }
    }
}

/// The marks the node should carry for a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    pub label: bool,
    pub taint: bool,
    pub status: &'static str,
    pub reason: Reason,
    pub message: String,
}

/// Where the list of knobs out of sync starts in the condition's message (`CorrectionFailed`,
/// `AuditDrift`); read back by [`parse_drifted`].
pub const NOT_IN_SYNC: &str = "not in sync: ";
/// The start of a `Contested` message; the knobs follow, read back by [`parse_contested`].
pub const CONTESTED_PREFIX: &str =
    "in sync, but rewritten by something else on every pass and corrected: ";

/// A knob out of sync as the condition's message lists it: `name=actual (want desired)`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drifted {
    pub name: String,
    pub actual: String,
    /// `None` when the message was cut short (it is truncated at [`MESSAGE_MAX`]).
    pub want: Option<String>,
}

/// The knobs out of sync a `CorrectionFailed` or `AuditDrift` message lists (empty for any
/// other message).
pub fn parse_drifted(message: &str) -> Vec<Drifted> {
    let Some((_, list)) = message.split_once(NOT_IN_SYNC) else {
        return vec![];
    };
    list.split("), ")
        .filter_map(|item| {
            let (name, rest) = item.split_once('=')?;
            let (actual, want) = match rest.split_once(" (want ") {
                Some((a, w)) => (a, Some(w.strip_suffix(')').unwrap_or(w).to_string())),
                None => (rest, None),
            };
            Some(Drifted {
                name: name.to_string(),
                actual: actual.to_string(),
                want,
            })
        })
        .collect()
}

/// The knobs a `Contested` message names (empty for any other message).
pub fn parse_contested(message: &str) -> Vec<String> {
    message
        .strip_prefix(CONTESTED_PREFIX)
        .map(|l| {
            l.split(", ")
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn list<'a>(knobs: impl Iterator<Item = &'a crate::agent::KnobReport>) -> String {
    knobs
        .map(|k| {
            format!(
                "{}={} (want {})",
                k.name,
                k.actual.as_deref().unwrap_or("unreadable"),
                k.desired
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the node should show for `report`. Messages hold values, never error details (which
/// change between retries), so an unchanged node costs no API write.
pub fn desired_marks(report: &Report) -> Marks {
    if !report.ready && report.failing().next().is_none() && !report.redis_out_of_sync.is_empty() {
        return Marks {
            label: false,
            taint: true,
            status: "False",
            reason: Reason::RedisViewOutOfSync,
            message: format!(
                "every enforce-mode kernel setting is in sync, but Redis processes see one out of sync (redis_processes.gate): {}",
                report.redis_out_of_sync.join(", ")
            ),
        };
    }
    if !report.ready {
        return Marks {
            label: false,
            taint: true,
            status: "False",
            reason: Reason::CorrectionFailed,
            message: format!("{NOT_IN_SYNC}{}", list(report.failing())),
        };
    }
    let contested: Vec<&str> = report
        .settings
        .iter()
        .filter(|k| k.contested)
        .map(|k| k.name.as_str())
        .collect();
    let (reason, message) = if !contested.is_empty() {
        (
            Reason::Contested,
            format!("{CONTESTED_PREFIX}{}", contested.join(", ")),
        )
    } else if let Some(why) = &report.lock_missing {
        (
            Reason::LockUnavailable,
            format!(
                "every enforce-mode kernel setting is in sync; writers: lock is not in force \
                 ({why}): foreign writes are corrected, not refused"
            ),
        )
    } else {
        let audit = report
            .settings
            .iter()
            .filter(|k| k.mode == Mode::Audit && !k.in_sync);
        let text = list(audit);
        if text.is_empty() {
            (
                Reason::AllSettingsInSync,
                "every enforce-mode kernel setting is in sync".to_string(),
            )
        } else {
            (
                Reason::AuditDrift,
                format!(
                    "every enforce-mode kernel setting is in sync; audit only, {NOT_IN_SYNC}{text}"
                ),
            )
        }
    };
    Marks {
        label: true,
        taint: false,
        status: "True",
        reason,
        message,
    }
}

/// The agent's condition (of type `type_`) on a node, if any.
pub fn our_condition<'a>(node: &'a Node, type_: &ConditionType) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_.as_str()))
}

/// Whether the node's label matches `want` (`true` present, or absent altogether).
pub fn label_matches(node: &Node, want: bool) -> bool {
    let value = node.metadata.labels.as_ref().and_then(|l| l.get(LABEL));
    if want {
        value.is_some_and(|v| v == "true")
    } else {
        value.is_none()
    }
}

/// The node's taints.
pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// The node's taint list with ours added or removed; `None` when nothing changes. Every other
/// taint is kept as it is.
pub fn taints_with(current: &[Taint], ours: Option<&str>) -> Option<Vec<Taint>> {
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| t.key != TAINT_KEY)
        .cloned()
        .collect();
    if let Some(effect) = ours {
        next.push(Taint {
            key: TAINT_KEY.into(),
            effect: effect.into(),
            value: None,
            time_added: None,
        });
    }
    let same = next.len() == current.len()
        && current.iter().all(|t| {
            t.key != TAINT_KEY || ours.is_some_and(|e| t.effect == e && t.value.is_none())
        });
    (!same).then_some(next)
}

/// When the condition is rewritten although nothing changed. Every node beats on slots of its own
/// phase (`phase + k × period`, wall clock), the phase derived from the node's name: a fleet
/// started (or reconnected after an outage) at the same moment spreads evenly over the period
/// instead of beating together for ever, and a beat delayed by an outage falls back onto its slot
/// right after. The next beat after a write at `t` is the latest slot in `(t, t + period]`, so the
/// condition is never older than `period` (what `--heartbeat` promises).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    period_ms: i64,
    phase_ms: i64,
}

impl Heartbeat {
    /// The heartbeat of `node` every `period`. Slots fall on whole seconds (the period is
    /// rounded up to one), as `lastHeartbeatTime` does: a write made in a slot's second is
    /// stored at or after the slot, so the next beat is a whole period later, never again in
    /// the same second.
    pub fn new(period: Duration, node: &str) -> Heartbeat {
        let period_s = i64::try_from(period.as_secs()).unwrap_or(i64::MAX / 1000);
        let period_s = if period.is_zero() { 0 } else { period_s.max(1) };
        // FNV-1a: stable across builds and platforms (the phase must not move on an upgrade).
        let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let period_ms = period_s.saturating_mul(1000);
        let phase_ms = if period_s > 0 {
            (hash % period_s as u64) as i64 * 1000
        } else {
            0
        };
        Heartbeat {
            period_ms,
            phase_ms,
        }
    }

    /// A heartbeat that is always due (a one-off write such as AgentStopped).
    pub fn always() -> Heartbeat {
        Heartbeat {
            period_ms: 0,
            phase_ms: 0,
        }
    }

    /// The node's phase within the period.
    pub fn phase(&self) -> Duration {
        Duration::from_millis(self.phase_ms as u64)
    }

    /// The beat that follows a write at `last`: the latest slot in `(last, last + period]`.
    pub fn next_after(&self, last: Timestamp) -> Timestamp {
        if self.period_ms == 0 {
            return last;
        }
        let end = last.as_millisecond().saturating_add(self.period_ms);
        let slot = end - (end - self.phase_ms).rem_euclid(self.period_ms);
        Timestamp::from_millisecond(slot).unwrap_or(last)
    }

    /// Whether a beat is due at `now` after a write at `last` (always, with no write known).
    pub fn due(&self, last: Option<Timestamp>, now: Timestamp) -> bool {
        last.is_none_or(|l| now >= self.next_after(l))
    }
}

/// The condition (of type `type_`) to write, or `None` when the node already shows it and no
/// heartbeat is due. `lastTransitionTime` is kept unless the status changes.
pub fn condition_update(
    type_: &ConditionType,
    existing: Option<&NodeCondition>,
    status: &str,
    reason: Reason,
    message: &str,
    now: Timestamp,
    heartbeat: &Heartbeat,
) -> Option<NodeCondition> {
    let same = existing.is_some_and(|c| {
        c.status == status
            && c.reason.as_deref() == Some(reason.as_str())
            && c.message.as_deref() == Some(message)
    });
    let heartbeat_due = heartbeat.due(
        existing
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0),
        now,
    );
    if same && !heartbeat_due {
        return None;
    }
    let transition = match existing {
        Some(c) if c.status == status => c.last_transition_time.clone().unwrap_or(Time(now)),
        _ => Time(now),
    };
    Some(NodeCondition {
        type_: type_.to_string(),
        status: status.into(),
        reason: Some(reason.as_str().into()),
        message: Some(truncate(message, MESSAGE_MAX).into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(transition),
    })
}

/// Longest condition message and event note written (the API limits notes to 1 kB).
pub const MESSAGE_MAX: usize = 1000;

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `candidate` is older than `known` by resourceVersion. Resource versions are opaque,
/// but within one object they come from etcd's revision counter: compared numerically when both
/// parse, otherwise never called older (an unknown format is taken as news).
pub fn is_older(candidate: &Node, known: &Node) -> bool {
    let rv = |n: &Node| {
        n.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    matches!((rv(candidate), rv(known)), (Some(c), Some(k)) if c < k)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::KnobReport;
    use crate::reconcile::StateKind;

    pub(crate) use crate::testing::report;

    /// A knob whose profile wants `1`, with `actual`, said in sync or not, and its error.
    pub(crate) fn knob(name: &str, actual: &str, in_sync: bool, error: Option<&str>) -> KnobReport {
        KnobReport {
            in_sync,
            state: if in_sync {
                StateKind::InSync
            } else {
                StateKind::Drift
            },
            error: error.map(String::from),
            ..crate::testing::knob(name, "1", Some(actual))
        }
    }

    #[test]
    fn redis_processes_out_of_sync_say_so_when_the_knobs_are_in_sync() {
        let mut r = report(false, vec![knob("vm.overcommit_memory", "1", true, None)]);
        r.redis_out_of_sync =
            vec!["pod:cache/redis-0 backlog: its listener has backlog 128".into()];
        let m = desired_marks(&r);
        assert_eq!(
            (m.label, m.taint, m.status, m.reason),
            (false, true, "False", Reason::RedisViewOutOfSync)
        );
        assert!(
            m.message
                .ends_with(": pod:cache/redis-0 backlog: its listener has backlog 128"),
            "{}",
            m.message
        );
        // A knob out of sync is said first, as before.
        let mut r = report(false, vec![knob("vm.overcommit_memory", "0", false, None)]);
        r.redis_out_of_sync = vec!["pid:1 thp: x".into()];
        assert_eq!(desired_marks(&r).reason, Reason::CorrectionFailed);
    }

    #[test]
    fn marks_follow_readiness_with_stable_messages() {
        let m = desired_marks(&report(
            true,
            vec![knob("vm.overcommit_memory", "1", true, None)],
        ));
        assert_eq!(
            (m.label, m.taint, m.status, m.reason),
            (true, false, "True", Reason::AllSettingsInSync)
        );
        let a = desired_marks(&report(
            false,
            vec![knob("vm.overcommit_memory", "0", false, Some("EROFS"))],
        ));
        let b = desired_marks(&report(
            false,
            vec![knob(
                "vm.overcommit_memory",
                "0",
                false,
                Some("EROFS (retrying with backoff)"),
            )],
        ));
        assert_eq!(
            (a.label, a.taint, a.status, a.reason),
            (false, true, "False", Reason::CorrectionFailed)
        );
        assert_eq!(a.message, "not in sync: vm.overcommit_memory=0 (want 1)");
        assert_eq!(a, b, "error details must not change the condition");
    }

    #[test]
    fn audit_drift_and_contested_keep_the_node_ready_but_say_so() {
        let mut audit = knob("vm.swappiness", "60", false, None);
        audit.mode = Mode::Audit;
        audit.desired = "10".into();
        let m = desired_marks(&report(
            true,
            vec![knob("vm.overcommit_memory", "1", true, None), audit.clone()],
        ));
        assert_eq!(
            (m.label, m.taint, m.status, m.reason),
            (true, false, "True", Reason::AuditDrift)
        );
        assert!(m.message.ends_with("vm.swappiness=60 (want 10)"), "{m:?}");
        let mut fought = knob("thp.enabled", "never", true, None);
        fought.contested = true;
        let m = desired_marks(&report(true, vec![fought, audit]));
        assert_eq!((m.status, m.reason), ("True", Reason::Contested));
        assert!(m.message.ends_with(": thp.enabled"), "{m:?}");
    }

    #[test]
    fn the_status_view_reads_back_the_knobs_the_messages_list() {
        let r = report(
            false,
            vec![
                knob("vm.overcommit_memory", "0", false, None),
                knob("net.core.somaxconn", "128", false, None),
                KnobReport {
                    actual: None,
                    ..knob("thp.enabled", "x", false, None)
                },
            ],
        );
        let m = desired_marks(&r);
        let d = parse_drifted(&m.message);
        let names: Vec<(&str, &str, Option<&str>)> = d
            .iter()
            .map(|k| (k.name.as_str(), k.actual.as_str(), k.want.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("vm.overcommit_memory", "0", Some("1")),
                ("net.core.somaxconn", "128", Some("1")),
                ("thp.enabled", "unreadable", Some("1")),
            ]
        );
        // Cut short by truncation: the last one keeps what there is.
        assert_eq!(
            parse_drifted("not in sync: a=0 (want 1), b=12")
                .last()
                .map(|k| (k.actual.as_str(), k.want.clone())),
            Some(("12", None))
        );
        let mut audit = knob("vm.swappiness", "60", false, None);
        audit.mode = Mode::Audit;
        audit.desired = "10".into();
        let m = desired_marks(&report(true, vec![audit]));
        assert_eq!(parse_drifted(&m.message)[0].want.as_deref(), Some("10"));
        let mut a = knob("thp.enabled", "never", true, None);
        a.contested = true;
        let mut b = knob("vm.overcommit_memory", "1", true, None);
        b.contested = true;
        let m = desired_marks(&report(true, vec![a, b]));
        assert_eq!(
            parse_contested(&m.message),
            ["thp.enabled", "vm.overcommit_memory"]
        );
        assert!(parse_contested("every enforce-mode kernel setting is in sync").is_empty());
        assert!(parse_drifted("every enforce-mode kernel setting is in sync").is_empty());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        // A knob holding 512 bytes of 0xFF reads as 512 U+FFFD (3 bytes each).
        let note = format!("x{}", "\u{fffd}".repeat(512));
        let t = truncate(&note, MESSAGE_MAX);
        assert!(
            t.len() <= MESSAGE_MAX && t.len() >= MESSAGE_MAX - 3,
            "{}",
            t.len()
        );
        assert!(note.starts_with(t));
        assert_eq!(truncate("short", MESSAGE_MAX), "short");
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: None,
        }
    }

    #[test]
    fn taints_keep_everyone_elses() {
        let other = taint("dedicated", "NoSchedule");
        let ours = taint(TAINT_KEY, "NoSchedule");
        assert_eq!(
            taints_with(std::slice::from_ref(&other), Some("NoSchedule")),
            Some(vec![other.clone(), ours.clone()])
        );
        assert_eq!(
            taints_with(&[other.clone(), ours.clone()], Some("NoSchedule")),
            None
        );
        assert_eq!(
            taints_with(&[ours.clone(), other.clone()], None),
            Some(vec![other.clone()])
        );
        assert_eq!(taints_with(std::slice::from_ref(&other), None), None);
        // A different effect of ours is replaced.
        assert_eq!(
            taints_with(&[taint(TAINT_KEY, "NoExecute")], Some("NoSchedule")),
            Some(vec![ours])
        );
    }

    #[test]
    fn condition_keeps_transition_time_and_heartbeats() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap_or_default();
        // t0 is a multiple of 300 s since the epoch: phase 0 beats on t0, t0 + 300 s, ...
        let hb = &Heartbeat {
            period_ms: 300_000,
            phase_ms: 0,
        };
        let failed = Reason::CorrectionFailed;
        let ty = &ConditionType::default();
        let first = condition_update(ty, None, "False", failed, "m", t0, hb)
            .unwrap_or_else(|| panic!("first write"));
        assert_eq!(first.last_transition_time, Some(Time(t0)));
        assert_eq!(first.type_, "RedisKernelTuned");
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            condition_update(ty, Some(&first), "False", failed, "m", t1, hb),
            None
        );
        let msg = condition_update(ty, Some(&first), "False", failed, "m2", t1, hb)
            .unwrap_or_else(|| panic!("message change"));
        assert_eq!(
            msg.last_transition_time,
            Some(Time(t0)),
            "same status keeps transition time"
        );
        let flip = condition_update(
            ty,
            Some(&first),
            "True",
            Reason::AllSettingsInSync,
            "ok",
            t1,
            hb,
        )
        .unwrap_or_else(|| panic!("flip"));
        assert_eq!(flip.last_transition_time, Some(Time(t1)));
        let t2 = t0 + Duration::from_secs(301);
        let beat = condition_update(ty, Some(&first), "False", failed, "m", t2, hb)
            .unwrap_or_else(|| panic!("heartbeat"));
        assert_eq!(
            (beat.last_heartbeat_time, beat.last_transition_time),
            (Some(Time(t2)), Some(Time(t0)))
        );
    }

    #[test]
    fn heartbeats_of_a_fleet_spread_over_the_period() {
        // 500 nodes started (or reconnected) together with a 60 s heartbeat: their beats fall on
        // their own phases, so no second holds more than 3x the mean (500 / 60 per second).
        let period = Duration::from_secs(60);
        let mut per_second = [0u32; 60];
        for i in 0..500 {
            let hb = Heartbeat::new(period, &format!("fleet-{i:04}"));
            per_second[hb.phase().as_secs() as usize] += 1;
        }
        let mean = 500.0 / 60.0;
        let max = per_second.iter().copied().max().unwrap_or(0);
        assert!(f64::from(max) <= 3.0 * mean, "max {max}/s: {per_second:?}");
        assert!(
            per_second.iter().filter(|n| **n == 0).count() < 5,
            "{per_second:?}"
        );
        // Deterministic: the same node keeps its phase across restarts and upgrades.
        assert_eq!(
            Heartbeat::new(period, "fleet-0001"),
            Heartbeat::new(period, "fleet-0001")
        );
    }

    #[test]
    fn a_beat_is_never_later_than_the_period_and_returns_to_its_phase_after_an_outage() {
        let hb = Heartbeat::new(Duration::from_secs(60), "db-7");
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap_or_default();
        let phase = hb.phase().as_millis() as i64;
        let on_phase = |t: Timestamp| (t.as_millisecond() - phase).rem_euclid(60_000) == 0;
        for offset_ms in [0, 1, 999, 17_000, 59_999, 60_000, 123_456] {
            let last = t0 + Duration::from_millis(offset_ms);
            let next = hb.next_after(last);
            assert!(next > last, "{offset_ms}");
            assert!(next <= last + Duration::from_secs(60), "{offset_ms}");
            assert!(on_phase(next), "{offset_ms}: {next}");
        }
        // A catch-up write after a 75 s outage, at whatever moment the API came back: the next
        // beat is the node's own slot again, not "75 s + 60 s" (which would align every node
        // that reconnected together).
        let catch_up = t0 + Duration::from_millis(75_321);
        assert!(on_phase(hb.next_after(catch_up)));
        assert!(!hb.due(Some(catch_up), catch_up + Duration::from_millis(1)));
        assert!(hb.due(Some(catch_up), hb.next_after(catch_up)));
        assert!(hb.due(None, t0));
        assert!(Heartbeat::always().due(Some(t0), t0));
        // The API keeps whole seconds: a beat written 100 ms after its slot is stored at the
        // slot's second, and the next one is a whole period later (not due again at once).
        let slot = hb.next_after(t0);
        let written = slot + Duration::from_millis(100);
        let stored: Timestamp = Timestamp::from_second(written.as_second()).unwrap_or(written);
        assert!(!hb.due(Some(stored), written + Duration::from_millis(200)));
        assert_eq!(hb.next_after(stored), slot + Duration::from_secs(60));
    }

    #[test]
    fn label_must_be_true_or_absent() {
        let node = |v: Option<&str>| {
            let mut n = Node::default();
            if let Some(v) = v {
                n.metadata.labels = Some([(LABEL.to_string(), v.to_string())].into());
            }
            n
        };
        assert!(label_matches(&node(Some("true")), true));
        assert!(!label_matches(&node(Some("false")), true));
        assert!(!label_matches(&node(None), true));
        assert!(label_matches(&node(None), false));
        assert!(
            !label_matches(&node(Some("false")), false),
            "a stray value is removed too"
        );
    }

    #[test]
    fn older_resource_versions_are_recognised() {
        let node = |rv: &str| {
            let mut n = Node::default();
            n.metadata.resource_version = Some(rv.into());
            n
        };
        assert!(is_older(&node("9"), &node("10")));
        assert!(!is_older(&node("10"), &node("10")));
        assert!(!is_older(&node("11"), &node("10")));
        assert!(!is_older(&node("x"), &node("10")));
    }
}
