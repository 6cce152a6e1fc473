//! The engine's HTTP endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (alive),
//! `GET /readyz` (the pipeline is running; JSON with `Accept: application/json`, which also
//! says whether this replica leads), `POST /-/reload` (reload the pipeline file now),
//! `GET /-/tap?stage=ID` (the events leaving a stage, as JSON lines, while the client reads).
//!
//! The endpoint has no authentication of its own: keep it on localhost (the default) or
//! behind a NetworkPolicy. Mutating endpoints refuse requests that a web page could make (any
//! `Origin` or `Sec-Fetch-Site` header: a browser sends one, curl and Prometheus do not), and
//! with `EVENTFLOW_API_TOKEN` set they require `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, oneshot};

use crate::reload::{ReloadOutcome, ReloadRequest};

/// What the endpoint serves from.
#[derive(Clone)]
pub struct ApiState {
    pub metrics: Option<PrometheusHandle>,
    pub ready: Arc<AtomicBool>,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// With a token, mutating endpoints require `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
    /// The running pipeline's health registry.
    pub health: crate::health::Health,
    /// The running pipeline's tap points.
    pub taps: crate::component::tap::Taps,
    /// Whether this replica leads (with `leader_election`; a standby is ready too).
    pub leadership: crate::leader::Leadership,
}

/// The environment variable that holds the bearer token of mutating endpoints.
pub const TOKEN_ENV: &str = "EVENTFLOW_API_TOKEN";

impl ApiState {
    /// Why a mutating request is refused, if it is.
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        if headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site") {
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    "requests from web pages are refused (the request has an Origin header); use curl or a signal\n",
                )
                    .into_response(),
            );
        }
        let token = self.token.as_deref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return None;
        }
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                format!("this endpoint needs `Authorization: Bearer <token>` (the token is in ${TOKEN_ENV})\n"),
            )
                .into_response(),
        )
    }
}

/// Compares two secrets in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds `addr` and serves until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .route("/-/tap", get(tap))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the API endpoint stopped");
        }
    });
    tracing::info!(listen = %local, "API endpoint: /metrics /healthz /readyz /-/reload");
    Ok((local, task))
}

async fn metrics(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => {
            crate::metrics::update_process();
            crate::metrics::ready(readiness(&s).is_ok());
            (
                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                crate::metrics::render(h),
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response(),
    }
}

/// The most events a tap holds for a listener that reads slower than they come.
const TAP_BUFFER: usize = 1024;

/// `GET /-/tap?stage=ID[&limit=N]`: the events leaving stage `ID` (entering it, for a sink)
/// as JSON lines while the client reads, up to `limit`. What does not fit the listener's
/// buffer is dropped and said in a `{"tap_dropped": N}` line (N: dropped so far). Refused to
/// web pages and, with a token set, without it: the events may hold what a cluster says.
async fn tap(State(s): State<ApiState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    if let Some(r) = s.refuse(&headers) {
        return r;
    }
    let params: Vec<(&str, &str)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let Some(stage) = get("stage") else {
        return (StatusCode::BAD_REQUEST, "name the stage: /-/tap?stage=ID\n").into_response();
    };
    let known = s.taps.stages();
    if !known.iter().any(|k| k == stage) {
        return (
            StatusCode::NOT_FOUND,
            format!("no stage `{stage}` (stages: {})\n", known.join(", ")),
        )
            .into_response();
    }
    let limit = match get("limit").map(str::parse::<u64>) {
        None => u64::MAX,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            return (StatusCode::BAD_REQUEST, "`limit` is a positive number\n").into_response();
        }
    };
    let sub = s.taps.point(stage).subscribe(TAP_BUFFER);
    let tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let stream = futures::stream::unfold(
        (sub, limit, 0u64, tick),
        |(mut sub, left, reported, mut tick)| async move {
            if left == 0 {
                return None;
            }
            loop {
                let dropped = sub.dropped.load(Ordering::Relaxed);
                if dropped > reported {
                    let line = format!("{{\"tap_dropped\":{dropped}}}\n");
                    return Some((
                        Ok::<_, std::convert::Infallible>(line),
                        (sub, left, dropped, tick),
                    ));
                }
                tokio::select! {
                    line = sub.rx.recv() => {
                        let line = line?;
                        return Some((Ok(line + "\n"), (sub, left - 1, reported, tick)));
                    }
                    _ = tick.tick() => {}
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Ready, or why not.
fn readiness(s: &ApiState) -> Result<(), String> {
    if !s.ready.load(Ordering::Acquire) {
        return Err("the pipeline is not running".into());
    }
    let problems = s.health.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// This replica's role, with leader election: `leader` or `standby`.
fn role(s: &ApiState) -> Option<&'static str> {
    s.leadership.elected().then(|| {
        if s.leadership.is_leader() {
            "leader"
        } else {
            "standby"
        }
    })
}

/// Plain text, or JSON when the client asks for it (`Accept: application/json`):
/// `{"ready": bool, "problems": [..], "role": "leader"|"standby"|null, "identity": ..}`.
async fn readyz(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let result = readiness(&s);
    let code = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let body = serde_json::json!({
            "ready": result.is_ok(),
            "problems": result.as_ref().err().map(|w| vec![w.clone()]).unwrap_or_default(),
            "role": role(&s),
            "identity": s.leadership.identity(),
        });
        return (code, axum::Json(body)).into_response();
    }
    let text = match (&result, role(&s)) {
        (Ok(()), None) => "ready\n".to_string(),
        (Ok(()), Some(r)) => format!("ready ({r})\n"),
        (Err(why), _) => format!("not ready: {why}\n"),
    };
    (code, text).into_response()
}

async fn reload(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(refused) = s.refuse(&headers) {
        return refused;
    }
    let (tx, rx) = oneshot::channel();
    let req = ReloadRequest {
        trigger: "api",
        reply: Some(tx),
    };
    if s.reload.send(req).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is shutting down\n",
        )
            .into_response();
    }
    match rx.await {
        Ok(ReloadOutcome::Applied(summary) | ReloadOutcome::Unchanged(summary)) => {
            (StatusCode::OK, summary + "\n").into_response()
        }
        Ok(ReloadOutcome::Rejected(msg)) => (StatusCode::BAD_REQUEST, msg + "\n").into_response(),
        Ok(ReloadOutcome::RolledBack(msg)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, msg + "\n").into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is shutting down\n",
        )
            .into_response(),
    }
}
