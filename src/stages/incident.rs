//! What the paging sinks (`pagerduty`, `opsgenie`) share: one incident per problem key, opened
//! (or updated) by the problem's events, and resolved when the key has had no event for
//! `resolve_after`.
//!
//! The open keys are kept in memory (at most `max_keys`) and in the state database
//! (`eventflow_incidents`: stage, key, when its last event was delivered), so a restart neither
//! opens an incident again nor forgets to resolve one. Within a batch the events of one key make
//! one request (the last of them): the service de-duplicates by key anyway. Each request follows
//! the shared retry rules ([`super::send`]); an event whose request failed for good is refused
//! (its source does not checkpoint it). Only the leader sends, resolutions included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use sea_query::{Alias, ColumnDef, Expr, ExprTrait, Index, OnConflict, Query, Table};

use super::key::KeySpec;
use super::send::{self, Attempt, Budget, Outcome};
use crate::backoff::BackoffConfig;
use crate::event::{Event, EventData, Field};
use crate::state::db::{Db, DbError, OpenError};

pub const TABLE: &str = "eventflow_incidents";

pub const OPEN: &str = "eventflow_incidents_open";
pub const RESOLVED: &str = "eventflow_incidents_resolved_total";
pub const FORGOTTEN: &str = "eventflow_incidents_forgotten_total";

pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        OPEN,
        Unit::Count,
        "Incidents a pagerduty or opsgenie sink has open and will resolve after resolve_after without events."
    );
    describe_counter!(
        RESOLVED,
        Unit::Count,
        "Incidents resolved (closed) after resolve_after without events."
    );
    describe_counter!(
        FORGOTTEN,
        Unit::Count,
        "Open incidents no longer tracked past max_keys (the oldest): they are not resolved by eventflow."
    );
}

/// The default key: one problem = one object's one reason, in one cluster.
pub fn default_key() -> Vec<Field> {
    vec![
        Field::Cluster,
        Field::Namespace,
        Field::Kind,
        Field::ObjectName,
        Field::Reason,
    ]
}

/// The incident key of `e`: the key fields joined with `/`; past 191 bytes, its start and a hash
/// of the whole (the services' limits are 255 and 512; the state table's column is 191).
pub fn incident_key(key: &KeySpec, e: &EventData) -> String {
    use sha2::Digest;
    let k = key.joined(e, '/');
    if k.len() <= 191 {
        return k;
    }
    let d = sha2::Sha256::digest(k.as_bytes());
    let hash = crate::hex::encode(&d[..12]);
    let mut end = 160;
    while !k.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…{hash}", &k[..end])
}

/// A paging service: how an incident is opened (or updated) and resolved.
pub trait Pager: Send + Sync + 'static {
    /// The sink type (for logs and metrics).
    fn what(&self) -> &'static str;
    /// Opens or updates the incident of `key` with `e`.
    fn trigger<'a>(&'a self, key: &'a str, e: &'a EventData) -> BoxFuture<'a, Attempt>;
    /// Resolves (closes) the incident of `key`.
    fn resolve<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Attempt>;
}

/// The settings the shared part reads.
#[derive(Clone)]
pub struct Settings {
    pub key: KeySpec,
    pub resolve_after: Duration,
    pub max_keys: usize,
    pub retries: u32,
    pub backoff: BackoffConfig,
}

/// The open incidents of one stage.
pub struct Tracker {
    db: Db,
    stage: String,
    /// key -> when its last event was delivered (unix ms).
    open: Mutex<HashMap<String, i64>>,
    max_keys: usize,
    gauge: metrics::Gauge,
    forgotten: metrics::Counter,
}

fn name(s: &str) -> Alias {
    Alias::new(s)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Tracker {
    /// Creates the table if missing and loads the stage's open incidents.
    pub async fn open(url: &str, stage: &str, max_keys: usize) -> Result<Tracker, OpenError> {
        let db = Db::connect(url, 2, Duration::from_secs(10)).await?;
        let t = Table::create()
            .table(name(TABLE))
            .if_not_exists()
            .col(ColumnDef::new(name("stage")).string_len(191).not_null())
            .col(
                ColumnDef::new(name("incident_key"))
                    .string_len(191)
                    .not_null(),
            )
            .col(
                ColumnDef::new(name("last_seen_ms"))
                    .big_integer()
                    .not_null(),
            )
            .primary_key(Index::create().col(name("stage")).col(name("incident_key")))
            .to_owned();
        db.execute_raw(db.schema_sql(&t))
            .await
            .map_err(|source| OpenError::Schema {
                what: "incidents table",
                source,
            })?;
        let q = Query::select()
            .columns([name("incident_key"), name("last_seen_ms")])
            .from(name(TABLE))
            .and_where(Expr::col(name("stage")).eq(stage))
            .to_owned();
        let rows: Vec<(String, i64)> =
            db.fetch_all(db.build(&q))
                .await
                .map_err(|source| OpenError::Schema {
                    what: "incidents table (reading it)",
                    source,
                })?;
        let gauge = metrics::gauge!(OPEN, "stage" => stage.to_string());
        gauge.set(rows.len() as f64);
        Ok(Tracker {
            db,
            stage: stage.to_string(),
            open: Mutex::new(rows.into_iter().collect()),
            max_keys,
            gauge,
            forgotten: metrics::counter!(FORGOTTEN, "stage" => stage.to_string()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open keys.
    pub fn keys(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// `key` had an event delivered now: open, or kept open.
    pub async fn touch(&self, key: &str) -> Result<(), DbError> {
        let at = now_ms();
        let evicted = {
            let mut m = self.map();
            m.insert(key.to_string(), at);
            let mut out = Vec::new();
            while m.len() > self.max_keys {
                let Some(oldest) = m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else {
                    break;
                };
                m.remove(&oldest);
                out.push(oldest);
            }
            self.gauge.set(m.len() as f64);
            out
        };
        let mut stmts = vec![
            self.db.build(
                &Query::insert()
                    .into_table(name(TABLE))
                    .columns(["stage", "incident_key", "last_seen_ms"].map(name))
                    .values_panic([self.stage.as_str().into(), key.into(), at.into()])
                    .on_conflict(
                        OnConflict::columns([name("stage"), name("incident_key")])
                            .update_column(name("last_seen_ms"))
                            .to_owned(),
                    )
                    .to_owned(),
            ),
        ];
        for k in &evicted {
            tracing::warn!(stage = %self.stage, key = %k, "more open incidents than max_keys: the oldest is no longer tracked and will not be resolved by eventflow");
            self.forgotten.increment(1);
            stmts.push(self.forget_stmt(k));
        }
        self.db.execute_in_tx(stmts).await.map(|_| ())
    }

    fn forget_stmt(&self, key: &str) -> (String, sea_query_sqlx::SqlxValues) {
        self.db.build(
            &Query::delete()
                .from_table(name(TABLE))
                .and_where(Expr::col(name("stage")).eq(self.stage.as_str()))
                .and_where(Expr::col(name("incident_key")).eq(key))
                .to_owned(),
        )
    }

    /// Merges what other replicas recorded (with `leader_election: {mode: per_source}` every
    /// replica triggers for its own sources; the one that resolves reads them all here).
    pub async fn refresh(&self) -> Result<(), DbError> {
        let q = Query::select()
            .columns([name("incident_key"), name("last_seen_ms")])
            .from(name(TABLE))
            .and_where(Expr::col(name("stage")).eq(self.stage.as_str()))
            .to_owned();
        let rows: Vec<(String, i64)> = self.db.fetch_all(self.db.build(&q)).await?;
        let mut m = self.map();
        for (k, t) in rows {
            let e = m.entry(k).or_insert(t);
            *e = Ord::max(*e, t);
        }
        self.gauge.set(m.len() as f64);
        Ok(())
    }

    /// The keys quiet for `after`, with the time of their last event.
    pub fn due(&self, after: Duration) -> Vec<(String, i64)> {
        let limit = now_ms() - i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        self.map()
            .iter()
            .filter(|(_, t)| **t <= limit)
            .map(|(k, t)| (k.clone(), *t))
            .collect()
    }

    /// `key` was resolved: forgotten, unless an event came for it since `seen` (then it stays
    /// open).
    pub async fn resolved(&self, key: &str, seen: i64) -> Result<(), DbError> {
        {
            let mut m = self.map();
            if m.get(key).is_some_and(|t| *t != seen) {
                return Ok(());
            }
            m.remove(key);
            self.gauge.set(m.len() as f64);
        }
        self.db
            .execute_in_tx(vec![self.forget_stmt(key)])
            .await
            .map(|_| ())
    }
}

/// A paging sink's sending side: its pager, the open incidents, the retry rules.
pub struct Incidents<P: Pager> {
    pub pager: P,
    pub tracker: Tracker,
    pub settings: Settings,
    pub stage: String,
    pub metrics: send::RequestMetrics,
    pub leadership: crate::leader::Leadership,
    pub resolved: metrics::Counter,
}

impl<P: Pager> Incidents<P> {
    fn retrier(&self) -> send::Retrier<'_> {
        send::Retrier {
            stage: &self.stage,
            what: self.pager.what(),
            backoff: &self.settings.backoff,
            leadership: &self.leadership,
            metrics: &self.metrics,
        }
    }

    /// Triggers the incident of each key in `events` (the last event of each), records the
    /// opened keys, and refuses the events of a key whose request failed for good.
    async fn trigger_all(&self, events: &[Event], health: &crate::health::StageHealth) -> Outcome {
        let mut order: Vec<String> = Vec::new();
        let mut last: HashMap<String, usize> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let k = incident_key(&self.settings.key, e);
            if last.insert(k.clone(), i).is_none() {
                order.push(k);
            }
        }
        let mut failed = 0usize;
        let mut attempts: u32 = 0;
        for key in &order {
            let e = &events[last[key]];
            let id = send::delivery_id(std::slice::from_ref(e));
            let outcome = self
                .retrier()
                .run(
                    &id,
                    std::slice::from_ref(e),
                    Some(health),
                    Budget::Retries(self.settings.retries),
                    None,
                    || self.pager.trigger(key, e),
                )
                .await;
            match outcome {
                Outcome::Delivered { attempts: n } => {
                    attempts += n;
                    if let Err(err) = self.tracker.touch(key).await {
                        tracing::error!(stage = %self.stage, key = %key, error = %err, "cannot record the open incident in the state database: it may not be resolved after a restart");
                    }
                }
                Outcome::Failed { reason, .. } => {
                    for e in events
                        .iter()
                        .filter(|e| incident_key(&self.settings.key, e) == *key)
                    {
                        failed += 1;
                        e.refuse(&self.stage, &reason);
                    }
                }
                Outcome::Interrupted => return Outcome::Interrupted,
            }
        }
        if failed > 0 {
            crate::metrics::discarded(&self.stage, self.pager.what(), "incident_failed")
                .increment(failed as u64);
        }
        Outcome::Delivered {
            attempts: Ord::max(attempts, 1),
        }
    }

    /// Resolves the incidents quiet for `resolve_after` (the leader only); a failed resolution
    /// is tried again at the next round.
    pub async fn resolve_quiet(&self) {
        if !self.leadership.is_leader() {
            return;
        }
        if let Err(e) = self.tracker.refresh().await {
            tracing::warn!(stage = %self.stage, error = %e, "cannot read the open incidents from the state database; resolving what this replica knows");
        }
        for (key, seen) in self.tracker.due(self.settings.resolve_after) {
            let outcome = self
                .retrier()
                .run(
                    &key,
                    &[],
                    None,
                    Budget::Retries(self.settings.retries),
                    None,
                    || self.pager.resolve(&key),
                )
                .await;
            match outcome {
                Outcome::Delivered { .. } => {
                    tracing::info!(stage = %self.stage, key = %key, "incident resolved: no event for resolve_after");
                    self.resolved.increment(1);
                    if let Err(err) = self.tracker.resolved(&key, seen).await {
                        tracing::error!(stage = %self.stage, key = %key, error = %err, "cannot forget the resolved incident in the state database");
                    }
                }
                Outcome::Failed { reason, .. } => {
                    tracing::warn!(stage = %self.stage, key = %key, reason = %reason, "cannot resolve the incident; trying again at the next round");
                }
                Outcome::Interrupted => return,
            }
        }
    }
}

impl<P: Pager> send::Deliver for Incidents<P> {
    fn deliver<'a>(
        &'a self,
        events: &'a [Event],
        health: &'a crate::health::StageHealth,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.trigger_all(events, health))
    }
}

/// Runs a paging sink: triggers from its input, resolutions every `resolve_after / 10`
/// (between 1 s and 30 s) beside them.
pub async fn run<P: Pager>(
    incidents: Arc<Incidents<P>>,
    cx: &mut crate::component::SinkContext,
    health: &Arc<crate::health::StageHealth>,
    batch: &super::batch::BatchConfig,
) {
    let resolver = incidents.clone();
    let every = (incidents.settings.resolve_after / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    let resolving = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            resolver.resolve_quiet().await;
        }
    });
    // One request at a time: the triggers of a key stay in order.
    send::in_memory(&incidents, cx, health, batch, 1, "incident_failed").await;
    resolving.abort();
}

/// The settings a paging sink validates the same way.
pub fn validate_common(
    out: &mut Vec<crate::component::Invalid>,
    key: &[Field],
    resolve_after: Duration,
    max_keys: usize,
) {
    crate::component::non_empty_key(out, "key", key);
    if resolve_after < Duration::from_secs(1) {
        out.push(crate::component::Invalid::new(
            "resolve_after",
            "must be at least 1s",
        ));
    }
    crate::component::at_least_one(out, "max_keys", max_keys as u64);
}

/// `t` rendered for `e`, or `default()` without a template.
pub fn render_or(
    t: Option<&super::webhook::template::TextTemplateField>,
    e: &EventData,
    default: impl FnOnce() -> String,
) -> Result<String, String> {
    match t {
        Some(t) => t.compiled.render_event(e).map_err(|e| e.to_string()),
        None => Ok(default()),
    }
}

/// Posts `body` as JSON to `url`, under the shared rules ([`send::http_answer`]): 2xx
/// delivered; 408, 429, 5xx and no answer retried (after `Retry-After`); other answers
/// permanent with the start of what the service said.
pub async fn post(
    client: &reqwest::Client,
    metrics: &send::RequestMetrics,
    url: reqwest::Url,
    body: &serde_json::Value,
    timeout: Duration,
) -> Attempt {
    let started = std::time::Instant::now();
    let r = client.post(url).json(body).send().await;
    metrics.request(send::status_class(&r), started.elapsed().as_secs_f64());
    send::http_answer(r, timeout, |e| crate::types::error_chain(&e.without_url())).await
}

/// A paging sink's stage: its open incidents read from the state database, `pager` sending.
pub async fn stage<P: Pager>(
    cx: &crate::component::BuildContext,
    pager: P,
    settings: Settings,
    names: &send::MetricNames,
    batch: super::batch::BatchConfig,
    unready_after: Duration,
) -> Result<crate::component::Stage, crate::component::BuildError> {
    let state = cx.state.clone().unwrap_or_default();
    let tracker = Tracker::open(&state.url, &cx.id, settings.max_keys)
        .await
        .map_err(|e| cx.error_from("field `state.url`: the state database (open incidents)", e))?;
    Ok(crate::component::Stage::Sink(Box::new(IncidentSink {
        incidents: Arc::new(Incidents {
            pager,
            tracker,
            settings,
            stage: cx.id.clone(),
            metrics: send::RequestMetrics::new(names, &cx.id),
            leadership: cx.leadership.clone(),
            resolved: metrics::counter!(RESOLVED, "stage" => cx.id.clone()),
        }),
        health: cx.health.clone(),
        batch,
        unready_after,
    })
        as Box<dyn crate::component::Sink>))
}

/// A paging sink as a stage.
pub struct IncidentSink<P: Pager> {
    pub incidents: Arc<Incidents<P>>,
    pub health: crate::health::Health,
    pub batch: super::batch::BatchConfig,
    pub unready_after: Duration,
}

impl<P: Pager> crate::component::Sink for IncidentSink<P> {
    fn run(
        self: Box<Self>,
        mut cx: crate::component::SinkContext,
    ) -> BoxFuture<'static, Result<(), crate::component::StageError>> {
        Box::pin(async move {
            let health = self.health.register(&cx.metrics.id, self.unready_after);
            health.synced();
            run(self.incidents.clone(), &mut cx, &health, &self.batch).await;
            health.stopped();
            Ok(())
        })
    }
}

/// Cuts `s` to at most `max` characters, `…` at the end when cut.
pub fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_stable() {
        let mut e = crate::testkit::event("u");
        e.object_name = "x".repeat(400);
        let k = incident_key(&KeySpec(default_key()), &e);
        assert!(k.len() <= 191, "{}", k.len());
        assert_eq!(k, incident_key(&KeySpec(default_key()), &e));
        assert_eq!(cut_chars("ééé", 2), "é…");
        assert_eq!(cut_chars("ab", 2), "ab");
    }
}
