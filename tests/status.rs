//! `redis-node-tuner status` (and `kubectl redis-node-tuner`) against a real kube-apiserver
//! (tests/apiserver): a fleet of a few hundred Nodes with every kind of marks, made through the
//! API, listed by the real binary (table, JSON, selector, `--condition-type`, the kubectl
//! plugin); and a real agent's node, with its version and heartbeat.

mod common;
use common::apiserver::{
    ApiServer, COND, LAST_WRITER_ANNOTATION, TAINT, VERSION_ANNOTATION, is_ready_marked,
    startup_taint,
};
use common::*;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const QUALIFIED: &str = "redis-node-tuner.io/KernelTuned";

/// The kinds of node in the fleet, by index modulo 10.
fn kind(i: usize) -> &'static str {
    match i % 10 {
        0..=4 => "ready",
        5 => "failed",
        6 => "stale",
        7 => "taint-only",
        8 => "unmarked",
        _ => "contested",
    }
}

fn ago(now: Timestamp, secs: i64) -> String {
    (now - SignedDuration::from_secs(secs)).to_string()
}

/// The Node object (metadata and spec) and its status patch (conditions) of a fleet member.
fn fleet_node(name: &str, kind: &str, pool: &str, now: Timestamp) -> (Value, Value) {
    let mut labels = json!({"pool": pool, "kind": kind});
    let mut annotations = json!({});
    let mut taints = json!([]);
    let cond = |status: &str, reason: &str, message: &str, age: i64| {
        json!({"type": COND, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": ago(now, age), "lastTransitionTime": ago(now, 86_400)})
    };
    let ours = match kind {
        "ready" | "stale" | "contested" => {
            labels[LABEL] = json!("true");
            annotations[VERSION_ANNOTATION] = json!("0.1.0");
            Some(match kind {
                "ready" => cond(
                    "True",
                    "AllSettingsInSync",
                    "every enforce-mode kernel setting is in sync",
                    30,
                ),
                "stale" => cond(
                    "True",
                    "AllSettingsInSync",
                    "every enforce-mode kernel setting is in sync",
                    3600,
                ),
                _ => {
                    annotations[LAST_WRITER_ANNOTATION] = json!(
                        json!({"knob": "thp.enabled", "action": "corrected", "comm": "tuned",
                            "pid": 812, "parent": "systemd", "uid": 0,
                            "cgroup": "/system.slice/tuned.service", "at": ago(now, 120)})
                        .to_string()
                    );
                    cond(
                        "True",
                        "Contested",
                        "in sync, but rewritten by something else on every pass and corrected: thp.enabled",
                        30,
                    )
                }
            })
        }
        "failed" => {
            taints = startup_taint();
            annotations[VERSION_ANNOTATION] = json!("0.0.9");
            Some(cond(
                "False",
                "CorrectionFailed",
                "not in sync: vm.overcommit_memory=0 (want 1), thp.enabled=always (want never)",
                30,
            ))
        }
        "taint-only" => {
            taints = startup_taint();
            None
        }
        _ => None,
    };
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"taints": taints}});
    let kubelet = json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": ago(now, 5), "lastTransitionTime": ago(now, 86_400)});
    let conditions: Vec<Value> = std::iter::once(kubelet).chain(ours).collect();
    (node, json!({"status": {"conditions": conditions}}))
}

const LABEL: &str = common::apiserver::LABEL;

/// Creates the Nodes through the API, 16 requests at a time.
fn create_nodes(api: &ApiServer, nodes: Vec<(String, Value, Value)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client =
            redis_node_tuner::k8s::client(Some(&api.admin_kubeconfig()), Duration::from_secs(30))
                .await
                .expect("client");
        let api: Api<Node> = Api::all(client);
        let results: Vec<()> = stream::iter(nodes)
            .map(|(name, node, status)| {
                let api = api.clone();
                async move {
                    let n: Node = serde_json::from_value(node).expect("node");
                    api.create(&PostParams::default(), &n)
                        .await
                        .unwrap_or_else(|e| panic!("create {name}: {e}"));
                    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                        .await
                        .unwrap_or_else(|e| panic!("status of {name}: {e}"));
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(!results.is_empty());
    });
}

fn status(kubeconfig: &Path, args: &[&str]) -> Out {
    Out::of(
        Command::new(BIN)
            .env_clear()
            .arg("status")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .expect("run status"),
    )
}

fn json_of(o: &Out) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("JSON ({e}): {o:?}"))
}

fn names_in_state(doc: &Value, state: &str) -> Vec<String> {
    doc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["state"] == state)
        .filter_map(|n| n["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_fleet_of_300_nodes_is_one_view_problems_first_in_a_table_json_and_as_a_kubectl_plugin() {
    let api = ApiServer::start();
    let now = Timestamp::from_second(Timestamp::now().as_second()).expect("now");
    let mut nodes: Vec<(String, Value, Value)> = (0..300)
        .map(|i| {
            let name = format!("redis-{i:03}");
            let (node, status) = fleet_node(&name, kind(i), "redis", now);
            (name, node, status)
        })
        .collect();
    // Another pool the agent does not run on, and one node reporting the qualified type.
    for i in 0..10 {
        let name = format!("web-{i:02}");
        let (node, status) = fleet_node(&name, "unmarked", "web", now);
        nodes.push((name, node, status));
    }
    let (node, mut status_patch) = fleet_node("q-0", "ready", "qualified", now);
    status_patch["status"]["conditions"][1]["type"] = json!(QUALIFIED);
    nodes.push(("q-0".into(), node, status_patch));
    create_nodes(&api, nodes);
    let kc = api.admin_kubeconfig();

    // The default view: every node with a mark (the unmarked ones left out), in pages of 100.
    let table = status(&kc, &["--chunk-size", "100"]);
    assert_eq!(table.code, 10, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NODE",
            "READY",
            "REASON",
            "DRIFTED",
            "CONTESTED",
            "LAST-WRITER",
            "VERSION",
            "HEARTBEAT"
        ]
    );
    // 271 rows (30 of each kind but the ready ones, 150 of those, and q-0 whose condition is
    // of another type: a label without the condition), a blank line, the summary.
    assert_eq!(lines.len(), 1 + 271 + 2, "{}", table.stdout);
    assert_eq!(
        lines.last().copied(),
        Some("271 nodes: 180 ready, 30 not ready, 30 stale, 31 no agent")
    );
    let rows: Vec<(&str, &str)> = lines[1..272]
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap_or(""), w.next().unwrap_or(""))
        })
        .collect();
    let states: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let runs: Vec<(&str, usize)> = states
        .chunk_by(|a, b| a == b)
        .map(|c| (c[0], c.len()))
        .collect();
    assert_eq!(
        runs,
        [("no", 30), ("stale", 30), ("no-agent", 31), ("yes", 180)],
        "problems first"
    );
    // By name within a state; ready nodes with news (contested) before the quiet ones.
    assert_eq!(rows[0].0, "redis-005");
    assert_eq!(rows[29].0, "redis-295");
    assert_eq!(rows[91].0, "redis-009", "the first contested node");
    assert_eq!(rows[121].0, "redis-000", "the first quiet ready node");
    let failed = lines[1];
    for cell in [
        "CorrectionFailed",
        "vm.overcommit_memory=0,thp.enabled=always",
        "0.0.9",
    ] {
        assert!(failed.contains(cell), "{cell}: {failed}");
    }
    let contested = lines[92];
    for cell in ["Contested", "thp.enabled", "tuned thp.enabled 2m", "0.1.0"] {
        assert!(contested.contains(cell), "{cell}: {contested}");
    }
    let taint_only = lines
        .iter()
        .find(|l| l.starts_with("redis-007"))
        .expect("redis-007");
    assert!(taint_only.contains("TaintWithoutCondition"), "{taint_only}");

    // JSON: the same rows in the same order, with the details.
    let out = status(&kc, &["-o", "json"]);
    assert_eq!(out.code, 10, "{out:?}");
    let doc = json_of(&out);
    assert_eq!(
        doc["summary"],
        json!({"nodes": 271, "ready": 180, "not_ready": 30, "stale": 30, "unknown": 0,
            "no_agent": 31, "unmarked": 0})
    );
    assert_eq!(doc["condition_type"], COND);
    assert_eq!(doc["stale_after_seconds"], 600);
    let json_order: Vec<&str> = doc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    let table_order: Vec<&str> = rows.iter().map(|r| r.0).collect();
    assert_eq!(json_order, table_order);
    let first = &doc["nodes"][0];
    assert_eq!(first["state"], "not_ready");
    assert_eq!(first["ready"], false);
    assert_eq!(first["taint"], "NoSchedule");
    assert_eq!(first["label"], false);
    assert_eq!(
        first["drifted"],
        json!([{"name": "vm.overcommit_memory", "actual": "0", "want": "1"},
               {"name": "thp.enabled", "actual": "always", "want": "never"}])
    );
    assert_eq!(first["condition"]["reason"], "CorrectionFailed");
    assert_eq!(first["agent_version"], "0.0.9");
    let age = first["heartbeat_age_seconds"].as_i64().expect("age");
    assert!(age >= 30, "{first:#}");
    let c = doc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "redis-009")
        .expect("redis-009");
    assert_eq!(c["contested"], json!(["thp.enabled"]));
    assert_eq!(c["last_writer"]["comm"], "tuned");
    assert_eq!(c["last_writer"]["cgroup"], "/system.slice/tuned.service");
    assert_eq!(c["state"], "ready");
    let stale = names_in_state(&doc, "stale");
    assert_eq!(stale.len(), 30);
    assert!(stale.iter().all(|n| n.ends_with('6')), "{stale:?}");

    // A label selector: every node of the pool, the ones the agent never marked as unmarked;
    // no node of another pool.
    let pool = json_of(&status(&kc, &["-o", "json", "-l", "pool=redis"]));
    assert_eq!(pool["summary"]["nodes"], 300);
    assert_eq!(pool["summary"]["unmarked"], 30);
    assert!(
        names_in_state(&pool, "unmarked")
            .iter()
            .all(|n| n.starts_with("redis-") && n.ends_with('8'))
    );
    assert_eq!(
        json_of(&status(&kc, &["-o", "json", "--all"]))["summary"]["nodes"],
        311
    );
    // The ready ones alone: exit 0.
    let ready = status(&kc, &["-l", "kind=ready,pool=redis"]);
    assert_eq!(ready.code, 0, "{ready:?}");
    assert!(
        ready.stdout.ends_with("150 nodes: 150 ready\n"),
        "{}",
        ready.stdout
    );
    // A heartbeat bound above the stale nodes' age: they read as ready.
    let lenient = json_of(&status(&kc, &["-o", "json", "--heartbeat", "1h"]));
    assert_eq!(lenient["summary"]["stale"], 0);
    assert_eq!(lenient["summary"]["ready"], 210);

    // --condition-type: the qualified type is read, and the default one is not.
    let q = json_of(&status(
        &kc,
        &[
            "-o",
            "json",
            "--condition-type",
            QUALIFIED,
            "-l",
            "pool in (qualified,redis),kind=ready",
        ],
    ));
    assert_eq!(q["condition_type"], QUALIFIED);
    assert_eq!(names_in_state(&q, "ready"), ["q-0"]);
    assert_eq!(q["summary"]["no_agent"], 150);

    // As a kubectl plugin: a symlink named kubectl-redis_node_tuner on $PATH.
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(BIN, dir.path().join("kubectl-redis_node_tuner")).expect("symlink");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = |args: &[&str]| {
        Out::of(
            Command::new("kubectl")
                .env("PATH", &path)
                .env("KUBECONFIG", &kc)
                .arg("redis-node-tuner")
                .args(args)
                .output()
                .expect("kubectl"),
        )
    };
    let list = Out::of(
        Command::new("kubectl")
            .env("PATH", &path)
            .args(["plugin", "list"])
            .output()
            .expect("kubectl plugin list"),
    );
    assert!(list.stdout.contains("kubectl-redis_node_tuner"), "{list:?}");
    let o = plugin(&["-o", "json", "-l", "kind=ready,pool=redis"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(json_of(&o)["summary"]["ready"], 150);
    let o = plugin(&[]);
    assert_eq!(o.code, 10, "{o:?}");
    let first_column = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };
    assert_eq!(
        first_column(&o.stdout),
        first_column(&table.stdout),
        "plugin ≡ status"
    );
    let o = plugin(&["status", "-l", "kind=ready,pool=redis"]);
    assert_eq!(o.code, 0, "`status` named again is taken as given: {o:?}");

    // The API cannot be read: exit 11; a kubeconfig that does not read: exit 2.
    let text = std::fs::read_to_string(&kc).expect("kubeconfig");
    let dead = dir.path().join("dead.kubeconfig");
    let port = api.url.rsplit(':').next().expect("port");
    std::fs::write(
        &dead,
        text.replace(&format!(":{port}"), &format!(":{}", free_port())),
    )
    .expect("write");
    let o = status(&dead, &["--kube-timeout", "2s"]);
    assert_eq!(o.code, 11, "{o:?}");
    assert!(o.stderr.contains("listing nodes"), "{o:?}");
    let o = status(&dir.path().join("missing"), &[]);
    assert_eq!(o.code, 2, "{o:?}");
    let o = status(&kc, &["--heartbeat", "0s"]);
    assert_eq!(o.code, 2, "{o:?}");
}

#[test]
fn a_real_agent_shows_its_version_and_heartbeat_and_then_its_drift() {
    let api = ApiServer::start();
    api.create_node("db-1", json!({"pool": "redis"}), startup_taint());
    let kc = api.agent_kubeconfig("db-1", false);
    let t = Tree::untuned();
    let d = Daemon::start_kube(&t, &kc, "db-1", &[]);
    assert!(
        wait_for(Duration::from_secs(20), || is_ready_marked(
            &api.node("db-1")
        )),
        "{}",
        d.logs()
    );
    let admin = api.admin_kubeconfig();
    let o = status(&admin, &["-o", "json", "--heartbeat", "1h"]);
    assert_eq!(o.code, 0, "{o:?}");
    let doc = json_of(&o);
    let row = &doc["nodes"][0];
    assert_eq!(row["name"], "db-1", "{doc:#}");
    assert_eq!(row["state"], "ready");
    assert_eq!(row["reason"], "AllSettingsInSync");
    assert_eq!(row["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(row["heartbeat_age_seconds"].as_i64().is_some(), "{row:#}");
    assert_eq!(row["taint"], Value::Null);
    assert_eq!(
        api.node("db-1")["metadata"]["annotations"][VERSION_ANNOTATION],
        env!("CARGO_PKG_VERSION")
    );

    // Something resets overcommit and the file turns read-only: not ready, the knob named.
    t.break_knob(OVERCOMMIT, "0\n");
    let mut last = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            let o = status(&admin, &["--heartbeat", "1h"]);
            let done = o.code == 10;
            last = Some(o);
            done
        }),
        "{last:?}\n{}",
        d.logs()
    );
    let o = last.expect("status");
    let row = o.stdout.lines().nth(1).unwrap_or_default().to_string();
    for cell in ["db-1", " no ", "CorrectionFailed", "vm.overcommit_memory="] {
        assert!(row.contains(cell), "{cell}: {}", o.stdout);
    }
    assert!(
        api.node("db-1")["spec"]["taints"]
            .to_string()
            .contains(TAINT)
    );
}
