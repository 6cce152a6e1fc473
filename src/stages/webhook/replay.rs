//! Re-sending the dead letters of a sink that has no durable queue (a `sql` sink whose database
//! refused a row, a webhook without `durable: true`): the sink is built alone from the
//! pipeline's current config, fed the dead letter's events (as that sink saw them, after the
//! transforms before it), and stopped once it has given them an outcome. Its own retry rules
//! apply; nothing else of the pipeline runs.

use std::sync::Arc;

use futures::future::BoxFuture;
use indexmap::IndexMap;
use tokio::sync::watch;

use super::durable::{Limits, Sender};
use super::{Budget, Outcome};
use crate::authoring::harness::ChannelSource;
use crate::component::StageKind;
use crate::config::Pipeline;
use crate::event::ack::{Finalizer, Status};
use crate::event::{Event, Finalizers};
use crate::health::StageHealth;

/// The feeding source's id: with a space, so no stage of a pipeline file has it.
const FEED: &str = "dead letters";

/// How long a re-send waits for the sink to store the events (it retries an unavailable
/// database or receiver by its own rules meanwhile); past it the dead letter stays.
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends events to one sink of a pipeline, built alone.
pub struct Replay {
    pipeline: Pipeline,
    sink: String,
    leadership: crate::leader::Leadership,
}

impl Replay {
    /// `sink` must be a sink of `pipeline`.
    pub fn new(pipeline: Pipeline, sink: &str) -> Replay {
        Replay {
            pipeline,
            sink: sink.to_string(),
            leadership: crate::leader::Leadership::always(),
        }
    }

    async fn replay(&self, events: &[Event]) -> Outcome {
        let Some(spec) = self.pipeline.stages.get(&self.sink) else {
            return Outcome::Failed {
                reason: format!("stage `{}` is not in the pipeline", self.sink),
                attempts: 0,
            };
        };
        let (feed, feeder) = ChannelSource::new(1);
        let mut stages = IndexMap::new();
        stages.insert(
            FEED.to_string(),
            crate::authoring::harness::spec(
                FEED,
                "dead_letter_feed",
                StageKind::Source,
                &[],
                Arc::new(feed),
                0,
            ),
        );
        let mut sink = spec.clone();
        sink.inputs = vec![FEED.to_string()];
        stages.insert(self.sink.clone(), sink);
        let alone = Pipeline {
            state: self.pipeline.state.clone(),
            ..Pipeline::of_stages(stages)
        };
        let topology = match crate::engine::Topology::start(alone).await {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("cannot build stage `{}`: {e}", self.sink),
                    attempts: 0,
                };
            }
        };
        let (fin, done) = Finalizer::reporting();
        let batch = events
            .iter()
            .zip(0..)
            .map(|(e, i)| Event::in_batch(e.data().clone(), Finalizers::One(fin.clone()), i))
            .collect();
        drop(fin);
        feeder.send_plain(batch).await;
        drop(feeder);
        let report = tokio::time::timeout(WAIT, done).await;
        let _ = topology.shutdown(std::time::Duration::from_secs(10)).await;
        match report {
            Ok(Ok(r)) if r.status == Status::Delivered => Outcome::Delivered { attempts: 1 },
            Ok(Ok(r)) => Outcome::Failed {
                reason: r.refusals.first().map_or_else(
                    || "not delivered (the sink stopped before it stored the events)".to_string(),
                    |f| f.reason.clone(),
                ),
                attempts: 1,
            },
            Ok(Err(_)) => Outcome::Failed {
                reason: "not delivered (the sink stopped)".to_string(),
                attempts: 1,
            },
            Err(_) => Outcome::Failed {
                reason: format!(
                    "not stored within {} s (the sink is still retrying: is what it writes to reachable?)",
                    WAIT.as_secs()
                ),
                attempts: 1,
            },
        }
    }
}

impl Sender for Replay {
    fn stage(&self) -> &str {
        &self.sink
    }

    fn leadership(&self) -> &crate::leader::Leadership {
        &self.leadership
    }

    fn limits(&self) -> Limits {
        Limits {
            max_queued: 0,
            batch: crate::stages::batch::BatchConfig::default(),
            max_in_flight: 1,
            retry_for: std::time::Duration::ZERO,
            retries: 0,
        }
    }

    fn send<'a>(
        &'a self,
        events: &'a [Event],
        _health: Option<&'a StageHealth>,
        _budget: Budget,
        _stop: Option<watch::Receiver<bool>>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.replay(events))
    }
}
