//! Poisoned events: an Event version that a sink refuses for good (a row a trigger rejects, a
//! 4xx from a webhook) is not checkpointed, so it is replayed at the next start. Without a
//! bound it would be replayed at every start, forever. The number of runs in which a version
//! was refused is kept in `eventflow_kube_attempts`; when it reaches the source's
//! `dead_letter_after`, the refusals become dead letters (one per refusing sink, the event as
//! that sink saw it) and the version is checkpointed, in one transaction.

use std::collections::HashSet;

use sea_query::{Alias, ColumnDef, Expr, ExprTrait, Index, OnConflict, Query, Table};

use super::Row;
use crate::event::ack::Refusal;
use crate::stages::webhook::queue;
use crate::state::db::{Db, DbError, OpenError};

pub const TABLE: &str = "eventflow_kube_attempts";

fn name(s: &str) -> Alias {
    Alias::new(s)
}

/// A checkpoint row whose event some sink refused, with the refusals.
pub struct Refused {
    pub row: Row,
    pub refusals: Vec<Refusal>,
}

/// What became of a refused version.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Refused in this many runs, fewer than the limit: replayed at the next start.
    Replayed(u32),
    /// Given up on after this many runs: its refusals are dead letters, it is checkpointed.
    DeadLettered(u32),
}

/// The attempts table of one source.
#[derive(Clone)]
pub struct Attempts {
    db: Db,
    source: String,
}

impl Attempts {
    /// Creates the attempts table (and the dead-letter table) if missing.
    pub async fn open(db: Db, source: &str) -> Result<Attempts, OpenError> {
        let t = Table::create()
            .table(name(TABLE))
            .if_not_exists()
            .col(ColumnDef::new(name("source")).string_len(191).not_null())
            .col(ColumnDef::new(name("uid")).string_len(191).not_null())
            .col(
                ColumnDef::new(name("resource_version"))
                    .string_len(64)
                    .not_null(),
            )
            .col(ColumnDef::new(name("attempts")).big_integer().not_null())
            .primary_key(Index::create().col(name("source")).col(name("uid")))
            .to_owned();
        db.execute_raw(db.schema_sql(&t))
            .await
            .map_err(|source| OpenError::Schema {
                what: "attempts table",
                source,
            })?;
        queue::create_tables(&db).await?;
        Ok(Attempts {
            db,
            source: source.to_string(),
        })
    }

    /// The uids of this source that have refused versions on record.
    pub async fn uids(&self) -> Result<HashSet<String>, DbError> {
        let q = Query::select()
            .column(name("uid"))
            .from(name(TABLE))
            .and_where(Expr::col(name("source")).eq(self.source.as_str()))
            .to_owned();
        let rows: Vec<(String,)> = self.db.fetch_all(self.db.build(&q)).await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    /// Forgets the record of uids whose newer versions were delivered.
    pub async fn clear(&self, uids: &[String]) -> Result<(), DbError> {
        let stmts = uids
            .chunks(500)
            .map(|chunk| {
                let q = Query::delete()
                    .from_table(name(TABLE))
                    .and_where(Expr::col(name("source")).eq(self.source.as_str()))
                    .and_where(Expr::col(name("uid")).is_in(chunk.iter().cloned()))
                    .to_owned();
                self.db.build(&q)
            })
            .collect();
        self.db.execute_in_tx(stmts).await.map(|_| ())
    }

    /// Records one more run in which `r` was refused; at `limit` (0: never) its refusals
    /// become dead letters and its row is checkpointed (`save` makes the checkpoint upsert).
    pub async fn refused(
        &self,
        r: &Refused,
        limit: u32,
        save: impl FnOnce(&Row) -> Vec<(String, sea_query_sqlx::SqlxValues)>,
    ) -> Result<Verdict, DbError> {
        let (uid, rv) = (r.row.uid(), r.row.resource_version());
        let q = Query::select()
            .columns([name("resource_version"), name("attempts")])
            .from(name(TABLE))
            .and_where(Expr::col(name("source")).eq(self.source.as_str()))
            .and_where(Expr::col(name("uid")).eq(uid))
            .to_owned();
        let known: Vec<(String, i64)> = self.db.fetch_all(self.db.build(&q)).await?;
        let before = known
            .into_iter()
            .find(|(v, _)| v == rv)
            .map_or(0, |(_, n)| u32::try_from(n).unwrap_or(u32::MAX));
        let attempts = before.saturating_add(1);
        if limit == 0 || attempts < limit {
            let up = Query::insert()
                .into_table(name(TABLE))
                .columns(["source", "uid", "resource_version", "attempts"].map(name))
                .values_panic([
                    self.source.as_str().into(),
                    uid.into(),
                    rv.into(),
                    i64::from(attempts).into(),
                ])
                .on_conflict(
                    OnConflict::columns([name("source"), name("uid")])
                        .update_columns([name("resource_version"), name("attempts")])
                        .to_owned(),
                )
                .to_owned();
            self.db.execute_in_tx(vec![self.db.build(&up)]).await?;
            return Ok(Verdict::Replayed(attempts));
        }
        let mut stmts = Vec::new();
        let delivery_id: String = format!("{uid}@{rv}").chars().take(64).collect();
        let mut kept: Vec<(&str, String)> = Vec::new();
        for f in &r.refusals {
            let stored = crate::event::to_stored(&f.event)
                .map_err(|e| DbError::Permanent(sqlx::Error::Encode(Box::new(e))))?;
            // A summary refused once stands for every event it merged: one letter for it.
            if kept.iter().any(|(s, e)| *s == &*f.stage && *e == stored) {
                continue;
            }
            let reason = format!(
                "refused by `{}` in {attempts} runs (source `{}`): {}",
                f.stage, self.source, f.reason
            );
            let insert = queue::dead_letter_insert(
                &f.stage,
                &delivery_id,
                attempts,
                &reason,
                queue::events_array([stored.as_str()]),
            );
            stmts.push(self.db.build(&insert));
            kept.push((&f.stage, stored));
        }
        stmts.extend(save(&r.row));
        let forget = Query::delete()
            .from_table(name(TABLE))
            .and_where(Expr::col(name("source")).eq(self.source.as_str()))
            .and_where(Expr::col(name("uid")).eq(uid))
            .to_owned();
        stmts.push(self.db.build(&forget));
        self.db.execute_in_tx(stmts).await?;
        Ok(Verdict::DeadLettered(attempts))
    }
}
