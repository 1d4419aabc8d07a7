//! The DaemonSet on a real node (issue 9): tests/cluster/up.sh brings up containerd, a kubelet,
//! kube-scheduler and kube-controller-manager against the test kube-apiserver; the agent runs
//! from this tree's Containerfile image, Redis from a local image of Debian's redis-server.
//! Everything is asserted from outside the agent: the apiserver's view, the host's kernel files,
//! Redis's own log; at the end the Helm chart is installed on the same node. One test drives the scenarios in sequence (one cluster fits a machine) under
//! the host-knob lock (the kubelet writes vm.overcommit_memory at start).
//!
//! Needs root, and what scripts/test.sh installs (tests/cluster/setup.sh).

mod common;
use common::host::{self, HostGuard, THP};
use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const D: &str = "/var/lib/redis-node-tuner-cluster";
const NODE: &str = "rnt-node";
const NS: &str = "redis-node-tuner";
const LABEL: &str = "redis-node-tuner.io/ready";
const TAINT: &str = "redis-node-tuner.io/not-ready";
const COND: &str = "RedisKernelTuned";
const API_PORT: &str = "16443";
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
const OVERCOMMIT: &str = "/proc/sys/vm/overcommit_memory";
/// Host settings the kubelet and CNI may change; tear-down must put them back.
/// (vm.overcommit_memory is the host-knob guard's to restore.)
const SYSCTLS: [&str; 6] = [
    "/proc/sys/vm/panic_on_oom",
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/panic_on_oops",
    "/proc/sys/kernel/keys/root_maxkeys",
    "/proc/sys/kernel/keys/root_maxbytes",
    "/proc/sys/net/ipv4/ip_forward",
];
const OVERCOMMIT_WARN: &str = "Memory overcommit must be enabled";
const THP_WARN: &str = "Transparent Huge Pages";
const BACKLOG_WARN: &str = "TCP backlog setting of 511 cannot be enforced";

fn script(name: &str) -> PathBuf {
    repo().join("tests/cluster").join(name)
}

/// A running test cluster; torn down (down.sh) on drop, with the components' logs printed when
/// the test is failing.
struct Cluster {
    kubeconfig: PathBuf,
    work: tempfile::TempDir,
    torn_down: bool,
}

impl Cluster {
    fn up() -> Cluster {
        let start = Instant::now();
        let out = Out::of(
            Command::new("bash")
                .arg(script("up.sh"))
                .env("RNT_CLUSTER_LOCK_HELD", "1")
                .output()
                .expect("run tests/cluster/up.sh"),
        );
        if out.code != 0 {
            down();
            panic!("tests/cluster/up.sh failed: {out:?}");
        }
        eprintln!("cluster up in {:.1}s", start.elapsed().as_secs_f64());
        Cluster {
            kubeconfig: PathBuf::from(D).join("apiserver/admin.kubeconfig"),
            work: tempfile::tempdir().expect("tempdir"),
            torn_down: false,
        }
    }

    /// Tears down now (down.sh), returning its result.
    fn finish(mut self) -> Out {
        self.torn_down = true;
        down()
    }

    fn kubectl(&self, args: &[&str]) -> Out {
        Out::of(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args)
                .output()
                .expect("run kubectl"),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert_eq!(out.code, 0, "kubectl {args:?}: {out:?}");
        out.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl get -o json")
    }

    fn node(&self) -> Value {
        self.json(&["node", NODE])
    }

    /// Waits up to `secs` for `f` to give a value; otherwise fails naming `what`.
    fn wait<T>(&self, secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > end {
                panic!("{what}: did not happen within {secs}s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn pods(&self, ns: &str, selector: &str) -> Vec<Value> {
        let v = self.json(&["pods", "-n", ns, "-l", selector]);
        v["items"].as_array().cloned().unwrap_or_default()
    }

    fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", "pod", "-n", ns, name, "-o", "json"]);
        (out.code == 0).then(|| serde_json::from_str(&out.stdout).expect("pod json"))
    }

    /// Runs a README shell block with bash (`-euxo pipefail`: each command traced, the first
    /// failure fails it) in `cwd`, as the cluster's admin, with the pinned Helm on PATH and
    /// Helm's state in the work dir.
    fn run_block(&self, cwd: &Path, script: &str) -> Out {
        let helm = common::helm::helm_bin();
        let helm_dir = helm.parent().expect("helm's directory");
        let home = self.work.path().join("helm-home");
        let path = format!(
            "{}:{}",
            helm_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Out::of(
            Command::new("bash")
                .args(["-euxo", "pipefail", "-c", script])
                .current_dir(cwd)
                .env("PATH", path)
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data"))
                .output()
                .expect("run bash"),
        )
    }

    /// `kubectl delete daemonset redis-node-tuner`, waiting for the deletion.
    fn delete_daemonset(&self) {
        self.ok(&[
            "delete",
            "daemonset",
            "-n",
            NS,
            "redis-node-tuner",
            "--wait=true",
        ]);
    }

    /// Waits until the Namespace and the ClusterRole of an uninstalled `install` are gone.
    fn install_gone(&self, install: &str) {
        self.wait(
            180,
            &format!("{install} Namespace and ClusterRole gone"),
            || {
                (self.kubectl(&["get", "namespace", NS]).code != 0
                    && self
                        .kubectl(&["get", "clusterrole", "redis-node-tuner"])
                        .code
                        != 0)
                    .then_some(())
            },
        );
    }

    /// Once the agent pods are gone, `cleanup` of the node with the admin's own credentials.
    fn cleanup_once_agents_gone(&self) {
        self.wait(60, "agent pods gone before cleanup", || {
            self.pods(NS, "app.kubernetes.io/name=redis-node-tuner")
                .is_empty()
                .then_some(())
        });
        let cleanup = Out::of(
            Command::new(BIN)
                .args(["cleanup", "--node-name", NODE])
                .env("KUBECONFIG", &self.kubeconfig)
                .output()
                .expect("redis-node-tuner cleanup"),
        );
        assert_eq!(cleanup.code, 0, "cleanup: {cleanup:?}");
    }

    /// Uninstall as the README says: the DaemonSet deleted (its pods gone), `cleanup` with the
    /// admin's own credentials, the kustomization `dir` deleted.
    fn uninstall_kustomization(&self, dir: &Path) {
        self.delete_daemonset();
        self.cleanup_once_agents_gone();
        self.ok(&[
            "delete",
            "-k",
            &dir.to_string_lossy(),
            "--wait=false",
            "--ignore-not-found",
        ]);
    }

    /// `kubectl apply --server-side -k DIR`.
    fn apply_k(&self, dir: &Path) -> String {
        self.ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &dir.to_string_lossy(),
        ])
    }

    /// Writes a kustomization directory under the work dir.
    fn overlay(&self, name: &str, kustomization: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).expect("overlay dir");
        std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("kustomization");
        for (f, text) in files {
            std::fs::write(dir.join(f), text).expect("overlay file");
        }
        dir
    }

    /// The agent overlay of deploy/base: the image built from this tree, never pulled, the
    /// apiserver's loopback address (no kube-proxy), extra `run` arguments; with the AppArmor
    /// component when asked.
    fn agent_overlay(&self, name: &str, apparmor: bool, extra_args: &[&str]) -> PathBuf {
        self.agent_overlay_with(name, apparmor, extra_args, None, false)
    }

    /// As `agent_overlay`, with the profile (the ConfigMap) replaced by `config`.
    fn agent_overlay_with(
        &self,
        name: &str,
        apparmor: bool,
        extra_args: &[&str],
        config: Option<&str>,
        redis_view: bool,
    ) -> PathBuf {
        let mut args = vec!["run", "--listen", ":9977"];
        args.extend_from_slice(extra_args);
        let dir = self.work.path().join(name);
        let mut components = vec![];
        if apparmor {
            components.push(relative(&repo().join("deploy/components/apparmor"), &dir));
        }
        if redis_view {
            components.push(relative(&repo().join("deploy/components/redis-view"), &dir));
        }
        let components = if components.is_empty() {
            String::new()
        } else {
            format!("components:\n  - {}\n", components.join("\n  - "))
        };
        // The test kubelet writes its pod logs under the cluster's directory.
        let pod_logs = if redis_view {
            format!(
                "  - target: {{kind: DaemonSet, name: redis-node-tuner}}\n    patch: |-\n      \
                 apiVersion: apps/v1\n      kind: DaemonSet\n      metadata: {{name: redis-node-tuner, \
                 namespace: {NS}}}\n      spec: {{template: {{spec: {{volumes: [{{name: pod-logs, \
                 hostPath: {{path: {D}/pod-logs}}}}]}}}}}}\n"
            )
        } else {
            String::new()
        };
        let k = format!(
            r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
{components}images:
  - name: redis-node-tuner
    newName: localhost/redis-node-tuner
    newTag: real-node
patches:
  - target: {{kind: DaemonSet, name: redis-node-tuner}}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
      - op: replace
        path: /spec/template/spec/containers/0/args
        value: {args}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_PORT, value: "{API_PORT}"}}
{pod_logs}"#,
            base = relative(&repo().join("deploy/base"), &dir),
            args = serde_json::to_string(&args).expect("args"),
        );
        match config {
            None => self.overlay(name, &k, &[]),
            Some(c) => {
                let k = format!(
                    "{k}configMapGenerator:\n  - name: redis-node-tuner-config\n    \
                     namespace: {NS}\n    behavior: replace\n    files: [config.yaml]\n"
                );
                self.overlay(name, &k, &[("config.yaml", c)])
            }
        }
    }

    /// The agent pod that is Running and Ready (name, uid).
    fn ready_agent(&self) -> Option<(String, String)> {
        self.pods(NS, "app.kubernetes.io/name=redis-node-tuner")
            .iter()
            .find(|p| {
                p["status"]["phase"] == "Running"
                    && p["metadata"]["deletionTimestamp"].is_null()
                    && pod_condition(p, "Ready") == Some("True".into())
            })
            .map(|p| (s(&p["metadata"]["name"]), s(&p["metadata"]["uid"])))
    }

    /// Whether the node is in tune as the apiserver sees it: label, no taint, condition True.
    fn node_marked_ready(&self) -> bool {
        let n = self.node();
        n["metadata"]["labels"][LABEL] == "true"
            && !taint_keys(&n).contains(&TAINT.to_string())
            && node_condition(&n, COND).is_some_and(|c| c["status"] == "True")
    }

    /// The agent's events about the node (events.k8s.io, namespace default), each as
    /// (reason, a signature that changes when the event or its series is observed again).
    fn events(&self) -> BTreeSet<(String, String)> {
        let v = self.json(&["events.events.k8s.io", "-n", "default"]);
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["regarding"]["name"] == NODE)
            .map(|e| {
                let sig = format!(
                    "{} {} {}",
                    e["metadata"]["name"], e["eventTime"], e["series"]
                );
                (s(&e["reason"]), sig)
            })
            .collect()
    }

    /// A plain pod on the node running the local Redis image with `args`.
    fn redis_pod(&self, ns: &str, name: &str, host_network: bool, tolerate: bool, args: &[&str]) {
        let mut spec = serde_json::json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "hostNetwork": host_network,
            "securityContext": {"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": true},
            "containers": [{
                "name": "redis", "image": redis_image(), "imagePullPolicy": "Never",
                "args": args,
            }],
            "volumes": [],
        });
        spec["containers"][0]["workingDir"] = "/tmp".into();
        if tolerate {
            spec["tolerations"] = serde_json::json!([{"key": TAINT, "operator": "Exists"}]);
        }
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        });
        let f = self.work.path().join(format!("{name}.json"));
        std::fs::write(&f, pod.to_string()).expect("pod file");
        self.ok(&["apply", "--server-side", "-f", &f.to_string_lossy()]);
    }

    /// A container's log as the kubelet wrote it (CRI format: `time stream tag line`); read
    /// from the node's files, as `kubectl logs` would need the node's name to resolve.
    fn container_log(&self, ns: &str, pod: &str, container: &str) -> String {
        let Some(uid) = self
            .pod(ns, pod)
            .map(|p| s(&p["metadata"]["uid"]))
            .filter(|u| !u.is_empty())
        else {
            return String::new();
        };
        let dir = PathBuf::from(D)
            .join("pod-logs")
            .join(format!("{ns}_{pod}_{uid}"))
            .join(container);
        let mut text = String::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        text
    }

    /// Redis's own log lines (the kubelet's log file of the container) once it is accepting
    /// connections.
    fn redis_log(&self, ns: &str, pod: &str, container: &str) -> Vec<String> {
        let uid = self.wait(120, &format!("pod {ns}/{pod} created"), || {
            self.pod(ns, pod)
                .map(|p| s(&p["metadata"]["uid"]))
                .filter(|u| !u.is_empty())
        });
        let dir = PathBuf::from(D)
            .join("pod-logs")
            .join(format!("{ns}_{pod}_{uid}"))
            .join(container);
        self.wait(
            120,
            &format!("Redis in {ns}/{pod} logging 'ready to accept connections'"),
            || {
                let mut lines = vec![];
                for e in std::fs::read_dir(&dir).ok()?.flatten() {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    lines.extend(text.lines().map(String::from));
                }
                lines
                    .iter()
                    .any(|l| l.to_lowercase().contains("ready to accept connections"))
                    .then_some(lines)
            },
        )
    }

    /// The kubelet's log files of a container of a pod (one per attempt: `<n>.log`).
    fn log_files(&self, ns: &str, pod: &str, uid: &str, container: &str) -> BTreeSet<PathBuf> {
        let dir = PathBuf::from(D)
            .join("pod-logs")
            .join(format!("{ns}_{pod}_{uid}"))
            .join(container);
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// A simulated power cycle of the node (tests/cluster/power-cycle.sh): the kubelet and
    /// containerd killed, every sandbox removed, the kernel back to its boot values (untuned),
    /// containerd and the kubelet started again. Returns what the next start of `ns/pod`'s
    /// Redis saw, once Redis accepts connections and the agent has tuned and marked the node.
    fn power_cycle(&self, ns: &str, pod: &str) -> Cycle {
        let uid = s(&self.pod(ns, pod).expect("the Redis pod")["metadata"]["uid"]);
        let before = self.log_files(ns, pod, &uid, "redis");
        let init_before = self.log_files(ns, pod, &uid, "wait-for-tuned-kernel");
        let run = |half: &str| {
            let out = Out::of(
                Command::new("bash")
                    .arg(script("power-cycle.sh"))
                    .arg(half)
                    .output()
                    .expect("power-cycle.sh"),
            );
            assert_eq!(out.code, 0, "power-cycle.sh {half}: {out:?}");
        };
        run("off");
        untune();
        let on = Instant::now();
        run("on");
        let log = self.wait(
            240,
            &format!("{ns}/{pod}'s Redis started again after the power cycle"),
            || {
                self.log_files(ns, pod, &uid, "redis")
                    .difference(&before)
                    .find_map(|f| {
                        let lines: Vec<String> = std::fs::read_to_string(f)
                            .unwrap_or_default()
                            .lines()
                            .map(String::from)
                            .collect();
                        lines
                            .iter()
                            .any(|l| l.to_lowercase().contains("ready to accept connections"))
                            .then_some(lines)
                    })
            },
        );
        let redis_ready = on.elapsed();
        let init: String = self
            .log_files(ns, pod, &uid, "wait-for-tuned-kernel")
            .difference(&init_before)
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        self.wait(
            180,
            "agent Ready and node marked after the power cycle",
            || (self.ready_agent().is_some() && self.node_marked_ready()).then_some(()),
        );
        assert_host_tuned();
        Cycle {
            warnings: warnings(&log),
            waited: init.contains("waiting for"),
            init_log: init.clone(),
            init_ran: !init.is_empty(),
            redis_ready,
        }
    }

    fn delete_pod(&self, ns: &str, name: &str) {
        self.ok(&[
            "delete",
            "pod",
            "-n",
            ns,
            name,
            "--ignore-not-found",
            "--grace-period=1",
            "--wait=true",
            "--timeout=60s",
        ]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs();
        }
        if !self.torn_down {
            down();
        }
    }
}

/// What one power cycle did to the next start of Redis.
#[derive(Debug)]
struct Cycle {
    /// Redis's warnings about overcommit, THP and the backlog at that start.
    warnings: Vec<String>,
    /// The `wait` init container ran in this start.
    init_ran: bool,
    /// ... and had to wait (the kernel was not tuned yet when it first looked).
    waited: bool,
    /// Its log (CRI format).
    init_log: String,
    /// From the kubelet's start to Redis accepting connections.
    redis_ready: Duration,
}

fn down() -> Out {
    let out = Out::of(
        Command::new("bash")
            .arg(script("down.sh"))
            .output()
            .expect("run tests/cluster/down.sh"),
    );
    eprintln!("down.sh: {out:?}");
    out
}

fn print_logs() {
    for c in [
        "kubelet",
        "containerd",
        "kube-scheduler",
        "kube-controller-manager",
        "apiserver",
        "up",
    ] {
        let p = PathBuf::from(D).join("logs").join(format!("{c}.log"));
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("--- tail of {} (kept)", p.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// `target` relative to the directory `from` (kustomize refuses absolute paths).
fn relative(target: &Path, from: &Path) -> String {
    let up = "../".repeat(from.components().count() - 1);
    format!(
        "{up}{}",
        target.display().to_string().trim_start_matches('/')
    )
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn pod_condition(p: &Value, kind: &str) -> Option<String> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| s(&c["status"]))
}

fn node_condition(n: &Value, kind: &str) -> Option<Value> {
    n["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

fn taint_keys(n: &Value) -> Vec<String> {
    n["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| s(&t["key"]))
        .collect()
}

/// The first `sh` block of the README section `heading`, without its `IMAGE=` and `NODE=`
/// lines; and those two lines with this test's values (the documented substitutions: the image
/// built from this tree, this node's name).
fn readme_quickstart(heading: &str) -> (String, String) {
    let blocks = common::readme_sh_blocks(heading);
    let first = blocks
        .first()
        .unwrap_or_else(|| panic!("no sh block in README {heading}"));
    let (mut image, mut node) = (0, 0);
    let mut block = String::new();
    for l in first.lines() {
        if l.starts_with("IMAGE=") {
            image += 1;
        } else if l.starts_with("NODE=") {
            node += 1;
        } else {
            block.push_str(l);
            block.push('\n');
        }
    }
    if heading == "## Kubernetes quickstart" {
        assert_eq!(
            (image, node),
            (1, 1),
            "README {heading}: one IMAGE= and one NODE= line"
        );
    }
    (
        format!("IMAGE=localhost/redis-node-tuner:real-node\nNODE={NODE}\n"),
        block,
    )
}

/// `restore` on the node, from the journal the agents kept in its state directory.
fn restore_node() -> Out {
    Out::of(
        Command::new(BIN)
            .arg("restore")
            .env("REDIS_NODE_TUNER_STATE_DIR", "/var/lib/redis-node-tuner")
            .output()
            .expect("redis-node-tuner restore"),
    )
}

/// `ctr` on the test node's containerd, in the kubelet's namespace.
fn ctr(args: &[&str]) {
    let out = Out::of(
        Command::new("ctr")
            .args(["--address", &format!("{D}/containerd/containerd.sock")])
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr"),
    );
    assert_eq!(out.code, 0, "ctr {args:?}: {out:?}");
}

/// The test's stand-in for kube-proxy, for the README's quickstarts run as written: a
/// MutatingAdmissionPolicy adding the API server's loopback address to the agent pods'
/// environment (what the overlays of this test patch in). Waits until it is in force.
fn loopback_apiserver_policy(cluster: &Cluster) {
    let policy = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1beta1
kind: MutatingAdmissionPolicy
metadata: {{name: rnt-test-loopback-apiserver}}
spec:
  failurePolicy: Fail
  reinvocationPolicy: Never
  matchConstraints:
    resourceRules:
      - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}}
    objectSelector:
      matchLabels: {{app.kubernetes.io/name: redis-node-tuner}}
  matchConditions:
    - name: agent-without-the-address
      expression: >-
        object.spec.containers[0].name == 'agent' &&
        !(has(object.spec.containers[0].env) &&
          object.spec.containers[0].env.exists(e, e.name == 'KUBERNETES_SERVICE_HOST'))
  mutations:
    - patchType: JSONPatch
      jsonPatch:
        expression: >-
          [
            JSONPatch{{op: "add", path: "/spec/containers/0/env/-",
              value: {{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}}}},
            JSONPatch{{op: "add", path: "/spec/containers/0/env/-",
              value: {{"name": "KUBERNETES_SERVICE_PORT", "value": "{API_PORT}"}}}}
          ]
---
apiVersion: admissionregistration.k8s.io/v1beta1
kind: MutatingAdmissionPolicyBinding
metadata: {{name: rnt-test-loopback-apiserver}}
spec: {{policyName: rnt-test-loopback-apiserver}}
"#
    );
    let f = cluster.work.path().join("loopback-apiserver-policy.yaml");
    std::fs::write(&f, policy).expect("policy file");
    cluster.ok(&["apply", "--server-side", "-f", &f.to_string_lossy()]);
    let probe = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "rnt-policy-probe", "namespace": "default",
                     "labels": {"app.kubernetes.io/name": "redis-node-tuner"}},
        "spec": {"containers": [{"name": "agent", "image": "x",
                                 "env": [{"name": "NODE_NAME", "value": "x"}]}]}
    });
    let pf = cluster.work.path().join("policy-probe.json");
    std::fs::write(&pf, probe.to_string()).expect("probe file");
    cluster.wait(60, "the loopback-apiserver policy in force", || {
        let out = cluster.kubectl(&[
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            &pf.to_string_lossy(),
        ]);
        (out.code == 0 && out.stdout.contains(&format!("\"value\": \"{API_PORT}\""))).then_some(())
    });
}

fn redis_version() -> String {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .expect("redis-server --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .expect("redis version")
        .to_string()
}

fn redis_image() -> String {
    format!("localhost/rnt-redis:{}", redis_version())
}

/// Redis's warnings about the three kernel settings.
fn warnings(log: &[String]) -> Vec<String> {
    log.iter()
        .filter(|l| {
            l.contains("WARNING")
                && [OVERCOMMIT_WARN, THP_WARN, BACKLOG_WARN]
                    .iter()
                    .any(|w| l.contains(w))
        })
        .cloned()
        .collect()
}

fn thp(file: &str) -> String {
    host::selected(&host::read(&Path::new(THP).join(file)))
}

fn knob(p: &str) -> String {
    host::read(Path::new(p)).trim().to_string()
}

/// An untuned host: THP always, somaxconn below Redis' backlog, overcommit heuristic.
fn untune() {
    host::write(&Path::new(THP).join("enabled"), "always");
    host::write(&Path::new(THP).join("defrag"), "always");
    host::write(Path::new(SOMAXCONN), "256");
    host::write(Path::new(OVERCOMMIT), "0");
}

fn assert_host_tuned() {
    assert_eq!(thp("enabled"), "never", "THP enabled");
    assert_eq!(thp("defrag"), "never", "THP defrag");
    assert_eq!(knob(OVERCOMMIT), "1", "vm.overcommit_memory");
    let somaxconn: u32 = knob(SOMAXCONN).parse().expect("somaxconn");
    assert!(somaxconn >= 2048, "net.core.somaxconn {somaxconn}");
}

/// What the machine looks like with no test cluster, for the tear-down check.
#[derive(Debug, PartialEq)]
struct Footprint {
    processes: Vec<String>,
    mounts: Vec<String>,
    links: Vec<String>,
    chains: BTreeSet<String>,
    cgroups: Vec<String>,
    sysctls: Vec<(String, String)>,
}

fn footprint() -> Footprint {
    let mut processes = vec![];
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(D) || cmd.contains("redis-node-tuner/node/") {
            processes.push(cmd);
        }
    }
    let mounts = host::read(Path::new("/proc/self/mountinfo"))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .filter(|m| m.starts_with(D) || m.starts_with("/run/netns/cni-"))
        .collect();
    let out = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("rntcni0") || l.contains("rntnode0"))
        .map(String::from)
        .collect();
    let mut chains = BTreeSet::new();
    for ipt in ["iptables-save", "ip6tables-save"] {
        for table in ["filter", "nat", "mangle"] {
            if let Ok(out) = Command::new(ipt).args(["-t", table]).output() {
                for l in String::from_utf8_lossy(&out.stdout).lines() {
                    // The kubelet's chains (this CNI config makes none); other engineers'
                    // containers may add and remove theirs meanwhile.
                    if let Some(c) = l.strip_prefix(":KUBE-").map(|c| format!("KUBE-{c}")) {
                        chains.insert(format!(
                            "{ipt} {table} {}",
                            c.split_whitespace().next().unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .expect("/sys/fs/cgroup")
        .flatten()
        .map(|e| e.path().join("rnt-cluster"))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    let sysctls = SYSCTLS.iter().map(|p| (p.to_string(), knob(p))).collect();
    Footprint {
        processes,
        mounts,
        links,
        chains,
        cgroups,
        sysctls,
    }
}

/// Kills every component of the cluster with SIGKILL (a crashed or killed test run): the
/// containers and their shims survive.
fn sigkill_components() {
    for c in [
        "kubelet",
        "kube-scheduler",
        "kube-controller-manager",
        "containerd",
        "apiserver",
    ] {
        let pid = std::fs::read_to_string(PathBuf::from(D).join(format!("pids/{c}.pid")))
            .unwrap_or_else(|e| panic!("pid file of {c}: {e}"));
        let st = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill");
        assert!(st.success(), "SIGKILL {c} ({})", pid.trim());
    }
}

#[test]
fn daemonset_on_a_real_node_gates_redis_and_keeps_the_host_tuned() {
    for p in ["kubectl", "podman", "containerd", "runc", "musl-gcc", "go"] {
        require(p);
    }
    let guard = HostGuard::take();
    // Whatever a previous (killed) run left, before the footprint is taken.
    down();
    let before = footprint();
    untune();
    let cluster = Cluster::up();
    // The kubelet set vm.overcommit_memory=1 at start: the node is untuned again from here.
    untune();

    // --- The untuned node, as Redis sees it (host network: the host's somaxconn).
    cluster.ok(&["create", "namespace", "redis"]);
    cluster.wait(60, "ServiceAccount redis/default created", || {
        (cluster
            .kubectl(&["get", "sa", "-n", "redis", "default"])
            .code
            == 0)
            .then_some(())
    });
    // No TCP port (nothing to collide with on the host's network); Redis still checks the
    // backlog against the host's somaxconn.
    let probe_args = [
        "--port",
        "0",
        "--unixsocket",
        "/tmp/redis.sock",
        "--save",
        "",
        "--disable-thp",
        "no",
        "--tcp-backlog",
        "511",
    ];
    cluster.redis_pod("redis", "probe-untuned", true, true, &probe_args);
    let untuned = warnings(&cluster.redis_log("redis", "probe-untuned", "redis"));
    eprintln!(
        "Redis's warnings on the untuned node:\n{}",
        untuned.join("\n")
    );
    for w in [OVERCOMMIT_WARN, THP_WARN, BACKLOG_WARN] {
        assert!(
            untuned.iter().any(|l| l.contains(w)),
            "Redis on the untuned node does not warn '{w}': {untuned:#?}"
        );
    }
    cluster.delete_pod("redis", "probe-untuned");

    // --- The example StatefulSet waits: the node is tainted and not labelled.
    let example = std::fs::read_to_string(repo().join("deploy/examples/redis-statefulset.yaml"))
        .expect("example");
    let redis_overlay = cluster.overlay(
        "redis",
        &format!(
            r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: redis
resources: [redis-statefulset.yaml]
images:
  - name: redis
    newName: localhost/rnt-redis
    newTag: "{}"
  - name: redis-node-tuner
    newName: localhost/redis-node-tuner
    newTag: real-node
patches:
  - target: {{kind: StatefulSet, name: redis}}
    patch: |-
      - op: replace
        path: /spec/replicas
        value: 1
      - op: add
        path: /spec/template/spec/initContainers/0/imagePullPolicy
        value: Never
      - op: remove
        path: /spec/volumeClaimTemplates
      - op: add
        path: /spec/template/spec/volumes
        value: [{{name: data, emptyDir: {{}}}}]
      - op: add
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --disable-thp
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: "no"
"#,
            redis_version()
        ),
        &[("redis-statefulset.yaml", &example)],
    );
    cluster.apply_k(&redis_overlay);
    cluster.wait(
        60,
        "redis-0 reported Unschedulable by the scheduler",
        || {
            let p = cluster.pod("redis", "redis-0")?;
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
                .then_some(())
        },
    );

    // --- The AppArmor component on this node without AppArmor: rejected by the kubelet.
    let crds = Out::of(
        Command::new("bash")
            .arg(repo().join("deploy/crds/fetch.sh"))
            .output()
            .expect("deploy/crds/fetch.sh"),
    );
    assert_eq!(crds.code, 0, "deploy/crds/fetch.sh: {crds:?}");
    let crd_file = cluster.work.path().join("crds.yaml");
    std::fs::write(&crd_file, &crds.stdout).expect("crds");
    cluster.ok(&["apply", "--server-side", "-f", &crd_file.to_string_lossy()]);
    cluster.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]);
    let apparmor = cluster.agent_overlay("agent-apparmor", true, &[]);
    cluster.apply_k(&apparmor);
    cluster.wait(
        90,
        "the kubelet rejecting the AppArmor-pinned agent pod ('Cannot enforce AppArmor')",
        || {
            let ev = cluster.json(&["events", "-n", NS]);
            ev["items"]
                .as_array()?
                .iter()
                .any(|e| s(&e["message"]).contains("Cannot enforce AppArmor"))
                .then_some(())
        },
    );
    assert!(
        cluster.ready_agent().is_none(),
        "an AppArmor-pinned agent became Ready on a node without AppArmor"
    );
    assert!(!cluster.node_marked_ready(), "node marked ready untuned");
    let p = cluster.pod("redis", "redis-0").expect("redis-0");
    assert!(
        p["spec"]["nodeName"].is_null(),
        "redis-0 scheduled early: {p:#}"
    );

    // --- The base (no AppArmor field) runs: agent Ready, node tuned and marked, Redis lands.
    let base = cluster.agent_overlay("agent", false, &[]);
    let applied = Instant::now();
    cluster.apply_k(&base);
    let (agent, agent_uid) =
        cluster.wait(120, "agent pod Running and Ready", || cluster.ready_agent());
    cluster.wait(
        60,
        "node labelled, untainted, RedisKernelTuned=True",
        || cluster.node_marked_ready().then_some(()),
    );
    assert_host_tuned();
    let redis_uid = cluster.wait(180, "redis-0 Running and Ready on the tuned node", || {
        let p = cluster.pod("redis", "redis-0")?;
        (p["status"]["phase"] == "Running" && pod_condition(&p, "Ready").as_deref() == Some("True"))
            .then(|| s(&p["metadata"]["uid"]))
    });
    eprintln!(
        "kubectl apply of the agent -> Redis Running and Ready on the untuned, tainted node: {:.1}s",
        applied.elapsed().as_secs_f64()
    );
    let p = cluster.pod("redis", "redis-0").expect("redis-0");
    assert_eq!(p["spec"]["nodeName"], NODE);
    let tuned = warnings(&cluster.redis_log("redis", "redis-0", "redis"));
    assert!(
        tuned.is_empty(),
        "Redis warnings on the tuned node: {tuned:#?}"
    );
    // Redis's own view, from the host (root, /proc): the pod's Redis found by its cgroup and
    // named by the kubelet's log directory, in its pod network namespace at the kernel's
    // default, its listener's real backlog, in sync.
    let view = Out::of(
        Command::new(BIN)
            .args(["check", "--pod-logs-dir", &format!("{D}/pod-logs")])
            .env("REDIS_NODE_TUNER_STATE_DIR", "/var/lib/redis-node-tuner")
            .output()
            .expect("redis-node-tuner check"),
    );
    eprintln!("check on the tuned node, redis-0 running:\n{}", view.stdout);
    let view_json = Out::of(
        Command::new(BIN)
            .args([
                "check",
                "-o",
                "json",
                "--pod-logs-dir",
                &format!("{D}/pod-logs"),
            ])
            .env("REDIS_NODE_TUNER_STATE_DIR", "/var/lib/redis-node-tuner")
            .output()
            .expect("redis-node-tuner check -o json"),
    );
    let v: Value = serde_json::from_str(&view_json.stdout).expect("check JSON");
    let redis0 = v["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["owner_label"] == "pod:redis/redis-0"))
        .cloned()
        .unwrap_or_else(|| panic!("redis-0 not among the processes: {view_json:?}"));
    assert_eq!(redis0["netns"]["kind"], "kernel_default", "{redis0:#}");
    assert_eq!(redis0["netns"]["somaxconn"], 4096, "{redis0:#}");
    assert_eq!(redis0["listen_backlog"], 511, "{redis0:#}");
    assert_eq!(redis0["in_sync"], true, "{redis0:#}");

    // The same probe as on the untuned node (host network, same arguments): no warning.
    cluster.redis_pod("redis", "probe-tuned", true, false, &probe_args);
    let tuned = warnings(&cluster.redis_log("redis", "probe-tuned", "redis"));
    assert!(
        tuned.is_empty(),
        "Redis warnings on the tuned node: {tuned:#?}"
    );
    cluster.delete_pod("redis", "probe-tuned");

    // --- Metrics on the node, at the PodMonitor's port: the node is ready.
    let (status, body) =
        http_get("10.213.0.1:9977", "/metrics").expect("GET /metrics on the node's port 9977");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines().any(|l| l == "redis_node_tuner_node_ready 1"),
        "redis_node_tuner_node_ready is not 1: {body}"
    );

    // --- The kubelet-issued projected token of the agent: its own Node's marks may be
    // written, another Node's may not (server-side dry run: admission runs, nothing changes).
    let token_dir = PathBuf::from(D)
        .join("kubelet/pods")
        .join(&agent_uid)
        .join("volumes/kubernetes.io~projected");
    let token = std::fs::read_dir(&token_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", token_dir.display()))
        .flatten()
        .map(|e| e.path().join("token"))
        .find(|p| p.is_file())
        .expect("the agent's projected token");
    let token = std::fs::read_to_string(token).expect("token");
    let agent_kc = cluster.work.path().join("agent.kubeconfig");
    std::fs::write(
        &agent_kc,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "t", "cluster": {"server": format!("https://127.0.0.1:{API_PORT}"),
                "certificate-authority": format!("{D}/apiserver/ca.crt")}}],
            "users": [{"name": "agent", "user": {"token": token.trim()}}],
            "contexts": [{"name": "agent", "context": {"cluster": "t", "user": "agent"}}],
            "current-context": "agent",
        })
        .to_string(),
    )
    .expect("agent kubeconfig");
    let other = cluster.work.path().join("other-node.json");
    std::fs::write(
        &other,
        serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "rnt-other"}})
        .to_string(),
    )
    .expect("node file");
    cluster.ok(&["create", "-f", &other.to_string_lossy()]);
    let mark = format!(r#"{{"metadata":{{"labels":{{"{LABEL}":"true"}}}}}}"#);
    let as_agent = |node: &str| {
        Out::of(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&agent_kc)
                .args([
                    "patch",
                    "node",
                    node,
                    "--type=merge",
                    "--dry-run=server",
                    "-p",
                ])
                .arg(&mark)
                .output()
                .expect("kubectl as the agent"),
        )
    };
    let own = as_agent(NODE);
    assert_eq!(own.code, 0, "the agent's token on its own Node: {own:?}");
    let foreign = as_agent("rnt-other");
    assert_ne!(
        foreign.code, 0,
        "the agent's token wrote another Node: {foreign:?}"
    );
    assert!(
        foreign.stderr.contains("redis-node-tuner-own-node-"),
        "not denied by the own-node admission policy: {foreign:?}"
    );
    cluster.ok(&["delete", "node", "rnt-other"]);

    // --- Drift: a foreign write is detected and corrected; Redis is not disturbed.
    let seen = cluster.events();
    host::write(&Path::new(THP).join("enabled"), "always");
    cluster.wait(
        60,
        "new DriftDetected and DriftCorrected events on the node",
        || {
            let new: BTreeSet<String> = cluster
                .events()
                .difference(&seen)
                .map(|(r, _)| r.clone())
                .collect();
            (new.contains("DriftDetected") && new.contains("DriftCorrected")).then_some(())
        },
    );
    cluster.wait(30, "THP enabled back to never", || {
        (thp("enabled") == "never").then_some(())
    });
    // The base DaemonSet holds no capability: the inotify watch on its hostPath mount of the
    // host's sysfs found the write and woke the pass, not the 1 s poll.
    let found_by_inotify = |log: &str| {
        log.lines().any(|l| {
            l.contains("\"message\":\"drift detected\"")
                && l.contains("\"knob\":\"thp.enabled\"")
                && l.contains("\"seen_by\":\"inotify\"")
        })
    };
    let found = wait_for(Duration::from_secs(10), || {
        found_by_inotify(&cluster.container_log(NS, &agent, "agent"))
    });
    assert!(
        found,
        "the drift was not found by the inotify watch:\n{}",
        cluster.container_log(NS, &agent, "agent")
    );
    cluster.wait(30, "node marked ready after the drift", || {
        cluster.node_marked_ready().then_some(())
    });
    let p = cluster
        .pod("redis", "redis-0")
        .expect("redis-0 after drift");
    assert_eq!(s(&p["metadata"]["uid"]), redis_uid, "redis-0 was replaced");
    assert_eq!(p["status"]["phase"], "Running");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(
        cluster.ready_agent(),
        Some((agent.clone(), agent_uid.clone())),
        "the agent pod changed"
    );

    // --- Rolling update: a changed profile ConfigMap rolls the agent; watched throughout, the
    // label never leaves the node and the Redis pod is never touched.
    let watch = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl --watch")
    };
    let mut label_watch = watch(&[
        "get",
        "node",
        NODE,
        "--watch",
        "-o",
        r"jsonpath={.metadata.labels.redis-node-tuner\.io/ready}{'\n'}",
    ]);
    let mut redis_watch = watch(&[
        "get",
        "pod",
        "-n",
        "redis",
        "redis-0",
        "--watch",
        "-o",
        r"jsonpath={.metadata.uid} {.status.phase}{'\n'}",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let config = std::fs::read_to_string(repo().join("deploy/base/config.yaml"))
        .expect("base config")
        .replace("interval: 1s", "interval: 2s");
    assert!(config.contains("interval: 2s"), "{config}");
    // The rolled agent also has deploy/components/redis-view (hostPID, CAP_SYS_PTRACE and
    // CAP_SYS_ADMIN, the kubelet's pod logs): it reports redis-0's own view.
    let rolled = cluster.agent_overlay_with("agent-rolled", false, &[], Some(&config), true);
    cluster.apply_k(&rolled);
    let (rolled_name, rolled_uid) =
        cluster.wait(120, "the rolled agent pod Running and Ready", || {
            cluster.ready_agent().filter(|(_, uid)| *uid != agent_uid)
        });
    cluster.wait(60, "node marked ready by the rolled agent", || {
        cluster.node_marked_ready().then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = label_watch.kill();
    let _ = redis_watch.kill();
    let label_out = label_watch.wait_with_output().expect("watch");
    let redis_out = redis_watch.wait_with_output().expect("watch");
    let labels = String::from_utf8_lossy(&label_out.stdout).into_owned();
    let redis = String::from_utf8_lossy(&redis_out.stdout).into_owned();
    let watch_errors = format!(
        "node watch stderr: {}; pod watch stderr: {}",
        String::from_utf8_lossy(&label_out.stderr),
        String::from_utf8_lossy(&redis_out.stderr)
    );
    assert!(
        labels.lines().count() >= 2 && labels.lines().all(|l| l == "true"),
        "the label during the roll: {labels:?}; {watch_errors}; the rolled agent's log:\n{}",
        cluster.container_log(NS, &rolled_name, "agent")
    );
    assert!(
        !redis.is_empty()
            && redis
                .lines()
                .all(|l| l.trim() == format!("{redis_uid} Running")),
        "redis-0 during the roll: {redis:?}; {watch_errors}"
    );
    assert_ne!(rolled_uid, agent_uid);
    let per_process = |body: &str, check: &str| {
        common::sample(
            body,
            &format!(
                "redis_node_tuner_redis_process_in_sync{{owner=\"pod:redis/redis-0\",check=\"{check}\"}}"
            ),
        )
    };
    let body = cluster.wait(
        60,
        "the redis-view agent reporting redis-0 in /metrics",
        || {
            let (status, body) = http_get("10.213.0.1:9977", "/metrics").ok()?;
            (status == 200 && body.contains("owner=\"pod:redis/redis-0\"")).then_some(body)
        },
    );
    for check in ["overcommit", "thp", "somaxconn", "backlog"] {
        assert_eq!(per_process(&body, check), 1.0, "{check}: {body}");
    }
    assert_eq!(
        common::sample(
            &body,
            "redis_node_tuner_redis_process_listen_backlog{owner=\"pod:redis/redis-0\"}"
        ),
        511.0,
        "{body}"
    );

    // --- Power cycles (issue 21): the bound Redis pod is restarted by the kubelet whatever the
    // taints say, racing the agent. With the example's `wait` init container Redis never starts
    // on the untuned kernel; without it, what happens is measured and printed.
    const CYCLES: usize = 5;
    let cycles_start = Instant::now();
    let mut table = String::from("cycle  init container  waited  redis ready  Redis warnings\n");
    let mut row = |i: usize, c: &Cycle, with: bool| {
        table.push_str(&format!(
            "{i:<5}  {:<14}  {:<6}  {:>9.1}s  {}\n",
            if with { "yes" } else { "no" },
            if !c.init_ran {
                "-"
            } else if c.waited {
                "yes"
            } else {
                "no"
            },
            c.redis_ready.as_secs_f64(),
            if c.warnings.is_empty() {
                "none".to_string()
            } else {
                c.warnings
                    .iter()
                    .map(|w| {
                        [OVERCOMMIT_WARN, THP_WARN, BACKLOG_WARN]
                            .into_iter()
                            .find(|k| w.contains(k))
                            .unwrap_or(w)
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        ));
    };
    for i in 1..=CYCLES {
        let c = cluster.power_cycle("redis", "redis-0");
        row(i, &c, true);
        if c.waited {
            eprintln!("cycle {i}: the init container's log:\n{}", c.init_log);
        }
        assert!(
            c.init_ran,
            "cycle {i}: the init container did not run again: {c:?}"
        );
        assert!(
            c.warnings.is_empty(),
            "cycle {i}: Redis started on an untuned kernel despite the init container: {c:?}"
        );
    }
    // Without the init container: measured, not asserted (Redis may win the race or not), so
    // opt-in (RNT_REAL_NODE_UNGATED_CYCLES=1): it costs about a minute of every run.
    let ungated = std::env::var_os("RNT_REAL_NODE_UNGATED_CYCLES").is_some_and(|v| v == "1");
    let mut raced = 0;
    if ungated {
        cluster.ok(&[
            "patch",
            "statefulset",
            "-n",
            "redis",
            "redis",
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/spec/template/spec/initContainers"}]"#,
        ]);
        cluster.wait(
            180,
            "redis-0 replaced without the init container, Ready",
            || {
                let p = cluster.pod("redis", "redis-0")?;
                (p["spec"]["initContainers"].is_null()
                    && p["metadata"]["deletionTimestamp"].is_null()
                    && p["status"]["phase"] == "Running"
                    && pod_condition(&p, "Ready").as_deref() == Some("True"))
                .then_some(())
            },
        );
        for i in 1..=CYCLES {
            let c = cluster.power_cycle("redis", "redis-0");
            row(CYCLES + i, &c, false);
            raced += usize::from(!c.warnings.is_empty());
        }
    }
    eprintln!(
        "power cycles (Redis with --disable-thp no; the kernel untuned at each boot):\n{table}{} \
         ({:.0}s for all cycles)",
        if ungated {
            format!(
                "without the init container Redis started on the untuned kernel in {raced} of {CYCLES}"
            )
        } else {
            "without the init container: not run (RNT_REAL_NODE_UNGATED_CYCLES=1 runs it)"
                .to_string()
        },
        cycles_start.elapsed().as_secs_f64()
    );

    // --- NoExecute: the node carries the startup taint with NoExecute and is untuned.
    cluster.ok(&[
        "delete",
        "statefulset",
        "-n",
        "redis",
        "redis",
        "--wait=true",
    ]);
    cluster.delete_daemonset();
    cluster.wait(60, "agent pods gone", || {
        cluster
            .pods(NS, "app.kubernetes.io/name=redis-node-tuner")
            .is_empty()
            .then_some(())
    });
    cluster.redis_pod("redis", "intolerant", false, false, &["--save", ""]);
    cluster.wait(60, "pod redis/intolerant Running", || {
        (cluster.pod("redis", "intolerant")?["status"]["phase"] == "Running").then_some(())
    });
    untune();
    cluster.ok(&[
        "taint",
        "node",
        NODE,
        &format!("{TAINT}=:NoExecute"),
        "--overwrite",
    ]);
    cluster.wait(
        90,
        "the taint manager evicting redis/intolerant (no toleration of the NoExecute taint)",
        || {
            let p = cluster.pod("redis", "intolerant");
            (p.is_none() || p.is_some_and(|p| !p["metadata"]["deletionTimestamp"].is_null()))
                .then_some(())
        },
    );
    let noexec = cluster.agent_overlay("agent-noexecute", false, &["--taint-effect", "NoExecute"]);
    cluster.apply_k(&noexec);
    let (_, noexec_uid) = cluster.wait(120, "agent (NoExecute) Running and Ready", || {
        cluster.ready_agent()
    });
    cluster.wait(
        60,
        "node tuned and untainted by the NoExecute agent",
        || cluster.node_marked_ready().then_some(()),
    );
    assert_host_tuned();
    let (_, uid) = cluster.ready_agent().expect("agent still Ready");
    assert_eq!(uid, noexec_uid, "the agent was evicted or replaced");
    // Tuned: a pod without the toleration runs and stays.
    cluster.redis_pod("redis", "intolerant-2", false, false, &["--save", ""]);
    cluster.wait(
        60,
        "pod redis/intolerant-2 Running on the tuned node",
        || (cluster.pod("redis", "intolerant-2")?["status"]["phase"] == "Running").then_some(()),
    );

    // --- Uninstall as the README says: DaemonSet deleted, `cleanup` with the admin's own
    // credentials, the kustomization deleted, `restore` on the node.
    cluster.uninstall_kustomization(&noexec);
    let n = cluster.node();
    assert!(
        n["metadata"]["labels"][LABEL].is_null(),
        "label left: {n:#}"
    );
    assert!(
        !taint_keys(&n).contains(&TAINT.to_string()),
        "taint left: {n:#}"
    );
    assert!(node_condition(&n, COND).is_none(), "condition left: {n:#}");
    let restore = restore_node();
    assert_eq!(restore.code, 0, "restore: {restore:?}");
    // The originals the agent journalled on this node: the untuned values.
    assert_eq!(thp("enabled"), "always", "THP enabled restored");
    assert_eq!(thp("defrag"), "always", "THP defrag restored");
    assert_eq!(knob(SOMAXCONN), "256", "somaxconn restored");
    assert_eq!(knob(OVERCOMMIT), "0", "overcommit restored");

    // --- The README's Kubernetes quickstart, run as written (issue 22): the only changes are
    // the documented substitutions (NODE, IMAGE; the API server's loopback address added to the
    // agent pod by an admission policy of the test, as there is no kube-proxy). The node as a
    // new one of the pool: no pool label, no marks, untuned.
    cluster.install_gone("the kustomize install's");
    cluster.ok(&["label", "node", NODE, "dedicated-"]);
    loopback_apiserver_policy(&cluster);
    let example = std::fs::read_to_string(repo().join("deploy/examples/redis-statefulset.yaml"))
        .expect("example");
    let redis_ref = example
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .find(|i| i.starts_with("redis:"))
        .expect("the example's Redis image")
        .to_string();
    ctr(&[
        "images",
        "tag",
        &format!("localhost/rnt-redis:{}", redis_version()),
        &format!("docker.io/library/{redis_ref}"),
    ]);
    let replicas = 3;
    for i in 0..replicas {
        let dir = PathBuf::from(D).join(format!("pv/quickstart-{i}"));
        std::fs::create_dir_all(&dir).expect("pv dir");
        std::os::unix::fs::chown(&dir, Some(999), Some(999)).expect("chown pv dir");
        let pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("rnt-quickstart-{i}")},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "hostPath": {"path": dir, "type": "Directory"}}
        });
        let f = cluster.work.path().join(format!("pv-{i}.json"));
        std::fs::write(&f, pv.to_string()).expect("pv file");
        cluster.ok(&["apply", "--server-side", "-f", &f.to_string_lossy()]);
    }
    let checkout = cluster.work.path().join("checkout");
    std::fs::create_dir_all(&checkout).expect("checkout dir");
    let copied = Command::new("cp")
        .args(["-a", &repo().join("deploy").to_string_lossy()])
        .arg(&checkout)
        .status()
        .expect("cp deploy");
    assert!(copied.success(), "cp -a deploy");
    let (vars, block) = readme_quickstart("## Kubernetes quickstart");
    let started = Instant::now();
    let run = cluster.run_block(&checkout, &format!("{vars}{block}"));
    eprintln!(
        "README Kubernetes quickstart ({:.1}s):\n{}",
        started.elapsed().as_secs_f64(),
        run.stdout
    );
    assert_eq!(run.code, 0, "README Kubernetes quickstart: {run:?}");
    assert!(cluster.node_marked_ready(), "node not marked ready");
    assert_host_tuned();
    for i in 0..replicas {
        let pod = format!("redis-{i}");
        let p = cluster.pod("default", &pod).expect("quickstart Redis pod");
        assert_eq!(p["spec"]["nodeName"], NODE, "{p:#}");
        assert_eq!(pod_condition(&p, "Ready").as_deref(), Some("True"), "{p:#}");
        let w = warnings(&cluster.redis_log("default", &pod, "redis"));
        assert!(w.is_empty(), "Redis warnings in {pod}: {w:#?}");
    }
    // Taken down as the README's uninstall says (the Redis workload first).
    cluster.ok(&["delete", "statefulset", "redis", "--wait=true"]);
    cluster.wait(120, "the quickstart's Redis pods gone", || {
        cluster
            .pods("default", "app.kubernetes.io/name=redis")
            .is_empty()
            .then_some(())
    });
    cluster.ok(&["delete", "service", "redis"]);
    cluster.ok(&["delete", "pvc", "-l", "app.kubernetes.io/name=redis"]);
    for i in 0..replicas {
        cluster.ok(&[
            "delete",
            "pv",
            &format!("rnt-quickstart-{i}"),
            "--wait=false",
        ]);
    }
    cluster.uninstall_kustomization(&checkout.join("my-redis-node-tuner"));
    let restore = restore_node();
    assert_eq!(restore.code, 0, "restore after the quickstart: {restore:?}");
    assert_eq!(
        knob(OVERCOMMIT),
        "0",
        "overcommit restored after the quickstart"
    );

    // --- The Helm chart on the same node (README "Helm quickstart", run as written with the
    // same substitutions), once the kustomize install is gone: the node untuned and unmarked,
    // `helm install` -> agent Ready, node tuned and marked; `helm uninstall`, `cleanup`,
    // `restore` -> the node as before.
    cluster.install_gone("the quickstart install's");
    let kubeconfig = [("KUBECONFIG", cluster.kubeconfig.as_path())];
    let installed = Instant::now();
    let (_, helm_block) = readme_quickstart("## Helm quickstart");
    let install = cluster.run_block(repo(), &format!("{vars}{helm_block}"));
    assert_eq!(install.code, 0, "README Helm quickstart: {install:?}");
    eprintln!("README Helm quickstart:\n{}", install.stdout);
    // NOTES.txt hands out the `wait` init container with this release's image.
    assert!(
        install.stdout.contains("name: wait-for-tuned-kernel")
            && install
                .stdout
                .contains("image: localhost/redis-node-tuner:real-node"),
        "helm install's notes: {install:?}"
    );
    let (helm_agent, _) = cluster.wait(120, "the Helm-installed agent Running and Ready", || {
        cluster.ready_agent()
    });
    cluster.wait(
        60,
        "node labelled, untainted, RedisKernelTuned=True by the Helm-installed agent",
        || cluster.node_marked_ready().then_some(()),
    );
    assert_host_tuned();
    eprintln!(
        "helm install -> agent Ready and node marked: {:.1}s",
        installed.elapsed().as_secs_f64()
    );
    let pod = cluster
        .pod(NS, &helm_agent)
        .expect("the Helm-installed agent pod");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/component"], "agent",
        "{pod:#}"
    );
    let ds = cluster.json(&["daemonset", "-n", NS, "redis-node-tuner"]);
    assert_eq!(
        ds["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
        "{ds:#}"
    );
    let uninstall = common::helm::helm_env(
        &["uninstall", "redis-node-tuner", "--namespace", NS, "--wait"],
        &kubeconfig,
    );
    assert_eq!(uninstall.code, 0, "helm uninstall: {uninstall:?}");
    cluster.cleanup_once_agents_gone();
    let n = cluster.node();
    assert!(
        n["metadata"]["labels"][LABEL].is_null()
            && !taint_keys(&n).contains(&TAINT.to_string())
            && node_condition(&n, COND).is_none(),
        "marks left after helm uninstall and cleanup: {n:#}"
    );
    cluster.ok(&["delete", "namespace", NS, "--wait=false"]);
    let restore = restore_node();
    assert_eq!(restore.code, 0, "restore after helm: {restore:?}");
    assert_eq!(thp("enabled"), "always", "THP enabled restored after helm");
    assert_eq!(knob(SOMAXCONN), "256", "somaxconn restored after helm");
    assert_eq!(knob(OVERCOMMIT), "0", "overcommit restored after helm");

    // --- Tear-down after a SIGKILLed run: nothing of the test remains.
    sigkill_components();
    let start = Instant::now();
    let out = cluster.finish();
    assert_eq!(out.code, 0, "down.sh: {out:?}");
    eprintln!(
        "down after SIGKILL in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    let after = footprint();
    drop(guard);
    assert_eq!(after, before, "the machine differs after tear-down");
}
