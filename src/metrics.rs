//! The metrics every stage and the engine share: names, descriptions and label sets. Metrics
//! of one stage type live with it and are described through its `StageType::describe`. Every
//! metric is described once so that the Prometheus output has HELP lines; label values are
//! bounded (stage ids, types, reasons).

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
        "Events a stage passed on: for sources and transforms, sent to the stages after it; for sinks, delivered to the destination (written and committed, printed, or accepted by the server)."
    );
    describe_counter!(DISCARDED, Unit::Count, "Events a stage dropped, by reason.");
    describe_counter!(STAGE_ERRORS, Unit::Count, "Errors in a stage, by kind.");
    describe_gauge!(
        QUEUE,
        Unit::Count,
        "Events waiting in a stage's input queue."
    );
    describe_counter!(
        KEY_DISCARDED,
        Unit::Count,
        "Events dropped per key, for stages with per_key_metrics on."
    );
    metrics::describe_histogram!(
        PROCESSING,
        Unit::Seconds,
        "Time a stage spent processing one batch."
    );
    metrics::describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "End-to-end latency: from the moment a source received an event to the moment this sink committed it."
    );
    metrics::describe_histogram!(
        AGE,
        Unit::Seconds,
        "The age of an event when this sink committed it, from its own last-seen time (lastTimestamp, series.lastObservedTime or eventTime, set by the API server's clients): includes the API server's and the watch's delay."
    );
    describe_gauge!(
        LAST_EVENT,
        Unit::Seconds,
        "Unix time at which a source last received an event."
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

pub const RELOADS: &str = "eventflow_reloads_total";
pub const RELOAD_OK: &str = "eventflow_config_last_reload_successful";
pub const RELOAD_OK_TIME: &str = "eventflow_config_last_reload_success_timestamp_seconds";
pub const RELOAD_SECONDS: &str = "eventflow_reload_duration_seconds";
pub const READY: &str = "eventflow_ready";

/// Buckets for every histogram (seconds): 100 µs to 60 s.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Descriptions of the engine-level metrics (reload, process).
pub fn describe_engine() {
    use metrics::describe_histogram;
    describe_counter!(
        RELOADS,
        Unit::Count,
        "Pipeline reloads by outcome: applied, unchanged, rejected, rolled_back."
    );
    describe_gauge!(
        RELOAD_OK,
        "1 if the last reload was applied (or nothing changed), 0 if it was rejected or rolled back."
    );
    describe_gauge!(
        RELOAD_OK_TIME,
        Unit::Seconds,
        "Unix time of the last successful reload (or of the start)."
    );
    describe_histogram!(
        RELOAD_SECONDS,
        Unit::Seconds,
        "Time from a reload trigger to the new pipeline running."
    );
    describe_gauge!(
        READY,
        "1 while /readyz answers 200 (the pipeline runs and no source or sink has been failing past its threshold), else 0; set when /metrics is scraped."
    );
    describe_gauge!(
        LEADER,
        "With leader_election: 1 while this replica leads (runs the sources and delivers durable webhook queues), 0 on a standby."
    );
    describe_counter!(
        LEADER_TRANSITIONS,
        Unit::Count,
        "With leader_election: times this replica started or stopped leading."
    );
    process_collector().describe();
}

/// The standard Prometheus process metrics (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, `process_threads`,
/// `process_start_time_seconds`, `process_virtual_memory_bytes`, ...), as the Go client has them.
/// (A collector only holds the metric names: made where it is used, not kept.)
fn process_collector() -> metrics_process::Collector {
    metrics_process::Collector::default()
}

pub const LEADER: &str = "eventflow_leader";
pub const LEADER_TRANSITIONS: &str = "eventflow_leader_transitions_total";

/// Records whether this replica leads (with `leader_election`).
pub fn leader(leading: bool) {
    metrics::gauge!(LEADER).set(if leading { 1.0 } else { 0.0 });
}

/// Counts a change of this replica's role (standby to leader or back).
pub fn leader_transition() {
    metrics::counter!(LEADER_TRANSITIONS).increment(1);
}

/// Records whether the process is ready (what `/readyz` answers).
pub fn ready(ready: bool) {
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Records a reload's outcome.
pub fn reload(outcome: &'static str, seconds: f64) {
    metrics::counter!(RELOADS, "outcome" => outcome).increment(1);
    let ok = matches!(outcome, "applied" | "unchanged");
    metrics::gauge!(RELOAD_OK).set(if ok { 1.0 } else { 0.0 });
    if ok {
        metrics::gauge!(RELOAD_OK_TIME).set(unix_now());
        metrics::histogram!(RELOAD_SECONDS).record(seconds);
    }
}

/// Records the pipeline loaded at start: the "last reload" gauges say it is good, but the start
/// is not counted as a reload (the counter's `applied` series starts at 0).
pub fn started() {
    metrics::counter!(RELOADS, "outcome" => "applied").increment(0);
    metrics::gauge!(RELOAD_OK).set(1.0);
    metrics::gauge!(RELOAD_OK_TIME).set(unix_now());
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reads the process metrics (on Linux, macOS, Windows and FreeBSD); call before rendering.
pub fn update_process() {
    process_collector().collect();
}

/// The exposition text of `handle`. `process_cpu_seconds_total` is recorded as a float gauge
/// (a `metrics` counter is an integer, so 0.46 s would read 0); it only ever grows, so it is
/// declared the counter Prometheus expects.
pub fn render(handle: &metrics_exporter_prometheus::PrometheusHandle) -> String {
    handle.render().replacen(
        "# TYPE process_cpu_seconds_total gauge",
        "# TYPE process_cpu_seconds_total counter",
        1,
    )
}

pub const PROCESSING: &str = "eventflow_stage_processing_seconds";

pub fn processing(stage: &str, ty: &'static str) -> metrics::Histogram {
    metrics::histogram!(PROCESSING, "stage" => stage.to_string(), "type" => ty)
}

pub const LAST_EVENT: &str = "eventflow_source_last_event_timestamp_seconds";

pub fn last_event_time(stage: &str) -> Gauge {
    metrics::gauge!(LAST_EVENT, "stage" => stage.to_string())
}

pub const LATENCY: &str = "eventflow_event_latency_seconds";
pub const AGE: &str = "eventflow_event_age_seconds";

/// The buckets of [`AGE`]: it includes the API server's and the watch's delay, and a
/// repeating event's earlier occurrences, so it reaches further than [`BUCKETS`].
pub const AGE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// What a sink records for each event it delivered: one more [`SENT`] (for a sink, "sent"
/// means delivered: every sink type counts it here, so it means the same for all), the
/// end-to-end latency from the source's receipt ([`LATENCY`]) and the event's age by the API
/// server's own clock ([`AGE`]).
#[derive(Clone)]
pub struct Delivered {
    sent: Counter,
    latency: metrics::Histogram,
    age: metrics::Histogram,
}

impl Delivered {
    /// One delivered event, that entered the pipeline `in_pipeline` ago.
    pub fn record(&self, e: &crate::event::EventData, in_pipeline: std::time::Duration) {
        self.record_seen(e.last_seen.or(e.first_seen), in_pipeline);
    }

    /// One delivered event, last seen by Kubernetes at `seen`, that entered the pipeline
    /// `in_pipeline` ago.
    pub fn record_seen(
        &self,
        seen: Option<chrono::DateTime<chrono::Utc>>,
        in_pipeline: std::time::Duration,
    ) {
        self.sent.increment(1);
        self.latency.record(in_pipeline.as_secs_f64());
        if let Some(seen) = seen {
            let age = chrono::Utc::now() - seen;
            self.age
                .record(age.num_milliseconds().max(0) as f64 / 1000.0);
        }
    }

    /// [`Delivered::record`] for an event handle.
    pub fn event(&self, e: &crate::event::Event) {
        self.record(e, e.born().elapsed());
    }
}

/// The delivered-events counter and the latency and age histograms of a sink.
pub fn latency(stage: &str, ty: &'static str) -> Delivered {
    Delivered {
        sent: sent(stage, ty),
        latency: metrics::histogram!(LATENCY, "stage" => stage.to_string(), "type" => ty),
        age: metrics::histogram!(AGE, "stage" => stage.to_string(), "type" => ty),
    }
}
