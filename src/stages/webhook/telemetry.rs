//! The metrics of `webhook` sinks.

use metrics::{Counter, Gauge, Unit, describe_counter, describe_gauge};

pub const WEBHOOK_REQUESTS: &str = "eventflow_webhook_requests_total";
pub const WEBHOOK_SECONDS: &str = "eventflow_webhook_request_seconds";
pub const WEBHOOK_RETRIES: &str = "eventflow_webhook_retries_total";
pub const WEBHOOK_QUEUED: &str = "eventflow_webhook_queued_events";
pub const WEBHOOK_DEAD_LETTERS: &str = "eventflow_webhook_dead_lettered_events_total";

/// Descriptions of the webhook metrics.
pub fn describe() {
    describe_counter!(
        WEBHOOK_REQUESTS,
        Unit::Count,
        "Webhook requests by outcome: 2xx, 3xx, 4xx, 5xx, timeout, connection_error."
    );
    metrics::describe_histogram!(
        WEBHOOK_SECONDS,
        Unit::Seconds,
        "Webhook request latency (until the answer's headers)."
    );
    describe_counter!(
        WEBHOOK_RETRIES,
        Unit::Count,
        "Webhook requests retried after a retryable failure."
    );
    describe_gauge!(
        WEBHOOK_QUEUED,
        Unit::Count,
        "Events in a durable webhook queue (state database), accepted and not yet delivered."
    );
    describe_counter!(
        WEBHOOK_DEAD_LETTERS,
        Unit::Count,
        "Events a durable webhook moved to its dead-letter table (see `eventflow dead-letter`)."
    );
}

/// The names of the request metrics.
pub const NAMES: crate::stages::send::MetricNames = crate::stages::send::MetricNames {
    requests: WEBHOOK_REQUESTS,
    seconds: WEBHOOK_SECONDS,
    retries: WEBHOOK_RETRIES,
};

/// Events in a durable webhook queue, not yet delivered.
pub fn webhook_queued(stage: &str) -> Gauge {
    metrics::gauge!(WEBHOOK_QUEUED, "stage" => stage.to_string())
}

/// Events moved to the dead-letter table.
pub fn webhook_dead_lettered(stage: &str) -> Counter {
    metrics::counter!(WEBHOOK_DEAD_LETTERS, "stage" => stage.to_string())
}
