//! The difference between two pipelines, stage by stage: what reload (and startup, which is a
//! reload from the empty pipeline) has to do.

use super::Pipeline;

/// Stage ids by what happens to them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// Present only in the new pipeline: build and start.
    pub added: Vec<String>,
    /// Present only in the old pipeline: detach, drain, stop.
    pub removed: Vec<String>,
    /// Present in both with a different config (the whole stage, `inputs` included): rebuild.
    pub changed: Vec<String>,
    /// Present in both and identical: keep running, with its state.
    pub kept: Vec<String>,
}

impl Diff {
    /// Compares two pipelines by stage id. Stages are compared by their substituted YAML
    /// value, so reordering keys or moving a stage in the file changes nothing.
    pub fn between(old: &Pipeline, new: &Pipeline) -> Diff {
        let mut d = Diff::default();
        for (id, spec) in &new.stages {
            match old.stages.get(id) {
                None => d.added.push(id.clone()),
                // A source that keeps `raw` only on demand is built again when its downstream
                // starts or stops reading it.
                Some(o)
                    if o.node == spec.node
                        && (!spec.config.raw_on_demand()
                            || super::graph::raw_needed(&old.stages, id)
                                == super::graph::raw_needed(&new.stages, id)) =>
                {
                    d.kept.push(id.clone());
                }
                Some(_) => d.changed.push(id.clone()),
            }
        }
        d.removed = old
            .stages
            .keys()
            .filter(|id| !new.stages.contains_key(*id))
            .cloned()
            .collect();
        d
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Stages that need a new instance.
    pub fn to_build(&self) -> impl Iterator<Item = &String> {
        self.added.iter().chain(self.changed.iter())
    }

    /// Stages whose running instance goes away.
    pub fn to_stop(&self) -> impl Iterator<Item = &String> {
        self.removed.iter().chain(self.changed.iter())
    }
}
