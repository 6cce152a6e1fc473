//! The events table (`k8s_events` by default, the k8m event handler's table plus eventflow's
//! columns) that the `sql` sink writes and the webhook's `mark_rows` updates: its columns on
//! each backend, creating or migrating it, the upsert and the retention delete.

use chrono::{DateTime, Utc};
use sea_query::{
    Alias, ColumnDef, Expr, ExprTrait, Index, MysqlQueryBuilder, OnConflict, PostgresQueryBuilder,
    Query, SqliteQueryBuilder, Table, Value,
};

use sqlx::AssertSqlSafe;

use crate::state::db::{Backend, Db, DbError, classify};

/// The schema version eventflow writes into `eventflow_schema`; bump it with a migration.
pub const SCHEMA_VERSION: i64 = 1;

/// A column of the events table: name and how to declare it on each backend.
struct Col {
    name: &'static str,
    kind: ColKind,
}

#[derive(Clone, Copy)]
enum ColKind {
    Key,
    Short,
    Text,
    LongText,
    Time,
    BigInt,
    Bool,
    Int,
}

/// Every column but `id`. The first block is the seed's table; the rest is eventflow's.
const COLUMNS: &[Col] = &[
    Col {
        name: "evt_key",
        kind: ColKind::Key,
    },
    Col {
        name: "cluster",
        kind: ColKind::Short,
    },
    Col {
        name: "namespace",
        kind: ColKind::Short,
    },
    Col {
        name: "name",
        kind: ColKind::Short,
    },
    Col {
        name: "type",
        kind: ColKind::Short,
    },
    Col {
        name: "reason",
        kind: ColKind::Short,
    },
    Col {
        name: "level",
        kind: ColKind::Short,
    },
    Col {
        name: "message",
        kind: ColKind::Text,
    },
    Col {
        name: "timestamp",
        kind: ColKind::Time,
    },
    Col {
        name: "processed",
        kind: ColKind::Bool,
    },
    Col {
        name: "attempts",
        kind: ColKind::Int,
    },
    Col {
        name: "created_at",
        kind: ColKind::Time,
    },
    Col {
        name: "updated_at",
        kind: ColKind::Time,
    },
    Col {
        name: "uid",
        kind: ColKind::Short,
    },
    Col {
        name: "kind",
        kind: ColKind::Short,
    },
    Col {
        name: "object_name",
        kind: ColKind::Short,
    },
    Col {
        name: "object_namespace",
        kind: ColKind::Short,
    },
    Col {
        name: "object_uid",
        kind: ColKind::Short,
    },
    Col {
        name: "count",
        kind: ColKind::BigInt,
    },
    Col {
        name: "first_seen",
        kind: ColKind::Time,
    },
    Col {
        name: "last_seen",
        kind: ColKind::Time,
    },
    Col {
        name: "source",
        kind: ColKind::Short,
    },
    Col {
        name: "host",
        kind: ColKind::Short,
    },
    Col {
        name: "resource_version",
        kind: ColKind::Short,
    },
    Col {
        name: "raw",
        kind: ColKind::LongText,
    },
];

fn column_def(c: &Col, backend: Backend) -> ColumnDef {
    let mut d = ColumnDef::new(Alias::new(c.name));
    match c.kind {
        ColKind::Key => d.string_len(255).not_null(),
        ColKind::Short => d.string_len(255).null(),
        ColKind::Text => match backend {
            Backend::MySql => d.custom(Alias::new("MEDIUMTEXT")).null(),
            _ => d.text().null(),
        },
        ColKind::LongText => match backend {
            Backend::MySql => d.custom(Alias::new("LONGTEXT")).null(),
            _ => d.text().null(),
        },
        ColKind::Time => match backend {
            Backend::Postgres => d.timestamp_with_time_zone().null(),
            Backend::MySql => d.custom(Alias::new("DATETIME(6)")).null(),
            Backend::Sqlite => d.date_time().null(),
        },
        ColKind::BigInt => d.big_integer().not_null().default(1),
        ColKind::Bool => d.boolean().not_null().default(false),
        ColKind::Int => d.integer().not_null().default(0),
    };
    d.to_owned()
}

/// Creates the table and its indexes if missing, adds missing columns to an existing table
/// (a table created by the seed keeps its rows), and records the schema version.
pub async fn ensure_table(db: &Db, table: &str) -> Result<(), DbError> {
    let backend = db.backend();
    let existing = db.columns(table).await?;
    if existing.is_empty() {
        let mut t = Table::create();
        t.table(Alias::new(table)).if_not_exists().col(
            ColumnDef::new(Alias::new("id"))
                .big_integer()
                .not_null()
                .auto_increment()
                .primary_key(),
        );
        for c in COLUMNS {
            t.col(column_def(c, backend));
        }
        if backend == Backend::MySql {
            db.execute_raw(db.schema_sql(&t) + " DEFAULT CHARSET=utf8mb4")
                .await?;
        } else {
            db.execute_raw(db.schema_sql(&t)).await?;
        }
    } else {
        for c in COLUMNS
            .iter()
            .filter(|c| !existing.iter().any(|e| e == c.name))
        {
            let mut def = column_def(c, backend);
            if matches!(c.kind, ColKind::Key) {
                def = ColumnDef::new(Alias::new(c.name))
                    .string_len(255)
                    .null()
                    .to_owned();
            }
            let alter = Table::alter()
                .table(Alias::new(table))
                .add_column(def)
                .to_owned();
            let sql = match backend {
                Backend::Sqlite => alter.to_string(SqliteQueryBuilder),
                Backend::Postgres => alter.to_string(PostgresQueryBuilder),
                Backend::MySql => alter.to_string(MysqlQueryBuilder),
            };
            tracing::info!(
                table,
                column = c.name,
                "adding a missing column to an existing table"
            );
            db.execute_raw(sql).await?;
        }
    }
    let indexes: [(&str, &[&str], bool); 6] = [
        ("evt_key", &["evt_key"], true),
        ("processed_ts", &["processed", "timestamp"], false),
        ("namespace", &["namespace"], false),
        ("type", &["type"], false),
        ("reason", &["reason"], false),
        ("last_seen", &["last_seen"], false),
    ];
    for (suffix, cols, unique) in indexes {
        let mut i = Index::create();
        i.name(format!("idx_{table}_{suffix}"))
            .table(Alias::new(table));
        for c in cols {
            i.col(Alias::new(*c));
        }
        if unique {
            i.unique();
        }
        let sql = match backend {
            Backend::Sqlite => i.if_not_exists().to_string(SqliteQueryBuilder),
            Backend::Postgres => i.if_not_exists().to_string(PostgresQueryBuilder),
            // MySQL has no CREATE INDEX IF NOT EXISTS: an existing index is error 1061.
            Backend::MySql => i.to_string(MysqlQueryBuilder),
        };
        match db.execute_raw(sql).await {
            Ok(_) => {}
            Err(DbError::Permanent(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("42000")
                    && e.message().contains("Duplicate key name") => {}
            Err(e) => return Err(e),
        }
    }
    record_version(db, table).await
}

async fn record_version(db: &Db, table: &str) -> Result<(), DbError> {
    let mut t = Table::create();
    t.table(Alias::new("eventflow_schema"))
        .if_not_exists()
        .col(
            ColumnDef::new(Alias::new("table_name"))
                .string_len(64)
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(Alias::new("version"))
                .big_integer()
                .not_null(),
        );
    db.execute_raw(db.schema_sql(&t)).await?;
    let q = Query::insert()
        .into_table(Alias::new("eventflow_schema"))
        .columns([Alias::new("table_name"), Alias::new("version")])
        .values_panic([table.into(), SCHEMA_VERSION.into()])
        .on_conflict(
            OnConflict::column(Alias::new("table_name"))
                .update_column(Alias::new("version"))
                .to_owned(),
        )
        .to_owned();
    db.execute_in_tx(vec![db.build(&q)]).await.map(|_| ())
}

/// The columns an upsert writes, in order (the seed's `processed` and `attempts` keep their
/// defaults on insert and are never overwritten).
pub const WRITTEN: &[&str] = &[
    "evt_key",
    "cluster",
    "namespace",
    "name",
    "type",
    "reason",
    "level",
    "message",
    "timestamp",
    "created_at",
    "updated_at",
    "uid",
    "kind",
    "object_name",
    "object_namespace",
    "object_uid",
    "count",
    "first_seen",
    "last_seen",
    "source",
    "host",
    "resource_version",
    "raw",
];

/// What a repeat of a known event updates.
const UPDATED: &[&str] = &[
    "name",
    "type",
    "reason",
    "level",
    "message",
    "timestamp",
    "updated_at",
    "count",
    "first_seen",
    "last_seen",
    "source",
    "host",
    "resource_version",
    "raw",
];

/// The text of a multi-row upsert of `rows` rows keyed by `evt_key`, generated by sea-query
/// (placeholders for every value, in `WRITTEN` order row by row). The sink caches it per row
/// count and binds the values itself, straight from the events.
pub fn upsert_sql(backend: Backend, table: &str, rows: usize) -> String {
    let mut q = Query::insert();
    q.into_table(Alias::new(table))
        .columns(WRITTEN.iter().map(|c| Alias::new(*c)));
    let now = Utc::now();
    let placeholder_row: Vec<Value> = WRITTEN
        .iter()
        .map(|c| match *c {
            "count" => Value::from(0i64),
            "timestamp" | "created_at" | "updated_at" | "first_seen" | "last_seen" => {
                Value::from(now)
            }
            _ => Value::from(String::new()),
        })
        .collect();
    for _ in 0..rows {
        q.values_panic(placeholder_row.iter().cloned().map(Into::into));
    }
    q.on_conflict(
        OnConflict::column(Alias::new("evt_key"))
            .update_columns(UPDATED.iter().map(|c| Alias::new(*c)))
            .to_owned(),
    );
    match backend {
        Backend::Sqlite => q.build(SqliteQueryBuilder).0,
        Backend::Postgres => q.build(PostgresQueryBuilder).0,
        Backend::MySql => q.build(MysqlQueryBuilder).0,
    }
}

/// The values of one row, borrowed from an event where possible.
pub struct RowRef<'a> {
    pub evt_key: String,
    pub e: &'a crate::event::EventData,
    pub level: &'a str,
    pub now: DateTime<Utc>,
}

impl<'a> RowRef<'a> {
    /// The row of `e` under `evt_key`, written at `now`; `level` is the seed's (`warning` for
    /// Warning, `info` for Normal).
    pub fn new(evt_key: String, e: &'a crate::event::EventData, now: DateTime<Utc>) -> Self {
        let level = match e.type_.as_str() {
            "Warning" => "warning",
            "Normal" => "info",
            other => other,
        };
        RowRef {
            evt_key,
            e,
            level,
            now,
        }
    }
}

impl Db {
    /// Runs a cached upsert text with the rows' values bound, in one transaction.
    pub async fn upsert(&self, sql: &str, rows: &[RowRef<'_>]) -> Result<u64, DbError> {
        macro_rules! run {
            ($pool:expr) => {{
                let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
                for r in rows {
                    let e = r.e;
                    q = q
                        .bind(r.evt_key.as_str())
                        .bind(&*e.cluster)
                        .bind(e.namespace.as_str())
                        .bind(e.name.as_str())
                        .bind(e.type_.as_str())
                        .bind(e.reason.as_str())
                        .bind(r.level)
                        .bind(e.message.as_str())
                        .bind(e.last_seen.unwrap_or(r.now))
                        .bind(r.now)
                        .bind(r.now)
                        .bind(e.uid.as_str())
                        .bind(e.kind.as_str())
                        .bind(e.object_name.as_str())
                        .bind(e.object_namespace.as_str())
                        .bind(e.object_uid.as_str())
                        .bind(e.count)
                        .bind(e.first_seen)
                        .bind(e.last_seen)
                        .bind(e.source.as_str())
                        .bind(e.host.as_str())
                        .bind(e.resource_version.as_str())
                        .bind(e.raw.as_deref());
                }
                let mut tx = $pool.begin().await.map_err(classify)?;
                let n = q.execute(&mut *tx).await.map_err(classify)?.rows_affected();
                tx.commit().await.map_err(classify)?;
                Ok(n)
            }};
        }
        match self {
            Db::Sqlite(p) => run!(p),
            Db::Postgres(p) => run!(p),
            Db::MySql(p) => run!(p),
        }
    }
}

/// Deletes up to `limit` rows last seen before `before`. Returns how many went.
pub async fn delete_older(
    db: &Db,
    table: &str,
    before: DateTime<Utc>,
    limit: u64,
) -> Result<u64, DbError> {
    let t = Alias::new(table);
    let q = match db.backend() {
        // MySQL cannot LIMIT inside IN (subquery), but has DELETE ... LIMIT.
        Backend::MySql => Query::delete()
            .from_table(t)
            .and_where(Expr::col(Alias::new("last_seen")).lt(before))
            .order_by(Alias::new("id"), sea_query::Order::Asc)
            .limit(limit)
            .to_owned(),
        _ => Query::delete()
            .from_table(t.clone())
            .and_where(
                Expr::col(Alias::new("id")).in_subquery(
                    Query::select()
                        .column(Alias::new("id"))
                        .from(t)
                        .and_where(Expr::col(Alias::new("last_seen")).lt(before))
                        .order_by(Alias::new("id"), sea_query::Order::Asc)
                        .limit(limit)
                        .to_owned(),
                ),
            )
            .to_owned(),
    };
    db.execute_in_tx(vec![db.build(&q)]).await
}
