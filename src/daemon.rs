//! `run`: the enforce loop, the HTTP endpoints, and graceful shutdown.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::agent::{Agent, Report};
use crate::http::{self, Health};
use crate::metrics::Metrics;

/// Runs the loop until SIGTERM or SIGINT. Every pass is published on `reports`.
pub async fn run(
    mut agent: Agent,
    metrics: Arc<Metrics>,
    listener: Option<TcpListener>,
    reports: watch::Sender<Option<Arc<Report>>>,
) -> std::io::Result<()> {
    let health = Arc::new(Health::default());
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
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let start = Instant::now();
                let (report, events) = agent.reconcile(start);
                metrics.observe(&report, &events, start.elapsed());
                health.update(&report);
                if was_ready != Some(report.ready) {
                    if report.ready {
                        tracing::info!("node ready: every enforce-mode setting is in sync");
                    } else {
                        let failing: Vec<&str> = report.failing().map(|k| k.name.as_str()).collect();
                        tracing::warn!(failing = ?failing, "node not ready");
                    }
                    was_ready = Some(report.ready);
                }
                reports.send_replace(Some(Arc::new(report)));
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    if let Some(s) = server {
        s.abort();
    }
    Ok(())
}
