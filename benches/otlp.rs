//! The otlp sink against a bare tonic client sending the same requests (built beforehand with
//! the sink's own mapping, so the baseline pays nothing for it), to the same local gRPC receiver
//! (tonic, on this machine), same batches (512 records), same concurrency (2 in flight), gzip
//! on both sides; each iteration runs both back to back.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::engine::Topology;
use eventflow::event::EventData;
use eventflow::stages::otlp::{OtlpConfig, mapping};
use eventflow::testkit::{ChannelSource, source_to_sink};
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tonic::codec::CompressionEncoding;

const EVENTS: usize = 100_000;
const PER_REQUEST: usize = 512;
const IN_FLIGHT: usize = 2;

/// A receiver that decodes each request and counts its records.
struct Counting(Arc<AtomicU64>);

#[tonic::async_trait]
impl LogsService for Counting {
    async fn export(
        &self,
        r: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let n: usize = r
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A realistic core/v1 Event, as the API server sends it (the sink reads the object as
/// received for the fields the normalized event lacks).
fn data(i: usize) -> EventData {
    let json = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("web-7d4b9c-{i:08}.17d2f9e0a1b2c3d4"), "namespace": "shop",
                     "uid": format!("0b6f3c52-8f0e-4d8a-9d5c-{i:012}"), "resourceVersion": (48_000_000 + i).to_string(),
                     "creationTimestamp": "2026-03-02T10:01:10Z"},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": format!("web-7d4b9c-{i:08}"),
                           "uid": "5f3b0c3e-9d2a-4c4c-9a9a-3b1d2c4e5f60", "apiVersion": "v1", "resourceVersion": "912345",
                           "fieldPath": "spec.containers{web}"},
        "reason": "BackOff",
        "message": "Back-off restarting failed container web in pod web-7d4b9c-x2x9q_shop(5f3b0c3e-9d2a-4c4c-9a9a-3b1d2c4e5f60)",
        "source": {"component": "kubelet", "host": "worker-3"},
        "firstTimestamp": "2026-03-02T10:01:10Z", "lastTimestamp": "2026-03-02T10:09:42Z",
        "count": 3, "type": "Warning", "reportingComponent": "kubelet", "reportingInstance": "worker-3"
    })
    .to_string();
    eventflow::event::decode(&json, &Arc::from("prod")).expect("event")
}

async fn run_sink(addr: SocketAddr, events: &[EventData], got: &AtomicU64) -> Duration {
    let cfg: OtlpConfig = serde_json::from_value(serde_json::json!({
        "endpoint": format!("http://{addr}"),
        "batch": {"max_events": PER_REQUEST, "max_wait": "50ms"},
        "max_in_flight": IN_FLIGHT,
    }))
    .expect("config");
    let (src, feed) = ChannelSource::new(8);
    let p = source_to_sink(Arc::new(src), "otel", "otlp", Arc::new(cfg), 0).build();
    let topo = Topology::start(p).await.expect("start");
    let before = got.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut acks = Vec::new();
    for chunk in events.chunks(PER_REQUEST) {
        acks.push(feed.send(chunk.to_vec()).await);
    }
    for a in acks {
        let _ = a.await;
    }
    let d = started.elapsed();
    assert_eq!(got.load(Ordering::Relaxed) - before, events.len() as u64);
    topo.shutdown(Duration::from_secs(30)).await;
    d
}

async fn run_bare(addr: SocketAddr, requests: &[ExportLogsServiceRequest]) -> Duration {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let client = LogsServiceClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let started = Instant::now();
    futures::stream::iter(requests.iter().cloned())
        .map(|r| {
            let mut c = client.clone();
            async move { c.export(r).await.expect("export") }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|_| async {})
        .await;
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let got = Arc::new(AtomicU64::new(0));
    let addr = rt.block_on(async {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind");
        let addr = incoming.local_addr().expect("addr");
        let svc = LogsServiceServer::new(Counting(got.clone()))
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming),
        );
        addr
    });
    let events: Vec<EventData> = (0..EVENTS).map(data).collect();
    // The baseline's requests: the sink's own mapping of the same events, built beforehand.
    let cfg: OtlpConfig =
        serde_json::from_value(serde_json::json!({"endpoint": "http://x"})).expect("config");
    let now = chrono::Utc::now();
    let requests: Vec<ExportLogsServiceRequest> = events
        .chunks(PER_REQUEST)
        .map(|chunk| {
            mapping::request(
                chunk
                    .iter()
                    .map(|e| mapping::map(e, now, &cfg).expect("map"))
                    .collect(),
            )
        })
        .collect();
    let mut g = c.benchmark_group("otlp");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("grpc_512_per_request_2_in_flight", |b| {
        b.iter_custom(|iters| {
            common::interleaved(
                &rt,
                iters,
                EVENTS as u64,
                ("otlp sink", || run_sink(addr, &events, &got)),
                ("bare tonic client", || run_bare(addr, &requests)),
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
        "otlp sink / bare tonic client",
        "otlp sink",
        "bare tonic client",
    )];
    common::summary("otlp (gRPC exports, gzip)", &ratios);
}
