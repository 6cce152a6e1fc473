//! What every benchmark shares: events and time totalled per named measurement, and the
//! summary printed at the end (rates, then ratios of measurements taken in the same run); and
//! the binary's allocator.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

static RESULTS: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

/// Adds `events` processed in `d` to the measurement `name`.
pub fn record(name: impl Into<String>, events: u64, d: Duration) {
    if let Ok(mut r) = RESULTS.lock() {
        let e = r.entry(name.into()).or_insert((0, Duration::ZERO));
        e.0 += events;
        e.1 += d;
    }
}

/// Prints every measurement's rate, then `label: numerator / denominator` for each ratio whose
/// two measurements were taken.
pub fn summary(title: &str, ratios: &[(String, String, String)]) {
    let r = RESULTS.lock().map(|r| r.clone()).unwrap_or_default();
    if r.is_empty() {
        return;
    }
    let rate = |(n, d): (u64, Duration)| n as f64 / d.as_secs_f64();
    println!("\n== eventflow {title} benchmark summary ==");
    for (name, v) in &r {
        println!("{name:<58} {:>12.0} events/s", rate(*v));
    }
    for (label, num, den) in ratios {
        if let (Some(a), Some(b)) = (r.get(num), r.get(den)) {
            println!("ratio {label}: {:.2}", rate(*a) / rate(*b));
        }
    }
}

/// The body of a criterion `iter_custom` that measures `subject` against `baseline` in the same
/// run: each iteration runs one, then the other, so both see the same machine state; both are
/// recorded (`events` each) under their names for [`summary`], and the subject's time is
/// returned to criterion.
#[allow(dead_code)] // not every benchmark compares this way
pub fn interleaved<FS, FB, S, B>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    events: u64,
    (subject_name, mut subject): (&str, FS),
    (baseline_name, mut baseline): (&str, FB),
) -> Duration
where
    FS: FnMut() -> S,
    FB: FnMut() -> B,
    S: std::future::Future<Output = Duration>,
    B: std::future::Future<Output = Duration>,
{
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let d = subject().await;
            record(subject_name, events, d);
            record(baseline_name, events, baseline().await);
            total += d;
        }
        total
    })
}

/// A ratio for [`summary`].
pub fn ratio(label: &str, numerator: &str, denominator: &str) -> (String, String, String) {
    (label.into(), numerator.into(), denominator.into())
}

/// The `eventflow` binary's allocator, so that benchmarks measure what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
