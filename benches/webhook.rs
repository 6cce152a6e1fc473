//! The webhook sink against bare reqwest, same local receiver (the tests' axum one, on a
//! thread of its own), same bodies,
//! same concurrency (`max_in_flight` requests at once on both sides), each iteration running
//! both back to back.
//! - one event per request, one in flight (2,000 events);
//! - 100 events per request (the seed's batch body; 100,000 events), 1 and 4 in flight;
//! - the same with `durable: true` (`SQLite` queue in a temporary directory), 4 in flight;
//! - draining a durable backlog: 100,000 events already queued (receiver down when they came)
//!   delivered 100 per request, 4 in flight, against the in-memory sink in the same run; on
//!   `SQLite`, and on PostgreSQL when `EVENTFLOW_TEST_POSTGRES_URL` is set (said on stderr when
//!   it is not).

mod common;
#[path = "../tests/support/receiver.rs"]
mod receiver;

use receiver::Receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::engine::Topology;
use eventflow::event::{Event, EventData, Finalizers};
use eventflow::stages::webhook::{WebhookConfig, body};
use eventflow::testkit::{ChannelSource, source_to_sink};
use futures::StreamExt;

/// Event `i` of a bench: one of 1,000 different ones ([`made`]) under a uid and
/// resourceVersion of its own — a clone, so that making events costs the sinks' side of
/// a comparison little.
fn data(i: usize) -> EventData {
    static POOL: std::sync::OnceLock<Vec<EventData>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| (0..1000).map(made).collect());
    let mut e = pool[i % pool.len()].clone();
    e.uid.truncate(24);
    e.uid.push_str(&format!("{i:012x}"));
    e.resource_version = (48_000_000 + i).to_string();
    e
}

/// The bench events' type, reason and reporting component, in turn.
const REASONS: [(&str, &str, &str); 5] = [
    ("Warning", "BackOff", "kubelet"),
    ("Normal", "Pulled", "kubelet"),
    ("Normal", "Scheduled", "default-scheduler"),
    ("Warning", "FailedScheduling", "default-scheduler"),
    ("Warning", "Unhealthy", "kubelet"),
];

/// A pod's Event as a busy cluster has them, each different where real ones differ (uids,
/// names, times, counts, the pod, image or node in the message, reason by reason), without
/// `raw` (a kube source keeps it only for a stage that reads it; a `json` body does not). A row
/// of 100 packs a little less tightly than the real Events of `tests/data` do (the drain cases
/// print how tightly).
fn made(i: usize) -> EventData {
    // SplitMix64: three different, repeatable draws per event.
    let mut state = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let [a, b, c] = [(); 3].map(|()| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = state;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    });
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        a & 0xffff,
        (b >> 52) & 0xfff,
        (b >> 40) & 0xfff,
        c & 0xffff_ffff_ffff
    );
    let namespaces = ["shop", "payments", "search", "kube-system", "monitoring"];
    let apps = [
        "web", "api", "worker", "cart", "checkout", "indexer", "exporter",
    ];
    let ns = namespaces[(a % 5) as usize];
    let app = apps[(b % 7) as usize];
    let pod = format!("{app}-{:08x}-{:05x}", c >> 32, b & 0xfffff);
    let node = format!("gke-prod-pool-{:x}-{:04x}", a % 3, (c >> 8) & 0xffff);
    let (type_, reason, source) = REASONS[i % REASONS.len()];
    let message = match reason {
        "BackOff" => format!("Back-off restarting failed container {app} in pod {pod}_{ns}({uid})"),
        "Pulled" => format!(
            "Successfully pulled image \"registry.example.com/{ns}/{app}:1.{}.{}\" in {}.{}s (including waiting)",
            a % 40,
            b % 10,
            c % 20,
            a % 1000
        ),
        "Scheduled" => format!("Successfully assigned {ns}/{pod} to {node}"),
        "FailedScheduling" => format!(
            "0/{} nodes are available: {} Insufficient cpu, {} node(s) had untolerated taint {{dedicated: batch}}. preemption: 0/{} nodes are available.",
            12 + a % 20,
            a % 7,
            b % 5,
            12 + a % 20
        ),
        _ => format!(
            "Readiness probe failed: Get \"http://10.{}.{}.{}:8080/healthz\": context deadline exceeded",
            a % 256,
            b % 256,
            c % 256
        ),
    };
    let name = format!("{pod}.{:016x}", a ^ c);
    let rv = (48_000_000 + i).to_string();
    let seen = chrono::DateTime::from_timestamp(1_796_000_000 + i64::try_from(i).unwrap_or(0), 0)
        .unwrap_or_default();
    let first = seen - chrono::Duration::seconds(i64::try_from(c % 3600).unwrap_or(0));
    let count = i64::try_from(1 + a % 40).unwrap_or(1);
    let object_uid = format!("{b:016x}{c:016x}");
    EventData {
        cluster: Arc::from("prod"),
        uid,
        name,
        namespace: ns.into(),
        resource_version: rv,
        type_: type_.into(),
        reason: reason.into(),
        message,
        kind: "Pod".into(),
        object_name: pod,
        object_namespace: ns.into(),
        object_uid,
        field_path: format!("spec.containers{{{app}}}"),
        source: source.into(),
        host: node,
        count,
        first_seen: Some(first),
        last_seen: Some(seen),
        ..EventData::default()
    }
}

/// The events in a batch body (its `count`; meaningless for single events, which carry their
/// own `count`).
fn events_in(body: &[u8]) -> u64 {
    body.windows(8)
        .rposition(|w| w == b"\"count\":")
        .and_then(|at| {
            let digits: Vec<u8> = body[at + 8..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            std::str::from_utf8(&digits).ok()?.parse::<u64>().ok()
        })
        .unwrap_or(1)
}

/// One benchmark case.
#[derive(Clone, Copy)]
struct Case {
    events: usize,
    per_request: usize,
    in_flight: usize,
    durable: bool,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}{} per request, {} in flight",
            if self.durable { "durable, " } else { "" },
            self.per_request,
            self.in_flight
        )
    }
}

async fn run_sink(url: &str, case: Case, hits: &Receiver) -> Duration {
    let Case {
        events,
        per_request,
        in_flight,
        durable,
    } = case;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg: WebhookConfig = serde_json::from_value(serde_json::json!({
        "url": url,
        "batch": {"max_events": per_request, "max_wait": "50ms"},
        "max_in_flight": in_flight,
        "durable": durable,
    }))
    .expect("config");
    let (src, feed) = ChannelSource::new(8);
    let p = source_to_sink(Arc::new(src), "hook", "webhook", Arc::new(cfg), 0)
        .state(&format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
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
    if durable {
        // Acknowledged once queued: wait for the receiver to have everything.
        while hits.tallied() < events as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let d = started.elapsed();
    topo.shutdown(Duration::from_secs(30)).await;
    d
}

/// The pipeline of the drain case: a durable webhook to `url` whose queue is in the state
/// database `state` (100 per request, 4 in flight), and the feed of its source.
fn durable_pipeline(
    url: &str,
    state: &str,
) -> (eventflow::config::Pipeline, eventflow::testkit::Feeder) {
    let cfg: WebhookConfig = serde_json::from_value(serde_json::json!({
        "url": url,
        "batch": {"max_events": 100, "max_wait": "50ms"},
        "max_in_flight": 4,
        "durable": true,
        "max_queued": BACKLOG * 2,
    }))
    .expect("config");
    let (src, feed) = ChannelSource::new(8);
    let p = source_to_sink(Arc::new(src), "hook", "webhook", Arc::new(cfg), 0)
        .state(state)
        .build();
    (p, feed)
}

fn sqlite_state(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("state.db").display())
}

const BACKLOG: usize = 100_000;

/// A state database with `BACKLOG` events queued: fed to a durable webhook whose receiver is
/// down (nothing listens on its port), then stopped.
fn backlog(rt: &tokio::runtime::Runtime) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let state = sqlite_state(dir.path());
    rt.block_on(fill(&state));
    rt.block_on(packing(&state));
    dir
}

/// Says how tightly the backlog's rows are packed (their packed bytes against the events'
/// text and spans they unpack to).
async fn packing(state: &str) {
    let pool = sqlx::SqlitePool::connect(state).await.expect("state");
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT packed FROM eventflow_webhook_queue")
        .fetch_all(&pool)
        .await
        .expect("rows");
    pool.close().await;
    let packed: usize = rows.iter().map(|(p,)| p.len()).sum();
    let unpacked: usize = rows
        .iter()
        .map(|(p,)| {
            let (text, spans) = eventflow::stages::webhook::queue::unpack(p).expect("unpacks");
            text.len() + 1 + spans.len()
        })
        .sum();
    eprintln!(
        "backlog: {} rows, {unpacked} bytes of events and spans packed into {packed} ({:.1}x)",
        rows.len(),
        unpacked as f64 / packed.max(1) as f64
    );
}

/// Queues `BACKLOG` events in the state database `state` (the receiver down).
async fn fill(state: &str) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = format!("http://{}/hook", closed.local_addr().expect("address"));
    drop(closed);
    let (p, feed) = durable_pipeline(&down, state);
    let topo = Topology::start(p).await.expect("start");
    let mut acks = Vec::new();
    for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(500) {
        acks.push(feed.send(chunk.iter().map(|i| data(*i)).collect()).await);
    }
    for a in acks {
        let _ = a.await;
    }
    topo.shutdown(Duration::from_secs(30)).await;
}

/// Drains a copy of the backlog in `template`: from the sink's start to the last event
/// received.
async fn run_drain(url: &str, template: &std::path::Path, hits: &Receiver) -> Duration {
    let dir = tempfile::tempdir().expect("tmp");
    for f in std::fs::read_dir(template).expect("backlog") {
        let f = f.expect("entry");
        std::fs::copy(f.path(), dir.path().join(f.file_name())).expect("copy the backlog");
    }
    drain(url, &sqlite_state(dir.path()), hits).await
}

/// Queues a backlog in PostgreSQL (not timed; the sink's rows left by an interrupted run are
/// removed first), then drains it (timed).
async fn run_drain_postgres(url: &str, pg: &str, hits: &Receiver) -> Duration {
    let pool = sqlx::PgPool::connect(pg).await.expect("postgres");
    let clear = format!(
        "DELETE FROM {} WHERE sink = 'hook'",
        eventflow::stages::webhook::queue::QUEUE
    );
    // The table does not exist before the first fill.
    let _ = sqlx::query(sqlx::AssertSqlSafe(clear)).execute(&pool).await;
    pool.close().await;
    fill(pg).await;
    drain(url, pg, hits).await
}

/// Where a drain case's backlog comes from.
#[derive(Clone, Copy)]
enum Backlog<'a> {
    /// A copy of the `SQLite` state directory made by [`backlog`].
    Sqlite(&'a std::path::Path),
    /// Queued anew in this PostgreSQL database each time.
    Postgres(&'a str),
}

async fn run_backlog(url: &str, backlog: Backlog<'_>, hits: &Receiver) -> Duration {
    match backlog {
        Backlog::Sqlite(template) => run_drain(url, template, hits).await,
        Backlog::Postgres(pg) => run_drain_postgres(url, pg, hits).await,
    }
}

/// Starts the durable sink on a queued backlog in `state`: the time to the last event received.
async fn drain(url: &str, state: &str, hits: &Receiver) -> Duration {
    hits.reset_tally();
    let started = Instant::now();
    // The feed stays open: the source does not end while the backlog drains.
    let (p, _feed) = durable_pipeline(url, state);
    let topo = Topology::start(p).await.expect("start");
    while hits.tallied() < BACKLOG as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let d = started.elapsed();
    topo.shutdown(Duration::from_secs(30)).await;
    d
}

async fn run_bare(client: &reqwest::Client, url: &str, case: Case) -> Duration {
    let started = Instant::now();
    let ids: Vec<usize> = (0..case.events).collect();
    futures::stream::iter(ids.chunks(case.per_request))
        .map(|chunk| async move {
            let evs: Vec<Event> = chunk
                .iter()
                .map(|i| Event::new(data(*i), Finalizers::None))
                .collect();
            let b = body(&evs, case.per_request > 1).expect("body");
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(b)
                .send()
                .await
                .expect("send");
            assert!(r.status().is_success());
        })
        .buffer_unordered(case.in_flight)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

const CASES: [Case; 4] = [
    Case {
        events: 2_000,
        per_request: 1,
        in_flight: 1,
        durable: false,
    },
    Case {
        events: 100_000,
        per_request: 100,
        in_flight: 1,
        durable: false,
    },
    Case {
        events: 100_000,
        per_request: 100,
        in_flight: 4,
        durable: false,
    },
    Case {
        events: 100_000,
        per_request: 100,
        in_flight: 4,
        durable: true,
    },
];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (hits, url) = Receiver::tallying(events_in);
    let client = reqwest::Client::new();
    let mut g = c.benchmark_group("webhook");
    g.sample_size(10);
    for case in CASES {
        let name = case.name();
        g.throughput(Throughput::Elements(case.events as u64));
        g.bench_function(name.replace([',', ' '], "_"), |b| {
            b.iter_custom(|iters| {
                let (sink, bare) = (
                    format!("webhook sink, {name}"),
                    format!("bare reqwest, {name}"),
                );
                common::interleaved(
                    &rt,
                    iters,
                    case.events as u64,
                    (&sink, || {
                        hits.reset_tally();
                        run_sink(&url, case, &hits)
                    }),
                    (&bare, || run_bare(&client, &url, case)),
                )
            });
        });
    }
    let template = backlog(&rt);
    let in_memory = CASES[2];
    g.throughput(Throughput::Elements(BACKLOG as u64));
    // A drain (`drain`, timed by itself) against the in-memory sink, interleaved.
    let mut drain_case = |id: &str, names: (&str, &str), backlog: Backlog<'_>| {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                common::interleaved(
                    &rt,
                    iters,
                    BACKLOG as u64,
                    (names.0, || run_backlog(&url, backlog, &hits)),
                    (names.1, || {
                        hits.reset_tally();
                        run_sink(&url, in_memory, &hits)
                    }),
                )
            });
        });
    };
    drain_case(
        "durable_drain_of_a_100000_event_backlog_100_per_request_4_in_flight",
        (DRAIN, IN_MEMORY_SAME_RUN),
        Backlog::Sqlite(template.path()),
    );
    match std::env::var("EVENTFLOW_TEST_POSTGRES_URL") {
        Ok(pg) => drain_case(
            "durable_drain_postgres_of_a_100000_event_backlog_100_per_request_4_in_flight",
            (DRAIN_PG, IN_MEMORY_SAME_RUN_PG),
            Backlog::Postgres(&pg),
        ),
        Err(_) => {
            eprintln!(
                "SKIPPED: the PostgreSQL drain case (EVENTFLOW_TEST_POSTGRES_URL is not set)"
            );
        }
    }
    g.finish();
}

const DRAIN_PG: &str = "durable backlog drained (PostgreSQL queue), 100 per request, 4 in flight";
const IN_MEMORY_SAME_RUN_PG: &str =
    "in-memory sink (same run as the PostgreSQL drain), 100 per request, 4 in flight";
const DRAIN: &str = "durable backlog drained, 100 per request, 4 in flight";
const IN_MEMORY_SAME_RUN: &str =
    "in-memory sink (same run as the drain), 100 per request, 4 in flight";

criterion_group!(benches, bench);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    let ratios: Vec<_> = CASES
        .iter()
        .map(|c| {
            let name = c.name();
            common::ratio(
                &format!("webhook sink / bare reqwest, {name}"),
                &format!("webhook sink, {name}"),
                &format!("bare reqwest, {name}"),
            )
        })
        .chain([
            common::ratio(
                "durable backlog drained / in-memory sink",
                DRAIN,
                IN_MEMORY_SAME_RUN,
            ),
            common::ratio(
                "durable backlog drained (PostgreSQL) / in-memory sink",
                DRAIN_PG,
                IN_MEMORY_SAME_RUN_PG,
            ),
        ])
        .collect();
    common::summary("webhook (requests to a local receiver)", &ratios);
}
