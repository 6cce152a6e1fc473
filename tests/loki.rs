//! The loki sink against a strict fake of Loki's push API (`tests/support/loki.rs`: gzip, the
//! JSON schema, per-stream ordering as with `unordered_writes: false`, too-old and too-long
//! entries, tenants and authentication, 429 with `Retry-After`): what ends up stored in which
//! stream, retries, and refusals counted by reason in the metrics a user scrapes.
#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod support;
use support::loki::{Loki, Options};

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use eventflow::engine::Topology;
use eventflow::event::EventData;
use eventflow::event::ack::Status;
use eventflow::stages::loki::LokiConfig;
use eventflow::testkit::{ChannelSource, Feeder, event, source_to_sink};
use serde_json::{Value, json};

async fn pipeline(url: &str, extra: Value) -> (Topology, Feeder) {
    let mut v = json!({"url": url, "backoff": {"initial": "100ms", "max": "500ms"}, "batch": {"max_wait": "50ms"}});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let cfg: LokiConfig = serde_json::from_value(v).unwrap();
    let (src, feed) = ChannelSource::new(4);
    let b = source_to_sink(Arc::new(src), "logs", "loki", Arc::new(cfg), 0);
    (Topology::start(b.build()).await.unwrap(), feed)
}

/// An event of `ty` in `ns`, last seen `secs` seconds after a recent base time.
fn at(uid: &str, ns: &str, ty: &str, secs: i64) -> EventData {
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut e = event(uid);
    e.namespace = ns.into();
    e.type_ = ty.into();
    e.reason = "BackOff".into();
    e.kind = "Pod".into();
    e.object_name = format!("pod-{uid}");
    e.message = format!("message of {uid}");
    e.last_seen = Some(base + chrono::Duration::seconds(secs));
    e
}

#[tokio::test]
async fn events_become_gzipped_entries_in_streams_by_label_in_time_order() {
    let (loki, url) = Loki::start(Options {
        tenant: Some("team-a".into()),
        authorization: Some("Basic dXNlcjpzZWNyZXQ=".into()),
        ..Options::default()
    });
    let (topo, feed) = pipeline(
        &url,
        json!({"tenant": "team-a", "username": "user", "password": "secret"}),
    )
    .await;
    // One batch; in the `shop`/Warning stream the later event comes first.
    let events = vec![
        at("b", "shop", "Warning", 20),
        at("a", "shop", "Warning", 10),
        at("c", "shop", "Normal", 5),
        at("d", "kube-system", "Warning", 1),
    ];
    let expect_ts: Vec<i64> = events
        .iter()
        .map(|e| e.last_seen.unwrap().timestamp_nanos_opt().unwrap())
        .collect();
    let ack = feed.send(events).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let pushes = loki.pushes();
    assert_eq!(pushes.len(), 1);
    assert!(pushes[0].gzip);
    assert_eq!(pushes[0].tenant.as_deref(), Some("team-a"));
    let stored = loki.stored();
    assert_eq!(stored.len(), 4, "{stored:?}");
    let shop_warnings: Vec<&support::loki::Entry> = stored
        .iter()
        .filter(|e| {
            e.labels.get("namespace").map(String::as_str) == Some("shop")
                && e.labels["type"] == "Warning"
        })
        .collect();
    assert_eq!(shop_warnings.len(), 2);
    assert_eq!(
        shop_warnings[0].labels,
        [
            ("cluster", "test"),
            ("namespace", "shop"),
            ("type", "Warning")
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    );
    // In time order within the stream; the line is the event as JSON; the time its last seen.
    let line: Value = serde_json::from_str(&shop_warnings[0].line).unwrap();
    assert_eq!(line["uid"], "a");
    assert_eq!(line["message"], "message of a");
    assert_eq!(shop_warnings[0].ts, expect_ts[1]);
    assert_eq!(shop_warnings[1].ts, expect_ts[0]);
    let streams: std::collections::BTreeSet<_> = stored.iter().map(|e| e.labels.clone()).collect();
    assert_eq!(streams.len(), 3);
    topo.shutdown(Duration::from_secs(10)).await;

    // Without the tenant the fake refuses (401): permanent, the events rejected.
    let (topo, feed) = pipeline(&url, json!({"username": "user", "password": "secret"})).await;
    let ack = feed.send(vec![at("e", "shop", "Warning", 30)]).await;
    assert_eq!(ack.await.unwrap(), Status::Rejected);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn lines_can_be_logfmt_or_a_template_and_labels_any_field() {
    let (loki, url) = Loki::start(Options::default());
    let (topo, feed) = pipeline(
        &url,
        json!({"line": "template", "template": "{{ reason }} {{ kind }}/{{ object_name }}: {{ message }}",
               "labels": ["namespace", "reason"], "static_labels": {"job": "eventflow"}, "gzip": false}),
    )
    .await;
    let ack = feed.send(vec![at("t", "shop", "Warning", 1)]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let stored = loki.stored();
    assert_eq!(stored[0].line, "BackOff Pod/pod-t: message of t");
    assert_eq!(stored[0].labels["reason"], "BackOff");
    assert_eq!(stored[0].labels["job"], "eventflow");
    assert!(!stored[0].labels.contains_key("cluster"));
    assert!(!loki.pushes()[0].gzip);
    topo.shutdown(Duration::from_secs(10)).await;

    let (topo, feed) = pipeline(
        &url,
        json!({"line": "logfmt", "static_labels": {"job": "fmt"}}),
    )
    .await;
    let ack = feed.send(vec![at("l", "shop", "Warning", 2)]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let stored = loki.stored();
    assert_eq!(
        stored.last().unwrap().line,
        "type=Warning reason=BackOff namespace=shop kind=Pod object=pod-l count=1 source=\"\" message=\"message of l\""
    );
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_rate_limited_or_failing_loki_is_retried_after_its_retry_after() {
    let (loki, url) = Loki::start(Options::default());
    loki.answer_next(1, 429, Some("1"));
    loki.answer_next(1, 503, None);
    let (topo, feed) = pipeline(&url, json!({})).await;
    let ack = feed
        .send(vec![
            at("r1", "shop", "Warning", 1),
            at("r2", "shop", "Warning", 2),
        ])
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let pushes = loki.pushes();
    assert_eq!(
        pushes.iter().map(|p| p.status).collect::<Vec<_>>(),
        [429, 503, 204]
    );
    assert!(
        pushes[1].at - pushes[0].at >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured: {:?}",
        pushes[1].at - pushes[0].at
    );
    assert_eq!(loki.stored().len(), 2, "stored once, not per attempt");
    topo.shutdown(Duration::from_secs(10)).await;

    // Still failing after the retries: rejected (counted), not lost silently.
    let (topo, feed) = pipeline(&url, json!({"retries": 2})).await;
    loki.answer_next(3, 500, None);
    let ack = feed.send(vec![at("r3", "shop", "Warning", 3)]).await;
    assert_eq!(ack.await.unwrap(), Status::Rejected);
    topo.shutdown(Duration::from_secs(10)).await;
}

/// An event line for the file source, in `ns`, last seen at `secs` past a recent hour.
fn line(i: usize, ns: &str, secs: u32, message: &str) -> String {
    let base = Utc::now() - chrono::Duration::hours(1);
    let t = Utc
        .timestamp_opt(
            base.timestamp() - base.timestamp() % 3600 + i64::from(secs),
            0,
        )
        .unwrap()
        .to_rfc3339();
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("e.{i}"), "namespace": ns, "uid": format!("uid-{i}"), "resourceVersion": "1"},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": "web"},
        "reason": "BackOff", "message": message, "type": "Warning",
        "firstTimestamp": t, "lastTimestamp": t, "count": 1
    })
    .to_string()
}

#[test]
fn refused_entries_are_counted_by_reason_and_the_rest_stored() {
    let (loki, url) = Loki::start(Options {
        max_line_bytes: 600,
        ..Options::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = support::write(
        dir.path(),
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n  logs:\n    type: loki\n    inputs: [src]\n    url: {url}\n    batch: {{max_events: 100, max_wait: 100ms}}\n",
            events.display()
        ),
    );
    let mut r = support::Running::start(&[], &p);
    let port = r.api_port();
    // First push: two entries of the `shop` stream at :30 and :40.
    support::append(
        &events,
        &[line(1, "shop", 30, "ok"), line(2, "shop", 40, "ok")],
    );
    support::wait_until("the first push stored", Duration::from_secs(20), || {
        loki.stored().len() == 2
    });
    // Second push: one older than what the stream holds (out of order), one line too long,
    // one fine.
    support::append(
        &events,
        &[
            line(3, "shop", 10, "late"),
            line(4, "shop", 50, &"x".repeat(700)),
            line(5, "shop", 60, "ok"),
        ],
    );
    let series = |reason: &str| {
        format!(
            "eventflow_events_discarded_total{{stage=\"logs\",type=\"loki\",reason=\"{reason}\"}}"
        )
    };
    support::wait_until("the refusals counted", Duration::from_secs(20), || {
        support::metric(port, &series("loki_out_of_order"))
            + support::metric(port, &series("loki_line_too_long"))
            == 2.0
    });
    assert_eq!(support::metric(port, &series("loki_out_of_order")), 1.0);
    assert_eq!(support::metric(port, &series("loki_line_too_long")), 1.0);
    assert_eq!(
        loki.stored().len(),
        3,
        "the fine entry of the partly refused push is stored"
    );
    // One or two pushes (the file source may hand the three lines over in two reads).
    assert!(
        support::metric(
            port,
            "eventflow_loki_requests_total{stage=\"logs\",status_class=\"4xx\"}"
        ) >= 1.0
    );
    assert!(
        support::metric(
            port,
            "eventflow_loki_requests_total{stage=\"logs\",status_class=\"2xx\"}"
        ) >= 1.0
    );
    // A push refused whole (every entry out of order): counted, and nothing stored.
    support::append(&events, &[line(6, "shop", 5, "later still")]);
    support::wait_until("the whole refusal counted", Duration::from_secs(20), || {
        support::metric(port, &series("loki_out_of_order")) == 2.0
    });
    assert_eq!(loki.stored().len(), 3);
    r.stop_ok();
}

#[test]
fn validate_warns_of_a_high_cardinality_label_and_refuses_a_missing_template() {
    let dir = tempfile::tempdir().unwrap();
    let p = support::write(
        dir.path(),
        "p.yaml",
        "stages:\n  src:\n    type: file\n    path: /dev/null\n  logs:\n    type: loki\n    inputs: [src]\n    url: http://loki:3100\n    labels: [namespace, uid]\n",
    );
    let out = support::bin().args(["validate"]).arg(&p).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("labels[1]") && text.contains("high-cardinality"),
        "{text}"
    );

    let p = support::write(
        dir.path(),
        "q.yaml",
        "stages:\n  src:\n    type: file\n    path: /dev/null\n  logs:\n    type: loki\n    inputs: [src]\n    url: http://loki:3100\n    line: template\n",
    );
    let out = support::bin().args(["validate"]).arg(&p).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("logs") && text.contains("template"), "{text}");
}

#[test]
fn a_durable_loki_sink_keeps_pushes_across_an_outage_and_a_restart_and_dead_letters_refusals() {
    let (loki, url) = Loki::start(Options {
        max_line_bytes: 600,
        ..Options::default()
    });
    // Loki is down (503) until told otherwise.
    loki.answer_next(100_000, 503, None);
    let dir = tempfile::tempdir().unwrap();
    let (_rt, fake, kc) = support::fake_cluster(dir.path());
    let p = support::write(
        dir.path(),
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstate:\n  url: sqlite://{}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {}\n  logs:\n    type: loki\n    inputs: [k8s]\n    url: {url}\n    durable: true\n    backoff: {{initial: 50ms, max: 200ms}}\n    batch: {{max_events: 100, max_wait: 50ms}}\n",
            dir.path().join("state.db").display(),
            kc.display()
        ),
    );
    let mut r = support::Running::start(&[], &p);
    let port = r.api_port();
    let uids: Vec<String> = (0..20)
        .map(|i| support::create_event(&fake, "shop", &format!("e{i}.1"), "BackOff", "Warning"))
        .collect();
    // Accepted into the queue while Loki refuses everything.
    support::wait_until("20 events queued", Duration::from_secs(20), || {
        support::metric(port, "eventflow_webhook_queued_events{stage=\"logs\"}") == 20.0
    });
    assert!(loki.stored().is_empty());
    r.stop_ok();

    // Loki is back; a new process delivers what the old one queued, once.
    loki.clear_answers();
    let mut r = support::Running::start(&[], &p);
    let port = r.api_port();
    support::wait_until("the queue delivered", Duration::from_secs(20), || {
        loki.stored().len() == 20
    });
    let mut stored: Vec<String> = loki
        .stored()
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.line).unwrap()["uid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    stored.sort();
    let mut want = uids.clone();
    want.sort();
    assert_eq!(stored, want);

    // An event whose line Loki refuses for good (too long) goes to the dead letters.
    let mut long = fake_apiserver::sample_event("shop", "long.1", "BackOff", "Warning", "m");
    long["message"] = Value::String("x".repeat(700));
    fake.create("shop", long).unwrap();
    support::wait_until("a dead letter", Duration::from_secs(20), || {
        support::metric(
            port,
            "eventflow_webhook_dead_lettered_events_total{stage=\"logs\"}",
        ) == 1.0
    });
    assert_eq!(
        support::metric(port, "eventflow_webhook_queued_events{stage=\"logs\"}"),
        0.0
    );
    r.stop_ok();
    let out = support::bin()
        .args(["dead-letter", "list"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("logs") && text.contains("Max entry size"),
        "{text}"
    );
    // Sent again with the stage's config: refused again, kept, reported.
    let out = support::bin()
        .args(["dead-letter", "resend"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("failed again") && text.contains("0 delivered, 1 failed"),
        "{text}"
    );
    assert_eq!(loki.stored().len(), 20);
}
