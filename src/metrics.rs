//! Prometheus metrics (prometheus-client), all prefixed `redis_node_tuner_`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::agent::{Event, Report};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SettingLabel {
    pub setting: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CorrectionLabels {
    pub setting: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub setting: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForeignWriteLabels {
    pub setting: String,
    /// The writer's process name, or `other` past [`WRITER_NAMES_MAX`] distinct names.
    pub writer: String,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub mode: &'static str,
    /// `inotify`, `fanotify` or `sysctl`.
    pub source: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabel {
    /// `pod:<ns>/<name>`, `unit:<name>.service` or `pid:<pid>`.
    pub owner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerCheckLabels {
    pub owner: String,
    /// `overcommit`, `thp`, `somaxconn`, `backlog`.
    pub check: &'static str,
}

/// A knob's values as text (`thp.enabled`'s `never`, `net.core.somaxconn`'s `4096`): the one
/// series per knob of `setting_value_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValueLabels {
    pub setting: String,
    /// The profile's value as the status shows it (`never`, `1`, `>= 2048`, `madvise|never`).
    pub desired: String,
    /// The value read from the knob (THP: the selected word).
    pub actual: String,
}

/// Longest `desired`/`actual` label value kept (in bytes); a longer one is cut at a character
/// boundary and ends with `…`. Text sysctls can be long (`ip_local_reserved_ports`).
pub const VALUE_LABEL_MAX: usize = 64;

fn clip(s: &str) -> String {
    if s.len() <= VALUE_LABEL_MAX {
        return s.to_string();
    }
    let mut end = VALUE_LABEL_MAX - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Distinct `writer` label values kept; later names are counted as `other`. Process names are
/// at most 15 bytes, and a node has few writers of kernel settings: this bounds the series at
/// settings × (this + 1) × 3 actions even if something forks writers with random names.
pub const WRITER_NAMES_MAX: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The agent's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    in_sync: Family<SettingLabel, Gauge>,
    enforced: Family<SettingLabel, Gauge>,
    node_ready: Gauge,
    drift: Family<SettingLabel, Counter>,
    corrections: Family<CorrectionLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    contested: Family<SettingLabel, Gauge>,
    desired: Family<SettingLabel, Gauge>,
    actual: Family<SettingLabel, Gauge>,
    values: Family<ValueLabels, Gauge>,
    /// Each knob's series of `values`, to remove it when the value changes.
    shown_values: std::sync::Mutex<std::collections::HashMap<String, ValueLabels>>,
    check_duration: Histogram,
    initialized: AtomicBool,
    /// Kubernetes API requests, by verb and result (used by the Kubernetes reporter).
    pub kube_requests: Family<RequestLabels, Counter>,
    foreign_writes: Family<ForeignWriteLabels, Counter>,
    writer_names: std::sync::Mutex<std::collections::HashSet<String>>,
    watch_active: Family<WatchLabels, Gauge>,
    watch_lost: Counter,
    watch_overflows: Counter,
    writes_dropped: Counter,
    lock_active: Family<ReasonLabel, Gauge>,
    events_dropped: Family<ReasonLabel, Counter>,
    /// 1 while the Kubernetes API answers, 0 during an outage (Kubernetes mode only: no labels,
    /// created on first use).
    pub kube_api_reachable: Family<Vec<(String, String)>, Gauge>,
    /// Outages of the Kubernetes API (Kubernetes mode).
    pub kube_api_outages: Counter,
    redis_processes: Gauge,
    redis_view_sees_host: Gauge,
    redis_in_sync: Family<OwnerCheckLabels, Gauge>,
    redis_listen_backlog: Family<OwnerLabel, Gauge>,
    redis_somaxconn: Family<OwnerLabel, Gauge>,
    redis_anon_hugepages: Family<OwnerLabel, Gauge>,
    /// The owners of the last scan's series, to remove those of processes that went away.
    redis_owners: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn label(s: &str) -> SettingLabel {
    SettingLabel {
        setting: s.to_string(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("redis_node_tuner");
        let m = Metrics {
            in_sync: Family::default(),
            enforced: Family::default(),
            node_ready: Gauge::default(),
            drift: Family::default(),
            corrections: Family::default(),
            failures: Family::default(),
            contested: Family::default(),
            desired: Family::default(),
            actual: Family::default(),
            values: Family::default(),
            shown_values: Default::default(),
            // 5 µs .. ~80 ms
            check_duration: Histogram::new(exponential_buckets(0.000_005, 2.0, 15)),
            kube_requests: Family::default(),
            foreign_writes: Family::default(),
            writer_names: Default::default(),
            watch_active: Family::default(),
            watch_lost: Counter::default(),
            watch_overflows: Counter::default(),
            writes_dropped: Counter::default(),
            lock_active: Family::default(),
            events_dropped: Family::default(),
            kube_api_reachable: Family::default(),
            kube_api_outages: Counter::default(),
            redis_processes: Gauge::default(),
            redis_view_sees_host: Gauge::default(),
            redis_in_sync: Family::default(),
            redis_listen_backlog: Family::default(),
            redis_somaxconn: Family::default(),
            redis_anon_hugepages: Family::default(),
            redis_owners: Default::default(),
            initialized: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "setting_in_sync",
            "1 when the knob matches the profile (or does not apply to this kernel), else 0",
            m.in_sync.clone(),
        );
        registry.register(
            "setting_enforced",
            "1 when the knob is in enforce mode, 0 in audit mode",
            m.enforced.clone(),
        );
        registry.register(
            "node_ready",
            "1 when every enforce-mode knob is in sync",
            m.node_ready.clone(),
        );
        registry.register(
            "drift_detected",
            "Times a knob was found out of sync after being in sync (or at start)",
            m.drift.clone(),
        );
        registry.register(
            "corrections",
            "Correction attempts by result (success, failure)",
            m.corrections.clone(),
        );
        registry.register(
            "correction_failures",
            "Failed correction attempts by the kind of failure (permission, read_only, invalid, missing, netns_unverified, ...)",
            m.failures.clone(),
        );
        registry.register(
            "setting_contested",
            "1 while the knob has been corrected on consecutive passes (something keeps rewriting it)",
            m.contested.clone(),
        );
        registry.register(
            "setting_desired_value",
            "Desired value of numeric knobs (the bound, for at_least / at_most)",
            m.desired.clone(),
        );
        registry.register(
            "setting_actual_value",
            "Value read from numeric knobs",
            m.actual.clone(),
        );
        registry.register(
            "setting_value_info",
            "1 per knob, with its desired and actual value as text (THP's words included); absent while unreadable",
            m.values.clone(),
        );
        registry.register(
            "check_duration_seconds",
            "Time of one full observe-and-correct pass",
            m.check_duration.clone(),
        );
        registry.register(
            "kube_requests",
            "Kubernetes API requests by verb and result",
            m.kube_requests.clone(),
        );
        registry.register(
            "foreign_writes",
            "Writes to a profile knob by another process, by writer (process name) and action (observed, corrected, refused)",
            m.foreign_writes.clone(),
        );
        registry.register(
            "writer_watch_active",
            "1 per watcher (source: inotify, fanotify, sysctl) that runs; 0 with the reason it does not (off, permission, no_btf, ...)",
            m.watch_active.clone(),
        );
        registry.register(
            "writer_watch_events_lost",
            "Sysctl-watcher events the kernel dropped because the ring buffer was full (the pass still corrects)",
            m.watch_lost.clone(),
        );
        registry.register(
            "writer_watch_overflows",
            "Times the inotify or fanotify queue overflowed (every knob then got a pass)",
            m.watch_overflows.clone(),
        );
        registry.register(
            "foreign_writes_dropped",
            "Named foreign writes not kept between two passes (more than 16 writers of one knob); each still wakes a pass",
            m.writes_dropped.clone(),
        );
        registry.register(
            "kube_events_dropped",
            "Kubernetes events not published, by reason: refused (the API refused it for good, e.g. 403/422), queue_full (more than 100 waited), reporter_behind (more than 1024 waited for the reporter)",
            m.events_dropped.clone(),
        );
        registry.register(
            "writer_lock_active",
            "writers: lock only: 1 while the kernel refuses writes that would leave the profile, 0 with the reason it does not",
            m.lock_active.clone(),
        );
        registry.register(
            "kube_api_reachable",
            "1 while the Kubernetes API answers, 0 while it does not (no connection, timeouts, 429, 5xx)",
            m.kube_api_reachable.clone(),
        );
        registry.register(
            "kube_api_outages",
            "Times the Kubernetes API became unreachable",
            m.kube_api_outages.clone(),
        );
        registry.register(
            "redis_processes",
            "Redis processes found on the host by the last scan",
            m.redis_processes.clone(),
        );
        registry.register(
            "redis_view_sees_host",
            "1 when the Redis process scan sees the host's processes (hostPID or bare metal), 0 when it sees only the agent's own container: then redis_processes says nothing about Redis on the node",
            m.redis_view_sees_host.clone(),
        );
        registry.register(
            "redis_process_in_sync",
            "1 when a Redis process's own view of a setting (check: overcommit, thp, somaxconn, backlog) is in sync, 0 when not; absent while unknown or not applicable",
            m.redis_in_sync.clone(),
        );
        registry.register(
            "redis_process_listen_backlog",
            "The smallest backlog the kernel gives a Redis process's TCP listeners (min(tcp-backlog, somaxconn at listen time))",
            m.redis_listen_backlog.clone(),
        );
        registry.register(
            "redis_process_somaxconn",
            "net.core.somaxconn of a Redis process's network namespace",
            m.redis_somaxconn.clone(),
        );
        registry.register(
            "redis_process_anon_hugepages_bytes",
            "AnonHugePages of a Redis process (smaps_rollup)",
            m.redis_anon_hugepages.clone(),
        );
        // A gauge rather than an OpenMetrics info: promtool's text parser rejects `info`.
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information (always 1)", build);
        Metrics { registry, ..m }
    }

    /// Counts one foreign write to `setting` by the process named `writer`.
    pub fn foreign_write(&self, o: &crate::agent::Outcome) {
        let writer = {
            let mut names = self.writer_names.lock().unwrap_or_else(|p| p.into_inner());
            if names.contains(&o.writer) || names.len() < WRITER_NAMES_MAX {
                names.insert(o.writer.clone());
                o.writer.clone()
            } else {
                "other".to_string()
            }
        };
        self.foreign_writes
            .get_or_create(&ForeignWriteLabels {
                setting: o.knob.clone(),
                writer,
                action: o.action.as_str(),
            })
            .inc_by(o.count);
    }

    /// Each watcher's state: running (`reason` = `active`), or why not; and the lock's.
    pub fn writer_watch(&self, status: &crate::writers::Status) {
        let mode = status.mode.as_str();
        self.watch_active.clear();
        for (source, r) in status.sources() {
            let reason = r.as_ref().err().map_or("active", |u| u.reason);
            self.watch_active
                .get_or_create(&WatchLabels {
                    mode,
                    source,
                    reason,
                })
                .set(i64::from(r.is_ok()));
        }
        self.lock_active.clear();
        if let Some(lock) = &status.lock {
            let reason = lock.as_ref().err().map_or("active", |u| u.reason);
            self.lock_active
                .get_or_create(&ReasonLabel { reason })
                .set(i64::from(lock.is_ok()));
        }
    }

    /// Kubernetes events dropped, by reason (`refused`, `queue_full`, `reporter_behind`).
    pub fn events_dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.events_dropped
                .get_or_create(&ReasonLabel { reason })
                .inc_by(n);
        }
    }

    /// Sysctl events lost, VFS queue overflows, named writes dropped from the inbox.
    pub fn writer_losses(&self, lost: u64, overflows: u64, dropped: u64) {
        self.watch_lost.inc_by(lost);
        self.watch_overflows.inc_by(overflows);
        self.writes_dropped.inc_by(dropped);
    }

    /// Records a scan of Redis processes: a series per process and check, those of processes
    /// that went away removed.
    pub fn redis_view(&self, scan: &crate::procs::Scan) {
        self.redis_processes.set(scan.processes.len() as i64);
        self.redis_view_sees_host.set(i64::from(scan.sees_host));
        let mut owners = self.redis_owners.lock().unwrap_or_else(|p| p.into_inner());
        let now: std::collections::HashSet<String> = scan
            .processes
            .iter()
            .map(|p| p.owner_label.clone())
            .collect();
        for gone in owners.difference(&now) {
            let l = OwnerLabel {
                owner: gone.clone(),
            };
            self.redis_listen_backlog.remove(&l);
            self.redis_somaxconn.remove(&l);
            self.redis_anon_hugepages.remove(&l);
            for check in crate::procs::CHECKS {
                self.redis_in_sync.remove(&OwnerCheckLabels {
                    owner: gone.clone(),
                    check,
                });
            }
        }
        use crate::procs::Verdict;
        for p in &scan.processes {
            let owner = p.owner_label.clone();
            for (check, v) in &p.checks {
                let l = OwnerCheckLabels {
                    owner: owner.clone(),
                    check,
                };
                match v {
                    Verdict::InSync | Verdict::OutOfSync => {
                        self.redis_in_sync
                            .get_or_create(&l)
                            .set(i64::from(*v == Verdict::InSync));
                    }
                    Verdict::Unknown | Verdict::NotApplicable => {
                        self.redis_in_sync.remove(&l);
                    }
                }
            }
            let l = OwnerLabel { owner };
            for (family, value) in [
                (&self.redis_listen_backlog, p.listen_backlog.map(i64::from)),
                (&self.redis_somaxconn, p.netns.somaxconn.map(i64::from)),
                (
                    &self.redis_anon_hugepages,
                    p.thp
                        .anon_hugepages_bytes
                        .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
                ),
            ] {
                match value {
                    Some(v) => {
                        family.get_or_create(&l).set(v);
                    }
                    None => {
                        family.remove(&l);
                    }
                }
            }
        }
        *owners = now;
    }

    /// Records the duration of a pass whose report did not change.
    pub fn observe_duration(&self, took: Duration) {
        self.check_duration.observe(took.as_secs_f64());
    }

    /// Records one pass.
    pub fn observe(&self, report: &Report, events: &[Event], took: Duration) {
        self.observe_duration(took);
        self.node_ready.set(i64::from(report.ready));
        let first = !self.initialized.swap(true, Ordering::Relaxed);
        for k in &report.settings {
            let l = label(&k.name);
            self.in_sync.get_or_create(&l).set(i64::from(k.in_sync));
            self.enforced
                .get_or_create(&l)
                .set(i64::from(k.mode == crate::profile::Mode::Enforce));
            self.contested.get_or_create(&l).set(i64::from(k.contested));
            if first {
                // Counters exist from the start, so rate() and absent() work.
                let _ = self.drift.get_or_create(&l);
                for result in ["success", "failure"] {
                    let _ = self.corrections.get_or_create(&CorrectionLabels {
                        setting: k.name.clone(),
                        result,
                    });
                }
            }
            if let Some(d) = k.desired_number {
                self.desired.get_or_create(&l).set(d);
            }
            match k.actual_number {
                Some(a) => {
                    self.actual.get_or_create(&l).set(a);
                }
                None => {
                    self.actual.remove(&l);
                }
            }
        }
        self.show_values(report);
        for e in events {
            match e {
                Event::DriftDetected { knob, .. } => {
                    self.drift.get_or_create(&label(knob)).inc();
                }
                Event::Corrected { knob, .. } => {
                    self.corrections
                        .get_or_create(&CorrectionLabels {
                            setting: knob.clone(),
                            result: "success",
                        })
                        .inc();
                }
                Event::CorrectionFailed { knob, kind, .. } => {
                    self.corrections
                        .get_or_create(&CorrectionLabels {
                            setting: knob.clone(),
                            result: "failure",
                        })
                        .inc();
                    self.failures
                        .get_or_create(&FailureLabels {
                            setting: knob.clone(),
                            kind: kind.as_str(),
                        })
                        .inc();
                }
                Event::ReadFailed { .. }
                | Event::Contested { .. }
                | Event::Lock { .. }
                | Event::RedisViewOutOfSync { .. } => {}
            }
        }
    }

    /// One `setting_value_info` series per readable knob of the report: the one of its old
    /// value, of an unreadable knob, and of a knob no longer in the report removed.
    fn show_values(&self, report: &Report) {
        let mut shown = self.shown_values.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = std::collections::HashMap::new();
        for k in &report.settings {
            if let Some(actual) = &k.actual {
                let l = ValueLabels {
                    setting: k.name.clone(),
                    desired: clip(&k.desired),
                    actual: clip(actual),
                };
                self.values.get_or_create(&l).set(1);
                now.insert(k.name.clone(), l);
            }
        }
        for (name, old) in shown.drain() {
            if now.get(&name) != Some(&old) {
                self.values.remove(&old);
            }
        }
        *shown = now;
    }

    /// The exposition in the OpenMetrics text format.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition in the Prometheus text format 0.0.4 (what `promtool check metrics` and
    /// scrapers that do not ask for OpenMetrics read): counter families are named with their
    /// `_total` suffix and there is no `# EOF`.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Held until the TYPE line says whether the name needs `_total`.
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.splitn(4, ' ').nth(3).unwrap_or("");
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP x_drift Drift.\n# TYPE x_drift counter\nx_drift_total{a=\"b\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP x_drift_total Drift.\n# TYPE x_drift_total counter\nx_drift_total{a=\"b\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }

    use crate::testing::knob;

    fn report(settings: Vec<crate::agent::KnobReport>) -> Report {
        crate::testing::report(true, settings)
    }

    /// The `setting_value_info` samples, sorted.
    fn value_lines(m: &Metrics) -> Vec<String> {
        let mut v: Vec<String> = m
            .encode_prometheus()
            .lines()
            .filter(|l| l.starts_with("redis_node_tuner_setting_value_info{"))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    fn info(setting: &str, desired: &str, actual: &str) -> String {
        format!(
            "redis_node_tuner_setting_value_info{{setting=\"{setting}\",desired=\"{desired}\",actual=\"{actual}\"}} 1"
        )
    }

    #[test]
    fn value_info_shows_thp_words_and_keeps_one_series_per_knob() {
        let m = Metrics::new();
        m.observe(
            &report(vec![
                knob("thp.enabled", "never", Some("always")),
                knob("thp.defrag", "madvise|never", Some("madvise")),
                knob("net.core.somaxconn", ">= 2048", Some("128")),
            ]),
            &[],
            Duration::ZERO,
        );
        assert_eq!(
            value_lines(&m),
            [
                info("net.core.somaxconn", ">= 2048", "128"),
                info("thp.defrag", "madvise|never", "madvise"),
                info("thp.enabled", "never", "always"),
            ]
        );
        // Corrected: the old value's series goes; unreadable: no series; gone from the
        // report: no series.
        m.observe(
            &report(vec![
                knob("thp.enabled", "never", Some("never")),
                knob("thp.defrag", "madvise|never", None),
            ]),
            &[],
            Duration::ZERO,
        );
        assert_eq!(value_lines(&m), [info("thp.enabled", "never", "never")]);
        let help = m.encode_prometheus();
        assert!(
            help.contains("# TYPE redis_node_tuner_setting_value_info gauge"),
            "{help}"
        );
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        assert_eq!(clip("never"), "never");
        let exact = "x".repeat(VALUE_LABEL_MAX);
        assert_eq!(clip(&exact), exact);
        let long = "é".repeat(VALUE_LABEL_MAX);
        let c = clip(&long);
        assert!(c.len() <= VALUE_LABEL_MAX && c.ends_with('…'), "{c}");
        assert!(c.trim_end_matches('…').chars().all(|ch| ch == 'é'), "{c}");
    }
}
