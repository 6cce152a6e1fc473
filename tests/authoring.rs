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
