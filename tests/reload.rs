//! Hot reload through the real binary: edits on disk, SIGHUP and `POST /-/reload`.
// Metric values that count are whole numbers: compared exactly.
#![allow(clippy::float_cmp)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

fn pipeline(events: &Path, middle: &str, sinks: &str) -> String {
    format!(
        "stages:\n  src:\n    type: file\n    path: {}\n    follow: true\n    poll_interval: 20ms\n{middle}{sinks}",
        events.display()
    )
}

const FILTER_WARN: &str = "  f:\n    type: filter\n    inputs: [src]\n    types: [Warning]\n";
const FILTER_NORMAL: &str = "  f:\n    type: filter\n    inputs: [src]\n    types: [Normal]\n";
const OUT: &str = "  out:\n    type: stdout\n    inputs: [f]\n";

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let events = write(dir.path(), "events.jsonl", "");
    (dir, events)
}

#[test]
fn changed_rules_apply_to_the_next_event() {
    let (dir, events) = setup();
    let p = write(dir.path(), "p.yaml", &pipeline(&events, FILTER_WARN, OUT));
    let mut r = Running::start(&[], &p);
    append(
        &events,
        &[sample_line(1, "Normal"), sample_line(2, "Warning")],
    );
    assert_eq!(r.next_event()["uid"], "uid-2");
    replace(&p, &pipeline(&events, FILTER_NORMAL, OUT));
    let log = r.wait_log("reload applied");
    assert!(log.contains("\"rebuilt\":\"[\\\"f\\\"]\""), "{log}");
    assert!(
        log.contains("\"kept\":\"[\\\"src\\\", \\\"out\\\"]\""),
        "{log}"
    );
    append(
        &events,
        &[sample_line(3, "Warning"), sample_line(4, "Normal")],
    );
    assert_eq!(r.next_event()["uid"], "uid-4");
    let (status, rest) = r.stop();
    assert!(status.success());
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn a_sink_added_then_removed() {
    let (dir, events) = setup();
    let p = write(dir.path(), "p.yaml", &pipeline(&events, FILTER_WARN, OUT));
    let mut r = Running::start(&[], &p);
    let two = format!("{OUT}  raw_out:\n    type: stdout\n    inputs: [f]\n    raw: true\n");
    replace(&p, &pipeline(&events, FILTER_WARN, &two));
    let log = r.wait_log("reload applied");
    assert!(log.contains("\"added\":\"[\\\"raw_out\\\"]\""), "{log}");
    append(&events, &[sample_line(1, "Warning")]);
    let first = r.next_event();
    let second = r.next_event();
    assert_eq!(
        (first["uid"].as_str(), second["uid"].as_str()),
        (Some("uid-1"), Some("uid-1"))
    );
    assert_eq!(
        [&first, &second]
            .iter()
            .filter(|e| e.get("raw").is_some())
            .count(),
        1,
        "one copy from each sink"
    );
    replace(&p, &pipeline(&events, FILTER_WARN, OUT));
    let log = r.wait_log("reload applied");
    assert!(log.contains("\"removed\":\"[\\\"raw_out\\\"]\""), "{log}");
    append(&events, &[sample_line(2, "Warning")]);
    let e = r.next_event();
    assert!(e["uid"] == "uid-2" && e.get("raw").is_none());
    r.no_event_within(Duration::from_millis(300));
    assert!(r.stop().0.success());
}

#[test]
fn an_unchanged_dedup_keeps_its_cache_while_its_neighbour_changes() {
    let (dir, events) = setup();
    let middle = |types: &str| {
        format!(
            "  d:\n    type: dedup\n    inputs: [src]\n    key: [uid]\n    window: 1h\n  f:\n    type: filter\n    inputs: [d]\n    types: {types}\n"
        )
    };
    let p = write(
        dir.path(),
        "p.yaml",
        &pipeline(&events, &middle("[Warning]"), OUT),
    );
    let mut r = Running::start(&[], &p);
    append(&events, &[sample_line(1, "Warning")]);
    assert_eq!(r.next_event()["uid"], "uid-1");
    replace(&p, &pipeline(&events, &middle("[Warning, Normal]"), OUT));
    let log = r.wait_log("reload applied");
    assert!(
        log.contains("\\\"d\\\"") && log.contains("\"rebuilt\":\"[\\\"f\\\"]\""),
        "{log}"
    );
    // uid-1 again: still in the dedup cache, so dropped; uid-2 (Normal) passes the new filter.
    append(
        &events,
        &[sample_line(1, "Warning"), sample_line(2, "Normal")],
    );
    assert_eq!(r.next_event()["uid"], "uid-2");
    r.no_event_within(Duration::from_millis(300));
    assert!(r.stop().0.success());
}

/// Waits until a metric has the expected value (the log line of a reload can be read before
/// the scrape sees its counter).
fn expect_metric(port: u16, name_and_labels: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(port, name_and_labels);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name_and_labels} = {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const API: &str = "api:\n  listen: 127.0.0.1:0\n";

#[test]
fn an_invalid_edit_is_rejected_and_a_failed_build_is_rolled_back() {
    let (dir, events) = setup();
    let good = format!("{API}{}", pipeline(&events, FILTER_WARN, OUT));
    let p = write(dir.path(), "p.yaml", &good);
    let mut r = Running::start(&[], &p);
    let port = r.api_port();
    // The start is not a reload.
    expect_metric(port, "eventflow_reloads_total{outcome=\"applied\"}", 0.0);
    expect_metric(port, "eventflow_config_last_reload_successful", 1.0);
    // Invalid: an unknown field. Rejected with its position; the old pipeline runs on.
    replace(
        &p,
        &good.replace("types: [Warning]", "types: [Warning]\n    tpyes: [Normal]"),
    );
    let log = r.wait_log("reload rejected");
    assert!(
        log.contains("p.yaml:13:5: stage `f`, field `tpyes`: unknown field"),
        "{log}"
    );
    assert!(!log.contains("no stage reads"), "no knock-on errors: {log}");
    expect_metric(port, "eventflow_reloads_total{outcome=\"rejected\"}", 1.0);
    expect_metric(port, "eventflow_config_last_reload_successful", 0.0);
    append(
        &events,
        &[sample_line(1, "Normal"), sample_line(2, "Warning")],
    );
    assert_eq!(r.next_event()["uid"], "uid-2");
    // Valid, but a new stage cannot be built (its database cannot be opened): rolled back.
    let broken = good.replace(
        OUT,
        &format!("{OUT}  other:\n    type: sql\n    inputs: [f]\n    url: sqlite:///nonexistent/events.db\n"),
    );
    replace(&p, &broken);
    let log = r.wait_log("reload rolled back");
    assert!(
        log.contains("stage `other`") && log.contains("unable to open database file"),
        "{log}"
    );
    expect_metric(
        port,
        "eventflow_reloads_total{outcome=\"rolled_back\"}",
        1.0,
    );
    append(&events, &[sample_line(3, "Warning")]);
    assert_eq!(r.next_event()["uid"], "uid-3");
    // Fixed again: applied, and the gauge is back to 1.
    replace(&p, &good.replace("[Warning]", "[Warning, Normal]"));
    r.wait_log("reload applied");
    expect_metric(port, "eventflow_config_last_reload_successful", 1.0);
    expect_metric(port, "eventflow_reloads_total{outcome=\"applied\"}", 1.0);
    assert!(r.stop().0.success());
}

#[test]
fn a_configmap_style_symlink_swap_is_picked_up() {
    let (dir, events) = setup();
    let d = dir.path();
    // kubelet's layout: p.yaml -> ..data/p.yaml, ..data -> ..2026_1, swapped atomically.
    std::fs::create_dir(d.join("..2026_1")).expect("mkdir");
    write(
        &d.join("..2026_1"),
        "p.yaml",
        &pipeline(&events, FILTER_WARN, OUT),
    );
    std::os::unix::fs::symlink("..2026_1", d.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/p.yaml", d.join("p.yaml")).expect("symlink");
    let mut r = Running::start(&[], &d.join("p.yaml"));
    std::fs::create_dir(d.join("..2026_2")).expect("mkdir");
    write(
        &d.join("..2026_2"),
        "p.yaml",
        &pipeline(&events, FILTER_NORMAL, OUT),
    );
    std::os::unix::fs::symlink("..2026_2", d.join("..data_tmp")).expect("symlink");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
    r.wait_log("reload applied");
    append(
        &events,
        &[sample_line(1, "Warning"), sample_line(2, "Normal")],
    );
    assert_eq!(r.next_event()["uid"], "uid-2");
    assert!(r.stop().0.success());
}

#[test]
fn sighup_and_post_reload_apply_the_file() {
    let (dir, events) = setup();
    let p = write(
        dir.path(),
        "p.yaml",
        &format!("{API}{}", pipeline(&events, FILTER_WARN, OUT)),
    );
    let mut r = Running::start(&["--no-watch"], &p);
    let port = r.api_port();
    replace(
        &p,
        &format!("{API}{}", pipeline(&events, FILTER_NORMAL, OUT)),
    );
    std::thread::sleep(Duration::from_millis(400));
    append(
        &events,
        &[sample_line(1, "Normal"), sample_line(2, "Warning")],
    );
    assert_eq!(
        r.next_event()["uid"],
        "uid-2",
        "--no-watch: the edit is not applied by itself"
    );
    r.signal("-HUP");
    let log = r.wait_log("reload applied");
    assert!(log.contains("SIGHUP"), "{log}");
    append(
        &events,
        &[sample_line(3, "Warning"), sample_line(4, "Normal")],
    );
    assert_eq!(r.next_event()["uid"], "uid-4");
    replace(&p, &format!("{API}{}", pipeline(&events, FILTER_WARN, OUT)));
    let (code, body) = http(port, "POST", "/-/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("rebuilt: [f]"), "{body}");
    let (code, body) = http(port, "POST", "/-/reload");
    assert_eq!(
        (code, body.contains("rebuilt: []")),
        (200, true),
        "nothing changed: {body}"
    );
    append(
        &events,
        &[sample_line(5, "Normal"), sample_line(6, "Warning")],
    );
    assert_eq!(r.next_event()["uid"], "uid-6");
    replace(&p, "stages: [oops");
    let (code, body) = http(port, "POST", "/-/reload");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("p.yaml:"), "{body}");
    assert!(r.stop().0.success());
}

#[test]
fn a_hundred_thousand_events_through_twenty_reloads_arrive_exactly_once() {
    const N: usize = 100_000;
    const RELOADS: usize = 20;
    let (dir, events) = setup();
    let middle = |i: usize| {
        format!(
            "  f:\n    type: filter\n    inputs: [src]\n    types: [Warning, Normal]\n    exclude:\n      namespaces: [never-{i}]\n  d:\n    type: dedup\n    inputs: [f]\n    window: {}s\n",
            60 + i
        )
    };
    let out = "  out:\n    type: stdout\n    inputs: [d]\n";
    let p = write(dir.path(), "p.yaml", &pipeline(&events, &middle(0), out));
    let mut r = Running::start(&["--reload-debounce=20ms"], &p);
    let mut next = 0;
    let mut received = Vec::with_capacity(N);
    for reload in 1..=RELOADS {
        let chunk: Vec<String> = (next..next + N / RELOADS)
            .map(|i| sample_line(i, if i % 3 == 0 { "Normal" } else { "Warning" }))
            .collect();
        next += chunk.len();
        append(&events, &chunk);
        replace(&p, &pipeline(&events, &middle(reload), out));
        r.wait_log("reload applied");
        while let Ok(l) = r.out.try_recv() {
            received.push(l);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while received.len() < N && std::time::Instant::now() < deadline {
        if let Ok(l) = r.out.recv_timeout(Duration::from_millis(200)) {
            received.push(l);
        }
    }
    let (status, rest) = r.stop();
    assert!(status.success());
    received.extend(rest);
    let mut uids: Vec<String> = received
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["uid"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        uids.len(),
        N,
        "events lost or repeated across {RELOADS} reloads"
    );
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), N, "an event arrived twice");
}

#[test]
fn a_kept_sql_sink_keeps_writing_and_an_unreachable_database_rolls_back() {
    let (dir, events) = setup();
    let db_path = dir.path().join("r.db");
    let sink = format!(
        "  db:\n    type: sql\n    inputs: [f]\n    url: sqlite://{}\n    batch: {{max_events: 10, max_wait: 10ms}}\n",
        db_path.display()
    );
    let p = write(dir.path(), "p.yaml", &pipeline(&events, FILTER_WARN, &sink));
    let mut r = Running::start(&[], &p);
    let rows = || -> Vec<String> {
        let rt = tokio::runtime::Runtime::new().expect("rt");
        rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
                .await
                .expect("open");
            sqlx::query_scalar::<_, String>("SELECT uid FROM k8s_events ORDER BY uid")
                .fetch_all(&pool)
                .await
                .unwrap_or_default()
        })
    };
    let wait_rows = |want: &[&str]| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = rows();
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rows {got:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    append(
        &events,
        &[sample_line(1, "Warning"), sample_line(2, "Normal")],
    );
    wait_rows(&["uid-1"]);
    replace(&p, &pipeline(&events, FILTER_NORMAL, &sink));
    let log = r.wait_log("reload applied");
    assert!(
        log.contains("\"kept\":\"[\\\"src\\\", \\\"db\\\"]\""),
        "{log}"
    );
    append(
        &events,
        &[sample_line(3, "Warning"), sample_line(4, "Normal")],
    );
    wait_rows(&["uid-1", "uid-4"]);
    // An added sink whose database cannot be reached: nothing changes.
    let unreachable = format!(
        "{sink}  pg:\n    type: sql\n    inputs: [f]\n    url: postgres://nobody:secret@127.0.0.1:1/nowhere\n    connect_timeout: 1s\n"
    );
    replace(&p, &pipeline(&events, FILTER_WARN, &unreachable));
    let log = r.wait_log("reload rolled back");
    assert!(
        log.contains("stage `pg`") && log.contains("cannot connect") && !log.contains("secret"),
        "{log}"
    );
    append(
        &events,
        &[sample_line(5, "Warning"), sample_line(6, "Normal")],
    );
    wait_rows(&["uid-1", "uid-4", "uid-6"]);
    assert!(r.stop().0.success());
}

#[test]
fn the_reload_endpoint_refuses_web_pages_and_takes_a_bearer_token() {
    let (dir, events) = setup();
    let p = write(
        dir.path(),
        "p.yaml",
        &format!("{API}{}", pipeline(&events, FILTER_WARN, OUT)),
    );
    // Without a token: open to local tools, closed to browsers.
    let mut r = Running::start(&[], &p);
    let port = r.api_port();
    for h in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let (code, body) = http_with(port, "POST", "/-/reload", &[h]);
        assert_eq!(code, 403, "{h:?}: {body}");
    }
    let (code, body) = http(port, "POST", "/-/reload");
    assert_eq!(code, 200, "{body}");
    let (code, _) = http_with(port, "GET", "/metrics", &[("Origin", "http://x")]);
    assert_ne!(code, 403, "reading endpoints are not mutating");
    assert!(r.stop().0.success());

    // With EVENTFLOW_API_TOKEN: the token is required.
    let mut cmd = bin();
    cmd.env("EVENTFLOW_API_TOKEN", "t0ken");
    let mut r = Running::start_cmd(cmd, &[], &p);
    let port = r.api_port();
    let (code, body) = http(port, "POST", "/-/reload");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("EVENTFLOW_API_TOKEN"), "{body}");
    let (code, _) = http_with(
        port,
        "POST",
        "/-/reload",
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(code, 401);
    let (code, body) = http_with(
        port,
        "POST",
        "/-/reload",
        &[("Authorization", "Bearer t0ken")],
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = http(port, "GET", "/readyz");
    assert_eq!(code, 200, "reading endpoints need no token");
    assert!(r.stop().0.success());
}

#[test]
fn a_reloaded_file_that_cannot_run_is_refused_and_the_pipeline_keeps_running() {
    let (dir, events) = setup();
    let p = write(dir.path(), "p.yaml", &pipeline(&events, FILTER_WARN, OUT));
    let mut r = Running::start(&[], &p);
    append(&events, &[sample_line(1, "Warning")]);
    assert_eq!(r.next_event()["uid"], "uid-1");
    let dedup = |extra: &str| {
        let middle = format!("{FILTER_WARN}  d:\n    type: dedup\n    inputs: [f]\n{extra}");
        pipeline(
            &events,
            &middle,
            "  out:\n    type: stdout\n    inputs: [d]\n",
        )
    };
    let cases = [
        (
            "stages: {}\n".to_string(),
            "at least one source and one sink",
        ),
        (dedup("    max_keys: 0\n"), "must be at least 1"),
        (dedup("    window: 99999999999999999d\n"), "too long"),
    ];
    for (i, (bad, says)) in cases.iter().enumerate() {
        replace(&p, bad);
        let log = r.wait_log("reload rejected");
        assert!(log.contains(says), "{log}");
        append(&events, &[sample_line(10 + i, "Warning")]);
        assert_eq!(
            r.next_event()["uid"],
            format!("uid-{}", 10 + i).as_str(),
            "still running the old pipeline"
        );
    }
    assert!(r.stop().0.success());
}

/// The kubelet's update of a mounted `ConfigMap`, as it does it: a new timestamped directory,
/// a new `..data` symlink renamed over the old one, the old directory removed. Ten updates
/// while events flow: each is reloaded exactly once, the new config is in effect, and every
/// event comes out exactly once.
#[test]
fn configmap_updates_reload_exactly_once_each_while_events_flow() {
    const SWAPS: usize = 10;
    const N: usize = 3_000;
    let (dir, events) = setup();
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount).expect("mkdir");
    let version = |i: usize| {
        let middle = format!(
            "  f:\n    type: filter\n    inputs: [src]\n    types: [Warning, Normal]\n    exclude:\n      namespaces: [never-{i}]\n"
        );
        pipeline(&events, &middle, OUT)
    };
    let publish = |i: usize, first: bool| {
        let ts = format!("..2026_12_01_10_00_{i:02}.{}", 100 + i);
        std::fs::create_dir(mount.join(&ts)).expect("mkdir");
        write(&mount.join(&ts), "pipeline.yaml", &version(i));
        if first {
            std::os::unix::fs::symlink(&ts, mount.join("..data")).expect("symlink");
            std::os::unix::fs::symlink("..data/pipeline.yaml", mount.join("pipeline.yaml"))
                .expect("symlink");
        } else {
            let old = std::fs::read_link(mount.join("..data")).expect("..data");
            std::os::unix::fs::symlink(&ts, mount.join("..data_tmp")).expect("symlink");
            std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swap");
            std::fs::remove_dir_all(mount.join(old)).expect("remove the old directory");
        }
    };
    publish(0, true);
    let mut r = Running::start(&[], &mount.join("pipeline.yaml"));
    let feeder = {
        let events = events.clone();
        std::thread::spawn(move || {
            for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
                let lines: Vec<String> = chunk
                    .iter()
                    .map(|i| sample_line(*i, if i % 2 == 0 { "Warning" } else { "Normal" }))
                    .collect();
                append(&events, &lines);
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    for i in 1..=SWAPS {
        publish(i, false);
        let log = r.wait_log("reload applied");
        assert!(log.contains("\\\"f\\\""), "the filter was rebuilt: {log}");
    }
    feeder.join().expect("feeder");
    let mut uids = std::collections::BTreeMap::new();
    for _ in 0..N {
        let e = r.next_event();
        *uids
            .entry(e["uid"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    r.no_event_within(Duration::from_millis(500));
    assert_eq!(uids.len(), N, "every event");
    assert!(uids.values().all(|n| *n == 1), "none twice");
    // Exactly one reload per update: read the rest of the log, then count.
    while let Ok(l) = r.logs.recv_timeout(Duration::from_millis(300)) {
        r.seen_logs.push(l);
    }
    let count = |needle: &str| r.seen_logs.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("pipeline file changed; reloading"), SWAPS);
    assert_eq!(count("reload applied"), SWAPS);
    assert_eq!(count("reload: nothing changed"), 0);
    let (status, _) = r.stop();
    assert!(status.success());
}
