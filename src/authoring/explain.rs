//! `eventflow explain PIPELINE EVENT`: the event through the pipeline's stages, in graph
//! order, with what each stage would do and why.

use serde::Serialize;

use crate::component::{Explanation, StageKind, Step, Verdict};
use crate::config::Pipeline;
use crate::event::EventData;

/// One stage's part in the walk.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub kind: &'static str,
    /// `None` when the event does not reach the stage (an earlier stage dropped it).
    #[serde(flatten)]
    pub explanation: Option<Explanation>,
}

/// Why `--stage` cannot be where the event enters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("stage `{0}` is not a source")]
    NotASource(String),
    #[error("no stage `{stage}` (sources: {})", sources.join(", "))]
    NoSuchStage { stage: String, sources: Vec<String> },
}

/// Walks `event` through `p`, entering at `at` (a source's id) or at every source.
pub fn explain(
    p: &Pipeline,
    event: &EventData,
    at: Option<&str>,
) -> Result<Vec<StageReport>, EntryError> {
    if let Some(a) = at {
        match p.stages.get(a) {
            Some(s) if s.kind == StageKind::Source => {}
            Some(_) => return Err(EntryError::NotASource(a.to_string())),
            None => {
                return Err(EntryError::NoSuchStage {
                    stage: a.to_string(),
                    sources: sources(p),
                });
            }
        }
    }
    let mut reports: Vec<StageReport> = Vec::new();
    // What each stage reached lets out: the event itself, or what the stage made of it.
    let mut emitted: std::collections::HashMap<String, EventData> =
        std::collections::HashMap::new();
    for id in crate::config::graph::topological_order(&p.stages) {
        let Some(spec) = p.stages.get(&id) else {
            continue;
        };
        let (explanation, input) = if spec.kind == StageKind::Source {
            let e = (at.is_none_or(|a| a == id)).then(|| {
                Explanation::new(Verdict::Passes, vec![Step::note("the event enters here")])
            });
            (e, Some(event.clone()))
        } else {
            let input = spec.inputs.iter().find_map(|input| {
                reports
                    .iter()
                    .any(|r| {
                        &r.stage == input
                            && r.explanation.as_ref().is_some_and(|x| {
                                matches!(x.verdict, Verdict::Passes | Verdict::Held)
                            })
                    })
                    .then(|| emitted.get(input).cloned())
                    .flatten()
            });
            (input.as_ref().map(|e| spec.config.explain(e)), input)
        };
        if let (Some(x), Some(input)) = (&explanation, input) {
            let out = x.emits.as_deref().cloned().unwrap_or(input);
            emitted.insert(id.clone(), out);
        }
        reports.push(StageReport {
            stage: id.clone(),
            type_name: spec.type_name,
            kind: kind_name(spec.kind),
            explanation,
        });
    }
    Ok(reports)
}

fn sources(p: &Pipeline) -> Vec<String> {
    p.stages
        .values()
        .filter(|s| s.kind == StageKind::Source)
        .map(|s| s.id.clone())
        .collect()
}

fn kind_name(k: StageKind) -> &'static str {
    match k {
        StageKind::Source => "source",
        StageKind::Transform => "transform",
        StageKind::Sink => "sink",
    }
}

/// The walk as a person reads it; `colour` for a terminal.
pub fn render_text(event: &EventData, reports: &[StageReport], colour: bool) -> String {
    let paint = |code: &str, s: &str| {
        if colour {
            format!("\u{1b}[{code}m{s}\u{1b}[0m")
        } else {
            s.to_string()
        }
    };
    let mut out = format!(
        "event {} {} {}/{} in {} ({}, count {})\n",
        event.type_,
        event.reason,
        event.kind,
        event.object_name,
        if event.namespace.is_empty() {
            "the cluster scope"
        } else {
            &event.namespace
        },
        event.cluster,
        event.count
    );
    let mut unreached = Vec::new();
    for r in reports {
        let Some(x) = &r.explanation else {
            unreached.push(r.stage.as_str());
            continue;
        };
        let verdict = match x.verdict {
            Verdict::Passes => paint("32", "passes"),
            Verdict::Dropped => paint("31", "dropped"),
            Verdict::Held => paint("33", "held"),
            Verdict::Delivered => paint("32", "delivered"),
        };
        out.push_str(&format!(
            "\n{} ({} {}): {verdict}\n",
            paint("1", &r.stage),
            r.type_name,
            r.kind
        ));
        for s in &x.steps {
            let mark = match s.ok {
                Some(true) => paint("32", "✔"),
                Some(false) => paint("31", "✘"),
                None => "·".to_string(),
            };
            out.push_str(&format!("  {mark} {}\n", s.text));
        }
        if let Some(o) = &x.output {
            let pretty = serde_json::to_string_pretty(o).unwrap_or_default();
            for line in pretty.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    if !unreached.is_empty() {
        out.push_str(&format!(
            "\nnot reached (an earlier stage dropped the event): {}\n",
            unreached.join(", ")
        ));
    }
    out
}
