//! `eventflow run` as a process against the fake API server: a kill -9 loses nothing (with a
//! SQL sink, and with a durable webhook whose receiver is down at the time), a 403
//! names the missing permission, readiness follows the API server's health, and `run` without
//! a file explains what it looked for.

mod support;

use std::path::Path;
use std::time::Duration;

use fake_apiserver::{Failure, FakeApiServer, Op, sample_event};
use support::*;

fn get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path)
}

fn pipeline(dir: &Path, kubeconfig: &Path, extra_source: &str) -> std::path::PathBuf {
    write(
        dir,
        "pipeline.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstate:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n    backoff: {{initial: 100ms, max: 500ms}}\n{extra_source}  db:\n    type: sql\n    inputs: [k8s]\n    url: sqlite://{db}\n    batch: {{max_events: 50, max_wait: 20ms}}\n",
            state = dir.join("state.db").display(),
            kc = kubeconfig.display(),
            db = dir.join("events.db").display(),
        ),
    )
}

fn uids_in(db: &Path) -> std::collections::BTreeSet<String> {
    sqlite_column(db, "SELECT uid FROM k8s_events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let fake = FakeApiServer::start().await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kc, None).expect("kubeconfig");
    let p = pipeline(dir.path(), &kc, "");
    let mut created = std::collections::BTreeSet::new();
    let mut make = |i: usize| {
        created.insert(create_event(
            &fake,
            "default",
            &format!("e-{i}.1"),
            "BackOff",
            "Warning",
        ));
    };
    for i in 0..200 {
        make(i);
    }
    let mut r = tokio::task::block_in_place(|| Running::start(&[], &p));
    // Keep creating while it runs, and kill it in the middle.
    for i in 200..400 {
        make(i);
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    r.child.kill().expect("kill -9");
    let _ = r.child.wait();
    let after_kill = uids_in(&dir.path().join("events.db")).len();
    // While it is down, more events happen.
    for i in 400..500 {
        make(i);
    }
    let r = tokio::task::block_in_place(|| Running::start(&[], &p));
    let db = dir.path().join("events.db");
    tokio::task::block_in_place(|| {
        wait_until("every event stored", Duration::from_secs(30), || {
            uids_in(&db) == created
        });
    });
    eprintln!(
        "rows after the kill: {after_kill}; after the restart: {}",
        created.len()
    );
    let (status, _) = tokio::task::block_in_place(|| r.stop());
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forbidden_names_the_permission_and_readiness_follows_the_api_server() {
    let fake = FakeApiServer::start().await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kc, None).expect("kubeconfig");
    fake.create(
        "default",
        sample_event("default", "x.1", "BackOff", "Warning", "m"),
    )
    .expect("create");
    fake.faults(|f| f.forbid = vec!["list".into()]);
    let p = pipeline(dir.path(), &kc, "    unready_after: 300ms\n");
    let mut r = tokio::task::block_in_place(|| Running::start(&[], &p));
    let line = tokio::task::block_in_place(|| r.wait_log("403 Forbidden"));
    assert!(
        line.contains("\"span\":{\"id\":\"k8s\""),
        "the log names the stage: {line}"
    );
    let server = std::fs::read_to_string(&kc)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))
        .expect("server in the kubeconfig");
    assert!(
        line.contains(&format!("\"server\":\"{}", server.trim_end_matches('/'))),
        "the log names the API server {server}: {line}"
    );

    assert!(
        line.contains("grant the verbs `list` and `watch` on resource `events` in API group \\\"\\\" (core) cluster-wide"),
        "{line}"
    );
    let port = tokio::task::block_in_place(|| r.api_port());
    let (code, body) = get(port, "/readyz");
    assert_eq!(code, 503, "not ready before the initial sync: {body}");
    fake.faults(|f| f.forbid.clear());
    tokio::task::block_in_place(|| {
        wait_until("ready", Duration::from_secs(10), || {
            get(port, "/readyz").0 == 200
        });
    });

    // The API server starts answering 500: after unready_after, not ready; then it recovers.
    fake.faults(|f| {
        for _ in 0..1000 {
            f.fail_next.push_back(Failure {
                op: Op::Any,
                status: 500,
                reason: "InternalError".into(),
                message: "etcdserver: request timed out".into(),
                raw_body: None,
            });
        }
    });
    fake.close_watches(fake_apiserver::CloseMode::Abort);
    tokio::task::block_in_place(|| {
        wait_until("not ready", Duration::from_secs(10), || {
            get(port, "/readyz").0 == 503
        });
    });
    let (_, body) = get(port, "/readyz");
    assert!(body.contains("stage `k8s`: failing for"), "{body}");
    fake.faults(|f| f.fail_next.clear());
    tokio::task::block_in_place(|| {
        wait_until("ready again", Duration::from_secs(10), || {
            get(port, "/readyz").0 == 200
        });
    });
    let (status, _) = tokio::task::block_in_place(|| r.stop());
    assert!(status.success());
}

#[test]
fn run_without_a_file_or_a_cluster_explains_what_it_looked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .arg("run")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Kubernetes configuration found"), "{err}");
    assert!(err.contains("$KUBECONFIG"), "{err}");
    assert!(err.contains("pipelines/demo.yaml"), "{err}");
}

#[test]
fn a_sink_that_cannot_reach_its_target_makes_the_process_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let events = write(
        dir.path(),
        "events.jsonl",
        &(0..3)
            .map(|i| sample_line(i, "Warning") + "\n")
            .collect::<String>(),
    );
    let p = write(
        dir.path(),
        "pipeline.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstages:\n  src:\n    type: file\n    follow: true\n    path: {}\n  hook:\n    type: webhook\n    inputs: [src]\n    url: http://127.0.0.1:{port}/down\n    retries: 1000\n    backoff: {{initial: 50ms, max: 100ms}}\n    unready_after: 300ms\n",
            events.display()
        ),
    );
    let mut r = Running::start(&[], &p);
    let api = r.api_port();
    wait_until("not ready", Duration::from_secs(10), || {
        get(api, "/readyz").0 == 503
    });
    let (_, body) = get(api, "/readyz");
    assert!(body.contains("stage `hook`: failing for"), "{body}");
    // The receiver comes up: deliveries succeed, the process is ready again.
    let _ = Receiver::on_port(port);
    wait_until("ready again", Duration::from_secs(10), || {
        get(api, "/readyz").0 == 200
    });
    let _ = r.stop();
}

/// The size of a durable webhook's queue in the `state` database.
fn queued(state: &str, stage: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let Ok(store) = eventflow::stages::webhook::queue::Store::open(state).await else {
            return 0;
        };
        let n = store.count(stage).await.unwrap_or(0);
        store.close().await;
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_webhook_killed_during_an_outage_delivers_everything_after_a_restart() {
    let fake = FakeApiServer::start().await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kc, None).expect("kubeconfig");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let p = write(
        dir.path(),
        "pipeline.yaml",
        &format!(
            "state:\n  url: {state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n    backoff: {{initial: 100ms, max: 500ms}}\n  hook:\n    type: webhook\n    inputs: [k8s]\n    url: http://127.0.0.1:{port}/hook\n    durable: true\n    backoff: {{initial: 50ms, max: 200ms}}\n",
            kc = kc.display(),
        ),
    );
    let mut created = std::collections::BTreeSet::new();
    let mut make = |i: usize| {
        created.insert(create_event(
            &fake,
            "default",
            &format!("w-{i}.1"),
            "BackOff",
            "Warning",
        ));
    };
    for i in 0..100 {
        make(i);
    }
    let mut r = tokio::task::block_in_place(|| Running::start(&[], &p));
    tokio::task::block_in_place(|| {
        wait_until("100 events queued", Duration::from_secs(30), || {
            queued(&state, "hook") == 100
        });
    });
    // More events while the receiver is still down, then kill -9 in the middle of them.
    for i in 100..150 {
        make(i);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.child.kill().expect("kill -9");
    let _ = r.child.wait();
    let at_kill = tokio::task::block_in_place(|| queued(&state, "hook"));
    // Only events queued but not yet in the source's checkpoint at the kill may come again.
    let checkpointed = sqlite_column(
        &dir.path().join("state.db"),
        "SELECT uid FROM eventflow_kube_checkpoint WHERE source = 'k8s'",
    )
    .intersection(&created)
    .count();
    // The receiver comes back; eventflow starts again.
    let got = Receiver::on_port(port);
    let r = tokio::task::block_in_place(|| Running::start(&[], &p));
    let received = || got.accepted();
    let uid_of = |b: &Got| -> String { b.body["uid"].as_str().unwrap_or_default().to_string() };
    tokio::task::block_in_place(|| {
        wait_until("every event delivered", Duration::from_secs(30), || {
            received()
                .iter()
                .map(uid_of)
                .collect::<std::collections::BTreeSet<_>>()
                == created
        });
    });
    let all = received();
    let ids: std::collections::BTreeSet<&str> =
        all.iter().map(|r| r.delivery_id.as_str()).collect();
    eprintln!(
        "queued at the kill: {at_kill} of 150, checkpointed: {checkpointed}; requests after the restart: {}",
        all.len()
    );
    assert_eq!(
        ids.len(),
        150,
        "a receiver that drops repeats counts each event once"
    );
    assert!(
        all.len() <= 150 + (150 - checkpointed),
        "repeats only of events not checkpointed at the kill: {} requests, {checkpointed} checkpointed",
        all.len()
    );
    let (status, _) = tokio::task::block_in_place(|| r.stop());
    assert!(status.success());
    assert_eq!(tokio::task::block_in_place(|| queued(&state, "hook")), 0);
}

/// An API server that cannot be reached: the source's own line names it (and the stage), and
/// the kube client's duplicate ERROR line ("failed with error ...", neither stage nor server)
/// is folded into it.
#[test]
fn an_unreachable_api_server_is_named_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let kc = write(
        dir.path(),
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: gone\n  context:\n    cluster: gone\ncurrent-context: gone\nusers: []\n"
        ),
    );
    let p = pipeline(dir.path(), &kc, "");
    let mut r = Running::start(&[], &p);
    let line = r.wait_log("cannot list Events from the API server");
    assert!(
        line.contains(&format!("\"server\":\"http://127.0.0.1:{port}"))
            && line.contains("\"id\":\"k8s\""),
        "{line}"
    );
    r.wait_log("cannot list Events from the API server");
    let (_, logs) = r.stop_ok();
    assert!(
        !logs.iter().any(|l| l.contains("failed with error")),
        "{logs:#?}"
    );
}
