//! The sql sink against real databases: the same suite on each backend. The `SQLite` tests
//! always run; the `PostgreSQL` and `MariaDB` ones (`*::on_postgres`, `*::on_mysql`) are
//! ignored by a plain `cargo test`, which lists them as such, and run with
//! `cargo test -- --ignored on_postgres on_mysql` once `EVENTFLOW_TEST_POSTGRES_URL` /
//! `EVENTFLOW_TEST_MYSQL_URL` are set (CI does both; without the URL they fail).

mod support;

use std::sync::Arc;
use std::time::Duration;

use eventflow::component::StageKind;
use eventflow::engine::Topology;
use eventflow::event::EventData;
use eventflow::event::ack::Status;
use eventflow::stages::sql::SqlConfig;
use eventflow::state::db::Db;
use eventflow::testkit::{ChannelSource, PipelineBuilder, event};

struct Backend {
    name: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// A fresh SQLite file.
    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tmp");
        Backend {
            name: "sqlite",
            url: format!("sqlite://{}", dir.path().join("events.db").display()),
            _dir: Some(dir),
        }
    }

    /// A server named by its environment variable; a test that asks for one without it fails
    /// (these tests are `#[ignore]`d so a plain `cargo test` lists them as not run).
    fn server(name: &'static str, var: &str) -> Backend {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Backend {
                name,
                url,
                _dir: None,
            },
            _ => panic!("{var} is not set: `bash .ci/services.sh && source .ci/test-env.sh` first"),
        }
    }
}

/// One test per backend for a test body taking a [`Backend`]: `<name>::sqlite` runs always,
/// `<name>::on_postgres` and `<name>::on_mysql` are ignored unless asked for
/// (`cargo test -- --ignored on_postgres on_mysql`, as CI does) and fail without their
/// server's URL. `servers` leaves SQLite out.
macro_rules! on_every_backend {
    (async $test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(super::Backend::sqlite()).await;
            }
            on_every_backend!(@servers async $test);
        }
    };
    (servers async $test:ident) => {
        mod $test {
            on_every_backend!(@servers async $test);
        }
    };
    (@servers async $test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs EVENTFLOW_TEST_POSTGRES_URL; cargo test -- --ignored on_postgres"]
        async fn on_postgres() {
            super::$test(super::Backend::server("postgres", "EVENTFLOW_TEST_POSTGRES_URL")).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs EVENTFLOW_TEST_MYSQL_URL; cargo test -- --ignored on_mysql"]
        async fn on_mysql() {
            super::$test(super::Backend::server("mysql", "EVENTFLOW_TEST_MYSQL_URL")).await;
        }
    };
    (sync $test:ident) => {
        mod $test {
            #[test]
            fn sqlite() {
                super::$test(&super::Backend::sqlite());
            }
            #[test]
            #[ignore = "needs EVENTFLOW_TEST_POSTGRES_URL; cargo test -- --ignored on_postgres"]
            fn on_postgres() {
                super::$test(&super::Backend::server("postgres", "EVENTFLOW_TEST_POSTGRES_URL"));
            }
            #[test]
            #[ignore = "needs EVENTFLOW_TEST_MYSQL_URL; cargo test -- --ignored on_mysql"]
            fn on_mysql() {
                super::$test(&super::Backend::server("mysql", "EVENTFLOW_TEST_MYSQL_URL"));
            }
        }
    };
}

fn table_name(test: &str) -> String {
    format!("t_{test}_{}", rand_suffix())
}

fn rand_suffix() -> String {
    let n: u32 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:x}", std::process::id(), n)
}

fn sql_config(url: &str, table: &str, extra: &str) -> Arc<SqlConfig> {
    let yaml =
        format!("url: {url}\ntable: {table}\nbatch: {{max_events: 100, max_wait: 50ms}}\n{extra}");
    Arc::new(
        eventflow::yaml::from_node(&eventflow::yaml::parse(&yaml).expect("yaml"))
            .expect("sql config"),
    )
}

/// Runs events through channel source -> sql sink and returns each batch's final status.
async fn store(url: &str, table: &str, extra: &str, batches: Vec<Vec<EventData>>) -> Vec<Status> {
    let (src, feed) = ChannelSource::new(4);
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "db",
            "sql",
            StageKind::Sink,
            &["src"],
            sql_config(url, table, extra),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    let mut acks = Vec::new();
    for b in batches {
        acks.push(feed.send(b).await);
    }
    drop(feed);
    assert!(topo.shutdown(Duration::from_secs(60)).await.is_empty());
    let mut out = Vec::new();
    for a in acks {
        out.push(a.await.expect("ack"));
    }
    out
}

#[derive(Debug, PartialEq)]
struct Row {
    evt_key: String,
    count: i64,
    message: String,
    reason: String,
    level: String,
    resource_version: String,
    processed: bool,
    attempts: i64,
    kind: String,
}

async fn rows(db: &Db, table: &str) -> Vec<Row> {
    let sql = format!(
        "SELECT evt_key, count, message, reason, level, resource_version, processed, attempts, kind FROM {table} ORDER BY evt_key"
    );
    macro_rules! fetch {
        ($pool:expr) => {{
            use sqlx::Row as _;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all($pool)
                .await
                .expect("select")
                .iter()
                .map(|r| Row {
                    evt_key: r.try_get(0).expect("evt_key"),
                    count: r.try_get(1).expect("count"),
                    message: r
                        .try_get::<Option<String>, _>(2)
                        .expect("message")
                        .unwrap_or_default(),
                    reason: r
                        .try_get::<Option<String>, _>(3)
                        .expect("reason")
                        .unwrap_or_default(),
                    level: r
                        .try_get::<Option<String>, _>(4)
                        .expect("level")
                        .unwrap_or_default(),
                    resource_version: r
                        .try_get::<Option<String>, _>(5)
                        .expect("rv")
                        .unwrap_or_default(),
                    processed: r.try_get(6).expect("processed"),
                    attempts: i64::from(r.try_get::<i32, _>(7).expect("attempts")),
                    kind: r
                        .try_get::<Option<String>, _>(8)
                        .expect("kind")
                        .unwrap_or_default(),
                })
                .collect()
        }};
    }
    match db {
        Db::Sqlite(p) => fetch!(p),
        Db::Postgres(p) => fetch!(p),
        Db::MySql(p) => fetch!(p),
    }
}

async fn connect(url: &str) -> Db {
    Db::connect(url, 2, Duration::from_secs(10))
        .await
        .expect("connect")
}

fn ev(uid: &str, count: i64, msg: &str) -> EventData {
    EventData {
        resource_version: format!("rv-{count}"),
        message: msg.into(),
        count,
        type_: "Warning".into(),
        reason: "BackOff".into(),
        kind: "Pod".into(),
        last_seen: Some(chrono::Utc::now()),
        ..event(uid)
    }
}

async fn rows_columns_and_upserts_on_repeats(b: Backend) {
    let table = table_name("upsert");
    let statuses = store(
        &b.url,
        &table,
        "",
        vec![
            vec![ev("u1", 1, "first"), ev("u2", 1, "other")],
            // A repeat in its own batch, and two versions inside one batch.
            vec![ev("u1", 2, "second")],
            vec![ev("u3", 1, "a"), ev("u3", 5, "b")],
        ],
    )
    .await;
    assert!(
        statuses.iter().all(|s| *s == Status::Delivered),
        "{}: {statuses:?}",
        b.name
    );
    let db = connect(&b.url).await;
    let got = rows(&db, &table).await;
    let summary: Vec<(String, i64, String, String)> = got
        .iter()
        .map(|r| {
            (
                r.evt_key.clone(),
                r.count,
                r.message.clone(),
                r.resource_version.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("test/u1".into(), 2, "second".into(), "rv-2".into()),
            ("test/u2".into(), 1, "other".into(), "rv-1".into()),
            ("test/u3".into(), 5, "b".into(), "rv-5".into()),
        ],
        "{}",
        b.name
    );
    assert!(
        got.iter()
            .all(|r| !r.processed && r.attempts == 0 && r.level == "warning" && r.kind == "Pod")
    );
    let cols = db.columns(&table).await.expect("columns");
    for c in [
        "id",
        "evt_key",
        "cluster",
        "namespace",
        "name",
        "type",
        "reason",
        "level",
        "message",
        "timestamp",
        "processed",
        "attempts",
        "created_at",
        "updated_at",
        "kind",
        "object_name",
        "object_namespace",
        "object_uid",
        "count",
        "first_seen",
        "last_seen",
        "source",
        "host",
        "resource_version",
        "raw",
        "labels",
        "owner_kind",
        "owner_name",
    ] {
        assert!(
            cols.iter().any(|x| x == c),
            "{}: column {c} missing",
            b.name
        );
    }
}
on_every_backend!(async rows_columns_and_upserts_on_repeats);

/// `(evt_key, labels, owner_kind, owner_name)` of every row.
async fn label_rows(db: &Db, table: &str) -> Vec<(String, Option<String>, String, String)> {
    let sql =
        format!("SELECT evt_key, labels, owner_kind, owner_name FROM {table} ORDER BY evt_key");
    macro_rules! fetch {
        ($pool:expr) => {{
            use sqlx::Row as _;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all($pool)
                .await
                .expect("select")
                .iter()
                .map(|r| {
                    let text = |i: usize| {
                        r.try_get::<Option<String>, _>(i)
                            .expect("column")
                            .unwrap_or_default()
                    };
                    (
                        text(0),
                        r.try_get::<Option<String>, _>(1).expect("labels"),
                        text(2),
                        text(3),
                    )
                })
                .collect()
        }};
    }
    match db {
        Db::Sqlite(p) => fetch!(p),
        Db::Postgres(p) => fetch!(p),
        Db::MySql(p) => fetch!(p),
    }
}

async fn enriched_events_store_their_labels_and_owner(b: Backend) {
    let table = table_name("labels");
    let map = |pairs: &[(&str, &str)]| {
        Some(std::sync::Arc::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect::<eventflow::event::Labels>(),
        ))
    };
    let enriched = EventData {
        object_labels: map(&[("app", "api"), ("tier", "back'end")]),
        namespace_labels: map(&[("team", "payments")]),
        owner_kind: "Deployment".into(),
        owner_name: "api".into(),
        ..ev("l1", 1, "m")
    };
    let statuses = store(&b.url, &table, "", vec![vec![enriched, ev("l2", 1, "m")]]).await;
    assert_eq!(statuses, vec![Status::Delivered], "{}", b.name);
    let got = label_rows(&connect(&b.url).await, &table).await;
    let labels: serde_json::Value =
        serde_json::from_str(got[0].1.as_deref().expect("labels set")).expect("JSON");
    assert_eq!(
        labels,
        serde_json::json!({"object": {"app": "api", "tier": "back'end"}, "namespace": {"team": "payments"}}),
        "{}",
        b.name
    );
    assert_eq!(
        (got[0].2.as_str(), got[0].3.as_str()),
        ("Deployment", "api")
    );
    assert_eq!(got[1].1, None, "{}: no labels, NULL", b.name);
    assert_eq!(got[1].2, "");
}
on_every_backend!(async enriched_events_store_their_labels_and_owner);

async fn hostile_values_are_stored_intact(b: Backend) {
    let big: String = "0123456789abcdef".repeat(4096); // 64 KiB
    let nasty =
        "quote ' double \" backslash \\ newline \n tab \t emoji 🔥🚀 nul-free; DROP TABLE x; --";
    let table = table_name("hostile");
    let mut e1 = ev("q1", 1, nasty);
    e1.reason = "Reason'With\"Quotes".into();
    let e2 = ev("q2", 1, &big);
    let statuses = store(&b.url, &table, "", vec![vec![e1, e2]]).await;
    assert_eq!(statuses, vec![Status::Delivered], "{}", b.name);
    let got = rows(&connect(&b.url).await, &table).await;
    assert_eq!(got[0].message, nasty, "{}", b.name);
    assert_eq!(got[0].reason, "Reason'With\"Quotes", "{}", b.name);
    assert_eq!(got[1].message.len(), 65536, "{}", b.name);
    assert_eq!(got[1].message, big, "{}", b.name);
}
on_every_backend!(async hostile_values_are_stored_intact);

async fn a_seed_created_table_is_migrated_with_its_rows(b: Backend) {
    let table = table_name("seed");
    let db = connect(&b.url).await;
    for stmt in support::seed_ddl(b.name, &table) {
        db.execute_raw(stmt).await.expect("seed DDL");
    }
    let statuses = store(
        &b.url,
        &table,
        "",
        vec![vec![ev("new", 3, "eventflow row")]],
    )
    .await;
    assert_eq!(statuses, vec![Status::Delivered], "{}", b.name);
    let got = rows(&db, &table).await;
    assert_eq!(got.len(), 3, "{}: {got:?}", b.name);
    let seed1 = got
        .iter()
        .find(|r| r.evt_key == "seed-1")
        .expect("seed row kept");
    assert_eq!(
        (seed1.message.as_str(), seed1.processed, seed1.attempts),
        ("from the seed", true, 2)
    );
    assert_eq!(seed1.count, 1, "new NOT NULL columns get their default");
    let new = got
        .iter()
        .find(|r| r.evt_key == "test/new")
        .expect("new row");
    assert_eq!((new.count, new.kind.as_str()), (3, "Pod"));
    assert!(
        db.columns(&table)
            .await
            .expect("cols")
            .iter()
            .any(|c| c == "raw")
    );
}
on_every_backend!(async a_seed_created_table_is_migrated_with_its_rows);

async fn retention_deletes_old_rows(b: Backend) {
    let table = table_name("retention");
    let mut old = ev("old", 1, "old");
    old.last_seen = Some(chrono::Utc::now() - chrono::Duration::days(30));
    let statuses = store(
        &b.url,
        &table,
        "retention: 7d",
        vec![vec![old, ev("fresh", 1, "fresh")]],
    )
    .await;
    assert_eq!(statuses, vec![Status::Delivered]);
    // The retention pass runs while the sink runs: start it again and wait for the delete.
    let (src, _feed) = ChannelSource::new(1);
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "db",
            "sql",
            StageKind::Sink,
            &["src"],
            sql_config(&b.url, &table, "retention: 7d"),
            0,
        )
        .build();
    let topo = Topology::start(p).await.expect("start");
    let db = connect(&b.url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<String> = rows(&db, &table)
            .await
            .into_iter()
            .map(|r| r.evt_key)
            .collect();
        if keys == vec!["test/fresh".to_string()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: old row not deleted: {keys:?}",
            b.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    topo.shutdown(Duration::from_secs(10)).await;
}
on_every_backend!(async retention_deletes_old_rows);

async fn a_row_the_database_refuses_is_rejected_and_the_rest_stored(b: Backend) {
    let table = table_name("refuse");
    let mut bad = ev("bad", 1, "too long reason");
    bad.reason = "R".repeat(300);
    let statuses = store(
        &b.url,
        &table,
        "",
        vec![vec![ev("ok1", 1, "a")], vec![bad, ev("ok2", 1, "b")]],
    )
    .await;
    assert_eq!(
        statuses,
        vec![Status::Delivered, Status::Rejected],
        "{}",
        b.name
    );
    let keys: Vec<String> = rows(&connect(&b.url).await, &table)
        .await
        .into_iter()
        .map(|r| r.evt_key)
        .collect();
    assert_eq!(keys, vec!["test/ok1", "test/ok2"], "{}", b.name);
}
// SQLite does not enforce VARCHAR lengths: nothing to refuse there.
on_every_backend!(servers async a_row_the_database_refuses_is_rejected_and_the_rest_stored);

/// Batches are keyed and encoded while the one before is written; they are still written in
/// order: of many versions of a few events, spread over many full batches fed at once, the
/// table holds each event's last version, and every version is acknowledged.
async fn the_last_version_wins_across_overlapped_batches(b: Backend) {
    let table = table_name("order");
    let versions = 200i64;
    let keys = ["a", "b", "c", "d", "e"];
    // 5 keys x 200 versions in batches of 50 (the sink writes 100 at a time): every write
    // holds versions of every key, and the next one is prepared while it runs.
    let all: Vec<EventData> = (1..=versions)
        .flat_map(|v| keys.iter().map(move |k| ev(k, v, &format!("version {v}"))))
        .collect();
    let batches: Vec<Vec<EventData>> = all.chunks(50).map(<[EventData]>::to_vec).collect();
    let n = batches.len();
    let statuses = store(&b.url, &table, "", batches).await;
    assert_eq!(statuses, vec![Status::Delivered; n], "{}", b.name);
    let stored = rows(&connect(&b.url).await, &table).await;
    assert_eq!(stored.len(), keys.len(), "{}", b.name);
    for r in stored {
        assert_eq!(
            (r.count, r.message.as_str()),
            (versions, "version 200"),
            "{}: {}",
            b.name,
            r.evt_key
        );
    }
}
on_every_backend!(async the_last_version_wins_across_overlapped_batches);

/// Batches with no key in common may be written at once (PostgreSQL: two connections); a
/// batch sharing a key with one being written waits for it. 200 events in 4 blocks of 50, 40
/// rounds each writing one block with the round as its version, fed in rounds (the sink writes
/// 100 at a time: two rounds, two blocks): each batch shares no key with the one before it and
/// every key with the one before that. The table holds each event's last version.
async fn batches_written_at_once_never_share_a_key(b: Backend) {
    let table = table_name("disjoint");
    let rounds = 40i64;
    let batches: Vec<Vec<EventData>> = (0..rounds)
        .map(|r| {
            let block = r % 4;
            (0..50)
                .map(|j| {
                    ev(
                        &format!("k{}", block * 50 + j),
                        r + 1,
                        &format!("round {r}"),
                    )
                })
                .collect()
        })
        .collect();
    let n = batches.len();
    let statuses = store(&b.url, &table, "", batches).await;
    assert_eq!(statuses, vec![Status::Delivered; n], "{}", b.name);
    let stored = rows(&connect(&b.url).await, &table).await;
    assert_eq!(stored.len(), 200, "{}", b.name);
    for r in stored {
        let k: i64 = r
            .evt_key
            .rsplit('k')
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(-1);
        // The last round that wrote this key's block.
        let last = rounds - 4 + k / 50;
        assert_eq!(
            (r.count, r.message.as_str()),
            (last + 1, &*format!("round {last}")),
            "{}: {}",
            b.name,
            r.evt_key
        );
    }
}
on_every_backend!(async batches_written_at_once_never_share_a_key);

/// A statement the server refuses reads as the server's message: no "at line N" of
/// PostgreSQL's own source (which reads like a line of the pipeline file), no driver prefix.
async fn a_refused_statement_says_the_servers_message_only(b: Backend) {
    let db = connect(&b.url).await;
    let table = table_name("msg");
    db.execute_raw(format!("CREATE TABLE {table} (reason VARCHAR(5))"))
        .await
        .expect("create");
    let e = db
        .execute_raw(format!(
            "INSERT INTO {table} (reason) VALUES ('far too long')"
        ))
        .await
        .expect_err("refused");
    let text = e.to_string();
    assert!(!e.is_transient(), "{}: {text}", b.name);
    assert!(
        text.to_lowercase().contains("too long"),
        "{}: the server's message: {text}",
        b.name
    );
    assert!(
        !text.contains(" at line ") && !text.contains("error returned from database"),
        "{}: {text}",
        b.name
    );
    db.execute_raw(format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}
// SQLite does not enforce VARCHAR lengths: nothing to refuse there.
on_every_backend!(servers async a_refused_statement_says_the_servers_message_only);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_or_table_fails_the_build_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            "redis://localhost",
            "k8s_events",
            "unsupported database URL",
        ),
        (
            "postgres://nobody:secret@127.0.0.1:1/db",
            "k8s_events",
            "cannot connect to postgres://nobody:***@127.0.0.1:1/db",
        ),
        // The cause, not only "pool timed out".
        (
            "postgres://nobody:secret@127.0.0.1:1/db",
            "k8s_events",
            "Connection refused",
        ),
        (
            &*format!("sqlite://{}", dir.path().join("x.db").display()),
            "bad-name;",
            "not a plain identifier",
        ),
    ];
    for (url, table, want) in cases {
        let cfg = sql_config(url, table, "connect_timeout: 2s");
        let cx = eventflow::component::BuildContext {
            id: "db".into(),
            type_name: "sql",
            ..Default::default()
        };
        // What needs no I/O is refused by validation (as `validate`, `run` and reload do);
        // the rest by the build.
        let invalid = eventflow::component::StageConfig::validate(&*cfg);
        let err = match invalid.first() {
            Some(i) => format!("field `{}`: {}", i.field, i.message),
            None => match eventflow::component::StageConfig::build(&*cfg, &cx).await {
                Ok(_) => panic!("{url} built"),
                Err(e) => {
                    // The driver's error is kept as the cause, for callers that walk it.
                    assert!(std::error::Error::source(&e).is_some(), "{e}");
                    e.to_string()
                }
            },
        };
        assert!(err.contains(want), "{err}");
        assert!(
            !err.contains("secret"),
            "the password is not printed: {err}"
        );
    }
}

fn kill_9_mid_stream_loses_no_committed_row_and_a_replay_completes_the_table(b: &Backend) {
    use support::*;
    const N: usize = 20_000;
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let dir = tempfile::tempdir().expect("tmp");
    let lines: String = (0..N).map(|i| sample_line(i, "Warning") + "\n").collect();
    let events = write(dir.path(), "events.jsonl", &lines);
    let table = table_name("kill");
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  src:\n    type: file\n    path: {}\n  db:\n    type: sql\n    inputs: [src]\n    url: {}\n    table: {table}\n    batch: {{max_events: 200, max_wait: 10ms}}\n",
            events.display(),
            b.url
        ),
    );
    let count = || -> i64 {
        rt.block_on(async {
            let db = connect(&b.url).await;
            if db.columns(&table).await.map_or(true, |c| c.is_empty()) {
                return 0;
            }
            let sql = format!("SELECT COUNT(*) FROM {table}");
            match &db {
                Db::Sqlite(p) => {
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                        .fetch_one(p)
                        .await
                }
                Db::Postgres(p) => {
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                        .fetch_one(p)
                        .await
                }
                Db::MySql(p) => {
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                        .fetch_one(p)
                        .await
                }
            }
            .unwrap_or(0)
        })
    };
    let quiet = || std::process::Stdio::null();
    let mut child = bin()
        .arg("run")
        .arg(&p)
        .stdout(quiet())
        .stderr(quiet())
        .spawn()
        .expect("spawn");
    // Kill it once some rows are committed but (very likely) not all.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count() < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: no rows written",
            b.name
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let after_kill = count();
    assert!(
        after_kill >= 400,
        "{}: committed rows survive a kill -9: {after_kill}",
        b.name
    );
    // The table is intact, and replaying the file completes it without duplicates.
    let status = bin()
        .arg("run")
        .arg(&p)
        .stdout(quiet())
        .stderr(quiet())
        .status()
        .expect("rerun");
    assert!(status.success(), "{}", b.name);
    assert_eq!(
        count(),
        i64::try_from(N).expect("small"),
        "{}: every event once (upsert by key), none twice",
        b.name
    );
    eprintln!(
        "{}: killed at {after_kill} of {N} rows; replay completed the table",
        b.name
    );
}
on_every_backend!(sync kill_9_mid_stream_loses_no_committed_row_and_a_replay_completes_the_table);

/// The uids of `events`, in order.
fn uids_of(events: Vec<EventData>) -> Vec<String> {
    events.into_iter().map(|e| e.uid).collect()
}

/// The durable webhook's tables in the `state` database, on every backend: queue in order,
/// batches pinned, delivered rows removed, a failed batch moved to the dead letters in one
/// step, and dead letters read back with their events intact.
async fn webhook_queue_and_dead_letters_on_every_backend(b: Backend) {
    use eventflow::event::{Event, Finalizers};
    use eventflow::stages::webhook::queue::Store;
    let sink = format!("hook_{}", rand_suffix());
    let store = Store::open(&b.url).await.expect("open");
    // Opening again (tables and index exist) is fine.
    Store::open(&b.url).await.expect("open again").close().await;
    let events: Vec<Event> = (0..5)
        .map(|i| {
            let mut e = event(&format!("q{i}"));
            e.message = format!("quote \" and ✓ {i}");
            Event::new(e, Finalizers::None)
        })
        .collect();
    store.push(&sink, &events, 1).await.expect("push");
    assert_eq!(store.count(&sink).await.expect("count"), 5, "{}", b.name);
    let head = store.head(&sink, 0, 3).await.expect("head");
    assert_eq!(head.len(), 3, "{}", b.name);
    assert!(head.windows(2).all(|w| w[0].id < w[1].id), "{}", b.name);
    let e0 = head[0].events().expect("decode").remove(0);
    assert_eq!(
        (e0.uid.as_str(), e0.message.as_str()),
        ("q0", "quote \" and ✓ 0")
    );
    // Pinned on its first row (which holds the batch's last row id), the other rows untouched;
    // two batches pinned in one statement.
    store
        .settle(
            &sink,
            &[],
            &[
                (head[0].id, head[2].id),
                (head[2].id + 100, head[2].id + 101),
            ],
        )
        .await
        .expect("pin");
    let pinned = store.head(&sink, 0, 5).await.expect("head");
    assert_eq!(
        pinned.iter().map(|p| p.batch).collect::<Vec<_>>(),
        [Some(head[2].id), None, None, None, None],
        "{}",
        b.name
    );
    assert!(
        pinned[0].continues(&pinned[2]) && !pinned[0].continues(&pinned[3]),
        "{}: the pinned batch is rows 1..=3",
        b.name
    );
    let after = store.head(&sink, head[2].id, 10).await.expect("head");
    assert_eq!(after.len(), 2, "{}: rows after the cursor", b.name);
    store
        .settle(&sink, &[head[0].id, head[1].id], &[])
        .await
        .expect("remove");
    assert_eq!(store.count(&sink).await.expect("count"), 3, "{}", b.name);
    let rest = store.head(&sink, 0, 10).await.expect("head");
    store
        .bury(&sink, &rest, "abc123", 4, "HTTP 500: down")
        .await
        .expect("bury");
    assert_eq!(store.count(&sink).await.expect("count"), 0, "{}", b.name);
    let dead = store.dead_letters(Some(&sink), &[]).await.expect("dead");
    assert_eq!(dead.len(), 1, "{}", b.name);
    let uids = uids_of(dead[0].decode_events().expect("events"));
    assert_eq!(uids, ["q2", "q3", "q4"], "{}", b.name);
    assert_eq!(
        (dead[0].attempts, dead[0].delivery_id.as_str()),
        (4, "abc123")
    );
    store
        .retried(dead[0].id, 6, "HTTP 503")
        .await
        .expect("retried");
    let again = store.dead_letters(None, &[dead[0].id]).await.expect("dead");
    assert_eq!(
        (again[0].attempts, again[0].reason.as_str()),
        (6, "HTTP 503")
    );
    assert_eq!(store.forget_dead(&[dead[0].id]).await.expect("forget"), 1);
    assert!(
        store
            .dead_letters(Some(&sink), &[])
            .await
            .expect("dead")
            .is_empty()
    );
    store.close().await;
}
on_every_backend!(async webhook_queue_and_dead_letters_on_every_backend);

/// The seed's DSN forms reach the real servers: libpq's `key=value` form for `PostgreSQL` and
/// the Go driver's `user:password@tcp(host:port)/db?params` for MySQL/MariaDB, built from the
/// test servers' URLs, are translated and connect.
async fn the_seeds_dsn_forms_connect_to_the_servers(b: Backend) {
    use eventflow::config::k8m::dsn_to_url;
    let u = reqwest::Url::parse(&b.url).expect("url");
    let db = u.path().trim_start_matches('/');
    let (ty, dsn) = match b.name {
        "postgres" => (
            "postgres",
            format!(
                "host={} port={} user={} password='{}' dbname={db} sslmode=disable",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(5432),
                u.username(),
                u.password().unwrap_or("")
            ),
        ),
        "mysql" => (
            "mysql",
            format!(
                "{}:{}@tcp({}:{})/{db}?charset=utf8mb4&parseTime=True&loc=Local",
                u.username(),
                u.password().unwrap_or(""),
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(3306)
            ),
        ),
        _ => ("sqlite", b.url.trim_start_matches("sqlite://").to_string()),
    };
    let url = dsn_to_url(ty, &dsn).expect("a seed DSN");
    let conn = Db::connect(&url, 1, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{}: {dsn} -> {url}: {e}", b.name));
    conn.execute_raw("SELECT 1".into())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", b.name));
    conn.close().await;
}
on_every_backend!(async the_seeds_dsn_forms_connect_to_the_servers);

/// A backlog is stored a request's worth per row: pushed 250 events at 100 a row are 3 rows,
/// counted as 250 events; a read takes whole rows up to the events asked for; a batch of rows
/// moved to the dead letters keeps every event, in order.
async fn webhook_queue_rows_hold_a_requests_worth_of_events(b: Backend) {
    use eventflow::event::{Event, Finalizers};
    use eventflow::stages::webhook::queue::Store;
    let sink = format!("rows_{}", rand_suffix());
    let store = Store::open(&b.url).await.expect("open");
    let events: Vec<Event> = (0..250)
        .map(|i| Event::new(event(&format!("r{i}")), Finalizers::None))
        .collect();
    store.push(&sink, &events, 100).await.expect("push");
    assert_eq!(store.count(&sink).await.expect("count"), 250, "{}", b.name);
    assert_eq!(store.status(&sink).await.expect("status").queued, 250);
    let all = store.head(&sink, 0, 1000).await.expect("head");
    assert_eq!(
        all.iter()
            .map(eventflow::stages::webhook::queue::Pending::len)
            .collect::<Vec<_>>(),
        [100, 100, 50],
        "{}",
        b.name
    );
    let two = store.head(&sink, 0, 200).await.expect("head");
    assert_eq!(two.len(), 2, "{}: rows up to 200 events", b.name);
    assert_eq!(
        store.head(&sink, 0, 10).await.expect("head").len(),
        1,
        "{}: at least one row, even over the limit",
        b.name
    );
    let uids = uids_of(two[1].events().expect("events"));
    assert_eq!(uids.first().map(String::as_str), Some("r100"), "{}", b.name);
    assert_eq!(uids.len(), 100);
    store
        .bury(&sink, &two, "id-2", 1, "HTTP 400")
        .await
        .expect("bury");
    assert_eq!(store.count(&sink).await.expect("count"), 50, "{}", b.name);
    let dead = store.dead_letters(Some(&sink), &[]).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_count(), 200, "{}", b.name);
    let uids = uids_of(dead[0].decode_events().expect("events"));
    assert_eq!(uids[0], "r0");
    assert_eq!(uids[199], "r199");
    // The row left is stored packed: its events and spans in a fraction of their size.
    let db = connect(&b.url).await;
    let stored = queue_rows(&db, &sink).await;
    assert_eq!(stored.len(), 1);
    let (id, event, packed) = stored[0].clone();
    assert_eq!(event, "", "{}: the text is in `packed`", b.name);
    let packed = packed.expect("packed");
    let (text, _spans) = eventflow::stages::webhook::queue::unpack(&packed).expect("unpacks");
    assert_eq!(text, all[2].event, "{}", b.name);
    assert!(
        packed.len() * 4 < text.len(),
        "{}: {} bytes for {}",
        b.name,
        packed.len(),
        text.len()
    );
    // Damaged, it is read as such: it says why, and moved to the dead letters it keeps its
    // bytes for a person to see.
    let cut = &packed[..packed.len() / 2];
    let hex = eventflow::hex::encode(cut);
    let sql = format!(
        "UPDATE eventflow_webhook_queue SET packed = {} WHERE id = {id}",
        match b.name {
            "postgres" => format!("'\\x{hex}'::bytea"),
            _ => format!("X'{hex}'"),
        }
    );
    db.execute_raw(sql).await.expect("damage the row");
    let head = store.head(&sink, 0, 1000).await.expect("head");
    let why = head[0].events().expect_err("damaged").to_string();
    assert!(why.contains("does not unpack"), "{}: {why}", b.name);
    store.bury(&sink, &head, "", 0, &why).await.expect("bury");
    let dead = store.dead_letters(Some(&sink), &[]).await.expect("dead");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[1].events, format!("[\"{hex}\"]"), "{}", b.name);
    assert_eq!(store.count(&sink).await.expect("count"), 0);
    db.close().await;
    store.close().await;
}
on_every_backend!(async webhook_queue_rows_hold_a_requests_worth_of_events);

/// A sink's queue rows as stored: id, `event`, `packed`.
async fn queue_rows(db: &Db, sink: &str) -> Vec<(i64, String, Option<Vec<u8>>)> {
    let sql = format!(
        "SELECT id, event, packed FROM eventflow_webhook_queue WHERE sink = '{sink}' ORDER BY id"
    );
    macro_rules! fetch {
        ($pool:expr) => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all($pool)
                .await
                .expect("queue rows")
        };
    }
    match db {
        Db::Sqlite(p) => fetch!(p),
        Db::Postgres(p) => fetch!(p),
        Db::MySql(p) => fetch!(p),
    }
}

/// A queue written by an earlier version (one event per row, no `n` or `form` column) is
/// migrated when the store opens: the columns are added, the old rows are read as one event
/// each, in order with the new ones, and only the new ones say they are in this version's form. (SQLite only: the test drops the column, which would disturb other tests
/// sharing a server.)
#[tokio::test]
async fn a_queue_of_the_earlier_one_event_per_row_format_is_read_after_the_migration() {
    use eventflow::event::{Event, Finalizers};
    use eventflow::stages::webhook::queue::Store;
    let b = Backend::sqlite();
    Store::open(&b.url).await.expect("open").close().await;
    let pool = sqlx::SqlitePool::connect(&b.url).await.expect("connect");
    for earlier in [
        "DROP INDEX eventflow_webhook_queue_sink_id_n",
        "CREATE INDEX eventflow_webhook_queue_sink_id ON eventflow_webhook_queue (sink, id)",
        "ALTER TABLE eventflow_webhook_queue DROP COLUMN n",
        "ALTER TABLE eventflow_webhook_queue DROP COLUMN form",
        "ALTER TABLE eventflow_webhook_queue DROP COLUMN spans",
        "ALTER TABLE eventflow_webhook_queue DROP COLUMN packed",
    ] {
        sqlx::query(earlier)
            .execute(&pool)
            .await
            .expect("the earlier table: no n, form, spans or packed, indexed by (sink, id)");
    }
    for i in 0..3 {
        let stored = eventflow::event::to_stored(&event(&format!("old{i}"))).expect("stored");
        sqlx::query(
            "INSERT INTO eventflow_webhook_queue (sink, born_at, event) VALUES ('s', 1, ?)",
        )
        .bind(stored)
        .execute(&pool)
        .await
        .expect("old row");
    }
    pool.close().await;
    let store = Store::open(&b.url).await.expect("open migrates");
    let news: Vec<Event> = (0..4)
        .map(|i| Event::new(event(&format!("new{i}")), Finalizers::None))
        .collect();
    store.push("s", &news, 4).await.expect("push");
    assert_eq!(store.count("s").await.expect("count"), 7);
    let rows = store.head("s", 0, 100).await.expect("head");
    let uids: Vec<String> = rows
        .iter()
        .flat_map(|r| r.events().expect("events"))
        .map(|e| e.uid)
        .collect();
    assert_eq!(
        uids,
        ["old0", "old1", "old2", "new0", "new1", "new2", "new3"]
    );
    assert_eq!(
        rows.iter()
            .map(|r| (r.n, r.form, r.spans.is_some()))
            .collect::<Vec<_>>(),
        [
            (None, None, false),
            (None, None, false),
            (None, None, false),
            (Some(4), Some(eventflow::event::STORED_FORM), true)
        ]
    );
    let refs: Vec<String> = rows[3]
        .refs()
        .expect("through the spans")
        .iter()
        .map(|r| r.uid.to_string())
        .collect();
    assert_eq!(refs, ["new0", "new1", "new2", "new3"]);
    store.close().await;
    // The migrated table also gets the index that finds the head of the queue without reading
    // the rows (a drain reads each row once).
    let pool = sqlx::SqlitePool::connect(&b.url).await.expect("connect");
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id, COALESCE(n, 1) FROM eventflow_webhook_queue WHERE sink = 's' AND id > 0 ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("plan");
    assert!(
        plan.iter().any(|p| p
            .3
            .contains("COVERING INDEX eventflow_webhook_queue_sink_id_n")),
        "{plan:?}"
    );
    pool.close().await;
}

/// Replicas (or pipelines) starting at the same moment each create the table if it is missing:
/// every one of them must start (PostgreSQL's `CREATE ... IF NOT EXISTS` is not atomic).
/// Run 500 times on PostgreSQL 15 in a loop (300 with `eventflow_schema` in place, 200 with it
/// dropped before each run, so the schema table is created in the race too): no failure.
async fn replicas_creating_one_table_at_once_all_start(b: Backend) {
    let table = table_name("race");
    let dbs: Vec<Db> = futures::future::join_all((0..8).map(|_| connect(&b.url))).await;
    let results = futures::future::join_all(
        dbs.iter()
            .map(|db| eventflow::state::events::ensure_table(db, &table)),
    )
    .await;
    for r in results {
        if let Err(e) = r {
            panic!("{}: a replica failed to create the table: {e}", b.name);
        }
    }
    assert!(rows(&dbs[0], &table).await.is_empty());
}
on_every_backend!(async replicas_creating_one_table_at_once_all_start);
