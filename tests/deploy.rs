//! The Kubernetes manifests of deploy/ against a real kube-apiserver (tests/apiserver): every
//! object of the base and the overlay applied server-side and read back; the admission policy
//! with the agent's real Pod-bound token; the agent run exactly as its DaemonSet pod runs it
//! (its env, args, mounts remapped onto a fake kernel tree) under that policy; the PodMonitor
//! and PrometheusRule against the prometheus-operator CRDs (fetched by deploy/crds/fetch.sh);
//! the NodeReadinessRule example against node-readiness-controller's CRD (tests/fixtures).

mod common;
use common::apiserver::{
    ApiServer, LAST_WRITER_ANNOTATION, VERSION_ANNOTATION, condition, label, taint_keys,
};
use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as KEvent;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "redis-node-tuner";
const LABEL: &str = "redis-node-tuner.io/ready";
const TAINT: &str = "redis-node-tuner.io/not-ready";
const COND: &str = "RedisKernelTuned";
/// The domain-qualified condition type the README recommends for node-readiness-controller.
const QUALIFIED_COND: &str = "redis-node-tuner.io/KernelTuned";
const SECONDS: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize DIR` (the kustomize built into kubectl), written next to the apiserver.
fn kustomize(api: &ApiServer, dir: &str) -> PathBuf {
    let out = Out::of(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join(dir))
            .output()
            .expect("kubectl kustomize"),
    );
    assert_eq!(out.code, 0, "kubectl kustomize {dir}: {out:?}");
    let p = api
        .dir
        .path()
        .join(format!("{}.yaml", dir.replace('/', "-")));
    std::fs::write(&p, &out.stdout).expect("write rendered manifests");
    p
}

/// `kind/name` of every object in a rendered multi-document YAML (top-level keys only).
fn rendered_objects(yaml: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(yaml).expect("read rendered");
    text.split("\n---\n")
        .filter_map(|doc| {
            let kind = doc.lines().find_map(|l| l.strip_prefix("kind: "))?;
            let meta = doc.split("\nmetadata:\n").nth(1)?;
            let name = meta
                .lines()
                .take_while(|l| l.starts_with("  ") || l.is_empty())
                .find_map(|l| l.strip_prefix("  name: "))?;
            Some(format!("{}/{}", kind.trim(), name.trim()))
        })
        .collect()
}

/// Applies a file server-side (a real apply, not a dry run); returns kubectl's output.
fn apply_server_side(api: &ApiServer, file: &Path, extra: &[&str]) -> String {
    let f = file.to_string_lossy().into_owned();
    let mut args = vec!["apply", "--server-side", "-f", &f];
    args.extend_from_slice(extra);
    api.ok(&args)
}

/// The prometheus-operator CRDs, fetched from the Go module proxy by deploy/crds/fetch.sh,
/// applied server-side, and Established.
fn install_prometheus_operator_crds(api: &ApiServer) {
    let out = Out::of(
        Command::new("bash")
            .arg(root().join("deploy/crds/fetch.sh"))
            .stderr(Stdio::piped())
            .output()
            .expect("run deploy/crds/fetch.sh"),
    );
    assert_eq!(out.code, 0, "deploy/crds/fetch.sh: {out:?}");
    assert!(
        out.stdout
            .contains("name: podmonitors.monitoring.coreos.com")
            && out
                .stdout
                .contains("name: prometheusrules.monitoring.coreos.com"),
        "fetch.sh output lacks the CRDs"
    );
    let p = api.dir.path().join("prometheus-operator-crds.yaml");
    std::fs::write(&p, &out.stdout).expect("write CRDs");
    apply_server_side(api, &p, &[]);
    api.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]);
}

fn get_json(api: &ApiServer, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&api.ok(&a)).expect("kubectl get json")
}

fn daemonset(api: &ApiServer) -> Value {
    get_json(api, &["daemonset", "-n", NS, "redis-node-tuner"])
}

/// The least-privilege pod spec of the agent, as stored by the apiserver.
fn assert_least_privilege(ds: &Value) {
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(
        spec["containers"].as_array().map(Vec::len),
        Some(1),
        "{ds:#}"
    );
    assert!(spec["initContainers"].is_null(), "{ds:#}");
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc:#}");
    assert!(sc["capabilities"]["add"].is_null(), "{sc:#}");
    assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{sc:#}");
    assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{sc:#}");
    assert_ne!(sc["privileged"], json!(true), "{sc:#}");
    assert_eq!(sc["runAsUser"], json!(0), "{sc:#}");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        json!("RuntimeDefault")
    );
    // No AppArmor field: the kubelet rejects a pod that names one on a node without AppArmor,
    // and on AppArmor nodes the runtime default applies to an unset field anyway.
    assert!(
        spec["securityContext"]["appArmorProfile"].is_null()
            && c["securityContext"]["appArmorProfile"].is_null(),
        "{spec:#}"
    );
    // Its own taint is tolerated for every effect (no self-eviction under NoExecute).
    let own: Vec<&Value> = spec["tolerations"]
        .as_array()
        .expect("tolerations")
        .iter()
        .filter(|t| t["key"] == json!(TAINT))
        .collect();
    assert_eq!(own.len(), 1, "{spec:#}");
    assert_eq!(own[0]["operator"], json!("Exists"), "{spec:#}");
    assert!(own[0]["effect"].is_null(), "every effect: {spec:#}");
    assert_eq!(spec["hostNetwork"], json!(true));
    assert_ne!(spec["hostPID"], json!(true));
    assert_ne!(spec["hostIPC"], json!(true));
    // Its own class: ahead of workloads, never preempting them (not system-node-critical).
    assert_eq!(spec["priorityClassName"], json!("redis-node-tuner"));
    assert_eq!(spec["serviceAccountName"], json!(NS));

    // Exactly these host paths, each where the agent looks for it.
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mut host: Vec<(String, String, String)> = volumes
        .iter()
        .filter(|v| !v["hostPath"].is_null())
        .map(|v| {
            let m = mounts
                .iter()
                .find(|m| m["name"] == v["name"])
                .unwrap_or_else(|| panic!("volume {} not mounted", v["name"]));
            assert_ne!(m["readOnly"], json!(true), "{m:#}");
            assert!(m["mountPropagation"].is_null(), "{m:#}");
            (
                v["hostPath"]["path"].as_str().unwrap_or("").to_string(),
                v["hostPath"]["type"].as_str().unwrap_or("").to_string(),
                m["mountPath"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    host.sort();
    let want = [
        ("/proc/sys/net/core", "Directory", "/host/proc/sys/net/core"),
        ("/proc/sys/vm", "Directory", "/host/proc/sys/vm"),
        (
            "/sys/kernel/mm/transparent_hugepage",
            "Directory",
            "/host/sys/kernel/mm/transparent_hugepage",
        ),
        (
            "/var/lib/redis-node-tuner",
            "DirectoryOrCreate",
            "/var/lib/redis-node-tuner",
        ),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(host, want, "hostPath volumes");

    // The agent's roots point at those mounts, and every knob of the profile is under one.
    let env = env_map(c);
    let proc_root = env["REDIS_NODE_TUNER_PROC_ROOT"].clone();
    let sys_root = env["REDIS_NODE_TUNER_SYS_ROOT"].clone();
    for knob in [
        format!("{proc_root}/sys/vm/overcommit_memory"),
        format!("{proc_root}/sys/net/core/somaxconn"),
        format!("{sys_root}/kernel/mm/transparent_hugepage/enabled"),
        format!("{sys_root}/kernel/mm/transparent_hugepage/defrag"),
    ] {
        assert!(
            host.iter()
                .any(|(_, _, m)| knob.starts_with(&format!("{m}/"))),
            "{knob} is on no host mount"
        );
    }
    assert_eq!(
        env["REDIS_NODE_TUNER_STATE_DIR"],
        "/var/lib/redis-node-tuner"
    );
    let config = &env["REDIS_NODE_TUNER_CONFIG"];
    assert!(
        mounts.iter().any(|m| m["readOnly"] == json!(true)
            && config.starts_with(m["mountPath"].as_str().unwrap_or("-"))),
        "config {config} not on a read-only mount"
    );
    for (var, path) in [
        ("NODE_NAME", "spec.nodeName"),
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(env[var], format!("fieldRef:{path}"), "{var}");
    }

    // Probes, port, resources, rollout.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], json!("/healthz"));
    // Pod readiness is the agent's health (rollouts), not the node's tuning (label, condition).
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], json!("/healthz"));
    let port = &c["ports"][0];
    assert_eq!(
        (&port["name"], &port["containerPort"]),
        (&json!("metrics"), &json!(9977))
    );
    assert_eq!(c["args"], json!(["run", "--listen", ":9977"]), "{c:#}");
    assert!(c["resources"]["requests"]["cpu"].is_string(), "{c:#}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{c:#}");
    let ru = &ds["spec"]["updateStrategy"];
    assert_eq!(ru["type"], json!("RollingUpdate"));
    assert_eq!(ru["rollingUpdate"]["maxSurge"], json!(0), "{ru:#}");
    assert!(!ru["rollingUpdate"]["maxUnavailable"].is_null(), "{ru:#}");
    let tolerations = spec["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["key"] == json!(TAINT) && t["operator"] == json!("Exists")),
        "{tolerations:?}"
    );
}

/// name -> value, or "fieldRef:PATH" for downward-API variables.
fn env_map(container: &Value) -> std::collections::BTreeMap<String, String> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let v = match e["value"].as_str() {
                Some(v) => v.to_string(),
                None => format!(
                    "fieldRef:{}",
                    e["valueFrom"]["fieldRef"]["fieldPath"]
                        .as_str()
                        .unwrap_or("?")
                ),
            };
            (e["name"].as_str().unwrap_or("").to_string(), v)
        })
        .collect()
}

#[test]
fn base_and_overlay_apply_server_side_and_keep_the_least_privilege_pod_spec() {
    let api = ApiServer::start();
    install_prometheus_operator_crds(&api);

    let base = kustomize(&api, "deploy/base");
    let objects = rendered_objects(&base);
    for want in [
        "Namespace/redis-node-tuner",
        "ServiceAccount/redis-node-tuner",
        "ClusterRole/redis-node-tuner",
        "ClusterRoleBinding/redis-node-tuner",
        "Role/redis-node-tuner",
        "RoleBinding/redis-node-tuner",
        "Role/redis-node-tuner-events",
        "RoleBinding/redis-node-tuner-events",
        "DaemonSet/redis-node-tuner",
        "Service/redis-node-tuner",
        "PodMonitor/redis-node-tuner",
        "PrometheusRule/redis-node-tuner",
        "ConfigMap/redis-node-tuner-dashboard",
        "ValidatingAdmissionPolicy/redis-node-tuner-own-node-marks",
        "ValidatingAdmissionPolicyBinding/redis-node-tuner-own-node-marks",
        "ValidatingAdmissionPolicy/redis-node-tuner-own-node-events",
        "ValidatingAdmissionPolicyBinding/redis-node-tuner-own-node-events",
        "PriorityLevelConfiguration/redis-node-tuner",
        "FlowSchema/redis-node-tuner",
    ] {
        assert!(objects.contains(want), "{want} not rendered: {objects:?}");
    }
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("ConfigMap/redis-node-tuner-config-")),
        "{objects:?}"
    );
    let out = apply_server_side(&api, &base, &[]);
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("serverside-applied"))
            .count(),
        objects.len(),
        "{out}"
    );
    // Every rendered object is stored.
    let stored = get_json(&api, &["-f", &base.to_string_lossy()]);
    assert_eq!(
        stored["items"].as_array().map(Vec::len),
        Some(objects.len()),
        "{out}"
    );

    let ds = daemonset(&api);
    assert_least_privilege(&ds);
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["nodeSelector"]["dedicated"], json!("redis"));
    // The ConfigMap the pod mounts is the generated one, and holds the profile.
    let cm_name = spec["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| !v["configMap"].is_null()))
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("config volume")
        .to_string();
    assert!(cm_name.starts_with("redis-node-tuner-config-"), "{cm_name}");
    let cm = get_json(&api, &["configmap", "-n", NS, &cm_name]);
    assert!(
        cm["data"]["config.yaml"]
            .as_str()
            .is_some_and(|c| c.contains("net.core.somaxconn: {at_least: 2048}")),
        "{cm:#}"
    );
    // The dashboard ConfigMap is picked up by Grafana's sidecar.
    let dash = get_json(&api, &["configmap", "-n", NS, "redis-node-tuner-dashboard"]);
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], json!("1"));
    let board = dash["data"]
        .as_object()
        .and_then(|d| d.values().next())
        .and_then(Value::as_str)
        .expect("dashboard data");
    serde_json::from_str::<Value>(board).expect("dashboard is JSON");

    // The PodMonitor and the Service select the DaemonSet's pods and its named port; the
    // PodMonitor's namespace/name is the job the alerts expect.
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let pm = get_json(&api, &["podmonitor", "-n", NS, "redis-node-tuner"]);
    for (k, v) in pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("PodMonitor selector")
    {
        assert_eq!(&pod_labels[k], v, "PodMonitor selector {k}");
    }
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"][0]["port"],
        json!("metrics")
    );
    let rule = get_json(&api, &["prometheusrule", "-n", NS, "redis-node-tuner"]);
    assert!(
        rule["spec"]["groups"]
            .as_array()
            .is_some_and(|g| !g.is_empty()),
        "{rule:#}"
    );
    let svc = get_json(&api, &["service", "-n", NS, "redis-node-tuner"]);
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&pod_labels[k], v, "Service selector {k}");
    }
    assert_eq!(svc["spec"]["ports"][0]["name"], json!("metrics"));

    // The overlay, applied over the base (same field manager: what it drops is removed).
    let overlay = kustomize(&api, "deploy/overlays/redis-pool");
    let out = apply_server_side(&api, &overlay, &[]);
    assert!(
        out.contains("daemonset.apps/redis-node-tuner serverside-applied"),
        "{out}"
    );
    let ds = daemonset(&api);
    assert_least_privilege(&ds);
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "pool": "redis-db"})
    );
    let tolerations = spec["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["key"] == json!("pool") && t["value"] == json!("redis-db")),
        "{tolerations:?}"
    );
    assert!(
        spec["containers"][0]["image"]
            .as_str()
            .is_some_and(|i| i.ends_with("/redis-node-tuner:0.1.0")),
        "{spec:#}"
    );

    // The AppArmor component (for pools where every node runs AppArmor) pins the runtime
    // default explicitly and changes nothing else of the pod.
    let pinned = kustomize(&api, "tests/fixtures/apparmor-pool");
    let out = apply_server_side(&api, &pinned, &[]);
    assert!(
        out.contains("daemonset.apps/redis-node-tuner serverside-applied"),
        "{out}"
    );
    let mut ds = daemonset(&api);
    let sc = &mut ds["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        sc["appArmorProfile"],
        json!({"type": "RuntimeDefault"}),
        "{sc:#}"
    );
    sc.as_object_mut().map(|o| o.remove("appArmorProfile"));
    assert_least_privilege(&ds);

    // The writer-watch component adds exactly CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, hostPID and
    // the host's cgroup tree read-only (README "Writer watch"); without those the pod is the
    // base's least-privilege pod, field for field.
    let watch = kustomize(&api, "deploy/overlays/writer-watch");
    let out = apply_server_side(&api, &watch, &[]);
    assert!(
        out.contains("daemonset.apps/redis-node-tuner serverside-applied"),
        "{out}"
    );
    let mut ds = daemonset(&api);
    let spec = &mut ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], json!(true));
    spec["hostPID"] = json!(false);
    let c = &mut spec["containers"][0];
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        json!(["BPF", "PERFMON", "NET_ADMIN"])
    );
    c["securityContext"]["capabilities"]
        .as_object_mut()
        .map(|o| o.remove("add"));
    let env = c["env"].as_array_mut().expect("env");
    let before = env.len();
    env.retain(|e| {
        !(e == &json!({"name": "REDIS_NODE_TUNER_CGROUP_ROOT", "value": "/host/sys/fs/cgroup"})
            || e == &json!({"name": "REDIS_NODE_TUNER_WRITERS", "value": "observe"}))
    });
    assert_eq!(env.len() + 2, before, "{env:?}");
    let mounts = c["volumeMounts"].as_array_mut().expect("mounts");
    let cg_mount =
        json!({"name": "host-cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": true});
    assert!(mounts.contains(&cg_mount), "{mounts:?}");
    mounts.retain(|m| m != &cg_mount);
    let volumes = spec["volumes"].as_array_mut().expect("volumes");
    let cg =
        json!({"name": "host-cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}});
    assert!(volumes.contains(&cg), "{volumes:?}");
    volumes.retain(|v| v != &cg);
    assert_least_privilege(&ds);

    // The example Redis workload: required affinity on the agent's label, and no toleration
    // of the agent's taint.
    api.ok(&["create", "namespace", "redis"]);
    let example = root().join("deploy/examples/redis-statefulset.yaml");
    let out = apply_server_side(&api, &example, &["-n", "redis"]);
    assert!(
        out.contains("statefulset.apps/redis serverside-applied"),
        "{out}"
    );
    let sts = get_json(&api, &["statefulset", "-n", "redis", "redis"]);
    let pod = &sts["spec"]["template"]["spec"];
    let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .expect("required node affinity");
    assert!(
        terms.iter().all(|t| t["matchExpressions"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["key"] == json!(LABEL)
                && e["operator"] == json!("In")
                && e["values"] == json!(["true"])))),
        "{terms:?}"
    );
    assert!(
        !pod["tolerations"].to_string().contains(TAINT),
        "{:#}",
        pod["tolerations"]
    );
    // Its pool is deploy/base's (the README's quickstart labels and taints a node once, for
    // both): the affinity requires every label of the base DaemonSet's nodeSelector, and it
    // tolerates every pool taint the base tolerates (its own taint aside).
    let base_ds: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("deploy/base/daemonset.yaml")).expect("base ds"),
    )
    .expect("base ds yaml");
    let base_pod = &base_ds["spec"]["template"]["spec"];
    for (k, v) in base_pod["nodeSelector"].as_object().expect("nodeSelector") {
        if k == "kubernetes.io/os" {
            continue;
        }
        assert!(
            terms.iter().all(|t| t["matchExpressions"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["key"] == json!(k)
                    && e["operator"] == json!("In")
                    && e["values"] == json!([v])))),
            "the example does not select the base's pool label {k}={v}: {terms:?}"
        );
    }
    for t in base_pod["tolerations"].as_array().expect("tolerations") {
        if t["key"] == json!(TAINT) {
            continue;
        }
        assert!(
            pod["tolerations"]
                .as_array()
                .is_some_and(|ts| ts.contains(t)),
            "the example does not tolerate the base's pool taint {t}: {:#}",
            pod["tolerations"]
        );
    }
    // Every start of Redis (reboots too) waits for the kernel as the pod sees it: the agent's
    // image (the same kustomize image name as the DaemonSet's), `wait` with Redis's own
    // tcp-backlog, and no privilege.
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "wait-for-tuned-kernel", "{pod:#}");
    let agent_image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        init["image"].as_str().and_then(|i| i.split(':').next()),
        agent_image.split(':').next(),
        "{init:#}"
    );
    let init_args: Vec<String> = serde_json::from_value(init["args"].clone()).expect("args");
    let redis_args: Vec<String> =
        serde_json::from_value(pod["containers"][0]["args"].clone()).expect("args");
    let backlog = |a: &[String]| {
        a.iter()
            .position(|x| x == "--tcp-backlog")
            .and_then(|i| a.get(i + 1).cloned())
    };
    assert_eq!(init_args[0], "wait", "{init_args:?}");
    assert!(backlog(&init_args).is_some(), "{init_args:?}");
    assert_eq!(
        backlog(&init_args),
        backlog(&redis_args),
        "tcp-backlog of wait and Redis"
    );
    assert_eq!(init["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        init["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
}

// ---------------------------------------------------------------------------------------------
// The admission policy, with the agent's real Pod-bound token.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn client(kubeconfig: &Path) -> kube::Client {
    redis_node_tuner::k8s::client(Some(kubeconfig), std::time::Duration::from_secs(10))
        .await
        .expect("client")
}

/// A denial by the admission policy (not by RBAC): 403 naming the policy, with its message.
fn assert_denied<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str, message: &str) {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{what}: {s:?}");
            assert!(
                s.message
                    .contains("ValidatingAdmissionPolicy 'redis-node-tuner-own-node-"),
                "{what}: not denied by the policy: {s:?}"
            );
            assert!(s.message.contains(message), "{what}: {s:?}");
        }
        other => panic!("{what}: expected a denial, got {other:?}"),
    }
}

fn allowed<T>(r: Result<T, kube::Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn condition_patch(type_: &str, status: &str) -> Value {
    let now = "2026-01-01T00:00:00Z";
    json!({"status": {"conditions": [{"type": type_, "status": status, "reason": "Test",
        "message": "test", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
}

/// Taints merge patch with resourceVersion, as src/k8s/ writes them.
fn taints_patch(node: &Node, taints: Value) -> Patch<Value> {
    Patch::Merge(json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": taints},
    }))
}

/// The node's taints without ours (and without `drop`), plus ours when `ours`, in the order
/// src/k8s/ writes them.
fn taint_list(node: &Node, ours: bool, drop: Option<&str>) -> Value {
    let mut list: Vec<Value> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.key != TAINT && Some(t.key.as_str()) != drop)
        .map(|t| serde_json::to_value(t).expect("taint"))
        .collect();
    if ours {
        list.push(json!({"key": TAINT, "effect": "NoSchedule"}));
    }
    Value::Array(list)
}

fn label_apply(node: &str, labels: Value) -> Patch<Value> {
    Patch::Apply(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": labels}}))
}

/// Waits until the admission plugin has loaded the policies (they take effect asynchronously).
fn wait_for_policy(api: &ApiServer, kubeconfig: &Path, other_node: &str) {
    let enforced = wait_for(Duration::from_secs(30), || {
        let o = api.kubectl_as(
            kubeconfig,
            &[
                "label",
                "node",
                other_node,
                &format!("{LABEL}=true"),
                "--dry-run=server",
            ],
        );
        o.code != 0 && o.stderr.contains("ValidatingAdmissionPolicy")
    });
    assert!(
        enforced,
        "the admission policy was not enforced within 30 s"
    );
    // The events policy is another object, loaded on its own: wait for it too.
    let dir = tempfile::tempdir().expect("tmp");
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"generateName": "redis-node-tuner-", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "redis-node-tuner", "reportingInstance": "probe",
            "action": "Reconcile", "reason": "NodeReady", "type": "Normal", "note": "probe",
            "regarding": {"apiVersion": "v1", "kind": "Node", "name": other_node},
        })
        .to_string(),
    )
    .expect("event file");
    let events = wait_for(Duration::from_secs(30), || {
        let o = api.kubectl_as(
            kubeconfig,
            &["create", "--dry-run=server", "-f", &event.to_string_lossy()],
        );
        o.code != 0 && o.stderr.contains("ValidatingAdmissionPolicy")
    });
    assert!(
        events,
        "the events admission policy was not enforced within 30 s"
    );
}

#[test]
fn admission_policy_confines_the_agent_to_its_own_nodes_label_taint_and_condition() {
    let api = ApiServer::start();
    let dedicated = json!({"key": "dedicated", "value": "redis", "effect": "NoSchedule"});
    api.create_node(
        "db-a",
        json!({"pool": "redis"}),
        json!([dedicated, {"key": TAINT, "effect": "NoSchedule"}]),
    );
    api.create_node("db-b", json!({"pool": "redis"}), json!([dedicated]));
    // Installs deploy/base/access (RBAC + policies) and a token bound to a Pod on db-a.
    let kc = api.agent_kubeconfig("db-a", true);
    wait_for_policy(&api, &kc, "db-b");
    let b_before = api.node("db-b");

    runtime().block_on(async {
        let nodes: Api<Node> = Api::all(client(&kc).await);
        let apply = PatchParams::apply("redis-node-tuner").force();
        let plain = PatchParams::default();

        // Its own node: exactly the writes of src/k8s/ are admitted.
        allowed(
            nodes
                .patch("db-a", &apply, &label_apply("db-a", json!({LABEL: "true"})))
                .await,
            "label db-a",
        );
        let a = allowed(nodes.get("db-a").await, "get db-a");
        let a = allowed(
            nodes
                .patch(
                    "db-a",
                    &plain,
                    &taints_patch(&a, taint_list(&a, false, None)),
                )
                .await,
            "remove own taint on db-a",
        );
        allowed(
            nodes
                .patch(
                    "db-a",
                    &plain,
                    &taints_patch(&a, taint_list(&a, true, None)),
                )
                .await,
            "add own taint on db-a",
        );
        allowed(
            nodes
                .patch_status(
                    "db-a",
                    &plain,
                    &Patch::Strategic(condition_patch(COND, "True")),
                )
                .await,
            "condition on db-a",
        );
        // The domain-qualified type of `--condition-type` (node-readiness-controller), written
        // and deleted as `run` and `cleanup` do.
        for (patch, what) in [
            (
                condition_patch(QUALIFIED_COND, "True"),
                "the qualified condition on db-a",
            ),
            (
                json!({"status": {"conditions": [{"type": QUALIFIED_COND, "$patch": "delete"}]}}),
                "deleting the qualified condition on db-a",
            ),
        ] {
            allowed(
                nodes
                    .patch_status("db-a", &plain, &Patch::Strategic(patch))
                    .await,
                what,
            );
        }
        allowed(
            nodes
                .patch("db-a", &apply, &label_apply("db-a", json!({})))
                .await,
            "label removal (apply) on db-a",
        );
        allowed(
            nodes
                .patch(
                    "db-a",
                    &plain,
                    &Patch::Merge(json!({"metadata": {"labels": {LABEL: null}}})),
                )
                .await,
            "label removal (merge) on db-a",
        );

        // Another node: nothing.
        let b = allowed(nodes.get("db-b").await, "get db-b");
        let not_own = "may change only its own Node, not db-b";
        assert_denied(
            nodes
                .patch("db-b", &apply, &label_apply("db-b", json!({LABEL: "true"})))
                .await,
            "label db-b",
            not_own,
        );
        assert_denied(
            nodes
                .patch(
                    "db-b",
                    &plain,
                    &taints_patch(&b, taint_list(&b, true, None)),
                )
                .await,
            "taint db-b",
            not_own,
        );
        assert_denied(
            nodes
                .patch_status(
                    "db-b",
                    &plain,
                    &Patch::Strategic(condition_patch(COND, "True")),
                )
                .await,
            "condition on db-b",
            not_own,
        );

        // Its own node, but not its own marks.
        assert_denied(
            nodes
                .patch(
                    "db-a",
                    &apply,
                    &label_apply("db-a", json!({"pool": "evil", LABEL: "true"})),
                )
                .await,
            "another label on db-a",
            "may set only the label redis-node-tuner.io/ready",
        );
        assert_denied(
            nodes
                .patch(
                    "db-a",
                    &apply,
                    &label_apply("db-a", json!({LABEL: "false"})),
                )
                .await,
            "its label with another value on db-a",
            "may set only the label redis-node-tuner.io/ready",
        );
        let a = allowed(nodes.get("db-a").await, "get db-a");
        assert_denied(
            nodes
                .patch(
                    "db-a",
                    &plain,
                    &taints_patch(&a, taint_list(&a, true, Some("dedicated"))),
                )
                .await,
            "removing the dedicated taint on db-a",
            "may add or remove only its taint",
        );
        assert_denied(
            nodes
                .patch(
                    "db-a",
                    &plain,
                    &Patch::Merge(json!({"spec": {"unschedulable": true}})),
                )
                .await,
            "cordoning db-a",
            "may not change a Node's spec",
        );
        assert_denied(
            nodes
                .patch_status(
                    "db-a",
                    &plain,
                    &Patch::Strategic(condition_patch("Ready", "False")),
                )
                .await,
            "the kubelet's Ready condition on db-a",
            "may write only its condition RedisKernelTuned",
        );
        assert_denied(
            nodes
                .patch_status(
                    "db-a",
                    &plain,
                    &Patch::Strategic(condition_patch("example.com/KernelTuned", "True")),
                )
                .await,
            "a condition type of another domain on db-a",
            "may write only its condition RedisKernelTuned",
        );
        assert_denied(
            nodes
                .patch_status(
                    "db-a",
                    &plain,
                    &Patch::Merge(json!({"status": {"addresses": [
                        {"type": "InternalIP", "address": "192.0.2.66"}]}})),
                )
                .await,
            "the addresses of db-a",
            "may not change a Node's status other than its condition",
        );
        assert_denied(
            nodes
                .patch_status(
                    "db-a",
                    &plain,
                    &Patch::Merge(json!({"metadata": {"labels": {"pool": "evil"}}})),
                )
                .await,
            "a label through nodes/status on db-a",
            "may set only the label redis-node-tuner.io/ready",
        );
        let only_ours = "may set (at most 1024 characters) or remove only its annotations";
        assert_denied(
            nodes
                .patch(
                    "db-a",
                    &plain,
                    &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})),
                )
                .await,
            "an annotation on db-a",
            only_ours,
        );
        // Its own annotations (what `status` reads), applied with the label as `run` does,
        // and removed by a merge patch as `cleanup` does; not too long.
        let annotated = |annotations: Value| {
            Patch::Apply(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "db-a", "labels": {LABEL: "true"}, "annotations": annotations}}))
        };
        allowed(
            nodes
                .patch(
                    "db-a",
                    &apply,
                    &annotated(json!({VERSION_ANNOTATION: "0.1.0",
                        LAST_WRITER_ANNOTATION: r#"{"knob":"thp.enabled","comm":"tuned"}"#})),
                )
                .await,
            "its annotations on db-a",
        );
        assert_denied(
            nodes
                .patch(
                    "db-a",
                    &apply,
                    &annotated(json!({VERSION_ANNOTATION: "x".repeat(1025)})),
                )
                .await,
            "an oversized annotation of its own on db-a",
            only_ours,
        );
        assert_denied(
            nodes
                .patch(
                    "db-a",
                    &apply,
                    &annotated(json!({VERSION_ANNOTATION: "0.1.0", "example.com/x": "y"})),
                )
                .await,
            "another annotation applied with its own on db-a",
            only_ours,
        );
        allowed(
            nodes
                .patch(
                    "db-a",
                    &plain,
                    &Patch::Merge(json!({"metadata": {"labels": {LABEL: null},
                        "annotations": {VERSION_ANNOTATION: null, LAST_WRITER_ANNOTATION: null}}})),
                )
                .await,
            "removing its label and annotations (merge) on db-a",
        );

        // `redis-node-tuner cleanup`: its condition deleted by a strategic-merge directive.
        allowed(
            nodes
                .patch_status(
                    "db-a",
                    &plain,
                    &Patch::Strategic(
                        json!({"status": {"conditions": [{"type": COND, "$patch": "delete"}]}}),
                    ),
                )
                .await,
            "deleting its condition on db-a",
        );

        // Events: about its own Node, in default, only.
        let event = |node: &str, ns: &str| -> KEvent {
            serde_json::from_value(json!({
                "metadata": {"generateName": "redis-node-tuner-", "namespace": ns},
                "eventTime": "2026-01-01T00:00:00.000000Z",
                "reportingController": "redis-node-tuner", "reportingInstance": "db-a",
                "action": "Reconcile", "reason": "NodeReady", "type": "Normal", "note": "test",
                "regarding": {"apiVersion": "v1", "kind": "Node", "name": node},
            }))
            .expect("event")
        };
        let c = client(&kc).await;
        let pp = PostParams::default();
        let in_default: Api<KEvent> = Api::namespaced(c.clone(), "default");
        allowed(
            in_default.create(&pp, &event("db-a", "default")).await,
            "event about db-a",
        );
        assert_denied(
            in_default.create(&pp, &event("db-b", "default")).await,
            "event about db-b",
            "may record events (in namespace default) only about its own Node",
        );
        // Elsewhere RBAC already refuses (events are granted in namespace default only).
        let elsewhere: Api<KEvent> = Api::namespaced(c, "kube-system");
        match elsewhere.create(&pp, &event("db-a", "kube-system")).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => panic!("event in kube-system: expected 403, got {other:?}"),
        }
    });

    // A token of the same ServiceAccount without the node claim (not Pod-bound): no Node write.
    let unbound = api.token_kubeconfig(NS, "redis-node-tuner", None);
    let o = api.kubectl_as(
        &unbound,
        &["label", "node", "db-a", &format!("{LABEL}=true")],
    );
    assert!(
        o.code != 0 && o.stderr.contains("needs the node-name claim"),
        "{o:?}"
    );

    let a = api.node("db-a");
    assert_eq!(label(&a, "pool").as_deref(), Some("redis"));
    assert!(taint_keys(&a).contains(&"dedicated".to_string()), "{a:#}");
    assert_eq!(
        condition(&a, "Ready").map(|c| c["status"].clone()),
        Some(json!("True"))
    );
    assert!(condition(&a, COND).is_none(), "{a:#}");
    assert!(condition(&a, QUALIFIED_COND).is_none(), "{a:#}");
    assert_eq!(
        api.node("db-b")["metadata"]["resourceVersion"],
        b_before["metadata"]["resourceVersion"],
        "db-b was written"
    );
}

// ---------------------------------------------------------------------------------------------
// The agent, run the way its DaemonSet pod runs it.

/// The DaemonSet's container environment (and, with `listen`, its command line), with the
/// container's paths mapped onto the fake tree and the downward API resolved for `pod` on
/// `node`.
fn pod_command(
    t: &Tree,
    container: &Value,
    config: &Path,
    kubeconfig: &Path,
    pod: &str,
    node: &str,
    listen: Option<&str>,
) -> Command {
    let state = t.state_dir();
    let map = |v: &str| -> String {
        match v {
            "/host/proc" => t.path("proc").to_string_lossy().into_owned(),
            "/host/sys" => t.path("sys").to_string_lossy().into_owned(),
            "/var/lib/redis-node-tuner" => state.to_string_lossy().into_owned(),
            "/etc/redis-node-tuner/config.yaml" => config.to_string_lossy().into_owned(),
            // Values that are not paths: the log format, the taint effect, the heartbeat.
            "json" | "NoSchedule" | "5m" => v.into(),
            "fieldRef:spec.nodeName" => node.into(),
            "fieldRef:metadata.name" => pod.into(),
            "fieldRef:metadata.namespace" => NS.into(),
            other => panic!("the test does not know how to map the env value {other:?}"),
        }
    };
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_NODE_TUNER_KUBECONFIG", kubeconfig);
    for (k, v) in env_map(container) {
        cmd.env(k, map(&v));
    }
    let Some(listen) = listen else {
        return cmd;
    };
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            let a = a.as_str().expect("arg");
            if a == ":9977" {
                listen.to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    cmd.args(args);
    cmd
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn quantity_bytes(q: &str) -> u64 {
    let (n, mult) = if let Some(n) = q.strip_suffix("Mi") {
        (n, 1 << 20)
    } else if let Some(n) = q.strip_suffix("Gi") {
        (n, 1 << 30)
    } else if let Some(n) = q.strip_suffix("Ki") {
        (n, 1 << 10)
    } else {
        (q, 1)
    };
    n.parse::<u64>().expect("quantity") * mult
}

struct Agent {
    child: std::process::Child,
    log: PathBuf,
}

impl Agent {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn agent_run_as_its_daemonset_pod_tunes_the_node_under_the_admission_policy() {
    let api = ApiServer::start();
    install_prometheus_operator_crds(&api);
    let base = kustomize(&api, "deploy/base");
    apply_server_side(&api, &base, &[]);
    api.create_node(
        "db-1",
        json!({"dedicated": "redis", "kubernetes.io/os": "linux"}),
        json!([{"key": TAINT, "effect": "NoSchedule"},
               {"key": "dedicated", "value": "redis", "effect": "NoSchedule"}]),
    );
    api.create_node("db-2", json!({"dedicated": "redis"}), json!([]));

    // The Pod the DaemonSet controller would create on db-1, from the stored template.
    let ds = daemonset(&api);
    let template = &ds["spec"]["template"];
    let pod_name = "redis-node-tuner-x7k2p";
    let mut pod_spec = template["spec"].clone();
    pod_spec["nodeName"] = json!("db-1");
    api.apply_json(
        &["apply", "--server-side"],
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": NS, "labels": template["metadata"]["labels"]},
            "spec": pod_spec,
        }),
    );
    let kc = api.token_kubeconfig(NS, "redis-node-tuner", Some(pod_name));
    wait_for_policy(&api, &kc, "db-2");

    // Its profile, from the ConfigMap it mounts.
    let cm_name = template["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| !v["configMap"].is_null()))
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("config volume")
        .to_string();
    let cm = get_json(&api, &["configmap", "-n", NS, &cm_name]);
    let t = Tree::untuned();
    // Like in the pod: no <proc-root>/1 (only /proc/sys/vm and /proc/sys/net/core are
    // mounted), so only the Pod's hostNetwork can prove the network namespace.
    std::fs::remove_file(t.path("proc/1/ns/net")).expect("rm");
    let config = t.path("config.yaml");
    std::fs::write(
        &config,
        cm["data"]["config.yaml"].as_str().expect("config.yaml"),
    )
    .expect("write config");
    t.break_knob(SOMAXCONN, "128\n");

    let container = &template["spec"]["containers"][0];
    let addr = format!("127.0.0.1:{}", free_port());
    let log = t.path("agent.log");
    let child = pod_command(&t, container, &config, &kc, pod_name, "db-1", Some(&addr))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn agent");
    let agent = Agent { child, log };
    assert!(
        wait_for(SECONDS, || http_get(&addr, "/healthz")
            .is_ok_and(|(c, _)| c == 200)),
        "{}",
        agent.logs()
    );

    // Not in tune: tainted, no label, condition False.
    assert!(
        wait_for(SECONDS, || condition(&api.node("db-1"), COND)
            .is_some_and(|c| c["status"] == "False")),
        "{:#}\n{}",
        api.node("db-1"),
        agent.logs()
    );
    let n = api.node("db-1");
    assert!(taint_keys(&n).contains(&TAINT.to_string()), "{n:#}");
    assert_eq!(label(&n, LABEL), None);
    assert!(
        http_get(&addr, "/readyz").is_ok_and(|(c, _)| c == 503),
        "readiness probe"
    );

    // In tune: labelled, untainted, condition True; somaxconn in the host namespace proven by
    // the Pod's hostNetwork through the Role `pods get`.
    t.fix_knob(SOMAXCONN, "128\n");
    let ready = |n: &Value| {
        label(n, LABEL).as_deref() == Some("true")
            && !taint_keys(n).contains(&TAINT.to_string())
            && condition(n, COND).is_some_and(|c| c["status"] == "True")
    };
    assert!(
        wait_for(SECONDS, || ready(&api.node("db-1"))),
        "{:#}\n{}",
        api.node("db-1"),
        agent.logs()
    );
    assert_eq!(t.get(SOMAXCONN), "2048\n");
    assert_eq!(t.get(OVERCOMMIT), "1\n");
    assert!(
        agent.logs().contains("host network namespace proven"),
        "{}",
        agent.logs()
    );
    assert!(http_get(&addr, "/readyz").is_ok_and(|(c, _)| c == 200));
    let n = api.node("db-1");
    assert!(taint_keys(&n).contains(&"dedicated".to_string()), "{n:#}");
    assert_eq!(label(&n, "dedicated").as_deref(), Some("redis"));
    assert_eq!(
        condition(&n, "Ready").map(|c| c["reason"].clone()),
        Some(json!("KubeletReady"))
    );
    let events: Value = get_json(&api, &["events.events.k8s.io", "-n", "default"]);
    let reasons: BTreeSet<String> = events["items"]
        .as_array()
        .map(|i| {
            i.iter()
                .filter(|e| e["regarding"]["name"] == "db-1")
                .filter_map(|e| e["reason"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        reasons.contains("NodeReady") && reasons.contains("CorrectionFailed"),
        "{reasons:?}"
    );

    // No request of the agent was refused (RBAC or admission).
    let metrics = http_get(&addr, "/metrics").expect("metrics").1;
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("redis_node_tuner_kube_requests_total{"))
        .collect();
    assert!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|l| l.contains(r#"result="success""#) || l.contains(r#"result="conflict""#)),
        "{requests:#?}\n{}",
        agent.logs()
    );
    let logs = agent.logs().to_lowercase();
    assert!(
        !logs.contains("forbidden") && !logs.contains("denied"),
        "{}",
        agent.logs()
    );

    // Its memory fits the limit of the DaemonSet (this is a debug build: an upper bound).
    let limit = quantity_bytes(
        container["resources"]["limits"]["memory"]
            .as_str()
            .expect("memory limit"),
    );
    let rss = rss_bytes(agent.child.id());
    eprintln!(
        "agent RSS in Kubernetes mode (debug build): {} KiB; limit {} KiB",
        rss / 1024,
        limit / 1024
    );
    assert!(rss > 0 && rss < limit, "RSS {rss} vs limit {limit}");

    // SIGTERM (pod deletion): condition Unknown/AgentStopped, label kept.
    let mut agent = agent;
    let _ = Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status();
    let status = agent.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{}", agent.logs());
    let n = api.node("db-1");
    let c = condition(&n, COND).expect("condition");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("Unknown"), Some("AgentStopped")),
        "{c:#}"
    );
    assert_eq!(label(&n, LABEL).as_deref(), Some("true"));

    // Uninstall: `cleanup` with the same token removes every mark, under the policy too.
    // Same environment as the pod (as with `kubectl exec`), another command.
    let out = Out::of(
        pod_command(&t, container, &config, &kc, pod_name, "db-1", None)
            .arg("cleanup")
            .output()
            .expect("cleanup"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let n = api.node("db-1");
    assert_eq!(label(&n, LABEL), None);
    assert!(!taint_keys(&n).contains(&TAINT.to_string()), "{n:#}");
    assert!(condition(&n, COND).is_none(), "{n:#}");
    assert!(taint_keys(&n).contains(&"dedicated".to_string()), "{n:#}");
    assert!(condition(&n, "Ready").is_some());
}

// ---------------------------------------------------------------------------------------------
// Monitoring objects against the prometheus-operator CRDs.

#[test]
fn podmonitor_and_prometheusrule_validate_against_the_prometheus_operator_crds() {
    let api = ApiServer::start();
    install_prometheus_operator_crds(&api);
    api.ok(&["create", "namespace", NS]);
    let monitoring = kustomize(&api, "deploy/base/monitoring");
    let out = apply_server_side(&api, &monitoring, &[]);
    for want in [
        "podmonitor.monitoring.coreos.com/redis-node-tuner serverside-applied",
        "prometheusrule.monitoring.coreos.com/redis-node-tuner serverside-applied",
        "configmap/redis-node-tuner-dashboard serverside-applied",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // Schema validation is on: the same objects with an invalid field are rejected.
    let invalid_pm = json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "invalid", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "redis-node-tuner"}},
            "podMetricsEndpoints": [{"port": "metrics", "interval": "every minute", "scheme": "ftp"}],
        },
    });
    let invalid_rule = json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": {"name": "invalid", "namespace": NS},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "NoExpression"}]}]},
    });
    for (obj, want) in [
        (invalid_pm, "spec.podMetricsEndpoints[0].interval"),
        (invalid_rule, "spec.groups[0].rules[0].expr"),
    ] {
        let p = api.dir.path().join("invalid.json");
        std::fs::write(&p, obj.to_string()).expect("write");
        let o = api.kubectl(&["apply", "--server-side", "-f", &p.to_string_lossy()]);
        assert!(o.code != 0 && o.stderr.contains(want), "{want}: {o:?}");
    }
    let got = get_json(&api, &["podmonitors,prometheusrules", "-n", NS]);
    assert_eq!(got["items"].as_array().map(Vec::len), Some(2), "{got:#}");
}

// ---------------------------------------------------------------------------------------------
// The profiles the manifests ship.

fn check_json(t: &Tree, config: Option<&Path>) -> Value {
    let mut args = vec![];
    let c;
    if let Some(p) = config {
        c = p.to_string_lossy().into_owned();
        args.extend(["--config", c.as_str()]);
    }
    args.extend(["check", "--output", "json"]);
    let out = t.run(&args);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    serde_json::from_str(&out.stdout).expect("check json")
}

fn desired(v: &Value) -> Vec<(String, String, String)> {
    v["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["desired"].as_str().unwrap_or("").to_string(),
                s["mode"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn shipped_profiles_load_and_the_base_profile_is_the_builtin_one() {
    let t = Tree::untuned();
    let builtin = desired(&check_json(&t, None));
    let base = desired(&check_json(
        &t,
        Some(&root().join("deploy/base/config.yaml")),
    ));
    assert_eq!(base, builtin);
    let pool = desired(&check_json(
        &t,
        Some(&root().join("deploy/overlays/redis-pool/config.yaml")),
    ));
    let somaxconn = pool
        .iter()
        .find(|s| s.0 == "net.core.somaxconn")
        .expect("somaxconn");
    assert!(somaxconn.1.contains("4096"), "{somaxconn:?}");
    assert_eq!(pool.len(), builtin.len(), "{pool:?}");
}

// ---------------------------------------------------------------------------------------------
// The optional MutatingAdmissionPolicy that injects the `wait` init container.

/// A pod as the apiserver would store it (server-side dry run: admission runs, nothing stays).
fn admitted_pod(api: &ApiServer, dir: &Path, name: &str, pod: Value) -> Value {
    let f = dir.join(format!("{name}.json"));
    std::fs::write(&f, pod.to_string()).expect("pod file");
    let out = api.kubectl(&[
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        &f.to_string_lossy(),
    ]);
    if out.code != 0 {
        let log = std::fs::read_to_string(api.dir.path().join("apiserver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!(
            "create {name}: {out:?}\napiserver log (last lines first):\n{}",
            tail.join("\n")
        );
    }
    serde_json::from_str(&out.stdout).expect("pod json")
}

fn redis_pod(name: &str, labels: Value, annotations: Value, init: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels,
            "annotations": annotations},
        "spec": {"initContainers": init,
            "containers": [{"name": "redis", "image": "redis:7.4",
                "args": ["--tcp-backlog", "1024"]}]},
    })
}

fn init_names(p: &Value) -> Vec<String> {
    p["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn the_wait_injection_policy_adds_the_init_container_to_labelled_pods_only() {
    let api = ApiServer::start_with(&[
        "--feature-gates=MutatingAdmissionPolicy=true",
        "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
    ]);
    let policy = root().join("deploy/examples/wait-injection-policy.yaml");
    let out = apply_server_side(&api, &policy, &[]);
    assert!(
        out.contains("mutatingadmissionpolicy.admissionregistration.k8s.io/redis-node-tuner-wait serverside-applied"),
        "{out}"
    );
    // No controller-manager here: the ServiceAccount admission needs the namespace's default.
    api.ok(&["create", "serviceaccount", "default", "-n", "default"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let labelled = json!({"redis-node-tuner.io/wait": "true"});
    // The policy is loaded asynchronously: wait until a labelled pod gets the container.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let pod = loop {
        let p = admitted_pod(
            &api,
            tmp.path(),
            "redis-0",
            redis_pod(
                "redis-0",
                labelled.clone(),
                json!({"redis-node-tuner.io/tcp-backlog": "1024"}),
                json!([{"name": "chown-data", "image": "busybox", "command": ["true"]}]),
            ),
        );
        if !init_names(&p).contains(&"wait-for-tuned-kernel".to_string()) {
            assert!(
                std::time::Instant::now() < end,
                "the policy never injected: {p:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
            continue;
        }
        break p;
    };
    // Ours first, the pod's own init container kept, with the pod's backlog and no privilege.
    assert_eq!(
        init_names(&pod),
        ["wait-for-tuned-kernel", "chown-data"],
        "{pod:#}"
    );
    let c = &pod["spec"]["initContainers"][0];
    assert_eq!(
        c["args"],
        json!(["wait", "--tcp-backlog", "1024", "--timeout", "10m"]),
        "{c:#}"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert!(
        c["image"]
            .as_str()
            .is_some_and(|i| i.ends_with("/redis-node-tuner:0.1.0")),
        "{c:#}"
    );
    // No annotation: Redis's default backlog, 511; no init containers of its own.
    let p = admitted_pod(
        &api,
        tmp.path(),
        "redis-1",
        redis_pod("redis-1", labelled.clone(), json!({}), json!([])),
    );
    assert_eq!(init_names(&p), ["wait-for-tuned-kernel"], "{p:#}");
    assert_eq!(p["spec"]["initContainers"][0]["args"][2], "511");
    // Already there (written into the workload): not added twice.
    let own = json!([{"name": "wait-for-tuned-kernel", "image": "mine/redis-node-tuner:1",
        "args": ["wait", "--tcp-backlog", "2048"]}]);
    let p = admitted_pod(
        &api,
        tmp.path(),
        "redis-2",
        redis_pod("redis-2", labelled, json!({}), own),
    );
    assert_eq!(init_names(&p), ["wait-for-tuned-kernel"], "{p:#}");
    assert_eq!(
        p["spec"]["initContainers"][0]["image"],
        "mine/redis-node-tuner:1"
    );
    // Not labelled: untouched.
    let p = admitted_pod(
        &api,
        tmp.path(),
        "other",
        redis_pod("other", json!({"app": "other"}), json!({}), json!([])),
    );
    assert!(init_names(&p).is_empty(), "{p:#}");
}

// ---------------------------------------------------------------------------------------------
// node-readiness-controller: the documented NodeReadinessRule.

/// The first ```yaml block of the README section `heading`, parsed.
fn readme_yaml_block(heading: &str) -> Value {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let block = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("README section {heading:?} has no yaml block"));
    serde_saphyr::from_str(block).expect("README's NodeReadinessRule parses as YAML")
}

#[test]
fn node_readiness_rule_example_names_the_documented_type_and_the_real_crd_accepts_it() {
    const HEADING: &str = "### With node-readiness-controller";
    let file = root().join("deploy/examples/node-readiness-rule.yaml");
    let rule: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).expect("example"))
        .expect("deploy/examples/node-readiness-rule.yaml parses as YAML");
    // The README shows the file as it is.
    assert_eq!(readme_yaml_block(HEADING), rule);

    // The fields of the v1alpha1 API (api/v1alpha1/nodereadinessrule_types.go at v0.5.0).
    assert_eq!(rule["apiVersion"], "readiness.node.x-k8s.io/v1alpha1");
    assert_eq!(rule["kind"], "NodeReadinessRule");
    let spec = &rule["spec"];
    assert_eq!(
        spec["conditions"],
        json!([{"type": QUALIFIED_COND, "requiredStatus": "True"}]),
        "the rule must name the documented condition type"
    );
    redis_node_tuner::k8s::condition_type::validate(QUALIFIED_COND)
        .expect("the agent accepts the documented type");
    let key = spec["taint"]["key"].as_str().expect("taint.key");
    assert!(key.starts_with("readiness.k8s.io/"), "{key}");
    assert_ne!(key, TAINT, "the controller's taint is not the agent's");
    assert_eq!(spec["taint"]["effect"], "NoSchedule");
    assert!(
        ["bootstrap-only", "continuous"].contains(&spec["enforcementMode"].as_str().unwrap_or("")),
        "{spec:#}"
    );
    assert!(spec["nodeSelector"].is_object(), "{spec:#}");

    // The documented command line and the Helm example agree with the rule.
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert!(readme.contains(&format!(
        "run --condition-type {QUALIFIED_COND} --taint-effect none"
    )));
    let helm: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(
            root().join("deploy/helm/redis-node-tuner/examples/node-readiness-controller.yaml"),
        )
        .expect("Helm example"),
    )
    .expect("Helm example parses");
    assert_eq!(helm["conditionType"], QUALIFIED_COND);
    assert_eq!(helm["taintEffect"], "none");
    assert!(
        helm["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["key"] == key && t["operator"] == "Exists")),
        "the agent must tolerate the controller's taint {key}: {helm:#}"
    );

    // The controller's own CRD (v0.5.0, tests/fixtures) on the real apiserver: the rule passes
    // its schema and CEL rules (server-side dry run); a rule with the agent's taint key is
    // refused, so the validation is in force.
    let api = ApiServer::start();
    apply_server_side(
        &api,
        &root().join("tests/fixtures/node-readiness-controller/nodereadinessrules.yaml"),
        &[],
    );
    api.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/nodereadinessrules.readiness.node.x-k8s.io",
    ]);
    let out = apply_server_side(&api, &file, &["--dry-run=server"]);
    assert!(
        out.contains("nodereadinessrule.readiness.node.x-k8s.io/redis-kernel-tuned"),
        "{out}"
    );
    let mut bad = rule.clone();
    bad["spec"]["taint"]["key"] = json!(TAINT);
    let p = api.dir.path().join("bad-rule.json");
    std::fs::write(&p, bad.to_string()).expect("write");
    let p = p.to_string_lossy().into_owned();
    let out = api.kubectl(&["apply", "--server-side", "--dry-run=server", "-f", &p]);
    assert!(
        out.code != 0
            && out
                .stderr
                .contains("taint key must start with 'readiness.k8s.io/'"),
        "{out:?}"
    );
}
