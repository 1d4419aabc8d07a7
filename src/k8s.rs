//! Kubernetes node gate: the agent's label, startup taint, node condition and events on its own
//! Node. A reporter of the agent's [`Report`]s; the kernel loop never waits for it, so API
//! failures never stop enforcement.

use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::agent::{Event, Report};
use crate::metrics::{Metrics, RequestLabels};

/// The label set while the node is Redis-ready.
pub const LABEL: &str = "redis-node-tuner.io/ready";
/// The taint held while the node is not Redis-ready.
pub const TAINT_KEY: &str = "redis-node-tuner.io/not-ready";
/// The node condition type.
pub const CONDITION: &str = "RedisKernelTuned";
/// Field manager of every write.
pub const MANAGER: &str = "redis-node-tuner";

/// Condition reasons.
pub const REASON_IN_SYNC: &str = "AllSettingsInSync";
pub const REASON_DRIFT: &str = "Drift";
pub const REASON_FAILED: &str = "CorrectionFailed";
pub const REASON_STOPPED: &str = "AgentStopped";

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("no kubeconfig and no in-cluster config: {0}")]
    InCluster(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("node {node}: {source}")]
    Api {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("node {node}: taint update kept conflicting after {attempts} attempts")]
    Conflict { node: String, attempts: u32 },
}

/// How the gate is configured.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub node_name: String,
    /// `None`: the taint is off.
    pub taint_effect: Option<String>,
    pub heartbeat: Duration,
    /// The agent's own Pod (namespace, name), to prove host networking.
    pub pod: Option<(String, String)>,
}

/// Builds a client from a kubeconfig file, or else from $KUBECONFIG, ~/.kube/config or the
/// in-cluster service account.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, GateError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| GateError::Kubeconfig {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| GateError::Kubeconfig {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
        }
        // $KUBECONFIG or ~/.kube/config when present, else the in-cluster service account.
        None => Config::infer()
            .await
            .map_err(|e| GateError::InCluster(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| GateError::Client(e.to_string()))
}

/// Whether the agent runs in a pod (in-cluster config available).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// Exponential backoff with ±20 % jitter: 500 ms doubling up to 5 s, so marks catch up within
/// seconds of the API coming back.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Some(d.mul_f64(0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4))
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

// ---------------------------------------------------------------------------------------------
// Pure decisions (unit-tested without a cluster).

/// The marks the node should carry for a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    pub label: bool,
    pub taint: bool,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What the node should show for `report`.
pub fn desired_marks(report: &Report) -> Marks {
    if report.ready {
        return Marks {
            label: true,
            taint: false,
            status: "True",
            reason: REASON_IN_SYNC,
            message: "every enforce-mode kernel setting is in sync".into(),
        };
    }
    let failing: Vec<_> = report.failing().collect();
    let reason = if failing.iter().any(|k| k.error.is_some()) {
        REASON_FAILED
    } else {
        REASON_DRIFT
    };
    // Stable text (no error details, which change between retries): no API write per pass.
    let list = failing
        .iter()
        .map(|k| {
            format!(
                "{}={} (want {})",
                k.name,
                k.actual.as_deref().unwrap_or("unreadable"),
                k.desired
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Marks {
        label: false,
        taint: true,
        status: "False",
        reason,
        message: format!("not in sync: {list}"),
    }
}

/// The agent's condition on a node, if any.
pub fn our_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == CONDITION))
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

/// The condition to write, or `None` when the node already shows it and no heartbeat is due.
/// `lastTransitionTime` is kept unless the status changes.
pub fn condition_update(
    existing: Option<&NodeCondition>,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
    heartbeat: Duration,
) -> Option<NodeCondition> {
    let same = existing.is_some_and(|c| {
        c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message)
    });
    let heartbeat_due = existing
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .is_none_or(|t| now.duration_since(t.0).unsigned_abs().ge(&heartbeat));
    if same && !heartbeat_due {
        return None;
    }
    let transition = match existing {
        Some(c) if c.status == status => c.last_transition_time.clone().unwrap_or(Time(now)),
        _ => Time(now),
    };
    Some(NodeCondition {
        type_: CONDITION.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(transition),
    })
}

// ---------------------------------------------------------------------------------------------
// API calls, each counted in redis_node_tuner_kube_requests_total{verb,result}.

#[derive(Clone)]
struct NodeApi {
    nodes: Api<Node>,
    name: String,
    metrics: Arc<Metrics>,
}

fn result_word<T>(r: &Result<T, kube::Error>) -> &'static str {
    match r {
        Ok(_) => "success",
        Err(kube::Error::Api(s)) if s.code == 409 => "conflict",
        Err(_) => "error",
    }
}

impl NodeApi {
    fn count<T>(&self, verb: &str, r: &Result<T, kube::Error>) {
        self.metrics
            .kube_requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                result: result_word(r).into(),
            })
            .inc();
    }

    fn err(&self, source: kube::Error) -> GateError {
        GateError::Api {
            node: self.name.clone(),
            source,
        }
    }

    async fn get(&self) -> Result<Node, GateError> {
        let r = self.nodes.get(&self.name).await;
        self.count("get", &r);
        r.map_err(|e| self.err(e))
    }

    /// The label by server-side apply (our field manager owns just this key). Removing it also
    /// clears a copy another manager may have set, so "absent" really is absent.
    async fn set_label(&self, on: bool) -> Result<Node, GateError> {
        let body = if on {
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {LABEL: "true"}}})
        } else {
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name}})
        };
        let r = self
            .nodes
            .patch(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await;
        self.count("apply", &r);
        let node = r.map_err(|e| self.err(e))?;
        if !on
            && node
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(LABEL))
        {
            return self.remove_label().await;
        }
        Ok(node)
    }

    async fn remove_label(&self) -> Result<Node, GateError> {
        let r = self
            .nodes
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {LABEL: null}}})),
            )
            .await;
        self.count("patch", &r);
        r.map_err(|e| self.err(e))
    }

    /// Read-modify-write of the atomic taint list, carrying resourceVersion; retried on 409.
    async fn set_taint(
        &self,
        cached: Option<&Node>,
        effect: Option<&str>,
    ) -> Result<Node, GateError> {
        const ATTEMPTS: u32 = 8;
        let mut node = match cached {
            Some(n) => n.clone(),
            None => self.get().await?,
        };
        for _ in 0..ATTEMPTS {
            let current = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let Some(next) = taints_with(&current, effect) else {
                return Ok(node);
            };
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"taints": next},
            });
            let r = self
                .nodes
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            self.count("patch", &r);
            match r {
                Ok(n) => return Ok(n),
                Err(kube::Error::Api(s)) if s.code == 409 => node = self.get().await?,
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(GateError::Conflict {
            node: self.name.clone(),
            attempts: ATTEMPTS,
        })
    }

    /// Strategic merge on nodes/status: conditions merge by type, kubelet's stay untouched.
    async fn set_condition(&self, c: &NodeCondition) -> Result<Node, GateError> {
        let r = self
            .nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"conditions": [c]}})),
            )
            .await;
        self.count("patch_status", &r);
        r.map_err(|e| self.err(e))
    }

    async fn delete_condition(&self) -> Result<Node, GateError> {
        let r = self
            .nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(
                    json!({"status": {"conditions": [{"type": CONDITION, "$patch": "delete"}]}}),
                ),
            )
            .await;
        self.count("patch_status", &r);
        r.map_err(|e| self.err(e))
    }
}

// ---------------------------------------------------------------------------------------------
// The reporter task.

/// Channels between the agent loop and the gate.
pub struct GateInputs {
    pub reports: watch::Receiver<Option<Arc<Report>>>,
    pub events: mpsc::Receiver<Event>,
    pub stop: watch::Receiver<bool>,
    /// A proof of host networking, sent once it is known (from the agent's Pod).
    pub netns_proof: Option<mpsc::Sender<String>>,
}

struct Gate {
    api: NodeApi,
    opts: GateOptions,
    recorder: Recorder,
    node: Option<Node>,
    was_ready: Option<bool>,
}

fn event_for(e: &Event) -> KEvent {
    let knob = match e {
        Event::DriftDetected { knob, .. }
        | Event::Corrected { knob, .. }
        | Event::CorrectionFailed { knob, .. }
        | Event::ReadFailed { knob, .. } => knob,
    };
    let (type_, reason, note) = match e {
        Event::DriftDetected {
            knob,
            desired,
            actual,
            mode,
        } => (
            EventType::Warning,
            "DriftDetected",
            format!("{knob} is {actual}, want {desired} ({mode} mode)"),
        ),
        Event::Corrected { knob, from, to } => (
            EventType::Normal,
            "DriftCorrected",
            format!("{knob} set from {from} to {to}"),
        ),
        Event::CorrectionFailed { error, .. } | Event::ReadFailed { error, .. } => {
            (EventType::Warning, "CorrectionFailed", error.clone())
        }
    };
    let mut note = note;
    note.truncate(1000);
    KEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        // Repeats aggregate per reason and knob (the recorder's key includes the action).
        action: format!("Tune {knob}").chars().take(128).collect(),
        secondary: None,
    }
}

impl Gate {
    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.opts.node_name.clone()),
            uid: self.node.as_ref().and_then(|n| n.metadata.uid.clone()),
            ..Default::default()
        }
    }

    async fn publish(&self, e: &KEvent) {
        let r = self.recorder.publish(e, &self.reference()).await;
        self.api.count("event", &r);
        if let Err(err) = r {
            tracing::warn!(reason = %e.reason, error = %err, "cannot publish event");
        }
    }

    /// Brings the node's marks to what `report` says. Writes only what differs.
    async fn sync(&mut self, report: &Report) -> Result<(), GateError> {
        let Some(node) = self.node.clone() else {
            return Ok(());
        };
        let want = desired_marks(report);
        if !label_matches(&node, want.label) {
            self.node = Some(self.api.set_label(want.label).await?);
        }
        // With the taint turned off (`none`) it is never added, and removed if present.
        let ours = if want.taint {
            self.opts.taint_effect.clone()
        } else {
            None
        };
        let node = self.node.clone();
        let current = node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        if taints_with(current, ours.as_deref()).is_some() {
            self.node = Some(self.api.set_taint(node.as_ref(), ours.as_deref()).await?);
        }
        let existing = self.node.as_ref().and_then(our_condition);
        if let Some(c) = condition_update(
            existing,
            want.status,
            want.reason,
            &want.message,
            Timestamp::now(),
            self.opts.heartbeat,
        ) {
            self.node = Some(self.api.set_condition(&c).await?);
        }
        if self.was_ready != Some(report.ready) {
            if report.ready {
                self.publish(&KEvent {
                    type_: EventType::Normal,
                    reason: "NodeReady".into(),
                    note: Some(
                        "every enforce-mode kernel setting is in sync; label set, taint removed"
                            .into(),
                    ),
                    action: "Reconcile".into(),
                    secondary: None,
                })
                .await;
            }
            self.was_ready = Some(report.ready);
        }
        Ok(())
    }

    /// When the next heartbeat of the condition is due.
    fn heartbeat_in(&self) -> Duration {
        let last = self
            .node
            .as_ref()
            .and_then(our_condition)
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        match last {
            Some(t) => {
                let age = Timestamp::now().duration_since(t).unsigned_abs();
                self.opts
                    .heartbeat
                    .saturating_sub(age)
                    .max(Duration::from_millis(100))
            }
            None => self.opts.heartbeat,
        }
    }
}

/// Proves host networking from the agent's own Pod (`spec.hostNetwork: true`), retrying.
async fn prove_host_network(
    api: &NodeApi,
    client: Client,
    ns: &str,
    name: &str,
    tx: mpsc::Sender<String>,
) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let mut backoff = Backoff::default();
    loop {
        let r = pods.get(name).await;
        api.count("get_pod", &r);
        match r {
            Ok(p) if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) => {
                let _ = tx
                    .send(format!("pod {ns}/{name} has hostNetwork: true"))
                    .await;
                return;
            }
            Ok(_) => {
                tracing::error!(pod = %format!("{ns}/{name}"), "the agent's pod does not use hostNetwork: net.* settings stay unverified");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agent's pod to prove host networking; retrying");
                tokio::time::sleep(backoff.next().unwrap_or(BACKOFF_MAX)).await;
            }
        }
    }
}

/// Runs the gate until `inputs.stop` turns true, then writes the condition Unknown /
/// AgentStopped (label and taint stay: a rolling update must not flap scheduling).
pub async fn run(client: Client, opts: GateOptions, metrics: Arc<Metrics>, mut inputs: GateInputs) {
    let api = NodeApi {
        nodes: Api::all(client.clone()),
        name: opts.node_name.clone(),
        metrics,
    };
    if let (Some((ns, name)), Some(tx)) = (opts.pod.clone(), inputs.netns_proof.take()) {
        let proof_api = api.clone();
        let c = client.clone();
        tokio::spawn(async move { prove_host_network(&proof_api, c, &ns, &name, tx).await });
    }
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: MANAGER.into(),
            instance: Some(opts.node_name.clone()),
        },
    );
    let mut gate = Gate {
        api,
        opts,
        recorder,
        node: None,
        was_ready: None,
    };
    let nodes = gate.api.nodes.clone();
    let mut node_stream =
        pin!(watcher::watch_object(nodes, &gate.opts.node_name).backoff(Backoff::default()));
    let started = Instant::now();
    let mut first_ready_marked = false;
    let mut retry = Backoff::default();
    let mut retry_at: Option<Instant> = None;
    let mut pending_events: Vec<KEvent> = vec![];
    let mut node_missing_logged = false;
    loop {
        let wake = retry_at
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| gate.heartbeat_in());
        tokio::select! {
            changed = inputs.reports.changed() => {
                if changed.is_err() { break; }
            }
            ev = inputs.events.recv() => {
                match ev {
                    Some(e) => {
                        // Bounded while the Node is unknown: the oldest go first.
                        if pending_events.len() >= 100 {
                            pending_events.remove(0);
                        }
                        pending_events.push(event_for(&e));
                    }
                    None => break,
                }
            }
            item = node_stream.next() => {
                match item {
                    Some(Ok(Some(n))) => { gate.node = Some(n); node_missing_logged = false; }
                    Some(Ok(None)) => {
                        gate.node = None;
                        if !node_missing_logged {
                            tracing::warn!(node = %gate.opts.node_name, "node object not found; waiting for it");
                            node_missing_logged = true;
                        }
                    }
                    Some(Err(e)) => {
                        gate.api.metrics.kube_requests.get_or_create(&RequestLabels { verb: "watch".into(), result: "error".into() }).inc();
                        tracing::warn!(error = %e, "node watch failed; retrying with backoff");
                    }
                    None => break,
                }
            }
            _ = tokio::time::sleep(wake) => {}
            _ = inputs.stop.changed() => break,
        }
        if gate.node.is_some() {
            for e in pending_events.drain(..) {
                gate.publish(&e).await;
            }
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        let report = inputs.reports.borrow().clone();
        let Some(report) = report else { continue };
        match gate.sync(&report).await {
            Ok(()) => {
                if retry_at.take().is_some() {
                    tracing::info!("node marks written after API errors");
                }
                if report.ready && !first_ready_marked && gate.node.is_some() {
                    first_ready_marked = true;
                    tracing::info!(
                        since_start_ms = started.elapsed().as_millis() as u64,
                        "node marked ready: label set, taint removed, condition True"
                    );
                }
                kube::runtime::utils::Backoff::reset(&mut retry);
            }
            Err(e) => {
                let d = retry.next().unwrap_or(BACKOFF_MAX);
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot update the node; retrying");
                retry_at = Some(Instant::now() + d);
                // A failed write may have been a stale view: re-read on retry.
                if let Ok(n) = gate.api.get().await {
                    gate.node = Some(n);
                }
            }
        }
    }
    // Graceful stop: say so on the node, within a bounded time.
    let stopped = condition_update(
        gate.node.as_ref().and_then(our_condition),
        "Unknown",
        REASON_STOPPED,
        "redis-node-tuner stopped; kernel settings, label and taint are left as they were",
        Timestamp::now(),
        Duration::ZERO,
    );
    if let Some(c) = stopped {
        match tokio::time::timeout(Duration::from_secs(5), gate.api.set_condition(&c)).await {
            Ok(Ok(_)) => tracing::info!("condition set to Unknown/AgentStopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write AgentStopped"),
            Err(_) => tracing::warn!("timed out writing AgentStopped"),
        }
    }
}

/// Removes every mark of the agent from a node: label, taint (any effect), condition.
pub async fn cleanup(
    client: Client,
    node_name: &str,
    metrics: Arc<Metrics>,
) -> Result<(), GateError> {
    let api = NodeApi {
        nodes: Api::all(client),
        name: node_name.into(),
        metrics,
    };
    let node = api.get().await?;
    if node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL))
    {
        api.remove_label().await?;
    }
    api.set_taint(None, None).await?;
    if our_condition(&node).is_some() {
        api.delete_condition().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::KnobReport;

    fn knob(name: &str, actual: &str, in_sync: bool, error: Option<&str>) -> KnobReport {
        KnobReport {
            name: name.into(),
            setting: name.into(),
            desired: "1".into(),
            actual: Some(actual.into()),
            in_sync,
            mode: "enforce",
            state: if in_sync { "in_sync" } else { "drift" },
            error: error.map(String::from),
            desired_number: None,
            actual_number: None,
        }
    }

    fn report(ready: bool, settings: Vec<KnobReport>) -> Report {
        Report {
            ready,
            netns: String::new(),
            settings,
        }
    }

    #[test]
    fn marks_follow_readiness_with_stable_messages() {
        let m = desired_marks(&report(
            true,
            vec![knob("vm.overcommit_memory", "1", true, None)],
        ));
        assert_eq!(
            (m.label, m.taint, m.status, m.reason),
            (true, false, "True", REASON_IN_SYNC)
        );
        let m = desired_marks(&report(
            false,
            vec![knob("vm.overcommit_memory", "0", false, None)],
        ));
        assert_eq!(
            (m.label, m.taint, m.status, m.reason),
            (false, true, "False", REASON_DRIFT)
        );
        assert_eq!(m.message, "not in sync: vm.overcommit_memory=0 (want 1)");
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
        assert_eq!(a.reason, REASON_FAILED);
        assert_eq!(a, b, "error details must not change the condition");
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
        let hb = Duration::from_secs(300);
        let first = condition_update(None, "False", REASON_DRIFT, "m", t0, hb)
            .unwrap_or_else(|| panic!("first write"));
        assert_eq!(first.last_transition_time, Some(Time(t0)));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            condition_update(Some(&first), "False", REASON_DRIFT, "m", t1, hb),
            None
        );
        let msg = condition_update(Some(&first), "False", REASON_FAILED, "m2", t1, hb)
            .unwrap_or_else(|| panic!("reason change"));
        assert_eq!(
            msg.last_transition_time,
            Some(Time(t0)),
            "same status keeps transition time"
        );
        let flip = condition_update(Some(&first), "True", REASON_IN_SYNC, "ok", t1, hb)
            .unwrap_or_else(|| panic!("flip"));
        assert_eq!(flip.last_transition_time, Some(Time(t1)));
        let t2 = t0 + Duration::from_secs(301);
        let beat = condition_update(Some(&first), "False", REASON_DRIFT, "m", t2, hb)
            .unwrap_or_else(|| panic!("heartbeat"));
        assert_eq!(
            (beat.last_heartbeat_time, beat.last_transition_time),
            (Some(Time(t2)), Some(Time(t0)))
        );
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
    fn backoff_is_capped() {
        let mut b = Backoff::default();
        let ds: Vec<Duration> = (0..10).filter_map(|_| b.next()).collect();
        assert!(ds[0] >= Duration::from_millis(400) && ds[0] <= Duration::from_millis(600));
        assert!(ds.iter().all(|d| *d <= BACKOFF_MAX.mul_f64(1.2)));
        assert!(ds[9] >= BACKOFF_MAX.mul_f64(0.8));
    }
}
