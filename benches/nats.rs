//! The nats sink against bare async-nats, same `nats-server -js` (started here, on a free port,
//! store in a temporary directory), same payloads (the event as JSON) and `Nats-Msg-Id`
//! headers, same pipelining (a batch of publishes, then its acknowledgements; as many batches
//! in flight on both sides), each iteration running both back to back. Every iteration
//! publishes new event versions, so JetStream stores every message (no duplicates).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::engine::Topology;
use eventflow::event::{Event, EventData, Finalizers};
use eventflow::stages::nats::NatsConfig;
use eventflow::stages::webhook::delivery_id;
use eventflow::testkit::{ChannelSource, source_to_sink};
use futures::StreamExt;

const EVENTS: usize = 50_000;
const BATCH: usize = 256;
const IN_FLIGHT: usize = 2;

/// Distinct resource versions per run.
static RUN: AtomicUsize = AtomicUsize::new(0);

fn data(run: usize, i: usize) -> EventData {
    EventData {
        cluster: Arc::from("prod"),
        uid: format!("0b6f3c52-8f0e-4d8a-9d5c-{i:012}"),
        name: format!("web-7d4b9c-{i:08}.17d2f9e0a1b2c3d4"),
        namespace: "shop".into(),
        resource_version: format!("{run}-{i}"),
        type_: "Warning".into(),
        reason: "BackOff".into(),
        message: "Back-off restarting failed container web in pod web-7d4b9c-x2x9q_shop(5f3b0c3e-9d2a-4c4c-9a9a-3b1d2c4e5f60)".into(),
        kind: "Pod".into(),
        object_name: format!("web-7d4b9c-{i:08}"),
        count: 3,
        ..EventData::default()
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_sink(url: &str) -> Duration {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let cfg: NatsConfig = serde_json::from_value(serde_json::json!({
        "url": url, "stream": "EVENTS",
        "batch": {"max_events": BATCH, "max_wait": "5ms"},
        "max_in_flight": IN_FLIGHT,
    }))
    .expect("config");
    let (src, feed) = ChannelSource::new(8);
    let p = source_to_sink(Arc::new(src), "bus", "nats", Arc::new(cfg), 0).build();
    let topo = Topology::start(p).await.expect("start");
    let started = Instant::now();
    let mut acks = Vec::new();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(1000) {
        acks.push(
            feed.send(chunk.iter().map(|i| data(run, *i)).collect())
                .await,
        );
    }
    for a in acks {
        let _ = a.await;
    }
    let d = started.elapsed();
    topo.shutdown(Duration::from_secs(30)).await;
    d
}

async fn run_bare(js: &async_nats::jetstream::Context) -> Duration {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let ids: Vec<usize> = (0..EVENTS).collect();
    futures::stream::iter(ids.chunks(BATCH))
        .map(|chunk| async move {
            let mut acks = Vec::with_capacity(chunk.len());
            for i in chunk {
                let e = Event::new(data(run, *i), Finalizers::None);
                let payload = eventflow::event::to_json(&e, false).expect("json");
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    "Nats-Msg-Id",
                    delivery_id(std::slice::from_ref(&e)).as_str(),
                );
                acks.push(
                    js.publish_with_headers("eventflow.prod.shop.Warning", h, payload.into())
                        .await
                        .expect("publish"),
                );
            }
            for a in acks {
                assert!(!a.await.expect("ack").duplicate);
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let _server = Server(
        Command::new("/usr/sbin/nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (bash .ci/services.sh installs it)"),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let js = rt.block_on(async {
        let client = loop {
            if let Ok(c) = async_nats::connect(&url).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["eventflow.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("stream");
        js
    });
    let mut g = c.benchmark_group("nats");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("publish_256_per_batch_2_in_flight", |b| {
        b.iter_custom(|iters| {
            common::interleaved(
                &rt,
                iters,
                EVENTS as u64,
                ("nats sink", || run_sink(&url)),
                ("bare async-nats", || run_bare(&js)),
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
    let ratios = vec![common::ratio(
        "nats sink / bare async-nats",
        "nats sink",
        "bare async-nats",
    )];
    common::summary("nats (JetStream publishes with acknowledgements)", &ratios);
}
