//! The metrics a user scrapes: values after a known run, and `promtool check metrics` on the
//! output of an engine that ran events through every stage type that exists.

// Metric values that count are whole numbers: compared exactly.
#![allow(clippy::float_cmp)]

mod support;

use std::time::Duration;

use support::*;

fn scrape(port: u16) -> String {
    http(port, "GET", "/metrics").1
}

fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[test]
// One known run, every counter it moves checked against it.
#[allow(clippy::too_many_lines)]
fn counters_match_a_known_run_and_promtool_accepts_the_output() {
    let dir = tempfile::tempdir().expect("tmp");
    let hook = receiver(2);
    // A receiver that refuses the first request for good (the durable webhook dead-letters it).
    let (refuser, refusing) = Receiver::start();
    let _ = refuser.failing_first(1, 400);
    // An Alertmanager and a Loki stand-in (this receiver takes anything; the sinks' own tests
    // use the real Alertmanager and a strict Loki fake).
    let (_am, am_url) = Receiver::start();
    let (_loki, loki_url) = support::loki::Loki::start(support::loki::Options::default());
    // A fake API server with two Events, for the kube_events source.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fake = rt
        .block_on(fake_apiserver::FakeApiServer::start())
        .expect("fake");
    for i in 0..2 {
        fake.create(
            "default",
            fake_apiserver::sample_event("default", &format!("k-{i}.1"), "BackOff", "Warning", "m"),
        )
        .expect("create");
    }
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, None)
        .expect("kubeconfig");
    let events = write(dir.path(), "events.jsonl", "");
    let db = dir.path().join("m.db");
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstate:\n  url: sqlite://{}\nstages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n  warn:\n    type: filter\n    inputs: [src]\n    types: [Warning]\n  once:\n    type: dedup\n    inputs: [warn]\n    key: [uid]\n  agg:\n    type: aggregate\n    inputs: [once]\n    window: 1h\n  limit:\n    type: rate_limit\n    inputs: [agg]\n    limit: 100\n  out:\n    type: stdout\n    inputs: [limit]\n  print:\n    type: stdout\n    inputs: [once]\n  db:\n    type: sql\n    inputs: [once]\n    url: sqlite://{}\n    batch: {{max_events: 10, max_wait: 10ms}}\n  k8s:\n    type: kube_events\n    kubeconfig: {}\n  kdb:\n    type: sql\n    inputs: [k8s]\n    url: sqlite://{}\n  hook:\n    type: webhook\n    inputs: [once]\n    url: {}\n    backoff: {{initial: 50ms, max: 200ms}}\n    batch: {{max_events: 100, max_wait: 300ms}}\n  dhook:\n    type: webhook\n    inputs: [once]\n    url: {}\n    durable: true\n    batch: {{max_events: 100, max_wait: 300ms}}\n  alerts:\n    type: alertmanager\n    inputs: [once]\n    urls: [{}]\n    batch: {{max_events: 100, max_wait: 50ms}}\n  logs:\n    type: loki\n    inputs: [once]\n    url: {}\n    batch: {{max_events: 100, max_wait: 50ms}}\n",
            dir.path().join("state.db").display(),
            events.display(),
            db.display(),
            kubeconfig.display(),
            dir.path().join("k.db").display(),
            hook,
            refusing,
            am_url.trim_end_matches("/hook"),
            loki_url,
        ),
    );
    let mut r = Running::start(&[], &p);
    let port = r.api_port();
    // 10 Warnings (3 of them repeats of uid-0), 5 Normals, one malformed line.
    let mut lines: Vec<String> = (0..7).map(|i| sample_line(i, "Warning")).collect();
    lines.extend((0..3).map(|_| sample_line(0, "Warning")));
    lines.extend((100..105).map(|i| sample_line(i, "Normal")));
    lines.push("{not json".into());
    append(&events, &lines);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape(port);
        if value(
            &body,
            "eventflow_events_sent_total{stage=\"once\",type=\"dedup\"}",
        ) == 7.0
            && value(
                &body,
                "eventflow_events_received_total{stage=\"db\",type=\"sql\"}",
            ) == 7.0
            // For a sink, "sent" is "delivered", the same for every sink type.
            && value(
                &body,
                "eventflow_events_sent_total{stage=\"db\",type=\"sql\"}",
            ) == 7.0
            && value(
                &body,
                "eventflow_events_sent_total{stage=\"kdb\",type=\"sql\"}",
            ) == 2.0
            && value(
                &body,
                "eventflow_events_sent_total{stage=\"print\",type=\"stdout\"}",
            ) == 7.0
            && value(
                &body,
                "eventflow_events_sent_total{stage=\"hook\",type=\"webhook\"}",
            ) == 7.0
            && value(
                &body,
                "eventflow_events_received_total{stage=\"kdb\",type=\"sql\"}",
            ) == 2.0
            && value(
                &body,
                "eventflow_events_sent_total{stage=\"alerts\",type=\"alertmanager\"}",
            ) == 7.0
            && value(
                &body,
                "eventflow_events_sent_total{stage=\"logs\",type=\"loki\"}",
            ) == 7.0
            && value(
                &body,
                "eventflow_events_sent_total{stage=\"dhook\",type=\"webhook\"}",
            ) + value(
                &body,
                "eventflow_webhook_dead_lettered_events_total{stage=\"dhook\"}",
            ) == 7.0
        {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters never settled:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        value(
            &body,
            "eventflow_events_received_total{stage=\"src\",type=\"file\"}"
        ),
        15.0
    );
    assert_eq!(
        value(
            &body,
            "eventflow_events_discarded_total{stage=\"src\",type=\"file\",reason=\"malformed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &body,
            "eventflow_events_discarded_total{stage=\"warn\",type=\"filter\",reason=\"filtered\"}"
        ),
        5.0
    );
    assert_eq!(
        value(
            &body,
            "eventflow_events_discarded_total{stage=\"once\",type=\"dedup\",reason=\"duplicate\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &body,
            "eventflow_events_discarded_total{stage=\"agg\",type=\"aggregate\",reason=\"aggregated\"}"
        ),
        7.0
    );
    assert!(body.contains("# HELP eventflow_events_received_total"));
    // The alertmanager and loki sinks: their requests by outcome, the alerts they remember.
    assert!(
        value(
            &body,
            "eventflow_alertmanager_requests_total{stage=\"alerts\",status_class=\"2xx\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &body,
            "eventflow_alertmanager_firing_alerts{stage=\"alerts\"}"
        ),
        1.0,
        "the sample events were last seen a minute ago (within resolve_after): one alert, as they share one object and reason"
    );
    assert!(
        value(
            &body,
            "eventflow_loki_requests_total{stage=\"logs\",status_class=\"2xx\"}"
        ) >= 1.0
    );
    // The durable webhook: its first batch refused (dead-lettered), nothing left queued.
    assert!(
        value(
            &body,
            "eventflow_webhook_dead_lettered_events_total{stage=\"dhook\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(&body, "eventflow_webhook_queued_events{stage=\"dhook\"}"),
        0.0
    );
    // The webhook failed twice, then delivered: two retries, two 5xx answers.
    assert_eq!(
        value(&body, "eventflow_webhook_retries_total{stage=\"hook\"}"),
        2.0
    );
    assert_eq!(
        value(
            &body,
            "eventflow_webhook_requests_total{stage=\"hook\",status_class=\"5xx\"}"
        ),
        2.0
    );
    assert!(body.contains("eventflow_event_latency_seconds_bucket{stage=\"db\",type=\"sql\""));
    // The age by the API server's clock: one per delivered event, like the latency, with
    // buckets up to an hour.
    let delivered = value(
        &body,
        "eventflow_event_latency_seconds_count{stage=\"db\",type=\"sql\"}",
    );
    assert!(delivered > 0.0);
    assert_eq!(
        value(
            &body,
            "eventflow_event_age_seconds_count{stage=\"db\",type=\"sql\"}"
        ),
        delivered
    );
    assert!(
        body.contains("eventflow_event_age_seconds_bucket{stage=\"db\",type=\"sql\",le=\"3600\"}"),
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            "eventflow_kube_relists_total{stage=\"k8s\",reason=\"initial\"}"
        ),
        1.0
    );
    assert!(body.contains("eventflow_source_last_event_timestamp_seconds{stage=\"k8s\"}"));
    assert!(
        body.contains("eventflow_event_latency_seconds_bucket{stage=\"hook\",type=\"webhook\"")
    );
    // Every event sent to `warn` was received: nothing is left queued.
    assert!(
        body.contains("eventflow_stage_queue_events{stage=\"warn\",type=\"filter\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("eventflow_stage_processing_seconds_bucket{stage=\"warn\""),
        "histograms have buckets"
    );
    assert!(body.contains("eventflow_sql_query_seconds_bucket"));
    assert!(value(&body, "process_resident_memory_bytes") > 0.0);
    // CPU time to the fraction of a second: a short run used well under one second, which
    // whole seconds would show as 0.
    let cpu = value(&body, "process_cpu_seconds_total ");
    assert!(cpu > 0.0, "process_cpu_seconds_total {cpu}");
    assert_eq!(
        value(&body, "eventflow_ready"),
        1.0,
        "ready, as /readyz says"
    );
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &body).expect("write");
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool rejected the output:\n{}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "SKIPPED promtool check: promtool is not installed (CI installs it with the prometheus package)"
        ),
    }
    let (status, _) = r.stop();
    assert!(status.success());
}
