//! `pagerduty`: opens and resolves PagerDuty incidents through the Events API v2
//! (`POST /v2/enqueue`).
//!
//! Each problem (by `key`: cluster, namespace, object kind and name, reason by default) is one
//! `dedup_key`: its events `trigger` it again, which PagerDuty folds into the open incident; a
//! key with no event for `resolve_after` gets a `resolve` ([`super::incident`]). PagerDuty
//! answers 202 when it took the event; 400 (`invalid event`, with its `errors`) is permanent;
//! 429 (PagerDuty asks for a pause) and 5xx are retried with backoff, after `Retry-After` when
//! given.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::batch::BatchConfig;
use super::incident::{self, Pager};
use super::key::KeySpec;
use super::send::{self, Attempt};
use super::webhook::template::TextTemplateField;
use crate::backoff::BackoffConfig;
use crate::component::{
    BuildContext, BuildError, Invalid, Stage, StageConfig, StageKind, StageType,
};
use crate::event::{EventData, Field};
use crate::types::Dur;

/// A link on the incident.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The URL (a template of the event).
    pub href: TextTemplateField,
    /// Its text (a template of the event).
    #[serde(default)]
    pub text: Option<TextTemplateField>,
}

/// Opens and resolves PagerDuty incidents.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The integration's routing key (Events API v2; never logged; `${ENV}` works).
    pub routing_key: String,
    /// The Events API endpoint (`https://events.eu.pagerduty.com/v2/enqueue` for the EU service
    /// region).
    #[serde(default = "default_url")]
    pub url: String,
    /// The event fields whose values make a problem's `dedup_key` (joined with `/`): repeats of
    /// one problem update one incident.
    #[serde(default = "incident::default_key")]
    pub key: Vec<Field>,
    /// PagerDuty severity by event type (`critical`, `error`, `warning` or `info`); `*` for
    /// any other type. Default: Warning -> warning, anything else -> info.
    #[serde(default = "default_severity")]
    pub severity: BTreeMap<String, String>,
    /// The incident's summary (a template of the event; at most 1,024 characters, cut beyond).
    /// Default: `[Warning] BackOff shop/Pod/web-1: <message>`.
    #[serde(default)]
    pub summary: Option<TextTemplateField>,
    /// `payload.source` (a template; default: the cluster, else `kubernetes`).
    #[serde(default)]
    pub source: Option<TextTemplateField>,
    /// `payload.component` (a template; default: `Kind/name` of the involved object).
    #[serde(default)]
    pub component: Option<TextTemplateField>,
    /// `payload.group` (a template; default: the namespace).
    #[serde(default)]
    pub group: Option<TextTemplateField>,
    /// `payload.class` (a template; default: the reason).
    #[serde(default)]
    pub class: Option<TextTemplateField>,
    /// Links on the incident.
    #[serde(default)]
    pub links: Vec<Link>,
    /// Resolve an incident whose key has had no event for this long.
    #[serde(default = "default_resolve_after")]
    pub resolve_after: Dur,
    /// The most open incidents tracked (for resolving); past it the oldest is forgotten (and
    /// counted).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Time limit of one request.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Retries after the first attempt, for retryable failures (429, 5xx, no answer).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Exponential backoff between retries (each delay uniform in [d/2, d]).
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Events taken together (one request per problem key among them) and the longest wait.
    #[serde(default)]
    pub batch: BatchConfig<100, 500>,
    /// A PEM file of extra CA certificates to trust (`~/` is the home directory).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (dangerous; warned about at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Readiness: not ready once requests have been failing (retryably) for this long.
    #[serde(default = "send::default_unready_after")]
    pub unready_after: Dur,
}

fn default_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}
fn default_severity() -> BTreeMap<String, String> {
    [("Warning", "warning"), ("*", "info")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
pub fn default_resolve_after() -> Dur {
    Dur::secs(15 * 60)
}
pub fn default_max_keys() -> usize {
    10_000
}
fn default_timeout() -> Dur {
    Dur::secs(10)
}
fn default_retries() -> u32 {
    5
}

pub const REQUESTS: &str = "eventflow_pagerduty_requests_total";
pub const SECONDS: &str = "eventflow_pagerduty_request_seconds";
pub const RETRIES: &str = "eventflow_pagerduty_retries_total";

const NAMES: send::MetricNames = send::MetricNames {
    requests: REQUESTS,
    seconds: SECONDS,
    retries: RETRIES,
};

fn describe() {
    send::describe_requests(
        &NAMES,
        "PagerDuty Events API requests (triggers and resolves) by outcome.",
        "PagerDuty request latency.",
        "PagerDuty requests retried.",
    );
    incident::describe();
}

pub const TYPE: StageType = StageType {
    name: "pagerduty",
    kind: StageKind::Sink,
    summary: "opens PagerDuty incidents (Events API v2), one per problem key, and resolves them after resolve_after without events",
    parse: crate::component::parse_config::<PagerDutyConfig>,
    schema: crate::component::schema_of::<PagerDutyConfig>,
    describe,
};

const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

impl PagerDutyConfig {
    fn endpoint(&self) -> Result<reqwest::Url, Invalid> {
        send::http_url("url", &self.url, None)
    }

    /// The `trigger` event of `e` under `key`.
    pub fn trigger(&self, key: &str, e: &EventData) -> Result<Value, String> {
        let summary = incident::render_or(self.summary.as_ref(), e, || {
            format!(
                "[{}] {} {}/{}/{}: {}",
                e.type_, e.reason, e.namespace, e.kind, e.object_name, e.message
            )
        })?;
        let source = incident::render_or(self.source.as_ref(), e, || {
            if e.cluster.is_empty() {
                "kubernetes".into()
            } else {
                e.cluster.to_string()
            }
        })?;
        let severity = self
            .severity
            .get(&e.type_)
            .or(self.severity.get("*"))
            .cloned()
            .unwrap_or_else(|| "info".into());
        let mut payload = json!({
            "summary": incident::cut_chars(&summary, 1024),
            "source": if source.is_empty() { "kubernetes".to_string() } else { source },
            "severity": severity,
            "component": incident::render_or(self.component.as_ref(), e, || format!("{}/{}", e.kind, e.object_name))?,
            "group": incident::render_or(self.group.as_ref(), e, || e.namespace.clone())?,
            "class": incident::render_or(self.class.as_ref(), e, || e.reason.clone())?,
            "custom_details": serde_json::to_value(e).unwrap_or(Value::Null),
        });
        if let Some(t) = e.last_seen.or(e.first_seen) {
            payload["timestamp"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        let mut body = json!({
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": payload,
            "client": "eventflow",
        });
        if !self.links.is_empty() {
            let links = self
                .links
                .iter()
                .map(|l| {
                    let href = l.href.compiled.render_event(e).map_err(|e| e.to_string())?;
                    let text = incident::render_or(l.text.as_ref(), e, || href.clone())?;
                    Ok(json!({"href": href, "text": text}))
                })
                .collect::<Result<Vec<_>, String>>()?;
            body["links"] = Value::Array(links);
        }
        Ok(body)
    }

    fn settings(&self) -> incident::Settings {
        incident::Settings {
            key: KeySpec(self.key.clone()),
            resolve_after: self.resolve_after.0,
            max_keys: self.max_keys,
            retries: self.retries,
            backoff: self.backoff.clone(),
        }
    }
}

impl StageConfig for PagerDutyConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        let mut b = crate::budget::sending(1, self.batch.max_events, false);
        b.push(crate::budget::Bound::each(
            "open incidents",
            "max_keys",
            self.max_keys as u64,
            256,
        ));
        b
    }

    fn alone(&self) -> bool {
        // Its resolutions are sent by one replica.
        true
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if let Err(i) = self.endpoint() {
            out.push(i);
        }
        if self.routing_key.trim().is_empty() {
            out.push(Invalid::new("routing_key", "cannot be empty"));
        }
        for (ty, s) in &self.severity {
            if !SEVERITIES.contains(&s.as_str()) {
                out.push(Invalid::new(
                    format!("severity.{ty}"),
                    format!("`{s}` is not a PagerDuty severity (critical, error, warning, info)"),
                ));
            }
        }
        incident::validate_common(&mut out, &self.key, self.resolve_after.0, self.max_keys);
        if self.timeout.0.is_zero() {
            out.push(Invalid::new("timeout", "must be above zero"));
        }
        crate::component::at_least_one(&mut out, "batch.max_events", self.batch.max_events as u64);
        out.extend(self.backoff.validate("backoff"));
        out.extend(send::check_http(&BTreeMap::new(), self.ca_file.as_deref()));
        out
    }

    fn preview(&self, events: &[EventData]) -> Option<Vec<Result<Value, String>>> {
        let key = KeySpec(self.key.clone());
        Some(
            events
                .iter()
                .map(|e| {
                    let mut body = self.trigger(&incident::incident_key(&key, e), e)?;
                    body["routing_key"] = json!("***");
                    Ok(json!({"method": "POST", "url": self.url, "body": body}))
                })
                .collect(),
        )
    }

    fn explain(&self, e: &EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        let key = incident::incident_key(&KeySpec(self.key.clone()), e);
        match self.trigger(&key, e) {
            Ok(mut body) => {
                body["routing_key"] = json!("***");
                Explanation::new(
                    Verdict::Delivered,
                    vec![Step::note(format!(
                        "triggers the incident `{key}` (resolved after {} without events)",
                        self.resolve_after
                    ))],
                )
                .with_output(body)
            }
            Err(why) => Explanation::new(
                Verdict::Dropped,
                vec![Step::no(format!("the event cannot be made: {why}"))],
            ),
        }
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let url = self.endpoint().map_err(|e| cx.failed(e))?;
            let client = send::client(&send::ClientOptions {
                timeout: self.timeout.0,
                headers: &BTreeMap::new(),
                ca_file: self.ca_file.as_deref(),
                insecure_skip_verify: self.insecure_skip_verify,
                stage: &cx.id,
                what: "pagerduty",
            })
            .map_err(|e| cx.failed(e))?;
            let pager = PagerDuty {
                cfg: self.clone(),
                client,
                url,
                metrics: send::RequestMetrics::new(&NAMES, &cx.id),
            };
            incident::stage(
                cx,
                pager,
                self.settings(),
                &NAMES,
                self.batch.plain(),
                self.unready_after.0,
            )
            .await
        })
    }
}

/// The Events API client of one stage.
pub struct PagerDuty {
    cfg: PagerDutyConfig,
    client: reqwest::Client,
    url: reqwest::Url,
    metrics: send::RequestMetrics,
}

impl PagerDuty {
    async fn post(&self, body: &Value) -> Attempt {
        incident::post(
            &self.client,
            &self.metrics,
            self.url.clone(),
            body,
            self.cfg.timeout.0,
        )
        .await
    }
}

impl Pager for PagerDuty {
    fn what(&self) -> &'static str {
        "pagerduty"
    }

    fn trigger<'a>(&'a self, key: &'a str, e: &'a EventData) -> BoxFuture<'a, Attempt> {
        Box::pin(async move {
            match self.cfg.trigger(key, e) {
                Ok(body) => self.post(&body).await,
                Err(why) => Attempt::Permanent(format!("cannot make the PagerDuty event: {why}")),
            }
        })
    }

    fn resolve<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Attempt> {
        Box::pin(async move {
            self.post(&json!({
                "routing_key": self.cfg.routing_key,
                "event_action": "resolve",
                "dedup_key": key,
            }))
            .await
        })
    }
}
