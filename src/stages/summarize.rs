//! What `aggregate` and `rate_limit` (with `when_limited: summarize`) share: folding events
//! into one summary. The folded events are done (their copies discarded); their batches finish
//! with the summary event, which carries their finalizers.

use chrono::{DateTime, Utc};

use crate::event::{Event, EventData, Merged};

/// What the folded events add up to.
#[derive(Debug)]
pub struct Folded {
    /// The first event (without its summary): the template of the summary event.
    pub first: EventData,
    /// How many events were folded.
    pub events: u64,
    /// The occurrences they stand for (how each stage counts them is its own).
    pub occurrences: i64,
    /// The earliest `first_seen` and the latest `last_seen` of them.
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The last one's resourceVersion and message.
    pub last_rv: String,
    pub last_message: String,
    /// Up to `max_samples` distinct messages, in arrival order.
    pub samples: Vec<String>,
}

/// Events folded so far into one pending summary.
pub struct Accumulator {
    folded: Folded,
    max_samples: usize,
    finalizers: Merged,
}

impl Accumulator {
    /// Starts a summary with `e`. `keep_raw`: whether the summary keeps the first event's raw
    /// object (a summary is not the object as received; dropping it keeps a group small).
    pub fn new(e: Event, occurrences: i64, max_samples: usize, keep_raw: bool) -> Accumulator {
        let mut first = e.data().clone();
        first.summary = None;
        if !keep_raw {
            first.raw = None;
        }
        let samples = if max_samples > 0 {
            vec![e.message.clone()]
        } else {
            vec![]
        };
        let mut finalizers = Merged::default();
        let folded = Folded {
            events: 1,
            occurrences,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            last_rv: e.resource_version.clone(),
            last_message: e.message.clone(),
            samples,
            first,
        };
        finalizers.add(e);
        Accumulator {
            folded,
            max_samples,
            finalizers,
        }
    }

    /// Folds `e` in.
    pub fn add(&mut self, e: Event, occurrences: i64) {
        let f = &mut self.folded;
        f.events += 1;
        f.occurrences += occurrences;
        f.first_seen = match (f.first_seen, e.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        f.last_seen = f.last_seen.max(e.last_seen);
        f.last_rv.clone_from(&e.resource_version);
        if f.samples.len() < self.max_samples && !f.samples.contains(&e.message) {
            f.samples.push(e.message.clone());
        }
        f.last_message.clone_from(&e.message);
        self.finalizers.add(e);
    }

    /// What has been folded so far.
    pub fn folded(&self) -> &Folded {
        &self.folded
    }

    /// The summary event: `make` turns what was folded into its data; it carries the
    /// finalizers of every folded event.
    pub fn finish(self, make: impl FnOnce(Folded) -> EventData) -> Event {
        Event::new(make(self.folded), self.finalizers.into_finalizers())
    }
}
