//! The gate as a state machine: inputs arrive as transitions ([`Gate::on_report`],
//! [`Gate::on_node`], [`Gate::on_event`], [`Gate::on_timer`], [`Gate::on_stop`]); each brings the
//! node's marks to what the latest report says, through a [`NodeApi`], writing only what
//! differs. Failures back off (one shared schedule for marks and events, spread so a fleet that
//! failed together does not retry together) and are logged once per outage, not once per retry
//! ([`Reach`]); the heartbeat beats on the node's own phase ([`Heartbeat`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;

use super::annotations::{
    self, LAST_WRITER_ANNOTATION, LAST_WRITER_MIN_INTERVAL, LastWriter, REFUSED_RETRY,
};
use super::events::{Queue, event_for, node_ready};
use super::marks::{
    Heartbeat, MESSAGE_MAX, Reason, condition_update, desired_marks, is_older, label_matches,
    our_condition, taints, taints_with, truncate,
};
use super::node_api::NodeApi;
use super::reach::{Reach, is_unreachable};
use super::{GateError, GateOptions, LABEL};
use crate::agent::{Event, PassClock, Report};
use crate::backoff::Backoff;

/// First retry after an API failure, doubling up to [`RETRY_MAX`], each delay uniform in
/// `[base / 2, base]` ([`Backoff::spread`]). With the cap at 20 s, N agents that lost the API
/// together come back at most N / 15 per second each (the gate's write and the watch: 2N / 15
/// requests per second in all, under N / 5) and every one within 20 s of the API's return.
pub const RETRY_START: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Outage {
    since: Instant,
    retries: u32,
}

/// The gate's state.
pub struct Gate<A: NodeApi> {
    api: A,
    opts: GateOptions,
    node: Option<Node>,
    node_missing_logged: bool,
    report: Option<Arc<Report>>,
    was_ready: Option<bool>,
    queue: Queue,
    retry: Backoff,
    retry_at: Option<Instant>,
    /// A failing streak of answers (403, 422, ...): the API is reachable but refuses.
    outage: Option<Outage>,
    /// The last failure was an unreachable API (see [`Reach`]).
    unreachable: bool,
    reach: Reach,
    heartbeat: Heartbeat,
    started: Instant,
    ready_logged: bool,
    /// Marks are not written while the host-network proof from the agent's Pod is pending: a
    /// report made before it shows `net.*` unverified, and acting on it would drop the label a
    /// previous agent set (a rolling update would flap scheduling).
    held: bool,
    /// Host networking was proven by the Pod: a report still made without the proof (a pass
    /// that began before the enforce thread took it in, arriving after `release`) is stale
    /// and ignored, for the same reason as `held`.
    proven: bool,
    /// When the enforce thread last finished a pass: a stalled one is never heartbeaten as
    /// the last report; the condition turns Unknown / EnforceStalled.
    clock: Option<Arc<PassClock>>,
    /// Events the API refused for good (dropped, not retried), and whether that was logged
    /// since the last event went through.
    refused_events: u64,
    refusal_logged: bool,
    /// Why the agent's own Pod cannot be read, while held for it.
    pod_unreadable: Option<String>,
    /// Events dropped from the full queue, counted already.
    queue_dropped_seen: u64,
    /// The latest foreign writer the writer watch named (for the last-writer annotation), and
    /// when the gate last wrote one.
    last_writer: Option<LastWriter>,
    last_writer_written: Option<Instant>,
    /// When the admission policy last refused the annotations (an older policy): the label is
    /// written without changing them until [`REFUSED_RETRY`] has passed.
    annotations_refused: Option<Instant>,
    /// A report said the node was in tune since this agent started: only then is a
    /// `NoExecute` taint effect written (see [`Gate::taint_effect`]); and whether holding it
    /// back was logged.
    in_tune_seen: bool,
    noexecute_held_logged: bool,
}

impl<A: NodeApi> Gate<A> {
    pub fn new(api: A, opts: GateOptions, now: Instant) -> Self {
        Gate {
            api,
            node: None,
            node_missing_logged: false,
            report: None,
            was_ready: None,
            queue: Queue::default(),
            retry: Backoff::spread(RETRY_START, RETRY_MAX),
            retry_at: None,
            outage: None,
            unreachable: false,
            reach: Reach::new(None),
            heartbeat: Heartbeat::new(opts.heartbeat, &opts.node_name),
            started: now,
            ready_logged: false,
            held: false,
            proven: false,
            clock: None,
            refused_events: 0,
            refusal_logged: false,
            pod_unreadable: None,
            queue_dropped_seen: 0,
            last_writer: None,
            last_writer_written: None,
            annotations_refused: None,
            opts,
            in_tune_seen: false,
            noexecute_held_logged: false,
        }
    }

    /// Watches the enforce thread's pass clock (see `clock`).
    pub fn with_clock(mut self, clock: Option<Arc<PassClock>>) -> Self {
        self.clock = clock;
        self
    }

    /// Shares the API's reachability with the watch task (and its metrics).
    pub fn with_reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }

    /// Holds every write until the Pod's facts are known; see `held`.
    pub fn hold(&mut self, on: bool) {
        self.held = on;
    }

    /// The Pod's facts are known: writes go ahead. With host networking proven the report made
    /// before the proof is forgotten (the next one is made with it); without, the report there
    /// is is the one to write (no better one is coming).
    pub async fn release(&mut self, proven: bool, now: Instant) {
        if self.held && proven {
            self.report = None;
        }
        self.proven |= proven;
        self.held = false;
        self.pod_unreadable = None;
        self.step(now).await;
    }

    /// The agent's own Pod cannot be read (the API answered 403, 404, ...): the marks stay
    /// held, and the condition says why (status Unknown: nothing is claimed of the node).
    pub async fn on_pod_unreadable(&mut self, why: &str, now: Instant) {
        self.pod_unreadable = Some(truncate(why, MESSAGE_MAX).to_string());
        self.step(now).await;
    }

    /// While held for an unreadable Pod: the condition Unknown / PodUnreadable, once the Node
    /// is known.
    async fn write_pod_unreadable(&mut self) {
        let (Some(why), Some(node)) = (self.pod_unreadable.clone(), self.node.as_ref()) else {
            return;
        };
        let type_ = &self.opts.condition_type;
        if let Some(c) = condition_update(
            type_,
            our_condition(node, type_),
            "Unknown",
            Reason::PodUnreadable,
            &why,
            Timestamp::now(),
            &self.heartbeat,
        ) {
            match self.api.patch_condition(&c).await {
                Ok(n) => self.node = Some(n),
                Err(e) => tracing::debug!(error = %e, "cannot write PodUnreadable"),
            }
        }
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    /// A new report of the enforce loop.
    pub async fn on_report(&mut self, report: Arc<Report>, now: Instant) {
        if self.proven && report.netns_unverified() {
            return;
        }
        self.report = Some(report);
        self.step(now).await;
    }

    /// The Node as the watch (or a GET) shows it; `None`: it does not exist. An object older
    /// than the one the agent already holds (its own write's answer) is ignored, so a lagging
    /// watch never makes the next taint write carry a stale resourceVersion.
    pub async fn on_node(&mut self, node: Option<Node>, now: Instant) {
        match node {
            Some(n) => {
                if self.node.as_ref().is_some_and(|known| is_older(&n, known)) {
                    return;
                }
                self.node = Some(n);
                self.node_missing_logged = false;
                if self.unreachable {
                    // The watch got through: the API is back, write now rather than at the
                    // next retry.
                    self.retry_at = None;
                }
            }
            None => {
                self.node = None;
                if !self.node_missing_logged {
                    tracing::warn!(node = %self.opts.node_name, "node object not found; waiting for it");
                    self.node_missing_logged = true;
                }
            }
        }
        self.step(now).await;
    }

    /// An event of the enforce loop, published once the node's marks are written.
    pub async fn on_event(&mut self, e: &Event, now: Instant) {
        if let Some(w) = LastWriter::of(e, Timestamp::now()) {
            self.last_writer = Some(w);
        }
        self.queue.push(event_for(e));
        self.step(now).await;
    }

    /// A retry or a heartbeat is due.
    pub async fn on_timer(&mut self, now: Instant) {
        self.step(now).await;
    }

    /// When [`Gate::on_timer`] should run next.
    pub fn next_wake(&self, now: Instant) -> Instant {
        if let Some(at) = self.retry_at {
            return at;
        }
        if self.held {
            // Nothing is written while held: an overdue heartbeat is no reason to wake.
            return now + self.opts.heartbeat;
        }
        // A new writer held back by the annotation's rate limit is written when it ends.
        let writer = self.pending_writer(now).and_then(|_| {
            self.last_writer_written
                .map(|t| (t + LAST_WRITER_MIN_INTERVAL).max(now + Duration::from_millis(100)))
        });
        // A pass that does not finish by its deadline turns the condition Unknown then; while
        // stalled, the end of the stall is looked for every second.
        let stall = self.clock.as_ref().map(|c| {
            if c.stalled(now).is_some() {
                now + Duration::from_secs(1)
            } else {
                c.deadline().max(now + Duration::from_millis(100))
            }
        });
        let last = self
            .node
            .as_ref()
            .and_then(|n| our_condition(n, &self.opts.condition_type))
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let wait = match last {
            Some(t) => {
                let until = self
                    .heartbeat
                    .next_after(t)
                    .duration_since(Timestamp::now());
                Duration::try_from(until)
                    .unwrap_or_default()
                    .max(Duration::from_millis(100))
            }
            None => self.opts.heartbeat,
        };
        let next = stall.map_or(now + wait, |s| s.min(now + wait));
        writer.map_or(next, |w| w.min(next))
    }

    /// A named writer the node does not show yet (whether or not the rate limit lets it be
    /// written now).
    fn pending_writer(&self, now: Instant) -> Option<&LastWriter> {
        if self.refusing_annotations(now) {
            return None;
        }
        let seen = self.last_writer.as_ref()?;
        let shown = self
            .node
            .as_ref()
            .and_then(|n| annotations::annotation(n, LAST_WRITER_ANNOTATION));
        annotations::last_writer_update(shown, Some(seen), None).map(|_| seen)
    }

    /// Whether the annotations were refused by the admission policy less than
    /// [`REFUSED_RETRY`] ago.
    fn refusing_annotations(&self, now: Instant) -> bool {
        self.annotations_refused
            .is_some_and(|t| now.saturating_duration_since(t) < REFUSED_RETRY)
    }

    /// Graceful stop: the condition says Unknown / AgentStopped; label and taint stay, so a
    /// rolling update does not flap scheduling. One attempt, bounded by the request timeout.
    pub async fn on_stop(&mut self) {
        let type_ = &self.opts.condition_type;
        let stopped = condition_update(
            type_,
            self.node.as_ref().and_then(|n| our_condition(n, type_)),
            "Unknown",
            Reason::AgentStopped,
            "redis-node-tuner stopped; kernel settings, label and taint are left as they were",
            Timestamp::now(),
            &Heartbeat::always(),
        );
        if let Some(c) = stopped {
            match self.api.patch_condition(&c).await {
                Ok(_) => tracing::info!("condition set to Unknown/AgentStopped"),
                Err(e) => tracing::warn!(error = %e, "cannot write AgentStopped"),
            }
        }
    }

    async fn step(&mut self, now: Instant) {
        if self.held {
            self.write_pod_unreadable().await;
            return;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        let (Some(report), Some(_)) = (self.report.clone(), self.node.as_ref()) else {
            return;
        };
        let result = match self.sync(&report, now).await {
            Ok(()) => self.flush_events().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.reach.answered();
                self.unreachable = false;
                if let Some(o) = self.outage.take() {
                    tracing::info!(
                        failing_ms = o.since.elapsed().as_millis() as u64,
                        retries = o.retries,
                        "node marks written again"
                    );
                }
                self.retry.reset();
                self.retry_at = None;
                if report.ready && !self.ready_logged {
                    self.ready_logged = true;
                    tracing::info!(
                        since_start_ms = self.started.elapsed().as_millis() as u64,
                        "node marked ready: label set, taint removed, condition True"
                    );
                }
            }
            Err(e) => {
                let was_unreachable = self.unreachable;
                // An unreachable API is logged once per outage by `reach`; a refusal below.
                self.unreachable = self.reach.failed(&e);
                if was_unreachable && !self.unreachable {
                    // The API answers again, if only with a refusal (an apiserver still starting
                    // answers 403 until its RBAC caches fill): back off from the start again
                    // rather than at the outage's length.
                    self.retry.reset();
                }
                let delay = self.retry.next_delay();
                self.retry_at = Some(now + delay);
                if self.unreachable {
                    return;
                }
                match &mut self.outage {
                    Some(o) => {
                        o.retries += 1;
                        tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot update the node; retrying");
                    }
                    None => {
                        tracing::warn!(error = %e, "cannot update the node; retrying with backoff");
                        self.outage = Some(Outage {
                            since: now,
                            retries: 0,
                        });
                    }
                }
            }
        }
    }

    /// Brings the node's marks to what `report` says. Writes only what differs: label, then
    /// taint, then condition.
    async fn sync(&mut self, report: &Report, now: Instant) -> Result<(), GateError> {
        let Some(node) = self.node.clone() else {
            return Ok(());
        };
        if let Some(c) = &self.clock
            && let Some(age) = c.stalled(Instant::now())
        {
            // The last report is stale: label and taint stay as they are (as on a stop), the
            // condition says why nothing is known.
            if let Some(cond) = condition_update(
                &self.opts.condition_type,
                our_condition(&node, &self.opts.condition_type),
                "Unknown",
                Reason::EnforceStalled,
                &format!(
                    "no enforce pass has finished for over {} s: the kernel settings are not being enforced (a kernel write or a journal fsync hangs)",
                    c.bound().as_secs()
                ),
                Timestamp::now(),
                &self.heartbeat,
            ) {
                tracing::error!(
                    stalled_s = age.as_secs(),
                    "enforce loop stalled: condition set to Unknown/EnforceStalled"
                );
                self.node = Some(self.api.patch_condition(&cond).await?);
            }
            return Ok(());
        }
        let want = desired_marks(report);
        let writer = annotations::last_writer_update(
            annotations::annotation(&node, LAST_WRITER_ANNOTATION),
            self.last_writer.as_ref(),
            self.last_writer_written
                .map(|t| now.saturating_duration_since(t)),
        );
        let refusing = self.refusing_annotations(now);
        let want_annotations = if refusing {
            annotations::current(&node)
        } else {
            annotations::desired(&node, writer.as_ref())
        };
        if !label_matches(&node, want.label) || !annotations::matches(&node, &want_annotations) {
            let mut n = match self.api.apply_label(want.label, &want_annotations).await {
                // An admission policy older than the annotations: the label (the gate) must not
                // wait for them. Applied again without changing them; tried again later.
                Err(e) if e.is_annotations_refused() && !refusing => {
                    tracing::warn!(error = %e, retry_in_s = REFUSED_RETRY.as_secs(),
                        "the admission policy refuses the agent's annotations (apply the policy of this version); marks are written without them");
                    self.annotations_refused = Some(now);
                    self.api
                        .apply_label(want.label, &annotations::current(&node))
                        .await?
                }
                r => {
                    let n = r?;
                    if writer.is_some() && !refusing {
                        self.last_writer_written = Some(now);
                    }
                    n
                }
            };
            if !want.label
                && n.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(LABEL))
            {
                // Another manager's copy of the label: absent must really be absent.
                n = self.api.remove_label().await?;
            }
            self.node = Some(n);
        }
        if report.ready {
            self.in_tune_seen = true;
        }
        // With the taint turned off (`none`) it is never added, and removed if present.
        let effect = if want.taint {
            self.taint_effect()
        } else {
            None
        };
        let ours = effect.as_deref();
        if let Some(n) = &self.node
            && taints_with(taints(n), ours).is_some()
        {
            self.node = Some(self.api.set_taint(Some(n), ours).await?);
        }
        let type_ = &self.opts.condition_type;
        if let Some(c) = condition_update(
            type_,
            self.node.as_ref().and_then(|n| our_condition(n, type_)),
            want.status,
            want.reason,
            &want.message,
            Timestamp::now(),
            &self.heartbeat,
        ) {
            self.node = Some(self.api.patch_condition(&c).await?);
        }
        if self.was_ready != Some(report.ready) {
            if report.ready {
                self.queue.push(node_ready());
            }
            self.was_ready = Some(report.ready);
        }
        Ok(())
    }

    /// The effect of the taint to write now: `--taint-effect`, except that `NoExecute` is
    /// held back as `NoSchedule` until this agent has seen the node in tune. A node that has
    /// not been in tune since the agent started fails for a reason most likely common to its
    /// pool (a bad profile, a new agent version, an OS upgrade whose policy denies the writes):
    /// evicting every Redis pod of the pool for it does more harm than keeping them where they
    /// run. A node that was in tune and then cannot be corrected is that node's own regression,
    /// and gets `NoExecute`.
    fn taint_effect(&mut self) -> Option<String> {
        let effect = self.opts.taint_effect.clone()?;
        if effect != "NoExecute" || self.in_tune_seen {
            return Some(effect);
        }
        if !self.noexecute_held_logged {
            tracing::warn!(
                "taint effect NoExecute held back as NoSchedule: the node has not been in tune since this agent started (a failure common to the pool must not evict every Redis pod); NoExecute applies once the node has been in tune and then cannot be corrected"
            );
            self.noexecute_held_logged = true;
        }
        Some("NoSchedule".into())
    }

    /// Publishes queued events in order. An API that cannot be reached stops it (the event is
    /// kept for the retry); one that refuses an event for good (403, 422, ...) has it dropped
    /// and counted, and the others still go out. Drift events that waited together (the first
    /// pass, a backlog) go out as one summary.
    async fn flush_events(&mut self) -> Result<(), GateError> {
        self.queue.summarize_drift();
        let uid = self.node.as_ref().and_then(|n| n.metadata.uid.clone());
        while let Some(e) = self.queue.pop() {
            match self.api.publish(&e, uid.as_deref()).await {
                Ok(()) => self.refusal_logged = false,
                Err(err) if is_unreachable(&err) => {
                    self.queue.unpop(e);
                    return Err(err);
                }
                Err(err) => {
                    self.refused_events += 1;
                    if !self.refusal_logged {
                        tracing::warn!(error = %err, reason = %e.reason,
                            "the API refused an event; dropped (counted in kube_events_dropped_total)");
                        self.refusal_logged = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Events dropped since the last call: (refused by the API, dropped from the full queue).
    pub fn take_dropped(&mut self) -> (u64, u64) {
        let full = self.queue.dropped() - self.queue_dropped_seen;
        self.queue_dropped_seen = self.queue.dropped();
        (std::mem::take(&mut self.refused_events), full)
    }
}

#[cfg(test)]
mod tests;
