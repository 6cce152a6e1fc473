//! `aggregate`: groups events by key over a window and emits one summary per group.
//!
//! The first event of a key opens a window of `window`; every event of the key until it
//! closes is merged into the group; when it closes one summary event goes on. The summary
//! keeps the first event's identity fields and carries `summary` with: how many events were
//! merged, the occurrences they stand for (the sum of `count` increases per Event object, so
//! three updates 35 -> 36 -> 37 of one BackOff add 2, not 3; the first time an Event object is
//! seen its whole count counts), first and last seen, up to `max_samples` distinct messages,
//! and a line such as "BackOff x37 on shop/Pod/web-7d4b9c between 2026-03-02 10:01:10 and
//! 10:09:42 UTC (event time; window 10m from the first arrival)" (a key without the object
//! gives "on 4 objects (namespace shop)": distinct objects are counted). Its `count` is the
//! occurrences. Merged events are acknowledged when their summary is (their finalizers move
//! into it), and are counted as `eventflow_events_discarded_total{reason="aggregated"}`.
//!
//! Memory: at most `max_keys` open groups (when full, the oldest group is closed early), each
//! holding one event's fields packed into one allocation (not its raw object), a 128-bit hash
//! of its key (not the key text) and at most `max_samples` messages, the first event's not
//! copied (about 0.6 KB per group with the samples' short messages, measured);
//! the per-Event-object counts used for increases are a bounded table of `max_keys` entries
//! (least recently updated forgotten first). Open windows are flushed when the input closes (shutdown,
//! or the stage removed by a reload).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use metrics::Counter;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

use super::key::KeySpec;
use super::summarize::Accumulator;
use crate::component::MAX_BATCH;
use crate::component::{
    BuildContext, BuildError, Explanation, Invalid, Stage, StageConfig, StageError, StageKind,
    StageType, Step, Transform, TransformContext, Verdict,
};
use crate::event::Batch;
use crate::event::{Event, EventData, Field, Summary};
use crate::types::Dur;

/// Groups events by key over a window and emits one summary event per group.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The event fields that make a group. Default: cluster, namespace, kind, object_name,
    /// reason, type (how Kubernetes itself groups similar events).
    #[serde(default = "default_key")]
    pub key: Vec<Field>,
    /// How long a group collects events after its first one.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// The most groups open at once; when full, the oldest is closed early.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// The most distinct messages kept per summary.
    #[serde(default = "default_samples")]
    pub max_samples: usize,
}

fn default_key() -> Vec<Field> {
    vec![
        Field::Cluster,
        Field::Namespace,
        Field::Kind,
        Field::ObjectName,
        Field::Reason,
        Field::Type,
    ]
}

fn default_window() -> Dur {
    Dur::secs(300)
}

fn default_max_keys() -> u64 {
    10_000
}

fn default_samples() -> usize {
    5
}

/// An open group's first event and counters, measured (490-510 bytes for groups of one event:
/// BENCHMARKS.md), and each sample message kept.
const BYTES_PER_GROUP: u64 = 512;
const BYTES_PER_SAMPLE: u64 = 256;

impl StageConfig for AggregateConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        use crate::budget::{Bound, size};
        let per = BYTES_PER_GROUP
            + (self.max_samples as u64).saturating_mul(BYTES_PER_SAMPLE)
            + 8 * super::summarize::MAX_OBJECTS as u64;
        vec![Bound::new(
            "open groups",
            format!(
                "max_keys {} x ({} + max_samples {} x {} + {} objects x 8 B)",
                self.max_keys,
                size(BYTES_PER_GROUP),
                self.max_samples,
                size(BYTES_PER_SAMPLE),
                super::summarize::MAX_OBJECTS
            ),
            self.max_keys.saturating_mul(per),
        )]
    }

    fn explain(&self, e: &crate::event::EventData) -> Explanation {
        // The summary of this event alone in its group: what the stages after this one get.
        let mut a = Aggregator::new(self, "explain", "aggregate");
        let mut out = Vec::new();
        a.ingest(
            vec![Event::new(e.clone(), crate::event::Finalizers::None)],
            Instant::now(),
            &mut out,
        );
        a.close_all(&mut out);
        let x = Explanation::new(
            Verdict::Held,
            vec![
                Step::note(KeySpec(self.key.clone()).describe(e)),
                Step::note(format!(
                    "held in its key's window of {}; when the window closes, one summary of every event of that key goes on — with this event alone, the summary below",
                    self.window
                )),
            ],
        );
        match out.pop() {
            Some(summary) => x.with_emits(summary.data().clone()),
            None => x,
        }
    }

    fn validate(&self) -> Vec<Invalid> {
        crate::component::keyed_window(&self.key, self.max_keys, self.window.0)
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let t = Aggregator::new(self, &cx.id, cx.type_name);
            Ok(Stage::Transform(Box::new(t) as Box<dyn Transform>))
        })
    }
}

/// The last count seen per Event object (by uid hash), for at most `max` objects: past it, the
/// tenth least recently seen are forgotten (their next update counts its whole count again).
/// 16 bytes an entry plus the table's, where a general cache costs ten times that.
struct LastCounts {
    /// uid hash -> (highest count seen, tick of the last update). A count is an `int32` in
    /// the Events API; a larger one (from a file) is remembered as `i32::MAX`.
    map: HashMap<u64, (i32, u32)>,
    tick: u32,
    max: usize,
}

impl LastCounts {
    fn new(max: usize) -> LastCounts {
        LastCounts {
            map: HashMap::new(),
            tick: 0,
            max: max.max(1),
        }
    }

    /// Records `count` for `uid` (keeping the highest seen); returns what was there before.
    fn swap(&mut self, uid: u64, count: i64) -> Option<i64> {
        if self.tick == u32::MAX {
            self.renumber();
        }
        self.tick += 1;
        let tick = self.tick;
        let count = i32::try_from(count.clamp(i32::MIN.into(), i32::MAX.into())).unwrap_or(0);
        let prev = if let Some(e) = self.map.get_mut(&uid) {
            let prev = e.0;
            *e = (count.max(prev), tick);
            Some(i64::from(prev))
        } else {
            self.map.insert(uid, (count, tick));
            None
        };
        if self.map.len() > self.max {
            let mut ticks: Vec<u32> = self.map.values().map(|(_, t)| *t).collect();
            let n = (self.max / 10).clamp(1, ticks.len() - 1);
            let (_, cut, _) = ticks.select_nth_unstable(n);
            let cut = *cut;
            self.map.retain(|_, (_, t)| *t >= cut);
        }
        prev
    }

    /// Ticks renumbered from 1 in the same order (once every 2^32 updates).
    fn renumber(&mut self) {
        let mut ticks: Vec<u32> = self.map.values().map(|(_, t)| *t).collect();
        ticks.sort_unstable();
        for (_, t) in self.map.values_mut() {
            let rank = ticks.partition_point(|x| x < t);
            *t = u32::try_from(rank + 1).unwrap_or(u32::MAX - 1);
        }
        self.tick = u32::try_from(ticks.len()).unwrap_or(u32::MAX - 1);
    }
}

/// One open group: 128 bytes and its first event's texts.
struct Group {
    acc: Accumulator,
    /// When its window closes, in nanoseconds from [`Aggregator::base`].
    deadline: u64,
}

/// The aggregation state, usable on its own (benchmarks, tests).
pub struct Aggregator {
    key: KeySpec,
    window: Duration,
    window_text: String,
    max_keys: usize,
    max_samples: usize,
    /// Open groups by a 128-bit hash of their key text (two independently seeded 64-bit
    /// hashes): the text itself is not kept. Two of `max_keys` open keys sharing a hash is
    /// about as likely as one in 10^28; it would merge their two groups.
    groups: HashMap<[u64; 2], Box<Group>, foldhash::fast::FixedState>,
    key_hash: [foldhash::fast::RandomState; 2],
    /// Open groups by deadline (all windows have one length, so arrival order is deadline
    /// order); the deadline is in the group.
    order: VecDeque<[u64; 2]>,
    /// What deadlines count from.
    base: Instant,
    /// The last count seen per Event object, by a 64-bit hash of its uid (seeded per process:
    /// two of the `max_keys` uids remembered sharing a hash is about as likely as one in 10^9,
    /// and would only misstate one summary's occurrences).
    last_counts: LastCounts,
    uid_hash: foldhash::fast::RandomState,
    /// When the key does not name the involved object: the hasher that counts a group's
    /// distinct objects (its summary says how many, rather than naming the first).
    objects: Option<foldhash::fast::RandomState>,
    buf: String,
    merged: Counter,
}

impl Aggregator {
    pub fn new(cfg: &AggregateConfig, stage: &str, type_name: &'static str) -> Aggregator {
        Aggregator {
            key: KeySpec(cfg.key.clone()),
            window: cfg.window.0,
            window_text: cfg.window.to_string(),
            max_keys: usize::try_from(cfg.max_keys).unwrap_or(usize::MAX),
            max_samples: cfg.max_samples,
            groups: HashMap::default(),
            key_hash: Default::default(),
            order: VecDeque::new(),
            base: Instant::now(),
            last_counts: LastCounts::new(usize::try_from(cfg.max_keys).unwrap_or(usize::MAX)),
            uid_hash: foldhash::fast::RandomState::default(),
            objects: (!cfg.key.contains(&Field::ObjectName))
                .then(foldhash::fast::RandomState::default),
            buf: String::with_capacity(128),
            merged: crate::metrics::discarded(stage, type_name, "aggregated"),
        }
    }

    /// The number of open groups.
    pub fn open_groups(&self) -> usize {
        self.groups.len()
    }

    /// How much `e` adds to its Event object's occurrences.
    fn increase(&mut self, e: &EventData) -> i64 {
        let uid = std::hash::BuildHasher::hash_one(&self.uid_hash, e.uid.as_str());
        let prev = self.last_counts.swap(uid, e.count);
        match prev {
            None => e.count,
            Some(p) => (e.count - p).max(0),
        }
    }

    /// The group key of the key text in `buf`.
    fn key_of_buf(&self) -> [u64; 2] {
        self.key_hash
            .each_ref()
            .map(|h| std::hash::BuildHasher::hash_one(h, self.buf.as_str()))
    }

    /// Merges a batch; summaries of groups closed early (capacity) go into `out`.
    pub fn ingest(&mut self, batch: Batch, now: Instant, out: &mut Batch) {
        self.merged.increment(batch.len() as u64);
        for e in batch {
            let inc = self.increase(&e);
            self.key.write(&e, &mut self.buf);
            let key = self.key_of_buf();
            if let Some(g) = self.groups.get_mut(&key) {
                g.acc.add(e, inc, self.max_samples, self.objects.as_ref());
                continue;
            }
            if self.groups.len() >= self.max_keys
                && let Some(s) = self.close_oldest()
            {
                out.push(s);
            }
            let deadline = (now + self.window).saturating_duration_since(self.base);
            let group = Group {
                acc: Accumulator::new(e, inc, false),
                deadline: u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX),
            };
            self.groups.insert(key, Box::new(group));
            self.order.push_back(key);
        }
    }

    /// When the next window closes.
    pub fn next_deadline(&self) -> Option<Instant> {
        let g = self.groups.get(self.order.front()?)?;
        Some(self.base + Duration::from_nanos(g.deadline))
    }

    /// Summaries of every group whose window has closed by `now`.
    pub fn close_due(&mut self, now: Instant, out: &mut Batch) {
        while let Some(key) = self.order.front() {
            if let Some(g) = self.groups.get(key)
                && self.base + Duration::from_nanos(g.deadline) > now
            {
                break;
            }
            if let Some(s) = self.close_oldest() {
                out.push(s);
            }
        }
    }

    /// Summaries of every open group (shutdown, removal).
    pub fn close_all(&mut self, out: &mut Batch) {
        while !self.order.is_empty() {
            if let Some(s) = self.close_oldest() {
                out.push(s);
            }
        }
    }

    fn close_oldest(&mut self) -> Option<Event> {
        let key = self.order.pop_front()?;
        let g = self.groups.remove(&key)?;
        Some(self.summarize(g.acc))
    }

    fn summarize(&self, g: Accumulator) -> Event {
        g.finish(self.max_samples, |mut f| {
            let mut data = f.first.unpack();
            let text = self.summary_text(&data, &f);
            data.count = f.occurrences;
            data.first_seen = f.first_seen;
            data.last_seen = f.last_seen;
            data.resource_version = f.last_rv();
            data.message = f.last_message();
            data.summary = Some(Arc::new(Summary {
                by: crate::event::SummaryBy::Aggregate,
                events: f.events,
                occurrences: f.occurrences,
                window: self.window_text.clone(),
                first_seen: f.first_seen,
                last_seen: f.last_seen,
                samples: f.take_samples(),
                text,
            }));
            data
        })
    }

    /// "BackOff x37 on shop/Pod/web between 10:01:10 and 10:09:42 UTC (event time; window 10m
    /// from the first arrival)". It names what the key is: the object when the key names one
    /// (or when every event was about one object), else how many objects and the key's other
    /// values; and its times are the events' own, the window is eventflow's.
    fn summary_text(&self, data: &EventData, f: &crate::stages::summarize::Folded) -> String {
        let object = match (data.object_namespace.is_empty(), data.kind.is_empty()) {
            (true, _) => format!("{}/{}", data.kind, data.object_name),
            (false, false) => format!(
                "{}/{}/{}",
                data.object_namespace, data.kind, data.object_name
            ),
            (false, true) => format!("{}/{}", data.object_namespace, data.object_name),
        };
        let what = match (self.objects.is_some(), f.objects()) {
            (false, _) | (true, (1, _)) => object,
            (true, (n, at_least)) => {
                let context: Vec<String> = self
                    .key
                    .0
                    .iter()
                    .filter(|k| !matches!(k, Field::Reason | Field::Type))
                    .map(|k| format!("{} {}", k.name(), data.get(k)))
                    .collect();
                format!(
                    "{}{n} objects{}",
                    if at_least { "at least " } else { "" },
                    if context.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", context.join(", "))
                    }
                )
            }
        };
        let fmt = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
        let when = match (f.first_seen, f.last_seen) {
            (Some(a), Some(b)) if a != b => {
                let b = if a.date_naive() == b.date_naive() {
                    b.format("%H:%M:%S").to_string()
                } else {
                    fmt(&b)
                };
                format!(" between {} and {b} UTC", fmt(&a))
            }
            (Some(t), _) | (None, Some(t)) => format!(" at {} UTC", fmt(&t)),
            (None, None) => String::new(),
        };
        format!(
            "{} x{} on {what}{when} (event time; window {} from the first arrival)",
            data.reason, f.occurrences, self.window_text
        )
    }
}

impl Transform for Aggregator {
    fn run(
        mut self: Box<Self>,
        mut cx: TransformContext,
    ) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let mut out: Batch = Vec::new();
            loop {
                let next = self.next_deadline();
                tokio::select! {
                    batch = cx.input.recv() => if let Some(b) = batch {
                        let started = std::time::Instant::now();
                        self.ingest(b, Instant::now(), &mut out);
                        cx.metrics.processing.record(started.elapsed().as_secs_f64());
                    } else {
                        self.close_all(&mut out);
                        send_chunks(&mut cx, &mut out).await;
                        return Ok(());
                    },
                    () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                        self.close_due(Instant::now(), &mut out);
                    }
                }
                send_chunks(&mut cx, &mut out).await;
            }
        })
    }
}

async fn send_chunks(cx: &mut TransformContext, out: &mut Batch) {
    while !out.is_empty() {
        let rest = out.split_off(out.len().min(MAX_BATCH));
        let chunk = std::mem::replace(out, rest);
        cx.out.send(chunk).await;
    }
}

pub const TYPE: StageType = StageType {
    name: "aggregate",
    kind: StageKind::Transform,
    summary: "groups events by key over a window and emits one summary event per group",
    parse: crate::component::parse_config::<AggregateConfig>,
    schema: crate::component::schema_of::<AggregateConfig>,
    describe: crate::component::no_metrics,
};

#[cfg(test)]
mod last_counts_tests {
    use super::LastCounts;

    #[test]
    fn the_least_recently_updated_are_forgotten_past_the_bound() {
        let mut c = LastCounts::new(100);
        for uid in 0..100 {
            assert_eq!(c.swap(uid, 1), None);
        }
        assert_eq!(c.swap(0, 5), Some(1), "uid 0 updated: now the most recent");
        assert_eq!(c.swap(0, 3), Some(5));
        assert_eq!(c.swap(0, 7), Some(5), "the highest count seen is kept");
        assert_eq!(c.swap(1000, 1), None);
        assert!(c.map.len() <= 100, "{}", c.map.len());
        assert_eq!(c.swap(0, 8), Some(7), "recently updated: kept");
        assert_eq!(c.swap(1, 2), None, "least recently updated: forgotten");
    }

    #[test]
    fn the_order_survives_the_tick_wrapping_around() {
        let mut c = LastCounts::new(4);
        for uid in 0..4 {
            c.swap(uid, 1);
        }
        c.tick = u32::MAX - 1;
        c.swap(0, 2); // tick u32::MAX: uid 0 is the most recent
        c.swap(1, 2); // renumbered first: 2, 3, 0, 1 in order
        assert!(c.tick < 10, "{}", c.tick);
        c.swap(99, 1); // past the bound: the least recent (uid 2) goes
        assert_eq!(c.swap(2, 5), None, "forgotten");
        assert_eq!(c.swap(0, 3), Some(2), "kept");
        assert_eq!(c.swap(7, i64::MAX), None);
        assert_eq!(c.swap(7, 1), Some(i64::from(i32::MAX)), "an int32 count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Finalizers;
    use crate::event::ack::{Finalizer, Status};
    use crate::yaml;

    fn agg(yaml: &str) -> Aggregator {
        let cfg: AggregateConfig = yaml::from_node(&yaml::parse(yaml).unwrap()).unwrap();
        Aggregator::new(&cfg, "a", "aggregate")
    }

    fn ev(uid: &str, object: &str, reason: &str, count: i64, msg: &str) -> Event {
        Event::new(
            EventData {
                uid: uid.into(),
                namespace: "shop".into(),
                object_namespace: "shop".into(),
                kind: "Pod".into(),
                object_name: object.into(),
                reason: reason.into(),
                type_: "Warning".into(),
                count,
                message: msg.into(),
                ..EventData::default()
            },
            Finalizers::None,
        )
    }

    fn summary(e: &Event) -> &Summary {
        e.summary.as_deref().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_summary_per_group_when_the_window_closes() {
        let mut a = agg("window: 10m\nmax_samples: 2");
        let t0 = Instant::now();
        let mut out = Vec::new();
        // One BackOff Event object updated 35 -> 36 -> 37, plus a second object's BackOff.
        a.ingest(
            vec![
                ev("u1", "web", "BackOff", 35, "back-off 1"),
                ev("u1", "web", "BackOff", 36, "back-off 2"),
                ev("u2", "db", "BackOff", 2, "db back-off"),
                ev("u1", "web", "BackOff", 37, "back-off 3"),
                ev("u3", "web", "Unhealthy", 1, "probe failed"),
            ],
            t0,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(a.open_groups(), 3);
        a.close_due(t0 + Duration::from_secs(599), &mut out);
        assert!(out.is_empty(), "windows still open");
        a.close_due(t0 + Duration::from_secs(600), &mut out);
        assert_eq!(out.len(), 3);
        let web = out
            .iter()
            .find(|e| e.object_name == "web" && e.reason == "BackOff")
            .unwrap();
        let s = summary(web);
        assert_eq!((s.events, s.occurrences, web.count), (3, 37, 37));
        assert_eq!(
            s.samples,
            vec!["back-off 1", "back-off 2"],
            "distinct, at most max_samples"
        );
        assert_eq!(
            s.text, "BackOff x37 on shop/Pod/web (event time; window 10m from the first arrival)",
            "no event times in these events"
        );
        assert_eq!(web.uid, "u1", "the first event's identity");
        // A later window counts only the increase.
        a.ingest(
            vec![ev("u1", "web", "BackOff", 40, "back-off 4")],
            t0 + Duration::from_secs(700),
            &mut out,
        );
        out.clear();
        a.close_all(&mut out);
        assert_eq!(summary(&out[0]).occurrences, 3);
        assert_eq!(a.open_groups(), 0);
    }

    /// The case: `key: [namespace, reason]`, 16 events over 4 Pods and about ten
    /// minutes of event time, replayed at once. The summary says how many objects, the key's
    /// namespace, and the events' own time span; not the first Pod, not "in the last 1m".
    #[test]
    fn a_summary_names_what_its_key_is_and_the_time_it_counts_in() {
        let mut a = agg("key: [namespace, reason]\nwindow: 1m");
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let batch: Vec<Event> = (0..16i64)
            .map(|i| {
                let mut d = ev(
                    &format!("u{i}"),
                    &format!("api-{}", i % 4),
                    "Unhealthy",
                    1,
                    "probe",
                )
                .data()
                .clone();
                d.namespace = "checkout".into();
                d.object_namespace = "checkout".into();
                d.first_seen = Some(t0 + chrono::Duration::seconds(i * 40));
                d.last_seen = d.first_seen;
                Event::new(d, Finalizers::None)
            })
            .collect();
        let mut out = Vec::new();
        a.ingest(batch, Instant::now(), &mut out);
        a.close_all(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            summary(&out[0]).text,
            "Unhealthy x16 on 4 objects (namespace checkout) between 2026-03-02 10:00:00 and 10:10:00 UTC (event time; window 1m from the first arrival)"
        );
        // Every event about one object: the object is named, whatever the key.
        let mut a = agg("key: [namespace, reason]\nwindow: 1m");
        let mut out = Vec::new();
        a.ingest(
            vec![
                ev("1", "web", "BackOff", 1, "m"),
                ev("2", "web", "BackOff", 1, "m"),
            ],
            Instant::now(),
            &mut out,
        );
        a.close_all(&mut out);
        assert!(
            summary(&out[0])
                .text
                .starts_with("BackOff x2 on shop/Pod/web "),
            "{}",
            summary(&out[0]).text
        );
    }

    #[test]
    fn keys_over_chosen_fields() {
        let mut a = agg("key: [reason]\nwindow: 1m");
        let mut out = Vec::new();
        a.ingest(
            vec![
                ev("1", "a", "BackOff", 1, "m"),
                ev("2", "b", "BackOff", 1, "m"),
                ev("3", "c", "Pulled", 1, "m"),
            ],
            Instant::now(),
            &mut out,
        );
        assert_eq!(a.open_groups(), 2);
    }

    #[test]
    fn the_oldest_group_closes_early_at_max_keys() {
        let mut a = agg("key: [uid]\nmax_keys: 2");
        let mut out = Vec::new();
        let now = Instant::now();
        a.ingest(
            vec![
                ev("1", "a", "R", 1, "m"),
                ev("2", "a", "R", 1, "m"),
                ev("3", "a", "R", 1, "m"),
            ],
            now,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].uid, "1");
        assert_eq!(a.open_groups(), 2);
    }

    /// `n` versions of one Event object in one source batch, and the batch's status receiver.
    fn repeats_of_one_object(n: i64) -> (Batch, tokio::sync::oneshot::Receiver<Status>) {
        let (f, rx) = Finalizer::new();
        let batch = (0..n)
            .map(|i| {
                Event::new(
                    ev("u", "web", "BackOff", i + 1, "m").data().clone(),
                    Finalizers::One(f.clone()),
                )
            })
            .collect();
        (batch, rx)
    }

    #[tokio::test]
    async fn merged_events_are_acknowledged_with_their_summary() {
        let mut a = agg("window: 1m");
        let (batch, rx) = repeats_of_one_object(3);
        let mut out = Vec::new();
        a.ingest(batch, Instant::now(), &mut out);
        a.close_all(&mut out);
        let mut rx = rx;
        assert!(rx.try_recv().is_err(), "the summary is still alive");
        out[0].ack(Status::Rejected);
        drop(out);
        assert_eq!(rx.await.unwrap(), Status::Rejected);
    }

    #[tokio::test]
    async fn merged_events_fail_when_the_stage_dies_with_their_group_open() {
        let mut a = agg("window: 1m");
        let (batch, rx) = repeats_of_one_object(1);
        let mut out = Vec::new();
        a.ingest(batch, Instant::now(), &mut out);
        drop(a); // a crash: the open group goes without a summary
        assert_eq!(rx.await.unwrap(), Status::Errored);
    }

    #[tokio::test]
    async fn a_delivered_summary_delivers_what_it_merged() {
        let mut a = agg("window: 1m");
        let (batch, rx) = repeats_of_one_object(3);
        let mut out = Vec::new();
        a.ingest(batch, Instant::now(), &mut out);
        a.close_all(&mut out);
        crate::event::ack_all(&out, Status::Delivered);
        drop(out);
        assert_eq!(rx.await.unwrap(), Status::Delivered);
    }
}
