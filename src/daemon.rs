//! `run`: the enforce loop on a thread of its own (kernel and journal I/O never stall the
//! runtime), the HTTP endpoints and the optional Kubernetes gate on the runtime, supervision
//! (a dead gate fails `/healthz` and stops the process non-zero), and graceful shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::agent::{Agent, Event, PassClock, Report, stall_bound};
use crate::foreign::{Inbox, Port};
use crate::http::{self, Health};
use crate::k8s::{self, GateError, GateOptions};
use crate::metrics::Metrics;
use crate::profile::WritersMode;
use crate::writers::{self, Unavailable};

/// Events buffered for the gate; past that they are dropped with a log line.
const EVENT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("--listen {addr:?}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Start(#[source] std::io::Error),
    /// The gate cannot start (kubeconfig, or the agent's Pod does not tolerate its taint).
    #[error(transparent)]
    Gate(#[from] GateError),
    /// A critical task ended while the daemon ran.
    #[error("{0}")]
    TaskDied(String),
    /// `writers: lock` could not be put in force and `--lock-unavailable exit` was asked for.
    #[error("writers: lock is not in force ({0}) and --lock-unavailable is exit")]
    LockUnavailable(Unavailable),
}

/// Kubernetes mode of `run`.
pub struct KubeMode {
    pub kubeconfig: Option<PathBuf>,
    pub opts: GateOptions,
}

/// The writer watch of `run`.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub mode: WritersMode,
    /// The host's cgroup v2 root (`None`: found in the mount table).
    pub cgroup_root: Option<PathBuf>,
    /// Asked for by `--writers` or `writers:` (not the default): unavailability is a warning.
    pub explicit: bool,
    /// What to do when `lock` cannot be put in force.
    pub lock_unavailable: LockUnavailable,
    /// The break-glass file: while it exists, `lock` refuses nothing.
    pub unlock_file: Option<PathBuf>,
}

/// `--lock-unavailable`: what `run --writers lock` does when the kernel will not refuse writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockUnavailable {
    /// Run without the lock: correct foreign writes, say why on the node, the metric, an event.
    #[default]
    Run,
    /// Refuse to start (exit 8).
    Exit,
}

/// Messages to the enforce thread.
pub enum Control {
    /// Host networking is proven: `net.*` knobs may be enforced.
    HostNetwork(String),
    /// A foreign write was seen: a pass now.
    Wake,
    /// `redis_processes.gate: true`: the Redis processes out of sync now (a pass follows).
    RedisGate(Vec<String>),
    Stop,
    /// Tests: the enforce thread panics, as a bug in a pass would.
    #[cfg(test)]
    Panic,
}

/// While a sysctl write seen before the kernel applied it waits to become visible, passes run
/// at least this often (inotify's notice of the applied write usually wakes one first).
const PENDING_RETRY: Duration = Duration::from_millis(20);

/// Where the enforce thread publishes.
struct Outputs {
    reports: watch::Sender<Option<Arc<Report>>>,
    events: Option<mpsc::Sender<Event>>,
}

/// The watchers as the enforce thread holds them: their inbox, the running watch (dropped
/// with the thread), and what it last reported of them.
struct Watchers {
    inbox: Arc<Inbox>,
    watch: Option<writers::Watch>,
    /// What started.
    started: writers::Status,
    /// What was last reported: `started` and what the watch's health says since.
    status: writers::Status,
}

impl Watchers {
    /// Reads the watch's health before a pass: a stopped watch or a lost lock goes to the
    /// metrics and, for the lock, to the agent's report; losses are counted.
    fn before_pass(&mut self, agent: &mut Agent, metrics: &Metrics) {
        let Some(w) = &self.watch else { return };
        let (lost, overflows) = w.health.take_lost();
        metrics.writer_losses(lost, overflows, self.inbox.take_dropped());
        let mut status = self.started.clone();
        if w.health.stopped() {
            let u = Unavailable {
                reason: "stopped",
                message: "the watch thread ended".into(),
            };
            for r in [
                &mut status.inotify,
                &mut status.fanotify,
                &mut status.sysctl,
            ] {
                if r.is_ok() {
                    *r = Err(u.clone());
                }
            }
        }
        if let Some(lock) = &mut status.lock
            && lock.is_ok()
        {
            let lost = if status.sysctl.is_err() {
                Some("stopped")
            } else {
                w.health.lock_lost()
            };
            if let Some(reason) = lost {
                *lock = Err(Unavailable {
                    reason,
                    message: String::new(),
                });
            }
        }
        if status != self.status {
            metrics.writer_watch(&status);
            agent.set_lock_missing(lock_missing(&status));
            self.status = status;
        }
    }
}

/// Why `writers: lock` is not in force, if it was asked for and is not.
fn lock_missing(status: &writers::Status) -> Option<String> {
    match &status.lock {
        Some(Err(u)) => Some(u.reason.to_string()),
        _ => None,
    }
}

/// The enforce loop: a pass every interval (a long pass delays the next, never piles up), at
/// once when a watcher posts a write, until [`Control::Stop`] or the sender is gone.
fn enforce_loop(
    mut agent: Agent,
    metrics: Arc<Metrics>,
    out: Outputs,
    ctl: std_mpsc::Receiver<Control>,
    (mut watchers, clock): (Watchers, Arc<PassClock>),
) {
    let interval = agent.interval();
    let mut was_ready: Option<bool> = None;
    let mut notified = false;
    let mut next = Instant::now();
    let mut last: Option<Arc<Report>> = None;
    let mut forward_limit = crate::agent::EventLimit::default();
    let (mut dropped, mut last_drop_line) = (0u64, None);
    loop {
        loop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            match ctl.recv_timeout(next - now) {
                Ok(Control::HostNetwork(proof)) => {
                    tracing::info!(proof = %proof, "host network namespace proven");
                    agent.fs_mut().assert_host_netns(proof);
                    if let (Some(w), Some(ino)) = (&watchers.watch, agent.fs().net_ns_ino()) {
                        w.host_network(ino);
                    }
                    next = Instant::now();
                }
                Ok(Control::Wake) => next = Instant::now(),
                Ok(Control::RedisGate(out)) => {
                    agent.set_redis_gate(out);
                    next = Instant::now();
                }
                #[cfg(test)]
                Ok(Control::Panic) => panic!("enforce bug (test)"),
                Ok(Control::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let start = Instant::now();
        watchers.inbox.rearm();
        watchers.before_pass(&mut agent, &metrics);
        let (report, events) = agent.reconcile(start);
        clock.done(Instant::now());
        next = (start + interval).max(Instant::now());
        if agent.has_pending() {
            next = next.min(Instant::now() + PENDING_RETRY);
        }
        if let Some(retry) = agent.next_retry() {
            next = next.min(retry.max(Instant::now()));
        }
        for o in agent.take_foreign_outcomes() {
            metrics.foreign_write(&o);
        }
        if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &report)) {
            // Steady state: the same report; only the pass's duration is new.
            metrics.observe_duration(start.elapsed());
            continue;
        }
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
        if let Some(tx) = &out.events {
            for e in events {
                if forward_limit.admit(&e, start).is_none() {
                    continue; // a storm: one event of a kind per knob a second
                }
                if tx.try_send(e).is_err() {
                    dropped += 1;
                    metrics.events_dropped("reporter_behind", 1);
                }
            }
            if dropped > 0
                && last_drop_line.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1))
            {
                tracing::warn!(dropped, "reporter is behind: events dropped");
                last_drop_line = Some(Instant::now());
                dropped = 0;
            }
        }
        out.reports.send_replace(Some(report.clone()));
        last = Some(report);
    }
}

/// The enforce thread and its control channel. `done` resolves when the thread ends (a panic
/// included: the sender is dropped).
struct Enforcer {
    ctl: std_mpsc::Sender<Control>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Enforcer {
    fn spawn(
        agent: Agent,
        metrics: Arc<Metrics>,
        out: Outputs,
        (ctl, rx): (std_mpsc::Sender<Control>, std_mpsc::Receiver<Control>),
        watchers: (Watchers, Arc<PassClock>),
    ) -> std::io::Result<Enforcer> {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("enforce".into())
            .spawn(move || {
                enforce_loop(agent, metrics, out, rx, watchers);
                let _ = done_tx.send(());
            })?;
        Ok(Enforcer {
            ctl,
            done: Some(done),
        })
    }

    /// Stops after the current pass; gives up waiting after `bound` (a pass blocked in the
    /// kernel must not hold the process).
    async fn stop(self, bound: Duration) {
        let _ = self.ctl.send(Control::Stop);
        if let Some(done) = self.done
            && tokio::time::timeout(bound, done).await.is_err()
        {
            tracing::warn!("the enforce pass did not finish in time; exiting anyway");
        }
    }
}

/// Redis processes are scanned at most this often (they come and go; a scan reads every
/// process's `comm`).
pub const REDIS_SCAN_MIN: Duration = Duration::from_secs(10);

/// The Redis-view thread: scans the Redis processes every `every`, meters them, logs and sends
/// an event for each check that became out of sync, and (`gate: true`) tells the enforce thread
/// which are, until `stop` is dropped. A thread of its own: a scan reads other processes'
/// `/proc` files and enters their namespaces, which must never delay an enforce pass.
struct RedisView {
    scanner: crate::procs::Scanner,
    every: Duration,
    metrics: Arc<Metrics>,
    events: Option<mpsc::Sender<Event>>,
    ctl: std_mpsc::Sender<Control>,
}

impl RedisView {
    fn spawn(self, stop: std_mpsc::Receiver<()>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("redis-view".into())
            .spawn(move || self.run(stop))?;
        Ok(())
    }

    fn run(mut self, stop: std_mpsc::Receiver<()>) {
        let mut known: std::collections::HashSet<(String, &'static str)> = Default::default();
        let mut gate_sent: Option<Vec<String>> = None;
        let mut limit = crate::agent::EventLimit::default();
        let mut said_none = false;
        loop {
            let scan = self.scanner.scan();
            self.metrics.redis_view(&scan);
            if scan.processes.is_empty() && !said_none {
                tracing::info!(proc_root = %scan.proc_root.display(), "no Redis process found");
                said_none = true;
            } else if !scan.processes.is_empty() {
                said_none = false;
            }
            let now: std::collections::HashSet<(String, &'static str)> =
                scan.out_of_sync().into_iter().collect();
            for p in &scan.processes {
                for check in p.out_of_sync() {
                    let key = (p.owner_label.clone(), check);
                    if known.contains(&key) {
                        continue;
                    }
                    let e = Event::RedisViewOutOfSync {
                        key: format!("redis {} {check}", p.owner_label),
                        pid: p.pid,
                        owner: p.owner_label.clone(),
                        check,
                        detail: p.why(check).unwrap_or_default().to_string(),
                    };
                    if let Some(repeated) = limit.admit(&e, Instant::now()) {
                        crate::agent::log_event(&e, repeated);
                        if let Some(tx) = &self.events
                            && tx.try_send(e).is_err()
                        {
                            self.metrics.events_dropped("reporter_behind", 1);
                        }
                    }
                }
            }
            for (owner, check) in known.difference(&now) {
                tracing::info!(owner = %owner, check, "redis process sees the setting in sync again (or went away)");
            }
            known = now;
            if self.scanner.gate() {
                let out = scan.gate_lines();
                if gate_sent.as_ref() != Some(&out) {
                    if self.ctl.send(Control::RedisGate(out.clone())).is_err() {
                        return;
                    }
                    gate_sent = Some(out);
                }
            }
            match stop.recv_timeout(self.every) {
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }
}

/// Binds `--listen`. `:PORT` is every address of the host: `[::]:PORT`, which also takes IPv4
/// (the kernel's default `net.ipv6.bindv6only=0`), so one socket serves IPv4-only, dual-stack
/// and IPv6-only networks; on a kernel without IPv6 (`ipv6.disable=1`) `0.0.0.0:PORT`.
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let Some(port) = listen.strip_prefix(':') else {
        return TcpListener::bind(listen).await;
    };
    let port: u16 = port.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{port:?} is not a port number"),
        )
    })?;
    match TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).await {
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await
        }
        r => r,
    }
}

/// Runs the daemon until SIGTERM or SIGINT: binds `listen` (empty: no HTTP), starts the gate in
/// Kubernetes mode, scans the Redis processes (`redis`), and supervises.
pub async fn run(
    mut agent: Agent,
    listen: &str,
    kube: Option<KubeMode>,
    (watch_opts, redis): (WatchOptions, Option<crate::procs::ScanOptions>),
    stall_timeout: Option<Duration>,
) -> Result<(), DaemonError> {
    let clock = Arc::new(PassClock::new(
        stall_timeout.unwrap_or_else(|| stall_bound(agent.interval())),
    ));
    let listener = if listen.is_empty() {
        None
    } else {
        let l = bind(listen).await.map_err(|source| DaemonError::Listen {
            addr: listen.to_string(),
            source,
        })?;
        let bound = l
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| listen.to_string());
        tracing::info!(listen, bound, "serving /metrics, /healthz, /readyz");
        Some(l)
    };
    let metrics = Arc::new(Metrics::new());
    let (reports, _) = watch::channel(None);
    let health = Arc::new(Health::new(reports.subscribe()).with_clock(clock.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut out = Outputs {
        reports,
        events: None,
    };
    // Kubernetes comes after the enforce thread: the kernel is tuned whether or not the API
    // (or the kubeconfig's credentials) is there yet.
    let mut gate_parts = None;
    if let Some(k) = kube {
        tracing::info!(node = %k.opts.node_name, "Kubernetes mode");
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_BUFFER);
        out.events = Some(ev_tx);
        gate_parts = Some((k, ev_rx));
    }
    let gate_inputs_reports = out.reports.subscribe();
    let redis_events = out.events.clone();
    let interval = agent.interval();
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        netns = %agent.fs().netns().describe(),
        "enforce loop started"
    );
    let watch_cfg = writers::WatchConfig::new(
        watch_opts.mode,
        watch_opts.cgroup_root.clone(),
        agent.fs().net_ns_ino(),
        agent.watched_knobs(),
        watch_opts.unlock_file.clone(),
    );
    let inbox = Arc::new(Inbox::new(watch_cfg.knobs.len()));
    agent.attach_inbox(inbox.clone());
    let (ctl, ctl_rx) = std_mpsc::channel();
    let wake = ctl.clone();
    let port = Port::new(
        inbox.clone(),
        Box::new(move || {
            let _ = wake.send(Control::Wake);
        }),
    );
    let (watch, status) = writers::start(watch_cfg, port);
    report_watch(&status, &watch_opts, &metrics, interval);
    if watch_opts.lock_unavailable == LockUnavailable::Exit
        && let Some(Err(u)) = &status.lock
    {
        return Err(DaemonError::LockUnavailable(u.clone()));
    }
    agent.set_lock_missing(lock_missing(&status));
    let watchers = Watchers {
        inbox,
        watch,
        started: status.clone(),
        status,
    };
    // Dropped when `run` returns: the Redis-view thread ends with it.
    let (_redis_stop, redis_stop_rx) = std_mpsc::channel::<()>();
    let host_netns = redis.as_ref().map(|o| o.host_netns.clone());
    if let Some(opts) = redis {
        let view = RedisView {
            scanner: crate::procs::Scanner::new(opts),
            every: interval.max(REDIS_SCAN_MIN),
            metrics: metrics.clone(),
            events: redis_events,
            ctl: ctl.clone(),
        };
        view.spawn(redis_stop_rx).map_err(DaemonError::Start)?;
    }
    let mut enforcer = Enforcer::spawn(
        agent,
        metrics.clone(),
        out,
        (ctl, ctl_rx),
        (watchers, clock.clone()),
    )
    .map_err(DaemonError::Start)?;
    let gate = gate_parts.map(|(k, events)| {
        let ctl = enforcer.ctl.clone();
        let host_netns = host_netns.clone();
        let inputs = k8s::GateInputs {
            reports: gate_inputs_reports,
            events,
            stop: stop_rx.clone(),
            on_host_network: Some(Box::new(move |proof| {
                // The agent's own namespace is the host's: Redis processes in it are on host
                // networking.
                if let (Some(h), Ok(m)) = (&host_netns, std::fs::metadata("/proc/self/ns/net")) {
                    h.store(
                        std::os::unix::fs::MetadataExt::ino(&m),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                let _ = ctl.send(Control::HostNetwork(proof));
            })),
            clock: Some(clock.clone()),
        };
        let (metrics, stop) = (metrics.clone(), stop_rx);
        tokio::spawn(async move {
            match k8s::prepare_retrying(k.kubeconfig, k.opts, metrics, stop).await? {
                Some(prepared) => k8s::run(prepared, inputs).await,
                None => Ok(()),
            }
        })
    });
    let server = listener.map(|l| tokio::spawn(http::serve(l, metrics.clone(), health.clone())));
    let result = supervise(gate, &mut enforcer.done, &health, stop_tx).await;
    enforcer.stop(Duration::from_secs(2)).await;
    crate::notify::notify("STOPPING=1");
    if let Some(s) = server {
        s.abort();
    }
    result
}

/// Meters and logs which watchers run, and why the others do not.
fn report_watch(
    status: &writers::Status,
    opts: &WatchOptions,
    metrics: &Metrics,
    interval: Duration,
) {
    metrics.writer_watch(status);
    let mode = status.mode.as_str();
    let poll_ms = interval.as_millis() as u64;
    if status.mode == WritersMode::Off {
        tracing::info!(poll_ms, "writer watch off: drift is found by the poll");
        return;
    }
    for (source, r) in status.sources() {
        match r {
            Ok(()) => tracing::info!(mode, source, "writer watch active"),
            // The default (observe) without a watcher's privileges, or nothing of the kind
            // to watch: the ordinary case of the base install.
            Err(u)
                if !opts.explicit
                    || matches!(u.reason, "permission" | "fake_root" | "not_requested") =>
            {
                tracing::info!(mode, source, reason = u.reason, detail = %u.message,
                    "writer watch unavailable")
            }
            Err(u) => tracing::warn!(mode, source, reason = u.reason, detail = %u.message,
                "writer watch unavailable"),
        }
    }
    if status.inotify.is_err() && status.fanotify.is_err() && status.sysctl.is_err() {
        tracing::warn!(
            poll_ms,
            "no writer watch runs: drift is found by the poll only, writers are not named"
        );
    }
    if let Some(Err(u)) = &status.lock {
        tracing::error!(reason = u.reason, detail = %u.message, lock_unavailable = ?opts.lock_unavailable,
            "writers lock requested but not in force: foreign writes are corrected, not refused");
    }
}

/// How long the gate may take to write AgentStopped after SIGTERM (its one request is bounded
/// by the request timeout; this bounds the rest).
const GATE_STOP_SLACK: Duration = Duration::from_secs(2);

/// Waits for SIGTERM/SIGINT or the death of a critical task: the gate or the enforce thread.
/// One that ends on its own (an error, a panic) marks `/healthz` failed and makes the process
/// exit non-zero, so the kubelet or systemd restarts it rather than letting it run half-blind.
async fn supervise(
    gate: Option<tokio::task::JoinHandle<Result<(), GateError>>>,
    enforcer: &mut Option<tokio::sync::oneshot::Receiver<()>>,
    health: &Health,
    stop: watch::Sender<bool>,
) -> Result<(), DaemonError> {
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Start)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Start)?;
    let mut gate = gate;
    let died = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); None }
        _ = async {
            match enforcer.as_mut() {
                Some(done) => { let _ = done.await; }
                None => std::future::pending::<()>().await,
            }
        } => {
            *enforcer = None;
            Some("the enforce loop ended".to_string())
        }
        r = async {
            match gate.as_mut() {
                Some(g) => g.await,
                None => std::future::pending().await,
            }
        } => {
            gate = None;
            Some(match r {
                Ok(Err(e)) if e.is_config() => return Err(DaemonError::Gate(e)),
                Ok(Err(e)) => format!("the Kubernetes gate ended: {e}"),
                Ok(Ok(())) => "the Kubernetes gate ended".to_string(),
                Err(e) => format!("the Kubernetes gate died: {e}"),
            })
        }
    };
    if let Some(why) = &died {
        tracing::error!(reason = %why, "a critical task died: /healthz fails, exiting");
        health.set_dead(why.clone());
    }
    // A stop, or the enforce thread's death with the gate still there: the gate says the agent
    // stopped (the condition Unknown / AgentStopped), within its bound.
    let _ = stop.send(true);
    if let Some(g) = gate {
        let bound = GATE_STOP_SLACK + Duration::from_secs(30);
        match tokio::time::timeout(bound, g).await {
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "Kubernetes reporter stopped with an error")
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("Kubernetes reporter did not stop in time"),
        }
    }
    match died {
        Some(why) => Err(DaemonError::TaskDied(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_alone_listens_on_ipv4_and_ipv6() {
        let l = bind(":0").await.expect("bind :0");
        let port = l.local_addr().expect("addr").port();
        for addr in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = addr.parse().expect("ip");
            tokio::net::TcpStream::connect((ip, port))
                .await
                .unwrap_or_else(|e| panic!("connect to {addr} port {port}: {e}"));
            l.accept().await.expect("accept");
        }
        let e = bind(":http").await.expect_err("a name is not a port");
        assert!(
            e.to_string().contains("\"http\" is not a port number"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_dead_gate_fails_healthz_and_ends_the_daemon_with_an_error() {
        let (_reports, rx) = watch::channel(None);
        let health = Health::new(rx);
        let (stop, _) = watch::channel(false);
        let gate = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("gate bug");
        });
        let r = supervise(Some(gate), &mut None, &health, stop).await;
        assert!(
            matches!(&r, Err(DaemonError::TaskDied(why)) if why.contains("gate bug")),
            "{r:?}"
        );
        assert!(health.dead().is_some_and(|w| w.contains("died")));
    }

    #[tokio::test]
    async fn a_gate_that_returns_is_a_death_too() {
        let (_reports, rx) = watch::channel(None);
        let health = Health::new(rx);
        let (stop, _) = watch::channel(false);
        let gate = tokio::spawn(async { Ok(()) });
        let r = supervise(Some(gate), &mut None, &health, stop).await;
        assert!(matches!(r, Err(DaemonError::TaskDied(_))), "{r:?}");
        assert!(health.dead().is_some());
    }

    #[tokio::test]
    async fn a_panicking_enforce_thread_is_a_death_too_and_the_gate_is_told_to_stop() {
        let tree = crate::testing::FakeTree::untuned();
        let agent = Agent::new(
            tree.fs(),
            &crate::profile::Profile::default(),
            crate::agent::JournalSlot::None,
        );
        let (reports, rx) = watch::channel(None);
        let health = Health::new(rx);
        let (stop, mut stopped) = watch::channel(false);
        let inbox = Arc::new(Inbox::new(agent.watched_knobs().len()));
        let status = writers::Status {
            mode: WritersMode::Off,
            inotify: Ok(()),
            fanotify: Ok(()),
            sysctl: Ok(()),
            lock: None,
        };
        let watchers = Watchers {
            inbox,
            watch: None,
            started: status.clone(),
            status,
        };
        let clock = Arc::new(PassClock::new(Duration::from_secs(30)));
        let (ctl, rx) = std_mpsc::channel();
        let mut enforcer = Enforcer::spawn(
            agent,
            Arc::new(Metrics::new()),
            Outputs {
                reports,
                events: None,
            },
            (ctl, rx),
            (watchers, clock),
        )
        .expect("spawn");
        // A gate that ends when told to stop, and says it was.
        let told = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let told2 = told.clone();
        let gate = tokio::spawn(async move {
            if stopped.changed().await.is_ok() && *stopped.borrow() {
                told2.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        });
        let _ = enforcer.ctl.send(Control::Panic);
        let r = supervise(Some(gate), &mut enforcer.done, &health, stop).await;
        assert!(
            matches!(&r, Err(DaemonError::TaskDied(why)) if why.contains("enforce loop")),
            "{r:?}"
        );
        assert!(health.dead().is_some());
        assert!(
            told.load(std::sync::atomic::Ordering::SeqCst),
            "the gate was not told to stop (no AgentStopped)"
        );
    }
}
