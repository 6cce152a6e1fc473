//! What `aggregate` and `rate_limit` (with `when_limited: summarize`) share: folding events
//! into one summary. The folded events are done (their copies discarded); their batches finish
//! with the summary event, which carries their finalizers.

use chrono::{DateTime, Utc};

use std::sync::Arc;

use crate::event::{ApiVersion, Event, EventData, Labels, Merged};

/// An event's data in one allocation for its texts: what a pending summary keeps of its first
/// event (an [`EventData`] is about 500 bytes of fields plus an allocation per text; this is
/// the texts' length plus 128 bytes).
#[derive(Debug)]
pub struct Packed {
    /// uid, name, namespace, resource_version, type, reason, message, kind, object_name,
    /// object_namespace, object_uid, field_path, source, host, owner_kind, owner_name.
    text: Box<str>,
    ends: [u32; 16],
    cluster: Arc<str>,
    count: i64,
    first_seen: Option<DateTime<Utc>>,
    api_version: ApiVersion,
    /// The raw object and the labels, when there are any (most groups have neither).
    extra: Option<Box<Extra>>,
}

/// What few packed events carry.
#[derive(Debug, Default, Clone)]
struct Extra {
    raw: Option<Box<str>>,
    /// Object labels, object annotations, namespace labels.
    labels: [Option<Arc<Labels>>; 3],
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
        let extra = Extra {
            raw: if keep_raw { e.raw.clone() } else { None },
            labels: [
                e.object_labels.clone(),
                e.object_annotations.clone(),
                e.namespace_labels.clone(),
            ],
        };
        let has_extra = extra.raw.is_some() || extra.labels.iter().any(Option::is_some);
        Packed {
            text: text.into_boxed_str(),
            ends,
            cluster: e.cluster.clone(),
            count: e.count,
            first_seen: e.first_seen,
            api_version: e.api_version,
            extra: has_extra.then(|| Box::new(extra)),
        }
    }

    /// The `i`-th text.
    fn text(&self, i: usize) -> String {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends[i] as usize;
        self.text.get(start..end).unwrap_or_default().to_string()
    }

    /// The event's data again, but for `last_seen` (not kept: a summary sets its own).
    pub fn unpack(&self) -> EventData {
        let Extra {
            raw,
            labels: [object_labels, object_annotations, namespace_labels],
        } = self.extra.as_deref().cloned().unwrap_or_default();
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
            last_seen: None,
            api_version: self.api_version,
            summary: None,
            raw,
            object_labels,
            object_annotations,
            namespace_labels,
        }
    }

    /// The message.
    pub fn message(&self) -> String {
        self.text(6)
    }

    /// Whether the message is `m` (without copying it).
    pub fn message_is(&self, m: &str) -> bool {
        self.text.get(self.ends[5] as usize..self.ends[6] as usize) == Some(m)
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
    /// (until then they are the first's: [`Folded::last_rv`], [`Folded::last_message`]); boxed,
    /// as most groups of a busy cluster's distinct objects never see a second event.
    later: Option<Box<(String, String)>>,
    /// Up to `max_samples` distinct messages, in arrival order. While folding, the first
    /// event's message is not among them (it is in `first`); [`Accumulator::finish`] puts it in
    /// front.
    pub samples: Vec<String>,
}

impl Folded {
    /// The last folded event's resourceVersion.
    pub fn last_rv(&self) -> String {
        self.later
            .as_ref()
            .map_or_else(|| self.first.resource_version(), |l| l.0.clone())
    }

    /// The last folded event's message.
    pub fn last_message(&self) -> String {
        self.later
            .as_ref()
            .map_or_else(|| self.first.message(), |l| l.1.clone())
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
        let mut finalizers = Merged::default();
        let folded = Folded {
            events: 1,
            occurrences,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            later: None,
            samples: Vec::new(),
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
        // The first event's message is sample 0 when there are samples at all.
        let kept = usize::from(self.max_samples > 0) + f.samples.len();
        if kept < self.max_samples
            && !f.first.message_is(&e.message)
            && !f.samples.contains(&e.message)
        {
            f.samples.push(e.message.clone());
        }
        match &mut f.later {
            Some(l) => {
                l.0.clone_from(&e.resource_version);
                l.1.clone_from(&e.message);
            }
            None => {
                f.later = Some(Box::new((e.resource_version.clone(), e.message.clone())));
            }
        }
        self.finalizers.add(e);
    }

    /// The summary event: `make` turns what was folded into its data; it carries the
    /// finalizers of every folded event.
    pub fn finish(mut self, make: impl FnOnce(Folded) -> EventData) -> Event {
        if self.max_samples > 0 {
            self.folded.samples.insert(0, self.folded.first.message());
        }
        Event::new(make(self.folded), self.finalizers.into_finalizers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Finalizers;

    fn ev(message: &str, rv: &str) -> Event {
        Event::new(
            EventData {
                message: message.into(),
                resource_version: rv.into(),
                ..EventData::default()
            },
            Finalizers::None,
        )
    }

    fn samples(max_samples: usize, messages: &[&str]) -> (Vec<String>, String, String) {
        let mut acc = Accumulator::new(ev(messages[0], "1"), 1, max_samples, false);
        for (i, m) in messages.iter().enumerate().skip(1) {
            acc.add(ev(m, &(i + 1).to_string()), 1);
        }
        let mut got = None;
        acc.finish(|f| {
            got = Some((f.samples.clone(), f.last_message(), f.last_rv()));
            f.first.unpack()
        });
        got.unwrap_or_default()
    }

    #[test]
    fn samples_are_distinct_messages_first_one_first() {
        let (s, last, rv) = samples(3, &["a", "a", "b", "a", "c", "d"]);
        assert_eq!(s, ["a", "b", "c"]);
        assert_eq!((last.as_str(), rv.as_str()), ("d", "6"));
        assert_eq!(samples(1, &["a", "b"]).0, ["a"]);
        assert!(samples(0, &["a", "b"]).0.is_empty());
        let (s, last, rv) = samples(2, &["only"]);
        assert_eq!(s, ["only"]);
        assert_eq!(
            (last.as_str(), rv.as_str()),
            ("only", "1"),
            "the first's own"
        );
    }
}
