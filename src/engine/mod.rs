//! The runtime: stage tasks joined by bounded channels, changed stage by stage.
//!
//! - [`topology`]: applies a [`crate::config::diff::Diff`]; startup is a diff from the empty
//!   pipeline, reload is a diff between two pipelines, shutdown stops every source and waits
//!   for the rest to drain.

pub mod topology;

pub use topology::{ApplyReport, ShutdownReport, Topology};

pub use crate::component::{CHANNEL_CAPACITY, MAX_BATCH};
