//! `enrich` in the real binary against the fake API server: labels of the involved object and
//! its namespace, the top controller through ReplicaSet -> Deployment, routing by namespace
//! label, changes and deletions, misses, and no API request per event.

#![allow(clippy::float_cmp)] // counters are whole numbers

mod support;

use std::path::Path;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use support::*;

fn object(api: &str, kind: &str, ns: &str, name: &str, labels: Value) -> Value {
    let mut o = json!({"apiVersion": api, "kind": kind, "metadata": {"name": name}});
    o["metadata"]["labels"] = labels;
    if !ns.is_empty() {
        o["metadata"]["namespace"] = json!(ns);
    }
    o
}

fn owned_by(mut o: Value, kind: &str, name: &str) -> Value {
    o["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}
    ]);
    o
}

fn put(fake: &FakeApiServer, o: Value) {
    fake.put_object(o).expect("put object");
}

/// A Deployment -> ReplicaSet -> Pod chain in namespace `ns`.
fn workload(fake: &FakeApiServer, ns: &str, deploy: &str, pod: &str, labels: Value) {
    let rs = format!("{deploy}-7d9f");
    put(
        fake,
        object("apps/v1", "Deployment", ns, deploy, json!({"app": deploy})),
    );
    put(
        fake,
        owned_by(
            object("apps/v1", "ReplicaSet", ns, &rs, json!({"app": deploy})),
            "Deployment",
            deploy,
        ),
    );
    put(
        fake,
        owned_by(object("v1", "Pod", ns, pod, labels), "ReplicaSet", &rs),
    );
}

fn pod_event(fake: &FakeApiServer, ns: &str, pod: &str, n: usize) {
    fake.create(
        ns,
        fake_apiserver::sample_event(ns, &format!("{pod}.{n}"), "BackOff", "Warning", "m"),
    )
    .expect("create event");
}

fn pipeline(dir: &Path, kc: &Path, route: &str) -> std::path::PathBuf {
    pipeline_waiting(dir, kc, route, "500ms")
}

fn pipeline_waiting(dir: &Path, kc: &Path, route: &str, wait: &str) -> std::path::PathBuf {
    write(
        dir,
        "pipeline.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstate:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n  who:\n    type: enrich\n    inputs: [k8s]\n    kubeconfig: {kc}\n    object_annotations: [pager.example.com/rotation]\n    wait_for_cache: {wait}\n  route:\n    type: filter\n    inputs: [who]\n{route}  out:\n    type: stdout\n    inputs: [route]\n",
            state = dir.join("state.db").display(),
            kc = kc.display(),
        ),
    )
}

#[test]
fn events_carry_labels_and_owner_and_route_by_namespace_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_rt, fake, kc) = fake_cluster(dir.path());
    put(
        &fake,
        object("v1", "Namespace", "", "pay", json!({"team": "payments"})),
    );
    put(
        &fake,
        object("v1", "Namespace", "", "web", json!({"team": "storefront"})),
    );
    let mut pod = object(
        "v1",
        "Pod",
        "pay",
        "api-7d9f-abcde",
        json!({"app": "api", "tier": "backend"}),
    );
    pod["metadata"]["annotations"] =
        json!({"pager.example.com/rotation": "payments-oncall", "huge": "x".repeat(10_000)});
    workload(&fake, "pay", "api", "api-7d9f-abcde", json!({}));
    put(&fake, owned_by(pod.clone(), "ReplicaSet", "api-7d9f"));
    workload(
        &fake,
        "web",
        "shop",
        "shop-7d9f-zzzzz",
        json!({"app": "shop"}),
    );

    let p = pipeline(
        dir.path(),
        &kc,
        "    namespace_labels: {team: [payments]}\n",
    );
    let mut r = Running::start(&[], &p);
    let port = r.api_port();
    pod_event(&fake, "web", "shop-7d9f-zzzzz", 1);
    pod_event(&fake, "pay", "api-7d9f-abcde", 1);
    let e = r.next_event();
    assert_eq!(e["namespace"], "pay", "{e}");
    assert_eq!(e["object_labels"], json!({"app": "api", "tier": "backend"}));
    assert_eq!(e["namespace_labels"], json!({"team": "payments"}));
    assert_eq!(
        e["object_annotations"],
        json!({"pager.example.com/rotation": "payments-oncall"}),
        "only the listed annotation"
    );
    assert_eq!(e["owner_kind"], "Deployment");
    assert_eq!(e["owner_name"], "api");

    // A label changed on the Pod applies to the next event.
    let mut changed = owned_by(pod.clone(), "ReplicaSet", "api-7d9f");
    changed["metadata"]["labels"]["tier"] = json!("frontend");
    put(&fake, changed);
    std::thread::sleep(Duration::from_millis(500));
    pod_event(&fake, "pay", "api-7d9f-abcde", 2);
    let e = r.next_event();
    assert_eq!(e["object_labels"]["tier"], "frontend", "{e}");

    // A deleted Pod's events still get its labels within keep_deleted.
    fake.delete_object("Pod", "pay", "api-7d9f-abcde")
        .expect("delete");
    std::thread::sleep(Duration::from_millis(500));
    pod_event(&fake, "pay", "api-7d9f-abcde", 3);
    let e = r.next_event();
    assert_eq!(e["object_labels"]["app"], "api", "{e}");
    assert_eq!(e["owner_name"], "api");

    // A Pod that never appears: the event waits wait_for_cache, then passes with what is
    // known (the namespace's labels), counted as a miss.
    pod_event(&fake, "pay", "ghost", 1);
    let e = r.next_event();
    assert!(e.get("object_labels").is_none(), "{e}");
    assert_eq!(e["namespace_labels"]["team"], "payments");
    assert_eq!(
        metric(
            port,
            "eventflow_enrich_events_total{stage=\"who\",result=\"enrich_miss\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            port,
            "eventflow_enrich_events_total{stage=\"who\",result=\"enriched\"}"
        ),
        4.0,
        "three about api's Pod, one about shop's (filtered out after enrich)"
    );
    r.no_event_within(Duration::from_millis(300));
    r.stop_ok();
}

#[test]
fn a_forbidden_kind_does_not_hold_events_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_rt, fake, kc) = fake_cluster(dir.path());
    fake.faults(|f| f.forbid_resources = vec!["pods".into()]);
    put(
        &fake,
        object("v1", "Namespace", "", "pay", json!({"team": "payments"})),
    );
    workload(&fake, "pay", "api", "api-1", json!({"app": "api"}));
    let p = pipeline_waiting(dir.path(), &kc, "    types: [Warning]\n", "30s");
    let mut r = Running::start(&[], &p);
    let port = r.api_port();
    let started = std::time::Instant::now();
    pod_event(&fake, "pay", "api-1", 1);
    let e = r.next_event();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited {:?} for a kind it may not watch",
        started.elapsed()
    );
    assert!(e.get("object_labels").is_none(), "{e}");
    assert_eq!(e["namespace_labels"]["team"], "payments", "{e}");
    assert!(
        metric(
            port,
            "eventflow_enrich_watch_errors_total{stage=\"who\",kind=\"Pod\"}"
        ) >= 1.0
    );
    let (_, logs) = r.stop_ok();
    assert!(
        logs.iter()
            .any(|l| l.contains("cannot watch this kind") && l.contains("Pod")),
        "{logs:#?}"
    );
}

#[test]
fn owners_are_matched_by_glob_and_a_job_leads_to_its_cronjob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_rt, fake, kc) = fake_cluster(dir.path());
    put(&fake, object("v1", "Namespace", "", "ops", json!({})));
    put(
        &fake,
        object("batch/v1", "CronJob", "ops", "backup", json!({})),
    );
    put(
        &fake,
        owned_by(
            object("batch/v1", "Job", "ops", "backup-2901", json!({})),
            "CronJob",
            "backup",
        ),
    );
    put(
        &fake,
        owned_by(
            object(
                "v1",
                "Pod",
                "ops",
                "backup-2901-x1",
                json!({"job": "backup"}),
            ),
            "Job",
            "backup-2901",
        ),
    );
    workload(&fake, "ops", "web", "web-7d9f-a", json!({}));
    let p = pipeline(dir.path(), &kc, "    owners: [\"CronJob/back*\"]\n");
    let mut r = Running::start(&[], &p);
    pod_event(&fake, "ops", "web-7d9f-a", 1);
    pod_event(&fake, "ops", "backup-2901-x1", 1);
    let e = r.next_event();
    assert_eq!(e["object_name"], "backup-2901-x1", "{e}");
    assert_eq!(e["owner_kind"], "CronJob");
    assert_eq!(e["owner_name"], "backup");
    r.no_event_within(Duration::from_millis(300));
    r.stop_ok();
}

#[test]
fn ten_thousand_events_about_a_thousand_objects_make_no_api_request_per_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_rt, fake, kc) = fake_cluster(dir.path());
    for n in 0..10 {
        put(
            &fake,
            object(
                "v1",
                "Namespace",
                "",
                &format!("ns{n}"),
                json!({"team": format!("t{n}")}),
            ),
        );
    }
    for i in 0..1000 {
        let ns = format!("ns{}", i % 10);
        put(
            &fake,
            object(
                "v1",
                "Pod",
                &ns,
                &format!("p{i}"),
                json!({"app": format!("a{i}")}),
            ),
        );
    }
    for round in 0..10 {
        for i in 0..1000 {
            pod_event(&fake, &format!("ns{}", i % 10), &format!("p{i}"), round);
        }
    }
    let before = fake.requests().len();
    let db = dir.path().join("events.db");
    let p = write(
        dir.path(),
        "pipeline.yaml",
        &format!(
            "state:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n  who:\n    type: enrich\n    inputs: [k8s]\n    kubeconfig: {kc}\n  db:\n    type: sql\n    inputs: [who]\n    url: sqlite://{db}\n",
            state = dir.path().join("state.db").display(),
            kc = kc.display(),
            db = db.display(),
        ),
    );
    let r = Running::start(&[], &p);
    wait_until("10,000 rows", Duration::from_secs(60), || {
        sqlite_rows::<(i64,)>(&db, "SELECT COUNT(*) FROM k8s_events")
            .first()
            .is_some_and(|(n,)| *n == 10_000)
    });
    r.stop_ok();
    let labelled = sqlite_rows::<(String,)>(
        &db,
        "SELECT labels FROM k8s_events WHERE json_extract(labels, '$.object.app') = 'a' || substr(name, 2, instr(name, '.') - 2) AND json_extract(labels, '$.namespace.team') = 't' || substr(namespace, 3)",
    );
    assert_eq!(
        labelled.len(),
        10_000,
        "every row has its Pod's and namespace's labels"
    );
    let object_requests: Vec<_> = fake.requests()[before..]
        .iter()
        .filter(|q| !q.path.contains("/events"))
        .map(|q| format!("{} {}?{}", q.method, q.path, q.query))
        .collect();
    eprintln!(
        "requests for objects over 10,000 events about 1,000 Pods: {}",
        object_requests.len()
    );
    // One list and one watch per kind (Namespaces, Pods), plus a retry or two.
    assert!(
        object_requests.len() <= 8,
        "only the watches: {object_requests:#?}"
    );
}

#[test]
fn the_route_by_team_example_passes_its_own_cases() {
    let out = bin()
        .args(["test", "pipelines/examples/route-by-team.yaml"])
        .current_dir(repo("."))
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 passed; 0 failed"), "{text}");
}

/// The natural pipeline `kube_events (kubeconfig: x) -> enrich -> filter`: the `enrich` stage
/// names no connection, so it uses its source's (it fell back to `~/.kube/config` and the
/// pipeline did not start). Run with no `~/.kube/config` and no `$KUBECONFIG` to fall back on.
#[test]
fn enrich_without_a_kubeconfig_uses_the_one_of_its_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_rt, fake, kc) = fake_cluster(dir.path());
    put(
        &fake,
        object("v1", "Namespace", "", "pay", json!({"team": "payments"})),
    );
    workload(&fake, "pay", "api", "api-7d9f-abcde", json!({"app": "api"}));
    let p = write(
        dir.path(),
        "pipeline.yaml",
        &format!(
            "state:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n  who:\n    type: enrich\n    inputs: [k8s]\n  route:\n    type: filter\n    inputs: [who]\n    namespace_labels: {{team: [payments]}}\n  out:\n    type: stdout\n    inputs: [route]\n",
            state = dir.path().join("state.db").display(),
            kc = kc.display(),
        ),
    );
    let home = tempfile::tempdir().expect("empty home");
    let mut cmd = bin();
    cmd.env("HOME", home.path()).env_remove("KUBECONFIG");
    let mut r = Running::start_cmd(cmd, &[], &p);
    pod_event(&fake, "pay", "api-7d9f-abcde", 1);
    let e = r.next_event();
    assert_eq!(e["namespace_labels"]["team"], "payments", "{e}");
    assert_eq!(e["owner_kind"], "Deployment", "{e}");
    let _ = r.stop_ok();
}
