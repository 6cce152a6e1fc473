//! `nats`: publishes each event to NATS JetStream.
//!
//! The subject comes from a template (default `eventflow.{cluster}.{namespace}.{type}`; a
//! value's `.`, `*`, `>` and white space become `_`, so one value is one subject token). Every
//! message carries `Nats-Msg-Id` = the event's delivery id (stable for the same event version,
//! across retries and restarts), so the stream's duplicate window drops repeats: a retried
//! batch, or the events replayed after a crash, are stored once inside that window. Repeats the
//! server dropped are counted (`eventflow_nats_duplicates_total`).
//!
//! Events are acknowledged only after JetStream acknowledged every message of their batch
//! (publishes are pipelined: the batch is sent, then the acks are awaited). A failure (no
//! connection, an ack timeout, no stream for the subject) retries the batch with backoff;
//! the duplicate window makes that safe.
//!
//! Streams are the operator's: the stage checks at start that `stream` exists and captures the
//! subjects (a clear error otherwise). A server that cannot be reached at start is not an error
//! (the connection is retried in the background); `/readyz` says what is wrong meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
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

/// A subject template: text with `{field}` placeholders, parsed when the file is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub source: String,
    parts: Vec<Part>,
}

/// As written (the schema's default shows it).
impl serde::Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(Field),
}

impl Subject {
    pub fn parse(source: &str) -> Result<Subject, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("`{{` at {open} is not closed"))?;
            let name = after[..close].trim();
            let field = Field::parse(name).ok_or_else(|| {
                format!("`{{{name}}}` is not an event field (e.g. {{namespace}}, {{object_labels.team}})")
            })?;
            parts.push(Part::Field(field));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        for p in &parts {
            if let Part::Text(t) = p
                && t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>' || c == '}')
            {
                return Err(format!(
                    "`{t}`: a subject holds no white space, `*`, `>` or `}}`"
                ));
            }
        }
        let s = Subject {
            source: source.to_string(),
            parts,
        };
        let sample = s.render(&crate::event::sample());
        if sample.split('.').any(str::is_empty) {
            return Err(format!(
                "`{source}` makes subjects with an empty token (`{sample}`): no leading, trailing or double `.`"
            ));
        }
        Ok(s)
    }

    /// The subject of `e`; each field's value is one token (`_` when empty).
    pub fn render(&self, e: &EventData) -> String {
        let mut out = String::with_capacity(64);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => {
                    let v = e.get(f);
                    if v.is_empty() {
                        out.push('_');
                    }
                    out.extend(v.chars().map(|c| {
                        if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                            '_'
                        } else {
                            c
                        }
                    }));
                }
            }
        }
        out
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Subject::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Subject {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NatsSubject".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A NATS subject with `{field}` placeholders, e.g. `eventflow.{cluster}.{namespace}.{type}`; a value's `.`, `*`, `>` and white space become `_`."
        })
    }
}

/// Whether NATS subject filter `filter` (with `*` and `>`) matches `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for f in filter.split('.') {
        match (f, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

/// Publishes events to NATS JetStream.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server(s): `nats://host:4222`, several separated by commas.
    pub url: String,
    /// The JetStream stream that captures the subjects (created by the operator, with the
    /// duplicate window that bounds exactly-once; checked at start).
    pub stream: String,
    /// The subject of each event.
    #[serde(default = "default_subject")]
    pub subject: Subject,
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password (never logged; `${ENV}` works).
    #[serde(default)]
    pub password: Option<String>,
    /// Token authentication (never logged).
    #[serde(default)]
    pub token: Option<String>,
    /// A `.creds` file (JWT and NKey seed; `~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub credentials_file: Option<PathBuf>,
    /// A PEM file of CA certificates for a TLS server (`~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for JetStream's acknowledgement of a publish (and to connect).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Retries of a batch after the first attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Exponential backoff between retries (each delay uniform in [d/2, d]).
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Messages published before their acknowledgements are awaited, and the longest an event
    /// waits for its batch.
    #[serde(default)]
    pub batch: BatchConfig<256, 20>,
    /// Batches in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Readiness: not ready once publishes have been failing for this long.
    #[serde(default = "default_unready_after")]
    pub unready_after: Dur,
}

fn default_subject() -> Subject {
    Subject {
        source: "eventflow.{cluster}.{namespace}.{type}".into(),
        parts: vec![
            Part::Text("eventflow.".into()),
            Part::Field(Field::Cluster),
            Part::Text(".".into()),
            Part::Field(Field::Namespace),
            Part::Text(".".into()),
            Part::Field(Field::Type),
        ],
    }
}
fn default_timeout() -> Dur {
    Dur::secs(5)
}
fn default_retries() -> u32 {
    10
}
fn default_max_in_flight() -> usize {
    2
}
fn default_unready_after() -> Dur {
    Dur::secs(30)
}

pub const PUBLISHES: &str = "eventflow_nats_requests_total";
pub const SECONDS: &str = "eventflow_nats_request_seconds";
pub const RETRIES: &str = "eventflow_nats_retries_total";
pub const DUPLICATES: &str = "eventflow_nats_duplicates_total";

const NAMES: send::MetricNames = send::MetricNames {
    requests: PUBLISHES,
    seconds: SECONDS,
    retries: RETRIES,
};

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        PUBLISHES,
        Unit::Count,
        "Batches published to JetStream by outcome: 2xx (every message acknowledged), 5xx (no stream, refused), timeout, connection_error."
    );
    describe_histogram!(
        SECONDS,
        Unit::Seconds,
        "Time to publish a batch and receive its acknowledgements."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Batches published again after a failure."
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Messages JetStream acknowledged as duplicates (same Nats-Msg-Id inside the stream's duplicate window) and did not store again."
    );
}

pub const TYPE: StageType = StageType {
    name: "nats",
    kind: StageKind::Sink,
    summary: "publishes events to NATS JetStream with Nats-Msg-Id, so the duplicate window drops repeats",
    parse: crate::component::parse_config::<NatsConfig>,
    schema: crate::component::schema_of::<NatsConfig>,
    describe,
};

/// Why the stage cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read the credentials file {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    /// The stream does not exist (`stream`), or does not capture the subjects (`subject`).
    #[error("field `{field}`: {why}")]
    Stream { field: &'static str, why: String },
}

impl NatsConfig {
    async fn connect(&self, stage: &str) -> Result<async_nats::Client, NatsError> {
        let mut o = async_nats::ConnectOptions::new()
            .name(format!("eventflow/{stage}"))
            .connection_timeout(self.timeout.0)
            .retry_on_initial_connect()
            .max_reconnects(None);
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(path) = &self.credentials_file {
            o = o
                .credentials_file(path)
                .await
                .map_err(|source| NatsError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        if let Some(ca) = &self.ca_file {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        o.connect(self.url.as_str())
            .await
            .map_err(|e| NatsError::Connect(crate::redact::in_text(&e.to_string(), &[&self.url])))
    }

    /// Whether `stream` exists and captures this stage's subjects: `Ok(None)` when it does,
    /// `Ok(Some(error))` when it does not, `Err` when the server did not answer.
    async fn check_stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<Option<NatsError>, String> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match js.get_stream(&self.stream).await {
            Ok(s) => {
                let subjects = &s.cached_info().config.subjects;
                let sample = self.subject.render(&crate::event::sample());
                if subjects.iter().any(|f| subject_matches(f, &sample)) {
                    Ok(None)
                } else {
                    Ok(Some(NatsError::Stream {
                        field: "subject",
                        why: format!(
                            "stream `{}` does not capture subject `{sample}` (made by `{}`); its subjects: {}",
                            self.stream,
                            self.subject.source,
                            subjects.join(", ")
                        ),
                    }))
                }
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(Some(NatsError::Stream {
                        field: "stream",
                        why: format!(
                            "JetStream stream `{}` does not exist (creating it is the operator's job, e.g. `nats stream add {} --subjects '{}'`)",
                            self.stream,
                            self.stream,
                            self.subject_filter()
                        ),
                    }))
                }
                _ => Err(e.to_string()),
            },
        }
    }

    /// A subject filter that captures every subject of the template (`*` for each field).
    fn subject_filter(&self) -> String {
        self.subject
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Field(_) => "*".into(),
            })
            .collect()
    }
}

impl StageConfig for NatsConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        crate::budget::sending(self.max_in_flight, self.batch.max_events, false)
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        for (i, u) in self.url.split(',').enumerate() {
            let u = u.trim();
            let ok = reqwest::Url::parse(u)
                .is_ok_and(|p| matches!(p.scheme(), "nats" | "tls" | "ws" | "wss"));
            if !ok {
                out.push(Invalid::new(
                    "url",
                    format!(
                        "server {} `{}` is not a nats:// (or tls://) URL",
                        i + 1,
                        crate::redact::url(u)
                    ),
                ));
            }
        }
        let valid_name = !self.stream.is_empty()
            && !self
                .stream
                .contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
        if !valid_name {
            out.push(Invalid::new(
                "stream",
                "a stream name, without white space, `.`, `*`, `>`, `/` or `\\`",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            out.push(Invalid::new(
                "password",
                "`user` and `password` go together",
            ));
        }
        if let Some(p) = &self.credentials_file
            && !p.is_file()
        {
            out.push(Invalid::new(
                "credentials_file",
                format!("{} is not a file", p.display()),
            ));
        }
        if let Some(p) = &self.ca_file
            && let Err(e) = send::ca_certificates(p)
        {
            out.push(e);
        }
        if self.timeout.0.is_zero() {
            out.push(Invalid::new("timeout", "must be above zero"));
        }
        crate::component::at_least_one(&mut out, "batch.max_events", self.batch.max_events as u64);
        crate::component::at_least_one(&mut out, "max_in_flight", self.max_in_flight as u64);
        out.extend(self.backoff.validate("backoff"));
        out
    }

    fn preview(&self, events: &[EventData]) -> Option<Vec<Result<serde_json::Value, String>>> {
        Some(
            events
                .iter()
                .map(|e| {
                    let ev = Event::new(e.clone(), crate::event::Finalizers::None);
                    let payload = crate::event::to_json(&ev, false).map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({
                        "subject": self.subject.render(e),
                        "headers": {"Nats-Msg-Id": super::send::delivery_id(std::slice::from_ref(&ev))},
                        "payload": serde_json::from_str::<serde_json::Value>(&payload).map_err(|e| e.to_string())?,
                    }))
                })
                .collect(),
        )
    }

    fn explain(&self, e: &EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        Explanation::new(
            Verdict::Delivered,
            vec![Step::note(format!(
                "published to `{}` in JetStream stream `{}` with its delivery id as Nats-Msg-Id",
                self.subject.render(e),
                self.stream
            ))],
        )
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let client = self.connect(&cx.id).await.map_err(|e| cx.failed(e))?;
            let mut js = async_nats::jetstream::new(client.clone());
            js.set_timeout(self.timeout.0);
            // A server that answers must have the stream; one that does not is checked again
            // when the sink runs.
            let checked = tokio::time::timeout(self.timeout.0, self.check_stream(&js)).await;
            match checked {
                Ok(Ok(Some(e))) => return Err(cx.failed(e)),
                Ok(Ok(None)) => {}
                Ok(Err(why)) => {
                    tracing::warn!(stage = %cx.id, reason = %why, "cannot check the JetStream stream yet; publishing waits for the server");
                }
                Err(_) => {
                    tracing::warn!(stage = %cx.id, "NATS is not reachable yet; the connection is retried in the background");
                }
            }
            Ok(Stage::Sink(Box::new(NatsSink {
                publisher: Arc::new(Publisher {
                    cfg: self.clone(),
                    js,
                    client,
                    stage: cx.id.clone(),
                    metrics: send::RequestMetrics::new(&NAMES, &cx.id),
                    duplicates: metrics::counter!(DUPLICATES, "stage" => cx.id.clone()),
                    leadership: cx.leadership.clone(),
                }),
                health: cx.health.clone(),
            }) as Box<dyn Sink>))
        })
    }
}

struct Publisher {
    cfg: NatsConfig,
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    stage: String,
    metrics: send::RequestMetrics,
    duplicates: metrics::Counter,
    leadership: crate::leader::Leadership,
}

impl Publisher {
    /// Publishes every event of the batch, then awaits their acknowledgements.
    async fn publish(&self, events: &[Event], health: &crate::health::StageHealth) -> Attempt {
        use async_nats::jetstream::context::PublishErrorKind;
        let started = Instant::now();
        let fail = |class: &str, kind: PublishErrorKind, what: String| {
            self.metrics.request(class, started.elapsed().as_secs_f64());
            if kind == PublishErrorKind::StreamNotFound {
                health.blocked(format!(
                    "no JetStream stream captures the subjects (stream `{}`)",
                    self.cfg.stream
                ));
            }
            match kind {
                PublishErrorKind::MaxPayloadExceeded => Attempt::Permanent(what),
                _ => Attempt::Retry {
                    why: what,
                    after: None,
                },
            }
        };
        let class = |k: &PublishErrorKind| match k {
            PublishErrorKind::TimedOut => "timeout",
            PublishErrorKind::BrokenPipe => "connection_error",
            _ => "5xx",
        };
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let payload = match crate::event::to_json(e, false) {
                Ok(p) => p,
                Err(err) => {
                    return Attempt::Permanent(format!("cannot serialize {}: {err}", e.uid));
                }
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                super::send::delivery_id(std::slice::from_ref(e)).as_str(),
            );
            let subject = self.cfg.subject.render(e);
            match self
                .js
                .publish_with_headers(subject, headers, payload.into())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(err) => {
                    let k = err.kind();
                    return fail(class(&k), k, format!("publish: {err}"));
                }
            }
        }
        let mut duplicates = 0u64;
        for ack in acks {
            match ack.await {
                Ok(a) => duplicates += u64::from(a.duplicate),
                Err(err) => {
                    let k = err.kind();
                    return fail(class(&k), k, format!("publish acknowledgement: {err}"));
                }
            }
        }
        self.metrics.request("2xx", started.elapsed().as_secs_f64());
        if duplicates > 0 {
            tracing::info!(stage = %self.stage, duplicates, "JetStream dropped repeats (same Nats-Msg-Id inside the duplicate window)");
            self.duplicates.increment(duplicates);
        }
        Attempt::Delivered
    }
}

impl send::Deliver for Publisher {
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a crate::health::StageHealth,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let id = super::send::delivery_id(events);
            let retrier = send::Retrier {
                stage: &self.stage,
                what: "nats",
                backoff: &self.cfg.backoff,
                leadership: &self.leadership,
                metrics: &self.metrics,
            };
            retrier
                .run(
                    &id,
                    events,
                    Some(health),
                    Budget::Retries(self.cfg.retries),
                    None,
                    || self.publish(events, health),
                )
                .await
        })
    }
}

struct NatsSink {
    publisher: Arc<Publisher>,
    health: crate::health::Health,
}

impl Sink for NatsSink {
    fn run(self: Box<Self>, mut cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let this = *self;
            let cfg = this.publisher.cfg.clone();
            let health = this.health.register(&cx.metrics.id, cfg.unready_after.0);
            health.synced();
            send::in_memory(
                &this.publisher,
                &mut cx,
                &health,
                &cfg.batch.plain(),
                cfg.max_in_flight,
                "nats_failed",
            )
            .await;
            // What was published is flushed before the stage reports it stopped.
            let _ = this.publisher.client.flush().await;
            health.stopped();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_made_of_one_token_per_field() {
        let s = Subject::parse("events.{namespace}.{reason}").unwrap_or_else(|e| panic!("{e}"));
        let mut e = crate::testkit::event("u");
        e.namespace = "kube.system".into();
        e.reason = String::new();
        assert_eq!(s.render(&e), "events.kube_system._");
        assert!(Subject::parse("events.{nope}").is_err());
        assert!(Subject::parse("events.{namespace").is_err());
        assert!(Subject::parse("events.>").is_err());
        assert!(Subject::parse("events..{namespace}").is_err());
        assert_eq!(
            default_subject(),
            Subject::parse("eventflow.{cluster}.{namespace}.{type}")
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[test]
    fn subject_filters_match_as_nats_does() {
        assert!(subject_matches("eventflow.>", "eventflow.a.b.c"));
        assert!(subject_matches("eventflow.*.*.*", "eventflow.a.b.c"));
        assert!(!subject_matches("eventflow.*.*", "eventflow.a.b.c"));
        assert!(!subject_matches("other.>", "eventflow.a"));
        assert!(!subject_matches("eventflow.>", "eventflow"));
    }
}
