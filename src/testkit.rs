//! Stages and helpers for the engine's own tests and benchmarks: an in-memory source, a
//! counting sink whose commits a test can hold back, and a way to assemble a pipeline in code.
//! They run through the same engine paths as the real stage types.

use std::sync::Arc;

use indexmap::IndexMap;

use crate::component::{StageConfig, StageKind};
use crate::config::{Pipeline, StageSpec};
use crate::event::EventData;

pub use crate::authoring::harness::{ChannelSource, CountingSink, Feeder};

/// Assembles a [`Pipeline`] from stage configs.
#[derive(Default)]
pub struct PipelineBuilder {
    stages: IndexMap<String, StageSpec>,
    state: Option<crate::state::StateConfig>,
}

impl PipelineBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage. `version` stands in for the YAML text: a different version is a changed
    /// stage for reload.
    #[must_use]
    pub fn stage(
        mut self,
        id: &str,
        type_name: &'static str,
        kind: StageKind,
        inputs: &[&str],
        config: Arc<dyn StageConfig>,
        version: i64,
    ) -> Self {
        self.stages.insert(
            id.to_string(),
            crate::authoring::harness::spec(id, type_name, kind, inputs, config, version),
        );
        self
    }

    /// Sets the `state` database (checkpoints, durable queues).
    #[must_use]
    pub fn state(mut self, url: &str) -> Self {
        self.state = Some(crate::state::StateConfig {
            url: url.to_string(),
        });
        self
    }

    pub fn build(self) -> Pipeline {
        Pipeline {
            state: self.state,
            ..Pipeline::of_stages(self.stages)
        }
    }
}

/// A filter config from YAML (test input, so a bad one panics).
pub fn filter(yaml: &str) -> Arc<crate::stages::filter::FilterConfig> {
    let node = crate::yaml::parse(yaml).expect("filter yaml");
    Arc::new(crate::yaml::from_node(&node).expect("filter config"))
}

/// `src` (a source, usually a [`ChannelSource`]) -> one sink `id` of type `type_name`; the
/// builder takes more stages or a `state` database. `version` is the sink's (see
/// [`PipelineBuilder::stage`]).
pub fn source_to_sink(
    source: Arc<dyn StageConfig>,
    id: &str,
    type_name: &'static str,
    sink: Arc<dyn StageConfig>,
    version: i64,
) -> PipelineBuilder {
    PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], source, 0)
        .stage(id, type_name, StageKind::Sink, &["src"], sink, version)
}

/// The pipeline most engine tests and benchmarks use: `src` -> `f` (a filter with the given
/// rules) -> `out`.
pub fn source_filter_sink(
    source: Arc<dyn StageConfig>,
    rules: &str,
    sink: Arc<dyn StageConfig>,
) -> Pipeline {
    PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], source, 0)
        .stage(
            "f",
            "filter",
            StageKind::Transform,
            &["src"],
            filter(rules),
            0,
        )
        .stage("out", "counting", StageKind::Sink, &["f"], sink, 0)
        .build()
}

/// A plain event with the given uid.
pub fn event(uid: &str) -> EventData {
    EventData {
        cluster: Arc::from("test"),
        uid: uid.to_string(),
        namespace: "default".into(),
        type_: "Normal".into(),
        reason: "Started".into(),
        count: 1,
        ..EventData::default()
    }
}
