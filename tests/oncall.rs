//! The paging sinks against strict implementations of PagerDuty's Events API v2 and Opsgenie's
//! Alert API v2 (`tests/support/oncall.rs`; neither service is reachable here): one incident per
//! problem, repeats update it, a quiet problem is resolved, a restart neither opens it again
//! nor forgets to resolve it, 429 is retried, a refused event is not acknowledged.
#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod support;
use support::oncall::Service;

use std::path::{Path, PathBuf};
use std::time::Duration;

fn pipeline(dir: &Path, events: &Path, sink: &str) -> PathBuf {
    support::write(
        dir,
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstate:\n  url: sqlite://{}\nstages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n    cluster: prod\n  page:\n    inputs: [src]\n    resolve_after: 2s\n    batch: {{max_events: 100, max_wait: 50ms}}\n    backoff: {{initial: 100ms, max: 300ms}}\n{sink}",
            dir.join("state.db").display(),
            events.display()
        ),
    )
}

/// Event `i` of the problem `reason` on pod `web` in `shop`.
fn event(i: usize, reason: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&support::sample_line(i, "Warning")).unwrap();
    v["reason"] = serde_json::json!(reason);
    v.to_string()
}

const KEY: &str = "prod/shop/Pod/web/BackOff";

fn lifecycle(service: &Service, sink: &str, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(dir.path(), &events, sink);
    let mut r = support::Running::start(&[], &p);
    let port = r.api_port();
    support::append(&events, &[event(1, "BackOff"), event(2, "Unhealthy")]);
    support::wait_until("two incidents open", Duration::from_secs(20), || {
        service.incidents().values().filter(|i| i.open).count() == 2
    });
    // Repeats of one problem, before it goes quiet: the same incident, updated.
    support::append(&events, &[event(3, "BackOff")]);
    support::wait_until("the repeat taken", Duration::from_secs(20), || {
        service
            .incidents()
            .get(KEY)
            .is_some_and(|i| i.triggers == 2)
    });
    support::append(&events, &[event(4, "BackOff")]);
    support::wait_until("the second repeat taken", Duration::from_secs(20), || {
        service
            .incidents()
            .get(KEY)
            .is_some_and(|i| i.triggers == 3)
    });
    assert_eq!(
        support::metric(port, "eventflow_incidents_open{stage=\"page\"}"),
        2.0
    );
    // Quiet for resolve_after: both resolved, each opened once.
    support::wait_until("both resolved", Duration::from_secs(20), || {
        service.incidents().values().all(|i| !i.open)
    });
    let incidents = service.incidents();
    assert_eq!(incidents.len(), 2, "{incidents:?}");
    assert!(incidents.values().all(|i| i.opened == 1), "{incidents:?}");
    support::wait_until("resolutions counted", Duration::from_secs(5), || {
        support::metric(port, "eventflow_incidents_resolved_total{stage=\"page\"}") == 2.0
    });
    assert_eq!(
        support::metric(port, "eventflow_incidents_open{stage=\"page\"}"),
        0.0
    );
    let (_, logs) = r.stop_ok();
    assert!(
        logs.iter().any(|l| l.contains("incident resolved")),
        "{kind}: {logs:?}"
    );
}

#[test]
fn pagerduty_opens_one_incident_per_problem_and_resolves_it_when_quiet() {
    let (pd, url) = Service::pagerduty();
    lifecycle(
        &pd,
        &format!(
            "    type: pagerduty\n    routing_key: R0UT1NGKEY\n    url: {url}\n    links: [{{href: 'https://dash/{{{{ namespace }}}}', text: dashboard}}]\n"
        ),
        "pagerduty",
    );
    let trigger = &pd.incidents()[KEY].last;
    assert_eq!(trigger["dedup_key"], KEY);
    assert_eq!(trigger["payload"]["severity"], "warning");
    assert_eq!(trigger["payload"]["source"], "prod");
    assert_eq!(trigger["payload"]["component"], "Pod/web");
    assert_eq!(trigger["payload"]["group"], "shop");
    assert_eq!(trigger["payload"]["class"], "BackOff");
    assert_eq!(trigger["payload"]["custom_details"]["uid"], "uid-4");
    assert_eq!(trigger["links"][0]["href"], "https://dash/shop");
    assert!(
        trigger["payload"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("[Warning] BackOff shop/Pod/web: Back-off")
    );
    let resolves = pd
        .requests()
        .iter()
        .filter(|(_, _, b)| b["event_action"] == "resolve")
        .count();
    assert_eq!(resolves, 2);
}

#[test]
fn opsgenie_creates_one_alert_per_problem_and_closes_it_when_quiet() {
    let (og, url) = Service::opsgenie("g3n1e");
    lifecycle(
        &og,
        &format!(
            "    type: opsgenie\n    api_key: g3n1e\n    url: {url}\n    responders: [{{type: team, name: platform}}]\n"
        ),
        "opsgenie",
    );
    let create = &og.incidents()[KEY].last;
    assert_eq!(create["alias"], KEY);
    assert_eq!(create["priority"], "P3");
    assert_eq!(create["message"], "[Warning] BackOff shop/web");
    assert_eq!(create["responders"][0]["name"], "platform");
    assert_eq!(create["details"]["reason"], "BackOff");
    let closes: Vec<String> = og
        .requests()
        .iter()
        .filter(|(p, _, _)| p.ends_with("/close"))
        .map(|(p, _, _)| p.clone())
        .collect();
    assert_eq!(closes.len(), 2, "{closes:?}");
}

/// A restart between trigger and resolve: the incident is resolved by the new process (from
/// the state database) and not opened again.
#[test]
fn a_restart_neither_reopens_nor_forgets_an_incident() {
    let (pd, url) = Service::pagerduty();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("    type: pagerduty\n    routing_key: R0UT1NGKEY\n    url: {url}\n");
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(dir.path(), &events, &sink.replace("resolve_after: 2s", ""));
    // A long resolve_after for the first run: it stops before resolving.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("resolve_after: 2s", "resolve_after: 1h");
    support::replace(&p, &text);
    let r = support::Running::start(&[], &p);
    support::append(&events, &[event(1, "BackOff")]);
    support::wait_until("the incident open", Duration::from_secs(20), || {
        pd.incidents().get(KEY).is_some_and(|i| i.open)
    });
    drop(r.stop_ok());
    // The second run reads a new, empty file, with resolve_after 2s.
    let quiet = support::write(dir.path(), "quiet.jsonl", "");
    let text = text
        .replace("resolve_after: 1h", "resolve_after: 2s")
        .replace(&events.display().to_string(), &quiet.display().to_string());
    support::replace(&p, &text);
    let r = support::Running::start(&[], &p);
    support::wait_until(
        "resolved by the restarted process",
        Duration::from_secs(20),
        || pd.incidents().get(KEY).is_some_and(|i| !i.open),
    );
    drop(r.stop_ok());
    let i = &pd.incidents()[KEY];
    assert_eq!((i.opened, i.triggers), (1, 1), "{i:?}");
}

#[test]
fn throttled_requests_are_retried_and_open_one_incident() {
    let (pd, url) = Service::pagerduty();
    pd.throttle(2);
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(
        dir.path(),
        &events,
        &format!("    type: pagerduty\n    routing_key: R0UT1NGKEY\n    url: {url}\n"),
    );
    let mut r = support::Running::start(&[], &p);
    let port = r.api_port();
    support::append(&events, &[event(1, "BackOff")]);
    support::wait_until("the incident open", Duration::from_secs(20), || {
        pd.incidents().get(KEY).is_some_and(|i| i.open)
    });
    assert_eq!(pd.incidents()[KEY].triggers, 1);
    let statuses: Vec<u16> = pd.requests().iter().map(|(_, s, _)| *s).collect();
    assert_eq!(statuses[..3], [429, 429, 202]);
    assert_eq!(
        support::metric(port, "eventflow_pagerduty_retries_total{stage=\"page\"}"),
        2.0
    );
    drop(r.stop_ok());
}

/// PagerDuty refuses an event without a summary (400): not retried, and the finite run reports
/// the event as not delivered (its source is not told it was).
#[test]
fn a_refused_event_is_permanent_and_not_acknowledged() {
    let (pd, url) = Service::pagerduty();
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(
        dir.path(),
        "events.jsonl",
        &format!("{}\n", event(1, "BackOff")),
    );
    let p = support::write(
        dir.path(),
        "p.yaml",
        &format!(
            "state:\n  url: sqlite://{}\nstages:\n  src: {{type: file, path: '{}'}}\n  page:\n    type: pagerduty\n    inputs: [src]\n    routing_key: R0UT1NGKEY\n    url: {url}\n    summary: \"{{{{ object_labels.none | default('') }}}}\"\n",
            dir.path().join("state.db").display(),
            events.display()
        ),
    );
    let out = support::bin().args(["run"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("sink `page` (pagerduty): 0 delivered, 1 failed"),
        "{err}"
    );
    assert!(
        err.contains("payload.summary"),
        "PagerDuty's errors are logged: {err}"
    );
    assert_eq!(pd.requests().len(), 1, "not retried");
    assert!(pd.incidents().is_empty());
}
