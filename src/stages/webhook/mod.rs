//! `webhook`: posts events to an HTTP endpoint.
//!
//! Delivery rules: connection errors, timeouts, 408, 429 and 5xx are retried with exponential
//! backoff and jitter, honouring `Retry-After` (seconds or an HTTP date); other 4xx are
//! permanent. A delivery that is permanent or out of retries is logged with the events' keys
//! and the reason and counted (`eventflow_events_discarded_total{reason="webhook_failed"}`);
//! its events are acknowledged as rejected. Events are acknowledged only after the receiver
//! answered 2xx (or the delivery failed for good).
//!
//! With `durable: true` ([`durable`]) the sink writes events to a queue table in the `state`
//! database and acknowledges them once written; a delivery loop sends them in order, retries a
//! retryable failure for up to `retry_for`, and moves a delivery that failed for good to a
//! dead-letter table ([`queue`]) that `eventflow dead-letter` lists and re-sends.
//!
//! Each request carries `X-Eventflow-Delivery-Id`, derived from the events' uids and
//! resourceVersions: the same across retries and restarts, so receivers can drop repeats.
//!
//! Body (`format: json`): one event as a JSON object; with `batch.max_events` above 1, the
//! k8m event handler's batch body `{"events": [...], "count": N, "timestamp": <unix seconds>}`. Chat formats
//! (`slack`, `teams`, `dingtalk`, `feishu`, `wecom`) are in [`format`]; the chat platforms
//! answer HTTP 200 with an error code in the body, which is read: a rate-limit code is retried,
//! any other is permanent.

pub mod dead_letter;
pub mod durable;
pub mod format;
pub mod mark;
pub mod queue;
pub mod replay;
pub mod telemetry;
pub mod template;

use format::Chat;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;

use super::batch::BatchConfig;
use super::send::{self, Attempt};
pub use super::send::{Budget, Outcome, delivery_id};
use crate::backoff::BackoffConfig;
use crate::component::{
    BuildContext, BuildError, Invalid, Sink, SinkContext, Stage, StageConfig, StageError,
    StageKind, StageType,
};
use crate::event::Event;
use crate::types::Dur;

/// The body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One event as JSON; batches as `{"events": [...], "count": N, "timestamp": T}`.
    #[default]
    Json,
    /// Slack incoming webhook (`text`, markdown).
    Slack,
    /// Microsoft Teams: a message with an Adaptive Card, for Office 365 connectors (which
    /// Microsoft retired; use `teams_workflow` for new webhooks).
    Teams,
    /// Microsoft Teams Workflows ("post to a channel when a webhook request is received"): an
    /// Adaptive Card 1.4 with a fact table per event.
    #[serde(rename = "teams_workflow")]
    TeamsWorkflow,
    /// Google Chat app webhook: a card (cards v2), threaded by the event's key.
    #[serde(rename = "google_chat")]
    GoogleChat,
    /// Discord webhook: embeds coloured by type; mentions disabled.
    Discord,
    /// Telegram bot `sendMessage` (HTML) to `chat_id`.
    Telegram,
    /// Mattermost incoming webhook (Slack-compatible attachments).
    Mattermost,
    /// DingTalk robot (markdown); signed with `secret` (timestamp and sign query parameters).
    Dingtalk,
    /// Feishu/Lark bot (text); signed with `secret` (timestamp and sign in the body).
    Feishu,
    /// WeCom (WeChat Work) robot (markdown, 4096 bytes at most).
    Wecom,
    /// The body from `template` (minijinja, JSON-safe).
    Template,
    /// The k8m event handler's batch body `{"events": [...], "count": N, "timestamp": T}`, also for one
    /// event (pipelines translated from the k8m event handler's format use it).
    Seed,
}

impl Format {
    fn chat(self) -> Option<Chat> {
        match self {
            Format::Json | Format::Template | Format::Seed => None,
            Format::Slack => Some(Chat::Slack),
            Format::Teams => Some(Chat::Teams),
            Format::Dingtalk => Some(Chat::DingTalk),
            Format::Feishu => Some(Chat::Feishu),
            Format::Wecom => Some(Chat::WeCom),
            Format::TeamsWorkflow => Some(Chat::TeamsWorkflow),
            Format::GoogleChat => Some(Chat::GoogleChat),
            Format::Discord => Some(Chat::Discord),
            Format::Telegram => Some(Chat::Telegram),
            Format::Mattermost => Some(Chat::Mattermost),
        }
    }
}

/// Posts events to an HTTP endpoint.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint (`http://` or `https://`).
    pub url: String,
    /// The HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers (values may use `${ENV}`; they are never logged).
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
    /// Events per request and the longest wait to fill a batch.
    #[serde(default)]
    pub batch: BatchConfig<1>,
    /// The body format.
    #[serde(default)]
    pub format: Format,
    /// With `format: template`: a minijinja template of the body (see the README); strings are
    /// escaped for JSON string literals, lists and maps print as JSON, `tojson` prints any
    /// value; the k8m event handler's `{{msg}}` and `{{raw}}` are available.
    #[serde(default)]
    pub template: Option<template::TemplateField>,
    /// Readiness: not ready once deliveries have been failing (retryably) for this long.
    #[serde(default = "send::default_unready_after")]
    pub unready_after: Dur,
    /// The signing secret of a DingTalk or Feishu robot (never logged).
    #[serde(default)]
    pub secret: Option<String>,
    /// With `format: telegram`: the chat to post to (`-1001234567890` or `@channelname`); the
    /// bot token is in `url` (`https://api.telegram.org/bot${TELEGRAM_TOKEN}/sendMessage`).
    #[serde(default)]
    pub chat_id: Option<String>,
    /// A PEM file of extra CA certificates to trust (`~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (dangerous; warned about at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Requests in flight at once. Above 1, batches may reach the receiver out of order.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Keep accepted events in a queue table in the `state` database until delivered: they
    /// survive restarts and crashes, and a delivery that fails for good goes to a dead-letter
    /// table (`eventflow dead-letter`).
    #[serde(default)]
    pub durable: bool,
    /// With `durable`: the most events the queue holds. At the bound the sink stops taking
    /// events, which slows the stages before it down (back-pressure) instead of dropping.
    #[serde(default = "durable::default_max_queued")]
    pub max_queued: u64,
    /// Keep the k8m event handler's `processed` and `attempts` columns of this table true to the
    /// deliveries (set by pipelines translated from the k8m event handler's format).
    #[serde(default)]
    pub mark_rows: Option<mark::MarkRows>,
    /// With `durable`: how long a delivery that keeps failing retryably (receiver down, 5xx,
    /// 429, timeouts) is retried before it is dead-lettered. `retries` does not apply.
    #[serde(default = "durable::default_retry_for")]
    pub retry_for: Dur,
}

fn default_method() -> String {
    "POST".to_string()
}
fn default_timeout() -> Dur {
    Dur::secs(30)
}
fn default_retries() -> u32 {
    3
}
fn default_max_in_flight() -> usize {
    1
}

pub const TYPE: StageType = StageType {
    name: "webhook",
    kind: StageKind::Sink,
    summary: "posts events to an HTTP endpoint with retries, backoff and an idempotency header",
    parse: crate::component::parse_config::<WebhookConfig>,
    schema: crate::component::schema_of::<WebhookConfig>,
    describe: telemetry::describe,
};

impl WebhookConfig {
    /// The endpoint, checked: an absolute http(s) URL. Errors never show its secrets.
    fn parsed_url(&self) -> Result<reqwest::Url, Invalid> {
        send::http_url("url", &self.url, None)
    }

    fn parsed_method(&self) -> Result<reqwest::Method, Invalid> {
        reqwest::Method::from_bytes(self.method.to_uppercase().as_bytes())
            .map_err(|_| Invalid::new("method", format!("`{}` is not an HTTP method", self.method)))
    }

    /// The sending side of the stage (client, URL, method, `mark_rows`), checked. `stage` names
    /// it in logs.
    pub async fn delivery(&self, stage: &str) -> Result<Delivery, DeliveryError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = self.parsed_url()?;
        let method = self.parsed_method()?;
        let client = send::client(&send::ClientOptions {
            timeout: self.timeout.0,
            headers: &self.headers,
            ca_file: self.ca_file.as_deref(),
            insecure_skip_verify: self.insecure_skip_verify,
            stage,
            what: "webhook",
        })?;
        let marker = match &self.mark_rows {
            Some(m) => Some(mark::Marker::open(m).await?),
            None => None,
        };
        Ok(Delivery {
            cfg: self.clone(),
            client,
            url,
            method,
            stage: stage.to_string(),
            marker,
            metrics: send::RequestMetrics::new(&telemetry::NAMES, stage),
            leadership: crate::leader::Leadership::always(),
        })
    }
}

impl WebhookConfig {
    /// The requests this webhook would send for `events` arriving together: batches of
    /// `batch.max_events`, each as `{method, url, body}` (the URL with its secrets redacted,
    /// the body as JSON), or why it could not be rendered. No request is made.
    pub fn requests(
        &self,
        events: &[crate::event::EventData],
    ) -> Vec<Result<serde_json::Value, String>> {
        let url = match reqwest::Url::parse(&self.url) {
            Ok(u) => u,
            Err(e) => return vec![Err(format!("invalid url: {e}"))],
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        events
            .chunks(self.batch.max_events.max(1))
            .map(|chunk| {
                let batch: Vec<Event> = chunk
                    .iter()
                    .map(|e| Event::new(e.clone(), crate::event::Finalizers::None))
                    .collect();
                let (url, body) = request(self, &url, &batch, now_ms).map_err(|e| e.to_string())?;
                let body: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                Ok(serde_json::json!({
                    "method": self.method.to_uppercase(),
                    "url": crate::redact::url(url.as_str()),
                    "body": body,
                }))
            })
            .collect()
    }
}

impl StageConfig for WebhookConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        crate::budget::sending(self.max_in_flight, self.batch.max_events, self.durable)
    }

    fn preview(
        &self,
        events: &[crate::event::EventData],
    ) -> Option<Vec<Result<serde_json::Value, String>>> {
        Some(self.requests(events))
    }

    fn explain(&self, e: &crate::event::EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        let format = serde_json::to_value(self.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut steps = vec![Step::note(format!(
            "sent as `{format}` to {}: {}",
            crate::redact::url(&self.url),
            if self.batch.max_events == 1 {
                "one event per request".to_string()
            } else {
                format!(
                    "in batches of up to {} events (a partial batch waits up to {})",
                    self.batch.max_events, self.batch.max_wait
                )
            }
        ))];
        if self.durable {
            steps.push(Step::note(format!(
                "durable: queued in the state database first, retried for up to {}, then a dead letter",
                self.retry_for
            )));
        }
        match self.requests(std::slice::from_ref(e)).pop() {
            Some(Ok(request)) => Explanation::new(Verdict::Delivered, steps).with_output(request),
            Some(Err(why)) => {
                steps.push(Step::no(format!("the body cannot be rendered: {why}")));
                Explanation::new(Verdict::Dropped, steps)
            }
            None => Explanation::new(Verdict::Delivered, steps),
        }
    }

    fn alone(&self) -> bool {
        // Its durable queue is delivered by one replica.
        self.durable
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if let Err(i) = self.parsed_url() {
            out.push(i);
        }
        if let Err(i) = self.parsed_method() {
            out.push(i);
        }
        out.extend(send::check_http(&self.headers, self.ca_file.as_deref()));
        crate::component::at_least_one(&mut out, "batch.max_events", self.batch.max_events as u64);
        crate::component::at_least_one(&mut out, "max_in_flight", self.max_in_flight as u64);
        crate::component::at_least_one(&mut out, "max_queued", self.max_queued);
        if self.timeout.0.is_zero() {
            out.push(Invalid::new("timeout", "must be above zero"));
        }
        if self.retry_for.0.is_zero() {
            out.push(Invalid::new("retry_for", "must be above zero"));
        }
        if self.format == Format::Telegram && self.chat_id.is_none() {
            out.push(Invalid::new(
                "chat_id",
                "`format: telegram` needs a `chat_id:` (the chat the bot posts to)",
            ));
        }
        if self.chat_id.is_some() && self.format != Format::Telegram {
            out.push(Invalid::new(
                "chat_id",
                "a `chat_id:` is used only with `format: telegram`",
            ));
        }
        if self.format == Format::Template && self.template.is_none() {
            out.push(Invalid::new(
                "template",
                "`format: template` needs a `template:` (the body to render)",
            ));
        }
        if let Some(t) = &self.template {
            out.extend(
                t.compiled
                    .check(self.batch.max_events)
                    .into_iter()
                    .map(|p| Invalid::new("template", p)),
            );
        }
        if let Some(m) = &self.mark_rows {
            if !crate::state::db::valid_identifier(&m.table) {
                out.push(Invalid::new(
                    "mark_rows.table",
                    format!(
                        "`{}` is not a plain identifier (letters, digits, `_`)",
                        m.table
                    ),
                ));
            }
            crate::component::non_empty_key(&mut out, "mark_rows.key", &m.key);
            if let Err(e) = crate::state::db::check_url(&m.url) {
                out.push(Invalid::new("mark_rows.url", e.to_string()));
            }
        }
        out.extend(self.backoff.validate("backoff"));
        out
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let mut delivery = self.delivery(&cx.id).await.map_err(|e| cx.failed(e))?;
            delivery.leadership = cx.leadership.clone();
            let queue = if self.durable {
                Some(durable::Queue::open(cx).await?)
            } else {
                None
            };
            Ok(Stage::Sink(Box::new(WebhookSink {
                delivery: Arc::new(delivery),
                queue,
                health: cx.health.clone(),
                shared: cx.shared.clone(),
            }) as Box<dyn Sink>))
        })
    }
}

struct WebhookSink {
    delivery: Arc<Delivery>,
    /// With `durable`: its queue.
    queue: Option<durable::Queue>,
    health: crate::health::Health,
    /// Where the instances of this stage find their common queue slot.
    shared: crate::component::Shared,
}

/// Why the sending side of a webhook stage cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A field's value is not usable (`url`, `method`, `headers.NAME`, `ca_file`).
    #[error(transparent)]
    Field(#[from] Invalid),
    #[error(transparent)]
    MarkRows(#[from] mark::MarkError),
}

/// Why a request body could not be made (a permanent failure of that delivery).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error("cannot serialize the body: {0}")]
    Json(#[from] serde_json::Error),
}

/// Sends batches of events to one endpoint under the stage's rules.
pub struct Delivery {
    cfg: WebhookConfig,
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    stage: String,
    /// `mark_rows`, opened.
    marker: Option<mark::Marker>,
    metrics: send::RequestMetrics,
    /// Requests go out only while this replica leads (always, without leader election).
    leadership: crate::leader::Leadership,
}

/// The URL and body of a request carrying `events`, signed at `now_ms` where the format signs.
fn request(
    cfg: &WebhookConfig,
    url: &reqwest::Url,
    events: &[Event],
    now_ms: i64,
) -> Result<(reqwest::Url, String), RenderError> {
    if let Some(t) = &cfg.template {
        return Ok((url.clone(), t.compiled.render(events)?));
    }
    match cfg.format.chat() {
        None => Ok((url.clone(), body(events, batched(cfg))?)),
        Some(chat) => {
            let mut url = url.clone();
            if let (Chat::DingTalk, Some(secret)) = (chat, &cfg.secret) {
                let sign = format::dingtalk_sign(secret, now_ms);
                url.query_pairs_mut()
                    .append_pair("timestamp", &now_ms.to_string())
                    .append_pair("sign", &sign);
            }
            if chat == Chat::GoogleChat
                && !url.query_pairs().any(|(k, _)| k == "messageReplyOption")
            {
                // Without it Google Chat ignores the thread key.
                url.query_pairs_mut()
                    .append_pair("messageReplyOption", "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
            }
            let extra = format::Extra {
                secret: cfg.secret.as_deref(),
                chat_id: cfg.chat_id.as_deref(),
                now_ms,
            };
            let b = format::body(events, chat, &extra);
            Ok((url, serde_json::to_string(&b)?))
        }
    }
}

/// Whether a `format: json` (or `seed`) body is a batch body even for one event.
fn batched(cfg: &WebhookConfig) -> bool {
    cfg.batch.max_events > 1 || cfg.format == Format::Seed
}

/// The `format: json` body of `events`: one event as a JSON object, or (`batched`) the batch
/// body around them.
pub fn body(events: &[Event], batched: bool) -> serde_json::Result<String> {
    framed(
        events
            .iter()
            .map(|e| crate::event::to_json(e, false).map(std::borrow::Cow::Owned)),
        batched,
    )
}

/// The `format: json` body around the events' JSON texts (as [`crate::event::to_json`] writes
/// them without `raw`): one alone, or (`batched`, or several) `{"events": [...], "count": N,
/// "timestamp": T}`.
fn framed<'a>(
    mut texts: impl ExactSizeIterator<Item = serde_json::Result<std::borrow::Cow<'a, str>>>,
    batched: bool,
) -> serde_json::Result<String> {
    let n = texts.len();
    if !batched && n == 1 {
        return texts
            .next()
            .map_or_else(|| Ok(String::new()), |t| t.map(Into::into));
    }
    let mut s = String::from("{\"events\":[");
    for (i, t) in texts.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&t?);
    }
    let ts = chrono::Utc::now().timestamp();
    s.push_str(&format!("],\"count\":{n},\"timestamp\":{ts}}}"));
    Ok(s)
}

impl Delivery {
    /// With `mark_rows`: records how the delivery of `events` ended in the table.
    async fn mark(&self, events: &[Event], outcome: &Outcome) {
        let Some(m) = &self.marker else { return };
        match outcome {
            Outcome::Delivered { attempts } => m.mark(&self.stage, events, true, *attempts).await,
            Outcome::Failed { attempts, .. } => m.mark(&self.stage, events, false, *attempts).await,
            Outcome::Interrupted => {}
        }
    }

    /// A request error with its causes (refused, DNS, TLS: which certificate problem), and
    /// without the URL, whose query may hold a token.
    fn describe(&self, e: reqwest::Error) -> String {
        let text = crate::types::error_chain(&e.without_url());
        crate::redact::in_text(&text, &[self.cfg.url.as_str(), self.url.as_str()])
    }

    async fn attempt(&self, events: &[Event], id: &str) -> Attempt {
        match self.render(events) {
            Ok((url, body)) => self.post(url, body, id).await,
            Err(e) => Attempt::Permanent(format!("cannot render the body: {e}")),
        }
    }

    /// One request: `body` to `url` under delivery id `id`.
    async fn post(&self, url: reqwest::Url, body: String, id: &str) -> Attempt {
        let started = Instant::now();
        let r = self
            .client
            .request(self.method.clone(), url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Eventflow-Delivery-Id", id);
        // With leader election: which replica sent it.
        let r = match self.leadership.identity() {
            Some(me) => r.header("X-Eventflow-Instance", me),
            None => r,
        };
        let r = r.body(body).send().await;
        self.metrics
            .request(send::status_class(&r), started.elapsed().as_secs_f64());
        match r {
            Ok(resp) if resp.status().is_success() => {
                let Some(chat) = self.cfg.format.chat() else {
                    return Attempt::Delivered;
                };
                let text = resp.text().await.unwrap_or_default();
                match format::answer_error(chat, &text) {
                    None => Attempt::Delivered,
                    Some((true, why)) => Attempt::Retry { why, after: None },
                    Some((false, why)) => Attempt::Permanent(why),
                }
            }
            r => send::http_answer(r, self.cfg.timeout.0, |e| self.describe(e)).await,
        }
    }

    /// The URL and body of one attempt (signatures carry the current time).
    fn render(&self, events: &[Event]) -> Result<(reqwest::Url, String), RenderError> {
        request(
            &self.cfg,
            &self.url,
            events,
            chrono::Utc::now().timestamp_millis(),
        )
    }

    /// Delivers one batch under `budget`; a failure for good is logged before it is returned,
    /// and with `mark_rows` the outcome is recorded in the table. With `stop`, a retry is not
    /// waited for once the stage is stopping.
    pub async fn deliver(
        &self,
        events: &[Event],
        health: Option<&crate::health::StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Outcome {
        let outcome = self.try_deliver(events, health, budget, stop).await;
        self.mark(events, &outcome).await;
        outcome
    }

    async fn try_deliver(
        &self,
        events: &[Event],
        health: Option<&crate::health::StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Outcome {
        let id = delivery_id(events);
        self.retrier()
            .run(&id, events, health, budget, stop, || {
                self.attempt(events, &id)
            })
            .await
    }

    fn retrier(&self) -> send::Retrier<'_> {
        send::Retrier {
            stage: &self.stage,
            what: "webhook",
            backoff: &self.cfg.backoff,
            leadership: &self.leadership,
            metrics: &self.metrics,
        }
    }

    /// Whether a body is the events' stored text spliced as it is (`format: json` or `seed`,
    /// no template) and nothing else needs the events decoded (no `mark_rows`).
    fn sends_stored(&self) -> bool {
        self.marker.is_none()
            && self.cfg.template.is_none()
            && matches!(self.cfg.format, Format::Json | Format::Seed)
    }

    /// [`Delivery::deliver`] of events as a durable queue stored them: the same requests, the
    /// same delivery id, without decoding the events.
    async fn deliver_stored(
        &self,
        events: &[crate::event::StoredRef<'_>],
        health: Option<&crate::health::StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Outcome {
        let id = send::delivery_id_of(
            events
                .iter()
                .map(|e| (e.uid.as_ref(), e.resource_version.as_ref())),
        );
        let uids = events.iter().map(|e| e.uid.as_ref());
        let batched = batched(&self.cfg);
        self.retrier()
            .run_for(&id, uids, health, budget, stop, || async {
                let texts = events
                    .iter()
                    .map(|e| Ok(std::borrow::Cow::Borrowed(e.event)));
                match framed(texts, batched) {
                    Ok(body) => self.post(self.url.clone(), body, &id).await,
                    Err(e) => Attempt::Permanent(format!("cannot render the body: {e}")),
                }
            })
            .await
    }
}

impl durable::Sender for Delivery {
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
        Box::pin(self.deliver(events, health, budget, stop))
    }

    fn stored(&self) -> Option<&dyn durable::SendsStored> {
        self.sends_stored()
            .then_some(self as &dyn durable::SendsStored)
    }
}

impl durable::SendsStored for Delivery {
    fn send_stored<'a>(
        &'a self,
        events: &'a [crate::event::StoredRef<'a>],
        health: Option<&'a crate::health::StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.deliver_stored(events, health, budget, stop))
    }
}

impl send::Deliver for Delivery {
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a crate::health::StageHealth,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(Delivery::deliver(
            self,
            events,
            Some(health),
            Budget::Retries(self.cfg.retries),
            None,
        ))
    }
}

impl Sink for WebhookSink {
    fn run(self: Box<Self>, mut cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let this = *self;
            let health = this
                .health
                .register(&cx.metrics.id, this.delivery.cfg.unready_after.0);
            health.synced();
            if let Some(queue) = this.queue {
                let sender = this.delivery.clone() as Arc<dyn durable::Sender>;
                queue
                    .run(sender, &this.shared, &mut cx, health.clone())
                    .await;
            } else {
                let cfg = &this.delivery.cfg;
                send::in_memory(
                    &this.delivery,
                    &mut cx,
                    &health,
                    &cfg.batch.plain(),
                    cfg.max_in_flight,
                    "webhook_failed",
                )
                .await;
            }
            health.stopped();
            Ok(())
        })
    }
}
