//! The API calls of the gate, behind the [`NodeApi`] trait so the gate's transitions can be
//! tested without a cluster. [`KubeNodeApi`] is the one place for timeouts, the field manager
//! and the request counter; the read-modify-write of the taint list (retried on conflict) is
//! written once, on the trait, over its primitives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference, Pod, Taint};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event as KEvent, Recorder, Reporter};
use serde_json::json;

use super::annotations::{LAST_WRITER_ANNOTATION, VERSION_ANNOTATION};
use super::marks::{taints, taints_with};
use super::{ConditionType, GateError, LABEL, MANAGER};
use crate::metrics::{Metrics, RequestLabels};

/// Attempts of the taint read-modify-write before giving up (each conflict re-reads the node).
pub const TAINT_ATTEMPTS: u32 = 8;

/// The requests the gate makes on its own Node (and Pod).
#[allow(async_fn_in_trait)]
pub trait NodeApi {
    /// GET of the Node.
    async fn get(&self) -> Result<Node, GateError>;
    /// Server-side apply of the label (owned by our field manager, or released) and of the
    /// agent's annotations (`annotations`: every one it owns; one left out is dropped).
    async fn apply_label(
        &self,
        on: bool,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Node, GateError>;
    /// Removes the label whoever set it (after `apply_label(false)` left another owner's copy).
    async fn remove_label(&self) -> Result<Node, GateError>;
    /// Replaces the taint list, only if the Node is still at `resource_version` (409 otherwise:
    /// [`GateError::Conflict`]).
    async fn put_taints(
        &self,
        resource_version: Option<&str>,
        taints: &[Taint],
    ) -> Result<Node, GateError>;
    /// Strategic merge of our condition on `nodes/status` (other conditions untouched).
    async fn patch_condition(&self, c: &NodeCondition) -> Result<Node, GateError>;
    /// Removes our condition (of type `type_`).
    async fn delete_condition(&self, type_: &ConditionType) -> Result<Node, GateError>;
    /// Publishes an event about the Node.
    async fn publish(&self, e: &KEvent, node_uid: Option<&str>) -> Result<(), GateError>;
    /// GET of a Pod.
    async fn get_pod(&self, namespace: &str, name: &str) -> Result<Pod, GateError>;

    /// Adds (`Some(effect)`) or removes (`None`) our taint by read-modify-write of the atomic
    /// taint list carrying the resourceVersion it was read at, re-reading on conflict, so
    /// another component's concurrent taint change is never lost.
    async fn set_taint(
        &self,
        cached: Option<&Node>,
        effect: Option<&str>,
    ) -> Result<Node, GateError> {
        let mut node = match cached {
            Some(n) => n.clone(),
            None => self.get().await?,
        };
        for _ in 0..TAINT_ATTEMPTS {
            let Some(next) = taints_with(taints(&node), effect) else {
                return Ok(node);
            };
            match self
                .put_taints(node.metadata.resource_version.as_deref(), &next)
                .await
            {
                Ok(n) => return Ok(n),
                Err(GateError::Conflict { .. }) => node = self.get().await?,
                Err(e) => return Err(e),
            }
        }
        Err(GateError::Conflict {
            node: node.metadata.name.unwrap_or_default(),
            attempts: TAINT_ATTEMPTS,
        })
    }
}

/// [`NodeApi`] against the API server: every request bounded by the request timeout, counted in
/// `redis_node_tuner_kube_requests_total{verb,result}`, and written with field manager
/// `redis-node-tuner`.
#[derive(Clone)]
pub struct KubeNodeApi {
    nodes: Api<Node>,
    client: Client,
    name: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
    recorder: Recorder,
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

impl KubeNodeApi {
    pub fn new(client: Client, node: &str, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(node.to_string()),
            },
        );
        KubeNodeApi {
            nodes: Api::all(client.clone()),
            client,
            name: node.to_string(),
            timeout,
            metrics,
            recorder,
        }
    }

    /// The bound of every request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn count(&self, verb: &str, result: &str) {
        self.metrics
            .kube_requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Runs one request under the timeout and counts it.
    async fn call<T>(
        &self,
        verb: &'static str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, GateError> {
        let r = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.count(verb, "timeout");
                return Err(GateError::Timeout {
                    node: self.name.clone(),
                    verb,
                    after: self.timeout,
                });
            }
        };
        let result = match &r {
            Ok(_) => "success",
            Err(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Err(_) => "error",
        };
        self.count(verb, result);
        r.map_err(|source| match source {
            kube::Error::Api(s) if s.code == 409 => GateError::Conflict {
                node: self.name.clone(),
                attempts: 1,
            },
            source => GateError::Api {
                node: self.name.clone(),
                source,
            },
        })
    }

    /// A client error as the gate's error about this node.
    pub fn error(&self, source: kube::Error) -> GateError {
        GateError::Api {
            node: self.name.clone(),
            source,
        }
    }

    /// Removes the label whoever set it, and with `annotations` the agent's annotations too
    /// (`cleanup`): one merge patch.
    pub async fn remove_metadata(&self, annotations: bool) -> Result<Node, GateError> {
        let mut metadata = json!({"labels": {LABEL: null}});
        if annotations {
            metadata["annotations"] =
                json!({VERSION_ANNOTATION: null, LAST_WRITER_ANNOTATION: null});
        }
        let patch = Patch::Merge(json!({ "metadata": metadata }));
        self.call(
            "patch",
            self.nodes.patch(&self.name, &patch_params(), &patch),
        )
        .await
    }

    /// Opens a watch of this Node from `resource_version`; the server ends it after
    /// `timeout_secs`. Opening is bounded by the request timeout; items are not (the caller
    /// bounds the silence between them).
    pub async fn watch(
        &self,
        resource_version: &str,
        timeout_secs: u32,
    ) -> Result<impl Stream<Item = Result<WatchEvent<Node>, kube::Error>> + use<>, GateError> {
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(timeout_secs);
        let s = self
            .call("watch", self.nodes.watch(&wp, resource_version))
            .await?;
        Ok(s.boxed())
    }
}

impl NodeApi for KubeNodeApi {
    async fn get(&self) -> Result<Node, GateError> {
        self.call("get", self.nodes.get(&self.name)).await
    }

    async fn apply_label(
        &self,
        on: bool,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Node, GateError> {
        let mut metadata = json!({"name": self.name});
        if on {
            metadata["labels"] = json!({LABEL: "true"});
        }
        if !annotations.is_empty() {
            metadata["annotations"] = json!(annotations);
        }
        let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": metadata});
        let pp = PatchParams::apply(MANAGER).force();
        self.call(
            "apply",
            self.nodes.patch(&self.name, &pp, &Patch::Apply(&body)),
        )
        .await
    }

    async fn remove_label(&self) -> Result<Node, GateError> {
        self.remove_metadata(false).await
    }
    async fn put_taints(
        &self,
        resource_version: Option<&str>,
        taints: &[Taint],
    ) -> Result<Node, GateError> {
        let patch = Patch::Merge(json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": {"taints": taints},
        }));
        self.call(
            "patch",
            self.nodes.patch(&self.name, &patch_params(), &patch),
        )
        .await
    }

    async fn patch_condition(&self, c: &NodeCondition) -> Result<Node, GateError> {
        let patch = Patch::Strategic(json!({"status": {"conditions": [c]}}));
        self.call(
            "patch_status",
            self.nodes.patch_status(&self.name, &patch_params(), &patch),
        )
        .await
    }

    async fn delete_condition(&self, type_: &ConditionType) -> Result<Node, GateError> {
        let patch = Patch::Strategic(
            json!({"status": {"conditions": [{"type": type_.as_str(), "$patch": "delete"}]}}),
        );
        self.call(
            "patch_status",
            self.nodes.patch_status(&self.name, &patch_params(), &patch),
        )
        .await
    }

    async fn publish(&self, e: &KEvent, node_uid: Option<&str>) -> Result<(), GateError> {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.name.clone()),
            uid: node_uid.map(String::from),
            ..Default::default()
        };
        self.call("event", self.recorder.publish(e, &reference))
            .await
    }

    async fn get_pod(&self, namespace: &str, name: &str) -> Result<Pod, GateError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        self.call("get_pod", pods.get(name)).await
    }
}
