//! eventflow turns Kubernetes Events into actions through a declarative pipeline.
//!
//! A map of the crate:
//! - [`config`]: pipeline files: YAML with positions, `${ENV}`, validation, the stage diff,
//!   the JSON Schema. Pure data.
//! - [`event`]: the normalized event and how core/v1 and events.k8s.io/v1 JSON become one.
//! - [`engine`]: stage tasks, bounded channels, fan-out, acknowledgements, apply/shutdown.
//! - [`stages`]: the stage traits and one module per stage type.
//! - [`metrics`]: metric names and descriptions.
//! - [`run`]: what `eventflow run` does: start, serve the API, reload, drain on signals.
//! - [`reload`]: reload triggers (file watch, SIGHUP, API) and outcomes.
//! - [`health`]: source readiness for `/readyz`.
//! - [`redact`]: secrets out of URLs before they are logged, stored or printed.
//! - [`api`]: `/metrics`, `/healthz`, `/readyz`, `POST /-/reload`.

pub mod api;
pub mod backoff;
pub mod component;
pub mod config;
pub mod engine;
pub mod event;
pub mod health;
pub mod metrics;
pub mod redact;
pub mod reload;
pub mod run;
pub mod stages;
pub mod state;
#[doc(hidden)]
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
pub mod yaml;
