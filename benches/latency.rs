//! Alert latency, end to end: from the moment an Event is written to the (fake) API server to
//! the moment its webhook request arrives at a local receiver.
//!
//! The pipeline is `kube_events -> filter (Warnings) -> webhook`, one event per request, over
//! HTTP on 127.0.0.1 (the fake API server and the receiver run on threads of their own). The
//! baseline, in the same run, is the least a watcher can do: a bare `kube::runtime::watcher`
//! over the same server posting each event it sees to the same receiver with reqwest.
//!
//! - criterion: a burst of 10,000 Events written at once, timed until the last request
//!   arrived (eventflow vs the baseline, interleaved);
//! - printed after criterion: p50, p99 and max latency per event at a steady 1,000 Events/s
//!   (3,000 Events) for eventflow unbatched, eventflow with a `sql` sink beside the webhook,
//!   eventflow with `batch: {max_events: 100, max_wait: 1s}`, and the baseline.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eventflow::engine::Topology;
use fake_apiserver::{FakeApiServer, sample_event};
use futures::StreamExt;
use kube::runtime::watcher;

/// A local webhook receiver that records only when each event's request arrived (by event
/// name), cheaply, so measuring does not compete with what is measured.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Instant)>>>);

impl Receiver {
    /// A receiver on a free port, on a thread and runtime of its own; and its URL.
    fn start() -> (Receiver, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", l.local_addr().expect("address"));
        l.set_nonblocking(true).expect("non-blocking");
        let r = Receiver::default();
        let state = r.clone();
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let at = Instant::now();
            let state = state.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let names: Vec<String> = match v.get("events").and_then(|e| e.as_array()) {
                    Some(list) => list
                        .iter()
                        .filter_map(|e| e["name"].as_str().map(str::to_string))
                        .collect(),
                    None => v["name"].as_str().map(str::to_string).into_iter().collect(),
                };
                let mut g = state.0.lock().expect("arrivals");
                g.extend(names.into_iter().map(|n| (n, at)));
                "ok"
            }
        });
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                let l = axum::serve::ListenerExt::tap_io(l, |s| {
                    let _ = s.set_nodelay(true);
                });
                let _ = axum::serve(l, app).await;
            });
        });
        (r, url)
    }

    fn len(&self) -> usize {
        self.0.lock().expect("arrivals").len()
    }

    fn take(&self) -> Vec<(String, Instant)> {
        std::mem::take(&mut *self.0.lock().expect("arrivals"))
    }
}

const BURST: usize = 10_000;
const STEADY: usize = 3_000;
const RATE: u64 = 1_000;

/// When each Event was written, by name.
type Written = Arc<Mutex<HashMap<String, Instant>>>;

/// A pipeline variant.
#[derive(Clone, Copy, Debug)]
enum Variant {
    Eventflow,
    WithSql,
    Batched,
    InFlight4,
    Bare,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Eventflow => "eventflow: kube_events -> filter -> webhook",
            Variant::WithSql => "eventflow, with a sql sink beside the webhook",
            Variant::Batched => "eventflow, webhook batch 100 / 1s",
            Variant::InFlight4 => "eventflow, one per request, max_in_flight: 4",
            Variant::Bare => "bare watcher + reqwest",
        }
    }
}

struct World {
    fake: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
    hits: Receiver,
    url: String,
    written: Written,
    run: usize,
    /// How long the writes of the last burst took (the API server's side, on the same cores).
    last_writes: Duration,
}

fn event(name: &str) -> serde_json::Value {
    sample_event(
        "shop",
        name,
        "BackOff",
        "Warning",
        "Back-off restarting failed container web in pod web-7d4b9c-x2x9q_shop",
    )
}

impl World {
    fn new(rt: &tokio::runtime::Runtime) -> World {
        let fake = rt.block_on(FakeApiServer::start()).expect("fake");
        fake.history_len(100_000);
        let dir = tempfile::tempdir().expect("tmp");
        let kubeconfig = dir.path().join("kubeconfig");
        fake.write_kubeconfig(&kubeconfig, None)
            .expect("kubeconfig");
        let (hits, url) = Receiver::start();
        World {
            fake,
            dir,
            kubeconfig,
            hits,
            url,
            written: Arc::default(),
            run: 0,
            last_writes: Duration::ZERO,
        }
    }

    /// Writes `n` Events named `{prefix}-{i}`, `rate` per second (0: all at once).
    fn write(&self, prefix: &str, n: usize, rate: u64) {
        let start = Instant::now();
        for i in 0..n {
            if let Some(us) = (i as u64 * 1_000_000).checked_div(rate) {
                let due = start + Duration::from_micros(us);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let name = format!("{prefix}-{i}");
            let e = event(&name);
            self.written
                .lock()
                .expect("written")
                .insert(name, Instant::now());
            self.fake.create("shop", e).expect("create");
        }
    }

    /// The latencies of the requests for the `n` Events written since the last call, once
    /// all arrived; and the last arrival.
    fn latencies(&self, n: usize, limit: Duration) -> (Vec<Duration>, Instant) {
        let deadline = Instant::now() + limit;
        while self.hits.len() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} arrived within {limit:?}",
                self.hits.len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let arrived = self.hits.take();
        let mut written = self.written.lock().expect("written");
        let out: Vec<Duration> = arrived
            .iter()
            .filter_map(|(name, at)| written.get(name).map(|w| at.saturating_duration_since(*w)))
            .collect();
        let last = arrived
            .iter()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or_else(Instant::now);
        written.clear();
        (out, last)
    }

    fn pipeline(&mut self, v: Variant) -> String {
        self.run += 1;
        let sql = format!(
            "  db:\n    type: sql\n    inputs: [warnings]\n    url: sqlite://{}\n",
            self.dir.path().join(format!("l{}.db", self.run)).display()
        );
        format!(
            "state:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n  warnings:\n    type: filter\n    inputs: [k8s]\n    types: [Warning]\n  hook:\n    type: webhook\n    inputs: [warnings]\n    url: {url}\n{batch}{sql}",
            state = self.dir.path().join(format!("s{}.db", self.run)).display(),
            kc = self.kubeconfig.display(),
            url = self.url,
            batch = match v {
                Variant::Batched => "    batch: {max_events: 100, max_wait: 1s}\n",
                Variant::InFlight4 => "    max_in_flight: 4\n",
                _ => "",
            },
            sql = if matches!(v, Variant::WithSql) {
                sql.as_str()
            } else {
                ""
            },
        )
    }
}

/// What runs the pipeline (or the baseline) while a scenario writes Events.
enum Running {
    Eventflow(Box<Topology>),
    Bare(tokio::task::JoinHandle<()>),
}

impl Running {
    fn stop(self, rt: &tokio::runtime::Runtime) {
        match self {
            Running::Eventflow(t) => {
                rt.block_on((*t).shutdown(Duration::from_secs(10)));
            }
            Running::Bare(h) => h.abort(),
        }
    }
}

/// Starts `v` against a new, empty API server (a run lists only its own Events) and waits
/// until it delivers (one warm-up Event went through).
fn start(rt: &tokio::runtime::Runtime, w: &mut World, v: Variant) -> Running {
    w.fake = rt.block_on(FakeApiServer::start()).expect("fake");
    w.fake.history_len(100_000);
    w.fake
        .write_kubeconfig(&w.kubeconfig, None)
        .expect("kubeconfig");
    w.written.lock().expect("written").clear();
    let running = if matches!(v, Variant::Bare) {
        let client = {
            let _in_runtime = rt.enter();
            w.fake.client()
        };
        let url = w.url.clone();
        Running::Bare(rt.spawn(async move {
            let http = reqwest::Client::new();
            let api: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::all(client);
            let mut s = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(e) = s.next().await {
                if let Ok(watcher::Event::Apply(ev) | watcher::Event::InitApply(ev)) = e
                    && ev.type_.as_deref() == Some("Warning")
                {
                    let body = serde_json::json!({"name": ev.metadata.name});
                    let _ = http.post(&url).json(&body).send().await;
                }
            }
        }))
    } else {
        let text = w.pipeline(v);
        let p = eventflow::load_str(&text, "latency.yaml", &|_| None).expect("pipeline");
        Running::Eventflow(Box::new(rt.block_on(Topology::start(p)).expect("start")))
    };
    w.run += 1;
    let warm = format!("warm{}", w.run);
    w.write(&warm, 1, 0);
    w.latencies(1, Duration::from_secs(30));
    running
}

/// One burst of `BURST` Events: the time from the first write to the last arrival.
fn burst(rt: &tokio::runtime::Runtime, w: &mut World, v: Variant) -> Duration {
    let running = start(rt, w, v);
    w.run += 1;
    let prefix = format!("burst{}", w.run);
    let first_write = Instant::now();
    w.write(&prefix, BURST, 0);
    let writes = first_write.elapsed();
    let (_, last) = w.latencies(BURST, Duration::from_secs(60));
    running.stop(rt);
    w.last_writes = writes;
    last.saturating_duration_since(first_write)
}

/// `STEADY` Events at `RATE` per second: each one's latency.
fn steady(rt: &tokio::runtime::Runtime, w: &mut World, v: Variant) -> Vec<Duration> {
    let running = start(rt, w, v);
    w.run += 1;
    let prefix = format!("steady{}", w.run);
    w.write(&prefix, STEADY, RATE);
    let (lat, _) = w.latencies(STEADY, Duration::from_secs(60));
    running.stop(rt);
    lat
}

/// The `per_mille`/1000 quantile of `sorted` (nearest rank).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    let i = (sorted.len().saturating_sub(1) * per_mille).div_ceil(1000);
    sorted[i.min(sorted.len().saturating_sub(1))]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut w = World::new(&rt);
    let mut g = c.benchmark_group("latency");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("burst_10000_written_at_once_until_the_last_request", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = burst(&rt, &mut w, Variant::Eventflow);
                common::record(Variant::Eventflow.name(), BURST as u64, d);
                common::record(
                    Variant::Bare.name(),
                    BURST as u64,
                    burst(&rt, &mut w, Variant::Bare),
                );
                total += d;
            }
            total
        });
    });
    g.finish();

    println!(
        "\n== a burst of {BURST} Events written at once: first write -> last request (3 runs each) =="
    );
    for v in [Variant::Eventflow, Variant::InFlight4, Variant::Bare] {
        let runs: Vec<String> = (0..3)
            .map(|_| {
                let d = burst(&rt, &mut w, v);
                format!(
                    "{:.2} s (writes alone {:.2} s)",
                    d.as_secs_f64(),
                    w.last_writes.as_secs_f64()
                )
            })
            .collect();
        println!("{:<50} {}", v.name(), runs.join(", "));
    }

    println!(
        "\n== latency per event at a steady {RATE} Events/s ({STEADY} Events), write -> request arrived =="
    );
    for v in [
        Variant::Eventflow,
        Variant::WithSql,
        Variant::Batched,
        Variant::Bare,
    ] {
        let mut lat = steady(&rt, &mut w, v);
        lat.sort_unstable();
        println!(
            "{:<50} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
            v.name(),
            percentile(&lat, 500).as_secs_f64() * 1e3,
            percentile(&lat, 990).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    common::summary(
        "latency (a burst of 10,000 Events, first write to last request)",
        &[common::ratio(
            "eventflow / bare watcher + reqwest (events/s of the burst)",
            Variant::Eventflow.name(),
            Variant::Bare.name(),
        )],
    );
}
