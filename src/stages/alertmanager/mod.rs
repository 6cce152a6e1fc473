//! `alertmanager`: posts events as alerts to Alertmanager's API v2 (`POST /api/v2/alerts`).
//!
//! An event becomes one alert: low-cardinality labels from configured event fields (by default
//! `alertname` = reason, `namespace`, `kind`, `object`, `cluster`, and `severity` from the
//! event type), annotations (`message`, `count`, `first_seen`, `source`), `startsAt` = first
//! seen and `endsAt` = last seen + `resolve_after`. Alertmanager merges alerts by label set, so
//! a repeating event (each count update passes through the pipeline) updates its alert and
//! keeps it firing, and a quiet one resolves by itself at its `endsAt`.
//!
//! With several URLs (an Alertmanager cluster) each batch is posted to every one and is
//! delivered when any accepted it, as Prometheus does. Failures follow the webhook's rules
//! ([`super::send`]): retries with backoff for connection errors, timeouts, 429 and 5xx;
//! other answers are permanent and counted (`eventflow_events_discarded_total{reason=
//! "alertmanager_failed"}`); events are acknowledged only after an Alertmanager accepted them.
//!
//! Alertmanager keeps alerts in memory only: the alerts still firing are remembered (at most
//! `max_alerts`) and re-posted every `resolve_after / 3`, so a restarted Alertmanager learns
//! them again within that time.

pub mod alerts;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::future::BoxFuture;
use metrics::{Unit, describe_counter, describe_gauge};
use schemars::JsonSchema;
use serde::Deserialize;

use super::batch::BatchConfig;
use super::send::{self, Attempt, Budget, Outcome};
use crate::backoff::BackoffConfig;
use crate::component::{
    BuildContext, BuildError, Invalid, Sink, SinkContext, Stage, StageConfig, StageError,
    StageKind, StageType,
};
use crate::event::{Event, EventData, Field};
use crate::types::Dur;
use alerts::{Alert, Firing};

/// Posts events as alerts to Alertmanager.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Alertmanager's URLs (`http://alertmanager:9093`; `/api/v2/alerts` is added unless the
    /// URL already ends with it). With several (a cluster) each alert goes to every one and is
    /// delivered when any accepted it.
    pub urls: Vec<String>,
    /// Alert labels: label name -> event field. Keep them low-cardinality: Alertmanager groups
    /// and silences by them, and every distinct set is a separate alert. An empty value leaves
    /// the label out.
    #[serde(default = "default_labels")]
    pub labels: BTreeMap<String, Field>,
    /// The `severity` label by event type (`Warning`, `Normal`; `*` for any other). Empty: no
    /// `severity` label.
    #[serde(default = "default_severity")]
    pub severity: BTreeMap<String, String>,
    /// Labels with a fixed value on every alert (e.g. `team: platform`).
    #[serde(default)]
    pub static_labels: BTreeMap<String, String>,
    /// Alert annotations: name -> event field (empty values are left out).
    #[serde(default = "default_annotations")]
    pub annotations: BTreeMap<String, Field>,
    /// An alert ends this long after its event was last seen, unless the event repeats.
    #[serde(default = "default_resolve_after")]
    pub resolve_after: Dur,
    /// The alerts' `generatorURL` (a link back, e.g. a dashboard); empty: none.
    #[serde(default)]
    pub generator_url: String,
    /// Extra request headers, e.g. `Authorization` (values may use `${ENV}`; never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time limit of one request.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Retries after the first attempt, for retryable failures.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Exponential backoff between retries (each delay uniform in [d/2, d]).
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Alerts per request and the longest an event waits for its batch.
    #[serde(default)]
    pub batch: BatchConfig<100, 200>,
    /// Requests in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The most firing alerts remembered for re-posting (those ending first are forgotten
    /// beyond it; they still resolve at their `endsAt`).
    #[serde(default = "default_max_alerts")]
    pub max_alerts: usize,
    /// A PEM file of extra CA certificates to trust (`~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (dangerous; warned about at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Readiness: not ready once posts have been failing (retryably) for this long.
    #[serde(default = "send::default_unready_after")]
    pub unready_after: Dur,
}

fn default_labels() -> BTreeMap<String, Field> {
    BTreeMap::from([
        ("alertname".into(), Field::Reason),
        ("namespace".into(), Field::Namespace),
        ("kind".into(), Field::Kind),
        ("object".into(), Field::ObjectName),
        ("cluster".into(), Field::Cluster),
    ])
}
fn default_severity() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("Warning".into(), "warning".into()),
        ("*".into(), "info".into()),
    ])
}
fn default_annotations() -> BTreeMap<String, Field> {
    BTreeMap::from([
        ("message".into(), Field::Message),
        ("count".into(), Field::Count),
        ("first_seen".into(), Field::FirstSeen),
        ("source".into(), Field::Source),
    ])
}
fn default_resolve_after() -> Dur {
    Dur::secs(15 * 60)
}
fn default_timeout() -> Dur {
    Dur::secs(10)
}
fn default_retries() -> u32 {
    3
}
fn default_max_in_flight() -> usize {
    1
}
fn default_max_alerts() -> usize {
    10_000
}

pub const REQUESTS: &str = "eventflow_alertmanager_requests_total";
pub const SECONDS: &str = "eventflow_alertmanager_request_seconds";
pub const RETRIES: &str = "eventflow_alertmanager_retries_total";
pub const FIRING: &str = "eventflow_alertmanager_firing_alerts";
pub const FORGOTTEN: &str = "eventflow_alertmanager_forgotten_alerts_total";

const NAMES: send::MetricNames = send::MetricNames {
    requests: REQUESTS,
    seconds: SECONDS,
    retries: RETRIES,
};

fn describe() {
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests to Alertmanager (one per URL) by outcome: 2xx, 3xx, 4xx, 5xx, timeout, connection_error."
    );
    metrics::describe_histogram!(SECONDS, Unit::Seconds, "Alertmanager request latency.");
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Posts to Alertmanager retried after a retryable failure."
    );
    describe_gauge!(
        FIRING,
        Unit::Count,
        "Alerts still firing that the sink re-posts every resolve_after / 3."
    );
    describe_counter!(
        FORGOTTEN,
        Unit::Count,
        "Firing alerts forgotten at max_alerts (no longer re-posted; they resolve at their endsAt)."
    );
}

pub const TYPE: StageType = StageType {
    name: "alertmanager",
    kind: StageKind::Sink,
    summary: "posts events as alerts to Alertmanager (API v2): grouping, silences and routing there",
    parse: crate::component::parse_config::<AlertmanagerConfig>,
    schema: crate::component::schema_of::<AlertmanagerConfig>,
    describe,
};

impl AlertmanagerConfig {
    /// The alerts endpoints, checked.
    fn endpoints(&self) -> Result<Vec<reqwest::Url>, Invalid> {
        self.urls
            .iter()
            .enumerate()
            .map(|(i, u)| send::http_url(&format!("urls[{i}]"), u, Some("/api/v2/alerts")))
            .collect()
    }

    /// The alerts of `events`, in order.
    pub fn alerts(&self, events: &[EventData]) -> Vec<Alert> {
        let now = chrono::Utc::now();
        events.iter().map(|e| Alert::of(self, e, now)).collect()
    }
}

impl StageConfig for AlertmanagerConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        use crate::budget::Bound;
        let mut out = crate::budget::sending(self.max_in_flight, self.batch.max_events, false);
        out.push(Bound::new(
            "firing alerts re-posted",
            format!("max_alerts {} x 2 KiB", self.max_alerts),
            (self.max_alerts as u64).saturating_mul(2048),
        ));
        out
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.urls.is_empty() {
            out.push(Invalid::new("urls", "name at least one Alertmanager URL"));
        }
        if let Err(i) = self.endpoints() {
            out.push(i);
        }
        out.extend(send::check_http(&self.headers, self.ca_file.as_deref()));
        let names = self
            .labels
            .keys()
            .map(|k| ("labels", k))
            .chain(self.static_labels.keys().map(|k| ("static_labels", k)))
            .chain(self.annotations.keys().map(|k| ("annotations", k)));
        for (field, name) in names {
            if !send::label_name(name) {
                out.push(Invalid::new(
                    format!("{field}.{name}"),
                    "not a label name (letters, digits and `_`, not starting with a digit)",
                ));
            }
        }
        if self.labels.is_empty() && self.static_labels.is_empty() {
            out.push(Invalid::new(
                "labels",
                "an alert needs at least one label (Alertmanager identifies alerts by them)",
            ));
        }
        if self.resolve_after.0.as_secs() < 3 {
            out.push(Invalid::new("resolve_after", "must be at least 3s"));
        }
        if self.timeout.0.is_zero() {
            out.push(Invalid::new("timeout", "must be above zero"));
        }
        crate::component::at_least_one(&mut out, "batch.max_events", self.batch.max_events as u64);
        crate::component::at_least_one(&mut out, "max_in_flight", self.max_in_flight as u64);
        crate::component::at_least_one(&mut out, "max_alerts", self.max_alerts as u64);
        out.extend(self.backoff.validate("backoff"));
        out
    }

    fn warnings(&self) -> Vec<Invalid> {
        const HIGH: [Field; 6] = [
            Field::Uid,
            Field::Name,
            Field::ResourceVersion,
            Field::Message,
            Field::Count,
            Field::LastSeen,
        ];
        self.labels
            .iter()
            .filter(|(_, f)| HIGH.contains(f))
            .map(|(name, f)| {
                Invalid::new(
                    format!("labels.{name}"),
                    format!(
                        "`{}` differs for every event: each becomes an alert of its own (put it in `annotations`)",
                        f.name()
                    ),
                )
            })
            .collect()
    }

    fn preview(&self, events: &[EventData]) -> Option<Vec<Result<serde_json::Value, String>>> {
        let urls: Vec<String> = match self.endpoints() {
            Ok(u) => u.iter().map(|u| crate::redact::url(u.as_str())).collect(),
            Err(e) => return Some(vec![Err(e.to_string())]),
        };
        Some(
            self.alerts(events)
                .chunks(self.batch.max_events.max(1))
                .map(|chunk| {
                    Ok(serde_json::json!({
                        "method": "POST",
                        "urls": urls,
                        "body": serde_json::to_value(chunk).map_err(|e| e.to_string())?,
                    }))
                })
                .collect(),
        )
    }

    fn explain(&self, e: &EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        let alert = Alert::of(self, e, chrono::Utc::now());
        let steps = vec![Step::note(format!(
            "posted as an alert to {} Alertmanager URL(s); it resolves {} after the event was last seen unless the event repeats",
            self.urls.len(),
            self.resolve_after
        ))];
        match serde_json::to_value(&alert) {
            Ok(v) => Explanation::new(Verdict::Delivered, steps).with_output(v),
            Err(_) => Explanation::new(Verdict::Delivered, steps),
        }
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let fail = |e: Invalid| cx.failed(e);
            let endpoints = self.endpoints().map_err(fail)?;
            let client = send::client(&send::ClientOptions {
                timeout: self.timeout.0,
                headers: &self.headers,
                ca_file: self.ca_file.as_deref(),
                insecure_skip_verify: self.insecure_skip_verify,
                stage: &cx.id,
                what: "alertmanager",
            })
            .map_err(fail)?;
            Ok(Stage::Sink(Box::new(AlertmanagerSink {
                poster: Arc::new(Poster {
                    cfg: self.clone(),
                    client,
                    endpoints,
                    stage: cx.id.clone(),
                    metrics: send::RequestMetrics::new(&NAMES, &cx.id),
                    leadership: cx.leadership.clone(),
                    firing: Mutex::new(Firing::default()),
                    firing_gauge: metrics::gauge!(FIRING, "stage" => cx.id.clone()),
                    forgotten: metrics::counter!(FORGOTTEN, "stage" => cx.id.clone()),
                }),
                health: cx.health.clone(),
            }) as Box<dyn Sink>))
        })
    }
}

/// Posts alerts to every configured Alertmanager.
struct Poster {
    cfg: AlertmanagerConfig,
    client: reqwest::Client,
    endpoints: Vec<reqwest::Url>,
    stage: String,
    metrics: send::RequestMetrics,
    leadership: crate::leader::Leadership,
    firing: Mutex<Firing>,
    firing_gauge: metrics::Gauge,
    forgotten: metrics::Counter,
}

impl Poster {
    /// One post of `body` to every URL at once: delivered when any accepted it; else retried
    /// when any failure is retryable; else permanent.
    async fn post(&self, body: &bytes::Bytes, id: &str) -> Attempt {
        let posts = self.endpoints.iter().map(|url| async move {
            let started = Instant::now();
            let r = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Eventflow-Delivery-Id", id)
                .body(body.clone())
                .send()
                .await;
            self.metrics
                .request(send::status_class(&r), started.elapsed().as_secs_f64());
            let attempt = send::http_answer(r, self.cfg.timeout.0, |e| {
                crate::types::error_chain(&e.without_url())
            })
            .await;
            (url, attempt)
        });
        let results = futures::future::join_all(posts).await;
        let mut retry: Option<(Vec<String>, Option<std::time::Duration>)> = None;
        let mut permanent = Vec::new();
        let mut delivered = false;
        for (url, a) in results {
            let at = crate::redact::url(url.as_str());
            match a {
                Attempt::Delivered => delivered = true,
                Attempt::Retry { why, after } => {
                    let r = retry.get_or_insert_with(|| (Vec::new(), None));
                    r.0.push(format!("{at}: {why}"));
                    r.1 = r.1.max(after);
                }
                Attempt::Permanent(why) => permanent.push(format!("{at}: {why}")),
            }
        }
        if delivered {
            if let Some((why, _)) = &retry {
                tracing::warn!(stage = %self.stage, failed = ?why, "an Alertmanager did not take the alerts; another did");
            }
            return Attempt::Delivered;
        }
        match retry {
            Some((mut why, after)) => {
                why.extend(permanent);
                Attempt::Retry {
                    why: why.join("; "),
                    after,
                }
            }
            None => Attempt::Permanent(permanent.join("; ")),
        }
    }

    /// Re-posts the alerts still firing (once, no retries: the next round tries again).
    async fn repost(&self) {
        let firing = {
            let mut f = self.firing.lock().unwrap_or_else(PoisonError::into_inner);
            let alerts = f.still_firing(chrono::Utc::now());
            self.firing_gauge.set(f.len() as f64);
            alerts
        };
        if firing.is_empty() || !self.leadership.is_leader() {
            return;
        }
        for chunk in firing.chunks(self.cfg.batch.max_events.max(1)) {
            let Ok(body) = serde_json::to_vec(chunk).map(bytes::Bytes::from) else {
                continue;
            };
            if let Attempt::Retry { why, .. } | Attempt::Permanent(why) =
                self.post(&body, "repost").await
            {
                tracing::warn!(stage = %self.stage, alerts = chunk.len(), reason = %why, "re-posting firing alerts failed; trying again next round");
            }
        }
    }
}

impl send::Deliver for Poster {
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a crate::health::StageHealth,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let now = chrono::Utc::now();
            let alerts: Vec<Alert> = events
                .iter()
                .map(|e| Alert::of(&self.cfg, e, now))
                .collect();
            let id = super::send::delivery_id(events);
            let body = match serde_json::to_vec(&alerts) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => {
                    return Outcome::Failed {
                        reason: format!("cannot serialize the alerts: {e}"),
                        attempts: 0,
                    };
                }
            };
            let retrier = send::Retrier {
                stage: &self.stage,
                what: "alertmanager",
                backoff: &self.cfg.backoff,
                leadership: &self.leadership,
                metrics: &self.metrics,
            };
            let outcome = retrier
                .run(
                    &id,
                    events,
                    Some(health),
                    Budget::Retries(self.cfg.retries),
                    None,
                    || self.post(&body, &id),
                )
                .await;
            if matches!(outcome, Outcome::Delivered { .. }) {
                let mut f = self.firing.lock().unwrap_or_else(PoisonError::into_inner);
                let forgotten = f.record(&alerts, self.cfg.max_alerts, chrono::Utc::now());
                self.forgotten.increment(forgotten as u64);
                self.firing_gauge.set(f.len() as f64);
            }
            outcome
        })
    }
}

struct AlertmanagerSink {
    poster: Arc<Poster>,
    health: crate::health::Health,
}

impl Sink for AlertmanagerSink {
    fn run(self: Box<Self>, mut cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let this = *self;
            let cfg = this.poster.cfg.clone();
            let health = this.health.register(&cx.metrics.id, cfg.unready_after.0);
            health.synced();
            // Re-posting runs beside the deliveries and stops with them.
            let poster = this.poster.clone();
            let every = (cfg.resolve_after.0 / 3).max(std::time::Duration::from_secs(1));
            let reposting = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    poster.repost().await;
                }
            });
            send::in_memory(
                &this.poster,
                &mut cx,
                &health,
                &cfg.batch.plain(),
                cfg.max_in_flight,
                "alertmanager_failed",
            )
            .await;
            reposting.abort();
            health.stopped();
            Ok(())
        })
    }
}
