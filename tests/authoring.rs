//! The authoring commands as a user runs them: `eventflow explain` and `eventflow test`.

mod support;

use support::*;

fn run(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(text) = stdin
        && let Some(mut i) = child.stdin.take()
    {
        i.write_all(text.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const PIPELINE: &str = "stages:
  src:
    type: file
    path: /dev/null
  prod_warnings:
    type: filter
    inputs: [src]
    types: [Warning]
    namespaces: [prod]
  not_system:
    type: filter
    inputs: [src]
    reverse: true
    namespaces: [kube-system]
  per_reason:
    type: dedup
    inputs: [not_system]
    key: [namespace, reason]
  ding:
    type: webhook
    inputs: [per_reason]
    url: https://oapi.dingtalk.com/robot/send?access_token=s3cr3t-token
    format: dingtalk
    secret: SECs3cr3t
  store:
    type: sql
    inputs: [prod_warnings]
    url: sqlite://events.db
";

/// An Event as the API server gives it (`kubectl get event -o yaml`).
const EVENT_YAML: &str = "apiVersion: v1
kind: Event
metadata:
  name: web-1.17f3
  namespace: staging
  uid: 5c0e-uid
  resourceVersion: '42'
involvedObject:
  kind: Pod
  name: web-1
  namespace: staging
reason: BackOff
message: Back-off restarting failed container
type: Warning
count: 4
source:
  component: kubelet
  host: worker-2
";

#[test]
fn explain_says_which_condition_dropped_the_event_and_what_a_sink_would_send() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "p.yaml", PIPELINE);
    let ev = write(dir.path(), "event.yaml", EVENT_YAML);
    let (code, out, err) = run(
        &[
            "explain",
            p.to_str().unwrap_or(""),
            ev.to_str().unwrap_or(""),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    // Plain text when not on a terminal: no escape codes.
    assert!(!out.contains('\u{1b}'), "{out}");
    assert!(
        out.contains("event Warning BackOff Pod/web-1 in staging"),
        "{out}"
    );
    assert!(
        out.contains("prod_warnings (filter transform): dropped"),
        "{out}"
    );
    assert!(
        out.contains("✔ `types: [Warning]`: type is `Warning`"),
        "{out}"
    );
    assert!(
        out.contains("✘ `namespaces: [prod]`: namespace is `staging`"),
        "{out}"
    );
    assert!(
        out.contains("a condition does not match, so the event is dropped"),
        "{out}"
    );
    assert!(
        out.contains("not_system (filter transform): passes"),
        "{out}"
    );
    assert!(
        out.contains("`reverse: true` and no condition matches, so the event is kept"),
        "{out}"
    );
    assert!(
        out.contains("key [namespace, reason] is `staging/BackOff`"),
        "{out}"
    );
    // The DingTalk body, and the URL with its token and signature redacted.
    assert!(out.contains("ding (webhook sink): delivered"), "{out}");
    assert!(out.contains("\"msgtype\": \"markdown\""), "{out}");
    assert!(out.contains("access_token=***"), "{out}");
    assert!(!out.contains("s3cr3t"), "no secret is printed: {out}");
    // The sql sink is not reached: the filter before it dropped the event.
    assert!(
        out.contains("not reached (an earlier stage dropped the event): store"),
        "{out}"
    );
    // Nothing was written anywhere.
    assert!(!dir.path().join("events.db").exists());
}

#[test]
fn explain_reads_stdin_and_answers_json_with_the_sql_row() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "p.yaml", PIPELINE);
    let prod = EVENT_YAML.replace("staging", "prod");
    let (code, out, err) = run(
        &[
            "explain",
            "--json",
            "--cluster",
            "east",
            p.to_str().unwrap_or(""),
            "-",
        ],
        Some(&prod),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let stages = v[0]["stages"].as_array().expect("stages");
    let store = stages
        .iter()
        .find(|s| s["stage"] == "store")
        .expect("store");
    assert_eq!(store["verdict"], "delivered");
    assert_eq!(store["output"]["table"], "k8s_events");
    let row = &store["output"]["row"];
    assert_eq!(row["evt_key"], "east/5c0e-uid");
    assert_eq!(row["namespace"], "prod");
    assert_eq!(row["count"], 4);
    assert_eq!(row["level"], "warning");
    let filter = stages
        .iter()
        .find(|s| s["stage"] == "prod_warnings")
        .expect("filter");
    assert_eq!(filter["verdict"], "passes");
    assert!(
        filter["steps"]
            .as_array()
            .is_some_and(|s| s.iter().all(|x| x["ok"] != false))
    );
}

#[test]
fn explain_names_what_it_cannot_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "p.yaml", PIPELINE);
    let bad = write(dir.path(), "bad.json", "{\"type\": [1, 2]}");
    let (code, _, err) = run(
        &[
            "explain",
            p.to_str().unwrap_or(""),
            bad.to_str().unwrap_or(""),
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("bad.json: event 1:"), "{err}");
    let ev = write(dir.path(), "e.yaml", EVENT_YAML);
    let (code, _, err) = run(
        &[
            "explain",
            "--stage",
            "nosuch",
            p.to_str().unwrap_or(""),
            ev.to_str().unwrap_or(""),
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("no stage `nosuch` (sources: src)"), "{err}");
}

/// A pipeline with a webhook and a rate limit, and cases that pass and fail.
const TESTED: &str = "stages:
  src:
    type: file
    path: /dev/null
  budget:
    type: rate_limit
    inputs: [src]
    key: [namespace]
    limit: 2
    per: 1m
  slack:
    type: webhook
    inputs: [budget]
    url: https://hooks.slack.com/services/T0/B0/XYZ?token=s3cr3t
    format: slack
tests:
  - name: two per minute per namespace, then the bucket refills
    inputs:
      - events:
          - {type: Warning, reason: BackOff, namespace: shop, kind: Pod, object_name: web-1}
          - {type: Warning, reason: BackOff, namespace: shop, kind: Pod, object_name: web-2}
          - {type: Warning, reason: BackOff, namespace: shop, kind: Pod, object_name: web-3}
          - {type: Warning, reason: BackOff, namespace: cart, kind: Pod, object_name: cart-1}
      - after: 1m
      - event: {type: Warning, reason: BackOff, namespace: shop, kind: Pod, object_name: web-4}
    expect:
      budget:
        count: 4
        events:
          - {object_name: web-1}
          - {object_name: web-2}
          - {object_name: cart-1}
          - {object_name: web-4}
      slack:
        writes:
          - {method: POST, url: {contains: 'token=***'}, body.text: {matches: '^\\*\\[Warning\\] BackOff\\* shop/Pod/web-1'}}
  - name: a wrong expectation
    inputs:
      - event: {type: Warning, reason: BackOff, namespace: shop, object_name: web-1}
    expect:
      budget:
        count: 2
        events:
          - {object_name: web-9, message: {absent: true}, reason: {matches: '^Back'}}
";

#[test]
fn test_runs_the_cases_and_shows_what_failed_with_the_actual_values() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(dir.path(), "p.yaml", TESTED);
    let (code, out, err) = run(&["test", p.to_str().unwrap_or("")], None);
    assert_eq!(code, 1, "a failing case fails the run: {out}{err}");
    assert!(out.contains("running 2 cases of"), "{out}");
    assert!(
        out.contains("case `two per minute per namespace, then the bucket refills` ... ok"),
        "{out}"
    );
    assert!(
        out.contains("case `a wrong expectation` ... FAILED"),
        "{out}"
    );
    assert!(
        out.contains("stage `budget`: expected 2 events, let out 1 (BackOff web-1)"),
        "{out}"
    );
    assert!(
        out.contains("stage `budget`: event 1: `object_name`: expected `web-9`, found `web-1`"),
        "{out}"
    );
    // `message` is an empty string, not absent; `reason` matches.
    assert!(
        out.contains("`message`: expected it absent, found ``"),
        "{out}"
    );
    assert!(!out.contains("`reason`"), "{out}");
    assert!(
        out.contains("test result: FAILED. 1 passed; 1 failed"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t"), "{out}");

    let (code, out, _) = run(
        &["test", "--format", "json", p.to_str().unwrap_or("")],
        None,
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["passed"], 1);
    assert_eq!(v["failed"], 1);
    assert_eq!(v["files"][0]["cases"][1]["passed"], false);
}

#[test]
fn cases_can_live_in_their_own_file_and_are_validated_with_positions() {
    let dir = tempfile::tempdir().expect("tmp");
    let pipeline = TESTED.split("tests:").next().unwrap_or_default();
    let p = write(dir.path(), "p.yaml", pipeline);
    write(
        dir.path(),
        "events.jsonl",
        "{\"type\":\"Warning\",\"reason\":\"A\",\"namespace\":\"x\"}\n{\"type\":\"Warning\",\"reason\":\"B\",\"namespace\":\"y\"}\n",
    );
    let cases = write(
        dir.path(),
        "cases.yaml",
        "tests:\n  - name: from a file of JSON lines, relative to this file\n    inputs:\n      - file: events.jsonl\n    expect:\n      budget: {count: 2}\n",
    );
    let (code, out, err) = run(
        &[
            "test",
            "--tests",
            cases.to_str().unwrap_or(""),
            p.to_str().unwrap_or(""),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("test result: ok. 1 passed; 0 failed"), "{out}");

    let bad = write(
        dir.path(),
        "bad.yaml",
        &format!(
            "{pipeline}tests:\n  - name: broken\n    at: slack\n    inputs:\n      - {{after: 1m, event: {{}}}}\n    expect:\n      budgte: {{count: 1}}\n      slack:\n        events:\n          - {{reason: {{matches: '(oops'}}}}\n"
        ),
    );
    let (code, _, err) = run(&["validate", bad.to_str().unwrap_or("")], None);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "field `tests[0].at`: `slack` is not a source of this pipeline (sources: src)"
        ),
        "{err}"
    );
    assert!(
        err.contains("field `tests[0].inputs[0]`: an input is exactly one of"),
        "{err}"
    );
    assert!(err.contains("field `tests[0].expect.budgte`: no stage `budgte` in this pipeline: did you mean `budget`?"), "{err}");
    assert!(
        err.contains(
            "field `tests[0].expect.slack.events[0].reason`: `matches:` regex parse error"
        ),
        "{err}"
    );
    assert!(err.contains("bad.yaml:2"), "with positions: {err}");
}

#[test]
fn the_bundled_pipelines_pass_their_own_cases() {
    let mut files: Vec<String> = std::fs::read_dir(repo("pipelines"))
        .expect("pipelines/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["test".to_string()];
    args.extend(files.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&args, None);
    assert_eq!(code, 0, "{out}{err}");
    for f in &files {
        assert!(
            out.contains(&format!("cases of {f}")),
            "{f} has cases: {out}"
        );
    }
    assert!(
        !out.contains("running 0 cases"),
        "every bundled pipeline has cases: {out}"
    );
}

/// A running pipeline with the API on a free port, following a file the test appends to.
fn tapped(dir: &std::path::Path) -> (Running, std::path::PathBuf, u16) {
    let events = write(dir, "events.jsonl", "");
    let p = write(
        dir,
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n  warnings:\n    type: filter\n    inputs: [src]\n    types: [Warning]\n  out:\n    type: stdout\n    inputs: [warnings]\n",
            events.display()
        ),
    );
    let mut r = Running::start(&[], &p);
    let port = r.api_port();
    (r, events, port)
}

#[test]
fn tap_prints_the_events_leaving_a_stage_live() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut r, events, port) = tapped(dir.path());
    let tap = bin()
        .args(["tap", "--stage", "warnings", "--limit", "2", "--api"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tap");
    // The tap is listening once the API has answered it; give it a moment to connect.
    std::thread::sleep(std::time::Duration::from_millis(500));
    append(
        &events,
        &[
            sample_line(1, "Normal"),
            sample_line(2, "Warning"),
            sample_line(3, "Normal"),
            sample_line(4, "Warning"),
            sample_line(5, "Warning"),
        ],
    );
    let out = tap.wait_with_output().expect("tap ends after --limit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(uids, ["uid-2", "uid-4"], "the filter's output, two of it");
    // The pipeline went on as if nobody had looked.
    let got: Vec<serde_json::Value> = (0..3).map(|_| r.next_event()).collect();
    assert_eq!(got[2]["uid"], "uid-5");
    // A stage that does not exist is named, with the ones that do.
    let out = bin()
        .args(["tap", "--stage", "nosuch", "--api"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("tap");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no stage `nosuch` (stages: out, src, warnings)"),
        "{err}"
    );
    let _ = r.stop_ok();
}

#[test]
fn a_tap_that_does_not_read_never_slows_the_pipeline_and_says_what_it_dropped() {
    use std::io::{Read, Write};
    const N: usize = 20_000;
    let dir = tempfile::tempdir().expect("tmp");
    let (mut r, events, port) = tapped(dir.path());
    // A listener that connects and then reads nothing.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        sock,
        "GET /-/tap?stage=src HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines: Vec<String> = (0..N).map(|i| sample_line(i, "Warning")).collect();
    append(&events, &lines);
    // Every event reaches stdout while the tap's reader sleeps.
    for i in 0..N {
        let e = r.next_event();
        assert_eq!(e["uid"], format!("uid-{i}"));
    }
    // Now read what the tap kept: a report of what it dropped is in it.
    sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    let mut body = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&body).contains("tap_dropped") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("{\"tap_dropped\":"),
        "the stream says how many it dropped"
    );
    let _ = r.stop_ok();
}

/// `explain` shows what a stage after `aggregate` receives — the summary of the event alone in
/// its group — not the original event; and an input that is not an Event says so.
#[test]
fn explain_shows_the_summary_after_an_aggregate_and_refuses_what_is_not_an_event() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(
        dir.path(),
        "p.yaml",
        "stages:\n  src:\n    type: file\n    path: /dev/null\n  groups:\n    type: aggregate\n    inputs: [src]\n    key: [namespace, reason]\n    window: 1m\n  print:\n    type: stdout\n    inputs: [groups]\n",
    );
    let event = "{\"type\": \"Warning\", \"reason\": \"Unhealthy\", \"namespace\": \"checkout\", \"object_namespace\": \"checkout\", \"kind\": \"Pod\", \"object_name\": \"api-1\", \"count\": 3, \"last_seen\": \"2026-03-02T10:00:00Z\"}";
    let (code, out, err) = run(
        &["explain", "--json", p.to_str().unwrap_or(""), "-"],
        Some(event),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let stages = v[0]["stages"].as_array().expect("stages");
    let print = stages
        .iter()
        .find(|s| s["stage"] == "print")
        .expect("print");
    let line = &print["output"];
    let text = line["summary"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        text.starts_with(
            "Unhealthy x3 on checkout/Pod/api-1 at 2026-03-02 10:00:00 UTC (event time; window 1m"
        ),
        "the sink after aggregate gets the summary: {print}"
    );
    assert_eq!(line["count"], 3, "{print}");

    let (code, _, err) = run(
        &["explain", p.to_str().unwrap_or(""), "-"],
        Some("{\"foo\":1}\n"),
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown event field `foo`"), "{err}");
}

/// `explain` shows the OTLP record and the Elasticsearch document an event becomes;
/// `eventflow test` checks the bulk lines a case would write.
#[test]
fn explain_and_test_show_otlp_records_and_elasticsearch_documents() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(
        dir.path(),
        "p.yaml",
        "stages:
  k8s: {type: kube_events}
  otel: {type: otlp, inputs: [k8s], endpoint: 'http://collector:4317', attributes: {team: '{{ namespace }}-team'}}
  search: {type: elasticsearch, inputs: [k8s], urls: ['http://es:9200'], index: 'kube-%Y'}
tests:
  - name: an Event is one bulk action with its uid as id
    inputs:
      - event: {type: Warning, reason: BackOff, namespace: shop, uid: abc, message: boom}
    expect:
      search:
        writes:
          - {method: POST, body: {contains: '\"_id\":\"abc\"'}}
",
    );
    let ev = write(dir.path(), "event.yaml", EVENT_YAML);
    let (code, out, err) = run(
        &[
            "explain",
            "--json",
            p.to_str().unwrap_or(""),
            ev.to_str().unwrap_or(""),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let stages = v[0]["stages"].as_array().expect("stages");
    let stage = |id: &str| {
        stages
            .iter()
            .find(|s| s["stage"] == id)
            .cloned()
            .expect("stage")
    };
    let otel = stage("otel");
    assert_eq!(otel["verdict"], "delivered");
    let rl = &otel["output"]["resourceLogs"][0];
    let record = &rl["scopeLogs"][0]["logRecords"][0];
    assert_eq!(record["severityText"], "Warning");
    assert_eq!(
        record["body"]["stringValue"],
        "Back-off restarting failed container"
    );
    let attrs = record["attributes"].as_array().expect("attributes");
    let attr = |k: &str| {
        attrs
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
    };
    assert_eq!(
        attr("k8s.event.reason"),
        Some(serde_json::json!({"stringValue": "BackOff"}))
    );
    assert_eq!(
        attr("k8s.event.count"),
        Some(serde_json::json!({"intValue": "4"}))
    );
    assert_eq!(
        attr("team"),
        Some(serde_json::json!({"stringValue": "staging-team"}))
    );
    let search = stage("search");
    assert_eq!(search["verdict"], "delivered");
    assert_eq!(search["output"]["action"]["index"]["_id"], "5c0e-uid");
    assert_eq!(
        search["output"]["document"]["kubernetes"]["namespace"],
        "staging"
    );
    assert_eq!(search["output"]["document"]["event"]["reason"], "BackOff");
    let (code, out, err) = run(&["test", p.to_str().unwrap_or("")], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("an Event is one bulk action"), "{out}");
}
