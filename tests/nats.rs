//! The nats sink against the real `nats-server -js` (Debian's `nats-server`, installed by
//! `.ci/services.sh`): each test starts its own server on a free port with a stream made the
//! way an operator would, and reads back what the stream holds with a consumer.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eventflow::engine::Topology;
use eventflow::event::EventData;
use eventflow::event::ack::Status;
use eventflow::stages::nats::NatsConfig;
use eventflow::testkit::{ChannelSource, Feeder, event, source_to_sink};
use serde_json::{Value, json};

use support::nats::{Nats, installed};

async fn pipeline(url: &str, extra: Value) -> Result<(Topology, Feeder), String> {
    let mut v = json!({"url": url, "stream": "EVENTS", "backoff": {"initial": "100ms", "max": "1s"}, "timeout": "2s"});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let cfg: NatsConfig = serde_json::from_value(v).unwrap();
    let (src, feed) = ChannelSource::new(4);
    let b = source_to_sink(Arc::new(src), "bus", "nats", Arc::new(cfg), 0);
    let topo = Topology::start(b.build())
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok((topo, feed))
}

fn in_ns(uid: &str, ns: &str) -> EventData {
    let mut e = event(uid);
    e.namespace = ns.into();
    e.type_ = "Warning".into();
    e.resource_version = "7".into();
    e
}

#[tokio::test]
async fn events_are_stored_once_each_under_their_subject_and_a_replay_adds_nothing() {
    if !installed() {
        return;
    }
    let nats = Nats::start();
    nats.stream(&["eventflow.>"]).await;
    let (topo, feed) = pipeline(&nats.url(), json!({})).await.unwrap();
    let events: Vec<EventData> = (0..300)
        .map(|i| {
            in_ns(
                &format!("u{i}"),
                if i % 2 == 0 { "shop" } else { "kube.system" },
            )
        })
        .collect();
    let ack = feed.send(events.clone()).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let got = nats.messages().await;
    assert_eq!(got.len(), 300);
    let by_uid: BTreeMap<String, (String, String)> = got
        .iter()
        .map(|(s, id, p)| {
            (
                p["uid"].as_str().unwrap().to_string(),
                (s.clone(), id.clone()),
            )
        })
        .collect();
    assert_eq!(by_uid.len(), 300, "every event once");
    assert_eq!(by_uid["u0"].0, "eventflow.test.shop.Warning");
    // A namespace's `.` would split the token: it becomes `_`.
    assert_eq!(by_uid["u1"].0, "eventflow.test.kube_system.Warning");
    assert_eq!(by_uid["u0"].1.len(), 32);

    // The same event versions again (a source replaying after a crash): JetStream drops them.
    let ack = feed.send(events).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(nats.count().await, 300);
    // A new version of one event is a new message.
    let mut newer = in_ns("u0", "shop");
    newer.resource_version = "8".into();
    let ack = feed.send(vec![newer]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(nats.count().await, 301);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_missing_or_mismatched_stream_is_a_clear_error_at_start() {
    if !installed() {
        return;
    }
    let nats = Nats::start();
    let err = pipeline(&nats.url(), json!({})).await.err().unwrap();
    assert!(
        err.contains("bus") && err.contains("stream `EVENTS` does not exist"),
        "{err}"
    );
    nats.stream(&["other.>"]).await;
    let err = pipeline(&nats.url(), json!({})).await.err().unwrap();
    assert!(
        err.contains("does not capture subject `eventflow."),
        "{err}"
    );
    // With a subject the stream captures, it starts.
    let (topo, feed) = pipeline(&nats.url(), json!({"subject": "other.{namespace}"}))
        .await
        .unwrap();
    let ack = feed.send(vec![in_ns("o", "shop")]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(nats.messages().await[0].0, "other.shop");
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_server_down_for_ten_seconds_loses_nothing() {
    if !installed() {
        return;
    }
    let nats = Nats::start();
    nats.stream(&["eventflow.>"]).await;
    let (topo, feed) = pipeline(&nats.url(), json!({"retries": 100}))
        .await
        .unwrap();
    let ack = feed.send(vec![in_ns("before", "shop")]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);

    let (port, dir) = nats.stop();
    let during: Vec<EventData> = (0..50).map(|i| in_ns(&format!("d{i}"), "shop")).collect();
    let ack = feed.send(during).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let nats = Nats::start_on(port, dir);
    let status = tokio::time::timeout(Duration::from_secs(30), ack)
        .await
        .expect("delivered after the server came back")
        .unwrap();
    assert_eq!(status, Status::Delivered);
    let got = nats.messages().await;
    let mut uids: Vec<String> = got
        .iter()
        .map(|(_, _, p)| p["uid"].as_str().unwrap().to_string())
        .collect();
    uids.sort();
    uids.dedup();
    assert_eq!(got.len(), 51, "each once");
    assert_eq!(uids.len(), 51);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn kill_9_mid_stream_and_a_restart_store_every_event_exactly_once() {
    if !installed() {
        return;
    }
    let nats = Nats::start();
    nats.stream(&["eventflow.>"]).await;
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..20_000)
        .map(|i| support::sample_line(i, "Warning"))
        .collect();
    let events = support::write(dir.path(), "events.jsonl", &(lines.join("\n") + "\n"));
    // Small batches, one in flight: the kill lands mid-stream.
    let p = support::write(
        dir.path(),
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstages:\n  src:\n    type: file\n    path: {}\n    follow: true\n  bus:\n    type: nats\n    inputs: [src]\n    url: {}\n    stream: EVENTS\n    batch: {{max_events: 20, max_wait: 5ms}}\n    max_in_flight: 1\n",
            events.display(),
            nats.url()
        ),
    );
    let r = support::Running::start(&[], &p);
    let mut stored = 0;
    for _ in 0..400 {
        stored = nats.count().await;
        if stored >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.signal("-KILL");
    let at_kill = nats.count().await;
    assert!(
        (500..20_000).contains(&at_kill),
        "the kill should land mid-stream: {at_kill} stored ({stored} seen)"
    );
    // The restarted process (the file source keeps no position) reads the file again from the top: everything is published
    // again, and JetStream keeps one of each.
    let mut r = support::Running::start(&[], &p);
    let port = r.api_port();
    support::wait_until("all 20000 stored", Duration::from_secs(120), || {
        support::metric(
            port,
            "eventflow_events_sent_total{stage=\"bus\",type=\"nats\"}",
        ) >= 20_000.0
    });
    assert_eq!(nats.count().await, 20_000);
    let got = nats.messages().await;
    let uids: std::collections::BTreeSet<String> = got
        .iter()
        .map(|(_, _, p)| p["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids.len(), 20_000, "every event once");
    let dups = support::metric(port, "eventflow_nats_duplicates_total{stage=\"bus\"}");
    assert!(
        dups >= at_kill as f64,
        "the repeats JetStream dropped are counted: {dups} < {at_kill}"
    );
    r.stop_ok();
}
