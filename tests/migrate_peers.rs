//! `eventflow migrate --from kubernetes-event-exporter | kube-eventer`.
//!
//! - Equivalence: kubernetes-event-exporter's route tree, evaluated here by a small evaluator
//!   written from its source (`pkg/exporter/route.go`, `rule.go`), and the translated pipeline,
//!   run through eventflow's real filter stages, send the same events to the same receivers,
//!   as many times — over the bundled real Events and a generated set.
//! - Every example configuration of both projects (kept in `tests/data/migrate/`) translates,
//!   says what it did on its first line, and validates — or fails validation only where it
//!   says ATTENTION.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eventflow::authoring::harness::{ChannelSource, CountingSink, spec};
use eventflow::component::StageKind;
use eventflow::config::Pipeline;
use eventflow::engine::Topology;
use eventflow::event::EventData;
use indexmap::IndexMap;
use serde_json::Value;

// ---- kubernetes-event-exporter's semantics, from its source -------------------------------

fn matches(pattern: &str, s: &str) -> bool {
    // Go's regexp.MatchString: unanchored search.
    regex::Regex::new(pattern).is_ok_and(|r| r.is_match(s))
}

/// `Rule.MatchesEvent`.
fn rule_matches(r: &Value, e: &EventData) -> bool {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    let pairs = [
        (s("message"), e.message.as_str()),
        (s("kind"), e.kind.as_str()),
        (s("namespace"), e.namespace.as_str()),
        (s("reason"), e.reason.as_str()),
        (s("type"), e.type_.as_str()),
        (s("component"), e.source.as_str()),
        (s("host"), e.host.as_str()),
    ];
    for (rule, value) in pairs {
        if !rule.is_empty() && !matches(rule, value) {
            return false;
        }
    }
    if let Some(labels) = r.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            let have = e.object_labels.as_ref().and_then(|l| l.get(k));
            match have {
                Some(val) if matches(v.as_str().unwrap_or_default(), val) => {}
                _ => return false,
            }
        }
    }
    let min = r.get("minCount").and_then(Value::as_i64).unwrap_or(0);
    e.count >= min
}

/// `Route.ProcessEvent`: the receivers `e` is sent to, once per send.
fn process(route: &Value, e: &EventData, sent: &mut Vec<String>) {
    let rules = |k: &str| {
        route
            .get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for d in rules("drop") {
        if rule_matches(&d, e) {
            return;
        }
    }
    let mut all = true;
    for m in rules("match") {
        if rule_matches(&m, e) {
            if let Some(r) = m.get("receiver").and_then(Value::as_str) {
                sent.push(r.to_string());
            }
        } else {
            all = false;
        }
    }
    if all {
        for sub in rules("routes") {
            process(&sub, e, sent);
        }
    }
}

// ---- the events ---------------------------------------------------------------------------

fn real_events() -> Vec<EventData> {
    let mut out = Vec::new();
    for f in ["k9s-gke-pulled.json", "minikube-2017-eventlist.json"] {
        let text =
            std::fs::read_to_string(support::repo(&format!("tests/data/real-events/{f}"))).unwrap();
        out.extend(eventflow::authoring::events_from_text(&text, "prod").unwrap());
    }
    out
}

/// Every combination of the values the test routes look at, with and without labels.
fn generated() -> Vec<EventData> {
    let mut out = Vec::new();
    let mut i = 0;
    for ns in ["default", "kube-system", "team-test", "shop"] {
        for reason in ["BackOff", "Pulled", "FailedScheduling", "Unhealthy"] {
            for ty in ["Normal", "Warning"] {
                for kind in ["Pod", "Deployment", "Node"] {
                    for count in [1, 7] {
                        i += 1;
                        let mut e = eventflow::testkit::event(&format!("gen-{i}"));
                        e.namespace = ns.into();
                        e.reason = reason.into();
                        e.type_ = ty.into();
                        e.kind = kind.into();
                        e.count = count;
                        e.source = if i % 3 == 0 {
                            "default-scheduler".into()
                        } else {
                            "kubelet".into()
                        };
                        e.message = if i % 2 == 0 {
                            format!("pulling image web:{i}")
                        } else {
                            format!("probe failed {i}")
                        };
                        if i % 4 != 0 {
                            let version = if i % 4 == 1 { "dev" } else { "prod" };
                            e.object_labels = Some(Arc::new(
                                [("version".to_string(), version.to_string())].into(),
                            ));
                        }
                        out.push(e);
                    }
                }
            }
        }
    }
    out
}

const CONFIG: &str = r#"
clusterName: prod
route:
  routes:
    - match:
        - receiver: dump
    - drop:
        - namespace: "test"
        - type: "Normal"
          minCount: 5
      match:
        - receiver: alert
        - receiver: pipe
          reason: "BackOff|Unhealthy"
    - match:
        - kind: "Pod|Deployment|ReplicaSet"
          labels:
            version: "^dev$"
          receiver: slack
    - match:
        - namespace: "^kube-"
      routes:
        - match:
            - receiver: system
              type: Warning
            - message: "image"
              receiver: images
        - drop:
            - component: "scheduler"
          match:
            - receiver: system-rest
    - match:
        - type: "Warning"
        - reason: "Failed"
      routes:
        - match:
            - receiver: failures
receivers:
  - {name: dump, webhook: {endpoint: "http://dump.example"}}
  - {name: alert, webhook: {endpoint: "http://alert.example"}}
  - {name: pipe, webhook: {endpoint: "http://pipe.example"}}
  - {name: slack, webhook: {endpoint: "http://slack.example"}}
  - {name: system, webhook: {endpoint: "http://system.example"}}
  - {name: images, webhook: {endpoint: "http://images.example"}}
  - {name: system-rest, webhook: {endpoint: "http://rest.example"}}
  - {name: failures, webhook: {endpoint: "http://failures.example"}}
"#;

/// The translated pipeline with its source fed by the returned feeder, `enrich` passing events
/// through (the test's events carry their labels), and each sink counting what it receives.
fn harness(
    p: &Pipeline,
) -> (
    Pipeline,
    eventflow::testkit::Feeder,
    BTreeMap<String, CountingSink>,
) {
    let mut stages = IndexMap::new();
    let mut sinks = BTreeMap::new();
    let mut feeder = None;
    for s in p.stages.values() {
        let inputs: Vec<&str> = s.inputs.iter().map(String::as_str).collect();
        let made = match s.kind {
            StageKind::Source => {
                let (src, feed) = ChannelSource::new(4);
                feeder = Some(feed);
                spec(
                    &s.id,
                    s.type_name,
                    StageKind::Source,
                    &inputs,
                    Arc::new(src),
                    0,
                )
            }
            StageKind::Sink => {
                let c = CountingSink::recording();
                sinks.insert(s.id.clone(), c.clone());
                spec(&s.id, s.type_name, StageKind::Sink, &inputs, Arc::new(c), 0)
            }
            StageKind::Transform => match s.config.offline() {
                Some(c) => spec(&s.id, s.type_name, StageKind::Transform, &inputs, c, 0),
                None => s.clone(),
            },
        };
        stages.insert(s.id.clone(), made);
    }
    (Pipeline::of_stages(stages), feeder.unwrap(), sinks)
}

#[tokio::test]
async fn translated_routes_send_every_event_to_the_same_receivers() {
    let migrated = eventflow::config::migrate::exporter::translate(
        CONFIG,
        eventflow::config::migrate::Secrets::Inline,
    )
    .unwrap();
    assert!(migrated.attention.is_empty(), "{:?}", migrated.attention);
    let p = eventflow::load_str(&migrated.yaml, "migrated.yaml", &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{}", migrated.yaml));
    let route: Value = serde_saphyr::from_str::<Value>(CONFIG).unwrap()["route"].clone();
    let mut events = real_events();
    assert!(events.len() > 20, "the bundled real events");
    events.extend(generated());
    let (h, feed, sinks) = harness(&p);
    let topo = Topology::start(h).await.unwrap();
    for chunk in events.chunks(100) {
        let ack = feed.send(chunk.to_vec()).await;
        let _ = ack.await;
    }
    topo.shutdown(Duration::from_secs(10)).await;
    // What kubernetes-event-exporter would have sent, receiver by receiver.
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        let mut sent = Vec::new();
        process(&route, e, &mut sent);
        for r in sent {
            want.entry(r).or_default().push(e.uid.clone());
        }
    }
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, c) in &sinks {
        let mut u = c.uids();
        if !u.is_empty() {
            u.sort();
            got.insert(id.clone(), u);
        }
    }
    for v in want.values_mut() {
        v.sort();
    }
    assert!(
        want.len() >= 7,
        "the test routes reach most receivers: {:?}",
        want.keys()
    );
    for (r, uids) in &want {
        assert_eq!(got.get(r), Some(uids), "receiver `{r}`");
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
}

// ---- the projects' own examples -----------------------------------------------------------

/// The `${NAME}` references of a translation, each set to a value that validates.
fn env_of(yaml: &str) -> BTreeMap<String, String> {
    let re = regex::Regex::new(r"\$\{([A-Z0-9_]+)\}").unwrap();
    re.captures_iter(yaml)
        .map(|c| {
            let name = c[1].to_string();
            let value = if name.contains("MYSQL") {
                "mysql://eventflow:secret@localhost/events".to_string()
            } else if name.contains("URL") {
                "https://example.com/hook".to_string()
            } else {
                "x".to_string()
            };
            (name, value)
        })
        .collect()
}

/// Translates `args`, checks the first line, validates with the secrets set; returns the
/// validation's stderr (empty when valid) and the translation.
fn migrate_and_validate(args: &[&str]) -> (String, String) {
    let out = support::bin().arg("migrate").args(args).output().unwrap();
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(yaml.starts_with("# Translated from "), "{yaml}");
    let dir = tempfile::tempdir().unwrap();
    let p = support::write(dir.path(), "migrated.yaml", &yaml);
    let v = support::bin()
        .arg("validate")
        .arg(&p)
        .envs(env_of(&yaml))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&v.stderr).to_string();
    let attention = yaml.lines().next().is_some_and(|l| l.contains("ATTENTION"));
    if !attention {
        assert!(
            v.status.success(),
            "{args:?} has no ATTENTION but does not validate:\n{err}\n{yaml}"
        );
    }
    (
        if v.status.success() {
            String::new()
        } else {
            err
        },
        yaml,
    )
}

#[test]
fn every_kubernetes_event_exporter_example_translates() {
    let dir = support::repo("tests/data/migrate/kubernetes-event-exporter");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        n += 1;
        let (err, yaml) = migrate_and_validate(&[
            "--from",
            "kubernetes-event-exporter",
            path.to_str().unwrap(),
        ]);
        // What fails validation is what the translation marked.
        for line in err.lines().filter(|l| !l.is_empty()) {
            let stage = line.split('`').nth(1).unwrap_or_default();
            assert!(
                yaml.contains("ATTENTION")
                    && (stage.is_empty() || yaml.contains(&format!("{stage}:"))),
                "{}: an error the translation did not announce: {line}",
                path.display()
            );
        }
    }
    assert!(n >= 5, "the examples are there: {n}");
}

#[test]
fn every_kube_eventer_example_translates() {
    let dir = support::repo("tests/data/migrate/kube-eventer");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_none_or(|x| x != "txt") {
            continue;
        }
        n += 1;
        migrate_and_validate(&["--from", "kube-eventer", path.to_str().unwrap()]);
    }
    assert!(n >= 5, "the examples are there: {n}");
}

#[test]
fn kube_eventer_flags_become_filters_and_sinks() {
    let (_, yaml) = migrate_and_validate(&[
        "--from",
        "kube-eventer",
        "--sink",
        "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=t0ken&label=c1&level=Warning&namespaces=shop,web",
        "--sink",
        "webhook:http://hooks.example/k8s?level=Normal&kinds=Node&reason=OOM.*&method=POST&header=X-Team=platform",
        "--sink",
        "kafka:?brokers=localhost:9092&eventstopic=k8s",
    ]);
    assert!(yaml.contains("format: dingtalk"), "{yaml}");
    assert!(yaml.contains("types: [Warning]"), "{yaml}");
    assert!(yaml.contains(r#"namespace: "^(?:shop|web)$""#), "{yaml}");
    assert!(
        yaml.contains("access_token") || yaml.contains("EVENTFLOW_DINGTALK_URL"),
        "{yaml}"
    );
    assert!(!yaml.contains("t0ken"), "secrets are not printed: {yaml}");
    assert!(yaml.contains("kinds: [\"Node\"]"), "{yaml}");
    assert!(yaml.contains(r#"reason: "(?:OOM.*)""#), "{yaml}");
    assert!(yaml.contains("method: POST"), "{yaml}");
    assert!(yaml.contains("eventflow has no kafka sink"), "{yaml}");
}
