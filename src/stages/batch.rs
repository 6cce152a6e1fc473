//! Batching for sinks: collect events from the input up to `max` or until `max_wait` after the
//! first one, then hand the batch over; at the end of the input, flush what is left.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::component::Input;
use crate::event::Event;
use crate::types::Dur;

/// How a sink groups events into writes. Each sink type has its own defaults (the parameters:
/// the most events in one write, and the longest wait in milliseconds); a block that sets only
/// one field keeps the other at the sink's default, so `batch: {max_wait: 2s}` does not change
/// how many events go in one write.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct BatchConfig<const MAX_EVENTS: usize = 500, const MAX_WAIT_MS: u64 = 1000> {
    /// The most events in one write.
    #[serde(default = "default_max_events::<MAX_EVENTS>")]
    pub max_events: usize,
    /// The longest an event waits for its batch to fill.
    #[serde(default = "default_max_wait::<MAX_WAIT_MS>")]
    pub max_wait: Dur,
}

fn default_max_events<const N: usize>() -> usize {
    N
}

fn default_max_wait<const MS: u64>() -> Dur {
    Dur::millis(MS)
}

impl<const M: usize, const W: u64> Default for BatchConfig<M, W> {
    fn default() -> Self {
        BatchConfig {
            max_events: default_max_events::<M>(),
            max_wait: default_max_wait::<W>(),
        }
    }
}

impl<const M: usize, const W: u64> BatchConfig<M, W> {
    /// The same values, without the sink type's defaults attached.
    pub fn plain(&self) -> BatchConfig {
        BatchConfig {
            max_events: self.max_events,
            max_wait: self.max_wait,
        }
    }
}

/// Runs `write` on batches of at most `max` events, each started at the latest `max_wait`
/// after its first event arrived, with at most `concurrency` writes running at once, until the
/// input closes and every write has finished. While writes run, the input keeps being read
/// into the next batch; once that batch is full, reading waits for a write to finish (so at
/// most `concurrency + 1` batches are held).
pub async fn run_batched<F, Fut>(
    input: &mut Input,
    max: usize,
    max_wait: Duration,
    concurrency: usize,
    mut write: F,
) where
    F: FnMut(Vec<Event>) -> Fut,
    Fut: Future<Output = ()>,
{
    let max = max.max(1);
    let concurrency = concurrency.max(1);
    let mut running = FuturesUnordered::new();
    let mut buf: Vec<Event> = Vec::with_capacity(max.min(4096));
    let mut deadline: Option<Instant> = None;
    let mut open = true;
    while open || !buf.is_empty() {
        let flush_now = buf.len() >= max || (!open && !buf.is_empty());
        if !flush_now {
            tokio::select! {
                b = input.recv() => if let Some(b) = b {
                    if buf.is_empty() {
                        deadline = Some(Instant::now() + max_wait);
                    }
                    buf.extend(b);
                    if buf.len() < max { continue; }
                } else { open = false; continue; },
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                Some(()) = running.next(), if !running.is_empty() => continue,
            }
        }
        // Batches are taken from the front of one iterator: linear in the events, whatever
        // `max` is (splitting the vector per batch moved every event left behind each time,
        // quadratic at `max_events: 1`).
        let mut pending = std::mem::take(&mut buf).into_iter();
        while pending.len() > 0
            && (pending.len() >= max || !open || deadline.is_some_and(|d| d <= Instant::now()))
        {
            while running.len() >= concurrency {
                running.next().await;
            }
            let batch: Vec<Event> = pending.by_ref().take(max).collect();
            running.push(write(batch));
        }
        buf = pending.collect();
        deadline = (!buf.is_empty()).then(|| Instant::now() + max_wait);
    }
    while running.next().await.is_some() {}
}
