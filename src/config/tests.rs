use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "NS" => Some("shop".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Pipeline, ConfigError> {
    load_str(text, "p.yaml", &env, crate::stages::REGISTRY)
}

fn problems(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => vec![],
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

const GOOD: &str = "\
version: 1
stages:
  src:
    type: file
    path: pipelines/samples/events.json
  warn:
    type: filter
    inputs: [src]
    types: [Warning]
    namespaces: ['${NS}']
  out:
    type: stdout
    inputs: warn
";

#[test]
fn a_scalar_is_a_one_item_list() {
    let p = load(GOOD).unwrap();
    assert_eq!(p.stages["out"].inputs, vec!["warn"]);
    assert!(load(&GOOD.replace("types: [Warning]", "types: Warning")).is_ok());
}

#[test]
fn a_good_file_loads() {
    let p = load(GOOD).unwrap();
    assert_eq!(p.stages.len(), 3);
    assert_eq!(p.stages["out"].inputs, vec!["warn"]);
    assert_eq!(
        p.stages["warn"].node.get("namespaces").unwrap().to_json(),
        serde_json::json!(["shop"])
    );
}

#[test]
fn every_error_is_reported_with_its_position() {
    let text = "\
version: 1
stages:
  src:
    type: file
    path: /dev/null
    folow: true
  warn:
    type: filter
    inputs: [src, nope]
    message: '(unclosed'
  agg:
    type: no_such_type
    inputs: [warn]
  out:
    type: stdout
    inputs: [warn]
  out2:
    type: stdout
    inputs: [out]
  f2:
    type: filter
    inputs: [src]
    names: ['[z-a]']
    types: {a: 1}
";
    let got = problems(text);
    let expect = [
        "p.yaml:6:5: stage `src`, field `folow`: unknown field `folow`",
        "p.yaml:10:14: stage `warn`, field `message`: invalid regular expression",
        "p.yaml:12:11: stage `agg`, field `type`: unknown stage type `no_such_type`",
        "p.yaml:23:13: stage `f2`, field `names[0]`: invalid glob",
        "p.yaml:24:12: stage `f2`, field `types`: ",
        "p.yaml:19:14: stage `out2`, field `inputs`: `out` is a sink",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in:\n{}",
            got.join("\n")
        );
    }
}

#[test]
fn graph_errors() {
    let text = "\
stages:
  a:
    type: file
    path: /dev/null
    inputs: [b]
  b:
    type: filter
    inputs: [c]
  c:
    type: filter
    inputs: [b]
  d:
    type: filter
  e:
    type: stdout
    inputs: [c, c]
  f:
    type: filter
    inputs: [missing]
";
    let got = problems(text).join("\n");
    for needle in [
        "p.yaml:5:13: stage `a`, field `inputs`: `file` is a source",
        "p.yaml:12:3: stage `d`, field `inputs`: missing `inputs:`",
        "p.yaml:16:17: stage `e`, field `inputs`: `c` is listed twice",
        "p.yaml:19:14: stage `f`, field `inputs`: unknown input `missing`",
        "the stages form a cycle: b -> c -> b",
        "stage `f`: no stage reads this stage's output",
    ] {
        assert!(got.contains(needle), "missing {needle:?} in:\n{got}");
    }
}

#[test]
fn env_errors_name_the_variable_and_position() {
    let got = problems("stages:\n  a:\n    type: file\n    path: ${MISSING_PATH}\n");
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:4:11: environment variable `MISSING_PATH` is not set")),
        "{got:?}"
    );
}

#[test]
fn header_errors() {
    let got = problems("version: 2\napi:\n  listen: nowhere\nstages: {}\n");
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:3:11: field `api.listen`")),
        "{got:?}"
    );
    let got = problems("version: 2\nstages: {}\n");
    assert!(
        got.iter().any(|g| g.contains("unsupported version 2")),
        "{got:?}"
    );
    let got = problems("verison: 1\nstages: {}\n");
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:1:1: field `verison`: unknown field")),
        "{got:?}"
    );
}

#[test]
fn bad_durations_and_ids() {
    let got = problems(
        "stages:\n  Bad_Id:\n    type: file\n    path: /dev/null\n  s:\n    type: file\n    path: /dev/null\n    poll_interval: 5\n",
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("p.yaml:2:3: stage `Bad_Id`: invalid stage id")),
        "{got:?}"
    );
    assert!(got.iter().any(|g| g.starts_with("p.yaml:8:20: stage `s`, field `poll_interval`: invalid duration `5`: a unit is required")), "{got:?}");
}

#[test]
fn syntax_errors_have_positions() {
    let got = problems("stages:\n  a: [1, 2\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("p.yaml:"), "{got:?}");
    assert!(!got[0].starts_with("p.yaml: "), "no position in {got:?}");
}

#[test]
fn diff_by_stage() {
    let old = load(GOOD).unwrap();
    let new = load(&GOOD.replace("types: [Warning]", "types: [Normal]").replace("  out:\n    type: stdout\n    inputs: warn\n", "  out:\n    type: stdout\n    inputs: [warn]\n  out2:\n    type: stdout\n    inputs: [src]\n")).unwrap();
    let d = diff::Diff::between(&old, &new);
    assert_eq!(d.changed, vec!["warn", "out"]);
    assert_eq!(d.added, vec!["out2"]);
    assert_eq!(d.kept, vec!["src"]);
    assert!(d.removed.is_empty());
    assert!(diff::Diff::between(&old, &load(GOOD).unwrap()).is_empty());
}

/// A pipeline `src -> <stage> -> out` (or `src -> <stage>` for a sink), with `<stage>` given.
fn with_stage(stage: &str) -> String {
    let sink = stage.contains("type: sql") || stage.contains("type: webhook");
    let mut text = format!(
        "stages:\n  src:\n    type: file\n    path: pipelines/samples/events.json\n  x:\n    inputs: [src]\n{stage}"
    );
    if !sink {
        text.push_str("  out:\n    type: stdout\n    inputs: [x]\n");
    }
    text
}

#[test]
// One table of cases, one per line: long by nature.
#[allow(clippy::too_many_lines)]
fn what_would_fail_at_run_time_fails_validation_with_its_field_and_position() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    type: dedup\n    max_keys: 0\n",
            "field `max_keys`",
            "p.yaml:8:15",
        ),
        ("    type: dedup\n    key: []\n", "field `key`", "p.yaml:8:"),
        (
            "    type: dedup\n    window: 0s\n",
            "field `window`",
            "p.yaml:8:",
        ),
        (
            "    type: aggregate\n    max_keys: 0\n",
            "field `max_keys`",
            "p.yaml:8:",
        ),
        (
            "    type: aggregate\n    window: 0ms\n",
            "field `window`",
            "p.yaml:8:",
        ),
        (
            "    type: rate_limit\n    limit: 0\n",
            "field `limit`",
            "p.yaml:8:",
        ),
        (
            "    type: rate_limit\n    limit: 5\n    burst: 0\n",
            "field `burst`",
            "p.yaml:9:",
        ),
        (
            "    type: rate_limit\n    limit: 5\n    per: 0s\n",
            "field `per`",
            "p.yaml:9:",
        ),
        (
            "    type: rate_limit\n    limit: 5\n    max_keys: 0\n",
            "field `max_keys`",
            "p.yaml:9:",
        ),
        (
            "    type: rate_limit\n    limit: 4000000000\n    per: 1ms\n",
            "field `per`",
            "p.yaml:9:",
        ),
        (
            "    type: sql\n    url: sqlite://x.db\n    batch: {max_events: 0}\n",
            "field `batch.max_events`",
            "p.yaml:9:",
        ),
        (
            "    type: sql\n    url: sqlite://x.db\n    table: x-y\n",
            "field `table`",
            "p.yaml:9:",
        ),
        (
            "    type: sql\n    url: sqlite://x.db\n    key: []\n",
            "field `key`",
            "p.yaml:9:",
        ),
        (
            "    type: sql\n    url: redis://x\n",
            "field `url`",
            "p.yaml:8:",
        ),
        (
            "    type: sql\n    url: postgres://u@h:notaport/db\n",
            "field `url`",
            "p.yaml:8:",
        ),
        (
            "    type: sql\n    url: sqlite://x.db\n    max_conns: 0\n",
            "field `max_conns`",
            "p.yaml:9:",
        ),
        (
            "    type: sql\n    url: sqlite://x.db\n    backoff: {initial: 0s}\n",
            "field `backoff.initial`",
            "p.yaml:9:",
        ),
        (
            "    type: sql\n    url: sqlite://x.db\n    backoff: {initial: 5s, max: 1s}\n",
            "field `backoff.max`",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: ftp://h/x\n",
            "field `url`",
            "p.yaml:8:",
        ),
        (
            "    type: webhook\n    url: not a url\n",
            "field `url`",
            "p.yaml:8:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    method: 'GE T'\n",
            "field `method`",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    headers: {'Bad Name': v}\n",
            "field `headers.Bad Name`",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    max_in_flight: 0\n",
            "field `max_in_flight`",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    batch: {max_events: 0}\n",
            "field `batch.max_events`",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    max_queued: 0\n",
            "field `max_queued`",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    timeout: 0s\n",
            "field `timeout`",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    format: template\n",
            "field `template`",
            "p.yaml:5:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    ca_file: Cargo.toml\n",
            "holds no PEM certificate",
            "p.yaml:9:",
        ),
        (
            "    type: webhook\n    url: http://h/x\n    ca_file: /nonexistent/ca.pem\n",
            "field `ca_file`",
            "p.yaml:9:",
        ),
        (
            "    type: filter\n    names: ['[']\n",
            "field `names",
            "p.yaml:8:",
        ),
        (
            "    type: filter\n    message: '('\n",
            "field `message`",
            "p.yaml:8:",
        ),
    ];
    for (stage, field, pos) in cases {
        let p = problems(&with_stage(stage));
        assert!(
            p.iter().any(|l| l.contains(field) && l.starts_with(pos)),
            "{stage:?}: expected {field} at {pos}, got {p:#?}"
        );
    }
}

#[test]
fn a_kube_source_is_validated_too() {
    let text = "stages:\n  k:\n    type: kube_events\n    page_size: 0\n    max_tracked: 0\n    watch_timeout: 500ms\n    namespaces: [a, a, '']\n  out:\n    type: stdout\n    inputs: [k]\n";
    let p = problems(text);
    for field in [
        "field `page_size`",
        "field `max_tracked`",
        "field `watch_timeout`",
        "field `namespaces[1]`",
        "field `namespaces[2]`",
    ] {
        assert!(p.iter().any(|l| l.contains(field)), "{field}: {p:#?}");
    }
}

#[test]
fn durations_beyond_100_years_are_refused_where_they_are_written() {
    let p = problems(&with_stage(
        "    type: sql\n    url: sqlite://x.db\n    batch: {max_events: 10, max_wait: 99999999999999999d}\n",
    ));
    assert!(
        p.iter()
            .any(|l| l.starts_with("p.yaml:9:") && l.contains("too long")),
        "{p:#?}"
    );
}

#[test]
fn a_pipeline_without_stages_is_an_error() {
    for text in ["stages:\n", "stages: {}\n", "version: 1\n"] {
        let p = problems(text);
        assert!(
            p.iter()
                .any(|l| l.contains("at least one source and one sink")),
            "{text:?}: {p:#?}"
        );
    }
}

#[test]
fn a_bad_state_url_is_an_error() {
    let text = GOOD.replace("version: 1\n", "version: 1\nstate:\n  url: redis://x\n");
    let p = problems(&text);
    assert!(p.iter().any(|l| l.contains("field `state.url`")), "{p:#?}");
}

#[test]
fn ten_thousand_stages_with_one_mistake_give_one_short_message_quickly() {
    let n = 10_000;
    let mut text = String::from("stages:\n  src:\n    type: file\n    path: /dev/null\n");
    // A chain, written downstream first (the worst order for naive graph walks).
    for i in (0..n).rev() {
        let input = if i == 0 {
            "src".to_string()
        } else {
            format!("t{}", i - 1)
        };
        text.push_str(&format!(
            "  t{i}:\n    type: filter\n    inputs: [{input}]\n"
        ));
    }
    text.push_str(&format!(
        "  out:\n    type: stdout\n    inputs: [t{}, nope]\n",
        n - 1
    ));
    let started = std::time::Instant::now();
    let err = load(&text).unwrap_err().to_string();
    let took = started.elapsed();
    assert_eq!(err.lines().count(), 1, "{}", &err[..err.len().min(2000)]);
    assert!(err.contains("unknown input `nope`"), "{err}");
    assert!(err.len() < 600, "{} bytes: {err}", err.len());
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");

    // The same mistake many times: one line each up to the cap, then a count.
    let mut text = String::from("stages:\n  src:\n    type: file\n    path: /dev/null\n");
    for i in 0..n {
        text.push_str(&format!("  t{i}:\n    type: filter\n    inputs: [nope]\n"));
    }
    let started = std::time::Instant::now();
    let err = load(&text).unwrap_err().to_string();
    let took = started.elapsed();
    // Linear in the problems (a suggestion per problem over every stage took 16 s).
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        err.lines().count(),
        MAX_PRINTED_PROBLEMS + 1,
        "{}",
        &err[..2000]
    );
    assert!(
        err.ends_with("more problems"),
        "{}",
        &err[err.len() - 200..]
    );

    // A long cycle is named by its first stages only.
    let mut text = String::from(
        "stages:\n  src:\n    type: file\n    path: /dev/null\n  out:\n    type: stdout\n    inputs: [src]\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "  c{i}:\n    type: filter\n    inputs: [c{}]\n",
            (i + 1) % n
        ));
    }
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("the stages form a cycle") && err.contains("more)"),
        "{}",
        &err[..err.len().min(3000)]
    );
    assert!(err.len() < 20_000, "{} bytes", err.len());
}

#[test]
fn identical_problems_are_reported_once_with_a_count() {
    let e = ConfigError {
        file: "p.yaml".into(),
        problems: vec![
            Problem::new(None, Some("a"), Some("f"), "same"),
            Problem::new(None, Some("a"), Some("f"), "same"),
            Problem::new(None, Some("b"), None, "other"),
        ],
    };
    assert_eq!(
        e.to_string(),
        "p.yaml: stage `a`, field `f`: same (2 times)\np.yaml: stage `b`: other"
    );
}

#[test]
fn leader_election_needs_sane_durations_shared_state_and_kube_sources() {
    let kube = "stages:\n  k:\n    type: kube_events\n  out:\n    type: stdout\n    inputs: [k]\n";
    let ok = format!("state:\n  url: postgres://u:p@db/x\nleader_election:\n  lease: l\n{kube}");
    let p = load(&ok).expect("valid");
    let le = p.leader_election.expect("section");
    assert_eq!(
        (
            le.lease_duration.0.as_secs(),
            le.renew_deadline.0.as_secs(),
            le.retry_period.0.as_secs()
        ),
        (15, 10, 2),
        "client-go's defaults"
    );
    let bad = format!(
        "state:\n  url: mysql://u:p@db/x\nleader_election:\n  lease_duration: 5s\n  renew_deadline: 5s\n  retry_period: 3s\n{kube}"
    );
    let text = problems(&bad).join("\n");
    assert!(
        text.contains("p.yaml:5:")
            && text.contains("leader_election.renew_deadline")
            && text.contains("shorter than lease_duration"),
        "{text}"
    );
    assert!(text.contains("leader_election.retry_period"), "{text}");
    let bad_name = format!(
        "state:\n  url: postgres://u:p@db/x\nleader_election:\n  lease: My_Lease\n  namespace: Prod\n{kube}"
    );
    let text = problems(&bad_name).join("\n");
    assert!(
        text.contains("leader_election.lease")
            && text.contains("`My_Lease` is not a Kubernetes object name"),
        "{text}"
    );
    assert!(text.contains("leader_election.namespace"), "{text}");
    let no_state = format!("leader_election: {{}}\n{kube}");
    let text = problems(&no_state).join("\n");
    assert!(
        text.contains("field `state.url`") && text.contains("PostgreSQL or MySQL"),
        "{text}"
    );
    let file_source = "state:\n  url: postgres://u:p@db/x\nleader_election: {}\nstages:\n  f:\n    type: file\n    path: /dev/null\n  out:\n    type: stdout\n    inputs: [f]\n";
    let text = problems(file_source).join("\n");
    assert!(
        text.contains("stage `f`") && text.contains("only `kube_events` sources"),
        "{text}"
    );
}

#[test]
fn a_near_miss_is_answered_with_what_was_meant() {
    let text = problems(
        "stages:\n  s:\n    type: kube_event\n  f:\n    type: filter\n    inputs: [s]\n    namespace: [a]\n  o:\n    type: stdout\n    input: [f]\n",
    )
    .join("\n");
    assert!(
        text.contains("unknown stage type `kube_event`: did you mean `kube_events`?"),
        "{text}"
    );
    assert!(
        text.contains("unknown field `namespace`") && text.contains("did you mean `namespaces`?"),
        "{text}"
    );
    assert!(
        text.contains("unknown field `input`") && text.contains("did you mean `inputs`?"),
        "{text}"
    );
    let text = problems(&GOOD.replace("inputs: [src]", "inputs: [srcs]")).join("\n");
    assert!(
        text.contains("unknown input `srcs`: did you mean `src`?"),
        "{text}"
    );
}

#[test]
fn the_api_address_is_read_as_users_write_it() {
    let api = |listen: &str| {
        load(&format!(
            "api:\n  listen: '{listen}'\n{}",
            &GOOD["version: 1\n".len()..]
        ))
        .map(|p| p.api.map(|a| a.listen.to_string()))
    };
    assert_eq!(
        api("127.0.0.1:9464").unwrap().as_deref(),
        Some("127.0.0.1:9464")
    );
    assert_eq!(
        api("localhost:9464").unwrap().as_deref(),
        Some("127.0.0.1:9464")
    );
    assert_eq!(api(":9464").unwrap().as_deref(), Some("0.0.0.0:9464"));
    assert_eq!(api("[::1]:9464").unwrap().as_deref(), Some("[::1]:9464"));
    let e = api("metrics:9464").unwrap_err().to_string();
    assert!(e.contains("api.listen") || e.contains("listen"), "{e}");
    assert!(e.contains("expected `IP:port`"), "{e}");
    assert!(e.starts_with("p.yaml:2:"), "{e}");
}

#[test]
fn a_misspelt_field_in_a_test_cases_event_is_an_error_with_its_place() {
    let text = format!(
        "{GOOD}tests:\n  - name: typo\n    inputs:\n      - event: {{type: Warning, namespce: shop}}\n      - events:\n          - {{type: Warning, reasn: BackOff}}\n    expect:\n      out: {{count: 1}}\n"
    );
    let e = load(&text).unwrap_err().to_string();
    assert!(
        e.contains("field `tests[0].inputs[0].event.namespce`: unknown event field `namespce`; did you mean `namespace`?"),
        "{e}"
    );
    assert!(
        e.contains("tests[0].inputs[1].events[0].reasn") && e.contains("did you mean `reason`?"),
        "{e}"
    );
}

/// Very long globs, deeply nested alternations and huge repetitions are refused with the
/// stage and field named, never a panic (`'*'` x 95,000 panicked inside the glob compiler).
#[test]
fn patterns_too_large_to_compile_are_refused_with_their_field() {
    let with = |field: &str, value: &str| {
        let text = GOOD.replace(
            "    types: [Warning]\n",
            &format!("    types: [Warning]\n    {field}: {value}\n"),
        );
        std::panic::catch_unwind(|| load(&text).map(|_| ()).map_err(|e| e.to_string()))
            .unwrap_or_else(|_| Err("panicked".into()))
    };
    let long_glob = format!("['{}']", "*".repeat(95_000));
    let nested = format!("['{}a{}']", "{a,".repeat(2_000), "}".repeat(2_000));
    for (field, value) in [("names", &long_glob), ("names", &nested)] {
        let e = with(field, value).unwrap_err();
        assert!(e != "panicked", "{field}: the loader panicked");
        assert!(e.contains(&format!("stage `warn`, field `{field}")), "{e}");
    }
    let huge_repeat = "'(a{1000}){1000}'".to_string();
    let e = with("message", &huge_repeat).unwrap_err();
    assert!(e.contains("stage `warn`, field `message`"), "{e}");
    assert!(e.len() < 2_000, "a short message: {e}");
}
