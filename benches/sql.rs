//! The sql sink fed from memory against a baseline of raw sqlx multi-row INSERTs of the same
//! rows (same columns, 500 rows per statement, one transaction per statement), same run.
//! `SQLite` always; `PostgreSQL` and `MariaDB` when `EVENTFLOW_TEST_POSTGRES_URL` /
//! `EVENTFLOW_TEST_MYSQL_URL` are set. Each iteration writes 20,000 events into a freshly created
//! table (dropping and creating it is not timed), so both sides see the same table sizes.
//! Ratios are printed at the end.

mod common;
use common::record;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};

use eventflow::event::{Event, EventData, Finalizers};
use eventflow::stages::sql::{SqlConfig, SqlSink};
use eventflow::state::db::Db;
use eventflow::state::events;

const N: usize = 20_000;
const BATCH: usize = 500;

/// `N` events in batches of `BATCH`, uids tagged with `tag` (each iteration writes new rows).
fn event_data(tag: u64) -> Vec<Vec<EventData>> {
    let samples: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/pipelines/samples/events.json"
        ))
        .expect("samples"),
    )
    .expect("json");
    let cluster: Arc<str> = Arc::from("bench");
    let all: Vec<EventData> = (0..N)
        .map(|i| {
            let mut v = samples[i % samples.len()].clone();
            v["metadata"]["uid"] = format!("{tag}-{i}").into();
            eventflow::event::decode(&v.to_string(), &cluster).expect("decode")
        })
        .collect();
    all.chunks(BATCH).map(<[EventData]>::to_vec).collect()
}

/// [`event_data`] as events without acknowledgements.
fn events(tag: u64) -> Vec<Vec<Event>> {
    event_data(tag)
        .into_iter()
        .map(|b| {
            b.into_iter()
                .map(|d| Event::new(d, Finalizers::None))
                .collect()
        })
        .collect()
}

/// The baseline: plain sqlx, multi-row INSERT with `?`/`$n` placeholders, same columns.
async fn raw_insert(db: &Db, table: &str, batch: &[Event], tag: u64) {
    let cols = events::written_columns();
    let pg = matches!(db, Db::Postgres(_));
    let mut sql = format!(
        "INSERT INTO {table} ({}) VALUES ",
        cols.join(", ")
            .replace("type", "\"type\"")
            .replace("timestamp", "\"timestamp\"")
    );
    if !pg {
        sql = sql.replace('"', "`");
        if matches!(db, Db::Sqlite(_)) {
            sql = sql.replace('`', "\"");
        }
    }
    let mut n = 0;
    for (r, _) in batch.iter().enumerate() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols.len() {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            if pg {
                sql.push_str(&format!("${n}"));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    macro_rules! go {
        ($pool:expr) => {{
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in batch {
                let now = chrono::Utc::now();
                q = q
                    .bind(format!("raw/{tag}/{}", e.uid))
                    .bind(e.cluster.to_string())
                    .bind(e.namespace.clone())
                    .bind(e.name.clone())
                    .bind(e.type_.clone())
                    .bind(e.reason.clone())
                    .bind("warning")
                    .bind(e.message.clone())
                    .bind(e.last_seen)
                    .bind(now)
                    .bind(now)
                    .bind(e.uid.clone())
                    .bind(e.kind.clone())
                    .bind(e.object_name.clone())
                    .bind(e.object_namespace.clone())
                    .bind(e.object_uid.clone())
                    .bind(e.count)
                    .bind(e.first_seen)
                    .bind(e.last_seen)
                    .bind(e.source.clone())
                    .bind(e.host.clone())
                    .bind(e.resource_version.clone())
                    .bind(e.raw.as_deref().map(str::to_string))
                    // labels, owner_kind, owner_name (what `enrich` adds; not set here)
                    .bind(None::<String>)
                    .bind(e.owner_kind.clone())
                    .bind(e.owner_name.clone());
            }
            let mut tx = $pool.begin().await.expect("begin");
            q.execute(&mut *tx).await.expect("raw insert");
            tx.commit().await.expect("commit");
        }};
    }
    match db {
        Db::Sqlite(p) => go!(p),
        Db::Postgres(p) => go!(p),
        Db::MySql(p) => go!(p),
    }
}

/// The server's own rate (PostgreSQL): the same number of rows, in statements of `BATCH`, each
/// its own transaction as the sink's batches are, generated inside the server (`INSERT ... SELECT
/// ... FROM generate_series ... ON CONFLICT DO UPDATE`: no client, no transfer), same table and
/// indexes, rows of the same size (~1 KB of `raw`).
async fn server_side_insert(db: &Db, table: &str, tag: u64) {
    let cols = events::written_columns();
    let quoted = |c: &str| format!("\"{c}\"");
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| match *c {
            "evt_key" => format!("'srv/{tag}/' || i"),
            "count" => "1".to_string(),
            "timestamp" | "first_seen" | "last_seen" | "created_at" | "updated_at" => {
                "now()".to_string()
            }
            "raw" => "repeat('x', 1000)".to_string(),
            "labels" => "NULL".to_string(),
            "message" => "'Back-off restarting failed container web in pod web-' || i".to_string(),
            _ => format!("'{c}-' || (i % 97)"),
        })
        .collect();
    let update: Vec<String> = cols
        .iter()
        .filter(|c| **c != "evt_key")
        .map(|c| format!("{} = EXCLUDED.{}", quoted(c), quoted(c)))
        .collect();
    let Db::Postgres(pool) = db else { return };
    for b in 0..(N / BATCH) {
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM generate_series({}, {}) AS i ON CONFLICT (evt_key) DO UPDATE SET {}",
            cols.iter()
                .map(|c| quoted(c))
                .collect::<Vec<_>>()
                .join(", "),
            exprs.join(", "),
            b * BATCH + 1,
            (b + 1) * BATCH,
            update.join(", ")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .expect("server-side insert");
    }
}

async fn fresh_table(db: &Db, table: &str) {
    db.execute_raw(format!("DROP TABLE IF EXISTS {table}"))
        .await
        .expect("drop");
    events::ensure_table(db, table).await.expect("create");
}

fn bench_backend(c: &mut Criterion, name: &'static str, url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let table = format!("bench_{}", std::process::id());
    let cfg: SqlConfig = eventflow::yaml::from_node(
        &eventflow::yaml::parse(&format!(
            "url: {url}\ntable: {table}\nbatch: {{max_events: {BATCH}}}"
        ))
        .expect("yaml"),
    )
    .expect("cfg");
    let db = rt.block_on(async {
        let db = Db::connect(url, cfg.max_conns, Duration::from_secs(10))
            .await
            .expect("connect");
        events::ensure_table(&db, &table).await.expect("table");
        db
    });
    let sink = SqlSink::new(cfg.clone(), db.clone(), "bench");
    let mut g = c.benchmark_group(format!("sql_{name}"));
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let mut tag = 0u64;
    g.bench_function("baseline_raw_sqlx_multirow", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                tag += 1;
                let batches = events(tag);
                rt.block_on(fresh_table(&db, &table));
                let start = Instant::now();
                rt.block_on(async {
                    for batch in &batches {
                        raw_insert(&db, &table, batch, tag).await;
                    }
                });
                total += start.elapsed();
            }
            record(
                format!("{name} baseline: raw sqlx multi-row insert"),
                N as u64 * iters,
                total,
            );
            total
        });
    });
    if name == "postgres" {
        g.bench_function("server_side_generate_series", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    tag += 1;
                    rt.block_on(fresh_table(&db, &table));
                    let start = Instant::now();
                    rt.block_on(server_side_insert(&db, &table, tag));
                    total += start.elapsed();
                }
                record(
                    format!("{name} server's own rate: generate_series upsert"),
                    N as u64 * iters,
                    total,
                );
                total
            });
        });
    }
    g.bench_function("sink_upsert_batches", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                tag += 1;
                let batches = events(tag);
                rt.block_on(fresh_table(&db, &table));
                let start = Instant::now();
                rt.block_on(async {
                    for batch in &batches {
                        let s = sink.write(batch).await;
                        assert_eq!(s.len(), batch.len());
                    }
                });
                total += start.elapsed();
            }
            record(
                format!("{name} sql sink (batched upserts)"),
                N as u64 * iters,
                total,
            );
            total
        });
    });
    if name == "postgres" {
        pipeline_case(&mut g, name, &cfg, &mut tag);
    }
    g.finish();
}

/// What a user runs: a source -> the `sql` sink through the engine (batching, keys, encoding
/// and writing overlapped, acknowledgements after each commit) on a two-worker runtime, timed
/// from the first event fed to the last one acknowledged; interleaved with the server's own
/// rate on a fresh table each time (creating it is not timed).
fn pipeline_case(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    cfg: &SqlConfig,
    tag: &mut u64,
) {
    let (url, table) = (cfg.url.as_str(), cfg.table.as_str());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    // A pool of this runtime's own (a pool's connections belong to the runtime that made them).
    let db = &rt
        .block_on(Db::connect(url, 2, Duration::from_secs(10)))
        .expect("connect");
    let next = std::cell::Cell::new(*tag);
    let cfg = Arc::new(cfg.clone());
    g.bench_function("sink_in_a_pipeline", |b| {
        b.iter_custom(|iters| {
            common::interleaved(
                &rt,
                iters,
                N as u64,
                (&format!("{name} sql sink in a pipeline"), || {
                    next.set(next.get() + 1);
                    let data = event_data(next.get());
                    let cfg = cfg.clone();
                    async move {
                        fresh_table(db, table).await;
                        let (src, feed) = eventflow::testkit::ChannelSource::new(4);
                        let p = eventflow::testkit::source_to_sink(
                            Arc::new(src),
                            "store",
                            "sql",
                            cfg,
                            0,
                        )
                        .build();
                        let topo = eventflow::engine::Topology::start(p).await.expect("start");
                        let start = Instant::now();
                        let mut acks = Vec::new();
                        for batch in data {
                            acks.push(feed.send(batch).await);
                        }
                        for a in acks {
                            assert_eq!(
                                a.await.expect("status"),
                                eventflow::event::ack::Status::Delivered
                            );
                        }
                        let d = start.elapsed();
                        topo.shutdown(Duration::from_secs(30)).await;
                        d
                    }
                }),
                (
                    &format!("{name} server's own rate (same run as the pipeline)"),
                    || {
                        next.set(next.get() + 1);
                        let t = next.get();
                        async move {
                            fresh_table(db, table).await;
                            let start = Instant::now();
                            server_side_insert(db, table, t).await;
                            start.elapsed()
                        }
                    },
                ),
            )
        });
    });
    *tag = next.get();
}

fn sql(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    bench_backend(
        c,
        "sqlite",
        &format!("sqlite://{}", dir.path().join("bench.db").display()),
    );
    for (name, var) in [
        ("postgres", "EVENTFLOW_TEST_POSTGRES_URL"),
        ("mysql", "EVENTFLOW_TEST_MYSQL_URL"),
    ] {
        match std::env::var(var) {
            Ok(url) => bench_backend(c, name, &url),
            Err(_) => eprintln!("{name}: skipped ({var} not set)"),
        }
    }
}

criterion_group!(benches, sql);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let mut ratios: Vec<_> = ["sqlite", "postgres", "mysql"]
        .iter()
        .map(|b| {
            common::ratio(
                &format!("{b} sink / raw sqlx"),
                &format!("{b} sql sink (batched upserts)"),
                &format!("{b} baseline: raw sqlx multi-row insert"),
            )
        })
        .collect();
    ratios.push(common::ratio(
        "postgres sink / the server's own rate",
        "postgres sql sink (batched upserts)",
        "postgres server's own rate: generate_series upsert",
    ));
    ratios.push(common::ratio(
        "postgres sink in a pipeline / the server's own rate (same run)",
        "postgres sql sink in a pipeline",
        "postgres server's own rate (same run as the pipeline)",
    ));
    common::summary("sql sink", &ratios);
}
