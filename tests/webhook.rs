//! The webhook sink against a real local HTTP receiver (axum on 127.0.0.1) that records
//! requests and injects faults: retries with backoff, Retry-After, permanent 4xx, timeouts,
//! batching by count and by time, the idempotency header, a receiver that comes up late,
//! requests in flight at once, and the durable queue: events accepted while the receiver is
//! down, kept across a restart, bounded (back-pressure), and dead letters inspected and re-sent
//! with the `eventflow dead-letter` command.
#![allow(clippy::unwrap_used)]

mod support;
use support::wait_for;
use support::{Got, Receiver};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventflow::engine::Topology;
use eventflow::event::ack::Status;
use eventflow::stages::webhook::WebhookConfig;
use eventflow::testkit::{ChannelSource, Feeder, event, source_to_sink};
use serde_json::{Value, json};

async fn pipeline(url: &str, extra: Value) -> (Topology, Feeder) {
    pipeline_with_state(url, extra, None).await
}

async fn pipeline_with_state(url: &str, extra: Value, state: Option<&str>) -> (Topology, Feeder) {
    let mut v = json!({"url": url, "backoff": {"initial": "100ms", "max": "1s"}});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let cfg: WebhookConfig = serde_json::from_value(v).unwrap();
    let (src, feed) = ChannelSource::new(4);
    let mut b = source_to_sink(Arc::new(src), "hook", "webhook", Arc::new(cfg), 0);
    if let Some(url) = state {
        b = b.state(url);
    }
    (Topology::start(b.build()).await.unwrap(), feed)
}

fn versioned(uid: &str, rv: &str) -> eventflow::event::EventData {
    let mut e = event(uid);
    e.resource_version = rv.to_string();
    e.message = "quote \" backslash \\ newline \n emoji 🚀".into();
    e
}

#[tokio::test]
async fn one_event_per_request_with_a_stable_delivery_id() {
    let (r, url) = Receiver::start();
    let (topo, feed) = pipeline(&url, json!({})).await;
    let ack = feed
        .send(vec![
            versioned("a", "1"),
            versioned("b", "1"),
            versioned("a", "1"),
        ])
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let got = r.got();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].body["uid"], "a");
    assert_eq!(
        got[0].body["message"],
        "quote \" backslash \\ newline \n emoji 🚀"
    );
    assert_eq!(got[0].delivery_id.len(), 32);
    assert_eq!(
        got[0].delivery_id, got[2].delivery_id,
        "same version, same id"
    );
    assert_ne!(got[0].delivery_id, got[1].delivery_id);
    topo.shutdown(Duration::from_secs(10)).await;
}

/// A `batch:` block that sets only `max_wait` keeps the webhook's own `max_events` (1): one
/// event per request, in the one-event body, as without the block.
#[tokio::test]
async fn a_partial_batch_block_keeps_the_other_field_at_its_default() {
    let (r, url) = Receiver::start();
    let (topo, feed) = pipeline(&url, json!({"batch": {"max_wait": "50ms"}})).await;
    let ack = feed
        .send(vec![
            versioned("a", "1"),
            versioned("b", "1"),
            versioned("c", "1"),
        ])
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let got = r.got();
    assert_eq!(got.len(), 3, "one request per event");
    let uids: Vec<&Value> = got.iter().map(|g| &g.body["uid"]).collect();
    assert_eq!(uids, [&json!("a"), &json!("b"), &json!("c")]);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn batches_by_count_and_by_time_in_the_seed_body() {
    let (r, url) = Receiver::start();
    let (topo, feed) = pipeline(
        &url,
        json!({"batch": {"max_events": 2, "max_wait": "300ms"}}),
    )
    .await;
    let started = Instant::now();
    let ack = feed
        .send(vec![
            versioned("a", "1"),
            versioned("b", "1"),
            versioned("c", "1"),
        ])
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let got = r.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body["count"], 2);
    assert_eq!(got[0].body["events"][1]["uid"], "b");
    assert!(got[0].body["timestamp"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(got[1].body["count"], 1, "the rest after max_wait");
    assert!(
        got[1].at - started >= Duration::from_millis(250),
        "waited for max_wait"
    );
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_and_retry_after_is_honoured() {
    let (r, url) = Receiver::start();
    r.answer(500, None, Duration::ZERO);
    r.answer(503, None, Duration::ZERO);
    r.answer(429, Some("1"), Duration::ZERO);
    let (topo, feed) = pipeline(&url, json!({"retries": 3})).await;
    let ack = feed.send(vec![versioned("a", "7")]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let got = r.got();
    assert_eq!(got.len(), 4, "three failures, then delivered");
    assert!(
        got.iter().all(|g| g.delivery_id == got[0].delivery_id),
        "stable across retries"
    );
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(50), "backoff: {gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(100),
        "backoff doubles: {gaps:?}"
    );
    assert!(
        gaps[2] >= Duration::from_millis(950),
        "Retry-After: 1: {gaps:?}"
    );
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_client_error_is_permanent_and_a_slow_receiver_times_out() {
    let (r, url) = Receiver::start();
    r.answer(400, None, Duration::ZERO);
    let (topo, feed) = pipeline(&url, json!({"retries": 3})).await;
    let ack = feed.send(vec![versioned("bad", "1")]).await;
    assert_eq!(ack.await.unwrap(), Status::Rejected);
    assert_eq!(r.got().len(), 1, "a 400 is not retried");
    topo.shutdown(Duration::from_secs(10)).await;

    let (r, url) = Receiver::start();
    r.answer(200, None, Duration::from_secs(2));
    r.answer(200, None, Duration::from_secs(2));
    let (topo, feed) = pipeline(&url, json!({"retries": 1, "timeout": "200ms"})).await;
    let started = Instant::now();
    let ack = feed.send(vec![versioned("slow", "1")]).await;
    assert_eq!(ack.await.unwrap(), Status::Rejected);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up on time"
    );
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_receiver_that_comes_up_late_gets_everything_once() {
    // Reserve a port, close it: connections are refused until the receiver starts.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let (topo, feed) = pipeline(
        &url,
        json!({"retries": 20, "backoff": {"initial": "100ms", "max": "200ms"}}),
    )
    .await;
    let ack = feed.send(vec![versioned("late", "1")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = Receiver::on_port(port);
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(r.got().len(), 1);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn dingtalk_is_signed_and_its_error_codes_are_read() {
    let (r, url) = Receiver::start();
    r.answer_body(
        200,
        None,
        Duration::ZERO,
        r#"{"errcode":130101,"errmsg":"send too fast"}"#,
    );
    let (topo, feed) = pipeline(
        &format!("{url}?access_token=t0k"),
        json!({"format": "dingtalk", "secret": "SECabc", "retries": 2}),
    )
    .await;
    let ack = feed.send(vec![versioned("a", "1")]).await;
    assert_eq!(
        ack.await.unwrap(),
        Status::Delivered,
        "rate limit retried, then ok"
    );
    let got = r.got();
    assert_eq!(got.len(), 2);
    // The signature is percent-encoded: its raw form holds only unreserved characters and `%`.
    let raw_sign = got[1].query.split("sign=").nth(1).unwrap();
    assert!(
        raw_sign
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%-_.~".contains(&b)),
        "{raw_sign}"
    );
    let sent = reqwest::Url::parse(&format!("http://x/?{}", got[1].query)).unwrap();
    let q: std::collections::HashMap<String, String> = sent.query_pairs().into_owned().collect();
    assert_eq!(q["access_token"], "t0k");
    let ts: i64 = q["timestamp"].parse().unwrap();
    let sign = eventflow::stages::webhook::format::dingtalk_sign("SECabc", ts);
    assert_eq!(q["sign"], sign);
    assert_eq!(got[1].body["msgtype"], "markdown");
    assert!(
        got[1].body["markdown"]["text"]
            .as_str()
            .unwrap()
            .contains("emoji 🚀")
    );
    topo.shutdown(Duration::from_secs(10)).await;

    let (r, url) = Receiver::start();
    r.answer_body(
        200,
        None,
        Duration::ZERO,
        r#"{"errcode":310000,"errmsg":"sign not match"}"#,
    );
    let (topo, feed) = pipeline(
        &url,
        json!({"format": "dingtalk", "secret": "wrong", "retries": 2}),
    )
    .await;
    let ack = feed.send(vec![versioned("a", "1")]).await;
    assert_eq!(
        ack.await.unwrap(),
        Status::Rejected,
        "a signature error is permanent"
    );
    assert_eq!(r.got().len(), 1);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[test]
fn a_template_syntax_error_is_a_load_error_with_its_position() {
    let yaml = "stages:\n  src:\n    type: file\n    path: /dev/null\n  hook:\n    type: webhook\n    inputs: [src]\n    url: http://127.0.0.1:1/x\n    format: template\n    template: '{\"text\": \"{{ msg \"}'\n";
    let err = eventflow::load_str(yaml, "p.yaml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("p.yaml:10:"), "{err}");
    assert!(err.contains("stage `hook`, field `template`"), "{err}");
    assert!(err.contains("template line 1"), "{err}");
}

/// A `state` database in a temporary directory, and a receiver URL with nothing listening yet
/// on its port.
fn down() -> (tempfile::TempDir, String, u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let port = closed_port();
    (dir, state, port, format!("http://127.0.0.1:{port}/hook"))
}

/// A port with nothing listening (yet).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn queued(state: &str) -> u64 {
    let store = eventflow::stages::webhook::queue::Store::open(state)
        .await
        .unwrap();
    let n = store.count("hook").await.unwrap();
    store.close().await;
    n
}

/// Waits until the queue is empty: its rows were delivered (or dead-lettered) and removed.
async fn queue_empties(state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while queued(state).await > 0 {
        assert!(Instant::now() < deadline, "the queue did not empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn uids(got: &[Got]) -> Vec<String> {
    got.iter()
        .map(|g| g.body["uid"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn durable() -> Value {
    json!({"durable": true, "retry_for": "1h", "backoff": {"initial": "50ms", "max": "200ms"}})
}

#[tokio::test]
async fn requests_run_in_parallel_up_to_max_in_flight() {
    let (r, url) = Receiver::start();
    r.set_delay(Duration::from_millis(300));
    let (topo, feed) = pipeline(&url, json!({"max_in_flight": 4})).await;
    let started = Instant::now();
    let ack = feed
        .send((0..8).map(|i| versioned(&format!("p{i}"), "1")).collect())
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let took = started.elapsed();
    assert_eq!(r.got().len(), 8);
    assert_eq!(r.peak(), 4, "at most 4 at once, and 4 used");
    assert!(
        took < Duration::from_millis(1500),
        "8 requests of 300 ms, 4 at a time, took {took:?}"
    );
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn durable_accepts_while_the_receiver_is_down_and_delivers_in_order_when_it_returns() {
    let (_dir, state, port, url) = down();
    let (topo, feed) = pipeline_with_state(&url, durable(), Some(&state)).await;
    let sent: Vec<String> = (0..20).map(|i| format!("d{i:02}")).collect();
    for uid in &sent {
        let ack = feed.send(vec![versioned(uid, "1")]).await;
        // Acknowledged once queued, although nothing can be delivered.
        let status = tokio::time::timeout(Duration::from_secs(5), ack).await;
        assert_eq!(status.unwrap().unwrap(), Status::Delivered);
    }
    assert_eq!(queued(&state).await, 20);
    let r = Receiver::on_port(port);
    wait_for("all delivered", Duration::from_secs(10), || {
        r.got().len() >= 20
    })
    .await;
    assert_eq!(uids(&r.got()), sent, "each once, in order");
    queue_empties(&state).await;
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn durable_deliveries_resume_after_a_restart_in_the_same_batches() {
    let (_dir, state, port, url) = down();
    let mut cfg = durable();
    cfg["batch"] = json!({"max_events": 4, "max_wait": "50ms"});
    let (topo, feed) = pipeline_with_state(&url, cfg.clone(), Some(&state)).await;
    let ack = feed
        .send((0..10).map(|i| versioned(&format!("r{i}"), "1")).collect())
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    // Let the first batch be attempted (and pinned) against the closed port.
    tokio::time::sleep(Duration::from_millis(300)).await;
    topo.shutdown(Duration::from_secs(5)).await;
    assert_eq!(queued(&state).await, 10, "kept across the stop");

    let r = Receiver::on_port(port);
    let (topo, _feed) = pipeline_with_state(&url, cfg, Some(&state)).await;
    wait_for("the queued events", Duration::from_secs(10), || {
        r.got()
            .iter()
            .map(|g| g.body["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
            >= 10
    })
    .await;
    let got = r.got();
    let delivered: Vec<String> = got
        .iter()
        .flat_map(|g| g.body["events"].as_array().cloned().unwrap_or_default())
        .map(|e| e["uid"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    assert_eq!(delivered, expected);
    assert_eq!(got[0].body["count"], 4, "the pinned first batch");
    let first: Vec<eventflow::event::Event> = (0..4)
        .map(|i| {
            eventflow::event::Event::new(
                versioned(&format!("r{i}"), "1"),
                eventflow::event::Finalizers::None,
            )
        })
        .collect();
    assert_eq!(
        got[0].delivery_id,
        eventflow::stages::webhook::delivery_id(&first),
        "the id of those four events"
    );
    topo.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_full_durable_queue_holds_events_back_instead_of_dropping_them() {
    let (_dir, state, port, url) = down();
    let mut cfg = durable();
    cfg["max_queued"] = json!(5);
    let (topo, feed) = pipeline_with_state(&url, cfg, Some(&state)).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut acks = Vec::new();
    for i in 0..12 {
        let feed = feed.clone();
        let acked = acked.clone();
        acks.push(tokio::spawn(async move {
            let s = feed
                .send(vec![versioned(&format!("b{i:02}"), "1")])
                .await
                .await;
            acked.fetch_add(1, Ordering::SeqCst);
            s.unwrap()
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(queued(&state).await, 5, "the bound holds");
    assert_eq!(acked.load(Ordering::SeqCst), 5, "the rest wait upstream");
    let r = Receiver::on_port(port);
    for a in acks {
        assert_eq!(a.await.unwrap(), Status::Delivered);
    }
    wait_for("all twelve", Duration::from_secs(10), || {
        r.got().len() >= 12
    })
    .await;
    let mut got = uids(&r.got());
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 12);
    topo.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_go_to_dead_letters_that_the_cli_lists_shows_and_resends() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let (r, url) = Receiver::start();
    r.answer(400, None, Duration::ZERO);
    // After the 400: only 500s, more than a 300 ms retry_for waits through.
    for _ in 0..100 {
        r.answer(500, None, Duration::ZERO);
    }
    let mut cfg = durable();
    cfg["retry_for"] = json!("300ms");
    let (topo, feed) = pipeline_with_state(&url, cfg, Some(&state)).await;
    for uid in ["first", "second", "third"] {
        let ack = feed.send(vec![versioned(uid, "1")]).await;
        assert_eq!(ack.await.unwrap(), Status::Delivered, "queued");
    }
    queue_empties(&state).await;
    topo.shutdown(Duration::from_secs(5)).await;
    r.clear_answers();
    let first_id = r.got()[0].delivery_id.clone();

    let pipeline = support::write(
        dir.path(),
        "p.yaml",
        &format!(
            "state:\n  url: {state}\nstages:\n  src:\n    type: file\n    path: {}\n  hook:\n    type: webhook\n    inputs: [src]\n    url: {url}\n    durable: true\n",
            std::path::Path::new("/dev/null").display()
        ),
    );
    // The command runs while this runtime keeps serving the receiver.
    let run = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            support::bin()
                .arg("dead-letter")
                .args(args)
                .arg(&pipeline)
                .output()
                .unwrap()
        });
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, list) = run(&["list"]);
    assert_eq!(code, Some(0), "{list}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three dead letters:\n{list}");
    assert!(
        lines[1].contains("hook") && lines[1].contains("HTTP 400"),
        "{list}"
    );
    assert!(lines[2].contains("HTTP 500"), "out of retry time:\n{list}");
    let attempts: u32 = lines[2].split_whitespace().nth(6).unwrap().parse().unwrap();
    assert!(attempts > 1, "retried before giving up:\n{list}");
    let id = lines[1].split_whitespace().next().unwrap().to_string();

    let out = support::bin()
        .args(["dead-letter", "show"])
        .arg(&pipeline)
        .arg(&id)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["events"][0]["event"]["uid"], "first");
    assert_eq!(
        shown["events"][0]["event"]["message"],
        "quote \" backslash \\ newline \n emoji 🚀"
    );
    assert_eq!(shown["delivery_id"], first_id.as_str());
    assert_eq!(shown["attempts"], 1);
    assert!(shown["reason"].as_str().unwrap().contains("HTTP 400"));

    let before = r.got().len();
    let (code, report) = run(&["resend"]);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("3 delivered, 0 failed"), "{report}");
    let resent = &r.got()[before..];
    assert_eq!(uids(resent), ["first", "second", "third"]);
    assert_eq!(resent[0].delivery_id, first_id, "the same delivery id");
    let (_, list) = run(&["list"]);
    assert_eq!(list.trim(), "no dead letters");
    // A stage that is not a durable webhook, and ids that are not there, are said so.
    let (code, _) = run(&["list", "--stage", "nosuch"]);
    assert_eq!(code, Some(1));
    let out = tokio::task::block_in_place(|| {
        support::bin()
            .args(["dead-letter", "delete"])
            .arg(&pipeline)
            .arg("999")
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0 dead letters deleted") && text.contains("no dead letter with id 999"),
        "{text}"
    );
}

/// Not given up on is not delivered: with 20 events waiting in a durable queue (receiver
/// down), `dead-letter list` says so rather than only "no dead letters", and `dead-letter
/// status` shows each queue's depth, its oldest event's age and its dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_are_shown_beside_the_dead_letters() {
    let (dir, state, _port, url) = down();
    let (topo, feed) = pipeline_with_state(&url, durable(), Some(&state)).await;
    let ack = feed
        .send((0..20).map(|i| versioned(&format!("q{i}"), "1")).collect())
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered, "queued");
    topo.shutdown(Duration::from_secs(5)).await;
    assert_eq!(queued(&state).await, 20);
    let pipeline = support::write(
        dir.path(),
        "p.yaml",
        &format!(
            "state:\n  url: {state}\nstages:\n  src:\n    type: file\n    path: /dev/null\n  hook:\n    type: webhook\n    inputs: [src]\n    url: {url}\n    durable: true\n"
        ),
    );
    let run = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            support::bin()
                .arg("dead-letter")
                .args(args)
                .arg(&pipeline)
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let list = run(&["list"]);
    assert!(
        list.contains("no dead letters")
            && list.contains("not delivered yet: 20 events queued in `hook`"),
        "{list}"
    );
    let status = run(&["status"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines.len(), 2, "{status}");
    assert!(
        lines[0].starts_with("STAGE") && lines[0].contains("QUEUED"),
        "{status}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], "hook", "{status}");
    assert_eq!(cols[1], "20", "{status}");
    assert!(
        cols[2].ends_with('s'),
        "the oldest's age, seconds old: {status}"
    );
    assert_eq!(&cols[3..], ["0", "0"], "no dead letters: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_durable_webhook_sends_each_queued_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let (old, old_url) = Receiver::start();
    old.set_delay(Duration::from_millis(50));
    let (new, new_url) = Receiver::start();
    let (src, feed) = ChannelSource::new(4);
    let src: Arc<dyn eventflow::component::StageConfig> = Arc::new(src);
    let hook = |url: &str| -> Arc<dyn eventflow::component::StageConfig> {
        let mut v = durable();
        v["url"] = json!(url);
        Arc::new(serde_json::from_value::<WebhookConfig>(v).unwrap())
    };
    let pipeline = |url: &str, version: i64| {
        source_to_sink(src.clone(), "hook", "webhook", hook(url), version)
            .state(&state)
            .build()
    };
    let mut topo = Topology::start(pipeline(&old_url, 0)).await.unwrap();
    let sent: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    let ack = feed
        .send(sent.iter().map(|u| versioned(u, "1")).collect())
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered, "queued");
    wait_for(
        "a few delivered to the old URL",
        Duration::from_secs(5),
        || old.got().len() >= 3,
    )
    .await;
    topo.apply(pipeline(&new_url, 1)).await.unwrap();
    wait_for("the rest at the new URL", Duration::from_secs(10), || {
        old.got().len() + new.got().len() >= 30
    })
    .await;
    queue_empties(&state).await;
    let mut all = uids(&old.got());
    all.extend(uids(&new.got()));
    assert_eq!(all, sent, "each once, in order, across the two instances");
    assert!(
        !new.got().is_empty(),
        "the new instance took over: old {} new {}",
        old.got().len(),
        new.got().len()
    );
    topo.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_backlog_goes_out_with_several_requests_in_flight() {
    // More batches in flight than the queue's database connections: each must still finish.
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let (r, url) = Receiver::start();
    let mut cfg = durable();
    cfg["max_in_flight"] = json!(8);
    cfg["batch"] = json!({"max_events": 50, "max_wait": "20ms"});
    let (topo, feed) = pipeline_with_state(&url, cfg, Some(&state)).await;
    let mut acks = Vec::new();
    for chunk in 0..40 {
        let events = (0..500)
            .map(|i| versioned(&format!("x{:05}", chunk * 500 + i), "1"))
            .collect();
        acks.push(feed.send(events).await);
    }
    for a in acks {
        assert_eq!(a.await.unwrap(), Status::Delivered);
    }
    let count = |g: &[Got]| {
        g.iter()
            .map(|g| g.body["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    wait_for("20,000 events", Duration::from_secs(60), || {
        count(&r.got()) >= 20_000
    })
    .await;
    queue_empties(&state).await;
    let mut all: Vec<String> = r
        .got()
        .iter()
        .flat_map(|g| g.body["events"].as_array().cloned().unwrap_or_default())
        .map(|e| e["uid"].as_str().unwrap_or_default().to_string())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20_000, "each event delivered");
    assert!(r.peak() > 1, "requests overlapped");
    topo.shutdown(Duration::from_secs(5)).await;
}

/// An event with every part a body can carry: labels, annotations, a summary, the owner, the
/// object as received (`raw`, never in a `json` body), and characters JSON escapes.
fn rich(i: usize) -> eventflow::event::EventData {
    use eventflow::event::{Labels, Summary, SummaryBy};
    let mut e = versioned(&format!("rich{i}"), &format!("{}", 100 + i));
    let now = chrono::Utc::now();
    e.first_seen = Some(now - chrono::Duration::minutes(5));
    e.last_seen = Some(now);
    let labels = Arc::new(Labels::from([("app".to_string(), format!("web \"{i}\""))]));
    e.object_labels = Some(labels.clone());
    e.namespace_labels = Some(labels);
    e.owner_kind = "Deployment".into();
    e.owner_name = "web".into();
    if i.is_multiple_of(2) {
        e.summary = Some(Arc::new(Summary {
            by: SummaryBy::Aggregate,
            events: 3,
            occurrences: 9,
            window: "10m".into(),
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            samples: vec!["a\tb".into()],
            text: "BackOff x9".into(),
        }));
        e.raw = Some(format!("{{\"kind\":\"Event\",\"n\":{i}}}").into());
    }
    e
}

/// A request's body with its `timestamp` (the time it was sent) taken out, and its delivery id.
fn sent(got: &[Got]) -> Vec<(String, String)> {
    got.iter()
        .map(|g| {
            let text = match g.text.find(",\"timestamp\":") {
                Some(at) => format!(
                    "{}{}",
                    &g.text[..at],
                    g.text[at..]
                        .trim_start_matches(",\"timestamp\":")
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                ),
                None => g.text.clone(),
            };
            (text, g.delivery_id.clone())
        })
        .collect()
}

/// Rewrites the queue rows `ids` of a state database as versions before packing wrote them:
/// the events' text in `event`, their spans in `spans`.
async fn unpack_rows(pool: &sqlx::SqlitePool, ids: &[i64]) {
    for id in ids {
        let (packed,): (Vec<u8>,) =
            sqlx::query_as("SELECT packed FROM eventflow_webhook_queue WHERE id = ?")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        let (text, spans) = eventflow::stages::webhook::queue::unpack(&packed).unwrap();
        sqlx::query(
            "UPDATE eventflow_webhook_queue SET event = ?, spans = ?, packed = NULL WHERE id = ?",
        )
        .bind(text)
        .bind(spans)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// A durable queue sends what the in-memory sink sends: the same bodies, byte for byte but the
/// send time, under the same delivery ids. Queued rows of this version go out as stored (their
/// events' text unpacked and spliced into the body, found through the row's spans, not
/// decoded); rows as earlier versions wrote them are read too: not packed; without spans, or
/// whose spans do not fit (read through instead); with no form recorded (decoded first). All
/// give the same requests, one event per request and batched.
#[tokio::test]
async fn a_durable_queue_sends_the_bodies_and_ids_the_in_memory_sink_sends() {
    let events: Vec<_> = (0..6).map(rich).collect();
    // Row 5 stays as this version wrote it.
    let one = [
        "UPDATE eventflow_webhook_queue SET form = NULL WHERE id % 2 = 0",
        "UPDATE eventflow_webhook_queue SET spans = NULL WHERE id = 1",
        r#"UPDATE eventflow_webhook_queue SET spans = '[[1,2,"x","1",null]]' WHERE id = 3"#,
    ];
    // A batch of packed rows and one decoded.
    let three = ["UPDATE eventflow_webhook_queue SET form = NULL WHERE id = 2"];
    for (max_events, unpacked, changes) in [
        (1, &[1, 2, 3, 4, 6][..], &one[..]),
        (3, &[2, 4][..], &three[..]),
    ] {
        let batch = json!({"max_events": max_events, "max_wait": "50ms"});
        let (r, url) = Receiver::start();
        let (topo, feed) = pipeline(&url, json!({"batch": batch})).await;
        let ack = feed.send(events.clone()).await;
        assert_eq!(ack.await.unwrap(), Status::Delivered);
        topo.shutdown(Duration::from_secs(5)).await;
        let in_memory = sent(&r.got());
        assert_eq!(in_memory.len(), 6 / max_events);

        let (_dir, state, port, url) = down();
        let mut cfg = durable();
        // Full batches only: none goes out partial while the rows come one by one.
        cfg["batch"] = json!({"max_events": max_events, "max_wait": "1h"});
        let (topo, feed) = pipeline_with_state(&url, cfg.clone(), Some(&state)).await;
        for e in &events {
            // One row each: a batch of several rows, of either form.
            assert_eq!(
                feed.send(vec![e.clone()]).await.await.unwrap(),
                Status::Delivered
            );
        }
        topo.shutdown(Duration::from_secs(5)).await;
        let pool = sqlx::SqlitePool::connect(&state).await.unwrap();
        unpack_rows(&pool, unpacked).await;
        for change in changes {
            let changed = sqlx::query(*change).execute(&pool).await.unwrap();
            assert!(changed.rows_affected() > 0, "{change}");
        }
        pool.close().await;
        let r = Receiver::on_port(port);
        let (topo, _feed) = pipeline_with_state(&url, cfg, Some(&state)).await;
        wait_for("the queued events", Duration::from_secs(10), || {
            r.got().len() >= in_memory.len()
        })
        .await;
        queue_empties(&state).await;
        topo.shutdown(Duration::from_secs(5)).await;
        assert_eq!(sent(&r.got()), in_memory, "batches of {max_events}");
    }
}

/// A queued row whose packed events were damaged on disk is moved to the dead letters with
/// the reason and its bytes; the rows around it are delivered.
#[tokio::test]
async fn a_damaged_queued_row_is_dead_lettered_and_the_rest_delivered() {
    let (_dir, state, port, url) = down();
    let (topo, feed) = pipeline_with_state(&url, durable(), Some(&state)).await;
    for uid in ["first", "second", "third"] {
        let ack = feed.send(vec![versioned(uid, "1")]).await;
        assert_eq!(ack.await.unwrap(), Status::Delivered, "queued");
    }
    topo.shutdown(Duration::from_secs(5)).await;
    let pool = sqlx::SqlitePool::connect(&state).await.unwrap();
    let damaged = sqlx::query(
        "UPDATE eventflow_webhook_queue SET packed = substr(packed, 1, 12) WHERE id = 2",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(damaged.rows_affected(), 1);
    pool.close().await;
    let r = Receiver::on_port(port);
    let (topo, _feed) = pipeline_with_state(&url, durable(), Some(&state)).await;
    queue_empties(&state).await;
    topo.shutdown(Duration::from_secs(5)).await;
    assert_eq!(uids(&r.got()), ["first", "third"]);
    let store = eventflow::stages::webhook::queue::Store::open(&state)
        .await
        .unwrap();
    let dead = store.dead_letters(Some("hook"), &[]).await.unwrap();
    store.close().await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("cannot read the queued event")
            && dead[0].reason.contains("does not unpack"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        dead[0].events.len(),
        2 + 2 + 24,
        "12 bytes in hexadecimal, a JSON string in an array"
    );
}

/// A webhook that cannot be reached says why in its log line, with the stage: the connection
/// refused, the name that does not resolve, and which certificate problem TLS found (a
/// self-signed certificate, then the same one trusted with `ca_file` but for another name),
/// once each — not also as a line of the TLS library's own without the stage.
/// Each way of not reaching a receiver, from its log line: refused, no such host, TLS.
#[test]
#[allow(clippy::too_many_lines)]
fn an_unreachable_webhook_logs_the_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    let events = support::write(
        dir.path(),
        "one.jsonl",
        &(support::sample_line(1, "Warning") + "\n"),
    );
    let run = |url: &str, extra: &str| -> String {
        let p = support::write(
            dir.path(),
            "p.yaml",
            &format!(
                "stages:\n  src:\n    type: file\n    path: {}\n  hook:\n    type: webhook\n    inputs: [src]\n    url: {url}\n    retry_for: 300ms\n    backoff: {{initial: 50ms, max: 100ms}}\n{extra}",
                events.display()
            ),
        );
        let out = support::bin().arg("run").arg(&p).output().expect("run");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let failed_line = |log: &str| -> String {
        log.lines()
            .find(|l| l.contains("webhook delivery failed"))
            .unwrap_or_else(|| panic!("no failed delivery in:\n{log}"))
            .to_string()
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let log = run(&format!("http://127.0.0.1:{port}/x"), "");
    let line = failed_line(&log);
    assert!(
        line.contains("stage=\"hook\"")
            && line.contains(&format!("cannot connect to 127.0.0.1:{port}:"))
            && line.contains("Connection refused"),
        "{line}"
    );

    let log = run("http://user:s3cret@nosuchhost.invalid/x?token=abc", "");
    let line = failed_line(&log);
    assert!(
        line.contains("cannot connect to nosuchhost.invalid:80") && line.contains("dns error"),
        "{log}"
    );
    assert!(
        !log.contains("s3cret") && !log.contains("token=abc"),
        "{log}"
    );

    // A TLS server with a self-signed certificate for another name.
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=receiver.example",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (.ci/services.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tls_port = free.local_addr().expect("addr").port();
    drop(free);
    let mut server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &tls_port.to_string(),
        ])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    support::wait_until("the TLS server listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    let url = format!("https://127.0.0.1:{tls_port}/x");
    let log = run(&url, "");
    let line = failed_line(&log);
    assert!(
        line.contains("invalid peer certificate") && line.contains("UnknownIssuer"),
        "{line}"
    );
    assert!(
        !log.contains("rustls_platform_verifier"),
        "the TLS library's own line is not repeated:\n{log}"
    );
    let log = run(&url, &format!("    ca_file: {}\n", cert.display()));
    let line = failed_line(&log);
    assert!(
        line.contains("invalid peer certificate") && line.contains("not valid for name"),
        "{line}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// A template names an event's fields directly when a request carries one event, and an
/// undefined name is an error when the file is loaded — never a body with holes.
#[test]
fn template_names_are_checked_when_the_file_is_loaded() {
    let load = |template: &str, max_events: usize| {
        let yaml = format!(
            "stages:\n  src:\n    type: file\n    path: /dev/null\n  hook:\n    type: webhook\n    inputs: [src]\n    url: http://127.0.0.1:1/x\n    format: template\n    batch: {{max_events: {max_events}}}\n    template: '{template}'\n"
        );
        eventflow::load_str(&yaml, "p.yaml", &|_| None).map_err(|e| e.to_string())
    };
    assert!(load(r#"{"text": {{ message | tojson }}, "n": {{ count }}}"#, 1).is_ok());
    let err = load(r#"{"text": "{{ mesage }}"}"#, 1).unwrap_err();
    assert!(
        err.contains("p.yaml:11:15: stage `hook`, field `template`: unknown name `mesage`: did you mean `message`?")
            && err.contains("the names are events, event, count, timestamp, msg, raw, and the event's fields: ")
            && err.contains("object_name"),
        "{err}"
    );
    let err = load(r#"{"text": {{ message | tojson }}}"#, 10).unwrap_err();
    assert!(
        err.contains("`message` is a field of one event, but this webhook sends up to 10 events per request: loop over `events`"),
        "{err}"
    );
    let err = load(r#"{"a": 1, "text": "{{ event.mesage }}"}"#, 1).unwrap_err();
    assert!(
        err.contains(
            "template line 1, column 22: `event.mesage` is undefined; did you mean `event.message`?"
        ),
        "{err}"
    );
    // Every mistake in one pass, each with its place.
    let err = load(
        r#"{"text": "{{ event.mesage }}", "why": "{{ event.reasn }}", "n": {{ cont }}}"#,
        10,
    )
    .unwrap_err();
    for want in [
        "template line 1, column 14: `event.mesage` is undefined; did you mean `event.message`?",
        "template line 1, column 43: `event.reasn` is undefined; did you mean `event.reason`?",
        "unknown name `cont`: did you mean `count`?",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    // The batch form is checked against a batch too.
    assert!(load(r#"{"texts": [{% for e in events %}{{ e.message | tojson }}{% if not loop.last %},{% endif %}{% endfor %}]}"#, 10).is_ok());
}

#[tokio::test]
async fn a_template_renders_an_events_fields_and_a_render_error_at_run_time_is_never_sent() {
    let (r, url) = Receiver::start();
    let (topo, feed) = pipeline(
        &url,
        json!({"format": "template", "batch": {"max_events": 1, "max_wait": "1ms"},
               "template": "{\"text\": {{ message | tojson }}, \"where\": \"{{ namespace }}/{{ object_name }}\", \"per\": {{ 6 // (event.count - 1) }}}"}),
    )
    .await;
    let mut e = versioned("ok", "1");
    e.object_name = "web-1".into();
    e.count = 3;
    assert_eq!(
        feed.send(vec![e.clone()]).await.await.unwrap(),
        Status::Delivered
    );
    let got = r.got();
    assert_eq!(got[0].body["text"], e.message.as_str());
    assert_eq!(got[0].body["where"], "default/web-1");
    assert_eq!(got[0].body["per"], 3);
    // A count of 1 divides by zero: the delivery fails for good, and nothing is sent.
    let mut bad = versioned("bad", "1");
    bad.count = 1;
    assert_eq!(feed.send(vec![bad]).await.await.unwrap(), Status::Rejected);
    assert_eq!(r.got().len(), 1, "no body with holes was sent");
    topo.shutdown(Duration::from_secs(10)).await;
}
