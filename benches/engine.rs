//! Engine throughput, one core (a current-thread runtime):
//! - `overhead`: events already in memory -> filter -> counting sink, through the real topology.
//! - `decode`: the real `file` stage reading JSON lines (page-cached) -> filter -> counting
//!   sink, against a baseline of bare `serde_json` decoding of the same lines into the same
//!   type, measured in the same run. The ratio is printed at the end.

mod common;
use common::record;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::component::StageKind;
use eventflow::engine::Topology;
use eventflow::event::{Event, Finalizers, WireEvent};
use eventflow::stages::file::FileConfig;
use eventflow::testkit::{
    ChannelSource, CountingSink, PipelineBuilder, event, filter, source_filter_sink,
};
use eventflow::yaml;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const N: usize = 200_000;

fn overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    // A realistic mix: about half of the events pass the filter.
    let pool: Vec<Vec<Event>> = (0..8)
        .map(|b| {
            (0..512)
                .map(|i| {
                    let mut d = event(&format!("{b}-{i}"));
                    d.type_ = if i % 2 == 0 {
                        "Warning".into()
                    } else {
                        "Normal".into()
                    };
                    Event::new(d, Finalizers::None)
                })
                .collect()
        })
        .collect();
    g.bench_function("overhead_filter_to_counting_sink", |b| {
        b.iter_custom(|iters| {
            let rt = rt();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_overhead(&rt, &pool);
            }
            record(
                "engine overhead (in memory -> filter -> counting sink)",
                N as u64 * iters,
                total,
            );
            total
        });
    });
    // Instrumentation overhead: the same run with a Prometheus recorder installed (every
    // counter, gauge and histogram recorded as in `eventflow run`), interleaved with a run
    // without one (metrics calls are no-ops then).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(eventflow::metrics::BUCKETS)
        .expect("buckets")
        .build_recorder();
    g.bench_function("overhead_with_metrics_recorder", |b| {
        b.iter_custom(|iters| {
            let rt = rt();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let off = run_overhead(&rt, &pool);
                record("metrics off (same run)", N as u64, off);
                let on = metrics::with_local_recorder(&recorder, || run_overhead(&rt, &pool));
                record("metrics on (Prometheus recorder)", N as u64, on);
                total += on;
            }
            total
        });
    });
    g.finish();
}

/// One run of N events through source -> filter -> counting sink.
fn run_overhead(rt: &tokio::runtime::Runtime, pool: &[Vec<Event>]) -> Duration {
    let (src, feed) = ChannelSource::new(8);
    let sink = CountingSink::default();
    let p = source_filter_sink(Arc::new(src), "types: [Warning]", Arc::new(sink.clone()));
    let pool = pool.to_vec();
    rt.block_on(async move {
        let topo = Topology::start(p).await.expect("start");
        let start = Instant::now();
        let mut sent = 0;
        while sent < N {
            for batch in &pool {
                feed.send_plain(batch.clone()).await;
                sent += batch.len();
            }
        }
        drop(feed);
        topo.shutdown(Duration::from_secs(60)).await;
        let d = start.elapsed();
        assert_eq!(usize::try_from(sink.get()).expect("count"), sent / 2);
        d
    })
}

fn sample_lines(n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/samples/events.json"
    ))
    .expect("samples");
    let samples: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    let mut out = Vec::new();
    for i in 0..n {
        let mut e = samples[i % samples.len()].clone();
        e["metadata"]["uid"] = format!("uid-{i}").into();
        out.extend_from_slice(e.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let buf = sample_lines(N);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, &buf).expect("write");
    g.bench_function("baseline_serde_json_lines", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut n = 0usize;
                for line in buf.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                    let e: WireEvent = serde_json::from_slice(line).expect("decode");
                    n += usize::from(e.metadata.uid.is_some());
                }
                assert_eq!(n, N);
            }
            let d = start.elapsed();
            record(
                "bare serde_json into WireEvent (baseline)",
                N as u64 * iters,
                d,
            );
            d
        });
    });
    let file_cfg: Arc<FileConfig> = Arc::new(
        yaml::from_node(&yaml::parse(&format!("path: {}", path.display())).expect("yaml"))
            .expect("file"),
    );
    g.bench_function("file_source_filter_counting_sink", |b| {
        b.iter_custom(|iters| {
            let rt = rt();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let sink = CountingSink::default();
                let p = PipelineBuilder::new()
                    .stage("src", "file", StageKind::Source, &[], file_cfg.clone(), 0)
                    .stage(
                        "f",
                        "filter",
                        StageKind::Transform,
                        &["src"],
                        filter("types: [Warning]"),
                        0,
                    )
                    .stage(
                        "out",
                        "counting",
                        StageKind::Sink,
                        &["f"],
                        Arc::new(sink.clone()),
                        0,
                    )
                    .build();
                total += rt.block_on(async move {
                    let start = Instant::now();
                    let mut topo = Topology::start(p).await.expect("start");
                    while topo.running_sources() > 0 {
                        topo.next_exit().await;
                    }
                    topo.shutdown(Duration::from_secs(60)).await;
                    let d = start.elapsed();
                    assert!(sink.get() > 0);
                    d
                });
            }
            record(
                "file source -> filter -> counting sink",
                N as u64 * iters,
                total,
            );
            total
        });
    });
    g.finish();
}

criterion_group!(benches, overhead, decode);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    common::summary(
        "engine (one core)",
        &[
            common::ratio(
                "metrics on / metrics off",
                "metrics on (Prometheus recorder)",
                "metrics off (same run)",
            ),
            common::ratio(
                "file pipeline / bare serde_json",
                "file source -> filter -> counting sink",
                "bare serde_json into WireEvent (baseline)",
            ),
        ],
    );
}
