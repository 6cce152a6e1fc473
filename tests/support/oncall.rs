//! PagerDuty's Events API v2 and Opsgenie's Alert API v2 for the tests (neither service is
//! reachable from where eventflow is tested): real HTTP servers (axum on 127.0.0.1) that
//! implement the documented request contracts strictly.
//!
//! PagerDuty (`POST /v2/enqueue`): JSON; `routing_key` a non-empty string; `event_action`
//! `trigger`, `acknowledge` or `resolve`; `dedup_key` at most 255 characters (required to
//! resolve); a trigger needs `payload` with `summary` (1..1024 characters), `source` (non-empty)
//! and `severity` (`critical`, `error`, `warning`, `info`), optional `timestamp` (ISO 8601),
//! `component`/`group`/`class` strings, `custom_details` an object, `links` `[{href, text}]`.
//! 202 `{"status":"success","message":"Event processed","dedup_key":...}`; otherwise 400
//! `{"status":"invalid event","message":"Event object is invalid","errors":[...]}`. Incidents
//! by dedup key: a trigger opens one or, while it is open, adds to it; a resolve closes it.
//!
//! Opsgenie (`POST /v2/alerts`, `POST /v2/alerts/{alias}/close?identifierType=alias`):
//! `Authorization: GenieKey <key>` (401 otherwise); a create needs `message` (1..130
//! characters), `alias` at most 512, `description` at most 15,000, `tags` at most 20 of at most
//! 50, `details` string values, `priority` P1..P5, `responders` each with a known `type` and one
//! of `id`/`name`/`username`, `entity` at most 512, `source` at most 100. 202
//! `{"result":"Request will be processed","took":0.01,"requestId":...}`, 422 for an invalid
//! body. Open alerts by alias: a create while one is open counts a repeat.
//!
//! Both: the next N requests can be answered 429.
#![allow(dead_code)]
// The checks read as the documentation states the rules ("must be a non-empty string").
#![allow(clippy::nonminimal_bool, clippy::if_not_else)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An incident or alert as the service holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub open: bool,
    /// Triggers (creates) it took while open, the first included.
    pub triggers: usize,
    /// How many times it was opened.
    pub opened: usize,
    pub last: Value,
}

#[derive(Default)]
struct Inner {
    api_key: String,
    incidents: Mutex<BTreeMap<String, Incident>>,
    throttle: Mutex<usize>,
    /// every request: (path, status, body)
    requests: Mutex<Vec<(String, u16, Value)>>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn serve(inner: Arc<Inner>, pagerduty: bool) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("address"));
    l.set_nonblocking(true).expect("non-blocking");
    let app = if pagerduty {
        Router::new().fallback(pd).with_state(Service(inner))
    } else {
        Router::new().fallback(og).with_state(Service(inner))
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            let _ = axum::serve(l, app).await;
        });
    });
    url
}

impl Service {
    /// A PagerDuty Events API; the URL of its `/v2/enqueue`.
    pub fn pagerduty() -> (Service, String) {
        let inner = Arc::new(Inner::default());
        let url = serve(inner.clone(), true);
        (Service(inner), format!("{url}/v2/enqueue"))
    }

    /// An Opsgenie Alert API taking `api_key`; its base URL.
    pub fn opsgenie(api_key: &str) -> (Service, String) {
        let inner = Arc::new(Inner {
            api_key: api_key.to_string(),
            ..Inner::default()
        });
        let url = serve(inner.clone(), false);
        (Service(inner), url)
    }

    /// The next `n` requests get 429.
    pub fn throttle(&self, n: usize) {
        *lock(&self.0.throttle) = n;
    }

    pub fn incidents(&self) -> BTreeMap<String, Incident> {
        lock(&self.0.incidents).clone()
    }

    pub fn requests(&self) -> Vec<(String, u16, Value)> {
        lock(&self.0.requests).clone()
    }
}

fn throttled(s: &Service) -> bool {
    let mut t = lock(&s.0.throttle);
    if *t > 0 {
        *t -= 1;
        return true;
    }
    false
}

fn chars(v: &Value) -> Option<usize> {
    v.as_str().map(|s| s.chars().count())
}

/// What is wrong with a PagerDuty event, per the Events API v2 documentation.
fn pd_errors(b: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if !b["routing_key"].as_str().is_some_and(|k| !k.is_empty()) {
        e.push("'routing_key' is missing or blank".into());
    }
    let action = b["event_action"].as_str().unwrap_or_default();
    if !matches!(action, "trigger" | "acknowledge" | "resolve") {
        e.push("'event_action' is invalid".into());
    }
    if let Some(n) = chars(&b["dedup_key"])
        && n > 255
    {
        e.push("'dedup_key' is too long".into());
    }
    if action != "trigger" && b["dedup_key"].as_str().is_none_or(str::is_empty) {
        e.push("'dedup_key' is required to acknowledge or resolve".into());
    }
    if action == "trigger" {
        let p = &b["payload"];
        if !chars(&p["summary"]).is_some_and(|n| (1..=1024).contains(&n)) {
            e.push("'payload.summary' is missing or longer than 1024".into());
        }
        if !p["source"].as_str().is_some_and(|s| !s.is_empty()) {
            e.push("'payload.source' is missing or blank".into());
        }
        if !matches!(
            p["severity"].as_str(),
            Some("critical" | "error" | "warning" | "info")
        ) {
            e.push("'payload.severity' is invalid".into());
        }
        if let Some(t) = p.get("timestamp")
            && !t
                .as_str()
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
        {
            e.push("'payload.timestamp' is not ISO 8601".into());
        }
        for f in ["component", "group", "class"] {
            if p.get(f).is_some_and(|v| !v.is_string()) {
                e.push(format!("'payload.{f}' must be a string"));
            }
        }
        if p.get("custom_details").is_some_and(|v| !v.is_object()) {
            e.push("'payload.custom_details' must be an object".into());
        }
        if let Some(links) = b.get("links") {
            let ok = links.as_array().is_some_and(|l| {
                l.iter()
                    .all(|x| x["href"].is_string() && x.get("text").is_none_or(Value::is_string))
            });
            if !ok {
                e.push("'links' is invalid".into());
            }
        }
    }
    e
}

async fn pd(State(s): State<Service>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, resp) = if path != "/v2/enqueue" {
        (StatusCode::NOT_FOUND, json!({"message": "not found"}))
    } else if throttled(&s) {
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"status": "throttle exceeded", "message": "Requests for this service are arriving too quickly.  Please retry later."}),
        )
    } else {
        let errors = pd_errors(&b);
        if errors.is_empty() {
            let key = b["dedup_key"].as_str().unwrap_or_default().to_string();
            let mut inc = lock(&s.0.incidents);
            match b["event_action"].as_str() {
                Some("trigger") => {
                    let i = inc.entry(key.clone()).or_insert(Incident {
                        open: false,
                        triggers: 0,
                        opened: 0,
                        last: Value::Null,
                    });
                    if !i.open {
                        i.open = true;
                        i.opened += 1;
                        i.triggers = 0;
                    }
                    i.triggers += 1;
                    i.last = b.clone();
                }
                Some("resolve") => {
                    if let Some(i) = inc.get_mut(&key) {
                        i.open = false;
                    }
                }
                _ => {}
            }
            (
                StatusCode::ACCEPTED,
                json!({"status": "success", "message": "Event processed", "dedup_key": key}),
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
            )
        }
    };
    lock(&s.0.requests).push((path, status.as_u16(), b));
    (status, axum::Json(resp)).into_response()
}

/// What is wrong with an Opsgenie create request, per the Alert API documentation.
fn og_errors(b: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if !chars(&b["message"]).is_some_and(|n| (1..=130).contains(&n)) {
        e.push("message should be 1..130 characters".into());
    }
    for (f, max) in [
        ("alias", 512),
        ("description", 15_000),
        ("entity", 512),
        ("source", 100),
    ] {
        if let Some(v) = b.get(f)
            && !chars(v).is_some_and(|n| n <= max)
        {
            e.push(format!(
                "{f} should be a string of at most {max} characters"
            ));
        }
    }
    if let Some(t) = b.get("tags") {
        let ok = t
            .as_array()
            .is_some_and(|t| t.len() <= 20 && t.iter().all(|x| chars(x).is_some_and(|n| n <= 50)));
        if !ok {
            e.push("tags should be at most 20 strings of at most 50 characters".into());
        }
    }
    if let Some(d) = b.get("details")
        && !d
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string))
    {
        e.push("details should map to strings".into());
    }
    if let Some(p) = b.get("priority")
        && !matches!(p.as_str(), Some("P1" | "P2" | "P3" | "P4" | "P5"))
    {
        e.push("priority should be one of P1..P5".into());
    }
    if let Some(r) = b.get("responders") {
        let ok = r.as_array().is_some_and(|r| {
            r.iter().all(|x| {
                matches!(
                    x["type"].as_str(),
                    Some("team" | "user" | "escalation" | "schedule")
                ) && ["id", "name", "username"].iter().any(|k| x[k].is_string())
            })
        });
        if !ok {
            e.push("responders are invalid".into());
        }
    }
    e
}

async fn og(State(s): State<Service>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let accepted =
        || json!({"result": "Request will be processed", "took": 0.01, "requestId": uuid_like()});
    let (status, resp) = if auth != format!("GenieKey {}", s.0.api_key) {
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": "Key format is not valid!", "took": 0.0}),
        )
    } else if throttled(&s) {
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "Request throttled", "took": 0.0}),
        )
    } else if path == "/v2/alerts" {
        let errors = og_errors(&b);
        if errors.is_empty() {
            let alias = b["alias"].as_str().map_or_else(
                || b["message"].as_str().unwrap_or_default().to_string(),
                str::to_string,
            );
            let mut inc = lock(&s.0.incidents);
            let i = inc.entry(alias).or_insert(Incident {
                open: false,
                triggers: 0,
                opened: 0,
                last: Value::Null,
            });
            if !i.open {
                i.open = true;
                i.opened += 1;
                i.triggers = 0;
            }
            i.triggers += 1;
            i.last = b.clone();
            (StatusCode::ACCEPTED, accepted())
        } else {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": errors.join("; "), "took": 0.0}),
            )
        }
    } else if let Some(alias) = path
        .strip_prefix("/v2/alerts/")
        .and_then(|p| p.strip_suffix("/close"))
    {
        if query != "identifierType=alias" {
            (
                StatusCode::BAD_REQUEST,
                json!({"message": "identifierType should be alias here"}),
            )
        } else {
            let alias = percent_decode(alias);
            if let Some(i) = lock(&s.0.incidents).get_mut(&alias) {
                i.open = false;
            }
            (StatusCode::ACCEPTED, accepted())
        }
    } else {
        (StatusCode::NOT_FOUND, json!({"message": "not found"}))
    };
    lock(&s.0.requests).push((path, status.as_u16(), b));
    (status, axum::Json(resp)).into_response()
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
