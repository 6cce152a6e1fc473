//! Keyed stages against their bare libraries, same keys, same run (one core):
//! - dedup over 100,000 live keys vs bare moka `entry_by_ref().or_insert()`;
//! - `rate_limit` over 100,000 keys vs bare governor `check_key`;
//! - aggregate into 10,000 open groups (absolute rate).
//!
//! Ratios are printed at the end.

mod common;
use common::record;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::component::FunctionTransform;
use eventflow::event::Batch;
use eventflow::event::{Event, EventData, Finalizers};
use eventflow::stages::aggregate::{AggregateConfig, Aggregator};
use eventflow::stages::dedup::{Dedup, DedupConfig};
use eventflow::stages::rate_limit::{RateLimit, RateLimitConfig};
use eventflow::yaml;

fn cfg<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    yaml::from_node(&yaml::parse(yaml).expect("yaml")).expect("config")
}

const KEYS: usize = 100_000;

fn events(n: usize, groups: usize) -> Vec<Batch> {
    let all: Vec<Event> = (0..n)
        .map(|i| {
            Event::new(
                EventData {
                    cluster: Arc::from("prod"),
                    uid: format!("0b6f3c52-8f0e-4d8a-9d5c-{:012}", i % groups),
                    namespace: "shop".into(),
                    kind: "Pod".into(),
                    object_name: format!("web-{}", i % groups),
                    reason: "BackOff".into(),
                    type_: "Warning".into(),
                    count: i64::try_from(i / groups).expect("small") + 1,
                    message: "Back-off restarting failed container".into(),
                    ..EventData::default()
                },
                Finalizers::None,
            )
        })
        .collect();
    all.chunks(512)
        .map(<[eventflow::event::Event]>::to_vec)
        .collect()
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("0b6f3c52-8f0e-4d8a-9d5c-{i:012}"))
        .collect()
}

fn dedup(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(KEYS as u64));
    let keys = keys();
    let baseline: moka::sync::Cache<String, Instant> = moka::sync::Cache::builder()
        .max_capacity(KEYS as u64 * 2)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .time_to_live(Duration::from_secs(3600))
        .build();
    let now = Instant::now();
    for k in &keys {
        baseline.insert(k.clone(), now);
    }
    g.bench_function("baseline_moka_entry_or_insert", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for k in &keys {
                    let e = baseline.entry_by_ref(k.as_str()).or_insert(now);
                    std::hint::black_box(e.is_fresh());
                }
            }
            let d = start.elapsed();
            record(
                "dedup baseline: moka entry_by_ref().or_insert()",
                KEYS as u64 * iters,
                d,
            );
            d
        });
    });
    let mut stage = Dedup::new(
        &cfg::<DedupConfig>("max_keys: 200000\nwindow: 1h"),
        "d",
        "dedup",
    );
    let batches = events(KEYS, KEYS);
    for b in &batches {
        stage.transform(b.clone());
    }
    g.bench_function("dedup_stage_100k_live_keys", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for batch in &batches {
                    let out = stage.transform(batch.clone());
                    assert!(out.is_empty(), "every key is live: all repeats");
                }
            }
            let d = start.elapsed();
            record("dedup stage (100k live keys)", KEYS as u64 * iters, d);
            d
        });
    });
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    g.throughput(Throughput::Elements(KEYS as u64));
    let keys = keys();
    let quota = governor::Quota::per_second(NonZeroU32::new(1_000_000).expect("nonzero"));
    let baseline = governor::RateLimiter::keyed(quota);
    g.bench_function("baseline_governor_check_key", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for k in &keys {
                    std::hint::black_box(baseline.check_key(k).is_ok());
                }
            }
            let d = start.elapsed();
            record(
                "rate_limit baseline: governor check_key",
                KEYS as u64 * iters,
                d,
            );
            d
        });
    });
    let mut stage = RateLimit::new(
        &cfg::<RateLimitConfig>("key: [uid]\nlimit: 1000000\nper: 1s\nmax_keys: 200000"),
        "r",
        "rate_limit",
    )
    .expect("limiter");
    let batches = events(KEYS, KEYS);
    g.bench_function("rate_limit_stage_100k_keys", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for batch in &batches {
                    let mut out = Vec::with_capacity(batch.len());
                    stage.process(batch.clone(), &mut out);
                    std::hint::black_box(out);
                }
            }
            let d = start.elapsed();
            record("rate_limit stage (100k keys)", KEYS as u64 * iters, d);
            d
        });
    });
    g.finish();
}

fn aggregate(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(KEYS as u64));
    let batches = events(KEYS, 10_000);
    g.bench_function("aggregate_10k_groups", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut a =
                    Aggregator::new(&cfg::<AggregateConfig>("window: 1h"), "a", "aggregate");
                let mut out = Vec::new();
                let start = Instant::now();
                for batch in &batches {
                    a.ingest(batch.clone(), tokio::time::Instant::now(), &mut out);
                }
                a.close_all(&mut out);
                total += start.elapsed();
                assert_eq!(out.len(), 10_000);
            }
            record("aggregate stage (10k groups)", KEYS as u64 * iters, total);
            total
        });
    });
    g.finish();
}

criterion_group!(benches, dedup, rate_limit, aggregate);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    common::summary(
        "keyed stages (one core)",
        &[
            common::ratio(
                "dedup stage / bare moka",
                "dedup stage (100k live keys)",
                "dedup baseline: moka entry_by_ref().or_insert()",
            ),
            common::ratio(
                "rate_limit stage / bare governor",
                "rate_limit stage (100k keys)",
                "rate_limit baseline: governor check_key",
            ),
        ],
    );
}
