//! The whole process's memory, to size a pod from: `eventflow run` on the default pipeline
//! (`kube_events -> filter -> sql + stdout`) against the fake API server holding N distinct
//! Events, resident memory (RSS) once every one is in the table. Benchmark-style (minutes, a
//! process boundary is the point), so ignored by a plain `cargo test`:
//!
//! `cargo test --release --test footprint -- --ignored --nocapture`
//!
//! The process gets the allocator settings (`MIMALLOC_*`) that `deploy/kubernetes/deployment.yaml`
//! gives the pod.
//!
//! The figures and the targets (< 64 MB at 100,000 tracked events, < 160 MB at 1,000,000) are in
//! BENCHMARKS.md; the deploy manifests' memory request and limit come from them.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

/// Resident memory of `pid` in MB (0 when it cannot be read).
fn rss_mb(pid: u32) -> f64 {
    proc_status_kb(Some(pid), "VmRSS").map_or(0.0, |kb| kb as f64 / 1024.0)
}

/// The allocator settings (`MIMALLOC_*`) the Deployment gives the process: the figure is the
/// pod's.
fn deployment_allocator_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/deployment.yaml"))
        .expect("deploy/kubernetes/deployment.yaml");
    let mut env = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if let Some(name) = l.strip_prefix("- name: MIMALLOC_") {
            let value = lines
                .next()
                .and_then(|v| v.strip_prefix("value: "))
                .expect("a value line after the name");
            env.push((
                format!("MIMALLOC_{name}"),
                value.trim_matches('"').to_string(),
            ));
        }
    }
    assert!(!env.is_empty(), "the Deployment sets no MIMALLOC_ variable");
    env
}

/// Runs the default pipeline over `n` Events (half Warnings, which the filter passes); returns
/// the RSS in MB once all passed ones are stored, and its peak while they were read.
fn footprint(n: usize) -> (f64, f64) {
    footprint_with(n, 0).0
}

/// [`footprint`], the table holding `prefilled` rows already (a large table: its index does not
/// fit the page cache); also returns the pipeline's stated bound (`validate --memory`) in MB.
fn footprint_with(n: usize, prefilled: usize) -> ((f64, f64), f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_rt, fake, kc) = fake_cluster(dir.path());
    fake.history_len(1000);
    let port = free_port();
    let p = write(
        dir.path(),
        "pipeline.yaml",
        &format!(
            "api:\n  listen: 127.0.0.1:{port}\nstate:\n  url: sqlite://{state}\nstages:\n  k8s:\n    type: kube_events\n    kubeconfig: {kc}\n  warnings:\n    type: filter\n    inputs: [k8s]\n    types: [Warning]\n  db:\n    type: sql\n    inputs: [warnings]\n    url: sqlite://{db}\n  out:\n    type: stdout\n    inputs: [warnings]\n",
            state = dir.path().join("state.db").display(),
            kc = kc.display(),
            db = dir.path().join("events.db").display(),
        ),
    );
    if prefilled > 0 {
        prefill(&p, &dir.path().join("events.db"), prefilled);
    }
    let bound = stated_bound_mb(&p);
    // Created after the prefill's short run, which therefore lists nothing.
    let started = Instant::now();
    for i in 0..n {
        let ty = if i % 2 == 0 { "Warning" } else { "Normal" };
        let ns = format!("team-{}", i % 50);
        fake.create(
            &ns,
            fake_apiserver::sample_event(
                &ns,
                &format!("web-{i}.17d2f9e0a1b2c3d4"),
                "BackOff",
                ty,
                "Back-off restarting failed container web in pod web-7d4b9c-x2x9q",
            ),
        )
        .expect("create");
    }
    eprintln!("{n} Events created in {:?}", started.elapsed());
    let env = deployment_allocator_env();
    eprintln!("allocator settings from the Deployment: {env:?}");
    let mut child = bin()
        .envs(env)
        .arg("run")
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn eventflow");
    let pid = child.id();
    let want = (n / 2) as f64;
    let sent = "eventflow_event_latency_seconds_count{stage=\"db\"";
    let mut peak: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(1200);
    while metric(port, sent) < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} stored within 20 min",
            metric(port, sent)
        );
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "eventflow exited early"
        );
        peak = peak.max(rss_mb(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the last checkpoint rows and batches settle.
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_mb(pid);
    eprintln!(
        "{n} Events ({} stored) in {:?}: RSS {rss:.1} MB, peak {:.1} MB",
        n / 2,
        started.elapsed(),
        peak.max(rss)
    );
    let _ = child.kill();
    let _ = child.wait();
    ((rss, peak.max(rss)), bound)
}

/// The total of `eventflow validate --memory`, in MB (10^6 bytes, as the RSS figures).
fn stated_bound_mb(p: &std::path::Path) -> f64 {
    let out = bin()
        .args(["validate", "--memory"])
        .arg(p)
        .output()
        .expect("validate");
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("total"))
        .and_then(|l| l.trim().strip_suffix(" MiB"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("a total line");
    eprintln!("stated bound:\n{text}");
    total * 1024.0 * 1024.0 / 1e6
}

/// Creates the pipeline's table with a short run and fills it with `rows` rows.
fn prefill(p: &std::path::Path, db: &std::path::Path, rows: usize) {
    let _ = Running::start(&[], p).stop_ok();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("connect");
        // Every column from a row made here; evt_key and uid unique per row.
        let sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
             INSERT INTO k8s_events (evt_key, cluster, namespace, name, type, reason, level, message, timestamp, created_at, updated_at, uid) \
             SELECT 'old/' || i, 'c', 'team-' || (i % 50), 'old-' || i, 'Warning', 'BackOff', 'warning', \
             'Back-off restarting failed container web in pod web-7d4b9c-x2x9q', datetime('now'), datetime('now'), datetime('now'), 'uid-old-' || i FROM n";
        sqlx::query(sql)
            .bind(i64::try_from(rows).expect("rows"))
            .execute(&pool)
            .await
            .expect("prefill");
        pool.close().await;
    });
    eprintln!("table prefilled with {rows} rows");
}

/// Runs [`footprint`] for `n` Events and asserts the target for it.
fn assert_footprint(n: usize, target_mb: f64) {
    let (rss, peak) = footprint(n);
    assert!(rss > 0.0, "RSS could not be read");
    assert!(
        peak < target_mb,
        "RSS {rss:.1} MB, peak {peak:.1} MB: the target is < {target_mb} MB"
    );
}

/// The worst case of the default pipeline at its defaults: more Events than `max_tracked`
/// (900,000) keeps, so the map is full and evicts, half of them stored into a table that holds
/// 1,000,000 rows already
/// (the page cache full, the index far larger than it). The peak stays within the bound
/// `validate --memory` states, and that bound within the Deployment's limit.
#[test]
#[ignore = "benchmark-style: minutes; run with --ignored (see the module's notes)"]
fn the_worst_case_stays_within_the_stated_memory_bound() {
    let ((rss, peak), bound) = footprint_with(1_000_000, 1_000_000);
    eprintln!("RSS {rss:.1} MB, peak {peak:.1} MB, stated bound {bound:.1} MB");
    assert!(peak > 0.0, "RSS could not be read");
    assert!(
        peak < bound,
        "peak {peak:.1} MB over the stated bound {bound:.1} MB"
    );
    assert!(
        bound < 256.0 * 1.048_576 * 0.75,
        "the bound {bound:.1} MB is not well under the Deployment's 256 Mi"
    );
}

#[test]
#[ignore = "benchmark-style: minutes; run with --ignored (see the module's notes)"]
fn default_pipeline_rss_at_100_000_events() {
    assert_footprint(100_000, 64.0);
}

#[test]
#[ignore = "benchmark-style: minutes; run with --ignored (see the module's notes)"]
fn default_pipeline_rss_at_1_000_000_events() {
    assert_footprint(1_000_000, 160.0);
}
