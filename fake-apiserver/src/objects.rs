//! The objects Events are about — namespaces, pods, nodes, services, workloads — with their
//! metadata (labels, annotations, ownerReferences), for what watches them (`enrich`): list,
//! watch from a resourceVersion and get, in full or in the metadata-only form
//! (`Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`) that
//! `kube`'s metadata watches ask for. They share the Events' resourceVersion counter, as
//! objects of one etcd do. Tests write them through [`crate::FakeApiServer::put_object`] and
//! [`crate::FakeApiServer::delete_object`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::{Recorded, Shared};

/// The kinds served: apiVersion, kind, plural, namespaced.
pub const KINDS: &[(&str, &str, &str, bool)] = &[
    ("v1", "Namespace", "namespaces", false),
    ("v1", "Node", "nodes", false),
    ("v1", "Pod", "pods", true),
    ("v1", "Service", "services", true),
    (
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    ),
    ("apps/v1", "ReplicaSet", "replicasets", true),
    ("apps/v1", "Deployment", "deployments", true),
    ("apps/v1", "StatefulSet", "statefulsets", true),
    ("apps/v1", "DaemonSet", "daemonsets", true),
    ("batch/v1", "Job", "jobs", true),
    ("batch/v1", "CronJob", "cronjobs", true),
];

/// The stored objects and their history.
#[derive(Default)]
pub(crate) struct Objects {
    /// (resource, namespace, name) -> object; resource is `apiVersion/plural`.
    pub items: BTreeMap<(String, String, String), Value>,
    /// (rv, resource, watch type, object), oldest first, bounded.
    pub history: std::collections::VecDeque<(u64, String, &'static str, Arc<Value>)>,
}

const HISTORY: usize = 100_000;

/// `apiVersion/plural` of an object's kind.
fn resource_of(o: &Value) -> Option<(String, bool)> {
    let api = o["apiVersion"].as_str()?;
    let kind = o["kind"].as_str()?;
    KINDS
        .iter()
        .find(|(a, k, _, _)| *a == api && *k == kind)
        .map(|(a, _, plural, namespaced)| (format!("{a}/{plural}"), *namespaced))
}

/// What a path names: resource (`apiVersion/plural`), namespace, name.
pub(crate) fn target(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest): (String, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let known = |plural: &str| {
        KINDS
            .iter()
            .find(|(a, _, p, _)| *a == api && *p == plural)
            .map(|(a, _, p, namespaced)| (format!("{a}/{p}"), *namespaced))
    };
    let s = |x: &&str| Some((*x).to_string());
    match rest {
        [plural] => known(plural).map(|(r, _)| (r, None, None)),
        ["namespaces", name] if api == "v1" => Some(("v1/namespaces".into(), None, s(name))),
        [plural, name] => known(plural)
            .filter(|(_, ns)| !ns)
            .map(|(r, _)| (r, None, s(name))),
        ["namespaces", ns, plural] => known(plural)
            .filter(|(_, n)| *n)
            .map(|(r, _)| (r, s(ns), None)),
        ["namespaces", ns, plural, name] => known(plural)
            .filter(|(_, n)| *n)
            .map(|(r, _)| (r, s(ns), s(name))),
        _ => None,
    }
}

impl Objects {
    /// Stores `o` (created or replaced), stamping uid, creation time and resourceVersion.
    pub(crate) fn put(
        &mut self,
        rv: &mut u64,
        tx: &broadcast::Sender<(String, &'static str, Arc<Value>)>,
        mut o: Value,
    ) -> Result<Value, String> {
        let (resource, namespaced) = resource_of(&o).ok_or_else(|| {
            format!(
                "unknown kind {} {} (the fake serves: {})",
                o["apiVersion"],
                o["kind"],
                KINDS
                    .iter()
                    .map(|(a, k, _, _)| format!("{a} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let name = o["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or("metadata.name is required")?
            .to_string();
        let ns = if namespaced {
            o["metadata"]["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or("metadata.namespace is required for a namespaced kind")?
                .to_string()
        } else {
            String::new()
        };
        let key = (resource.clone(), ns, name);
        let old = self.items.get(&key);
        let ty = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let uid = old
            .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("obj-{}", *rv + 1));
        let created = old.map_or_else(
            || Value::String(chrono::Utc::now().to_rfc3339()),
            |p| p["metadata"]["creationTimestamp"].clone(),
        );
        *rv += 1;
        let m = &mut o["metadata"];
        if m.get("uid").is_none() {
            m["uid"] = Value::String(uid);
        }
        m["creationTimestamp"] = created;
        m["resourceVersion"] = Value::String(rv.to_string());
        self.items.insert(key, o.clone());
        self.record(*rv, tx, resource, ty, o.clone());
        Ok(o)
    }

    /// Deletes an object; `None` if there was none.
    pub(crate) fn delete(
        &mut self,
        rv: &mut u64,
        tx: &broadcast::Sender<(String, &'static str, Arc<Value>)>,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> Option<Value> {
        let mut o = self
            .items
            .remove(&(resource.to_string(), ns.to_string(), name.to_string()))?;
        *rv += 1;
        o["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.record(*rv, tx, resource.to_string(), "DELETED", o.clone());
        Some(o)
    }

    fn record(
        &mut self,
        rv: u64,
        tx: &broadcast::Sender<(String, &'static str, Arc<Value>)>,
        resource: String,
        ty: &'static str,
        o: Value,
    ) {
        let o = Arc::new(o);
        self.history
            .push_back((rv, resource.clone(), ty, o.clone()));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let _ = tx.send((resource, ty, o));
    }
}

/// The resource of a kind (`Deployment` -> `apps/v1/deployments`), for tests.
pub fn resource_of_kind(kind: &str) -> Option<String> {
    KINDS
        .iter()
        .find(|(_, k, _, _)| *k == kind)
        .map(|(a, _, p, _)| format!("{a}/{p}"))
}

/// Whether the client asked for the metadata-only form.
fn metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// An object as sent: whole, or its metadata only.
fn shown(o: &Value, meta: bool) -> Value {
    if meta {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
    } else {
        o.clone()
    }
}

use crate::server::{error as status, json_response as response};

/// Serves a request for one of [`KINDS`]: list, watch, get (reads only).
pub(crate) fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    params: &BTreeMap<String, String>,
    headers: &HeaderMap,
    (resource, ns, name): (String, Option<String>, Option<String>),
) -> Response {
    let is_watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.as_str(), &name, is_watch) {
        ("GET", None, true) => "watch",
        ("GET", None, false) => "list",
        ("GET", Some(_), _) => "get",
        _ => {
            return status(
                405,
                "MethodNotAllowed",
                "the fake serves reads of these kinds",
            );
        }
    };
    {
        let mut g = shared.lock();
        g.requests.push(Recorded {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            params: params.clone(),
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            at_ms: u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        let plural = resource.rsplit('/').next().unwrap_or_default();
        if g.faults.forbid.iter().any(|v| v == "*" || v == verb)
            || g.faults.forbid_resources.iter().any(|r| r == plural)
        {
            return status(
                403,
                "Forbidden",
                &format!(
                    "{plural} is forbidden: User \"system:serviceaccount:eventflow:eventflow\" cannot {verb} resource \"{plural}\" at the cluster scope"
                ),
            );
        }
    }
    shared.changed.notify_waiters();
    let meta = metadata_only(headers);
    let in_scope = |r: &str, n: &str| r == resource && ns.as_deref().is_none_or(|x| x == n);
    match verb {
        "get" => {
            let g = shared.lock();
            let key = (
                resource.clone(),
                ns.clone().unwrap_or_default(),
                name.clone().unwrap_or_default(),
            );
            match g.objects_meta.items.get(&key) {
                Some(o) => response(200, &shown(o, meta)),
                None => status(404, "NotFound", &format!("\"{}\" not found", key.2)),
            }
        }
        "list" => {
            let g = shared.lock();
            let items: Vec<Value> = g
                .objects_meta
                .items
                .iter()
                .filter(|((r, n, _), _)| in_scope(r, n))
                .map(|(_, o)| shown(o, meta))
                .collect();
            let kind = if meta {
                ("meta.k8s.io/v1", "PartialObjectMetadataList")
            } else {
                ("v1", "List")
            };
            response(
                200,
                &json!({"apiVersion": kind.0, "kind": kind.1, "metadata": {"resourceVersion": g.rv.to_string()}, "items": items}),
            )
        }
        _ => {
            let (resource, ns) = (resource.clone(), ns.clone());
            watch(shared, params, meta, move |r: &str, n: &str| {
                r == resource && ns.as_deref().is_none_or(|x| x == n)
            })
        }
    }
}

/// A watch: what changed after `resourceVersion` (everything current as ADDED when it is
/// absent or 0), then changes as they happen, until `timeoutSeconds`. A resourceVersion older
/// than the kept history is answered with an `ERROR 410` event, as the API server does.
fn watch(
    shared: &Arc<Shared>,
    params: &BTreeMap<String, String>,
    meta: bool,
    wanted: impl Fn(&str, &str) -> bool + Send + 'static,
) -> Response {
    let (since, timeout) = crate::server::watch_window(params);
    let line = |ty: &str, o: &Value| {
        Ok(Bytes::from(format!(
            "{}\n",
            json!({"type": ty, "object": o})
        )))
    };
    let mut rx = shared.objects_tx.subscribe();
    let (backlog, gone) = {
        let g = shared.lock();
        let h = &g.objects_meta.history;
        let oldest = h.front().map_or(g.rv, |(rv, ..)| *rv);
        if since == 0 {
            let items = g
                .objects_meta
                .items
                .iter()
                .filter(|((r, n, _), _)| wanted(r, n))
                .map(|(_, o)| ("ADDED", shown(o, meta)))
                .collect::<Vec<_>>();
            (items, false)
        } else if since + 1 < oldest && h.len() >= HISTORY {
            (Vec::new(), true)
        } else {
            let items = h
                .iter()
                .filter(|(rv, r, _, o)| {
                    *rv > since && wanted(r, o["metadata"]["namespace"].as_str().unwrap_or(""))
                })
                .map(|(_, _, ty, o)| (*ty, shown(o, meta)))
                .collect::<Vec<_>>();
            (items, false)
        }
    };
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        if gone {
            let _ = tx
                .send(line(
                    "ERROR",
                    &crate::convert::status(410, "Expired", "too old resource version"),
                ))
                .await;
            return;
        }
        for (ty, o) in &backlog {
            if tx.send(line(ty, o)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                got = rx.recv() => match got {
                    Ok((r, ty, o)) if wanted(&r, o["metadata"]["namespace"].as_str().unwrap_or("")) => {
                        if tx.send(line(ty, &shown(&o, meta))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A watcher that fell behind is ended, as the API server does; the client
                    // lists again.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    crate::server::streaming(body_rx)
}

/// Creates or replaces an object (see [`Objects::put`]) and wakes who waits on a change.
pub(crate) fn put(shared: &Shared, o: Value) -> Result<Value, String> {
    let r = {
        let mut g = shared.lock();
        let crate::State {
            rv, objects_meta, ..
        } = &mut *g;
        objects_meta.put(rv, &shared.objects_tx, o)
    };
    shared.changed.notify_waiters();
    r
}

/// Deletes an object of `kind`; `None` if there was none (or the kind is not served).
pub(crate) fn delete(shared: &Shared, kind: &str, ns: &str, name: &str) -> Option<Value> {
    let resource = resource_of_kind(kind)?;
    let r = {
        let mut g = shared.lock();
        let crate::State {
            rv, objects_meta, ..
        } = &mut *g;
        objects_meta.delete(rv, &shared.objects_tx, &resource, ns, name)
    };
    shared.changed.notify_waiters();
    r
}

/// The admin API's `/__fake/objects`: `PUT` an object, `DELETE .../KIND/NS/NAME` (`-` for a
/// cluster-scoped kind).
pub(crate) fn admin(shared: &Arc<Shared>, method: &Method, segs: &[&str], body: &[u8]) -> Response {
    match (method.as_str(), segs) {
        ("PUT", []) => match serde_json::from_slice::<Value>(body) {
            Ok(o) => match put(shared, o) {
                Ok(o) => response(200, &o),
                Err(e) => status(400, "BadRequest", &e),
            },
            Err(e) => status(400, "BadRequest", &e.to_string()),
        },
        ("DELETE", [kind, ns, name]) => {
            let ns = if *ns == "-" { "" } else { *ns };
            match delete(shared, kind, ns, name) {
                Some(o) => response(200, &o),
                None => status(404, "NotFound", &format!("{kind} {ns}/{name} not found")),
            }
        }
        _ => status(404, "NotFound", "unknown admin endpoint"),
    }
}
