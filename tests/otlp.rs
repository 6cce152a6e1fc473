//! The otlp sink against a receiver built from the official OpenTelemetry Python packages
//! (`tests/support/otlp_receiver.py`: an independent decoder of OTLP over gRPC and
//! HTTP/protobuf): every mapped field as the receiver decodes it, for both Event API versions
//! and both protocols, gzip and headers; retries under the OTLP rules; a permanent error
//! failing the batch; a partial success counted in the metrics a user scrapes.
#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod support;
use support::otlp::{Receiver, attrs};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eventflow::engine::Topology;
use eventflow::event::ack::Status;
use eventflow::stages::otlp::OtlpConfig;
use eventflow::testkit::{ChannelSource, event, source_to_sink};
use serde_json::{Value, json};

/// Times relative to now (no test depends on the date): `secs` seconds before now, RFC 3339.
fn ago(secs: i64) -> (String, u64) {
    let t = chrono::Utc::now() - chrono::Duration::seconds(secs);
    let t = chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap();
    (
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        u64::try_from(t.timestamp_nanos_opt().unwrap()).unwrap(),
    )
}

/// A core/v1 Event and an events.k8s.io/v1 Event (with a series), with every mapped field set.
fn two_events() -> (Vec<String>, Value) {
    let (created, _) = ago(600);
    let (first, _) = ago(500);
    let (last, last_ns) = ago(100);
    let (event_time, _) = ago(300);
    let (observed, observed_ns) = ago(60);
    let core = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-1.17a", "namespace": "shop", "uid": "ev-core", "resourceVersion": "501", "creationTimestamp": created},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "pod-uid", "apiVersion": "v1", "resourceVersion": "77", "fieldPath": "spec.containers{web}"},
        "reason": "BackOff", "message": "Back-off restarting failed container", "action": "Restarting",
        "source": {"component": "kubelet", "host": "worker-1"},
        "firstTimestamp": first, "lastTimestamp": last, "count": 7, "type": "Warning",
        "reportingComponent": "kubelet", "reportingInstance": "worker-1"
    });
    let v1 = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "db-0.18b", "namespace": "data", "uid": "ev-new", "resourceVersion": "502", "creationTimestamp": created},
        "regarding": {"kind": "StatefulSet", "namespace": "data", "name": "db", "uid": "sts-uid", "apiVersion": "apps/v1", "resourceVersion": "88"},
        "reason": "SuccessfulCreate", "note": "create Pod db-0 in StatefulSet db successful", "action": "Create",
        "type": "Normal", "eventTime": format!("{}.000000Z", event_time.trim_end_matches('Z')),
        "series": {"count": 3, "lastObservedTime": format!("{}.000000Z", observed.trim_end_matches('Z'))},
        "reportingController": "statefulset-controller", "reportingInstance": "controller-manager-1"
    });
    let expect = json!({"core_time": last_ns.to_string(), "v1_time": observed_ns.to_string(), "created": created});
    (vec![core.to_string(), v1.to_string()], expect)
}

fn pipeline(
    dir: &Path,
    events: &Path,
    endpoint: &str,
    protocol: &str,
    extra: &str,
) -> std::path::PathBuf {
    support::write(
        dir,
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n    cluster: prod-eu\n  logs:\n    type: otlp\n    inputs: [src]\n    endpoint: {endpoint}\n    protocol: {protocol}\n    batch: {{max_events: 100, max_wait: 50ms}}\n    backoff: {{initial: 100ms, max: 300ms}}\n{extra}",
            events.display()
        ),
    )
}

fn by_uid(records: &[Value], uid: &str) -> Value {
    records
        .iter()
        .find(|r| attrs(&r["record"]["attributes"])["k8s.event.uid"] == uid)
        .cloned()
        .unwrap_or_else(|| panic!("no record of {uid} in {records:#?}"))
}

fn round_trip(protocol: &str) {
    let test = format!("every_mapped_field_round_trips_over_{protocol}");
    let Some(rx) = Receiver::start(&test, &[]) else {
        return;
    };
    let port = if protocol == "grpc" { rx.grpc } else { rx.http };
    let dir = tempfile::tempdir().unwrap();
    let (lines, expect) = two_events();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(
        dir.path(),
        &events,
        &format!("http://127.0.0.1:{port}"),
        protocol,
        "    headers:\n      Authorization: Bearer s3cret\n    resource_attributes:\n      deployment.environment: production\n    attributes:\n      team: \"{{ namespace }}-team\"\n",
    );
    let r = support::Running::start(&[], &p);
    support::append(&events, &lines);
    support::wait_until("both records received", Duration::from_secs(20), || {
        rx.accepted_records().len() == 2
    });
    drop(r.stop_ok());
    let records = rx.accepted_records();
    let req = &rx.requests()[0];
    // Gzip on by default; the header as configured.
    // (gRPC's `grpc-encoding` is not shown to a Python servicer: gzip over gRPC is checked
    // by what goes over the wire, below.)
    if protocol == "http" {
        assert_eq!(req["gzip"], true, "{req}");
    }
    assert_eq!(req["headers"]["authorization"], "Bearer s3cret");

    let core = by_uid(&records, "ev-core");
    assert_eq!(
        core["resource"],
        json!({
            "k8s.cluster.name": "prod-eu", "k8s.node.name": "worker-1",
            "k8s.object.kind": "Pod", "k8s.object.name": "web-1", "k8s.object.uid": "pod-uid",
            "k8s.object.fieldpath": "spec.containers{web}", "k8s.object.api_version": "v1",
            "k8s.object.resource_version": "77", "deployment.environment": "production"
        })
    );
    let rec = &core["record"];
    assert_eq!(
        rec["body"]["stringValue"],
        "Back-off restarting failed container"
    );
    assert_eq!(rec["severityNumber"], "SEVERITY_NUMBER_WARN");
    assert_eq!(rec["severityText"], "Warning");
    // core/v1 without eventTime: lastTimestamp.
    assert_eq!(rec["timeUnixNano"], expect["core_time"]);
    let observed: u64 = rec["observedTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = u64::try_from(chrono::Utc::now().timestamp_nanos_opt().unwrap()).unwrap();
    assert!(
        now - observed < 60_000_000_000,
        "observed {observed}, now {now}"
    );
    let created =
        chrono::DateTime::parse_from_rfc3339(expect["created"].as_str().unwrap()).unwrap();
    assert_eq!(
        attrs(&rec["attributes"]),
        json!({
            "k8s.event.reason": "BackOff", "k8s.event.action": "Restarting",
            "k8s.event.start_time": created.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
            "k8s.event.name": "web-1.17a", "k8s.event.uid": "ev-core", "k8s.namespace.name": "shop",
            "k8s.event.count": "7", "k8s.event.reporting_controller": "kubelet",
            "k8s.event.reporting_instance": "worker-1", "team": "shop-team"
        })
    );
    assert_eq!(core["scope"]["name"], "eventflow");

    let v1 = by_uid(&records, "ev-new");
    assert_eq!(v1["resource"]["k8s.object.kind"], "StatefulSet");
    assert_eq!(v1["resource"]["k8s.object.api_version"], "apps/v1");
    assert_eq!(v1["resource"]["k8s.object.resource_version"], "88");
    let rec = &v1["record"];
    assert_eq!(
        rec["body"]["stringValue"],
        "create Pod db-0 in StatefulSet db successful"
    );
    assert_eq!(rec["severityNumber"], "SEVERITY_NUMBER_INFO");
    assert_eq!(rec["severityText"], "Normal");
    // events.k8s.io/v1: series.lastObservedTime first.
    assert_eq!(rec["timeUnixNano"], expect["v1_time"]);
    let a = attrs(&rec["attributes"]);
    assert_eq!(a["k8s.event.count"], "3");
    assert_eq!(a["k8s.event.action"], "Create");
    assert_eq!(
        a["k8s.event.reporting_controller"],
        "statefulset-controller"
    );
    assert_eq!(a["k8s.event.reporting_instance"], "controller-manager-1");
    assert_eq!(a["k8s.namespace.name"], "data");
}

#[test]
fn every_mapped_field_round_trips_over_grpc() {
    round_trip("grpc");
}

#[test]
fn every_mapped_field_round_trips_over_http() {
    round_trip("http");
}

/// What `enrich` adds, under the semantic conventions' names; an event without the object as
/// received (a test case's) falls back to its normalized fields; severities of other types.
#[tokio::test]
async fn enriched_fields_use_the_semantic_conventions() {
    let Some(rx) = Receiver::start("enriched_fields_use_the_semantic_conventions", &[]) else {
        return;
    };
    let cfg: OtlpConfig = serde_json::from_value(json!({
        "endpoint": format!("http://127.0.0.1:{}", rx.grpc), "gzip": false,
        "batch": {"max_wait": "50ms"}
    }))
    .unwrap();
    let (src, feed) = ChannelSource::new(4);
    let b = source_to_sink(Arc::new(src), "logs", "otlp", Arc::new(cfg), 0);
    let topo = Topology::start(b.build()).await.unwrap();
    let mut e = event("enriched");
    e.kind = "Pod".into();
    e.object_name = "web-1".into();
    e.type_ = "critical".into();
    e.count = 4;
    e.object_labels = Some(Arc::new([("app".to_string(), "web".to_string())].into()));
    e.namespace_labels = Some(Arc::new([("team".to_string(), "shop".to_string())].into()));
    e.owner_kind = "Deployment".into();
    e.owner_name = "web".into();
    let mut odd = event("odd");
    odd.type_ = "Unusual".into();
    let ack = feed.send(vec![e, odd]).await;
    assert_eq!(ack.await.unwrap(), Status::Delivered);
    topo.shutdown(Duration::from_secs(10)).await;
    support::wait_until("both records reported", Duration::from_secs(10), || {
        rx.accepted_records().len() == 2
    });
    let records = rx.accepted_records();
    let en = by_uid(&records, "enriched");
    assert_eq!(en["resource"]["k8s.pod.label.app"], "web");
    assert_eq!(en["resource"]["k8s.namespace.label.team"], "shop");
    assert_eq!(en["resource"]["k8s.deployment.name"], "web");
    assert_eq!(en["record"]["severityNumber"], "SEVERITY_NUMBER_FATAL");
    assert_eq!(en["record"]["severityText"], "critical");
    assert_eq!(attrs(&en["record"]["attributes"])["k8s.event.count"], "4");
    assert_eq!(rx.requests()[0]["gzip"], Value::Null, "gzip: false");
    let odd = by_uid(&records, "odd");
    // Unknown types: unspecified, no text (OTLP JSON leaves defaults out).
    assert_eq!(odd["record"].get("severityNumber"), None);
    assert_eq!(odd["record"].get("severityText"), None);
}

/// A run of `eventflow` sending `n` sample events to a receiver with `answers`; returns the
/// receiver, the metrics port, and the running process.
fn run_with(
    test: &str,
    protocol: &str,
    answers: &[&str],
    n: usize,
) -> Option<(Receiver, support::Running, tempfile::TempDir)> {
    let rx = Receiver::start(test, answers)?;
    let port = if protocol == "grpc" { rx.grpc } else { rx.http };
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(
        dir.path(),
        &events,
        &format!("http://127.0.0.1:{port}"),
        protocol,
        "",
    );
    let r = support::Running::start(&[], &p);
    let lines: Vec<String> = (0..n).map(|i| support::sample_line(i, "Warning")).collect();
    support::append(&events, &lines);
    Some((rx, r, dir))
}

fn uids(records: &[Value]) -> Vec<String> {
    let mut u: Vec<String> = records
        .iter()
        .map(|r| {
            attrs(&r["record"]["attributes"])["k8s.event.uid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    u.sort();
    u
}

fn retried_until_accepted(protocol: &str, answers: &[&str]) {
    let test = format!("retries_over_{protocol}");
    let Some((rx, mut r, _dir)) = run_with(&test, protocol, answers, 5) else {
        return;
    };
    support::wait_until("the records accepted", Duration::from_secs(30), || {
        !rx.accepted_records().is_empty()
    });
    let port = r.api_port();
    std::thread::sleep(Duration::from_millis(300));
    let mut want: Vec<String> = (0..5).map(|i| format!("uid-{i}")).collect();
    want.sort();
    // Every record once: the refused requests were sent again, nothing more.
    assert_eq!(uids(&rx.accepted_records()), want);
    assert_eq!(rx.requests().len(), answers.len() + 1);
    assert_eq!(
        support::metric(port, "eventflow_otlp_retries_total{stage=\"logs\"}"),
        answers.len() as f64
    );
    drop(r.stop_ok());
}

#[test]
fn unavailable_then_accepting_gets_every_record_once_over_grpc() {
    retried_until_accepted("grpc", &["unavailable", "unavailable", "exhausted-retry"]);
}

#[test]
fn unavailable_then_accepting_gets_every_record_once_over_http() {
    retried_until_accepted("http", &["unavailable", "exhausted"]);
}

fn permanent(protocol: &str, answer: &str) {
    let test = format!("permanent_{protocol}_{answer}");
    let Some((rx, mut r, _dir)) = run_with(&test, protocol, &[answer], 3) else {
        return;
    };
    let port = r.api_port();
    let series =
        "eventflow_events_discarded_total{stage=\"logs\",type=\"otlp\",reason=\"otlp_failed\"}";
    support::wait_until("the batch failed", Duration::from_secs(20), || {
        support::metric(port, series) == 3.0
    });
    r.wait_log("refused the delivery (permanent)");
    // Not retried, and its source did not checkpoint it: the file source reads it again on
    // the next start (the events were not acknowledged as delivered).
    assert_eq!(rx.requests_settled(1).len(), 1);
    assert!(rx.accepted_records().is_empty());
    drop(r.stop_ok());
}

#[test]
fn a_permanent_error_fails_the_batch_over_grpc() {
    permanent("grpc", "invalid");
    // RESOURCE_EXHAUSTED without RetryInfo is permanent too (the OTLP specification).
    permanent("grpc", "exhausted");
}

#[test]
fn a_permanent_error_fails_the_batch_over_http() {
    permanent("http", "invalid");
}

#[test]
fn a_partial_success_is_counted_and_acknowledged() {
    for protocol in ["grpc", "http"] {
        let Some((rx, mut r, _dir)) =
            run_with("a_partial_success_is_counted", protocol, &["partial:2"], 4)
        else {
            return;
        };
        let port = r.api_port();
        let series = "eventflow_events_discarded_total{stage=\"logs\",type=\"otlp\",reason=\"otlp_rejected\"}";
        support::wait_until(
            "the rejected records counted",
            Duration::from_secs(20),
            || support::metric(port, series) == 2.0,
        );
        r.wait_log("rejected some records");
        // Not sent again: OTLP does not say which were rejected, and the others were taken.
        assert_eq!(rx.requests_settled(1).len(), 1, "{protocol}");
        drop(r.stop_ok());
    }
}

/// A TCP relay to `port` that counts the bytes the client sent.
fn counting_relay(port: u16) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap().port();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let server = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    counter.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                }
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
            });
        }
    });
    (local, sent)
}

/// gzip over gRPC, seen on the wire: 200 alike events take a fraction of the bytes they take
/// without it, and the receiver decodes both the same.
#[test]
fn grpc_requests_are_gzipped_on_the_wire() {
    let mut bytes = Vec::new();
    for gzip in [true, false] {
        let Some(rx) = Receiver::start("grpc_requests_are_gzipped_on_the_wire", &[]) else {
            return;
        };
        let (relay, sent) = counting_relay(rx.grpc);
        let dir = tempfile::tempdir().unwrap();
        let events = support::write(dir.path(), "events.jsonl", "");
        let p = pipeline(
            dir.path(),
            &events,
            &format!("http://127.0.0.1:{relay}"),
            "grpc",
            &format!("    gzip: {gzip}\n"),
        );
        let r = support::Running::start(&[], &p);
        let lines: Vec<String> = (0..200)
            .map(|i| support::sample_line(i, "Warning"))
            .collect();
        support::append(&events, &lines);
        support::wait_until("200 records received", Duration::from_secs(20), || {
            rx.accepted_records().len() == 200
        });
        drop(r.stop_ok());
        bytes.push(sent.load(std::sync::atomic::Ordering::SeqCst));
    }
    assert!(
        bytes[0] * 3 < bytes[1],
        "gzip: {} bytes sent, plain: {} bytes",
        bytes[0],
        bytes[1]
    );
}

/// A CA and a server certificate it signed for 127.0.0.1 (openssl; relative to now).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let (cert, key, csr) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("cert.csr"),
    );
    let ext = support::write(
        dir,
        "ext.cnf",
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    let run = |args: Vec<std::ffi::OsString>| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl (.ci/services.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let os = |v: &[&dyn AsRef<std::ffi::OsStr>]| -> Vec<std::ffi::OsString> {
        v.iter().map(|a| a.as_ref().to_os_string()).collect()
    };
    run(os(&[
        &"req",
        &"-x509",
        &"-newkey",
        &"rsa:2048",
        &"-nodes",
        &"-days",
        &"2",
        &"-subj",
        &"/CN=eventflow test CA",
        &"-addext",
        &"basicConstraints=critical,CA:TRUE",
        &"-addext",
        &"keyUsage=critical,keyCertSign,cRLSign",
        &"-keyout",
        &ca_key,
        &"-out",
        &ca,
    ]));
    run(os(&[
        &"req",
        &"-newkey",
        &"rsa:2048",
        &"-nodes",
        &"-subj",
        &"/CN=127.0.0.1",
        &"-keyout",
        &key,
        &"-out",
        &csr,
    ]));
    run(os(&[
        &"x509",
        &"-req",
        &"-in",
        &csr,
        &"-CA",
        &ca,
        &"-CAkey",
        &ca_key,
        &"-CAcreateserial",
        &"-days",
        &"2",
        &"-extfile",
        &ext,
        &"-out",
        &cert,
    ]));
    (ca, cert, key)
}

/// gRPC over TLS: trusted through `ca_file`, refused without it (the certificate's issuer is
/// unknown), accepted with `insecure_skip_verify`.
#[test]
fn grpc_over_tls_checks_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    for (extra, delivered) in [
        (format!("    ca_file: {}\n", ca.display()), true),
        ("    retries: 0\n".to_string(), false),
        ("    insecure_skip_verify: true\n".to_string(), true),
    ] {
        let Some(rx) = Receiver::start_tls("grpc_over_tls_checks_the_certificate", &cert, &key)
        else {
            return;
        };
        let run = tempfile::tempdir().unwrap();
        let events = support::write(run.path(), "events.jsonl", "");
        let p = pipeline(
            run.path(),
            &events,
            &format!("https://127.0.0.1:{}", rx.grpc),
            "grpc",
            &extra,
        );
        let mut r = support::Running::start(&[], &p);
        support::append(&events, &[support::sample_line(1, "Warning")]);
        if delivered {
            support::wait_until(
                "the record received over TLS",
                Duration::from_secs(20),
                || rx.accepted_records().len() == 1,
            );
        } else {
            let line = r.wait_log("otlp delivery failed after all retries");
            assert!(
                line.contains("certificate") || line.contains("UnknownIssuer"),
                "{line}"
            );
            assert!(rx.requests().is_empty());
        }
        drop(r.stop_ok());
    }
}

/// `durable: true`: the events wait in the state database's queue while the receiver is
/// unavailable, and each reaches it once.
#[test]
fn a_durable_otlp_stage_queues_through_an_outage() {
    let Some(rx) = Receiver::start(
        "a_durable_otlp_stage_queues_through_an_outage",
        &["unavailable", "unavailable", "unavailable"],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let events = support::write(dir.path(), "events.jsonl", "");
    let p = pipeline(
        dir.path(),
        &events,
        &format!("http://127.0.0.1:{}", rx.http),
        "http",
        "    durable: true\n",
    );
    let text = std::fs::read_to_string(&p).unwrap();
    let state = dir.path().join("state.db");
    support::replace(
        &p,
        &format!("state:\n  url: sqlite://{}\n{text}", state.display()),
    );
    let mut r = support::Running::start(&[], &p);
    let port = r.api_port();
    support::append(
        &events,
        &(0..20)
            .map(|i| support::sample_line(i, "Normal"))
            .collect::<Vec<_>>(),
    );
    support::wait_until("all records received", Duration::from_secs(30), || {
        rx.accepted_records().len() == 20
    });
    support::wait_until("the queue empty", Duration::from_secs(10), || {
        support::metric(port, "eventflow_webhook_queued_events{stage=\"logs\"}") == 0.0
    });
    let mut want: Vec<String> = (0..20).map(|i| format!("uid-{i}")).collect();
    want.sort();
    assert_eq!(uids(&rx.accepted_records()), want);
    assert!(rx.requests().len() >= 4);
    drop(r.stop_ok());
}

/// A finite run whose receiver refuses the batch for good ends with exit 3 and says how many
/// events were not delivered: they were reported failed to their source, not acknowledged.
#[test]
fn a_refused_batch_is_reported_to_its_source() {
    let Some(rx) = Receiver::start("a_refused_batch_is_reported_to_its_source", &["invalid"])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..3).map(|i| support::sample_line(i, "Warning")).collect();
    let events = support::write(dir.path(), "events.jsonl", &(lines.join("\n") + "\n"));
    let p = support::write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  src: {{type: file, path: '{}'}}\n  logs: {{type: otlp, inputs: [src], endpoint: 'http://127.0.0.1:{}'}}\n",
            events.display(),
            rx.grpc
        ),
    );
    let out = support::bin().args(["run"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("sink `logs` (otlp): 0 delivered, 3 failed"),
        "{err}"
    );
    assert!(err.contains("InvalidArgument"), "{err}");
    assert_eq!(rx.requests_settled(1).len(), 1);
}
