//! The webhook sink against bare reqwest, same local receiver (axum on 127.0.0.1), same bodies,
//! same concurrency (one request at a time: the sink delivers a stage's batches in order), each
//! iteration running both back to back.
//! - one event per request (2,000 events);
//! - 100 events per request (the seed's batch body; 100,000 events).

mod common;
use common::record;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::engine::Topology;
use eventflow::event::{Event, EventData, Finalizers};
use eventflow::stages::StageKind;
use eventflow::stages::webhook::{WebhookConfig, body};
use eventflow::testkit::{ChannelSource, PipelineBuilder};

fn data(i: usize) -> EventData {
    EventData {
        cluster: Arc::from("prod"),
        uid: format!("0b6f3c52-8f0e-4d8a-9d5c-{i:012}"),
        name: format!("web-7d4b9c-{i:08}.17d2f9e0a1b2c3d4"),
        namespace: "shop".into(),
        resource_version: (48_000_000 + i).to_string(),
        type_: "Warning".into(),
        reason: "BackOff".into(),
        message: "Back-off restarting failed container web in pod web-7d4b9c-x2x9q_shop(5f3b0c3e-9d2a-4c4c-9a9a-3b1d2c4e5f60)".into(),
        kind: "Pod".into(),
        object_name: format!("web-7d4b9c-{i:08}"),
        count: 3,
        ..EventData::default()
    }
}

async fn receiver(hits: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().fallback(move |_body: axum::body::Bytes| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    url
}

async fn run_sink(url: &str, events: usize, per_request: usize) -> Duration {
    let cfg: WebhookConfig = serde_json::from_value(serde_json::json!({
        "url": url,
        "batch": {"max_events": per_request, "max_wait": "50ms"},
    }))
    .expect("config");
    let (src, feed) = ChannelSource::new(8);
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "hook",
            "webhook",
            StageKind::Sink,
            &["src"],
            Arc::new(cfg),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    let started = Instant::now();
    let mut acks = Vec::new();
    for chunk in (0..events).collect::<Vec<_>>().chunks(per_request.max(500)) {
        acks.push(feed.send(chunk.iter().map(|i| data(*i)).collect()).await);
    }
    for a in acks {
        let _ = a.await;
    }
    let d = started.elapsed();
    topo.shutdown(Duration::from_secs(30)).await;
    d
}

async fn run_bare(
    client: &reqwest::Client,
    url: &str,
    events: usize,
    per_request: usize,
) -> Duration {
    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(per_request) {
        let evs: Vec<Event> = chunk
            .iter()
            .map(|i| Event::new(data(*i), Finalizers::None))
            .collect();
        let b = body(&evs, per_request > 1).expect("body");
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(b)
            .send()
            .await
            .expect("send");
        assert!(r.status().is_success());
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hits = Arc::new(AtomicU64::new(0));
    let url = rt.block_on(receiver(hits.clone()));
    let client = reqwest::Client::new();
    let mut g = c.benchmark_group("webhook");
    g.sample_size(10);
    for (events, per) in [(2_000usize, 1usize), (100_000, 100)] {
        g.throughput(Throughput::Elements(events as u64));
        g.bench_function(format!("{per}_per_request"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let d = run_sink(&url, events, per).await;
                        record(format!("webhook sink, {per} per request"), events as u64, d);
                        let b = run_bare(&client, &url, events, per).await;
                        record(format!("bare reqwest, {per} per request"), events as u64, b);
                        total += d;
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    let ratios: Vec<_> = [1, 100]
        .iter()
        .map(|per| {
            common::ratio(
                &format!("webhook sink / bare reqwest, {per} per request"),
                &format!("webhook sink, {per} per request"),
                &format!("bare reqwest, {per} per request"),
            )
        })
        .collect();
    common::summary("webhook (sequential requests to a local receiver)", &ratios);
}
