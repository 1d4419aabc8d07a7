//! Whether the Kubernetes API answers. One owner of "unreachable" for both the gate's writes and
//! the Node watch, so an outage costs one WARN when it starts and one INFO when it ends (how long
//! it lasted, how many attempts failed), however many retries it takes; the metrics
//! `redis_node_tuner_kube_api_reachable` and `redis_node_tuner_kube_api_outages_total` follow it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::GateError;
use crate::metrics::Metrics;

/// Whether an error means the API did not answer usefully: no connection, a timeout, or a
/// throttled / failing server (429, 5xx). Any other answer (403, 404, 409, 422, ...) is an
/// answer: the API is reachable.
pub fn is_unreachable(e: &GateError) -> bool {
    match e {
        GateError::Timeout { .. } => true,
        GateError::Api {
            source: kube::Error::Api(s),
            ..
        } => s.code == 429 || s.code >= 500,
        GateError::Api { .. } => true,
        _ => false,
    }
}

#[derive(Debug, Default)]
struct Down {
    since: Option<Instant>,
    failures: u32,
    /// Lines logged at info level or above (what an operator sees per outage).
    lines: u32,
}

/// The reachability of the API, shared by the gate and the watch task.
#[derive(Clone)]
pub struct Reach {
    down: Arc<Mutex<Down>>,
    metrics: Option<Arc<Metrics>>,
}

impl Reach {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Reach {
        Reach {
            down: Arc::default(),
            metrics,
        }
    }

    /// The API answered.
    pub fn answered(&self) {
        let ended = {
            let Ok(mut d) = self.down.lock() else { return };
            let ended = d.since.take().map(|s| (s.elapsed(), d.failures));
            d.failures = 0;
            if ended.is_some() {
                d.lines += 1;
            }
            ended
        };
        if let Some(m) = &self.metrics {
            m.kube_api_reachable.get_or_create(&Vec::new()).set(1);
        }
        if let Some((down, failures)) = ended {
            tracing::info!(
                down_ms = down.as_millis() as u64,
                failed_attempts = failures,
                "Kubernetes API reachable again after {}",
                human(down)
            );
        }
    }

    /// A request failed. Returns whether the failure is an outage (see [`is_unreachable`]); the
    /// first failure of an outage is logged as a warning, the others at debug level.
    pub fn failed(&self, e: &GateError) -> bool {
        if !is_unreachable(e) {
            return false;
        }
        let started = {
            let Ok(mut d) = self.down.lock() else {
                return true;
            };
            d.failures = d.failures.saturating_add(1);
            if d.since.is_none() {
                d.since = Some(Instant::now());
                d.lines += 1;
                true
            } else {
                false
            }
        };
        if started {
            if let Some(m) = &self.metrics {
                m.kube_api_reachable.get_or_create(&Vec::new()).set(0);
                m.kube_api_outages.inc();
            }
            tracing::warn!(
                error = %e,
                "Kubernetes API unreachable; retrying quietly with backoff (kernel settings are still enforced)"
            );
        } else {
            tracing::debug!(error = %e, "Kubernetes API still unreachable");
        }
        true
    }

    /// Lines logged at info level or above so far (two per outage).
    pub fn lines_logged(&self) -> u32 {
        self.down.lock().map(|d| d.lines).unwrap_or(0)
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.down.lock().map(|d| d.since.is_some()).unwrap_or(false)
    }
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
