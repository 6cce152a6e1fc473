//! Metric names, descriptions and label sets. Every metric is described here once so that the
//! Prometheus output has HELP lines; label values are bounded (stage ids, types, reasons).

use metrics::{Counter, Gauge, Unit, describe_counter, describe_gauge};

pub const RECEIVED: &str = "eventflow_events_received_total";
pub const SENT: &str = "eventflow_events_sent_total";
pub const DISCARDED: &str = "eventflow_events_discarded_total";
pub const STAGE_ERRORS: &str = "eventflow_stage_errors_total";
pub const QUEUE: &str = "eventflow_stage_queue_events";
pub const KEY_DISCARDED: &str = "eventflow_key_discarded_total";

/// Registers descriptions; call once after installing a recorder.
pub fn describe() {
    describe_counter!(
        RECEIVED,
        Unit::Count,
        "Events a stage received from its inputs (or read, for sources)."
    );
    describe_counter!(
        SENT,
        Unit::Count,
        "Events a stage sent to its downstream stages."
    );
    describe_counter!(DISCARDED, Unit::Count, "Events a stage dropped, by reason.");
    describe_counter!(STAGE_ERRORS, Unit::Count, "Errors in a stage, by kind.");
    describe_gauge!(
        QUEUE,
        Unit::Count,
        "Batches waiting in a stage's input queue."
    );
}

pub fn received(stage: &str, ty: &'static str) -> Counter {
    metrics::counter!(RECEIVED, "stage" => stage.to_string(), "type" => ty)
}

pub fn sent(stage: &str, ty: &'static str) -> Counter {
    metrics::counter!(SENT, "stage" => stage.to_string(), "type" => ty)
}

pub fn discarded(stage: &str, ty: &'static str, reason: &'static str) -> Counter {
    metrics::counter!(DISCARDED, "stage" => stage.to_string(), "type" => ty, "reason" => reason)
}

pub fn stage_errors(stage: &str, ty: &'static str, error: &'static str) -> Counter {
    metrics::counter!(STAGE_ERRORS, "stage" => stage.to_string(), "type" => ty, "error" => error)
}

pub fn queue_depth(stage: &str, ty: &'static str) -> Gauge {
    metrics::gauge!(QUEUE, "stage" => stage.to_string(), "type" => ty)
}

pub fn key_discarded(stage: &str, key: &str) -> Counter {
    metrics::counter!(KEY_DISCARDED, "stage" => stage.to_string(), "key" => key.to_string())
}

pub const RATE_LIMIT_RESETS: &str = "eventflow_rate_limit_resets_total";

pub fn rate_limit_resets(stage: &str) -> Counter {
    metrics::counter!(RATE_LIMIT_RESETS, "stage" => stage.to_string())
}
