//! The running pipeline and the one procedure that changes it.
//!
//! [`Topology::apply`] takes a new pipeline and, for the stages that differ from the running
//! one: builds the new instances first (if any fails nothing has been touched, and the old
//! pipeline keeps running: a rollback); stops changed and removed sources; creates the input
//! channels of the new instances; edits the fan-outs of kept upstream stages so that each
//! batch goes either to the old or to the new downstream set; drops the engine's handles on
//! the old instances so that each drains what is already in its queue with its old config and
//! exits; and spawns the new instances. Startup is the same procedure from the empty pipeline.

use std::collections::HashMap;

use futures::FutureExt;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::CHANNEL_CAPACITY;
use crate::component::fanout::{Control, Edge, Edit, Fanout};
use crate::component::{
    BuildContext, BuildError, Input, Shared, Shutdown, SinkContext, SourceContext, Stage,
    StageKind, StageMetrics, TransformContext,
};
use crate::config::diff::Diff;
use crate::config::{Pipeline, graph};
use crate::event::Batch;
use crate::health::Health;
use crate::leader::Leadership;
use crate::metrics as shared_metrics;

/// How long a reload waits for a replaced source to hand off what it read.
const SOURCE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What an apply did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub diff: Diff,
    pub elapsed: Duration,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Stages that did not finish within the timeout (their in-flight events failed).
    pub stuck: Vec<String>,
    /// Stages that failed (an error or a panic) at any time while the pipeline ran, with why.
    pub failed: Vec<(String, String)>,
}

impl ShutdownReport {
    /// Every stage finished, and none failed.
    pub fn is_empty(&self) -> bool {
        self.stuck.is_empty() && self.failed.is_empty()
    }
}

/// A notice from a stage task that it ended.
#[derive(Debug)]
pub struct Exited {
    pub id: String,
    pub serial: u64,
    pub kind: StageKind,
    /// Why it failed (it returned an error or panicked), or `None` if it finished.
    pub failure: Option<String>,
}

struct Running {
    kind: StageKind,
    serial: u64,
    /// The engine's sender into the stage's input (transforms and sinks).
    input: Option<Edge>,
    /// Control over the stage's fan-out (sources and transforms).
    control: Option<Control>,
    /// Stop signal (sources).
    stop: Option<watch::Sender<bool>>,
    handle: JoinHandle<()>,
}

/// Step 3 of an apply: the input channels of the new transforms and sinks.
struct Inputs {
    /// The receiving ends, taken by the new instances when they are spawned.
    receivers: HashMap<String, mpsc::Receiver<Batch>>,
    /// The sending ends, for the fan-outs that feed them.
    edges: HashMap<String, Edge>,
}

impl Inputs {
    fn for_built(built: &HashMap<String, Stage>, new: &Pipeline) -> Inputs {
        let mut inputs = Inputs {
            receivers: HashMap::new(),
            edges: HashMap::new(),
        };
        for (id, stage) in built {
            if !matches!(stage, Stage::Source(_)) {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                inputs.receivers.insert(id.clone(), rx);
                let queued = shared_metrics::queue_depth(id, new.stages[id].type_name);
                inputs.edges.insert(id.clone(), Edge { tx, queued });
            }
        }
        inputs
    }

    /// The input of stage `id`: its new channel if it was rebuilt, else its running one.
    fn edge(&self, id: &str, running: &HashMap<String, Running>) -> Option<Edge> {
        self.edges
            .get(id)
            .cloned()
            .or_else(|| running.get(id).and_then(|r| r.input.clone()))
    }
}

/// The running pipeline.
pub struct Topology {
    current: Pipeline,
    running: HashMap<String, Running>,
    /// Old instances still draining after a reload replaced or removed them.
    draining: Vec<(String, JoinHandle<()>)>,
    next_serial: u64,
    exits_tx: mpsc::UnboundedSender<Exited>,
    exits_rx: mpsc::UnboundedReceiver<Exited>,
    /// Stage instances (current or replaced) that failed, with why.
    failed: Vec<(String, String)>,
    /// The health of the stages that report it (read by `/readyz`).
    health: Health,
    /// What instances of a stage share across reloads.
    shared: Shared,
    /// Whether this replica leads (sources and durable queues follow it).
    leadership: Leadership,
    /// The tap point of each stage (`eventflow tap`), kept across reloads.
    taps: crate::component::tap::Taps,
}

fn empty_like(p: &Pipeline) -> Pipeline {
    Pipeline {
        path: p.path.clone(),
        digest: p.digest,
        version: p.version,
        api: p.api.clone(),
        state: p.state.clone(),
        leader_election: p.leader_election.clone(),
        ..Pipeline::of_stages(IndexMap::new())
    }
}

impl Topology {
    /// Builds and starts every stage of `pipeline`, with a health registry of its own.
    pub async fn start(pipeline: Pipeline) -> Result<Topology, BuildError> {
        Topology::start_with(
            pipeline,
            Health::default(),
            Leadership::always(),
            crate::component::tap::Taps::default(),
        )
        .await
    }

    /// Builds and starts every stage of `pipeline`; its stages report to `health` and follow
    /// `leadership`.
    pub async fn start_with(
        pipeline: Pipeline,
        health: Health,
        leadership: Leadership,
        taps: crate::component::tap::Taps,
    ) -> Result<Topology, BuildError> {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let mut t = Topology {
            current: empty_like(&pipeline),
            running: HashMap::new(),
            draining: Vec::new(),
            next_serial: 0,
            exits_tx,
            exits_rx,
            failed: Vec::new(),
            health,
            shared: Shared::default(),
            leadership,
            taps,
        };
        t.apply(pipeline).await?;
        Ok(t)
    }

    /// The tap points of its stages.
    pub fn taps(&self) -> &crate::component::tap::Taps {
        &self.taps
    }

    /// The health registry its stages report to.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The pipeline that is running.
    pub fn pipeline(&self) -> &Pipeline {
        &self.current
    }

    /// How many source stages are still running.
    pub fn running_sources(&self) -> usize {
        self.running
            .values()
            .filter(|r| r.kind == StageKind::Source)
            .count()
    }

    /// Waits for the next current stage task to end (notices from instances a reload
    /// replaced are skipped, but their failures are recorded); a source that ended is no
    /// longer counted as running.
    pub async fn next_exit(&mut self) -> Option<Exited> {
        loop {
            let e = self.exits_rx.recv().await?;
            if let Some(why) = &e.failure {
                self.failed.push((e.id.clone(), why.clone()));
            }
            // Ignore notices from instances that a reload already replaced.
            if let Some(r) = self.running.get(&e.id)
                && r.serial == e.serial
            {
                if e.kind == StageKind::Source {
                    self.running.remove(&e.id);
                }
                return Some(e);
            }
        }
    }

    /// The stages that have failed so far, with why.
    pub fn failures(&self) -> &[(String, String)] {
        &self.failed
    }

    /// Moves the running pipeline to `new`, changing only the stages that differ. The steps,
    /// in order (each a method below): build, stop sources, create inputs, re-point kept
    /// fan-outs, release old stages, spawn new ones.
    pub async fn apply(&mut self, new: Pipeline) -> Result<ApplyReport, BuildError> {
        let started = Instant::now();
        let diff = Diff::between(&self.current, &new);
        let mut built = self.build_changed(&new, &diff).await?;
        self.stop_sources(&diff).await;
        let mut inputs = Inputs::for_built(&built, &new);
        self.repoint_kept(&new, &diff, &built, &inputs);
        self.release_old(&diff);
        for id in graph::topological_order(&new.stages) {
            if let Some(stage) = built.remove(&id) {
                self.spawn(&new, id, stage, &mut inputs);
            }
        }
        self.current = new;
        self.draining.retain(|(_, h)| !h.is_finished());
        Ok(ApplyReport {
            diff,
            elapsed: started.elapsed(),
        })
    }

    /// Step 1: builds every new or changed stage before anything is touched, so that a failure
    /// (an error, or a panic in a stage type's build) is a clean rollback.
    async fn build_changed(
        &self,
        new: &Pipeline,
        diff: &Diff,
    ) -> Result<HashMap<String, Stage>, BuildError> {
        let mut built = HashMap::new();
        for id in diff.to_build() {
            let spec = &new.stages[id];
            // Loaded pipelines were validated already; pipelines assembled in code were not.
            if let Some(i) = spec.config.validate().into_iter().next() {
                return Err(BuildError {
                    stage: id.clone(),
                    message: i.to_string(),
                    source: None,
                });
            }
            let cx = BuildContext {
                id: id.clone(),
                type_name: spec.type_name,
                state: new.state.clone(),
                health: self.health.clone(),
                shared: self.shared.clone(),
                leadership: self.leadership.for_stage(id),
                keep_raw: crate::config::graph::raw_needed(&new.stages, id),
            };
            let stage = std::panic::AssertUnwindSafe(spec.config.build(&cx))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(BuildError {
                        stage: id.clone(),
                        message: format!("panicked while building: {}", panic_message(&*panic)),
                        source: None,
                    })
                })?;
            built.insert(id.clone(), stage);
        }
        Ok(built)
    }

    /// Step 2: stops changed and removed sources and waits (bounded) for them to hand off what
    /// they read.
    async fn stop_sources(&mut self, diff: &Diff) {
        for id in diff.to_stop() {
            if !self
                .running
                .get(id)
                .is_some_and(|r| r.kind == StageKind::Source)
            {
                continue;
            }
            let Some(r) = self.running.remove(id) else {
                continue;
            };
            if let Some(stop) = &r.stop {
                let _ = stop.send(true);
            }
            drop(r.control);
            let mut handle = r.handle;
            match tokio::time::timeout(SOURCE_STOP_TIMEOUT, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(stage = %id, error = %e, "source task failed while stopping");
                }
                Err(_) => {
                    tracing::warn!(stage = %id, timeout = ?SOURCE_STOP_TIMEOUT, "source did not stop in time; it keeps draining while the new pipeline starts");
                    self.draining.push((id.clone(), handle));
                }
            }
        }
    }

    /// Step 4: re-points the fan-out of each kept upstream stage, one atomic edit each, so a
    /// batch goes either to the old or to the new downstream set.
    fn repoint_kept(
        &self,
        new: &Pipeline,
        diff: &Diff,
        built: &HashMap<String, Stage>,
        inputs: &Inputs,
    ) {
        for id in &diff.kept {
            let Some(control) = self.running.get(id).and_then(|r| r.control.clone()) else {
                continue;
            };
            let mut edits = Vec::new();
            for c in new.consumers_of(id) {
                if built.contains_key(&c.id)
                    && let Some(tx) = inputs.edge(&c.id, &self.running)
                {
                    edits.push(Edit::Set(c.id.clone(), tx));
                }
            }
            for c in self.current.consumers_of(id) {
                if !new.stages.get(&c.id).is_some_and(|s| s.inputs.contains(id)) {
                    edits.push(Edit::Remove(c.id.clone()));
                }
            }
            if !edits.is_empty() {
                let _ = control.send(edits);
            }
        }
    }

    /// Step 5: lets go of old transforms and sinks: each drains its queue and exits.
    fn release_old(&mut self, diff: &Diff) {
        for id in diff.to_stop() {
            if let Some(r) = self.running.remove(id) {
                drop(r.input);
                drop(r.control);
                self.draining.push((id.clone(), r.handle));
            }
        }
    }

    /// Step 6: spawns one built stage (the caller goes upstream first).
    fn spawn(&mut self, new: &Pipeline, id: String, stage: Stage, inputs: &mut Inputs) {
        let spec = &new.stages[&id];
        let metrics = StageMetrics::new(&id, spec.type_name);
        let outs: Vec<(String, Edge)> = new
            .consumers_of(&id)
            .filter_map(|c| {
                inputs
                    .edge(&c.id, &self.running)
                    .map(|tx| (c.id.clone(), tx))
            })
            .collect();
        let (mut fanout, control) = Fanout::new(
            outs,
            shared_metrics::sent(&id, spec.type_name),
            shared_metrics::discarded(&id, spec.type_name, "downstream_stopped"),
        );
        let tap = self.taps.point(&id);
        let serial = self.next_serial;
        self.next_serial += 1;
        let span = tracing::info_span!("stage", id = %id, r#type = spec.type_name);
        let exits = self.exits_tx.clone();
        let notice = Exited {
            id: id.clone(),
            serial,
            kind: spec.kind,
            failure: None,
        };
        let errors = shared_metrics::stage_errors(&id, spec.type_name, "task_failed");
        let running = match stage {
            Stage::Source(s) => {
                fanout.set_tap(tap);
                let (stop_tx, stop_rx) = watch::channel(false);
                let cx = SourceContext {
                    metrics,
                    out: fanout,
                    shutdown: Shutdown(stop_rx),
                };
                Running {
                    kind: StageKind::Source,
                    serial,
                    input: None,
                    control: Some(control),
                    stop: Some(stop_tx),
                    handle: spawn_stage(s.run(cx), span, exits, notice, errors),
                }
            }
            Stage::Transform(t) => {
                let Some(rx) = inputs.receivers.remove(&id) else {
                    return;
                };
                fanout.set_tap(tap);
                let cx = TransformContext {
                    input: Input::new(rx, &metrics),
                    metrics,
                    out: fanout,
                };
                Running {
                    kind: StageKind::Transform,
                    serial,
                    input: inputs.edges.get(&id).cloned(),
                    control: Some(control),
                    stop: None,
                    handle: spawn_stage(t.run(cx), span, exits, notice, errors),
                }
            }
            Stage::Sink(s) => {
                drop(fanout);
                let Some(rx) = inputs.receivers.remove(&id) else {
                    return;
                };
                let cx = SinkContext {
                    input: Input::new(rx, &metrics).tapped(tap),
                    metrics,
                };
                Running {
                    kind: StageKind::Sink,
                    serial,
                    input: inputs.edges.get(&id).cloned(),
                    control: None,
                    stop: None,
                    handle: spawn_stage(s.run(cx), span, exits, notice, errors),
                }
            }
        };
        self.running.insert(id, running);
    }

    /// Stops every source, lets every event already read flow through to the sinks, and waits
    /// for all stage tasks. Reports the stages that did not finish within `timeout` and those
    /// that failed.
    pub async fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + timeout;
        for r in self.running.values() {
            if let Some(stop) = &r.stop {
                let _ = stop.send(true);
            }
        }
        let mut handles: Vec<(String, JoinHandle<()>)> = Vec::new();
        // Sources first: once they return, their fan-outs are dropped.
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            if let Some(mut r) = self.running.remove(&id) {
                r.input = None;
                r.control = None;
                handles.push((id, r.handle));
            }
        }
        handles.append(&mut self.draining);
        let mut stuck = Vec::new();
        for (id, h) in handles {
            match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(stage = %id, error = %e, "stage task failed during shutdown");
                }
                Err(_) => stuck.push(id),
            }
        }
        while let Ok(e) = self.exits_rx.try_recv() {
            if let Some(why) = e.failure {
                self.failed.push((e.id, why));
            }
        }
        ShutdownReport {
            stuck,
            failed: self.failed,
        }
    }
}

/// Runs a stage task. A stage that returns an error or panics is a failure of the pipeline:
/// logged with its id (the span), counted in `eventflow_stage_errors_total{reason="task_failed"}`,
/// and reported in its exit notice. Whatever it held is dropped without an outcome, so those
/// batches fail at their sources instead of counting as delivered.
fn spawn_stage(
    fut: futures::future::BoxFuture<'static, Result<(), crate::component::StageError>>,
    span: tracing::Span,
    exits: mpsc::UnboundedSender<Exited>,
    mut notice: Exited,
    errors: metrics::Counter,
) -> JoinHandle<()> {
    use tracing::Instrument;
    tokio::spawn(
        async move {
            let result = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
            notice.failure = match result {
                Ok(Ok(())) => {
                    tracing::debug!("stage finished");
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
            };
            if let Some(why) = &notice.failure {
                errors.increment(1);
                tracing::error!(error = %why, "stage failed; the events it held are not acknowledged and their sources will replay them");
            }
            let _ = exits.send(notice);
        }
        .instrument(span),
    )
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(std::string::ToString::to_string)
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
