//! A bulk endpoint for the tests (no Elasticsearch or OpenSearch server exists in the package
//! registries we can reach): a real HTTP server (axum on 127.0.0.1) that implements the
//! documented contract of `POST /_bulk` strictly, as Elasticsearch 8 does:
//! - `Content-Type: application/x-ndjson` (or `application/json`), the body gzip-decompressed
//!   with `Content-Encoding: gzip`, and it must end with a newline;
//! - pairs of an action/metadata line (`index`, `create`; `_index`, `_id`; an unknown
//!   parameter such as `_type` makes the whole request a 400, as in ES 8) and a JSON object;
//! - per-item results in order with `status`, `error.type` / `error.reason`, and `errors`
//!   true when any item failed;
//! - `create` of an id the index holds: 409 `version_conflict_engine_exception`; `index` into a
//!   data stream: 400 (only `create` is allowed there);
//! - a request over `max_bytes` (decompressed): 413 for the whole request;
//! - injected item answers: the next N actions on an id get 429, a document whose `message`
//!   holds `MAPPING-CONFLICT` gets 400 `mapper_parsing_exception`;
//! - with `api_key` set, `Authorization: ApiKey <key>` is required (401 otherwise);
//! - `PUT /_index_template/<name>` stores a template.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Options {
    pub api_key: Option<String>,
    /// Names that are data streams (only `create` is allowed).
    pub data_streams: Vec<String>,
    /// 0: 100 MB (Elasticsearch's default `http.max_content_length`).
    pub max_bytes: usize,
}

/// One index: id -> (document, version).
pub type Index = BTreeMap<String, (Value, u64)>;

#[derive(Default)]
struct Inner {
    opts: Options,
    /// index -> id -> (document, version)
    docs: Mutex<BTreeMap<String, Index>>,
    /// id -> how many more actions on it get 429
    throttled: Mutex<HashMap<String, usize>>,
    /// every request: (method, path, actions in it, status)
    requests: Mutex<Vec<(String, String, usize, u16)>>,
    templates: Mutex<BTreeMap<String, Value>>,
}

#[derive(Clone)]
pub struct Elasticsearch(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Elasticsearch {
    pub fn start(opts: Options) -> (Elasticsearch, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake Elasticsearch");
        let url = format!("http://{}", l.local_addr().expect("address"));
        let es = Elasticsearch(Arc::new(Inner {
            opts,
            ..Inner::default()
        }));
        l.set_nonblocking(true).expect("non-blocking listener");
        let app = Router::new().fallback(handle).with_state(es.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                let _ = axum::serve(l, app).await;
            });
        });
        (es, url)
    }

    /// The next `n` actions on document `id` are answered 429.
    pub fn throttle(&self, id: &str, n: usize) {
        lock(&self.0.throttled).insert(id.to_string(), n);
    }

    /// The documents of `index`: id -> (document, version).
    pub fn docs(&self, index: &str) -> Index {
        lock(&self.0.docs).get(index).cloned().unwrap_or_default()
    }

    pub fn indices(&self) -> Vec<String> {
        lock(&self.0.docs).keys().cloned().collect()
    }

    /// Every request: (method, path, actions, status).
    pub fn requests(&self) -> Vec<(String, String, usize, u16)> {
        lock(&self.0.requests).clone()
    }

    pub fn template(&self, name: &str) -> Option<Value> {
        lock(&self.0.templates).get(name).cloned()
    }
}

fn error(status: StatusCode, ty: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": ty, "reason": reason}, "status": status.as_u16()})),
    )
        .into_response()
}

async fn handle(
    State(es): State<Elasticsearch>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let (status, actions, resp) = answer(&es, &method, &path, &headers, &body);
    lock(&es.0.requests).push((method.to_string(), path, actions, status.as_u16()));
    let _ = resp.status();
    resp
}

fn answer(
    es: &Elasticsearch,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> (StatusCode, usize, Response) {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if let Some(key) = &es.0.opts.api_key
        && h("authorization") != format!("ApiKey {key}")
    {
        let s = StatusCode::UNAUTHORIZED;
        return (
            s,
            0,
            error(
                s,
                "security_exception",
                "missing authentication credentials",
            ),
        );
    }
    let mut text = Vec::new();
    if h("content-encoding") == "gzip" {
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut text)
            .is_err()
        {
            let s = StatusCode::BAD_REQUEST;
            return (s, 0, error(s, "parse_exception", "bad gzip"));
        }
    } else {
        text = body.to_vec();
    }
    if let Some(name) = path.strip_prefix("/_index_template/") {
        return put_template(es, method, name, &text);
    }
    if *method != Method::POST || !path.ends_with("/_bulk") {
        let s = StatusCode::NOT_FOUND;
        return (s, 0, error(s, "no_handler", path));
    }
    let ct = h("content-type");
    if !(ct.starts_with("application/x-ndjson") || ct.starts_with("application/json")) {
        let s = StatusCode::NOT_ACCEPTABLE;
        return (
            s,
            0,
            error(
                s,
                "media_type",
                &format!("Content-Type header [{ct}] is not supported"),
            ),
        );
    }
    let max = if es.0.opts.max_bytes == 0 {
        100 << 20
    } else {
        es.0.opts.max_bytes
    };
    if text.len() > max {
        let s = StatusCode::PAYLOAD_TOO_LARGE;
        return (s, 0, error(s, "content_too_long", "request too large"));
    }
    let Ok(text) = String::from_utf8(text) else {
        let s = StatusCode::BAD_REQUEST;
        return (s, 0, error(s, "parse_exception", "not UTF-8"));
    };
    if !text.ends_with('\n') {
        let s = StatusCode::BAD_REQUEST;
        return (
            s,
            0,
            error(
                s,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            ),
        );
    }
    let pairs = match parse_bulk(&text) {
        Ok(p) => p,
        Err((s, ty, why)) => return (s, 0, error(s, ty, &why)),
    };
    apply(es, pairs)
}

/// An action of a bulk body: its name, its parameters, its document.
type Action = (String, Value, Value);

/// Every action of a bulk body, or why the whole request is refused.
fn parse_bulk(text: &str) -> Result<Vec<Action>, (StatusCode, &'static str, String)> {
    let bad = |ty: &'static str, why: String| Err((StatusCode::BAD_REQUEST, ty, why));
    let lines: Vec<&str> = text.lines().collect();
    if !lines.len().is_multiple_of(2) {
        return bad(
            "action_request_validation_exception",
            "a document line is missing".into(),
        );
    }
    let mut pairs = Vec::new();
    for (n, pair) in lines.chunks(2).enumerate() {
        let line = n * 2 + 1;
        let Ok(Value::Object(meta)) = serde_json::from_str::<Value>(pair[0]) else {
            return bad(
                "illegal_argument_exception",
                format!("Malformed action/metadata line [{line}]"),
            );
        };
        let Some((action, params)) = meta.iter().next() else {
            return bad("illegal_argument_exception", "empty action".into());
        };
        if !matches!(action.as_str(), "index" | "create") {
            return bad(
                "illegal_argument_exception",
                format!(
                    "Malformed action/metadata line [{line}], expected one of [create, delete, index, update] but found [{action}]"
                ),
            );
        }
        for k in params
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if !matches!(
                k.as_str(),
                "_index" | "_id" | "pipeline" | "routing" | "require_alias"
            ) {
                return bad(
                    "illegal_argument_exception",
                    format!("Action/metadata line [{line}] contains an unknown parameter [{k}]"),
                );
            }
        }
        let Ok(doc @ Value::Object(_)) = serde_json::from_str::<Value>(pair[1]) else {
            return bad(
                "mapper_parsing_exception",
                "failed to parse: the document is not a JSON object".into(),
            );
        };
        pairs.push((action.clone(), params.clone(), doc));
    }
    Ok(pairs)
}

fn put_template(
    es: &Elasticsearch,
    method: &Method,
    name: &str,
    text: &[u8],
) -> (StatusCode, usize, Response) {
    if *method != Method::PUT {
        let s = StatusCode::METHOD_NOT_ALLOWED;
        return (s, 0, error(s, "method", "PUT only"));
    }
    let Ok(t) = serde_json::from_slice::<Value>(text) else {
        let s = StatusCode::BAD_REQUEST;
        return (s, 0, error(s, "parse_exception", "template is not JSON"));
    };
    if t.get("index_patterns").is_none() {
        let s = StatusCode::BAD_REQUEST;
        return (
            s,
            0,
            error(
                s,
                "action_request_validation_exception",
                "index patterns are missing",
            ),
        );
    }
    lock(&es.0.templates).insert(name.to_string(), t);
    (
        StatusCode::OK,
        0,
        axum::Json(json!({"acknowledged": true})).into_response(),
    )
}

/// Applies the actions: per-item results, as Elasticsearch answers them.
fn apply(es: &Elasticsearch, pairs: Vec<Action>) -> (StatusCode, usize, Response) {
    let mut items = Vec::new();
    let mut errors = false;
    for (action, params, doc) in pairs {
        let index = params["_index"].as_str().unwrap_or_default().to_string();
        let id = params["_id"].as_str().unwrap_or_default().to_string();
        let item = |status: u16, err: Option<(&str, String)>| {
            let mut b = json!({"_index": index, "_id": id, "status": status});
            if let Some((ty, reason)) = err {
                b["error"] = json!({"type": ty, "reason": reason});
            }
            json!({ action.clone(): b })
        };
        {
            let mut t = lock(&es.0.throttled);
            if let Some(n) = t.get_mut(&id)
                && *n > 0
            {
                *n -= 1;
                errors = true;
                items.push(item(
                    429,
                    Some((
                        "es_rejected_execution_exception",
                        "rejected execution".into(),
                    )),
                ));
                continue;
            }
        }
        if index.is_empty() {
            errors = true;
            items.push(item(
                400,
                Some((
                    "action_request_validation_exception",
                    "index is missing".into(),
                )),
            ));
            continue;
        }
        if es.0.opts.data_streams.contains(&index) && action != "create" {
            errors = true;
            items.push(item(400, Some(("illegal_argument_exception", format!("only write ops with an op_type of create are allowed in data streams [{index}]")))));
            continue;
        }
        if doc["message"]
            .as_str()
            .is_some_and(|m| m.contains("MAPPING-CONFLICT"))
        {
            errors = true;
            items.push(item(
                400,
                Some((
                    "mapper_parsing_exception",
                    "failed to parse field [message] of type [long]".into(),
                )),
            ));
            continue;
        }
        let mut docs = lock(&es.0.docs);
        let idx = docs.entry(index.clone()).or_default();
        match (action.as_str(), idx.get(&id)) {
            ("create", Some(_)) => {
                errors = true;
                items.push(item(
                    409,
                    Some((
                        "version_conflict_engine_exception",
                        format!("[{id}]: version conflict, document already exists"),
                    )),
                ));
            }
            (_, prev) => {
                let version = prev.map_or(1, |(_, v)| v + 1);
                let status = if prev.is_some() { 200 } else { 201 };
                idx.insert(id.clone(), (doc, version));
                items.push(item(status, None));
            }
        }
    }
    let n = items.len();
    (
        StatusCode::OK,
        n,
        axum::Json(json!({"took": 1, "errors": errors, "items": items})).into_response(),
    )
}
