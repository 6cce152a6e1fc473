//! Settings a stage takes from the stages upstream of it when it names none of its own, as a
//! pass over the file's tree before the stages are parsed (so validation, `explain`, reload
//! and the diff all see the same stage).
//!
//! An `enrich` stage with neither `kubeconfig` nor `context` reads from the API server of the
//! `kube_events` sources upstream of it: `kube_events (kubeconfig: x) -> enrich -> filter`
//! enriches from the cluster it watches, as a user expects, instead of falling back to
//! `~/.kube/config`. When the sources upstream name different connections (several
//! clusters), nothing is taken: which one would be a guess, and the stage keeps its own
//! defaults (its `cluster` field says which cluster's events it enriches).

use std::collections::{HashSet, VecDeque};

use crate::yaml::{Node, Value};

/// The connection fields of a `kube_events` source that `enrich` can take.
const CONNECTION: [&str; 2] = ["kubeconfig", "context"];

/// Gives every `enrich` stage without connection settings those of its upstream sources.
pub fn kube_connection(root: &mut Node) {
    let Some(Value::Map(stages)) = root_stages(root).map(|n| &n.value) else {
        return;
    };
    let mut updates: Vec<(String, Vec<(String, Node)>)> = Vec::new();
    for (id, (_, stage)) in stages {
        if stage.get("type").and_then(Node::as_str) != Some("enrich")
            || CONNECTION.iter().any(|k| stage.get(k).is_some())
        {
            continue;
        }
        let sources = upstream_sources(stages, id);
        let mut connections = sources.iter().map(|s| {
            CONNECTION
                .iter()
                .filter_map(|k| s.get(k).map(|n| ((*k).to_string(), n.clone())))
                .collect::<Vec<_>>()
        });
        let Some(first) = connections.next() else {
            continue;
        };
        if first.is_empty() || connections.any(|c| c != first) {
            continue;
        }
        updates.push((id.clone(), first));
    }
    if let Some(Value::Map(stages)) = root_stages_mut(root).map(|n| &mut n.value) {
        for (id, fields) in updates {
            if let Some((_, stage)) = stages.get_mut(&id)
                && let Value::Map(m) = &mut stage.value
            {
                for (k, v) in fields {
                    m.insert(k, (v.pos, v));
                }
            }
        }
    }
}

fn root_stages(root: &Node) -> Option<&Node> {
    root.get("stages")
}

fn root_stages_mut(root: &mut Node) -> Option<&mut Node> {
    match &mut root.value {
        Value::Map(m) => m.get_mut("stages").map(|(_, n)| n),
        _ => None,
    }
}

/// The `kube_events` stages `id` reads from, directly or through other stages.
fn upstream_sources<'a>(
    stages: &'a indexmap::IndexMap<String, (crate::yaml::Pos, Node)>,
    id: &str,
) -> Vec<&'a Node> {
    let mut out = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut queue: VecDeque<&str> = VecDeque::from([id]);
    while let Some(cur) = queue.pop_front() {
        let Some((_, stage)) = stages.get(cur) else {
            continue;
        };
        if cur != id && stage.get("type").and_then(Node::as_str) == Some("kube_events") {
            out.push(stage);
            continue;
        }
        for input in inputs(stage) {
            if let Some((key, _)) = stages.get_key_value(input)
                && seen.insert(key.as_str())
            {
                queue.push_back(key.as_str());
            }
        }
    }
    out
}

/// A stage's `inputs`, one or a list.
fn inputs(stage: &Node) -> Vec<&str> {
    match stage.get("inputs").map(|n| &n.value) {
        Some(Value::Str(s)) => vec![s.as_str()],
        Some(Value::Seq(items)) => items.iter().filter_map(Node::as_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrich_fields(text: &str, id: &str) -> Vec<(String, String)> {
        let mut root = crate::yaml::parse(text).unwrap();
        kube_connection(&mut root);
        CONNECTION
            .iter()
            .filter_map(|k| {
                root.get("stages")?
                    .get(id)?
                    .get(k)
                    .and_then(Node::as_str)
                    .map(|v| ((*k).to_string(), v.to_string()))
            })
            .collect()
    }

    #[test]
    fn enrich_takes_the_connection_of_the_source_it_reads() {
        let text = "stages:\n  k:\n    type: kube_events\n    kubeconfig: /etc/kc\n    context: prod\n  f:\n    type: filter\n    inputs: [k]\n  e:\n    type: enrich\n    inputs: f\n  out:\n    type: stdout\n    inputs: [e]\n";
        assert_eq!(
            enrich_fields(text, "e"),
            [
                ("kubeconfig".into(), "/etc/kc".into()),
                ("context".into(), "prod".into())
            ]
        );
        // Its own settings win; two sources on different clusters give nothing to take.
        let own = text.replace("    inputs: f\n", "    inputs: f\n    context: other\n");
        assert_eq!(
            enrich_fields(&own, "e"),
            [("context".into(), "other".into())]
        );
        let two = text.replace(
            "  f:\n    type: filter\n    inputs: [k]\n",
            "  k2:\n    type: kube_events\n    kubeconfig: /etc/kc2\n  f:\n    type: filter\n    inputs: [k, k2]\n",
        );
        assert!(enrich_fields(&two, "e").is_empty());
        // A source with no connection settings of its own: nothing to take either.
        let plain = text.replace("    kubeconfig: /etc/kc\n    context: prod\n", "");
        assert!(enrich_fields(&plain, "e").is_empty());
    }
}
