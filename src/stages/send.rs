//! What every sink that sends to a server shares (`webhook`, `alertmanager`, `loki`, `nats`):
//! how one attempt ended ([`Attempt`]), the retry loop with backoff, `Retry-After`, leadership
//! fencing and stopping ([`Retrier::run`]), how an HTTP answer is classified
//! ([`http_answer`]), request metrics per stage ([`RequestMetrics`]), and the in-memory
//! delivery of batches with their acknowledgements ([`in_memory`]).
//!
//! The rules are the same for all of them: connection errors, timeouts, 408, 429 and 5xx are
//! retried with exponential backoff and jitter, honouring `Retry-After`; other answers are
//! permanent. Events are acknowledged as delivered only after the server accepted them; a
//! delivery that failed for good is logged with the events' uids and counted as discarded.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::Digest;

use crate::backoff::BackoffConfig;
use crate::component::{Invalid, SinkContext};
use crate::event::ack::Status;
use crate::event::{Event, ack_all};
use crate::health::StageHealth;
use crate::metrics as shared_metrics;

/// How a sink's HTTP client is made.
pub struct ClientOptions<'a> {
    pub timeout: Duration,
    /// Extra request headers (values are secrets: never echoed).
    pub headers: &'a BTreeMap<String, String>,
    /// A PEM file of extra CA certificates.
    pub ca_file: Option<&'a Path>,
    pub insecure_skip_verify: bool,
    pub stage: &'a str,
    pub what: &'static str,
}

/// The request headers, checked; an error names the field (`headers.NAME`).
pub fn parse_headers(h: &BTreeMap<String, String>) -> Result<reqwest::header::HeaderMap, Invalid> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in h {
        let field = format!("headers.{k}");
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Invalid::new(&field, format!("`{k}` is not a header name")))?;
        // The value may hold a secret: never echoed.
        let value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|_| Invalid::new(&field, "the value is not a valid header value"))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The certificates of `ca_file`: at least one, or an error.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, Invalid> {
    let bad = |why: String| Invalid::new("ca_file", format!("{}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into(),
        ));
    }
    Ok(certs)
}

/// `raw` as an absolute http(s) URL, with `api_path` appended unless its path ends with it
/// already; an error names `field` and never shows the URL's secrets.
pub fn http_url(field: &str, raw: &str, api_path: Option<&str>) -> Result<reqwest::Url, Invalid> {
    let mut url = reqwest::Url::parse(raw).map_err(|e| {
        Invalid::new(
            field,
            format!("`{}` is not a valid URL: {e}", crate::redact::url(raw)),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid::new(
            field,
            format!("scheme `{}` is not http or https", url.scheme()),
        ));
    }
    if let Some(api) = api_path {
        let base = url.path().trim_end_matches('/').to_string();
        if !base.ends_with(api) {
            url.set_path(&format!("{base}{api}"));
        }
    }
    Ok(url)
}

/// A Prometheus/Loki label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The checks of `headers` and `ca_file` (for `validate`).
pub fn check_http(headers: &BTreeMap<String, String>, ca_file: Option<&Path>) -> Vec<Invalid> {
    let mut out = Vec::new();
    if let Err(i) = parse_headers(headers) {
        out.push(i);
    }
    if let Some(path) = ca_file
        && let Err(e) = ca_certificates(path)
    {
        out.push(e);
    }
    out
}

/// The HTTP client of a sink.
pub fn client(o: &ClientOptions<'_>) -> Result<reqwest::Client, Invalid> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(o.timeout)
        .default_headers(parse_headers(o.headers)?);
    if let Some(path) = o.ca_file {
        for cert in ca_certificates(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if o.insecure_skip_verify {
        tracing::warn!(
            stage = o.stage,
            "insecure_skip_verify: TLS certificates of the {} are not checked",
            o.what
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| Invalid::new("ca_file", format!("cannot build the HTTP client: {e}")))
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    Delivered,
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Permanent(String),
}

/// How long a delivery keeps retrying retryable failures.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// This many retries after the first attempt.
    Retries(u32),
    /// Until this moment.
    Until(Instant),
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        attempts: u32,
    },
    /// Refused for good, or out of retries: logged already.
    Failed {
        reason: String,
        attempts: u32,
    },
    /// Stopped before the next retry because the stage is stopping or no longer leads.
    Interrupted,
}

/// A `Retry-After` value: seconds, or an HTTP date.
pub fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(Duration::from_millis(secs.max(0).unsigned_abs()))
}

/// `unready_after`'s default for the sinks that send to a server.
pub fn default_unready_after() -> crate::types::Dur {
    crate::types::Dur::secs(60)
}

/// The metric class of a request's result: `2xx` .. `5xx`, `timeout`, `connection_error`.
pub fn status_class(r: &Result<reqwest::Response, reqwest::Error>) -> &'static str {
    match r {
        Ok(resp) => match resp.status().as_u16() {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        Err(e) if e.is_timeout() => "timeout",
        Err(_) => "connection_error",
    }
}

/// A non-2xx answer: 408, 429 and 5xx are retried (after `Retry-After` if given), any other is
/// permanent. The reason carries the status and the start of the body.
pub async fn http_refusal(resp: reqwest::Response) -> Attempt {
    let status = resp.status();
    let after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let text = resp.text().await.unwrap_or_default();
    let why = format!(
        "HTTP {status}: {}",
        text.trim().chars().take(200).collect::<String>()
    );
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        Attempt::Retry { why, after }
    } else {
        Attempt::Permanent(why)
    }
}

/// A request that ended: 2xx is delivered; no answer (timeout, connection) is retried;
/// any other answer as [`http_refusal`] says. `describe` says why a connection failed, without
/// secrets.
pub async fn http_answer(
    r: Result<reqwest::Response, reqwest::Error>,
    timeout: Duration,
    describe: impl FnOnce(reqwest::Error) -> String,
) -> Attempt {
    match r {
        Ok(resp) if resp.status().is_success() => Attempt::Delivered,
        Ok(resp) => http_refusal(resp).await,
        Err(e) => {
            // Which server: host and port only (a URL's path, query and user info may hold
            // credentials; the host and port never do).
            let target = e
                .url()
                .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
                .unwrap_or_else(|| "the server".to_string());
            Attempt::Retry {
                why: if e.is_timeout() {
                    format!("{target} did not answer within {timeout:?}")
                } else {
                    format!("cannot connect to {target}: {}", describe(e))
                },
                after: None,
            }
        }
    }
}

/// The names of one sink type's request metrics.
pub struct MetricNames {
    pub requests: &'static str,
    pub seconds: &'static str,
    pub retries: &'static str,
}

/// Describes a sink type's request metrics: what its requests are, what its latency is, what
/// its retries are.
pub fn describe_requests(
    names: &MetricNames,
    requests: &'static str,
    seconds: &'static str,
    retries: &'static str,
) {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(names.requests, Unit::Count, requests);
    describe_histogram!(names.seconds, Unit::Seconds, seconds);
    describe_counter!(names.retries, Unit::Count, retries);
}

/// The request metrics of one stage, looked up once.
pub struct RequestMetrics {
    /// Requests by outcome, in [`RequestMetrics::CLASSES`] order.
    requests: Vec<metrics::Counter>,
    seconds: metrics::Histogram,
    retries: metrics::Counter,
}

impl RequestMetrics {
    pub const CLASSES: [&'static str; 6] =
        ["2xx", "3xx", "4xx", "5xx", "timeout", "connection_error"];

    pub fn new(names: &MetricNames, stage: &str) -> RequestMetrics {
        RequestMetrics {
            requests: Self::CLASSES
                .iter()
                .map(|c| metrics::counter!(names.requests, "stage" => stage.to_string(), "status_class" => *c))
                .collect(),
            seconds: metrics::histogram!(names.seconds, "stage" => stage.to_string()),
            retries: metrics::counter!(names.retries, "stage" => stage.to_string()),
        }
    }

    /// One request that ended in `class` (one of [`RequestMetrics::CLASSES`]).
    pub fn request(&self, class: &str, seconds: f64) {
        if let Some(i) = Self::CLASSES.iter().position(|c| *c == class) {
            self.requests[i].increment(1);
        }
        self.seconds.record(seconds);
    }

    pub fn retry(&self) {
        self.retries.increment(1);
    }
}

/// The retry loop of one stage: who it is (for logs), its backoff, its leadership, its metrics.
pub struct Retrier<'a> {
    pub stage: &'a str,
    /// The sink type, for log lines (`webhook`, `alertmanager`, ...).
    pub what: &'static str,
    pub backoff: &'a BackoffConfig,
    pub leadership: &'a crate::leader::Leadership,
    pub metrics: &'a RequestMetrics,
}

impl Retrier<'_> {
    /// Runs `attempt` until it delivers, fails for good, or `budget` is spent; a failure for
    /// good is logged with the first uids of `events` before it is returned. A replica that stops leading abandons
    /// its request at once (fencing): the next leader sends it, with the same `id`. With
    /// `stop`, a retry is not waited for once the stage is stopping.
    pub async fn run<F, Fut>(
        &self,
        id: &str,
        events: &[Event],
        health: Option<&StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
        attempt: F,
    ) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt>,
    {
        let uids = events.iter().map(|e| e.uid.as_str());
        self.run_for(id, uids, health, budget, stop, attempt).await
    }

    /// [`Retrier::run`] for events known by their `uids` only.
    pub async fn run_for<'u, F, Fut>(
        &self,
        id: &str,
        uids: impl Iterator<Item = &'u str>,
        health: Option<&StageHealth>,
        budget: Budget,
        mut stop: Option<tokio::sync::watch::Receiver<bool>>,
        mut attempt: F,
    ) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt>,
    {
        let (stage, what) = (self.stage, self.what);
        // The first ones, for log lines.
        let uids: Vec<&str> = uids.take(10).collect();
        let mut n = 0u32;
        let mut backoff = self.backoff.start();
        let mut lead = self.leadership.clone();
        loop {
            if !lead.is_leader() {
                return Outcome::Interrupted;
            }
            let result = tokio::select! {
                a = attempt() => a,
                () = lead.lost() => {
                    tracing::warn!(stage, delivery_id = %id, "no longer the leader: request abandoned; the next leader sends it");
                    return Outcome::Interrupted;
                }
            };
            match result {
                Attempt::Delivered => {
                    health.inspect(|h| h.synced());
                    return Outcome::Delivered { attempts: n + 1 };
                }
                Attempt::Permanent(reason) => {
                    tracing::error!(stage, delivery_id = %id, uids = ?uids, reason = %reason, "{what} refused the delivery (permanent); not retried");
                    return Outcome::Failed {
                        reason,
                        attempts: n + 1,
                    };
                }
                Attempt::Retry { why, after } => {
                    health.inspect(|h| h.failing());
                    let jittered = backoff.next_delay();
                    let wait = after.map_or(jittered, |a| a.max(jittered));
                    let out_of_budget = match budget {
                        Budget::Retries(max) => n >= max,
                        Budget::Until(t) => Instant::now() + wait > t,
                    };
                    if out_of_budget {
                        tracing::error!(stage, delivery_id = %id, uids = ?uids, attempts = n + 1, reason = %why, "{what} delivery failed after all retries");
                        return Outcome::Failed {
                            reason: why,
                            attempts: n + 1,
                        };
                    }
                    if stop.as_ref().is_some_and(|s| *s.borrow()) {
                        tracing::info!(stage, delivery_id = %id, reason = %why, "{what} delivery failed while stopping; it stays queued");
                        return Outcome::Interrupted;
                    }
                    n += 1;
                    self.metrics.retry();
                    tracing::warn!(stage, delivery_id = %id, attempt = n, reason = %why, wait = ?wait, "{what} delivery failed; retrying");
                    match &mut stop {
                        None => tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = lead.lost() => return Outcome::Interrupted,
                        },
                        Some(s) => tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = s.wait_for(|stopping| *stopping) => return Outcome::Interrupted,
                            () = lead.lost() => return Outcome::Interrupted,
                        },
                    }
                }
            }
        }
    }
}

/// The delivery id of `events` (the webhook's `X-Eventflow-Delivery-Id`, NATS' `Nats-Msg-Id`):
/// derived from their uids and resource versions, so the same across retries and restarts.
pub fn delivery_id(events: &[Event]) -> String {
    delivery_id_of(
        events
            .iter()
            .map(|e| (e.uid.as_str(), e.resource_version.as_str())),
    )
}

/// [`delivery_id`] of uid/resourceVersion pairs (an Elasticsearch data stream's `_id` is that
/// of the one event it holds).
pub fn delivery_id_of<'a>(versions: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = sha2::Sha256::new();
    for (uid, rv) in versions {
        h.update(uid.as_bytes());
        h.update(b"/");
        h.update(rv.as_bytes());
        h.update(b"\n");
    }
    let d = h.finalize();
    let mut s = String::with_capacity(32);
    for b in d.iter().take(16) {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// A sink's sending side, as [`in_memory`] drives it.
pub trait Deliver: Send + Sync + 'static {
    /// Delivers one batch under the stage's retry rules.
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a StageHealth,
    ) -> BoxFuture<'a, Outcome>;

    /// The discard reason of a batch that failed for good with `why`, when the sink tells
    /// refusals apart (Loki: out of order, too old, line too long); `None`: the stage's
    /// general failure reason.
    fn discard_reason(&self, why: &str) -> Option<&'static str> {
        let _ = why;
        None
    }
}

/// Without a durable queue: batches go out as they fill, `max_in_flight` at a time, each
/// acknowledged when it is delivered or has failed for good (counted as discarded with
/// `failed_reason`, or the reason [`Deliver::discard_reason`] gives).
pub async fn in_memory<D: Deliver>(
    d: &Arc<D>,
    cx: &mut SinkContext,
    health: &Arc<StageHealth>,
    batch: &super::batch::BatchConfig,
    max_in_flight: usize,
    failed_reason: &'static str,
) {
    let processing = cx.metrics.processing.clone();
    let latency = shared_metrics::latency(&cx.metrics.id, cx.metrics.type_name);
    let failed = cx.metrics.discarded(failed_reason);
    let (id, type_name) = (cx.metrics.id.clone(), cx.metrics.type_name);
    super::batch::run_batched(
        &mut cx.input,
        batch.max_events,
        batch.max_wait.0,
        max_in_flight,
        |batch| {
            let (d, health, id) = (d.clone(), health.clone(), id.clone());
            let (processing, latency, failed) =
                (processing.clone(), latency.clone(), failed.clone());
            // A task per batch: with several in flight, rendering bodies uses every worker.
            let task = tokio::spawn(async move {
                let started = Instant::now();
                match d.deliver(&batch, &health).await {
                    Outcome::Delivered { .. } => {
                        // Events the sink refused on their own (a line it could not make, an
                        // item the server refused) keep that outcome and are not counted sent.
                        for e in batch.iter().filter(|e| !e.has_outcome()) {
                            latency.event(e);
                            e.ack(Status::Delivered);
                        }
                    }
                    Outcome::Failed { reason, .. } => {
                        // Events the sink refused on their own are counted already.
                        let rest: Vec<&Event> = batch.iter().filter(|e| !e.has_outcome()).collect();
                        match d.discard_reason(&reason) {
                            Some(r) => shared_metrics::discarded(&id, type_name, r)
                                .increment(rest.len() as u64),
                            None => failed.increment(rest.len() as u64),
                        }
                        for e in rest {
                            e.refuse(&id, &reason);
                        }
                    }
                    Outcome::Interrupted => {
                        // Not sent, not given up: the source sees it failed and replays it.
                        failed.increment(batch.len() as u64);
                        ack_all(&batch, Status::Errored);
                    }
                }
                processing.record(started.elapsed().as_secs_f64());
            });
            async move {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    // The stage fails with it (its events already failed with the task).
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        },
    )
    .await;
}

/// A sink that sends to a server: through its durable queue when it has one (`durable: true`),
/// else batch by batch in memory. `loki` and `otlp` run this way.
pub struct SendingSink<S: Deliver + super::webhook::durable::Sender> {
    pub sender: Arc<S>,
    /// With `durable`: its queue.
    pub queue: Option<super::webhook::durable::Queue>,
    pub health: crate::health::Health,
    pub shared: crate::component::Shared,
    pub unready_after: Duration,
    pub batch: super::batch::BatchConfig,
    pub max_in_flight: usize,
    /// The discard reason of a batch that failed for good (`loki_failed`, ...).
    pub failed_reason: &'static str,
}

impl<S: Deliver + super::webhook::durable::Sender> crate::component::Sink for SendingSink<S> {
    fn run(
        self: Box<Self>,
        mut cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), crate::component::StageError>> {
        Box::pin(async move {
            let this = *self;
            let health = this.health.register(&cx.metrics.id, this.unready_after);
            health.synced();
            if let Some(queue) = this.queue {
                let sender = this.sender.clone() as Arc<dyn super::webhook::durable::Sender>;
                queue
                    .run(sender, &this.shared, &mut cx, health.clone())
                    .await;
            } else {
                in_memory(
                    &this.sender,
                    &mut cx,
                    &health,
                    &this.batch,
                    this.max_in_flight,
                    this.failed_reason,
                )
                .await;
            }
            health.stopped();
            Ok(())
        })
    }
}
