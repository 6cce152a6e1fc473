//! The metrics of `kube_events` sources.

use metrics::{Counter, Unit, describe_counter};

pub const WATCH_RESTARTS: &str = "eventflow_kube_watch_restarts_total";
pub const RELISTS: &str = "eventflow_kube_relists_total";
pub const CHECKPOINT_EVICTED: &str = "eventflow_kube_checkpoint_evicted_total";
pub const REFUSED: &str = "eventflow_kube_refused_total";
pub const DEAD_LETTERS: &str = "eventflow_dead_letters_total";

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
    describe_counter!(
        REFUSED,
        Unit::Count,
        "Event versions a sink refused for good in this run: not checkpointed, replayed at the next start until dead_letter_after runs."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Events a source gave up on after dead_letter_after runs in which a sink refused them: kept as dead letters (eventflow dead-letter) and checkpointed, by the refusing stage."
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

pub fn refused(stage: &str) -> Counter {
    metrics::counter!(REFUSED, "stage" => stage.to_string())
}

pub fn dead_letters(stage: &str, refused_by: &str) -> Counter {
    metrics::counter!(DEAD_LETTERS, "stage" => stage.to_string(), "refused_by" => refused_by.to_string())
}
