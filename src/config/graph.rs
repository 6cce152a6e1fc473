//! Checks on the shape of the stage graph, and its rendering for `eventflow graph`.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

use super::tree::{Pos, Value};
use super::{Problem, StageSpec};
use crate::stages::StageKind;

fn input_pos(spec: &StageSpec, index: usize) -> Option<Pos> {
    let n = spec.node.get("inputs")?;
    match &n.value {
        Value::Seq(items) => items.get(index).map(|i| i.pos),
        _ => Some(n.pos),
    }
}

/// Stages that could not be parsed, with their inputs (and where each is written).
pub type Failed = HashMap<String, Vec<(String, Option<Pos>)>>;

/// Adds a problem for every dangling, misdirected or cyclic edge. Edges to stages in `failed`
/// are not reported again; their own inputs are still checked for unknown ids.
pub fn check(stages: &IndexMap<String, StageSpec>, failed: &Failed, problems: &mut Vec<Problem>) {
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
                ))
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
                    let known: Vec<&str> = stages.keys().map(String::as_str).collect();
                    problems.push(Problem::new(
                        pos,
                        Some(&spec.id),
                        Some("inputs"),
                        format!(
                            "unknown input `{input}` (stages in this file: {})",
                            known.join(", ")
                        ),
                    ))
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
    for spec in stages.values() {
        let read_by_failed = failed
            .values()
            .any(|ins| ins.iter().any(|(i, _)| *i == spec.id));
        if spec.kind != StageKind::Sink
            && !read_by_failed
            && !stages.values().any(|s| s.inputs.contains(&spec.id))
        {
            problems.push(Problem::new(
                Some(spec.pos),
                Some(&spec.id),
                None,
                "no stage reads this stage's output, so its events would go nowhere: add it to some stage's `inputs` or remove it",
            ));
        }
    }
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
    if let Some(cycle) = find_cycle(stages) {
        let first = &cycle[0];
        problems.push(Problem::new(
            stages.get(first).map(|s| s.pos),
            Some(first),
            Some("inputs"),
            format!("the stages form a cycle: {}", cycle.join(" -> ")),
        ));
    }
}

/// Returns one cycle (as a path of ids that ends where it starts), if any.
fn find_cycle(stages: &IndexMap<String, StageSpec>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        id: &'a str,
        stages: &'a IndexMap<String, StageSpec>,
        marks: &mut HashMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|s| *s == id).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(id.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id, Mark::Open);
        stack.push(id);
        if let Some(spec) = stages.get(id) {
            for input in &spec.inputs {
                if input != id
                    && stages.contains_key(input)
                    && let Some(c) = visit(input, stages, marks, stack)
                {
                    return Some(c);
                }
            }
        }
        stack.pop();
        marks.insert(id, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for id in stages.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(id, stages, &mut marks, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// Stage ids in an order where every stage comes after all of its inputs.
pub fn topological_order(stages: &IndexMap<String, StageSpec>) -> Vec<String> {
    let mut done: HashSet<&str> = HashSet::new();
    let mut order = Vec::new();
    while order.len() < stages.len() {
        let before = order.len();
        for (id, spec) in stages {
            if !done.contains(id.as_str())
                && spec
                    .inputs
                    .iter()
                    .all(|i| done.contains(i.as_str()) || !stages.contains_key(i))
            {
                done.insert(id);
                order.push(id.clone());
            }
        }
        if order.len() == before {
            break; // a cycle; validation reports it
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
