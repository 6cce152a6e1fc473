//! The stage types, and the one table that maps a `type:` name to its config and builder.
//!
//! Adding a stage type = a module here with a config struct (serde + schemars, a doc comment
//! on every field) that implements [`crate::component::StageConfig`], and one line in
//! [`REGISTRY`]. Shared pieces of several stage types: [`batch`] (batching for sinks),
//! [`key`] (event keys), [`summarize`] (folding events into a summary).

pub mod aggregate;
pub mod alertmanager;
pub mod batch;
pub mod dedup;
pub mod elasticsearch;
pub mod enrich;
pub mod file;
pub mod filter;
pub mod incident;
pub mod key;
pub mod kube_events;
pub mod loki;
pub mod nats;
pub mod opsgenie;
pub mod otlp;
pub mod pagerduty;
pub mod rate_limit;
pub mod send;
pub mod sql;
pub mod stdout;
pub mod summarize;
pub mod webhook;

use crate::component::Registry;

/// Every stage type.
pub static REGISTRY: Registry = Registry(&[
    kube_events::TYPE,
    file::TYPE,
    enrich::TYPE,
    filter::TYPE,
    dedup::TYPE,
    aggregate::TYPE,
    rate_limit::TYPE,
    sql::TYPE,
    stdout::TYPE,
    webhook::TYPE,
    alertmanager::TYPE,
    loki::TYPE,
    nats::TYPE,
    otlp::TYPE,
    elasticsearch::TYPE,
    pagerduty::TYPE,
    opsgenie::TYPE,
]);
