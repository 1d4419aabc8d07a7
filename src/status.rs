//! `redis-node-tuner status` (also `kubectl redis-node-tuner`): the fleet at a glance, from the
//! Node objects alone (no metrics, no Grafana): every node the agent marks (label, taint or
//! condition), or every node a label selector picks, one row each: its state, the condition's
//! reason, the knobs out of sync and contested (read back from the condition's message), the
//! last foreign writer and the agent's version (its annotations, [`crate::k8s::annotations`]),
//! and the heartbeat's age. Problems first. One paginated LIST of Nodes (`--chunk-size` per
//! page), read-only.
//!
//! Pure parts ([`row`], [`sort`], [`render_table`], [`render_json`]) are unit-tested here; the
//! list runs against a real apiserver in `tests/status.rs`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::exit::Exit;
use crate::k8s::annotations::{self, LAST_WRITER_ANNOTATION, LastWriter, VERSION_ANNOTATION};
use crate::k8s::marks::{self, Drifted, our_condition, taints};
use crate::k8s::{ConditionType, GateError, LABEL, TAINT_KEY};

/// Nodes per page of the LIST (`--chunk-size`), as `kubectl get`'s default.
pub const DEFAULT_CHUNK_SIZE: u32 = 500;
/// A condition whose heartbeat is older than this many `--heartbeat` periods is stale: the agent
/// is gone (or cannot reach the API).
pub const STALE_PERIODS: u32 = 2;

/// A node's state, in the order rows are sorted (problems first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The condition is `False`: an enforce-mode setting is out of sync and cannot be corrected.
    NotReady,
    /// The condition's heartbeat is older than the stale bound (or missing): the agent is gone,
    /// or cannot write; what the row says may no longer be true.
    Stale,
    /// The condition is `Unknown` (`AgentStopped`, `EnforceStalled`, `PodUnreadable`).
    Unknown,
    /// The label or the taint, but no condition: the agent never reported on this node (or its
    /// condition was removed).
    NoAgent,
    /// None of the agent's marks on a node the selector (`-l`, `--all`) picked: the agent never
    /// ran there (a DaemonSet whose nodeSelector does not match the pool, for one).
    Unmarked,
    /// The condition is `True` and fresh.
    Ready,
}

impl State {
    /// The READY column.
    pub fn word(self) -> &'static str {
        match self {
            State::NotReady => "no",
            State::Stale => "stale",
            State::Unknown => "unknown",
            State::NoAgent => "no-agent",
            State::Unmarked => "unmarked",
            State::Ready => "yes",
        }
    }
}

/// The agent's condition as the row shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionView {
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_heartbeat_time: Option<Timestamp>,
    pub last_transition_time: Option<Timestamp>,
}

/// One node of the view (the JSON schema of `status -o json`'s `nodes`, documented in the
/// README).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub name: String,
    pub state: State,
    /// `state == ready`.
    pub ready: bool,
    /// The condition's reason (`null` without a condition).
    pub reason: Option<String>,
    /// The label `redis-node-tuner.io/ready` is `true`.
    pub label: bool,
    /// The effect of the taint `redis-node-tuner.io/not-ready`, if present.
    pub taint: Option<String>,
    pub condition: Option<ConditionView>,
    /// Knobs out of sync (enforce-mode ones when not ready, audit-mode ones on `AuditDrift`).
    pub drifted: Vec<Drifted>,
    /// Knobs rewritten by something else on every pass (`Contested`).
    pub contested: Vec<String>,
    pub last_writer: Option<LastWriter>,
    pub agent_version: Option<String>,
    /// Seconds since the condition's `lastHeartbeatTime` (never negative: a clock ahead of this
    /// one reads 0).
    pub heartbeat_age_seconds: Option<i64>,
}

/// What [`row`] needs besides the node.
#[derive(Debug, Clone)]
pub struct View {
    pub condition_type: ConditionType,
    /// A heartbeat older than this is stale.
    pub stale_after: Duration,
    /// Nodes without any mark are rows too (a selector or `--all` picked them).
    pub unmarked: bool,
    pub now: Timestamp,
}

/// The row of `node`, or `None` for a node without any mark of the agent (unless
/// `view.unmarked`).
pub fn row(node: &Node, view: &View) -> Option<Row> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let label_value = node.metadata.labels.as_ref().and_then(|l| l.get(LABEL));
    let label = label_value.is_some_and(|v| v == "true");
    let labelled = label_value.is_some();
    let taint = taints(node)
        .iter()
        .find(|t| t.key == TAINT_KEY)
        .map(|t| t.effect.clone());
    let cond = our_condition(node, &view.condition_type);
    let version = annotations::annotation(node, VERSION_ANNOTATION).map(String::from);
    let writer = annotations::annotation(node, LAST_WRITER_ANNOTATION);
    let marked = labelled || taint.is_some() || cond.is_some() || version.is_some();
    if !marked && !view.unmarked {
        return None;
    }
    let heartbeat = cond
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let age = heartbeat.map(|t| view.now.duration_since(t).as_secs().max(0));
    let stale = age.is_none_or(|a| a > view.stale_after.as_secs() as i64);
    let state = match cond {
        None if marked => State::NoAgent,
        None => State::Unmarked,
        Some(_) if stale => State::Stale,
        Some(c) => match c.status.as_str() {
            "True" => State::Ready,
            "False" => State::NotReady,
            _ => State::Unknown,
        },
    };
    let message = cond.and_then(|c| c.message.as_deref()).unwrap_or_default();
    let reason = cond.and_then(|c| c.reason.clone());
    let (drifted, contested) = match reason.as_deref() {
        Some("CorrectionFailed" | "AuditDrift") => (marks::parse_drifted(message), vec![]),
        Some("Contested") => (vec![], marks::parse_contested(message)),
        _ => (vec![], vec![]),
    };
    Some(Row {
        name,
        state,
        ready: state == State::Ready,
        reason,
        label,
        taint,
        condition: cond.map(|c| ConditionView {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_heartbeat_time: c.last_heartbeat_time.as_ref().map(|t| t.0),
            last_transition_time: c.last_transition_time.as_ref().map(|t| t.0),
        }),
        drifted,
        contested,
        last_writer: writer.and_then(LastWriter::parse),
        agent_version: version,
        heartbeat_age_seconds: age,
    })
}

/// Problems first (by [`State`]), ready nodes with something to say (contested, audit drift,
/// no lock) before the quiet ones, then by name.
pub fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        let quiet = |r: &Row| r.reason.as_deref() == Some("AllSettingsInSync");
        (a.state, quiet(a), &a.name).cmp(&(b.state, quiet(b), &b.name))
    });
}

/// The exit code of a view: 0 when every row is ready (none: 0 too), else 10.
pub fn exit(rows: &[Row]) -> Exit {
    if rows.iter().all(|r| r.ready) {
        Exit::Ok
    } else {
        Exit::FleetNotReady
    }
}

/// An age as `kubectl get` prints one: `42s`, `5m10s`, `12m`, `3h4m`, `9h`, `2d3h`, `12d`.
pub fn human(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if d < 2 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// The rows as an aligned table (header first) and a summary line.
pub fn render_table(rows: &[Row], now: Timestamp) -> String {
    let mut cells: Vec<[String; 8]> = vec![[
        "NODE".into(),
        "READY".into(),
        "REASON".into(),
        "DRIFTED".into(),
        "CONTESTED".into(),
        "LAST-WRITER".into(),
        "VERSION".into(),
        "HEARTBEAT".into(),
    ]];
    for r in rows {
        let reason = match (&r.reason, r.state) {
            (Some(reason), _) => reason.clone(),
            (None, State::NoAgent) if r.taint.is_some() => "TaintWithoutCondition".into(),
            (None, State::NoAgent) => "LabelWithoutCondition".into(),
            (None, _) => String::new(),
        };
        let drifted = r
            .drifted
            .iter()
            .map(|d| format!("{}={}", d.name, d.actual))
            .collect::<Vec<_>>()
            .join(",");
        let writer = r.last_writer.as_ref().map_or(String::new(), |w| {
            format!(
                "{} {} {} ago",
                w.comm,
                w.knob,
                human(now.duration_since(w.at).as_secs())
            )
        });
        cells.push([
            r.name.clone(),
            r.state.word().into(),
            or_dash(reason),
            or_dash(drifted),
            or_dash(r.contested.join(",")),
            or_dash(writer),
            or_dash(r.agent_version.clone().unwrap_or_default()),
            r.heartbeat_age_seconds.map_or("-".into(), human),
        ]);
    }
    let mut out = crate::exit::aligned(&cells);
    out.push('\n');
    out.push_str(&summary_line(rows));
    out.push('\n');
    out
}

/// `300 nodes: 200 ready, 40 not ready, 20 stale, ...` (states with no node left out).
pub fn summary_line(rows: &[Row]) -> String {
    let s = Summary::of(rows);
    let parts: Vec<String> = [
        (s.ready, "ready"),
        (s.not_ready, "not ready"),
        (s.stale, "stale"),
        (s.unknown, "unknown"),
        (s.no_agent, "no agent"),
        (s.unmarked, "unmarked"),
    ]
    .iter()
    .enumerate()
    .filter(|(i, (n, _))| *n > 0 || *i == 0)
    .map(|(_, (n, w))| format!("{n} {w}"))
    .collect();
    format!(
        "{} node{}: {}",
        s.nodes,
        if s.nodes == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// How many rows there are, and in each [`State`].
#[derive(Serialize)]
struct Summary {
    nodes: usize,
    ready: usize,
    not_ready: usize,
    stale: usize,
    unknown: usize,
    no_agent: usize,
    unmarked: usize,
}

impl Summary {
    fn of(rows: &[Row]) -> Summary {
        let count = |s: State| rows.iter().filter(|r| r.state == s).count();
        Summary {
            nodes: rows.len(),
            ready: count(State::Ready),
            not_ready: count(State::NotReady),
            stale: count(State::Stale),
            unknown: count(State::Unknown),
            no_agent: count(State::NoAgent),
            unmarked: count(State::Unmarked),
        }
    }
}

#[derive(Serialize)]
struct Document<'a> {
    condition_type: &'a str,
    stale_after_seconds: u64,
    generated_at: Timestamp,
    summary: Summary,
    nodes: &'a [Row],
}

/// `status -o json`: `{"condition_type", "stale_after_seconds", "generated_at", "summary":
/// {"nodes", "ready", "not_ready", "stale", "unknown", "no_agent", "unmarked"}, "nodes":
/// [Row...]}`, sorted as the table.
pub fn render_json(rows: &[Row], view: &View) -> String {
    let doc = Document {
        condition_type: view.condition_type.as_str(),
        stale_after_seconds: view.stale_after.as_secs(),
        generated_at: view.now,
        summary: Summary::of(rows),
        nodes: rows,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Why the view could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No client: a kubeconfig that does not read, no config at all (exit 2), or credentials
    /// that cannot be had (exit 11).
    #[error(transparent)]
    Client(#[from] GateError),
    #[error("listing nodes: {0}")]
    Api(#[source] kube::Error),
    #[error("listing nodes: no answer within {0:?} (--kube-timeout)")]
    Timeout(Duration),
}

impl StatusError {
    /// 2 for a configuration error, 11 when the API could not be read.
    pub fn exit(&self) -> Exit {
        match self {
            StatusError::Client(e) if e.is_config() => Exit::Usage,
            _ => Exit::Api,
        }
    }
}

/// How to list.
#[derive(Debug, Clone)]
pub struct ListOptions {
    pub kubeconfig: Option<std::path::PathBuf>,
    /// A label selector passed to the API (`-l`): every node it picks is a row.
    pub selector: Option<String>,
    pub chunk_size: u32,
    pub request_timeout: Duration,
}

/// Lists the Nodes (paginated) and makes the sorted rows.
pub async fn list(opts: &ListOptions, view: &View) -> Result<Vec<Row>, StatusError> {
    let client = crate::k8s::client(opts.kubeconfig.as_deref(), opts.request_timeout).await?;
    let nodes: Api<Node> = Api::all(client);
    let mut lp = ListParams::default().limit(opts.chunk_size);
    if let Some(s) = &opts.selector {
        lp = lp.labels(s);
    }
    let mut rows = Vec::new();
    loop {
        let page = tokio::time::timeout(opts.request_timeout, nodes.list(&lp))
            .await
            .map_err(|_| StatusError::Timeout(opts.request_timeout))?
            .map_err(StatusError::Api)?;
        // Rows are made page by page: a page's Nodes (their image lists) are dropped at once.
        rows.extend(page.items.iter().filter_map(|n| row(n, view)));
        match page.metadata.continue_.as_deref() {
            Some(c) if !c.is_empty() => lp = lp.continue_token(c),
            _ => break,
        }
    }
    sort(&mut rows);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const NOW: &str = "2026-01-01T12:00:00Z";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    fn view() -> View {
        View {
            condition_type: ConditionType::default(),
            stale_after: Duration::from_secs(600),
            unmarked: false,
            now: ts(NOW),
        }
    }

    /// A node with the marks given; `cond`: (status, reason, message, heartbeat age in s).
    fn node(
        name: &str,
        label: bool,
        taint: bool,
        cond: Option<(&str, &str, &str, i64)>,
        annotations: &[(&str, &str)],
    ) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            [("pool".to_string(), "redis".to_string())]
                .into_iter()
                .chain(label.then(|| (LABEL.to_string(), "true".to_string())))
                .collect(),
        );
        if !annotations.is_empty() {
            n.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        n.spec = Some(NodeSpec {
            taints: Some(
                taint
                    .then(|| Taint {
                        key: TAINT_KEY.into(),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    })
                    .into_iter()
                    .collect(),
            ),
            ..NodeSpec::default()
        });
        let kubelet = NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..NodeCondition::default()
        };
        let ours = cond.map(|(status, reason, message, age)| NodeCondition {
            type_: crate::k8s::CONDITION.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(Time(
                ts(NOW) - k8s_openapi::jiff::SignedDuration::from_secs(age),
            )),
            last_transition_time: Some(Time(ts("2026-01-01T00:00:00Z"))),
        });
        n.status = Some(NodeStatus {
            conditions: Some(std::iter::once(kubelet).chain(ours).collect()),
            ..NodeStatus::default()
        });
        n
    }

    fn ok(name: &str) -> Node {
        node(
            name,
            true,
            false,
            Some((
                "True",
                "AllSettingsInSync",
                "every enforce-mode kernel setting is in sync",
                30,
            )),
            &[(VERSION_ANNOTATION, "0.1.0")],
        )
    }

    #[test]
    fn each_kind_of_node_gets_its_state_and_what_its_marks_say() {
        let v = view();
        let r = row(&ok("a"), &v).unwrap_or_else(|| panic!("marked"));
        assert_eq!(
            (r.state, r.ready, r.label, r.taint.clone()),
            (State::Ready, true, true, None)
        );
        assert_eq!(r.agent_version.as_deref(), Some("0.1.0"));
        assert_eq!(r.heartbeat_age_seconds, Some(30));

        let failed = node(
            "b",
            false,
            true,
            Some((
                "False",
                "CorrectionFailed",
                "not in sync: vm.overcommit_memory=0 (want 1), thp.enabled=always (want never)",
                60,
            )),
            &[],
        );
        let r = row(&failed, &v).unwrap_or_else(|| panic!("marked"));
        assert_eq!(r.state, State::NotReady);
        assert_eq!(r.taint.as_deref(), Some("NoSchedule"));
        let names: Vec<&str> = r.drifted.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vm.overcommit_memory", "thp.enabled"]);

        // Older than the bound (and missing altogether): stale, whatever the status says.
        let old = node(
            "c",
            true,
            false,
            Some(("True", "AllSettingsInSync", "", 601)),
            &[],
        );
        assert_eq!(row(&old, &v).map(|r| r.state), Some(State::Stale));
        let mut none = ok("c2");
        if let Some(c) = none
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.last_mut())
        {
            c.last_heartbeat_time = None;
        }
        assert_eq!(row(&none, &v).map(|r| r.state), Some(State::Stale));
        // A clock ahead of this one: age 0, fresh.
        let ahead = node(
            "c3",
            true,
            false,
            Some(("True", "AllSettingsInSync", "", -30)),
            &[],
        );
        assert_eq!(
            row(&ahead, &v).map(|r| (r.state, r.heartbeat_age_seconds)),
            Some((State::Ready, Some(0)))
        );

        let stopped = node(
            "d",
            true,
            false,
            Some(("Unknown", "AgentStopped", "", 5)),
            &[],
        );
        assert_eq!(row(&stopped, &v).map(|r| r.state), Some(State::Unknown));

        let taint_only = node("e", false, true, None, &[]);
        assert_eq!(row(&taint_only, &v).map(|r| r.state), Some(State::NoAgent));

        let contested = node(
            "f",
            true,
            false,
            Some((
                "True",
                "Contested",
                &format!("{}thp.enabled", marks::CONTESTED_PREFIX),
                1,
            )),
            &[(
                LAST_WRITER_ANNOTATION,
                r#"{"knob":"thp.enabled","action":"corrected","comm":"tuned","pid":7,"at":"2026-01-01T11:58:00Z"}"#,
            )],
        );
        let r = row(&contested, &v).unwrap_or_else(|| panic!("marked"));
        assert_eq!(
            (r.state, r.contested.clone()),
            (State::Ready, vec!["thp.enabled".to_string()])
        );
        assert_eq!(
            r.last_writer.as_ref().map(|w| w.comm.as_str()),
            Some("tuned")
        );

        // No mark: no row, unless the selector picked it.
        let bare = node("g", false, false, None, &[]);
        assert_eq!(row(&bare, &v), None);
        let all = View {
            unmarked: true,
            ..v.clone()
        };
        assert_eq!(row(&bare, &all).map(|r| r.state), Some(State::Unmarked));

        // --condition-type: another type is read, ours is not.
        let other = View {
            condition_type: "redis-node-tuner.io/KernelTuned"
                .parse()
                .unwrap_or_default(),
            ..v
        };
        assert_eq!(row(&ok("h"), &other).map(|r| r.state), Some(State::NoAgent));
    }

    #[test]
    fn problems_come_first_then_ready_nodes_with_news_then_by_name() {
        let v = view();
        let contested = node(
            "a-contested",
            true,
            false,
            Some(("True", "Contested", "x", 1)),
            &[],
        );
        let nodes = [
            ok("z-ok"),
            ok("a-ok"),
            contested,
            node("m-taint", false, true, None, &[]),
            node(
                "b-stale",
                true,
                false,
                Some(("True", "AllSettingsInSync", "", 9999)),
                &[],
            ),
            node(
                "y-failed",
                false,
                true,
                Some(("False", "CorrectionFailed", "", 1)),
                &[],
            ),
            node(
                "c-failed",
                false,
                true,
                Some(("False", "CorrectionFailed", "", 1)),
                &[],
            ),
            node(
                "d-stopped",
                true,
                false,
                Some(("Unknown", "AgentStopped", "", 1)),
                &[],
            ),
        ];
        let mut rows: Vec<Row> = nodes.iter().filter_map(|n| row(n, &v)).collect();
        sort(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            order,
            [
                "c-failed",
                "y-failed",
                "b-stale",
                "d-stopped",
                "m-taint",
                "a-contested",
                "a-ok",
                "z-ok"
            ]
        );
        assert_eq!(exit(&rows), Exit::FleetNotReady);
        assert_eq!(exit(&rows[5..]), Exit::Ok);
        assert_eq!(exit(&[]), Exit::Ok);
        let table = render_table(&rows, v.now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("NODE") && lines[0].contains("LAST-WRITER"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("c-failed") && lines[1].contains(" no "),
            "{table}"
        );
        assert!(lines[5].contains("TaintWithoutCondition"), "{table}");
        assert_eq!(
            lines.last().copied(),
            Some("8 nodes: 3 ready, 2 not ready, 1 stale, 1 unknown, 1 no agent")
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&rows, &v)).unwrap_or_default();
        assert_eq!(json["summary"]["not_ready"], 2);
        assert_eq!(json["nodes"][0]["state"], "not_ready");
        assert_eq!(json["nodes"][2]["state"], "stale");
        assert_eq!(json["stale_after_seconds"], 600);
    }

    #[test]
    fn ages_read_like_kubectls() {
        for (s, want) in [
            (0, "0s"),
            (-5, "0s"),
            (119, "119s"),
            (310, "5m10s"),
            (720, "12m"),
            (3 * 3600 + 240, "3h4m"),
            (9 * 3600, "9h"),
            (2 * 86_400 + 3 * 3600, "2d3h"),
            (12 * 86_400, "12d"),
        ] {
            assert_eq!(human(s), want, "{s}");
        }
    }
}
