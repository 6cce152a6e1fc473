//! The metrics of `kube_events` sources.

use metrics::{Counter, Unit, describe_counter};

pub const WATCH_RESTARTS: &str = "eventflow_kube_watch_restarts_total";
pub const RELISTS: &str = "eventflow_kube_relists_total";
pub const CHECKPOINT_EVICTED: &str = "eventflow_kube_checkpoint_evicted_total";

/// Descriptions of the kube_events metrics.
pub fn describe() {
    describe_counter!(
        WATCH_RESTARTS,
        Unit::Count,
        "Watch requests started again, by reason: closed (ended normally), error, empty (closed at once with nothing)."
    );
    describe_counter!(
        RELISTS,
        Unit::Count,
        "Full lists of Events, by reason: initial, expired (410), empty_watches, error."
    );
    describe_counter!(
        CHECKPOINT_EVICTED,
        Unit::Count,
        "Event versions forgotten because a kube_events source tracked more than max_tracked."
    );
}

pub fn watch_restarts(stage: &str, reason: &'static str) -> Counter {
    metrics::counter!(WATCH_RESTARTS, "stage" => stage.to_string(), "reason" => reason)
}

pub fn relists(stage: &str, reason: &'static str) -> Counter {
    metrics::counter!(RELISTS, "stage" => stage.to_string(), "reason" => reason)
}

pub fn kube_checkpoint_evicted(stage: &str) -> Counter {
    metrics::counter!(CHECKPOINT_EVICTED, "stage" => stage.to_string())
}
