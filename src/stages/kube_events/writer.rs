//! The checkpoint writer: one task that writes what the source task decided, in order,
//! coalescing what is queued into one transaction and retrying a failing database.

use std::collections::HashSet;

use tokio::sync::mpsc;

use super::poison::{Attempts, Refused, Verdict};
use super::{Checkpoint, Counters, Row, telemetry};
use crate::backoff::BackoffConfig;
use crate::types::Dur;

/// A change to the checkpoint.
pub(super) enum CheckpointChange {
    Save(Vec<Row>),
    Forget(Vec<String>),
    /// Versions a sink refused: counted towards their dead letters.
    Refused(Vec<Refused>),
}

/// Where refused versions are counted and buried.
pub(super) struct Poison {
    pub attempts: Attempts,
    /// `dead_letter_after` (0: never).
    pub limit: u32,
    pub stage: String,
}

/// Writes checkpoint changes in order, coalescing what is queued into one transaction.
pub(super) async fn write_checkpoint(
    cp: Checkpoint,
    mut rx: mpsc::Receiver<CheckpointChange>,
    c: Counters,
    poison: Poison,
) {
    let mut buf: Vec<Row> = Vec::new();
    // Uids with refused versions on record: a delivered newer version clears them.
    let mut attempted: HashSet<String> = poison.attempts.uids().await.unwrap_or_else(|e| {
        c.checkpoint_errors.increment(1);
        tracing::warn!(error = %e, "cannot read the refused versions on record");
        HashSet::new()
    });
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(w) = next.take() {
            match w {
                CheckpointChange::Save(rows) => buf.extend(rows),
                CheckpointChange::Forget(uids) => {
                    save(&cp, &mut buf, &c, &poison, &mut attempted).await;
                    if let Err(e) = cp.forget(&uids).await {
                        c.checkpoint_errors.increment(1);
                        tracing::warn!(error = %e, "cannot prune the checkpoint");
                    }
                }
                CheckpointChange::Refused(refused) => {
                    save(&cp, &mut buf, &c, &poison, &mut attempted).await;
                    for r in refused {
                        attempted.insert(r.row.uid().to_string());
                        refuse(&cp, &r, &c, &poison).await;
                    }
                }
            }
            if buf.len() < 5000 {
                next = rx.try_recv().ok();
            }
        }
        save(&cp, &mut buf, &c, &poison, &mut attempted).await;
    }
    save(&cp, &mut buf, &c, &poison, &mut attempted).await;
}

/// Counts a run in which `r` was refused; buries it at the limit.
async fn refuse(cp: &Checkpoint, r: &Refused, c: &Counters, p: &Poison) {
    let first = r.refusals.first();
    let object = first.map_or_else(String::new, |f| {
        format!("{}/{}", f.event.object_namespace, f.event.object_name)
    });
    let reason = first.map_or("", |f| f.reason.as_str());
    let by: Vec<&str> = r.refusals.iter().map(|f| &*f.stage).collect();
    let verdict = p
        .attempts
        .refused(r, p.limit, |row| {
            cp.save_statements(std::slice::from_ref(row))
        })
        .await;
    if verdict.is_ok() {
        telemetry::refused(&p.stage).increment(1);
    }
    match verdict {
        Ok(Verdict::Replayed(n)) => {
            let limit: &dyn std::fmt::Display = if p.limit == 0 { &"unlimited" } else { &p.limit };
            tracing::warn!(
                uid = r.row.uid(),
                resource_version = r.row.resource_version(),
                object = %object,
                refused_by = ?by,
                reason,
                "a sink refused this event (run {n} of {limit}); not checkpointed: it is sent again at the next start"
            );
        }
        Ok(Verdict::DeadLettered(n)) => {
            for s in &by {
                telemetry::dead_letters(&p.stage, s).increment(1);
            }
            tracing::error!(
                uid = r.row.uid(),
                resource_version = r.row.resource_version(),
                object = %object,
                refused_by = ?by,
                reason,
                "refused in {n} runs: given up and kept as a dead letter (see `eventflow dead-letter list`); the checkpoint moves past it"
            );
        }
        Err(e) => {
            c.checkpoint_errors.increment(1);
            tracing::warn!(error = %e, uid = r.row.uid(), "cannot record a refused event; it is sent again at the next start");
        }
    }
}

async fn save(
    cp: &Checkpoint,
    rows: &mut Vec<Row>,
    c: &Counters,
    p: &Poison,
    attempted: &mut HashSet<String>,
) {
    if rows.is_empty() {
        return;
    }
    let cleared: Vec<String> = if attempted.is_empty() {
        Vec::new()
    } else {
        rows.iter()
            .filter(|r| attempted.contains(r.uid()))
            .map(|r| r.uid().to_string())
            .collect()
    };
    let mut backoff = BackoffConfig::new(Dur::millis(100), Dur::secs(2)).start();
    for attempt in 0..5 {
        let (back, written) = cp.save(std::mem::take(rows)).await;
        *rows = back;
        match written {
            Ok(()) => {
                rows.clear();
                if !cleared.is_empty() {
                    match p.attempts.clear(&cleared).await {
                        Ok(()) => cleared.iter().for_each(|u| {
                            attempted.remove(u);
                        }),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot clear refused versions on record");
                        }
                    }
                }
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
