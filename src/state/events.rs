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

/// A column of the events table: its name, how to declare it on each backend, what an
/// upsert writes into it (nothing: it keeps its default), and whether a repeat of a known
/// event overwrites it. [`COLUMNS`] is the one list: the declared columns, the written ones,
/// the updated ones and the bind order all come from it.
struct Col {
    name: &'static str,
    kind: ColKind,
    value: Option<Val>,
    updated: bool,
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

/// Where a written column's value comes from.
#[derive(Clone, Copy)]
enum Val {
    EvtKey,
    Cluster,
    Namespace,
    Name,
    Type,
    Reason,
    Level,
    Message,
    /// The event's `last_seen`, or the write time.
    Timestamp,
    /// The write time.
    Now,
    Uid,
    Kind,
    ObjectName,
    ObjectNamespace,
    ObjectUid,
    Count,
    FirstSeen,
    LastSeen,
    Source,
    Host,
    ResourceVersion,
    Raw,
    /// The label maps `enrich` added, as one JSON object (`object`, `namespace`,
    /// `annotations`), or NULL.
    Labels,
    OwnerKind,
    OwnerName,
}

const fn col(name: &'static str, kind: ColKind, value: Option<Val>, updated: bool) -> Col {
    Col {
        name,
        kind,
        value,
        updated,
    }
}

use ColKind as K;

/// Every column but `id`. The first block is the k8m event handler's table (its `processed`
/// and `attempts` keep their defaults on insert and are never overwritten); the rest is
/// eventflow's.
const COLUMNS: &[Col] = &[
    col("evt_key", K::Key, Some(Val::EvtKey), false),
    col("cluster", K::Short, Some(Val::Cluster), false),
    col("namespace", K::Short, Some(Val::Namespace), false),
    col("name", K::Short, Some(Val::Name), true),
    col("type", K::Short, Some(Val::Type), true),
    col("reason", K::Short, Some(Val::Reason), true),
    col("level", K::Short, Some(Val::Level), true),
    col("message", K::Text, Some(Val::Message), true),
    col("timestamp", K::Time, Some(Val::Timestamp), true),
    col("processed", K::Bool, None, false),
    col("attempts", K::Int, None, false),
    col("created_at", K::Time, Some(Val::Now), false),
    col("updated_at", K::Time, Some(Val::Now), true),
    col("uid", K::Short, Some(Val::Uid), false),
    col("kind", K::Short, Some(Val::Kind), false),
    col("object_name", K::Short, Some(Val::ObjectName), false),
    col(
        "object_namespace",
        K::Short,
        Some(Val::ObjectNamespace),
        false,
    ),
    col("object_uid", K::Short, Some(Val::ObjectUid), false),
    col("count", K::BigInt, Some(Val::Count), true),
    col("first_seen", K::Time, Some(Val::FirstSeen), true),
    col("last_seen", K::Time, Some(Val::LastSeen), true),
    col("source", K::Short, Some(Val::Source), true),
    col("host", K::Short, Some(Val::Host), true),
    col(
        "resource_version",
        K::Short,
        Some(Val::ResourceVersion),
        true,
    ),
    col("raw", K::LongText, Some(Val::Raw), true),
    col("labels", K::Text, Some(Val::Labels), true),
    col("owner_kind", K::Short, Some(Val::OwnerKind), true),
    col("owner_name", K::Short, Some(Val::OwnerName), true),
];

/// The columns an upsert writes, in bind order.
fn written() -> impl Iterator<Item = (&'static Col, Val)> {
    COLUMNS.iter().filter_map(|c| c.value.map(|v| (c, v)))
}

/// The names of the columns an upsert writes, in bind order.
pub fn written_columns() -> Vec<&'static str> {
    written().map(|(c, _)| c.name).collect()
}

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
    d.clone()
}

/// Creates the table and its indexes if missing, adds missing columns to an existing table
/// (a table created by the k8m event handler keeps its rows), and records the schema version.
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
            let def = if matches!(c.kind, ColKind::Key) {
                ColumnDef::new(Alias::new(c.name))
                    .string_len(255)
                    .null()
                    .to_owned()
            } else {
                column_def(c, backend)
            };
            let alter = Table::alter()
                .table(Alias::new(table))
                .add_column(def)
                .to_owned();
            tracing::info!(
                table,
                column = c.name,
                "adding a missing column to an existing table"
            );
            db.execute_raw(db.schema_sql(&alter)).await?;
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
        db.create_index(i).await?;
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

/// The text of an upsert of `rows` rows keyed by `evt_key`, generated by sea-query. SQLite and
/// MySQL: a multi-row `INSERT ... VALUES` (placeholders for every value, in bind order row by
/// row). PostgreSQL: one text whatever the row count, `INSERT ... SELECT * FROM UNNEST($1::text[],
/// ...)` with one array parameter per column — a 500-row `VALUES` list is a large statement
/// for PostgreSQL to parse and plan, the arrays are not (BENCHMARKS.md). The sink caches the
/// text per row count and binds the values itself, straight from the events ([`Db::upsert`]).
pub fn upsert_sql(backend: Backend, table: &str, rows: usize) -> String {
    if backend == Backend::Postgres {
        return postgres_unnest_upsert(table);
    }
    let mut q = Query::insert();
    q.into_table(Alias::new(table))
        .columns(written().map(|(c, _)| Alias::new(c.name)));
    let now = Utc::now();
    let placeholder_row: Vec<Value> = written()
        .map(|(c, _)| match c.kind {
            ColKind::BigInt => Value::from(0i64),
            ColKind::Time => Value::from(now),
            _ => Value::from(String::new()),
        })
        .collect();
    for _ in 0..rows {
        q.values_panic(placeholder_row.iter().cloned().map(Into::into));
    }
    q.on_conflict(
        OnConflict::column(Alias::new("evt_key"))
            .update_columns(
                COLUMNS
                    .iter()
                    .filter(|c| c.updated)
                    .map(|c| Alias::new(c.name)),
            )
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

/// One column's value of a row, as it is bound.
enum Bound<'a> {
    Str(&'a str),
    OptStr(Option<&'a str>),
    Int(i64),
    Time(DateTime<Utc>),
    OptTime(Option<DateTime<Utc>>),
    OptString(Option<String>),
}

/// PostgreSQL's upsert: sea-query's one-row form with its `VALUES (...)` replaced by
/// `SELECT * FROM UNNEST(...)` of one typed array per written column.
fn postgres_unnest_upsert(table: &str) -> String {
    let mut q = Query::insert();
    q.into_table(Alias::new(table))
        .columns(written().map(|(c, _)| Alias::new(c.name)));
    q.values_panic(written().map(|_| Value::from(String::new()).into()));
    q.on_conflict(
        OnConflict::column(Alias::new("evt_key"))
            .update_columns(
                COLUMNS
                    .iter()
                    .filter(|c| c.updated)
                    .map(|c| Alias::new(c.name)),
            )
            .to_owned(),
    );
    let text = q.build(PostgresQueryBuilder).0;
    let arrays: Vec<String> = written()
        .enumerate()
        .map(|(i, (c, _))| {
            let ty = match c.kind {
                ColKind::Time => "timestamptz",
                ColKind::BigInt => "int8",
                ColKind::Int => "int4",
                ColKind::Bool => "bool",
                ColKind::Key | ColKind::Short | ColKind::Text | ColKind::LongText => "text",
            };
            format!("${}::{ty}[]", i + 1)
        })
        .collect();
    match (text.find(" VALUES "), text.find(" ON CONFLICT ")) {
        (Some(v), Some(o)) => format!(
            "{} SELECT * FROM UNNEST({}){}",
            &text[..v],
            arrays.join(", "),
            &text[o..]
        ),
        // sea-query always writes both; keep a working statement if that ever changes.
        _ => text,
    }
}

/// The `labels` column: `{"object": {...}, "namespace": {...}, "annotations": {...}}` with the
/// maps `enrich` set, or `None` when it set none.
fn labels_json(e: &crate::event::EventData) -> Option<String> {
    let mut o = serde_json::Map::new();
    for (name, map) in [
        ("object", &e.object_labels),
        ("namespace", &e.namespace_labels),
        ("annotations", &e.object_annotations),
    ] {
        if let Some(m) = map {
            o.insert(
                name.to_string(),
                serde_json::to_value(&**m).unwrap_or_default(),
            );
        }
    }
    (!o.is_empty()).then(|| serde_json::Value::Object(o).to_string())
}

impl<'a> RowRef<'a> {
    /// The value this row writes into the column of `v`.
    fn value(&self, v: Val) -> Bound<'_> {
        let e = self.e;
        match v {
            Val::EvtKey => Bound::Str(&self.evt_key),
            Val::Cluster => Bound::Str(&e.cluster),
            Val::Namespace => Bound::Str(&e.namespace),
            Val::Name => Bound::Str(&e.name),
            Val::Type => Bound::Str(&e.type_),
            Val::Reason => Bound::Str(&e.reason),
            Val::Level => Bound::Str(self.level),
            Val::Message => Bound::Str(&e.message),
            Val::Timestamp => Bound::Time(e.last_seen.unwrap_or(self.now)),
            Val::Now => Bound::Time(self.now),
            Val::Uid => Bound::Str(&e.uid),
            Val::Kind => Bound::Str(&e.kind),
            Val::ObjectName => Bound::Str(&e.object_name),
            Val::ObjectNamespace => Bound::Str(&e.object_namespace),
            Val::ObjectUid => Bound::Str(&e.object_uid),
            Val::Count => Bound::Int(e.count),
            Val::FirstSeen => Bound::OptTime(e.first_seen),
            Val::LastSeen => Bound::OptTime(e.last_seen),
            Val::Source => Bound::Str(&e.source),
            Val::Host => Bound::Str(&e.host),
            Val::ResourceVersion => Bound::Str(&e.resource_version),
            Val::Raw => Bound::OptStr(e.raw.as_deref()),
            Val::Labels => Bound::OptString(labels_json(e)),
            Val::OwnerKind => Bound::Str(&e.owner_kind),
            Val::OwnerName => Bound::Str(&e.owner_name),
        }
    }

    /// The row as a JSON object, column by column (`eventflow explain` and `eventflow test`).
    pub fn to_json(&self) -> serde_json::Value {
        let time = |t: DateTime<Utc>| serde_json::Value::String(t.to_rfc3339());
        let mut row = serde_json::Map::new();
        for (c, v) in written() {
            let value = match self.value(v) {
                Bound::Str(x) => x.into(),
                Bound::OptStr(x) => x.map_or(serde_json::Value::Null, Into::into),
                Bound::OptString(x) => x.map_or(serde_json::Value::Null, Into::into),
                Bound::Int(x) => x.into(),
                Bound::Time(t) => time(t),
                Bound::OptTime(t) => t.map_or(serde_json::Value::Null, time),
            };
            row.insert(c.name.to_string(), value);
        }
        serde_json::Value::Object(row)
    }

    /// The row of `e` under `evt_key`, written at `now`; `level` is the k8m event handler's (`warning` for
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

/// A batch's values encoded for its backend, once: a retry sends the same bytes again, and the
/// encoding can run while the previous batch is still being written (the `sql` sink does).
#[derive(Clone)]
pub enum Encoded {
    Sqlite(sqlx::sqlite::SqliteArguments),
    Postgres(sqlx::postgres::PgArguments),
    MySql(sqlx::mysql::MySqlArguments),
}

/// A value that cannot be encoded (never for the types bound here): refused, not retried.
fn encoding(e: sqlx::error::BoxDynError) -> DbError {
    DbError::Permanent(sqlx::Error::Encode(e))
}

impl Db {
    /// Encodes the rows' values in the order of [`upsert_sql`]'s text for this backend: row by
    /// row for SQLite and MySQL, one array per column for PostgreSQL.
    pub fn encode_rows(&self, rows: &[RowRef<'_>]) -> Result<Encoded, DbError> {
        use sqlx::Arguments;
        macro_rules! row_by_row {
            ($args:ty) => {{
                let mut a = <$args>::default();
                for r in rows {
                    for (_, v) in written() {
                        match r.value(v) {
                            Bound::Str(x) => a.add(x),
                            Bound::OptStr(x) => a.add(x),
                            Bound::OptString(x) => a.add(x),
                            Bound::Int(x) => a.add(x),
                            Bound::Time(x) => a.add(x),
                            Bound::OptTime(x) => a.add(x),
                        }
                        .map_err(encoding)?;
                    }
                }
                a
            }};
        }
        Ok(match self.backend() {
            Backend::Sqlite => Encoded::Sqlite(row_by_row!(sqlx::sqlite::SqliteArguments)),
            Backend::MySql => Encoded::MySql(row_by_row!(sqlx::mysql::MySqlArguments)),
            Backend::Postgres => Encoded::Postgres(postgres_arrays(rows)?),
        })
    }

    /// Runs a cached upsert text with encoded values: one statement, atomic on its own (no
    /// `BEGIN`/`COMMIT` round trips around it).
    pub async fn upsert_encoded(&self, sql: &str, args: Encoded) -> Result<u64, DbError> {
        let text = || AssertSqlSafe(sql.to_string());
        let done = match (self, args) {
            (Db::Sqlite(p), Encoded::Sqlite(a)) => sqlx::query_with(text(), a)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            (Db::Postgres(p), Encoded::Postgres(a)) => sqlx::query_with(text(), a)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            (Db::MySql(p), Encoded::MySql(a)) => sqlx::query_with(text(), a)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            _ => Err(sqlx::Error::Protocol(
                "values encoded for another database".into(),
            )),
        };
        done.map_err(classify)
    }

    /// Encodes the rows and runs a cached upsert text with them.
    pub async fn upsert(&self, sql: &str, rows: &[RowRef<'_>]) -> Result<u64, DbError> {
        let args = self.encode_rows(rows)?;
        self.upsert_encoded(sql, args).await
    }
}

/// PostgreSQL's values: one array per column (see [`upsert_sql`]).
fn postgres_arrays(rows: &[RowRef<'_>]) -> Result<sqlx::postgres::PgArguments, DbError> {
    use sqlx::Arguments;
    let mut a = sqlx::postgres::PgArguments::default();
    for (c, v) in written() {
        match c.kind {
            ColKind::BigInt | ColKind::Int => a.add(
                rows.iter()
                    .map(|r| match r.value(v) {
                        Bound::Int(x) => x,
                        _ => 0,
                    })
                    .collect::<Vec<i64>>(),
            ),
            ColKind::Time => a.add(
                rows.iter()
                    .map(|r| match r.value(v) {
                        Bound::Time(t) => Some(t),
                        Bound::OptTime(t) => t,
                        _ => None,
                    })
                    .collect::<Vec<Option<DateTime<Utc>>>>(),
            ),
            _ => a.add(
                rows.iter()
                    .map(|r| match r.value(v) {
                        Bound::Str(x) => Some(std::borrow::Cow::Borrowed(x)),
                        Bound::OptStr(x) => x.map(std::borrow::Cow::Borrowed),
                        Bound::OptString(x) => x.map(std::borrow::Cow::Owned),
                        _ => None,
                    })
                    .collect::<Vec<Option<std::borrow::Cow<'_, str>>>>(),
            ),
        }
        .map_err(encoding)?;
    }
    Ok(a)
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
