//! The elasticsearch sink against a strict implementation of the bulk API's documented contract
//! (`tests/support/elasticsearch.rs`; no Elasticsearch or OpenSearch server can be installed
//! here): what ends up stored under which id in which index, a repeat replacing its document,
//! data streams and their 409s, per-item retries and refusals counted by type, a 413 split,
//! several nodes, the index template.
#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod support;
use support::elasticsearch::{Elasticsearch, Options};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eventflow::engine::Topology;
use eventflow::event::ack::Status;
use eventflow::stages::elasticsearch::ElasticsearchConfig;
use eventflow::testkit::{ChannelSource, event, source_to_sink};
use serde_json::{Value, json};

fn pipeline(dir: &Path, events: &Path, sink: &str) -> PathBuf {
    support::write(
        dir,
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n    cluster: prod\n  es:\n    type: elasticsearch\n    inputs: [src]\n    batch: {{max_events: 100, max_wait: 100ms}}\n    backoff: {{initial: 100ms, max: 300ms}}\n{sink}",
            events.display()
        ),
    )
}

/// A sample line with its message replaced.
fn with_message(i: usize, message: &str) -> String {
    let mut v: Value = serde_json::from_str(&support::sample_line(i, "Warning")).unwrap();
    v["message"] = json!(message);
    v.to_string()
}

/// The index the sample events go to (their time is a minute before the test started).
fn sample_index() -> String {
    let t = chrono::DateTime::parse_from_rfc3339(support::sample_time()).unwrap();
    format!("kube-events-{}", t.format("%Y.%m.%d"))
}

#[test]
fn events_are_indexed_by_uid_and_a_repeat_replaces_the_document() {
    let (es, url) = Elasticsearch::start(Options {
        api_key: Some("aWQ6c2VjcmV0".into()),
        ..Options::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    // The first node refuses connections: the second is tried.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let p = pipeline(
        dir.path(),
        &events,
        &format!(
            "    urls: [{dead_url}, {url}]\n    index: kube-events-%Y.%m.%d\n    api_key: aWQ6c2VjcmV0\n    install_template: true\n"
        ),
    );
    let mut r = support::Running::start(&[], &p);
    support::append(
        &events,
        &(0..3)
            .map(|i| support::sample_line(i, "Warning"))
            .collect::<Vec<_>>(),
    );
    let index = sample_index();
    support::wait_until("three documents", Duration::from_secs(20), || {
        es.docs(&index).len() == 3
    });
    // The same Event again, its count grown: the same document, replaced.
    let mut again: Value = serde_json::from_str(&support::sample_line(0, "Warning")).unwrap();
    again["count"] = json!(5);
    again["metadata"]["resourceVersion"] = json!("9999");
    support::append(&events, &[again.to_string()]);
    support::wait_until("the repeat written", Duration::from_secs(20), || {
        es.docs(&index).get("uid-0").is_some_and(|(_, v)| *v == 2)
    });
    let port = r.api_port();
    let docs = es.docs(&index);
    assert_eq!(docs.len(), 3, "{:?}", docs.keys());
    let (doc, _) = &docs["uid-0"];
    assert_eq!(doc["kubernetes"]["event"]["count"], 5);
    assert_eq!(
        doc["message"],
        "Back-off restarting failed container, round 0"
    );
    assert_eq!(doc["event"]["reason"], "BackOff");
    assert_eq!(doc["kubernetes"]["namespace"], "shop");
    assert_eq!(doc["kubernetes"]["event"]["involved_object"]["kind"], "Pod");
    assert_eq!(doc["orchestrator"]["cluster"]["name"], "prod");
    let ts = chrono::DateTime::parse_from_rfc3339(doc["@timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(
        ts,
        chrono::DateTime::parse_from_rfc3339(support::sample_time()).unwrap()
    );
    // The template went in first, for the index pattern.
    let t = es.template("eventflow-events").expect("template installed");
    assert_eq!(t["index_patterns"], json!(["kube-events-*"]));
    assert_eq!(
        t["template"]["mappings"]["properties"]["kubernetes"]["properties"]["labels"]["type"],
        "flattened"
    );
    assert!(
        support::metric(
            port,
            "eventflow_elasticsearch_requests_total{stage=\"es\",status_class=\"connection_error\"}"
        ) >= 1.0
    );
    drop(r.stop_ok());
}

#[tokio::test]
async fn a_data_stream_gets_creates_and_a_repeat_counts_as_delivered() {
    let (es, url) = Elasticsearch::start(Options {
        data_streams: vec!["logs-kubernetes.events-default".into()],
        ..Options::default()
    });
    let cfg: ElasticsearchConfig = serde_json::from_value(json!({
        "urls": [url], "data_stream": "logs-kubernetes.events-default",
        "compression": false, "batch": {"max_wait": "50ms"}
    }))
    .unwrap();
    let (src, feed) = ChannelSource::new(4);
    let b = source_to_sink(Arc::new(src), "es", "elasticsearch", Arc::new(cfg), 0);
    let topo = Topology::start(b.build()).await.unwrap();
    let batch = || vec![event("a"), event("b")];
    assert_eq!(feed.send(batch()).await.await.unwrap(), Status::Delivered);
    // Delivered again (a source replaying after a crash): 409s, still delivered, nothing new.
    assert_eq!(feed.send(batch()).await.await.unwrap(), Status::Delivered);
    let mut c = event("a");
    c.resource_version = "2".into();
    assert_eq!(feed.send(vec![c]).await.await.unwrap(), Status::Delivered);
    topo.shutdown(Duration::from_secs(10)).await;
    let docs = es.docs("logs-kubernetes.events-default");
    // One document per delivered version of an event.
    assert_eq!(docs.len(), 3);
    assert!(docs.values().all(|(_, v)| *v == 1));
}

#[test]
fn throttled_items_are_sent_again_alone_and_a_mapping_conflict_fails_that_event_only() {
    let (es, url) = Elasticsearch::start(Options::default());
    es.throttle("uid-1", 2);
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(dir.path(), &events, &format!("    urls: [{url}]\n"));
    let mut r = support::Running::start(&[], &p);
    support::append(
        &events,
        &[
            support::sample_line(0, "Warning"),
            support::sample_line(1, "Warning"),
            with_message(2, "MAPPING-CONFLICT here"),
            support::sample_line(3, "Warning"),
        ],
    );
    let index = sample_index();
    support::wait_until("three documents", Duration::from_secs(20), || {
        es.docs(&index).len() == 3
    });
    let port = r.api_port();
    let series = "eventflow_events_discarded_total{stage=\"es\",type=\"elasticsearch\",reason=\"es_mapper_parsing_exception\"}";
    support::wait_until("the refusal counted", Duration::from_secs(10), || {
        support::metric(port, series) == 1.0
    });
    r.wait_log("elasticsearch refused documents");
    let docs = es.docs(&index);
    assert!(docs.contains_key("uid-0") && docs.contains_key("uid-1") && docs.contains_key("uid-3"));
    assert!(!docs.contains_key("uid-2"));
    assert!(docs.values().all(|(_, v)| *v == 1), "each stored once");
    // One request of four, then uid-1 alone twice more.
    let actions: Vec<usize> = es.requests().iter().map(|r| r.2).collect();
    assert_eq!(actions, [4, 1, 1]);
    assert_eq!(
        support::metric(port, "eventflow_elasticsearch_retries_total{stage=\"es\"}"),
        2.0
    );
    drop(r.stop_ok());
}

#[tokio::test]
async fn a_413_splits_the_batch_until_it_fits() {
    let (es, url) = Elasticsearch::start(Options {
        max_bytes: 4000,
        ..Options::default()
    });
    let cfg: ElasticsearchConfig = serde_json::from_value(json!({
        "urls": [url], "index": "events", "batch": {"max_wait": "50ms"},
        "backoff": {"initial": "50ms", "max": "100ms"}
    }))
    .unwrap();
    let (src, feed) = ChannelSource::new(4);
    let b = source_to_sink(Arc::new(src), "es", "elasticsearch", Arc::new(cfg), 0);
    let topo = Topology::start(b.build()).await.unwrap();
    let batch: Vec<_> = (0..12)
        .map(|i| {
            let mut e = event(&format!("e{i}"));
            e.message = "x".repeat(600);
            e
        })
        .collect();
    assert_eq!(feed.send(batch).await.await.unwrap(), Status::Delivered);
    topo.shutdown(Duration::from_secs(10)).await;
    assert_eq!(es.docs("events").len(), 12);
    let statuses: Vec<u16> = es.requests().iter().map(|r| r.3).collect();
    assert_eq!(statuses[0], 413, "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 2,
        "{statuses:?}"
    );
}

#[test]
fn config_mistakes_are_named_and_the_template_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(
        dir.path(),
        &events,
        "    urls: [http://es:9200]\n    index: Kube-Events-%Y\n    data_stream: logs-x\n",
    );
    let out = support::bin().args(["validate"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("data_stream") && err.contains("not both"),
        "{err}"
    );
    let p = pipeline(
        dir.path(),
        &events,
        "    urls: [http://es:9200]\n    index: Kube-Events-%Y\n",
    );
    let out = support::bin().args(["validate"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`index`") || err.contains("index"), "{err}");
    assert!(err.contains("lowercase"), "{err}");
    let p = pipeline(
        dir.path(),
        &events,
        "    urls: [http://es:9200]\n    data_stream: logs-k8s-default\n",
    );
    let out = support::bin()
        .args(["elasticsearch-template"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["index_patterns"], json!(["logs-k8s-default"]));
    assert_eq!(t["data_stream"], json!({}));
}

/// `max_bytes` bounds a request: a batch over it goes out in several, every document once.
#[tokio::test]
async fn a_batch_over_max_bytes_goes_out_in_several_requests() {
    let (es, url) = Elasticsearch::start(Options::default());
    let cfg: ElasticsearchConfig = serde_json::from_value(json!({
        "urls": [url], "index": "events", "max_bytes": 4096,
        "batch": {"max_events": 100, "max_wait": "50ms"}
    }))
    .unwrap();
    let (src, feed) = ChannelSource::new(4);
    let b = source_to_sink(Arc::new(src), "es", "elasticsearch", Arc::new(cfg), 0);
    let topo = Topology::start(b.build()).await.unwrap();
    let batch: Vec<_> = (0..20)
        .map(|i| {
            let mut e = event(&format!("e{i}"));
            e.message = "y".repeat(500);
            e
        })
        .collect();
    assert_eq!(feed.send(batch).await.await.unwrap(), Status::Delivered);
    topo.shutdown(Duration::from_secs(10)).await;
    assert_eq!(es.docs("events").len(), 20);
    let requests = es.requests();
    assert!(requests.len() >= 3, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.3 == 200),
        "no request over the limit: {requests:?}"
    );
    assert_eq!(requests.iter().map(|r| r.2).sum::<usize>(), 20);
}
