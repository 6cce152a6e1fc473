//! The `tests:` section of a pipeline file: cases `eventflow test` runs through the pipeline's
//! real stage code, with its sources replaced by the cases' inputs and its sinks capturing what
//! they would write.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::types::{Dur, Invalid};

/// One test case.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// The case's name, printed with its result.
    pub name: String,
    /// The source the inputs enter at. Default: the pipeline's only source.
    #[serde(default)]
    pub at: Option<String>,
    /// The inputs, in order: events, files of events, and `after:` steps that move the clock
    /// (so dedup windows, aggregate summaries and rate limits can be tested).
    pub inputs: Vec<TestInput>,
    /// What each named stage lets out after the inputs (for a sink: what it receives and
    /// would write), keyed by stage id. Stages not named are not checked.
    pub expect: IndexMap<String, Expectation>,
}

/// One input step: exactly one of its fields.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    /// One event: as the API server gives it (either API version; it has `metadata`) or in
    /// eventflow's normalized form (`type`, `reason`, `namespace`, `message`, ...; the fields
    /// not given are empty, `count` 1).
    #[serde(default)]
    pub event: Option<serde_json::Value>,
    /// Several events, entering as one batch.
    #[serde(default)]
    pub events: Option<Vec<serde_json::Value>>,
    /// A file of events (JSON EventList, JSON array, JSON lines or YAML), relative to the
    /// pipeline file.
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub file: Option<std::path::PathBuf>,
    /// Move the clock forward this long (a window closes, a bucket refills).
    #[serde(default)]
    pub after: Option<Dur>,
}

/// What one stage should have let out. Conditions map a field (dotted for nested values:
/// `summary.count`, `body.text`) to a value it must equal, or to one of `{equals: v}`,
/// `{matches: regex}`, `{contains: text}`, `{absent: true}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// How many events (0: the stage lets nothing out, or a sink receives nothing).
    #[serde(default)]
    pub count: Option<usize>,
    /// Conditions on the events, in order: the first map on the first event, and so on.
    #[serde(default)]
    pub events: Option<Vec<IndexMap<String, serde_json::Value>>>,
    /// Conditions every event must meet.
    #[serde(default)]
    pub all: Option<IndexMap<String, serde_json::Value>>,
    /// For a sink: conditions on what it would write, in order — a `webhook`'s requests
    /// (`method`, `url`, `body`), a `sql` sink's rows (column -> value), `stdout`'s lines.
    #[serde(default)]
    pub writes: Option<Vec<IndexMap<String, serde_json::Value>>>,
}

impl TestInput {
    /// Exactly one field is set.
    pub fn validate(&self) -> Option<Invalid> {
        let set = [
            self.event.is_some(),
            self.events.is_some(),
            self.file.is_some(),
            self.after.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        (set != 1).then(|| {
            Invalid::new(
                "",
                "an input is exactly one of `event:`, `events:`, `file:` or `after:`",
            )
        })
    }
}

/// A condition on one value.
#[derive(Debug, Clone)]
pub enum Condition {
    Equals(serde_json::Value),
    Matches(regex::Regex),
    Contains(String),
    Absent,
}

impl Condition {
    /// Reads a condition as written; a bad regex is an error.
    pub fn parse(v: &serde_json::Value) -> Result<Condition, String> {
        if let Some(o) = v.as_object()
            && o.len() == 1
            && let Some((k, arg)) = o.iter().next()
        {
            match k.as_str() {
                "equals" => return Ok(Condition::Equals(arg.clone())),
                "matches" => {
                    let text = arg
                        .as_str()
                        .ok_or("`matches:` takes a regular expression")?;
                    return regex::Regex::new(text)
                        .map(Condition::Matches)
                        .map_err(|e| {
                            let text = e.to_string();
                            format!(
                                "`matches:` {}",
                                text.split_whitespace().collect::<Vec<_>>().join(" ")
                            )
                        });
                }
                "contains" => {
                    let text = arg.as_str().ok_or("`contains:` takes a text")?;
                    return Ok(Condition::Contains(text.to_string()));
                }
                "absent" => return Ok(Condition::Absent),
                _ => {}
            }
        }
        Ok(Condition::Equals(v.clone()))
    }

    /// `None` when `actual` (absent: `None`) meets the condition, else what is wrong.
    pub fn check(&self, actual: Option<&serde_json::Value>) -> Option<String> {
        let shown = |a: Option<&serde_json::Value>| {
            a.map_or_else(
                || "nothing (absent)".to_string(),
                |v| format!("`{}`", plain(v)),
            )
        };
        match self {
            Condition::Absent => match actual {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(format!("expected it absent, found `{}`", plain(v))),
            },
            Condition::Equals(want) => {
                let same = actual.is_some_and(|a| equal(a, want));
                (!same).then(|| format!("expected `{}`, found {}", plain(want), shown(actual)))
            }
            Condition::Matches(re) => {
                let ok = actual.is_some_and(|a| re.is_match(&plain(a)));
                (!ok).then(|| {
                    format!(
                        "expected a match of /{}/, found {}",
                        re.as_str(),
                        shown(actual)
                    )
                })
            }
            Condition::Contains(text) => {
                let ok = actual.is_some_and(|a| plain(a).contains(text.as_str()));
                (!ok).then(|| format!("expected it to contain `{text}`, found {}", shown(actual)))
            }
        }
    }
}

/// Values equal as a person means it: numbers by value, a string and a number or bool by text
/// (`count: "3"` equals 3), objects and lists element by element.
fn equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => x.as_f64() == y.as_f64(),
        (V::String(_), V::Number(_) | V::Bool(_)) | (V::Number(_) | V::Bool(_), V::String(_)) => {
            plain(a) == plain(b)
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// A value as text: a string without its quotes.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The value at a dotted path (`body.text`, `summary.count`, `items.0`).
pub fn lookup<'a>(root: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(root, |v, part| match v {
        serde_json::Value::Object(o) => o.get(part),
        serde_json::Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Every condition of a case, parsed: the problems, as `(field path, message)`.
pub fn check_conditions(case: &TestCase) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The inputs' events: a misspelt field is an error, not an empty field.
    for (i, input) in case.inputs.iter().enumerate() {
        let one = input
            .event
            .iter()
            .map(|e| (format!("inputs[{i}].event"), e));
        let many = input
            .events
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, e)| (format!("inputs[{i}].events[{j}]"), e));
        for (path, e) in one.chain(many) {
            for (key, why) in crate::authoring::unknown_fields(e) {
                let field = if key.is_empty() {
                    path.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.push((field, why));
            }
        }
    }
    for (stage, x) in &case.expect {
        let lists = [("events", &x.events), ("writes", &x.writes)];
        for (what, list) in lists {
            for (i, conds) in list.iter().flatten().enumerate() {
                for (field, c) in conds {
                    if let Err(e) = Condition::parse(c) {
                        out.push((format!("expect.{stage}.{what}[{i}].{field}"), e));
                    }
                }
            }
        }
        for (field, c) in x.all.iter().flatten() {
            if let Err(e) = Condition::parse(c) {
                out.push((format!("expect.{stage}.all.{field}"), e));
            }
        }
    }
    out
}
