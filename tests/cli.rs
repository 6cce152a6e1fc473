//! The `eventflow` binary as a user runs it: the demo, validate, schema, graph, signals, and
//! the file source's formats, following and malformed records.

mod support;

use std::io::Write;
use std::path::PathBuf;

use support::*;

/// `p.yaml` in `dir`: a `file` source `f` reading `events` once, into a `stdout` sink.
fn file_to_stdout(dir: &std::path::Path, events: &std::path::Path) -> PathBuf {
    write(
        dir,
        "p.yaml",
        &format!(
            "stages:\n  f:\n    type: file\n    path: {}\n  out:\n    type: stdout\n    inputs: [f]\n",
            events.display()
        ),
    )
}

fn lines_json(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect()
}

#[test]
fn the_demo_prints_the_warnings_outside_kube_system() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("demo.db");
    let out = bin()
        .args(["run", "pipelines/demo.yaml"])
        .env("EVENTFLOW_DEMO_DB", &db)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same Warnings are in the SQLite table, one row per Event object, counts updated.
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (rows, backoff_count): (i64, i64) = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.expect("open demo db");
        let rows = sqlx::query_scalar("SELECT COUNT(*) FROM k8s_events").fetch_one(&pool).await.expect("count");
        let c = sqlx::query_scalar("SELECT count FROM k8s_events WHERE reason = 'BackOff' AND object_name = 'web-7d4b9c-x2x9q'")
            .fetch_one(&pool)
            .await
            .expect("backoff row");
        (rows, c)
    });
    assert_eq!(
        backoff_count, 8,
        "the repeated BackOff is one row with the latest count"
    );
    let samples: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(repo("pipelines/samples/events.json")).expect("samples"),
    )
    .expect("json");
    let want: Vec<&str> = samples
        .iter()
        .filter(|e| e["type"] == "Warning" && e["metadata"]["namespace"] != "kube-system")
        .map(|e| e["metadata"]["resourceVersion"].as_str().unwrap_or(""))
        .collect();
    let got = lines_json(&out.stdout);
    let got_rv: Vec<&str> = got
        .iter()
        .map(|e| e["resource_version"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        got_rv, want,
        "the Warnings outside kube-system, in file order"
    );
    let distinct: std::collections::HashSet<&str> =
        got.iter().filter_map(|e| e["uid"].as_str()).collect();
    assert_eq!(
        usize::try_from(rows).expect("count"),
        distinct.len(),
        "one row per Event object"
    );
    assert!(want.len() >= 40);
    for e in &got {
        assert_eq!(e["cluster"], "demo");
        assert_eq!(e["type"], "Warning");
        assert!(
            e["last_seen"].is_string() && e["count"].as_i64().unwrap_or(0) >= 1,
            "{e}"
        );
    }
    // Repeats of one Event carry growing counts.
    let backoff: Vec<i64> = got
        .iter()
        .filter(|e| e["reason"] == "BackOff" && e["object_name"] == "web-7d4b9c-x2x9q")
        .map(|e| e["count"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(backoff, (1..=8).collect::<Vec<_>>());
    // Both API versions came through.
    assert!(got.iter().any(|e| e["api_version"] == "events.k8s.io/v1"));
    assert!(got.iter().any(|e| e["api_version"] == "v1"));
}

/// `cargo run --release -- run pipelines/demo.yaml` prints the same a year from now, and
/// stores the same rows: nothing in the demo reads the calendar.
#[test]
fn the_demo_prints_and_stores_the_same_a_year_from_now() {
    let Some(later) = bin_at("+365d") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let run = |mut cmd: std::process::Command, db: &std::path::Path| {
        let out = cmd
            .args(["run", "pipelines/demo.yaml"])
            .env("EVENTFLOW_DEMO_DB", db)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<(String, String, String, i64, String, Option<String>)> = sqlite_rows(
            db,
            "SELECT evt_key, namespace, reason, count, message, CAST(timestamp AS TEXT) FROM k8s_events ORDER BY evt_key",
        );
        (String::from_utf8_lossy(&out.stdout).to_string(), rows)
    };
    let (today, today_rows) = run(bin(), &dir.path().join("today.db"));
    let (next_year, next_year_rows) = run(later, &dir.path().join("later.db"));
    assert!(today.lines().count() >= 40, "{today}");
    assert_eq!(today, next_year, "the demo's output depends on the date");
    assert!(!today_rows.is_empty());
    assert_eq!(
        today_rows, next_year_rows,
        "the demo's rows depend on the date"
    );
}

#[test]
fn validate_reports_every_error_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = write(
        dir.path(),
        "bad.yaml",
        "stages:\n  src:\n    type: file\n    path: x.json\n    folow: true\n  f:\n    type: filter\n    inputs: [src, ghost]\n    message: '(oops'\n  out:\n    type: stdot\n    inputs: [f]\n",
    );
    let good = repo("pipelines/demo.yaml");
    let out = bin()
        .args(["validate"])
        .arg(&good)
        .arg(&bad)
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let b = bad.display().to_string();
    for want in [
        format!("{b}:5:5: stage `src`, field `folow`: unknown field `folow`"),
        format!("{b}:9:14: stage `f`, field `message`: invalid regular expression"),
        format!("{b}:11:11: stage `out`, field `type`: unknown stage type `stdot`"),
        format!("{b}:8:19: stage `f`, field `inputs`: unknown input `ghost`"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo.yaml: ok"));
}

#[test]
fn every_bundled_pipeline_validates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("pipelines"))
        .expect("pipelines/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let out = bin()
        .arg("validate")
        .args(&files)
        .output()
        .expect("validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_example_pipeline_validates_and_passes_its_own_test_cases() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("pipelines/examples"))
        .expect("pipelines/examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let out = bin().arg("test").arg(&f).output().expect("test");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("0 failed") && !text.contains("0 passed"),
            "{}: {text}{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The checked-in file `path` is what `eventflow ARGS` prints (it is generated); its text.
fn generated_file_is_current(args: &[&str], path: &str) -> String {
    let out = bin().args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked_in = std::fs::read_to_string(repo(path)).expect(path);
    assert!(
        checked_in == String::from_utf8_lossy(&out.stdout),
        "{path} is stale: run `cargo run -- {} > {path}`",
        args.join(" ")
    );
    checked_in
}

#[test]
fn the_checked_in_schema_is_current() {
    let checked_in = generated_file_is_current(&["schema"], "schemas/pipeline.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&checked_in).expect("json");
    let filter = &schema["$defs"]["stage_filter"]["properties"];
    assert!(
        filter["reverse"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("none"))
    );
    assert_eq!(schema["$defs"]["stage_file"]["additionalProperties"], false);
}

/// docs/reference.md is generated from the schema, so every field of every stage type is in
/// it with its type and default, and it cannot drift from what the loader accepts.
#[test]
fn the_reference_in_docs_is_current_and_covers_every_field() {
    let checked_in = generated_file_is_current(&["schema", "--markdown"], "docs/reference.md");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("schemas/pipeline.schema.json")).expect("schema"),
    )
    .expect("json");
    let defs = schema["$defs"].as_object().expect("defs");
    let mut stages = 0;
    for (name, def) in defs.iter().filter(|(n, _)| n.starts_with("stage_")) {
        let ty = name.trim_start_matches("stage_");
        let section = checked_in
            .split(&format!("\n### `{ty}` ("))
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .unwrap_or_else(|| panic!("no section for stage type `{ty}`"));
        for field in def["properties"].as_object().expect("properties").keys() {
            assert!(
                section.contains(&format!("| `{field}` |")),
                "stage `{ty}`: field `{field}` is not in its table"
            );
        }
        stages += 1;
    }
    assert!(stages >= 9, "every stage type: {stages}");
    // Every field's default is stated: a value, `none` (an optional field simply not set), a
    // block's fields' defaults, or the computed default its description gives. `—` is what
    // the generator writes when it can state none of these.
    let unstated: Vec<&str> = checked_in
        .lines()
        .filter(|l| l.starts_with("| `") && l.split(" | ").nth(2) == Some("—"))
        .collect();
    assert!(
        unstated.is_empty(),
        "fields without a stated default:\n{}",
        unstated.join("\n")
    );
    for (row, default) in [
        ("| `when_limited` |", "`drop`"),
        ("| `subject` |", "`eventflow.{cluster}.{namespace}.{type}`"),
        ("| `batch.max_events` | integer |", "`1`"),
    ] {
        assert!(
            checked_in
                .lines()
                .any(|l| l.starts_with(row) && l.contains(&format!("| {default} |"))),
            "{row} {default}"
        );
    }
    // A default as the loader applies it: a file source's cluster.
    assert!(checked_in.contains("| `cluster` | string | `default` | The cluster name given to every event read from this file. |"));
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin()
            .args(["completions", shell])
            .output()
            .expect("completions");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        for sub in ["validate", "dead-letter", "migrate"] {
            assert!(script.contains(sub), "{shell}: {sub} missing");
        }
    }
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let out = bin()
        .args(["graph", "pipelines/demo.yaml"])
        .output()
        .expect("graph");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("flowchart LR"), "{text}");
    assert!(
        text.contains("s_samples --> s_warnings") && text.contains("s_warnings --> s_print"),
        "{text}"
    );
    let out = bin()
        .args(["graph", "--format", "dot", "pipelines/demo.yaml"])
        .output()
        .expect("graph");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"warnings\" -> \"print\";"));
}

#[test]
fn sigterm_delivers_every_event_already_read_then_exits_0() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().expect("tmp");
    let lines: String = (0..N).map(|i| sample_line(i, "Warning") + "\n").collect();
    let events = write(dir.path(), "events.jsonl", &lines);
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  src:\n    type: file\n    path: {}\n    follow: true\n  f:\n    type: filter\n    inputs: [src]\n    types: [Warning]\n  out:\n    type: stdout\n    inputs: [f]\n",
            events.display()
        ),
    );
    // Nobody reads stdout yet, so most events are still inside the pipeline when we signal.
    let mut r = Running::start_unread(&[], &pipeline);
    r.wait_log("reached the end of the file; following");
    let (stdout, logs) = r.stop_ok();
    let stdout = stdout.join("\n");
    let got = lines_json(stdout.as_bytes());
    assert_eq!(
        got.len(),
        N,
        "every event read before the signal reaches the sink, once"
    );
    let mut uids: Vec<&str> = got.iter().filter_map(|e| e["uid"].as_str()).collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), N);
    assert!(logs.iter().any(|l| l.contains("pipeline drained")));
    // JSON logs parse line by line.
    for l in &logs {
        serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line");
    }
}

#[test]
fn follow_reads_appended_lines_and_a_partial_line_when_it_completes() {
    let dir = tempfile::tempdir().expect("tmp");
    let events = write(dir.path(), "events.jsonl", "");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n  out:\n    type: stdout\n    inputs: [src]\n",
            events.display()
        ),
    );
    let mut r = Running::start(&[], &pipeline);
    r.wait_log("following");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&events)
        .expect("open");
    let second = sample_line(2, "Normal");
    write!(f, "{}\n{}", sample_line(1, "Normal"), &second[..40]).expect("append");
    f.flush().expect("flush");
    assert_eq!(r.next_event()["uid"], "uid-1");
    writeln!(f, "{}", &second[40..]).expect("append rest");
    f.flush().expect("flush");
    assert_eq!(r.next_event()["uid"], "uid-2");
    let _ = r.stop_ok();
}

#[test]
fn malformed_records_are_skipped_and_reported_with_their_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let text = format!(
        "{}\n{{\"metadata\": oops}}\n{}\n\n{{\"kind\":\"Event\",\"metadata\":{{}}}}\n{}\n",
        sample_line(1, "Warning"),
        sample_line(2, "Warning"),
        sample_line(3, "Normal")
    );
    let events = write(dir.path(), "events.jsonl", &text);
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  src:\n    type: file\n    path: {}\n  out:\n    type: stdout\n    inputs: [src]\n",
            events.display()
        ),
    );
    let out = bin().arg("run").arg(&pipeline).output().expect("run");
    assert!(out.status.success());
    let got: Vec<String> = lines_json(&out.stdout)
        .iter()
        .map(|e| e["uid"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, vec!["uid-1", "uid-2", "uid-3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line=2") && stderr.contains("line=5"),
        "{stderr}"
    );
    assert!(stderr.contains("metadata.uid"), "{stderr}");
}

#[test]
fn a_real_event_list_and_an_array_of_both_api_versions_replay() {
    let dir = tempfile::tempdir().expect("tmp");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  list:\n    type: file\n    path: {}\n    cluster: minikube\n  one:\n    type: file\n    path: {}\n  out:\n    type: stdout\n    inputs: [list, one]\n",
            repo("tests/data/real-events/minikube-2017-eventlist.json").display(),
            repo("tests/data/real-events/k9s-gke-pulled.json").display()
        ),
    );
    let out = bin().arg("run").arg(&pipeline).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/data/real-events/minikube-2017-eventlist.json"))
            .expect("read"),
    )
    .expect("json");
    let n = list["items"].as_array().map_or(0, std::vec::Vec::len);
    let got = lines_json(&out.stdout);
    assert_eq!(got.len(), n + 1);
    assert_eq!(got.iter().filter(|e| e["cluster"] == "minikube").count(), n);
    assert!(
        got.iter()
            .any(|e| e["reason"] == "Pulled" && e["host"] == "gke-k9s-default-pool-0fa2fb89-qnkc")
    );
}

#[test]
fn environment_variables_are_substituted_and_missing_ones_are_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let events = write(dir.path(), "e.jsonl", &(sample_line(7, "Warning") + "\n"));
    let pipeline = write(
        dir.path(),
        "p.yaml",
        "stages:\n  src:\n    type: file\n    path: ${EVENTS_FILE}\n    cluster: ${CLUSTER_NAME:-fallback}\n  out:\n    type: stdout\n    inputs: [src]\n",
    );
    let out = bin()
        .arg("run")
        .arg(&pipeline)
        .env("EVENTS_FILE", &events)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(lines_json(&out.stdout)[0]["cluster"], "fallback");
    let out = bin()
        .arg("run")
        .arg(&pipeline)
        .env_remove("EVENTS_FILE")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(":4:11: environment variable `EVENTS_FILE` is not set")
    );
}

/// `file -> stdout` over `data`; (exit code, stdout lines, stderr).
fn run_file(data: &[u8], name: &str) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(name);
    std::fs::write(&path, data).expect("write");
    let p = file_to_stdout(dir.path(), &path);
    let out = bin().arg("run").arg(&p).output().expect("run");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn sample_objects(n: usize) -> Vec<String> {
    (0..n).map(|i| sample_line(i, "Warning")).collect()
}

#[test]
fn a_byte_order_mark_is_skipped_in_both_modes() {
    let lines = sample_objects(3);
    let mut jsonl = b"\xEF\xBB\xBF".to_vec();
    jsonl.extend_from_slice(lines.join("\n").as_bytes());
    let (code, out, err) = run_file(&jsonl, "e.jsonl");
    assert_eq!((code, out.len()), (Some(0), 3), "{err}");
    let mut doc = b"\xEF\xBB\xBF[\n".to_vec();
    doc.extend_from_slice(lines.join(",\n").as_bytes());
    doc.extend_from_slice(b"\n]\n");
    let (code, out, err) = run_file(&doc, "e.json");
    assert_eq!((code, out.len()), (Some(0), 3), "{err}");
}

#[test]
fn a_document_with_bad_bytes_fails_the_run_naming_the_byte_offset() {
    let lines = sample_objects(3);
    let good = format!("[\n{}\n]\n", lines.join(",\n"));
    let bad_utf8 = {
        let mut b = good.clone().into_bytes();
        let at = good.find("BackOff").expect("a reason");
        b[at] = 0xFF;
        (b, at)
    };
    let nul = {
        let at = good.find("BackOff").expect("a reason");
        let mut b = good.clone().into_bytes();
        b[at] = 0;
        (b, at)
    };
    let truncated = (good.as_bytes()[..good.len() / 2].to_vec(), 0);
    let trailing = (format!("{good}garbage").into_bytes(), good.len());
    for (name, (bytes, at)) in [
        ("invalid UTF-8", bad_utf8),
        ("a NUL", nul),
        ("truncation", truncated),
        ("trailing garbage", trailing),
    ] {
        let (code, out, err) = run_file(&bytes, "e.json");
        assert_eq!(code, Some(1), "{name}: exit code; {err}");
        assert!(
            out.is_empty(),
            "{name}: nothing of a broken document is sent"
        );
        assert!(err.contains("byte "), "{name}: {err}");
        if at > 0 {
            assert!(err.contains(&format!("byte {at}")), "{name}: {err}");
        }
        assert!(err.contains("e.json"), "{name}: {err}");
    }
}

#[test]
fn json_lines_with_bad_bytes_deliver_every_good_line_and_count_the_rest() {
    let lines = sample_objects(4);
    let mut data = Vec::new();
    data.extend_from_slice(lines[0].as_bytes());
    data.extend_from_slice(b"\n\xFF\xFE not utf-8\n");
    data.extend_from_slice(lines[1].as_bytes());
    data.extend_from_slice(b"\n{\"metadata\": {\"uid\": \"x\0y\"}}\n");
    data.extend_from_slice(lines[2].as_bytes());
    data.extend_from_slice(b"\n{\"truncated\": \n");
    data.extend_from_slice(lines[3].as_bytes());
    data.extend_from_slice(b"\n");
    let (code, out, err) = run_file(&data, "e.jsonl");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.len(), 4, "every good line; {err}");
    assert_eq!(
        err.matches("skipping a record that is not a valid Event")
            .count(),
        3,
        "{err}"
    );
}

#[test]
fn a_path_starting_with_a_tilde_is_in_the_home_directory() {
    let home = tempfile::tempdir().expect("tmp");
    write(
        home.path(),
        "events.jsonl",
        &(sample_line(1, "Warning") + "\n"),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(
        dir.path(),
        "p.yaml",
        "stages:\n  src:\n    type: file\n    path: ~/events.jsonl\n  out:\n    type: stdout\n    inputs: [src]\n",
    );
    let out = bin()
        .arg("run")
        .arg(&p)
        .env("HOME", home.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines_json(&out.stdout);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["uid"], "uid-1");
}

#[test]
fn dead_letter_commands_on_a_pipeline_without_a_durable_webhook_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(
        dir.path(),
        "p.yaml",
        "stages:\n  src:\n    type: file\n    path: /dev/null\n  out:\n    type: stdout\n    inputs: [src]\n",
    );
    let out = bin()
        .current_dir(dir.path())
        .args(["dead-letter", "list"])
        .arg(&p)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no durable webhook stage"), "{err}");
    assert!(
        !dir.path().join("eventflow-state.db").exists(),
        "no state database is created"
    );
}

#[test]
fn relative_paths_resolve_against_the_pipeline_files_directory() {
    let conf = tempfile::tempdir().expect("tmp");
    let elsewhere = tempfile::tempdir().expect("tmp");
    write(
        conf.path(),
        "events.jsonl",
        &format!(
            "{}\n{}\n",
            sample_line(1, "Warning"),
            sample_line(2, "Normal")
        ),
    );
    let pipeline = write(
        conf.path(),
        "p.yaml",
        "stages:\n  src:\n    type: file\n    path: events.jsonl\n  out:\n    type: stdout\n    inputs: [src]\n  store:\n    type: sql\n    inputs: [src]\n    url: sqlite://out.db\n",
    );
    let out = bin()
        .current_dir(elsewhere.path())
        .arg("run")
        .arg(&pipeline)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uids: Vec<String> = lines_json(&out.stdout)
        .iter()
        .map(|e| e["uid"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        uids,
        ["uid-1", "uid-2"],
        "the file next to the pipeline was read"
    );
    let rows = sqlite_column(&conf.path().join("out.db"), "SELECT uid FROM k8s_events");
    assert_eq!(
        rows.into_iter().collect::<Vec<_>>(),
        ["uid-1", "uid-2"],
        "the database is next to the pipeline file"
    );
    assert!(
        !elsewhere.path().join("out.db").exists(),
        "nothing is created in the working directory"
    );
}

#[test]
fn validate_refuses_a_missing_file_and_warns_when_it_is_followed() {
    let dir = tempfile::tempdir().expect("tmp");
    let stage = |follow: bool| {
        format!(
            "stages:\n  src:\n    type: file\n    path: nosuch.jsonl\n    follow: {follow}\n  out:\n    type: stdout\n    inputs: [src]\n"
        )
    };
    let once = write(dir.path(), "once.yaml", &stage(false));
    let out = bin().arg("validate").arg(&once).output().expect("validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a file read once must exist: {err}");
    assert!(
        err.contains("once.yaml:4:11: stage `src`, field `path`:")
            && err.contains("nosuch.jsonl does not exist"),
        "names the file, line, column, stage and field: {err}"
    );
    let followed = write(dir.path(), "followed.yaml", &stage(true));
    let out = bin()
        .arg("validate")
        .arg(&followed)
        .output()
        .expect("validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a followed file may appear later: {err}"
    );
    assert!(
        err.contains("followed.yaml:4:11: stage `src`, field `path`: warning:")
            && err.contains("does not exist yet"),
        "but validate warns: {err}"
    );
}

#[test]
fn common_mistakes_get_a_hint_that_names_the_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    let validate = |name: &str, text: &str| {
        let p = write(dir.path(), name, text);
        let out = bin().arg("validate").arg(&p).output().expect("validate");
        assert!(!out.status.success(), "{name} is refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let src = "stages:\n  src:\n    type: file\n    path: /dev/null\n";
    // A count written negative.
    let err = validate(
        "neg.yaml",
        &format!(
            "{src}  d:\n    type: dedup\n    inputs: [src]\n    max_keys: -5\n  out:\n    type: stdout\n    inputs: [d]\n"
        ),
    );
    assert!(
        err.contains(
            "neg.yaml:8:15: stage `d`, field `max_keys`: must be a positive number, found -5"
        ),
        "{err}"
    );
    // A field indented too far: YAML's own message, the stage it is in, and a hint.
    let err = validate(
        "deep.yaml",
        &format!("{src}  out:\n    type: stdout\n     inputs: [src]\n"),
    );
    assert!(
        err.contains("deep.yaml:7:12: stage `out`: mapping values are not allowed")
            && err.contains("check the indentation"),
        "{err}"
    );
    // Fields indented as stage ids.
    let err = validate(
        "shallow.yaml",
        &format!("{src}  out:\n  type: stdout\n  inputs: [src]\n"),
    );
    assert!(
        err.contains("stage `out`: expected a mapping with a `type:`, found null (a stage with nothing under it: are its fields indented under its id?)")
            && err.contains("`type` looks like a field of the stage above"),
        "{err}"
    );
}

#[test]
fn an_error_and_its_cause_are_printed_once_each() {
    let dir = tempfile::tempdir().expect("tmp");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:{port}\nstages:\n  src:\n    type: file\n    path: /dev/null\n  out:\n    type: stdout\n    inputs: [src]\n"
        ),
    );
    let out = bin().arg("run").arg(&p).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} for the API endpoint: Address already in use"
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

/// The k8m migration page's example: the file runs as it is, and the migrated pipeline in
/// docs/ is what `migrate` prints for it and validates.
#[test]
fn the_k8m_example_in_docs_validates_and_its_migration_is_current() {
    let example = repo("docs/examples/eventhandler.yaml");
    let out = bin()
        .arg("validate")
        .arg(&example)
        .output()
        .expect("validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    generated_file_is_current(
        &["migrate", "docs/examples/eventhandler.yaml"],
        "docs/examples/eventhandler.migrated.yaml",
    );
    let out = bin()
        .arg("validate")
        .arg(repo("docs/examples/eventhandler.migrated.yaml"))
        .env("EVENTFLOW_WEBHOOK_HEADER_1", "Bearer t0k")
        .output()
        .expect("validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README tour's reload step: `pipelines/live.yaml` keeps running (it follows a file), so
/// an edit to it is reloaded while it runs, and what is appended afterwards goes through the
/// edited pipeline.
#[test]
fn the_tours_live_pipeline_keeps_running_and_reloads_an_edit() {
    let dir = tempfile::tempdir().expect("tmp");
    let events = dir.path().join("live.jsonl");
    let p = dir.path().join("live.yaml");
    std::fs::copy(repo("pipelines/live.yaml"), &p).expect("copy");
    let mut cmd = bin();
    cmd.env("EVENTFLOW_LIVE_EVENTS", &events)
        .env("EVENTFLOW_LIVE_API", "127.0.0.1:0");
    let mut r = Running::start_cmd(cmd, &[], &p);
    // The tour's append: the sample array on one line.
    let samples = std::fs::read_to_string(repo("pipelines/samples/events.json")).expect("samples");
    let one_line: String = samples.chars().filter(|c| *c != '\n').collect();
    std::fs::write(&events, format!("{one_line}\n")).expect("write");
    let first = r.next_event();
    assert_eq!(first["type"], "Warning");
    r.wait_log("reached the end of the file; following");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        matches!(r.child.try_wait(), Ok(None)),
        "the live pipeline keeps running"
    );
    let text = std::fs::read_to_string(&p).expect("read");
    replace(
        &p,
        &text.replace("types: [Warning]", "types: [Warning, Normal]"),
    );
    r.wait_log("reload applied");
    while r
        .out
        .recv_timeout(std::time::Duration::from_millis(300))
        .is_ok()
    {}
    append(&events, &[one_line]);
    let mut types = std::collections::BTreeSet::new();
    while let Ok(l) = r.out.recv_timeout(std::time::Duration::from_secs(2)) {
        let e: serde_json::Value = serde_json::from_str(&l).expect("json");
        types.insert(e["type"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        types.contains("Normal"),
        "after the edit Normals pass: {types:?}"
    );
    let _ = r.stop_ok();
}

/// `eventflow schema | head -1`: a reader that goes away ends a command quietly (exit 0, no
/// panic); for `run`, a stdout sink whose reader is gone is a sink failure like any other.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let dir = tempfile::tempdir().expect("tmp");
    let closed = |args: &[&str]| {
        let mut child = bin()
            .args(args)
            .env("EVENTFLOW_DEMO_DB", dir.path().join("demo.db"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // The read end closes before anything is written: every write gets EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for args in [
        &["schema"][..],
        &["schema", "--markdown"],
        &["completions", "bash"],
        &["validate", "pipelines/demo.yaml"],
        &["graph", "pipelines/demo.yaml"],
        &["test", "pipelines/demo.yaml"],
        &["migrate", "tests/data/k8m/eventhandler.yaml"],
    ] {
        let (code, stderr) = closed(args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    let (code, stderr) = closed(&["run", "pipelines/demo.yaml"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        code,
        Some(1),
        "a sink that cannot write fails the run: {stderr}"
    );
    assert!(
        stderr.contains("cannot write to standard output"),
        "{stderr}"
    );
}

/// A list on one line (`jq -c`, `json.dumps`) with a bad byte near its end: the items before
/// it are delivered, the rest is skipped and counted; an EventList on one line with a bad byte
/// is skipped whole, counted as the events it held, and a run whose only input was skipped
/// exits 1 saying so.
#[test]
fn a_list_on_one_line_with_a_bad_byte_loses_only_what_follows_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let events: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::from_str(&sample_line(i, "Warning")).expect("json"))
        .collect();
    let array = serde_json::to_string(&events).expect("json");
    let mut bytes = array.trim_end_matches(']').as_bytes().to_vec();
    bytes.extend_from_slice(b",\xff\xfe]\n");
    let file = dir.path().join("list.jsonl");
    std::fs::write(&file, &bytes).expect("write");
    let p = file_to_stdout(dir.path(), &file);
    let out = bin().arg("run").arg(&p).output().expect("run");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{logs}");
    assert_eq!(lines_json(&out.stdout).len(), 10, "{logs}");
    assert!(
        logs.contains("skipping a record"),
        "the broken end is reported: {logs}"
    );

    // An EventList on one line with a bad byte in its middle: 10 events skipped, said as 10.
    let list =
        serde_json::json!({"apiVersion": "v1", "kind": "EventList", "items": events}).to_string();
    let cut = list.len() / 2;
    let mut bytes = list.as_bytes()[..cut].to_vec();
    bytes.extend_from_slice(b"\xff");
    bytes.extend_from_slice(&list.as_bytes()[cut..]);
    bytes.push(b'\n');
    std::fs::write(&file, &bytes).expect("write");
    let out = bin().arg("run").arg(&p).output().expect("run");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert!(
        logs.contains("events=10") && logs.contains("skipping a record that held several events"),
        "{logs}"
    );
    assert!(
        logs.contains("none of its events could be read (10 skipped"),
        "{logs}"
    );
}

/// A record far larger than any Event (a 64 MB message) is skipped as it is read — counted,
/// logged with its line — and the process never holds it: its peak resident memory stays far
/// below the record's size (it was 427 MB). The records around it flow.
#[test]
fn a_record_over_max_record_bytes_is_skipped_without_being_held() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("big.jsonl");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        writeln!(f, "{}", sample_line(1, "Warning")).expect("write");
        let mut huge: serde_json::Value =
            serde_json::from_str(&sample_line(2, "Warning")).expect("json");
        huge["message"] = serde_json::Value::String("x".repeat(64 * 1024 * 1024));
        serde_json::to_writer(&mut f, &huge).expect("write");
        writeln!(f).expect("write");
        writeln!(f, "{}", sample_line(3, "Warning")).expect("write");
    }
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:0\nstages:\n  f:\n    type: file\n    path: {}\n    follow: true\n  out:\n    type: stdout\n    inputs: [f]\n",
            file.display()
        ),
    );
    let mut r = Running::start(&[], &p);
    let port = r.api_port();
    let first = r.next_event();
    let third = r.next_event();
    assert_eq!(
        (first["uid"].as_str(), third["uid"].as_str()),
        (Some("uid-1"), Some("uid-3"))
    );
    let line = r.wait_log("more than max_record_bytes");
    assert!(line.contains("\"line\":2"), "{line}");
    wait_until(
        "the skip is counted",
        std::time::Duration::from_secs(10),
        || {
            let n = metric(
                port,
                "eventflow_events_discarded_total{stage=\"f\",type=\"file\",reason=\"malformed\"}",
            );
            (n - 1.0).abs() < 0.5
        },
    );
    let peak_kb = proc_status_kb(Some(r.child.id()), "VmHWM").expect("VmHWM");
    eprintln!("peak RSS with a 64 MB record: {} MB", peak_kb / 1024);
    // Holding the record would take at least its 64 MB; the debug build idles at ~40 MB.
    assert!(
        peak_kb < 60 * 1024,
        "peak RSS {} MB for a 64 MB record",
        peak_kb / 1024
    );
    let _ = r.stop_ok();
}

/// The total line of `validate --memory`, in MiB.
fn memory_total(stdout: &[u8]) -> f64 {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total"))
        .and_then(|l| l.trim().strip_suffix(" MiB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a total line")
}

/// The memory limit of a manifest's container (`memory: 256Mi` under `limits:`), in MiB.
fn manifest_limit_mib(path: &str) -> f64 {
    let text = std::fs::read_to_string(repo(path)).expect("manifest");
    let after = text.split("limits:").nth(1).expect("a limits: block");
    after
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .and_then(|v| v.trim().strip_suffix("Mi"))
        .and_then(|v| v.parse().ok())
        .expect("memory: NNNMi under limits:")
}

#[test]
fn the_bundled_pipelines_memory_bounds_are_under_three_quarters_of_the_bundled_limits() {
    let deployment = manifest_limit_mib("deploy/kubernetes/deployment.yaml");
    let chart = manifest_limit_mib("deploy/helm/eventflow/values.yaml");
    for (pipeline, limit) in [
        ("deploy/image/pipeline.yaml", deployment),
        ("deploy/kubernetes/pipeline.yaml", deployment),
        ("deploy/helm/eventflow/files/default-pipeline.yaml", chart),
    ] {
        let out = bin()
            .args(["validate", "--memory"])
            .arg(repo(pipeline))
            .env("WEBHOOK_URL", "http://receiver.example/hook")
            .output()
            .expect("validate");
        assert!(out.status.success(), "{pipeline}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for row in [
            "Event versions remembered",
            "edges between stages",
            "page cache",
        ] {
            assert!(text.contains(row), "{pipeline}: no `{row}` row:\n{text}");
        }
        let total = memory_total(&out.stdout);
        assert!(
            total < limit * 0.75,
            "{pipeline}: bound {total} MiB is not well under the limit {limit} Mi:\n{text}"
        );
    }
}

#[test]
fn a_larger_setting_raises_the_memory_bound_and_a_limit_refuses_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let stages = |keys: u64| {
        format!(
            "stages:\n  src:\n    type: file\n    path: /dev/null\n  once:\n    type: dedup\n    inputs: [src]\n    window: 1h\n    max_keys: {keys}\n  out:\n    type: stdout\n    inputs: [once]\n"
        )
    };
    let small = write(dir.path(), "small.yaml", &stages(100_000));
    let big = write(dir.path(), "big.yaml", &stages(1_000_000));
    let run = |p: &std::path::Path, limit: &str| {
        bin()
            .args(["validate", "--memory", "--memory-limit", limit])
            .arg(p)
            .output()
            .expect("validate")
    };
    let a = run(&small, "256Mi");
    assert!(a.status.success(), "{a:?}");
    let b = run(&big, "256Mi");
    assert_eq!(b.status.code(), Some(1), "{b:?}");
    let grown = memory_total(&b.stdout) - memory_total(&a.stdout);
    // 900,000 more keys at 448 bytes each, and the allocator's share of them (20 %).
    assert!((grown - 461.4).abs() < 1.0, "grew by {grown} MiB");
    let text = String::from_utf8_lossy(&b.stdout);
    assert!(text.contains("max_keys 1000000"), "{text}");
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(
        err.contains("exceeds the limit (256.0 MiB)"),
        "the refusal names the limit: {err}"
    );
    let bad = run(&small, "lots");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a size that is not one is a usage error"
    );
}
