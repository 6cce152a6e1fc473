//! The memory a pipeline may use, as the sum of its configured bounds (`eventflow validate
//! --memory`). Every cache, queue and pool of eventflow has a size in its config; this adds them
//! up with a cost per unit that was measured (BENCHMARKS.md, "Memory budget"), so that a pod's
//! memory limit can be chosen from the pipeline instead of from luck.

use std::fmt::Write as _;

use crate::component::{CHANNEL_CAPACITY, MAX_BATCH};
use crate::config::Pipeline;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The process without any stage: the binary's code, the async runtime, the allocator's own
/// structures, the API server (measured idle: 23.5 MB).
pub const BASE: u64 = 32 * MIB;
/// An event held in memory, with its `raw` object (a normalized event is ~1 KiB, the raw object
/// of a typical Event ~1 KiB more).
pub const EVENT: u64 = 2 * KIB;
/// An event with what a sink renders of it (a request body, a row's values).
pub const RENDERED_EVENT: u64 = 2 * EVENT;
/// What the allocator holds beyond the live data it was asked for (freed pages not yet given
/// back, fragmentation), as a share of the rest: measured with the Deployment's allocator
/// settings in the worst case of the default pipeline (BENCHMARKS.md, "Memory budget").
pub const ALLOCATOR_PERCENT: u64 = 20;

/// One bound of a stage: what it holds, the settings that bound it, its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub what: String,
    pub setting: String,
    pub bytes: u64,
}

impl Bound {
    pub fn new(what: impl Into<String>, setting: impl Into<String>, bytes: u64) -> Bound {
        Bound {
            what: what.into(),
            setting: setting.into(),
            bytes,
        }
    }

    /// `n` units (keys, objects, events in flight) of `per` bytes each, `n` being the value
    /// of `setting`.
    pub fn each(what: &str, setting: &str, n: u64, per: u64) -> Bound {
        Bound::new(
            what,
            format!("{setting} {n} x {}", size(per)),
            n.saturating_mul(per),
        )
    }
}

/// The bounds of a whole pipeline: `(stage, bound)` rows, the process's and the edges' first.
#[derive(Debug, Clone)]
pub struct Budget {
    pub rows: Vec<(String, Bound)>,
}

impl Budget {
    pub fn of(p: &Pipeline) -> Budget {
        let mut rows = vec![(
            "(process)".to_string(),
            Bound::new("code, async runtime, allocator, API", "-", BASE),
        )];
        let edges: u64 = p.stages.values().map(|s| s.inputs.len() as u64).sum();
        rows.push((
            "(edges)".to_string(),
            Bound::new(
                format!("{edges} edges between stages"),
                format!(
                    "{edges} x {CHANNEL_CAPACITY} batches x {MAX_BATCH} events x {} KiB",
                    EVENT / KIB
                ),
                edges * CHANNEL_CAPACITY as u64 * MAX_BATCH as u64 * EVENT,
            ),
        ));
        for s in p.stages.values() {
            for b in s.config.memory() {
                rows.push((s.id.clone(), b));
            }
        }
        let live: u64 = rows.iter().map(|(_, b)| b.bytes).sum();
        rows.push((
            "(allocator)".to_string(),
            Bound::new(
                "freed memory not yet returned, fragmentation",
                format!("{ALLOCATOR_PERCENT} % of the above"),
                live * ALLOCATOR_PERCENT / 100,
            ),
        ));
        Budget { rows }
    }

    pub fn total(&self) -> u64 {
        self.rows.iter().map(|(_, b)| b.bytes).sum()
    }

    /// The table `eventflow validate --memory` prints.
    pub fn table(&self) -> String {
        let w = self
            .rows
            .iter()
            .map(|(s, _)| s.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let ww = self
            .rows
            .iter()
            .map(|(_, b)| b.what.len())
            .max()
            .unwrap_or(4);
        let mut out = format!(
            "{:<w$}  {:<ww$}  {:>9}  SETTINGS\n",
            "STAGE", "WHAT", "BOUND"
        );
        for (s, b) in &self.rows {
            let _ = writeln!(
                out,
                "{s:<w$}  {:<ww$}  {:>9}  {}",
                b.what,
                mib(b.bytes),
                b.setting
            );
        }
        let _ = writeln!(
            out,
            "{:<w$}  {:<ww$}  {:>9}",
            "total",
            "",
            mib(self.total())
        );
        out
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / MIB as f64;
    format!("{m:.1} MiB")
}

/// Bytes in words for a setting: `32 MiB`, `4 KiB`, `80 B`.
pub fn size(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// The bounds of a sink that sends batches: `max_in_flight` batches being sent plus one being
/// filled, each event with its rendered body; with `durable`, the state database's page caches
/// of its queue (the queue itself is on disk).
pub fn sending(max_in_flight: usize, max_events: usize, durable: bool) -> Vec<Bound> {
    let mut out = vec![Bound::new(
        "batches being sent",
        format!(
            "(max_in_flight {max_in_flight} + 1) x batch.max_events {max_events} x {}",
            size(RENDERED_EVENT)
        ),
        (max_in_flight as u64 + 1)
            .saturating_mul(max_events as u64)
            .saturating_mul(RENDERED_EVENT),
    )];
    if durable {
        let held = crate::stages::webhook::durable::held_ahead(max_in_flight, max_events) as u64;
        out.push(Bound::new(
            "events read ahead from the durable queue",
            format!(
                "2 x max({}, 2 x max_in_flight {max_in_flight} x batch.max_events {max_events}) x {}",
                crate::stages::webhook::durable::READ_AHEAD_EVENTS,
                size(EVENT)
            ),
            held.saturating_mul(EVENT),
        ));
        out.push(Bound::new(
            "state database (durable queue) page cache",
            format!(
                "5 connections x {}",
                size(crate::state::db::STATE_CACHE_BYTES)
            ),
            5 * crate::state::db::STATE_CACHE_BYTES,
        ));
    }
    out
}
