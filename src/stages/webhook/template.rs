//! `format: template`: the request body from a minijinja template, JSON-safe.
//!
//! The rule that keeps the output valid JSON: a **string** value is printed escaped for use
//! inside a JSON string literal (quotes, backslashes, newlines, control characters), so the
//! k8m event handler's style `"content": "{{msg}}"` works with any message; **lists, maps and numbers**
//! print as JSON (`{{raw}}` is a JSON array). `{{ x | tojson }}` prints any value as a complete
//! JSON value (a string with its quotes). The rendered body must parse as JSON, or the
//! delivery fails for good (counted) rather than sending an invalid request.
//!
//! Variables: `events` (the batch, as objects with the event fields), `event` (the first),
//! `count`, `timestamp` (unix seconds), and the k8m event handler's `msg` (a text summary of the batch) and
//! `raw` (the events as a JSON array). A request that carries one event also has the event's
//! fields at the top level (`{{ message }}`).
//!
//! Undefined names are errors (minijinja's strict behaviour), found when the file is loaded:
//! [`BodyTemplate::check`] looks at the names the template uses and renders it against sample
//! events, so `validate` reports a typo with the template's line and column and the names that
//! exist. At run time a render error fails the delivery for good (a dead letter when durable);
//! a body with holes is never sent.

use std::sync::Arc;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, Output, State};

use crate::event::Event;

/// A compiled body template.
#[derive(Clone)]
pub struct BodyTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    /// A JSON body (strings escaped, output checked); else plain text (a log line).
    json: bool,
}

/// The variables of every request, whatever it carries.
const REQUEST_NAMES: [&str; 6] = ["events", "event", "count", "timestamp", "msg", "raw"];

impl std::fmt::Debug for BodyTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyTemplate")
    }
}

fn json_formatter(out: &mut Output, _state: &mut State, value: &Value) -> Result<(), Error> {
    let io = |e: std::fmt::Error| Error::new(minijinja::ErrorKind::WriteFailure, e.to_string());
    if value.is_safe() {
        return out
            .write_str(value.as_str().unwrap_or_default())
            .map_err(io);
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => Ok(()),
        ValueKind::String => {
            let quoted = serde_json::to_string(value.as_str().unwrap_or_default())
                .map_err(|e| Error::new(minijinja::ErrorKind::BadSerialization, e.to_string()))?;
            out.write_str(&quoted[1..quoted.len() - 1]).map_err(io)
        }
        _ => {
            let text = serde_json::to_string(value)
                .map_err(|e| Error::new(minijinja::ErrorKind::BadSerialization, e.to_string()))?;
            out.write_str(&text).map_err(io)
        }
    }
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A syntax error, with the line of the template when known.
    #[error("template{}: {detail}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Syntax {
        line: Option<usize>,
        detail: String,
        #[source]
        source: Error,
    },
    #[error("template render: {0}")]
    Render(#[source] Error),
    /// The output is not JSON; `near` is a short, masked excerpt (the body may hold secrets).
    #[error("the template did not produce valid JSON ({source}); near: {near}")]
    NotJson {
        near: String,
        #[source]
        source: serde_json::Error,
    },
}

impl BodyTemplate {
    /// Compiles a template; a syntax error names the line in the template.
    pub fn compile(source: &str) -> Result<BodyTemplate, TemplateError> {
        Self::compile_as(source, true)
    }

    /// Compiles a template of plain text (values print as they are; lists and maps as JSON),
    /// e.g. a log line.
    pub fn compile_text(source: &str) -> Result<BodyTemplate, TemplateError> {
        Self::compile_as(source, false)
    }

    fn compile_as(source: &str, json: bool) -> Result<BodyTemplate, TemplateError> {
        let mut env = Environment::new();
        if json {
            env.set_formatter(json_formatter);
        }
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned("body", source.to_string())
            .map_err(|e| TemplateError::Syntax {
                line: e.line(),
                detail: e.detail().map_or_else(|| e.to_string(), str::to_string),
                source: e,
            })?;
        Ok(BodyTemplate {
            env: Arc::new(env),
            source: Arc::from(source),
            json,
        })
    }

    /// What `validate` finds wrong with this template for a webhook that sends up to
    /// `max_events` events per request: names that do not exist (with the names that do), an
    /// event's field named at the top level of a batch, and what rendering sample events
    /// fails on (with the template's line and column). Empty when it is fine.
    pub fn check(&self, max_events: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let Ok(t) = self.env.get_template("body") else {
            return problems;
        };
        let sample = crate::event::sample();
        let fields: Vec<String> = event_value(&sample)
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let mut used: Vec<String> = t.undeclared_variables(false).into_iter().collect();
        used.sort();
        for name in &used {
            if REQUEST_NAMES.contains(&name.as_str()) {
                continue;
            }
            if fields.contains(name) {
                if max_events > 1 {
                    problems.push(format!(
                        "`{name}` is a field of one event, but this webhook sends up to {max_events} events per request: loop over `events` (`{{% for e in events %}}{{{{ e.{name} }}}}{{% endfor %}}`), use `event.{name}` (the first event), or set `batch.max_events: 1`"
                    ));
                }
                continue;
            }
            let mut known: Vec<&str> = REQUEST_NAMES.to_vec();
            if max_events == 1 {
                known.extend(fields.iter().map(String::as_str));
            }
            let hint = crate::types::did_you_mean(name, known.iter().copied())
                .or_else(|| crate::types::did_you_mean(name, fields.iter().map(String::as_str)))
                .map(|m| format!(": did you mean `{m}`?"))
                .unwrap_or_default();
            problems.push(format!(
                "unknown name `{name}`{hint} (the names are {}{})",
                REQUEST_NAMES.join(", "),
                if max_events == 1 {
                    format!(", and the event's fields: {}", fields.join(", "))
                } else {
                    String::new()
                }
            ));
        }
        // An event's field through `event.` (or at the top level of a one-event template,
        // checked above): every misspelt one at once, with where it is.
        let paths: std::collections::BTreeSet<String> =
            t.undeclared_variables(true).into_iter().collect();
        for path in &paths {
            let mut parts = path.split('.');
            let (Some("event"), Some(field)) = (parts.next(), parts.next()) else {
                continue;
            };
            if fields.iter().any(|f| f == field) {
                continue;
            }
            let hint = crate::types::did_you_mean(field, fields.iter().map(String::as_str))
                .map(|m| format!("; did you mean `event.{m}`?"))
                .unwrap_or_default();
            let at = self.position_of(&format!("event.{field}"));
            problems.push(format!(
                "template{at}: `event.{field}` is undefined{hint} (an event's fields: {})",
                fields.join(", ")
            ));
        }
        if !problems.is_empty() {
            return problems;
        }
        let second = crate::event::EventData {
            uid: "5e1f0a9b-7c2d-4e3f-8a9b-0c1d2e3f4a5b".into(),
            reason: "Unhealthy".into(),
            message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
            ..sample.clone()
        };
        let mut samples = vec![vec![sample.clone()]];
        if max_events > 1 {
            samples.push(vec![sample, second]);
        }
        for batch in samples {
            if let Err(e) = self.render_data(&batch.iter().collect::<Vec<_>>()) {
                problems.push(self.describe(&e, batch.len()));
                break;
            }
        }
        problems
    }

    /// " line L, column C" of the first place `needle` is written in the template, or "".
    fn position_of(&self, needle: &str) -> String {
        let Some(at) = self.source.find(needle) else {
            return String::new();
        };
        let before = &self.source[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(at, |i| at - i - 1) + 1;
        format!(" line {line}, column {column}")
    }

    /// A render error with the template's line and column.
    fn describe(&self, e: &TemplateError, events: usize) -> String {
        let what = if events == 1 {
            "one sample event"
        } else {
            "a sample batch of two events"
        };
        match e {
            TemplateError::Render(err) => {
                let at = match (err.line(), err.range()) {
                    (Some(line), Some(r)) => {
                        let start = self.source[..r.start.min(self.source.len())]
                            .rfind('\n')
                            .map_or(0, |i| i + 1);
                        format!(" line {line}, column {}", r.start - start + 1)
                    }
                    (Some(line), None) => format!(" line {line}"),
                    _ => String::new(),
                };
                let hint = if err.kind() == minijinja::ErrorKind::UndefinedError
                    && ["object_labels.", "namespace_labels.", "object_annotations."]
                        .iter()
                        .any(|m| self.source.contains(m))
                {
                    "; a label can be absent (an event `enrich` found no labels for), so give it a default: `{{ object_labels.team | default(\"none\") }}`"
                } else {
                    ""
                };
                format!(
                    "template{at}: {} (rendering {what}){hint}",
                    err.detail()
                        .map_or_else(|| err.kind().to_string(), str::to_string)
                )
            }
            other => format!("{other} (rendering {what})"),
        }
    }

    /// Renders the body for a batch; the result is valid JSON or an error.
    pub fn render(&self, events: &[Event]) -> Result<String, TemplateError> {
        let data: Vec<&crate::event::EventData> = events.iter().map(|e| &**e).collect();
        self.render_data(&data)
    }

    /// Renders the template for one event (a log line).
    pub fn render_event(&self, e: &crate::event::EventData) -> Result<String, TemplateError> {
        self.render_data(&[e])
    }

    fn render_data(&self, events: &[&crate::event::EventData]) -> Result<String, TemplateError> {
        let values: Vec<serde_json::Value> = events.iter().map(|e| event_value(e)).collect();
        let msg = events
            .iter()
            .map(|e| super::format::event_text(e, super::format::Markup::Plain))
            .collect::<Vec<_>>()
            .join("\n\n");
        // The events become template values once; `events`, `raw` and `event` share them.
        let list = Value::from(minijinja::value::Serde(&values));
        let mut ctx: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        // One event: its fields at the top level too; the request's own names win.
        if let [serde_json::Value::Object(one)] = values.as_slice() {
            for (k, v) in one {
                ctx.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
            }
        }
        ctx.insert(
            "event".into(),
            list.get_item(&Value::from(0)).unwrap_or(Value::from(())),
        );
        ctx.insert("raw".into(), list.clone());
        ctx.insert("events".into(), list);
        ctx.insert("count".into(), Value::from(events.len()));
        ctx.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().timestamp()),
        );
        ctx.insert("msg".into(), Value::from(msg));
        let t = self
            .env
            .get_template("body")
            .map_err(TemplateError::Render)?;
        let body = t.render(Value::from(ctx)).map_err(TemplateError::Render)?;
        if !self.json {
            return Ok(body);
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&body).map_err(|e| {
            // The body holds event data and maybe secrets: show only a short, redacted
            // excerpt around the error, never the whole of it.
            TemplateError::NotJson {
                near: excerpt(&body, e.line(), e.column()),
                source: e,
            }
        })?;
        Ok(body)
    }
}

/// A template in the config: compiled when the file is loaded, so a syntax error is reported
/// with the file's line and column of the `template` field.
#[derive(Debug, Clone)]
pub struct TemplateField {
    pub source: String,
    pub compiled: BodyTemplate,
}

impl<'de> serde::Deserialize<'de> for TemplateField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        let compiled = BodyTemplate::compile(&source).map_err(serde::de::Error::custom)?;
        Ok(TemplateField { source, compiled })
    }
}

/// A plain-text template in the config (a log line), compiled when the file is loaded.
#[derive(Debug, Clone)]
pub struct TextTemplateField {
    pub source: String,
    pub compiled: BodyTemplate,
}

impl<'de> serde::Deserialize<'de> for TextTemplateField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        let compiled = BodyTemplate::compile_text(&source).map_err(serde::de::Error::custom)?;
        Ok(TextTemplateField { source, compiled })
    }
}

/// Written back as its source (the reference states defaults through this).
impl serde::Serialize for TextTemplateField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl schemars::JsonSchema for TextTemplateField {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TextTemplate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A minijinja template of one line of text, rendered per event: the event's fields at the top level (`{{ reason }}`, `{{ object_labels.team }}`), values printed as they are. Compiled when the file is loaded."
        })
    }
}

impl schemars::JsonSchema for TemplateField {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Template".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A minijinja template that renders a JSON body. Variables: `events` (the batch), `event` (its first event), `count`, `timestamp`, `msg` (a text summary), `raw` (the events as a JSON array). A string prints escaped for use inside a JSON string; `{{ x | tojson }}` prints any value as a whole JSON value. Compiled when the file is loaded."
        })
    }
}

/// An event as a template sees it: its fields, `summary` null when it is not a summary (so
/// `{% if summary %}` works under strict undefined), and the fields `enrich` adds present even
/// on an event it did not enrich (empty maps and texts), so `{{ object_labels.team |
/// default("none") }}` works on every event.
fn event_value(e: &crate::event::EventData) -> serde_json::Value {
    // Straight to a value (not through JSON text and back).
    let mut v = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.entry("summary").or_insert(serde_json::Value::Null);
        for (map, _) in crate::event::LabelMap::ALL {
            o.entry(map)
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        }
        for text in ["owner_kind", "owner_name"] {
            o.entry(text)
                .or_insert_with(|| serde_json::Value::String(String::new()));
        }
        // When it first happened, in milliseconds and as ISO 8601 (what kubernetes-event-exporter's
        // `.GetTimestampMs` and `.GetTimestampISO8601` give).
        let at = e.first_seen.or(e.last_seen);
        o.insert(
            "event_time_ms".into(),
            at.map_or(serde_json::Value::Null, |t| t.timestamp_millis().into()),
        );
        o.insert(
            "event_time_iso".into(),
            at.map_or(serde_json::Value::Null, |t| {
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().into()
            }),
        );
    }
    v
}

/// At most 40 characters of `body` before the error position (line, column; 1-based), with
/// every run of letters and digits longer than 3 replaced by `***`: enough to see the JSON
/// shape that broke, not the values.
fn excerpt(body: &str, line: usize, column: usize) -> String {
    let line_text = body.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let end = line_text
        .char_indices()
        .nth(column)
        .map_or(line_text.len(), |(i, _)| i);
    let before = &line_text[..end];
    let start = before.char_indices().rev().nth(39).map_or(0, |(i, _)| i);
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().count() > 3 {
            out.push_str("***");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in before[start..].chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    format!("`{out}` (line {line}, column {column})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventData, Finalizers};

    fn ev(msg: &str) -> Event {
        Event::new(
            EventData {
                cluster: std::sync::Arc::from("c"),
                uid: "u1".into(),
                namespace: "shop".into(),
                reason: "BackOff".into(),
                type_: "Warning".into(),
                message: msg.into(),
                ..EventData::default()
            },
            Finalizers::None,
        )
    }

    #[test]
    fn labels_render_with_a_default_and_a_missing_one_without_it_is_explained() {
        let t = BodyTemplate::compile(
            r#"{"team": "{{ namespace_labels.team | default("none") }}", "owner": "{{ owner_kind }}"}"#,
        )
        .unwrap();
        assert!(t.check(1).is_empty(), "{:?}", t.check(1));
        assert_eq!(
            t.render(&[ev("m")]).unwrap(),
            r#"{"team": "none", "owner": ""}"#
        );
        let e = ev("m").modify(|d| {
            d.namespace_labels = Some(std::sync::Arc::new(crate::event::Labels::from([(
                "team".into(),
                "payments".into(),
            )])));
            d.owner_kind = "Deployment".into();
        });
        assert_eq!(
            t.render(&[e]).unwrap(),
            r#"{"team": "payments", "owner": "Deployment"}"#
        );
        let strict = BodyTemplate::compile(r#"{"team": "{{ object_labels.team }}"}"#).unwrap();
        let problems = strict.check(1);
        assert!(
            problems.iter().any(|p| p.contains("give it a default")),
            "{problems:?}"
        );
    }

    #[test]
    fn hostile_messages_still_give_valid_json() {
        let t = BodyTemplate::compile(
            r#"{"msgtype":"text","text":{"content":"{{msg}}"},"n":{{count}},"events":{{raw}},"m":{{ event.message | tojson }}}"#,
        )
        .unwrap();
        for msg in [
            "quote \" and \\ backslash",
            "line\nbreak\ttab",
            "emoji 🚀 \u{0001}",
            "</script>{{",
        ] {
            let body = t.render(&[ev(msg)]).unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["m"], msg);
            assert_eq!(v["events"][0]["message"], msg);
            assert_eq!(v["n"], 1);
            assert!(v["text"]["content"].as_str().unwrap().contains(msg));
        }
    }

    #[test]
    fn syntax_errors_name_the_line_and_bad_output_is_refused() {
        let e = BodyTemplate::compile("{\n  \"a\": {{ msg \n}").unwrap_err();
        assert!(
            matches!(e, TemplateError::Syntax { line: Some(_), .. }),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("template line"), "{e}");
        let t = BodyTemplate::compile("not json {{count}}").unwrap();
        let e = t.render(&[ev("x")]).unwrap_err();
        assert!(matches!(e, TemplateError::NotJson { .. }), "{e:?}");
        assert!(e.to_string().contains("valid JSON"), "{e}");
    }
}
