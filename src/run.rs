//! What `eventflow run` does: start the pipeline, serve the API endpoint, apply reloads, and
//! on SIGINT/SIGTERM (or when every source has finished) drain: sources stop reading, every
//! event already read flows through to the sinks, sinks flush.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;

use crate::config::Pipeline;
use crate::engine::Topology;
use crate::reload::{ReloadOutcome, ReloadRequest};

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every event read reached the sinks.
    Drained,
    /// Some stages did not finish within the shutdown timeout.
    Incomplete(Vec<String>),
    /// Some stages failed (an error or a panic); the events they held were not acknowledged,
    /// so their sources replay them at the next start.
    Failed(Vec<(String, String)>),
    /// A second SIGINT or SIGTERM (the value) arrived while draining: the process stops at
    /// once. Events in flight were not acknowledged, so nothing was checkpointed past them and
    /// their sources replay them at the next start.
    Interrupted(&'static str),
    /// The sources finished and everything drained, but sinks failed to deliver this many
    /// events (out of retries, refused for good, dead-lettered): a backfill or cron job that
    /// did not do its work.
    Undelivered(u64),
}

/// Errors that stop `run` before the pipeline starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Build(#[from] crate::component::BuildError),
    #[error(transparent)]
    Election(#[from] crate::leader::ElectionError),
    #[error("cannot listen on {addr} for the API endpoint: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Settings of a run.
#[derive(Clone)]
pub struct RunOptions {
    pub shutdown_timeout: Duration,
    /// Reload when the pipeline file changes on disk.
    pub watch: bool,
    /// Quiet time after a file change before reloading.
    pub debounce: Duration,
    /// The Prometheus handle, if a recorder is installed.
    pub metrics: Option<PrometheusHandle>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            shutdown_timeout: Duration::from_secs(60),
            watch: true,
            debounce: Duration::from_millis(200),
            metrics: None,
        }
    }
}

/// Runs `pipeline` until SIGINT/SIGTERM or until every source has finished.
/// The election the pipeline asks for, started (`None` without `leader_election`).
async fn start_election(pipeline: &Pipeline) -> Result<Option<crate::leader::Election>, RunError> {
    Ok(match &pipeline.leader_election {
        Some(cfg) if cfg.mode == crate::leader::Mode::PerSource => Some(
            crate::leader::Election::start_per_source(cfg, &crate::leader::units_of(pipeline))
                .await?,
        ),
        Some(cfg) => Some(crate::leader::Election::start(cfg).await?),
        None => None,
    })
}

pub async fn run(pipeline: Pipeline, opts: RunOptions) -> Result<Outcome, RunError> {
    let path = pipeline.path.clone();
    let api = pipeline.api.clone();
    for w in pipeline.warnings() {
        tracing::warn!("{w}");
    }
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let ready = Arc::new(AtomicBool::new(false));
    let health = crate::health::Health::default();
    let taps = crate::component::tap::Taps::default();
    let election = start_election(&pipeline).await?;
    let leadership = election.as_ref().map_or_else(
        crate::leader::Leadership::always,
        crate::leader::Election::leadership,
    );
    let _api = match api {
        Some(a) => {
            Some(serve_api(&a, &opts, &ready, &reload_tx, (&health, &taps), &leadership).await?)
        }
        None => None,
    };
    // Watch before starting, so that an edit made while the pipeline starts is not missed.
    let digest = pipeline.digest;
    let _watcher = match (&path, opts.watch) {
        (Some(p), true) => {
            match crate::reload::watch_file(p, digest, opts.debounce, reload_tx.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "cannot watch the pipeline file; reload with SIGHUP or POST /-/reload");
                    None
                }
            }
        }
        _ => None,
    };
    let mut topology = Topology::start_with(pipeline, health, leadership, taps).await?;
    crate::metrics::started();
    ready.store(true, Ordering::Release);
    // Signals are taken over before "pipeline started": a SIGTERM from whoever waits for that
    // line must drain the pipeline, not kill the process.
    let mut signals = Signals::new();
    tracing::info!(
        stages = topology.pipeline().stages.len(),
        "pipeline started"
    );
    let mut finished = false;
    loop {
        if topology.running_sources() == 0 {
            tracing::info!("every source has finished; draining");
            finished = true;
            break;
        }
        tokio::select! {
            sig = signals.next() => match sig {
                "SIGHUP" => {
                    let outcome = reload(&mut topology, path.as_ref(), "SIGHUP").await;
                    tracing::debug!(outcome = outcome.label(), "SIGHUP handled");
                }
                sig => {
                    tracing::info!(signal = sig, timeout = ?opts.shutdown_timeout, "shutting down: sources stop reading, in-flight events are delivered (send the signal again to stop at once)");
                    break;
                }
            },
            Some(req) = reload_rx.recv() => {
                let outcome = reload(&mut topology, path.as_ref(), req.trigger).await;
                if let Some(reply) = req.reply {
                    let _ = reply.send(outcome);
                }
            }
            exit = topology.next_exit() => match exit {
                None => break,
                Some(e) => if let Some(why) = e.failure {
                    // A crashed stage stops the process rather than leaving it half-dead:
                    // the rest drains, the exit code says it failed, and the orchestrator
                    // restarts it (with its own backoff). Nothing it held was acknowledged.
                    tracing::error!(stage = %e.id, error = %why, "a stage failed; shutting down the pipeline");
                    break;
                }
            }
        }
    }
    ready.store(false, Ordering::Release);
    let sinks: Vec<(String, &'static str)> = topology
        .pipeline()
        .stages
        .values()
        .filter(|s| s.kind == crate::component::StageKind::Sink)
        .map(|s| (s.id.clone(), s.type_name))
        .collect();
    let report = tokio::select! {
        report = topology.shutdown(opts.shutdown_timeout) => report,
        sig = signals.next_stop() => {
            tracing::warn!(signal = sig, "stopping at once: in-flight events were not delivered and not acknowledged; nothing is checkpointed past them, so they are replayed at the next start");
            return Ok(Outcome::Interrupted(sig));
        }
    };
    // Only now, with the sources stopped and deliveries ended, may a standby take over.
    if let Some(e) = election {
        e.stop().await;
    }
    Ok(outcome_of(report, finished, &sinks, &opts))
}

/// How a run that drained ended, from its shutdown report (and, when its sources finished,
/// from what its sinks delivered).
fn outcome_of(
    report: crate::engine::ShutdownReport,
    finished: bool,
    sinks: &[(String, &'static str)],
    opts: &RunOptions,
) -> Outcome {
    if !report.failed.is_empty() {
        let stages: Vec<&str> = report.failed.iter().map(|(id, _)| id.as_str()).collect();
        tracing::error!(stages = ?stages, "pipeline stopped after stage failures; events they held were not acknowledged and are replayed at the next start");
        Outcome::Failed(report.failed)
    } else if report.stuck.is_empty() {
        tracing::info!("pipeline drained");
        let failed = if finished {
            summarize(sinks, opts.metrics.as_ref())
        } else {
            0
        };
        if failed > 0 {
            Outcome::Undelivered(failed)
        } else {
            Outcome::Drained
        }
    } else {
        tracing::error!(stages = ?report.stuck, timeout = ?opts.shutdown_timeout, "stages did not finish draining in time; their in-flight events were not delivered");
        Outcome::Incomplete(report.stuck)
    }
}

/// A finished run's summary: one line per sink (delivered, failed, discarded); the events
/// that failed, in all.
fn summarize(
    sinks: &[(String, &'static str)],
    metrics: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> u64 {
    let Some(handle) = metrics else {
        return 0;
    };
    let ids: Vec<String> = sinks.iter().map(|(id, _)| id.clone()).collect();
    let figures = crate::summary::of_sinks(&handle.render(), &ids);
    let mut failed = 0;
    for (id, ty) in sinks {
        let s = figures.get(id).copied().unwrap_or_default();
        failed += s.failed;
        let line = format!(
            "sink `{id}` ({ty}): {} delivered, {} failed, {} discarded",
            s.delivered, s.failed, s.discarded
        );
        if s.failed > 0 {
            tracing::error!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
    if failed > 0 {
        tracing::error!(
            failed,
            "the run ended with events not delivered; exit status 3"
        );
    }
    failed
}

/// Starts the API endpoint; it stops when the returned guard is dropped.
async fn serve_api(
    a: &crate::config::ApiConfig,
    opts: &RunOptions,
    ready: &Arc<AtomicBool>,
    reload_tx: &mpsc::Sender<ReloadRequest>,
    (health, taps): (&crate::health::Health, &crate::component::tap::Taps),
    leadership: &crate::leader::Leadership,
) -> Result<AbortOnDrop, RunError> {
    let state = crate::api::ApiState {
        metrics: opts.metrics.clone(),
        ready: ready.clone(),
        reload: reload_tx.clone(),
        token: std::env::var(crate::api::TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
        health: health.clone(),
        taps: taps.clone(),
        leadership: leadership.clone(),
    };
    let (_, task) =
        crate::api::serve(a.listen, state)
            .await
            .map_err(|source| RunError::Listen {
                addr: a.listen,
                source,
            })?;
    Ok(AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the pipeline file again and applies it. An invalid file or a stage that fails to
/// build leaves the running pipeline as it was.
pub async fn reload(
    topology: &mut Topology,
    path: Option<&PathBuf>,
    trigger: &'static str,
) -> ReloadOutcome {
    let started = Instant::now();
    let outcome = reload_inner(topology, path, trigger).await;
    crate::metrics::reload(outcome.label(), started.elapsed().as_secs_f64());
    outcome
}

async fn reload_inner(
    topology: &mut Topology,
    path: Option<&PathBuf>,
    trigger: &'static str,
) -> ReloadOutcome {
    let Some(path) = path else {
        return ReloadOutcome::Rejected("this pipeline was not loaded from a file".into());
    };
    let mut new = match crate::load_file(path) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(
                trigger,
                "reload rejected, the running pipeline is unchanged:\n{e}"
            );
            return ReloadOutcome::Rejected(e.to_string());
        }
    };
    let current = topology.pipeline();
    if new.api != current.api {
        tracing::warn!(
            trigger,
            "a change to `api` needs a restart; it was not applied (the rest of the file was)"
        );
        new.api = current.api.clone();
    }
    if new.leader_election != current.leader_election {
        tracing::warn!(
            trigger,
            "a change to `leader_election` needs a restart; it was not applied (the rest of the file was)"
        );
        new.leader_election = current.leader_election.clone();
    }
    if current
        .leader_election
        .as_ref()
        .is_some_and(|c| c.mode == crate::leader::Mode::PerSource)
        && crate::leader::units_of(&new) != crate::leader::units_of(current)
    {
        let why = "with `leader_election: {mode: per_source}` each source (and each durable or paging sink) has a Lease of its own: adding, removing or renaming one needs a restart; nothing was applied";
        tracing::error!(trigger, "reload rejected: {why}");
        return ReloadOutcome::Rejected(why.into());
    }
    if new.state != current.state {
        tracing::warn!(
            trigger,
            "a change to `state` needs a restart; it was not applied (the rest of the file was)"
        );
        new.state = current.state.clone();
    }
    match topology.apply(new).await {
        Ok(report) => {
            let d = &report.diff;
            let summary = format!(
                "kept: [{}]; rebuilt: [{}]; added: [{}]; removed: [{}]; took {:?}",
                d.kept.join(", "),
                d.changed.join(", "),
                d.added.join(", "),
                d.removed.join(", "),
                report.elapsed
            );
            if d.is_empty() {
                tracing::info!(trigger, "reload: nothing changed");
                ReloadOutcome::Unchanged(summary)
            } else {
                tracing::info!(
                    trigger,
                    kept = ?d.kept,
                    rebuilt = ?d.changed,
                    added = ?d.added,
                    removed = ?d.removed,
                    elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
                    "reload applied"
                );
                ReloadOutcome::Applied(summary)
            }
        }
        Err(e) => {
            tracing::error!(trigger, error = %e, "reload rolled back: a stage failed to build; the running pipeline is unchanged");
            ReloadOutcome::RolledBack(e.to_string())
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP as one stream. Each is listened to from the start, so that one
/// arriving between two reads (a second Ctrl-C right after the first) is not missed.
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGINT or SIGTERM (SIGHUP is ignored: no reload while draining).
    async fn next_stop(&mut self) -> &'static str {
        loop {
            match self.next().await {
                "SIGHUP" => {}
                sig => return sig,
            }
        }
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.int) => "SIGINT",
                () = recv(&mut self.term) => "SIGTERM",
                () = recv(&mut self.hup) => "SIGHUP",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
