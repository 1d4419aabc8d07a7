//! `/metrics`, `/healthz` and `/readyz` over HTTP/1.1 (hyper).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::{PassClock, Report};
use crate::metrics::Metrics;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` answers, rendered on request from the latest published report, and what
/// `/healthz` answers: ok until a critical task of the daemon has died.
#[derive(Debug)]
pub struct Health {
    reports: watch::Receiver<Option<Arc<Report>>>,
    dead: Mutex<Option<String>>,
    /// When the enforce thread last finished a pass.
    clock: Option<Arc<PassClock>>,
}

impl Health {
    pub fn new(reports: watch::Receiver<Option<Arc<Report>>>) -> Health {
        Health {
            reports,
            dead: Mutex::new(None),
            clock: None,
        }
    }

    /// `/healthz` and `/readyz` fail while no pass has finished within the clock's bound.
    pub fn with_clock(mut self, clock: Arc<PassClock>) -> Health {
        self.clock = Some(clock);
        self
    }

    /// Why the enforce loop is stalled, if it is.
    fn stalled(&self) -> Option<String> {
        let c = self.clock.as_ref()?;
        c.stalled(Instant::now()).map(|age| {
            format!(
                "no enforce pass has finished for {} s (bound {} s): the kernel settings are not being enforced",
                age.as_secs(),
                c.bound().as_secs()
            )
        })
    }

    /// From now on `/healthz` fails with `why`.
    pub fn set_dead(&self, why: String) {
        *self.dead.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// `None` while healthy, else why not.
    pub fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn healthz(&self) -> (StatusCode, String) {
        match self.dead().or_else(|| self.stalled()) {
            None => (StatusCode::OK, "ok\n".into()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {why}\n"),
            ),
        }
    }

    fn readyz(&self) -> (StatusCode, String) {
        if let Some(why) = self.stalled() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            );
        }
        let Some(report) = self.reports.borrow().clone() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no check yet\n".into(),
            );
        };
        if report.ready {
            let mut s = String::from("ready: every enforce-mode setting is in sync\n");
            if let Some(why) = &report.lock_missing {
                s.push_str(&format!(
                    "writers lock not in force ({why}): foreign writes are corrected, not refused\n"
                ));
            }
            return (StatusCode::OK, s);
        }
        let mut s = String::from("not ready:\n");
        for k in report.failing() {
            s.push_str(&format!(
                "  {} desired {} actual {}{}\n",
                k.name,
                k.desired,
                k.actual.as_deref().unwrap_or("?"),
                k.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        (StatusCode::SERVICE_UNAVAILABLE, s)
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn handle(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let wants_om = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if wants_om {
                respond(StatusCode::OK, OPENMETRICS, metrics.encode_openmetrics())
            } else {
                respond(StatusCode::OK, PROMETHEUS_TEXT, metrics.encode_prometheus())
            }
        }
        "/healthz" => {
            let (code, body) = health.healthz();
            respond(code, "text/plain", body)
        }
        "/readyz" => {
            let (code, body) = health.readyz();
            respond(code, "text/plain", body)
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Serves until the task is dropped. Accept errors are logged and retried, never fatal.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (m, h) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = handle(&req, &m, &h);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}
