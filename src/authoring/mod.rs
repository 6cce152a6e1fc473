//! The authoring tools: `eventflow explain` (what each stage would do with one event, and why)
//! and `eventflow test` (the `tests:` cases of a pipeline file, run through the real stage code
//! with sources replaced by the cases' inputs and sinks capturing what they would write).
//! Neither touches the network or a database.

pub mod explain;
pub mod harness;
pub mod test;

use std::sync::Arc;

use crate::event::EventData;

/// Events from text a person wrote: JSON, JSON lines or YAML; one event, a list, or an `EventList`; each in
/// the API server's form (either API version: it has `metadata`) or eventflow's normalized form
/// (the fields `stdout` prints). `cluster` names the cluster of API-server events.
pub fn events_from_text(text: &str, cluster: &str) -> Result<Vec<EventData>, String> {
    let lines = || -> Option<serde_json::Value> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).ok())
            .collect::<Option<Vec<_>>>()
            .map(serde_json::Value::Array)
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if let Some(v) = lines() => v,
        Err(json_error) => crate::yaml::parse(text).map(|n| n.to_json()).map_err(|e| {
            format!(
                "neither JSON ({json_error}) nor YAML (line {}, column {}: {})",
                e.pos.line, e.pos.column, e.message
            )
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
        other => {
            return Err(format!(
                "expected an event or a list of events, found {other}"
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            event_from_value(item, cluster).map_err(|e| format!("event {}: {e}", i + 1))
        })
        .collect()
}

/// One event in either form ([`events_from_text`]).
pub fn event_from_value(item: &serde_json::Value, cluster: &str) -> Result<EventData, String> {
    if item.get("metadata").is_some() {
        let text = item.to_string();
        crate::event::decode(&text, &Arc::from(cluster)).map_err(|e| e.to_string())
    } else {
        let mut e: EventData = serde_json::from_value(item.clone()).map_err(|e| e.to_string())?;
        if e.cluster.is_empty() {
            e.cluster = Arc::from(cluster);
        }
        if e.count == 0 {
            e.count = 1;
        }
        Ok(e)
    }
}
