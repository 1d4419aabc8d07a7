//! Exact request sequences of the gate's transitions, against a recording [`NodeApi`].

use std::cell::RefCell;
use std::collections::VecDeque;

use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Pod, Taint};
use kube::runtime::events::Event as KEvent;

use super::*;
use crate::agent::FailureKind;
use crate::k8s::marks::tests::{knob, report};
use crate::k8s::{CONDITION, ConditionType, TAINT_KEY};
use crate::profile::Mode;

/// What the fake does with the next request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Timeout,
    Forbidden,
    /// The 403 of an admission policy older than the agent's annotations.
    AnnotationsRefused,
}

/// A Node held in memory; every request is recorded as one line.
#[derive(Default)]
struct Fake {
    node: RefCell<Node>,
    log: RefCell<Vec<String>>,
    faults: RefCell<VecDeque<Fault>>,
    /// Another writer's taint, added between the agent's read and its write.
    sneak_in: RefCell<Option<Taint>>,
}

impl Fake {
    fn with_node(taints: Vec<Taint>) -> Fake {
        let node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("n1".into()),
                resource_version: Some("1".into()),
                annotations: Some(
                    [(
                        crate::k8s::annotations::VERSION_ANNOTATION.to_string(),
                        crate::k8s::annotations::VERSION.to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus::default()),
        };
        Fake {
            node: RefCell::new(node),
            ..Fake::default()
        }
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.log.borrow_mut())
    }

    fn bump(&self) -> Node {
        let mut n = self.node.borrow_mut();
        let rv: u64 = n
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        n.metadata.resource_version = Some((rv + 1).to_string());
        n.clone()
    }

    fn request(&self, line: String) -> Result<(), GateError> {
        self.log.borrow_mut().push(line);
        match self.faults.borrow_mut().pop_front() {
            None => Ok(()),
            Some(Fault::Timeout) => Err(GateError::Timeout {
                node: "n1".into(),
                verb: "test",
                after: Duration::from_secs(10),
            }),
            Some(Fault::Forbidden) => Err(GateError::Api {
                node: "n1".into(),
                source: kube::Error::Api(
                    kube::core::Status::failure("forbidden", "Forbidden")
                        .with_code(403)
                        .boxed(),
                ),
            }),
            Some(Fault::AnnotationsRefused) => Err(GateError::Api {
                node: "n1".into(),
                source: kube::Error::Api(
                    kube::core::Status::failure(
                        "nodes \"n1\" is forbidden: ValidatingAdmissionPolicy \
                         'redis-node-tuner-own-node-marks' denied request: redis-node-tuner may \
                         not change a Node's annotations, owner references or finalizers",
                        "Forbidden",
                    )
                    .with_code(403)
                    .boxed(),
                ),
            }),
        }
    }

    fn taint_keys(&self) -> Vec<String> {
        taints(&self.node.borrow())
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect()
    }
}

impl NodeApi for Fake {
    async fn get(&self) -> Result<Node, GateError> {
        self.request("get".into())?;
        Ok(self.node.borrow().clone())
    }
    async fn apply_label(
        &self,
        on: bool,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<Node, GateError> {
        // The version annotation (on every node the fake starts with) is said only when it
        // changes.
        let version = crate::k8s::annotations::VERSION_ANNOTATION;
        let shown =
            crate::k8s::annotations::annotation(&self.node.borrow(), version).map(String::from);
        let version = if annotations.get(version) != shown.as_ref() {
            " +version"
        } else {
            ""
        };
        let writer = annotations
            .get(LAST_WRITER_ANNOTATION)
            .and_then(|v| LastWriter::parse(v))
            .map(|w| format!(" writer={}:{}", w.comm, w.knob))
            .unwrap_or_default();
        self.request(format!("apply label={on}{version}{writer}"))?;
        {
            let mut n = self.node.borrow_mut();
            n.metadata.annotations = Some(annotations.clone());
            let labels = n.metadata.labels.get_or_insert_default();
            if on {
                labels.insert(LABEL.into(), "true".into());
            } else {
                labels.remove(LABEL);
            }
        }
        Ok(self.bump())
    }
    async fn remove_label(&self) -> Result<Node, GateError> {
        self.request("remove label".into())?;
        Ok(self.bump())
    }
    async fn put_taints(&self, rv: Option<&str>, t: &[Taint]) -> Result<Node, GateError> {
        let keys: Vec<String> = t
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        if let Some(other) = self.sneak_in.borrow_mut().take() {
            self.node
                .borrow_mut()
                .spec
                .get_or_insert_default()
                .taints
                .get_or_insert_default()
                .push(other);
            self.bump();
        }
        let current = self.node.borrow().metadata.resource_version.clone();
        if rv != current.as_deref() {
            self.log
                .borrow_mut()
                .push(format!("taints rv={} {keys:?} -> 409", rv.unwrap_or("-")));
            return Err(GateError::Conflict {
                node: "n1".into(),
                attempts: 1,
            });
        }
        self.request(format!("taints rv={} {keys:?}", rv.unwrap_or("-")))?;
        self.node.borrow_mut().spec.get_or_insert_default().taints = Some(t.to_vec());
        Ok(self.bump())
    }
    async fn patch_condition(&self, c: &NodeCondition) -> Result<Node, GateError> {
        // The default type is left out of the line, so the exact sequences stay short.
        let kind = if c.type_ == CONDITION {
            String::new()
        } else {
            format!("{} ", c.type_)
        };
        self.request(format!(
            "condition {kind}{}/{}",
            c.status,
            c.reason.as_deref().unwrap_or_default()
        ))?;
        {
            let mut n = self.node.borrow_mut();
            let conds = n
                .status
                .get_or_insert_default()
                .conditions
                .get_or_insert_default();
            conds.retain(|x| x.type_ != c.type_);
            conds.push(c.clone());
        }
        Ok(self.bump())
    }
    async fn delete_condition(&self, type_: &ConditionType) -> Result<Node, GateError> {
        self.request(format!("delete condition {type_}"))?;
        Ok(self.bump())
    }
    async fn publish(&self, e: &KEvent, _: Option<&str>) -> Result<(), GateError> {
        self.request(format!("event {}", e.reason))
    }
    async fn get_pod(&self, _: &str, _: &str) -> Result<Pod, GateError> {
        self.request("get pod".into())?;
        Ok(Pod::default())
    }
}

fn opts() -> GateOptions {
    GateOptions {
        node_name: "n1".into(),
        condition_type: ConditionType::default(),
        taint_effect: Some("NoSchedule".into()),
        heartbeat: Duration::from_secs(300),
        pod: None,
        request_timeout: Duration::from_secs(10),
        watch_timeout: Duration::from_secs(290),
    }
}

fn ours(effect: &str) -> Taint {
    Taint {
        key: TAINT_KEY.into(),
        effect: effect.into(),
        value: None,
        time_added: None,
    }
}

fn untuned() -> Arc<Report> {
    Arc::new(report(
        false,
        vec![knob(
            "thp.enabled",
            "always",
            false,
            Some("read-only file system"),
        )],
    ))
}

fn tuned() -> Arc<Report> {
    Arc::new(report(true, vec![knob("thp.enabled", "never", true, None)]))
}

fn drift_events() -> [Event; 2] {
    [
        Event::DriftDetected {
            knob: "thp.enabled".into(),
            desired: "never".into(),
            actual: "always".into(),
            mode: Mode::Enforce,
            writer: None,
            seen_by: "poll",
        },
        Event::Corrected {
            knob: "thp.enabled".into(),
            from: "always".into(),
            to: "never".into(),
            writer: None,
        },
    ]
}

async fn started(fake: Fake, r: Arc<Report>) -> (Gate<Fake>, Instant) {
    let t0 = Instant::now();
    let mut g = Gate::new(fake, opts(), t0);
    g.on_report(r, t0).await;
    assert!(
        g.api.take_log().is_empty(),
        "nothing before the node is known"
    );
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    (g, t0)
}

fn is_labelled(g: &Gate<Fake>) -> bool {
    label_matches(&g.api.node.borrow(), true)
}

/// The node's condition types, in order.
fn condition_types(g: &Gate<Fake>) -> Vec<String> {
    g.api
        .node
        .borrow()
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| c.iter().map(|c| c.type_.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_configured_condition_type_with_the_taint_off_is_the_only_mark_but_the_label() {
    // `--condition-type redis-node-tuner.io/KernelTuned --taint-effect none` (for
    // node-readiness-controller): a registered taint of ours is removed, none is ever added,
    // and only the configured condition is written, never RedisKernelTuned.
    let qualified: ConditionType = "redis-node-tuner.io/KernelTuned"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let o = GateOptions {
        condition_type: qualified.clone(),
        taint_effect: None,
        ..opts()
    };
    let t0 = Instant::now();
    let mut g = Gate::new(Fake::with_node(vec![ours("NoSchedule")]), o, t0);
    g.on_report(untuned(), t0).await;
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "taints rv=1 []",
            "condition redis-node-tuner.io/KernelTuned False/CorrectionFailed"
        ]
    );
    g.on_report(tuned(), t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=true",
            "condition redis-node-tuner.io/KernelTuned True/AllSettingsInSync",
            "event NodeReady"
        ]
    );
    assert_eq!(condition_types(&g), ["redis-node-tuner.io/KernelTuned"]);
    g.on_stop().await;
    assert_eq!(
        g.api.take_log(),
        ["condition redis-node-tuner.io/KernelTuned Unknown/AgentStopped"]
    );
    assert_eq!(condition_types(&g), ["redis-node-tuner.io/KernelTuned"]);
}

#[tokio::test]
async fn start_on_an_untuned_node_taints_it_and_says_why() {
    let (g, _) = started(Fake::with_node(vec![]), untuned()).await;
    assert_eq!(
        g.api.take_log(),
        [
            "taints rv=1 [\"redis-node-tuner.io/not-ready:NoSchedule\"]",
            "condition False/CorrectionFailed"
        ]
    );
}

#[tokio::test]
async fn start_on_a_tuned_tainted_node_marks_it_before_any_event() {
    let other = Taint {
        key: "dedicated".into(),
        effect: "NoSchedule".into(),
        value: Some("redis".into()),
        time_added: None,
    };
    let (mut g, t0) = started(Fake::with_node(vec![other, ours("NoSchedule")]), tuned()).await;
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=true",
            "taints rv=2 [\"dedicated:NoSchedule\"]",
            "condition True/AllSettingsInSync",
            "event NodeReady",
        ]
    );
    // Nothing changes: nothing is written.
    g.on_report(tuned(), t0).await;
    g.on_timer(t0).await;
    assert!(g.api.take_log().is_empty());
}

#[tokio::test]
async fn drift_corrected_within_a_pass_is_two_events_and_no_mark_change() {
    let (mut g, t0) = started(Fake::with_node(vec![]), tuned()).await;
    g.api.take_log();
    for e in drift_events() {
        g.on_event(&e, t0).await;
    }
    g.on_report(tuned(), t0).await;
    assert_eq!(
        g.api.take_log(),
        ["event DriftDetected", "event DriftCorrected"]
    );
}

fn corrected_by(comm: &str, knob: &str) -> Event {
    Event::Corrected {
        knob: knob.into(),
        from: "always".into(),
        to: "never".into(),
        writer: Some(crate::foreign::tests::writer(7, comm)),
    }
}

#[tokio::test]
async fn a_named_writer_rides_on_the_metadata_apply_at_most_once_a_minute() {
    let (mut g, t0) = started(Fake::with_node(vec![]), tuned()).await;
    g.api.take_log();
    g.on_event(&corrected_by("sysctl", "thp.enabled"), t0).await;
    g.on_report(tuned(), t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=true writer=sysctl:thp.enabled",
            "event DriftCorrected"
        ]
    );
    // The same writer of the same knob again (a new pid): not news, no write.
    g.on_event(&corrected_by("sysctl", "thp.enabled"), t0).await;
    assert_eq!(g.api.take_log(), ["event DriftCorrected"]);
    // Another writer within the minute waits for the minute's end (a wake-up is asked for).
    let t1 = t0 + Duration::from_secs(10);
    g.on_event(&corrected_by("tuned", "thp.enabled"), t1).await;
    assert_eq!(g.api.take_log(), ["event DriftCorrected"]);
    let wake = g.next_wake(t1);
    assert!(wake <= t0 + LAST_WRITER_MIN_INTERVAL, "{:?}", wake - t1);
    g.on_timer(t0 + LAST_WRITER_MIN_INTERVAL).await;
    assert_eq!(
        g.api.take_log(),
        ["apply label=true writer=tuned:thp.enabled"]
    );
    g.on_timer(t0 + LAST_WRITER_MIN_INTERVAL * 2).await;
    assert!(g.api.take_log().is_empty());
}

#[tokio::test]
async fn an_agent_of_another_version_says_so_once_with_its_first_metadata_write() {
    let fake = Fake::with_node(vec![ours("NoSchedule")]);
    fake.node.borrow_mut().metadata.annotations = None;
    let (mut g, t0) = started(fake, untuned()).await;
    // Not ready: no label to apply, but the version annotation is (one apply, no label).
    let log = g.api.take_log();
    assert_eq!(
        log.first().map(String::as_str),
        Some("apply label=false +version"),
        "{log:?}"
    );
    assert_eq!(
        crate::k8s::annotations::annotation(
            &g.api.node.borrow(),
            crate::k8s::annotations::VERSION_ANNOTATION
        ),
        Some(crate::k8s::annotations::VERSION)
    );
    g.on_report(untuned(), t0).await;
    assert!(g.api.take_log().is_empty());
}

#[tokio::test]
async fn an_older_admission_policy_refusing_the_annotations_never_holds_the_label() {
    let fake = Fake::with_node(vec![ours("NoSchedule")]);
    fake.node.borrow_mut().metadata.annotations = None;
    fake.faults
        .borrow_mut()
        .push_back(Fault::AnnotationsRefused);
    let (mut g, t0) = started(fake, tuned()).await;
    let log = g.api.take_log();
    // Refused with the version: applied again at once without changing the annotations.
    assert_eq!(
        log[..3],
        [
            "apply label=true +version",
            "apply label=true",
            "taints rv=2 []"
        ],
        "{log:?}"
    );
    assert!(is_labelled(&g));
    // Within the hour nothing is tried again; a named writer waits too (no wake-up for it).
    g.on_event(&corrected_by("sysctl", "thp.enabled"), t0).await;
    g.on_report(tuned(), t0 + Duration::from_secs(120)).await;
    assert_eq!(g.api.take_log(), ["event DriftCorrected"]);
    // An hour later: the annotations again (the policy was updated meanwhile).
    g.on_report(tuned(), t0 + REFUSED_RETRY).await;
    assert_eq!(
        g.api.take_log(),
        ["apply label=true +version writer=sysctl:thp.enabled"]
    );
}

#[tokio::test]
async fn failure_then_recovery_flips_every_mark_back() {
    let (mut g, t0) = started(Fake::with_node(vec![]), tuned()).await;
    g.api.take_log();
    g.on_event(
        &Event::CorrectionFailed {
            knob: "thp.enabled".into(),
            error: "thp.enabled: read-only file system".into(),
            kind: FailureKind::Kernel(crate::kernel::ErrorKind::ReadOnly),
        },
        t0,
    )
    .await;
    g.on_report(untuned(), t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "event CorrectionFailed",
            "apply label=false",
            "taints rv=4 [\"redis-node-tuner.io/not-ready:NoSchedule\"]",
            "condition False/CorrectionFailed",
        ]
    );
    g.on_report(tuned(), t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=true",
            "taints rv=7 []",
            "condition True/AllSettingsInSync",
            "event NodeReady",
        ]
    );
}

#[tokio::test]
async fn a_conflict_rereads_and_keeps_the_other_writers_taint() {
    let fake = Fake::with_node(vec![]);
    let theirs = Taint {
        key: "other".into(),
        effect: "NoExecute".into(),
        value: None,
        time_added: None,
    };
    *fake.sneak_in.borrow_mut() = Some(theirs);
    let (g, _) = started(fake, untuned()).await;
    assert_eq!(
        g.api.take_log(),
        [
            "taints rv=1 [\"redis-node-tuner.io/not-ready:NoSchedule\"] -> 409",
            "get",
            "taints rv=2 [\"other:NoExecute\", \"redis-node-tuner.io/not-ready:NoSchedule\"]",
            "condition False/CorrectionFailed",
        ]
    );
    assert_eq!(
        g.api.taint_keys(),
        [
            "other:NoExecute",
            "redis-node-tuner.io/not-ready:NoSchedule"
        ]
    );
}

#[tokio::test]
async fn an_api_outage_backs_off_then_catches_up_with_the_latest_report() {
    let fake = Fake::with_node(vec![ours("NoSchedule")]);
    fake.faults.borrow_mut().extend([Fault::Timeout]);
    let (mut g, t0) = started(fake, tuned()).await;
    assert_eq!(g.api.take_log(), ["apply label=true"]);
    let retry = g.next_wake(t0);
    assert!(
        retry > t0 && retry <= t0 + RETRY_START.mul_f64(1.2),
        "{:?}",
        retry - t0
    );
    // Reports during the backoff write nothing.
    g.on_report(tuned(), t0 + Duration::from_millis(10)).await;
    g.on_event(&drift_events()[0], t0 + Duration::from_millis(10))
        .await;
    assert!(g.api.take_log().is_empty());
    // Due: everything is written, marks first, then the events.
    g.on_timer(retry).await;
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=true",
            "taints rv=2 []",
            "condition True/AllSettingsInSync",
            "event DriftDetected",
            "event NodeReady",
        ]
    );
}

#[tokio::test]
async fn a_lagging_watch_event_does_not_replace_the_agents_newer_write() {
    let fake = Fake::with_node(vec![ours("NoSchedule")]);
    let stale = fake.node.borrow().clone();
    let (mut g, t0) = started(fake, tuned()).await;
    g.api.take_log();
    g.on_node(Some(stale), t0).await;
    assert!(
        g.api.take_log().is_empty(),
        "a stale view must not cause writes"
    );
    g.on_report(untuned(), t0).await;
    let log = g.api.take_log();
    assert!(log.iter().all(|l| !l.ends_with("409")), "{log:?}");
}

/// A gate held for the Pod's proof, with its Node known.
async fn held(t0: Instant) -> Gate<Fake> {
    let mut g = Gate::new(Fake::with_node(vec![]), opts(), t0);
    g.hold(true);
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    g
}

/// The writes of a node's first ready report.
const FIRST_READY: [&str; 3] = [
    "apply label=true",
    "condition True/AllSettingsInSync",
    "event NodeReady",
];

#[tokio::test]
async fn nothing_is_written_while_the_pod_proof_is_pending() {
    let t0 = Instant::now();
    let mut g = held(t0).await;
    // A report made before the proof: net.* unverified, not ready.
    g.on_report(untuned(), t0).await;
    g.on_timer(t0).await;
    assert!(g.api.take_log().is_empty());
    assert_eq!(
        g.next_wake(t0),
        t0 + opts().heartbeat,
        "held: no wake-up for an overdue heartbeat"
    );
    g.release(true, t0).await;
    g.on_timer(t0).await;
    assert!(
        g.api.take_log().is_empty(),
        "the report from before the proof is forgotten"
    );
    g.on_report(tuned(), t0).await;
    assert_eq!(g.api.take_log(), FIRST_READY);
}

/// A pass that began before the enforce thread took the proof in reports `net.*` unverified
/// after `release`: acting on it would drop the label a previous agent left for a moment.
#[tokio::test]
async fn a_report_still_unverified_after_the_proof_is_ignored() {
    let t0 = Instant::now();
    let mut g = held(t0).await;
    g.release(true, t0).await;
    let mut stale = report(false, vec![knob("net.core.somaxconn", "128", false, None)]);
    stale.netns = "unverified: cannot read /host/proc/1/ns/net".into();
    g.on_report(Arc::new(stale), t0).await;
    g.on_timer(t0).await;
    assert!(
        g.api.take_log().is_empty(),
        "a report made before the proof was acted on"
    );
    g.on_report(tuned(), t0).await;
    assert_eq!(g.api.take_log(), FIRST_READY);
}

#[tokio::test]
async fn stop_writes_agent_stopped_and_leaves_label_and_taint() {
    let (mut g, _) = started(Fake::with_node(vec![]), untuned()).await;
    g.api.take_log();
    g.on_stop().await;
    assert_eq!(g.api.take_log(), ["condition Unknown/AgentStopped"]);
    assert_eq!(
        g.api.taint_keys(),
        ["redis-node-tuner.io/not-ready:NoSchedule"]
    );
}

/// The node as the agent's label write left it: the watch event that lags behind the
/// agent's taint and condition writes.
#[tokio::test]
async fn a_stale_watch_event_between_writes_cannot_make_the_next_write_conflict() {
    let fake = Fake::with_node(vec![ours("NoSchedule")]);
    let (mut g, t0) = started(fake, tuned()).await;
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=true",
            "taints rv=2 []",
            "condition True/AllSettingsInSync",
            "event NodeReady"
        ]
    );
    // The agent holds rv 4 (its condition write); the watch now delivers rv 2 (its label
    // write) and rv 3 (its taint write), late.
    let mut stale = g.api.node.borrow().clone();
    stale.metadata.resource_version = Some("2".into());
    stale.spec.get_or_insert_default().taints = Some(vec![ours("NoSchedule")]);
    g.on_node(Some(stale.clone()), t0).await;
    stale.metadata.resource_version = Some("3".into());
    g.on_node(Some(stale), t0).await;
    assert!(g.api.take_log().is_empty(), "a stale view caused writes");
    // The next taint write carries the version of the agent's own last write: no 409.
    g.on_report(untuned(), t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=false",
            "taints rv=5 [\"redis-node-tuner.io/not-ready:NoSchedule\"]",
            "condition False/CorrectionFailed"
        ]
    );
}

#[tokio::test]
async fn the_first_pass_is_marks_then_one_summary_event_then_node_ready() {
    let fake = Fake::with_node(vec![ours("NoSchedule")]);
    let t0 = Instant::now();
    let mut g = Gate::new(fake, opts(), t0);
    // The first pass: its events, then its report, all before the Node is known.
    for knob in ["vm.overcommit_memory", "net.core.somaxconn", "thp.enabled"] {
        for e in drift_events() {
            let e = match e {
                Event::DriftDetected {
                    desired,
                    actual,
                    mode,
                    ..
                } => Event::DriftDetected {
                    knob: knob.into(),
                    desired,
                    actual,
                    mode,
                    writer: None,
                    seen_by: "poll",
                },
                Event::Corrected { from, to, .. } => Event::Corrected {
                    knob: knob.into(),
                    from,
                    to,
                    writer: None,
                },
                other => other,
            };
            g.on_event(&e, t0).await;
        }
    }
    g.on_report(tuned(), t0).await;
    assert!(g.api.take_log().is_empty());
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    // 3 marks + 2 events (+ the watch's GET and WATCH): 7 requests at start, 8 with the
    // agent's Pod read.
    assert_eq!(
        g.api.take_log(),
        [
            "apply label=true",
            "taints rv=2 []",
            "condition True/AllSettingsInSync",
            "event DriftSummary",
            "event NodeReady",
        ]
    );
}

#[tokio::test]
async fn an_outage_is_one_warning_and_one_info_line_and_a_metric_whatever_the_retries() {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let reach = Reach::new(Some(metrics.clone()));
    let fake = Fake::with_node(vec![]);
    fake.faults.borrow_mut().extend([Fault::Timeout; 12]);
    let t0 = Instant::now();
    let mut g = Gate::new(fake, opts(), t0).with_reach(reach.clone());
    g.on_report(tuned(), t0).await;
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    // The watch task shares the same `reach`: its failures add no line either.
    let e = GateError::Timeout {
        node: "n1".into(),
        verb: "watch",
        after: Duration::from_secs(10),
    };
    for _ in 0..5 {
        reach.failed(&e);
    }
    let mut now = t0;
    for _ in 0..11 {
        now = g.next_wake(now);
        g.on_timer(now).await;
    }
    assert!(reach.is_down());
    let m = metrics.encode_prometheus();
    assert!(m.contains("redis_node_tuner_kube_api_reachable 0"), "{m}");
    assert!(
        m.contains("redis_node_tuner_kube_api_outages_total 1"),
        "{m}"
    );
    // Backoff grew towards the cap and stays within it.
    let wait = g.next_wake(now) - now;
    assert!(wait <= RETRY_MAX && wait >= RETRY_MAX / 4, "{wait:?}");
    // The watch gets through: the gate writes at once instead of at its next retry.
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), now).await;
    assert_eq!(
        g.api.take_log().last().map(String::as_str),
        Some("event NodeReady")
    );
    assert!(!reach.is_down());
    let m = metrics.encode_prometheus();
    assert!(m.contains("redis_node_tuner_kube_api_reachable 1"), "{m}");
    // One warning when it started, one info line when it ended: 2 lines for 17 failed
    // attempts (the lines themselves are asserted end to end in tests/kube.rs).
    assert_eq!(g.reach.lines_logged(), 2);
    // A refusal (403) is an answer, not an outage.
    let forbidden = GateError::Api {
        node: "n1".into(),
        source: kube::Error::Api(
            kube::core::Status::failure("forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        ),
    };
    assert!(!reach.failed(&forbidden));
    assert!(!reach.is_down());
}

#[tokio::test]
async fn a_refusal_right_after_an_outage_is_retried_soon_not_at_the_outages_backoff() {
    let fake = Fake::with_node(vec![]);
    fake.faults.borrow_mut().extend([Fault::Timeout; 8]);
    fake.faults.borrow_mut().push_back(Fault::Forbidden);
    let (mut g, t0) = started(fake, tuned()).await;
    let mut now = t0;
    for _ in 0..8 {
        now = g.next_wake(now);
        g.on_timer(now).await;
    }
    // The 9th attempt is answered with a 403 (an apiserver that is still starting).
    assert!(
        g.next_wake(now) - now <= RETRY_START,
        "{:?}",
        g.next_wake(now) - now
    );
    now = g.next_wake(now);
    g.on_timer(now).await;
    assert_eq!(
        g.api.take_log().last().map(String::as_str),
        Some("event NodeReady")
    );
}

#[tokio::test]
async fn the_heartbeat_is_due_on_the_nodes_own_phase_not_an_interval_after_the_last_write() {
    let (g, t0) = started(Fake::with_node(vec![]), tuned()).await;
    let last = g
        .node
        .as_ref()
        .and_then(|n| our_condition(n, &ConditionType::default()))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0)
        .unwrap_or_default();
    let hb = Heartbeat::new(opts().heartbeat, "n1");
    let slot = hb.next_after(last);
    let wake = g.next_wake(t0);
    let expected = Duration::try_from(slot.duration_since(Timestamp::now())).unwrap_or_default();
    // Within a second of the node's slot (the test's own running time aside).
    let diff = (wake - t0).abs_diff(expected);
    assert!(diff < Duration::from_secs(1), "{wake:?} vs {expected:?}");
    assert!(wake - t0 <= opts().heartbeat);
}

#[tokio::test]
async fn heartbeat_rewrites_the_condition_when_due() {
    let (mut g, t0) = started(Fake::with_node(vec![]), tuned()).await;
    g.api.take_log();
    // Age the condition past the heartbeat.
    {
        let mut n = g.node.take().unwrap_or_default();
        for c in n
            .status
            .get_or_insert_default()
            .conditions
            .get_or_insert_default()
        {
            c.last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now() - Duration::from_secs(301),
            ));
        }
        g.node = Some(n);
    }
    assert!(g.next_wake(t0) <= t0 + Duration::from_millis(100));
    g.on_timer(t0).await;
    assert_eq!(g.api.take_log(), ["condition True/AllSettingsInSync"]);
}

#[tokio::test]
async fn a_stalled_enforce_pass_turns_the_condition_unknown_and_is_never_heartbeaten_as_tuned() {
    let (g, t0) = started(Fake::with_node(vec![ours("NoSchedule")]), tuned()).await;
    g.api.take_log();
    let clock = Arc::new(PassClock::new(Duration::from_millis(20)));
    clock.done(Instant::now());
    let mut g = g.with_clock(Some(clock.clone()));
    // Within the bound: the deadline is the next wake-up, nothing is written.
    assert!(
        g.next_wake(Instant::now())
            <= clock
                .deadline()
                .max(Instant::now() + Duration::from_millis(100))
    );
    g.on_timer(t0).await;
    assert!(g.api.take_log().is_empty());
    // No pass for longer than the bound: the tuned report is stale.
    std::thread::sleep(Duration::from_millis(40));
    g.on_timer(Instant::now()).await;
    assert_eq!(g.api.take_log(), ["condition Unknown/EnforceStalled"]);
    let labelled = g
        .api
        .node
        .borrow()
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL));
    assert!(labelled, "the label stays (as on a stop)");
    // A pass again: the same report brings the condition back at the next wake-up (≤ 1 s).
    clock.done(Instant::now());
    let now = Instant::now();
    assert!(g.next_wake(now) <= now + Duration::from_millis(100));
    g.on_timer(Instant::now()).await;
    assert_eq!(g.api.take_log(), ["condition True/AllSettingsInSync"]);
}

#[tokio::test]
async fn an_event_the_api_refuses_is_dropped_and_counted_and_later_ones_go_out() {
    let (mut g, t0) = started(Fake::with_node(vec![]), tuned()).await;
    g.api.take_log();
    g.api.faults.borrow_mut().push_back(Fault::Forbidden);
    let [detected, corrected] = drift_events();
    g.on_event(&detected, t0).await;
    g.on_event(&corrected, t0).await;
    let log = g.api.take_log();
    assert_eq!(
        log.iter().filter(|l| l.starts_with("event")).count(),
        2,
        "the refused one was tried once, the next one went out: {log:?}"
    );
    assert_eq!(g.take_dropped(), (1, 0));
    assert!(
        g.retry_at.is_none(),
        "a refused event is no API failure: no backoff of the marks"
    );
    // An unreachable API keeps the event for the retry instead.
    g.api.faults.borrow_mut().push_back(Fault::Timeout);
    g.on_event(&detected, t0).await;
    assert!(g.retry_at.is_some());
    assert_eq!(g.take_dropped(), (0, 0));
}

#[tokio::test]
async fn a_pod_read_late_without_host_network_has_the_report_there_is_written() {
    let t0 = Instant::now();
    let mut g = Gate::new(Fake::with_node(vec![]), opts(), t0);
    g.hold(true);
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    g.on_report(untuned(), t0).await;
    assert!(g.api.take_log().is_empty());
    // No proof comes (hostNetwork: false): no better report either; this one is written.
    g.release(false, t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "taints rv=1 [\"redis-node-tuner.io/not-ready:NoSchedule\"]",
            "condition False/CorrectionFailed"
        ]
    );
}

#[tokio::test]
async fn an_unreadable_own_pod_is_said_on_the_node_while_the_marks_are_held() {
    let t0 = Instant::now();
    let mut g = Gate::new(Fake::with_node(vec![]), opts(), t0);
    g.hold(true);
    g.on_pod_unreadable("cannot read the agent's own pod ns/wrong: 404", t0)
        .await;
    assert!(g.api.take_log().is_empty(), "the Node is not known yet");
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    g.on_report(tuned(), t0).await;
    assert_eq!(
        g.api.take_log(),
        ["condition Unknown/PodUnreadable"],
        "no label, no taint while held"
    );
    g.release(true, t0).await;
    g.on_report(tuned(), t0).await;
    assert_eq!(g.api.take_log(), FIRST_READY);
}

#[tokio::test]
async fn noexecute_is_held_back_as_noschedule_until_the_node_was_in_tune() {
    // `--taint-effect NoExecute` on a node registered with the NoExecute startup taint: while
    // the node has not been in tune since the agent started (a failure most likely common to
    // the pool) the taint is NoSchedule, evicting nothing; once the node was in tune, a
    // failure it cannot correct taints NoExecute.
    let o = GateOptions {
        taint_effect: Some("NoExecute".into()),
        ..opts()
    };
    let t0 = Instant::now();
    let mut g = Gate::new(Fake::with_node(vec![ours("NoExecute")]), o, t0);
    g.on_report(untuned(), t0).await;
    let node = g.api.node.borrow().clone();
    g.on_node(Some(node), t0).await;
    assert_eq!(
        g.api.take_log(),
        [
            "taints rv=1 [\"redis-node-tuner.io/not-ready:NoSchedule\"]",
            "condition False/CorrectionFailed"
        ]
    );
    // Still untuned: nothing more is written.
    g.on_report(untuned(), t0).await;
    assert!(g.api.take_log().is_empty());
    g.on_report(tuned(), t0).await;
    assert!(g.api.taint_keys().is_empty(), "{:?}", g.api.taint_keys());
    g.api.take_log();
    g.on_report(untuned(), t0).await;
    assert_eq!(
        g.api.taint_keys(),
        ["redis-node-tuner.io/not-ready:NoExecute"]
    );
}
