//! Time from a reload trigger to the new pipeline running: read and validate the file, diff,
//! build the changed stage, rewire, spawn. A 10-stage pipeline in which one middle stage
//! changes on every reload (the debounce, a fixed wait before this, is not included).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use eventflow::engine::Topology;

fn pipeline(events: &std::path::Path, v: usize) -> String {
    let mut s = format!(
        "stages:\n  src:\n    type: file\n    path: {}\n    follow: true\n",
        events.display()
    );
    let mut prev = "src".to_string();
    for i in 1..=7 {
        let types = if i == 4 && v % 2 == 1 {
            "[Warning]"
        } else {
            "[Warning, Normal]"
        };
        s += &format!("  f{i}:\n    type: filter\n    inputs: [{prev}]\n    types: {types}\n");
        prev = format!("f{i}");
    }
    s += &format!("  d:\n    type: dedup\n    inputs: [{prev}]\n    window: 1m\n");
    s += "  out:\n    type: stdout\n    inputs: [d]\n";
    s
}

fn reload(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "").expect("events");
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, pipeline(&events, 0)).expect("write");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut topo = rt.block_on(async {
        Topology::start(eventflow::load_file(&path).expect("load"))
            .await
            .expect("start")
    });
    assert_eq!(topo.pipeline().stages.len(), 10);
    let mut v = 0;
    let mut worst = Duration::ZERO;
    c.bench_function("reload_10_stages_one_changed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                v += 1;
                std::fs::write(&path, pipeline(&events, v)).expect("write");
                let start = Instant::now();
                let outcome = rt.block_on(eventflow::run::reload(&mut topo, Some(&path), "bench"));
                let d = start.elapsed();
                assert_eq!(outcome.label(), "applied");
                worst = worst.max(d);
                total += d;
            }
            total
        });
    });
    println!("worst reload seen: {worst:?}");
    rt.block_on(async { topo.shutdown(Duration::from_secs(10)).await });
}

criterion_group!(benches, reload);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
