//! The document of an event and the index template that maps it.
//!
//! The scheme: ECS where ECS has a field (`@timestamp`, `message`, `event.*`,
//! `orchestrator.*`), and under `kubernetes.event.*` the names of Elastic's own Kubernetes
//! integration (the `kubernetes.event` dataset), so its dashboards find the fields. Label keys
//! have their dots replaced by `_` (as Beats do): `app.kubernetes.io/name` would otherwise be
//! an object path that conflicts with a label `app`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::event::{EventData, Labels};

fn rfc3339(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    })
}

fn dedot(labels: &Labels) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.replace('.', "_"), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

/// Empty strings and nulls left out (a document is smaller, and `exists` queries mean what
/// they say).
fn prune(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| {
            prune(x);
            !(x.is_null() || x.as_str() == Some("") || x.as_object().is_some_and(Map::is_empty))
        });
    }
}

/// The time an event is filed under: last seen, else first seen, else now.
pub fn timestamp(e: &EventData) -> DateTime<Utc> {
    e.last_seen.or(e.first_seen).unwrap_or_else(Utc::now)
}

/// The document of one event.
pub fn document(e: &EventData) -> Value {
    let mut d = json!({
        "@timestamp": rfc3339(Some(timestamp(e))),
        "message": e.message,
        "event": {
            "kind": "event",
            "dataset": "kubernetes.event",
            "module": "kubernetes",
            "reason": e.reason,
            "created": rfc3339(e.first_seen),
        },
        "orchestrator": {"type": "kubernetes", "cluster": {"name": &*e.cluster}},
        "kubernetes": {
            "namespace": e.namespace,
            "event": {
                "type": e.type_,
                "reason": e.reason,
                "message": e.message,
                "count": e.count,
                "metadata": {
                    "name": e.name,
                    "namespace": e.namespace,
                    "uid": e.uid,
                    "resource_version": e.resource_version,
                },
                "involved_object": {
                    "kind": e.kind,
                    "name": e.object_name,
                    "namespace": e.object_namespace,
                    "uid": e.object_uid,
                    "field_path": e.field_path,
                },
                "source": {"component": e.source, "host": e.host},
                "timestamp": {
                    "first_occurrence": rfc3339(e.first_seen),
                    "last_occurrence": rfc3339(e.last_seen),
                },
                "api_version": match e.api_version {
                    crate::event::ApiVersion::CoreV1 => "v1",
                    crate::event::ApiVersion::EventsV1 => "events.k8s.io/v1",
                },
            },
        },
    });
    if let Some(k) = d.get_mut("kubernetes").and_then(Value::as_object_mut) {
        if let Some(l) = &e.object_labels {
            k.insert("labels".into(), dedot(l));
        }
        if let Some(l) = &e.object_annotations {
            k.insert("annotations".into(), dedot(l));
        }
        if let Some(l) = &e.namespace_labels {
            k.insert("namespace_labels".into(), dedot(l));
        }
        if !e.owner_kind.is_empty() {
            k.insert(
                "owner".into(),
                json!({"kind": e.owner_kind, "name": e.owner_name}),
            );
        }
    }
    if let Some(s) = &e.summary {
        d["eventflow"] = json!({"summary": {
            "events": s.events, "occurrences": s.occurrences, "window": s.window,
            "text": s.text, "samples": s.samples,
        }});
    }
    prune(&mut d);
    d
}

/// The index pattern of an index name with date placeholders: the fixed part before the first
/// `%`, then `*` (`kube-events-%Y.%m.%d` -> `kube-events-*`).
pub fn pattern(index: &str) -> String {
    match index.find('%') {
        Some(i) => format!("{}*", &index[..i]),
        None => index.to_string(),
    }
}

/// The composable index template of `patterns` (a data stream's when `data_stream`).
pub fn template(patterns: &[String], data_stream: bool) -> Value {
    let keyword = json!({"type": "keyword", "ignore_above": 1024});
    let text = json!({"type": "match_only_text"});
    let date = json!({"type": "date"});
    let mut t = json!({
        "index_patterns": patterns,
        "priority": 200,
        "_meta": {"managed_by": "eventflow", "description": "Kubernetes Events written by eventflow"},
        "template": {
            "mappings": {
                "dynamic": true,
                "properties": {
                    "@timestamp": date,
                    "message": text,
                    "event": {"properties": {
                        "kind": keyword, "dataset": keyword, "module": keyword,
                        "reason": keyword, "created": date,
                    }},
                    "orchestrator": {"properties": {
                        "type": keyword, "cluster": {"properties": {"name": keyword}},
                    }},
                    "kubernetes": {"properties": {
                        "namespace": keyword,
                        "labels": {"type": "flattened"},
                        "annotations": {"type": "flattened"},
                        "namespace_labels": {"type": "flattened"},
                        "owner": {"properties": {"kind": keyword, "name": keyword}},
                        "event": {"properties": {
                            "type": keyword, "reason": keyword, "message": text,
                            "count": {"type": "long"}, "api_version": keyword,
                            "metadata": {"properties": {
                                "name": keyword, "namespace": keyword, "uid": keyword,
                                "resource_version": keyword,
                            }},
                            "involved_object": {"properties": {
                                "kind": keyword, "name": keyword, "namespace": keyword,
                                "uid": keyword, "field_path": keyword,
                            }},
                            "source": {"properties": {"component": keyword, "host": keyword}},
                            "timestamp": {"properties": {
                                "first_occurrence": date, "last_occurrence": date,
                            }},
                        }},
                    }},
                    "eventflow": {"properties": {"summary": {"properties": {
                        "events": {"type": "long"}, "occurrences": {"type": "long"},
                        "window": keyword, "text": text, "samples": text,
                    }}}},
                },
            },
        },
    });
    if data_stream {
        t["data_stream"] = json!({});
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_lose_their_dots_and_empty_fields_are_left_out() {
        let mut e = crate::testkit::event("u1");
        e.object_labels = Some(std::sync::Arc::new(
            [("app.kubernetes.io/name".to_string(), "web".to_string())].into(),
        ));
        let d = document(&e);
        assert_eq!(d["kubernetes"]["labels"]["app_kubernetes_io/name"], "web");
        assert_eq!(d["kubernetes"]["event"]["metadata"]["uid"], "u1");
        assert!(
            d["kubernetes"]["event"].get("involved_object").is_none()
                || d["kubernetes"]["event"]["involved_object"]
                    .get("uid")
                    .is_none()
        );
        assert_eq!(pattern("kube-events-%Y.%m.%d"), "kube-events-*");
        assert_eq!(pattern("events"), "events");
    }
}
