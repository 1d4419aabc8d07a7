//! The fault suite: faults a node meets, injected against the real counterparts (the real
//! apiserver and its RBAC, real mounts, real processes), each asserting what an operator sees:
//! the log line, the metric, the Node's condition, `/readyz`. The README's "Faults" table lists
//! these and the faults proven elsewhere (`tests/hardening.rs`, `tests/writers.rs`).

mod common;
use common::apiserver::{ApiServer, COND, condition, is_ready_marked, startup_taint};
use common::*;

use std::process::Command;
use std::time::Duration;

use serde_json::json;

const SECONDS: Duration = Duration::from_secs(20);

/// The API refuses every event (403: the events RoleBinding is gone): each is dropped and
/// counted, one warning says so, and the marks are written all the same; a later change still
/// reaches the Node.
#[test]
fn events_the_api_refuses_are_dropped_and_counted_and_the_node_is_still_marked() {
    let api = ApiServer::start();
    api.create_node("f-1", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("f-1", true);
    api.ok(&[
        "delete",
        "rolebinding",
        "redis-node-tuner-events",
        "-n",
        "default",
    ]);
    let t = Tree::untuned();
    let d = Daemon::start_kube(&t, &kc, "f-1", &[]);
    assert!(
        wait_for(SECONDS, || is_ready_marked(&api.node("f-1"))),
        "{}",
        d.logs()
    );
    let refused = "redis_node_tuner_kube_events_dropped_total{reason=\"refused\"}";
    assert!(
        wait_for(SECONDS, || sample(&d.metrics(), refused) >= 1.0),
        "{}",
        d.metrics()
    );
    // A later drift: corrected, its events refused too, the node still marked ready.
    let before = sample(&d.metrics(), refused);
    t.put(THP_ENABLED, "[always] madvise never\n");
    assert!(
        wait_for(SECONDS, || sample(&d.metrics(), refused) > before),
        "{}",
        d.logs()
    );
    assert!(is_ready_marked(&api.node("f-1")));
    assert_eq!(
        d.logs()
            .matches("the API refused an event; dropped")
            .count(),
        1,
        "one warning per streak:\n{}",
        d.logs()
    );
    assert!(!d.logs().contains("cannot update the node"), "{}", d.logs());
}

/// A wrong `POD_NAME` (404): the marks are held, one warning says why, and so does the Node's
/// condition (Unknown / PodUnreadable), where an operator looks.
#[test]
fn an_own_pod_the_api_cannot_find_is_said_on_the_node() {
    let api = ApiServer::start();
    api.create_node("f-2", json!({}), startup_taint());
    let kc = api.agent_kubeconfig("f-2", true);
    let t = Tree::untuned();
    let d = Daemon::start_kube(
        &t,
        &kc,
        "f-2",
        &[
            "--pod-name",
            "redis-node-tuner-wrong",
            "--pod-namespace",
            "redis-node-tuner",
        ],
    );
    let said = || {
        condition(&api.node("f-2"), COND).is_some_and(|c| {
            c["status"] == "Unknown"
                && c["reason"] == "PodUnreadable"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("redis-node-tuner-wrong"))
        })
    };
    assert!(
        wait_for(SECONDS, said),
        "{:#}\n{}",
        api.node("f-2"),
        d.logs()
    );
    assert_eq!(
        d.logs()
            .matches("cannot read the agent's own pod; node marks are held")
            .count(),
        1,
        "{}",
        d.logs()
    );
    // The kernel is enforced meanwhile.
    assert_eq!(t.get(OVERCOMMIT), "1\n");
}

/// A knob file that is not there (a wrong mount, a kernel without the knob's directory): a
/// `cannot read knob` line with `kind="missing"`, `/readyz` 503 naming the file, the failure
/// counted by kind; ready once it is there.
#[test]
fn a_missing_knob_file_is_reported_and_fails_readiness() {
    let t = Tree::untuned();
    let overcommit = t.path(OVERCOMMIT);
    std::fs::remove_file(&overcommit).expect("rm");
    let d = Daemon::start(&t, &["--interval", "200ms"]);
    assert!(
        wait_for(SECONDS, || http_get(&d.addr, "/readyz").is_ok_and(
            |(c, b)| c == 503 && b.contains("vm/overcommit_memory")
        )),
        "{:?}",
        http_get(&d.addr, "/readyz")
    );
    assert!(
        d.logs().contains("cannot read knob") && d.logs().contains("\"kind\":\"missing\""),
        "{}",
        d.logs()
    );
    t.put(OVERCOMMIT, "0\n");
    assert!(
        wait_for(SECONDS, || http_get(&d.addr, "/readyz")
            .is_ok_and(|(c, _)| c == 200)),
        "{}",
        d.logs()
    );
    assert_eq!(t.get(OVERCOMMIT), "1\n");
}

/// A read-only bind mount, undone on drop.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> ReadOnly {
        for args in [
            vec![
                "--bind",
                dir.to_str().unwrap_or_default(),
                dir.to_str().unwrap_or_default(),
            ],
            vec!["-o", "remount,bind,ro", dir.to_str().unwrap_or_default()],
        ] {
            let ok = Command::new("mount")
                .args(&args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "mount {args:?}");
        }
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The state directory turns read-only (a filesystem remounted ro after an error): no knob is
/// changed, since its original could not be recorded; `correction failed` with
/// `kind="journal"`, the failure counted by kind, `/readyz` 503 saying why.
#[test]
fn a_read_only_state_directory_blocks_every_write_and_says_why() {
    let t = Tree::untuned();
    std::fs::create_dir_all(t.state_dir()).expect("mkdir");
    let _ro = ReadOnly::mount(&t.state_dir());
    let d = Daemon::start(&t, &["--interval", "200ms"]);
    assert!(
        wait_for(SECONDS, || d.logs().contains("\"kind\":\"journal\"")),
        "{}",
        d.logs()
    );
    assert_eq!(
        t.get(OVERCOMMIT),
        "0\n",
        "changed without its original recorded"
    );
    let (code, body) = http_get(&d.addr, "/readyz").expect("readyz");
    assert!(
        code == 503 && body.contains("not changed") && body.contains("Read-only file system"),
        "{code} {body}"
    );
    assert!(
        sample(
            &d.metrics(),
            "redis_node_tuner_correction_failures_total{setting=\"vm.overcommit_memory\",kind=\"journal\"}"
        ) >= 1.0,
        "{}",
        d.metrics()
    );
}
