//! Memory is bounded by configuration: 1,000,000 distinct keys through each keyed stage with
//! `max_keys: 100000` keep the process's resident memory under a stated bound. Each stage is
//! measured in a process of its own (this test binary started again for one ignored test), so
//! memory freed by one does not hide the growth of another.

use std::sync::Arc;

use eventflow::config::tree;
use eventflow::event::{Event, EventData, Finalizers};
use eventflow::stages::aggregate::{AggregateConfig, Aggregator};
use eventflow::stages::dedup::{Dedup, DedupConfig};
use eventflow::stages::rate_limit::{RateLimit, RateLimitConfig};

const KEYS: usize = 1_000_000;
/// The stated bounds on resident memory growth for 100,000 live keys (README, BENCHMARKS.md).
fn bound_mb(stage: &str) -> u64 {
    match stage {
        "aggregate" => 350,   // a group keeps one event's fields and its samples
        "kube_events" => 120, // 1,000,000 tracked versions (its default max_tracked)
        _ => 100,
    }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn cfg<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    tree::from_node(&tree::parse(yaml).expect("yaml")).expect("config")
}

fn data(i: usize) -> EventData {
    EventData {
        cluster: Arc::from("c"),
        uid: format!("0b6f3c52-8f0e-4d8a-9d5c-{i:012}"),
        namespace: "shop".into(),
        object_namespace: "shop".into(),
        kind: "Pod".into(),
        object_name: format!("web-7d4b9c-{i:08}"),
        reason: "BackOff".into(),
        type_: "Warning".into(),
        message: "Back-off restarting failed container web".into(),
        count: 1,
        ..EventData::default()
    }
}

fn report(stage: &str, before: u64, after: u64) {
    let grown_mb = after.saturating_sub(before) / 1024;
    let bound_of = if stage == "kube_events" {
        "max_tracked 1000000"
    } else {
        "max_keys 100000"
    };
    eprintln!(
        "{stage}: {KEYS} distinct keys, {bound_of}: RSS {} MB -> {} MB (+{grown_mb} MB)",
        before / 1024,
        after / 1024
    );
    let bound = bound_mb(stage);
    assert!(
        grown_mb < bound,
        "{stage} grew {grown_mb} MB (bound {bound} MB)"
    );
}

#[test]
fn keyed_stages_stay_bounded_with_a_million_keys() {
    let children: Vec<_> = [
        "child_dedup",
        "child_aggregate",
        "child_rate_limit",
        "child_kube_seen",
    ]
    .iter()
    .map(|name| {
        let exe = std::env::current_exe().expect("test binary");
        let child = std::process::Command::new(exe)
            .args([
                "--exact",
                name,
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        (name, child)
    })
    .collect();
    for (name, child) in children {
        let out = child.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stderr);
        eprint!(
            "{}",
            text.lines()
                .filter(|l| l.contains("RSS") || l.contains("grew"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        assert!(
            out.status.success(),
            "{name} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(text.contains("RSS"), "{name} did not run");
    }
}

#[tokio::test(start_paused = true)]
#[ignore = "run by keyed_stages_stay_bounded_with_a_million_keys in its own process"]
async fn child_dedup() {
    let before = rss_kb();
    let mut d = Dedup::new(
        &cfg::<DedupConfig>("max_keys: 100000\nwindow: 1h"),
        "d",
        "dedup",
    );
    let now = tokio::time::Instant::now();
    for i in 0..KEYS {
        assert!(d.admit(&data(i), now), "a distinct key always passes");
    }
    assert!(d.len() <= 100_000, "{} keys kept", d.len());
    report("dedup", before, rss_kb());
}

#[tokio::test(start_paused = true)]
#[ignore = "run by keyed_stages_stay_bounded_with_a_million_keys in its own process"]
async fn child_aggregate() {
    let before = rss_kb();
    let mut a = Aggregator::new(
        &cfg::<AggregateConfig>("max_keys: 100000\nwindow: 1h"),
        "a",
        "aggregate",
    );
    let mut emitted = 0usize;
    for chunk in 0..KEYS / 1000 {
        let mut out = Vec::new();
        let batch = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| Event::new(data(i), Finalizers::None))
            .collect();
        a.ingest(batch, tokio::time::Instant::now(), &mut out);
        emitted += out.len();
    }
    assert_eq!(a.open_groups(), 100_000);
    assert_eq!(
        emitted,
        KEYS - 100_000,
        "groups over max_keys were closed early, not lost"
    );
    report("aggregate", before, rss_kb());
}

#[tokio::test(start_paused = true)]
#[ignore = "run by keyed_stages_stay_bounded_with_a_million_keys in its own process"]
async fn child_rate_limit() {
    let before = rss_kb();
    let mut r = RateLimit::new(
        &cfg::<RateLimitConfig>("key: [uid]\nlimit: 1\nper: 1m\nmax_keys: 100000"),
        "r",
        "rate_limit",
    )
    .expect("limiter");
    for chunk in 0..KEYS / 1000 {
        let mut out = Vec::new();
        let batch = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| Event::new(data(i), Finalizers::None))
            .collect();
        r.process(batch, &mut out);
        assert_eq!(out.len(), 1000);
        if chunk % 100 == 99 {
            r.housekeeping(); // what the stage's timer does every few seconds
        }
    }
    assert!(r.keys() <= 100_000, "{} keys", r.keys());
    report("rate_limit", before, rss_kb());
}

#[test]
#[ignore = "run by keyed_stages_stay_bounded_with_a_million_keys in its own process"]
fn child_kube_seen() {
    use eventflow::stages::kube_events::Seen;
    let before = rss_kb();
    // What the kube_events source remembers per Event version (uid -> resourceVersion), for
    // 1,000,000 distinct Events, then 200,000 more past a bound of 1,000,000.
    let mut seen = Seen::new(1_000_000);
    let mut evicted = 0;
    for i in 0..KEYS + 200_000 {
        let uid = format!("0b6f3c52-8f0e-4d8a-9d5c-{i:012x}");
        evicted += seen
            .admit(&uid, &(48_000_000 + i).to_string(), i as i64, 0, 1)
            .map_or(0, |gone| gone.len());
    }
    assert!(seen.len() <= 1_000_000, "{} tracked", seen.len());
    assert_eq!(seen.len() + evicted, KEYS + 200_000);
    report("kube_events", before, rss_kb());
}
