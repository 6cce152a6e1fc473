//! The runtime: stage tasks joined by bounded channels, changed stage by stage.
//!
//! - [`fanout`]: a stage's editable output.
//! - [`topology`]: applies a [`crate::config::diff::Diff`]; startup is a diff from the empty
//!   pipeline, reload is a diff between two pipelines, shutdown stops every source and waits
//!   for the rest to drain.

pub mod fanout;
pub mod topology;

pub use topology::{ApplyReport, ShutdownReport, Topology};

/// Batches an edge can hold. With batches of at most [`MAX_BATCH`] events, one edge buffers
/// at most `CHANNEL_CAPACITY * MAX_BATCH` events.
pub const CHANNEL_CAPACITY: usize = 8;

/// The largest batch a built-in source emits.
pub const MAX_BATCH: usize = 512;
