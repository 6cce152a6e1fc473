//! `eventflow test`: runs the `tests:` cases of a pipeline through its real stage code. Each
//! case gets a fresh topology on a paused clock: the source it enters at is fed the case's
//! inputs, every other source is silent, each transform's output is captured, and each sink is
//! replaced by a capture of what it receives, whose writes (requests, rows, lines) are made by
//! the sink's own code without sending anything. Time moves only by `after:` steps.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use super::harness::{ChannelSource, CountingSink, Feeder, spec};
use crate::component::StageKind;
use crate::config::cases::{Condition, Expectation, TestCase, TestInput, lookup};
use crate::config::{Pipeline, StageSpec};
use crate::event::EventData;

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub passed: bool,
    /// What did not hold, each naming the stage, the event and the field.
    pub failures: Vec<String>,
}

/// Runs every case of `cases` against `p`.
pub fn run_cases(p: &Pipeline, cases: &[TestCase]) -> Vec<CaseReport> {
    cases.iter().map(|c| run_case(p, c)).collect()
}

fn run_case(p: &Pipeline, case: &TestCase) -> CaseReport {
    let failures = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt.block_on(run_in(p, case)),
        Err(e) => vec![format!("cannot start a runtime: {e}")],
    };
    CaseReport {
        name: case.name.clone(),
        passed: failures.is_empty(),
        failures,
    }
}

/// The prefix of the stages that capture a transform's or source's output.
const TAP: &str = "__out_";

/// The case's pipeline: the entry source fed by the returned feeder, other sources silent,
/// transforms as they are with their output captured, sinks captured.
fn harness(
    p: &Pipeline,
    entry: &str,
) -> (Pipeline, Option<Feeder>, IndexMap<String, CountingSink>) {
    let mut stages = IndexMap::new();
    let mut captures = IndexMap::new();
    let mut feeder = None;
    for s in p.stages.values() {
        let inputs: Vec<&str> = s.inputs.iter().map(String::as_str).collect();
        match s.kind {
            StageKind::Sink => {
                let c = CountingSink::collecting();
                stages.insert(
                    s.id.clone(),
                    spec(
                        &s.id,
                        s.type_name,
                        StageKind::Sink,
                        &inputs,
                        Arc::new(c.clone()),
                        0,
                    ),
                );
                captures.insert(s.id.clone(), c);
                continue;
            }
            StageKind::Source => {
                let (src, feed) = ChannelSource::new(64);
                if s.id == entry {
                    feeder = Some(feed);
                }
                stages.insert(
                    s.id.clone(),
                    spec(&s.id, s.type_name, StageKind::Source, &[], Arc::new(src), 0),
                );
            }
            StageKind::Transform => {
                let spec = match s.config.offline() {
                    Some(c) => spec(&s.id, s.type_name, StageKind::Transform, &inputs, c, 0),
                    None => s.clone(),
                };
                stages.insert(s.id.clone(), spec);
            }
        }
        let tap = format!("{TAP}{}", s.id);
        let c = CountingSink::collecting();
        stages.insert(
            tap.clone(),
            spec(
                &tap,
                "capture",
                StageKind::Sink,
                &[&s.id],
                Arc::new(c.clone()),
                0,
            ),
        );
        captures.insert(s.id.clone(), c);
    }
    (Pipeline::of_stages(stages), feeder, captures)
}

async fn run_in(p: &Pipeline, case: &TestCase) -> Vec<String> {
    let entry = match &case.at {
        Some(a) => a.clone(),
        None => match p.stages.values().find(|s| s.kind == StageKind::Source) {
            Some(s) => s.id.clone(),
            None => return vec!["the pipeline has no source".into()],
        },
    };
    let (pipeline, feeder, captures) = harness(p, &entry);
    let Some(feeder) = feeder else {
        return vec![format!("`{entry}` is not a source of this pipeline")];
    };
    let topo = match crate::engine::Topology::start(pipeline).await {
        Ok(t) => t,
        Err(e) => return vec![format!("the pipeline cannot start: {e}")],
    };
    let mut failures = Vec::new();
    for (i, input) in case.inputs.iter().enumerate() {
        match input_events(input) {
            Ok(Some(events)) => {
                // The acknowledgement is not awaited: an aggregate holds it until its window
                // closes.
                drop(feeder.send(events).await);
            }
            Ok(None) => {
                if let Some(d) = input.after {
                    tokio::time::advance(d.0).await;
                }
            }
            Err(e) => {
                failures.push(format!("input {}: {e}", i + 1));
                break;
            }
        }
        settle(&captures).await;
    }
    if failures.is_empty() {
        for (stage, x) in &case.expect {
            let Some(c) = captures.get(stage) else {
                failures.push(format!("stage `{stage}`: no such stage"));
                continue;
            };
            let Some(s) = p.stages.get(stage) else {
                continue;
            };
            failures.extend(check(s, x, &c.events()));
        }
    }
    drop(feeder);
    topo.shutdown(Duration::from_secs(10)).await;
    failures
}

/// The events of one input step; `None` for `after:`.
fn input_events(input: &TestInput) -> Result<Option<Vec<EventData>>, String> {
    const CLUSTER: &str = "default";
    if let Some(e) = &input.event {
        return super::event_from_value(e, CLUSTER)
            .map(|e| Some(vec![e]))
            .map_err(|e| e.to_string());
    }
    if let Some(list) = &input.events {
        return list
            .iter()
            .enumerate()
            .map(|(i, e)| {
                super::event_from_value(e, CLUSTER)
                    .map_err(|source| super::InputError::Event { n: i + 1, source }.to_string())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some);
    }
    if let Some(path) = &input.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return super::events_from_text(&text, CLUSTER)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    Ok(None)
}

/// Lets every event in flight reach where it is going: the pipeline's tasks run until the
/// captures stop changing. The clock does not move meanwhile (this task never lets the runtime
/// idle, and a paused clock moves only when it idles).
async fn settle(captures: &IndexMap<String, CountingSink>) {
    let mut last = u64::MAX;
    let mut stable = 0;
    for _ in 0..10_000 {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let n: u64 = captures.values().map(CountingSink::get).sum();
        if n == last {
            stable += 1;
            if stable == 5 {
                return;
            }
        } else {
            stable = 0;
            last = n;
        }
    }
}

/// An event as conditions see it: its fields, `summary` when it is one.
fn as_json(e: &EventData) -> serde_json::Value {
    crate::event::to_json(e, false)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// The failures of one stage's expectation.
fn check(s: &StageSpec, x: &Expectation, events: &[EventData]) -> Vec<String> {
    let stage = &s.id;
    let mut out = Vec::new();
    let what = if s.kind == StageKind::Sink {
        "received"
    } else {
        "let out"
    };
    if let Some(n) = x.count
        && events.len() != n
    {
        out.push(format!(
            "stage `{stage}`: expected {n} events, {what} {}{}",
            events.len(),
            summary(events)
        ));
    }
    let values: Vec<serde_json::Value> = events.iter().map(as_json).collect();
    for (i, conds) in x.events.iter().flatten().enumerate() {
        match values.get(i) {
            Some(v) => out.extend(
                conditions(conds, v)
                    .into_iter()
                    .map(|m| format!("stage `{stage}`: event {}: {m}", i + 1)),
            ),
            None => out.push(format!(
                "stage `{stage}`: expected an event {}, {what} {}",
                i + 1,
                values.len()
            )),
        }
    }
    for (i, v) in values.iter().enumerate() {
        for m in conditions(x.all.iter().flatten(), v) {
            out.push(format!("stage `{stage}`: event {}: {m}", i + 1));
        }
    }
    if let Some(writes) = &x.writes {
        match s.config.preview(events) {
            None => out.push(format!(
                "stage `{stage}`: `writes:` is for sinks that write (webhook, sql, stdout); `{}` does not",
                s.type_name
            )),
            Some(made) => {
                for (i, conds) in writes.iter().enumerate() {
                    match made.get(i) {
                        Some(Ok(v)) => out.extend(
                            conditions(conds, v)
                                .into_iter()
                                .map(|m| format!("stage `{stage}`: write {}: {m}", i + 1)),
                        ),
                        Some(Err(e)) => out.push(format!(
                            "stage `{stage}`: write {} could not be made: {e}",
                            i + 1
                        )),
                        None => out.push(format!(
                            "stage `{stage}`: expected a write {}, it would make {}",
                            i + 1,
                            made.len()
                        )),
                    }
                }
            }
        }
    }
    out
}

/// ` (BackOff, Unhealthy)`: the reasons of what a stage let out, to tell which events they were.
fn summary(events: &[EventData]) -> String {
    if events.is_empty() || events.len() > 5 {
        return String::new();
    }
    format!(
        " ({})",
        events
            .iter()
            .map(|e| format!("{} {}", e.reason, e.object_name))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The failed conditions of `conds` on `v`, as `` `field`: what is wrong ``.
fn conditions<'a>(
    conds: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
    v: &serde_json::Value,
) -> Vec<String> {
    conds
        .into_iter()
        .filter_map(|(field, c)| {
            let cond = match Condition::parse(c) {
                Ok(c) => c,
                Err(e) => return Some(format!("`{field}`: {e}")),
            };
            cond.check(lookup(v, field))
                .map(|m| format!("`{field}`: {m}"))
        })
        .collect()
}
