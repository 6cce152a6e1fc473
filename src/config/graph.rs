//! Checks on the shape of the stage graph, and its rendering for `eventflow graph`.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

use super::{Problem, StageSpec};
use crate::component::StageKind;
use crate::yaml::{Pos, Value};

fn input_pos(spec: &StageSpec, index: usize) -> Option<Pos> {
    let n = spec.node.get("inputs")?;
    match &n.value {
        Value::Seq(items) => items.get(index).map(|i| i.pos),
        _ => Some(n.pos),
    }
}

/// The most names a message lists.
const MAX_LISTED: usize = 20;

/// `items` joined by `sep`, the first [`MAX_LISTED`] of them and then how many more.
fn shorten<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    shorten_iter(items.iter(), items.len(), sep)
}

fn shorten_iter<T: std::fmt::Display>(
    items: impl Iterator<Item = T>,
    len: usize,
    sep: &str,
) -> String {
    let mut out: Vec<String> = items.take(MAX_LISTED).map(|i| i.to_string()).collect();
    if len > MAX_LISTED {
        out.push(format!("... ({} more)", len - MAX_LISTED));
    }
    out.join(sep)
}

/// Stages that could not be parsed, with their inputs (and where each is written).
pub type Failed = HashMap<String, Vec<(String, Option<Pos>)>>;

/// Adds a problem for every dangling, misdirected or cyclic edge. Edges to stages in `failed`
/// are not reported again; their own inputs are still checked for unknown ids.
pub fn check(stages: &IndexMap<String, StageSpec>, failed: &Failed, problems: &mut Vec<Problem>) {
    check_inputs_of_failed(stages, failed, problems);
    check_edges(stages, failed, problems);
    check_unread(stages, failed, problems);
    check_ends(stages, failed, problems);
    check_cycles(stages, problems);
}

/// Inputs of stages that failed to parse that name no stage at all.
fn check_inputs_of_failed(
    stages: &IndexMap<String, StageSpec>,
    failed: &Failed,
    problems: &mut Vec<Problem>,
) {
    for (id, inputs) in failed {
        for (input, pos) in inputs {
            if !stages.contains_key(input) && !failed.contains_key(input) {
                problems.push(Problem::new(
                    *pos,
                    Some(id),
                    Some("inputs"),
                    format!("unknown input `{input}`"),
                ));
            }
        }
    }
}

/// Each stage's `inputs`: present for transforms and sinks, absent for sources, known, not
/// twice, not a sink, not itself.
fn check_edges(stages: &IndexMap<String, StageSpec>, failed: &Failed, problems: &mut Vec<Problem>) {
    // Each unknown name's "did you mean" once, and only for the first ones: a suggestion
    // looks at every stage, so one per problem would make many problems quadratic (10,000
    // stages naming an unknown input took 16 s). Only the first problems are printed anyway.
    let mut hints: HashMap<&str, String> = HashMap::new();
    let known = shorten_iter(stages.keys(), stages.len(), ", ");
    for spec in stages.values() {
        let inputs_pos = spec.node.get("inputs").map(|n| n.pos);
        match spec.kind {
            StageKind::Source if !spec.inputs.is_empty() => problems.push(Problem::new(
                inputs_pos,
                Some(&spec.id),
                Some("inputs"),
                format!(
                    "`{}` is a source: it reads from outside and takes no `inputs`",
                    spec.type_name
                ),
            )),
            StageKind::Transform | StageKind::Sink if spec.inputs.is_empty() => {
                problems.push(Problem::new(
                    Some(spec.pos),
                    Some(&spec.id),
                    Some("inputs"),
                    "missing `inputs:`: name the stage(s) this one reads from",
                ));
            }
            _ => {}
        }
        let mut seen = HashSet::new();
        for (i, input) in spec.inputs.iter().enumerate() {
            let pos = input_pos(spec, i);
            if !seen.insert(input) {
                problems.push(Problem::new(
                    pos,
                    Some(&spec.id),
                    Some("inputs"),
                    format!("`{input}` is listed twice: each event would arrive twice"),
                ));
                continue;
            }
            match stages.get(input) {
                None if failed.contains_key(input) => {}
                None => {
                    let n = hints.len();
                    let hint = hints.entry(input.as_str()).or_insert_with(|| {
                        if n >= 2 * super::MAX_PRINTED_PROBLEMS {
                            return String::new();
                        }
                        crate::types::did_you_mean(input, stages.keys().map(String::as_str))
                            .map(|t| format!(": did you mean `{t}`?"))
                            .unwrap_or_default()
                    });
                    problems.push(Problem::new(
                        pos,
                        Some(&spec.id),
                        Some("inputs"),
                        format!("unknown input `{input}`{hint} (stages in this file: {known})"),
                    ));
                }
                Some(up) if up.kind == StageKind::Sink => problems.push(Problem::new(
                    pos,
                    Some(&spec.id),
                    Some("inputs"),
                    format!(
                        "`{input}` is a sink (`{}`): a sink has no output to read from",
                        up.type_name
                    ),
                )),
                Some(_) if input == &spec.id => problems.push(Problem::new(
                    pos,
                    Some(&spec.id),
                    Some("inputs"),
                    "a stage cannot read its own output",
                )),
                Some(_) => {}
            }
        }
    }
}

/// Sources and transforms whose output nobody reads.
fn check_unread(
    stages: &IndexMap<String, StageSpec>,
    failed: &Failed,
    problems: &mut Vec<Problem>,
) {
    let read: HashSet<&str> = stages
        .values()
        .flat_map(|s| s.inputs.iter().map(String::as_str))
        .chain(failed.values().flatten().map(|(i, _)| i.as_str()))
        .collect();
    for spec in stages.values() {
        if spec.kind != StageKind::Sink && !read.contains(spec.id.as_str()) {
            problems.push(Problem::new(
                Some(spec.pos),
                Some(&spec.id),
                None,
                "no stage reads this stage's output, so its events would go nowhere: add it to some stage's `inputs` or remove it",
            ));
        }
    }
}

/// A pipeline needs a source and a sink.
fn check_ends(stages: &IndexMap<String, StageSpec>, failed: &Failed, problems: &mut Vec<Problem>) {
    if !stages.is_empty() && failed.is_empty() {
        if !stages.values().any(|s| s.kind == StageKind::Source) {
            problems.push(Problem::new(
                None,
                None,
                Some("stages"),
                "the pipeline has no source stage",
            ));
        }
        if !stages.values().any(|s| s.kind == StageKind::Sink) {
            problems.push(Problem::new(
                None,
                None,
                Some("stages"),
                "the pipeline has no sink stage",
            ));
        }
    }
}

fn check_cycles(stages: &IndexMap<String, StageSpec>, problems: &mut Vec<Problem>) {
    if let Some(cycle) = find_cycle(stages) {
        let first = &cycle[0];
        problems.push(Problem::new(
            stages.get(first).map(|s| s.pos),
            Some(first),
            Some("inputs"),
            format!("the stages form a cycle: {}", shorten(&cycle, " -> ")),
        ));
    }
}

/// Returns one cycle (as a path of ids that ends where it starts), if any. Iterative: a
/// pipeline of ten thousand chained stages does not exhaust a worker thread's stack.
fn find_cycle(stages: &IndexMap<String, StageSpec>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::with_capacity(stages.len());
    for root in stages.keys() {
        if marks.contains_key(root.as_str()) {
            continue;
        }
        // The path from `root`, each with the index of the next input to follow.
        let mut stack: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        marks.insert(root, Mark::Open);
        while let Some((id, next)) = stack.last_mut() {
            let inputs = stages.get(*id).map_or(&[][..], |s| s.inputs.as_slice());
            let Some(input) = inputs.get(*next) else {
                marks.insert(id, Mark::Done);
                stack.pop();
                continue;
            };
            *next += 1;
            let input = input.as_str();
            if input == *id || !stages.contains_key(input) {
                continue; // reported as a self-read or an unknown input
            }
            match marks.get(input) {
                Some(Mark::Done) => {}
                Some(Mark::Open) => {
                    let start = stack.iter().position(|(s, _)| *s == input).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|(s, _)| s.to_string()).collect();
                    cycle.push(input.to_string());
                    return Some(cycle);
                }
                None => {
                    marks.insert(input, Mark::Open);
                    stack.push((input, 0));
                }
            }
        }
    }
    None
}

/// Whether a stage downstream of `source` (directly or through others) reads the events' `raw`
/// object.
pub fn raw_needed(stages: &IndexMap<String, StageSpec>, source: &str) -> bool {
    let mut reached: HashSet<String> = HashSet::from([source.to_string()]);
    for id in topological_order(stages) {
        let spec = &stages[&id];
        if spec.inputs.iter().any(|i| reached.contains(i)) {
            if spec.config.uses_raw() {
                return true;
            }
            reached.insert(id);
        }
    }
    false
}

/// Stage ids in an order where every stage comes after all of its inputs (file order among
/// stages that are ready together). Stages on a cycle are left out; validation reports it.
pub fn topological_order(stages: &IndexMap<String, StageSpec>) -> Vec<String> {
    let mut waiting: Vec<usize> = Vec::with_capacity(stages.len());
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, spec) in stages.values().enumerate() {
        let mut n = 0;
        let mut seen = HashSet::new();
        for input in &spec.inputs {
            if stages.contains_key(input) && seen.insert(input) {
                n += 1;
                consumers.entry(input.as_str()).or_default().push(i);
            }
        }
        waiting.push(n);
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..stages.len()).filter(|i| waiting[*i] == 0).collect();
    let mut order = Vec::with_capacity(stages.len());
    while let Some(i) = ready.pop_first() {
        let Some((id, _)) = stages.get_index(i) else {
            break;
        };
        order.push(id.clone());
        for &c in consumers.get(id.as_str()).map_or(&[][..], Vec::as_slice) {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.insert(c);
            }
        }
    }
    order
}

/// The graph as a Mermaid flowchart.
pub fn mermaid(stages: &IndexMap<String, StageSpec>) -> String {
    let mut out = String::from("flowchart LR\n");
    for s in stages.values() {
        let (open, close) = match s.kind {
            StageKind::Source => ("([", "])"),
            StageKind::Transform => ("[", "]"),
            StageKind::Sink => ("[(", ")]"),
        };
        out.push_str(&format!(
            "    {}{open}\"{}<br/><i>{}</i>\"{close}\n",
            node_id(&s.id),
            s.id,
            s.type_name
        ));
    }
    for s in stages.values() {
        for i in &s.inputs {
            out.push_str(&format!("    {} --> {}\n", node_id(i), node_id(&s.id)));
        }
    }
    out
}

/// The graph in Graphviz DOT.
pub fn dot(stages: &IndexMap<String, StageSpec>) -> String {
    let mut out = String::from("digraph pipeline {\n    rankdir=LR;\n");
    for s in stages.values() {
        let shape = match s.kind {
            StageKind::Source => "ellipse",
            StageKind::Transform => "box",
            StageKind::Sink => "cylinder",
        };
        out.push_str(&format!(
            "    \"{}\" [shape={shape}, label=\"{}\\n({})\"];\n",
            s.id, s.id, s.type_name
        ));
    }
    for s in stages.values() {
        for i in &s.inputs {
            out.push_str(&format!("    \"{i}\" -> \"{}\";\n", s.id));
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid node ids may not contain `-`.
fn node_id(id: &str) -> String {
    format!("s_{}", id.replace('-', "__"))
}
