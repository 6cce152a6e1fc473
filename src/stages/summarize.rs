//! What `aggregate` and `rate_limit` (with `when_limited: summarize`) share: folding events
//! into one summary. The folded events are done (their copies discarded); their batches finish
//! with the summary event, which carries their finalizers.

use chrono::{DateTime, Utc};

use std::sync::Arc;

use crate::event::{ApiVersion, Event, EventData, Labels, Merged};

/// An event's data in one allocation for its texts: what a pending summary keeps of its first
/// event (an [`EventData`] is about 500 bytes of fields plus an allocation per text; this is
/// the texts' length plus a byte or two each for their lengths, and 56 bytes).
#[derive(Debug)]
pub struct Packed {
    /// The lengths of uid, name, namespace, resource_version, type, reason, message, kind,
    /// object_name, object_namespace, object_uid, field_path, source, host, owner_kind,
    /// owner_name, then the texts, in that order. A length is written six bits to an ASCII
    /// byte, low bits first, `0x40` set on all but the last (one byte for a text under 64
    /// bytes), so the whole is text.
    text: Box<str>,
    cluster: Arc<str>,
    first_seen: Option<DateTime<Utc>>,
    api_version: ApiVersion,
    /// The raw object and the labels, when there are any (most groups have neither).
    extra: Option<Box<Extra>>,
}

/// How many texts a [`Packed`] holds.
const TEXTS: usize = 16;

/// The texts of `e` a [`Packed`] holds, in its order (that of [`Packed::new`]).
fn text_fields(e: &mut EventData) -> [&mut String; TEXTS] {
    [
        &mut e.uid,
        &mut e.name,
        &mut e.namespace,
        &mut e.resource_version,
        &mut e.type_,
        &mut e.reason,
        &mut e.message,
        &mut e.kind,
        &mut e.object_name,
        &mut e.object_namespace,
        &mut e.object_uid,
        &mut e.field_path,
        &mut e.source,
        &mut e.host,
        &mut e.owner_kind,
        &mut e.owner_name,
    ]
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
        let texts: [&str; TEXTS] = [
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
        let len: usize = texts.iter().map(|t| t.len() + 1).sum();
        let mut text = String::with_capacity(len + 4);
        for t in texts {
            let mut n = t.len();
            while n >= 0x40 {
                text.push(char::from(0x40 | u8::try_from(n & 0x3f).unwrap_or(0)));
                n >>= 6;
            }
            text.push(char::from(u8::try_from(n).unwrap_or(0)));
        }
        for t in texts {
            text.push_str(t);
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
            cluster: e.cluster.clone(),
            first_seen: e.first_seen,
            api_version: e.api_version,
            extra: has_extra.then(|| Box::new(extra)),
        }
    }

    /// The lengths of the texts, and where the first text starts.
    fn lengths(&self) -> ([usize; TEXTS], usize) {
        let bytes = self.text.as_bytes();
        let mut lens = [0usize; TEXTS];
        let mut at = 0;
        for len in &mut lens {
            let mut shift = 0u32;
            while let Some(&b) = bytes.get(at) {
                at += 1;
                *len |= usize::from(b & 0x3f).checked_shl(shift).unwrap_or(0);
                shift += 6;
                if b & 0x40 == 0 {
                    break;
                }
            }
        }
        (lens, at)
    }

    /// The `i`-th text.
    fn text_at(&self, i: usize) -> &str {
        self.texts().get(i).copied().unwrap_or_default()
    }

    /// The sixteen texts.
    fn texts(&self) -> [&str; TEXTS] {
        let (lens, mut at) = self.lengths();
        lens.map(|len| {
            let t = self.text.get(at..at + len).unwrap_or_default();
            at += len;
            t
        })
    }

    /// The event's data again, but for `count` and `last_seen` (not kept: a summary sets its
    /// own).
    pub fn unpack(&self) -> EventData {
        let Extra {
            raw,
            labels: [object_labels, object_annotations, namespace_labels],
        } = self.extra.as_deref().cloned().unwrap_or_default();
        let mut data = EventData {
            cluster: self.cluster.clone(),
            count: 0,
            first_seen: self.first_seen,
            last_seen: None,
            api_version: self.api_version,
            summary: None,
            raw,
            object_labels,
            object_annotations,
            namespace_labels,
            ..EventData::default()
        };
        for (field, text) in text_fields(&mut data).into_iter().zip(self.texts()) {
            field.push_str(text);
        }
        data
    }

    /// The message.
    pub fn message(&self) -> &str {
        self.text_at(6)
    }

    /// The resourceVersion.
    pub fn resource_version(&self) -> &str {
        self.text_at(3)
    }

    /// The involved object: kind, namespace, name.
    pub fn object(&self) -> [&str; 3] {
        let t = self.texts();
        [t[7], t[9], t[8]]
    }
}

/// The most distinct involved objects a summary counts; past it, it says "at least".
pub const MAX_OBJECTS: usize = 64;

/// A hash of an involved object (kind, namespace, name), for counting distinct ones.
pub fn object_hash(h: &impl std::hash::BuildHasher, [kind, ns, name]: [&str; 3]) -> u64 {
    h.hash_one((kind, ns, name))
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
    /// What events after the first add; boxed, as most groups of a busy cluster's distinct
    /// objects never see a second event.
    later: Option<Box<Later>>,
}

/// What a group keeps once an event after its first is folded in.
#[derive(Debug, Default)]
struct Later {
    /// The last one's resourceVersion and message (until there is one: the first's).
    rv: String,
    message: String,
    /// Up to `max_samples` distinct messages, in arrival order. While folding, the first
    /// event's message is not among them (it is in `first`); [`Accumulator::finish`] puts it
    /// in front.
    samples: Vec<String>,
    /// When the stage counts objects (its key does not name one): hashes of the distinct
    /// involved objects folded, the first's included, at most [`MAX_OBJECTS`].
    objects: Vec<u64>,
}

impl Folded {
    /// The last folded event's resourceVersion.
    pub fn last_rv(&self) -> String {
        self.later
            .as_ref()
            .map_or_else(|| self.first.resource_version(), |l| &l.rv)
            .to_string()
    }

    /// The last folded event's message.
    pub fn last_message(&self) -> String {
        self.later
            .as_ref()
            .map_or_else(|| self.first.message(), |l| &l.message)
            .to_string()
    }

    /// How many distinct involved objects were folded (when counted; 1 until a second event),
    /// and whether that is a lower bound ([`MAX_OBJECTS`] reached).
    pub fn objects(&self) -> (usize, bool) {
        let n = self.later.as_ref().map_or(1, |l| l.objects.len().max(1));
        (n, n >= MAX_OBJECTS)
    }

    /// Up to `max_samples` distinct messages of the folded events, the first event's first.
    pub fn take_samples(&mut self) -> Vec<String> {
        self.later
            .as_mut()
            .map(|l| std::mem::take(&mut l.samples))
            .unwrap_or_default()
    }
}

/// Events folded so far into one pending summary: 120 bytes and the first event's texts.
pub struct Accumulator {
    folded: Folded,
    finalizers: Merged,
}

impl Accumulator {
    /// Starts a summary with `e`. `keep_raw`: whether the summary keeps the first event's raw
    /// object (a summary is not the object as received; dropping it keeps a group small).
    pub fn new(e: Event, occurrences: i64, keep_raw: bool) -> Accumulator {
        let first = Packed::new(e.data(), keep_raw);
        let mut finalizers = Merged::default();
        let folded = Folded {
            events: 1,
            occurrences,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            later: None,
            first,
        };
        finalizers.add(e);
        Accumulator { folded, finalizers }
    }

    /// Folds `e` in, keeping up to `max_samples` distinct messages (the stage's setting).
    /// `objects`: the hasher of [`object_hash`] when the stage counts distinct objects.
    pub fn add<H: std::hash::BuildHasher>(
        &mut self,
        e: Event,
        occurrences: i64,
        max_samples: usize,
        objects: Option<&H>,
    ) {
        let f = &mut self.folded;
        f.events += 1;
        f.occurrences += occurrences;
        f.first_seen = match (f.first_seen, e.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        f.last_seen = f.last_seen.max(e.last_seen);
        let first_message = f.first.message();
        let first_object = f.first.object();
        let l = f.later.get_or_insert_default();
        if let Some(h) = objects {
            if l.objects.is_empty() {
                l.objects.push(object_hash(h, first_object));
            }
            let o = object_hash(h, [&e.kind, &e.object_namespace, &e.object_name]);
            if l.objects.len() < MAX_OBJECTS && !l.objects.contains(&o) {
                l.objects.push(o);
            }
        }
        // The first event's message is sample 0 when there are samples at all.
        let kept = usize::from(max_samples > 0) + l.samples.len();
        if kept < max_samples && first_message != e.message && !l.samples.contains(&e.message) {
            l.samples.push(e.message.clone());
        }
        l.rv.clone_from(&e.resource_version);
        l.message.clone_from(&e.message);
        self.finalizers.add(e);
    }

    /// The summary event: `make` turns what was folded into its data; it carries the
    /// finalizers of every folded event. `max_samples` as given to [`Accumulator::add`].
    pub fn finish(mut self, max_samples: usize, make: impl FnOnce(Folded) -> EventData) -> Event {
        let f = &mut self.folded;
        if max_samples > 0 {
            let first = f.first.message().to_string();
            match &mut f.later {
                Some(l) => l.samples.insert(0, first),
                None => {
                    f.later = Some(Box::new(Later {
                        rv: f.first.resource_version().to_string(),
                        message: first.clone(),
                        samples: vec![first],
                        objects: Vec::new(),
                    }));
                }
            }
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
        let mut acc = Accumulator::new(ev(messages[0], "1"), 1, false);
        for (i, m) in messages.iter().enumerate().skip(1) {
            acc.add(
                ev(m, &(i + 1).to_string()),
                1,
                max_samples,
                None::<&std::hash::RandomState>,
            );
        }
        let mut got = None;
        acc.finish(max_samples, |mut f| {
            got = Some((f.take_samples(), f.last_message(), f.last_rv()));
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

    #[test]
    fn a_pending_summary_fits_in_128_bytes() {
        // 100,000 open groups of `aggregate` cost this each with their deadline, plus their
        // texts (BENCHMARKS.md).
        assert!(std::mem::size_of::<Accumulator>() <= 120);
        let e = EventData {
            message: "m".repeat(300),
            uid: "u".into(),
            owner_name: "o".into(),
            ..EventData::default()
        };
        let p = Packed::new(&e, false);
        let back = p.unpack();
        assert_eq!(
            (back.message, back.uid, back.owner_name),
            (e.message.clone(), e.uid.clone(), e.owner_name.clone()),
            "the texts come back"
        );
        assert_eq!(p.text.len(), 300 + 1 + 1 + 17, "texts and their lengths");
        let e = EventData {
            message: "é".repeat(5000),
            reason: "x".repeat(63),
            kind: "k".repeat(64),
            ..EventData::default()
        };
        let back = Packed::new(&e, false).unpack();
        assert_eq!(
            (back.message, back.reason, back.kind),
            (e.message, e.reason, e.kind),
            "lengths on one, two and three bytes, and multi-byte characters"
        );
    }
}
