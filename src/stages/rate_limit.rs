//! `rate_limit`: at most `limit` events per `per` for each key (GCRA, via governor).
//!
//! `key` names the event fields of a bucket (default: none, one global bucket). `burst` is how
//! many may pass at once (default: `limit`). What happens to an event over the limit is
//! `when_limited`:
//! - `drop`: it is dropped and counted (`eventflow_events_discarded_total{reason="rate_limited"}`).
//! - `wait`: it is held until its bucket allows it; the stage stops reading meanwhile, so the
//!   source slows down (back-pressure) and nothing is dropped.
//! - `summarize`: it is dropped (counted as `reason="suppressed"`) but remembered; when the
//!   key's bucket allows again (checked on the next event of the key and on a timer), one
//!   summary event goes on: "N more events with namespace shop suppressed since 10:02:11" (the
//!   key's fields and values, which is all the suppressed events share). Pending
//!   summaries are flushed at shutdown. The suppressed events are acknowledged with their
//!   summary.
//!
//! Memory: governor keeps one small state per key; `retain_recent()` runs every few seconds to
//! forget keys whose buckets are full again, and if more than `max_keys` keys are still live
//! the key table is reset (logged and counted in `eventflow_rate_limit_resets_total`), which
//! lets each key start with a full bucket. Pending summaries are at most `max_keys`; past that
//! the oldest is emitted early. Time comes from tokio's clock, so tests use paused time.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use governor::clock::Clock;
use governor::{Quota, RateLimiter};
use metrics::Counter;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use super::key::KeySpec;
use super::summarize::Accumulator;
use crate::component::{
    BuildContext, BuildError, Explanation, Invalid, Stage, StageConfig, StageError, StageKind,
    StageType, Step, Transform, TransformContext, Verdict,
};
use crate::event::Batch;
use crate::event::{Event, EventData, Field, Summary};
use crate::types::Dur;

/// What to do with an event over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenLimited {
    /// Drop it and count it.
    #[default]
    Drop,
    /// Hold it until the bucket allows it (back-pressure upstream; nothing dropped).
    Wait,
    /// Drop it, and emit one summary of what was suppressed when the bucket allows again.
    Summarize,
}

/// Lets at most `limit` events per `per` through, per key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The event fields that make a bucket. Default: none (one global bucket).
    #[serde(default)]
    pub key: Vec<Field>,
    /// How many events per `per`.
    pub limit: u32,
    /// The period of `limit`.
    #[serde(default = "default_per")]
    pub per: Dur,
    /// How many may pass at once. Default: `limit`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// What happens to an event over the limit: `drop`, `wait` or `summarize`.
    #[serde(default)]
    pub when_limited: WhenLimited,
    /// The most keys tracked at once.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// With `summarize`: the most distinct messages kept per summary (as `aggregate`'s).
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
    /// Also count drops per key in `eventflow_key_discarded_total{stage,key}`.
    #[serde(default)]
    pub per_key_metrics: bool,
}

fn default_per() -> Dur {
    Dur::secs(60)
}

fn default_max_keys() -> usize {
    100_000
}

fn default_max_samples() -> usize {
    5
}

/// governor's clock, driven by tokio's (so paused time in tests moves it).
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Limiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    TokioClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

impl RateLimitConfig {
    /// The limiter's quota; an error names the field (`validate` reports the same ones).
    fn quota(&self) -> Result<Quota, Invalid> {
        let limit = NonZeroU32::new(self.limit)
            .ok_or_else(|| Invalid::new("limit", "must be at least 1"))?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.limit))
            .ok_or_else(|| Invalid::new("burst", "must be at least 1"))?;
        let period = self.per.0 / limit.get();
        Quota::with_period(period)
            .map(|q| q.allow_burst(burst))
            .ok_or_else(|| Invalid::new("per", "must be above zero"))
    }
}

/// One key's bucket, measured (about 11 MB per 100,000 keys: BENCHMARKS.md).
const BYTES_PER_KEY: u64 = 128;

impl StageConfig for RateLimitConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        use crate::budget::{Bound, size};
        let per = BYTES_PER_KEY + (self.max_samples as u64).saturating_mul(256);
        vec![Bound::new(
            "keys limited (and their summaries)",
            format!(
                "max_keys {} x ({} + max_samples {} x 256 B)",
                self.max_keys,
                size(BYTES_PER_KEY),
                self.max_samples
            ),
            (self.max_keys as u64).saturating_mul(per),
        )]
    }

    fn explain(&self, e: &crate::event::EventData) -> Explanation {
        let key = if self.key.is_empty() {
            "no key: one bucket for every event".to_string()
        } else {
            KeySpec(self.key.clone()).describe(e)
        };
        let over = match self.when_limited {
            WhenLimited::Drop => "dropped (`rate_limited`)",
            WhenLimited::Wait => "held until the bucket allows them",
            WhenLimited::Summarize => "dropped and summarized when the bucket allows again",
        };
        Explanation::new(
            Verdict::Passes,
            vec![
                Step::note(key),
                Step::yes(format!(
                    "a first event of its key finds a full bucket ({} per {}, burst {}): it passes",
                    self.limit,
                    self.per,
                    self.burst.unwrap_or(self.limit)
                )),
                Step::note(format!("events over the limit are {over}")),
            ],
        )
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        crate::component::at_least_one(&mut out, "limit", self.limit.into());
        if let Some(b) = self.burst {
            crate::component::at_least_one(&mut out, "burst", b.into());
        }
        crate::component::at_least_one(&mut out, "max_keys", self.max_keys as u64);
        if self.per.0.is_zero() {
            out.push(Invalid::new("per", "must be above zero"));
        } else if self.limit > 0 && (self.per.0 / self.limit).is_zero() {
            out.push(Invalid::new(
                "per",
                format!(
                    "`limit: {}` per `{}` is more than one event per nanosecond",
                    self.limit, self.per
                ),
            ));
        }
        out
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let t = RateLimit::new(self, &cx.id, cx.type_name).map_err(|i| cx.failed(i))?;
            Ok(Stage::Transform(Box::new(t) as Box<dyn Transform>))
        })
    }
}

/// What was suppressed under one key since it was last let through.
struct Suppressed {
    acc: Accumulator,
    /// When the first of them was last seen.
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Its place in `pending_order` (an entry there with another number is stale).
    order: u64,
}

/// The limiter and its pending summaries, usable on its own (benchmarks, tests).
pub struct RateLimit {
    cfg: RateLimitConfig,
    quota: Quota,
    clock: TokioClock,
    limiter: Limiter,
    key: KeySpec,
    buf: String,
    pending: HashMap<String, Suppressed>,
    /// Keys in the order their summaries were started, each with its `Suppressed::order`.
    /// Entries of keys summarized since are skipped (and swept when they pile up), so no
    /// removal scans the queue.
    pending_order: VecDeque<(String, u64)>,
    next_order: u64,
    stage: String,
    dropped: Counter,
    suppressed: Counter,
    resets: Counter,
}

impl RateLimit {
    pub fn new(
        cfg: &RateLimitConfig,
        stage: &str,
        type_name: &'static str,
    ) -> Result<RateLimit, Invalid> {
        let quota = cfg.quota()?;
        let clock = TokioClock {
            start: Instant::now(),
        };
        Ok(RateLimit {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            quota,
            clock,
            cfg: cfg.clone(),
            key: KeySpec(cfg.key.clone()),
            buf: String::with_capacity(64),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            next_order: 0,
            stage: stage.to_string(),
            dropped: crate::metrics::discarded(stage, type_name, "rate_limited"),
            suppressed: crate::metrics::discarded(stage, type_name, "suppressed"),
            resets: rate_limit_resets(stage),
        })
    }

    /// True if the bucket of `e` allows it now (and takes a token).
    pub fn check(&mut self, e: &EventData) -> bool {
        self.key.write(e, &mut self.buf);
        self.limiter.check_key(&self.buf).is_ok()
    }

    /// How long until the bucket of the last checked key allows an event.
    fn wait_time(&self) -> Duration {
        match self.limiter.check_key(&self.buf) {
            Ok(()) => Duration::ZERO,
            Err(nu) => nu.wait_time_from(self.clock.now()),
        }
    }

    /// Forgets idle keys; resets the table if it is still over `max_keys`.
    pub fn housekeeping(&mut self) {
        self.limiter.retain_recent();
        if self.limiter.len() > self.cfg.max_keys {
            tracing::warn!(
                keys = self.limiter.len(),
                max_keys = self.cfg.max_keys,
                "more live rate-limit keys than max_keys; resetting the key table"
            );
            self.limiter = RateLimiter::dashmap_with_clock(self.quota, self.clock.clone());
            self.resets.increment(1);
        }
    }

    /// Keys tracked by the limiter.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    /// Counts a dropped (`suppressed`: remembered for a summary) event.
    fn count_drop(&self, suppressed: bool) {
        if suppressed {
            self.suppressed.increment(1);
        } else {
            self.dropped.increment(1);
        }
        if self.cfg.per_key_metrics {
            crate::metrics::key_discarded(&self.stage, &self.key.display(&self.buf)).increment(1);
        }
    }

    /// Remembers a suppressed event under the current key.
    fn suppress(&mut self, e: Event, out: &mut Batch) {
        self.count_drop(true);
        if let Some(s) = self.pending.get_mut(self.buf.as_str()) {
            s.acc
                .add(e, 1, self.cfg.max_samples, None::<&std::hash::RandomState>);
            return;
        }
        if self.pending.len() >= self.cfg.max_keys
            && let Some(s) = self.take_oldest()
        {
            out.push(self.summary(s));
        }
        let since = e.last_seen;
        let order = self.next_order;
        self.next_order += 1;
        self.pending.insert(
            self.buf.clone(),
            Suppressed {
                acc: Accumulator::new(e, 1, true),
                since,
                order,
            },
        );
        self.pending_order.push_back((self.buf.clone(), order));
    }

    /// The pending summary started longest ago.
    fn take_oldest(&mut self) -> Option<Suppressed> {
        while let Some((k, order)) = self.pending_order.pop_front() {
            if self.pending.get(&k).is_some_and(|s| s.order == order) {
                return self.pending.remove(&k);
            }
        }
        None
    }

    /// Takes the pending summary of `key`, if any; its entry in the order goes stale.
    fn take(&mut self, key: &str) -> Option<Suppressed> {
        let s = self.pending.remove(key)?;
        if self.pending_order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.pending_order
                .retain(|(k, o)| pending.get(k).is_some_and(|s| s.order == *o));
        }
        Some(s)
    }

    fn summary(&self, s: Suppressed) -> Event {
        let since_text = s.since.map_or_else(
            || "the start".into(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        let window = self.cfg.per.to_string();
        let key = &self.key;
        s.acc.finish(self.cfg.max_samples, |mut f| {
            let mut data = f.first.unpack();
            // What the suppressed events have in common is the key, and only the key.
            let what: Vec<String> = key
                .0
                .iter()
                .map(|field| format!("{} {}", field.name(), data.get(field)))
                .collect();
            let text = if what.is_empty() {
                format!("{} more events suppressed since {since_text}", f.events)
            } else {
                format!(
                    "{} more events with {} suppressed since {since_text}",
                    f.events,
                    what.join(", ")
                )
            };
            data.count = f.occurrences;
            data.last_seen = f.last_seen;
            data.summary = Some(Arc::new(Summary {
                by: crate::event::SummaryBy::RateLimit,
                events: f.events,
                occurrences: f.occurrences,
                window,
                first_seen: s.since,
                last_seen: f.last_seen,
                samples: f.take_samples(),
                text,
            }));
            data
        })
    }

    /// Emits the pending summaries whose buckets allow one now (all of them if `force`), in
    /// the order they were started. One pass over the pending keys.
    pub fn release_summaries(&mut self, force: bool, out: &mut Batch) {
        let order = std::mem::take(&mut self.pending_order);
        for (k, o) in order {
            if self.pending.get(&k).is_none_or(|s| s.order != o) {
                continue; // stale
            }
            if force || self.limiter.check_key(&k).is_ok() {
                if let Some(s) = self.pending.remove(&k) {
                    out.push(self.summary(s));
                }
            } else {
                self.pending_order.push_back((k, o));
            }
        }
    }

    /// Applies `drop` or `summarize` to a batch.
    pub fn process(&mut self, batch: Batch, out: &mut Batch) {
        for e in batch {
            if self.check(&e) {
                if !self.pending.is_empty() {
                    let key = self.buf.clone();
                    if let Some(s) = self.take(&key) {
                        out.push(self.summary(s));
                    }
                }
                out.push(e);
            } else if self.cfg.when_limited == WhenLimited::Summarize {
                self.suppress(e, out);
            } else {
                self.count_drop(false);
                e.discard();
            }
        }
    }

    /// `wait` mode: passes every event, sending what is ready before each wait.
    async fn process_waiting(&mut self, batch: Batch, cx: &mut TransformContext) {
        let mut ready = Vec::with_capacity(batch.len());
        for e in batch {
            if !self.check(&e) {
                cx.out.send(std::mem::take(&mut ready)).await;
                loop {
                    let wait = self.wait_time();
                    if wait.is_zero() {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
            ready.push(e);
        }
        cx.out.send(ready).await;
    }
}

const HOUSEKEEPING: Duration = Duration::from_secs(5);

impl Transform for RateLimit {
    fn run(
        mut self: Box<Self>,
        mut cx: TransformContext,
    ) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let mut housekeeping =
                tokio::time::interval_at(Instant::now() + HOUSEKEEPING, HOUSEKEEPING);
            // How often pending summaries are offered to their buckets.
            let release_every = (self.cfg.per.0 / self.cfg.limit.max(1))
                .clamp(Duration::from_millis(100), HOUSEKEEPING);
            let mut release =
                tokio::time::interval_at(Instant::now() + release_every, release_every);
            let mut out: Batch = Vec::new();
            loop {
                tokio::select! {
                    batch = cx.input.recv() => match batch {
                        Some(b) if self.cfg.when_limited == WhenLimited::Wait => self.process_waiting(b, &mut cx).await,
                        Some(b) => {
                            let started = std::time::Instant::now();
                            self.process(b, &mut out);
                            cx.metrics.processing.record(started.elapsed().as_secs_f64());
                        }
                        None => {
                            self.release_summaries(true, &mut out);
                            cx.out.send(out).await;
                            return Ok(());
                        }
                    },
                    _ = housekeeping.tick() => self.housekeeping(),
                    _ = release.tick(), if !self.pending.is_empty() => self.release_summaries(false, &mut out),
                }
                cx.out.send(std::mem::take(&mut out)).await;
            }
        })
    }
}

pub const TYPE: StageType = StageType {
    name: "rate_limit",
    kind: StageKind::Transform,
    summary: "lets at most `limit` events per `per` through for each key; drop, wait or summarize the rest",
    parse: crate::component::parse_config::<RateLimitConfig>,
    schema: crate::component::schema_of::<RateLimitConfig>,
    describe: describe_metrics,
};

pub const RATE_LIMIT_RESETS: &str = "eventflow_rate_limit_resets_total";

fn rate_limit_resets(stage: &str) -> Counter {
    metrics::counter!(RATE_LIMIT_RESETS, "stage" => stage.to_string())
}

/// Descriptions of the rate_limit stage's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        RATE_LIMIT_RESETS,
        metrics::Unit::Count,
        "Times a rate_limit stage reset its key table because more than max_keys keys were live."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Finalizers;
    use crate::yaml;

    fn rl(yaml: &str) -> RateLimit {
        let cfg: RateLimitConfig = yaml::from_node(&yaml::parse(yaml).unwrap()).unwrap();
        RateLimit::new(&cfg, "r", "rate_limit").unwrap()
    }

    fn ev(ns: &str, i: u64) -> Event {
        Event::new(
            EventData {
                uid: format!("{ns}-{i}"),
                namespace: ns.into(),
                object_namespace: ns.into(),
                kind: "Pod".into(),
                object_name: "web".into(),
                reason: "BackOff".into(),
                message: format!("m{}", i % 2),
                ..EventData::default()
            },
            Finalizers::None,
        )
    }

    fn uids(b: &Batch) -> Vec<String> {
        b.iter().map(|e| e.uid.clone()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn drop_mode_lets_limit_per_period_through() {
        let mut r = rl("limit: 2\nper: 1s");
        let mut out = Vec::new();
        r.process((0..5).map(|i| ev("a", i)).collect(), &mut out);
        assert_eq!(uids(&out), vec!["a-0", "a-1"]);
        out.clear();
        tokio::time::advance(Duration::from_millis(500)).await;
        r.process((5..8).map(|i| ev("a", i)).collect(), &mut out);
        assert_eq!(
            uids(&out),
            vec!["a-5"],
            "one token back after half the period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_their_own_buckets() {
        let mut r = rl("key: [namespace]\nlimit: 1\nper: 1m");
        let mut out = Vec::new();
        r.process(
            vec![ev("a", 0), ev("b", 0), ev("a", 1), ev("c", 0), ev("b", 1)],
            &mut out,
        );
        assert_eq!(uids(&out), vec!["a-0", "b-0", "c-0"]);
        assert_eq!(r.keys(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_summary_describes_the_key_it_limited_on() {
        let mut r = rl("key: [namespace]\nlimit: 1\nper: 10s\nwhen_limited: summarize");
        let mut out = Vec::new();
        let mut batch: Vec<Event> = (0..3).map(|i| ev("shop", i)).collect();
        let mut other = ev("shop", 3).data().clone();
        other.reason = "ProvisioningFailed".into();
        other.kind = "PersistentVolumeClaim".into();
        batch.push(Event::new(other, Finalizers::None));
        r.process(batch, &mut out);
        out.clear();
        tokio::time::advance(Duration::from_secs(10)).await;
        r.release_summaries(true, &mut out);
        let s = out[0].summary.as_deref().unwrap();
        assert!(
            s.text
                .starts_with("3 more events with namespace shop suppressed since"),
            "{}",
            s.text
        );
    }

    #[tokio::test(start_paused = true)]
    async fn summarize_emits_the_suppressed_count_exactly_once() {
        let mut r = rl("limit: 1\nper: 10s\nwhen_limited: summarize");
        let mut out = Vec::new();
        r.process((0..5).map(|i| ev("a", i)).collect(), &mut out);
        assert_eq!(uids(&out), vec!["a-0"]);
        out.clear();
        r.release_summaries(false, &mut out);
        assert!(out.is_empty(), "the bucket is still empty");
        tokio::time::advance(Duration::from_secs(10)).await;
        r.release_summaries(false, &mut out);
        assert_eq!(out.len(), 1);
        let s = out[0].summary.as_deref().unwrap();
        assert_eq!((s.events, s.by), (4, crate::event::SummaryBy::RateLimit));
        assert_eq!(s.samples, vec!["m1", "m0"]);
        assert!(
            s.text.starts_with("4 more events suppressed since"),
            "{}",
            s.text
        );
        out.clear();
        r.release_summaries(true, &mut out);
        assert!(out.is_empty(), "nothing pending twice");
        // A suppressed run followed by an allowed event: the summary comes first.
        r.process((5..8).map(|i| ev("a", i)).collect(), &mut out);
        assert!(out.is_empty(), "the summary took the token");
        tokio::time::advance(Duration::from_secs(10)).await;
        r.process(vec![ev("a", 9)], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].summary.as_deref().unwrap().events, 3);
        assert_eq!(out[1].uid, "a-9");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten_and_the_table_is_bounded() {
        let mut r = rl("key: [uid]\nlimit: 1\nper: 1s\nmax_keys: 100");
        let mut out = Vec::new();
        r.process((0..1000).map(|i| ev("a", i)).collect(), &mut out);
        assert_eq!(r.keys(), 1000);
        r.housekeeping();
        assert_eq!(r.keys(), 0, "over max_keys: reset");
        r.process((0..50).map(|i| ev("b", i)).collect(), &mut out);
        tokio::time::advance(Duration::from_secs(2)).await;
        r.housekeeping();
        assert_eq!(r.keys(), 0, "idle keys are forgotten");
    }
}
