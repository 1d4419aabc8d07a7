//! `run`: the enforce loop, the HTTP endpoints, and graceful shutdown.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::agent::{Agent, Event, Report};
use crate::http::{self, Health};
use crate::metrics::Metrics;

/// Where the loop publishes, for reporters such as the Kubernetes gate.
pub struct Hooks {
    /// Every pass's report.
    pub reports: watch::Sender<Option<Arc<Report>>>,
    /// Every event (dropped, with a log line, if the reporter lags by more than the buffer).
    pub events: Option<mpsc::Sender<Event>>,
    /// Proofs that the agent's network namespace is the host's (e.g. from its Pod).
    pub netns_proof: Option<mpsc::Receiver<String>>,
}

impl Hooks {
    pub fn new() -> Hooks {
        Hooks {
            reports: watch::channel(None).0,
            events: None,
            netns_proof: None,
        }
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Self::new()
    }
}

async fn next_proof(rx: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the loop until SIGTERM or SIGINT. Every pass is published through `hooks`.
pub async fn run(
    mut agent: Agent,
    metrics: Arc<Metrics>,
    listener: Option<TcpListener>,
    mut hooks: Hooks,
) -> std::io::Result<()> {
    let health = Arc::new(Health::new(hooks.reports.subscribe()));
    let server = listener.map(|l| tokio::spawn(http::serve(l, metrics.clone(), health.clone())));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(agent.interval());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(
        interval_ms = agent.interval().as_millis() as u64,
        netns = %agent.fs().netns().describe(),
        "enforce loop started"
    );
    let mut was_ready: Option<bool> = None;
    let mut notified = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let start = Instant::now();
                let (report, events) = agent.reconcile(start);
                metrics.observe(&report, &events, start.elapsed());
                if !notified {
                    // systemd Type=notify: started once the first apply pass completed.
                    crate::notify::notify(if report.ready {
                        "READY=1\nSTATUS=every enforce-mode setting is in sync"
                    } else {
                        "READY=1\nSTATUS=not ready: see /readyz or the logs"
                    });
                    notified = true;
                }
                if was_ready != Some(report.ready) {
                    if report.ready {
                        tracing::info!("node ready: every enforce-mode setting is in sync");
                    } else {
                        let failing: Vec<&str> = report.failing().map(|k| k.name.as_str()).collect();
                        tracing::warn!(failing = ?failing, "node not ready");
                    }
                    was_ready = Some(report.ready);
                }
                if let Some(tx) = &hooks.events {
                    for e in events {
                        if tx.try_send(e).is_err() {
                            tracing::warn!("reporter is behind: event dropped");
                        }
                    }
                }
                hooks.reports.send_replace(Some(Arc::new(report)));
            }
            proof = next_proof(&mut hooks.netns_proof) => {
                match proof {
                    Some(p) => {
                        tracing::info!(proof = %p, "host network namespace proven");
                        agent.fs_mut().assert_host_netns(p);
                    }
                    None => hooks.netns_proof = None,
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    crate::notify::notify("STOPPING=1");
    if let Some(s) = server {
        s.abort();
    }
    Ok(())
}
