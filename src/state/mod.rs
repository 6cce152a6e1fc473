//! The state database: where eventflow keeps what must survive a restart (the `kube_events`
//! checkpoint, the durable webhook's queue and dead letters), and the database layer every
//! stage that writes to SQL uses (connections, backends, retries).

pub mod db;
pub mod events;

use schemars::JsonSchema;
use serde::Deserialize;

/// Where checkpoints and durable queues are kept.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `sqlite://path.db`, `postgres://...` or `mysql://...`. A relative SQLite path is
    /// relative to the pipeline file's directory; when `state:` is absent, the state is in
    /// `eventflow-state.db` in the working directory.
    #[serde(
        default = "default_state_url",
        deserialize_with = "crate::types::db_url"
    )]
    pub url: String,
}

fn default_state_url() -> String {
    "sqlite://eventflow-state.db".to_string()
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            url: default_state_url(),
        }
    }
}
