//! The checkpoint writer: one task that writes what the source task decided, in order,
//! coalescing what is queued into one transaction and retrying a failing database.

use tokio::sync::mpsc;

use super::{Checkpoint, Counters, Row};
use crate::backoff::BackoffConfig;
use crate::types::Dur;

/// A change to the checkpoint.
pub(super) enum CheckpointChange {
    Save(Vec<Row>),
    Forget(Vec<String>),
}

/// Writes checkpoint changes in order, coalescing what is queued into one transaction.
pub(super) async fn write_checkpoint(
    cp: Checkpoint,
    mut rx: mpsc::Receiver<CheckpointChange>,
    c: Counters,
) {
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
