//! `opsgenie`: creates and closes Opsgenie alerts through the Alert API v2.
//!
//! Each problem (by `key`) is one `alias`: Opsgenie keeps one open alert per alias and counts
//! repeated creates on it; a key with no event for `resolve_after` is closed by alias
//! ([`super::incident`]). The Alert API is asynchronous: it answers `202` with a `requestId`
//! once it has queued the request (what eventflow counts as delivered); whether the alert was
//! then created can be read with `GET /v2/alerts/requests/{requestId}`, which eventflow does not
//! do. 429 and 5xx are retried with backoff, other 4xx answers are permanent.

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

/// Who is notified: a team, user, escalation or schedule, by `name`, `id` or `username`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Responder {
    /// `team`, `user`, `escalation` or `schedule`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Its name (teams, escalations, schedules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A user's user name (e-mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Creates and closes Opsgenie alerts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsgenieConfig {
    /// The API integration's key (sent as `Authorization: GenieKey ...`; never logged;
    /// `${ENV}` works).
    pub api_key: String,
    /// The API's base URL (`https://api.eu.opsgenie.com` for the EU instance).
    #[serde(default = "default_url")]
    pub url: String,
    /// The event fields whose values make a problem's `alias` (joined with `/`): repeats of one
    /// problem are one alert, its count going up.
    #[serde(default = "incident::default_key")]
    pub key: Vec<Field>,
    /// The alert's message (a template; at most 130 characters, cut beyond). Default:
    /// `[Warning] BackOff shop/web-1`.
    #[serde(default)]
    pub message: Option<TextTemplateField>,
    /// The alert's description (a template; at most 15,000 characters). Default: the event's
    /// message, object, count, cluster and times.
    #[serde(default)]
    pub description: Option<TextTemplateField>,
    /// Priority by event type (`P1` .. `P5`); `*` for any other type. Default: Warning -> P3,
    /// anything else -> P5.
    #[serde(default = "default_priority")]
    pub priority: BTreeMap<String, String>,
    /// Tags on the alert (at most 20, each at most 50 characters).
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
    /// Who is notified (default: the integration's team).
    #[serde(default)]
    pub responders: Vec<Responder>,
    /// `entity` (a template; default: `Kind/name` of the involved object).
    #[serde(default)]
    pub entity: Option<TextTemplateField>,
    /// `source` (default: `eventflow`).
    #[serde(default = "default_source")]
    pub source: String,
    /// Close an alert whose key has had no event for this long.
    #[serde(default = "super::pagerduty::default_resolve_after")]
    pub resolve_after: Dur,
    /// The most open alerts tracked (for closing); past it the oldest is forgotten (and
    /// counted).
    #[serde(default = "super::pagerduty::default_max_keys")]
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
    "https://api.opsgenie.com".into()
}
fn default_priority() -> BTreeMap<String, String> {
    [("Warning", "P3"), ("*", "P5")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
fn default_tags() -> Vec<String> {
    vec!["kubernetes".into(), "eventflow".into()]
}
fn default_source() -> String {
    "eventflow".into()
}
fn default_timeout() -> Dur {
    Dur::secs(10)
}
fn default_retries() -> u32 {
    5
}

pub const REQUESTS: &str = "eventflow_opsgenie_requests_total";
pub const SECONDS: &str = "eventflow_opsgenie_request_seconds";
pub const RETRIES: &str = "eventflow_opsgenie_retries_total";

const NAMES: send::MetricNames = send::MetricNames {
    requests: REQUESTS,
    seconds: SECONDS,
    retries: RETRIES,
};

fn describe() {
    send::describe_requests(
        &NAMES,
        "Opsgenie Alert API requests (creates and closes) by outcome.",
        "Opsgenie request latency.",
        "Opsgenie requests retried.",
    );
    incident::describe();
}

pub const TYPE: StageType = StageType {
    name: "opsgenie",
    kind: StageKind::Sink,
    summary: "creates Opsgenie alerts (Alert API v2), one per problem key by alias, and closes them after resolve_after without events",
    parse: crate::component::parse_config::<OpsgenieConfig>,
    schema: crate::component::schema_of::<OpsgenieConfig>,
    describe,
};

const PRIORITIES: [&str; 5] = ["P1", "P2", "P3", "P4", "P5"];
const RESPONDER_TYPES: [&str; 4] = ["team", "user", "escalation", "schedule"];

impl OpsgenieConfig {
    fn base(&self) -> Result<reqwest::Url, Invalid> {
        send::http_url("url", &self.url, None)
    }

    /// The create request of `e` under `alias`.
    pub fn create(&self, alias: &str, e: &EventData) -> Result<Value, String> {
        let message = incident::render_or(self.message.as_ref(), e, || {
            let object = if e.namespace.is_empty() {
                e.object_name.clone()
            } else {
                format!("{}/{}", e.namespace, e.object_name)
            };
            format!("[{}] {} {object}", e.type_, e.reason)
        })?;
        let description = incident::render_or(self.description.as_ref(), e, || {
            format!(
                "{}\n\nobject: {} {}/{}\ncount: {}\ncluster: {}\nfirst seen: {}\nlast seen: {}",
                e.message,
                e.kind,
                e.namespace,
                e.object_name,
                e.count,
                e.cluster,
                e.get(&Field::FirstSeen),
                e.get(&Field::LastSeen)
            )
        })?;
        let priority = self
            .priority
            .get(&e.type_)
            .or(self.priority.get("*"))
            .cloned()
            .unwrap_or_else(|| "P5".into());
        // Details are strings: the event's main fields.
        let details: BTreeMap<String, String> = [
            Field::Cluster,
            Field::Namespace,
            Field::Kind,
            Field::ObjectName,
            Field::Reason,
            Field::Type,
            Field::Count,
            Field::Source,
            Field::Uid,
            Field::LastSeen,
        ]
        .iter()
        .map(|f| (f.name().into_owned(), incident::cut_chars(&e.get(f), 8000)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
        let mut body = json!({
            "message": incident::cut_chars(&message, 130),
            "alias": alias,
            "description": incident::cut_chars(&description, 15_000),
            "tags": self.tags,
            "details": details,
            "entity": incident::cut_chars(&incident::render_or(self.entity.as_ref(), e, || format!("{}/{}", e.kind, e.object_name))?, 512),
            "source": incident::cut_chars(&self.source, 100),
            "priority": priority,
        });
        if !self.responders.is_empty() {
            body["responders"] = serde_json::to_value(&self.responders).unwrap_or(Value::Null);
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

impl StageConfig for OpsgenieConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        let mut b = crate::budget::sending(1, self.batch.max_events, false);
        b.push(crate::budget::Bound::each(
            "open alerts",
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
        if let Err(i) = self.base() {
            out.push(i);
        }
        if self.api_key.trim().is_empty() {
            out.push(Invalid::new("api_key", "cannot be empty"));
        }
        for (ty, p) in &self.priority {
            if !PRIORITIES.contains(&p.as_str()) {
                out.push(Invalid::new(
                    format!("priority.{ty}"),
                    format!("`{p}` is not an Opsgenie priority (P1 .. P5)"),
                ));
            }
        }
        if self.tags.len() > 20 {
            out.push(Invalid::new("tags", "Opsgenie takes at most 20 tags"));
        }
        for (i, t) in self.tags.iter().enumerate() {
            if t.chars().count() > 50 {
                out.push(Invalid::new(format!("tags[{i}]"), "at most 50 characters"));
            }
        }
        for (i, r) in self.responders.iter().enumerate() {
            if !RESPONDER_TYPES.contains(&r.type_.as_str()) {
                out.push(Invalid::new(
                    format!("responders[{i}].type"),
                    format!(
                        "`{}` is not one of team, user, escalation, schedule",
                        r.type_
                    ),
                ));
            }
            if r.name.is_none() && r.id.is_none() && r.username.is_none() {
                out.push(Invalid::new(
                    format!("responders[{i}]"),
                    "needs a `name`, an `id` or a `username`",
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
                    let body = self.create(&incident::incident_key(&key, e), e)?;
                    Ok(json!({"method": "POST", "url": format!("{}/v2/alerts", self.url.trim_end_matches('/')), "body": body}))
                })
                .collect(),
        )
    }

    fn explain(&self, e: &EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        let alias = incident::incident_key(&KeySpec(self.key.clone()), e);
        match self.create(&alias, e) {
            Ok(body) => Explanation::new(
                Verdict::Delivered,
                vec![Step::note(format!(
                    "creates (or counts a repeat of) the alert `{alias}`, closed after {} without events",
                    self.resolve_after
                ))],
            )
            .with_output(body),
            Err(why) => Explanation::new(
                Verdict::Dropped,
                vec![Step::no(format!("the alert cannot be made: {why}"))],
            ),
        }
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let base = self.base().map_err(|e| cx.failed(e))?;
            let headers: BTreeMap<String, String> = [(
                "Authorization".to_string(),
                format!("GenieKey {}", self.api_key),
            )]
            .into();
            let client = send::client(&send::ClientOptions {
                timeout: self.timeout.0,
                headers: &headers,
                ca_file: self.ca_file.as_deref(),
                insecure_skip_verify: self.insecure_skip_verify,
                stage: &cx.id,
                what: "opsgenie",
            })
            .map_err(|e| cx.failed(e))?;
            let pager = Opsgenie {
                cfg: self.clone(),
                client,
                base,
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

/// The Alert API client of one stage.
pub struct Opsgenie {
    cfg: OpsgenieConfig,
    client: reqwest::Client,
    base: reqwest::Url,
    metrics: send::RequestMetrics,
}

impl Opsgenie {
    fn url(&self, path: &str) -> reqwest::Url {
        let mut u = self.base.clone();
        let p = format!("{}{path}", u.path().trim_end_matches('/'));
        u.set_path(&p);
        u
    }
}

impl Pager for Opsgenie {
    fn what(&self) -> &'static str {
        "opsgenie"
    }

    fn trigger<'a>(&'a self, key: &'a str, e: &'a EventData) -> BoxFuture<'a, Attempt> {
        Box::pin(async move {
            match self.cfg.create(key, e) {
                Ok(body) => {
                    incident::post(
                        &self.client,
                        &self.metrics,
                        self.url("/v2/alerts"),
                        &body,
                        self.cfg.timeout.0,
                    )
                    .await
                }
                Err(why) => Attempt::Permanent(format!("cannot make the Opsgenie alert: {why}")),
            }
        })
    }

    fn resolve<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Attempt> {
        Box::pin(async move {
            let mut url = self.url("/v2/alerts/");
            // The alias as one path segment, percent-encoded.
            if let Ok(mut segs) = url.path_segments_mut() {
                segs.pop_if_empty().push(key).push("close");
            }
            url.query_pairs_mut().append_pair("identifierType", "alias");
            let body = json!({"source": self.cfg.source, "note": "closed by eventflow: no event for resolve_after"});
            incident::post(&self.client, &self.metrics, url, &body, self.cfg.timeout.0).await
        })
    }
}
