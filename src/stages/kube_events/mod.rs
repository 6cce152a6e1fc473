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

mod resource;
mod seen;
mod telemetry;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream::FuturesOrdered};
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

pub use resource::{Flavor, KubeEvent};
pub use seen::{Admission, Checkpoint, Row, Seen};

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
    #[serde(default)]
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
fn default_max_tracked() -> usize {
    1_000_000
}
fn default_watch_timeout() -> Dur {
    Dur::secs(290)
}
fn default_unready_after() -> Dur {
    Dur::secs(30)
}

pub const TYPE: StageType = StageType {
    name: "kube_events",
    kind: StageKind::Source,
    summary: "Watches Kubernetes Events (core/v1 or events.k8s.io/v1); each change once, checkpointed",
    parse: crate::component::parse_config::<KubeEventsConfig>,
    schema: crate::component::schema_of::<KubeEventsConfig>,
    describe: telemetry::describe,
};

/// Where the client configuration came from, for messages.
fn kube_config_sources() -> String {
    let kc = std::env::var("KUBECONFIG").unwrap_or_default();
    format!(
        "in-cluster service account (KUBERNETES_SERVICE_HOST {}), $KUBECONFIG ({}), ~/.kube/config",
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            "set"
        } else {
            "not set"
        },
        if kc.is_empty() {
            "not set"
        } else {
            kc.as_str()
        }
    )
}

/// Whether any Kubernetes client configuration can be found (for the embedded default pipeline).
pub fn kube_config_available() -> Result<(), String> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Ok(());
    }
    match kube::config::Kubeconfig::read() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "no Kubernetes configuration found (looked for: {}): {e}",
            kube_config_sources()
        )),
    }
}

/// The client config of a kubeconfig's context (`context`, else its current one), and the
/// context's name. `what` names the file in errors.
async fn from_kubeconfig(
    kc: kube::config::Kubeconfig,
    context: Option<&str>,
    opts: &kube::config::KubeConfigOptions,
    what: &str,
) -> Result<(kube::Config, String), String> {
    let name = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())
        .unwrap_or_else(|| "default".to_string());
    let cfg = kube::Config::from_custom_kubeconfig(kc, opts)
        .await
        .map_err(|e| format!("{what}: {}", crate::redact::parse_error(&e.to_string())))?;
    Ok((cfg, name))
}

/// Builds the client config and names the cluster.
pub async fn client_config(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<(kube::Config, String), String> {
    let opts = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let (mut cfg, name) = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                format!(
                    "field `kubeconfig`: cannot read {}: {}",
                    path.display(),
                    crate::redact::parse_error(&e.to_string())
                )
            })?;
            from_kubeconfig(
                kc,
                context,
                &opts,
                &format!("field `kubeconfig`: {}", path.display()),
            )
            .await?
        }
        None => {
            let incluster = if context.is_none() {
                kube::Config::incluster().ok()
            } else {
                None
            };
            match incluster {
                Some(cfg) => (cfg, "in-cluster".to_string()),
                None => {
                    let kc = kube::config::Kubeconfig::read().map_err(|e| {
                        format!(
                            "no Kubernetes configuration found (looked for: {}): {}",
                            kube_config_sources(),
                            crate::redact::parse_error(&e.to_string())
                        )
                    })?;
                    from_kubeconfig(kc, context, &opts, "kubeconfig").await?
                }
            }
        }
    };
    if let Some(p) = cfg.proxy_url.take() {
        tracing::warn!(proxy = %crate::redact::url(&p.to_string()), "HTTPS_PROXY is ignored for the Kubernetes API (eventflow connects directly)");
    }
    Ok((cfg, name))
}

impl StageConfig for KubeEventsConfig {
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
            let err = |message: String| cx.error(message);
            let _ = rustls::crypto::ring::default_provider().install_default();
            let (cfg, context_name) =
                client_config(self.kubeconfig.as_deref(), self.context.as_deref())
                    .await
                    .map_err(&err)?;
            let client = kube::Client::try_from(cfg)
                .map_err(|e| err(format!("cannot build the Kubernetes client: {e}")))?;
            let state = cx.state.clone().unwrap_or_default();
            let checkpoint = Checkpoint::open(&state.url, &cx.id)
                .await
                .map_err(|e| cx.error_from("state database", e))?;
            Ok(Stage::Source(Box::new(KubeSource {
                cfg: self.clone(),
                client,
                cluster: self.cluster.clone().unwrap_or(context_name),
                checkpoint,
                health: cx.health.clone(),
            }) as Box<dyn Source>))
        })
    }
}

struct KubeSource {
    cfg: KubeEventsConfig,
    client: kube::Client,
    cluster: String,
    checkpoint: Checkpoint,
    health: crate::health::Health,
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

use crate::health::StageHealth;

impl Source for KubeSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(run(*self, cx))
    }
}

async fn run(src: KubeSource, cx: SourceContext) -> Result<(), StageError> {
    let SourceContext {
        metrics: sm,
        mut out,
        shutdown,
    } = cx;
    let counters = counters(&sm);
    let health = src.health.register(&sm.id, src.cfg.unready_after.0);
    let loaded = match src.checkpoint.load().await {
        Ok(rows) => rows,
        Err(e) => {
            return Err(StageError::with_source("cannot read the checkpoint", e));
        }
    };
    let first_start = loaded.is_empty();
    let slots: Vec<Option<String>> = if src.cfg.namespaces.is_empty() {
        vec![None]
    } else {
        src.cfg.namespaces.iter().cloned().map(Some).collect()
    };
    let mut seen = Seen::new(src.cfg.max_tracked);
    let mut stale = Vec::new();
    for r in &loaded {
        let slot = slots
            .iter()
            .position(|s| s.as_deref().is_none_or(|ns| ns == r.namespace()));
        match slot {
            Some(i) => {
                let _ = seen.admit(r.uid(), r.resource_version(), r.last_seen, i as u16, 0);
            }
            None => stale.push(r.uid().to_string()),
        }
    }
    if let Err(e) = src.checkpoint.forget(&stale).await {
        tracing::warn!(error = %e, "cannot prune the checkpoint");
    }
    tracing::info!(
        cluster = %src.cluster,
        checkpointed = seen.len(),
        namespaces = ?src.cfg.namespaces,
        "watching Events"
    );
    let seen = Arc::new(Mutex::new(seen));
    let cluster: Arc<str> = Arc::from(src.cluster.as_str());
    let flavor = src.cfg.api;
    let (tx, mut rx) = mpsc::channel::<FromWatch>(4);
    let mut loops = Vec::new();
    for (i, ns) in slots.iter().enumerate() {
        let api: Api<KubeEvent> = match ns {
            Some(ns) => Api::namespaced_with(src.client.clone(), ns, &flavor),
            None => Api::all_with(src.client.clone(), &flavor),
        };
        let w = WatchLoop {
            api,
            slot: i as u16,
            namespace: ns.clone(),
            cfg: src.cfg.clone(),
            cluster: cluster.clone(),
            seen: seen.clone(),
            tx: tx.clone(),
            counters: counters.clone(),
            first_start,
            health: health.clone(),
        };
        loops.push(tokio::spawn(w.run(shutdown.clone())));
    }
    drop(tx);

    // Acks are processed in emission order, so a uid's newest version is checkpointed last.
    // Only this task turns statuses into checkpoint rows; the writer task just writes them.
    type Pending = BoxFuture<'static, Vec<Row>>;
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let ack = |rx: oneshot::Receiver<Report>, rows: Vec<Row>| -> Pending {
        Box::pin(async move {
            // Only delivered versions move the checkpoint: an errored or rejected one is
            // replayed at the next start. A finalizer dropped without a report means the
            // engine went away: nothing of the batch was delivered.
            let report = rx.await.unwrap_or_else(|_| Report::all_failed());
            if report.status == Status::Delivered {
                return rows;
            }
            rows.into_iter()
                .enumerate()
                .filter(|(i, _)| report.delivered(*i as Seq))
                .map(|(_, r)| r)
                .collect()
        })
    };
    let (wtx, wrx) = mpsc::channel::<CheckpointChange>(64);
    let writer = tokio::spawn(write_checkpoint(src.checkpoint, wrx, counters.clone()));
    let mut msgs_open = true;
    while msgs_open {
        tokio::select! {
            msg = rx.recv(), if msgs_open => match msg {
                Some(FromWatch::Emit(events, rows)) => {
                    let (fin, done) = Finalizer::reporting();
                    let batch: Vec<Event> = events
                        .into_iter()
                        .enumerate()
                        .map(|(i, d)| Event::in_batch(d, Finalizers::One(fin.clone()), i as Seq))
                        .collect();
                    drop(fin);
                    pending.push_back(ack(done, rows));
                    out.send(batch).await;
                }
                Some(FromWatch::Handled(rows)) => {
                    let _ = wtx.send(CheckpointChange::Save(rows)).await;
                }
                Some(FromWatch::Forget(uids)) => {
                    let _ = wtx.send(CheckpointChange::Forget(uids)).await;
                }
                None => msgs_open = false,
            },
            Some(rows) = pending.next(), if !pending.is_empty() => {
                if !rows.is_empty() {
                    let _ = wtx.send(CheckpointChange::Save(rows)).await;
                }
            }
        }
    }
    // The watch loops have stopped (shutdown): hand off, then record what the sinks commit.
    drop(out);
    for l in loops {
        let _ = l.await;
    }
    while let Some(rows) = pending.next().await {
        if !rows.is_empty() {
            let _ = wtx.send(CheckpointChange::Save(rows)).await;
        }
    }
    drop(wtx);
    let _ = writer.await;
    health.stopped();
    Ok(())
}

/// A change to the checkpoint.
enum CheckpointChange {
    Save(Vec<Row>),
    Forget(Vec<String>),
}

/// Writes checkpoint changes in order, coalescing what is queued into one transaction.
async fn write_checkpoint(cp: Checkpoint, mut rx: mpsc::Receiver<CheckpointChange>, c: Counters) {
    let mut buf: Vec<Row> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(w) = next.take() {
            match w {
                CheckpointChange::Save(rows) => buf.extend(rows),
                CheckpointChange::Forget(uids) => {
                    save(&cp, &mut buf, &c).await;
                    if let Err(e) = cp.forget(&uids).await {
                        c.checkpoint_errors.increment(1);
                        tracing::warn!(error = %e, "cannot prune the checkpoint");
                    }
                }
            }
            if buf.len() < 5000 {
                next = rx.try_recv().ok();
            }
        }
        save(&cp, &mut buf, &c).await;
    }
    save(&cp, &mut buf, &c).await;
    cp.close().await;
}

async fn save(cp: &Checkpoint, rows: &mut Vec<Row>, c: &Counters) {
    if rows.is_empty() {
        return;
    }
    let mut backoff = BackoffConfig::new(Dur::millis(100), Dur::secs(2)).start();
    for attempt in 0..5 {
        match cp.save(rows).await {
            Ok(()) => {
                rows.clear();
                return;
            }
            Err(e) => {
                c.checkpoint_errors.increment(1);
                tracing::warn!(error = %e, attempt, "cannot write the checkpoint; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    // Keep the rows for the next write, within a bound.
    if rows.len() > 100_000 {
        tracing::error!(
            rows = rows.len(),
            "checkpoint writes keep failing; dropping the oldest pending rows (those events may be emitted again after a restart)"
        );
        rows.drain(..rows.len() - 100_000);
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

struct WatchLoop {
    api: Api<KubeEvent>,
    slot: u16,
    namespace: Option<String>,
    cfg: KubeEventsConfig,
    cluster: Arc<str>,
    seen: Arc<Mutex<Seen>>,
    tx: mpsc::Sender<FromWatch>,
    counters: Counters,
    first_start: bool,
    health: Arc<StageHealth>,
}

/// What the loop does next (after a delay).
enum Next {
    /// List (again): at the start, or when the resourceVersion is gone.
    Relist,
    /// Watch from this resourceVersion.
    Watch(String),
}

/// The accumulated output of a batch of items.
#[derive(Default)]
struct PageOut {
    /// Objects read (counted once per batch).
    read: u64,
    emit: Vec<EventData>,
    rows: Vec<Row>,
    handled: Vec<Row>,
    forget: Vec<String>,
}

impl WatchLoop {
    fn verb_target(&self) -> String {
        let group = match self.cfg.api {
            Flavor::CoreV1 => "\"\" (core)",
            Flavor::EventsV1 => "\"events.k8s.io\"",
        };
        let scope = match &self.namespace {
            Some(ns) => format!("in namespace `{ns}`"),
            None => "cluster-wide (all namespaces)".to_string(),
        };
        format!("resource `events` in API group {group} {scope}")
    }

    /// Logs and counts an API error; returns true when it is a 410 Gone.
    fn report(&self, what: &str, e: &kube::Error) -> bool {
        if let kube::Error::Api(s) = e {
            match s.code {
                403 => {
                    self.counters.forbidden.increment(1);
                    tracing::error!(
                        message = %s.message,
                        "the API server refused to {what} Events (403 Forbidden): grant the verbs `list` and `watch` on {} to the identity eventflow runs as (its kubeconfig user or service account)",
                        self.verb_target()
                    );
                    return false;
                }
                401 => {
                    self.counters.unauthorized.increment(1);
                    tracing::error!(message = %s.message, "the API server did not accept eventflow's credentials (401 Unauthorized) when trying to {what} Events: check the kubeconfig user's token or certificate");
                    return false;
                }
                410 => return true,
                _ => {}
            }
        }
        tracing::warn!(error = %e, "cannot {what} Events; retrying with backoff");
        false
    }

    async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = self.cfg.backoff.start();
        let mut generation: u32 = 0;
        let mut next = Next::Relist;
        let mut delay = Duration::ZERO;
        let mut empty_in_a_row = 0u32;
        let mut listed_once = false;
        loop {
            if !delay.is_zero() {
                tokio::select! {
                    _ = shutdown.requested() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if shutdown.is_requested() {
                return;
            }
            (next, delay) = match next {
                Next::Relist => {
                    generation += 1;
                    if !listed_once {
                        self.counters.relist_initial.increment(1);
                    }
                    match self.list(generation, !listed_once, &mut shutdown).await {
                        Ok(Some(rv)) => {
                            listed_once = true;
                            self.health.synced();
                            (Next::Watch(rv), Duration::ZERO)
                        }
                        Ok(None) => return,
                        Err(e) => {
                            // A 410 here is an expired continue token: the list starts over.
                            self.counters.list_errors.increment(1);
                            self.counters.relist_error.increment(1);
                            self.health.failing();
                            self.report("list", &e);
                            (Next::Relist, backoff.next_delay())
                        }
                    }
                }
                Next::Watch(rv) => {
                    let started = tokio::time::Instant::now();
                    match self.watch(&rv, &mut shutdown).await {
                        WatchEnd::Shutdown => return,
                        WatchEnd::StartFailed(e) => {
                            self.counters.watch_errors.increment(1);
                            self.counters.restarts_error.increment(1);
                            self.health.failing();
                            if self.report("watch", &e) {
                                // An HTTP 410 on the watch itself: kube would retry the same
                                // resourceVersion forever; a relist is the way out.
                                self.counters.relist_expired.increment(1);
                                (Next::Relist, backoff.next_delay())
                            } else {
                                (Next::Watch(rv), backoff.next_delay())
                            }
                        }
                        WatchEnd::Expired => {
                            self.counters.relist_expired.increment(1);
                            tracing::info!("the watch's resourceVersion expired (410); relisting");
                            (Next::Relist, Duration::ZERO)
                        }
                        WatchEnd::Ended { rv: last, items }
                            if items == 0 && started.elapsed() < Duration::from_secs(1) =>
                        {
                            // A watch that ends at once with nothing in it: something between
                            // us and the server is closing it. Back off, and after three in a
                            // row relist.
                            self.health.synced();
                            empty_in_a_row += 1;
                            self.counters.restarts_empty.increment(1);
                            if empty_in_a_row >= 3 {
                                empty_in_a_row = 0;
                                self.counters.relist_empty.increment(1);
                                tracing::warn!(
                                    "the watch keeps closing at once with no events; relisting"
                                );
                                (Next::Relist, backoff.next_delay())
                            } else {
                                (Next::Watch(last), backoff.next_delay())
                            }
                        }
                        WatchEnd::Ended { rv: last, .. } => {
                            self.health.synced();
                            empty_in_a_row = 0;
                            backoff.reset();
                            self.counters.restarts_closed.increment(1);
                            (Next::Watch(last), Duration::ZERO)
                        }
                    }
                }
            };
        }
    }

    fn list_params(&self) -> ListParams {
        let mut lp = ListParams::default().limit(self.cfg.page_size.max(1));
        if let Some(l) = &self.cfg.label_selector {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.cfg.field_selector {
            lp = lp.fields(f);
        }
        lp
    }

    /// Lists every page; emits what is new; forgets what is gone. Returns the list's rv.
    async fn list(
        &self,
        generation: u32,
        initial: bool,
        shutdown: &mut Shutdown,
    ) -> Result<Option<String>, kube::Error> {
        let mut lp = self.list_params();
        let mut list_rv: Option<String> = None;
        loop {
            let page = tokio::select! {
                _ = shutdown.requested() => return Ok(None),
                p = self.api.list(&lp) => p?,
            };
            if list_rv.is_none() {
                list_rv = page.metadata.resource_version.clone();
            }
            let mut out = PageOut::default();
            {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                for item in page.items {
                    self.take(&mut seen, item, generation, initial, &mut out);
                }
            }
            if !self.send(out).await {
                return Ok(None);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp.continue_token = Some(c),
                None => break,
            }
        }
        let gone = self
            .seen
            .lock()
            .map(|mut s| s.sweep(self.slot, generation))
            .unwrap_or_default();
        if !gone.is_empty() && self.tx.send(FromWatch::Forget(gone)).await.is_err() {
            return Ok(None);
        }
        Ok(Some(list_rv.unwrap_or_default()))
    }

    /// Decides what to do with one object.
    fn take(
        &self,
        seen: &mut Seen,
        item: KubeEvent,
        generation: u32,
        initial_list: bool,
        out: &mut PageOut,
    ) {
        out.read += 1;
        let data = match item.data {
            Ok(d) => d,
            Err(e) => {
                self.counters.malformed.increment(1);
                tracing::warn!(
                    namespace = item.meta.namespace.as_deref().unwrap_or(""),
                    name = item.meta.name.as_deref().unwrap_or(""),
                    error = %e,
                    "skipping an Event that cannot be decoded"
                );
                return;
            }
        };
        let last = data
            .last_seen
            .map(|t| t.timestamp())
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        let evicted = match seen.admit(
            &data.uid,
            &data.resource_version,
            last,
            self.slot,
            generation,
        ) {
            Admission::AlreadySeen => {
                self.counters.already_seen.increment(1);
                return;
            }
            Admission::New { evicted } => evicted,
        };
        let row = Row::new(&data.uid, &data.namespace, &data.resource_version, last);
        if !evicted.is_empty() {
            self.counters.evicted.increment(evicted.len() as u64);
            tracing::warn!(
                evicted = evicted.len(),
                max_tracked = self.cfg.max_tracked,
                "more Event versions than `max_tracked`: forgot the oldest tenth"
            );
            out.forget.extend(evicted);
        }
        if initial_list
            && self.first_start
            && let Some(age) = self.cfg.max_event_age
            && chrono::Utc::now().timestamp() - last > age.0.as_secs() as i64
        {
            self.counters.too_old.increment(1);
            out.handled.push(row);
            return;
        }
        let mut data = data;
        data.cluster = self.cluster.clone();
        out.emit.push(data);
        out.rows.push(row);
    }

    /// Hands a batch to the source task; false once the source is gone.
    async fn send(&self, out: PageOut) -> bool {
        if out.read > 0 {
            self.counters.read.increment(out.read);
            self.counters
                .last_event
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        let PageOut {
            read: _,
            mut emit,
            mut rows,
            handled,
            forget,
        } = out;
        if !forget.is_empty() && self.tx.send(FromWatch::Forget(forget)).await.is_err() {
            return false;
        }
        if !handled.is_empty() && self.tx.send(FromWatch::Handled(handled)).await.is_err() {
            return false;
        }
        while !emit.is_empty() {
            let n = emit.len().min(self.cfg.max_batch());
            let rest_e = emit.split_off(n);
            let rest_r = rows.split_off(n);
            if self.tx.send(FromWatch::Emit(emit, rows)).await.is_err() {
                return false;
            }
            emit = rest_e;
            rows = rest_r;
        }
        true
    }

    async fn watch(&self, rv: &str, shutdown: &mut Shutdown) -> WatchEnd {
        let timeout = self.cfg.watch_timeout.0.as_secs().clamp(1, u32::MAX as u64) as u32;
        let mut wp = WatchParams::default().timeout(timeout);
        if let Some(l) = &self.cfg.label_selector {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.cfg.field_selector {
            wp = wp.fields(f);
        }
        let stream = tokio::select! {
            _ = shutdown.requested() => return WatchEnd::Shutdown,
            s = self.api.watch(&wp, rv) => match s {
                Ok(s) => {
                    self.health.synced();
                    s
                }
                Err(e) => return WatchEnd::StartFailed(e),
            },
        };
        let idle = self.cfg.watch_timeout.0 + Duration::from_secs(10);
        let mut stream = std::pin::pin!(stream.ready_chunks(self.cfg.max_batch()));
        let mut last = rv.to_string();
        let mut items = 0u64;
        loop {
            let chunk = tokio::select! {
                _ = shutdown.requested() => return WatchEnd::Shutdown,
                c = tokio::time::timeout(idle, stream.next()) => match c {
                    Ok(Some(c)) => c,
                    Ok(None) => return WatchEnd::Ended { rv: last, items },
                    Err(_) => {
                        tracing::warn!(silent_for = ?idle, "the watch sent nothing for longer than its timeout; reconnecting");
                        return WatchEnd::Ended { rv: last, items: 1 };
                    }
                },
            };
            let mut out = PageOut::default();
            let mut expired = false;
            {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                for ev in chunk {
                    items += 1;
                    match ev {
                        Ok(WatchEvent::Added(k)) | Ok(WatchEvent::Modified(k)) => {
                            if let Some(v) = k.resource_version() {
                                v.clone_into(&mut last);
                            }
                            self.take(&mut seen, k, 0, false, &mut out);
                        }
                        Ok(WatchEvent::Deleted(k)) => {
                            if let Some(v) = k.resource_version() {
                                v.clone_into(&mut last);
                            }
                            out.read += 1;
                            self.counters.deleted.increment(1);
                            if let Some(uid) = k.uid().map(str::to_string) {
                                seen.remove(&uid);
                                out.forget.push(uid);
                            }
                        }
                        Ok(WatchEvent::Bookmark(b)) => last = b.metadata.resource_version,
                        Ok(WatchEvent::Error(s)) if s.code == 410 => {
                            expired = true;
                            break;
                        }
                        Ok(WatchEvent::Error(s)) => {
                            self.counters.watch_errors.increment(1);
                            tracing::warn!(code = s.code, message = %s.message, "the watch reported an error");
                        }
                        Err(kube::Error::Api(s)) if s.code == 0 => {
                            self.counters.malformed.increment(1);
                            tracing::warn!(error = %s.message, "skipping a watch line that is not a valid Event");
                        }
                        Err(e) => {
                            self.counters.malformed.increment(1);
                            tracing::warn!(error = %e, "skipping a watch line that cannot be read");
                        }
                    }
                }
            }
            if !self.send(out).await {
                return WatchEnd::Shutdown;
            }
            if expired {
                return WatchEnd::Expired;
            }
        }
    }
}

enum WatchEnd {
    Shutdown,
    StartFailed(kube::Error),
    Expired,
    Ended { rv: String, items: u64 },
}
