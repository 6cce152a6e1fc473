//! `mark_rows`: keeps the k8m event handler's `processed` and `attempts` columns of an events table true to
//! the webhook's deliveries (pipelines translated from the k8m event handler's format set it).
//!
//! After each delivery ends, the events' rows are upserted (so the order in which the `sql`
//! sink and the webhook finish does not matter: the sink's upsert never touches these two
//! columns), then `attempts` grows by the attempts made and `processed` is set when the
//! receiver accepted them. A failure here is logged and does not affect the delivery.

use schemars::JsonSchema;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Deserialize;

use crate::event::{Event, Field};
use crate::stages::key::KeySpec;
use crate::state::db::{self, Db};
use crate::state::events;

/// The table whose `processed`/`attempts` columns follow the deliveries.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MarkRows {
    /// The database URL (as the `sql` sink's).
    pub url: String,
    /// The table (created or migrated like the `sql` sink's).
    #[serde(default = "default_table")]
    pub table: String,
    /// The fields that make `evt_key` (as the `sql` sink's `key`).
    #[serde(default = "default_key")]
    pub key: Vec<Field>,
}

fn default_table() -> String {
    "k8s_events".into()
}

fn default_key() -> Vec<Field> {
    vec![Field::Cluster, Field::Uid]
}

/// Why `mark_rows` cannot be opened; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("field `mark_rows.table`: `{0}` is not a plain identifier")]
    Table(String),
    #[error("field `mark_rows.url`: {0}")]
    Connect(#[source] db::ConnectError),
    #[error("field `mark_rows`: {0}")]
    Columns(#[source] db::DbError),
}

/// An open [`MarkRows`].
pub struct Marker {
    db: Db,
    table: String,
    key: KeySpec,
}

impl Marker {
    /// Connects to its database and makes sure its table has the columns it writes.
    pub async fn open(cfg: &MarkRows) -> Result<Marker, MarkError> {
        if !db::valid_identifier(&cfg.table) {
            return Err(MarkError::Table(cfg.table.clone()));
        }
        let db = Db::connect(&cfg.url, 2, std::time::Duration::from_secs(10))
            .await
            .map_err(MarkError::Connect)?;
        events::ensure_table(&db, &cfg.table)
            .await
            .map_err(MarkError::Columns)?;
        Ok(Marker {
            db,
            table: cfg.table.clone(),
            key: KeySpec(cfg.key.clone()),
        })
    }

    /// Records how a delivery of `events` ended.
    pub async fn mark(&self, stage: &str, events: &[Event], delivered: bool, attempts: u32) {
        if let Err(e) = self.try_mark(events, delivered, attempts).await {
            tracing::warn!(stage, table = %self.table, error = %e, "cannot update `processed`/`attempts` of the delivered events");
        }
    }

    async fn try_mark(
        &self,
        events: &[Event],
        delivered: bool,
        attempts: u32,
    ) -> Result<(), db::DbError> {
        let now = chrono::Utc::now();
        let rows: Vec<events::RowRef<'_>> = events
            .iter()
            .map(|e| events::RowRef::new(self.key.joined(e, '/'), e.data(), now))
            .collect();
        let sql = events::upsert_sql(self.db.backend(), &self.table, rows.len());
        self.db.upsert(&sql, &rows).await?;
        let mut q = Query::update();
        q.table(Alias::new(&self.table)).value(
            Alias::new("attempts"),
            Expr::col(Alias::new("attempts")).add(i64::from(attempts)),
        );
        if delivered {
            q.value(Alias::new("processed"), true);
        }
        q.and_where(Expr::col(Alias::new("evt_key")).is_in(rows.iter().map(|r| r.evt_key.clone())));
        self.db
            .execute_in_tx(vec![self.db.build(&q)])
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}
