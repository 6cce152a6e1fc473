//! What `eventflow run` does: start the pipeline, wait for a signal or for every source to
//! finish, then drain: sources stop reading, every event already read flows through to the
//! sinks, sinks flush.

use std::time::Duration;

use crate::config::Pipeline;
use crate::engine::Topology;

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every event read reached the sinks.
    Drained,
    /// Some stages did not finish within the shutdown timeout.
    Incomplete(Vec<String>),
}

/// Errors that stop `run` before the pipeline starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Build(#[from] crate::stages::BuildError),
}

/// Runs `pipeline` until SIGINT/SIGTERM or until every source has finished.
pub async fn run(pipeline: Pipeline, shutdown_timeout: Duration) -> Result<Outcome, RunError> {
    let mut topology = Topology::start(pipeline).await?;
    tracing::info!(
        stages = topology.pipeline().stages.len(),
        "pipeline started"
    );
    let mut signals = Signals::new();
    loop {
        if topology.running_sources() == 0 {
            tracing::info!("every source has finished; draining");
            break;
        }
        tokio::select! {
            sig = signals.next() => {
                tracing::info!(signal = sig, "shutting down: sources stop reading, in-flight events are delivered");
                break;
            }
            exit = topology.next_exit() => {
                if exit.is_none() { break; }
            }
        }
    }
    let stuck = topology.shutdown(shutdown_timeout).await;
    if stuck.is_empty() {
        tracing::info!("pipeline drained");
        Ok(Outcome::Drained)
    } else {
        tracing::error!(stages = ?stuck, timeout = ?shutdown_timeout, "stages did not finish draining in time; their in-flight events were not delivered");
        Ok(Outcome::Incomplete(stuck))
    }
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
