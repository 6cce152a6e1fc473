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
//! `raw` (the events as a JSON array).

use std::sync::Arc;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, Output, State};

use crate::event::Event;

/// A compiled body template.
#[derive(Clone)]
pub struct BodyTemplate {
    env: Arc<Environment<'static>>,
}

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
        let mut env = Environment::new();
        env.set_formatter(json_formatter);
        env.add_template_owned("body", source.to_string())
            .map_err(|e| TemplateError::Syntax {
                line: e.line(),
                detail: e.detail().map_or_else(|| e.to_string(), str::to_string),
                source: e,
            })?;
        Ok(BodyTemplate { env: Arc::new(env) })
    }

    /// Renders the body for a batch; the result is valid JSON or an error.
    pub fn render(&self, events: &[Event]) -> Result<String, TemplateError> {
        let values: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                crate::event::to_json(e, false)
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(serde_json::Value::Null)
            })
            .collect();
        let msg = events
            .iter()
            .map(|e| super::format::event_text(e, super::format::Markup::Plain))
            .collect::<Vec<_>>()
            .join("\n\n");
        let ctx = minijinja::context! {
            events => Value::from(minijinja::value::Serde(&values)),
            raw => Value::from(minijinja::value::Serde(&values)),
            event => Value::from(minijinja::value::Serde(values.first())),
            count => events.len(),
            timestamp => chrono::Utc::now().timestamp(),
            msg => msg,
        };
        let t = self
            .env
            .get_template("body")
            .map_err(TemplateError::Render)?;
        let body = t.render(ctx).map_err(TemplateError::Render)?;
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
