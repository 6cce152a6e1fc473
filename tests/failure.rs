//! A stage that fails while the pipeline runs never acknowledges its events: the process stops
//! with a non-zero exit, nothing it held is checkpointed, and a restart delivers every event.
//! The crash is a real panic inside the real binary (`EVENTFLOW_FAULT_PANIC`, a hook compiled
//! into debug builds only), with `kube_events` upstream against the fake API server, a `SQLite`
//! sink and a webhook to a local receiver.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

/// The uids in the bodies the receiver accepted.
fn received(log: &Receiver) -> BTreeSet<String> {
    log.accepted()
        .iter()
        .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["uid"].as_str().map(str::to_string))
        .collect()
}

fn pipeline(dir: &Path, kubeconfig: &Path, hook: &str) -> std::path::PathBuf {
    write(
        dir,
        "pipeline.yaml",
        &format!(
            "state:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n    buffer_size: 80\n    backoff: {{initial: 100ms, max: 500ms}}\n  keep:\n    type: filter\n    inputs: [k8s]\n    types: [Warning, Normal]\n  db:\n    type: sql\n    inputs: [keep]\n    url: sqlite://{db}\n    batch: {{max_events: 20, max_wait: 5ms}}\n  hook:\n    type: webhook\n    inputs: [keep]\n    url: {hook}\n    batch: {{max_events: 10, max_wait: 5ms}}\n  print:\n    type: stdout\n    inputs: [keep]\n",
            state = dir.join("state.db").display(),
            kc = kubeconfig.display(),
            db = dir.join("events.db").display(),
        ),
    )
}

/// The uids of the events a `stdout` sink printed.
fn printed(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["uid"].as_str().map(str::to_string))
        .collect()
}

/// Runs the pipeline with stage `crash` panicking at its 3rd batch; the process must stop by
/// itself with exit status 1. Returns its log and what it printed.
fn run_crashing(p: &Path, crash: &str) -> (String, BTreeSet<String>) {
    let mut child = bin()
        .env("EVENTFLOW_FAULT_PANIC", format!("{crash}:3"))
        .arg("--log-format=json")
        .args(["run", "--shutdown-timeout", "20s"])
        .arg(p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = lines_of(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not stop after stage `{crash}` failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut logs);
    }
    assert_eq!(status.code(), Some(1), "exit status; logs:\n{logs}");
    let lines: Vec<String> = out.iter().collect();
    (logs, printed(&lines))
}

fn crash_then_restart_delivers_everything(crash: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, fake, kc) = fake_cluster(dir.path());
    let (log, hook) = Receiver::start();
    let p = pipeline(dir.path(), &kc, &hook);
    let created: BTreeSet<String> = (0..300)
        .map(|i| {
            let ty = if i % 2 == 0 { "Warning" } else { "Normal" };
            create_event(&fake, "default", &format!("e-{i}.1"), "BackOff", ty)
        })
        .collect();

    let (logs, mut shown) = run_crashing(&p, crash);
    assert!(
        logs.contains("stage failed") && logs.contains(crash),
        "the failure names the stage; logs:\n{logs}"
    );
    assert!(
        logs.contains("fault injected"),
        "the panic message is logged; logs:\n{logs}"
    );
    assert!(
        !logs.contains("pipeline drained"),
        "a failed run does not claim it drained; logs:\n{logs}"
    );
    let db = dir.path().join("events.db");
    let state = dir.path().join("state.db");
    let stored = sqlite_column(&db, "SELECT uid FROM k8s_events");
    let sent = received(&log);
    let checkpointed = sqlite_column(&state, "SELECT uid FROM eventflow_kube_checkpoint");
    assert!(
        stored.len() < created.len() || sent.len() < created.len() || shown.len() < created.len(),
        "the crash lost something in flight (stored {}, sent {}, printed {})",
        stored.len(),
        sent.len(),
        shown.len()
    );
    let false_acks: Vec<&String> = checkpointed
        .iter()
        .filter(|u| !stored.contains(*u) || !sent.contains(*u) || !shown.contains(*u))
        .collect();
    assert!(
        false_acks.is_empty(),
        "{} versions checkpointed that a sink never committed (crash of `{crash}`)",
        false_acks.len()
    );
    eprintln!(
        "crash of `{crash}`: stored {}, sent {}, printed {}, checkpointed {} of {}",
        stored.len(),
        sent.len(),
        shown.len(),
        checkpointed.len(),
        created.len()
    );

    // Restart without the fault: every event reaches every sink.
    let r = Running::start(&[], &p);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while sqlite_column(&db, "SELECT uid FROM k8s_events") != created
        || received(&log) != created
        || shown != created
    {
        assert!(
            Instant::now() < deadline,
            "after the restart: stored {}, sent {} and printed {} of {}",
            sqlite_column(&db, "SELECT uid FROM k8s_events").len(),
            received(&log).len(),
            shown.len(),
            created.len()
        );
        while let Ok(l) = r.out.recv_timeout(Duration::from_millis(50)) {
            lines.push(l);
        }
        shown.extend(printed(&lines));
    }
    let (status, _) = r.stop();
    assert!(status.success(), "a clean run exits 0");
    drop(rt);
}

#[test]
fn a_crashed_sql_sink_acknowledges_nothing_it_held() {
    crash_then_restart_delivers_everything("db");
}

#[test]
fn a_crashed_webhook_sink_acknowledges_nothing_it_held() {
    crash_then_restart_delivers_everything("hook");
}

#[test]
fn a_crashed_stdout_sink_acknowledges_nothing_it_held() {
    crash_then_restart_delivers_everything("print");
}

#[test]
fn a_crashed_transform_acknowledges_nothing_it_held() {
    crash_then_restart_delivers_everything("keep");
}

/// The reproduction: a `sql` sink whose `max_wait` overflowed the clock panicked, and
/// `run` said "pipeline drained" and exited 0 with no rows. Such a value is now refused by
/// `validate`; and a sink that fails for any reason makes `run` exit 1.
#[test]
fn a_file_run_whose_sink_fails_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "stages:\n  f:\n    type: file\n    path: {}\n  db:\n    type: sql\n    inputs: [f]\n    url: sqlite://{}\n    batch: {{max_events: 5, max_wait: 1s}}\n",
            repo("pipelines/samples/events.json").display(),
            dir.path().join("x.db").display()
        ),
    );
    let out = bin()
        .env("EVENTFLOW_FAULT_PANIC", "db:1")
        .arg("run")
        .arg(&p)
        .output()
        .expect("run");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert!(logs.contains("stage failed"), "{logs}");

    let huge = write(
        dir.path(),
        "huge.yaml",
        &format!(
            "stages:\n  f:\n    type: file\n    path: {}\n  db:\n    type: sql\n    inputs: [f]\n    url: sqlite://{}\n    batch: {{max_events: 100000, max_wait: 99999999999999999d}}\n",
            repo("pipelines/samples/events.json").display(),
            dir.path().join("y.db").display()
        ),
    );
    for cmd in ["validate", "run"] {
        let out = bin().arg(cmd).arg(&huge).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.contains("huge.yaml:9:") && err.contains("too long"),
            "{cmd}: {err}"
        );
    }
}

fn exec(db: &Path, sql: &'static str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("connect");
        sqlx::query(sql).execute(&pool).await.expect(sql);
        pool.close().await;
    });
}

/// A pipeline `kube_events` (with `source_extra` lines) -> `sql` into `events.db` under `dir`,
/// run once to create the table, after which a trigger refuses every row of reason `Refused`.
/// Returns the pipeline file, the events database and the state database.
fn refusing_pipeline(dir: &Path, kc: &Path, source_extra: &str) -> (PathBuf, PathBuf, PathBuf) {
    let db = dir.join("events.db");
    let state = dir.join("state.db");
    let p = write(
        dir,
        "pipeline.yaml",
        &format!(
            "state:\n  url: sqlite://{}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {}\n{source_extra}  db:\n    type: sql\n    inputs: [k8s]\n    url: sqlite://{}\n    batch: {{max_events: 50, max_wait: 5ms}}\n",
            state.display(),
            kc.display(),
            db.display()
        ),
    );
    let _ = Running::start(&[], &p).stop_ok();
    exec(
        &db,
        "CREATE TRIGGER refuse BEFORE INSERT ON k8s_events WHEN NEW.reason = 'Refused' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
    );
    (p, db, state)
}

/// A row the database refuses is counted and the run goes on, but its version is not
/// checkpointed: once the operator removes the cause, a restart stores it.
#[test]
fn a_refused_row_is_not_checkpointed_and_is_stored_after_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, fake, kc) = fake_cluster(dir.path());
    let (p, db, state) = refusing_pipeline(dir.path(), &kc, "");
    let good: BTreeSet<String> = (0..20)
        .map(|i| create_event(&fake, "default", &format!("g-{i}.1"), "BackOff", "Warning"))
        .collect();
    let refused: BTreeSet<String> = (0..5)
        .map(|i| create_event(&fake, "default", &format!("r-{i}.1"), "Refused", "Warning"))
        .collect();

    let mut r = Running::start(&[], &p);
    wait_until("the good rows", Duration::from_secs(60), || {
        sqlite_column(&db, "SELECT uid FROM k8s_events") == good
    });
    r.wait_log("the database refused this event");
    let (status, _) = r.stop();
    assert!(status.success(), "refused rows are counted, not a failure");
    let checkpointed = sqlite_column(&state, "SELECT uid FROM eventflow_kube_checkpoint");
    assert!(
        checkpointed.is_superset(&good),
        "delivered versions move the checkpoint"
    );
    assert!(
        checkpointed.is_disjoint(&refused),
        "refused versions are not checkpointed"
    );

    exec(&db, "DROP TRIGGER refuse");
    let r = Running::start(&[], &p);
    let all: BTreeSet<String> = good.union(&refused).cloned().collect();
    wait_until(
        "the refused rows after the fix",
        Duration::from_secs(60),
        || sqlite_column(&db, "SELECT uid FROM k8s_events") == all,
    );
    let (status, _) = r.stop();
    assert!(status.success());
    drop(rt);
}

/// `eventflow dead-letter ACTION PIPELINE ARGS...`: exit code, stdout, stderr.
fn dead_letter(p: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin()
        .arg("dead-letter")
        .arg(args[0])
        .arg(p)
        .args(&args[1..])
        .output()
        .expect("dead-letter");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A row refused in every run does not stall the source forever: after `dead_letter_after`
/// runs it becomes a dead letter of the refusing sink and the checkpoint moves past it; every
/// other event is stored; once the cause is fixed, `dead-letter resend` stores it.
#[test]
fn a_row_refused_in_every_run_becomes_a_dead_letter_and_resend_stores_it_after_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, fake, kc) = fake_cluster(dir.path());
    let (p, db, state) = refusing_pipeline(dir.path(), &kc, "    dead_letter_after: 3\n");
    let refused = create_event(&fake, "default", "poison.1", "Refused", "Warning");
    let mut good = BTreeSet::new();
    for run in 1..=3 {
        good.insert(create_event(
            &fake,
            "default",
            &format!("g-{run}.1"),
            "BackOff",
            "Warning",
        ));
        let mut r = Running::start(&[], &p);
        wait_until("the good rows", Duration::from_secs(60), || {
            sqlite_column(&db, "SELECT uid FROM k8s_events") == good
        });
        if run < 3 {
            r.wait_log(&format!("a sink refused this event (run {run} of 3)"));
        } else {
            r.wait_log("refused in 3 runs: given up and kept as a dead letter");
        }
        let (status, _) = r.stop();
        assert!(status.success());
    }
    let checkpointed = sqlite_column(&state, "SELECT uid FROM eventflow_kube_checkpoint");
    assert!(
        checkpointed.contains(&refused),
        "the checkpoint moved past the dead letter"
    );
    assert!(
        sqlite_column(&state, "SELECT uid FROM eventflow_kube_attempts").is_empty(),
        "nothing left on record once it is a dead letter"
    );

    // A fourth run does not send it again, and stores what is new.
    good.insert(create_event(
        &fake, "default", "g-4.1", "BackOff", "Warning",
    ));
    let r = Running::start(&[], &p);
    wait_until("the new row", Duration::from_secs(60), || {
        sqlite_column(&db, "SELECT uid FROM k8s_events") == good
    });
    let (_, logs) = r.stop_ok();
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("the database refused this event")),
        "the dead letter is not sent again: {logs:?}"
    );

    let dl = |args: &[&str]| dead_letter(&p, args);
    let (code, listed, err) = dl(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "one dead letter: {listed}");
    assert!(
        rows[0].contains(" db ") && rows[0].contains("refused by a trigger"),
        "it names the refusing sink and the database's reason: {listed}"
    );
    let id = rows[0].split_whitespace().next().expect("id").to_string();
    let (code, shown, _) = dl(&["show", &id]);
    assert_eq!(code, Some(0));
    assert!(shown.contains(&refused), "{shown}");

    // Still refused: the resend fails and the dead letter stays.
    let (code, out, _) = dl(&["resend"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refused by a trigger"), "{out}");

    exec(&db, "DROP TRIGGER refuse");
    let (code, out, err) = dl(&["resend"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 delivered, 0 failed"), "{out}");
    good.insert(refused);
    assert_eq!(sqlite_column(&db, "SELECT uid FROM k8s_events"), good);
    let (_, listed, _) = dl(&["list"]);
    assert!(listed.starts_with("no dead letters"), "{listed}");
    drop(rt);
}

/// A webhook delivery refused for good (a 4xx, without `durable`) is not checkpointed either:
/// a restart sends it again.
#[test]
fn a_webhook_delivery_refused_for_good_is_sent_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, fake, kc) = fake_cluster(dir.path());
    // The first 3 requests are refused with a 400 (permanent), the rest accepted.
    let (log, hook) = Receiver::start();
    let log = log.failing_first(3, 400);
    let p = write(
        dir.path(),
        "pipeline.yaml",
        &format!(
            "state:\n  url: sqlite://{}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {}\n  hook:\n    type: webhook\n    inputs: [k8s]\n    url: {hook}\n    batch: {{max_events: 1, max_wait: 1ms}}\n    format: seed\n",
            dir.path().join("state.db").display(),
            kc.display(),
        ),
    );
    let created: BTreeSet<String> = (0..10)
        .map(|i| create_event(&fake, "default", &format!("w-{i}.1"), "BackOff", "Warning"))
        .collect();
    let mut r = Running::start(&[], &p);
    wait_until("7 accepted deliveries", Duration::from_secs(60), || {
        received(&log).len() == 7
    });
    r.wait_log("permanent");
    let (status, _) = r.stop();
    assert!(status.success());
    let checkpointed = sqlite_column(
        &dir.path().join("state.db"),
        "SELECT uid FROM eventflow_kube_checkpoint",
    );
    assert_eq!(
        checkpointed,
        received(&log),
        "only accepted versions are checkpointed"
    );

    let r = Running::start(&[], &p);
    wait_until("every event accepted", Duration::from_secs(60), || {
        received(&log) == created
    });
    let (status, _) = r.stop();
    assert!(status.success());
    drop(rt);
}

/// Ctrl-C twice: the first drains (here it would wait out a long shutdown timeout on a webhook
/// that cannot deliver), the second stops at once with 130 and says so. What was in flight was
/// not acknowledged: a restart with the receiver up delivers every event.
#[test]
fn a_second_signal_stops_at_once_and_acknowledges_nothing_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, fake, kc) = fake_cluster(dir.path());
    let port = free_port();
    let p = |port: u16| {
        write(
            dir.path(),
            "pipeline.yaml",
            &format!(
                "state:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n  hook:\n    type: webhook\n    inputs: [k8s]\n    url: http://127.0.0.1:{port}/hook\n    retries: 1000\n    backoff: {{initial: 50ms, max: 200ms}}\n    batch: {{max_events: 10, max_wait: 5ms}}\n",
                state = dir.path().join("state.db").display(),
                kc = kc.display(),
            ),
        )
    };
    let created: BTreeSet<String> = (0..20)
        .map(|i| create_event(&fake, "default", &format!("e-{i}.1"), "BackOff", "Warning"))
        .collect();
    // Nothing listens on `port`: every attempt fails and is retried.
    let mut r = Running::start(&["--shutdown-timeout", "60s"], &p(port));
    r.wait_log("cannot connect");
    r.signal("-INT");
    r.wait_log("send the signal again to stop at once");
    let asked = Instant::now();
    r.signal("-INT");
    let status = loop {
        if let Some(s) = r.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the second SIGINT did not stop the process"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    r.seen_logs.extend(r.logs.try_iter());
    let logs = r.seen_logs.join("\n");
    assert_eq!(status.code(), Some(130), "exit status; logs:\n{logs}");
    assert!(logs.contains("stopping at once"), "{logs}");
    assert!(!logs.contains("pipeline drained"), "{logs}");
    let checkpointed = sqlite_column(
        &dir.path().join("state.db"),
        "SELECT uid FROM eventflow_kube_checkpoint",
    );
    assert!(
        checkpointed.is_empty(),
        "nothing was delivered, nothing may be checkpointed: {checkpointed:?}"
    );
    drop(r);

    // With a receiver at last, a restart delivers every event.
    let (log, hook) = Receiver::start();
    let hook_port: u16 = hook
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("receiver port");
    let r = Running::start(&[], &p(hook_port));
    wait_until("every event delivered", Duration::from_secs(30), || {
        let mut got = received(&log);
        got.extend(
            log.accepted()
                .iter()
                .filter_map(|q| q.body["uid"].as_str().map(str::to_string)),
        );
        got == created
    });
    let (status, _) = r.stop();
    assert!(status.success());
    drop(rt);
}

/// A backfill whose receiver refuses every connection: the run ends when its file is read,
/// prints one line per sink (delivered, failed, discarded) and exits 3; the same run with
/// every event delivered exits 0 with its line.
#[test]
fn a_finite_run_that_could_not_deliver_says_so_and_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = (0..5).map(|i| sample_line(i, "Warning")).collect();
    let events = write(dir.path(), "events.jsonl", &(lines.join("\n") + "\n"));
    let run = |url: &str| {
        let p = write(
            dir.path(),
            "p.yaml",
            &format!(
                "stages:\n  f:\n    type: file\n    path: {}\n  hook:\n    type: webhook\n    inputs: [f]\n    url: {url}\n    retries: 1\n    backoff: {{initial: 10ms, max: 20ms}}\n  keep:\n    type: filter\n    inputs: [f]\n    types: [Normal]\n  print:\n    type: stdout\n    inputs: [keep]\n",
                events.display()
            ),
        );
        let out = bin().arg("run").arg(&p).output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, logs) = run(&format!("http://127.0.0.1:{}/hook", free_port()));
    assert_eq!(code, Some(3), "{logs}");
    assert!(
        logs.contains("sink `hook` (webhook): 0 delivered, 5 failed, 0 discarded"),
        "{logs}"
    );
    assert!(
        logs.contains("sink `print` (stdout): 0 delivered, 0 failed, 0 discarded"),
        "{logs}"
    );
    let (_r, url) = Receiver::start();
    let (code, logs) = run(&url);
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("sink `hook` (webhook): 5 delivered, 0 failed, 0 discarded"),
        "{logs}"
    );
}
