//! `enrich` over 100,000 cached Pods (each owned by a ReplicaSet owned by a Deployment, in 100
//! labelled namespaces): the time it adds per event to a pipeline that filters by namespace,
//! against the same pipeline without it (filter by namespace name), same events, same run.
//! Also the memory per cached object (resident set size before and after filling the cache).
//!
//! `cargo bench --bench enrich`; `ENRICH_BENCH_LABELS=unique cargo bench --bench enrich` gives
//! every Pod a label value of its own (the memory figure without shared label maps).

mod common;
use common::record;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::event::{Event, EventData, Finalizers, Labels};
use eventflow::stages::enrich::cache::Meta;
use eventflow::stages::enrich::{EnrichConfig, Enricher, kind_index};
use eventflow::stages::filter::{FilterConfig, Matcher};
use eventflow::yaml;

fn cfg<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    yaml::from_node(&yaml::parse(yaml).expect("yaml")).expect("config")
}

const PODS: usize = 100_000;
const NAMESPACES: usize = 100;
const WORKLOADS: usize = 1_000;

fn labels(pairs: &[(&str, String)]) -> Arc<Labels> {
    Arc::new(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
    )
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// An enricher whose cache holds every object, every kind listed. With `unique`, every Pod
/// has a label of its own (as StatefulSet Pods do); otherwise the Pods of one workload share
/// their labels (as Deployment Pods do).
fn filled(unique: bool) -> (Enricher, usize) {
    let e = Enricher::new(
        &cfg::<EnrichConfig>("max_objects: 200000\n"),
        "bench",
        "prod".into(),
    );
    let c = e.cache();
    let kind = |k: &str| kind_index(k).expect("known kind");
    for k in ["Namespace", "Pod", "ReplicaSet", "Deployment"] {
        c.start(kind(k));
    }
    let before = rss_kb();
    for n in 0..NAMESPACES {
        c.put(
            kind("Namespace"),
            "",
            &format!("ns-{n}"),
            Meta {
                labels: Some(labels(&[("team", format!("team-{}", n % 10))])),
                ..Meta::default()
            },
        );
    }
    for w in 0..WORKLOADS {
        let ns = format!("ns-{}", w % NAMESPACES);
        c.put(
            kind("Deployment"),
            &ns,
            &format!("app-{w}"),
            Meta {
                labels: Some(labels(&[("app", format!("app-{w}"))])),
                ..Meta::default()
            },
        );
        c.put(
            kind("ReplicaSet"),
            &ns,
            &format!("app-{w}-7d9f4c"),
            Meta {
                labels: Some(labels(&[("app", format!("app-{w}"))])),
                controller: Some(("Deployment".into(), format!("app-{w}").into())),
                ..Meta::default()
            },
        );
    }
    for p in 0..PODS {
        let w = p % WORKLOADS;
        c.put(
            kind("Pod"),
            &format!("ns-{}", w % NAMESPACES),
            &format!("app-{w}-7d9f4c-{p:05}"),
            Meta {
                labels: Some(labels(&[
                    ("app", format!("app-{w}")),
                    (
                        "pod-template-hash",
                        if unique {
                            format!("{p:05}")
                        } else {
                            "7d9f4c".into()
                        },
                    ),
                    ("tier", "backend".into()),
                ])),
                controller: Some(("ReplicaSet".into(), format!("app-{w}-7d9f4c").into())),
                ..Meta::default()
            },
        );
    }
    for k in ["Namespace", "Pod", "ReplicaSet", "Deployment"] {
        c.end_list(kind(k));
    }
    let objects = c.len();
    let grown = rss_kb().saturating_sub(before);
    println!(
        "enrich cache: {objects} objects, resident set grew by {grown} kB: {} bytes per object (3 labels per Pod, 1 per workload; {})",
        grown * 1024 / objects as u64,
        if unique {
            "every Pod's labels differ"
        } else {
            "the Pods of a workload share theirs"
        }
    );
    (e, objects)
}

/// 100,000 events, one per Pod, in batches of 512 (new each time: an event from a source is
/// the only copy of its data, so enrich sets its fields in place).
fn batches() -> Vec<Vec<Event>> {
    let all: Vec<Event> = (0..PODS)
        .map(|p| {
            let w = p % WORKLOADS;
            let ns = format!("ns-{}", w % NAMESPACES);
            Event::new(
                EventData {
                    cluster: Arc::from("prod"),
                    uid: format!("0b6f3c52-8f0e-4d8a-9d5c-{p:012}"),
                    namespace: ns.clone(),
                    object_namespace: ns,
                    kind: "Pod".into(),
                    object_name: format!("app-{w}-7d9f4c-{p:05}"),
                    reason: "BackOff".into(),
                    type_: "Warning".into(),
                    message: "Back-off restarting failed container".into(),
                    ..EventData::default()
                },
                Finalizers::None,
            )
        })
        .collect();
    let mut out = Vec::new();
    let mut it = all.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(512).collect());
    }
    out
}

fn enrich(c: &mut Criterion) {
    // One fill per process, so that its resident set growth is its own.
    let unique = std::env::var("ENRICH_BENCH_LABELS").is_ok_and(|v| v == "unique");
    let (enricher, _) = filled(unique);
    let by_label = Matcher::new(&cfg::<FilterConfig>(
        "namespace_labels: {team: [team-1, team-2]}\n",
    ));
    let names: Vec<String> = (0..NAMESPACES)
        .filter(|n| matches!(n % 10, 1 | 2))
        .map(|n| format!("ns-{n}"))
        .collect();
    let by_name = Matcher::new(&cfg::<FilterConfig>(&format!(
        "namespaces: [{}]\n",
        names.join(", ")
    )));
    let mut g = c.benchmark_group("enrich");
    g.throughput(Throughput::Elements(PODS as u64));
    g.sample_size(20);
    g.bench_function("filter_by_namespace_label_after_enrich", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let input = batches();
                let mut start = Vec::new();
                let t = Instant::now();
                let mut kept = 0;
                for batch in input {
                    let (out, tally) = enricher.enrich_now(batch, &mut start);
                    assert_eq!(tally.enriched, out.len() as u64);
                    kept += out.iter().filter(|e| by_label.keep(e)).count();
                    for e in out {
                        e.discard();
                    }
                }
                let d = t.elapsed();
                assert_eq!(kept, PODS / 5);
                record("enrich + filter by namespace label", PODS as u64, d);
                total += d;
                // The same pipeline without enrich, the same events.
                let input = batches();
                let t = Instant::now();
                let mut kept = 0;
                for batch in input {
                    kept += batch.iter().filter(|e| by_name.keep(e)).count();
                    for e in batch {
                        e.discard();
                    }
                }
                record(
                    "filter by namespace name (no enrich)",
                    PODS as u64,
                    t.elapsed(),
                );
                assert_eq!(kept, PODS / 5);
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, enrich);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    common::summary(
        "enrich (one core)",
        &[common::ratio(
            "with enrich / without",
            "enrich + filter by namespace label",
            "filter by namespace name (no enrich)",
        )],
    );
}
