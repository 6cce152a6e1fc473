//! `stdout`: writes each event as one JSON object per line, for debugging and demos.
//! A batch is flushed before its events are acknowledged.

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::component::{
    BuildContext, BuildError, Sink, SinkContext, Stage, StageConfig, StageError, StageKind,
    StageType,
};
use crate::event::ack::Status;
use crate::event::ack_all;

/// Prints events as JSON lines on standard output.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Also print the original object as received, under `raw`.
    #[serde(default)]
    pub raw: bool,
}

impl StageConfig for StdoutConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        vec![crate::budget::Bound::each(
            "the batch being written",
            "a batch of",
            crate::component::MAX_BATCH as u64,
            crate::budget::RENDERED_EVENT,
        )]
    }

    fn uses_raw(&self) -> bool {
        self.raw
    }

    fn preview(
        &self,
        events: &[crate::event::EventData],
    ) -> Option<Vec<Result<serde_json::Value, String>>> {
        Some(
            events
                .iter()
                .map(|e| {
                    crate::event::to_json(e, self.raw)
                        .and_then(|l| serde_json::from_str(&l))
                        .map_err(|e| e.to_string())
                })
                .collect(),
        )
    }

    fn explain(&self, e: &crate::event::EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        let line = crate::event::to_json(e, self.raw)
            .ok()
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or_default();
        Explanation::new(
            Verdict::Delivered,
            vec![Step::note("printed as one JSON line on stdout")],
        )
        .with_output(line)
    }

    fn build<'a>(&'a self, _cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            Ok(Stage::Sink(
                Box::new(StdoutSink { raw: self.raw }) as Box<dyn Sink>
            ))
        })
    }
}

struct StdoutSink {
    raw: bool,
}

impl Sink for StdoutSink {
    fn run(self: Box<Self>, mut cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let mut out = tokio::io::stdout();
            let mut buf = Vec::with_capacity(64 * 1024);
            let bad = cx.metrics.bad_events.clone();
            let latency = crate::metrics::latency(&cx.metrics.id, cx.metrics.type_name);
            let id = cx.metrics.id.clone();
            while let Some(batch) = cx.input.recv().await {
                let started = std::time::Instant::now();
                buf.clear();
                for e in &batch {
                    match crate::event::to_json(e, self.raw) {
                        Ok(line) => {
                            buf.extend_from_slice(line.as_bytes());
                            buf.push(b'\n');
                        }
                        Err(err) => {
                            bad.increment(1);
                            e.refuse(&id, &format!("cannot serialize: {err}"));
                            tracing::error!(uid = %e.uid, error = %err, "cannot serialize event");
                        }
                    }
                }
                let written = async {
                    out.write_all(&buf).await?;
                    out.flush().await
                }
                .await;
                if let Err(err) = written {
                    ack_all(&batch, Status::Errored);
                    return Err(StageError::with_source(
                        "cannot write to standard output",
                        err,
                    ));
                }
                cx.metrics
                    .processing
                    .record(started.elapsed().as_secs_f64());
                for e in &batch {
                    latency.event(e);
                    e.ack(Status::Delivered);
                }
            }
            Ok(())
        })
    }
}

pub const TYPE: StageType = StageType {
    name: "stdout",
    kind: StageKind::Sink,
    summary: "prints events as JSON lines",
    parse: crate::component::parse_config::<StdoutConfig>,
    schema: crate::component::schema_of::<StdoutConfig>,
    describe: crate::component::no_metrics,
};
