//! `kube_events`: watches Events on an API server with the kube client.
//!
//! The list-then-watch loop is our own (over `Api::list` / `Api::watch`) rather than
//! `kube::runtime::watcher`, because the guarantees need control the watcher does not give:
//! - **each change once**: a map uid -> resourceVersion (see [`seen`]) suppresses versions
//!   already handled, so a relist (after a 410, a restart, an expired continue token)
//!   re-emits nothing unchanged;
//! - **nothing lost across restarts**: the map is checkpointed in the `state` database, but only
//!   for events whose batch was acknowledged by the sinks; after a restart the first list emits
//!   exactly what changed while eventflow was down (plus what was in flight at a kill);
//! - **never silently stopped**: every failure (list, watch start, a watch that closes at once
//!   with nothing in it, an HTTP 410 on the watch request) is retried with exponential backoff
//!   and jitter, counted, and logged; 401/403 name the permission that is missing; a watch that
//!   sends nothing for longer than its timeout is treated as dead;
//! - **TTL deletions are not user actions**: DELETED prunes the map and the checkpoint, and is
//!   not emitted;
//! - **bad data does not stop the stream**: an object that does not decode is logged and counted.

mod poison;
mod resource;
mod seen;
mod telemetry;
mod watch;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream::FuturesOrdered};
use kube::Api;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

pub use resource::{Flavor, KubeEvent};
pub use seen::{Admission, Checkpoint, Row, Seen};

use poison::{Attempts, Refused};
use watch::WatchLoop;
use writer::{CheckpointChange, Poison, write_checkpoint};

use crate::backoff::BackoffConfig;
use crate::component::MAX_BATCH;
use crate::component::{
    BuildContext, BuildError, Invalid, Shutdown, Source, SourceContext, Stage, StageConfig,
    StageError, StageKind, StageMetrics, StageType,
};
use crate::event::ack::{Finalizer, Report, Seq, Status};
use crate::event::{Event, EventData, Finalizers};
use crate::metrics as shared_metrics;
use crate::types::Dur;

/// Watches Kubernetes Events.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeEventsConfig {
    /// The name given to every event's `cluster` field. Default: the kubeconfig context name,
    /// or `in-cluster`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// A kubeconfig file. Default: in-cluster config, then `$KUBECONFIG`, then `~/.kube/config`.
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context. Default: its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// `core/v1` (default) or `events.k8s.io/v1`.
    #[serde(default)]
    pub api: Flavor,
    /// Namespaces to watch (one watch each). Empty: all namespaces (one watch).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// A label selector, e.g. `app=web`.
    #[serde(default)]
    pub label_selector: Option<String>,
    /// A field selector, e.g. `type=Warning` or `involvedObject.kind=Pod`.
    #[serde(default)]
    pub field_selector: Option<String>,
    /// At the first start without a checkpoint, skip events last seen longer ago than this.
    /// Default: emit everything the API server holds.
    #[serde(default)]
    pub max_event_age: Option<Dur>,
    /// Items per list page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Upper bound of Event versions remembered (memory and checkpoint rows). Past it, the
    /// tenth with the oldest last-seen times is forgotten.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
    /// The server-side timeout of each watch request; a watch silent for this long plus 10s
    /// is treated as dead and restarted.
    #[serde(default = "default_watch_timeout")]
    pub watch_timeout: Dur,
    /// Readiness: the source counts as not ready once its list or watch has been failing for
    /// this long.
    #[serde(default = "default_unready_after")]
    pub unready_after: Dur,
    /// Retries after a failed list or watch (reset after a watch that delivered something).
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// The most events waiting between this source and the stages after it (the k8m event handler's
    /// `watcher.buffer_size`): batches are cut to `buffer_size / 8` events, and an edge holds
    /// 8 batches. Default: batches of up to 512 events (4,096 waiting).
    #[serde(default)]
    pub buffer_size: Option<usize>,
    /// A version that a sink refuses for good (a row the database refuses, a webhook's 4xx)
    /// is not checkpointed, so it is sent again at the next start. After this many runs in
    /// which it was refused, the source gives up on it: it becomes a dead letter of the
    /// refusing sink (`eventflow dead-letter`) and the checkpoint moves past it. 0: never give
    /// up (send it again at every start).
    #[serde(default = "default_dead_letter_after")]
    pub dead_letter_after: u32,
}

impl KubeEventsConfig {
    /// The most events in one emitted batch.
    fn max_batch(&self) -> usize {
        self.buffer_size.map_or(MAX_BATCH, |b| {
            (b / crate::component::CHANNEL_CAPACITY).clamp(1, MAX_BATCH)
        })
    }
}

fn default_page_size() -> u32 {
    500
}
/// 900,000 rather than a round million: the map's table grows by doubling once it is 7/8
/// full, and 1,000,000 versions are just past the 917,504 that 2^20 buckets hold, which
/// doubles the table (and its peak while growing) for the last 8 % (see [`seen::map_bytes`]).
fn default_max_tracked() -> usize {
    900_000
}
fn default_watch_timeout() -> Dur {
    Dur::secs(290)
}
fn default_unready_after() -> Dur {
    Dur::secs(30)
}
fn default_dead_letter_after() -> u32 {
    3
}

pub const TYPE: StageType = StageType {
    name: "kube_events",
    kind: StageKind::Source,
    summary: "Watches Kubernetes Events (core/v1 or events.k8s.io/v1); each change once, checkpointed",
    parse: crate::component::parse_config::<KubeEventsConfig>,
    schema: crate::component::schema_of::<KubeEventsConfig>,
    describe: telemetry::describe,
};

impl StageConfig for KubeEventsConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        use crate::budget::{Bound, EVENT, size};
        vec![
            Bound::new(
                "Event versions remembered",
                format!(
                    "max_tracked {}: {} buckets x 33 B, half again while growing, 20 B each to evict",
                    self.max_tracked,
                    seen::buckets(self.max_tracked)
                ),
                seen::map_bytes(self.max_tracked),
            ),
            Bound::new(
                "list pages being read (one decoded while the next is fetched)",
                format!("2 x page_size {} x {}", self.page_size, size(EVENT)),
                2 * u64::from(self.page_size) * EVENT,
            ),
            Bound::new(
                "state database (checkpoint) page cache",
                format!(
                    "2 connections x {}",
                    size(crate::state::db::STATE_CACHE_BYTES)
                ),
                2 * crate::state::db::STATE_CACHE_BYTES,
            ),
        ]
    }

    fn raw_on_demand(&self) -> bool {
        true
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        crate::component::at_least_one(&mut out, "page_size", self.page_size.into());
        crate::component::at_least_one(&mut out, "max_tracked", self.max_tracked as u64);
        if let Some(b) = self.buffer_size {
            crate::component::at_least_one(&mut out, "buffer_size", b as u64);
        }
        // The API server takes whole seconds; below one the watch would have no timeout.
        if self.watch_timeout.0 < Duration::from_secs(1) {
            out.push(Invalid::new("watch_timeout", "must be at least 1s"));
        }
        if self.unready_after.0.is_zero() {
            out.push(Invalid::new("unready_after", "must be above zero"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let field = format!("namespaces[{i}]");
            if ns.is_empty() {
                out.push(Invalid::new(
                    field,
                    "an empty namespace name; omit `namespaces` to watch all",
                ));
            } else if !seen.insert(ns) {
                out.push(Invalid::new(field, format!("`{ns}` is listed twice")));
            }
        }
        out.extend(self.backoff.validate("backoff"));
        out
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let (client, context_name, server) =
                crate::kube_client::connect_to(self.kubeconfig.as_deref(), self.context.as_deref())
                    .await
                    .map_err(|e| cx.failed(e))?;
            let state = cx.state.clone().unwrap_or_default();
            let checkpoint = Checkpoint::open(&state.url, &cx.id).await.map_err(|e| {
                cx.error_from("field `state.url`: the state database (its checkpoint)", e)
            })?;
            let attempts = Attempts::open(checkpoint.db(), &cx.id).await.map_err(|e| {
                cx.error_from(
                    "field `state.url`: the state database (its dead letters)",
                    e,
                )
            })?;
            Ok(Stage::Source(Box::new(KubeSource {
                cfg: self.clone(),
                client,
                server: Arc::from(server),
                cluster: self.cluster.clone().unwrap_or(context_name),
                checkpoint,
                attempts,
                health: cx.health.clone(),
                leadership: cx.leadership.clone(),
                keep_raw: cx.keep_raw,
            }) as Box<dyn Source>))
        })
    }
}

struct KubeSource {
    cfg: KubeEventsConfig,
    client: kube::Client,
    /// The API server's URL, for messages.
    server: Arc<str>,
    cluster: String,
    checkpoint: Checkpoint,
    /// Refused versions on record, towards dead letters.
    attempts: Attempts,
    health: crate::health::Health,
    leadership: crate::leader::Leadership,
    /// Whether a stage downstream reads `raw` (else each object's text is not kept).
    keep_raw: bool,
}

/// What a watch loop hands to the source task.
enum FromWatch {
    /// New versions to emit, with their checkpoint rows.
    Emit(Vec<EventData>, Vec<Row>),
    /// Versions handled without being emitted (skipped as too old).
    Handled(Vec<Row>),
    /// Uids to remove from the checkpoint.
    Forget(Vec<String>),
}

/// Counters of one source.
#[derive(Clone)]
struct Counters {
    read: metrics::Counter,
    already_seen: metrics::Counter,
    too_old: metrics::Counter,
    deleted: metrics::Counter,
    malformed: metrics::Counter,
    evicted: metrics::Counter,
    last_event: metrics::Gauge,
    checkpoint_errors: metrics::Counter,
    list_errors: metrics::Counter,
    watch_errors: metrics::Counter,
    forbidden: metrics::Counter,
    unauthorized: metrics::Counter,
    restarts_closed: metrics::Counter,
    restarts_error: metrics::Counter,
    restarts_empty: metrics::Counter,
    relist_initial: metrics::Counter,
    relist_expired: metrics::Counter,
    relist_empty: metrics::Counter,
    relist_error: metrics::Counter,
}

impl Source for KubeSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(run(*self, cx))
    }
}

/// The source task: restores the checkpoint, starts one watch loop per namespace, emits their
/// batches and turns acknowledgements into checkpoint rows, until shutdown.
async fn run(src: KubeSource, cx: SourceContext) -> Result<(), StageError> {
    let SourceContext {
        metrics: sm,
        mut out,
        mut shutdown,
    } = cx;
    let counters = counters(&sm);
    let mut leadership = src.leadership.clone();
    let result = loop {
        // A standby waits to lead; without leader election this replica always leads.
        if !leadership.is_leader() {
            tokio::select! {
                () = shutdown.requested() => break Ok(()),
                () = leadership.acquired() => {}
            }
        }
        // One term: watch until shutdown, or until this replica stops leading.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut until_lost = leadership.clone();
        let mut outer = shutdown.clone();
        let stopper = tokio::spawn(async move {
            tokio::select! {
                () = outer.requested() => {}
                () = until_lost.lost() => {}
            }
            let _ = stop_tx.send(true);
        });
        let term = lead(&src, &sm, &counters, &mut out, Shutdown(stop)).await;
        stopper.abort();
        // What this term read is acknowledged and checkpointed: a graceful handover may
        // release the Lease.
        leadership.term_ended();
        if let Err(e) = term {
            break Err(e);
        }
        if shutdown.is_requested() {
            break Ok(());
        }
        tracing::info!(stage = %sm.id, "no longer the leader: watches stopped, what they read was handed over; standing by");
    };
    src.checkpoint.close().await;
    result
}

/// One term as the reading replica: restores the checkpoint (which another replica may have
/// advanced), watches until `stop`, then waits for what was emitted to be acknowledged and
/// checkpointed.
async fn lead(
    src: &KubeSource,
    sm: &StageMetrics,
    counters: &Counters,
    out: &mut crate::component::Fanout,
    stop: Shutdown,
) -> Result<(), StageError> {
    let health = src.health.register(&sm.id, src.cfg.unready_after.0);
    let slots: Vec<Option<String>> = if src.cfg.namespaces.is_empty() {
        vec![None]
    } else {
        src.cfg.namespaces.iter().cloned().map(Some).collect()
    };
    let (seen, first_start) = restore(src, &slots).await?;
    let seen = Arc::new(Mutex::new(seen));
    let cluster: Arc<str> = Arc::from(src.cluster.as_str());
    let (tx, rx) = mpsc::channel::<FromWatch>(4);
    let loops: Vec<_> = slots
        .into_iter()
        .enumerate()
        .map(|(slot, namespace)| {
            macro_rules! spawn_loop {
                ($raw:literal) => {{
                    let api: Api<KubeEvent<$raw>> = match &namespace {
                        Some(ns) => Api::namespaced_with(src.client.clone(), ns, &src.cfg.api),
                        None => Api::all_with(src.client.clone(), &src.cfg.api),
                    };
                    let w = WatchLoop {
                        api,
                        slot: u16::try_from(slot).unwrap_or(u16::MAX),
                        namespace,
                        cfg: src.cfg.clone(),
                        cluster: cluster.clone(),
                        server: src.server.clone(),
                        seen: seen.clone(),
                        tx: tx.clone(),
                        counters: counters.clone(),
                        first_start,
                        health: health.clone(),
                    };
                    // In the stage's span, so its logs (a 401, a 403) name the stage like the
                    // rest.
                    tokio::spawn(tracing::Instrument::instrument(
                        Arc::new(w).run(stop.clone()),
                        tracing::Span::current(),
                    ))
                }};
            }
            if src.keep_raw {
                spawn_loop!(true)
            } else {
                spawn_loop!(false)
            }
        })
        .collect();
    drop(tx);
    let (wtx, wrx) = mpsc::channel::<CheckpointChange>(64);
    let writer = tokio::spawn(write_checkpoint(
        src.checkpoint.clone(),
        wrx,
        counters.clone(),
        Poison {
            attempts: src.attempts.clone(),
            limit: src.cfg.dead_letter_after,
            stage: sm.id.to_string(),
        },
    ));
    let pending = forward(rx, out, &wtx).await;
    // The watch loops have stopped: record what the sinks still commit.
    for l in loops {
        let _ = l.await;
    }
    drain_acks(pending, &wtx).await;
    drop(wtx);
    let _ = writer.await;
    health.stopped();
    Ok(())
}

/// The checkpointed versions as a [`Seen`] map (rows of namespaces no longer watched are
/// pruned), and whether this is the first start (nothing checkpointed).
async fn restore(src: &KubeSource, slots: &[Option<String>]) -> Result<(Seen, bool), StageError> {
    let loaded = src
        .checkpoint
        .load()
        .await
        .map_err(|e| StageError::with_source("cannot read the checkpoint", e))?;
    let mut seen = Seen::new(src.cfg.max_tracked);
    let mut stale = Vec::new();
    for r in &loaded {
        let slot = slots
            .iter()
            .position(|s| s.as_deref().is_none_or(|ns| ns == r.namespace()))
            .and_then(|i| u16::try_from(i).ok());
        match slot {
            Some(i) => {
                let _ = seen.admit(r.uid(), r.resource_version(), r.last_seen, i, 0);
            }
            None => stale.push(r.uid().to_string()),
        }
    }
    if let Err(e) = src.checkpoint.forget(&stale).await {
        tracing::warn!(error = %e, "cannot prune the checkpoint");
    }
    tracing::info!(
        cluster = %src.cluster,
        server = %src.server,
        checkpointed = seen.len(),
        namespaces = ?src.cfg.namespaces,
        "watching Events"
    );
    Ok((seen, loaded.is_empty()))
}

/// What an emitted batch's acknowledgement means for the checkpoint: the rows delivered, and
/// the rows a sink refused (with why).
#[derive(Default)]
struct Acked {
    delivered: Vec<Row>,
    refused: Vec<Refused>,
}

/// The checkpoint rows of an emitted batch, once its acknowledgement says which were delivered.
type PendingAck = BoxFuture<'static, Acked>;

/// Only delivered versions move the checkpoint: an errored or rejected one is replayed at the
/// next start (a refused one counts towards its dead letter). A finalizer dropped without a
/// report means the engine went away: nothing of the batch was delivered.
fn delivered_rows(done: oneshot::Receiver<Report>, rows: Vec<Row>) -> PendingAck {
    Box::pin(async move {
        let report = done.await.unwrap_or_else(|_| Report::all_failed());
        if report.status == Status::Delivered {
            return Acked {
                delivered: rows,
                refused: Vec::new(),
            };
        }
        let mut acked = Acked::default();
        for (row, i) in rows.into_iter().zip(0..) {
            if report.delivered(i) {
                acked.delivered.push(row);
                continue;
            }
            let refusals: Vec<_> = report.refusals_of(i).cloned().collect();
            if !refusals.is_empty() {
                acked.refused.push(Refused { row, refusals });
            }
        }
        acked
    })
}

/// Hands an acknowledged batch's changes to the writer.
async fn settle(acked: Acked, wtx: &mpsc::Sender<CheckpointChange>) {
    if !acked.delivered.is_empty() {
        let _ = wtx.send(CheckpointChange::Save(acked.delivered)).await;
    }
    if !acked.refused.is_empty() {
        let _ = wtx.send(CheckpointChange::Refused(acked.refused)).await;
    }
}

/// Emits the watch loops' batches and hands checkpoint changes to the writer until the loops
/// stop. Acks are processed in emission order, so a uid's newest version is checkpointed last;
/// only this task turns statuses into rows. Returns the acknowledgements still outstanding.
async fn forward(
    mut rx: mpsc::Receiver<FromWatch>,
    out: &mut crate::component::Fanout,
    wtx: &mpsc::Sender<CheckpointChange>,
) -> FuturesOrdered<PendingAck> {
    let mut pending: FuturesOrdered<PendingAck> = FuturesOrdered::new();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(FromWatch::Emit(events, rows)) => {
                    let (fin, done) = Finalizer::reporting();
                    let batch: Vec<Event> = events
                        .into_iter()
                        .zip(0..)
                        .map(|(d, i): (EventData, Seq)| Event::in_batch(d, Finalizers::One(fin.clone()), i))
                        .collect();
                    drop(fin);
                    pending.push_back(delivered_rows(done, rows));
                    out.send(batch).await;
                }
                Some(FromWatch::Handled(rows)) => {
                    let _ = wtx.send(CheckpointChange::Save(rows)).await;
                }
                Some(FromWatch::Forget(uids)) => {
                    let _ = wtx.send(CheckpointChange::Forget(uids)).await;
                }
                None => return pending,
            },
            Some(acked) = pending.next(), if !pending.is_empty() => settle(acked, wtx).await,
        }
    }
}

/// Waits for the outstanding acknowledgements and checkpoints what they delivered.
async fn drain_acks(mut pending: FuturesOrdered<PendingAck>, wtx: &mpsc::Sender<CheckpointChange>) {
    while let Some(acked) = pending.next().await {
        settle(acked, wtx).await;
    }
}

fn counters(sm: &StageMetrics) -> Counters {
    Counters {
        read: shared_metrics::received(&sm.id, sm.type_name),
        already_seen: sm.discarded("already_seen"),
        too_old: sm.discarded("too_old"),
        deleted: sm.discarded("deleted"),
        malformed: sm.discarded("malformed"),
        evicted: telemetry::kube_checkpoint_evicted(&sm.id),
        last_event: shared_metrics::last_event_time(&sm.id),
        checkpoint_errors: shared_metrics::stage_errors(&sm.id, sm.type_name, "checkpoint"),
        list_errors: shared_metrics::stage_errors(&sm.id, sm.type_name, "list"),
        watch_errors: shared_metrics::stage_errors(&sm.id, sm.type_name, "watch"),
        forbidden: shared_metrics::stage_errors(&sm.id, sm.type_name, "forbidden"),
        unauthorized: shared_metrics::stage_errors(&sm.id, sm.type_name, "unauthorized"),
        restarts_closed: telemetry::watch_restarts(&sm.id, "closed"),
        restarts_error: telemetry::watch_restarts(&sm.id, "error"),
        restarts_empty: telemetry::watch_restarts(&sm.id, "empty"),
        relist_initial: telemetry::relists(&sm.id, "initial"),
        relist_expired: telemetry::relists(&sm.id, "expired"),
        relist_empty: telemetry::relists(&sm.id, "empty_watches"),
        relist_error: telemetry::relists(&sm.id, "error"),
    }
}
