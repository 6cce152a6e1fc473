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

/// The request metrics of one webhook stage, looked up once.
pub struct WebhookMetrics {
    /// Requests by status class, in [`WebhookMetrics::CLASSES`] order.
    requests: Vec<Counter>,
    seconds: metrics::Histogram,
    retries: Counter,
}

impl WebhookMetrics {
    pub const CLASSES: [&'static str; 6] =
        ["2xx", "3xx", "4xx", "5xx", "timeout", "connection_error"];

    pub fn new(stage: &str) -> WebhookMetrics {
        WebhookMetrics {
            requests: Self::CLASSES
                .iter()
                .map(|c| metrics::counter!(WEBHOOK_REQUESTS, "stage" => stage.to_string(), "status_class" => *c))
                .collect(),
            seconds: metrics::histogram!(WEBHOOK_SECONDS, "stage" => stage.to_string()),
            retries: metrics::counter!(WEBHOOK_RETRIES, "stage" => stage.to_string()),
        }
    }

    /// One request that ended in `class` (one of [`WebhookMetrics::CLASSES`]).
    pub fn request(&self, class: &str, seconds: f64) {
        if let Some(i) = Self::CLASSES.iter().position(|c| *c == class) {
            self.requests[i].increment(1);
        }
        self.seconds.record(seconds);
    }

    pub fn retry(&self) {
        self.retries.increment(1);
    }
}

/// Events in a durable webhook queue, not yet delivered.
pub fn webhook_queued(stage: &str) -> Gauge {
    metrics::gauge!(WEBHOOK_QUEUED, "stage" => stage.to_string())
}

/// Events moved to the dead-letter table.
pub fn webhook_dead_lettered(stage: &str) -> Counter {
    metrics::counter!(WEBHOOK_DEAD_LETTERS, "stage" => stage.to_string())
}
