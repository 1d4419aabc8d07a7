//! The monitoring of deploy/base/monitoring: the PrometheusRule's alerts (promtool check + unit
//! tests), the Grafana dashboard's model and PromQL, and both against a live agent in Kubernetes
//! mode (real kube-apiserver) scraped by a real Prometheus evaluating the real rules.

mod common;
use common::apiserver::ApiServer;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PREFIX: &str = "redis_node_tuner_";
/// The job label a PodMonitor redis-node-tuner/redis-node-tuner gives the agents' targets.
const JOB: &str = "redis-node-tuner/redis-node-tuner";
const SECONDS: Duration = Duration::from_secs(30);

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/base/monitoring")
        .join(file)
}

fn read(file: &str) -> String {
    let p = monitoring(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(file: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn prometheus_rule() -> Value {
    yaml("prometheusrule.yaml")
}

fn dashboard() -> Value {
    serde_json::from_str(&read("dashboard.json")).expect("dashboard.json is JSON")
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// Every rule of every group of the PrometheusRule.
fn rules(pr: &Value) -> Vec<&Value> {
    arr(&pr["spec"]["groups"])
        .iter()
        .flat_map(|g| arr(&g["rules"]))
        .collect()
}

/// Writes the PrometheusRule's `spec` as a plain rule file (JSON is YAML) and a copy of
/// rules_test.yaml next to it, as rules_test.yaml's `rule_files` expects.
fn extracted_rules(dir: &Path) -> PathBuf {
    let spec = &prometheus_rule()["spec"];
    let file = dir.join("rules.json");
    std::fs::write(&file, serde_json::to_string_pretty(spec).expect("json")).expect("write");
    std::fs::write(dir.join("rules_test.yaml"), read("rules_test.yaml")).expect("write");
    file
}

fn promtool(dir: &Path, args: &[&str]) -> Out {
    Out::of(
        Command::new(require("promtool"))
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run promtool"),
    )
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a [Value], out: &mut Vec<&'a Value>) {
        for p in ps {
            out.push(p);
            walk(arr(&p["panels"]), out);
        }
    }
    let mut out = vec![];
    walk(arr(&d["panels"]), &mut out);
    out
}

/// (panel title, refId, expr) of every query of the dashboard.
fn dashboard_queries(d: &Value) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for p in panels(d) {
        for t in arr(&p["targets"]) {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    t["refId"].as_str().unwrap_or("?").to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    out
}

/// The PromQL of the templating variables: `label_values(SELECTOR, label)` -> SELECTOR.
fn variable_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for v in arr(&d["templating"]["list"]) {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .or(v["definition"].as_str())
            .unwrap_or_else(|| panic!("variable without a query: {v}"));
        let q = q.trim();
        let sel = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _label)| sel.trim())
            .unwrap_or(q);
        out.push((
            v["name"].as_str().unwrap_or("?").to_string(),
            sel.to_string(),
        ));
    }
    out
}

/// Grafana's variables replaced by what they expand to, for Prometheus: every template
/// variable by its All value `.*`.
fn expand(d: &Value, expr: &str, rate_interval: &str) -> String {
    expand_with(d, expr, rate_interval, &[])
}

/// [`expand`], with some template variables set to one value (`("cluster", "eu-1")`).
fn expand_with(d: &Value, expr: &str, rate_interval: &str, set: &[(&str, &str)]) -> String {
    let mut e = expr
        .replace("${__rate_interval}", rate_interval)
        .replace("$__rate_interval", rate_interval)
        .replace("${__interval}", "1m")
        .replace("$__interval", "1m")
        .replace("${__range}", "1h")
        .replace("$__range", "1h");
    let mut names: Vec<&str> = arr(&d["templating"]["list"])
        .iter()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| v["name"].as_str())
        .collect();
    // Longest first, so `$node` does not eat the start of `$nodes`.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        let value = set
            .iter()
            .find(|(name, _)| *name == n)
            .map_or(".*", |(_, v)| *v);
        e = e
            .replace(&format!("${{{n}}}"), value)
            .replace(&format!("${n}"), value);
    }
    assert!(
        !e.contains('$'),
        "unknown Grafana variable in {expr:?} (expanded: {e:?})"
    );
    e
}

/// Metric names starting with `redis_node_tuner_` in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find(PREFIX) {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail.find(|c| !is_ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_ident) {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The series selectors of a PromQL expression that lack the `cluster=~"$cluster"` matcher:
/// every `name{...}` outside strings, and every bare `redis_node_tuner_*` name.
fn selectors_without_cluster(expr: &str) -> Vec<String> {
    const MATCHER: &str = "cluster=~\"$cluster\"";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let mut out = vec![];
    let (mut i, mut quoted) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        if quoted {
            if c == '\\' {
                i += 1;
            } else if c == '"' {
                quoted = false;
            }
            i += 1;
            continue;
        }
        if c == '"' {
            quoted = true;
            i += 1;
            continue;
        }
        if is_ident(c) && !c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if chars.get(i) == Some(&'{') {
                // The matchers: up to the closing brace, strings skipped.
                let mut j = i + 1;
                let mut q = false;
                while j < chars.len() && (q || chars[j] != '}') {
                    if chars[j] == '\\' && q {
                        j += 1;
                    } else if chars[j] == '"' {
                        q = !q;
                    }
                    j += 1;
                }
                let matchers: String = chars[i + 1..j.min(chars.len())].iter().collect();
                if !matchers.contains(MATCHER) {
                    out.push(format!("{name}{{{matchers}}}"));
                }
                i = j;
            } else if name.starts_with(PREFIX) {
                out.push(name);
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Pairs of panels (by title) whose gridPos rectangles overlap.
fn overlapping_panels(ps: &[&Value]) -> Vec<(String, String)> {
    let rect = |p: &Value| {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_u64().unwrap_or(0);
        (n("x"), n("y"), n("w"), n("h"))
    };
    let mut out = vec![];
    for (i, a) in ps.iter().enumerate() {
        for b in &ps[i + 1..] {
            let ((ax, ay, aw, ah), (bx, by, bw, bh)) = (rect(a), rect(b));
            if ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah {
                out.push((
                    a["title"].as_str().unwrap_or("?").to_string(),
                    b["title"].as_str().unwrap_or("?").to_string(),
                ));
            }
        }
    }
    out
}

/// The panels of the row titled `title`: those after it, up to the next row.
fn row_panels<'a>(d: &'a Value, title: &str) -> Vec<&'a Value> {
    let top = arr(&d["panels"]);
    let start = top
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == title)
        .unwrap_or_else(|| panic!("no row {title:?}"));
    top[start + 1..]
        .iter()
        .take_while(|p| p["type"] != "row")
        .chain(arr(&top[start]["panels"]))
        .collect()
}

/// The panel titled `title`'s first query.
fn panel_expr(d: &Value, title: &str) -> String {
    panels(d)
        .into_iter()
        .find(|p| p["title"] == title)
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .unwrap_or_else(|| panic!("no panel {title:?} with a query"))
        .to_string()
}

/// Every `redis_node_tuner_*` name used by the alert rules and the dashboard, with where.
fn used_metric_names() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let pr = prometheus_rule();
    for r in rules(&pr) {
        let expr = str_of(&r["expr"], "expr");
        let who = format!("alert {}", r["alert"].as_str().unwrap_or("?"));
        for n in metric_names(expr) {
            used.entry(n).or_default().push(who.clone());
        }
    }
    let d = dashboard();
    for (title, refid, expr) in dashboard_queries(&d) {
        for n in metric_names(&expr) {
            used.entry(n)
                .or_default()
                .push(format!("panel {title:?} {refid}"));
        }
    }
    for (name, q) in variable_queries(&d) {
        for n in metric_names(&q) {
            used.entry(n).or_default().push(format!("variable ${name}"));
        }
    }
    used
}

/// An exposition (Prometheus text 0.0.4): sample names, and family -> type.
fn exposition(body: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name.to_string(), kind.trim().to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, types)
}

/// The family of a sample name: `_bucket`/`_sum`/`_count` of a histogram map to the histogram.
fn family(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        match name.strip_suffix(suffix) {
            Some(base) if types.get(base).is_some_and(|t| t == "histogram") => {
                return base.to_string();
            }
            _ => {}
        }
    }
    name.to_string()
}

// ---------------------------------------------------------------------------------------------
// Static checks.

#[test]
fn prometheus_rule_is_well_formed() {
    let pr = prometheus_rule();
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(pr["metadata"]["name"], "redis-node-tuner");
    assert_eq!(pr["metadata"]["namespace"], "redis-node-tuner");
    let rs = rules(&pr);
    assert!(rs.len() >= 5, "{} rules", rs.len());
    let mut names = BTreeSet::new();
    for r in rs {
        let name = str_of(&r["alert"], "every rule is an alert");
        assert!(names.insert(name), "alert {name} defined twice");
        assert!(!str_of(&r["expr"], name).trim().is_empty(), "{name}: expr");
        let sev = str_of(&r["labels"]["severity"], &format!("{name}: severity"));
        assert!(
            ["critical", "warning", "info"].contains(&sev),
            "{name}: severity {sev}"
        );
        for a in ["summary", "description", "runbook"] {
            let text = str_of(&r["annotations"][a], &format!("{name}: annotation {a}"));
            assert!(
                text.len() > 20,
                "{name}: annotation {a} too short: {text:?}"
            );
        }
    }
    for required in [
        "RedisNodeTunerRedisAtRisk",
        "RedisNodeTunerStaleReady",
        "RedisNodeTunerMissingOnTaintedNode",
        "RedisNodeTunerNodeNotReady",
        "RedisNodeTunerCorrectionFailing",
        "RedisNodeTunerSettingFlapping",
        "RedisNodeTunerDown",
        "RedisNodeTunerAbsent",
        "RedisNodeTunerKubeAPIUnreachable",
        "RedisNodeTunerKubeAPIErrors",
    ] {
        assert!(names.contains(required), "{required} missing: {names:?}");
    }
}

/// The severity model (README "Alerts"): only what affects Redis pages; every alert waits (`for`).
#[test]
fn only_alerts_about_redis_page_and_every_alert_waits() {
    let pr = prometheus_rule();
    let mut critical = BTreeSet::new();
    for r in rules(&pr) {
        let name = str_of(&r["alert"], "alert");
        let f = str_of(&r["for"], &format!("{name}: for"));
        assert!(
            f.ends_with('m') && f.trim_end_matches('m').parse::<u32>().is_ok_and(|m| m >= 5),
            "{name}: for {f:?} (at least 5m)"
        );
        let sev = str_of(&r["labels"]["severity"], name);
        assert!(["critical", "warning"].contains(&sev), "{name}: {sev}");
        if sev == "critical" {
            critical.insert(name);
        }
    }
    assert_eq!(
        critical,
        BTreeSet::from([
            "RedisNodeTunerMissingOnTaintedNode",
            "RedisNodeTunerRedisAtRisk",
            "RedisNodeTunerStaleReady",
        ])
    );
}

/// What the rules read besides the agent's own series: Prometheus' `up` and kube-state-metrics,
/// each with the labels its documentation gives (kube-state-metrics docs/metrics/cluster/
/// node-metrics.md, workload/pod-metrics.md, workload/daemonset-metrics.md). `job`, `instance`
/// are target labels. kube_node_labels' `label_*` needs `--metric-labels-allowlist`.
const EXTERNAL_METRICS: [(&str, &[&str]); 8] = [
    ("up", &["job"]),
    (
        "kube_node_labels",
        &["node", "label_redis_node_tuner_io_ready"],
    ),
    (
        "kube_node_status_condition",
        &["node", "condition", "status"],
    ),
    ("kube_node_spec_taint", &["node", "key", "value", "effect"]),
    (
        "kube_pod_info",
        &[
            "namespace",
            "pod",
            "node",
            "created_by_kind",
            "created_by_name",
        ],
    ),
    ("kube_pod_status_ready", &["namespace", "pod", "condition"]),
    ("kube_pod_status_phase", &["namespace", "pod", "phase"]),
    (
        "kube_daemonset_status_desired_number_scheduled",
        &["namespace", "daemonset"],
    ),
];
const EXTERNAL_DAEMONSET: [&str; 2] = [
    "kube_daemonset_status_number_unavailable",
    "kube_daemonset_status_updated_number_scheduled",
];

/// Every selector `name{matchers}` of an expression: (name, label names matched).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = vec![];
    let b = expr.as_bytes();
    for (i, _) in expr.match_indices('{') {
        let start = expr[..i].rfind(|c: char| !is_ident(c)).map_or(0, |p| p + 1);
        let name = &expr[start..i];
        let end = i + expr[i..].find('}').expect("closing brace");
        let labels = expr[i + 1..end]
            .split(',')
            .filter_map(|m| {
                let m = m.trim();
                m.find(['=', '!']).map(|p| m[..p].trim().to_string())
            })
            .collect();
        assert!(
            !name.is_empty() && b[i - 1] != b' ',
            "selector without a name in {expr}"
        );
        out.push((name.to_string(), labels));
    }
    out
}

#[test]
fn rules_select_the_agents_job_and_only_documented_external_series() {
    assert_eq!(
        selectors("max(up{job=\"a\", node!=\"b\"}) unless kube_pod_info{namespace=~\"x\"}"),
        vec![
            (
                "up".to_string(),
                vec!["job".to_string(), "node".to_string()]
            ),
            ("kube_pod_info".to_string(), vec!["namespace".to_string()]),
        ]
    );
    let external: BTreeMap<&str, &[&str]> = EXTERNAL_METRICS
        .iter()
        .copied()
        .chain(
            EXTERNAL_DAEMONSET
                .iter()
                .map(|n| (*n, &["namespace", "daemonset"][..])),
        )
        .collect();
    let job = format!("job=\"{JOB}\"");
    let mut seen = BTreeSet::new();
    for r in rules(&prometheus_rule()) {
        let name = str_of(&r["alert"], "alert");
        let expr = str_of(&r["expr"], name);
        let sels = selectors(expr);
        // A bare agent metric (no selector) would not follow the Helm chart's job rewrite.
        assert_eq!(
            metric_names(expr).len(),
            sels.iter()
                .filter(|(n, _)| n.starts_with(PREFIX))
                .map(|(n, _)| n)
                .collect::<BTreeSet<_>>()
                .len(),
            "{name}: every agent metric is a selector"
        );
        assert_eq!(
            sels.iter()
                .filter(|(n, _)| n.starts_with(PREFIX) || n == "up")
                .count(),
            expr.matches(&job).count(),
            "{name}: every agent selector and `up` matches {job}: {expr}"
        );
        for (metric, labels) in sels {
            seen.insert(metric.clone());
            if metric.starts_with(PREFIX) {
                continue;
            }
            let known = external.get(metric.as_str()).unwrap_or_else(|| {
                panic!("{name}: {metric} is neither the agent's nor in EXTERNAL_METRICS")
            });
            for l in labels {
                assert!(
                    known.contains(&l.as_str()),
                    "{name}: {metric} has no label {l} (documented: {known:?})"
                );
            }
        }
    }
    for n in external.keys() {
        assert!(seen.contains(*n), "{n} is listed but no rule uses it");
    }
}

#[test]
fn alertmanager_inhibition_snippet_is_valid_and_names_real_alerts() {
    let snippet = yaml("alertmanager-inhibit.yaml");
    let inhibit = arr(&snippet["inhibit_rules"]);
    assert!(!inhibit.is_empty(), "{snippet}");
    let names: Vec<String> = rules(&prometheus_rule())
        .iter()
        .map(|r| str_of(&r["alert"], "alert").to_string())
        .collect();
    for rule in inhibit {
        for side in ["source_matchers", "target_matchers"] {
            for m in arr(&rule[side]) {
                let m = str_of(m, side);
                if let Some(n) = m.strip_prefix("alertname=\"") {
                    let n = n.trim_end_matches('"');
                    assert!(names.iter().any(|a| a == n), "{m}: no such alert");
                }
            }
        }
        assert_eq!(rule["equal"], json!(["node"]), "{rule}");
    }
    // amtool checks a whole configuration: the snippet under a minimal route.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = json!({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]});
    config["inhibit_rules"] = json!(inhibit);
    let f = dir.path().join("alertmanager.yml");
    std::fs::write(&f, config.to_string()).expect("write");
    let out = Out::of(
        Command::new(require("amtool"))
            .args(["check-config", &f.to_string_lossy()])
            .output()
            .expect("run amtool"),
    );
    assert_eq!(out.code, 0, "amtool check-config: {out:?}");
    assert!(out.stdout.contains("SUCCESS"), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!(" - {} inhibit rules", inhibit.len())),
        "{out:?}"
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_file = extracted_rules(dir.path());
    let check = promtool(
        dir.path(),
        &["check", "rules", &rules_file.to_string_lossy()],
    );
    assert_eq!(check.code, 0, "promtool check rules: {check:?}");
    let test = promtool(dir.path(), &["test", "rules", "rules_test.yaml"]);
    assert_eq!(test.code, 0, "promtool test rules: {test:?}");
    assert!(test.stdout.contains("SUCCESS"), "{test:?}");
}

#[test]
fn every_alert_is_unit_tested_firing_and_not_firing() {
    let t = yaml("rules_test.yaml");
    assert_eq!(
        t["rule_files"],
        json!(["rules.json"]),
        "the test reads the extracted spec"
    );
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in arr(&t["tests"]) {
        for at in arr(&case["alert_rule_test"]) {
            let name = str_of(&at["alertname"], "alertname").to_string();
            if arr(&at["exp_alerts"]).is_empty() {
                silent.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for r in rules(&prometheus_rule()) {
        let name = str_of(&r["alert"], "alert");
        assert!(firing.contains(name), "no unit test where {name} fires");
        assert!(
            silent.contains(name),
            "no unit test where {name} stays quiet"
        );
    }
}

#[test]
fn dashboard_is_a_grafana_model_on_a_datasource_variable() {
    let d = dashboard();
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    assert!(d["title"].as_str().is_some_and(|u| !u.is_empty()), "title");
    assert!(d["schemaVersion"].as_u64().is_some(), "schemaVersion");
    let vars = arr(&d["templating"]["list"]);
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let want = json!({"type": "prometheus", "uid": "${datasource}"});
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"], want, "variable {}", v["name"]);
    }
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
        assert!(
            x + w <= 24 && g["h"].as_u64().is_some(),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], want, "panel {title:?}");
        let targets = arr(&p["targets"]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"], want, "panel {title:?} target");
            let r = str_of(&t["refId"], "refId");
            assert!(refs.insert(r), "panel {title:?}: refId {r} twice");
            assert!(t["expr"].as_str().is_some(), "panel {title:?} {r}: no expr");
        }
    }
    // What the dashboard is for.
    let all: String = dashboard_queries(&d)
        .into_iter()
        .map(|(_, _, e)| e + "\n")
        .collect();
    for needle in [
        "redis_node_tuner_node_ready",
        "min by (node, setting) (redis_node_tuner_setting_in_sync{",
        "redis_node_tuner_drift_detected_total",
        "redis_node_tuner_corrections_total",
        "redis_node_tuner_kube_requests_total{cluster=~\"$cluster\", result=\"error\"",
        "count by (version) (redis_node_tuner_build_info{",
        "redis_node_tuner_check_duration_seconds_bucket",
        "redis_node_tuner_foreign_writes_total",
        "redis_node_tuner_correction_failures_total",
        "redis_node_tuner_setting_contested",
        "redis_node_tuner_writer_watch_active",
        "redis_node_tuner_setting_value_info",
    ] {
        assert!(all.contains(needle), "no panel queries {needle}");
    }
    let matrix = panels(&d)
        .into_iter()
        .find(|p| {
            arr(&p["transformations"])
                .iter()
                .any(|t| t["id"] == "groupingToMatrix")
        })
        .expect("a node x setting matrix");
    let opts = &arr(&matrix["transformations"])[0]["options"];
    assert_eq!(
        (&opts["rowField"], &opts["columnField"]),
        (&json!("node"), &json!("setting"))
    );
}

#[test]
fn dashboard_panels_are_described_laid_out_apart_and_filtered_by_cluster() {
    let d = dashboard();
    // The cluster variable: from the agents' series, All matching series without the label.
    let vars = arr(&d["templating"]["list"]);
    let pos = |n: &str| vars.iter().position(|v| v["name"] == n);
    let cluster = &vars[pos("cluster").expect("a cluster variable")];
    assert_eq!(cluster["type"], "query");
    assert_eq!(
        cluster["query"]["query"],
        "label_values(redis_node_tuner_build_info, cluster)"
    );
    assert_eq!(
        (
            &cluster["includeAll"],
            &cluster["allValue"],
            &cluster["multi"]
        ),
        (&json!(true), &json!(".*"), &json!(true))
    );
    assert!(pos("cluster") < pos("node") && pos("node") < pos("setting"));
    for (name, q) in variable_queries(&d) {
        if name != "cluster" {
            assert_eq!(
                selectors_without_cluster(&q),
                Vec::<String>::new(),
                "variable ${name}"
            );
        }
    }
    // Every query of every panel is filtered by it.
    for (title, refid, expr) in dashboard_queries(&d) {
        assert_eq!(
            selectors_without_cluster(&expr),
            Vec::<String>::new(),
            "panel {title:?} {refid}: {expr}"
        );
    }
    // Described, and laid out without overlaps; rows span the width.
    let all = panels(&d);
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        if p["type"] == "row" {
            assert_eq!(
                (&p["gridPos"]["w"], &p["gridPos"]["h"], &p["gridPos"]["x"]),
                (&json!(24), &json!(1), &json!(0)),
                "row {title:?}"
            );
            continue;
        }
        let desc = p["description"].as_str().unwrap_or("");
        assert!(desc.len() > 40, "panel {title:?}: description {desc:?}");
    }
    assert_eq!(overlapping_panels(&all), Vec::<(String, String)>::new());
    let mut titles = BTreeSet::new();
    for p in all.iter().filter(|p| p["type"] != "row") {
        assert!(
            titles.insert(p["title"].as_str().unwrap_or("?")),
            "title {} twice",
            p["title"]
        );
    }

    // Who wrote it: the writer watch's metrics, by writer and kind.
    let who: String = row_panels(&d, "Who wrote it")
        .iter()
        .flat_map(|p| arr(&p["targets"]))
        .filter_map(|t| t["expr"].as_str())
        .map(|e| format!("{e}\n"))
        .collect();
    for needle in [
        "sum by (node, setting, writer, action) (",
        "sum by (writer, setting) (",
        "redis_node_tuner_foreign_writes_total{",
        "sum by (kind, setting) (",
        "sum by (node, setting, kind) (",
        "redis_node_tuner_correction_failures_total{",
        "redis_node_tuner_setting_contested{",
        "max by (node, mode, source, reason) (redis_node_tuner_writer_watch_active{",
        "source=~\"fanotify|sysctl\"",
        "[$__range]",
        "offset $__range",
    ] {
        assert!(
            who.contains(needle),
            "row Who wrote it: no {needle:?} in\n{who}"
        );
    }
    // THP's words, and drift from the counter, not the gauge.
    assert!(
        panel_expr(&d, "THP actual values: node x setting")
            .contains("max by (node, setting, actual) (redis_node_tuner_setting_value_info{")
    );
    assert!(
        panel_expr(&d, "Desired vs actual values as text (THP words included)")
            .contains("by (node, setting, desired, actual) (redis_node_tuner_setting_value_info{")
    );
    for title in [
        "Drifts per interval (from counters)",
        "Drift timeline (from counters)",
    ] {
        assert!(
            panel_expr(&d, title).contains("increase(redis_node_tuner_drift_detected_total{"),
            "{title}"
        );
    }
}

#[test]
fn the_layout_and_cluster_checks_find_what_they_look_for() {
    // So that the dashboard checks above can fail.
    assert_eq!(
        selectors_without_cluster(
            "sum(rate(redis_node_tuner_x{cluster=~\"$cluster\", a=\"{b}\"}[1m])) / up{job=\"j\"} + redis_node_tuner_y or vector(0)"
        ),
        ["up{job=\"j\"}", "redis_node_tuner_y"]
    );
    assert!(
        selectors_without_cluster(
            "count by (node) (redis_node_tuner_x{cluster=~\"$cluster\"} offset 5m) > bool 0"
        )
        .is_empty()
    );
    let p = |t: &str, x: u64, y: u64, w: u64, h: u64| json!({"title": t, "gridPos": {"x": x, "y": y, "w": w, "h": h}});
    let (a, b, c, e) = (
        p("a", 0, 0, 12, 8),
        p("b", 12, 0, 12, 8),
        p("c", 11, 7, 4, 4),
        p("e", 0, 8, 24, 1),
    );
    assert!(overlapping_panels(&[&a, &b, &e]).is_empty());
    assert_eq!(
        overlapping_panels(&[&a, &b, &c, &e]),
        [
            ("a".to_string(), "c".to_string()),
            ("b".to_string(), "c".to_string()),
            ("c".to_string(), "e".to_string())
        ]
    );
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses every expression as a recording rule.
    let d = dashboard();
    let mut rules = vec![];
    for (i, (title, refid, expr)) in dashboard_queries(&d).into_iter().enumerate() {
        rules.push(
            json!({"record": format!("dashboard:query_{i}"), "expr": expand(&d, &expr, "5m"),
            "labels": {"panel": title, "ref": refid}}),
        );
    }
    for (name, q) in variable_queries(&d) {
        rules.push(
            json!({"record": format!("dashboard:variable_{name}"), "expr": expand(&d, &q, "5m")}),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("dashboard.rules.json");
    std::fs::write(
        &f,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .expect("write");
    let out = promtool(dir.path(), &["check", "rules", &f.to_string_lossy()]);
    assert_eq!(out.code, 0, "dashboard PromQL: {out:?}");
}

#[test]
fn metric_names_are_found_and_normalised() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(redis_node_tuner_check_duration_seconds_bucket{x=\"redis_node_tuner\"}[5m]))) / xredis_node_tuner_no"
        ),
        BTreeSet::from(["redis_node_tuner_check_duration_seconds_bucket".to_string()])
    );
    let (_, types) = exposition(
        "# TYPE redis_node_tuner_check_duration_seconds histogram\n# TYPE redis_node_tuner_x_count gauge\n",
    );
    assert_eq!(
        family("redis_node_tuner_check_duration_seconds_sum", &types),
        "redis_node_tuner_check_duration_seconds"
    );
    assert_eq!(
        family("redis_node_tuner_x_count", &types),
        "redis_node_tuner_x_count"
    );
}

// ---------------------------------------------------------------------------------------------
// Live: the agent in Kubernetes mode, a real Prometheus scraping it and evaluating the rules.

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `prometheus` scraping one agent every second with the labels a PodMonitor gives it, and
/// evaluating the extracted PrometheusRule every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(agent: &str, node: &str) -> Prometheus {
        let bin = require("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = extracted_rules(dir.path());
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{
                "job_name": JOB,
                "static_configs": [{"targets": [agent], "labels": {
                    "namespace": "redis-node-tuner",
                    "pod": format!("redis-node-tuner-{node}"),
                    "node": node,
                }}],
            }],
        });
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config.to_string()).expect("write");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, addr, dir };
        assert!(
            wait_for(SECONDS, || http_get(&p.addr, "/-/ready")
                .is_ok_and(|(c, _)| c == 200)),
            "prometheus not ready: {}",
            p.logs()
        );
        p
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path).expect("prometheus API");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {code} {body}"));
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let d = self.api(&format!("/api/v1/query?query={}", urlencode(expr)));
        arr(&d["result"]).to_vec()
    }

    /// Every pending or firing alert.
    fn alerts(&self) -> Vec<Value> {
        arr(&self.api("/api/v1/alerts")["alerts"]).to_vec()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_alert(alerts: &[Value], name: &str, state: &str, setting: Option<&str>) -> bool {
    alerts.iter().any(|a| {
        a["labels"]["alertname"] == name
            && a["state"] == state
            && setting.is_none_or(|s| a["labels"]["setting"] == s)
    })
}

#[test]
fn live_agent_exposes_every_metric_used_and_prometheus_evaluates_rules_and_panels() {
    let node = "obs-1";
    let mut api = ApiServer::start();
    api.create_node(node, json!({"pool": "redis"}), json!([]));
    let kc = api.agent_kubeconfig(node, false);
    let t = Tree::untuned();
    // The writer watch observes (the default, said here): inotify and, as root, fanotify run
    // on the tree's files.
    let d = Daemon::start_kube(&t, &kc, node, &["--writers", "observe"]);
    assert!(
        wait_for(SECONDS, || {
            let m = d.metrics();
            has_line(&m, "redis_node_tuner_node_ready 1")
                && m.contains("redis_node_tuner_kube_requests_total{")
        }),
        "no Kubernetes requests counted:\n{}\n{}",
        d.metrics(),
        d.logs()
    );

    // A real Prometheus scrapes the agent with the PodMonitor's labels and runs the rules.
    let prom = Prometheus::start(&d.addr, node);
    assert!(
        wait_for(SECONDS, || prom
            .query("redis_node_tuner_build_info")
            .iter()
            .any(|s| s["metric"]["node"] == node
                && s["metric"]["job"] == JOB
                && s["metric"]["namespace"] == "redis-node-tuner")),
        "agent not scraped: {}",
        prom.logs()
    );

    // Trouble: somaxconn drifts and cannot be corrected; the Kubernetes API goes away.
    t.break_knob(SOMAXCONN, "128\n");
    assert!(
        wait_for(SECONDS, || has_line(
            &d.metrics(),
            "redis_node_tuner_node_ready 0"
        )),
        "{}",
        d.logs()
    );
    api.stop();
    assert!(
        wait_for(SECONDS, || {
            let m = d.metrics();
            m.lines().any(|l| {
                l.starts_with("redis_node_tuner_kube_requests_total{")
                    && l.contains("result=\"error\"")
            })
        }),
        "no API error counted:\n{}",
        d.metrics()
    );

    // One alert per problem: the knob that cannot be corrected on a node without Redis is
    // NodeNotReady (not CorrectionFailing, nor RedisAtRisk); the API gone is
    // KubeAPIUnreachable (not KubeAPIErrors). kube-state-metrics is not there: its rules stay
    // quiet.
    let expected = [
        ("RedisNodeTunerNodeNotReady", "pending", None),
        ("RedisNodeTunerKubeAPIUnreachable", "pending", None),
    ];
    assert!(
        has_line(&d.metrics(), "redis_node_tuner_redis_processes 0"),
        "{}",
        d.metrics()
    );
    let ok = wait_for(Duration::from_secs(60), || {
        let a = prom.alerts();
        expected
            .iter()
            .all(|(n, s, setting)| has_alert(&a, n, s, *setting))
    });
    let alerts = prom.alerts();
    assert!(ok, "expected {expected:?}, got {alerts:#?}");
    for a in &alerts {
        let name = a["labels"]["alertname"].as_str().unwrap_or("?");
        assert!(
            expected.iter().any(|(n, ..)| *n == name),
            "unexpected alert {name}: {a:#}"
        );
        assert_eq!(a["labels"]["node"], node, "{a:#}");
        for ann in ["summary", "description", "runbook"] {
            let text = a["annotations"][ann].as_str().unwrap_or("");
            assert!(
                !text.is_empty() && !text.contains("<no value>"),
                "{name} {ann}: {text:?}"
            );
        }
        assert!(
            a["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains(node)),
            "{a:#}"
        );
    }
    let groups = prom.api("/api/v1/rules");
    for g in arr(&groups["groups"]) {
        for r in arr(&g["rules"]) {
            assert_eq!(r["health"], "ok", "rule {}: {r:#}", r["name"]);
        }
    }

    // Who wrote it: a foreign write the writer watch undoes within a second is named and
    // counted, and the counter-based drift panels show it (the in-sync gauge, sampled at each
    // scrape, almost never does).
    let dash = dashboard();
    let panel = |title: &str| expand(&dash, &panel_expr(&dash, title), "1m");
    let value = |s: &Value| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let overcommit = |rows: &[Value]| -> f64 {
        rows.iter()
            .filter(|s| s["metric"]["setting"] == "vm.overcommit_memory")
            .map(value)
            .sum()
    };
    let drifts = panel("Drifts per interval (from counters)");
    let before = overcommit(&prom.query(&drifts));
    assert_eq!(before, 0.0, "overcommit drifted before the foreign write");
    let knob = t.path(OVERCOMMIT);
    // The shell lives on for 2 s, so its name can still be read when the watch names it.
    let written = t.path("written");
    let write = Instant::now();
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo 0 > '{}' && : > '{}' && sleep 2",
            knob.display(),
            written.display()
        ))
        .spawn()
        .expect("sh");
    assert!(
        wait_for(Duration::from_secs(5), || written.exists()),
        "the shell did not write"
    );
    assert!(
        wait_for(Duration::from_secs(1), || t.get(OVERCOMMIT).trim() == "1"),
        "the foreign write was not corrected within a second: {:?}\n{}",
        t.get(OVERCOMMIT),
        d.logs()
    );
    eprintln!("foreign write corrected within {:?}", write.elapsed());
    let status = sh.wait().expect("sh");
    assert!(status.success(), "{status:?}");
    let named = has_line(
        &d.metrics(),
        "redis_node_tuner_writer_watch_active{mode=\"observe\",source=\"fanotify\",reason=\"active\"} 1",
    );
    // fanotify names the shell; inotify alone counts it as unknown.
    let writer = if named { "sh" } else { "unknown" };
    let who = panel("Who wrote it: foreign writes by node, setting and writer");
    let seen = wait_for(SECONDS, || {
        prom.query(&who).iter().any(|s| {
            s["metric"]["node"] == node
                && s["metric"]["setting"] == "vm.overcommit_memory"
                && s["metric"]["writer"] == writer
                && s["metric"]["action"] == "corrected"
                && value(s) >= 1.0
        })
    });
    assert!(
        seen,
        "no foreign write by {writer} in {who}: {:#?}\n{}",
        prom.query(&who),
        d.metrics()
    );
    assert!(
        wait_for(SECONDS, || overcommit(&prom.query(&drifts)) >= 1.0),
        "the drift counter panel missed the drift: {:#?}",
        prom.query(&drifts)
    );
    let timeline = panel("Drift timeline (from counters)");
    assert_eq!(
        overcommit(&prom.query(&timeline)),
        1.0,
        "{:#?}",
        prom.query(&timeline)
    );
    eprintln!(
        "in-sync gauge of vm.overcommit_memory as Prometheus saw it (min over the last minute): {:?}",
        prom.query(
            "min_over_time(redis_node_tuner_setting_in_sync{setting=\"vm.overcommit_memory\"}[1m])"
        )
        .first()
        .map(value)
    );

    // Contested (drift found by 3 passes in a row, each right after a correction): a shell
    // rewrites the knob in a tight loop (at most 5000000 times, tens of seconds), killed as soon
    // as Prometheus has seen it. `1<>` opens without O_TRUNC: a sysctl write is atomic, and a
    // tree file emptied by `>` would read as an error between two writes (no drift pass).
    let mut storm = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while [ $i -lt 5000000 ]; do echo 0 1<> '{}'; i=$((i+1)); done",
            knob.display()
        ))
        .spawn()
        .expect("sh");
    let contested = panel("Contested settings (any time in the range)");
    let was_contested = wait_for(SECONDS, || {
        prom.query(&contested).iter().any(|s| {
            s["metric"]["setting"] == "vm.overcommit_memory" && s["metric"]["node"] == node
        })
    });
    let _ = storm.kill();
    let _ = storm.wait();
    assert!(
        was_contested,
        "never contested: {:#?}\n{}",
        prom.query(&contested),
        d.metrics()
    );
    assert!(
        wait_for(SECONDS, || t.get(OVERCOMMIT).trim() == "1"),
        "not corrected after the storm\n{}",
        d.logs()
    );

    // Every name the rules and the dashboard use is in the live exposition (now that a foreign
    // write and a failure made the series that appear with their first increment).
    let body = d.metrics();
    let (samples, types) = exposition(&body);
    let used = used_metric_names();
    assert!(used.len() >= 10, "{used:?}");
    // Series of each Redis process found: none here (tests/procs.rs exposes them with real
    // Redis processes), and an empty family is not in the exposition: registered is enough.
    let per_process = |n: &str| {
        n == "redis_node_tuner_redis_process_in_sync"
            && include_str!("../src/metrics.rs").contains("\"redis_process_in_sync\",")
    };
    let mut missing = vec![];
    for (name, who) in &used {
        let fam = family(name, &types);
        if per_process(name) {
            continue;
        }
        if !samples.contains(name) || !types.contains_key(&fam) {
            missing.push(format!("{name} (family {fam}), used by {}", who.join(", ")));
        }
    }
    assert!(
        missing.is_empty(),
        "not exposed by the live agent:\n  {}\n--- /metrics\n{body}",
        missing.join("\n  ")
    );
    let used_families: BTreeSet<String> = used.keys().map(|n| family(n, &types)).collect();
    let unused: Vec<&String> = types
        .keys()
        .filter(|f| f.starts_with(PREFIX) && !used_families.contains(*f))
        .collect();
    eprintln!("metric families exposed but used by no alert or panel: {unused:?}");

    // Every dashboard query and variable answers, with the agent's series.
    let mut queries: Vec<(String, String)> = dashboard_queries(&dash)
        .into_iter()
        .map(|(title, refid, e)| (format!("panel {title:?} {refid}"), e))
        .collect();
    queries.extend(
        variable_queries(&dash)
            .into_iter()
            .map(|(n, q)| (format!("variable ${n}"), q)),
    );
    // Only kube-state-metrics' series are missing here.
    let may_be_empty = |e: &str| e.contains("kube_daemonset_");
    let mut empty = vec![];
    let answered = wait_for(SECONDS, || {
        empty.clear();
        for (who, e) in &queries {
            let r = prom.query(&expand(&dash, e, "1m"));
            if r.is_empty() && !may_be_empty(e) {
                empty.push(format!("{who}: {e}"));
            }
        }
        empty.is_empty()
    });
    assert!(answered, "queries without data:\n  {}", empty.join("\n  "));
    // $cluster filters every query: above, its All value `.*` matched series without the label
    // (a single-cluster Prometheus); another cluster's name leaves nothing but `or vector(0)`.
    let mut leaked = vec![];
    for (who, e) in queries.iter().filter(|(who, _)| who != "variable $cluster") {
        let other = expand_with(&dash, e, "1m", &[("cluster", "no-such-cluster")]);
        for s in prom.query(&other) {
            if s["metric"].as_object().is_none_or(|m| !m.is_empty()) || s["value"][1] != "0" {
                leaked.push(format!("{who}: {other}: {s}"));
            }
        }
    }
    assert!(
        leaked.is_empty(),
        "not filtered by $cluster:\n  {}",
        leaked.join("\n  ")
    );
    let nodes = prom.query("redis_node_tuner_build_info");
    assert!(
        nodes.iter().all(|s| s["metric"]["node"] == node),
        "{nodes:?}"
    );
    let matrix_expr = panels(&dash)
        .into_iter()
        .find(|p| {
            arr(&p["transformations"])
                .iter()
                .any(|t| t["id"] == "groupingToMatrix")
        })
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .expect("matrix panel query")
        .to_string();
    let matrix = prom.query(&expand(&dash, &matrix_expr, "1m"));
    assert!(
        matrix
            .iter()
            .any(|s| s["metric"]["setting"] == "net.core.somaxconn"
                && s["metric"]["node"] == node
                && s["value"][1] == "0"),
        "{matrix:#?}"
    );
    drop(d);
}
