//! The component layer: what a stage is to the engine and what the engine is to a stage.
//!
//! The stage traits ([`Source`], [`Transform`], [`Sink`]) and their contexts (an [`Input`], an
//! output [`Fanout`], a [`Shutdown`] signal, [`StageMetrics`]), a parsed config
//! ([`StageConfig`]: validate, then build), and one row of the type table ([`StageType`]) with
//! the [`Registry`] of them. Stage types depend on this module; the engine runs stages
//! through it; `config` parses with a registry it is handed. Nothing here knows a stage type.

pub mod explain;
pub mod fanout;
pub mod tap;

/// Batches an edge can hold. With batches of at most [`MAX_BATCH`] events, one edge buffers
/// at most `CHANNEL_CAPACITY * MAX_BATCH` events.
pub const CHANNEL_CAPACITY: usize = 8;

/// The largest batch a built-in source emits.
pub const MAX_BATCH: usize = 512;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use metrics::Counter;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::event::Batch;
use crate::metrics as shared_metrics;
use crate::state::StateConfig;
use crate::yaml::{self, DeError, Node};
pub use explain::{Explanation, Step, Verdict};
pub use fanout::Fanout;

/// Where a stage sits in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Reads from outside; has no inputs.
    Source,
    /// Reads from inputs and writes to its output.
    Transform,
    /// Reads from inputs; has no output.
    Sink,
}

/// Everything a stage needs to know when it is built.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    pub id: String,
    pub type_name: &'static str,
    pub state: Option<StateConfig>,
    /// The running pipeline's health registry (for `/readyz`).
    pub health: crate::health::Health,
    /// State the instances of one stage share across reloads (e.g. a durable queue's slot).
    pub shared: Shared,
    /// Whether this replica leads: sources read and durable queues deliver only while it does.
    pub leadership: crate::leader::Leadership,
    /// For a source: whether a stage downstream reads the events' `raw` object (see
    /// [`StageConfig::uses_raw`]); a source may leave it out otherwise.
    pub keep_raw: bool,
}

impl BuildContext {
    /// A stage error with this stage's id.
    pub fn error(&self, message: impl Into<String>) -> BuildError {
        BuildError {
            stage: self.id.clone(),
            message: message.into(),
            source: None,
        }
    }

    /// A stage error `message: source` with this stage's id, keeping `source` as its cause.
    pub fn error_from(
        &self,
        message: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> BuildError {
        BuildError {
            stage: self.id.clone(),
            message: format!("{message}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// A stage error whose message is `source`'s own (it already says what failed), kept as
    /// the cause.
    pub fn failed(&self, source: impl std::error::Error + Send + Sync + 'static) -> BuildError {
        BuildError {
            stage: self.id.clone(),
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// Values the instances of a stage share while a reload runs the old and the new one side by
/// side, owned by the running pipeline (not the process: two pipelines never share them).
#[derive(Clone, Default)]
pub struct Shared(
    Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<dyn std::any::Any + Send + Sync>>>>,
);

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared")
    }
}

impl Shared {
    /// The value under `key`, made by `make` the first time (or if it was of another type).
    pub fn get_or_insert_with<T: std::any::Any + Send + Sync>(
        &self,
        key: &str,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = map.get(key).cloned()
            && let Ok(t) = v.downcast::<T>()
        {
            return t;
        }
        let t = Arc::new(make());
        map.insert(key.to_string(), t.clone());
        t
    }
}

/// The underlying error of a [`BuildError`] or [`StageError`], kept for its chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A failure to build a stage (bad runtime input such as an unreachable database).
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}`: {message}")]
pub struct BuildError {
    pub stage: String,
    /// What failed, for a person (it already includes the cause's text).
    pub message: String,
    #[source]
    pub source: Option<Cause>,
}

/// A failure that ended a running stage.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    pub message: String,
    #[source]
    pub source: Option<Cause>,
}

impl StageError {
    pub fn new(message: impl Into<String>) -> StageError {
        StageError {
            message: message.into(),
            source: None,
        }
    }

    /// `message: source`, keeping `source` as the error's cause.
    pub fn with_source(
        message: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StageError {
        StageError {
            message: format!("{message}: {source}"),
            source: Some(Box::new(source)),
        }
    }
}

pub use crate::types::Invalid;

/// Refuses a count of zero.
pub fn at_least_one(out: &mut Vec<Invalid>, field: &str, value: u64) {
    if value == 0 {
        out.push(Invalid::new(field, "must be at least 1"));
    }
}

/// Refuses a count outside `min..=max` (bounds that keep allocations sized by configuration
/// within reason).
pub fn in_range(out: &mut Vec<Invalid>, field: &str, value: u64, min: u64, max: u64) {
    if value < min || value > max {
        out.push(Invalid::new(
            field,
            format!("{value} is out of range: from {min} to {max}"),
        ));
    }
}

/// The checks every keyed, windowed stage (`dedup`, `aggregate`) makes: a key, room for at
/// least one key, a window above zero.
pub fn keyed_window(
    key: &[crate::event::Field],
    max_keys: u64,
    window: std::time::Duration,
) -> Vec<Invalid> {
    let mut out = Vec::new();
    non_empty_key(&mut out, "key", key);
    at_least_one(&mut out, "max_keys", max_keys);
    if window.is_zero() {
        out.push(Invalid::new("window", "must be above zero"));
    }
    out
}

/// Refuses an empty key.
pub fn non_empty_key(out: &mut Vec<Invalid>, field: &str, key: &[crate::event::Field]) {
    if key.is_empty() {
        out.push(Invalid::new(field, "name at least one event field"));
    }
}

/// A parsed stage config.
pub trait StageConfig: fmt::Debug + Send + Sync + 'static {
    /// Every check of the config that needs no network: ranges, URL schemes, names,
    /// templates, local certificate files. The loader calls it for every stage, so
    /// `validate`, `run` and reload give the same answer; the engine calls it again before
    /// building (pipelines assembled in code). Default: nothing to check beyond parsing.
    fn validate(&self) -> Vec<Invalid> {
        Vec::new()
    }

    /// What this stage may hold in memory at most, by its settings (`eventflow validate
    /// --memory`): see [`crate::budget`]. Default: nothing beyond the events passing through.
    fn memory(&self) -> Vec<crate::budget::Bound> {
        Vec::new()
    }

    /// What is allowed but usually a mistake (a followed file that does not exist yet):
    /// `validate` prints it, `run` logs it, neither refuses the pipeline.
    fn warnings(&self) -> Vec<Invalid> {
        Vec::new()
    }

    /// What a sink would write for `events` arriving together — a webhook's requests
    /// (`method`, `url`, `body`), a `sql` sink's rows, `stdout`'s lines — or why one could not
    /// be made (`eventflow test`). No network, no database. `None`: not a sink that writes.
    fn preview(
        &self,
        events: &[crate::event::EventData],
    ) -> Option<Vec<Result<serde_json::Value, String>>> {
        let _ = events;
        None
    }

    /// What this stage would do with `event` if it were the first event it saw, and why
    /// (`eventflow explain`). No network, no database. Default: it passes unchanged.
    fn explain(&self, event: &crate::event::EventData) -> Explanation {
        let _ = event;
        Explanation::new(
            Verdict::Passes,
            vec![Step::note("passes every event on unchanged")],
        )
    }

    /// Whether this stage must run on one replica at a time (a durable queue's deliveries, a
    /// paging sink's resolutions): with `leader_election: {mode: per_source}` it gets a Lease
    /// of its own, as the sources do. Default: no (it runs on every replica).
    fn alone(&self) -> bool {
        false
    }

    /// Whether this stage reads the events' `raw` object (`stdout` with `raw: true`, `sql`'s
    /// `raw` column): a source keeps it only when a stage downstream does. Default: no.
    fn uses_raw(&self) -> bool {
        false
    }

    /// For a source: whether it leaves `raw` out when no stage downstream reads it (see
    /// [`BuildContext::keep_raw`]); such a source is built again when that changes.
    fn raw_on_demand(&self) -> bool {
        false
    }

    /// What `eventflow test` runs in place of this transform when it needs what a test does
    /// not have (a cluster to watch): `None` runs the stage itself.
    fn offline(&self) -> Option<Arc<dyn StageConfig>> {
        None
    }

    /// Builds a runnable instance.
    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>>;
}

/// A transform that passes every event on unchanged (see [`StageConfig::offline`]).
#[derive(Debug)]
pub struct Passthrough;

impl FunctionTransform for Passthrough {
    fn transform(&mut self, batch: Batch) -> Batch {
        batch
    }
}

impl StageConfig for Passthrough {
    fn build<'a>(&'a self, _cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async {
            Ok(Stage::Transform(
                Box::new(Function(Passthrough)) as Box<dyn Transform>
            ))
        })
    }
}

/// A built, not yet running, stage.
pub enum Stage {
    Source(Box<dyn Source>),
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
}

/// The per-stage metrics every stage type shares.
#[derive(Clone)]
pub struct StageMetrics {
    pub id: Arc<str>,
    pub type_name: &'static str,
    pub received: Counter,
    pub bad_events: Counter,
    /// Time spent processing one batch (transform work, or a sink's write and commit).
    pub processing: metrics::Histogram,
}

impl StageMetrics {
    pub fn new(id: &str, type_name: &'static str) -> Self {
        StageMetrics {
            id: Arc::from(id),
            type_name,
            received: shared_metrics::received(id, type_name),
            bad_events: shared_metrics::stage_errors(id, type_name, "bad_event"),
            processing: shared_metrics::processing(id, type_name),
        }
    }

    /// The counter for events this stage drops on purpose, by reason.
    pub fn discarded(&self, reason: &'static str) -> Counter {
        shared_metrics::discarded(&self.id, self.type_name, reason)
    }
}

/// A stage's input: a bounded receiver that counts what arrives.
pub struct Input {
    rx: mpsc::Receiver<Batch>,
    /// A sink's tap: what it receives, copied to listeners.
    tap: Option<Arc<tap::TapPoint>>,
    received: Counter,
    depth: metrics::Gauge,
    /// Debug builds only: panic on receiving this batch (see [`fault_panic_at`]).
    panic_at: Option<u64>,
    batches: u64,
}

impl Input {
    pub fn new(rx: mpsc::Receiver<Batch>, metrics: &StageMetrics) -> Input {
        Input {
            rx,
            tap: None,
            received: metrics.received.clone(),
            depth: shared_metrics::queue_depth(&metrics.id, metrics.type_name),
            panic_at: fault_panic_at(&metrics.id),
            batches: 0,
        }
    }

    /// Copies what arrives to `tap`'s listeners (a sink's tap: the events entering it).
    #[must_use]
    pub fn tapped(mut self, tap: Arc<tap::TapPoint>) -> Input {
        self.tap = Some(tap);
        self
    }

    /// The next batch, or `None` once every upstream is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Batch> {
        let b = self.rx.recv().await?;
        if let Some(t) = &self.tap {
            t.publish(&b);
        }
        self.received.increment(b.len() as u64);
        self.depth.decrement(b.len() as f64);
        self.batches += 1;
        assert!(
            self.panic_at != Some(self.batches),
            "fault injected by EVENTFLOW_FAULT_PANIC at batch {}",
            self.batches
        );
        Some(b)
    }
}

/// A test-only hook, compiled into debug builds only: with `EVENTFLOW_FAULT_PANIC=ID:N`, the
/// stage `ID` panics when it receives its N-th batch (N from 1), holding that batch and
/// whatever it buffered. The tests use it to crash a real stage inside the real binary.
fn fault_panic_at(stage: &str) -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let v = std::env::var("EVENTFLOW_FAULT_PANIC").ok()?;
    let (id, n) = v.rsplit_once(':')?;
    (id == stage).then(|| n.parse().ok()).flatten()
}

/// Tells a source to stop reading.
#[derive(Clone)]
pub struct Shutdown(pub watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once shutdown is requested.
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

pub struct SourceContext {
    pub metrics: StageMetrics,
    pub out: Fanout,
    pub shutdown: Shutdown,
}

pub struct TransformContext {
    pub metrics: StageMetrics,
    pub input: Input,
    pub out: Fanout,
}

pub struct SinkContext {
    pub metrics: StageMetrics,
    pub input: Input,
}

pub trait Source: Send + 'static {
    /// Reads until the input ends or shutdown is requested, sending batches to `cx.out`.
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), StageError>>;
}

pub trait Transform: Send + 'static {
    /// Processes batches until the input closes, then flushes and returns.
    fn run(self: Box<Self>, cx: TransformContext) -> BoxFuture<'static, Result<(), StageError>>;
}

pub trait Sink: Send + 'static {
    /// Commits batches until the input closes, then flushes and returns.
    fn run(self: Box<Self>, cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>>;
}

/// A transform that maps each batch synchronously (filter and the like).
pub trait FunctionTransform: Send + 'static {
    /// Keeps, drops or rewrites the events of one batch.
    fn transform(&mut self, batch: Batch) -> Batch;
}

/// Runs a [`FunctionTransform`] as a [`Transform`].
pub struct Function<T>(pub T);

impl<T: FunctionTransform> Transform for Function<T> {
    fn run(
        self: Box<Self>,
        mut cx: TransformContext,
    ) -> BoxFuture<'static, Result<(), StageError>> {
        let mut t = self.0;
        Box::pin(async move {
            while let Some(batch) = cx.input.recv().await {
                let started = std::time::Instant::now();
                let out = t.transform(batch);
                cx.metrics
                    .processing
                    .record(started.elapsed().as_secs_f64());
                cx.out.send(out).await;
            }
            Ok(())
        })
    }
}

/// One row of the stage type table.
pub struct StageType {
    pub name: &'static str,
    pub kind: StageKind,
    pub summary: &'static str,
    pub parse: fn(&Node) -> Result<Arc<dyn StageConfig>, DeError>,
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Describes the metrics of this type (HELP lines); [`no_metrics`] if it has none of its
    /// own beyond the ones every stage has.
    pub describe: fn(),
}

/// For [`StageType::describe`]: a stage type without metrics of its own.
pub fn no_metrics() {}

/// Deserializes a stage's config, without the `type` and `inputs` keys every stage has.
pub fn parse_config<C: StageConfig + DeserializeOwned>(
    node: &Node,
) -> Result<Arc<dyn StageConfig>, DeError> {
    yaml::from_node_skipping::<C>(node, &["type", "inputs"])
        .map(|c| Arc::new(c) as Arc<dyn StageConfig>)
}

/// The schema of a stage's config.
pub fn schema_of<C: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.root_schema_for::<C>()
}

/// The stage types a pipeline may use, looked up by their `type:` name.
#[derive(Clone, Copy)]
pub struct Registry(pub &'static [StageType]);

impl Registry {
    /// The type named `name`.
    pub fn lookup(&self, name: &str) -> Option<&'static StageType> {
        self.0.iter().find(|t| t.name == name)
    }

    /// Every type's name, in table order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|t| t.name).collect()
    }

    /// Every type.
    pub fn types(&self) -> &'static [StageType] {
        self.0
    }
}
