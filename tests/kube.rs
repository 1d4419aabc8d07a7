//! Kubernetes mode against a real kube-apiserver (tests/apiserver), the agent running with a
//! pod-bound token of its own ServiceAccount under deploy/base/access (RBAC and the admission policy), over a fake kernel tree.

mod common;
use common::apiserver::{
    ApiServer, COND, LABEL, TAINT, condition, is_ready_marked, is_unready_marked, label,
    startup_taint, taint_keys,
};
use common::*;

use std::time::Duration;

use serde_json::{Value, json};

const SECONDS: Duration = Duration::from_secs(15);

fn events_for(api: &ApiServer, node: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&api.ok(&["get", "events.events.k8s.io", "-A", "-o", "json"]))
            .expect("events");
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == node)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn untuned_node_is_tainted_until_tuned_then_labelled_and_condition_true() {
    let api = ApiServer::start();
    api.create_node("db-1", json!({"pool": "redis"}), startup_taint());
    let kc = api.agent_kubeconfig("db-1", false);
    let t = Tree::untuned();
    t.break_knob(SOMAXCONN, "128\n");
    let d = Daemon::start_kube(&t, &kc, "db-1", &[]);

    // Not ready: taint kept, no label, condition False with reason and the failing knob.
    assert!(
        wait_for(SECONDS, || condition(&api.node("db-1"), COND).is_some()),
        "no condition: {}",
        d.logs()
    );
    let n = api.node("db-1");
    assert!(is_unready_marked(&n), "{n:#}");
    let c = condition(&n, COND).expect("condition");
    assert_eq!(c["reason"], "CorrectionFailed", "{c:#}");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or("")
            .contains("net.core.somaxconn=unreadable (want >= 2048)"),
        "{c:#}"
    );
    // Kubelet's condition is untouched.
    assert_eq!(
        condition(&n, "Ready").map(|c| c["reason"].clone()),
        Some(json!("KubeletReady"))
    );

    // The knob becomes writable: the agent tunes it, and the node is marked ready.
    t.fix_knob(SOMAXCONN, "128\n");
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-1"))),
        "{:#}",
        api.node("db-1")
    );
    assert_eq!(t.get(SOMAXCONN), "2048\n");
    let n = api.node("db-1");
    let c = condition(&n, COND).expect("condition");
    assert_eq!(c["reason"], "AllSettingsInSync");
    assert_eq!(label(&n, "pool").as_deref(), Some("redis"));
    assert_eq!(
        condition(&n, "Ready").map(|c| c["status"].clone()),
        Some(json!("True"))
    );
    // The label is owned by the agent's field manager (server-side apply).
    let managers: Vec<String> = api
        .managed_fields("db-1")
        .iter()
        .filter_map(|f| f["manager"].as_str().map(String::from))
        .collect();
    assert!(
        managers.contains(&"redis-node-tuner".to_string()),
        "{managers:?}"
    );

    let describe = api.ok(&["describe", "node", "db-1"]);
    assert!(
        describe.contains("RedisKernelTuned") && describe.contains("AllSettingsInSync"),
        "{describe}"
    );
    assert!(
        describe.contains("redis-node-tuner.io/ready=true"),
        "{describe}"
    );

    assert!(
        wait_for(Duration::from_secs(5), || {
            let reasons: Vec<Value> = events_for(&api, "db-1")
                .iter()
                .map(|e| e["reason"].clone())
                .collect();
            // The first pass's drift events as one summary; the later ones one by one.
            [
                "DriftSummary",
                "DriftDetected",
                "DriftCorrected",
                "CorrectionFailed",
                "NodeReady",
            ]
            .iter()
            .all(|r| reasons.contains(&json!(r)))
        }),
        "events: {:#?}\n{}",
        events_for(&api, "db-1"),
        d.logs()
    );
    let m = d.metrics();
    assert!(
        m.contains(r#"redis_node_tuner_kube_requests_total{verb="apply",result="success"}"#),
        "{m}"
    );
}

#[test]
fn other_components_labels_and_taints_survive_every_write() {
    let api = ApiServer::start();
    api.create_node(
        "db-2",
        json!({"team": "data"}),
        json!([{"key": TAINT, "effect": "NoSchedule"}, {"key": "dedicated", "value": "redis", "effect": "NoSchedule"}]),
    );
    let kc = api.agent_kubeconfig("db-2", false);
    let t = Tree::untuned();
    let _d = Daemon::start_kube(&t, &kc, "db-2", &[]);
    assert!(wait_for(SECONDS, || is_ready_marked(&api.node("db-2"))));

    // While another controller adds its own taints and labels, the node flips readiness
    // several times, so the agent rewrites the taint list each time.
    let writer_api_kc = api.admin_kubeconfig();
    let writer = std::thread::spawn(move || {
        for i in 0..10 {
            let o = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&writer_api_kc)
                .args(["taint", "node", "db-2", &format!("other-{i}=x:NoSchedule")])
                .output();
            assert!(
                o.is_ok_and(|o| o.status.success()),
                "kubectl taint other-{i}"
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    for round in 0..3 {
        t.break_knob(OVERCOMMIT, "0\n");
        assert!(
            wait_for(SECONDS, || is_unready_marked(&api.node("db-2"))),
            "round {round}"
        );
        t.fix_knob(OVERCOMMIT, "0\n");
        assert!(
            wait_for(SECONDS, || is_ready_marked(&api.node("db-2"))),
            "round {round}"
        );
    }
    writer.join().expect("writer thread");
    api.ok(&["label", "node", "db-2", "added-later=yes"]);
    t.break_knob(OVERCOMMIT, "0\n");
    assert!(wait_for(SECONDS, || is_unready_marked(&api.node("db-2"))));
    let n = api.node("db-2");
    // Repeated events aggregate into one series per reason and knob instead of flooding.
    let drift: Vec<Value> = events_for(&api, "db-2")
        .into_iter()
        .filter(|e| e["reason"] == "DriftDetected" && e["action"] == "Tune vm.overcommit_memory")
        .collect();
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert!(
        drift[0]["series"]["count"].as_i64().unwrap_or(0) >= 2,
        "{drift:#?}"
    );
    let keys = taint_keys(&n);
    for i in 0..10 {
        assert!(
            keys.contains(&format!("other-{i}")),
            "other-{i} lost: {keys:?}"
        );
    }
    assert!(keys.contains(&"dedicated".to_string()), "{keys:?}");
    assert_eq!(label(&n, "team").as_deref(), Some("data"));
    assert_eq!(label(&n, "added-later").as_deref(), Some("yes"));
}

#[test]
fn marks_removed_or_altered_by_hand_are_put_back() {
    let api = ApiServer::start();
    api.create_node("db-3", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-3", false);
    let t = Tree::untuned();
    let _d = Daemon::start_kube(&t, &kc, "db-3", &[]);
    assert!(wait_for(SECONDS, || is_ready_marked(&api.node("db-3"))));

    api.ok(&["label", "node", "db-3", &format!("{LABEL}-")]);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-3"))),
        "label not restored"
    );

    api.ok(&[
        "label",
        "node",
        "db-3",
        "--overwrite",
        &format!("{LABEL}=false"),
    ]);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-3"))),
        "label not corrected"
    );

    api.ok(&["taint", "node", "db-3", &format!("{TAINT}:NoSchedule")]);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-3"))),
        "taint not removed"
    );

    let now = "2026-01-01T00:00:00Z";
    let patch = json!({"status": {"conditions": [{"type": COND, "status": "False", "reason": "Tampered",
        "message": "x", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    api.ok(&[
        "patch",
        "node",
        "db-3",
        "--subresource=status",
        "--type=strategic",
        "-p",
        &patch.to_string(),
    ]);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-3"))),
        "condition not restored"
    );
}

#[test]
fn api_outage_never_stops_kernel_enforcement_and_marks_catch_up() {
    let mut api = ApiServer::start();
    api.create_node("db-4", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-4", false);
    let t = Tree::untuned();
    let d = Daemon::start_kube(&t, &kc, "db-4", &[]);
    assert!(wait_for(SECONDS, || is_ready_marked(&api.node("db-4"))));

    api.stop();
    // Drift behind the agent's back is still corrected with the API down.
    t.put(OVERCOMMIT, "0\n");
    assert!(
        wait_for(SECONDS, || t.get(OVERCOMMIT) == "1\n"),
        "not corrected during the outage"
    );
    // And the node's truth changes while the API is down.
    t.break_knob(THP_DEFRAG, "[always] defer never\n");
    assert!(wait_for(SECONDS, || http_get(&d.addr, "/readyz")
        .is_ok_and(|(c, _)| c == 503)));
    std::thread::sleep(Duration::from_secs(2));

    api.restart();
    // Reconnects back off up to 20 s (spread so a fleet does not come back at once): the marks
    // catch up within that cap, plus slack for a loaded machine.
    assert!(
        wait_for(Duration::from_secs(40), || is_unready_marked(
            &api.node("db-4")
        )),
        "marks did not catch up within 40 s: {:#}\n{}",
        api.node("db-4"),
        d.logs()
    );
    let m = d.metrics();
    assert!(
        m.contains(r#"result="error"}"#),
        "API errors not counted: {m}"
    );

    t.fix_knob(THP_DEFRAG, "madvise\n");
    assert!(wait_for(Duration::from_secs(10), || is_ready_marked(
        &api.node("db-4")
    )));
    // A warning when the API went away and an info line when it came back, not a line per
    // retry (the agent retried many times). At most two of each: an apiserver that is still
    // starting may answer once (a 403 before its RBAC caches fill) and then fail again.
    let logs = d.logs();
    let down = logs.matches("Kubernetes API unreachable").count();
    let up = logs.matches("Kubernetes API reachable again after").count();
    assert!((1..=2).contains(&down) && (1..=2).contains(&up), "{logs}");
    let m = d.metrics();
    let outages = m
        .lines()
        .find_map(|l| l.strip_prefix("redis_node_tuner_kube_api_outages_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(outages, Some(down as u64), "{m}");
    assert!(m.contains("redis_node_tuner_kube_api_reachable 1"), "{m}");
}

#[test]
fn agent_for_one_node_never_writes_another_and_its_token_is_least_privilege() {
    let api = ApiServer::start();
    api.create_node("db-5", json!({}), startup_taint());
    api.create_node("db-6", json!({}), startup_taint());
    let before = api.node("db-6");
    let kc = api.agent_kubeconfig("db-5", false);
    let t = Tree::untuned();
    let _d = Daemon::start_kube(&t, &kc, "db-5", &[]);
    assert!(wait_for(SECONDS, || is_ready_marked(&api.node("db-5"))));
    std::thread::sleep(Duration::from_secs(2));
    let after = api.node("db-6");
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "node db-6 was written"
    );
    assert!(is_unready_marked(&after) || condition(&after, COND).is_none());
    assert!(condition(&after, COND).is_none());

    // Outside its role: forbidden.
    let secrets = api.kubectl_as(&kc, &["get", "secrets", "-A"]);
    assert_ne!(secrets.code, 0, "{secrets:?}");
    assert!(
        secrets.stderr.contains("Forbidden") || secrets.stderr.contains("forbidden"),
        "{secrets:?}"
    );
    let delete = api.kubectl_as(&kc, &["delete", "node", "db-6", "--dry-run=server"]);
    assert!(delete.stderr.contains("forbidden"), "{delete:?}");
    let whoami = api.kubectl_as(&kc, &["auth", "whoami", "-o", "json"]);
    assert!(
        whoami
            .stdout
            .contains("system:serviceaccount:redis-node-tuner:redis-node-tuner"),
        "{whoami:?}"
    );
}

#[test]
fn sigterm_sets_condition_unknown_and_leaves_label_and_kernel_values() {
    let api = ApiServer::start();
    api.create_node("db-7", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-7", false);
    let t = Tree::untuned();
    let d = Daemon::start_kube(&t, &kc, "db-7", &[]);
    assert!(wait_for(SECONDS, || is_ready_marked(&api.node("db-7"))));
    let (code, logs) = d.sigterm();
    assert_eq!(code, 0, "{logs}");
    let n = api.node("db-7");
    let c = condition(&n, COND).expect("condition");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("Unknown"), Some("AgentStopped")),
        "{c:#}"
    );
    assert_eq!(
        label(&n, LABEL).as_deref(),
        Some("true"),
        "label must stay for a rolling update"
    );
    assert!(!taint_keys(&n).contains(&TAINT.to_string()));
    assert_eq!(t.get(OVERCOMMIT), "1\n");
    assert_eq!(t.get(SOMAXCONN), "2048\n");
}

#[test]
fn cleanup_leaves_no_trace_of_the_agent() {
    let api = ApiServer::start();
    api.create_node(
        "db-8",
        json!({"keep": "me"}),
        json!([{"key": "keep", "effect": "NoSchedule"}]),
    );
    let kc = api.agent_kubeconfig("db-8", false);
    let t = Tree::untuned();
    t.break_knob(OVERCOMMIT, "0\n");
    let d = Daemon::start_kube(&t, &kc, "db-8", &[]);
    assert!(wait_for(SECONDS, || is_unready_marked(&api.node("db-8"))));
    let _ = d.sigterm();
    let out = Out::of(
        t.cmd(&[
            "cleanup",
            "--node-name",
            "db-8",
            "--kubeconfig",
            &kc.to_string_lossy(),
        ])
        .output()
        .expect("cleanup"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let n = api.node("db-8");
    assert_eq!(label(&n, LABEL), None);
    let keys = taint_keys(&n);
    assert!(
        keys.contains(&"keep".to_string()) && !keys.contains(&TAINT.to_string()),
        "{keys:?}"
    );
    assert!(condition(&n, COND).is_none(), "{n:#}");
    assert!(condition(&n, "Ready").is_some());
    assert_eq!(label(&n, "keep").as_deref(), Some("me"));
    let text = n.to_string();
    assert!(!text.contains("redis-node-tuner.io"), "{n:#}");
}

#[test]
fn host_network_pod_proves_the_network_namespace() {
    let api = ApiServer::start();
    api.create_node("db-9", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-9", true);
    let t = Tree::untuned();
    // No PID 1 under the proc root: the namespace cannot be compared, only proven.
    std::fs::remove_file(t.path("proc/1/ns/net")).expect("rm");
    let d = Daemon::start_kube(
        &t,
        &kc,
        "db-9",
        &[
            "--pod-name",
            "redis-node-tuner-db-9",
            "--pod-namespace",
            "redis-node-tuner",
        ],
    );
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-9"))),
        "{}",
        d.logs()
    );
    assert_eq!(t.get(SOMAXCONN), "2048\n");
    assert!(
        d.logs().contains("host network namespace proven"),
        "{}",
        d.logs()
    );
}

#[test]
fn taint_effect_none_removes_a_registered_taint_and_never_adds_one() {
    let api = ApiServer::start();
    api.create_node(
        "db-10",
        json!({}),
        json!([{"key": TAINT, "effect": "NoExecute"}]),
    );
    let kc = api.agent_kubeconfig("db-10", false);
    let t = Tree::untuned();
    let _d = Daemon::start_kube(&t, &kc, "db-10", &["--taint-effect", "none"]);
    assert!(wait_for(SECONDS, || is_ready_marked(&api.node("db-10"))));
    t.break_knob(OVERCOMMIT, "0\n");
    assert!(wait_for(SECONDS, || {
        let n = api.node("db-10");
        label(&n, LABEL).is_none() && condition(&n, COND).is_some_and(|c| c["status"] == "False")
    }));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!taint_keys(&api.node("db-10")).contains(&TAINT.to_string()));
}

/// `--taint-effect NoExecute` against the real apiserver: a node that has not been in tune
/// since the agent started (its kubelet registered the NoExecute startup taint, a knob cannot
/// be written) is tainted NoSchedule, not NoExecute; once in tune, a knob that cannot be
/// corrected taints it NoExecute.
#[test]
fn noexecute_waits_until_the_node_was_in_tune_since_the_agent_started() {
    let api = ApiServer::start();
    api.create_node(
        "db-11",
        json!({}),
        json!([{"key": TAINT, "effect": "NoExecute"}]),
    );
    let kc = api.agent_kubeconfig("db-11", false);
    let t = Tree::untuned();
    t.break_knob(OVERCOMMIT, "0\n");
    let d = Daemon::start_kube(&t, &kc, "db-11", &["--taint-effect", "NoExecute"]);
    let effects = |n: &Value| -> Vec<String> {
        n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["key"] == TAINT)
            .map(|t| t["effect"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(
        wait_for(SECONDS, || {
            let n = api.node("db-11");
            condition(&n, COND).is_some_and(|c| c["status"] == "False")
                && effects(&n) == ["NoSchedule"]
        }),
        "{:#}\n{}",
        api.node("db-11"),
        d.logs()
    );
    assert!(
        d.logs()
            .contains("taint effect NoExecute held back as NoSchedule"),
        "{}",
        d.logs()
    );
    t.fix_knob(OVERCOMMIT, "0\n");
    assert!(wait_for(SECONDS, || is_ready_marked(&api.node("db-11"))));
    t.break_knob(OVERCOMMIT, "0\n");
    assert!(
        wait_for(SECONDS, || effects(&api.node("db-11")) == ["NoExecute"]),
        "{:#}\n{}",
        api.node("db-11"),
        d.logs()
    );
}

/// The sum of the apiserver's `apiserver_flowcontrol_dispatched_requests_total` for a FlowSchema.
fn dispatched(api: &ApiServer, flow_schema: &str) -> u64 {
    let want = format!("flow_schema=\"{flow_schema}\"");
    api.ok(&["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{"))
        .filter(|l| l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

#[test]
fn the_agents_requests_land_in_their_own_priority_level() {
    let api = ApiServer::start();
    api.create_node("db-10", json!({}), startup_taint());
    // Installs deploy/base/access, FlowSchema and PriorityLevelConfiguration included.
    let kc = api.agent_kubeconfig("db-10", false);
    // The apiserver's APF controller has taken the FlowSchema in once it reports it not dangling.
    assert!(
        wait_for(SECONDS, || api
            .ok(&[
                "get",
                "flowschema",
                "redis-node-tuner",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Dangling")].status}"#,
            ])
            .trim()
            == "False"),
        "FlowSchema redis-node-tuner not taken in: {}",
        api.ok(&["get", "flowschema", "redis-node-tuner", "-o", "yaml"])
    );
    let t = Tree::untuned();
    let d = Daemon::start_kube(&t, &kc, "db-10", &[]);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-10"))),
        "{}",
        d.logs()
    );
    // From here on, every request of the agent is counted under its own FlowSchema and
    // priority level, none under the built-in `service-accounts` (workload-low) it fell into
    // before.
    let (ours, theirs) = (
        dispatched(&api, "redis-node-tuner"),
        dispatched(&api, "service-accounts"),
    );
    t.break_knob(THP_DEFRAG, "[always] defer never\n");
    assert!(
        wait_for(SECONDS, || is_unready_marked(&api.node("db-10"))),
        "{:#}\n{}",
        api.node("db-10"),
        d.logs()
    );
    let after = dispatched(&api, "redis-node-tuner");
    // Label off, taint on, condition False: at least three writes.
    assert!(after >= ours + 3, "{ours} -> {after}");
    assert_eq!(dispatched(&api, "service-accounts"), theirs);
    let levels = api.ok(&["get", "--raw", "/metrics"]);
    assert!(
        levels.lines().any(
            |l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{")
                && l.contains(r#"flow_schema="redis-node-tuner""#)
                && l.contains(r#"priority_level="redis-node-tuner""#)
        ),
        "no request dispatched at priority level redis-node-tuner"
    );
}

/// The domain-qualified condition type the README recommends for node-readiness-controller.
const QUALIFIED: &str = "redis-node-tuner.io/KernelTuned";
/// A node-readiness-controller taint: not the agent's, never touched by it.
const READINESS_TAINT: &str = "readiness.k8s.io/redis-kernel-tuned";

/// The Node's condition types, sorted.
fn condition_types(n: &Value) -> Vec<String> {
    let mut types: Vec<String> = n["status"]["conditions"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["type"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    types.sort();
    types
}

/// The controller's taint is there, the agent's is not.
fn assert_taints_are_theirs_only(n: &Value) {
    let keys = taint_keys(n);
    assert!(
        keys.contains(&READINESS_TAINT.to_string()) && !keys.contains(&TAINT.to_string()),
        "{keys:?}\n{n:#}"
    );
}

#[test]
fn qualified_condition_type_with_taint_none_reports_for_node_readiness_controller() {
    let api = ApiServer::start();
    // Registered with the agent's startup taint (left from a previous setup) and the taint a
    // NodeReadinessRule would own.
    api.create_node(
        "db-11",
        json!({}),
        json!([{"key": TAINT, "effect": "NoSchedule"},
               {"key": READINESS_TAINT, "effect": "NoSchedule"}]),
    );
    let kc = api.agent_kubeconfig("db-11", false);
    let t = Tree::untuned();
    t.break_knob(OVERCOMMIT, "0\n");
    let d = Daemon::start_kube(
        &t,
        &kc,
        "db-11",
        &["--condition-type", QUALIFIED, "--taint-effect", "none"],
    );

    // Not tuned: the qualified condition False; the agent's taint removed all the same (with
    // `none` it is never held); the controller's taint and no label.
    assert!(
        wait_for(SECONDS, || {
            let n = api.node("db-11");
            condition(&n, QUALIFIED).is_some_and(|c| c["status"] == "False")
                && !taint_keys(&n).contains(&TAINT.to_string())
        }),
        "{:#}\n{}",
        api.node("db-11"),
        d.logs()
    );
    let n = api.node("db-11");
    assert_eq!(
        condition(&n, QUALIFIED).map(|c| c["reason"].clone()),
        Some(json!("CorrectionFailed")),
        "{n:#}"
    );
    assert_eq!(label(&n, LABEL), None, "{n:#}");
    assert_taints_are_theirs_only(&n);

    // Tuned: condition True, label set; still no taint of the agent's, the controller's kept.
    t.fix_knob(OVERCOMMIT, "0\n");
    assert!(
        wait_for(SECONDS, || condition(&api.node("db-11"), QUALIFIED)
            .is_some_and(|c| c["status"] == "True")),
        "{:#}\n{}",
        api.node("db-11"),
        d.logs()
    );
    assert_eq!(t.get(OVERCOMMIT), "1\n");
    let n = api.node("db-11");
    assert_eq!(
        condition(&n, QUALIFIED).map(|c| c["reason"].clone()),
        Some(json!("AllSettingsInSync"))
    );
    assert_eq!(label(&n, LABEL).as_deref(), Some("true"), "{n:#}");
    assert_taints_are_theirs_only(&n);
    // Only the configured type is written: never RedisKernelTuned.
    assert_eq!(condition_types(&n), ["Ready", QUALIFIED], "{n:#}");

    // Drift back: False again, and the taint is still never added.
    t.break_knob(THP_DEFRAG, "[always] defer never\n");
    assert!(
        wait_for(SECONDS, || condition(&api.node("db-11"), QUALIFIED)
            .is_some_and(|c| c["status"] == "False")),
        "{:#}\n{}",
        api.node("db-11"),
        d.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    let n = api.node("db-11");
    assert_taints_are_theirs_only(&n);
    assert_eq!(condition_types(&n), ["Ready", QUALIFIED], "{n:#}");

    // SIGTERM: Unknown / AgentStopped on the qualified type.
    let (code, out) = d.sigterm();
    assert_eq!(code, 0, "{out}");
    let n = api.node("db-11");
    assert_eq!(
        condition(&n, QUALIFIED).map(|c| (c["status"].clone(), c["reason"].clone())),
        Some((json!("Unknown"), json!("AgentStopped"))),
        "{n:#}"
    );
    assert_eq!(condition_types(&n), ["Ready", QUALIFIED], "{n:#}");

    let cleanup = |extra: &[&str]| {
        let kc = kc.to_string_lossy();
        let mut args = vec!["cleanup", "--node-name", "db-11", "--kubeconfig", &kc];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    // `cleanup` removes the type it is given: without the flag, RedisKernelTuned (absent).
    let out = cleanup(&[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        condition(&api.node("db-11"), QUALIFIED).is_some(),
        "{:#}",
        api.node("db-11")
    );
    let out = cleanup(&["--condition-type", QUALIFIED]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(QUALIFIED), "{out:?}");
    let n = api.node("db-11");
    assert_eq!(condition_types(&n), ["Ready"], "{n:#}");
    assert_eq!(label(&n, LABEL), None, "{n:#}");
    assert_taints_are_theirs_only(&n);
    assert!(!n.to_string().contains("redis-node-tuner.io"), "{n:#}");
}

#[test]
fn a_bad_condition_type_exits_2_naming_it_before_anything_is_written() {
    let api = ApiServer::start();
    api.create_node("db-12", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-12", false);
    let kc = kc.to_string_lossy();
    let t = Tree::untuned();
    let knobs = [OVERCOMMIT, SOMAXCONN, THP_ENABLED, THP_DEFRAG, THP_2M];
    let values = || knobs.map(|k| t.get(k));
    let before_knobs = values();
    let state = || {
        std::fs::read_dir(t.state_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let before_state = state();
    let before = api.node("db-12");
    let cases: [(&str, &[&str], Option<&str>); 5] = [
        (
            "Kernel Tuned",
            &["run", "--node-name", "db-12", "--kubeconfig", &kc],
            None,
        ),
        (
            "redis-node-tuner.io/",
            &["run", "--node-name", "db-12", "--kubeconfig", &kc],
            None,
        ),
        (
            "Redis.IO/KernelTuned",
            &["cleanup", "--node-name", "db-12", "--kubeconfig", &kc],
            None,
        ),
        ("a/b/c", &["apply"], None),
        // From the environment too.
        (
            "-KernelTuned",
            &["run", "--node-name", "db-12", "--kubeconfig", &kc],
            Some("REDIS_NODE_TUNER_CONDITION_TYPE"),
        ),
    ];
    for (bad, args, env) in cases {
        let mut cmd = match env {
            Some(var) => {
                let mut c = t.cmd(args);
                c.env(var, bad);
                c
            }
            None => {
                let mut a = args.to_vec();
                a.extend(["--condition-type", bad]);
                t.cmd(&a)
            }
        };
        let out = Out::of(cmd.output().expect("spawn"));
        assert_eq!(out.code, 2, "{bad:?} {args:?}: {out:?}");
        assert!(
            out.stderr.contains("--condition-type") && out.stderr.contains(&format!("'{bad}'")),
            "{bad:?}: the message names neither the flag nor the value: {out:?}"
        );
    }
    // Nothing written: no knob, no journal, no Node change.
    assert_eq!(values(), before_knobs);
    assert_eq!(state(), before_state, "state dir written");
    let after = api.node("db-12");
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "{after:#}"
    );
}
