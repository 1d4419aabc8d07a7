//! `run` over a fake tree: drift is corrected, counters move, /metrics passes promtool.

mod common;
use common::*;

use std::process::Stdio;
use std::time::{Duration, Instant};

/// The value of one sample line, e.g. `name{labels}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn drift_behind_its_back_is_corrected_and_counted() {
    let t = Tree::untuned();
    let d = Daemon::start(&t, &["--interval", "500ms"]);
    assert!(
        wait_for(Duration::from_secs(10), || http_get(&d.addr, "/readyz")
            .is_ok_and(|(c, _)| c == 200)),
        "never ready: {:?}",
        http_get(&d.addr, "/readyz")
    );
    assert_eq!(t.get(OVERCOMMIT), "1\n");
    assert_eq!(t.get(SOMAXCONN), "2048\n");
    let m = d.metrics();
    let drift = r#"redis_node_tuner_drift_detected_total{setting="vm.overcommit_memory"}"#;
    let ok =
        r#"redis_node_tuner_corrections_total{setting="vm.overcommit_memory",result="success"}"#;
    assert_eq!(sample(&m, drift), Some(1.0), "{m}");
    assert_eq!(sample(&m, ok), Some(1.0), "{m}");
    assert_eq!(sample(&m, "redis_node_tuner_node_ready"), Some(1.0), "{m}");

    // Something else puts overcommit back to 0.
    let injected = Instant::now();
    t.put(OVERCOMMIT, "0\n");
    assert!(
        wait_for(Duration::from_secs(10), || t.get(OVERCOMMIT) == "1\n"),
        "not corrected"
    );
    eprintln!("corrected after {:?} (interval 500ms)", injected.elapsed());
    let m = d.metrics();
    assert_eq!(sample(&m, drift), Some(2.0), "{m}");
    assert_eq!(sample(&m, ok), Some(2.0), "{m}");
    assert_eq!(
        sample(
            &m,
            r#"redis_node_tuner_setting_actual_value{setting="vm.overcommit_memory"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"redis_node_tuner_setting_desired_value{setting="net.core.somaxconn"}"#
        ),
        Some(2048.0)
    );
    assert!(
        m.contains("redis_node_tuner_check_duration_seconds_count"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "redis_node_tuner_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    // The originals journal still holds the first value.
    let j = std::fs::read_to_string(t.state_dir().join("originals.json")).expect("journal");
    assert!(j.contains("\"value\": \"0\""), "{j}");

    let (code, logs) = d.sigterm();
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.contains("drift corrected") && logs.contains("SIGTERM"),
        "{logs}"
    );
    // Every log line is JSON.
    for l in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}

#[test]
fn live_metrics_pass_promtool() {
    let promtool = require("promtool");
    let t = Tree::untuned();
    let d = Daemon::start(&t, &[]);
    assert!(wait_for(Duration::from_secs(10), || has_line(
        &d.metrics(),
        "redis_node_tuner_node_ready 1"
    )));
    let body = d.metrics();
    promtool_check_metrics(&promtool, &body);
    for name in [
        "redis_node_tuner_setting_in_sync",
        "redis_node_tuner_node_ready",
        "redis_node_tuner_drift_detected_total",
        "redis_node_tuner_corrections_total",
        "redis_node_tuner_setting_desired_value",
        "redis_node_tuner_setting_actual_value",
        "redis_node_tuner_setting_value_info",
        "redis_node_tuner_check_duration_seconds_bucket",
        "redis_node_tuner_build_info",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
}

/// `promtool check metrics` on an exposition; fails the test with promtool's words.
fn promtool_check_metrics(promtool: &std::path::Path, body: &str) {
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("write");
    }
    let out = Out::of(child.wait_with_output().expect("promtool"));
    assert_eq!(
        out.code, 0,
        "promtool check metrics failed: {out:?}\n{body}"
    );
}

#[test]
fn failures_are_counted_by_kind_and_pass_promtool() {
    let promtool = require("promtool");
    let t = Tree::untuned();
    let d = Daemon::start(&t, &["--interval", "200ms"]);
    assert!(wait_for(Duration::from_secs(10), || has_line(
        &d.metrics(),
        "redis_node_tuner_node_ready 1"
    )));
    // THP defrag drifts behind its back and cannot be written back (a directory took the
    // file's place; the agent reads the drifted value through its kept descriptor).
    t.break_knob(THP_DEFRAG, "always defer defer+madvise [madvise] never\n");
    let series = "redis_node_tuner_correction_failures_total{setting=\"thp.defrag\",kind=\"io\"}";
    assert!(
        wait_for(Duration::from_secs(10), || d.metrics().contains(series)),
        "{}",
        d.metrics()
    );
    let body = d.metrics();
    assert!(
        body.contains("redis_node_tuner_setting_contested{setting=\"thp.defrag\"} 0"),
        "{body}"
    );
    promtool_check_metrics(&promtool, &body);
}

#[test]
fn readyz_is_503_with_reasons_while_a_knob_cannot_be_set() {
    let t = Tree::untuned();
    // somaxconn is a directory: it can be neither read nor written.
    std::fs::remove_file(t.path(SOMAXCONN)).expect("rm");
    std::fs::create_dir(t.path(SOMAXCONN)).expect("mkdir");
    let d = Daemon::start(&t, &["--interval", "200ms"]);
    assert!(wait_for(Duration::from_secs(10), || t.get(OVERCOMMIT) == "1\n"));
    // The pass that wrote it publishes its report at its end.
    assert!(wait_for(Duration::from_secs(10), || http_get(
        &d.addr, "/readyz"
    )
    .is_ok_and(|(_, b)| !b.contains("no check yet"))));
    let (code, body) = http_get(&d.addr, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("net.core.somaxconn"), "{body}");
    // The agent keeps running and keeps enforcing the rest.
    t.put(OVERCOMMIT, "2\n");
    assert!(wait_for(Duration::from_secs(10), || t.get(OVERCOMMIT) == "1\n"));
    assert_eq!(http_get(&d.addr, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(&d.addr, "/nope").expect("404").0, 404);
}

#[test]
fn unusable_listen_address_exits_5() {
    let t = Tree::untuned();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = t.run(&["run", "--listen", &addr]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains(&addr), "{out:?}");
}
