//! A real upstream kube-apiserver (with embedded etcd) for the tests: built once by
//! `tests/apiserver/build.sh`, one instance per test, stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Builds (or finds in the cache) the test apiserver binary.
pub fn binary() -> &'static Path {
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apiserver/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/apiserver/build.sh");
        assert!(out.status.success(), "building the test apiserver failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build.sh printed the binary path")
                .trim(),
        )
    })
}

pub struct ApiServer {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub url: String,
    port: u16,
    /// Extra kube-apiserver flags (after `--`).
    extra: Vec<String>,
}

impl ApiServer {
    pub fn start() -> ApiServer {
        ApiServer::start_with(&[])
    }

    /// As [`ApiServer::start`], with extra kube-apiserver flags (feature gates, runtime config).
    pub fn start_with(extra: &[&str]) -> ApiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = ApiServer {
            dir,
            child: None,
            url: String::new(),
            port: 0,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// Starts the apiserver on `self.dir` and waits for READY. The wrapper picks its free
    /// ports by binding port 0 and releasing it, so another process (the parallel tests'
    /// apiservers and their clients' outgoing connections) can take one before etcd or the
    /// apiserver binds it: such an early exit ("address already in use") is retried.
    fn spawn(&mut self) {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            match self.try_spawn() {
                Ok(url) => {
                    self.port = url
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("port in URL");
                    self.url = url;
                    return;
                }
                Err(log) if attempt < ATTEMPTS && log.contains("address already in use") => {
                    eprintln!("test apiserver: a port was taken before it bound it; again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => {
                    let lines: Vec<&str> = log.lines().collect();
                    panic!(
                        "test apiserver not ready (attempt {attempt}); the end of its log:\n{}",
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    )
                }
            }
        }
    }

    /// One start: the READY URL, or the log of this start when it exited or hung.
    fn try_spawn(&mut self) -> Result<String, String> {
        let _ = std::fs::remove_file(self.dir.path().join("ready"));
        let log_path = self.dir.path().join("apiserver.log");
        // The log is appended across restarts of the same DIR; this start's part is reported.
        let from = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut child = Command::new(binary())
            .arg("-dir")
            .arg(self.dir.path())
            .arg("-port")
            .arg(self.port.to_string())
            .args(if self.extra.is_empty() {
                vec![]
            } else {
                std::iter::once("--".to_string())
                    .chain(self.extra.iter().cloned())
                    .collect()
            })
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn test apiserver");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("READY ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(url) => {
                self.child = Some(child);
                Ok(url)
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let all = std::fs::read(&log_path).unwrap_or_default();
                Err(String::from_utf8_lossy(all.get(from..).unwrap_or_default()).into_owned())
            }
        }
    }

    /// SIGTERM, and wait for the exit: an API outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The apiserver's process id (to pause it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("apiserver running")
    }

    /// Starts again on the same directory and port (data kept).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> super::Out {
        self.kubectl_as(&self.admin_kubeconfig(), args)
    }

    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> super::Out {
        super::Out::of(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .output()
                .expect("run kubectl"),
        )
    }

    /// kubectl that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert_eq!(out.code, 0, "kubectl {args:?}: {out:?}");
        out.stdout
    }

    /// kubectl apply/create of a JSON object from stdin.
    pub fn apply_json(&self, verb: &[&str], obj: &Value) -> String {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(verb)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(obj.to_string().as_bytes())
            .expect("write");
        let out = super::Out::of(child.wait_with_output().expect("kubectl"));
        assert_eq!(out.code, 0, "kubectl {verb:?}: {out:?}");
        out.stdout
    }

    /// The Node's `metadata.managedFields` entries.
    pub fn managed_fields(&self, name: &str) -> Vec<Value> {
        let full: Value = serde_json::from_str(&self.ok(&[
            "get",
            "node",
            name,
            "-o",
            "json",
            "--show-managed-fields",
        ]))
        .expect("json");
        full["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn node(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", "node", name, "-o", "json"])).expect("node json")
    }

    /// Creates a Node the way a kubelet registers one (Ready condition, optional taints).
    pub fn create_node(&self, name: &str, labels: Value, taints: Value) {
        self.apply_json(
            &["create"],
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": taints},
            }),
        );
        let now = "2026-01-01T00:00:00Z";
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now
        }]}});
        self.ok(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=strategic",
            "-p",
            &patch.to_string(),
        ]);
    }

    /// Installs the agent's RBAC and admission policy from deploy/base/access, creates a Pod
    /// object for `node` and returns a kubeconfig carrying a token bound to that Pod for the
    /// agent's ServiceAccount.
    pub fn agent_kubeconfig(&self, node: &str, host_network: bool) -> PathBuf {
        // Tolerates its own taint for every effect, as deploy/base does.
        let tolerations =
            serde_json::json!([{"key": "redis-node-tuner.io/not-ready", "operator": "Exists"}]);
        self.agent_kubeconfig_with(node, host_network, tolerations)
    }

    /// [`ApiServer::agent_kubeconfig`] with the agent Pod's tolerations given.
    pub fn agent_kubeconfig_with(
        &self,
        node: &str,
        host_network: bool,
        tolerations: Value,
    ) -> PathBuf {
        let _ = self.kubectl(&["create", "namespace", "redis-node-tuner"]);
        let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/access");
        self.ok(&["apply", "--server-side", "-f", &rbac.to_string_lossy()]);
        let pod = format!("redis-node-tuner-{node}");
        self.apply_json(
            &["apply", "--server-side"],
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "redis-node-tuner"},
                "spec": {
                    "nodeName": node, "serviceAccountName": "redis-node-tuner",
                    "hostNetwork": host_network,
                    "tolerations": tolerations,
                    "containers": [{"name": "agent", "image": "redis-node-tuner:test"}],
                },
            }),
        );
        let uid = self.ok(&[
            "get",
            "pod",
            "-n",
            "redis-node-tuner",
            &pod,
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        let token = self.ok(&[
            "create",
            "token",
            "redis-node-tuner",
            "-n",
            "redis-node-tuner",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod,
            "--bound-object-uid",
            uid.trim(),
            "--duration",
            "1h",
        ]);
        let ca = std::fs::read(self.dir.path().join("ca.crt")).expect("ca.crt");
        let kc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url, "certificate-authority-data": base64(&ca)}}],
            "users": [{"name": "agent", "user": {"token": token.trim()}}],
            "contexts": [{"name": "agent", "context": {"cluster": "test", "user": "agent"}}],
            "current-context": "agent",
        });
        let p = self.dir.path().join(format!("agent-{node}.kubeconfig"));
        std::fs::write(&p, kc.to_string()).expect("write kubeconfig");
        p
    }

    /// A kubeconfig with a token of `namespace/service_account`, bound to the existing Pod
    /// `namespace/pod` when given (the kubelet's projected token: node-name claim), unbound
    /// otherwise (no node claim).
    pub fn token_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
    ) -> PathBuf {
        let mut args = vec![
            "create".to_string(),
            "token".into(),
            service_account.into(),
            "-n".into(),
            namespace.into(),
            "--duration".into(),
            "1h".into(),
        ];
        if let Some(pod) = pod {
            let uid = self.ok(&[
                "get",
                "pod",
                "-n",
                namespace,
                pod,
                "-o",
                "jsonpath={.metadata.uid}",
            ]);
            args.extend([
                "--bound-object-kind".into(),
                "Pod".into(),
                "--bound-object-name".into(),
                pod.into(),
                "--bound-object-uid".into(),
                uid.trim().into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let token = self.ok(&args);
        let ca = std::fs::read(self.dir.path().join("ca.crt")).expect("ca.crt");
        let kc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url, "certificate-authority-data": base64(&ca)}}],
            "users": [{"name": "sa", "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
            "current-context": "sa",
        });
        let p = self.dir.path().join(format!(
            "{namespace}-{service_account}-{}.kubeconfig",
            pod.unwrap_or("unbound")
        ));
        std::fs::write(&p, kc.to_string()).expect("write kubeconfig");
        p
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The node's labels, taint keys and our condition, for assertions.
pub fn label(node: &Value, key: &str) -> Option<String> {
    node["metadata"]["labels"][key].as_str().map(String::from)
}

pub fn taint_keys(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["key"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn condition(node: &Value, kind: &str) -> Option<Value> {
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
}

/// The agent's marks on a Node.
pub const LABEL: &str = "redis-node-tuner.io/ready";
pub const TAINT: &str = "redis-node-tuner.io/not-ready";
pub const COND: &str = "RedisKernelTuned";
/// The agent's annotations (read by `status`).
pub const VERSION_ANNOTATION: &str = "redis-node-tuner.io/agent-version";
pub const LAST_WRITER_ANNOTATION: &str = "redis-node-tuner.io/last-writer";

/// The startup taint a Node is registered with.
pub fn startup_taint() -> Value {
    serde_json::json!([{"key": TAINT, "effect": "NoSchedule"}])
}

/// Label set, taint gone, condition True.
pub fn is_ready_marked(n: &Value) -> bool {
    label(n, LABEL).as_deref() == Some("true")
        && !taint_keys(n).contains(&TAINT.to_string())
        && condition(n, COND).is_some_and(|c| c["status"] == "True")
}

/// No label, taint held, condition False.
pub fn is_unready_marked(n: &Value) -> bool {
    label(n, LABEL).is_none()
        && taint_keys(n).contains(&TAINT.to_string())
        && condition(n, COND).is_some_and(|c| c["status"] == "False")
}
