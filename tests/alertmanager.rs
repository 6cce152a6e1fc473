//! The alertmanager sink against the real Alertmanager (Debian's `prometheus-alertmanager`,
//! installed by `.ci/services.sh`): each test starts its own instance on a free port, with a
//! route that groups by `alertname` and `namespace` and notifies a local webhook receiver.
//! What is checked is what a user sees through Alertmanager's own API and notifications.
#![allow(clippy::unwrap_used)]

mod support;
use support::Receiver;
use support::{free_port, wait_for};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventflow::engine::Topology;
use eventflow::event::EventData;
use eventflow::event::ack::Status;
use eventflow::stages::alertmanager::AlertmanagerConfig;
use eventflow::testkit::{ChannelSource, Feeder, event, source_to_sink};
use serde_json::{Value, json};

const BINARY: &str = "/usr/bin/prometheus-alertmanager";

/// A running Alertmanager; killed when dropped.
struct Alertmanager {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server is installed; outside CI a test without it says so and skips.
fn installed() -> bool {
    if std::path::Path::new(BINARY).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{BINARY} is missing: .ci/services.sh installs it"
    );
    eprintln!("SKIPPED: {BINARY} is not installed (bash .ci/services.sh installs it)");
    false
}

impl Alertmanager {
    /// An Alertmanager notifying `hook`, grouping by alertname and namespace.
    fn start(hook: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, free_port(), hook)
    }

    fn start_in(dir: tempfile::TempDir, port: u16, hook: &str) -> Alertmanager {
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname, namespace]\n  group_wait: 500ms\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n- name: hook\n  webhook_configs:\n  - url: {hook}\n    send_resolved: true\n"
            ),
        )
        .unwrap();
        let storage: PathBuf = dir.path().join("data");
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Alertmanager { child, port, dir };
        support::wait_until("Alertmanager is ready", Duration::from_secs(20), || {
            support::http(port, "GET", "/-/ready").0 == 200
        });
        am
    }

    /// Stops it and starts a new one on the same port, with nothing in memory (silences and
    /// the notification log are on disk; alerts are not).
    fn restart(self, hook: &str) -> Alertmanager {
        let port = self.port;
        let mut me = self;
        let _ = me.child.kill();
        let _ = me.child.wait();
        let dir = std::mem::replace(&mut me.dir, tempfile::tempdir().unwrap());
        drop(me);
        Self::start_in(dir, port, hook)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The alerts Alertmanager shows (`GET /api/v2/alerts`).
    fn alerts(&self) -> Vec<Value> {
        let (status, body) = support::http(self.port, "GET", "/api/v2/alerts");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<Value>>(&body).unwrap()
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let url = format!("{}{path}", self.url());
        let body = body.to_string();
        std::thread::scope(|s| {
            s.spawn(|| {
                let r = reqwest::blocking::Client::new()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .unwrap();
                assert!(r.status().is_success(), "{:?}", r.status());
                r.json::<Value>().unwrap()
            })
            .join()
            .unwrap()
        })
    }
}

async fn pipeline(urls: Vec<String>, extra: Value) -> (Topology, Feeder) {
    let mut v = json!({"urls": urls, "backoff": {"initial": "100ms", "max": "500ms"}, "batch": {"max_wait": "50ms"}});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let cfg: AlertmanagerConfig = serde_json::from_value(v).unwrap();
    let (src, feed) = ChannelSource::new(4);
    let b = source_to_sink(Arc::new(src), "am", "alertmanager", Arc::new(cfg), 0);
    (Topology::start(b.build()).await.unwrap(), feed)
}

/// A Warning event about pod `object`, last seen now.
fn warning(uid: &str, reason: &str, object: &str, count: i64) -> EventData {
    let mut e = event(uid);
    e.type_ = "Warning".into();
    e.reason = reason.into();
    e.kind = "Pod".into();
    e.object_name = object.into();
    e.message = format!("Back-off restarting failed container in {object}");
    e.source = "kubelet".into();
    e.count = count;
    e.first_seen = Some(Utc::now() - chrono::Duration::minutes(5));
    e.last_seen = Some(Utc::now());
    e
}

fn by_object<'a>(alerts: &'a [Value], object: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["object"] == object)
        .collect()
}

#[tokio::test]
async fn an_event_becomes_one_alert_and_its_repeats_update_it() {
    if !installed() {
        return;
    }
    let (_hook, hook_url) = Receiver::start();
    let am = Alertmanager::start(&hook_url);
    let (topo, feed) = pipeline(vec![am.url()], json!({})).await;

    let ack = feed.send(vec![warning("u1", "BackOff", "web-1", 1)]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let alerts = am.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        a["labels"],
        json!({"alertname": "BackOff", "namespace": "default", "kind": "Pod", "object": "web-1", "cluster": "test", "severity": "warning"})
    );
    assert_eq!(a["annotations"]["count"], "1");
    assert_eq!(a["annotations"]["source"], "kubelet");
    assert_eq!(
        a["annotations"]["message"],
        "Back-off restarting failed container in web-1"
    );
    assert_eq!(a["status"]["state"], "active");

    // The same event repeats (its count goes up): the alert is updated, not duplicated.
    let ack = feed.send(vec![warning("u1", "BackOff", "web-1", 7)]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let alerts = am.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["annotations"]["count"], "7");

    // A Normal event is an alert of its own, with severity info.
    let mut normal = event("u2");
    normal.kind = "Pod".into();
    normal.object_name = "web-2".into();
    let ack = feed.send(vec![normal]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    let alerts = am.alerts();
    assert_eq!(alerts.len(), 2);
    assert_eq!(by_object(&alerts, "web-2")[0]["labels"]["severity"], "info");
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn notifications_reach_the_receiver_grouped_as_configured() {
    if !installed() {
        return;
    }
    let (hook, hook_url) = Receiver::start();
    let am = Alertmanager::start(&hook_url);
    let (topo, feed) = pipeline(vec![am.url()], json!({})).await;
    let ack = feed
        .send(vec![
            warning("a", "BackOff", "web-1", 3),
            warning("b", "BackOff", "web-2", 4),
            warning("c", "FailedMount", "db-0", 1),
        ])
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    // Two groups (BackOff, FailedMount) in one namespace: two notifications, the BackOff one
    // carrying both pods.
    wait_for("two notifications", Duration::from_secs(15), || {
        hook.got().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hook.got();
    assert_eq!(got.len(), 2, "{got:?}");
    let backoff = got
        .iter()
        .find(|g| g.body["groupLabels"]["alertname"] == "BackOff")
        .unwrap();
    assert_eq!(backoff.body["status"], "firing");
    let mut objects: Vec<&str> = backoff.body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["object"].as_str().unwrap())
        .collect();
    objects.sort_unstable();
    assert_eq!(objects, ["web-1", "web-2"]);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_silence_made_in_alertmanager_suppresses_the_alert() {
    if !installed() {
        return;
    }
    let (hook, hook_url) = Receiver::start();
    let am = Alertmanager::start(&hook_url);
    let silence = am.post(
        "/api/v2/silences",
        &json!({
            "matchers": [{"name": "object", "value": "noisy-0", "isRegex": false, "isEqual": true}],
            "startsAt": Utc::now().to_rfc3339(),
            "endsAt": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "createdBy": "test", "comment": "maintenance"
        }),
    );
    let (topo, feed) = pipeline(vec![am.url()], json!({})).await;
    let ack = feed
        .send(vec![
            warning("n", "BackOff", "noisy-0", 50),
            warning("q", "Unhealthy", "quiet-0", 1),
        ])
        .await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    wait_for(
        "the unsilenced alert's notification",
        Duration::from_secs(15),
        || !hook.got().is_empty(),
    )
    .await;
    let alerts = am.alerts();
    let noisy = by_object(&alerts, "noisy-0");
    assert_eq!(noisy.len(), 1, "{alerts:?}");
    assert_eq!(noisy[0]["status"]["state"], "suppressed");
    assert_eq!(
        noisy[0]["status"]["silencedBy"],
        json!([silence["silenceID"]])
    );
    // Past the group wait, still only the unsilenced alert was notified.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for g in hook.got() {
        for a in g.body["alerts"].as_array().unwrap() {
            assert_eq!(a["labels"]["object"], "quiet-0", "{:?}", g.body);
        }
    }
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_quiet_alert_resolves_by_itself_after_resolve_after() {
    if !installed() {
        return;
    }
    let (hook, hook_url) = Receiver::start();
    let am = Alertmanager::start(&hook_url);
    let (topo, feed) = pipeline(vec![am.url()], json!({"resolve_after": "3s"})).await;
    let ack = feed.send(vec![warning("r", "BackOff", "web-1", 2)]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(am.alerts().len(), 1);
    wait_for("a resolved notification", Duration::from_secs(20), || {
        hook.got().iter().any(|g| g.body["status"] == "resolved")
    })
    .await;
    assert!(am.alerts().is_empty(), "{:?}", am.alerts());
    let resolved = hook
        .got()
        .into_iter()
        .find(|g| g.body["status"] == "resolved")
        .unwrap();
    assert_eq!(resolved.body["alerts"][0]["labels"]["object"], "web-1");
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn firing_alerts_are_posted_again_to_an_alertmanager_that_restarted() {
    if !installed() {
        return;
    }
    let (_hook, hook_url) = Receiver::start();
    let am = Alertmanager::start(&hook_url);
    // Re-posted every resolve_after / 3 = 2 s.
    let (topo, feed) = pipeline(vec![am.url()], json!({"resolve_after": "6s"})).await;
    let ack = feed.send(vec![warning("p", "BackOff", "web-1", 2)]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(am.alerts().len(), 1);
    let am = am.restart(&hook_url);
    assert!(
        am.alerts().is_empty(),
        "a restarted Alertmanager has no alerts"
    );
    wait_for("the alert is back", Duration::from_secs(10), || {
        am.alerts().len() == 1
    })
    .await;
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn with_several_alertmanagers_one_that_accepts_is_enough_and_none_fails_the_events() {
    if !installed() {
        return;
    }
    let (_hook, hook_url) = Receiver::start();
    let am = Alertmanager::start(&hook_url);
    let down = format!("http://127.0.0.1:{}", free_port());
    let (topo, feed) = pipeline(vec![down.clone(), am.url()], json!({})).await;
    let ack = feed.send(vec![warning("x", "BackOff", "web-1", 1)]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(am.alerts().len(), 1);
    topo.shutdown(Duration::from_secs(10)).await;

    // Every Alertmanager down: retried, then the events are rejected (counted, not lost
    // silently).
    let (topo, feed) = pipeline(vec![down], json!({"retries": 1})).await;
    let ack = feed.send(vec![warning("y", "BackOff", "web-1", 1)]).await;
    assert_eq!(ack.await.unwrap(), Status::Rejected);
    topo.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn odd_times_still_make_a_valid_alert_and_a_refusal_is_not_retried() {
    if !installed() {
        return;
    }
    let (_hook, hook_url) = Receiver::start();
    let am = Alertmanager::start(&hook_url);
    let (topo, feed) = pipeline(vec![am.url()], json!({})).await;
    // First seen after last seen (clock skew between components): startsAt is clamped to the
    // last-seen time and Alertmanager takes it; no times at all: now.
    let mut skewed = warning("z", "BackOff", "web-1", 1);
    skewed.first_seen = Some(Utc::now() + chrono::Duration::hours(2));
    let mut timeless = warning("t", "BackOff", "web-2", 1);
    timeless.first_seen = None;
    timeless.last_seen = None;
    let ack = feed.send(vec![skewed, timeless]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    assert_eq!(am.alerts().len(), 2);
    topo.shutdown(Duration::from_secs(10)).await;

    // An endpoint that answers 400 (what Alertmanager says of an invalid alert): permanent,
    // one request, the events rejected.
    let (refusing, url) = Receiver::start();
    let refusing = refusing.refusing(400);
    let (topo, feed) = pipeline(vec![url.replace("/hook", "")], json!({})).await;
    let ack = feed.send(vec![warning("w", "BackOff", "web-1", 1)]).await;
    assert_eq!(ack.await.unwrap(), Status::Rejected);
    assert_eq!(refusing.got().len(), 1);
    assert!(refusing.got()[0].body.is_array());
    topo.shutdown(Duration::from_secs(10)).await;
}
