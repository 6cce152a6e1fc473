//! The `kube_events` source against the fake API server, through the real kube client over HTTP:
//! each change once, nothing lost across restarts, retries with backoff, TTL deletes ignored,
//! bad data skipped, both APIs, token auth, several clusters.

mod support;
use support::wait_for;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eventflow::component::StageKind;
use eventflow::engine::Topology;
use eventflow::event::EventData;
use eventflow::stages::kube_events::KubeEventsConfig;
use eventflow::testkit::{CountingSink, PipelineBuilder};
use fake_apiserver::{CloseMode, FakeApiServer, Op, sample_event};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

struct Env {
    fake: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

async fn env() -> Env {
    let fake = FakeApiServer::start().await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, None)
        .expect("kubeconfig");
    Env {
        fake,
        dir,
        kubeconfig,
    }
}

impl Env {
    fn state(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("state.db").display())
    }

    fn create(&self, name: &str, ty: &str) -> serde_json::Value {
        self.fake
            .create(
                "default",
                sample_event("default", name, "BackOff", ty, &format!("about {name}")),
            )
            .expect("create")
    }
}

// Called with `json!(..)` literals.
#[allow(clippy::needless_pass_by_value)]
fn config(kubeconfig: &Path, extra: serde_json::Value) -> Arc<KubeEventsConfig> {
    let mut v = json!({"kubeconfig": kubeconfig, "backoff": {"initial": "100ms", "max": "1s"}});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    Arc::new(serde_json::from_value(v).expect("config"))
}

async fn start(env: &Env, cfg: Arc<KubeEventsConfig>) -> (Topology, CountingSink) {
    let sink = CountingSink::collecting();
    let p = PipelineBuilder::new()
        .stage("k8s", "kube_events", StageKind::Source, &[], cfg, 0)
        .stage(
            "out",
            "counting",
            StageKind::Sink,
            &["k8s"],
            Arc::new(sink.clone()),
            0,
        )
        .state(&env.state())
        .build();
    (Topology::start(p).await.expect("start"), sink)
}

/// (name, resourceVersion) of what the sink got, in order.
fn versions(sink: &CountingSink) -> Vec<(String, String)> {
    sink.events()
        .iter()
        .map(|e: &EventData| (e.name.clone(), e.resource_version.clone()))
        .collect()
}

fn assert_no_duplicates(sink: &CountingSink) {
    let mut v = versions(sink);
    let n = v.len();
    v.sort();
    v.dedup();
    assert_eq!(
        v.len(),
        n,
        "a (uid, resourceVersion) was emitted twice: {:?}",
        versions(sink)
    );
}

/// Waits for the sink to hold exactly `n` events, then checks nothing more arrives shortly.
async fn settle(sink: &CountingSink, n: u64) {
    wait_for(&format!("{n} events"), T, || sink.get() >= n).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.get(), n, "events: {:?}", versions(sink));
}

#[tokio::test]
async fn lists_in_pages_then_emits_creates_and_changes_but_not_deletes() {
    let env = env().await;
    for i in 0..5 {
        env.create(&format!("pod-{i}.1"), "Warning");
    }
    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({"page_size": 2}))).await;
    settle(&sink, 5).await;
    let lists: Vec<_> = env
        .fake
        .requests()
        .into_iter()
        .filter(fake_apiserver::Recorded::is_list)
        .collect();
    assert_eq!(lists.len(), 3, "5 events in pages of 2");
    assert!(lists[1].has_continue() && lists[2].has_continue());
    assert!(env.fake.wait_for_watchers(1, T).await);

    env.create("new.1", "Normal");
    env.fake.bump_count("default", "new.1").expect("patch");
    env.fake.delete("default", "pod-0.1").expect("delete");
    settle(&sink, 7).await;
    let evs = sink.events();
    assert_eq!(evs[5].name, "new.1");
    assert_eq!((evs[5].count, evs[6].count), (1, 2), "count 1 then 2");
    assert_ne!(evs[5].resource_version, evs[6].resource_version);
    assert!(
        evs.iter().all(|e| &*e.cluster == "fake"),
        "cluster = context name"
    );
    assert_no_duplicates(&sink);
    topo.shutdown(T).await;
}

#[tokio::test]
async fn closed_aborted_and_expired_watches_resume_without_duplicates() {
    let env = env().await;
    for i in 0..3 {
        env.create(&format!("a-{i}.1"), "Warning");
    }
    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({}))).await;
    settle(&sink, 3).await;
    let mut expected = 3;
    for (i, mode) in [CloseMode::Graceful, CloseMode::Abort]
        .into_iter()
        .enumerate()
    {
        assert!(env.fake.wait_for_watchers(1, T).await);
        let watches = env.fake.requests().iter().filter(|r| r.is_watch()).count();
        env.fake.close_watches(mode);
        assert!(
            env.fake
                .wait_for_requests(watches + 1, fake_apiserver::Recorded::is_watch, T)
                .await
        );
        env.create(&format!("after-close-{i}.1"), "Normal");
        expected += 1;
        settle(&sink, expected).await;
    }
    // 410: the watch's resourceVersion expired; the source relists and emits nothing twice.
    let lists = env.fake.requests().iter().filter(|r| r.is_list()).count();
    env.fake.faults(|f| f.expire_next_watch = 1);
    env.fake.close_watches(CloseMode::Graceful);
    assert!(
        env.fake
            .wait_for_requests(lists + 1, fake_apiserver::Recorded::is_list, T)
            .await
    );
    env.create("after-410.1", "Normal");
    env.fake.bump_count("default", "a-0.1").expect("patch");
    expected += 2;
    settle(&sink, expected).await;
    assert_no_duplicates(&sink);
    topo.shutdown(T).await;
}

#[tokio::test]
async fn list_failures_are_retried_with_growing_backoff() {
    let env = env().await;
    env.create("x.1", "Warning");
    for _ in 0..3 {
        env.fake.fail_next(
            Op::List,
            500,
            "InternalError",
            "etcdserver: request timed out",
        );
    }
    let (topo, sink) = start(
        &env,
        config(
            &env.kubeconfig,
            json!({"backoff": {"initial": "200ms", "max": "1s"}}),
        ),
    )
    .await;
    settle(&sink, 1).await;
    let at: Vec<u64> = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.is_list())
        .map(|r| r.at_ms)
        .collect();
    assert_eq!(at.len(), 4, "three failures, then success");
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // Delays are uniform in [d/2, d] with d = 200ms, 400ms, 800ms.
    assert!(
        gaps[0] >= 100 && gaps[1] >= 200 && gaps[2] >= 400,
        "gaps {gaps:?}"
    );
    topo.shutdown(T).await;
}

#[tokio::test]
async fn a_watch_that_closes_at_once_is_backed_off_then_relisted() {
    let env = env().await;
    env.create("x.1", "Warning");
    env.fake.faults(|f| f.empty_watches = 3);
    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({}))).await;
    settle(&sink, 1).await;
    assert!(
        env.fake
            .wait_for_requests(2, fake_apiserver::Recorded::is_list, T)
            .await,
        "relisted after 3 empty watches"
    );
    assert!(env.fake.wait_for_watchers(1, T).await);
    let watches: Vec<u64> = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.is_watch())
        .map(|r| r.at_ms)
        .collect();
    assert!(
        watches.windows(2).take(2).all(|w| w[1] - w[0] >= 50),
        "backoff between empty watches: {watches:?}"
    );
    env.create("y.1", "Warning");
    settle(&sink, 2).await;
    assert_no_duplicates(&sink);
    topo.shutdown(T).await;
}

#[tokio::test]
async fn malformed_objects_and_lines_are_skipped_and_the_stream_goes_on() {
    let env = env().await;
    env.create("good-1.1", "Warning");
    let mut bad = sample_event("default", "bad.1", "BackOff", "Warning", "m");
    bad["count"] = json!("not a number");
    env.fake.create("default", bad).expect("create bad");
    env.create("good-2.1", "Warning");
    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({}))).await;
    settle(&sink, 2).await;
    assert!(env.fake.wait_for_watchers(1, T).await);
    env.fake
        .inject_line("{\"type\":\"ADDED\",\"object\":{\"kind\":");
    env.fake.inject_line("this is not JSON");
    env.create("good-3.1", "Warning");
    settle(&sink, 3).await;
    let names: Vec<String> = sink.events().iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, ["good-1.1", "good-2.1", "good-3.1"]);
    topo.shutdown(T).await;
}

#[tokio::test]
async fn events_api_with_a_bearer_token_and_selectors() {
    let env = env().await;
    env.fake
        .faults(|f| f.require_bearer = Some("s3cr3t-token".into()));
    env.fake
        .write_kubeconfig(&env.kubeconfig, Some("s3cr3t-token"))
        .expect("kubeconfig");
    env.create("w.1", "Warning");
    env.create("n.1", "Normal");
    let cfg = config(
        &env.kubeconfig,
        json!({"api": "events.k8s.io/v1", "field_selector": "type=Warning", "cluster": "prod"}),
    );
    let (topo, sink) = start(&env, cfg).await;
    settle(&sink, 1).await;
    let e = &sink.events()[0];
    assert_eq!(
        (e.name.as_str(), e.message.as_str(), &*e.cluster),
        ("w.1", "about w.1", "prod")
    );
    assert_eq!(e.api_version, eventflow::event::ApiVersion::EventsV1);
    let reqs = env.fake.requests();
    assert!(
        reqs.iter()
            .all(|r| r.path.starts_with("/apis/events.k8s.io/v1/"))
    );
    assert!(
        reqs.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer s3cr3t-token"))
    );
    topo.shutdown(T).await;
}

#[tokio::test]
async fn a_restart_emits_what_changed_while_stopped_and_nothing_else() {
    let env = env().await;
    for i in 0..4 {
        env.create(&format!("old-{i}.1"), "Warning");
    }
    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({}))).await;
    settle(&sink, 4).await;
    assert!(topo.shutdown(T).await.is_empty());

    // While stopped: two new events, one changed, one deleted.
    env.create("new-a.1", "Warning");
    env.create("new-b.1", "Warning");
    env.fake.bump_count("default", "old-1.1").expect("patch");
    env.fake.delete("default", "old-2.1").expect("delete");

    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({}))).await;
    settle(&sink, 3).await;
    let mut names: Vec<String> = sink.events().iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["new-a.1", "new-b.1", "old-1.1"]);
    topo.shutdown(T).await;

    // A third start with nothing changed emits nothing.
    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({}))).await;
    assert!(env.fake.wait_for_watchers(1, T).await);
    settle(&sink, 0).await;
    topo.shutdown(T).await;
}

#[tokio::test]
async fn ttl_deletions_are_not_emitted_and_prune_the_checkpoint() {
    let env = env().await;
    env.fake
        .faults(|f| f.event_ttl = Some(Duration::from_millis(500)));
    for i in 0..3 {
        env.create(&format!("short-{i}.1"), "Warning");
    }
    let (topo, sink) = start(&env, config(&env.kubeconfig, json!({}))).await;
    settle(&sink, 3).await;
    let fake = &env.fake;
    wait_for("TTL expiry", T, || fake.objects().is_empty()).await;
    settle(&sink, 3).await;
    topo.shutdown(T).await;
    let pool = sqlx::SqlitePool::connect(&env.state())
        .await
        .expect("state db");
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM eventflow_kube_checkpoint")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "deleted events leave the checkpoint");
}

#[tokio::test]
async fn max_event_age_skips_old_events_at_the_first_start_only() {
    let env = env().await;
    let mut old = sample_event("default", "old.1", "BackOff", "Warning", "m");
    old["lastTimestamp"] = json!("2020-01-01T00:00:00Z");
    old["firstTimestamp"] = json!("2020-01-01T00:00:00Z");
    env.fake.create("default", old).expect("create");
    env.create("recent.1", "Warning");
    let cfg = config(&env.kubeconfig, json!({"max_event_age": "1h"}));
    let (topo, sink) = start(&env, cfg.clone()).await;
    settle(&sink, 1).await;
    assert_eq!(sink.events()[0].name, "recent.1");
    topo.shutdown(T).await;
    let (topo, sink) = start(&env, cfg).await;
    assert!(env.fake.wait_for_watchers(1, T).await);
    settle(&sink, 0).await;
    topo.shutdown(T).await;
}

#[tokio::test]
async fn two_clusters_in_one_pipeline_are_tagged() {
    let a = env().await;
    let b = env().await;
    a.create("from-a.1", "Warning");
    b.create("from-b.1", "Warning");
    let sink = CountingSink::collecting();
    let p = PipelineBuilder::new()
        .stage(
            "east",
            "kube_events",
            StageKind::Source,
            &[],
            config(&a.kubeconfig, json!({"cluster": "east"})),
            0,
        )
        .stage(
            "west",
            "kube_events",
            StageKind::Source,
            &[],
            config(&b.kubeconfig, json!({"cluster": "west"})),
            0,
        )
        .stage(
            "out",
            "counting",
            StageKind::Sink,
            &["east", "west"],
            Arc::new(sink.clone()),
            0,
        )
        .state(&a.state())
        .build();
    let topo = Topology::start(p).await.expect("start");
    settle(&sink, 2).await;
    let mut got: Vec<(String, String)> = sink
        .events()
        .iter()
        .map(|e| (e.cluster.to_string(), e.name.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("east".into(), "from-a.1".into()),
            ("west".into(), "from-b.1".into())
        ]
    );
    topo.shutdown(T).await;
}

/// The object's JSON text (`raw`) is kept only when a stage downstream reads it: not for a
/// pipeline that never writes it; from a reload that adds a `sql` sink (its `raw` column) on,
/// for every event, in the table too.
#[tokio::test]
async fn raw_is_kept_only_when_a_stage_downstream_reads_it() {
    let env = env().await;
    let cfg = config(&env.kubeconfig, json!({}));
    let sink = CountingSink::collecting();
    let pipeline = |with_sql: bool| {
        let mut b = PipelineBuilder::new()
            .stage("k8s", "kube_events", StageKind::Source, &[], cfg.clone(), 0)
            .stage(
                "out",
                "counting",
                StageKind::Sink,
                &["k8s"],
                Arc::new(sink.clone()),
                0,
            );
        if with_sql {
            let sql: eventflow::stages::sql::SqlConfig = serde_json::from_value(json!({
                "url": format!("sqlite://{}", env.dir.path().join("events.db").display()),
                "batch": {"max_events": 1, "max_wait": "10ms"},
            }))
            .expect("sql config");
            b = b.stage("db", "sql", StageKind::Sink, &["k8s"], Arc::new(sql), 0);
        }
        b.state(&env.state()).build()
    };
    env.create("before", "Warning");
    let mut topo = Topology::start(pipeline(false)).await.expect("start");
    settle(&sink, 1).await;
    assert_eq!(
        sink.events()[0].raw,
        None,
        "no stage reads raw: the object's text is not kept"
    );

    topo.apply(pipeline(true))
        .await
        .expect("reload with a sql sink");
    env.create("after", "Warning");
    let raw_of = |name: &str| {
        sink.events()
            .into_iter()
            .find(|e| e.name == name)
            .and_then(|e| e.raw.map(String::from))
    };
    wait_for("the event created after the reload", T, || {
        raw_of("after").is_some()
    })
    .await;
    let raw: serde_json::Value =
        serde_json::from_str(&raw_of("after").expect("raw")).expect("raw is the object's JSON");
    assert_eq!(raw["metadata"]["name"], "after");
    assert_eq!(raw["message"], "about after");
    // The API server's object carries managedFields; raw is the rest of it.
    let mut served = env
        .fake
        .objects()
        .into_iter()
        .find(|o| o["metadata"]["name"] == "after")
        .expect("served");
    let managed = served["metadata"]
        .as_object_mut()
        .and_then(|m| m.remove("managedFields"));
    assert!(managed.is_some_and(|m| m.is_array()), "{served}");
    assert_eq!(raw, served, "raw is the object without its managedFields");
    let url = format!("sqlite://{}", env.dir.path().join("events.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("events.db");
    let mut stored: Option<String> = None;
    for _ in 0..100 {
        stored = sqlx::query_scalar("SELECT raw FROM k8s_events WHERE name = 'after'")
            .fetch_optional(&pool)
            .await
            .expect("select");
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: serde_json::Value =
        serde_json::from_str(&stored.expect("the row of `after`")).expect("JSON");
    assert_eq!(stored, raw, "the raw column holds the object");
    topo.shutdown(Duration::from_secs(10)).await;
}
