//! eventflow turns Kubernetes Events into actions through a declarative pipeline.
//!
//! A map of the crate, top to bottom; every module imports only modules below it:
//!
//! ```text
//! main.rs (CLI) -> run -> engine -> component + config -> event
//!                     \-> api     stages/<type> -> component, state, event
//! ```
//!
//! - [`authoring`]: `eventflow explain` and `eventflow test` (no network, no database).
//! - [`run`]: what `eventflow run` does: start, serve the API, reload, drain on signals.
//! - [`api`]: `/metrics`, `/healthz`, `/readyz`, `POST /-/reload`.
//! - [`reload`]: reload triggers (file watch, SIGHUP, API) and outcomes.
//! - [`summary`]: what a finite run delivered, sink by sink (from its counters).
//! - [`engine`]: the running topology: builds stages, wires bounded channels, applies a diff
//!   (startup is a diff from the empty pipeline), shuts down; owns the pipeline's health
//!   registry and what stage instances share across reloads.
//! - [`stages`]: one module per stage type and the [`stages::REGISTRY`] that names them.
//! - [`config`]: pipeline files: validation (with the registry it is handed), the stage diff,
//!   the graph checks, the JSON Schema, the k8m event handler's format. Pure data.
//! - [`component`]: what a stage is to the engine: the stage traits, their contexts (input,
//!   fan-out, shutdown, metrics), `StageConfig` (validate, build), `StageType`, `Registry`.
//! - [`state`]: the state database (checkpoints, queues) and the database layer every SQL
//!   writer uses; the events table the `sql` sink and `mark_rows` share.
//! - [`event`]: the normalized event, its acknowledgement ([`event::ack`]) and [`Batch`].
//! - Leaves: [`yaml`] (YAML with positions, `${ENV}`), [`types`] (durations, regexes, globs,
//!   `Invalid`), [`backoff`] (retry delays), [`kube_client`] (the API server connection),
//!   [`leader`] (leader election over a Lease), [`health`] (readiness), [`metrics`] (shared metric names), [`redact`] (secrets out of
//!   URLs).
//!
//! [`Batch`]: event::Batch

pub mod api;
pub mod authoring;
pub mod backoff;
pub mod budget;
pub mod component;
pub mod config;
pub mod engine;
pub mod event;
pub mod health;
pub mod hex;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod redact;
pub mod reload;
pub mod run;
pub mod stages;
pub mod state;
pub mod summary;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod types;

/// Reads and validates a pipeline file with every built-in stage type.
pub fn load_file(path: &std::path::Path) -> Result<config::Pipeline, config::ConfigError> {
    config::load_file(path, stages::REGISTRY)
}

/// Parses and validates pipeline text with every built-in stage type (`file` names it in
/// messages; `env` looks up `${NAME}` references).
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<config::Pipeline, config::ConfigError> {
    config::load_str(text, file, env, stages::REGISTRY)
}

/// The JSON Schema of pipeline files with every built-in stage type.
pub fn pipeline_schema() -> String {
    config::schema::pipeline_schema(stages::REGISTRY)
}

/// The reference of every field of a pipeline file, as Markdown (`docs/reference.md`).
pub fn pipeline_reference() -> String {
    config::reference::markdown(stages::REGISTRY)
}
pub mod yaml;
