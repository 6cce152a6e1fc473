//! The `kube_events` source against a bare `kube::runtime::watcher`, same fake API server, same
//! stream, same run: N pre-created Events listed (pages of 500) over HTTP on 127.0.0.1.
//! - source: `kube_events` -> counting sink, through the engine, until the sink has N events
//!   (decode into the normalized event with the raw JSON kept, dedupe map, batches, acks,
//!   checkpoint writes to `SQLite` in the background);
//! - baseline: `watcher(Api<core::v1::Event>)` until `InitDone` (k8s-openapi decoding).
//!
//! Both share the machine with the fake server, and both use the `eventflow` binary's allocator
//! (mimalloc). The source is timed from the moment its pipeline runs (client built, checkpoint
//! database open). The ratio is printed at the end.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::component::StageKind;
use eventflow::engine::Topology;
use eventflow::stages::kube_events::KubeEventsConfig;
use eventflow::testkit::{CountingSink, PipelineBuilder};
use fake_apiserver::{FakeApiServer, sample_event};
use futures::StreamExt;
use kube::runtime::watcher;

const N: usize = 20_000;

struct Setup {
    fake: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

fn setup(rt: &tokio::runtime::Runtime) -> Setup {
    rt.block_on(async {
        let fake = FakeApiServer::start().await.expect("fake");
        fake.history_len(10);
        for i in 0..N {
            let mut e = sample_event(
                "shop",
                &format!("web-7d4b9c-{i:08}.17d2f9e0a1b2c3d4"),
                "BackOff",
                if i % 3 == 0 { "Normal" } else { "Warning" },
                "Back-off restarting failed container web in pod web-7d4b9c-x2x9q_shop(5f3b0c3e-9d2a-4c4c-9a9a-3b1d2c4e5f60)",
            );
            e["count"] = serde_json::json!(1 + i % 40);
            fake.create("shop", e).expect("create");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        fake.write_kubeconfig(&kubeconfig, None).expect("kubeconfig");
        Setup {
            fake,
            dir,
            kubeconfig,
        }
    })
}

async fn run_source(s: &Setup, n: u64) -> Duration {
    let cfg: KubeEventsConfig =
        serde_json::from_value(serde_json::json!({"kubeconfig": s.kubeconfig})).expect("config");
    let sink = CountingSink::default();
    let state = format!(
        "sqlite://{}",
        s.dir.path().join(format!("state-{n}.db")).display()
    );
    let p = PipelineBuilder::new()
        .stage(
            "k8s",
            "kube_events",
            StageKind::Source,
            &[],
            Arc::new(cfg),
            0,
        )
        .stage(
            "out",
            "counting",
            StageKind::Sink,
            &["k8s"],
            Arc::new(sink.clone()),
            0,
        )
        .state(&state)
        .build();
    // Timed from the moment the pipeline runs (the client and the checkpoint database are set
    // up by then), like the watcher's from its first request.
    let topo = Topology::start(p).await.expect("start");
    let started = Instant::now();
    while sink.get() < N as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let d = started.elapsed();
    topo.shutdown(Duration::from_secs(30)).await;
    d
}

async fn run_bare(s: &Setup) -> Duration {
    let api: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::all(s.fake.client());
    let started = Instant::now();
    let mut w = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut n = 0usize;
    while let Some(ev) = w.next().await {
        match ev {
            Ok(watcher::Event::InitApply(_)) => n += 1,
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
            Err(e) => panic!("watcher error: {e}"),
        }
    }
    assert_eq!(n, N);
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    // One core: the fake server, the client and the pipeline share one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = setup(&rt);
    let mut g = c.benchmark_group("kube");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    let run_no = std::sync::atomic::AtomicU64::new(0);
    // One criterion function; each iteration runs the source and then the bare watcher on the
    // same stream, so that both see the same machine state (this VM drifts between runs).
    g.bench_function("source_then_bare_watcher", |b| {
        b.iter_custom(|iters| {
            common::interleaved(
                &rt,
                iters,
                N as u64,
                ("kube_events source -> counting sink", || {
                    run_source(
                        &s,
                        run_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    )
                }),
                ("bare kube::runtime::watcher", || run_bare(&s)),
            )
        });
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    common::summary(
        &format!("kube_events ({N} Events listed over HTTP)"),
        &[common::ratio(
            "kube_events source / bare watcher",
            "kube_events source -> counting sink",
            "bare kube::runtime::watcher",
        )],
    );
}
