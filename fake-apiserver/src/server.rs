//! The HTTP side: routing on the path only (kube sends `?&...`), list, watch, writes, faults,
//! and the admin API under `/__fake/`.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::convert::{Flavor, Selector, from_flavor, status, to_flavor};
use crate::{Change, CloseMode, Faults, Op, Recorded, Shared, WatcherInfo, WriteError};

const MAX_RECORDED: usize = 100_000;
const BACKLOG_CHUNK: usize = 64 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if code == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

pub(crate) fn error(code: u16, reason: &str, message: &str) -> Response {
    json_response(code, &status(code, reason, message))
}

fn write_error(e: &WriteError) -> Response {
    error(e.code, e.reason, &e.message)
}

/// The parsed target of an API request.
struct Target {
    flavor: Flavor,
    ns: Option<String>,
    name: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (flavor, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => (Flavor::Core, rest),
        ["apis", "events.k8s.io", "v1", rest @ ..] => (Flavor::Events, rest),
        _ => return None,
    };
    let owned = |s: &&str| Some(s.to_string());
    match rest {
        ["events"] => Some(Target {
            flavor,
            ns: None,
            name: None,
        }),
        ["namespaces", ns, "events"] => Some(Target {
            flavor,
            ns: owned(ns),
            name: None,
        }),
        ["namespaces", ns, "events", name] => Some(Target {
            flavor,
            ns: owned(ns),
            name: owned(name),
        }),
        _ => None,
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn verb_of(
    method: &Method,
    target: &Target,
    params: &BTreeMap<String, String>,
) -> (Op, &'static str) {
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if watch => (Op::Watch, "watch"),
        ("GET", false) => (Op::List, "list"),
        ("GET", true) => (Op::Get, "get"),
        ("POST", _) => (Op::Create, "create"),
        ("PATCH", _) => (Op::Patch, "patch"),
        ("PUT", _) => (Op::Patch, "update"),
        ("DELETE", _) => (Op::Delete, "delete"),
        _ => (Op::Any, "unknown"),
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let params = parse_query(&query);
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return error(400, "BadRequest", &format!("cannot read the body: {e}")),
    };
    if let Some(admin) = path.strip_prefix("/__fake/") {
        return admin_api(&shared, &parts.method, admin, &params, &body);
    }
    match path.as_str() {
        "/version" => {
            return json_response(
                200,
                &json!({"major":"1","minor":"33","gitVersion":"v1.33.0-fake","platform":"linux/amd64"}),
            );
        }
        "/healthz" | "/readyz" | "/livez" => return (StatusCode::OK, "ok").into_response(),
        "/api" => {
            return json_response(
                200,
                &json!({"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}),
            );
        }
        "/apis" => {
            return json_response(
                200,
                &json!({"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"events.k8s.io","versions":[{"groupVersion":"events.k8s.io/v1","version":"v1"}],"preferredVersion":{"groupVersion":"events.k8s.io/v1","version":"v1"}}]}),
            );
        }
        "/api/v1" | "/apis/events.k8s.io/v1" => {
            let gv = if path == "/api/v1" {
                "v1"
            } else {
                "events.k8s.io/v1"
            };
            return json_response(
                200,
                &json!({"kind":"APIResourceList","groupVersion":gv,"resources":[{"name":"events","singularName":"event","namespaced":true,"kind":"Event","verbs":["create","delete","get","list","patch","update","watch"],"shortNames":["ev"]}]}),
            );
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/") {
        if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
            return lease_watch(&shared, rest, &params);
        }
        return leases(&shared, &parts.method, rest, &body, &params).await;
    }
    if let Some(t) = crate::objects::target(&path) {
        return crate::objects::handle(
            &shared,
            &parts.method,
            &path,
            &query,
            &params,
            &parts.headers,
            t,
        );
    }
    let Some(target) = parse_target(&path) else {
        return error(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let (op, verb) = verb_of(&parts.method, &target, &params);
    if let Some(r) = pre(
        &shared,
        &parts.method,
        &path,
        &query,
        &params,
        &parts.headers,
        op,
        verb,
        &target,
    )
    .await
    {
        return r;
    }
    match op {
        Op::List => list(&shared, &target, &params),
        Op::Watch => watch(&shared, &target, &params),
        Op::Get => get(&shared, &target),
        Op::Create | Op::Patch | Op::Delete => write(&shared, &parts.method, &target, &body),
        Op::Any => error(405, "MethodNotAllowed", "method not allowed"),
    }
}

/// `coordination.k8s.io/v1` Leases, as leader election uses them: get, create (409
/// AlreadyExists when it exists), update (409 Conflict unless the body carries the stored
/// resourceVersion), delete.
async fn leases(
    shared: &Arc<Shared>,
    method: &Method,
    rest: &str,
    body: &[u8],
    params: &BTreeMap<String, String>,
) -> Response {
    let parts: Vec<&str> = rest.split('/').collect();
    let (ns, name) = match parts.as_slice() {
        [ns, "leases"] => (*ns, None),
        [ns, "leases", name] => (*ns, Some(*name)),
        _ => {
            return error(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    let parsed = || {
        serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
    };
    let not_found = |n: &str| {
        error(
            404,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{n}\" not found"),
        )
    };
    match (method.as_str(), name) {
        ("GET", Some(n)) => match shared.lock().leases.get(&(ns.to_string(), n.to_string())) {
            Some(l) => json_response(200, l),
            None => not_found(n),
        },
        ("GET", None) => {
            // A list, narrowed by `labelSelector` (equality terms) as the API server does.
            let selector = match params
                .get("labelSelector")
                .map(|s| crate::convert::Selector::labels(s))
            {
                Some(Ok(sel)) => Some(sel),
                Some(Err(e)) => return error(400, "BadRequest", &e),
                None => None,
            };
            let g = shared.lock();
            let items: Vec<Value> = g
                .leases
                .iter()
                .filter(|((lns, _), _)| lns == ns)
                .map(|(_, l)| l.clone())
                .filter(|l| selector.as_ref().is_none_or(|s| s.matches(l)))
                .collect();
            json_response(
                200,
                &json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1", "metadata": {"resourceVersion": g.lease_rv.to_string()}, "items": items}),
            )
        }
        ("POST", None) => lease_create(shared, ns, parsed()),
        ("PUT", Some(n)) => lease_update(shared, ns, n, parsed()).await,
        ("DELETE", Some(n)) => match shared
            .lock()
            .leases
            .remove(&(ns.to_string(), n.to_string()))
        {
            Some(l) => json_response(200, &l),
            None => not_found(n),
        },
        _ => error(405, "MethodNotAllowed", "method not allowed"),
    }
}

/// Watches Leases (`fieldSelector=metadata.name=NAME` narrows it to one): a Lease written
/// after `resourceVersion` is sent at once, then every write as it happens, until
/// `timeoutSeconds`.
fn lease_watch(shared: &Arc<Shared>, rest: &str, params: &BTreeMap<String, String>) -> Response {
    let Some(ns) = rest.strip_suffix("/leases").map(str::to_string) else {
        return error(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let only = params
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let (since, timeout) = watch_window(params);
    let wanted =
        move |lns: &str, name: &str| lns == ns && only.as_deref().is_none_or(|o| o == name);
    let mut rx = shared.lease_tx.subscribe();
    let backlog: Vec<Value> = shared
        .lock()
        .leases
        .iter()
        .filter(|((lns, name), l)| {
            wanted(lns, name)
                && l["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v > since)
        })
        .map(|(_, l)| l.clone())
        .collect();
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let line = |l: &Value| {
        Ok(Bytes::from(format!(
            "{}\n",
            json!({"type": "MODIFIED", "object": l})
        )))
    };
    tokio::spawn(async move {
        for l in &backlog {
            if tx.send(line(l)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                got = rx.recv() => match got {
                    Ok((lns, name, l)) if wanted(&lns, &name) => {
                        if tx.send(line(&l)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    streaming(body_rx)
}

/// A watch's `resourceVersion` (0 when absent) and `timeoutSeconds` (300 when absent).
pub(crate) fn watch_window(params: &BTreeMap<String, String>) -> (u64, u64) {
    let since = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300);
    (since, timeout)
}

/// A watch's `200` answer: the lines sent into `body_rx`, as they come.
pub(crate) fn streaming(body_rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response {
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(ReceiverStream::new(body_rx)))
        .unwrap_or_else(|_| error(500, "InternalError", "cannot build the response"))
}

/// Creates a Lease: 409 AlreadyExists when it exists.
fn lease_create(shared: &Arc<Shared>, ns: &str, body: Option<Value>) -> Response {
    let Some(mut l) = body else {
        return error(400, "BadRequest", "the body must be a Lease");
    };
    let Some(n) = l["metadata"]["name"].as_str().map(str::to_string) else {
        return error(422, "Invalid", "metadata.name: Required value");
    };
    let mut g = shared.lock();
    let key = (ns.to_string(), n.clone());
    if g.leases.contains_key(&key) {
        return error(
            409,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{n}\" already exists"),
        );
    }
    g.lease_rv += 1;
    l["apiVersion"] = json!("coordination.k8s.io/v1");
    l["kind"] = json!("Lease");
    l["metadata"]["namespace"] = json!(ns);
    l["metadata"]["resourceVersion"] = json!(g.lease_rv.to_string());
    l["metadata"]["uid"] = json!(format!("lease-{}", g.lease_rv));
    g.leases.insert(key, l.clone());
    let _ = shared.lease_tx.send((ns.to_string(), n, l.clone()));
    json_response(201, &l)
}

/// Replaces a Lease: 409 Conflict unless the body carries the stored resourceVersion.
async fn lease_update(shared: &Arc<Shared>, ns: &str, n: &str, body: Option<Value>) -> Response {
    let not_found = |n: &str| {
        error(
            404,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{n}\" not found"),
        )
    };
    let Some(mut l) = body else {
        return error(400, "BadRequest", "the body must be a Lease");
    };
    let holder = l["spec"]["holderIdentity"].as_str().map(str::to_string);
    let hang = {
        let g = shared.lock();
        g.faults.hang_lease_writes_of.is_some() && g.faults.hang_lease_writes_of == holder
    };
    if hang {
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if shared.lock().faults.hang_lease_writes_of != holder {
                break;
            }
        }
        return error(504, "Timeout", "the server was not answering this client");
    }
    let mut g = shared.lock();
    let key = (ns.to_string(), n.to_string());
    let Some(stored) = g.leases.get(&key) else {
        return not_found(n);
    };
    if l["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
        return error(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{n}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let uid = stored["metadata"]["uid"].clone();
    g.lease_rv += 1;
    l["apiVersion"] = json!("coordination.k8s.io/v1");
    l["kind"] = json!("Lease");
    l["metadata"]["namespace"] = json!(ns);
    l["metadata"]["uid"] = uid;
    l["metadata"]["resourceVersion"] = json!(g.lease_rv.to_string());
    g.leases.insert(key, l.clone());
    let _ = shared
        .lease_tx
        .send((ns.to_string(), n.to_string(), l.clone()));
    json_response(200, &l)
}

/// Records the request, then applies delay, auth, RBAC and injected failures.
#[allow(clippy::too_many_arguments)]
async fn pre(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    params: &BTreeMap<String, String>,
    headers: &HeaderMap,
    op: Op,
    verb: &str,
    target: &Target,
) -> Option<Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (delay, verdict) = {
        let mut g = shared.lock();
        if g.requests.len() >= MAX_RECORDED {
            g.requests.drain(..MAX_RECORDED / 2);
        }
        g.requests.push(Recorded {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            params: params.clone(),
            authorization: authorization.clone(),
            at_ms: u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        let delay = g
            .faults
            .delay
            .iter()
            .find(|(o, _)| *o == op || *o == Op::Any)
            .map(|(_, d)| *d);
        let verdict = verdict(&mut g.faults, op, verb, target, authorization.as_deref());
        (delay, verdict)
    };
    shared.changed.notify_waiters();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    verdict
}

fn verdict(
    f: &mut Faults,
    op: Op,
    verb: &str,
    target: &Target,
    authorization: Option<&str>,
) -> Option<Response> {
    if let Some(token) = &f.require_bearer
        && authorization != Some(&format!("Bearer {token}"))
    {
        return Some(error(401, "Unauthorized", "Unauthorized"));
    }
    if f.forbid.iter().any(|v| v == verb || v == "*") {
        let group = match target.flavor {
            Flavor::Core => "",
            Flavor::Events => "events.k8s.io",
        };
        let scope = match &target.ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let mut s = status(
            403,
            "Forbidden",
            &format!(
                "events is forbidden: User \"system:serviceaccount:obs:watcher\" cannot {verb} resource \"events\" in API group \"{group}\" {scope}"
            ),
        );
        s["details"] = json!({"kind": "events"});
        return Some(json_response(403, &s));
    }
    let idx = f
        .fail_next
        .iter()
        .position(|x| x.op == op || x.op == Op::Any)?;
    let x = f.fail_next.remove(idx)?;
    let code = StatusCode::from_u16(x.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(if let Some(text) = x.raw_body {
        (code, text).into_response()
    } else {
        let reason = if x.reason.is_empty() {
            "InternalError"
        } else {
            &x.reason
        };
        let msg = if x.message.is_empty() {
            "injected failure"
        } else {
            &x.message
        };
        error(x.status, reason, msg)
    })
}

fn selectors(
    target: &Target,
    params: &BTreeMap<String, String>,
) -> Result<(Selector, Selector), Response> {
    let fields = Selector::fields(params.get("fieldSelector").map_or("", |s| s), target.flavor)
        .map_err(|e| error(400, "BadRequest", &e))?;
    let labels = Selector::labels(params.get("labelSelector").map_or("", |s| s))
        .map_err(|e| error(400, "BadRequest", &e))?;
    Ok((fields, labels))
}

fn matcher(
    target: &Target,
    fields: Selector,
    labels: Selector,
) -> impl Fn(&Value) -> bool + Send + 'static {
    let ns = target.ns.clone();
    move |o: &Value| {
        ns.as_deref()
            .is_none_or(|ns| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
            && fields.matches(o)
            && labels.matches(o)
    }
}

fn list_kind(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Core => "v1",
        Flavor::Events => "events.k8s.io/v1",
    }
}

/// An object's JSON text as served through `flavor`, made once per resourceVersion.
fn served_text(
    texts: &mut std::collections::HashMap<(String, String), crate::ObjectText>,
    key: &(String, String),
    o: &Value,
    flavor: Flavor,
) -> Arc<str> {
    let rv = o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    let at = flavor as usize;
    if let Some(t) = texts.get(key)
        && t.resource_version == rv
        && let Some(text) = &t.text[at]
    {
        return text.clone();
    }
    let entry = texts.entry(key.clone()).or_default();
    if entry.resource_version != rv {
        *entry = crate::ObjectText {
            resource_version: rv.to_string(),
            ..crate::ObjectText::default()
        };
    }
    entry.text[at]
        .get_or_insert_with(|| Arc::from(to_flavor(o, flavor, false).to_string()))
        .clone()
}

fn list(shared: &Arc<Shared>, target: &Target, params: &BTreeMap<String, String>) -> Response {
    let (fields, labels) = match selectors(target, params) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let matches = matcher(target, fields, labels);
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut g = shared.lock();
    let (snap_rv, items, offset) = if let Some(token) = params.get("continue") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (rv, off) = s.split_once(':')?;
                Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?))
            });
        let expired = std::mem::take(&mut g.faults.expire_continue_tokens);
        match decoded {
            Some((rv, off)) if !expired && rv >= g.compacted_rv => match g.snapshots.get(&rv) {
                Some(items) => (rv, items.clone(), off),
                None => return expired_continue(),
            },
            Some(_) => return expired_continue(),
            None => return error(400, "BadRequest", "invalid continue token"),
        }
    } else {
        let state = &mut *g;
        if state.texts.len() > 2 * state.objects.len() + 1024 {
            state.texts.clear();
        }
        let items: Vec<Arc<str>> = state
            .objects
            .iter()
            .filter(|(_, o)| matches(o))
            .map(|(key, o)| served_text(&mut state.texts, key, o, target.flavor))
            .collect();
        let rv = g.rv;
        let items = Arc::new(items);
        if limit.is_some_and(|l| items.len() > l) {
            g.snapshots.insert(rv, items.clone());
            if g.snapshots.len() > 64 {
                let oldest = g.snapshots.keys().min().copied();
                if let Some(k) = oldest {
                    g.snapshots.remove(&k);
                }
            }
        }
        (rv, items, 0)
    };
    drop(g);
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let page = &items[offset.min(end)..end];
    let mut meta = json!({"resourceVersion": snap_rv.to_string()});
    if end < items.len() {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{snap_rv}:{end}"));
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(items.len() - end);
    }
    let mut out = String::with_capacity(page.len() * 900 + 128);
    out.push_str(&format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        list_kind(target.flavor),
        meta
    ));
    for (i, item) in page.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push_str("]}");
    let mut r = (StatusCode::OK, out).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn expired_continue() -> Response {
    error(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
    )
}

fn get(shared: &Arc<Shared>, target: &Target) -> Response {
    let (Some(ns), Some(name)) = (&target.ns, &target.name) else {
        return error(404, "NotFound", "not found");
    };
    let g = shared.lock();
    match g.objects.get(&(ns.clone(), name.clone())) {
        Some(o) => json_response(200, &to_flavor(o, target.flavor, true)),
        None => error(404, "NotFound", &format!("events \"{name}\" not found")),
    }
}

fn write(shared: &Arc<Shared>, method: &Method, target: &Target, body: &Bytes) -> Response {
    let Some(ns) = &target.ns else {
        return error(405, "MethodNotAllowed", "writes need a namespace");
    };
    let parsed = || -> Result<Value, Response> {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| error(400, "BadRequest", &format!("invalid JSON body: {e}")))
    };
    let result = {
        let mut g = shared.lock();
        match (method.as_str(), &target.name) {
            ("POST", _) => match parsed() {
                Ok(v) => g
                    .create(&shared.tx, ns, from_flavor(v, target.flavor))
                    .map(|o| (201, o)),
                Err(r) => return r,
            },
            ("PATCH", Some(name)) => match parsed() {
                Ok(v) => g
                    .patch(&shared.tx, ns, name, &from_flavor(v, target.flavor))
                    .map(|o| (200, o)),
                Err(r) => return r,
            },
            ("PUT", Some(name)) => match parsed() {
                Ok(v) => g
                    .replace(&shared.tx, ns, name, from_flavor(v, target.flavor))
                    .map(|o| (200, o)),
                Err(r) => return r,
            },
            ("DELETE", Some(name)) => g.delete(&shared.tx, ns, name).map(|o| (200, o)),
            _ => return error(405, "MethodNotAllowed", "method not allowed"),
        }
    };
    shared.changed.notify_waiters();
    match result {
        Ok((code, o)) => json_response(code, &to_flavor(&o, target.flavor, true)),
        Err(e) => write_error(&e),
    }
}

fn line(ty: &str, o: &Value) -> String {
    let mut s = format!("{{\"type\":\"{ty}\",\"object\":");
    s.push_str(&o.to_string());
    s.push_str("}\n");
    s
}

fn bookmark(flavor: Flavor, rv: u64, initial_end: bool) -> String {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": "Event", "apiVersion": list_kind(flavor), "metadata": meta}),
    )
}

/// Removes the watch from the registry when its body task ends.
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.lock().watchers.remove(&self.id);
        self.shared.changed.notify_waiters();
    }
}

// The watch request as the API server answers it, step by step: one place to read it whole.
#[allow(clippy::too_many_lines)]
fn watch(shared: &Arc<Shared>, target: &Target, params: &BTreeMap<String, String>) -> Response {
    let (fields, labels) = match selectors(target, params) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let matches = matcher(target, fields, labels);
    let flavor = target.flavor;
    let send_initial = params.get("sendInitialEvents").map(String::as_str) == Some("true");
    let allow_bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    if send_initial
        && (!allow_bookmarks
            || params.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan"))
    {
        return error(
            400,
            "BadRequest",
            "sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
        );
    }
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let rv_param = params.get("resourceVersion").cloned().unwrap_or_default();

    let mut g = shared.lock();
    if g.faults.watch_410_as_http > 0 {
        g.faults.watch_410_as_http -= 1;
        return error(410, "Expired", "too old resource version");
    }
    if g.faults.empty_watches > 0 {
        g.faults.empty_watches -= 1;
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "",
        )
            .into_response();
    }
    let rx = shared.tx.subscribe();
    let kick = shared.kick.subscribe();
    let mut backlog: Vec<String> = Vec::new();
    let mut err410 = false;
    if send_initial || rv_param.is_empty() || rv_param == "0" {
        for o in g.objects.values().filter(|o| matches(o)) {
            backlog.push(line("ADDED", &to_flavor(o, flavor, true)));
        }
        if send_initial {
            backlog.push(bookmark(flavor, g.rv, true));
        }
    } else {
        let from = rv_param.parse::<u64>().unwrap_or(0);
        let expire = g.faults.expire_next_watch > 0;
        if expire {
            g.faults.expire_next_watch -= 1;
        }
        if expire || from + 1 < g.compacted_rv {
            let cur = g.rv;
            backlog.push(line(
                "ERROR",
                &status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({cur})"),
                ),
            ));
            err410 = true;
        } else {
            for (rv, ty, o) in &g.history {
                if *rv > from && matches(o) {
                    backlog.push(line(ty, &to_flavor(o, flavor, true)));
                }
            }
        }
    }
    let injected: Vec<String> = g.faults.inject_lines.drain(..).collect();
    let stall = g.faults.stall_watch;
    let close_after = g.faults.close_after_events;
    let abort_after = g.faults.abort_after_events;
    let event_delay = g.faults.event_delay;
    let bookmark_every = allow_bookmarks.then(|| {
        g.faults
            .bookmark_interval
            .unwrap_or(Duration::from_secs(60))
    });
    g.next_watcher += 1;
    let id = g.next_watcher;
    g.watchers.insert(
        id,
        WatcherInfo {
            id,
            query: params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
            events_sent: 0,
        },
    );
    drop(g);
    shared.changed.notify_waiters();

    let (tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let guard = WatchGuard {
        shared: shared.clone(),
        id,
    };
    tokio::spawn(stream_watch(WatchTask {
        guard,
        tx,
        rx,
        kick,
        backlog,
        injected,
        err410,
        stall,
        close_after,
        abort_after,
        event_delay,
        bookmark_every,
        timeout: Duration::from_secs(timeout),
        flavor,
        matches: Box::new(matches),
    }));
    streaming(body_rx)
}

struct WatchTask {
    guard: WatchGuard,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    rx: broadcast::Receiver<Change>,
    kick: broadcast::Receiver<CloseMode>,
    backlog: Vec<String>,
    injected: Vec<String>,
    err410: bool,
    stall: bool,
    close_after: Option<u32>,
    abort_after: Option<u32>,
    event_delay: Option<Duration>,
    bookmark_every: Option<Duration>,
    timeout: Duration,
    flavor: Flavor,
    matches: Box<dyn Fn(&Value) -> bool + Send>,
}

async fn abort(tx: &mpsc::Sender<Result<Bytes, std::io::Error>>) {
    // Let hyper flush what was sent before dropping the connection.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tx.send(Err(std::io::Error::other("abort"))).await;
}

// One watch stream with every fault the tests inject, in one place.
#[allow(clippy::too_many_lines)]
async fn stream_watch(mut t: WatchTask) {
    let deadline = tokio::time::Instant::now() + t.timeout;
    let mut sent: u32 = 0;
    // Counts one sent event; says whether the watch must end now.
    let after_event = |t: &WatchTask, sent: u32| -> Option<CloseMode> {
        {
            let mut g = t.guard.shared.lock();
            if let Some(w) = g.watchers.get_mut(&t.guard.id) {
                w.events_sent += 1;
            }
        }
        if t.abort_after.is_some_and(|n| sent >= n) {
            return Some(CloseMode::Abort);
        }
        if t.close_after.is_some_and(|n| sent >= n) {
            return Some(CloseMode::Graceful);
        }
        None
    };
    if !t.stall {
        let mut chunk = String::new();
        for l in std::mem::take(&mut t.backlog) {
            let is_event = !t.err410;
            chunk.push_str(&l);
            if is_event {
                sent += 1;
                if let Some(mode) = after_event(&t, sent) {
                    let _ = t.tx.send(Ok(Bytes::from(std::mem::take(&mut chunk)))).await;
                    if mode == CloseMode::Abort {
                        abort(&t.tx).await;
                    }
                    return;
                }
            }
            if chunk.len() >= BACKLOG_CHUNK || t.event_delay.is_some() {
                if t.tx
                    .send(Ok(Bytes::from(std::mem::take(&mut chunk))))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(d) = t.event_delay {
                    tokio::time::sleep(d).await;
                }
            }
        }
        if !chunk.is_empty() && t.tx.send(Ok(Bytes::from(chunk))).await.is_err() {
            return;
        }
        if t.err410 {
            return;
        }
        for l in std::mem::take(&mut t.injected) {
            if t.tx.send(Ok(Bytes::from(l + "\n"))).await.is_err() {
                return;
            }
        }
    }
    let mut bookmarks = t.bookmark_every.map(|d| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                if !t.stall && t.bookmark_every.is_some() {
                    let rv = t.guard.shared.lock().rv;
                    let _ = t.tx.send(Ok(Bytes::from(bookmark(t.flavor, rv, false)))).await;
                }
                return;
            }
            k = t.kick.recv() => {
                if k == Ok(CloseMode::Abort) {
                    abort(&t.tx).await;
                }
                return;
            }
            () = async { match bookmarks.as_mut() { Some(i) => { i.tick().await; } None => std::future::pending::<()>().await } }, if !t.stall => {
                let rv = t.guard.shared.lock().rv;
                if t.tx.send(Ok(Bytes::from(bookmark(t.flavor, rv, false)))).await.is_err() {
                    return;
                }
            }
            ev = t.rx.recv() => match ev {
                Ok(_) if t.stall => {}
                Ok(Change::Line(l)) => {
                    if t.tx.send(Ok(Bytes::from(format!("{l}\n")))).await.is_err() {
                        return;
                    }
                }
                Ok(Change::Object(ty, o)) => {
                    if !(t.matches)(&o) {
                        continue;
                    }
                    if let Some(d) = t.event_delay {
                        tokio::time::sleep(d).await;
                    }
                    if t.tx.send(Ok(Bytes::from(line(ty, &to_flavor(&o, t.flavor, true))))).await.is_err() {
                        return;
                    }
                    sent += 1;
                    if let Some(mode) = after_event(&t, sent) {
                        if mode == CloseMode::Abort {
                            abort(&t.tx).await;
                        }
                        return;
                    }
                }
                // Lagged or closed: end the stream; the client resumes from its last rv.
                Err(_) => return,
            }
        }
    }
}

/// Deletes Events older than the `event_ttl` knob, as the real API server does.
pub(crate) fn expire_ttl(shared: &Arc<Shared>) {
    let mut g = shared.lock();
    let Some(ttl) = g.faults.event_ttl else {
        return;
    };
    let old: Vec<(String, String)> = g
        .created
        .iter()
        .filter(|(_, t)| t.elapsed() >= ttl)
        .map(|(k, _)| k.clone())
        .collect();
    if old.is_empty() {
        return;
    }
    for (ns, name) in old {
        let _ = g.delete(&shared.tx, &ns, &name);
    }
    drop(g);
    shared.changed.notify_waiters();
}

fn admin_api(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &BTreeMap<String, String>,
    body: &Bytes,
) -> Response {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let parsed = || serde_json::from_slice::<Value>(body);
    let done = |r: Result<Value, WriteError>, ok: u16| {
        shared.changed.notify_waiters();
        match r {
            Ok(v) => json_response(ok, &v),
            Err(e) => write_error(&e),
        }
    };
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["events", ns]) => match parsed() {
            Ok(v) => {
                let r = shared.lock().create(&shared.tx, ns, v);
                done(r, 201)
            }
            Err(e) => error(400, "BadRequest", &e.to_string()),
        },
        ("PATCH", ["events", ns, name]) => match parsed() {
            Ok(v) => {
                let r = shared.lock().patch(&shared.tx, ns, name, &v);
                done(r, 200)
            }
            Err(e) => error(400, "BadRequest", &e.to_string()),
        },
        ("DELETE", ["events", ns, name]) => {
            let r = shared.lock().delete(&shared.tx, ns, name);
            done(r, 200)
        }
        (_, ["objects", ..]) => crate::objects::admin(shared, method, &segs[1..], body),
        ("POST", ["faults"]) => {
            let patch = match parsed() {
                Ok(v) => v,
                Err(e) => return error(400, "BadRequest", &e.to_string()),
            };
            let mut g = shared.lock();
            let mut cur = serde_json::to_value(&g.faults).unwrap_or(Value::Null);
            crate::convert::merge_patch(&mut cur, &patch);
            match serde_json::from_value::<Faults>(cur) {
                Ok(f) => {
                    g.faults = f;
                    json_response(200, &serde_json::to_value(&g.faults).unwrap_or(Value::Null))
                }
                Err(e) => error(400, "BadRequest", &format!("invalid faults: {e}")),
            }
        }
        ("POST", ["compact"]) => {
            let mut g = shared.lock();
            g.history.clear();
            g.compacted_rv = g.rv + 1;
            json_response(200, &json!({"compactedRv": g.compacted_rv}))
        }
        ("POST", ["close-watches"]) => {
            let mode = if params.get("abort").map(String::as_str) == Some("true") {
                CloseMode::Abort
            } else {
                CloseMode::Graceful
            };
            let _ = shared.kick.send(mode);
            json_response(200, &json!({"closed": true}))
        }
        ("GET", ["requests"]) => json_response(
            200,
            &serde_json::to_value(&shared.lock().requests).unwrap_or(Value::Null),
        ),
        ("GET", ["watchers"]) => {
            let w: Vec<WatcherInfo> = shared.lock().watchers.values().cloned().collect();
            json_response(200, &serde_json::to_value(w).unwrap_or(Value::Null))
        }
        _ => error(404, "NotFound", "unknown admin endpoint"),
    }
}
