//! The metrics of `enrich` stages.

use metrics::{Counter, Gauge, Unit, describe_counter, describe_gauge};

pub const EVENTS: &str = "eventflow_enrich_events_total";
pub const CACHED: &str = "eventflow_enrich_cached_objects";
pub const EVICTED: &str = "eventflow_enrich_evicted_total";
pub const WATCH_ERRORS: &str = "eventflow_enrich_watch_errors_total";

pub fn describe() {
    describe_counter!(
        EVENTS,
        Unit::Count,
        "Events through an enrich stage, by result: enriched, enrich_miss (its object or namespace was not in the cache after wait_for_cache), not_watched (its kind is not in `kinds`), other_cluster."
    );
    describe_gauge!(
        CACHED,
        Unit::Count,
        "Objects (with their labels, chosen annotations and controller) in an enrich stage's cache."
    );
    describe_counter!(
        EVICTED,
        Unit::Count,
        "Objects forgotten because an enrich stage's cache held more than max_objects (least recently used first)."
    );
    describe_counter!(
        WATCH_ERRORS,
        Unit::Count,
        "Failed list or watch requests of an enrich stage's metadata watches, by kind."
    );
}

pub fn events(stage: &str, result: &'static str) -> Counter {
    metrics::counter!(EVENTS, "stage" => stage.to_string(), "result" => result)
}

pub fn cached(stage: &str) -> Gauge {
    metrics::gauge!(CACHED, "stage" => stage.to_string())
}

pub fn evicted(stage: &str) -> Counter {
    metrics::counter!(EVICTED, "stage" => stage.to_string())
}

pub fn watch_errors(stage: &str, kind: &'static str) -> Counter {
    metrics::counter!(WATCH_ERRORS, "stage" => stage.to_string(), "kind" => kind)
}
