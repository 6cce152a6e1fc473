//! `loki`: pushes events as log lines to Grafana Loki's push API (`POST /loki/api/v1/push`,
//! JSON, gzip).
//!
//! Streams are keyed by a few low-cardinality labels (by default `cluster`, `namespace`,
//! `type`); each event is one entry: the line is the event as JSON (or `logfmt`, or a
//! template), the timestamp its last-seen time. Within a request the entries of a stream are in
//! time order, so a Loki that refuses out-of-order writes takes them.
//!
//! Failures follow the webhook's rules ([`super::send`]): connection errors, timeouts, 429 (Loki's
//! rate limit) and 5xx are retried with backoff, honouring `Retry-After`. A 400 is permanent:
//! Loki stores the entries it could and names the others ("total ignored: N out of M"); the
//! ignored ones are counted by reason (`eventflow_events_discarded_total{reason=
//! "loki_out_of_order" | "loki_too_old" | "loki_line_too_long" | "loki_refused"}`), the others
//! are delivered.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::batch::BatchConfig;
use super::send::{self, Attempt, Budget, Outcome};
use super::webhook::durable;
use super::webhook::template::TextTemplateField;
use crate::backoff::BackoffConfig;
use crate::component::{
    BuildContext, BuildError, Invalid, Sink, Stage, StageConfig, StageKind, StageType,
};
use crate::event::{Event, EventData, Field};
use crate::types::Dur;

/// How an event becomes a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// The event as JSON (what `| json` in LogQL reads).
    #[default]
    Json,
    /// `key=value` pairs of the main fields (what `| logfmt` reads).
    Logfmt,
    /// The `template:` rendered for the event.
    Template,
}

/// Pushes events to Grafana Loki.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LokiConfig {
    /// Loki's URL (`http://loki:3100`; `/loki/api/v1/push` is added unless the URL already
    /// ends with it).
    pub url: String,
    /// The event fields that make a stream's labels (label name = the field name, `.` as
    /// `_`). Keep them low-cardinality: every distinct set is a stream of its own in Loki.
    #[serde(default = "default_labels")]
    pub labels: Vec<Field>,
    /// Labels with a fixed value on every stream (e.g. `job: eventflow`).
    #[serde(default)]
    pub static_labels: BTreeMap<String, String>,
    /// The line of an event.
    #[serde(default)]
    pub line: LineFormat,
    /// With `line: template`: a minijinja template of the line, with the event's fields at
    /// the top level (`{{ reason }}: {{ message }}`).
    #[serde(default)]
    pub template: Option<TextTemplateField>,
    /// The tenant (`X-Scope-OrgID`) of a multi-tenant Loki.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Basic authentication: user name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic authentication: password (never logged; `${ENV}` works).
    #[serde(default)]
    pub password: Option<String>,
    /// Bearer token authentication (never logged; `${ENV}` works).
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Compress request bodies with gzip.
    #[serde(default = "yes")]
    pub gzip: bool,
    /// Time limit of one request.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Retries after the first attempt, for retryable failures (429, 5xx, no answer).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Exponential backoff between retries (each delay uniform in [d/2, d]).
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Entries per push request (this bounds its size) and the longest an event waits.
    #[serde(default)]
    pub batch: BatchConfig<1000>,
    /// Requests in flight at once. Keep 1 where Loki refuses out-of-order writes.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A PEM file of extra CA certificates to trust (`~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (dangerous; warned about at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Readiness: not ready once pushes have been failing (retryably) for this long.
    #[serde(default = "send::default_unready_after")]
    pub unready_after: Dur,
    /// Keep accepted events in a queue table in the `state` database until Loki took them (the
    /// webhook's durable queue): they survive restarts, crashes and a Loki outage longer than
    /// the API server keeps Events; a push refused for good goes to the dead-letter table
    /// (`eventflow dead-letter`).
    #[serde(default)]
    pub durable: bool,
    /// With `durable`: the most events the queue holds (back-pressure beyond).
    #[serde(default = "durable::default_max_queued")]
    pub max_queued: u64,
    /// With `durable`: how long a push that keeps failing retryably is retried before it is
    /// dead-lettered (`retries` does not apply).
    #[serde(default = "durable::default_retry_for")]
    pub retry_for: Dur,
}

fn default_labels() -> Vec<Field> {
    vec![Field::Cluster, Field::Namespace, Field::Type]
}
fn yes() -> bool {
    true
}
fn default_timeout() -> Dur {
    Dur::secs(10)
}
fn default_retries() -> u32 {
    5
}
fn default_max_in_flight() -> usize {
    1
}

pub const REQUESTS: &str = "eventflow_loki_requests_total";
pub const SECONDS: &str = "eventflow_loki_request_seconds";
pub const RETRIES: &str = "eventflow_loki_retries_total";

const NAMES: send::MetricNames = send::MetricNames {
    requests: REQUESTS,
    seconds: SECONDS,
    retries: RETRIES,
};

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Push requests to Loki by outcome: 2xx, 3xx, 4xx, 5xx, timeout, connection_error."
    );
    describe_histogram!(SECONDS, Unit::Seconds, "Loki push request latency.");
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Loki pushes retried after a retryable failure."
    );
}

pub const TYPE: StageType = StageType {
    name: "loki",
    kind: StageKind::Sink,
    summary: "pushes events as log lines to Grafana Loki (streams by low-cardinality labels, gzip)",
    parse: crate::component::parse_config::<LokiConfig>,
    schema: crate::component::schema_of::<LokiConfig>,
    describe,
};

/// A Loki label name of a field: `object_labels.team` -> `object_labels_team`.
fn label_name(f: &Field) -> String {
    f.name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Why Loki refused entries, from the text of its 400 answer.
pub fn refusal_reason(why: &str) -> &'static str {
    let w = why.to_ascii_lowercase();
    if w.contains("out of order") || w.contains("too far behind") {
        "loki_out_of_order"
    } else if w.contains("too old") || w.contains("greater than max") {
        "loki_too_old"
    } else if w.contains("line too long") || w.contains("max entry size") {
        "loki_line_too_long"
    } else {
        "loki_refused"
    }
}

/// `total ignored: N out of M` in a 400 answer: how many entries Loki did not store.
fn ignored(why: &str) -> Option<(u64, u64)> {
    let rest = &why[why.find("total ignored:")? + "total ignored:".len()..];
    let mut words = rest.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let _out = words.next()?;
    let _of = words.next()?;
    let m = words
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    Some((n, m.parse().ok()?))
}

/// How many of `n` refused entries each reason covers, from the lines of Loki's answer (one
/// per refused entry); entries it does not list go to the first reason it names.
fn refusals(why: &str, n: u64) -> Vec<(&'static str, u64)> {
    let mut tally: Vec<(&'static str, u64)> = Vec::new();
    for line in why.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("total ignored:") {
            continue;
        }
        let r = refusal_reason(line);
        match tally.iter_mut().find(|(k, _)| *k == r) {
            Some((_, c)) => *c += 1,
            None => tally.push((r, 1)),
        }
    }
    let listed: u64 = tally.iter().map(|(_, c)| c).sum();
    if listed != n || tally.is_empty() {
        let first = tally.first().map_or("loki_refused", |(r, _)| *r);
        if listed > n {
            return vec![(first, n)];
        }
        match tally.first_mut() {
            Some((_, c)) => *c += n - listed,
            None => tally.push((first, n)),
        }
    }
    tally
}

/// One stream of a push request.
#[derive(Debug, Serialize)]
struct Stream {
    stream: BTreeMap<String, String>,
    values: Vec<[String; 2]>,
}

impl LokiConfig {
    fn endpoint(&self) -> Result<reqwest::Url, Invalid> {
        send::http_url("url", &self.url, Some("/loki/api/v1/push"))
    }

    /// The line of one event.
    pub fn line(&self, e: &EventData) -> Result<String, String> {
        match (self.line, &self.template) {
            (LineFormat::Template, Some(t)) => {
                t.compiled.render_event(e).map_err(|e| e.to_string())
            }
            (LineFormat::Template, None) => Err("`line: template` needs a `template:`".into()),
            (LineFormat::Json, _) => crate::event::to_json(e, false).map_err(|e| e.to_string()),
            (LineFormat::Logfmt, _) => Ok(logfmt(e)),
        }
    }

    /// The push body for `events`: streams by label set, entries in time order in each.
    /// An event whose line cannot be made is left out and returned (its index) with why.
    pub fn body(&self, events: &[&EventData]) -> (serde_json::Value, Vec<(usize, String)>) {
        let now = chrono::Utc::now();
        let mut streams: BTreeMap<BTreeMap<String, String>, Vec<(i64, String)>> = BTreeMap::new();
        let mut bad = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let mut labels: BTreeMap<String, String> = self
                .labels
                .iter()
                .map(|f| (label_name(f), e.get(f).into_owned()))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            for (k, v) in &self.static_labels {
                labels.insert(k.clone(), v.clone());
            }
            if labels.is_empty() {
                labels.insert("source".into(), "eventflow".into());
            }
            let ts = e.last_seen.or(e.first_seen).unwrap_or(now);
            let ns = ts.timestamp_nanos_opt().unwrap_or_default();
            match self.line(e) {
                Ok(line) => streams.entry(labels).or_default().push((ns, line)),
                Err(why) => bad.push((i, format!("{}: {why}", e.uid))),
            }
        }
        let streams: Vec<Stream> = streams
            .into_iter()
            .map(|(stream, mut entries)| {
                entries.sort_by_key(|(ts, _)| *ts);
                Stream {
                    stream,
                    values: entries
                        .into_iter()
                        .map(|(ts, line)| [ts.to_string(), line])
                        .collect(),
                }
            })
            .collect();
        (serde_json::json!({ "streams": streams }), bad)
    }
}

/// `key=value` pairs of an event's main fields, quoted where needed.
fn logfmt(e: &EventData) -> String {
    let mut out = String::new();
    let fields = [
        ("type", e.type_.as_str()),
        ("reason", &e.reason),
        ("namespace", &e.namespace),
        ("kind", &e.kind),
        ("object", &e.object_name),
        ("count", &e.count.to_string()),
        ("source", &e.source),
        ("message", &e.message),
    ]
    .map(|(k, v)| (k, v.to_string()));
    for (k, v) in fields {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
            out.push_str(&serde_json::to_string(&v).unwrap_or_default());
        } else {
            out.push_str(&v);
        }
    }
    out
}

impl StageConfig for LokiConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        crate::budget::sending(self.max_in_flight, self.batch.max_events, self.durable)
    }

    fn alone(&self) -> bool {
        // Its durable queue is delivered by one replica.
        self.durable
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if let Err(i) = self.endpoint() {
            out.push(i);
        }
        out.extend(send::check_http(&self.headers, self.ca_file.as_deref()));
        if self.line == LineFormat::Template && self.template.is_none() {
            out.push(Invalid::new(
                "template",
                "`line: template` needs a `template:` (the line to render)",
            ));
        }
        if self.template.is_some() && self.line != LineFormat::Template {
            out.push(Invalid::new(
                "template",
                "a `template:` is used only with `line: template`",
            ));
        }
        if self.password.is_some() != self.username.is_some() {
            out.push(Invalid::new(
                "password",
                "basic authentication needs both `username` and `password`",
            ));
        }
        if self.username.is_some() && self.bearer_token.is_some() {
            out.push(Invalid::new(
                "bearer_token",
                "use either `bearer_token` or `username`/`password`, not both",
            ));
        }
        for k in self.static_labels.keys() {
            if !send::label_name(k) {
                out.push(Invalid::new(
                    format!("static_labels.{k}"),
                    "not a label name (letters, digits and `_`, not starting with a digit)",
                ));
            }
        }
        if self.timeout.0.is_zero() {
            out.push(Invalid::new("timeout", "must be above zero"));
        }
        crate::component::at_least_one(&mut out, "batch.max_events", self.batch.max_events as u64);
        crate::component::at_least_one(&mut out, "max_in_flight", self.max_in_flight as u64);
        crate::component::at_least_one(&mut out, "max_queued", self.max_queued);
        if self.retry_for.0.is_zero() {
            out.push(Invalid::new("retry_for", "must be above zero"));
        }
        out.extend(self.backoff.validate("backoff"));
        out
    }

    fn warnings(&self) -> Vec<Invalid> {
        const HIGH: [Field; 9] = [
            Field::Uid,
            Field::Name,
            Field::ResourceVersion,
            Field::Message,
            Field::ObjectName,
            Field::ObjectUid,
            Field::Count,
            Field::FirstSeen,
            Field::LastSeen,
        ];
        self.labels
            .iter()
            .enumerate()
            .filter(|(_, f)| HIGH.contains(f))
            .map(|(i, f)| {
                Invalid::new(
                    format!("labels[{i}]"),
                    format!(
                        "`{}` is high-cardinality: every value is a Loki stream of its own (slow queries, stream limits); keep it in the line and filter with `| json`",
                        f.name()
                    ),
                )
            })
            .collect()
    }

    fn preview(&self, events: &[EventData]) -> Option<Vec<Result<serde_json::Value, String>>> {
        let url = match self.endpoint() {
            Ok(u) => crate::redact::url(u.as_str()),
            Err(e) => return Some(vec![Err(e.to_string())]),
        };
        Some(
            events
                .chunks(self.batch.max_events.max(1))
                .map(|chunk| {
                    let refs: Vec<&EventData> = chunk.iter().collect();
                    let (body, bad) = self.body(&refs);
                    if let Some((_, why)) = bad.first() {
                        return Err(why.clone());
                    }
                    Ok(serde_json::json!({"method": "POST", "url": url, "body": body}))
                })
                .collect(),
        )
    }

    fn explain(&self, e: &EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        let steps = vec![Step::note(format!(
            "pushed to Loki in streams by {}",
            self.labels
                .iter()
                .map(label_name)
                .collect::<Vec<_>>()
                .join(", ")
        ))];
        let (body, bad) = self.body(&[e]);
        match bad.first() {
            Some((_, why)) => Explanation::new(
                Verdict::Dropped,
                vec![Step::no(format!("the line cannot be made: {why}"))],
            ),
            None => Explanation::new(Verdict::Delivered, steps).with_output(body),
        }
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let mut pusher = self.pusher(&cx.id).map_err(|e| cx.failed(e))?;
            pusher.leadership = cx.leadership.clone();
            let queue = if self.durable {
                Some(durable::Queue::open(cx).await?)
            } else {
                None
            };
            Ok(Stage::Sink(Box::new(send::SendingSink {
                sender: Arc::new(pusher),
                queue,
                health: cx.health.clone(),
                shared: cx.shared.clone(),
                unready_after: self.unready_after.0,
                batch: self.batch.plain(),
                max_in_flight: self.max_in_flight,
                failed_reason: "loki_failed",
            }) as Box<dyn Sink>))
        })
    }
}

impl LokiConfig {
    /// The sending side of stage `stage` (`eventflow dead-letter resend` uses it too).
    pub fn pusher(&self, stage: &str) -> Result<Pusher, Invalid> {
        let url = self.endpoint()?;
        let mut headers = self.headers.clone();
        if let Some(t) = &self.tenant {
            headers.insert("X-Scope-OrgID".into(), t.clone());
        }
        if let Some(token) = &self.bearer_token {
            headers.insert("Authorization".into(), format!("Bearer {token}"));
        }
        let client = send::client(&send::ClientOptions {
            timeout: self.timeout.0,
            headers: &headers,
            ca_file: self.ca_file.as_deref(),
            insecure_skip_verify: self.insecure_skip_verify,
            stage,
            what: "loki",
        })?;
        Ok(Pusher {
            cfg: self.clone(),
            client,
            url,
            stage: stage.to_string(),
            metrics: send::RequestMetrics::new(&NAMES, stage),
            leadership: crate::leader::Leadership::always(),
        })
    }
}

/// Pushes batches of events to one Loki under the stage's rules.
pub struct Pusher {
    cfg: LokiConfig,
    client: reqwest::Client,
    url: reqwest::Url,
    stage: String,
    metrics: send::RequestMetrics,
    leadership: crate::leader::Leadership,
}

/// How one push ended, before the retry rules.
enum Pushed {
    /// Every entry stored, or `ignored` of them refused (400, partly) for `why`.
    Stored {
        ignored: u64,
        why: String,
    },
    Attempt(Attempt),
}

impl Pusher {
    async fn push(&self, body: &bytes::Bytes) -> Pushed {
        let started = Instant::now();
        let mut r = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if self.cfg.gzip {
            r = r.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        if let (Some(u), Some(p)) = (&self.cfg.username, &self.cfg.password) {
            r = r.basic_auth(u, Some(p));
        }
        let r = r.body(body.clone()).send().await;
        self.metrics
            .request(send::status_class(&r), started.elapsed().as_secs_f64());
        match r {
            Ok(resp) if resp.status() == reqwest::StatusCode::BAD_REQUEST => {
                let why = resp.text().await.unwrap_or_default();
                let why = why.trim().chars().take(2000).collect::<String>();
                match ignored(&why) {
                    // Loki stored the others.
                    Some((n, m)) if n < m => Pushed::Stored { ignored: n, why },
                    _ => Pushed::Attempt(Attempt::Permanent(format!("HTTP 400: {why}"))),
                }
            }
            r => Pushed::Attempt(
                send::http_answer(r, self.cfg.timeout.0, |e| {
                    crate::types::error_chain(&e.without_url())
                })
                .await,
            ),
        }
    }

    fn encode(&self, body: &serde_json::Value) -> std::io::Result<Vec<u8>> {
        let json = serde_json::to_vec(body)?;
        if !self.cfg.gzip {
            return Ok(json);
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(json.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(&json)?;
        gz.finish()
    }
}

impl Pusher {
    /// Pushes one batch under `budget`; entries Loki refused in a push it otherwise took are
    /// counted by reason here.
    async fn push_events(
        &self,
        events: &[Event],
        health: Option<&crate::health::StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Outcome {
        let refs: Vec<&EventData> = events.iter().map(|e| &**e).collect();
        let (body, bad) = self.cfg.body(&refs);
        if !bad.is_empty() {
            tracing::error!(stage = %self.stage, events = ?bad, "loki: lines that cannot be made are left out");
            crate::metrics::discarded(&self.stage, "loki", "loki_line_failed")
                .increment(bad.len() as u64);
            // Failed for good, whatever happens to the rest of the batch (the worst outcome
            // of an event is what its source learns).
            for (i, why) in &bad {
                events[*i].refuse(&self.stage, &format!("cannot make the Loki line: {why}"));
            }
        }
        let body = match self.encode(&body) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("cannot encode the push body: {e}"),
                    attempts: 0,
                };
            }
        };
        let id = super::send::delivery_id(events);
        let partly = std::sync::Mutex::new(None);
        let (partly_ref, body_ref) = (&partly, &body);
        let retrier = send::Retrier {
            stage: &self.stage,
            what: "loki",
            backoff: &self.cfg.backoff,
            leadership: &self.leadership,
            metrics: &self.metrics,
        };
        let outcome = retrier
            .run(&id, events, health, budget, stop, move || async move {
                match self.push(body_ref).await {
                    Pushed::Stored { ignored, why } => {
                        if ignored > 0 {
                            *partly_ref
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some((ignored, why));
                        }
                        Attempt::Delivered
                    }
                    Pushed::Attempt(a) => a,
                }
            })
            .await;
        if let Some((n, why)) = partly
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            tracing::warn!(stage = %self.stage, ignored = n, reason = %why, "loki stored the push but refused some entries");
            for (reason, count) in refusals(&why, n) {
                crate::metrics::discarded(&self.stage, "loki", reason).increment(count);
            }
        }
        outcome
    }
}

impl send::Deliver for Pusher {
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a crate::health::StageHealth,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.push_events(
            events,
            Some(health),
            Budget::Retries(self.cfg.retries),
            None,
        ))
    }

    fn discard_reason(&self, why: &str) -> Option<&'static str> {
        why.starts_with("HTTP 400").then(|| refusal_reason(why))
    }
}

impl durable::Sender for Pusher {
    fn stage(&self) -> &str {
        &self.stage
    }

    fn leadership(&self) -> &crate::leader::Leadership {
        &self.leadership
    }

    fn limits(&self) -> durable::Limits {
        durable::Limits {
            max_queued: self.cfg.max_queued,
            batch: self.cfg.batch.plain(),
            max_in_flight: self.cfg.max_in_flight,
            retry_for: self.cfg.retry_for.0,
            retries: self.cfg.retries,
        }
    }

    fn send<'a>(
        &'a self,
        events: &'a [Event],
        health: Option<&'a crate::health::StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.push_events(events, health, budget, stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_and_partial_ones_counted() {
        assert_eq!(
            refusal_reason(
                "entry with timestamp 2024 ignored, reason: 'entry out of order' for stream"
            ),
            "loki_out_of_order"
        );
        assert_eq!(
            refusal_reason("entry for stream '{a=\"b\"}' has timestamp too old: 2020"),
            "loki_too_old"
        );
        assert_eq!(
            refusal_reason("Max entry size '256' bytes exceeded for stream"),
            "loki_line_too_long"
        );
        assert_eq!(refusal_reason("invalid labels"), "loki_refused");
        assert_eq!(
            ignored("x, reason: 'entry out of order'\ntotal ignored: 2 out of 30"),
            Some((2, 30))
        );
        assert_eq!(ignored("no count"), None);
        let two = "entry with timestamp 1 ignored, reason: 'entry out of order' for stream: {a=\"b\"},\nMax entry size '600' bytes exceeded for stream '{a=\"b\"}',\ntotal ignored: 2 out of 3";
        assert_eq!(
            refusals(two, 2),
            [("loki_out_of_order", 1), ("loki_line_too_long", 1)]
        );
        // Loki lists fewer than it ignored: the rest go to the first reason.
        assert_eq!(
            refusals(two, 5),
            [("loki_out_of_order", 4), ("loki_line_too_long", 1)]
        );
        assert_eq!(refusals("", 2), [("loki_refused", 2)]);
    }

    #[test]
    fn logfmt_quotes_what_needs_it() {
        let mut e = crate::testkit::event("u");
        e.message = "Back-off \"x\"".into();
        e.kind = "Pod".into();
        let l = logfmt(&e);
        assert!(
            l.starts_with(
                "type=Normal reason=Started namespace=default kind=Pod object=\"\" count=1"
            ),
            "{l}"
        );
        assert!(l.ends_with("message=\"Back-off \\\"x\\\"\""), "{l}");
    }
}
