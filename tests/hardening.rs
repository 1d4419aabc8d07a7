//! Defects that only show in production, each proven against the real thing: a silent or paused
//! API server, an agent Pod that would be evicted by its own taint, a knob full of invalid
//! UTF-8, a pass blocked in the journal write, field ownership, the taint compare-and-swap
//! under a concurrent writer, and a kernel that reads back something else than was written.

mod common;
use common::apiserver::{
    ApiServer, COND, LABEL, TAINT, VERSION_ANNOTATION, condition, is_ready_marked, startup_taint,
    taint_keys,
};
use common::*;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

const SECONDS: Duration = Duration::from_secs(20);

fn timeouts(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("redis_node_tuner_kube_requests_total{")
                && l.contains("result=\"timeout\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP server that accepts every connection and never says a word.
struct Silent {
    addr: String,
    _listener: Arc<TcpListener>,
}

impl Silent {
    fn start() -> Silent {
        let l = Arc::new(TcpListener::bind("127.0.0.1:0").expect("bind"));
        let addr = l.local_addr().expect("addr").to_string();
        let held = l.clone();
        std::thread::spawn(move || {
            let mut open = vec![];
            for s in held.incoming().flatten() {
                open.push(s);
            }
        });
        Silent { addr, _listener: l }
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "silent", "cluster": {
                "server": format!("https://{}", self.addr), "insecure-skip-tls-verify": true}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "silent", "user": "u"}}],
            "current-context": "c",
        });
        let p = dir.join("silent.kubeconfig");
        std::fs::write(&p, kc.to_string()).expect("write kubeconfig");
        p
    }
}

#[test]
fn a_silent_apiserver_times_out_every_request_and_never_stops_enforcement_or_shutdown() {
    let silent = Silent::start();
    let t = Tree::untuned();
    let kc = silent.kubeconfig(t.dir.path());
    let d = Daemon::start_kube(&t, &kc, "db-1", &["--kube-timeout", "500ms"]);
    // Enforcement goes on: the kernel is tuned although the API never answers.
    assert!(
        wait_for(SECONDS, || t.get(OVERCOMMIT) == "1\n"),
        "{}",
        d.logs()
    );
    // Every request ends after --kube-timeout and is counted as a timeout.
    assert!(
        wait_for(SECONDS, || timeouts(&d.metrics()) >= 3.0),
        "no timeouts counted:\n{}\n{}",
        d.metrics(),
        d.logs()
    );
    assert_eq!(http_get(&d.addr, "/healthz").expect("healthz").0, 200);
    // SIGTERM: the AgentStopped write times out too, and the process ends cleanly (the
    // helper fails if it takes more than 15 s).
    let (code, logs) = d.sigterm();
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("cannot write AgentStopped"), "{logs}");
}

#[test]
fn a_paused_apiserver_is_waited_out_and_marks_catch_up_when_it_resumes() {
    let api = ApiServer::start();
    api.create_node("db-1", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-1", false);
    let t = Tree::untuned();
    let d = Daemon::start_kube(
        &t,
        &kc,
        "db-1",
        &["--kube-timeout", "1s", "--watch-timeout", "3s"],
    );
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-1"))),
        "{}",
        d.logs()
    );
    let pid = api.pid().to_string();
    let kill = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    kill("-STOP");
    // Resume the apiserver whatever happens below.
    struct Resume<'a>(&'a dyn Fn(&str));
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            (self.0)("-CONT");
        }
    }
    let resume = Resume(&kill);
    // While it is paused a knob breaks: the gate's writes and the watch time out.
    t.break_knob(THP_DEFRAG, "always defer defer+madvise [madvise] never\n");
    assert!(
        wait_for(SECONDS, || timeouts(&d.metrics()) >= 2.0),
        "no timeouts while paused:\n{}",
        d.logs()
    );
    drop(resume);
    // Resumed: the marks catch up with the kernel's truth.
    assert!(
        wait_for(SECONDS, || {
            let n = api.node("db-1");
            taint_keys(&n).contains(&TAINT.to_string())
                && condition(&n, COND).is_some_and(|c| c["status"] == "False")
        }),
        "marks did not catch up after SIGCONT: {:#}\n{}",
        api.node("db-1"),
        d.logs()
    );
    t.fix_knob(THP_DEFRAG, "always defer defer+madvise [madvise] never\n");
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-1"))),
        "{}",
        d.logs()
    );
    let logs = d.logs();
    // One warning for the outage and one line when it is over, not a line per retry.
    assert!(logs.contains("Kubernetes API reachable again"), "{logs}");
    let warnings = logs
        .lines()
        .filter(|l| {
            l.contains("Kubernetes API unreachable") || l.contains("cannot update the node")
        })
        .count();
    assert!(warnings <= 2, "{warnings} warnings:\n{logs}");
}

#[test]
fn the_agent_refuses_to_start_when_its_pod_does_not_tolerate_its_taint_effect() {
    let api = ApiServer::start();
    api.create_node("db-1", json!({}), json!([]));
    // The old DaemonSet's toleration: NoSchedule only.
    let kc = api.agent_kubeconfig_with(
        "db-1",
        true,
        json!([{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}]),
    );
    let t = Tree::untuned();
    let kcs = kc.to_string_lossy().into_owned();
    let pod = [
        "--pod-name",
        "redis-node-tuner-db-1",
        "--pod-namespace",
        "redis-node-tuner",
    ];
    let mut args = vec![
        "--kubeconfig",
        kcs.as_str(),
        "--node-name",
        "db-1",
        "run",
        "--listen",
        "",
        "--taint-effect",
        "NoExecute",
    ];
    args.extend(pod);
    let out = t.run(&args);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("does not tolerate taint redis-node-tuner.io/not-ready:NoExecute")
            && out
                .stderr
                .contains("redis-node-tuner/redis-node-tuner-db-1"),
        "{out:?}"
    );
    // It refused before writing any mark. (Kubernetes comes after the enforce loop: the
    // kernel settings are enforced from the start, whatever the API says.)
    assert!(!taint_keys(&api.node("db-1")).contains(&TAINT.to_string()));
    assert!(condition(&api.node("db-1"), COND).is_none());

    // The same Pod with the NoSchedule effect it tolerates starts and tunes.
    let d = Daemon::start_kube(&t, &kc, "db-1", &pod);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-1"))),
        "{}",
        d.logs()
    );
}

#[test]
fn a_knob_full_of_invalid_utf8_is_reported_and_the_gate_lives_on() {
    let api = ApiServer::start();
    api.create_node("db-1", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-1", false);
    let t = Tree::untuned();
    std::fs::write(t.path(THP_ENABLED), [0xFFu8; 512]).expect("write");
    let d = Daemon::start_kube(&t, &kc, "db-1", &[]);
    // The 1,569-byte error note is cut on a character boundary and published.
    let failed = || {
        let v: Value = serde_json::from_str(&api.ok(&[
            "get",
            "events.events.k8s.io",
            "-n",
            "default",
            "-o",
            "json",
        ]))
        .expect("events");
        v["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|e| e["reason"] == "CorrectionFailed" && e["regarding"]["name"] == "db-1")
                .cloned()
        })
    };
    assert!(wait_for(SECONDS, || failed().is_some()), "{}", d.logs());
    let note = failed()
        .and_then(|e| e["note"].as_str().map(String::from))
        .unwrap_or_default();
    assert!(note.len() <= 1000 && note.contains('\u{fffd}'), "{note}");
    // The gate is alive: the node's condition follows a later change.
    t.put(THP_ENABLED, "[always] madvise never\n");
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-1"))),
        "{}",
        d.logs()
    );
    assert_eq!(http_get(&d.addr, "/healthz").expect("healthz").0, 200);
}

#[test]
fn a_pass_blocked_in_the_journal_write_fails_healthz_and_readyz_after_the_stall_timeout() {
    let t = Tree::untuned();
    std::fs::create_dir_all(t.state_dir()).expect("mkdir");
    // The journal's temp file is a FIFO: opening it for writing blocks until a reader comes,
    // as a hung disk would block the fsync.
    let fifo = t.state_dir().join("originals.json.tmp");
    let ok = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo");
    // Daemon::start waits for /healthz: it answers while the first pass is blocked, until the
    // stall timeout.
    let d = Daemon::start(&t, &["--interval", "200ms", "--stall-timeout", "2s"]);
    let (code, body) = http_get(&d.addr, "/readyz").expect("readyz");
    assert_eq!((code, body.as_str()), (503, "not ready: no check yet\n"));
    assert!(d.metrics().contains("redis_node_tuner_build_info"));
    assert_eq!(t.get(OVERCOMMIT), "0\n", "blocked before its first write");
    assert!(
        wait_for(SECONDS, || http_get(&d.addr, "/healthz").is_ok_and(
            |(c, b)| c == 503 && b.contains("no enforce pass has finished")
        )),
        "/healthz did not fail on the blocked pass: {:?}",
        http_get(&d.addr, "/healthz")
    );
    let (code, body) = http_get(&d.addr, "/readyz").expect("readyz");
    assert!(
        code == 503 && body.contains("not being enforced"),
        "{code} {body}"
    );
    // Release the pass: read what it writes, then take the FIFO away.
    let mut reader = std::fs::File::open(&fifo).expect("open fifo");
    let mut written = String::new();
    let _ = reader.read_to_string(&mut written);
    std::fs::remove_file(&fifo).expect("rm fifo");
    assert!(written.contains("vm.overcommit_memory"), "{written}");
    assert!(
        wait_for(SECONDS, || t.get(OVERCOMMIT) == "1\n"),
        "{}",
        d.logs()
    );
    assert!(wait_for(SECONDS, || http_get(&d.addr, "/readyz")
        .is_ok_and(|(c, _)| c == 200)));
    assert_eq!(http_get(&d.addr, "/healthz").expect("healthz").0, 200);
}

#[test]
fn every_write_of_the_agent_is_owned_by_its_field_manager() {
    let api = ApiServer::start();
    api.create_node("db-1", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("db-1", false);
    let t = Tree::untuned();
    let d = Daemon::start_kube(&t, &kc, "db-1", &[]);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("db-1"))),
        "{}",
        d.logs()
    );
    let fields = api.managed_fields("db-1");
    let owner = |needle: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|f| f["fieldsV1"].to_string().contains(needle))
            .filter_map(|f| f["manager"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        owner("RedisKernelTuned"),
        ["redis-node-tuner"],
        "{fields:#?}"
    );
    assert_eq!(owner("f:taints"), ["redis-node-tuner"], "{fields:#?}");
    assert_eq!(owner(LABEL), ["redis-node-tuner"], "{fields:#?}");
    assert_eq!(
        owner(VERSION_ANNOTATION),
        ["redis-node-tuner"],
        "{fields:#?}"
    );
}

#[test]
fn a_concurrent_taint_write_makes_the_agent_reread_and_keeps_the_other_taint() {
    use redis_node_tuner::k8s::node_api::{KubeNodeApi, NodeApi};
    let api = ApiServer::start();
    api.create_node("db-1", json!({}), json!([]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(redis_node_tuner::metrics::Metrics::new());
    let admin = api.admin_kubeconfig();
    let (nodes, before) = rt.block_on(async {
        let client = redis_node_tuner::k8s::client(Some(&admin), Duration::from_secs(10))
            .await
            .expect("client");
        let nodes = KubeNodeApi::new(client, "db-1", Duration::from_secs(10), metrics.clone());
        let before = nodes.get().await.expect("get");
        (nodes, before)
    });
    // Between the agent's read and its write, another component taints the node.
    api.ok(&["taint", "node", "db-1", "maintenance=yes:NoExecute"]);
    let after = rt
        .block_on(nodes.set_taint(Some(&before), Some("NoSchedule")))
        .expect("taint");
    let keys: Vec<String> = after
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    // The other writer's taint survives (a write without resourceVersion would have put the
    // stale list back, dropping it), ours is added, and the node holds exactly that list.
    assert!(
        keys.contains(&"maintenance".to_string()) && keys.last().map(String::as_str) == Some(TAINT),
        "{keys:?}"
    );
    assert_eq!(taint_keys(&api.node("db-1")), keys);
    let m = metrics.encode_prometheus();
    assert_eq!(
        sample(
            &m,
            "redis_node_tuner_kube_requests_total{verb=\"patch\",result=\"conflict\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "redis_node_tuner_kube_requests_total{verb=\"patch\",result=\"success\"}"
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn a_value_the_kernel_reads_back_differently_is_not_applied() {
    // kernel.domainname keeps at most 64 characters and silently drops the rest. It belongs to
    // the UTS namespace: the agent runs in a new one, so this machine's is never touched.
    require("unshare");
    let t = Tree::untuned();
    let long = "d".repeat(70);
    let config = t.path("domainname.yaml");
    std::fs::write(
        &config,
        format!(
            "mode: off\nsysctls:\n  kernel.domainname: {{equals: \"{long}\", mode: enforce}}\n"
        ),
    )
    .expect("write config");
    let out = Out::of(
        Command::new("unshare")
            .arg("--uts")
            .arg(BIN)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(t.state_dir())
            .arg("apply")
            .output()
            .expect("unshare"),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(&format!("wrote \"{long}\""))
            && out
                .stdout
                .contains(&format!("reads back \"{}\"", &long[..64])),
        "{out:?}"
    );
}

/// A kubeconfig whose credentials cannot be had yet (its exec plugin fails, as a cloud
/// plugin does before the network is up): the agent enforces from the start, stays up and
/// healthy, and says once that it retries; it is not a usage error (exit 2 is never restarted
/// by the unit). A kubeconfig that does not read at all is one: exit 2.
#[test]
fn kubernetes_credentials_not_there_yet_are_retried_while_the_kernel_is_enforced() {
    let t = Tree::untuned();
    let kc = t.path("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         users:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/false, interactiveMode: Never}\n\
         contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .expect("kubeconfig");
    let d = Daemon::start_kube(&t, &kc, "db-1", &[]);
    assert!(
        wait_for(SECONDS, || t.get(OVERCOMMIT) == "1\n"),
        "not enforced while Kubernetes is not ready:\n{}",
        d.logs()
    );
    assert!(
        wait_for(SECONDS, || d
            .logs()
            .contains("Kubernetes client not ready; retrying")),
        "{}",
        d.logs()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(http_get(&d.addr, "/healthz").expect("healthz").0, 200);
    assert_eq!(
        d.logs().matches("Kubernetes client not ready").count(),
        1,
        "one warning, not one per retry:\n{}",
        d.logs()
    );
    drop(d);

    let bad = t.path("bad-kubeconfig");
    std::fs::write(&bad, "this: [is not a kubeconfig").expect("write");
    let out = t
        .cmd(&[
            "--kubeconfig",
            bad.to_str().unwrap_or_default(),
            "--node-name",
            "db-1",
            "run",
            "--listen",
            "",
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
