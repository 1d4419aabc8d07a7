//! Pure: the agent's two annotations on its own Node, read by `redis-node-tuner status` (the
//! fleet view works from Node objects alone):
//!
//! - [`VERSION_ANNOTATION`]: the agent's version; written with the first metadata write of an
//!   agent whose version the Node does not show yet (the label's server-side apply carries it,
//!   so a node that starts ready costs no extra request);
//! - [`LAST_WRITER_ANNOTATION`]: the last foreign writer the writer watch named (process,
//!   knob, time), as compact JSON ([`LastWriter`]). It changes only when a new writer is seen,
//!   and at most once per [`LAST_WRITER_MIN_INTERVAL`]; the same writer of the same knob again
//!   only refreshes the time after [`LAST_WRITER_REFRESH`]: a knob fought over on every pass
//!   costs at most one write an hour.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::agent::Event;

/// The agent's version (`agent-version`).
pub const VERSION_ANNOTATION: &str = "redis-node-tuner.io/agent-version";
/// The last foreign writer named by the writer watch (`last-writer`).
pub const LAST_WRITER_ANNOTATION: &str = "redis-node-tuner.io/last-writer";
/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Another writer (or knob) replaces the annotation at most this often.
pub const LAST_WRITER_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// The same writer of the same knob refreshes the annotation's time at most this often.
pub const LAST_WRITER_REFRESH: Duration = Duration::from_secs(3600);
/// After the admission policy refused the annotations (a policy older than the agent), the agent
/// writes its label without changing them, and tries them again after this long.
pub const REFUSED_RETRY: Duration = Duration::from_secs(3600);
/// Longest string field of [`LastWriter`] (a cgroup path, a pod UID): the annotation stays
/// well under the 1 KiB the admission policy allows.
const FIELD_MAX: usize = 160;

/// The last foreign write the writer watch attributed: who, which knob, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWriter {
    /// The knob written (`vm.overcommit_memory`, `thp.enabled`, ...).
    pub knob: String,
    /// What the agent did about it: `corrected`, `observed` (drift left as it was: audit mode,
    /// or seen before the correction) or `contested`.
    pub action: String,
    /// The writer's process name (`comm`).
    pub comm: String,
    pub pid: u32,
    /// Its parent's process name.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// When the agent saw it (RFC 3339, whole seconds).
    pub at: Timestamp,
}

fn cut(s: &str) -> String {
    super::marks::truncate(s, FIELD_MAX).to_string()
}

impl LastWriter {
    /// The writer an event of the enforce loop names, if any, seen at `now`.
    pub fn of(e: &Event, now: Timestamp) -> Option<LastWriter> {
        let (knob, action, writer) = match e {
            Event::Corrected { knob, writer, .. } => (knob, "corrected", writer),
            Event::DriftDetected { knob, writer, .. } => (knob, "observed", writer),
            Event::Contested { knob, writer, .. } => (knob, "contested", writer),
            _ => return None,
        };
        let w = writer.as_ref()?;
        Some(LastWriter {
            knob: cut(knob),
            action: action.into(),
            comm: cut(&w.comm),
            pid: w.pid,
            parent: cut(&w.parent_comm),
            uid: w.uid,
            cgroup: w.cgroup.as_deref().map(cut),
            pod_uid: w.pod_uid.as_deref().map(cut),
            at: Timestamp::from_second(now.as_second()).unwrap_or(now),
        })
    }

    /// Whether `other` is the same writer (process name, cgroup, pod) of the same knob: a new
    /// pid of the same cron job or unit is not news.
    pub fn same_source(&self, other: &LastWriter) -> bool {
        self.knob == other.knob
            && self.comm == other.comm
            && self.cgroup == other.cgroup
            && self.pod_uid == other.pod_uid
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses an annotation's value; `None` when it is not one.
    pub fn parse(value: &str) -> Option<LastWriter> {
        serde_json::from_str(value).ok()
    }

    /// One line: `sysctl (pid 42) vm.overcommit_memory corrected`.
    pub fn summary(&self) -> String {
        format!(
            "{} (pid {}) {} {}",
            self.comm, self.pid, self.knob, self.action
        )
    }
}

/// A node's annotation `key`, if any.
pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The last-writer value to write, or `None` to keep what the node shows. `seen`: the latest
/// writer named since the agent started; `since_last_write`: how long ago the agent last wrote
/// one (`None`: never).
pub fn last_writer_update(
    on_node: Option<&str>,
    seen: Option<&LastWriter>,
    since_last_write: Option<Duration>,
) -> Option<LastWriter> {
    let seen = seen?;
    let shown = on_node.and_then(LastWriter::parse);
    let due = match &shown {
        Some(s) if s == seen => false,
        Some(s) if s.same_source(seen) => {
            seen.at.duration_since(s.at).as_secs() >= LAST_WRITER_REFRESH.as_secs() as i64
        }
        _ => since_last_write.is_none_or(|d| d >= LAST_WRITER_MIN_INTERVAL),
    };
    due.then(|| seen.clone())
}

/// The annotations the agent's metadata apply carries: its version, and the last writer (the
/// one to write, else the node's own, kept: server-side apply would drop a key left out).
pub fn desired(node: &Node, last_writer: Option<&LastWriter>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([(VERSION_ANNOTATION.to_string(), VERSION.to_string())]);
    let writer = match last_writer {
        Some(w) => Some(w.to_annotation()),
        None => annotation(node, LAST_WRITER_ANNOTATION).map(String::from),
    };
    if let Some(w) = writer {
        out.insert(LAST_WRITER_ANNOTATION.to_string(), w);
    }
    out
}

/// The agent's annotations as the node shows them: an apply of these changes nothing (what is
/// applied while an older admission policy refuses the annotations).
pub fn current(node: &Node) -> BTreeMap<String, String> {
    [VERSION_ANNOTATION, LAST_WRITER_ANNOTATION]
        .iter()
        .filter_map(|k| annotation(node, k).map(|v| (k.to_string(), v.to_string())))
        .collect()
}

/// Whether the node already shows every annotation of `want`.
pub fn matches(node: &Node, want: &BTreeMap<String, String>) -> bool {
    want.iter()
        .all(|(k, v)| annotation(node, k) == Some(v.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foreign::Writer;
    use std::sync::Arc;

    fn writer(comm: &str, pid: u32) -> Arc<Writer> {
        Arc::new(Writer {
            pid,
            tid: pid,
            comm: comm.into(),
            ppid: 1,
            parent_comm: "systemd".into(),
            uid: 0,
            cgroup: Some("/system.slice/cron.service".into()),
            pod_uid: None,
            container_id: None,
            cmdline: None,
        })
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    fn corrected(comm: &str, pid: u32, knob: &str, now: &str) -> LastWriter {
        let e = Event::Corrected {
            knob: knob.into(),
            from: "0".into(),
            to: "1".into(),
            writer: Some(writer(comm, pid)),
        };
        LastWriter::of(&e, at(now)).unwrap_or_else(|| panic!("a named writer"))
    }

    #[test]
    fn only_named_writers_are_recorded_and_the_value_round_trips() {
        let anonymous = Event::Corrected {
            knob: "vm.overcommit_memory".into(),
            from: "0".into(),
            to: "1".into(),
            writer: None,
        };
        assert_eq!(LastWriter::of(&anonymous, at("2026-01-01T00:00:00Z")), None);
        let w = corrected(
            "sysctl",
            42,
            "vm.overcommit_memory",
            "2026-01-01T00:00:00.700Z",
        );
        assert_eq!(w.at, at("2026-01-01T00:00:00Z"), "whole seconds");
        let v = w.to_annotation();
        assert!(v.len() < 1024, "{v}");
        assert!(v.contains(r#""at":"2026-01-01T00:00:00Z""#), "{v}");
        assert_eq!(LastWriter::parse(&v), Some(w.clone()));
        assert_eq!(LastWriter::parse("not json"), None);
        assert_eq!(
            w.summary(),
            "sysctl (pid 42) vm.overcommit_memory corrected"
        );
        let long = corrected(
            &"x".repeat(4000),
            1,
            "vm.overcommit_memory",
            "2026-01-01T00:00:00Z",
        );
        assert!(long.to_annotation().len() < 1024);
    }

    #[test]
    fn a_new_writer_is_written_at_most_once_a_minute_the_same_one_once_an_hour() {
        let first = corrected("sysctl", 42, "vm.overcommit_memory", "2026-01-01T00:00:00Z");
        let shown = first.to_annotation();
        // Nothing on the node: written.
        assert_eq!(
            last_writer_update(None, Some(&first), None),
            Some(first.clone())
        );
        // Nothing seen: the node's value is kept.
        assert_eq!(last_writer_update(Some(&shown), None, None), None);
        // Shown already.
        assert_eq!(last_writer_update(Some(&shown), Some(&first), None), None);
        // The same cron job again (another pid), 10 min later: not news.
        let again = corrected("sysctl", 43, "vm.overcommit_memory", "2026-01-01T00:10:00Z");
        let long_ago = Some(Duration::from_secs(600));
        assert_eq!(
            last_writer_update(Some(&shown), Some(&again), long_ago),
            None
        );
        // An hour later: the time is refreshed.
        let later = corrected("sysctl", 44, "vm.overcommit_memory", "2026-01-01T01:00:00Z");
        assert_eq!(
            last_writer_update(Some(&shown), Some(&later), long_ago),
            Some(later)
        );
        // Another writer: at once, unless one was written within the minute.
        let other = corrected("tuned", 7, "vm.overcommit_memory", "2026-01-01T00:00:30Z");
        assert_eq!(
            last_writer_update(Some(&shown), Some(&other), Some(Duration::from_secs(30))),
            None
        );
        assert_eq!(
            last_writer_update(Some(&shown), Some(&other), Some(Duration::from_secs(60))),
            Some(other.clone())
        );
        // Another knob by the same process is news too.
        let knob = corrected("sysctl", 42, "thp.enabled", "2026-01-01T00:00:30Z");
        assert_eq!(
            last_writer_update(Some(&shown), Some(&knob), None),
            Some(knob)
        );
        // A value that is not ours is replaced.
        assert_eq!(
            last_writer_update(Some("garbage"), Some(&other), None),
            Some(other)
        );
    }

    #[test]
    fn desired_annotations_keep_the_nodes_last_writer() {
        let mut node = Node::default();
        let want = desired(&node, None);
        assert_eq!(want.len(), 1);
        assert_eq!(
            want.get(VERSION_ANNOTATION).map(String::as_str),
            Some(VERSION)
        );
        assert!(!matches(&node, &want));
        node.metadata.annotations = Some(BTreeMap::from([
            (VERSION_ANNOTATION.to_string(), VERSION.to_string()),
            (LAST_WRITER_ANNOTATION.to_string(), "{}".to_string()),
            ("other".to_string(), "x".to_string()),
        ]));
        let want = desired(&node, None);
        assert_eq!(
            want.get(LAST_WRITER_ANNOTATION).map(String::as_str),
            Some("{}")
        );
        assert!(matches(&node, &want));
        let w = corrected("sysctl", 42, "vm.overcommit_memory", "2026-01-01T00:00:00Z");
        assert!(!matches(&node, &desired(&node, Some(&w))));
    }
}
