//! What `aggregate` and `rate_limit` (with `when_limited: summarize`) share: folding events
//! into one summary. The folded events are done (their copies discarded); their batches finish
//! with the summary event, which carries their finalizers.

use chrono::{DateTime, Utc};

use std::sync::Arc;

use crate::event::{ApiVersion, Event, EventData, Labels, Merged};

/// An event's data in one allocation for its texts: what a pending summary keeps of its first
/// event (an [`EventData`] is about 500 bytes of fields plus an allocation per text; this is
/// the texts' length plus about 150 bytes).
#[derive(Debug)]
pub struct Packed {
    /// uid, name, namespace, resource_version, type, reason, message, kind, object_name,
    /// object_namespace, object_uid, field_path, source, host, owner_kind, owner_name.
    text: Box<str>,
    ends: [u32; 16],
    cluster: Arc<str>,
    count: i64,
    first_seen: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    api_version: ApiVersion,
    raw: Option<Box<str>>,
    labels: Option<Box<[Option<Arc<Labels>>; 3]>>,
}

impl Packed {
    /// `e` without its summary; with its raw object only if `keep_raw`.
    pub fn new(e: &EventData, keep_raw: bool) -> Packed {
        let texts: [&str; 16] = [
            &e.uid,
            &e.name,
            &e.namespace,
            &e.resource_version,
            &e.type_,
            &e.reason,
            &e.message,
            &e.kind,
            &e.object_name,
            &e.object_namespace,
            &e.object_uid,
            &e.field_path,
            &e.source,
            &e.host,
            &e.owner_kind,
            &e.owner_name,
        ];
        let mut text = String::with_capacity(texts.iter().map(|t| t.len()).sum());
        let mut ends = [0u32; 16];
        for (end, t) in ends.iter_mut().zip(texts) {
            text.push_str(t);
            // Texts from the API server are far shorter than 4 GiB; a longer one would read
            // back cut, never out of bounds.
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        let labels = [
            e.object_labels.clone(),
            e.object_annotations.clone(),
            e.namespace_labels.clone(),
        ];
        Packed {
            text: text.into_boxed_str(),
            ends,
            cluster: e.cluster.clone(),
            count: e.count,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            api_version: e.api_version,
            raw: if keep_raw { e.raw.clone() } else { None },
            labels: labels.iter().any(Option::is_some).then(|| Box::new(labels)),
        }
    }

    /// The `i`-th text.
    fn text(&self, i: usize) -> String {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends[i] as usize;
        self.text.get(start..end).unwrap_or_default().to_string()
    }

    /// The event's data again.
    pub fn unpack(&self) -> EventData {
        let [object_labels, object_annotations, namespace_labels] =
            self.labels.as_deref().cloned().unwrap_or_default();
        EventData {
            cluster: self.cluster.clone(),
            uid: self.text(0),
            name: self.text(1),
            namespace: self.text(2),
            resource_version: self.text(3),
            type_: self.text(4),
            reason: self.text(5),
            message: self.text(6),
            kind: self.text(7),
            object_name: self.text(8),
            object_namespace: self.text(9),
            object_uid: self.text(10),
            field_path: self.text(11),
            source: self.text(12),
            host: self.text(13),
            owner_kind: self.text(14),
            owner_name: self.text(15),
            count: self.count,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            api_version: self.api_version,
            summary: None,
            raw: self.raw.clone(),
            object_labels,
            object_annotations,
            namespace_labels,
        }
    }

    /// The message.
    pub fn message(&self) -> String {
        self.text(6)
    }

    /// The resourceVersion.
    pub fn resource_version(&self) -> String {
        self.text(3)
    }
}

/// What the folded events add up to.
#[derive(Debug)]
pub struct Folded {
    /// The first event (without its summary): the template of the summary event.
    pub first: Packed,
    /// How many events were folded.
    pub events: u64,
    /// The occurrences they stand for (how each stage counts them is its own).
    pub occurrences: i64,
    /// The earliest `first_seen` and the latest `last_seen` of them.
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The last one's resourceVersion and message, once an event after the first was folded
    /// (until then they are the first's: [`Folded::last_rv`], [`Folded::last_message`]).
    later_rv: Option<String>,
    later_message: Option<String>,
    /// Up to `max_samples` distinct messages, in arrival order.
    pub samples: Vec<String>,
}

impl Folded {
    /// The last folded event's resourceVersion.
    pub fn last_rv(&self) -> String {
        self.later_rv
            .clone()
            .unwrap_or_else(|| self.first.resource_version())
    }

    /// The last folded event's message.
    pub fn last_message(&self) -> String {
        self.later_message
            .clone()
            .unwrap_or_else(|| self.first.message())
    }
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
        let first = Packed::new(e.data(), keep_raw);
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
            later_rv: None,
            later_message: None,
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
        match &mut f.later_rv {
            Some(rv) => rv.clone_from(&e.resource_version),
            None => f.later_rv = Some(e.resource_version.clone()),
        }
        if f.samples.len() < self.max_samples && !f.samples.contains(&e.message) {
            f.samples.push(e.message.clone());
        }
        match &mut f.later_message {
            Some(m) => m.clone_from(&e.message),
            None => f.later_message = Some(e.message.clone()),
        }
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
