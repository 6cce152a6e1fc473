//! The webhook sink against a real local HTTP receiver (axum on 127.0.0.1) that records
//! requests and injects faults: retries with backoff, Retry-After, permanent 4xx, timeouts,
//! batching by count and by time, the idempotency header, a receiver that comes up late.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use eventflow::engine::Topology;
use eventflow::engine::ack::Status;
use eventflow::stages::StageKind;
use eventflow::stages::webhook::WebhookConfig;
use eventflow::testkit::{ChannelSource, Feeder, PipelineBuilder, event};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Got {
    at: Instant,
    query: String,
    delivery_id: String,
    body: Value,
}

/// What the receiver answers, in order; then 200.
#[derive(Clone)]
struct Answer {
    body: &'static str,
    status: u16,
    retry_after: Option<&'static str>,
    delay: Duration,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    fn answer(&self, status: u16, retry_after: Option<&'static str>, delay: Duration) {
        self.answer_body(status, retry_after, delay, "injected");
    }
    fn answer_body(
        &self,
        status: u16,
        retry_after: Option<&'static str>,
        delay: Duration,
        body: &'static str,
    ) {
        self.answers.lock().unwrap().push_back(Answer {
            body,
            status,
            retry_after,
            delay,
        });
    }
}

async fn receive(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = r.answers.lock().unwrap().pop_front();
    if let Some(a) = &answer {
        tokio::time::sleep(a.delay).await;
    }
    r.got.lock().unwrap().push(Got {
        at: Instant::now(),
        query: uri.query().unwrap_or_default().to_string(),
        delivery_id: headers
            .get("x-eventflow-delivery-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    match answer {
        Some(a) => {
            let mut resp = (StatusCode::from_u16(a.status).unwrap(), a.body).into_response();
            if let Some(ra) = a.retry_after {
                resp.headers_mut()
                    .insert("retry-after", ra.parse().unwrap());
            }
            resp
        }
        None => (StatusCode::OK, "ok").into_response(),
    }
}

async fn serve_on(listener: tokio::net::TcpListener, r: Receiver) {
    let app = Router::new().fallback(receive).with_state(r);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    serve_on(l, r.clone()).await;
    (r, url)
}

async fn pipeline(url: &str, extra: Value) -> (Topology, Feeder) {
    let mut v = json!({"url": url, "backoff": {"initial": "100ms", "max": "1s"}});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let cfg: WebhookConfig = serde_json::from_value(v).unwrap();
    let (src, feed) = ChannelSource::new(4);
    let p = PipelineBuilder::new()
        .stage("src", "channel", StageKind::Source, &[], Arc::new(src), 0)
        .stage(
            "hook",
            "webhook",
            StageKind::Sink,
            &["src"],
            Arc::new(cfg),
            0,
        )
        .build();
    (Topology::start(p).await.unwrap(), feed)
}

fn versioned(uid: &str, rv: &str) -> eventflow::event::EventData {
    let mut e = event(uid);
    e.resource_version = rv.to_string();
    e.message = "quote \" backslash \\ newline \n emoji 🚀".into();
    e
}

#[tokio::test]
async fn one_event_per_request_with_a_stable_delivery_id() {
    let (r, url) = receiver().await;
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

#[tokio::test]
async fn batches_by_count_and_by_time_in_the_seed_body() {
    let (r, url) = receiver().await;
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
    let (r, url) = receiver().await;
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
    let (r, url) = receiver().await;
    r.answer(400, None, Duration::ZERO);
    let (topo, feed) = pipeline(&url, json!({"retries": 3})).await;
    let ack = feed.send(vec![versioned("bad", "1")]).await;
    assert_eq!(ack.await.unwrap(), Status::Rejected);
    assert_eq!(r.got().len(), 1, "a 400 is not retried");
    topo.shutdown(Duration::from_secs(10)).await;

    let (r, url) = receiver().await;
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
    let r = Receiver::default();
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    serve_on(l, r.clone()).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(r.got().len(), 1);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn dingtalk_is_signed_and_its_error_codes_are_read() {
    let (r, url) = receiver().await;
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
    let q: std::collections::HashMap<String, String> = got[1]
        .query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(q["access_token"], "t0k");
    let ts: i64 = q["timestamp"].parse().unwrap();
    let sign = eventflow::stages::webhook::format::dingtalk_sign("SECabc", ts);
    assert_eq!(
        q["sign"],
        eventflow::stages::webhook::format::urlencode(&sign)
    );
    assert_eq!(got[1].body["msgtype"], "markdown");
    assert!(
        got[1].body["markdown"]["text"]
            .as_str()
            .unwrap()
            .contains("emoji 🚀")
    );
    topo.shutdown(Duration::from_secs(10)).await;

    let (r, url) = receiver().await;
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
    let yaml = "stages:\n  src:\n    type: file\n    path: x.json\n  hook:\n    type: webhook\n    inputs: [src]\n    url: http://127.0.0.1:1/x\n    format: template\n    template: '{\"text\": \"{{ msg \"}'\n";
    let err = eventflow::config::load_str(yaml, "p.yaml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("p.yaml:10:"), "{err}");
    assert!(err.contains("stage `hook`, field `template`"), "{err}");
    assert!(err.contains("template line 1"), "{err}");
}
