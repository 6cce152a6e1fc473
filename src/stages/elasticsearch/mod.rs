//! `elasticsearch`: writes events to Elasticsearch 7/8 or OpenSearch 1/2 through the bulk API
//! (`POST /_bulk`, NDJSON).
//!
//! Idempotent writes: into an index (`index:` with date placeholders from the event's time)
//! each Event object is one document, `_id` = its uid, written with the `index` action, so a
//! repeat of the Event (its count grew) replaces the same document; into a data stream
//! (`data_stream:`, append-only) each event is `create`d with `_id` = its delivery id (uid and
//! resource version), and a `409` for it means it is there already. No `_type` is ever sent.
//!
//! The answer is read per item: `429` and `5xx` items are sent again (alone) with backoff;
//! other item errors (a mapping conflict) fail that event alone, counted by the error's type
//! (`eventflow_events_discarded_total{reason="es_mapper_parsing_exception"}`, ...). A `413`
//! for the whole request splits it in halves. Several `urls` are tried in turn when one does
//! not answer.

pub mod document;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
use crate::event::{Event, EventData};
use crate::types::Dur;

/// Writes events to Elasticsearch or OpenSearch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// The nodes (`https://es-1:9200`), tried in turn when one does not answer.
    pub urls: Vec<String>,
    /// The index, with strftime placeholders filled from the event's time (last seen), e.g.
    /// `kube-events-%Y.%m.%d`. One document per Event object (`_id` = its uid). Default when
    /// neither this nor `data_stream` is set: `kube-events-%Y.%m.%d`.
    #[serde(default)]
    pub index: Option<String>,
    /// A data stream to append to instead of an index (`logs-kubernetes.events-default`): one
    /// document per event delivered, created with `_id` = its delivery id.
    #[serde(default)]
    pub data_stream: Option<String>,
    /// An API key (the base64 `id:api_key` Elasticsearch gives out; sent as `Authorization:
    /// ApiKey ...`; never logged; `${ENV}` works).
    #[serde(default)]
    pub api_key: Option<String>,
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
    pub compression: bool,
    /// Events per bulk request and the longest an event waits.
    #[serde(default)]
    pub batch: BatchConfig<500>,
    /// The most bytes of one bulk request (before compression); a batch over it is sent in
    /// several requests.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Time limit of one request.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Retries after the first attempt, for retryable failures (429, 5xx, no answer; per item
    /// too).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Exponential backoff between retries (each delay uniform in [d/2, d]).
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Bulk requests in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A PEM file of extra CA certificates to trust (`~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (dangerous; warned about at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Install the index template (`eventflow elasticsearch-template` prints it) when the
    /// stage starts (`PUT /_index_template/<template_name>`); a failure is logged and writing
    /// goes on.
    #[serde(default)]
    pub install_template: bool,
    /// The index template's name.
    #[serde(default = "default_template_name")]
    pub template_name: String,
    /// Readiness: not ready once requests have been failing (retryably) for this long.
    #[serde(default = "send::default_unready_after")]
    pub unready_after: Dur,
}

fn yes() -> bool {
    true
}
fn default_max_bytes() -> u64 {
    5 << 20
}
fn default_timeout() -> Dur {
    Dur::secs(30)
}
fn default_retries() -> u32 {
    5
}
fn default_max_in_flight() -> usize {
    2
}
fn default_template_name() -> String {
    "eventflow-events".into()
}

/// The index when none is configured.
pub const DEFAULT_INDEX: &str = "kube-events-%Y.%m.%d";

pub const REQUESTS: &str = "eventflow_elasticsearch_requests_total";
pub const SECONDS: &str = "eventflow_elasticsearch_request_seconds";
pub const RETRIES: &str = "eventflow_elasticsearch_retries_total";

const NAMES: send::MetricNames = send::MetricNames {
    requests: REQUESTS,
    seconds: SECONDS,
    retries: RETRIES,
};

fn describe() {
    send::describe_requests(
        &NAMES,
        "Bulk requests to Elasticsearch/OpenSearch by outcome: 2xx, 3xx, 4xx, 5xx, timeout, connection_error.",
        "Bulk request latency.",
        "Bulk deliveries retried after a retryable failure (of the request or of items).",
    );
}

pub const TYPE: StageType = StageType {
    name: "elasticsearch",
    kind: StageKind::Sink,
    summary: "writes events to Elasticsearch or OpenSearch through the bulk API (idempotent ids, per-item retries)",
    parse: crate::component::parse_config::<ElasticsearchConfig>,
    schema: crate::component::schema_of::<ElasticsearchConfig>,
    describe,
};

/// The discard reason of an item error's `type` (the common ones by name; others together).
pub fn item_reason(error_type: &str) -> &'static str {
    match error_type {
        "mapper_parsing_exception" => "es_mapper_parsing_exception",
        "document_parsing_exception" => "es_document_parsing_exception",
        "strict_dynamic_mapping_exception" => "es_strict_dynamic_mapping_exception",
        "illegal_argument_exception" => "es_illegal_argument_exception",
        "index_not_found_exception" => "es_index_not_found_exception",
        "cluster_block_exception" => "es_cluster_block_exception",
        "invalid_index_name_exception" => "es_invalid_index_name_exception",
        "request_too_large" => "es_request_too_large",
        _ => "es_item_refused",
    }
}

/// `index` with its strftime placeholders filled from `t`, or why it cannot be.
fn index_name(index: &str, t: chrono::DateTime<chrono::Utc>) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    write!(s, "{}", t.format(index))
        .map_err(|_| format!("`{index}` has an invalid strftime placeholder"))?;
    Ok(s)
}

impl ElasticsearchConfig {
    /// The target: `(name, is a data stream)`.
    fn target(&self) -> (&str, bool) {
        match (&self.data_stream, &self.index) {
            (Some(ds), _) => (ds, true),
            (None, Some(i)) => (i, false),
            (None, None) => (DEFAULT_INDEX, false),
        }
    }

    fn bulk_urls(&self) -> Result<Vec<reqwest::Url>, Invalid> {
        self.urls
            .iter()
            .enumerate()
            .map(|(i, u)| send::http_url(&format!("urls[{i}]"), u, Some("/_bulk")))
            .collect()
    }

    /// The index pattern its template covers.
    pub fn template_pattern(&self) -> String {
        let (name, _) = self.target();
        document::pattern(name)
    }

    /// The index template of this stage.
    pub fn template(&self) -> serde_json::Value {
        let (_, ds) = self.target();
        document::template(&[self.template_pattern()], ds)
    }

    /// The action and document lines of one event (each ending in `\n`).
    pub fn lines(&self, e: &EventData) -> Result<String, String> {
        let (target, ds) = self.target();
        let (action, id) = if ds {
            (
                "create",
                send::delivery_id_of([(e.uid.as_str(), e.resource_version.as_str())]),
            )
        } else {
            ("index", e.uid.clone())
        };
        let index = if ds {
            target.to_string()
        } else {
            index_name(target, document::timestamp(e))?
        };
        let meta = serde_json::json!({ action: {"_index": index, "_id": id} });
        let doc = document::document(e);
        Ok(format!("{meta}\n{doc}\n"))
    }

    /// The sending side of stage `stage`.
    pub fn writer(&self, stage: &str) -> Result<Writer, Invalid> {
        let mut headers = self.headers.clone();
        if let Some(k) = &self.api_key {
            headers.insert("Authorization".into(), format!("ApiKey {k}"));
        }
        if let Some(t) = &self.bearer_token {
            headers.insert("Authorization".into(), format!("Bearer {t}"));
        }
        let client = send::client(&send::ClientOptions {
            timeout: self.timeout.0,
            headers: &headers,
            ca_file: self.ca_file.as_deref(),
            insecure_skip_verify: self.insecure_skip_verify,
            stage,
            what: "elasticsearch",
        })?;
        Ok(Writer {
            cfg: self.clone(),
            client,
            urls: self.bulk_urls()?,
            next_url: AtomicUsize::new(0),
            stage: stage.to_string(),
            metrics: send::RequestMetrics::new(&NAMES, stage),
            leadership: crate::leader::Leadership::always(),
        })
    }
}

fn check_index_name(out: &mut Vec<Invalid>, field: &str, name: &str) {
    if name.is_empty() {
        out.push(Invalid::new(field, "cannot be empty"));
        return;
    }
    let probe = match index_name(name, chrono::Utc::now()) {
        Ok(p) => p,
        Err(why) => {
            out.push(Invalid::new(field, why));
            return;
        }
    };
    if probe.chars().any(|c| c.is_ascii_uppercase()) {
        out.push(Invalid::new(
            field,
            "index and data stream names must be lowercase",
        ));
    }
    if let Some(c) = probe.chars().find(|c| {
        matches!(
            c,
            ' ' | '"' | '*' | '\\' | '<' | '|' | ',' | '>' | '/' | '?' | '#' | ':'
        )
    }) {
        out.push(Invalid::new(
            field,
            format!("`{c}` is not allowed in an index name"),
        ));
    }
    if probe.starts_with(['-', '_', '+', '.']) {
        out.push(Invalid::new(
            field,
            "an index name cannot start with `-`, `_`, `+` or `.`",
        ));
    }
}

impl StageConfig for ElasticsearchConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        crate::budget::sending(self.max_in_flight, self.batch.max_events, false)
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.urls.is_empty() {
            out.push(Invalid::new("urls", "needs at least one node URL"));
        }
        if let Err(i) = self.bulk_urls() {
            out.push(i);
        }
        out.extend(send::check_http(&self.headers, self.ca_file.as_deref()));
        match (&self.index, &self.data_stream) {
            (Some(_), Some(_)) => out.push(Invalid::new(
                "data_stream",
                "use either `index` or `data_stream`, not both",
            )),
            (Some(i), None) => check_index_name(&mut out, "index", i),
            (None, Some(ds)) => {
                check_index_name(&mut out, "data_stream", ds);
                if ds.contains('%') {
                    out.push(Invalid::new(
                        "data_stream",
                        "a data stream has one name (no date placeholders: it rolls over by itself)",
                    ));
                }
            }
            (None, None) => {}
        }
        let auths = [
            self.api_key.is_some(),
            self.username.is_some(),
            self.bearer_token.is_some(),
        ];
        if auths.iter().filter(|a| **a).count() > 1 {
            out.push(Invalid::new(
                "api_key",
                "use one of `api_key`, `username`/`password` and `bearer_token`",
            ));
        }
        if self.password.is_some() != self.username.is_some() {
            out.push(Invalid::new(
                "password",
                "basic authentication needs both `username` and `password`",
            ));
        }
        if self.timeout.0.is_zero() {
            out.push(Invalid::new("timeout", "must be above zero"));
        }
        crate::component::at_least_one(&mut out, "batch.max_events", self.batch.max_events as u64);
        crate::component::at_least_one(&mut out, "max_in_flight", self.max_in_flight as u64);
        crate::component::in_range(&mut out, "max_bytes", self.max_bytes, 1024, 100 << 20);
        out.extend(self.backoff.validate("backoff"));
        out
    }

    fn preview(&self, events: &[EventData]) -> Option<Vec<Result<serde_json::Value, String>>> {
        let url = match self.bulk_urls() {
            Ok(u) => u
                .first()
                .map(|u| crate::redact::url(u.as_str()))
                .unwrap_or_default(),
            Err(e) => return Some(vec![Err(e.to_string())]),
        };
        Some(
            events
                .chunks(self.batch.max_events.max(1))
                .map(|chunk| {
                    let body = chunk
                        .iter()
                        .map(|e| self.lines(e).map_err(|why| format!("{}: {why}", e.uid)))
                        .collect::<Result<String, String>>()?;
                    Ok(serde_json::json!({"method": "POST", "url": url, "body": body}))
                })
                .collect(),
        )
    }

    fn explain(&self, e: &EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        match self.lines(e) {
            Ok(lines) => {
                let mut it = lines.lines();
                let meta: serde_json::Value =
                    serde_json::from_str(it.next().unwrap_or("{}")).unwrap_or_default();
                let doc: serde_json::Value =
                    serde_json::from_str(it.next().unwrap_or("{}")).unwrap_or_default();
                let (_, ds) = self.target();
                Explanation::new(
                    Verdict::Delivered,
                    vec![Step::note(if ds {
                        "appended to the data stream (`create`, id = the delivery id)"
                    } else {
                        "written to its index (`index`, id = the Event's uid: a repeat replaces it)"
                    })],
                )
                .with_output(serde_json::json!({"action": meta, "document": doc}))
            }
            Err(why) => Explanation::new(
                Verdict::Dropped,
                vec![Step::no(format!("the document cannot be made: {why}"))],
            ),
        }
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let mut writer = self.writer(&cx.id).map_err(|e| cx.failed(e))?;
            writer.leadership = cx.leadership.clone();
            Ok(Stage::Sink(Box::new(ElasticsearchSink {
                writer: Arc::new(writer),
                health: cx.health.clone(),
            }) as Box<dyn Sink>))
        })
    }
}

/// Writes batches of events under the stage's rules.
pub struct Writer {
    cfg: ElasticsearchConfig,
    client: reqwest::Client,
    urls: Vec<reqwest::Url>,
    /// The node tried first (the last one that answered).
    next_url: AtomicUsize,
    stage: String,
    metrics: send::RequestMetrics,
    leadership: crate::leader::Leadership,
}

/// What became of the items of one delivery so far.
#[derive(Default)]
struct Items {
    /// Still to send (indices into the batch).
    pending: Vec<usize>,
    /// Refused for good: index, error type, reason.
    refused: Vec<(usize, String, String)>,
}

/// How one request ended.
enum Answer {
    /// Per item, in order: `None` stored, `Some(Ok(why))` to retry, `Some(Err((type, why)))`
    /// refused.
    Items(Vec<Option<Result<String, (String, String)>>>),
    TooLarge,
    Attempt(Attempt),
}

impl Writer {
    fn encode(&self, body: &str) -> std::io::Result<bytes::Bytes> {
        if !self.cfg.compression {
            return Ok(bytes::Bytes::copy_from_slice(body.as_bytes()));
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(body.as_bytes())?;
        Ok(gz.finish()?.into())
    }

    /// One request to the first node that answers.
    async fn post(
        &self,
        url_path: Option<&str>,
        method: reqwest::Method,
        body: bytes::Bytes,
        ndjson: bool,
    ) -> Result<reqwest::Response, Attempt> {
        let n = self.urls.len();
        let first = self.next_url.load(Ordering::Relaxed) % n.max(1);
        let mut last = Attempt::Retry {
            why: "no node".into(),
            after: None,
        };
        for k in 0..n {
            let i = (first + k) % n;
            let mut url = self.urls[i].clone();
            if let Some(p) = url_path {
                let base = url.path().trim_end_matches("/_bulk").to_string();
                url.set_path(&format!("{base}{p}"));
            }
            let started = Instant::now();
            let mut r = self.client.request(method.clone(), url).header(
                reqwest::header::CONTENT_TYPE,
                if ndjson {
                    "application/x-ndjson"
                } else {
                    "application/json"
                },
            );
            if self.cfg.compression {
                r = r.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
            if let (Some(u), Some(p)) = (&self.cfg.username, &self.cfg.password) {
                r = r.basic_auth(u, Some(p));
            }
            let r = r.body(body.clone()).send().await;
            self.metrics
                .request(send::status_class(&r), started.elapsed().as_secs_f64());
            match r {
                Ok(resp) => {
                    self.next_url.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => {
                    last = send::http_answer(Err(e), self.cfg.timeout.0, |e| {
                        crate::types::error_chain(&e.without_url())
                    })
                    .await;
                    tracing::warn!(stage = %self.stage, node = i, "elasticsearch node did not answer; trying the next");
                }
            }
        }
        Err(last)
    }

    /// One bulk request of `lines`.
    async fn bulk(&self, lines: &[&str]) -> Answer {
        let body: String = lines.concat();
        let body = match self.encode(&body) {
            Ok(b) => b,
            Err(e) => return Answer::Attempt(Attempt::Permanent(format!("cannot compress: {e}"))),
        };
        let resp = match self.post(None, reqwest::Method::POST, body, true).await {
            Ok(r) => r,
            Err(a) => return Answer::Attempt(a),
        };
        let status = resp.status();
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Answer::TooLarge;
        }
        if !status.is_success() {
            return Answer::Attempt(send::http_refusal(resp).await);
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Answer::Attempt(Attempt::Retry {
                    why: format!("the bulk answer broke off: {e}"),
                    after: None,
                });
            }
        };
        // Not the bulk API answering (a proxy, a wrong URL): retrying would not change it.
        let v: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Answer::Attempt(Attempt::Permanent(format!(
                    "the answer is not a bulk answer (not JSON: {e}): {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )));
            }
        };
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if v["errors"] == serde_json::Value::Bool(false) && items.len() == lines.len() {
            return Answer::Items(vec![None; lines.len()]);
        }
        if items.len() != lines.len() {
            return Answer::Attempt(Attempt::Permanent(format!(
                "the bulk answer has {} items for {} actions",
                items.len(),
                lines.len()
            )));
        }
        Answer::Items(items.iter().map(item_result).collect())
    }

    /// Sends the pending items of `events` (in requests of at most `max_bytes`, a 413 split in
    /// halves), recording what became of each.
    async fn attempt(&self, lines: &[String], items: &Mutex<Items>) -> Attempt {
        let pending =
            std::mem::take(&mut items.lock().unwrap_or_else(PoisonError::into_inner).pending);
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let (mut cur, mut size) = (Vec::new(), 0u64);
        for i in pending {
            let len = lines[i].len() as u64;
            if !cur.is_empty() && size + len > self.cfg.max_bytes {
                chunks.push(std::mem::take(&mut cur));
                size = 0;
            }
            cur.push(i);
            size += len;
        }
        if !cur.is_empty() {
            chunks.push(cur);
        }
        // A request that failed retryably stops this attempt (the rest waits for the backoff);
        // items to retry do not (the other requests go out).
        let mut request_retry: Option<Attempt> = None;
        let mut item_retry: Option<String> = None;
        let mut still = Vec::new();
        let mut refused = Vec::new();
        let mut permanent = None;
        while let Some(chunk) = chunks.pop() {
            if request_retry.is_some() || permanent.is_some() {
                still.extend(chunk);
                continue;
            }
            let refs: Vec<&str> = chunk.iter().map(|i| lines[*i].as_str()).collect();
            match self.bulk(&refs).await {
                Answer::TooLarge if chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    chunks.push(b.to_vec());
                    chunks.push(a.to_vec());
                }
                Answer::TooLarge => refused.push((
                    chunk[0],
                    "request_too_large".to_string(),
                    "HTTP 413: the document alone is over the cluster's http.max_content_length"
                        .to_string(),
                )),
                Answer::Items(results) => {
                    for (i, r) in chunk.iter().zip(results) {
                        match r {
                            None => {}
                            Some(Ok(why)) => {
                                still.push(*i);
                                item_retry.get_or_insert(why);
                            }
                            Some(Err((ty, why))) => refused.push((*i, ty, why)),
                        }
                    }
                }
                Answer::Attempt(Attempt::Delivered) => {}
                Answer::Attempt(a @ Attempt::Retry { .. }) => {
                    still.extend(chunk);
                    request_retry = Some(a);
                }
                Answer::Attempt(Attempt::Permanent(why)) => {
                    still.extend(chunk);
                    permanent = Some(why);
                }
            }
        }
        let n = still.len();
        let mut it = items.lock().unwrap_or_else(PoisonError::into_inner);
        it.pending = still;
        it.refused.extend(refused);
        match (permanent, request_retry, item_retry) {
            (Some(why), _, _) => Attempt::Permanent(why),
            (None, Some(Attempt::Retry { why, after }), _) => Attempt::Retry {
                why: format!("{n} item(s) to send again: {why}"),
                after,
            },
            (None, _, Some(why)) => Attempt::Retry {
                why: format!("{n} item(s) to send again: {why}"),
                after: None,
            },
            _ => Attempt::Delivered,
        }
    }

    async fn write_events(&self, events: &[Event], health: &crate::health::StageHealth) -> Outcome {
        let mut lines = Vec::with_capacity(events.len());
        let mut items = Items::default();
        for (i, e) in events.iter().enumerate() {
            match self.cfg.lines(e) {
                Ok(l) => {
                    items.pending.push(i);
                    lines.push(l);
                }
                Err(why) => {
                    items.refused.push((i, "document".into(), why));
                    lines.push(String::new());
                }
            }
        }
        let items = Mutex::new(items);
        let id = send::delivery_id(events);
        let retrier = send::Retrier {
            stage: &self.stage,
            what: "elasticsearch",
            backoff: &self.cfg.backoff,
            leadership: &self.leadership,
            metrics: &self.metrics,
        };
        let (lines_ref, items_ref) = (&lines, &items);
        let outcome = retrier
            .run(
                &id,
                events,
                Some(health),
                Budget::Retries(self.cfg.retries),
                None,
                move || self.attempt(lines_ref, items_ref),
            )
            .await;
        let items = items.into_inner().unwrap_or_else(PoisonError::into_inner);
        if !items.refused.is_empty() {
            tracing::error!(stage = %self.stage, refused = ?items.refused.iter().take(10).map(|(i, ty, why)| format!("{}: {ty}: {why}", events[*i].uid)).collect::<Vec<_>>(), "elasticsearch refused documents (permanent); the others were written");
            for (i, ty, why) in &items.refused {
                crate::metrics::discarded(&self.stage, "elasticsearch", item_reason(ty))
                    .increment(1);
                events[*i].refuse(
                    &self.stage,
                    &format!("elasticsearch refused the document: {ty}: {why}"),
                );
            }
        }
        outcome
    }

    /// Installs the index template (logged either way).
    async fn install_template(&self) {
        let body = self.cfg.template().to_string();
        let path = format!("/_index_template/{}", self.cfg.template_name);
        let body = match self.encode(&body) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(stage = %self.stage, error = %e, "cannot compress the index template");
                return;
            }
        };
        match self
            .post(Some(&path), reqwest::Method::PUT, body, false)
            .await
        {
            Ok(r) if r.status().is_success() => {
                tracing::info!(stage = %self.stage, template = %self.cfg.template_name, pattern = %self.cfg.template_pattern(), "index template installed");
            }
            Ok(r) => {
                let why = match send::http_refusal(r).await {
                    Attempt::Retry { why, .. } | Attempt::Permanent(why) => why,
                    Attempt::Delivered => String::new(),
                };
                tracing::error!(stage = %self.stage, template = %self.cfg.template_name, reason = %why, "cannot install the index template; documents are written with the cluster's mappings");
            }
            Err(a) => {
                tracing::error!(stage = %self.stage, template = %self.cfg.template_name, reason = ?a, "cannot install the index template; documents are written with the cluster's mappings");
            }
        }
    }
}

/// What one bulk item says: stored (`None`), to retry, or refused with its error type.
fn item_result(item: &serde_json::Value) -> Option<Result<String, (String, String)>> {
    let (action, body) = item.as_object()?.iter().next()?;
    let status = body["status"].as_u64().unwrap_or(0);
    let ty = body["error"]["type"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let reason = body["error"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match status {
        200..=299 => None,
        // `create` of an id that is there: delivered before (a retry or a restart).
        409 if action == "create" => None,
        429 | 500..=599 => Some(Ok(format!("item {status} {ty}: {reason}"))),
        _ => Some(Err((ty, format!("{status} {reason}")))),
    }
}

impl send::Deliver for Writer {
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a crate::health::StageHealth,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.write_events(events, health))
    }
}

struct ElasticsearchSink {
    writer: Arc<Writer>,
    health: crate::health::Health,
}

impl Sink for ElasticsearchSink {
    fn run(self: Box<Self>, mut cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let this = *self;
            let cfg = this.writer.cfg.clone();
            let health = this.health.register(&cx.metrics.id, cfg.unready_after.0);
            health.synced();
            if cfg.install_template {
                this.writer.install_template().await;
            }
            send::in_memory(
                &this.writer,
                &mut cx,
                &health,
                &cfg.batch.plain(),
                cfg.max_in_flight,
                "elasticsearch_failed",
            )
            .await;
            health.stopped();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_told_apart() {
        let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
        assert_eq!(item_result(&j(r#"{"index":{"status":201}}"#)), None);
        assert_eq!(
            item_result(&j(
                r#"{"create":{"status":409,"error":{"type":"version_conflict_engine_exception"}}}"#
            )),
            None
        );
        assert!(matches!(
            item_result(&j(
                r#"{"index":{"status":409,"error":{"type":"version_conflict_engine_exception"}}}"#
            )),
            Some(Err(_))
        ));
        assert!(matches!(
            item_result(&j(
                r#"{"index":{"status":429,"error":{"type":"es_rejected_execution_exception"}}}"#
            )),
            Some(Ok(_))
        ));
        assert_eq!(
            item_result(&j(
                r#"{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse"}}}"#
            )),
            Some(Err((
                "mapper_parsing_exception".into(),
                "400 failed to parse".into()
            )))
        );
        assert_eq!(
            item_reason("mapper_parsing_exception"),
            "es_mapper_parsing_exception"
        );
        assert_eq!(item_reason("whatever"), "es_item_refused");
    }

    #[test]
    fn index_names_come_from_the_event_time() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
            .unwrap_or_default()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            index_name("kube-events-%Y.%m.%d", t),
            Ok("kube-events-2026.03.02".into())
        );
        assert!(index_name("bad-%Q", t).is_err());
    }
}
