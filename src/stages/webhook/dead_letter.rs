//! `eventflow dead-letter`: list, show, re-send and delete what durable sinks (`webhook`,
//! `loki` with `durable: true`) gave up on, and the events `kube_events` sources gave up on
//! after sinks refused them in `dead_letter_after` runs. The pipeline file says where the
//! `state` database is and how each stage sends; the command hands both over as a [`Target`].

use std::fmt::Write as _;

use std::sync::Arc;

use futures::future::BoxFuture;

use super::durable::Sender;
use super::queue::Store;
use super::{Budget, Outcome};
use crate::event::{Event, Finalizers};
use crate::state::db::{DbError, OpenError};

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state database: {0}")]
    Open(#[from] OpenError),
    #[error("state database: {0}")]
    Db(#[from] DbError),
    #[error("no dead letter with id {0}")]
    NotFound(i64),
    /// Nothing to look at: no sink of the pipeline is `durable: true`.
    #[error(
        "the pipeline has no durable webhook stage (`durable: true` on a webhook or loki sink) and no `kube_events` source, so it has no dead letters"
    )]
    NoDurable,
    #[error(
        "no stage `{stage}` with dead letters in the pipeline (those that can have them: {known})"
    )]
    NoSuchStage { stage: String, known: String },
    #[error("dead letter {id}: its events are not readable: {source}")]
    Corrupt {
        id: i64,
        #[source]
        source: serde_json::Error,
    },
    /// The stage's sender could not be made (its URL, headers, TLS files, `mark_rows`).
    #[error("stage `{stage}`: {source}")]
    Sender {
        stage: String,
        #[source]
        source: SenderError,
    },
    #[error("{id}: delivered, but cannot delete it: {source}")]
    Forget {
        id: i64,
        #[source]
        source: DbError,
    },
}

/// Why a stage's sender could not be made: the stage's own error.
pub type SenderError = Box<dyn std::error::Error + Send + Sync>;

/// Makes a durable stage's sender (for `resend`), or says why it cannot.
pub type MakeSender =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Sender>, SenderError>> + Send + Sync>;

/// A stage of the pipeline that can have dead letters: a durable sink (with a queue), or any
/// other sink of a pipeline with a `kube_events` source (re-sent with [`super::replay`]).
pub struct LetterStage {
    pub id: String,
    pub make: MakeSender,
}

/// What the commands work on, read from a pipeline file.
pub struct Target {
    /// The `state` database's URL.
    pub state_url: String,
    /// The pipeline's stages that can have dead letters.
    pub stages: Vec<LetterStage>,
}

/// The state database's queue store, once the pipeline is known to have dead letters (a
/// stage that can have them, and `stage` among them): nothing is created for a pipeline
/// without.
async fn store(p: &Target, stage: Option<&str>) -> Result<Store, Error> {
    let known: Vec<String> = p.stages.iter().map(|d| d.id.clone()).collect();
    if known.is_empty() {
        return Err(Error::NoDurable);
    }
    if let Some(s) = stage
        && !known.iter().any(|d| d == s)
    {
        return Err(Error::NoSuchStage {
            stage: s.to_string(),
            known: known.join(", "),
        });
    }
    Ok(Store::open(&p.state_url).await?)
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// How long ago `ms` (unix milliseconds) was, in words: `45s`, `12m`, `3h 5m`, `2d 4h`.
fn age(ms: i64) -> String {
    let s = (chrono::Utc::now().timestamp_millis() - ms).max(0) / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Each durable stage's queue (events waiting, the oldest's age) and dead letters: what has
/// not been delivered, whether it may still be (queued) or was given up on (dead letters).
pub async fn status(p: &Target, stage: Option<&str>) -> Result<String, Error> {
    let store = store(p, stage).await?;
    let shown = status_from(&store, p, stage).await;
    store.close().await;
    shown
}

async fn status_from(store: &Store, p: &Target, stage: Option<&str>) -> Result<String, Error> {
    let mut out = format!(
        "{:<20}  {:>8}  {:>10}  {:>12}  {:>11}\n",
        "STAGE", "QUEUED", "OLDEST", "DEAD LETTERS", "DEAD EVENTS"
    );
    for d in p.stages.iter().filter(|d| stage.is_none_or(|s| s == d.id)) {
        let st = store.status(&d.id).await?;
        let _ = writeln!(
            out,
            "{:<20}  {:>8}  {:>10}  {:>12}  {:>11}",
            d.id,
            st.queued,
            st.oldest_born_at.map_or_else(|| "-".to_string(), age),
            st.dead_letters,
            st.dead_events
        );
    }
    Ok(out)
}

/// A table of the dead letters (of one stage, or all).
pub async fn list(p: &Target, stage: Option<&str>) -> Result<String, Error> {
    let store = store(p, stage).await?;
    let listed = list_from(&store, p, stage).await;
    store.close().await;
    listed
}

async fn list_from(store: &Store, p: &Target, stage: Option<&str>) -> Result<String, Error> {
    let rows = store.dead_letters(stage, &[]).await?;
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no dead letters\n");
        // Not given up on is not delivered: say what is still waiting.
        let mut waiting = Vec::new();
        for d in p.stages.iter().filter(|d| stage.is_none_or(|s| s == d.id)) {
            if let Ok(st) = store.status(&d.id).await
                && st.queued > 0
            {
                waiting.push(format!(
                    "{} events queued in `{}` (the oldest {} old)",
                    st.queued,
                    d.id,
                    st.oldest_born_at.map_or_else(|| "?".to_string(), age)
                ));
            }
        }
        if !waiting.is_empty() {
            let _ = writeln!(
                out,
                "not delivered yet: {} (`eventflow dead-letter status` shows each queue)",
                waiting.join(", ")
            );
        }
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{:>6}  {:<20}  {:<23}  {:>6}  {:>8}  REASON",
        "ID", "STAGE", "FAILED AT", "EVENTS", "ATTEMPTS"
    );
    for d in &rows {
        let reason: String = d.reason.chars().take(100).collect();
        let _ = writeln!(
            out,
            "{:>6}  {:<20}  {:<23}  {:>6}  {:>8}  {}",
            d.id,
            d.sink,
            time(d.failed_at),
            d.event_count(),
            d.attempts,
            reason.replace('\n', " ")
        );
    }
    Ok(out)
}

/// One dead letter as JSON, its events included.
pub async fn show(p: &Target, id: i64) -> Result<String, Error> {
    let store = store(p, None).await?;
    let rows = store.dead_letters(None, &[id]).await;
    store.close().await;
    let d = rows?.into_iter().next().ok_or(Error::NotFound(id))?;
    let events: serde_json::Value =
        serde_json::from_str(&d.events).map_err(|source| Error::Corrupt { id, source })?;
    let v = serde_json::json!({
        "id": d.id,
        "stage": d.sink,
        "failed_at": time(d.failed_at),
        "delivery_id": d.delivery_id,
        "attempts": d.attempts,
        "reason": d.reason,
        "events": events,
    });
    serde_json::to_string_pretty(&v).map_err(|source| Error::Corrupt { id, source })
}

/// What a re-send did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resent {
    pub delivered: usize,
    pub failed: usize,
    /// One line per dead letter.
    pub report: String,
}

/// Sends dead letters again (the given ids, or all of `stage`, or all), with the stage's
/// current config and retry rules. A delivered one is deleted; a failed one stays, with the new
/// reason and attempt count.
pub async fn resend(p: &Target, stage: Option<&str>, ids: &[i64]) -> Result<Resent, Error> {
    let store = store(p, stage).await?;
    let result = resend_with(&store, &p.stages, stage, ids).await;
    store.close().await;
    result
}

async fn resend_with(
    store: &Store,
    stages: &[LetterStage],
    stage: Option<&str>,
    ids: &[i64],
) -> Result<Resent, Error> {
    let rows = store.dead_letters(stage, ids).await?;
    if let Some(missing) = ids.iter().find(|i| !rows.iter().any(|d| d.id == **i)) {
        return Err(Error::NotFound(*missing));
    }
    let mut r = Resent::default();
    // One sender per stage (its HTTP client and `mark_rows` connection), made when first needed.
    let mut deliveries: std::collections::HashMap<String, Arc<dyn Sender>> =
        std::collections::HashMap::default();
    for d in rows {
        let Some(stage) = stages.iter().find(|s| s.id == d.sink) else {
            r.failed += 1;
            let _ = writeln!(
                r.report,
                "{}: stage `{}` is not a durable sink in this pipeline; not sent",
                d.id, d.sink
            );
            continue;
        };
        let events: Vec<Event> = match d.decode_events() {
            Ok(v) => v
                .into_iter()
                .map(|e| Event::new(e, Finalizers::None))
                .collect(),
            Err(source) => {
                r.failed += 1;
                let _ = writeln!(r.report, "{}", Error::Corrupt { id: d.id, source });
                continue;
            }
        };
        if !deliveries.contains_key(&d.sink) {
            let made = (stage.make)().await.map_err(|source| Error::Sender {
                stage: d.sink.clone(),
                source,
            })?;
            deliveries.insert(d.sink.clone(), made);
        }
        let Some(delivery) = deliveries.get(&d.sink) else {
            continue;
        };
        let retries = delivery.limits().retries;
        let outcome = delivery
            .send(&events, None, Budget::Retries(retries), None)
            .await;
        match outcome {
            Outcome::Delivered { .. } => {
                store
                    .forget_dead(&[d.id])
                    .await
                    .map_err(|source| Error::Forget { id: d.id, source })?;
                r.delivered += 1;
                let _ = writeln!(
                    r.report,
                    "{}: delivered {} events to `{}`",
                    d.id,
                    events.len(),
                    d.sink
                );
            }
            Outcome::Failed { reason, attempts } => {
                r.failed += 1;
                store
                    .retried(d.id, d.attempts + i64::from(attempts), &reason)
                    .await?;
                let _ = writeln!(r.report, "{}: failed again: {reason}", d.id);
            }
            // Only a delivery given a stop signal is interrupted.
            Outcome::Interrupted => r.failed += 1,
        }
    }
    Ok(r)
}

/// What `delete` did: how many it deleted, and the ids that were not there.
pub struct Deleted {
    pub deleted: u64,
    pub missing: Vec<i64>,
}

/// Deletes dead letters by id.
pub async fn delete(p: &Target, ids: &[i64]) -> Result<Deleted, Error> {
    let store = store(p, None).await?;
    let result = async {
        let found: Vec<i64> = store
            .dead_letters(None, ids)
            .await?
            .iter()
            .map(|d| d.id)
            .collect();
        let deleted = store.forget_dead(ids).await?;
        let missing = ids.iter().copied().filter(|i| !found.contains(i)).collect();
        Ok(Deleted { deleted, missing })
    }
    .await;
    store.close().await;
    result
}
