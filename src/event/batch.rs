//! What flows over every edge between two stages.

use super::Event;

/// A batch of events: the unit stages send, receive and acknowledge.
pub type Batch = Vec<Event>;
