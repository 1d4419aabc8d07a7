//! Kubernetes node gate: the agent's label, startup taint, node condition and events on its own
//! Node. A reporter of the enforce loop's [`Report`]s: the kernel loop never waits for it, so
//! API failures never stop enforcement.
//!
//! - [`marks`]: pure: the label, taint and condition a report asks for;
//! - [`annotations`]: pure: the agent's version and last-writer annotations (for `status`);
//! - [`condition_type`]: the condition's type (`--condition-type`), validated;
//! - [`node_api`]: the requests (timeouts, field manager, counting, taint compare-and-swap);
//! - [`events`]: Kubernetes events and their bounded queue;
//! - [`host_network`]: facts from the agent's own Pod (host networking, own-taint toleration);
//! - [`gate`]: the state machine driven by reports, Node updates, events and timers;
//! - [`reach`]: whether the API answers (one warning per outage, a gauge and a counter);
//! - this file: options, the client, the task that drives the gate, and `cleanup`.

pub mod annotations;
pub mod condition_type;
pub mod events;
pub mod gate;
pub mod host_network;
pub mod marks;
pub mod node_api;
pub mod reach;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::WatchEvent;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::{mpsc, watch};

use crate::agent::{Event, PassClock, Report};
use crate::backoff::{Backoff, jittered, unit_random};
use crate::metrics::Metrics;
pub use condition_type::ConditionType;
use gate::{Gate, RETRY_MAX, RETRY_START};
use host_network::PodFacts;
use marks::our_condition;
use node_api::{KubeNodeApi, NodeApi};
use reach::Reach;

/// The label set while the node is Redis-ready.
pub const LABEL: &str = "redis-node-tuner.io/ready";
/// The taint held while the node is not Redis-ready.
pub const TAINT_KEY: &str = "redis-node-tuner.io/not-ready";
/// The default node condition type (`--condition-type` changes it).
pub const CONDITION: &str = condition_type::DEFAULT;
/// Field manager of every write.
pub const MANAGER: &str = "redis-node-tuner";

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    /// The kubeconfig reads, but its credentials cannot be had yet (an exec plugin or a token
    /// source that needs the network): retried.
    #[error("kubeconfig {path}: credentials: {message}")]
    Auth { path: PathBuf, message: String },
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
    #[error("node {node}: {verb} request got no answer within {after:?} (--kube-timeout)")]
    Timeout {
        node: String,
        verb: &'static str,
        after: Duration,
    },
    #[error("node {node}: taint update conflicted after {attempts} attempt(s)")]
    Conflict { node: String, attempts: u32 },
    #[error("the Node watch task ended")]
    WatchEnded,
    #[error(
        "--taint-effect {effect}: the agent's own pod {pod} does not tolerate taint {TAINT_KEY}:{effect}, so the taint would evict or block the agent itself; tolerate {TAINT_KEY} with operator Exists and no effect (as deploy/base does), or choose another effect"
    )]
    Intolerant { pod: String, effect: String },
}

impl GateError {
    /// A configuration error (a kubeconfig that does not read, no config at all, a client that
    /// cannot be built, an agent Pod that does not tolerate its own taint): `run` exits 2 and
    /// is not restarted. Anything else is a retry.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            GateError::Kubeconfig { .. }
                | GateError::InCluster(_)
                | GateError::Client(_)
                | GateError::Intolerant { .. }
        )
    }

    /// Whether the error is the API server's 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, GateError::Api { source: kube::Error::Api(s), .. } if s.code == 404)
    }

    /// Whether the error is a 403 that names annotations: an own-node admission policy older
    /// than the agent's annotations refusing them.
    pub fn is_annotations_refused(&self) -> bool {
        matches!(self, GateError::Api { source: kube::Error::Api(s), .. }
            if s.code == 403 && s.message.contains("annotations"))
    }
}

/// How the gate is configured.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub node_name: String,
    /// The type of the agent's node condition.
    pub condition_type: ConditionType,
    /// `None`: the taint is off.
    pub taint_effect: Option<String>,
    pub heartbeat: Duration,
    /// The agent's own Pod (namespace, name), to prove host networking.
    pub pod: Option<(String, String)>,
    /// Bound of every API request.
    pub request_timeout: Duration,
    /// The Node watch is renewed after about this long (±10 %), and re-established when nothing
    /// arrives for this long plus the request timeout.
    pub watch_timeout: Duration,
}

/// Builds a client from a kubeconfig file, or else from $KUBECONFIG, ~/.kube/config or the
/// in-cluster service account.
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
    request_timeout: Duration,
) -> Result<Client, GateError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| GateError::Kubeconfig {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| GateError::Auth {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
        }
        // $KUBECONFIG or ~/.kube/config when present, else the in-cluster service account.
        None => Config::infer()
            .await
            .map_err(|e| GateError::InCluster(e.to_string()))?,
    };
    // A connection that never completes is cut by the request timeout (and counted as one),
    // not by the client's own longer connect timeout.
    config.connect_timeout = Some(request_timeout.saturating_mul(2));
    Client::try_from(config).map_err(|e| match e {
        // An exec plugin or token file that cannot give credentials yet: retried.
        kube::Error::Auth(e) => GateError::Auth {
            path: kubeconfig.map(Into::into).unwrap_or_default(),
            message: e.to_string(),
        },
        e => GateError::Client(e.to_string()),
    })
}

/// Whether the agent runs in a pod (in-cluster config available).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// The gate, ready to run: its client and what is known of the agent's own Pod.
pub struct Prepared {
    api: KubeNodeApi,
    metrics: Arc<Metrics>,
    opts: GateOptions,
    reach: Reach,
    /// What one GET of the agent's Pod showed at start (`None`: not configured or not readable
    /// yet; the gate keeps trying in the background).
    pub pod: Option<PodFacts>,
}

/// Builds the client and reads the agent's own Pod once (bounded by the request timeout). A Pod
/// that does not tolerate the agent's own taint is an error: the agent must not start.
pub async fn prepare(
    kubeconfig: Option<&std::path::Path>,
    opts: GateOptions,
    metrics: Arc<Metrics>,
) -> Result<Prepared, GateError> {
    let client = client(kubeconfig, opts.request_timeout).await?;
    let reach = Reach::new(Some(metrics.clone()));
    let api = KubeNodeApi::new(
        client,
        &opts.node_name,
        opts.request_timeout,
        metrics.clone(),
    );
    let mut pod = None;
    if let Some((ns, name)) = &opts.pod {
        match api.get_pod(ns, name).await {
            Ok(p) => {
                let facts = own_pod_facts(&p, opts.taint_effect.as_deref());
                check_tolerated(&facts, &opts)?;
                pod = Some(facts);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agent's own pod yet; retrying in the background")
            }
        }
    }
    Ok(Prepared {
        api,
        metrics,
        opts,
        reach,
        pod,
    })
}

/// [`prepare`] until it succeeds: an API or credentials that are not there yet (a host that
/// boots before its network) are retried with backoff (1 s doubling to 30 s) and logged once,
/// while kernel settings are enforced all along; a configuration error ends it. `Ok(None)`:
/// stopped before it succeeded.
pub async fn prepare_retrying(
    kubeconfig: Option<PathBuf>,
    opts: GateOptions,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<Prepared>, GateError> {
    let mut backoff = Backoff::spread(Duration::from_secs(1), Duration::from_secs(30));
    let mut logged = false;
    loop {
        match prepare(kubeconfig.as_deref(), opts.clone(), metrics.clone()).await {
            Ok(p) => {
                if logged {
                    tracing::info!("Kubernetes client ready");
                }
                return Ok(Some(p));
            }
            Err(e) if e.is_config() => return Err(e),
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "Kubernetes client not ready; retrying with backoff (kernel settings are enforced meanwhile)");
                    logged = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => return Ok(None),
                }
            }
        }
    }
}

/// The facts of the agent's own Pod; a Pod off host networking is logged, wherever it is read.
fn own_pod_facts(pod: &k8s_openapi::api::core::v1::Pod, effect: Option<&str>) -> PodFacts {
    let facts = PodFacts::of(pod, effect);
    if !facts.host_network {
        tracing::error!(pod = %facts.pod, "the agent's pod does not use hostNetwork: net.* settings stay unverified");
    }
    facts
}

fn check_tolerated(facts: &PodFacts, opts: &GateOptions) -> Result<(), GateError> {
    match &opts.taint_effect {
        Some(effect) if !facts.tolerates_own_taint => Err(GateError::Intolerant {
            pod: facts.pod.clone(),
            effect: effect.clone(),
        }),
        _ => Ok(()),
    }
}

/// Channels between the enforce loop and the gate.
pub struct GateInputs {
    pub reports: watch::Receiver<Option<Arc<Report>>>,
    pub events: mpsc::Receiver<Event>,
    pub stop: watch::Receiver<bool>,
    /// Called once host networking is proven from the agent's Pod.
    pub on_host_network: Option<Box<dyn FnOnce(String) + Send>>,
    /// When the enforce thread last finished a pass: a stall turns the condition Unknown.
    pub clock: Option<Arc<PassClock>>,
}

enum Input {
    Report(Arc<Report>),
    Event(Event),
    Node(Box<Option<Node>>),
    /// The agent's own Pod: its facts, or why it cannot be read (the API answered).
    Pod(Result<PodFacts, String>),
    Timer,
}

/// Drives the gate until `inputs.stop` turns true, then writes the condition Unknown /
/// AgentStopped. Returns an error only when the agent must stop (its Pod does not tolerate its
/// taint) or the Node watch task died.
pub async fn run(prepared: Prepared, mut inputs: GateInputs) -> Result<(), GateError> {
    let Prepared {
        api,
        metrics,
        opts,
        reach,
        pod,
    } = prepared;
    let mut on_host_network = inputs.on_host_network.take();
    if let Some(proof) = pod.as_ref().and_then(PodFacts::proof)
        && let Some(f) = on_host_network.take()
    {
        f(proof);
    }
    let (pod_tx, mut pod_rx) = mpsc::channel(1);
    let pod_task = match (&opts.pod, &pod) {
        (Some((ns, name)), None) => Some(tokio::spawn(read_own_pod(
            api.clone(),
            ns.clone(),
            name.clone(),
            opts.taint_effect.clone(),
            pod_tx,
        ))),
        _ => None,
    };
    let (node_tx, mut node_rx) = mpsc::channel(16);
    let watch_task = tokio::spawn(watch_node(
        api.clone(),
        opts.watch_timeout,
        node_tx,
        reach.clone(),
    ));
    let mut gate = Gate::new(api, opts.clone(), Instant::now())
        .with_reach(reach)
        .with_clock(inputs.clock.take());
    gate.hold(pod_task.is_some());
    let mut result = Ok(());
    loop {
        let wake = tokio::time::Instant::from_std(gate.next_wake(Instant::now()));
        // Biased, events first: the enforce loop sends a pass's events before its report, so
        // every event of a pass is queued before the report that follows it is acted on (the
        // first pass's drift events then go out as one summary, after the marks).
        let input = tokio::select! {
            biased;
            e = inputs.events.recv() => match e { Some(e) => Input::Event(e), None => break },
            changed = inputs.reports.changed() => {
                if changed.is_err() { break; }
                let r = inputs.reports.borrow_and_update().clone();
                match r { Some(r) => Input::Report(r), None => continue }
            }
            n = node_rx.recv() => match n {
                Some(n) => Input::Node(Box::new(n)),
                None => {
                    result = Err(GateError::WatchEnded);
                    break;
                }
            },
            Some(f) = pod_rx.recv() => Input::Pod(f),
            _ = tokio::time::sleep_until(wake) => Input::Timer,
            _ = inputs.stop.changed() => break,
        };
        let now = Instant::now();
        // The stop signal interrupts a slow request (each is bounded anyway).
        tokio::select! {
            r = async {
                match input {
                    Input::Report(r) => gate.on_report(r, now).await,
                    Input::Event(e) => gate.on_event(&e, now).await,
                    Input::Node(n) => gate.on_node(*n, now).await,
                    Input::Timer => gate.on_timer(now).await,
                    Input::Pod(Ok(facts)) => {
                        check_tolerated(&facts, &opts)?;
                        let proof = facts.proof();
                        let proven = proof.is_some();
                        if let (Some(proof), Some(f)) = (proof, on_host_network.take()) {
                            f(proof);
                        }
                        // With the proof the next report is made with it: write from then on.
                        // Without it no better report comes: write the one there is.
                        gate.release(proven, now).await;
                    }
                    Input::Pod(Err(why)) => gate.on_pod_unreadable(&why, now).await,
                }
                Ok::<(), GateError>(())
            } => if let Err(e) = r { result = Err(e); break; },
            _ = inputs.stop.changed() => break,
        }
        let (refused, full) = gate.take_dropped();
        metrics.events_dropped("refused", refused);
        metrics.events_dropped("queue_full", full);
    }
    watch_task.abort();
    if let Some(t) = pod_task {
        t.abort();
    }
    if result.is_ok() {
        gate.on_stop().await;
    }
    result
}

/// Reads the agent's Pod until it answers (backoff), then hands over its facts.
async fn read_own_pod(
    api: KubeNodeApi,
    ns: String,
    name: String,
    effect: Option<String>,
    tx: mpsc::Sender<Result<PodFacts, String>>,
) {
    let mut backoff = Backoff::spread(RETRY_START, RETRY_MAX);
    let mut said: Option<String> = None;
    loop {
        match api.get_pod(&ns, &name).await {
            Ok(p) => {
                let _ = tx.send(Ok(own_pod_facts(&p, effect.as_deref()))).await;
                return;
            }
            // An API that is not there is the gate's outage, logged by `reach`.
            Err(e) if reach::is_unreachable(&e) => {
                tracing::debug!(error = %e, "cannot read the agent's pod; retrying");
            }
            // It answers, and refuses (403 without `pods get`, 404 for a wrong POD_NAME):
            // said once per distinct answer, and on the Node.
            Err(e) => {
                let why = format!("cannot read the agent's own pod {ns}/{name}: {e}");
                if said.as_ref() != Some(&why) {
                    tracing::warn!(error = %e, pod = %format!("{ns}/{name}"),
                        "cannot read the agent's own pod; node marks are held, retrying");
                    let _ = tx.send(Err(why.clone())).await;
                    said = Some(why);
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Follows the Node: a GET at start, then a watch from its resourceVersion, renewed when the
/// server ends it (resuming from the last version seen, bookmarks included).
///
/// When continuity is lost (410 Gone, a failed or silent connection) the watch starts again from
/// resourceVersion "0": the apiserver's watch cache sends the Node as it holds it (a synthetic
/// ADDED) and then every change, in one request that never reads etcd, instead of a consistent
/// GET per agent (the storm of a fleet after an apiserver restart). Safe for this agent: it
/// needs only its own Node; a cached copy that lags is followed by the events that bring it up to
/// date; and no write rests on its freshness: the taint is a compare-and-swap on the
/// resourceVersion (a stale copy costs a 409 and a fresh GET), the label and the condition are
/// idempotent patches, and the gate never lets an object older than its own last write replace
/// it. Reconnects back off with [`Backoff::spread`] up to [`RETRY_MAX`].
async fn watch_node(
    api: KubeNodeApi,
    watch_timeout: Duration,
    tx: mpsc::Sender<Option<Node>>,
    reach: Reach,
) {
    const ANY: &str = "0";
    let mut backoff = Backoff::spread(RETRY_START, RETRY_MAX);
    // `None`: read the Node first (at start, and after it was deleted).
    let mut rv: Option<String> = None;
    loop {
        let version = match &rv {
            Some(v) => v.clone(),
            None => match api.get().await {
                Ok(n) => {
                    reach.answered();
                    let v = n.metadata.resource_version.clone().unwrap_or_default();
                    if tx.send(Some(n)).await.is_err() {
                        return;
                    }
                    backoff.reset();
                    v
                }
                Err(e) => {
                    if !reach.failed(&e) {
                        reach.answered();
                    }
                    if e.is_not_found() && tx.send(None).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            },
        };
        // A watch that starts afresh (at start, after a GET or from the cache) asks for a
        // timeout anywhere in [10 %, 100 %] of --watch-timeout, so a fleet that started or
        // reconnected together renews its watches spread over the whole period; a renewal
        // then keeps its place (±10 %).
        let fresh = rv.is_none() || version == ANY;
        rv = Some(version.clone());
        let timeout = if fresh {
            watch_timeout.mul_f64(0.1 + 0.9 * unit_random())
        } else {
            jittered(watch_timeout, 0.1)
        };
        let secs = timeout.as_secs().max(1);
        let idle = Duration::from_secs(secs) + api.timeout();
        let mut stream = match api.watch(&version, secs as u32).await {
            Ok(s) => {
                reach.answered();
                s
            }
            Err(e) => {
                if !reach.failed(&e) {
                    reach.answered();
                }
                rv = Some(ANY.into());
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        loop {
            match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => {
                    api.count("watch", "timeout");
                    tracing::warn!(
                        silent_s = idle.as_secs(),
                        "node watch got nothing (no event, bookmark or end) within its bound; re-establishing"
                    );
                    rv = Some(ANY.into());
                    break;
                }
                // The server ended the watch (its timeout): resume from the last version.
                Ok(None) => break,
                Ok(Some(Ok(WatchEvent::Added(n) | WatchEvent::Modified(n)))) => {
                    rv = n.metadata.resource_version.clone();
                    backoff.reset();
                    if tx.send(Some(n)).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Ok(WatchEvent::Deleted(_)))) => {
                    rv = None;
                    if tx.send(None).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                    rv = Some(b.metadata.resource_version);
                }
                Ok(Some(Ok(WatchEvent::Error(e)))) => {
                    // 410 Gone: the version left the window; continue from the cache at once
                    // (once: a 410 of that too waits like any other error).
                    api.count("watch", if e.code == 410 { "gone" } else { "error" });
                    if e.code != 410 || version == ANY {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    rv = Some(ANY.into());
                    break;
                }
                Ok(Some(Err(e))) => {
                    api.count("watch", "error");
                    let e = api.error(e);
                    if !reach.failed(&e) {
                        tracing::debug!(error = %e, "node watch failed; re-establishing");
                    }
                    rv = Some(ANY.into());
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            }
        }
    }
}

/// Removes every mark of the agent from a node: label, taint (any effect), condition (of type
/// `condition_type`), and its annotations (version, last writer).
pub async fn cleanup(
    kubeconfig: Option<&std::path::Path>,
    node_name: &str,
    condition_type: &ConditionType,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
) -> Result<(), GateError> {
    let client = client(kubeconfig, request_timeout).await?;
    let api = KubeNodeApi::new(client, node_name, request_timeout, metrics);
    let node = api.get().await?;
    let labelled = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL));
    let annotated = annotations::annotation(&node, annotations::VERSION_ANNOTATION).is_some()
        || annotations::annotation(&node, annotations::LAST_WRITER_ANNOTATION).is_some();
    if labelled || annotated {
        api.remove_metadata(annotated).await?;
    }
    api.set_taint(None, None).await?;
    if our_condition(&node, condition_type).is_some() {
        api.delete_condition(condition_type).await?;
    }
    Ok(())
}
