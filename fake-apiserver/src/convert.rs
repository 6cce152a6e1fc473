//! Shapes: the stored core/v1 form, its events.k8s.io/v1 view, selectors, and Status bodies.

use serde_json::{Map, Value, json};

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `/api/v1/...`
    Core,
    /// `/apis/events.k8s.io/v1/...`
    Events,
}

/// core/v1 field -> events.k8s.io/v1 field, for the renamed ones.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("count", "deprecatedCount"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
];

/// The stored (core/v1) object as `flavor` shows it. Lists omit `apiVersion`/`kind` on items,
/// watches and single-object answers carry them.
pub fn to_flavor(o: &Value, flavor: Flavor, with_type: bool) -> Value {
    let mut m = match o {
        Value::Object(m) => m.clone(),
        other => return other.clone(),
    };
    if flavor == Flavor::Events {
        for (core, ev) in RENAMES {
            if let Some(v) = m.remove(*core) {
                m.insert((*ev).to_string(), v);
            }
        }
    }
    m.remove("apiVersion");
    m.remove("kind");
    if with_type {
        let api = match flavor {
            Flavor::Core => "v1",
            Flavor::Events => "events.k8s.io/v1",
        };
        m.insert("apiVersion".into(), json!(api));
        m.insert("kind".into(), json!("Event"));
    }
    Value::Object(m)
}

/// An object written through `flavor` in the stored core/v1 form.
pub fn from_flavor(o: Value, flavor: Flavor) -> Value {
    let mut m = match o {
        Value::Object(m) => m,
        other => return other,
    };
    if flavor == Flavor::Events {
        for (core, ev) in RENAMES {
            if let Some(v) = m.remove(*ev) {
                m.insert((*core).to_string(), v);
            }
        }
    }
    m.remove("apiVersion");
    m.remove("kind");
    Value::Object(m)
}

/// A Kubernetes `Status` body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if code == 429 {
        s["details"] = json!({"retryAfterSeconds": 1});
    }
    s
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// One `key=value` / `key!=value` term of a selector.
#[derive(Debug, Clone)]
struct Term {
    key: String,
    value: String,
    negate: bool,
}

/// A parsed field or label selector (comma-separated AND of equality terms).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    terms: Vec<Term>,
    labels: bool,
}

fn parse_terms(s: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value, negate) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = part.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once('=') {
            (k, v, false)
        } else {
            return Err(format!("invalid selector: {part:?}"));
        };
        terms.push(Term {
            key: key.trim().to_string(),
            value: value.trim().to_string(),
            negate,
        });
    }
    Ok(terms)
}

/// The field path of a field selector label, in the stored core/v1 form.
fn field_path(flavor: Flavor, key: &str) -> Option<Vec<&'static str>> {
    let obj = |f: &str| -> Option<&'static str> {
        Some(match f {
            "kind" => "kind",
            "namespace" => "namespace",
            "name" => "name",
            "uid" => "uid",
            "apiVersion" => "apiVersion",
            "resourceVersion" => "resourceVersion",
            "fieldPath" => "fieldPath",
            _ => return None,
        })
    };
    match key {
        "metadata.name" => return Some(vec!["metadata", "name"]),
        "metadata.namespace" => return Some(vec!["metadata", "namespace"]),
        "reason" => return Some(vec!["reason"]),
        "type" => return Some(vec!["type"]),
        "source" => return Some(vec!["source", "component"]),
        _ => {}
    }
    match flavor {
        Flavor::Core => {
            if key == "reportingComponent" {
                return Some(vec!["reportingComponent"]);
            }
            key.strip_prefix("involvedObject.")
                .and_then(obj)
                .map(|f| vec!["involvedObject", f])
        }
        Flavor::Events => {
            if key == "reportingController" {
                return Some(vec!["reportingComponent"]);
            }
            key.strip_prefix("regarding.")
                .and_then(obj)
                .map(|f| vec!["involvedObject", f])
        }
    }
}

impl Selector {
    /// Parses a `fieldSelector`; an unknown field label is an error, as on a real server.
    pub fn fields(s: &str, flavor: Flavor) -> Result<Selector, String> {
        let terms = parse_terms(s)?;
        for t in &terms {
            if field_path(flavor, &t.key).is_none() {
                return Err(format!("field label not supported: {}", t.key));
            }
        }
        let mut sel = Selector {
            terms,
            labels: false,
        };
        // Store resolved paths in the key as a dotted core/v1 path.
        for t in &mut sel.terms {
            if let Some(p) = field_path(flavor, &t.key) {
                t.key = p.join("\u{0}");
            }
        }
        Ok(sel)
    }

    /// Parses a `labelSelector` (equality terms only).
    pub fn labels(s: &str) -> Result<Selector, String> {
        Ok(Selector {
            terms: parse_terms(s)?,
            labels: true,
        })
    }

    /// Whether a stored object matches.
    pub fn matches(&self, o: &Value) -> bool {
        self.terms.iter().all(|t| {
            let actual = if self.labels {
                o.pointer("/metadata/labels")
                    .and_then(|l| l.get(&t.key))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            } else {
                let mut cur = Some(o);
                for seg in t.key.split('\u{0}') {
                    cur = cur.and_then(|c| c.get(seg));
                }
                cur.map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
            };
            let actual = actual.unwrap_or_default();
            (actual == t.value) != t.negate
        })
    }
}

/// A realistic core/v1 Event (kubelet style) for tests and demos. `metadata.uid`,
/// `resourceVersion` and `creationTimestamp` are set by the server on create.
pub fn sample_event(ns: &str, name: &str, reason: &str, type_: &str, message: &str) -> Value {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let object = name.rsplit_once('.').map_or(name, |(o, _)| o);
    json!({
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": object,
                           "uid": "5f3b0c3e-9d2a-4c4c-9a9a-3b1d2c4e5f60", "apiVersion": "v1"},
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": "worker-1"},
        "firstTimestamp": now, "lastTimestamp": now,
        "count": 1,
        "type": type_,
        "eventTime": null,
        "reportingComponent": "kubelet",
        "reportingInstance": "worker-1",
    })
}

/// Fields whose value is one atomic unit in server-side field tracking (an `ObjectReference`
/// is a `structType=atomic`): tracked as one field, not by their own fields.
const ATOMIC: &[&str] = &["involvedObject", "regarding", "related"];

/// What a real API server records on every write it accepts: `metadata.managedFields`, one
/// entry naming the writer (`manager`) and the set of fields it wrote (`FieldsV1`). Real
/// Event objects from Kubernetes 1.18 on carry it, and every client decodes it. Kept as the
/// writer sent it when the object already has one (an update that read the object first).
pub fn track_fields(o: &mut Value) {
    if o["metadata"]["managedFields"].is_array() {
        return;
    }
    let manager = manager_of(o).to_string();
    let fields = fields_v1(o, true);
    o["metadata"]["managedFields"] = json!([{
        "manager": manager,
        "operation": "Update",
        "apiVersion": "v1",
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }]);
}

/// The `FieldsV1` set of the fields `v` sets: `{"f:name": {...}}`, nested for objects.
fn fields_v1(v: &Value, top: bool) -> Value {
    let Value::Object(m) = v else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, v) in m {
        if v.is_null() || (top && matches!(k.as_str(), "apiVersion" | "kind")) {
            continue;
        }
        let inner = if top && k == "metadata" {
            // Of the metadata, only what the writer chose is its field.
            let mut own = Map::new();
            for f in ["generateName", "labels", "annotations"] {
                if !v[f].is_null() {
                    own.insert(format!("f:{f}"), fields_v1(&v[f], false));
                }
            }
            if own.is_empty() {
                continue;
            }
            Value::Object(own)
        } else if ATOMIC.contains(&k.as_str()) {
            json!({})
        } else {
            fields_v1(v, false)
        };
        out.insert(format!("f:{k}"), inner);
    }
    Value::Object(out)
}

/// Who wrote an Event, as a real API server names it (the writer's program): here the
/// Event's own reporting component.
fn manager_of(o: &Value) -> &str {
    [&o["reportingComponent"], &o["source"]["component"]]
        .into_iter()
        .find_map(|m| m.as_str().filter(|m| !m.is_empty()))
        .unwrap_or("fake-apiserver")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_records_its_fields_as_a_real_server_does() {
        let mut e = sample_event("shop", "web-1.17", "BackOff", "Warning", "Back-off");
        e["metadata"]["labels"] = json!({"app": "web"});
        track_fields(&mut e);
        let entry = &e["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], "kubelet");
        assert_eq!(entry["operation"], "Update");
        assert_eq!(entry["fieldsType"], "FieldsV1");
        let f = &entry["fieldsV1"];
        assert_eq!(
            f["f:involvedObject"],
            json!({}),
            "an object reference is atomic"
        );
        assert_eq!(f["f:source"], json!({"f:component": {}, "f:host": {}}));
        assert_eq!(f["f:metadata"], json!({"f:labels": {"f:app": {}}}));
        assert!(f["f:eventTime"].is_null(), "a null field is not set");
        assert!(f["f:reason"].is_object() && f["f:message"].is_object());
        // An object that already has them keeps them.
        let before = e["metadata"]["managedFields"].clone();
        e["reason"] = json!("Other");
        track_fields(&mut e);
        assert_eq!(e["metadata"]["managedFields"], before);
    }
}
