//! The authoring tools: `eventflow explain` (what each stage would do with one event, and why)
//! and `eventflow test` (the `tests:` cases of a pipeline file, run through the real stage code
//! with sources replaced by the cases' inputs and sinks capturing what they would write).
//! Neither touches the network or a database.

pub mod explain;
pub mod harness;
pub mod test;

use std::sync::Arc;

use crate::event::EventData;

/// Why text given as events (`explain`'s argument, a test case's `file:`) is not events.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("neither JSON ({json}) nor YAML (line {line}, column {column}: {yaml})")]
    Unreadable {
        json: serde_json::Error,
        line: u64,
        column: u64,
        yaml: String,
    },
    #[error("expected an event or a list of events, found {0}")]
    NotEvents(String),
    /// The `n`th event (from 1) is not an event.
    #[error("event {n}: {source}")]
    Event {
        n: usize,
        #[source]
        source: EventError,
    },
}

/// Why one value is not an event in either form.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// An API-server object (it has `metadata`) that does not decode.
    #[error("{0}")]
    Object(#[from] crate::event::DecodeError),
    /// A field that no event has (a typo, usually): the message names it and the closest.
    #[error("{0}")]
    UnknownField(String),
    /// An event in eventflow's form whose fields do not decode.
    #[error("{0}")]
    Normalized(#[from] serde_json::Error),
}

/// Events from text a person wrote: JSON, JSON lines or YAML; one event, a list, or an `EventList`; each in
/// the API server's form (either API version: it has `metadata`) or eventflow's normalized form
/// (the fields `stdout` prints). `cluster` names the cluster of API-server events.
pub fn events_from_text(text: &str, cluster: &str) -> Result<Vec<EventData>, InputError> {
    let lines = || -> Option<serde_json::Value> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).ok())
            .collect::<Option<Vec<_>>>()
            .map(serde_json::Value::Array)
    };
    let value: serde_json::Value =
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) if let Some(v) = lines() => v,
            Err(json) => crate::yaml::parse(text).map(|n| n.to_json()).map_err(|e| {
                InputError::Unreadable {
                    json,
                    line: e.pos.line,
                    column: e.pos.column,
                    yaml: e.message,
                }
            })?,
        };
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut o) => match o.remove("items") {
            Some(serde_json::Value::Array(items)) => items,
            Some(other) => {
                o.insert("items".into(), other);
                vec![serde_json::Value::Object(o)]
            }
            None => vec![serde_json::Value::Object(o)],
        },
        other => return Err(InputError::NotEvents(other.to_string())),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            event_from_value(item, cluster).map_err(|source| InputError::Event { n: i + 1, source })
        })
        .collect()
}

/// One event in either form ([`events_from_text`]).
pub fn event_from_value(item: &serde_json::Value, cluster: &str) -> Result<EventData, EventError> {
    if item.get("metadata").is_some() {
        let text = item.to_string();
        Ok(crate::event::decode(&text, &Arc::from(cluster))?)
    } else {
        if let Some((_, why)) = unknown_fields(item).into_iter().next() {
            return Err(EventError::UnknownField(why));
        }
        let mut e: EventData = serde_json::from_value(item.clone())?;
        if e.cluster.is_empty() {
            e.cluster = Arc::from(cluster);
        }
        if e.count == 0 {
            e.count = 1;
        }
        Ok(e)
    }
}

/// The fields of an event in eventflow's normalized form (what `stdout` prints, `raw` with
/// `raw: true`).
pub const EVENT_FIELDS: [&str; 26] = [
    "cluster",
    "uid",
    "name",
    "namespace",
    "resource_version",
    "type",
    "reason",
    "message",
    "kind",
    "object_name",
    "object_namespace",
    "object_uid",
    "field_path",
    "source",
    "host",
    "count",
    "first_seen",
    "last_seen",
    "api_version",
    "summary",
    "object_labels",
    "object_annotations",
    "namespace_labels",
    "owner_kind",
    "owner_name",
    "raw",
];

/// The keys of a normalized-form event (no `metadata`) that are not event fields, each with
/// a message (and a did-you-mean): a typo such as `namespce` would otherwise leave the field
/// empty and let a test case pass for the wrong reason. A value that is not a map, or a map
/// with no field at all, is not an event.
pub fn unknown_fields(item: &serde_json::Value) -> Vec<(String, String)> {
    let Some(map) = item.as_object() else {
        return vec![(
            String::new(),
            format!(
                "not an event: expected a map of event fields (or an Event with `metadata`), found {item}"
            ),
        )];
    };
    if map.contains_key("metadata") {
        return Vec::new();
    }
    if map.is_empty() {
        return vec![(
            String::new(),
            "not an event: it has none of the event fields (type, reason, namespace, message, ...)"
                .to_string(),
        )];
    }
    map.keys()
        .filter(|k| !EVENT_FIELDS.contains(&k.as_str()))
        .map(|k| {
            let hint = crate::types::did_you_mean(k, EVENT_FIELDS)
                .map(|m| format!("; did you mean `{m}`?"))
                .unwrap_or_default();
            (
                k.clone(),
                format!("unknown event field `{k}`{hint} (an Event as the API server gives it has `metadata`)"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_fields_are_those_an_event_prints() {
        let mut e = crate::event::sample();
        e.raw = Some("{}".into());
        let labels = Arc::new(crate::event::Labels::from([(
            "a".to_string(),
            "b".to_string(),
        )]));
        e.object_labels = Some(labels.clone());
        e.object_annotations = Some(labels.clone());
        e.namespace_labels = Some(labels);
        (e.owner_kind, e.owner_name) = ("Deployment".into(), "web".into());
        let printed: serde_json::Value =
            serde_json::from_str(&crate::event::to_json(&e, true).unwrap()).unwrap();
        let keys: Vec<&String> = printed
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            keys.len(),
            EVENT_FIELDS.len() - 1,
            "all but summary: {printed}"
        );
        for k in &keys {
            assert!(
                EVENT_FIELDS.contains(&k.as_str()),
                "`{k}` is printed but not known"
            );
        }
    }

    #[test]
    fn typos_and_non_events_are_refused() {
        let typo = serde_json::json!({"type": "Warning", "namespce": "shop"});
        let e = event_from_value(&typo, "c").unwrap_err();
        assert!(matches!(e, EventError::UnknownField(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("unknown event field `namespce`; did you mean `namespace`?"),
            "{e}"
        );
        let e = events_from_text("{\"foo\":1}\n", "c").unwrap_err();
        assert!(matches!(e, InputError::Event { n: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("unknown event field `foo`"), "{e}");
        assert!(
            events_from_text("{}", "c")
                .unwrap_err()
                .to_string()
                .contains("not an event")
        );
        assert!(
            events_from_text("[1]", "c")
                .unwrap_err()
                .to_string()
                .contains("not an event")
        );
        assert!(
            event_from_value(
                &serde_json::json!({"type": "Warning", "namespace": "shop"}),
                "c"
            )
            .is_ok()
        );
    }
}
