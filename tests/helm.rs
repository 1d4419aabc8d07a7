//! The Helm chart `deploy/helm/redis-node-tuner` with a real Helm (built from the Go module proxy
//! by tests/helm/build.sh): `helm lint --strict`; `helm template` of the default values and of
//! every example values file; the chart against `deploy/base` rendered by kustomize (every
//! object of the base has its twin in the chart, equal but for the labels Helm adds); no values
//! file rendering more privileges than the base or a DaemonSet that does not tolerate its own
//! taint; bad values refused by values.schema.json; every rendered profile accepted by the
//! agent; and the rendered objects applied with a server-side dry run to the real apiserver.

mod common;
use common::apiserver::ApiServer;
use common::helm::{chart, helm};
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const NS: &str = "redis-node-tuner";
const TAINT: &str = "redis-node-tuner.io/not-ready";
/// The labels the chart adds to deploy/base's (templates/_helpers.tpl "rnt.helmLabels").
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];
const CONFIG_MAP: &str = "redis-node-tuner-config";

/// `helm template` of the chart in namespace `ns` with these values files and `--set`s.
fn render(ns: &str, values: &[&Path], set: &[&str]) -> Result<String, Out> {
    let chart = chart();
    let mut args: Vec<String> = ["template", "redis-node-tuner"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(chart.to_string_lossy().into_owned());
    args.extend(["--namespace".to_string(), ns.to_string()]);
    for v in values {
        args.extend(["--values".to_string(), v.to_string_lossy().into_owned()]);
    }
    for s in set {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&args);
    if out.code == 0 {
        Ok(out.stdout)
    } else {
        Err(out)
    }
}

fn render_ok(ns: &str, values: &[&Path], set: &[&str]) -> String {
    render(ns, values, set)
        .unwrap_or_else(|out| panic!("helm template {values:?} {set:?}: {out:?}"))
}

/// The objects of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_name(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn by_kind_name(objs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for o in objs {
        let k = kind_name(&o);
        assert!(m.insert(k.clone(), o).is_none(), "{k} rendered twice");
    }
    m
}

fn kustomize_base() -> Vec<Value> {
    let out = Out::of(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(repo().join("deploy/base"))
            .output()
            .expect("kubectl kustomize"),
    );
    assert_eq!(out.code, 0, "kubectl kustomize deploy/base: {out:?}");
    objects(&out.stdout)
}

/// The examples under the chart's examples/ (documented in the README).
fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(chart().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "examples: {v:?}");
    v
}

/// Values files that must render, yet try to widen what the chart renders (tests/fixtures/helm).
fn edge_values() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/fixtures/helm"))
        .expect("tests/fixtures/helm")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("edge-") && n.ends_with(".yaml"))
        })
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

/// Every string with its runs of whitespace collapsed: kustomize's YAML library keeps an extra
/// line break in a folded scalar before a more-indented line, which YAML 1.2 (and the parser
/// here, reading Helm's output) does not (CEL, PromQL and JSON do not care).
fn collapse_whitespace(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.split_whitespace().collect::<Vec<_>>().join(" "),
        Value::Array(a) => a.iter_mut().for_each(collapse_whitespace),
        Value::Object(o) => o.values_mut().for_each(collapse_whitespace),
        _ => {}
    }
}

/// What may differ between a base object and its chart twin, removed from both: the labels
/// Helm adds, the ConfigMap generator's hash suffix (the chart rolls the DaemonSet with a
/// checksum annotation instead), the profile's text (compared as parsed YAML: the base's file
/// has comments), and whitespace inside strings.
fn normalize(mut o: Value) -> Value {
    if let Some(labels) = o["metadata"]["labels"].as_object_mut() {
        for l in HELM_LABELS {
            labels.remove(l);
        }
    }
    if o["kind"] == json!("ConfigMap")
        && o["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("{CONFIG_MAP}-")))
    {
        o["metadata"]["name"] = json!(CONFIG_MAP);
    }
    if o["kind"] == json!("ConfigMap") && o["metadata"]["name"] == json!(CONFIG_MAP) {
        let text = o["data"]["config.yaml"].as_str().unwrap_or("").to_string();
        let parsed: Value = serde_saphyr::from_str(&text).expect("profile YAML");
        o["data"]["config.yaml"] = parsed;
    }
    if o["kind"] == json!("DaemonSet") {
        let tpl = &mut o["spec"]["template"];
        if let Some(a) = tpl["metadata"]["annotations"].as_object_mut() {
            a.remove("checksum/config");
            if a.is_empty() {
                tpl["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("annotations"));
            }
        }
        if let Some(vols) = tpl["spec"]["volumes"].as_array_mut() {
            for v in vols {
                if v["configMap"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(CONFIG_MAP))
                {
                    v["configMap"]["name"] = json!(CONFIG_MAP);
                }
            }
        }
    }
    collapse_whitespace(&mut o);
    o
}

/// Every JSON path where `a` and `b` differ, with both values.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("  {path}:\n    base:  {a}\n    chart: {b}")),
        _ => {}
    }
}

/// The differences between the kustomize base and the chart rendered with these values, as
/// readable lines (empty: equal).
fn parity_problems(base: Vec<Value>, chart: Vec<Value>) -> Vec<String> {
    let base = by_kind_name(base.into_iter().map(normalize).collect());
    let chart = by_kind_name(chart.into_iter().map(normalize).collect());
    let mut problems = Vec::new();
    for (k, b) in &base {
        match chart.get(k) {
            None => problems.push(format!(
                "{k} is in deploy/base but missing from the chart: add its twin as a template \
                 under deploy/helm/redis-node-tuner/templates/"
            )),
            Some(c) => {
                let mut d = Vec::new();
                diff("", b, c, &mut d);
                if !d.is_empty() {
                    problems.push(format!("{k} differs:\n{}", d.join("\n")));
                }
            }
        }
    }
    for k in chart.keys().filter(|k| !base.contains_key(*k)) {
        problems.push(format!(
            "{k} is rendered by the chart but is not in deploy/base"
        ));
    }
    problems
}

#[test]
fn lint_strict_passes_for_the_defaults_and_every_example() {
    let chart = chart();
    let c = chart.to_string_lossy();
    let out = helm(&["lint", "--strict", &c]);
    println!("helm lint --strict {c}\n{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out:?}"
    );
    for ex in examples() {
        let e = ex.to_string_lossy();
        let out = helm(&["lint", "--strict", &c, "--values", &e]);
        assert_eq!(out.code, 0, "helm lint --strict -f {e}: {out:?}");
        assert!(out.stdout.contains("0 chart(s) failed"), "{e}: {out:?}");
    }
    // The chart's versions follow the agent's.
    let chart_yaml: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart.join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("package version");
    assert_eq!(chart_yaml["version"], json!(version), "Chart.yaml version");
    assert_eq!(
        chart_yaml["appVersion"],
        json!(version),
        "Chart.yaml appVersion"
    );
}

#[test]
fn chart_with_default_values_renders_the_objects_of_deploy_base() {
    // The Namespace is opt-in in the chart (`helm install` keeps its release in it, so it must
    // exist first): the one value turned on here.
    let chart = objects(&render_ok(NS, &[], &["namespace.create=true"]));
    let base = kustomize_base();
    let names: Vec<String> = base.iter().map(kind_name).collect();
    let problems = parity_problems(base, chart);
    assert!(
        problems.is_empty(),
        "deploy/base and the Helm chart (default values) drifted apart:\n{}",
        problems.join("\n")
    );
    println!(
        "parity: {} objects of deploy/base equal in the chart: {names:?}",
        names.len()
    );

    // Without namespace.create the chart renders exactly the same minus the Namespace.
    let default: Vec<String> = objects(&render_ok(NS, &[], &[]))
        .iter()
        .map(kind_name)
        .collect();
    let mut want = names.clone();
    want.retain(|n| n != &format!("Namespace/{NS}"));
    want = want
        .into_iter()
        .map(|n| {
            if n.starts_with(&format!("ConfigMap/{CONFIG_MAP}-")) {
                format!("ConfigMap/{CONFIG_MAP}")
            } else {
                n
            }
        })
        .collect();
    want.sort();
    let mut got = default;
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn parity_check_names_an_object_missing_from_the_chart() {
    // The comparison itself: a base object without a chart twin, and a changed field, are
    // reported by name (what the lead sees when deploy/base grows an object).
    let mut base = kustomize_base();
    base.push(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "redis-node-tuner", "namespace": NS},
        "spec": {}
    }));
    let mut chart = objects(&render_ok(NS, &[], &["namespace.create=true"]));
    for o in chart
        .iter_mut()
        .filter(|o| o["kind"] == json!("ClusterRole"))
    {
        o["rules"][0]["verbs"] = json!(["*"]);
    }
    let problems = parity_problems(base, chart).join("\n");
    assert!(
        problems.contains(
            "NetworkPolicy/redis-node-tuner is in deploy/base but missing from the chart"
        ),
        "{problems}"
    );
    assert!(
        problems.contains("ClusterRole/redis-node-tuner differs")
            && problems.contains(".rules[0].verbs"),
        "{problems}"
    );
}

/// The DaemonSet's fields that make up its privileges, from a rendered set of objects.
fn privileges(objs: &BTreeMap<String, Value>) -> Value {
    let ds = normalize(objs["DaemonSet/redis-node-tuner"].clone());
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    // `--condition-type T` (value conditionType) names the condition and grants nothing: what
    // the agent may write is the admission policy's, compared in `access`.
    let mut args = c["args"].clone();
    if let Some(a) = args.as_array_mut()
        && let Some(i) = a.iter().position(|x| x == "--condition-type")
        && i + 1 < a.len()
    {
        a.drain(i..i + 2);
    }
    json!({
        "containers": spec["containers"].as_array().map(Vec::len),
        "initContainers": spec["initContainers"],
        "ephemeralContainers": spec["ephemeralContainers"],
        "hostNetwork": spec["hostNetwork"],
        "hostPID": spec["hostPID"],
        "hostIPC": spec["hostIPC"],
        "hostUsers": spec["hostUsers"],
        "podSecurityContext": spec["securityContext"],
        "serviceAccountName": spec["serviceAccountName"],
        "automountServiceAccountToken": spec["automountServiceAccountToken"],
        "volumes": spec["volumes"],
        "securityContext": c["securityContext"],
        "volumeMounts": c["volumeMounts"],
        "args": args,
        "command": c["command"],
        "ports": c["ports"],
        "envFrom": c["envFrom"],
        "selector": ds["spec"]["selector"],
        "updateStrategy": ds["spec"]["updateStrategy"],
    })
}

/// RBAC and admission objects as rendered (normalized).
fn access(objs: &BTreeMap<String, Value>, admission: bool) -> Vec<Value> {
    objs.iter()
        .filter(|(k, _)| {
            ["ServiceAccount/", "ClusterRole", "Role/", "RoleBinding/"]
                .iter()
                .any(|p| k.starts_with(p))
                || (admission && k.starts_with("ValidatingAdmissionPolicy"))
        })
        .map(|(_, v)| normalize(v.clone()))
        .collect()
}

/// The own-taint toleration: exactly one, operator Exists, no effect (every effect), no
/// tolerationSeconds (for ever).
fn assert_tolerates_own_taint(what: &str, objs: &BTreeMap<String, Value>) {
    let ds = &objs["DaemonSet/redis-node-tuner"];
    let tolerations = ds["spec"]["template"]["spec"]["tolerations"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no tolerations: {ds:#}"));
    let own: Vec<&Value> = tolerations
        .iter()
        .filter(|t| t["key"] == json!(TAINT))
        .collect();
    assert_eq!(
        own,
        vec![&json!({"key": TAINT, "operator": "Exists"})],
        "{what}: the agent's own taint must be tolerated once, for every effect: {tolerations:?}"
    );
}

/// Runs the agent's `check` with the rendered profile over a fake tree: the profile is valid
/// (exit 0 or 1 in sync or not, 3 for a sysctl the fake tree lacks; never 2, a bad config).
fn assert_profile_accepted(what: &str, objs: &BTreeMap<String, Value>, dir: &Path) {
    let cm = &objs[&format!("ConfigMap/{CONFIG_MAP}")];
    let text = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    let file = dir.join(format!("{}.config.yaml", what.replace('/', "_")));
    std::fs::write(&file, text).expect("write profile");
    let t = Tree::untuned();
    let out = t.run(&["--config", &file.to_string_lossy(), "check"]);
    assert!(
        matches!(out.code, 0 | 1 | 3),
        "{what}: the agent refuses the rendered profile:\n{text}\n{out:?}"
    );
}

#[test]
fn no_values_file_renders_more_privileges_than_the_base_or_a_self_evicting_agent() {
    let base = by_kind_name(kustomize_base());
    let want = privileges(&base);
    let want_access = access(&base, true);
    let base_kinds: std::collections::BTreeSet<String> = base.keys().cloned().collect();
    let dir = tempfile::tempdir().expect("tempdir");

    let mut files: Vec<PathBuf> = examples();
    files.extend(edge_values());
    let mut cases: Vec<(String, Vec<PathBuf>)> = vec![("defaults".into(), vec![])];
    cases.extend(files.iter().map(|f| {
        (
            f.strip_prefix(repo()).unwrap_or(f).display().to_string(),
            vec![f.clone()],
        )
    }));
    for (what, values) in &cases {
        let values: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
        let objs = by_kind_name(objects(&render_ok(NS, &values, &[])));
        // Nothing that the base does not have (a ConfigMap name without the hash suffix).
        for k in objs.keys() {
            let k = if k == &format!("ConfigMap/{CONFIG_MAP}") {
                base_kinds
                    .iter()
                    .find(|b| b.starts_with(&format!("ConfigMap/{CONFIG_MAP}-")))
                    .cloned()
                    .unwrap_or_default()
            } else {
                k.clone()
            };
            assert!(
                base_kinds.contains(&k),
                "{what}: renders {k}, which deploy/base has not"
            );
        }
        let got = privileges(&objs);
        let mut d = Vec::new();
        diff("", &want, &got, &mut d);
        assert!(
            d.is_empty(),
            "{what}: the DaemonSet's privileges differ from deploy/base's:\n{}",
            d.join("\n")
        );
        let admission =
            objs.contains_key("ValidatingAdmissionPolicy/redis-node-tuner-own-node-marks");
        let got_access = access(&objs, admission);
        let want_access: Vec<Value> = want_access
            .iter()
            .filter(|o| {
                admission
                    || o["kind"]
                        .as_str()
                        .is_some_and(|k| !k.starts_with("Validating"))
            })
            .cloned()
            .collect();
        let mut d = Vec::new();
        diff("", &json!(want_access), &json!(got_access), &mut d);
        assert!(
            d.is_empty(),
            "{what}: RBAC/admission objects differ from deploy/base's:\n{}",
            d.join("\n")
        );
        assert_tolerates_own_taint(what, &objs);
        assert_profile_accepted(what, &objs, dir.path());
    }
}

#[test]
fn values_change_what_they_should_and_a_profile_change_rolls_the_daemonset() {
    let ex = chart().join("examples");
    let pool = by_kind_name(objects(&render_ok(NS, &[&ex.join("redis-pool.yaml")], &[])));
    let spec = &pool["DaemonSet/redis-node-tuner"]["spec"]["template"]["spec"];
    assert_eq!(
        spec["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "pool": "redis-db"})
    );
    assert_eq!(
        spec["tolerations"],
        json!([{"key": TAINT, "operator": "Exists"},
               {"key": "pool", "operator": "Equal", "value": "redis-db", "effect": "NoSchedule"}])
    );
    assert_eq!(
        spec["containers"][0]["image"],
        json!("registry.example.com/platform/redis-node-tuner:0.1.0")
    );
    let profile: Value = serde_saphyr::from_str(
        pool[&format!("ConfigMap/{CONFIG_MAP}")]["data"]["config.yaml"]
            .as_str()
            .expect("profile"),
    )
    .expect("profile YAML");
    assert_eq!(
        profile["sysctls"]["net.core.somaxconn"],
        json!({"at_least": 4096})
    );
    assert_eq!(
        profile["sysctls"]["vm.overcommit_memory"],
        json!({"equals": 1})
    );

    let ne = by_kind_name(objects(&render_ok(NS, &[&ex.join("noexecute.yaml")], &[])));
    let c = &ne["DaemonSet/redis-node-tuner"]["spec"]["template"]["spec"]["containers"][0];
    let env: BTreeMap<&str, &Value> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or(""), &e["value"]))
        .collect();
    assert_eq!(env["REDIS_NODE_TUNER_TAINT_EFFECT"], &json!("NoExecute"));
    assert_eq!(env["REDIS_NODE_TUNER_HEARTBEAT"], &json!("2m"));
    assert_eq!(env["REDIS_NODE_TUNER_INTERVAL"], &json!("500ms"));
    assert!(
        c["image"].as_str().is_some_and(|i| i.ends_with(
            ":0.1.0@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        )),
        "{c:#}"
    );
    assert!(ne.contains_key(&format!("Namespace/{NS}")));

    let off = by_kind_name(objects(&render_ok(
        NS,
        &[&ex.join("no-prometheus-operator.yaml")],
        &["admissionPolicy.enabled=false", "flowControl.enabled=false"],
    )));
    assert!(off.contains_key("DaemonSet/redis-node-tuner"), "{off:?}");
    for k in off.keys() {
        assert!(
            !k.starts_with("PodMonitor/")
                && !k.starts_with("PrometheusRule/")
                && !k.starts_with("ValidatingAdmission")
                && !k.starts_with("FlowSchema/")
                && !k.starts_with("PriorityLevelConfiguration/")
                && k != "ConfigMap/redis-node-tuner-dashboard",
            "{k} rendered with monitoring, admission and flow control off"
        );
    }

    // conditionType: passed as --condition-type, and let through the admission policy (the two
    // types of the agent are always; another one is added). Empty: no flag (the base's args).
    let args_and_types = |set: &[&str]| {
        let objs = by_kind_name(objects(&render_ok(NS, &[], set)));
        let args = objs["DaemonSet/redis-node-tuner"]["spec"]["template"]["spec"]["containers"][0]
            ["args"]
            .clone();
        let vars =
            &objs["ValidatingAdmissionPolicy/redis-node-tuner-own-node-marks"]["spec"]["variables"];
        let types = vars
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == json!("conditionTypes")))
            .map(|v| {
                v["expression"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            });
        (args, types)
    };
    let both = "['RedisKernelTuned', 'redis-node-tuner.io/KernelTuned']";
    assert_eq!(
        args_and_types(&[]),
        (json!(["run", "--listen", ":9977"]), Some(both.to_string()))
    );
    assert_eq!(
        args_and_types(&["conditionType=redis-node-tuner.io/KernelTuned"]),
        (
            json!([
                "run",
                "--listen",
                ":9977",
                "--condition-type",
                "redis-node-tuner.io/KernelTuned"
            ]),
            Some(both.to_string())
        )
    );
    assert_eq!(
        args_and_types(&["conditionType=example.com/Tuned"]),
        (
            json!([
                "run",
                "--listen",
                ":9977",
                "--condition-type",
                "example.com/Tuned"
            ]),
            Some(
                "['RedisKernelTuned', 'redis-node-tuner.io/KernelTuned', 'example.com/Tuned']"
                    .to_string()
            )
        )
    );

    // The alerts read the condition of the type the agent writes (kube-state-metrics'
    // kube_node_status_condition{condition}); the default keeps RedisKernelTuned.
    let rule_text = |set: &[&str]| {
        let objs = by_kind_name(objects(&render_ok(NS, &[], set)));
        serde_json::to_string(&objs["PrometheusRule/redis-node-tuner"]).expect("json")
    };
    assert!(rule_text(&[]).contains("condition=\\\"RedisKernelTuned\\\""));
    let custom = rule_text(&["conditionType=example.com/Tuned"]);
    assert!(
        custom.contains("condition=\\\"example.com/Tuned\\\"")
            && !custom.contains("RedisKernelTuned"),
        "{custom}"
    );

    // Another namespace: every namespaced object and the policies' user name follow it.
    let other = objects(&render_ok("tuning", &[], &[]));
    for o in &other {
        let ns = &o["metadata"]["namespace"];
        assert!(
            ns.is_null() || ns == &json!("tuning") || ns == &json!("default"),
            "{}: {ns}",
            kind_name(o)
        );
    }
    let text = serde_json::to_string(&other).expect("json");
    assert!(
        text.contains("system:serviceaccount:tuning:redis-node-tuner")
            && !text.contains("system:serviceaccount:redis-node-tuner:")
            && text.contains("job=\\\"tuning/redis-node-tuner\\\""),
        "the release namespace is not used everywhere"
    );
    // The dashboard's queries and the runbooks' commands too (not only the rules' expressions).
    let other_objs = by_kind_name(other.clone());
    for k in [
        "ConfigMap/redis-node-tuner-dashboard",
        "PrometheusRule/redis-node-tuner",
    ] {
        let t = serde_json::to_string(&other_objs[k]).expect("json");
        for stale in [
            "redis-node-tuner/redis-node-tuner",
            "namespace=\\\\\\\"redis-node-tuner",
            "namespace=\\\"redis-node-tuner",
            "-n redis-node-tuner ",
        ] {
            assert!(!t.contains(stale), "{k} still names {stale:?}: {t}");
        }
        assert!(t.contains("tuning/redis-node-tuner"), "{k}: {t}");
    }
    let fs = other
        .iter()
        .find(|o| o["kind"] == json!("FlowSchema"))
        .expect("FlowSchema rendered");
    assert_eq!(
        fs["spec"]["rules"][0]["subjects"][0]["serviceAccount"],
        json!({"namespace": "tuning", "name": "redis-node-tuner"}),
        "the FlowSchema matches the ServiceAccount of the release namespace"
    );

    // The checksum annotation: same profile, same checksum; another profile, another one.
    let checksum = |set: &[&str]| {
        let objs = by_kind_name(objects(&render_ok(NS, &[], set)));
        objs["DaemonSet/redis-node-tuner"]["spec"]["template"]["metadata"]["annotations"]
            ["checksum/config"]
            .as_str()
            .expect("checksum/config annotation")
            .to_string()
    };
    let a = checksum(&[]);
    assert_eq!(a.len(), 64, "{a}");
    assert_eq!(
        a,
        checksum(&["conditionType=redis-node-tuner.io/KernelTuned"])
    );
    assert_eq!(a, checksum(&["taintEffect=NoExecute"]));
    assert_ne!(
        a,
        checksum(&["profile.sysctls.net\\.core\\.somaxconn.at_least=4096"])
    );
}

#[test]
fn values_schema_refuses_bad_values_with_the_field_named() {
    let bad = repo().join("tests/fixtures/helm");
    let cases: [(&str, &[&str], &str); 12] = [
        ("own taint listed", &[], "bad-own-toleration.yaml"),
        ("unknown key", &["hostPID=true"], "hostPID"),
        ("taint effect", &["taintEffect=Evict"], "taintEffect"),
        (
            "condition type",
            &["conditionType=Kernel Tuned"],
            "conditionType",
        ),
        // The kubelet's condition: the policy would let the agent overwrite it.
        (
            "kubelet's condition type",
            &["conditionType=Ready"],
            "conditionType",
        ),
        // A quote would end the admission policy's CEL string.
        (
            "condition type injection",
            &["conditionType=a.io/x']+['Ready"],
            "conditionType",
        ),
        ("image injection", &[], "bad-image-injection.yaml"),
        ("node selector injection", &[], "bad-node-selector.yaml"),
        (
            "resources",
            &["resources.limits.nvidia\\.com/gpu=1"],
            "resources",
        ),
        (
            "security context",
            &["securityContext.privileged=true"],
            "securityContext",
        ),
        ("heartbeat", &["heartbeat=five minutes"], "heartbeat"),
        (
            "profile key",
            &["profile.sysctl.vm\\.swappiness.at_most=1"],
            "profile",
        ),
    ];
    for (what, set, needle) in cases {
        let file = needle.ends_with(".yaml").then(|| bad.join(needle));
        let values: Vec<&Path> = file.iter().map(PathBuf::as_path).collect();
        let out = match render(NS, &values, set) {
            Ok(y) => panic!("{what}: rendered although invalid:\n{y}"),
            Err(out) => out,
        };
        // The own taint is refused by the template, with a message of its own.
        let refusal = if what == "own taint listed" {
            "the chart always tolerates the agent's own taint"
        } else {
            "values don't meet the specifications of the schema"
        };
        assert!(out.stderr.contains(refusal), "{what}: {out:?}");
        let field = if needle.ends_with(".yaml") {
            std::fs::read_to_string(bad.join(needle))
                .expect("fixture")
                .lines()
                .find_map(|l| l.strip_prefix("# field: "))
                .expect("fixture names its field")
                .to_string()
        } else {
            needle.to_string()
        };
        assert!(
            out.stderr.contains(&field),
            "{what}: error does not name {field}: {out:?}"
        );
    }
}

#[test]
fn rendered_objects_pass_a_server_side_dry_run_on_the_real_apiserver() {
    let api = ApiServer::start();
    let dir = api.dir.path().to_path_buf();
    api.ok(&["create", "namespace", NS]);
    api.ok(&[
        "label",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    let dry_run = |what: &str, yaml: &str| {
        let f = dir.join(format!("{}.yaml", what.replace('/', "_")));
        std::fs::write(&f, yaml).expect("write rendered");
        let n = objects(yaml).len();
        let out = api.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            &f.to_string_lossy(),
        ]);
        assert_eq!(out.code, 0, "{what}: {out:?}");
        let applied = out
            .stdout
            .lines()
            .filter(|l| l.ends_with("serverside-applied (server dry run)"))
            .count();
        assert_eq!(applied, n, "{what}: {out:?}");
        println!("{what}: {n} objects accepted by a server-side dry run");
    };
    // Before the prometheus-operator CRDs exist: the chart with monitoring off installs.
    let no_po = chart().join("examples/no-prometheus-operator.yaml");
    dry_run("no-prometheus-operator", &render_ok(NS, &[&no_po], &[]));
    let out = Out::of(
        Command::new("bash")
            .arg(repo().join("deploy/crds/fetch.sh"))
            .stderr(Stdio::piped())
            .output()
            .expect("run deploy/crds/fetch.sh"),
    );
    assert_eq!(out.code, 0, "deploy/crds/fetch.sh: {out:?}");
    let crds = dir.join("crds.yaml");
    std::fs::write(&crds, &out.stdout).expect("write CRDs");
    api.ok(&["apply", "--server-side", "-f", &crds.to_string_lossy()]);
    api.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]);
    dry_run("defaults", &render_ok(NS, &[], &[]));
    for ex in examples() {
        let what = ex
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        dry_run(&what, &render_ok(NS, &[&ex], &[]));
    }
}
