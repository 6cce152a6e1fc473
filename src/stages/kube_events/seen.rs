//! What the source has already handled: an in-memory map uid -> resourceVersion, and its
//! durable copy (the checkpoint) in the `state` database.
//!
//! The map holds one small entry per Event the API server currently holds: entries are removed
//! when the Event is deleted (TTL expiry), when a relist no longer shows it, and, past
//! `max_tracked` entries, the tenth with the oldest last-seen times is evicted (counted).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use sea_query::{Alias, ColumnDef, Expr, ExprTrait, Index, OnConflict, Query, Table};

use crate::state::db::{Db, DbError, OpenError};

pub const TABLE: &str = "eventflow_kube_checkpoint";

/// The buckets of the map's table when it holds `max` versions: it keeps at most 7/8 of them
/// full, and their number is a power of two.
pub fn buckets(max: usize) -> u64 {
    (max.saturating_mul(8) / 7).max(1).next_power_of_two() as u64
}

/// The memory of the map at `max` versions, at its largest: the table's buckets (a 32-byte
/// slot and a control byte each), the previous table (half the buckets) alive while it grows,
/// and what an eviction holds for a moment: the copy of the last-seen times it sorts (4 bytes
/// a version) and the uids it forgets with their checkpoint deletes (a tenth of the versions,
/// ~160 bytes each: 16 bytes a version).
pub fn map_bytes(max: usize) -> u64 {
    let b = buckets(max);
    b * 33 + b / 2 * 33 + 20 * max as u64
}

/// A list generation: which relist last showed an entry (compared for equality; wraps, and
/// skips 0, which is what the watch admits with).
pub type Generation = u16;

/// The generation after `g`.
pub fn next_generation(g: Generation) -> Generation {
    Ord::max(g.wrapping_add(1), 1)
}

/// A text length as stored in a [`Row`] (texts from the API server are far shorter than 4 GiB;
/// a longer one would read back cut, never out of bounds).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One handled Event version, as stored. The three texts share one allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    text: Box<str>,
    uid_end: u32,
    ns_end: u32,
    /// Unix seconds of the event's last-seen time.
    pub last_seen: i64,
}

impl Row {
    pub fn new(uid: &str, namespace: &str, resource_version: &str, last_seen: i64) -> Row {
        let mut text = String::with_capacity(uid.len() + namespace.len() + resource_version.len());
        text.push_str(uid);
        text.push_str(namespace);
        text.push_str(resource_version);
        Row {
            text: text.into_boxed_str(),
            uid_end: len32(uid.len()),
            ns_end: len32(uid.len() + namespace.len()),
            last_seen,
        }
    }
    fn part(&self, from: u32, to: Option<u32>) -> &str {
        let from = from as usize;
        match to {
            Some(to) => self.text.get(from..to as usize),
            None => self.text.get(from..),
        }
        .unwrap_or_default()
    }
    pub fn uid(&self) -> &str {
        self.part(0, Some(self.uid_end))
    }
    pub fn namespace(&self) -> &str {
        self.part(self.uid_end, Some(self.ns_end))
    }
    pub fn resource_version(&self) -> &str {
        self.part(self.ns_end, None)
    }
}

/// 16 bytes: with the 16-byte key, 32 bytes a slot.
#[derive(Debug, Clone, Copy)]
struct Entry {
    rv: u64,
    last: u32,
    generation: Generation,
    /// The namespace slot; the high bit says the key is the UUID itself (it can be turned
    /// back into the uid text).
    slot: u16,
}

const EXACT: u16 = 0x8000;

impl Entry {
    fn ns(&self) -> u16 {
        self.slot & !EXACT
    }
    fn exact(&self) -> bool {
        self.slot & EXACT != 0
    }
}

/// What [`Seen::admit`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// This exact version was handled before: do not emit it again.
    AlreadySeen,
    /// A new Event or a new version of one, now recorded; `evicted` are the uids forgotten to
    /// stay within `max_tracked` (usually none).
    New { evicted: Vec<String> },
}

/// The in-memory map.
pub struct Seen {
    map: HashMap<u128, Entry>,
    max: usize,
    hasher: std::hash::RandomState,
}

fn hash(h: &std::hash::RandomState, s: &str, salt: u8) -> u64 {
    let mut x = h.build_hasher();
    x.write_u8(salt);
    x.write(s.as_bytes());
    x.finish()
}

fn parse_uuid(uid: &str) -> Option<u128> {
    // Lowercase 8-4-4-4-12 hex only, so that `format_uuid` gives the same text back.
    let b = uid.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Seen {
    pub fn new(max: usize) -> Seen {
        Seen {
            map: HashMap::new(),
            max: max.max(1),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn key(&self, uid: &str) -> (u128, bool) {
        match parse_uuid(uid) {
            Some(k) => (k, true),
            None => (
                (u128::from(hash(&self.hasher, uid, 1)) << 64)
                    | u128::from(hash(&self.hasher, uid, 2)),
                false,
            ),
        }
    }

    fn rv_key(&self, rv: &str) -> u64 {
        rv.parse::<u64>()
            .unwrap_or_else(|_| hash(&self.hasher, rv, 3) | (1 << 63))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// One lookup: if this exact version was handled, marks it present in `generation`
    /// ([`Admission::AlreadySeen`]); otherwise records it ([`Admission::New`], with the uids
    /// evicted to stay within the bound).
    pub fn admit(
        &mut self,
        uid: &str,
        rv: &str,
        last_seen: i64,
        ns: u16,
        generation: Generation,
    ) -> Admission {
        let (k, exact) = self.key(uid);
        let rv = self.rv_key(rv);
        let e = Entry {
            rv,
            last: u32::try_from(last_seen.clamp(0, i64::from(u32::MAX))).unwrap_or(u32::MAX),
            generation,
            slot: (ns & !EXACT) | if exact { EXACT } else { 0 },
        };
        match self.map.entry(k) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if o.get().rv == rv {
                    o.get_mut().generation = generation;
                    return Admission::AlreadySeen;
                }
                o.insert(e);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(e);
            }
        }
        if self.map.len() > self.max {
            return Admission::New {
                evicted: self.evict_oldest(),
            };
        }
        Admission::New {
            evicted: Vec::new(),
        }
    }

    pub fn remove(&mut self, uid: &str) {
        let (k, _) = self.key(uid);
        self.map.remove(&k);
    }

    fn evict_oldest(&mut self) -> Vec<String> {
        let mut lasts: Vec<u32> = self.map.values().map(|e| e.last).collect();
        let n = (lasts.len() / 10).max(1);
        let (_, cut, _) = lasts.select_nth_unstable(n - 1);
        let cut = *cut;
        let mut gone = Vec::new();
        self.map.retain(|k, e| {
            let keep = e.last > cut;
            if !keep && e.exact() {
                gone.push(format_uuid(*k));
            }
            keep
        });
        gone
    }

    /// After a complete list of namespace slot `ns`: forgets what the list did not show.
    pub fn sweep(&mut self, ns: u16, generation: Generation) -> Vec<String> {
        let mut gone = Vec::new();
        self.map.retain(|k, e| {
            let keep = e.ns() != ns || e.generation == generation;
            if !keep && e.exact() {
                gone.push(format_uuid(*k));
            }
            keep
        });
        gone
    }
}

/// The checkpoint table of one source.
#[derive(Clone)]
pub struct Checkpoint {
    db: Db,
    source: String,
}

impl Checkpoint {
    pub async fn open(url: &str, source: &str) -> Result<Checkpoint, OpenError> {
        let db = Db::connect(url, 2, std::time::Duration::from_secs(10)).await?;
        let t = Table::create()
            .table(Alias::new(TABLE))
            .if_not_exists()
            .col(
                ColumnDef::new(Alias::new("source"))
                    .string_len(191)
                    .not_null(),
            )
            .col(ColumnDef::new(Alias::new("uid")).string_len(191).not_null())
            .col(
                ColumnDef::new(Alias::new("namespace"))
                    .string_len(253)
                    .not_null(),
            )
            .col(
                ColumnDef::new(Alias::new("resource_version"))
                    .string_len(64)
                    .not_null(),
            )
            .col(
                ColumnDef::new(Alias::new("last_seen"))
                    .big_integer()
                    .not_null(),
            )
            .primary_key(
                Index::create()
                    .col(Alias::new("source"))
                    .col(Alias::new("uid")),
            )
            .to_owned();
        let mut ddl = db.schema_sql(&t);
        if db.backend() == crate::state::db::Backend::Sqlite {
            // Rows live in the primary-key b-tree: one b-tree to update per upsert, not two.
            ddl.push_str(" WITHOUT ROWID");
        }
        db.execute_raw(ddl)
            .await
            .map_err(|source| OpenError::Schema {
                what: "checkpoint table",
                source,
            })?;
        Ok(Checkpoint {
            db,
            source: source.to_string(),
        })
    }

    /// Every row of this source.
    pub async fn load(&self) -> Result<Vec<Row>, DbError> {
        let sql = match self.db.backend() {
            crate::state::db::Backend::Postgres => format!(
                "SELECT uid, namespace, resource_version, last_seen FROM {TABLE} WHERE source = $1"
            ),
            _ => format!(
                "SELECT uid, namespace, resource_version, last_seen FROM {TABLE} WHERE source = ?"
            ),
        };
        let rows: Vec<(String, String, String, i64)> =
            self.db.fetch_by_key(&sql, &self.source).await?;
        Ok(rows
            .into_iter()
            .map(|(uid, namespace, resource_version, last_seen)| {
                Row::new(&uid, &namespace, &resource_version, last_seen)
            })
            .collect())
    }

    /// The state database this checkpoint is in.
    pub fn db(&self) -> Db {
        self.db.clone()
    }

    /// Upserts rows (the latest version of each uid wins), in one transaction. The
    /// statements are built on a blocking thread (a batch of rows is thousands of values);
    /// the rows are always handed back, for a retry.
    pub async fn save(&self, rows: Vec<Row>) -> (Vec<Row>, Result<(), DbError>) {
        if rows.is_empty() {
            return (rows, Ok(()));
        }
        let me = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let stmts = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                me.save_statements(&rows)
            }))
            .ok();
            (rows, stmts)
        })
        .await;
        // Not run at all only when the runtime is shutting down: the rows go with the process,
        // and their events are emitted again after a restart.
        let (rows, stmts) = built.unwrap_or_else(|_| (Vec::new(), None));
        let written = match stmts {
            Some(stmts) => self.db.execute_in_tx(stmts).await.map(|_| ()),
            // A bug: the rows stay for the next write.
            None => Err(DbError::Permanent(sqlx::Error::Protocol(
                "building the checkpoint statements failed".into(),
            ))),
        };
        (rows, written)
    }

    /// The upserts of [`Checkpoint::save`].
    pub fn save_statements(&self, rows: &[Row]) -> Vec<(String, sea_query_sqlx::SqlxValues)> {
        // The last version of a uid in `rows` is the newest (acks are processed in order).
        let mut latest: HashMap<&str, &Row> = HashMap::with_capacity(rows.len());
        for r in rows {
            latest.insert(r.uid(), r);
        }
        let mut stmts = Vec::new();
        let list: Vec<&Row> = latest.into_values().collect();
        for chunk in list.chunks(500) {
            let mut q = Query::insert()
                .into_table(Alias::new(TABLE))
                .columns(
                    [
                        "source",
                        "uid",
                        "namespace",
                        "resource_version",
                        "last_seen",
                    ]
                    .map(Alias::new),
                )
                .on_conflict(
                    OnConflict::columns([Alias::new("source"), Alias::new("uid")])
                        .update_columns(
                            ["namespace", "resource_version", "last_seen"].map(Alias::new),
                        )
                        .to_owned(),
                )
                .to_owned();
            for r in chunk {
                q.values_panic([
                    self.source.clone().into(),
                    r.uid().to_string().into(),
                    r.namespace().to_string().into(),
                    r.resource_version().to_string().into(),
                    r.last_seen.into(),
                ]);
            }
            stmts.push(self.db.build(&q));
        }
        stmts
    }

    /// Removes rows by uid.
    pub async fn forget(&self, uids: &[String]) -> Result<(), DbError> {
        if uids.is_empty() {
            return Ok(());
        }
        let stmts = uids
            .chunks(500)
            .map(|chunk| {
                let q = Query::delete()
                    .from_table(Alias::new(TABLE))
                    .and_where(Expr::col(Alias::new("source")).eq(self.source.clone()))
                    .and_where(Expr::col(Alias::new("uid")).is_in(chunk.iter().cloned()))
                    .to_owned();
                self.db.build(&q)
            })
            .collect();
        self.db.execute_in_tx(stmts).await.map(|_| ())
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_and_versions_compare_for_equality() {
        let u = "0b6f3c52-8f0e-4d8a-9d5c-2f1e7a6b9c01";
        assert_eq!(parse_uuid(u).map(format_uuid).as_deref(), Some(u));
        assert_eq!(parse_uuid("not-a-uuid"), None);
        let mut s = Seen::new(10);
        assert_ne!(s.admit(u, "5", 100, 0, 1), Admission::AlreadySeen, "new");
        assert_eq!(
            s.admit(u, "5", 100, 0, 1),
            Admission::AlreadySeen,
            "handled"
        );
        assert_ne!(
            s.admit(u, "6", 100, 0, 1),
            Admission::AlreadySeen,
            "a new version"
        );
        assert_ne!(
            s.admit("plain-uid", "abc", 100, 0, 1),
            Admission::AlreadySeen
        );
        assert_eq!(
            s.admit("plain-uid", "abc", 100, 0, 1),
            Admission::AlreadySeen
        );
        assert_ne!(
            s.admit("plain-uid", "abd", 100, 0, 1),
            Admission::AlreadySeen
        );
    }

    #[test]
    fn sweep_forgets_what_a_relist_did_not_show_and_the_bound_holds() {
        let mut s = Seen::new(100);
        for i in 0..10 {
            s.admit(&format!("00000000-0000-4000-8000-{i:012x}"), "1", i, 0, 1);
        }
        assert_eq!(
            s.admit("00000000-0000-4000-8000-000000000003", "1", 0, 0, 2),
            Admission::AlreadySeen
        );
        let gone = s.sweep(0, 2);
        assert_eq!(gone.len(), 9);
        assert_eq!(s.len(), 1);
        let mut s = Seen::new(50);
        let mut evicted = 0;
        for i in 0..1000 {
            if let Admission::New { evicted: gone } =
                s.admit(&format!("00000000-0000-4000-8000-{i:012x}"), "1", i, 0, 1)
            {
                evicted += gone.len();
            }
        }
        assert!(s.len() <= 50);
        assert_eq!(evicted + s.len(), 1000);
    }
}
