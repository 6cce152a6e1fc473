//! `sql`: stores events in SQLite, PostgreSQL or MySQL/MariaDB (chosen by the URL's scheme).
//!
//! The table (default `k8s_events`) is created if missing and keeps every column of the
//! k8m event handler's table, so queries written for it still work, plus the involved object, count,
//! first/last seen, reporting source and host, resourceVersion and the raw JSON. A table the
//! k8m event handler created is migrated in place (missing columns added, rows kept); the schema version is
//! recorded in `eventflow_schema`.
//!
//! Writes are batched (`batch.max_events`, `batch.max_wait`) into multi-row upserts keyed by
//! `evt_key` (default `cluster/uid`) inside one transaction; a repeat of an event updates its
//! count, last seen, message and resourceVersion. A batch is acknowledged only after commit.
//! When the database is unreachable the sink keeps its batch and retries with exponential
//! backoff and jitter, reading nothing meanwhile, so upstream slows down (back-pressure) and
//! nothing is dropped or acknowledged early. A row the database refuses for good (e.g. a value
//! too long) is found by retrying the batch row by row, logged with its key, counted
//! (`eventflow_events_discarded_total{reason="rejected"}`) and acknowledged as rejected; the
//! other rows are stored.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use metrics::{Counter, Histogram};
use schemars::JsonSchema;
use serde::Deserialize;

use super::batch::BatchConfig;
use super::key::KeySpec;
use crate::backoff::BackoffConfig;
use crate::component::{
    BuildContext, BuildError, Invalid, Sink, SinkContext, Stage, StageConfig, StageError,
    StageKind, StageType,
};
use crate::event::ack::Status;
use crate::event::{Event, Field};
use crate::state::db::{self, Db};
use crate::state::events::{self as table, RowRef};
use crate::types::Dur;

/// Stores events in SQLite, PostgreSQL or MySQL/MariaDB.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// `sqlite://path.db` (created if missing), `postgres://user:pass@host:5432/db`,
    /// `mysql://user:pass@host:3306/db` or `mariadb://...`. A relative SQLite path is relative
    /// to the pipeline file's directory.
    #[serde(deserialize_with = "crate::types::db_url")]
    pub url: String,
    /// The table name (a plain identifier).
    #[serde(default = "default_table")]
    pub table: String,
    /// The most connections the pool opens.
    #[serde(default = "default_conns")]
    pub max_conns: u32,
    /// SQLite: the page cache of this sink's database, in bytes, shared out among its
    /// connections (SQLite keeps one per connection). A bound on memory; a larger one keeps
    /// more of a large table's index in memory. Ignored by PostgreSQL and MySQL.
    #[serde(default = "default_sqlite_cache_bytes")]
    pub sqlite_cache_bytes: u64,
    /// Batching of writes.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Delete rows last seen longer ago than this (e.g. `7d`). Off when absent.
    #[serde(default)]
    pub retention: Option<Dur>,
    /// The event fields whose values, joined with `/`, make `evt_key` (the upsert key).
    #[serde(default = "default_key")]
    pub key: Vec<Field>,
    /// Retries while the database is unavailable.
    #[serde(default)]
    pub backoff: BackoffConfig<200>,
    /// How long connecting may take when the stage is built (at least 100ms).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
}

impl SqlConfig {
    /// Batches written at once: two on PostgreSQL (with two connections or more), else one
    /// (`SQLite` has one writer; on MariaDB two upserts of different keys can still deadlock on
    /// gap locks).
    fn writers(&self) -> u64 {
        if crate::state::db::backend_of(&self.url) == Some(crate::state::db::Backend::Postgres)
            && self.max_conns >= 2
        {
            2
        } else {
            1
        }
    }
}

fn default_table() -> String {
    "k8s_events".into()
}

fn default_conns() -> u32 {
    5
}

fn default_sqlite_cache_bytes() -> u64 {
    16 * 1024 * 1024
}

impl SqlConfig {
    /// SQLite: each connection's share of `sqlite_cache_bytes` (at least 64 KiB).
    fn cache_per_connection(&self) -> u64 {
        (self.sqlite_cache_bytes / u64::from(self.max_conns.max(1))).max(64 * 1024)
    }
}

fn default_key() -> Vec<Field> {
    vec![Field::Cluster, Field::Uid]
}

fn default_connect_timeout() -> Dur {
    Dur::secs(10)
}

impl StageConfig for SqlConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        use crate::budget::{Bound, RENDERED_EVENT, size};
        // The batches being written (two at once on PostgreSQL), one prepared and waiting for
        // a writer, one in the hand-over to the writer, one being encoded.
        let batches = self.writers() + 3;
        let mut out = vec![Bound::each(
            "the batches being written and encoded",
            &format!("{batches} x batch.max_events"),
            batches * self.batch.max_events as u64,
            RENDERED_EVENT,
        )];
        if crate::state::db::backend_of(&self.url) == Some(crate::state::db::Backend::Sqlite) {
            out.push(Bound::new(
                "SQLite page cache",
                format!("sqlite_cache_bytes {}", size(self.sqlite_cache_bytes)),
                self.cache_per_connection() * u64::from(self.max_conns.max(1)),
            ));
        }
        out
    }

    /// The table's `raw` column.
    fn uses_raw(&self) -> bool {
        true
    }

    fn preview(
        &self,
        events: &[crate::event::EventData],
    ) -> Option<Vec<Result<serde_json::Value, String>>> {
        let key = KeySpec(self.key.clone());
        let now = Utc::now();
        Some(
            events
                .iter()
                .map(|e| Ok(RowRef::new(key.joined(e, '/'), e, now).to_json()))
                .collect(),
        )
    }

    fn explain(&self, e: &crate::event::EventData) -> crate::component::Explanation {
        use crate::component::{Explanation, Step, Verdict};
        let evt_key = KeySpec(self.key.clone()).joined(e, '/');
        let row = RowRef::new(evt_key.clone(), e, Utc::now()).to_json();
        Explanation::new(
            Verdict::Delivered,
            vec![Step::note(format!(
                "upserted into `{}` at {}: one row per `evt_key` (`{evt_key}`); a repeat updates its count, last seen and message",
                self.table,
                crate::redact::url(&self.url)
            ))],
        )
        .with_output(serde_json::json!({"table": self.table, "row": row}))
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if !db::valid_identifier(&self.table) {
            out.push(Invalid::new(
                "table",
                format!(
                    "`{}` is not a plain identifier (letters, digits, `_`)",
                    self.table
                ),
            ));
        }
        crate::component::non_empty_key(&mut out, "key", &self.key);
        crate::component::at_least_one(&mut out, "batch.max_events", self.batch.max_events as u64);
        // The pool sizes its slots by this number; no server takes more anyway.
        crate::component::in_range(&mut out, "max_conns", self.max_conns.into(), 1, 1000);
        if let Err(e) = db::check_url(&self.url) {
            out.push(Invalid::new("url", e.to_string()));
        }
        // Below this, opening even a local SQLite file can time out on a busy machine.
        if self.connect_timeout.0 < Duration::from_millis(100) {
            out.push(Invalid::new(
                "connect_timeout",
                "must be at least 100ms (a connection, even to a local file, takes longer on a busy machine)",
            ));
        }
        out.extend(self.backoff.validate("backoff"));
        out
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let db = Db::connect_with_cache(
                &self.url,
                self.max_conns,
                self.connect_timeout.0,
                self.cache_per_connection(),
            )
            .await
            .map_err(|e| cx.error_from("field `url`", e))?;
            table::ensure_table(&db, &self.table)
                .await
                .map_err(|e| cx.error_from(format!("cannot prepare table `{}`", self.table), e))?;
            Ok(Stage::Sink(
                Box::new(SqlSink::new(self.clone(), db, &cx.id).reporting_to(&cx.health))
                    as Box<dyn Sink>,
            ))
        })
    }
}

/// A batch written, with each event's outcome (`None`: stored; else why it was refused).
type Stored = (std::sync::Arc<Vec<Event>>, Vec<Option<String>>);

/// A batch being written: the keys it holds, and the write.
struct InFlight {
    key_hashes: std::collections::HashSet<u64>,
    write: BoxFuture<'static, Stored>,
}

impl InFlight {
    fn start(
        sink: std::sync::Arc<SqlSink>,
        batch: std::sync::Arc<Vec<Event>>,
        mut prepared: Prepared,
        processing: metrics::Histogram,
    ) -> InFlight {
        let key_hashes = std::mem::take(&mut prepared.key_hashes);
        InFlight {
            write: Box::pin(async move {
                let started = Instant::now();
                let statuses = sink.store(&batch, prepared).await;
                processing.record(started.elapsed().as_secs_f64());
                (batch, statuses)
            }),
            key_hashes,
        }
    }
}

impl std::future::Future for InFlight {
    type Output = Stored;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.write.as_mut().poll(cx)
    }
}

/// A batch made ready to write ([`SqlSink::prepare`]).
struct Prepared {
    /// The upsert text for this many rows.
    sql: std::sync::Arc<str>,
    /// Each event's key.
    keys: Vec<String>,
    /// The events written (the last of each key), in batch order.
    written: Vec<usize>,
    /// Their values, encoded (or why they cannot be).
    args: Result<crate::state::events::Encoded, crate::state::db::DbError>,
    /// A hash of each key written, where two batches are written at once (they share none).
    key_hashes: std::collections::HashSet<u64>,
}

/// The sink, usable on its own (benchmarks).
pub struct SqlSink {
    cfg: SqlConfig,
    db: Db,
    key: KeySpec,
    rejected: Counter,
    unavailable: Counter,
    latency: Histogram,
    /// Readiness: set while the sink runs.
    health: std::sync::OnceLock<std::sync::Arc<crate::health::StageHealth>>,
    /// Where it registers its health (the running pipeline's).
    registry: crate::health::Health,
    sql_cache: std::sync::Mutex<std::collections::HashMap<usize, std::sync::Arc<str>>>,
}

impl SqlSink {
    pub fn new(cfg: SqlConfig, db: Db, stage: &str) -> SqlSink {
        SqlSink {
            key: KeySpec(cfg.key.clone()),
            rejected: crate::metrics::discarded(stage, "sql", "rejected"),
            unavailable: crate::metrics::stage_errors(stage, "sql", "db_unavailable"),
            latency: sql_latency(stage, "upsert"),
            health: std::sync::OnceLock::new(),
            registry: crate::health::Health::default(),
            sql_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            cfg,
            db,
        }
    }

    /// Reports its health to `registry` (the running pipeline's) instead of a private one.
    #[must_use]
    pub fn reporting_to(mut self, registry: &crate::health::Health) -> SqlSink {
        self.registry = registry.clone();
        self
    }

    fn evt_key(&self, e: &Event) -> String {
        self.key.joined(e, '/')
    }

    /// Rows for `(evt_key, event)` pairs.
    fn rows<'a>(events: impl Iterator<Item = (String, &'a Event)>) -> Vec<RowRef<'a>> {
        let now = Utc::now();
        events
            .map(|(evt_key, e)| RowRef::new(evt_key, e.data(), now))
            .collect()
    }

    /// The upsert text for `n` rows, generated once per row count.
    fn sql_for(&self, n: usize) -> std::sync::Arc<str> {
        let mut cache = self
            .sql_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry(n)
            .or_insert_with(|| {
                std::sync::Arc::from(table::upsert_sql(self.db.backend(), &self.cfg.table, n))
            })
            .clone()
    }

    /// Makes a batch ready to write: one row per key (the last version of an event in the
    /// batch wins: a multi-row upsert may not touch the same row twice), each key computed
    /// once, the values encoded for the backend.
    fn prepare(&self, batch: &[Event]) -> Prepared {
        let keys: Vec<String> = batch.iter().map(|e| self.evt_key(e)).collect();
        let mut last: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(batch.len());
        for (i, k) in keys.iter().enumerate() {
            last.insert(k.as_str(), i);
        }
        let mut written: Vec<usize> = last.into_values().collect();
        written.sort_unstable();
        let rows = Self::rows(written.iter().map(|&i| (keys[i].clone(), &batch[i])));
        let args = self.db.encode_rows(&rows);
        // Only needed where two batches are written at once.
        let key_hashes = if self.cfg.writers() > 1 {
            written
                .iter()
                .map(|&i| {
                    use std::hash::{BuildHasher, BuildHasherDefault};
                    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                        .hash_one(&keys[i])
                })
                .collect()
        } else {
            std::collections::HashSet::new()
        };
        Prepared {
            sql: self.sql_for(rows.len()),
            keys,
            written,
            args,
            key_hashes,
        }
    }

    /// Writes a batch, retrying while the database is unavailable. Returns, for each event,
    /// `None` when it is stored, or why the database refused it for good.
    pub async fn write(&self, batch: &[Event]) -> Vec<Option<String>> {
        let prepared = self.prepare(batch);
        self.store(batch, prepared).await
    }

    /// Writes a batch made ready by [`Self::prepare`] (see [`Self::write`]).
    async fn store(&self, batch: &[Event], prepared: Prepared) -> Vec<Option<String>> {
        let Prepared {
            sql,
            keys,
            written,
            args,
            key_hashes: _,
        } = prepared;
        let mut statuses: Vec<Option<String>> = vec![None; batch.len()];
        let mut backoff = self.cfg.backoff.start();
        let stored = match args {
            Ok(args) => {
                db::retrying(
                    &mut backoff,
                    |e, delay| {
                        self.note_unavailable();
                        tracing::warn!(error = %e, retry_in = ?delay, events = batch.len(), "database write failed; keeping the batch and retrying");
                        true
                    },
                    || async {
                        let started = Instant::now();
                        let r = self.db.upsert_encoded(&sql, args.clone()).await;
                        if r.is_ok() {
                            self.latency.record(started.elapsed().as_secs_f64());
                        }
                        r
                    },
                )
                .await
            }
            Err(e) => Err(e),
        };
        match stored {
            Ok(_) => {
                if let Some(h) = self.health.get() {
                    h.synced();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch refused; writing its rows one by one to find the bad ones");
                let rows = Self::rows(written.iter().map(|&i| (keys[i].clone(), &batch[i])));
                let bad = self.write_one_by_one(&rows).await;
                for (status, k) in statuses.iter_mut().zip(&keys) {
                    if let Some((_, why)) = bad.iter().find(|(key, _)| key == k) {
                        *status = Some(why.clone());
                    }
                }
            }
        }
        statuses
    }

    /// Returns the keys of the rows the database refused for good, with its error.
    async fn write_one_by_one(&self, rows: &[RowRef<'_>]) -> Vec<(String, String)> {
        let sql = self.sql_for(1);
        let mut bad = Vec::new();
        for r in rows {
            let mut backoff = self.cfg.backoff.start();
            let written = db::retrying(
                &mut backoff,
                |e, delay| {
                    self.note_unavailable();
                    tracing::warn!(error = %e, retry_in = ?delay, "database write failed; retrying");
                    true
                },
                || self.db.upsert(&sql, std::slice::from_ref(r)),
            )
            .await;
            if let Err(e) = written {
                tracing::error!(evt_key = %r.evt_key, error = %e, "the database refused this event; it is not stored");
                self.rejected.increment(1);
                bad.push((r.evt_key.clone(), e.to_string()));
            }
        }
        bad
    }

    /// Counts a write the database could not take now and marks the sink failing for
    /// readiness.
    fn note_unavailable(&self) {
        self.unavailable.increment(1);
        if let Some(h) = self.health.get() {
            h.failing();
        }
    }
}

impl Sink for SqlSink {
    fn run(self: Box<Self>, mut cx: SinkContext) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let retention = self.cfg.retention.map(|r| {
                let db = self.db.clone();
                let table = self.cfg.table.clone();
                tokio::spawn(retention_loop(db, table, r.0))
            });
            let health = self
                .registry
                .register(&cx.metrics.id, Duration::from_secs(30));
            health.synced(); // connected when it was built
            let _ = self.health.set(health.clone());
            let max = self.cfg.batch.max_events;
            let max_wait = self.cfg.batch.max_wait.0;
            let this = std::sync::Arc::new(*self);
            let processing = &cx.metrics.processing;
            let latency = &crate::metrics::latency(&cx.metrics.id, cx.metrics.type_name);
            let id = &cx.metrics.id.clone();
            // Two steps, overlapped: while a batch is written (the database works), the next
            // is keyed and encoded on another thread. Batches that share a key are written in
            // order (a later version of an event is never overwritten by an earlier one), and
            // each is acknowledged only once stored. At most two prepared batches wait.
            let (ready, mut to_write) =
                tokio::sync::mpsc::channel::<(std::sync::Arc<Vec<Event>>, Prepared)>(1);
            let rejected = &this.rejected;
            // Events that will not be written are refused and counted: never dropped, which
            // would report them stored.
            let refuse = |batch: &[Event], why: &str| {
                tracing::error!(error = %why, events = batch.len(), "batch not written");
                rejected.increment(batch.len() as u64);
                crate::event::refuse_all(batch, id, why);
            };
            let prepare = {
                let this = this.clone();
                let input = &mut cx.input;
                async move {
                    super::batch::run_batched(input, max, max_wait, 1, |batch| {
                        let this = this.clone();
                        let ready = ready.clone();
                        async move {
                            // Shared with the blocking task, so that the events are still here
                            // should it fail (a bug).
                            let batch = std::sync::Arc::new(batch);
                            let prepared = tokio::task::spawn_blocking({
                                let batch = batch.clone();
                                move || this.prepare(&batch)
                            })
                            .await;
                            match prepared {
                                Ok(p) => {
                                    if let Err(back) = ready.send((batch, p)).await {
                                        refuse(&back.0.0, "the writer stopped");
                                    }
                                }
                                Err(e) => {
                                    refuse(&batch, &format!("preparing the batch failed: {e}"));
                                }
                            }
                        }
                    })
                    .await;
                }
            };
            let acknowledge = |(batch, statuses): Stored| {
                for (e, s) in batch.iter().zip(statuses) {
                    match s {
                        None => {
                            latency.event(e);
                            e.ack(Status::Delivered);
                        }
                        Some(why) => e.refuse(id, &why),
                    }
                }
            };
            let write = write_batches(&this, &mut to_write, processing, acknowledge);
            tokio::join!(prepare, write);
            if let Some(h) = retention {
                h.abort();
            }
            health.stopped();
            // Closing the pool lets SQLite fold its WAL back into the database file.
            this.db.close().await;
            Ok(())
        })
    }
}

/// Writes prepared batches as they come and acknowledges each once stored. PostgreSQL: two
/// batches are written at once on two connections (the second is sent while the first
/// executes and commits), never two that share a key, so that a later version of an event is
/// never overwritten by an earlier one. Elsewhere one batch at a time, in order
/// ([`SqlConfig::writers`]).
async fn write_batches(
    sink: &std::sync::Arc<SqlSink>,
    to_write: &mut tokio::sync::mpsc::Receiver<(std::sync::Arc<Vec<Event>>, Prepared)>,
    processing: &metrics::Histogram,
    acknowledge: impl Fn(Stored),
) {
    use futures::StreamExt;
    let writers = usize::try_from(sink.cfg.writers()).unwrap_or(1);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut next: Option<(std::sync::Arc<Vec<Event>>, Prepared)> = None;
    let mut inputs_open = true;
    loop {
        if next.is_none() && inputs_open {
            tokio::select! {
                biased;
                Some(stored) = in_flight.next(), if !in_flight.is_empty() => {
                    acknowledge(stored);
                    continue;
                }
                n = to_write.recv() => match n {
                    Some(n) => next = Some(n),
                    None => inputs_open = false,
                },
            }
        }
        if let Some((batch, prepared)) = next.take() {
            let shares_a_key = in_flight
                .iter()
                .any(|w: &InFlight| !w.key_hashes.is_disjoint(&prepared.key_hashes));
            if in_flight.len() < writers && !shares_a_key {
                in_flight.push(InFlight::start(
                    sink.clone(),
                    batch,
                    prepared,
                    processing.clone(),
                ));
            } else {
                // Wait for a write to end (the one holding the shared key, or any for room).
                next = Some((batch, prepared));
                if let Some(stored) = in_flight.next().await {
                    acknowledge(stored);
                }
            }
            continue;
        }
        if !inputs_open {
            while let Some(stored) = in_flight.next().await {
                acknowledge(stored);
            }
            return;
        }
    }
}

/// Deletes old rows in batches of 1,000, every tenth of the retention (at most every 5 min).
async fn retention_loop(db: Db, table: String, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        // Checked: a retention longer than the calendar reaches back keeps everything.
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| Utc::now().checked_sub_signed(r))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let mut total = 0;
        loop {
            match table::delete_older(&db, &table, cutoff, 1000).await {
                Ok(n) => {
                    total += n;
                    if n < 1000 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: delete failed; will try again");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(
                table,
                rows = total,
                "retention: deleted rows last seen before the cutoff"
            );
        }
        tokio::time::sleep(every).await;
    }
}

pub const TYPE: StageType = StageType {
    name: "sql",
    kind: StageKind::Sink,
    summary: "stores events in SQLite, PostgreSQL or MySQL/MariaDB (batched upserts)",
    parse: crate::component::parse_config::<SqlConfig>,
    schema: crate::component::schema_of::<SqlConfig>,
    describe: describe_metrics,
};

pub const SQL_SECONDS: &str = "eventflow_sql_query_seconds";

/// SQL statement latency of a stage, by operation.
pub fn sql_latency(stage: &str, op: &'static str) -> metrics::Histogram {
    metrics::histogram!(SQL_SECONDS, "stage" => stage.to_string(), "operation" => op)
}

/// Descriptions of the sql sink's metrics.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        SQL_SECONDS,
        metrics::Unit::Seconds,
        "SQL statement latency by operation."
    );
}
