//! `otlp`: sends events as OpenTelemetry log records to any OTLP receiver (the collector,
//! vendors' gateways) over gRPC (`LogsService/Export`) or HTTP/protobuf (`POST /v1/logs`).
//!
//! The mapping ([`mapping`]) is the OpenTelemetry collector's `k8seventsreceiver`'s, so
//! dashboards built for it work unchanged. Failures follow the OTLP specification
//! ([`transport`]): retryable ones are retried with backoff, honouring `RetryInfo` /
//! `Retry-After`; permanent ones fail the batch (its source does not checkpoint it). A partial
//! success (the server took the request but rejected some records) acknowledges the batch —
//! OTLP does not say which records were rejected, and sending the batch again would duplicate
//! the others — and counts the rejected ones as discarded (`otlp_rejected`), logging the
//! server's message.

pub mod mapping;
pub mod tls;
pub mod transport;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
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
use crate::event::{Event, EventData};
use crate::types::Dur;
use transport::{Exported, Transport};

/// How export requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// gRPC, `opentelemetry.proto.collector.logs.v1.LogsService/Export` (port 4317).
    #[default]
    Grpc,
    /// HTTP/protobuf, `POST /v1/logs` (port 4318).
    Http,
}

/// Sends events as OTLP log records.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The receiver: `http://collector:4317` for gRPC, `http://collector:4318` for HTTP
    /// (`/v1/logs` is added unless the URL already ends with it); `https://` for TLS.
    pub endpoint: String,
    /// `grpc` or `http` (protobuf).
    #[serde(default)]
    pub protocol: Protocol,
    /// Compress requests with gzip.
    #[serde(default = "yes")]
    pub gzip: bool,
    /// Extra request headers (gRPC metadata), e.g. an auth token through `${ENV}`; values are
    /// never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Resource attributes added to every record's resource: fixed values or minijinja
    /// templates of the event (`{{ object_labels.team }}`); they replace mapped ones of the same
    /// name.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, TextTemplateField>,
    /// Log record attributes added to every record, fixed or templated as
    /// `resource_attributes`.
    #[serde(default)]
    pub attributes: BTreeMap<String, TextTemplateField>,
    /// Time limit of one request (and of connecting).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Retries after the first attempt, for retryable failures.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Exponential backoff between retries (each delay uniform in [d/2, d]).
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Records per export request (this bounds its size) and the longest an event waits.
    #[serde(default)]
    pub batch: BatchConfig<512>,
    /// Requests in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A PEM file of extra CA certificates to trust (`~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (dangerous; warned about at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Readiness: not ready once exports have been failing (retryably) for this long.
    #[serde(default = "send::default_unready_after")]
    pub unready_after: Dur,
    /// Keep accepted events in a queue table in the `state` database until the receiver took
    /// them (the webhook's durable queue): they survive restarts, crashes and an outage longer
    /// than the API server keeps Events; an export refused for good goes to the dead-letter
    /// table (`eventflow dead-letter`).
    #[serde(default)]
    pub durable: bool,
    /// With `durable`: the most events the queue holds (back-pressure beyond).
    #[serde(default = "durable::default_max_queued")]
    pub max_queued: u64,
    /// With `durable`: how long an export that keeps failing retryably is retried before it is
    /// dead-lettered (`retries` does not apply).
    #[serde(default = "durable::default_retry_for")]
    pub retry_for: Dur,
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
    2
}

pub const REQUESTS: &str = "eventflow_otlp_requests_total";
pub const SECONDS: &str = "eventflow_otlp_request_seconds";
pub const RETRIES: &str = "eventflow_otlp_retries_total";

const NAMES: send::MetricNames = send::MetricNames {
    requests: REQUESTS,
    seconds: SECONDS,
    retries: RETRIES,
};

fn describe() {
    send::describe_requests(
        &NAMES,
        "OTLP export requests by outcome: 2xx, 3xx, 4xx, 5xx, timeout, connection_error (gRPC status codes by gRPC's HTTP mapping).",
        "OTLP export request latency.",
        "OTLP exports retried after a retryable failure.",
    );
}

pub const TYPE: StageType = StageType {
    name: "otlp",
    kind: StageKind::Sink,
    summary: "sends events as OpenTelemetry log records over OTLP gRPC or HTTP (the collector's k8sevents mapping)",
    parse: crate::component::parse_config::<OtlpConfig>,
    schema: crate::component::schema_of::<OtlpConfig>,
    describe,
};

impl mapping::Extra for OtlpConfig {
    fn extra(&self, e: &EventData) -> Result<(mapping::Attrs, mapping::Attrs), String> {
        let render = |m: &BTreeMap<String, TextTemplateField>, what: &str| {
            m.iter()
                .map(|(k, t)| {
                    t.compiled
                        .render_event(e)
                        .map(|v| (k.clone(), v))
                        .map_err(|err| format!("{what}.{k}: {err}"))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok((
            render(&self.resource_attributes, "resource_attributes")?,
            render(&self.attributes, "attributes")?,
        ))
    }
}

impl OtlpConfig {
    fn is_http(&self) -> bool {
        self.protocol == Protocol::Http
    }

    /// The export request of `events` (observed now, for `explain`/`test`), or the first
    /// event that cannot be mapped and why.
    fn preview_request(
        &self,
        events: &[EventData],
    ) -> Result<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest, String>
    {
        let now = chrono::Utc::now();
        let mapped = events
            .iter()
            .map(|e| mapping::map(e, now, self).map_err(|why| format!("{}: {why}", e.uid)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(mapping::request(mapped))
    }

    /// The sending side of stage `stage` (`eventflow dead-letter resend` uses it too).
    pub fn exporter(&self, stage: &str) -> Result<Exporter, Invalid> {
        let transport = Transport::new(&transport::Options {
            endpoint: &self.endpoint,
            http: self.is_http(),
            gzip: self.gzip,
            timeout: self.timeout.0,
            headers: &self.headers,
            ca_file: self.ca_file.as_deref(),
            insecure_skip_verify: self.insecure_skip_verify,
            stage,
        })?;
        Ok(Exporter {
            cfg: self.clone(),
            transport,
            stage: stage.to_string(),
            metrics: send::RequestMetrics::new(&NAMES, stage),
            leadership: crate::leader::Leadership::always(),
        })
    }
}

/// The request as JSON (OTLP's JSON encoding: camelCase, 64-bit integers as strings), for
/// `explain` and `test`.
pub fn request_json(
    r: &opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
) -> serde_json::Value {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let kv = |a: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        a.iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(V::StringValue(s)) => serde_json::json!({"stringValue": s}),
                    Some(V::IntValue(i)) => serde_json::json!({"intValue": i.to_string()}),
                    _ => serde_json::json!({}),
                };
                serde_json::json!({"key": kv.key, "value": value})
            })
            .collect::<Vec<_>>()
    };
    let resource_logs: Vec<serde_json::Value> = r
        .resource_logs
        .iter()
        .map(|rl| {
            let scope_logs: Vec<serde_json::Value> = rl
                .scope_logs
                .iter()
                .map(|sl| {
                    let records: Vec<serde_json::Value> = sl
                        .log_records
                        .iter()
                        .map(|lr| {
                            let body = match lr.body.as_ref().and_then(|b| b.value.as_ref()) {
                                Some(V::StringValue(s)) => serde_json::json!({"stringValue": s}),
                                _ => serde_json::json!({}),
                            };
                            serde_json::json!({
                                "timeUnixNano": lr.time_unix_nano.to_string(),
                                "observedTimeUnixNano": lr.observed_time_unix_nano.to_string(),
                                "severityNumber": lr.severity_number,
                                "severityText": lr.severity_text,
                                "body": body,
                                "attributes": kv(&lr.attributes),
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "scope": sl.scope.as_ref().map(|s| serde_json::json!({"name": s.name, "version": s.version})),
                        "logRecords": records,
                    })
                })
                .collect();
            serde_json::json!({
                "resource": {"attributes": rl.resource.as_ref().map(|r| kv(&r.attributes)).unwrap_or_default()},
                "scopeLogs": scope_logs,
            })
        })
        .collect();
    serde_json::json!({ "resourceLogs": resource_logs })
}

impl StageConfig for OtlpConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        crate::budget::sending(self.max_in_flight, self.batch.max_events, self.durable)
    }

    fn uses_raw(&self) -> bool {
        // The action, the times and the object's versions are not in the normalized event.
        true
    }

    fn alone(&self) -> bool {
        // Its durable queue is delivered by one replica.
        self.durable
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if let Err(i) = transport::endpoint_url(&self.endpoint, self.is_http()) {
            out.push(i);
        }
        out.extend(send::check_http(&self.headers, self.ca_file.as_deref()));
        if !self.is_http()
            && let Err(i) = transport::metadata(&self.headers)
        {
            out.push(i);
        }
        if self.timeout.0.is_zero() {
            out.push(Invalid::new("timeout", "must be above zero"));
        }
        for (what, m) in [
            ("resource_attributes", &self.resource_attributes),
            ("attributes", &self.attributes),
        ] {
            for k in m.keys() {
                if k.is_empty() {
                    out.push(Invalid::new(what, "an attribute name cannot be empty"));
                }
            }
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

    fn preview(&self, events: &[EventData]) -> Option<Vec<Result<serde_json::Value, String>>> {
        let url = match transport::endpoint_url(&self.endpoint, self.is_http()) {
            Ok(u) => crate::redact::url(u.as_str()),
            Err(e) => return Some(vec![Err(e.to_string())]),
        };
        let (method, rpc) = if self.is_http() {
            ("POST", url)
        } else {
            (
                "gRPC",
                format!("{url} opentelemetry.proto.collector.logs.v1.LogsService/Export"),
            )
        };
        Some(
            events
                .chunks(self.batch.max_events.max(1))
                .map(|chunk| {
                    self.preview_request(chunk).map(|r| {
                        serde_json::json!({"method": method, "url": rpc, "body": request_json(&r)})
                    })
                })
                .collect(),
        )
    }

    fn explain(&self, e: &EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        match self.preview_request(std::slice::from_ref(e)) {
            Ok(r) => Explanation::new(
                Verdict::Delivered,
                vec![Step::note(format!(
                    "exported as an OTLP log record over {}",
                    if self.is_http() { "HTTP" } else { "gRPC" }
                ))],
            )
            .with_output(request_json(&r)),
            Err(why) => Explanation::new(
                Verdict::Dropped,
                vec![Step::no(format!("the record cannot be made: {why}"))],
            ),
        }
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let mut exporter = self.exporter(&cx.id).map_err(|e| cx.failed(e))?;
            exporter.leadership = cx.leadership.clone();
            let queue = if self.durable {
                Some(durable::Queue::open(cx).await?)
            } else {
                None
            };
            Ok(Stage::Sink(Box::new(send::SendingSink {
                sender: Arc::new(exporter),
                queue,
                health: cx.health.clone(),
                shared: cx.shared.clone(),
                unready_after: self.unready_after.0,
                batch: self.batch.plain(),
                max_in_flight: self.max_in_flight,
                failed_reason: "otlp_failed",
            }) as Box<dyn Sink>))
        })
    }
}

/// Exports batches of events to one receiver under the stage's rules.
pub struct Exporter {
    cfg: OtlpConfig,
    transport: Transport,
    stage: String,
    metrics: send::RequestMetrics,
    leadership: crate::leader::Leadership,
}

impl Exporter {
    /// The request's protobuf encoding; gzipped for HTTP when `gzip` (the gRPC channel
    /// compresses by itself).
    fn encode(
        &self,
        r: &opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
    ) -> std::io::Result<bytes::Bytes> {
        let pb = r.encode_to_vec();
        if !self.cfg.gzip || !self.cfg.is_http() {
            return Ok(pb.into());
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(pb.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(&pb)?;
        Ok(gz.finish()?.into())
    }

    /// Exports one batch under `budget`; records the receiver rejected in a request it
    /// otherwise took are counted here.
    async fn export_events(
        &self,
        events: &[Event],
        health: Option<&crate::health::StageHealth>,
        budget: Budget,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Outcome {
        let now = chrono::Utc::now();
        let mut mapped = Vec::with_capacity(events.len());
        let mut bad = Vec::new();
        for e in events {
            let observed = now - chrono::Duration::from_std(e.born().elapsed()).unwrap_or_default();
            match mapping::map(e, observed, &self.cfg) {
                Ok(m) => mapped.push(m),
                Err(why) => bad.push((e, why)),
            }
        }
        if !bad.is_empty() {
            tracing::error!(stage = %self.stage, events = ?bad.iter().map(|(e, why)| format!("{}: {why}", e.uid)).collect::<Vec<_>>(), "otlp: records that cannot be made are left out");
            crate::metrics::discarded(&self.stage, "otlp", "otlp_record_failed")
                .increment(bad.len() as u64);
            for (e, why) in &bad {
                e.refuse(&self.stage, &format!("cannot make the OTLP record: {why}"));
            }
        }
        let request = mapping::request(mapped);
        let body = match self.encode(&request) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("cannot encode the export request: {e}"),
                    attempts: 0,
                };
            }
        };
        let id = send::delivery_id(events);
        let partly = std::sync::Mutex::new(None);
        drop(request);
        let (partly_ref, body_ref) = (&partly, &body);
        let retrier = send::Retrier {
            stage: &self.stage,
            what: "otlp",
            backoff: &self.cfg.backoff,
            leadership: &self.leadership,
            metrics: &self.metrics,
        };
        let outcome = retrier
            .run(&id, events, health, budget, stop, move || async move {
                let (exported, class, secs) = self
                    .transport
                    .export(body_ref, self.cfg.gzip, self.cfg.timeout.0)
                    .await;
                self.metrics.request(class, secs);
                match exported {
                    Exported::Accepted { rejected, message } => {
                        if rejected > 0 || !message.is_empty() {
                            *partly_ref
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some((rejected, message));
                        }
                        Attempt::Delivered
                    }
                    Exported::Attempt(a) => a,
                }
            })
            .await;
        if let Some((n, message)) = partly
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            if n > 0 {
                tracing::warn!(stage = %self.stage, rejected = n, of = events.len() - bad.len(), reason = %message, "the otlp receiver took the request but rejected some records (OTLP does not say which)");
                crate::metrics::discarded(&self.stage, "otlp", "otlp_rejected")
                    .increment(n.unsigned_abs());
            } else {
                tracing::warn!(stage = %self.stage, message = %message, "the otlp receiver took the request with a warning");
            }
        }
        outcome
    }
}

impl send::Deliver for Exporter {
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a crate::health::StageHealth,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.export_events(
            events,
            Some(health),
            Budget::Retries(self.cfg.retries),
            None,
        ))
    }
}

impl durable::Sender for Exporter {
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
        Box::pin(self.export_events(events, health, budget, stop))
    }
}
