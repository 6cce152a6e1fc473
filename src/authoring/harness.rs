//! What `eventflow test` runs a pipeline's real stages with — a source fed through a channel
//! and a sink that keeps what it receives — and a stage spec made in code. The engine's own
//! tests and benchmarks use them too (`testkit`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use indexmap::IndexMap;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::component::{
    BuildContext, BuildError, Sink, SinkContext, Source, SourceContext, Stage, StageConfig,
    StageError, StageKind,
};
use crate::config::StageSpec;
use crate::event::Batch;
use crate::event::ack::{Finalizer, Status};
use crate::event::{Event, EventData, Finalizers};
use crate::yaml::{Node, Pos, Value};

/// A stage spec made in code. `version` stands in for the YAML text: a different version is a
/// changed stage for reload.
pub fn spec(
    id: &str,
    type_name: &'static str,
    kind: StageKind,
    inputs: &[&str],
    config: Arc<dyn StageConfig>,
    version: i64,
) -> StageSpec {
    let mut map = IndexMap::new();
    let p = Pos::default();
    let n = |value| Node { pos: p, value };
    map.insert(
        "type".to_string(),
        (p, n(Value::Str(type_name.to_string()))),
    );
    map.insert(
        "inputs".to_string(),
        (
            p,
            n(Value::Seq(
                inputs
                    .iter()
                    .map(|i| n(Value::Str(i.to_string())))
                    .collect(),
            )),
        ),
    );
    map.insert("version".to_string(), (p, n(Value::Int(version))));
    StageSpec {
        id: id.to_string(),
        type_name,
        kind,
        inputs: inputs.iter().map(|s| (*s).to_string()).collect(),
        config,
        node: n(Value::Map(map)),
        pos: p,
    }
}

/// A source that emits batches handed to it through a channel, each with its own finalizer;
/// the status of every batch comes back on the returned receiver.
#[derive(Debug, Clone)]
pub struct ChannelSource {
    feed: Arc<Mutex<Option<mpsc::Receiver<Batch>>>>,
}

/// The feeding end of a [`ChannelSource`].
#[derive(Clone)]
pub struct Feeder(mpsc::Sender<Batch>);

impl Feeder {
    /// Sends events as one batch; returns a receiver of the batch's final status.
    pub async fn send(&self, events: Vec<EventData>) -> oneshot::Receiver<Status> {
        let (f, rx) = Finalizer::new();
        let batch = events
            .into_iter()
            .map(|d| Event::new(d, Finalizers::One(f.clone())))
            .collect();
        drop(f);
        let _ = self.0.send(batch).await;
        rx
    }

    /// Sends events without acknowledgements (as fast as possible).
    pub async fn send_plain(&self, batch: Batch) {
        let _ = self.0.send(batch).await;
    }
}

impl ChannelSource {
    pub fn new(capacity: usize) -> (ChannelSource, Feeder) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            ChannelSource {
                feed: Arc::new(Mutex::new(Some(rx))),
            },
            Feeder(tx),
        )
    }
}

impl StageConfig for ChannelSource {
    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let rx = self
                .feed
                .lock()
                .ok()
                .and_then(|mut g| g.take())
                .ok_or_else(|| cx.error("a ChannelSource can be built once"))?;
            Ok(Stage::Source(
                Box::new(ChannelSourceRun(rx)) as Box<dyn Source>
            ))
        })
    }
}

struct ChannelSourceRun(mpsc::Receiver<Batch>);

impl Source for ChannelSourceRun {
    fn run(self: Box<Self>, mut cx: SourceContext) -> BoxFuture<'static, Result<(), StageError>> {
        let mut rx = self.0;
        Box::pin(async move {
            loop {
                tokio::select! {
                    biased;
                    item = rx.recv() => match item {
                        Some(batch) => cx.out.send(batch).await,
                        None => return Ok(()),
                    },
                    () = cx.shutdown.requested() => {
                        // Stop taking new batches, but forward those already handed over:
                        // their finalizers are live, and dropping them would report them
                        // delivered.
                        rx.close();
                        while let Some(batch) = rx.recv().await {
                            cx.out.send(batch).await;
                        }
                        return Ok(());
                    }
                }
            }
        })
    }
}

/// A sink that counts events and keeps their uids. With `gate`, each batch waits for one
/// permit before it "commits", so a test decides when commits happen.
#[derive(Debug, Clone, Default)]
pub struct CountingSink {
    pub count: Arc<AtomicU64>,
    pub uids: Option<Arc<Mutex<Vec<String>>>>,
    pub gate: Option<Arc<Semaphore>>,
    /// Copies of the events received (without their acknowledgement handles).
    pub data: Option<Arc<Mutex<Vec<EventData>>>>,
}

impl CountingSink {
    pub fn recording() -> Self {
        CountingSink {
            uids: Some(Arc::default()),
            ..Self::default()
        }
    }

    pub fn collecting() -> Self {
        CountingSink {
            data: Some(Arc::default()),
            ..Self::recording()
        }
    }

    pub fn events(&self) -> Vec<EventData> {
        self.data
            .as_ref()
            .and_then(|u| u.lock().ok().map(|g| g.clone()))
            .unwrap_or_default()
    }

    pub fn gated(gate: Arc<Semaphore>) -> Self {
        CountingSink {
            gate: Some(gate),
            ..Self::recording()
        }
    }

    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    pub fn uids(&self) -> Vec<String> {
        self.uids
            .as_ref()
            .and_then(|u| u.lock().ok().map(|g| g.clone()))
            .unwrap_or_default()
    }
}

impl StageConfig for CountingSink {
    fn build<'a>(&'a self, _cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move { Ok(Stage::Sink(Box::new(self.clone()) as Box<dyn Sink>)) })
    }
}

impl Sink for CountingSink {
    fn run(self: Box<Self>, mut cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            while let Some(batch) = cx.input.recv().await {
                if let Some(g) = &self.gate {
                    match g.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return Ok(()),
                    }
                }
                if let Some(u) = &self.uids
                    && let Ok(mut g) = u.lock()
                {
                    g.extend(batch.iter().map(|e| e.uid.clone()));
                }
                if let Some(d) = &self.data
                    && let Ok(mut g) = d.lock()
                {
                    g.extend(batch.iter().map(|e| e.data().clone()));
                }
                self.count.fetch_add(batch.len() as u64, Ordering::AcqRel);
                crate::event::ack_all(&batch, Status::Delivered);
            }
            Ok(())
        })
    }
}
