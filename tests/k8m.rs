//! The seed's `eventhandler.yaml` (the k8m event handler's format) runs unchanged: the seed
//! document's own example, verbatim, against the fake API server with `SQLite` and a table the
//! seed created; a webhook with the seed's reverse rules, its batch body and its
//! `processed`/`attempts` columns; hot reload of the seed file; the seed's validation; and
//! `eventflow migrate`, whose output loads to the same pipeline.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use support::*;

const EXAMPLE: &str = "tests/data/k8m/eventhandler.yaml";

/// (`evt_key`, namespace, reason, type, processed, attempts) of every row.
type SeedRow = (String, String, String, String, bool, i64);

fn rows(db: &Path) -> Vec<SeedRow> {
    sqlite_rows(
        db,
        "SELECT evt_key, namespace, reason, type, processed, attempts FROM k8s_events ORDER BY id",
    )
}

fn seed_table(db: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .expect("sqlite");
        for stmt in seed_ddl("sqlite", "k8s_events") {
            sqlx::raw_sql(sqlx::AssertSqlSafe(stmt))
                .execute(&pool)
                .await
                .expect("seed DDL");
        }
        pool.close().await;
    });
}

fn start_fake() -> (tokio::runtime::Runtime, FakeApiServer) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fake = rt.block_on(FakeApiServer::start()).expect("fake");
    (rt, fake)
}

fn selected(rows: &[SeedRow]) -> BTreeSet<(String, String, String)> {
    rows.iter()
        .filter(|r| !r.0.starts_with("seed-"))
        .map(|r| (r.1.clone(), r.2.clone(), r.3.clone()))
        .collect()
}

fn triple(ns: &str, reason: &str, ty: &str) -> (String, String, String) {
    (ns.into(), reason.into(), ty.into())
}

#[test]
fn the_seed_documents_example_runs_unchanged_and_keeps_the_seeds_rows() {
    let (_rt, fake) = start_fake();
    let dir = tempfile::tempdir().expect("tmp");
    let kc = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kc, None).expect("kubeconfig");
    // The example's `dsn: k8s_events.db` is relative: run where the seed's table already is.
    seed_table(&dir.path().join("k8s_events.db"));
    let file = dir.path().join("eventhandler.yaml");
    std::fs::copy(repo(EXAMPLE), &file).expect("copy the example");
    // Rules: namespaces [default, kube-system], reasons [FailedMount, ImagePullBackOff],
    // types [Warning], forward.
    create_event(&fake, "default", "a.1", "FailedMount", "Warning");
    create_event(&fake, "kube-system", "b.1", "ImagePullBackOff", "Warning");
    create_event(&fake, "default", "c.1", "FailedMount", "Normal");
    create_event(&fake, "other", "d.1", "FailedMount", "Warning");
    create_event(&fake, "default", "e.1", "BackOff", "Warning");
    let mut cmd = bin();
    cmd.current_dir(dir.path()).env("KUBECONFIG", &kc);
    let r = Running::start_cmd(cmd, &[], &file);
    let db = dir.path().join("k8s_events.db");
    let want: BTreeSet<_> = [
        triple("default", "FailedMount", "Warning"),
        triple("kube-system", "ImagePullBackOff", "Warning"),
    ]
    .into();
    wait_until(
        "the selected events stored",
        Duration::from_secs(20),
        || selected(&rows(&db)) == want,
    );
    // Later events go the same way.
    create_event(&fake, "kube-system", "f.1", "FailedMount", "Warning");
    create_event(&fake, "kube-system", "g.1", "Pulled", "Normal");
    let mut want = want;
    want.insert(triple("kube-system", "FailedMount", "Warning"));
    wait_until("the later event stored", Duration::from_secs(20), || {
        selected(&rows(&db)) == want
    });
    let all = rows(&db);
    let seed1 = all
        .iter()
        .find(|r| r.0 == "seed-1")
        .expect("the seed's row kept");
    assert_eq!((seed1.4, seed1.5), (true, 2), "its processed/attempts kept");
    assert!(all.iter().any(|r| r.0 == "seed-2"));
    let (status, _) = r.stop();
    assert!(status.success());
}

fn hook_file(dir: &Path, url: &str, rules: &str) -> std::path::PathBuf {
    write(
        dir,
        "eventhandler.yaml",
        &format!(
            "enabled: true\ndatabase:\n  type: sqlite\n  dsn: {}\nworker:\n  batch_size: 10\n  process_interval: 200\n{rules}webhook:\n  enabled: true\n  url: \"{url}\"\n  headers:\n    Authorization: \"Bearer t0k\"\n  timeout: 5\n  retries: 1\n",
            dir.join("ev.db").display()
        ),
    )
}

#[test]
fn a_seed_webhook_gets_the_seed_body_marks_rows_and_follows_a_reloaded_file() {
    let (_rt, fake) = start_fake();
    let dir = tempfile::tempdir().expect("tmp");
    let kc = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kc, None).expect("kubeconfig");
    let (got, url) = Receiver::start();
    let url = url.replace("/hook", "/events");
    // The seed's reverse example: keep what matches none of the lists.
    let reverse = "rule_config:\n  reverse: true\n  namespaces: [\"kube-system\"]\n  reasons: [\"Scheduled\"]\n  types: [\"Normal\"]\n";
    let file = hook_file(dir.path(), &url, reverse);
    let kept = create_event(&fake, "default", "a.1", "BackOff", "Warning");
    create_event(&fake, "kube-system", "b.1", "BackOff", "Warning");
    create_event(&fake, "default", "c.1", "Scheduled", "Warning");
    create_event(&fake, "default", "d.1", "Pulled", "Normal");
    let mut cmd = bin();
    cmd.env("KUBECONFIG", &kc);
    let mut r = Running::start_cmd(cmd, &[], &file);
    let bodies =
        || -> Vec<serde_json::Value> { got.accepted().into_iter().map(|g| g.body).collect() };
    let delivered = || -> Vec<String> {
        bodies()
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .map(|e| e["uid"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    wait_until("the kept event delivered", Duration::from_secs(20), || {
        !delivered().is_empty()
    });
    assert_eq!(
        delivered(),
        std::slice::from_ref(&kept),
        "only what matches none"
    );
    let b = &bodies()[0];
    assert_eq!(b["count"], 1, "the seed's batch body, also for one event");
    assert!(b["timestamp"].as_i64().unwrap_or(0) > 1_700_000_000);
    let db = dir.path().join("ev.db");
    wait_until("processed set", Duration::from_secs(10), || {
        rows(&db)
            .iter()
            .any(|r| r.0.ends_with(&kept) && r.4 && r.5 == 1)
    });
    assert_eq!(rows(&db).len(), 1, "the store holds what the rules kept");

    // The seed's config hot update: forward rules now.
    let forward = "rule_config:\n  reverse: false\n  reasons: [\"FailedMount\"]\n";
    replace(
        &file,
        &std::fs::read_to_string(hook_file(dir.path(), &url, forward)).expect("read"),
    );
    r.wait_log("reload applied");
    let mounted = create_event(&fake, "default", "e.1", "FailedMount", "Warning");
    create_event(&fake, "default", "f.1", "BackOff", "Warning");
    wait_until("the newly selected event", Duration::from_secs(20), || {
        delivered().contains(&mounted)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(delivered(), [kept, mounted], "the reloaded rules apply");
    let (status, _) = r.stop();
    assert!(status.success());
}

#[test]
fn the_seeds_validation_and_enabled_switches() {
    let dir = tempfile::tempdir().expect("tmp");
    let validate = |text: &str| {
        let f = write(dir.path(), "eh.yaml", text);
        let out = bin().arg("validate").arg(&f).output().expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = validate("webhook:\n  enabled: true\n  method: POST\n");
    assert!(!ok);
    assert!(out.contains("eh.yaml:2:3: field `webhook.url`"), "{out}");
    assert!(out.contains("no url"), "{out}");
    let (ok, out) = validate("database:\n  type: postgres\n  dsn: \"not a dsn\"\n");
    assert!(!ok);
    assert!(out.contains("eh.yaml:3:8: field `database.dsn`"), "{out}");
    assert!(out.contains("accepted forms"), "{out}");
    let (ok, out) = validate("database:\n  type: oracle\n");
    assert!(
        !ok && out.contains("unknown database type `oracle`"),
        "{out}"
    );
    let (ok, out) = validate("watcher:\n  buffer_size: many\n");
    assert!(!ok && out.contains("field `watcher.buffer_size`"), "{out}");
    // `enabled: false` turns the whole handler off: valid, and `run` has nothing to do.
    let (ok, out) = validate("enabled: false\ndatabase: {type: sqlite}\n");
    assert!(ok && out.contains("disabled"), "{out}");
    let f = write(
        dir.path(),
        "off.yaml",
        "enabled: false\ndatabase: {type: sqlite}\n",
    );
    let out = bin().arg("run").arg(&f).output().expect("run");
    assert!(out.status.success());
    // Each section's switch.
    let load =
        |text: &str| eventflow::load_str(text, "eh.yaml", &|_| None).expect("valid seed file");
    let ids = |text: &str| load(text).stages.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        ids("database: {type: sqlite}\n"),
        ["watcher", "rules", "store"]
    );
    assert_eq!(ids("rule_config: {enabled: false}\n"), ["watcher", "store"]);
    assert_eq!(
        ids("webhook: {enabled: true, url: \"http://x/y\"}\n"),
        ["watcher", "rules", "store", "webhook"]
    );
    assert_eq!(
        ids("worker: {enabled: false}\nwebhook: {enabled: true, url: \"http://x/y\"}\n"),
        ["watcher", "rules", "store"],
        "no worker, no pushes"
    );
    assert!(load("watcher: {enabled: false}\n").disabled.is_some());
}

#[test]
fn migrate_prints_a_pipeline_that_loads_to_the_same_stages() {
    let dir = tempfile::tempdir().expect("tmp");
    let seed = write(
        dir.path(),
        "eh.yaml",
        "database:\n  type: mysql\n  dsn: \"ev:pw@tcp(db:3306)/events?parseTime=true\"\n  max_conns: 4\nworker:\n  batch_size: 50\n  process_interval: 10000\n  max_retries: 5\nrule_config:\n  reverse: true\n  namespaces: [kube-system]\nwebhook:\n  enabled: true\n  url: \"https://hooks.example/e\"\n  headers: {X-Team: platform}\n  timeout: 10\n",
    );
    // By default secrets stay out of the output: ${ENV} references, listed redacted.
    let out = bin().arg("migrate").arg(&seed).output().expect("migrate");
    assert!(out.status.success());
    let hidden = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !hidden.contains(":pw@") && !hidden.contains("platform"),
        "{hidden}"
    );
    assert!(hidden.contains("url: \"${EVENTFLOW_DB_URL}\""), "{hidden}");
    assert!(
        hidden.contains("#   EVENTFLOW_DB_URL: mysql://ev:***@db:3306/events"),
        "{hidden}"
    );
    assert!(
        hidden.contains("\"X-Team\": \"${EVENTFLOW_WEBHOOK_HEADER_1}\""),
        "{hidden}"
    );
    // Given those variables, it loads to the same pipeline as with the values in place.
    let env = |k: &str| match k {
        "EVENTFLOW_DB_URL" => Some("mysql://ev:pw@db:3306/events".to_string()),
        "EVENTFLOW_WEBHOOK_HEADER_1" => Some("platform".to_string()),
        _ => None,
    };
    let from_env = eventflow::load_str(&hidden, "hidden.yaml", &env).expect("loads");

    let out = bin()
        .args(["migrate", "--show-secrets"])
        .arg(&seed)
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        yaml.contains("url: \"mysql://ev:pw@db:3306/events\""),
        "{yaml}"
    );
    assert!(
        yaml.contains("batch: {max_events: 50, max_wait: 10000ms}"),
        "{yaml}"
    );
    assert!(yaml.contains("retries: 5"), "{yaml}");
    assert!(yaml.contains("durable: true"), "{yaml}");
    assert!(
        yaml.contains("# Differs from the k8m event handler"),
        "{yaml}"
    );
    let migrated = write(dir.path(), "pipeline.yaml", &yaml);
    let a = eventflow::load_file(&seed).expect("seed file");
    let b = eventflow::load_file(&migrated).expect("migrated file");
    assert_eq!(
        a.stages.keys().collect::<Vec<_>>(),
        b.stages.keys().collect::<Vec<_>>()
    );
    for (id, s) in &a.stages {
        assert_eq!(s.node, b.stages[id].node, "stage `{id}`");
        assert_eq!(s.node, from_env.stages[id].node, "stage `{id}` (from env)");
    }
    assert_eq!(a.state, b.state);
    assert_eq!(a.state, from_env.state);
    let out = bin()
        .arg("migrate")
        .arg(&migrated)
        .output()
        .expect("migrate");
    assert!(!out.status.success(), "a pipeline is not migrated again");
}

#[test]
fn migrate_keeps_the_environment_references_the_file_already_has() {
    let dir = tempfile::tempdir().expect("tmp");
    let seed = write(
        dir.path(),
        "eh.yaml",
        "database:\n  type: sqlite\n  dsn: ${EVENTHANDLER_DB:-events.db}\nwebhook:\n  enabled: true\n  url: \"https://hooks.example/e?key=${HOOK_KEY:-k}\"\n  headers:\n    Authorization: \"Bearer ${EVENTHANDLER_WEBHOOK_TOKEN:-change-me}\"\n    X-Team: platform\n",
    );
    let out = bin().arg("migrate").arg(&seed).output().expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    // The references written by the user stay as they are; a literal secret still moves out.
    assert!(
        yaml.contains("\"Authorization\": \"Bearer ${EVENTHANDLER_WEBHOOK_TOKEN:-change-me}\""),
        "{yaml}"
    );
    assert!(yaml.contains("${HOOK_KEY:-k}"), "{yaml}");
    assert!(
        yaml.contains("\"X-Team\": \"${EVENTFLOW_WEBHOOK_HEADER_2}\""),
        "{yaml}"
    );
    assert!(!yaml.contains("EVENTFLOW_WEBHOOK_HEADER_1"), "{yaml}");
    // With only the new file's own variable set, it validates: the kept references have their
    // defaults, as in the k8m event handler's file.
    let migrated = write(dir.path(), "pipeline.yaml", &yaml);
    let out = bin()
        .arg("validate")
        .arg(&migrated)
        .env("EVENTFLOW_WEBHOOK_HEADER_2", "platform")
        .env_remove("EVENTHANDLER_WEBHOOK_TOKEN")
        .output()
        .expect("validate");
    assert!(
        out.status.success(),
        "{yaml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
