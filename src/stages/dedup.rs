//! `dedup`: drops repeats of the same key inside a window.
//!
//! The first event of a key passes and opens the key's window; repeats inside the window are
//! dropped and counted (`eventflow_events_discarded_total{reason="duplicate"}`); the first
//! event after the window passes and opens a new one. Keys live in a bounded LRU cache
//! (`max_keys`): when more keys are live than that, the least recently seen are forgotten, and
//! a repeat of a forgotten key passes again. Memory is bounded by `max_keys`, never by luck.
//! Time comes from tokio's clock, so tests drive windows with paused time.

use std::time::Duration;

use futures::future::BoxFuture;
use metrics::Counter;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use super::key::KeySpec;
use crate::component::{
    BuildContext, BuildError, Explanation, Function, FunctionTransform, Invalid, Stage,
    StageConfig, StageKind, StageType, Step, Verdict,
};
use crate::event::Batch;
use crate::event::Field;
use crate::types::Dur;

/// Drops repeats of the same key within a window.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// The event fields that make the key. Default: `[uid]` (one Event object: its count
    /// updates inside the window are dropped).
    #[serde(default = "default_key")]
    pub key: Vec<Field>,
    /// How long after the first event of a key its repeats are dropped.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// The most keys remembered at once (least recently seen are forgotten first).
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// Also count drops per key in `eventflow_key_discarded_total{stage,key}`. Off by default:
    /// one time series per key can be a lot.
    #[serde(default)]
    pub per_key_metrics: bool,
}

fn default_key() -> Vec<Field> {
    vec![Field::Uid]
}

fn default_window() -> Dur {
    Dur::secs(600)
}

fn default_max_keys() -> u64 {
    100_000
}

/// The memory of one remembered key, measured (+44 MB for 100,000 keys: BENCHMARKS.md).
const BYTES_PER_KEY: u64 = 448;

impl StageConfig for DedupConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        vec![crate::budget::Bound::each(
            "keys remembered",
            "max_keys",
            self.max_keys,
            BYTES_PER_KEY,
        )]
    }

    fn explain(&self, e: &crate::event::EventData) -> Explanation {
        Explanation::new(
            Verdict::Passes,
            vec![
                Step::note(KeySpec(self.key.clone()).describe(e)),
                Step::note(format!(
                    "a first occurrence of its key passes; repeats of that key within {} after it are dropped (`duplicate`)",
                    self.window
                )),
            ],
        )
    }

    fn validate(&self) -> Vec<Invalid> {
        crate::component::keyed_window(&self.key, self.max_keys, self.window.0)
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let t = Dedup::new(self, &cx.id, cx.type_name);
            Ok(Stage::Transform(
                Box::new(Function(t)) as Box<dyn crate::component::Transform>
            ))
        })
    }
}

/// The dedup state and decision, usable on its own (benchmarks, tests).
pub struct Dedup {
    key: KeySpec,
    window: Duration,
    cache: Cache<String, Instant>,
    buf: String,
    dropped: Counter,
    stage: String,
    per_key: bool,
}

impl Dedup {
    pub fn new(cfg: &DedupConfig, stage: &str, type_name: &'static str) -> Dedup {
        let cache = Cache::builder()
            .max_capacity(cfg.max_keys)
            .eviction_policy(EvictionPolicy::lru())
            // Entries older than the window are useless; let the cache free them.
            .time_to_live(cfg.window.0.max(Duration::from_millis(1)))
            .build();
        Dedup {
            key: KeySpec(cfg.key.clone()),
            window: cfg.window.0,
            cache,
            buf: String::with_capacity(128),
            dropped: crate::metrics::discarded(stage, type_name, "duplicate"),
            stage: stage.to_string(),
            per_key: cfg.per_key_metrics,
        }
    }

    /// True if an event with this data passes (first of its key in the window).
    pub fn admit(&mut self, e: &crate::event::EventData, now: Instant) -> bool {
        self.key.write(e, &mut self.buf);
        let entry = self.cache.entry_by_ref(self.buf.as_str()).or_insert(now);
        if entry.is_fresh() {
            return true;
        }
        if now.saturating_duration_since(*entry.value()) >= self.window {
            self.cache.insert(self.buf.clone(), now);
            return true;
        }
        false
    }

    /// Keys currently remembered (after pending evictions are applied).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FunctionTransform for Dedup {
    fn transform(&mut self, mut batch: Batch) -> Batch {
        let now = Instant::now();
        let before = batch.len();
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let mut kept = Vec::with_capacity(batch.len());
        for e in batch.drain(..) {
            if self.admit(&e, now) {
                kept.push(e);
            } else {
                if debug {
                    tracing::debug!(key = %self.key.display(&self.buf), uid = %e.uid, "repeat dropped by dedup");
                }
                if self.per_key {
                    crate::metrics::key_discarded(&self.stage, &self.key.display(&self.buf))
                        .increment(1);
                }
                e.discard();
            }
        }
        let dropped = before - kept.len();
        if dropped > 0 {
            self.dropped.increment(dropped as u64);
        }
        kept
    }
}

pub const TYPE: StageType = StageType {
    name: "dedup",
    kind: StageKind::Transform,
    summary: "drops repeats of the same key within a window, in bounded memory",
    parse: crate::component::parse_config::<DedupConfig>,
    schema: crate::component::schema_of::<DedupConfig>,
    describe: crate::component::no_metrics,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventData;
    use crate::yaml;

    fn dedup(yaml: &str) -> Dedup {
        let cfg: DedupConfig = yaml::from_node(&yaml::parse(yaml).unwrap()).unwrap();
        Dedup::new(&cfg, "d", "dedup")
    }

    fn ev(uid: &str, ns: &str, reason: &str) -> EventData {
        EventData {
            uid: uid.into(),
            namespace: ns.into(),
            reason: reason.into(),
            ..EventData::default()
        }
    }

    #[test]
    fn table() {
        // (key config, [(event, seconds after start, passes?)])
        type Step = (EventData, u64, bool);
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "window: 10m",
                vec![
                    (ev("a", "x", "r"), 0, true),
                    (ev("a", "x", "r"), 1, false),
                    (ev("b", "x", "r"), 2, true),
                    (ev("a", "y", "q"), 599, false),
                    (ev("a", "x", "r"), 600, true), // window over: a new one opens
                    (ev("a", "x", "r"), 1199, false),
                ],
            ),
            (
                "key: [namespace, reason]\nwindow: 1m",
                vec![
                    (ev("a", "x", "r"), 0, true),
                    (ev("b", "x", "r"), 5, false),
                    (ev("c", "x", "q"), 5, true),
                    (ev("d", "y", "r"), 5, true),
                    (ev("e", "x", "r"), 61, true),
                ],
            ),
        ];
        for (cfg, steps) in cases {
            let mut d = dedup(cfg);
            for (i, (e, at, want)) in steps.into_iter().enumerate() {
                assert_eq!(d.admit(&e, s(at)), want, "{cfg:?}, step {i}");
            }
        }
    }

    #[test]
    fn capacity_is_bounded_by_max_keys() {
        let mut d = dedup("max_keys: 100");
        let now = Instant::now();
        for i in 0..10_000 {
            assert!(d.admit(&ev(&i.to_string(), "x", "r"), now));
        }
        assert!(d.len() <= 100, "{} keys", d.len());
        // The most recent keys are still remembered; the oldest were evicted.
        assert!(!d.admit(&ev("9999", "x", "r"), now));
        assert!(d.admit(&ev("0", "x", "r"), now));
    }
}
