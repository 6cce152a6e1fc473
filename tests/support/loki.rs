//! A Loki push endpoint for the tests (no Loki server exists in the package registries we can
//! reach): a real HTTP server (axum on 127.0.0.1) that implements the documented contract of
//! `POST /loki/api/v1/push` (JSON) strictly, as Loki with `unordered_writes: false` does:
//! - the body is gzip-decompressed when `Content-Encoding: gzip`, and must be
//!   `{"streams": [{"stream": {label: value}, "values": [["<unix ns>", "<line>"], ...]}]}`;
//!   anything else is a 400;
//! - a stream needs at least one label, with valid names;
//! - per stream, an entry older than the newest one stored is refused ("entry out of order"),
//!   as is one older than `max_age` ("timestamp too old") or a line longer than
//!   `max_line_bytes` ("Max entry size ... exceeded"); the valid entries of the request are
//!   stored, and the answer is a 400 naming the refused ones and `total ignored: N out of M`;
//! - with a tenant configured, `X-Scope-OrgID` must carry it (401 otherwise), likewise basic
//!   or bearer authentication;
//! - injected answers: 429 with `Retry-After` (the ingestion rate limit), 5xx.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// An entry Loki stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub labels: BTreeMap<String, String>,
    pub ts: i64,
    pub line: String,
}

/// A request as it arrived.
#[derive(Clone, Debug)]
pub struct Push {
    pub at: std::time::Instant,
    pub status: u16,
    pub gzip: bool,
    pub tenant: Option<String>,
    pub authorization: Option<String>,
    pub entries: usize,
    pub answer: String,
}

#[derive(Default)]
struct Inner {
    stored: Mutex<Vec<Entry>>,
    newest: Mutex<HashMap<Labels, i64>>,
    pushes: Mutex<Vec<Push>>,
    injected: Mutex<VecDeque<(u16, Option<&'static str>)>>,
    tenant: Option<String>,
    authorization: Option<String>,
    max_line_bytes: usize,
    max_age_ns: i64,
}

/// A running fake Loki; clones share it.
#[derive(Clone)]
pub struct Loki(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the fake requires of its clients.
#[derive(Default)]
pub struct Options {
    pub tenant: Option<String>,
    /// The whole `Authorization` header it expects.
    pub authorization: Option<String>,
    /// 0: 256 KiB (Loki's default `max_line_size`).
    pub max_line_bytes: usize,
}

impl Loki {
    /// A fake Loki on a free port, and its base URL (`http://127.0.0.1:PORT`).
    pub fn start(o: Options) -> (Loki, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake Loki");
        let url = format!("http://{}", l.local_addr().expect("address"));
        let loki = Loki(Arc::new(Inner {
            tenant: o.tenant,
            authorization: o.authorization,
            max_line_bytes: if o.max_line_bytes == 0 {
                256 * 1024
            } else {
                o.max_line_bytes
            },
            // Loki's default reject_old_samples_max_age: one week.
            max_age_ns: 7 * 24 * 3600 * 1_000_000_000,
            ..Inner::default()
        }));
        l.set_nonblocking(true).expect("non-blocking listener");
        let app = Router::new().fallback(push).with_state(loki.clone());
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
        (loki, url)
    }

    /// The next `n` pushes get `status` (with `Retry-After` if given), stored nothing.
    pub fn answer_next(&self, n: usize, status: u16, retry_after: Option<&'static str>) {
        let mut q = lock(&self.0.injected);
        for _ in 0..n {
            q.push_back((status, retry_after));
        }
    }

    /// Forgets the injected answers not used yet.
    pub fn clear_answers(&self) {
        lock(&self.0.injected).clear();
    }

    pub fn stored(&self) -> Vec<Entry> {
        lock(&self.0.stored).clone()
    }

    pub fn pushes(&self) -> Vec<Push> {
        lock(&self.0.pushes).clone()
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(", "))
}

async fn push(State(loki): State<Loki>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let me = &loki.0;
    let gzip = header(&headers, "content-encoding").as_deref() == Some("gzip");
    let mut record = Push {
        at: std::time::Instant::now(),
        status: 0,
        gzip,
        tenant: header(&headers, "x-scope-orgid"),
        authorization: header(&headers, "authorization"),
        entries: 0,
        answer: String::new(),
    };
    let (status, text, retry_after) = answer(me, &uri, &headers, &body, gzip, &mut record);
    record.status = status.as_u16();
    record.answer.clone_from(&text);
    lock(&me.pushes).push(record);
    let mut resp = (status, text).into_response();
    if let Some(after) = retry_after
        && let Ok(v) = after.parse()
    {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}

type Labels = BTreeMap<String, String>;
/// A stream of a push: its labels and its entries (unix ns, line).
type StreamIn = (Labels, Vec<(i64, String)>);

/// A push body, checked whole before anything is stored: each stream's labels and entries.
fn parse(json: &[u8]) -> Result<Vec<StreamIn>, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("loghttp.PushRequest: {e}"))?;
    let Some(streams) = v.get("streams").and_then(Value::as_array) else {
        return Err("loghttp.PushRequest: `streams` is not an array".into());
    };
    let mut parsed = Vec::new();
    for s in streams {
        let Some(labels) = s.get("stream").and_then(Value::as_object) else {
            return Err("a stream without `stream` labels".into());
        };
        if labels.is_empty() {
            return Err("error at least one label pair is required per stream".into());
        }
        let mut l = BTreeMap::new();
        for (k, v) in labels {
            let Some(v) = v.as_str() else {
                return Err(format!("label `{k}` is not a string"));
            };
            if !valid_label_name(k) {
                return Err(format!("invalid label name `{k}`"));
            }
            l.insert(k.clone(), v.to_string());
        }
        let Some(values) = s.get("values").and_then(Value::as_array) else {
            return Err("a stream without `values`".into());
        };
        let mut entries = Vec::new();
        for e in values {
            let Some(pair) = e.as_array().filter(|a| a.len() == 2 || a.len() == 3) else {
                return Err("an entry is not [timestamp, line]".into());
            };
            let (Some(ts), Some(line)) = (pair[0].as_str(), pair[1].as_str()) else {
                return Err("an entry's timestamp and line must be strings".into());
            };
            let Ok(ts) = ts.parse::<i64>() else {
                return Err(format!("timestamp `{ts}` is not unix nanoseconds"));
            };
            entries.push((ts, line.to_string()));
        }
        parsed.push((l, entries));
    }
    Ok(parsed)
}

fn answer(
    me: &Inner,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    gzip: bool,
    record: &mut Push,
) -> (StatusCode, String, Option<&'static str>) {
    let bad = |s: String| (StatusCode::BAD_REQUEST, s, None);
    if uri.path() != "/loki/api/v1/push" {
        return (StatusCode::NOT_FOUND, "404 page not found".into(), None);
    }
    if let Some(t) = &me.tenant
        && record.tenant.as_ref() != Some(t)
    {
        return (StatusCode::UNAUTHORIZED, "no org id".into(), None);
    }
    if let Some(a) = &me.authorization
        && record.authorization.as_ref() != Some(a)
    {
        return (StatusCode::UNAUTHORIZED, "unauthorized".into(), None);
    }
    if let Some((status, after)) = lock(&me.injected).pop_front() {
        let text = if status == 429 {
            "Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec)"
        } else {
            "injected failure"
        };
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text.into(),
            after,
        );
    }
    if !header(headers, "content-type").is_some_and(|c| c.starts_with("application/json")) {
        return bad("unsupported Content-Type (this fake reads JSON only)".into());
    }
    let mut json = Vec::new();
    if gzip {
        if let Err(e) = flate2::read::GzDecoder::new(body).read_to_end(&mut json) {
            return bad(format!("gzip: {e}"));
        }
    } else {
        json = body.to_vec();
    }
    let parsed = match parse(&json) {
        Ok(p) => p,
        Err(why) => return bad(why),
    };
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let mut refused = Vec::new();
    let mut total = 0usize;
    let mut stored = lock(&me.stored);
    let mut newest = lock(&me.newest);
    for (labels, entries) in parsed {
        for (ts, line) in entries {
            total += 1;
            let stream = labels_text(&labels);
            if line.len() > me.max_line_bytes {
                refused.push(format!(
                    "Max entry size '{}' bytes exceeded for stream '{stream}' while adding an entry with length '{}' bytes",
                    me.max_line_bytes,
                    line.len()
                ));
                continue;
            }
            if ts < now - me.max_age_ns {
                refused.push(format!(
                    "entry for stream '{stream}' has timestamp too old: {ts}, oldest acceptable timestamp is: {}",
                    now - me.max_age_ns
                ));
                continue;
            }
            let last = newest.get(&labels).copied();
            if last.is_some_and(|last| ts < last) {
                refused.push(format!(
                    "entry with timestamp {ts} ignored, reason: 'entry out of order' for stream: {stream}"
                ));
                continue;
            }
            newest.insert(labels.clone(), ts);
            stored.push(Entry {
                labels: labels.clone(),
                ts,
                line,
            });
        }
    }
    record.entries = total;
    if refused.is_empty() {
        return (StatusCode::NO_CONTENT, String::new(), None);
    }
    bad(format!(
        "{},\ntotal ignored: {} out of {total}",
        refused.join(",\n"),
        refused.len()
    ))
}
