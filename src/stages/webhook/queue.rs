//! The webhook's tables in the `state` database: the durable queue and the dead letters.
//!
//! `eventflow_webhook_queue` holds the events a `durable: true` sink has accepted and not yet
//! delivered, in arrival order (`id`), keyed by the stage id (`sink`): one row per request's
//! worth of events (up to `batch.max_events`, a JSON array in `event`, their number in `n`), so
//! that draining a backlog reads and deletes one row per request, not one per event. Rows
//! written by versions before `n` existed hold one event each (`n` is NULL, `event` one
//! object) and are read as such: an existing queue needs no conversion. `form` records the
//! [`event::STORED_FORM`] a row's events were written in: a sink whose body is the events' JSON
//! as stored sends a row of this version's form without decoding it; other rows (NULL: written
//! before forms were recorded) are decoded. A delivery takes one
//! row, or several small consecutive ones up to `batch.max_events`. A
//! batch that has been attempted is pinned so that after a restart the same events go out
//! together under the same delivery id: its first row's `batch` is the batch's last row id
//! (one row written, not the whole batch). Queues written by earlier versions pinned every row
//! of a batch with its first row's id; both forms are read (see [`Pending::continues`]).
//!
//! A row written by this version holds its events and their spans packed ([`pack`]: LZ4 in
//! `packed`, `event` left empty): a request's worth of events is mostly the same keys and
//! values again, so it is stored in a fraction of its size, and a drain reads, and the
//! database sends, that much less (PostgreSQL would otherwise decompress its own compressed
//! copy of each row at every read). Rows written before (`packed` NULL) are read as they were.
//!
//! `eventflow_webhook_dead_letter` holds deliveries that failed for good: the events, the
//! delivery id, the reason and the number of attempts, for a person to inspect and re-send
//! (`eventflow dead-letter`).

use sea_query::{Alias, ColumnDef, Expr, ExprTrait, Func, Index, Order, Query, Table};

use crate::event::{self, Event, EventData};
use crate::state::db::{Backend, Db, DbError, OpenError};

pub const QUEUE: &str = "eventflow_webhook_queue";
pub const DEAD: &str = "eventflow_webhook_dead_letter";
/// A queue row as selected: id, born at, batch, n, form, spans, event, packed.
type QueueRow = (
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
    Option<Vec<u8>>,
);
/// A dead letter as selected: id, sink, failed at, delivery id, attempts, reason, events.
type DeadLetterRow = (i64, String, i64, String, i64, String, String);

/// The dead-letter table's columns, in [`DeadLetter`]'s order.
const DEAD_COLUMNS: [&str; 7] = [
    "id",
    "sink",
    "failed_at",
    "delivery_id",
    "attempts",
    "reason",
    "events",
];

/// What a durable stage has not delivered: its queue and its dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStatus {
    pub queued: u64,
    /// When the oldest queued event entered the pipeline (unix milliseconds).
    pub oldest_born_at: Option<i64>,
    pub dead_letters: u64,
    /// The events in those dead letters.
    pub dead_events: u64,
}

/// One queued row: one or more events.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    /// When the oldest of its events entered the pipeline (unix milliseconds).
    pub born_at: i64,
    /// On the first row of a batch that was attempted: the batch's last row id. (Written by
    /// earlier versions: on every row of an attempted batch, its first row's id.)
    pub batch: Option<i64>,
    /// How many events: `Some(n)` for a JSON array of `n` [`event::to_stored`] objects in
    /// `event`; `None` for one object (a row written by an earlier version).
    pub n: Option<i64>,
    /// The [`event::STORED_FORM`] its events were written in (`None`: by a version before
    /// forms were recorded).
    pub form: Option<i64>,
    /// Where each event's fields are in `event` and its keys ([`event::Spans`], JSON; `None`:
    /// written before spans were).
    pub spans: Option<String>,
    /// The event(s) as written by [`event::to_stored`] (unpacked, for a packed row; for a
    /// packed row that does not unpack, its bytes in hexadecimal, kept for a person to see).
    pub event: String,
    /// Why the row's packed events could not be unpacked (its events cannot be read).
    pub damaged: Option<String>,
}

impl Pending {
    /// A row as read, unpacked.
    fn from_row((id, born_at, batch, n, form, spans, event, packed): QueueRow) -> Pending {
        let mut row = Pending {
            id,
            born_at,
            batch,
            n,
            form,
            spans,
            event,
            damaged: None,
        };
        if let Some(packed) = packed {
            match unpack(&packed) {
                Ok((text, spans)) => {
                    row.event = text;
                    row.spans = Some(spans);
                }
                Err(why) => {
                    row.event = crate::hex::encode(&packed);
                    row.damaged = Some(why);
                }
            }
        }
        row
    }

    /// How many events the row holds.
    pub fn len(&self) -> usize {
        self.n.map_or(1, |n| usize::try_from(n).unwrap_or(0))
    }

    /// Whether the row holds no event (never written so; a damaged row).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why its events cannot be read, as an error of the reader.
    fn check(&self) -> serde_json::Result<()> {
        match &self.damaged {
            Some(why) => Err(serde::de::Error::custom(why)),
            None => Ok(()),
        }
    }

    /// Each event's stored text.
    pub fn stored(&self) -> serde_json::Result<Vec<&str>> {
        self.check()?;
        match self.n {
            None => Ok(vec![self.event.as_str()]),
            Some(_) => Ok(
                serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&self.event)?
                    .into_iter()
                    .map(serde_json::value::RawValue::get)
                    .collect(),
            ),
        }
    }

    /// Whether its events were written in the form this version writes: they can go out as
    /// stored ([`Pending::refs`]); others must be decoded ([`Pending::events`]).
    pub fn in_this_form(&self) -> bool {
        self.form == Some(event::STORED_FORM)
    }

    /// Its events as stored, not decoded: found through its spans, or (none, or they do not
    /// fit the text) by reading the text.
    pub fn refs(&self) -> serde_json::Result<Vec<event::StoredRef<'_>>> {
        self.check()?;
        if let (Some(_), Some(spans)) = (self.n, &self.spans) {
            match event::spanned_refs(&self.event, spans) {
                Ok(refs) if refs.len() == self.len() => return Ok(refs),
                Ok(_) => tracing::warn!(
                    row = self.id,
                    "queued row: its spans do not count its events; reading the row instead"
                ),
                Err(why) => {
                    tracing::warn!(row = self.id, %why, "queued row: its spans do not fit; reading the row instead");
                }
            }
        }
        event::stored_refs(&self.event, self.n.is_some())
    }

    /// Its events.
    pub fn events(&self) -> serde_json::Result<Vec<EventData>> {
        self.check()?;
        match self.n {
            None => Ok(vec![event::from_stored(&self.event)?]),
            Some(_) => event::from_stored_array(&self.event),
        }
    }

    /// Whether `next`, the row after this batch's rows so far, belongs to the batch this
    /// row starts (this row pinned with `batch`; `None`: not pinned, so `next` must not be
    /// pinned either).
    pub fn continues(&self, next: &Pending) -> bool {
        match (self.batch, next.batch) {
            (None, None) => true,
            // Pinned now: the batch runs to its last row id, the rows after the first unpinned.
            (Some(last), None) => next.id <= last,
            // Pinned by an earlier version: every row carries the first row's id.
            (Some(first), Some(b)) => b == first && first == self.id,
            (None, Some(_)) => false,
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub sink: String,
    /// When the delivery failed for good (unix milliseconds).
    pub failed_at: i64,
    pub delivery_id: String,
    pub attempts: i64,
    pub reason: String,
    /// The events, a JSON array of [`event::to_stored`] objects.
    pub events: String,
}

impl DeadLetter {
    /// How many events it holds.
    pub fn event_count(&self) -> usize {
        serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&self.events)
            .map_or(0, |v| v.len())
    }

    /// The events of this dead letter.
    pub fn decode_events(&self) -> serde_json::Result<Vec<EventData>> {
        event::from_stored_array(&self.events)
    }
}

/// The text of a queue row holding `events` (a JSON array of [`event::to_stored`] objects)
/// and its spans ([`event::Spans`], JSON).
fn stored_row(events: &[Event]) -> serde_json::Result<(String, String)> {
    let mut text = String::from("[");
    let mut spans = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let (stored, range) = event::to_stored_spanned(e)?;
        let at = text.len();
        text.push_str(&stored);
        spans.push(event::span_of(e, at + range.start..at + range.end));
    }
    text.push(']');
    Ok((text, serde_json::to_string(&spans)?))
}

/// A row's events' text and spans, packed: LZ4 (block format, the unpacked size first) of the
/// events' text, a newline and the spans' JSON. The spans come last because they hold no
/// newline (serde_json writes none outside strings, and escapes those in strings), while an
/// event's `raw` text may: the last newline ends the text, and unpacking copies out only the
/// spans, not the much longer text.
pub fn pack(text: &str, spans: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(text.len() + 1 + spans.len());
    raw.extend_from_slice(text.as_bytes());
    raw.push(b'\n');
    raw.extend_from_slice(spans.as_bytes());
    lz4_flex::compress_prepend_size(&raw)
}

/// The events' text and spans of a [`pack`]ed row, or why they cannot be had.
pub fn unpack(packed: &[u8]) -> Result<(String, String), String> {
    // The size it claims is checked before anything is allocated for it: LZ4 expands at most
    // 255 times (a damaged row must not ask for gigabytes).
    let claimed = packed
        .first_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b))
        .ok_or("the packed row is shorter than its header")?;
    if u64::from(claimed) > (packed.len() as u64).saturating_mul(255) {
        return Err(format!(
            "the packed row claims {claimed} bytes, more than {} packed bytes can hold",
            packed.len()
        ));
    }
    let raw = lz4_flex::decompress_size_prepended(packed)
        .map_err(|e| format!("the packed row does not unpack: {e}"))?;
    let mut text =
        String::from_utf8(raw).map_err(|e| format!("the unpacked row is not text: {e}"))?;
    let at = text
        .rfind('\n')
        .ok_or("the unpacked row has no start to its spans")?;
    let spans = text.split_off(at + 1);
    text.truncate(at);
    Ok((text, spans))
}

/// The events of stored rows, as a JSON array.
pub fn events_array<'a>(stored: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from("[");
    for (i, e) in stored.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(e);
    }
    s.push(']');
    s
}

/// The webhook tables of one `state` database.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Writes go through here: on SQLite one connection, so writers queue in the pool instead
    /// of sleeping in SQLite's busy handler; elsewhere the same pool.
    writes: Db,
}

fn name(s: &str) -> Alias {
    Alias::new(s)
}

/// What a column of any length holds.
#[derive(Clone, Copy)]
enum Long {
    Text,
    Bytes,
}

/// A column of any length (MySQL's `TEXT` and `BLOB` stop at 64 KiB); `null`: it may be NULL.
fn long_column(backend: Backend, n: &str, holds: Long, null: bool) -> ColumnDef {
    let mut c = ColumnDef::new(name(n));
    match (backend, holds) {
        (Backend::MySql, Long::Text) => c.custom(name("LONGTEXT")),
        (Backend::MySql, Long::Bytes) => c.custom(name("LONGBLOB")),
        (_, Long::Text) => c.text(),
        (_, Long::Bytes) => c.blob(),
    };
    if null {
        c.null();
    } else {
        c.not_null();
    }
    c
}

/// Adds the columns later versions added to a queue created by an earlier one: `n` (before
/// it, a row held one event), `form` (before it, no row said the form of its events),
/// `spans` (where its events are) and `packed` (its events and spans, packed). All are NULL on
/// existing rows, which are read as they were written.
async fn add_columns(db: &Db) -> Result<(), DbError> {
    let backend = db.backend();
    let present = db.columns(QUEUE).await?;
    for (mut column, what) in [
        (
            ColumnDef::new(name("n")).big_integer().null().to_owned(),
            "a row now holds a request's worth of events",
        ),
        (
            ColumnDef::new(name("form")).big_integer().null().to_owned(),
            "a row now records the form of its events",
        ),
        (
            long_column(backend, "spans", Long::Text, true),
            "a row now records where its events are",
        ),
        (
            long_column(backend, "packed", Long::Bytes, true),
            "a row's events are now stored packed",
        ),
    ] {
        let col = column.get_column_name();
        if present.contains(&col) {
            continue;
        }
        let add = Table::alter()
            .table(name(QUEUE))
            .add_column(&mut column)
            .to_owned();
        match db.execute_raw(db.schema_sql(&add)).await {
            Ok(_) => tracing::info!(table = QUEUE, "queue table migrated: {what}"),
            // Another replica added it at the same moment.
            Err(_) if db.columns(QUEUE).await?.contains(&col) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the queue and dead-letter tables if they are missing.
pub async fn create_tables(db: &Db) -> Result<(), OpenError> {
    let backend = db.backend();
    let id = || {
        let mut c = ColumnDef::new(name("id"));
        // SQLite: AUTOINCREMENT (ids never reused) needs the INTEGER PRIMARY KEY type.
        if backend == Backend::Sqlite {
            c.integer();
        } else {
            c.big_integer();
        }
        c.not_null().auto_increment().primary_key();
        c
    };
    let text = |n: &str| long_column(backend, n, Long::Text, false);
    let queue = Table::create()
        .table(name(QUEUE))
        .if_not_exists()
        .col(id())
        .col(ColumnDef::new(name("sink")).string_len(191).not_null())
        .col(ColumnDef::new(name("born_at")).big_integer().not_null())
        .col(ColumnDef::new(name("batch")).big_integer().null())
        .col(text("event"))
        .col(ColumnDef::new(name("n")).big_integer().null())
        .col(ColumnDef::new(name("form")).big_integer().null())
        .col(long_column(backend, "spans", Long::Text, true))
        .col(long_column(backend, "packed", Long::Bytes, true))
        .to_owned();
    let dead = Table::create()
        .table(name(DEAD))
        .if_not_exists()
        .col(id())
        .col(ColumnDef::new(name("sink")).string_len(191).not_null())
        .col(ColumnDef::new(name("failed_at")).big_integer().not_null())
        .col(
            ColumnDef::new(name("delivery_id"))
                .string_len(64)
                .not_null(),
        )
        .col(ColumnDef::new(name("attempts")).big_integer().not_null())
        .col(text("reason"))
        .col(text("events"))
        .to_owned();
    // Covers the look for the head of the queue and the count (`id` and `n` by `sink`), so
    // that neither reads the rows themselves: on SQLite `n` is stored after `event` (a column
    // added by a migration comes last), and reading it from the row walks the chain of
    // overflow pages of a request's worth of events. (Earlier versions made an index on
    // `(sink, id)`; it stays where it exists.)
    let index = Index::create()
        .name(format!("{QUEUE}_sink_id_n"))
        .table(name(QUEUE))
        .col(name("sink"))
        .col(name("id"))
        .col(name("n"))
        .to_owned();
    let err = |source: DbError| OpenError::Schema {
        what: "webhook queue tables",
        source,
    };
    db.execute_raw(db.schema_sql(&queue)).await.map_err(err)?;
    add_columns(db).await.map_err(err)?;
    db.execute_raw(db.schema_sql(&dead)).await.map_err(err)?;
    db.create_index(index).await.map_err(err)
}

/// The insert of one dead letter (`events`: a JSON array of [`event::to_stored`] objects).
pub fn dead_letter_insert(
    sink: &str,
    delivery_id: &str,
    attempts: u32,
    reason: &str,
    events: String,
) -> sea_query::InsertStatement {
    Query::insert()
        .into_table(name(DEAD))
        .columns(DEAD_COLUMNS[1..].iter().map(|c| name(c)))
        .values_panic([
            sink.into(),
            chrono::Utc::now().timestamp_millis().into(),
            delivery_id.into(),
            i64::from(attempts).into(),
            reason.into(),
            events.into(),
        ])
        .to_owned()
}

impl Store {
    /// Connects and creates the tables if they are missing.
    pub async fn open(url: &str) -> Result<Store, OpenError> {
        let db = Db::connect(url, 4, std::time::Duration::from_secs(10)).await?;
        create_tables(&db).await?;
        let writes = match db.backend() {
            Backend::Sqlite => Db::connect(url, 1, std::time::Duration::from_secs(10)).await?,
            _ => db.clone(),
        };
        Ok(Store { db, writes })
    }

    pub async fn close(&self) {
        self.db.close().await;
        self.writes.close().await;
    }

    /// The number of events in the selected rows, as a 64-bit integer on every backend (a row
    /// of an earlier version holds one).
    fn events_sum(&self) -> Expr {
        let int = if self.db.backend() == Backend::MySql {
            "SIGNED"
        } else {
            "BIGINT"
        };
        Expr::cust(format!("CAST(COALESCE(SUM(COALESCE(n, 1)), 0) AS {int})"))
    }

    /// How many events of `sink` are queued.
    pub async fn count(&self, sink: &str) -> Result<u64, DbError> {
        let q = Query::select()
            .expr(self.events_sum())
            .from(name(QUEUE))
            .and_where(Expr::col(name("sink")).eq(sink))
            .to_owned();
        let n: Vec<(i64,)> = self.db.fetch_all(self.db.build(&q)).await?;
        Ok(n.first().map_or(0, |(c,)| u64::try_from(*c).unwrap_or(0)))
    }

    /// `sink`'s queue and dead letters: events queued, when the oldest of them entered the
    /// pipeline (unix milliseconds), dead letters and the events in them.
    pub async fn status(&self, sink: &str) -> Result<QueueStatus, DbError> {
        let q = Query::select()
            .expr(self.events_sum())
            .expr(Func::min(Expr::col(name("born_at"))))
            .from(name(QUEUE))
            .and_where(Expr::col(name("sink")).eq(sink))
            .to_owned();
        let queued: Vec<(i64, Option<i64>)> = self.db.fetch_all(self.db.build(&q)).await?;
        let dead = self.dead_letters(Some(sink), &[]).await?;
        let (queued, oldest) = queued.first().copied().unwrap_or((0, None));
        Ok(QueueStatus {
            queued: u64::try_from(queued).unwrap_or(0),
            oldest_born_at: oldest,
            dead_letters: dead.len() as u64,
            dead_events: dead.iter().map(|d| d.event_count() as u64).sum(),
        })
    }

    /// Appends events to `sink`'s queue, in order, in one transaction: one row per `per_row`
    /// events (a request's worth).
    pub async fn push(&self, sink: &str, events: &[Event], per_row: usize) -> Result<(), DbError> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut stmts = Vec::new();
        let rows: Vec<&[Event]> = events.chunks(per_row.max(1)).collect();
        for chunk in rows.chunks(100) {
            let mut q = Query::insert()
                .into_table(name(QUEUE))
                .columns(["sink", "born_at", "event", "n", "form", "packed"].map(name))
                .to_owned();
            for row in chunk {
                let oldest = row
                    .iter()
                    .map(|e| i64::try_from(e.born().elapsed().as_millis()).unwrap_or(i64::MAX))
                    .max()
                    .unwrap_or(0);
                let (text, spans) = stored_row(row)
                    .map_err(|e| DbError::Permanent(sqlx::Error::Encode(Box::new(e))))?;
                q.values_panic([
                    sink.into(),
                    (now - oldest).into(),
                    "".into(),
                    i64::try_from(row.len()).unwrap_or(i64::MAX).into(),
                    event::STORED_FORM.into(),
                    pack(&text, &spans).into(),
                ]);
            }
            stmts.push(self.db.build(&q));
        }
        self.writes.execute_in_tx(stmts).await.map(|_| ())
    }

    /// The queued rows of `sink` with ids above `after`, oldest first, holding up to `limit`
    /// events together (at least one row). Two reads: the rows' sizes (small), then the rows.
    pub async fn head(
        &self,
        sink: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Pending>, DbError> {
        // The rows up to the last row id such that they hold at most `limit` events (at least
        // one row), that id found by the database in the same statement (one round trip; the
        // sizes come from the index, not the rows).
        let sizes = Query::select()
            .column(name("id"))
            .expr_as(Expr::cust("COALESCE(n, 1)"), name("k"))
            .from(name(QUEUE))
            .and_where(Expr::col(name("sink")).eq(sink))
            .and_where(Expr::col(name("id")).gt(after))
            .order_by(name("id"), Order::Asc)
            .limit(limit.max(1) as u64)
            .to_owned();
        let upto = Query::select()
            .column(name("id"))
            .column(name("k"))
            .expr_as(Expr::cust("SUM(k) OVER (ORDER BY id)"), name("upto"))
            .from_subquery(sizes, name("a"))
            .to_owned();
        let last = Query::select()
            .expr(Expr::cust("MAX(id)"))
            .from_subquery(upto, name("b"))
            .and_where(Expr::cust(format!("upto <= {} OR upto = k", limit.max(1))))
            .to_owned();
        let q = Query::select()
            .columns(
                [
                    "id", "born_at", "batch", "n", "form", "spans", "event", "packed",
                ]
                .map(name),
            )
            .from(name(QUEUE))
            .and_where(Expr::col(name("sink")).eq(sink))
            .and_where(Expr::col(name("id")).gt(after))
            .and_where(Expr::col(name("id")).lte(Expr::SubQuery(
                None,
                Box::new(sea_query::SubQueryStatement::SelectStatement(last)),
            )))
            .order_by(name("id"), Order::Asc)
            .to_owned();
        // A row per request's worth of events: a handful of rows, each read as it is.
        let rows: Vec<QueueRow> = self.db.fetch_all(self.db.build(&q)).await?;
        Ok(rows.into_iter().map(Pending::from_row).collect())
    }

    fn delete_rows(&self, sink: &str, ids: &[i64]) -> (String, sea_query_sqlx::SqlxValues) {
        let q = Query::delete()
            .from_table(name(QUEUE))
            .and_where(Expr::col(name("sink")).eq(sink))
            .and_where(Expr::col(name("id")).is_in(ids.iter().copied()))
            .to_owned();
        self.db.build(&q)
    }

    /// Removes delivered rows of `sink` and pins each `(first, last)` of `pins` (the rows
    /// `first..=last`) as one batch, in one transaction: one `DELETE` per 1,000 rows removed and
    /// one `UPDATE` (one row updated per batch), whatever the number of deliveries and
    /// batches. One commit a turn of the delivery loop: on a server that flushes its log at
    /// each commit (PostgreSQL, MariaDB) the commits are what a drain waits for.
    pub async fn settle(
        &self,
        sink: &str,
        delivered: &[i64],
        pins: &[(i64, i64)],
    ) -> Result<(), DbError> {
        let mut stmts: Vec<_> = delivered
            .chunks(1000)
            .map(|ids| self.delete_rows(sink, ids))
            .collect();
        if let Some((&(first, last), rest)) = pins.split_first() {
            let id = || Expr::col(name("id"));
            let mut case = Expr::case(id().eq(first), last);
            for &(f, l) in rest {
                case = case.case(id().eq(f), l);
            }
            let q = Query::update()
                .table(name(QUEUE))
                .value(name("batch"), case.finally(Expr::col(name("batch"))))
                .and_where(Expr::col(name("sink")).eq(sink))
                .and_where(id().is_in(pins.iter().map(|p| p.0)))
                .to_owned();
            stmts.push(self.db.build(&q));
        }
        if stmts.is_empty() {
            return Ok(());
        }
        self.writes.execute_in_tx(stmts).await.map(|_| ())
    }

    /// Moves rows to the dead letters, in one transaction.
    pub async fn bury(
        &self,
        sink: &str,
        rows: &[impl std::borrow::Borrow<Pending>],
        delivery_id: &str,
        attempts: u32,
        reason: &str,
    ) -> Result<(), DbError> {
        let rows: Vec<&Pending> = rows.iter().map(std::borrow::Borrow::borrow).collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut stored = Vec::new();
        let damaged: Vec<String> = rows
            .iter()
            .filter(|r| r.stored().is_err())
            .map(|r| serde_json::Value::String(r.event.clone()).to_string())
            .collect();
        for r in &rows {
            // A row that does not read is kept as it is (a JSON string) for a person to see.
            stored.extend(r.stored().unwrap_or_default());
        }
        stored.extend(damaged.iter().map(String::as_str));
        let insert = dead_letter_insert(sink, delivery_id, attempts, reason, events_array(stored));
        self.writes
            .execute_in_tx(vec![self.db.build(&insert), self.delete_rows(sink, &ids)])
            .await
            .map(|_| ())
    }

    /// Dead letters, oldest first: of one sink, or all; with or without their events.
    pub async fn dead_letters(
        &self,
        sink: Option<&str>,
        ids: &[i64],
    ) -> Result<Vec<DeadLetter>, DbError> {
        let mut q = Query::select()
            .columns(DEAD_COLUMNS.map(name))
            .from(name(DEAD))
            .order_by(name("id"), Order::Asc)
            .to_owned();
        if let Some(s) = sink {
            q.and_where(Expr::col(name("sink")).eq(s));
        }
        if !ids.is_empty() {
            q.and_where(Expr::col(name("id")).is_in(ids.iter().copied()));
        }
        let rows: Vec<DeadLetterRow> = self.db.fetch_all(self.db.build(&q)).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, sink, failed_at, delivery_id, attempts, reason, events)| DeadLetter {
                    id,
                    sink,
                    failed_at,
                    delivery_id,
                    attempts,
                    reason,
                    events,
                },
            )
            .collect())
    }

    /// Updates a dead letter after another failed attempt.
    pub async fn retried(&self, id: i64, attempts: i64, reason: &str) -> Result<(), DbError> {
        let q = Query::update()
            .table(name(DEAD))
            .value(name("attempts"), attempts)
            .value(name("reason"), reason)
            .value(name("failed_at"), chrono::Utc::now().timestamp_millis())
            .and_where(Expr::col(name("id")).eq(id))
            .to_owned();
        self.writes
            .execute_in_tx(vec![self.db.build(&q)])
            .await
            .map(|_| ())
    }

    /// Deletes dead letters; returns how many there were.
    pub async fn forget_dead(&self, ids: &[i64]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let q = Query::delete()
            .from_table(name(DEAD))
            .and_where(Expr::col(name("id")).is_in(ids.iter().copied()))
            .to_owned();
        self.writes.execute_in_tx(vec![self.db.build(&q)]).await
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    fn row(id: i64, batch: Option<i64>) -> Pending {
        Pending {
            id,
            born_at: 0,
            batch,
            n: None,
            form: None,
            spans: None,
            event: String::new(),
            damaged: None,
        }
    }

    #[test]
    fn a_packed_row_unpacks_to_its_text_and_spans() {
        let text = format!(
            "[{}]",
            vec![r#"{"uid":"a\nb","message":"x"}"#; 100].join(",")
        );
        let spans = r#"[[1,30,"a\nb","1",null]]"#;
        let packed = super::pack(&text, spans);
        assert!(packed.len() * 10 < text.len(), "{} bytes", packed.len());
        assert_eq!(
            super::unpack(&packed),
            Ok((text.clone(), spans.to_string()))
        );
        assert_eq!(
            super::unpack(&super::pack("[]", "")),
            Ok(("[]".into(), String::new()))
        );
        // An event's `raw` text may hold newlines of its own (a pretty-printed object).
        let raw = "[{\"event\":{},\"raw\":{\n  \"kind\": \"Event\"\n}}]";
        assert_eq!(
            super::unpack(&super::pack(raw, spans)),
            Ok((raw.to_string(), spans.to_string()))
        );
    }

    /// A damaged packed row says why it cannot be read, without allocating what it claims.
    #[test]
    fn a_damaged_packed_row_says_why() {
        let packed = super::pack("[1,2,3]", "[]");
        let why = |p: &[u8]| super::unpack(p).unwrap_err();
        assert!(why(&packed[..2]).contains("shorter than its header"));
        let mut huge = packed.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            why(&huge).contains("claims 4294967295 bytes"),
            "{}",
            why(&huge)
        );
        assert!(why(&packed[..packed.len() - 2]).contains("does not unpack"));
        let no_spans = lz4_flex::compress_prepend_size(b"[1,2,3]");
        assert!(why(&no_spans).contains("no start to its spans"));
        let not_text = lz4_flex::compress_prepend_size(&[0xff, b'\n', 0xfe]);
        assert!(why(&not_text).contains("not text"));
        let mut row = row(1, None);
        row.damaged = Some(why(&huge));
        row.n = Some(3);
        assert!(row.events().unwrap_err().to_string().contains("claims"));
        assert!(row.refs().is_err() && row.stored().is_err());
    }

    /// Groups rows the way the delivery loop does (no size cap).
    fn batches(rows: Vec<Pending>) -> Vec<Vec<i64>> {
        let mut out: Vec<Vec<Pending>> = Vec::new();
        for r in rows {
            match out.last_mut() {
                Some(b) if b[0].continues(&r) => b.push(r),
                _ => out.push(vec![r]),
            }
        }
        out.into_iter()
            .map(|b| b.iter().map(|r| r.id).collect())
            .collect()
    }

    #[test]
    fn a_batch_pinned_on_its_first_row_runs_to_its_last_row_id() {
        // Rows 3..=5 pinned as a batch (row 3 holds 5), then unpinned rows.
        let rows = vec![
            row(3, Some(5)),
            row(4, None),
            row(5, None),
            row(7, None),
            row(8, None),
        ];
        assert_eq!(batches(rows), vec![vec![3, 4, 5], vec![7, 8]]);
        // A one-row pinned batch, then another pinned batch.
        let rows = vec![row(3, Some(3)), row(4, Some(6)), row(6, None), row(9, None)];
        assert_eq!(batches(rows), vec![vec![3], vec![4, 6], vec![9]]);
    }

    #[test]
    fn batches_pinned_by_earlier_versions_are_read_as_they_were() {
        // Every row of an attempted batch carried its first row's id.
        let rows = vec![
            row(3, Some(3)),
            row(4, Some(3)),
            row(5, Some(3)),
            row(6, Some(6)),
            row(7, Some(6)),
            row(8, None),
        ];
        assert_eq!(batches(rows), vec![vec![3, 4, 5], vec![6, 7], vec![8]]);
    }
}
