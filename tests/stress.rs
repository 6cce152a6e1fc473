//! What `validate` accepts, `run` runs: a mutation stress of the loader and the engine.
//!
//! - Every numeric and duration field of every stage type (read from the checked-in JSON
//!   Schema, so a new field is covered by itself) is set to each boundary value in an
//!   otherwise valid pipeline. A file the loader refuses must be refused with a message that
//!   names the field; a file it accepts must run to the end without a panic, a stage failure
//!   or a hang.
//! - At least 2,000 mutants (seeded, so a failure reproduces) of a pipeline that uses every
//!   stage type and of the bundled pipelines: values replaced by boundary values and odd
//!   tokens, lines deleted, duplicated, swapped, re-indented, cut and salted with punctuation.
//!   Each is loaded (no panic, a bounded message); a sample of those that load runs, and
//!   every tenth one is also applied as a reload to a running pipeline.
//!
//! Sources read the bundled samples from a file (and, for `kube_events`, a fake API server);
//! sinks write to `SQLite` files and to a local HTTP receiver. The figures (files tried, runs,
//! panics, hangs, peak RSS) are printed; run with `--nocapture` to see them.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use eventflow::config::{self, Pipeline};
use eventflow::run::{Outcome, RunOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;

const INTS: [&str; 8] = [
    "0",
    "1",
    "2",
    "-1",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
];
const DURATIONS: [&str; 7] = [
    "0s",
    "0ms",
    "1ms",
    "1s",
    "36500d",
    "36501d",
    "99999999999999999d",
];

/// The longest a pipeline over the samples may take before it counts as a hang.
const RUN_LIMIT: Duration = Duration::from_secs(30);

struct World {
    dir: tempfile::TempDir,
    samples: PathBuf,
    hook: String,
    n: usize,
    /// A kubeconfig for the fake API server, for `enrich`.
    kubeconfig: Option<PathBuf>,
    /// A `nats-server` with the stream `EVENTS` (`eventflow.>`), for `nats`; `None` where it
    /// is not installed (outside CI).
    nats: Option<support::nats::Nats>,
}

impl World {
    fn new() -> World {
        let (_, hook) = Receiver::start();
        let nats = support::nats::installed().then(|| {
            let n = support::nats::Nats::start();
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(n.stream(&["eventflow.>"]));
            n
        });
        World {
            dir: tempfile::tempdir().expect("tmp"),
            samples: repo("pipelines/samples/events.json"),
            hook,
            kubeconfig: None,
            n: 0,
            nats,
        }
    }

    fn db(&mut self) -> String {
        self.n += 1;
        format!(
            "sqlite://{}",
            self.dir.path().join(format!("{}.db", self.n)).display()
        )
    }

    /// A pipeline with every stage type but `kube_events`, `enrich` and `stdout`: file -> filter
    /// -> dedup -> aggregate -> `rate_limit` -> sql + webhook (+ a durable webhook) +
    /// alertmanager + loki + otlp + elasticsearch + pagerduty + opsgenie (to the receiver) + nats
    /// (where `nats-server` is installed).
    fn everything(&mut self) -> String {
        let (db, state) = (self.db(), self.db());
        format!(
            "version: 1
state:
  url: {state}
stages:
  src:
    type: file
    path: {samples}
    cluster: stress
    poll_interval: 200ms
  keep:
    type: filter
    inputs: [src]
    types: [Warning, Normal]
    names: ['*']
    message: '.'
    exclude:
      namespaces: [nothing-here]
  once:
    type: dedup
    inputs: [keep]
    key: [uid, count]
    window: 10m
    max_keys: 1000
  groups:
    type: aggregate
    inputs: [keep]
    window: 1s
    max_keys: 100
    max_samples: 5
  limit:
    type: rate_limit
    inputs: [once]
    key: [namespace]
    limit: 1000
    per: 1s
    burst: 1000
    when_limited: summarize
    max_keys: 1000
  store:
    type: sql
    inputs: [limit, groups]
    url: {db}
    table: events
    max_conns: 2
    batch: {{max_events: 100, max_wait: 10ms}}
    connect_timeout: 5s
    backoff: {{initial: 10ms, max: 100ms}}
  hook:
    type: webhook
    inputs: [limit]
    url: {hook}
    retries: 2
    timeout: 5s
    max_in_flight: 2
    backoff: {{initial: 10ms, max: 100ms}}
    batch: {{max_events: 10, max_wait: 10ms}}
  queued:
    type: webhook
    inputs: [groups]
    url: {hook}
    durable: true
    max_queued: 1000
    retry_for: 10s
    format: template
    template: '{{\"n\": {{{{ count }}}}, \"r\": \"{{{{ event.reason }}}}\"}}'
    batch: {{max_events: 5, max_wait: 10ms}}
  alerts:
    type: alertmanager
    inputs: [once]
    urls: [{hook}]
    resolve_after: 1m
    retries: 2
    backoff: {{initial: 10ms, max: 100ms}}
  logs:
    type: loki
    inputs: [keep]
    url: {hook}
    labels: [namespace, type]
    line: logfmt
    batch: {{max_events: 50, max_wait: 10ms}}
  otel: {{type: otlp, inputs: [keep], endpoint: '{hook}', protocol: http, retries: 2, batch: {{max_events: 50, max_wait: 10ms}}}}
  search: {{type: elasticsearch, inputs: [keep], urls: ['{hook}'], retries: 2, batch: {{max_events: 50, max_wait: 10ms}}}}
  page: {{type: pagerduty, inputs: [keep], routing_key: k, url: '{hook}', retries: 2, resolve_after: 1s}}
  genie: {{type: opsgenie, inputs: [keep], api_key: k, url: '{hook}', retries: 2, resolve_after: 1s}}
{nats}",
            samples = self.samples.display(),
            hook = self.hook,
            nats = self.nats.as_ref().map_or_else(String::new, |n| format!(
                "  bus:\n    type: nats\n    inputs: [keep]\n    url: {}\n    stream: EVENTS\n    subject: eventflow.{{cluster}}.{{reason}}\n    timeout: 2s\n",
                n.url()
            )),
        )
    }

    /// A pipeline around one stage of `type_name` (with `extra` lines of config).
    fn around(&mut self, type_name: &str, extra: &str) -> String {
        let (db, state) = (self.db(), self.db());
        let src = format!(
            "  src:\n    type: file\n    path: {}\n",
            self.samples.display()
        );
        let sink =
            |input: &str| format!("  out:\n    type: sql\n    inputs: [{input}]\n    url: {db}\n");
        let stages = match type_name {
            "file" => format!(
                "  src:\n    type: file\n    path: {}\n{extra}{}",
                self.samples.display(),
                sink("src")
            ),
            "sql" => format!("{src}  x:\n    type: sql\n    inputs: [src]\n    url: {db}\n{extra}"),
            "webhook" => format!(
                "{src}  x:\n    type: webhook\n    inputs: [src]\n    url: {}\n{extra}",
                self.hook
            ),
            // The receiver takes anything: what is checked is the stage, not the server.
            "alertmanager" => format!(
                "{src}  x:\n    type: alertmanager\n    inputs: [src]\n    urls: [{}]\n{extra}",
                self.hook
            ),
            "loki" => format!(
                "{src}  x:\n    type: loki\n    inputs: [src]\n    url: {}\n{extra}",
                self.hook
            ),
            "otlp" => format!(
                "{src}  x:\n    type: otlp\n    inputs: [src]\n    endpoint: {}\n    protocol: http\n{extra}",
                self.hook
            ),
            "pagerduty" => format!(
                "{src}  x:\n    type: pagerduty\n    inputs: [src]\n    routing_key: k\n    url: {}\n{extra}",
                self.hook
            ),
            "opsgenie" => format!(
                "{src}  x:\n    type: opsgenie\n    inputs: [src]\n    api_key: k\n    url: {}\n{extra}",
                self.hook
            ),
            "elasticsearch" => format!(
                "{src}  x:\n    type: elasticsearch\n    inputs: [src]\n    urls: [{}]\n{extra}",
                self.hook
            ),
            "nats" => format!(
                "{src}  x:\n    type: nats\n    inputs: [src]\n    url: {}\n    stream: EVENTS\n{extra}",
                self.nats
                    .as_ref()
                    .map_or_else(String::new, support::nats::Nats::url)
            ),
            "enrich" => format!(
                "{src}  x:\n    type: enrich\n    inputs: [src]\n    kubeconfig: {}\n{extra}{}",
                self.kubeconfig
                    .as_ref()
                    .map_or_else(String::new, |k| k.display().to_string()),
                sink("x")
            ),
            "rate_limit" => format!(
                "{src}  x:\n    type: rate_limit\n    inputs: [src]\n    limit: 100\n{extra}{}",
                sink("x")
            ),
            t => format!(
                "{src}  x:\n    type: {t}\n    inputs: [src]\n{extra}{}",
                sink("x")
            ),
        };
        format!("state:\n  url: {state}\nstages:\n{stages}")
    }
}

#[derive(Default)]
struct Tally {
    files: usize,
    refused: usize,
    runs: usize,
    reloads: usize,
    refused_at_start: usize,
    slow: usize,
    problems: Vec<String>,
}

impl Tally {
    fn problem(&mut self, what: String) {
        eprintln!("PROBLEM: {what}");
        self.problems.push(what);
    }
}

/// Loads `text`; a panic or an unbounded message is a problem.
/// Moves this test process into a directory of its own, once: a mutant that loses its `state:`
/// block writes the default state database (`./eventflow-state.db`) in the working directory,
/// which must not be the repository.
fn work_in_a_temporary_directory() {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tmp"));
    std::env::set_current_dir(dir.path()).expect("cd");
}

fn load(t: &mut Tally, text: &str, name: &str) -> Option<Pipeline> {
    t.files += 1;
    let env = |_: &str| None;
    match std::panic::catch_unwind(|| eventflow::load_str(text, name, &env)) {
        Err(_) => {
            t.problem(format!("{name}: the loader panicked on:\n{text}"));
            None
        }
        Ok(Err(e)) => {
            t.refused += 1;
            let msg = e.to_string();
            if msg.lines().count() > config::MAX_PRINTED_PROBLEMS + 1 || msg.len() > 64 * 1024 {
                t.problem(format!(
                    "{name}: an unbounded message ({} bytes)",
                    msg.len()
                ));
            }
            None
        }
        Ok(Ok(p)) => Some(p),
    }
}

/// Runs a loaded pipeline to its end in a runtime of its own.
fn run(t: &mut Tally, p: Pipeline, name: &str) {
    t.runs += 1;
    if std::env::var_os("EVENTFLOW_STRESS_VERBOSE").is_some() {
        eprintln!("running {name}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let opts = RunOptions {
        shutdown_timeout: Duration::from_secs(5),
        watch: false,
        ..RunOptions::default()
    };
    let task = rt.spawn(eventflow::run::run(p, opts));
    let outcome = rt.block_on(async { tokio::time::timeout(RUN_LIMIT, task).await });
    match outcome {
        Err(_) => t.problem(format!(
            "{name}: still running after {RUN_LIMIT:?} (a hang)"
        )),
        Ok(Err(e)) if e.is_panic() => t.problem(format!("{name}: run panicked")),
        Ok(Err(e)) => t.problem(format!("{name}: run task: {e}")),
        Ok(Ok(Err(e))) => {
            // What validation cannot know without I/O (a file that is not there, a database
            // path that is a directory) stops the start with a message naming the stage and
            // field: a clear refusal, not a crash.
            let msg = e.to_string();
            if msg.starts_with("stage `") && msg.contains("field `") {
                t.refused_at_start += 1;
                eprintln!("{name}: refused at start: {msg}");
            } else {
                t.problem(format!("{name}: validated but did not start: {msg}"));
            }
        }
        Ok(Ok(Ok(Outcome::Failed(f)))) => t.problem(format!("{name}: stages failed: {f:?}")),
        Ok(Ok(Ok(Outcome::Interrupted(sig)))) => {
            t.problem(format!("{name}: stopped by {sig}, which nothing sent"));
        }
        Ok(Ok(Ok(Outcome::Incomplete(stuck)))) => {
            t.slow += 1;
            eprintln!("{name}: did not drain within 5s: {stuck:?}");
        }
        // Ran to its end; what its sinks could not deliver is counted, not a problem.
        Ok(Ok(Ok(Outcome::Drained | Outcome::Undelivered(_)))) => {}
    }
    if started.elapsed() > Duration::from_secs(10) {
        eprintln!("{name}: took {:?}", started.elapsed());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn rss_peak_mb() -> u64 {
    proc_status_kb(None, "VmHWM").map_or(0, |kb| kb / 1024)
}

/// The numeric and duration fields of each stage type, from the JSON Schema (`batch.x` for
/// nested objects).
fn numeric_fields() -> Vec<(String, String, bool)> {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("schemas/pipeline.schema.json")).expect("schema"),
    )
    .expect("json");
    let defs = &schema["$defs"];
    let kind = |v: &serde_json::Value| -> Option<bool> {
        let text = v.to_string();
        if text.contains("#/$defs/Duration") {
            Some(true)
        } else if text.contains("\"integer\"") {
            Some(false)
        } else {
            None
        }
    };
    let mut out = Vec::new();
    for (name, def) in defs.as_object().expect("defs") {
        let Some(t) = name.strip_prefix("stage_") else {
            continue;
        };
        for (field, spec) in def["properties"].as_object().expect("props") {
            let nested = spec["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .filter(|r| *r == "BatchConfig" || *r == "BackoffConfig");
            match nested {
                Some(r) => {
                    for (sub, s) in defs[r]["properties"].as_object().expect("nested") {
                        if let Some(d) = kind(s) {
                            out.push((t.to_string(), format!("{field}.{sub}"), d));
                        }
                    }
                }
                None => {
                    if let Some(d) = kind(spec) {
                        out.push((t.to_string(), field.clone(), d));
                    }
                }
            }
        }
    }
    out
}

/// `field: value` as YAML lines at stage depth (`batch.max_events` becomes a nested map).
fn field_lines(field: &str, value: &str) -> String {
    match field.split_once('.') {
        Some((outer, inner)) => format!("    {outer}:\n      {inner}: {value}\n"),
        None => format!("    {field}: {value}\n"),
    }
}

#[test]
fn every_boundary_value_of_every_numeric_field_is_refused_or_runs() {
    work_in_a_temporary_directory();
    let mut w = World::new();
    let mut t = Tally::default();
    let fields = numeric_fields();
    assert!(
        fields.len() >= 30,
        "the schema lists the numeric fields: {fields:?}"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fake = rt
        .block_on(fake_apiserver::FakeApiServer::start())
        .expect("fake");
    let kc = w.dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kc, None).expect("kubeconfig");
    w.kubeconfig = Some(kc.clone());
    for i in 0..20 {
        create_event(&fake, "default", &format!("b-{i}.1"), "BackOff", "Warning");
    }
    let mut covered = BTreeSet::new();
    for (type_name, field, is_duration) in &fields {
        let values: &[&str] = if *is_duration { &DURATIONS } else { &INTS };
        for v in values {
            let extra = field_lines(field, v);
            let name = format!("{type_name}.{field}={v}");
            if type_name == "kube_events" {
                let text = format!(
                    "state:\n  url: {}\nstages:\n  k:\n    type: kube_events\n    kubeconfig: {}\n{extra}  out:\n    type: sql\n    inputs: [k]\n    url: {}\n",
                    w.db(),
                    kc.display(),
                    w.db()
                );
                if let Some(p) = load(&mut t, &text, &name) {
                    run_for_a_while(&mut t, p, &name);
                } else {
                    check_named(&mut t, &text, &name, field);
                }
                covered.insert(format!("{type_name}.{field}"));
                continue;
            }
            if type_name == "stdout" || (type_name == "nats" && w.nats.is_none()) {
                continue;
            }
            let text = w.around(type_name, &extra);
            match load(&mut t, &text, &name) {
                Some(p) => run(&mut t, p, &name),
                None => check_named(&mut t, &text, &name, field),
            }
            covered.insert(format!("{type_name}.{field}"));
        }
    }
    eprintln!(
        "boundary values: {} fields, {} files, {} refused, {} runs, {} slow, {} problems, peak RSS {} MB",
        covered.len(),
        t.files,
        t.refused,
        t.runs,
        t.slow,
        t.problems.len(),
        rss_peak_mb()
    );
    assert!(t.problems.is_empty(), "{:#?}", t.problems);
    assert!(
        t.runs > 50,
        "most boundary values are valid and ran ({})",
        t.runs
    );
}

/// A refused boundary value is refused for its own field (not for something else).
fn check_named(t: &mut Tally, text: &str, name: &str, field: &str) {
    let env = |_: &str| None;
    let Err(e) = eventflow::load_str(text, name, &env) else {
        return;
    };
    let msg = e.to_string();
    let leaf = field.rsplit('.').next().unwrap_or(field);
    if !msg.contains(leaf) {
        t.problem(format!("{name}: refused without naming `{field}`: {msg}"));
    }
}

/// Runs a pipeline whose source never ends for a moment, then shuts it down.
fn run_for_a_while(t: &mut Tally, p: Pipeline, name: &str) {
    t.runs += 1;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let topo = match tokio::time::timeout(RUN_LIMIT, eventflow::engine::Topology::start(p))
            .await
        {
            Err(_) => return t.problem(format!("{name}: start hung")),
            Ok(Err(e)) => return t.problem(format!("{name}: validated but did not start: {e}")),
            Ok(Ok(topo)) => topo,
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = topo.shutdown(Duration::from_secs(5)).await;
        if !report.failed.is_empty() {
            t.problem(format!("{name}: stages failed: {:?}", report.failed));
        }
    });
}

/// A line with a pattern too large to compile: a very long glob, deeply nested alternations,
/// or a huge repetition count.
fn huge_pattern(rng: &mut StdRng) -> String {
    match rng.random_range(0..3) {
        0 => format!(
            "    names: ['{}']",
            "*".repeat(rng.random_range(10_000..100_000))
        ),
        1 => {
            let n = rng.random_range(500..3_000);
            format!("    names: ['{}a{}']", "{a,".repeat(n), "}".repeat(n))
        }
        _ => format!(
            "    message: '(a{{{0}}}){{{0}}}'",
            rng.random_range(200..2_000)
        ),
    }
}

/// One mutation of `text`.
fn mutate(rng: &mut StdRng, text: &str) -> String {
    const ODD: [&str; 14] = [
        "",
        "~",
        "null",
        "true",
        "1.5",
        "[]",
        "{}",
        "'['",
        "\"\\u0000\"",
        "-0",
        "1e400",
        "'*'",
        "'('",
        "\"${MISSING}\"",
    ];
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return text.to_string();
    }
    let i = rng.random_range(0..lines.len());
    match rng.random_range(0..10) {
        9 => {
            // A pattern too large to compile: a very long glob, deeply nested alternations,
            // a huge repetition count (each must be refused with its field, never a panic).
            let pattern = huge_pattern(rng);
            if lines[i].starts_with("    ") && !lines[i].starts_with("     ") {
                lines.insert(i + 1, pattern);
            }
        }
        0 | 1 => {
            // Replace a value with a boundary value or an odd token.
            if let Some((k, _)) = lines[i].split_once(": ") {
                let pool: Vec<&str> = INTS.iter().chain(&DURATIONS).chain(&ODD).copied().collect();
                let v = pool[rng.random_range(0..pool.len())];
                lines[i] = format!("{k}: {v}");
            }
        }
        2 => {
            lines.remove(i);
        }
        3 => {
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        4 => {
            let j = rng.random_range(0..lines.len());
            lines.swap(i, j);
        }
        5 => {
            let l = lines[i].trim_start().to_string();
            let indent = rng.random_range(0..8);
            lines[i] = format!("{}{l}", " ".repeat(indent));
        }
        6 => {
            let at = rng.random_range(0..text.len().max(1));
            let cut: String = text.chars().take(at).collect();
            return cut;
        }
        7 => {
            let punct = [
                '{', '}', '[', ']', ':', '-', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@',
                '`', ',',
            ];
            let c = punct[rng.random_range(0..punct.len())];
            let pos = rng.random_range(0..=lines[i].len());
            if lines[i].is_char_boundary(pos) {
                lines[i].insert(pos, c);
            }
        }
        _ => {
            // Add a known field with a boundary value under a stage.
            let fields = [
                "max_keys",
                "window",
                "limit",
                "per",
                "burst",
                "max_samples",
                "max_events",
                "max_wait",
                "max_in_flight",
                "max_queued",
                "retries",
                "timeout",
                "retry_for",
                "max_conns",
                "retention",
                "connect_timeout",
                "poll_interval",
                "page_size",
            ];
            let f = fields[rng.random_range(0..fields.len())];
            let pool: Vec<&str> = INTS.iter().chain(&DURATIONS).copied().collect();
            let v = pool[rng.random_range(0..pool.len())];
            if lines[i].starts_with("    ") && !lines[i].starts_with("     ") {
                lines.insert(i + 1, format!("    {f}: {v}"));
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[test]
fn three_thousand_mutated_pipelines_never_panic_hang_or_grow() {
    work_in_a_temporary_directory();
    let files: usize = std::env::var("EVENTFLOW_STRESS_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let runs_max: usize = std::env::var("EVENTFLOW_STRESS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut w = World::new();
    let mut t = Tally::default();
    let mut rng = StdRng::seed_from_u64(16);
    let mut bases: Vec<(String, bool)> = vec![(w.everything(), true)];
    for b in [
        "pipelines/demo.yaml",
        "pipelines/default.yaml",
        "pipelines/quiet.yaml",
        "pipelines/first-only.yaml",
    ] {
        bases.push((
            std::fs::read_to_string(repo(b)).expect("bundled pipeline"),
            false,
        ));
    }
    // A running pipeline that every tenth valid mutant is applied to as a reload.
    let reload_rt = tokio::runtime::Runtime::new().expect("runtime");
    let base = load(&mut t, &bases[0].0, "base").expect("the base pipeline is valid");
    let mut topo = reload_rt
        .block_on(eventflow::engine::Topology::start(base))
        .expect("the base pipeline starts");
    let started = Instant::now();
    let mut valid = 0usize;
    for n in 0..files {
        // Three in five mutate the pipeline that runs; most get one mutation (more break
        // the file too often to reach the engine).
        let (base, runnable) = if n % 5 < 3 {
            &bases[0]
        } else {
            &bases[1 + n % (bases.len() - 1)]
        };
        let mut text = base.clone();
        let times = if rng.random_bool(0.7) {
            1
        } else {
            rng.random_range(2..4)
        };
        for _ in 0..times {
            text = mutate(&mut rng, &text);
        }
        if !*runnable {
            load(&mut t, &text, &format!("mutant-{n}"));
            continue;
        }
        // Fresh databases for each mutant that may run.
        let text = text.replace(".db", &format!("-m{n}.db"));
        let name = format!("mutant-{n}");
        let Some(p) = load(&mut t, &text, &name) else {
            continue;
        };
        valid += 1;
        if valid.is_multiple_of(10) {
            t.reloads += 1;
            let applied = reload_rt
                .block_on(async { tokio::time::timeout(RUN_LIMIT, topo.apply(p.clone())).await });
            if applied.is_err() {
                t.problem(format!("{name}: a reload hung"));
            }
        }
        if t.runs < runs_max {
            let before = t.problems.len();
            run(&mut t, p, &name);
            if t.problems.len() > before {
                eprintln!("{name} was:\n{text}");
            }
        }
    }
    let report = reload_rt.block_on(topo.shutdown(Duration::from_secs(10)));
    if !report.failed.is_empty() {
        t.problem(format!(
            "the reloaded pipeline had failures: {:?}",
            report.failed
        ));
    }
    let rss = rss_peak_mb();
    eprintln!(
        "mutants: {} files, {} refused, {} valid, {} runs ({} refused at start: I/O), {} reloads, {} slow, {} problems, peak RSS {rss} MB, {:?}",
        t.files,
        t.refused,
        valid,
        t.runs,
        t.refused_at_start,
        t.reloads,
        t.slow,
        t.problems.len(),
        started.elapsed()
    );
    assert!(t.files >= files, "at least {files} files tried");
    assert!(t.problems.is_empty(), "{:#?}", t.problems);
    assert!(rss < 2048, "peak RSS {rss} MB");
}
