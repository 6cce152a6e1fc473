//! The normalized event that flows between stages.
//!
//! Sources decode core/v1 and events.k8s.io/v1 Event JSON into one [`EventData`] shape. An
//! [`Event`] is a cheap, shared handle (`Arc`) to that data plus the acknowledgement
//! finalizers of the source batch it came from: fan-out clones the handle, not the data, and
//! the finalizers report back to the source when the last copy is gone.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod ack;
pub mod batch;

pub use batch::Batch;

use ack::{Finalizer, Seq, Status, WHOLE_BATCH};

/// The Kubernetes API an event was read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ApiVersion {
    #[default]
    #[serde(rename = "v1")]
    CoreV1,
    #[serde(rename = "events.k8s.io/v1")]
    EventsV1,
}

/// A Kubernetes Event, normalized. Missing strings are empty, never absent.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EventData {
    /// The source's cluster name.
    pub cluster: Arc<str>,
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub resource_version: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    /// `message` (core/v1) or `note` (events.k8s.io/v1).
    pub message: String,
    /// The involved object (`involvedObject` / `regarding`).
    pub kind: String,
    pub object_name: String,
    pub object_namespace: String,
    pub object_uid: String,
    pub field_path: String,
    /// Reporting component (or controller).
    pub source: String,
    /// Reporting host (or instance).
    pub host: String,
    /// Occurrences so far: `count`, else `series.count`, else 1.
    pub count: i64,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub api_version: ApiVersion,
    /// Set on events that summarize others (`aggregate`, `rate_limit` with `summarize`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Arc<Summary>>,
    /// The involved object's labels (set by `enrich`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_labels: Option<Arc<Labels>>,
    /// The involved object's annotations that `enrich` was told to copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_annotations: Option<Arc<Labels>>,
    /// The labels of the event's namespace (set by `enrich`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_labels: Option<Arc<Labels>>,
    /// The top controller of the involved object, e.g. `Deployment` (set by `enrich`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner_kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner_name: String,
    /// The object as received (JSON text, already validated by the decoder).
    #[serde(skip)]
    pub raw: Option<Box<str>>,
}

/// Labels or annotations: key -> value, in key order.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The three label maps `enrich` adds, by the prefix that names one of their keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelMap {
    Object,
    ObjectAnnotations,
    Namespace,
}

impl LabelMap {
    pub const ALL: [(&'static str, LabelMap); 3] = [
        ("object_labels", LabelMap::Object),
        ("object_annotations", LabelMap::ObjectAnnotations),
        ("namespace_labels", LabelMap::Namespace),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| *n)
    }

    /// The map in `e`, if set.
    pub fn of(self, e: &EventData) -> Option<&Labels> {
        match self {
            LabelMap::Object => e.object_labels.as_deref(),
            LabelMap::ObjectAnnotations => e.object_annotations.as_deref(),
            LabelMap::Namespace => e.namespace_labels.as_deref(),
        }
    }
}

/// A realistic event with every field set: what `validate` renders templates against and
/// `eventflow explain` shows when no event is given.
pub fn sample() -> EventData {
    let at = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .ok();
    EventData {
        cluster: Arc::from("prod"),
        uid: "0d3c7a52-5d6e-4f0e-9a1b-2f6d3e8c9b10".into(),
        name: "web-7d4b9c-x2x9q.17f3a1b2c3d4e5f6".into(),
        namespace: "shop".into(),
        resource_version: "123456".into(),
        type_: "Warning".into(),
        reason: "BackOff".into(),
        message: "Back-off restarting failed container web in pod web-7d4b9c-x2x9q".into(),
        kind: "Pod".into(),
        object_name: "web-7d4b9c-x2x9q".into(),
        object_namespace: "shop".into(),
        object_uid: "9b0e2c1d-4f5a-4b6c-8d7e-1a2b3c4d5e6f".into(),
        field_path: "spec.containers{web}".into(),
        source: "kubelet".into(),
        host: "worker-3".into(),
        count: 3,
        first_seen: at,
        last_seen: at,
        ..EventData::default()
    }
}

/// What a summary event stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The stage type that wrote it.
    pub by: SummaryBy,
    /// How many events (updates) it stands for.
    pub events: u64,
    /// The sum of the count increases of those events (occurrences in Kubernetes' terms).
    pub occurrences: i64,
    /// The window it covers, as written in the stage (e.g. `10m`).
    pub window: String,
    /// When the first and last of them were seen.
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Up to `max_samples` distinct messages.
    pub samples: Vec<String>,
    /// A one-line description, e.g. "BackOff x37 on shop/Pod/web-7d4b9c between 2026-03-02
    /// 10:01:10 and 10:09:42 UTC (event time; window 10m from the first arrival)".
    pub text: String,
}

/// The stage types that write summary events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SummaryBy {
    Aggregate,
    RateLimit,
}

/// The fields that filters, keys and templates can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Cluster,
    Uid,
    Name,
    Namespace,
    ResourceVersion,
    Type,
    Reason,
    Message,
    Kind,
    ObjectName,
    ObjectNamespace,
    ObjectUid,
    FieldPath,
    Source,
    Host,
    Count,
    FirstSeen,
    LastSeen,
    OwnerKind,
    OwnerName,
    /// One key of a label map, e.g. `object_labels.team` (empty when absent).
    Label(LabelMap, Arc<str>),
}

impl Field {
    pub const ALL: [(&'static str, Field); 20] = [
        ("cluster", Field::Cluster),
        ("uid", Field::Uid),
        ("name", Field::Name),
        ("namespace", Field::Namespace),
        ("resource_version", Field::ResourceVersion),
        ("type", Field::Type),
        ("reason", Field::Reason),
        ("message", Field::Message),
        ("kind", Field::Kind),
        ("object_name", Field::ObjectName),
        ("object_namespace", Field::ObjectNamespace),
        ("object_uid", Field::ObjectUid),
        ("field_path", Field::FieldPath),
        ("source", Field::Source),
        ("host", Field::Host),
        ("count", Field::Count),
        ("first_seen", Field::FirstSeen),
        ("last_seen", Field::LastSeen),
        ("owner_kind", Field::OwnerKind),
        ("owner_name", Field::OwnerName),
    ];

    /// A field by name: one of [`Field::ALL`], or `object_labels.KEY`,
    /// `object_annotations.KEY`, `namespace_labels.KEY`.
    pub fn parse(name: &str) -> Option<Field> {
        if let Some((map, key)) = name.split_once('.') {
            let (_, m) = LabelMap::ALL.iter().find(|(n, _)| *n == map)?;
            return (!key.is_empty()).then(|| Field::Label(*m, Arc::from(key)));
        }
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f.clone())
    }

    pub fn name(&self) -> Cow<'static, str> {
        if let Field::Label(m, key) = self {
            return Cow::Owned(format!("{}.{key}", m.name()));
        }
        Cow::Borrowed(
            Self::ALL
                .iter()
                .find(|(_, f)| f == self)
                .map_or("?", |(n, _)| *n),
        )
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Field::parse(&s).ok_or_else(|| {
            let names: Vec<&str> = Field::ALL.iter().map(|(n, _)| *n).collect();
            serde::de::Error::custom(format!(
                "unknown event field `{s}` (expected one of: {}, or a label as `object_labels.KEY`, `namespace_labels.KEY`, `object_annotations.KEY`)",
                names.join(", ")
            ))
        })
    }
}

impl Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl schemars::JsonSchema for Field {
    fn schema_name() -> Cow<'static, str> {
        "EventField".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = Field::ALL.iter().map(|(n, _)| *n).collect();
        schemars::json_schema!({
            "description": "A field of the normalized event, or one key of a label map that `enrich` adds (`object_labels.team`).",
            "anyOf": [
                {"type": "string", "enum": names},
                {"type": "string", "pattern": "^(object_labels|object_annotations|namespace_labels)\\..+$"}
            ]
        })
    }
}

impl EventData {
    /// When Kubernetes last saw it (`last_seen`, else `first_seen`), unix milliseconds.
    pub fn seen_ms(&self) -> Option<i64> {
        self.last_seen
            .or(self.first_seen)
            .map(|t| t.timestamp_millis())
    }

    /// The value of a field as text.
    pub fn get(&self, f: &Field) -> Cow<'_, str> {
        match f {
            Field::Cluster => Cow::Borrowed(&self.cluster),
            Field::Uid => Cow::Borrowed(&self.uid),
            Field::Name => Cow::Borrowed(&self.name),
            Field::Namespace => Cow::Borrowed(&self.namespace),
            Field::ResourceVersion => Cow::Borrowed(&self.resource_version),
            Field::Type => Cow::Borrowed(&self.type_),
            Field::Reason => Cow::Borrowed(&self.reason),
            Field::Message => Cow::Borrowed(&self.message),
            Field::Kind => Cow::Borrowed(&self.kind),
            Field::ObjectName => Cow::Borrowed(&self.object_name),
            Field::ObjectNamespace => Cow::Borrowed(&self.object_namespace),
            Field::ObjectUid => Cow::Borrowed(&self.object_uid),
            Field::FieldPath => Cow::Borrowed(&self.field_path),
            Field::Source => Cow::Borrowed(&self.source),
            Field::Host => Cow::Borrowed(&self.host),
            Field::Count => Cow::Owned(self.count.to_string()),
            Field::FirstSeen => Cow::Owned(fmt_time(self.first_seen)),
            Field::LastSeen => Cow::Owned(fmt_time(self.last_seen)),
            Field::OwnerKind => Cow::Borrowed(&self.owner_kind),
            Field::OwnerName => Cow::Borrowed(&self.owner_name),
            Field::Label(m, key) => m
                .of(self)
                .and_then(|l| l.get(&**key))
                .map_or(Cow::Borrowed(""), |v| Cow::Borrowed(v.as_str())),
        }
    }
}

fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The shared handle.

/// The acknowledgement handles an event carries.
#[derive(Debug, Clone, Default)]
pub enum Finalizers {
    #[default]
    None,
    One(Arc<Finalizer>),
    Many(Arc<[Arc<Finalizer>]>),
}

impl Finalizers {
    /// Records the outcome of the event at `seq` of its batch. A summary's merged events have
    /// no single position: their whole batches take the outcome.
    fn update(&self, s: Status, seq: Seq) {
        match self {
            Finalizers::None => {}
            Finalizers::One(f) => f.update(s, seq),
            Finalizers::Many(fs) => fs.iter().for_each(|f| f.update(s, WHOLE_BATCH)),
        }
    }

    fn refuse(&self, r: ack::Refusal) {
        match self {
            Finalizers::None => {}
            Finalizers::One(f) => f.refuse(r),
            Finalizers::Many(fs) => fs.iter().for_each(|f| {
                f.refuse(ack::Refusal {
                    seq: WHOLE_BATCH,
                    ..r.clone()
                });
            }),
        }
    }
}

#[derive(Debug)]
struct Inner {
    data: EventData,
    finalizers: Finalizers,
    /// When the event entered the pipeline (end-to-end latency is measured from here).
    born: std::time::Instant,
    /// Its position in its source batch (for per-event reports), or [`WHOLE_BATCH`].
    seq: Seq,
}

/// A shared, immutable event: one copy of it, as one stage holds it.
///
/// Each copy (a clone is a new copy: fan-out makes one per downstream stage) must be given an
/// outcome before it is dropped: [`Event::ack`] by a sink after its commit, [`Event::discard`]
/// by a stage that drops it on purpose, [`Merged::add`] by a stage that folds it into a
/// summary. A copy dropped without one (a panic unwinding, a task gone, a channel closed with
/// the copy in it, a shutdown timeout) fails its batch: the safe default, so that a source
/// never checkpoints what nobody said was done.
#[derive(Debug)]
pub struct Event {
    inner: Arc<Inner>,
    /// This copy has an outcome.
    done: AtomicBool,
}

impl Clone for Event {
    /// A new copy, without an outcome yet. One atomic increment.
    fn clone(&self) -> Event {
        Event {
            inner: self.inner.clone(),
            done: AtomicBool::new(false),
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if !*self.done.get_mut() {
            self.inner
                .finalizers
                .update(Status::Errored, self.inner.seq);
        }
    }
}

impl Event {
    pub fn new(data: EventData, finalizers: Finalizers) -> Event {
        Event::in_batch(data, finalizers, WHOLE_BATCH)
    }

    /// An event at position `seq` of its source batch: a failure of it is reported for it
    /// alone (see [`crate::event::ack::Report`]).
    pub fn in_batch(data: EventData, finalizers: Finalizers, seq: Seq) -> Event {
        Event {
            inner: Arc::new(Inner {
                data,
                finalizers,
                born: std::time::Instant::now(),
                seq,
            }),
            done: AtomicBool::new(false),
        }
    }

    /// When the event entered the pipeline.
    /// This copy with its data changed by `f`, keeping its acknowledgement (the same
    /// finalizers and position): in place when no other copy shares the data.
    #[must_use]
    pub fn modify(mut self, f: impl FnOnce(&mut EventData)) -> Event {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            f(&mut inner.data);
            return self;
        }
        let mut data = self.inner.data.clone();
        f(&mut data);
        let e = Event {
            inner: Arc::new(Inner {
                data,
                finalizers: self.inner.finalizers.clone(),
                born: self.inner.born,
                seq: self.inner.seq,
            }),
            done: AtomicBool::new(false),
        };
        // The outcome is the new copy's to give.
        *self.done.get_mut() = true;
        e
    }

    pub fn born(&self) -> std::time::Instant {
        self.inner.born
    }

    pub fn data(&self) -> &EventData {
        &self.inner.data
    }

    pub fn finalizers(&self) -> &Finalizers {
        &self.inner.finalizers
    }

    /// Gives this copy its outcome (a sink, after its commit or its failure). The worst
    /// outcome of all copies of a source batch is what the source learns.
    pub fn ack(&self, s: Status) {
        self.inner.finalizers.update(s, self.inner.seq);
        self.done.store(true, Ordering::Relaxed);
    }

    /// Whether this copy has its outcome already (a sink refused it while delivering the rest
    /// of its batch).
    pub fn has_outcome(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// A sink refuses this copy for good (a row the database refused, a delivery given up):
    /// it fails with [`Status::Rejected`], and its source learns which stage refused it and why.
    pub fn refuse(&self, stage: &str, reason: &str) {
        self.inner.finalizers.refuse(ack::Refusal {
            seq: self.inner.seq,
            stage: Arc::from(stage),
            reason: reason.to_string(),
            event: self.inner.data.clone(),
        });
        self.ack(Status::Rejected);
    }

    /// This copy is dropped on purpose (filtered, deduplicated, rate-limited): done, and it
    /// does not make its batch fail. The caller counts it by reason.
    pub fn discard(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Gives every copy in `events` the same outcome.
pub fn ack_all(events: &[Event], s: Status) {
    for e in events {
        e.ack(s);
    }
}

/// `stage` refuses every copy in `events` for the same reason.
pub fn refuse_all(events: &[Event], stage: &str, reason: &str) {
    for e in events {
        e.refuse(stage, reason);
    }
}

/// The acknowledgement handles of events folded into a summary that is not emitted yet
/// (`aggregate`, `rate_limit` with `summarize`). The folded events themselves are done; their
/// batches finish with the summary. Dropped before [`Merged::into_finalizers`] (a crash, a
/// stage gone), every batch held here fails.
#[derive(Debug, Default)]
pub struct Merged {
    /// The first handle inline: most summaries hold one batch's (no allocation for it).
    first: Option<Arc<Finalizer>>,
    /// The others, boxed: a pending summary is small until it holds a second batch's events.
    #[allow(
        clippy::box_collection,
        reason = "8 bytes inline instead of a Vec's 24, in every open aggregate group"
    )]
    rest: Option<Box<Vec<Arc<Finalizer>>>>,
}

impl Merged {
    /// Folds `e` in: its copy is done, its batch now waits for the summary. (Takes the copy
    /// by value: once folded in it must not be acknowledged again.)
    #[allow(clippy::needless_pass_by_value)]
    pub fn add(&mut self, e: Event) {
        match e.finalizers() {
            Finalizers::None => {}
            Finalizers::One(f) => self.push(f),
            Finalizers::Many(fs) => fs.iter().for_each(|f| self.push(f)),
        }
        e.discard();
    }

    fn push(&mut self, f: &Arc<Finalizer>) {
        let last = self.rest.as_deref().and_then(|r| r.last());
        match (&self.first, last) {
            (None, _) => self.first = Some(f.clone()),
            // Events of one batch arrive together: skip the handle just added.
            (_, Some(last)) | (Some(last), None) if Arc::ptr_eq(last, f) => {}
            _ => self.rest.get_or_insert_default().push(f.clone()),
        }
    }

    /// The finalizers the summary event carries.
    pub fn into_finalizers(mut self) -> Finalizers {
        let mut all = self.rest.take().map(|r| *r).unwrap_or_default();
        all.extend(self.first.take());
        all.sort_by_key(|f| Arc::as_ptr(f) as usize);
        all.dedup_by(|a, b| Arc::ptr_eq(a, b));
        match all.len() {
            0 => Finalizers::None,
            1 => all.pop().map(Finalizers::One).unwrap_or_default(),
            _ => Finalizers::Many(all.into()),
        }
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        self.first
            .iter()
            .chain(self.rest.iter().flat_map(|r| r.iter()))
            .for_each(|f| f.update(Status::Errored, WHOLE_BATCH));
    }
}

impl std::ops::Deref for Event {
    type Target = EventData;
    fn deref(&self) -> &EventData {
        &self.inner.data
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding from the API server's JSON.

/// One Event object in either API version, as the API server sends it. Decoding goes into this
/// shape first, then [`WireEvent::normalize`] turns it into [`EventData`].
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WireEvent<'a> {
    #[serde(borrow)]
    pub api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub metadata: WireMeta<'a>,
    pub involved_object: Option<WireRef>,
    pub regarding: Option<WireRef>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub note: Option<String>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub source: Option<WireSource>,
    pub deprecated_source: Option<WireSource>,
    pub reporting_component: Option<String>,
    pub reporting_controller: Option<String>,
    pub reporting_instance: Option<String>,
    pub count: Option<i64>,
    pub deprecated_count: Option<i64>,
    #[serde(borrow)]
    pub series: Option<WireSeries<'a>>,
    // Timestamps are only parsed: borrowed from the input when they have no escapes.
    #[serde(borrow)]
    pub first_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub last_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub deprecated_first_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub deprecated_last_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub event_time: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WireMeta<'a> {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    #[serde(borrow)]
    pub creation_timestamp: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WireRef {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub field_path: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WireSource {
    pub component: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WireSeries<'a> {
    pub count: Option<i64>,
    #[serde(borrow)]
    pub last_observed_time: Option<Cow<'a, str>>,
}

/// Why an object could not become an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an Event: `metadata.uid` is missing")]
    NoUid,
    #[error("unsupported apiVersion `{0}` (expected v1 or events.k8s.io/v1)")]
    ApiVersion(String),
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let s = s.filter(|s| !s.is_empty())?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl WireEvent<'_> {
    /// Normalizes into [`EventData`], following the rules in the pipeline contract: message
    /// from `message` or `note`; count from `count`, else `series.count`, else 1; last seen
    /// from `lastTimestamp`, else `series.lastObservedTime`, else `eventTime`, else creation.
    pub fn normalize(
        self,
        cluster: &Arc<str>,
        raw: Option<Box<str>>,
    ) -> Result<EventData, DecodeError> {
        let api_version = match self.api_version.as_deref() {
            None | Some("v1" | "") => {
                if self.regarding.is_some()
                    || self.note.is_some()
                    || self.reporting_controller.is_some()
                {
                    ApiVersion::EventsV1
                } else {
                    ApiVersion::CoreV1
                }
            }
            Some("events.k8s.io/v1" | "events.k8s.io/v1beta1") => ApiVersion::EventsV1,
            Some(other) => return Err(DecodeError::ApiVersion(other.to_string())),
        };
        let uid = non_empty(self.metadata.uid).ok_or(DecodeError::NoUid)?;
        let obj = self.involved_object.or(self.regarding).unwrap_or_default();
        let src = self.source.or(self.deprecated_source).unwrap_or_default();
        let series_count = self.series.as_ref().and_then(|s| s.count);
        let series_last = self
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_deref());
        let created = self.metadata.creation_timestamp.as_deref();
        let first_ts = self
            .first_timestamp
            .as_deref()
            .or(self.deprecated_first_timestamp.as_deref());
        let last_ts = self
            .last_timestamp
            .as_deref()
            .or(self.deprecated_last_timestamp.as_deref());
        let event_time = self.event_time.as_deref();
        let last_seen = parse_time(last_ts)
            .or_else(|| parse_time(series_last))
            .or_else(|| parse_time(event_time))
            .or_else(|| parse_time(created));
        let first_seen = parse_time(first_ts)
            .or_else(|| parse_time(event_time))
            .or_else(|| parse_time(created))
            .or(last_seen);
        let count = self
            .count
            .filter(|c| *c > 0)
            .or(self.deprecated_count.filter(|c| *c > 0))
            .or(series_count.filter(|c| *c > 0))
            .unwrap_or(1);
        Ok(EventData {
            cluster: cluster.clone(),
            uid,
            name: self.metadata.name.unwrap_or_default(),
            namespace: self.metadata.namespace.unwrap_or_default(),
            resource_version: self.metadata.resource_version.unwrap_or_default(),
            type_: self.type_.unwrap_or_default(),
            reason: self.reason.unwrap_or_default(),
            message: non_empty(self.message).or(self.note).unwrap_or_default(),
            kind: obj.kind.unwrap_or_default(),
            object_name: obj.name.unwrap_or_default(),
            object_namespace: obj.namespace.unwrap_or_default(),
            object_uid: obj.uid.unwrap_or_default(),
            field_path: obj.field_path.unwrap_or_default(),
            source: non_empty(src.component)
                .or(non_empty(self.reporting_component))
                .or(self.reporting_controller)
                .unwrap_or_default(),
            host: non_empty(src.host)
                .or(self.reporting_instance)
                .unwrap_or_default(),
            count,
            first_seen,
            last_seen,
            api_version,
            summary: None,
            object_labels: None,
            object_annotations: None,
            namespace_labels: None,
            owner_kind: String::new(),
            owner_name: String::new(),
            raw,
        })
    }
}

/// Decodes one Event object from JSON text and keeps the text as `raw`.
pub fn decode(json: &str, cluster: &Arc<str>) -> Result<EventData, DecodeError> {
    let wire: WireEvent = serde_json::from_str(json)?;
    wire.normalize(cluster, Some(json.trim().into()))
}

/// Serializes an event for output (stdout, webhook json), optionally with `raw`.
pub fn to_json(e: &EventData, with_raw: bool) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct WithRaw<'a> {
        #[serde(flatten)]
        data: &'a EventData,
        #[serde(skip_serializing_if = "Option::is_none")]
        raw: Option<&'a RawValue>,
    }
    if with_raw {
        let raw = e
            .raw
            .as_deref()
            .and_then(|r| RawValue::from_string(r.to_string()).ok());
        serde_json::to_string(&WithRaw {
            data: e,
            raw: raw.as_deref(),
        })
    } else {
        serde_json::to_string(e)
    }
}

/// An event as kept in a durable queue or a dead-letter table, read back: its fields and its
/// `raw` text ([`to_stored_spanned`] writes it).
#[derive(Deserialize)]
struct Stored<'a> {
    event: EventData,
    #[serde(borrow)]
    raw: Option<&'a RawValue>,
}

/// Serializes an event for storage; [`from_stored`] gives it back, `raw` included.
pub fn to_stored(e: &EventData) -> serde_json::Result<String> {
    to_stored_spanned(e).map(|(s, _)| s)
}

/// [`to_stored`], and where in its text the event's fields are (what [`to_json`] writes
/// without `raw`): `{"event":<fields>,"raw":<raw or null>}`.
pub fn to_stored_spanned(e: &EventData) -> serde_json::Result<(String, std::ops::Range<usize>)> {
    let fields = serde_json::to_string(e)?;
    let raw = e
        .raw
        .as_deref()
        .and_then(|r| serde_json::from_str::<&RawValue>(r).ok());
    let raw = raw.map_or("null", RawValue::get);
    let mut s = String::with_capacity(fields.len() + raw.len() + 16);
    s.push_str("{\"event\":");
    let start = s.len();
    s.push_str(&fields);
    let end = s.len();
    s.push_str(",\"raw\":");
    s.push_str(raw);
    s.push('}');
    Ok((s, start..end))
}

/// Reads an event written by [`to_stored`].
pub fn from_stored(text: &str) -> serde_json::Result<EventData> {
    serde_json::from_str::<Stored>(text).map(Stored::into_event)
}

/// Reads a JSON array of events written by [`to_stored`], in one pass over the text.
pub fn from_stored_array(text: &str) -> serde_json::Result<Vec<EventData>> {
    serde_json::from_str::<Vec<Stored>>(text)
        .map(|all| all.into_iter().map(Stored::into_event).collect())
}

/// The version of the form [`to_stored`] writes an event in: the fields of [`EventData`] as
/// they serialize. A queue row records it, so that a row written in this very form can go out
/// as it is stored (its event text spliced into a body, not decoded and rendered again) and
/// a row written by another version is decoded. Change it whenever `EventData`'s serialized
/// fields change (the test `the_stored_form_is_pinned` fails until then).
pub const STORED_FORM: i64 = 1;

/// A stored event read without decoding it: the text of its fields as [`to_json`] (without
/// `raw`) writes them, and what a delivery needs of it besides.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredRef<'a> {
    /// The event's fields, as stored.
    pub event: &'a str,
    pub uid: Cow<'a, str>,
    pub resource_version: Cow<'a, str>,
    /// When Kubernetes last saw it (`last_seen`, else `first_seen`), unix milliseconds.
    pub seen: Option<i64>,
}

/// Where one event of a stored array is and its keys: the byte range of its fields in the
/// array's text, its uid, resourceVersion and when it was last seen (unix milliseconds).
pub type Span<'a> = (usize, usize, Cow<'a, str>, Cow<'a, str>, Option<i64>);

/// The [`Span`]s of a stored array's events, written beside it so that a reader finds them
/// without scanning it.
pub type Spans<'a> = Vec<Span<'a>>;

/// The [`Span`] of `e`, its fields at `range`.
pub fn span_of(e: &EventData, range: std::ops::Range<usize>) -> Span<'_> {
    (
        range.start,
        range.end,
        Cow::Borrowed(e.uid.as_str()),
        Cow::Borrowed(e.resource_version.as_str()),
        e.seen_ms(),
    )
}

/// The events of `text` (an array written with its [`Spans`] as `spans`, JSON), read through
/// the spans; an error when they do not fit the text (a span off a character boundary, or not
/// around an object).
pub fn spanned_refs<'a>(text: &'a str, spans: &'a str) -> Result<Vec<StoredRef<'a>>, String> {
    let spans: Spans<'a> = serde_json::from_str(spans).map_err(|e| e.to_string())?;
    spans
        .into_iter()
        .map(|(start, end, uid, resource_version, seen)| {
            let event = text
                .get(start..end)
                .filter(|t| t.starts_with('{') && t.ends_with('}'))
                .ok_or_else(|| format!("span {start}..{end} is not an event of the row"))?;
            Ok(StoredRef {
                event,
                uid,
                resource_version,
                seen,
            })
        })
        .collect()
}

/// Reads events written by [`to_stored`] (a JSON array of them with `array`, else one) without
/// decoding their fields: two passes over the text that allocate nothing per field.
pub fn stored_refs(text: &str, array: bool) -> serde_json::Result<Vec<StoredRef<'_>>> {
    #[derive(Deserialize)]
    struct Shallow<'a> {
        #[serde(borrow)]
        event: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Keys<'a> {
        #[serde(borrow, default)]
        uid: Cow<'a, str>,
        #[serde(borrow, default)]
        resource_version: Cow<'a, str>,
        #[serde(default)]
        first_seen: Option<DateTime<Utc>>,
        #[serde(default)]
        last_seen: Option<DateTime<Utc>>,
    }
    let shallow: Vec<Shallow> = if array {
        serde_json::from_str(text)?
    } else {
        vec![serde_json::from_str(text)?]
    };
    shallow
        .into_iter()
        .map(|s| {
            let k: Keys = serde_json::from_str(s.event.get())?;
            Ok(StoredRef {
                event: s.event.get(),
                uid: k.uid,
                resource_version: k.resource_version,
                seen: k.last_seen.or(k.first_seen).map(|t| t.timestamp_millis()),
            })
        })
        .collect()
}

impl Stored<'_> {
    fn into_event(self) -> EventData {
        let mut e = self.event;
        e.raw = self.raw.map(|r| r.get().into());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_events_round_trip_with_raw_and_summary() {
        let j = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"web.1","namespace":"shop","uid":"u9","resourceVersion":"7"},
            "involvedObject":{"kind":"Pod","name":"web"},"reason":"BackOff","message":"quote \" and ✓","type":"Warning","count":4,
            "lastTimestamp":"2024-05-01T10:09:42Z"}"#;
        let mut e = decode(j, &cluster()).unwrap();
        e.summary = Some(Arc::new(Summary {
            by: SummaryBy::Aggregate,
            events: 3,
            occurrences: 9,
            window: "10m".into(),
            first_seen: None,
            last_seen: e.last_seen,
            samples: vec!["a".into()],
            text: "BackOff x9".into(),
        }));
        let back = from_stored(&to_stored(&e).unwrap()).unwrap();
        assert_eq!(to_json(&back, true).unwrap(), to_json(&e, true).unwrap());
        assert_eq!(back.raw.as_deref(), Some(j.trim()));
        let bogus = to_stored(&e).unwrap().replace("\"aggregate\"", "\"bogus\"");
        assert!(from_stored(&bogus).is_err());
    }

    /// An event with every optional part set.
    fn full() -> EventData {
        let j = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"web.1","namespace":"shop","uid":"u\"9","resourceVersion":"7"},
            "involvedObject":{"kind":"Pod","name":"web"},"reason":"BackOff","message":"quote \" and ✓","type":"Warning","count":4,
            "firstTimestamp":"2024-05-01T10:01:10Z","lastTimestamp":"2024-05-01T10:09:42Z"}"#;
        let mut e = decode(j, &cluster()).unwrap();
        e.summary = Some(Arc::new(Summary {
            by: SummaryBy::RateLimit,
            events: 3,
            occurrences: 9,
            window: "10m".into(),
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            samples: vec!["a".into()],
            text: "BackOff x9".into(),
        }));
        let labels = Arc::new(Labels::from([("app".to_string(), "web".to_string())]));
        e.object_labels = Some(labels.clone());
        e.object_annotations = Some(labels.clone());
        e.namespace_labels = Some(labels);
        e.owner_kind = "Deployment".into();
        e.owner_name = "web".into();
        e
    }

    #[test]
    fn the_stored_form_is_pinned() {
        // The fields as `to_stored` writes them. When this changes, change `STORED_FORM` too
        // (queued rows of the old form are then decoded instead of spliced) and this list.
        let v = serde_json::to_value(full()).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let mut all = keys(&v);
        all.extend(keys(&v["summary"]).iter().map(|k| format!("summary.{k}")));
        all.sort();
        let mut pinned: Vec<&str> = "cluster,uid,name,namespace,resource_version,type,reason,\
             message,kind,object_name,object_namespace,object_uid,field_path,source,host,count,\
             first_seen,last_seen,api_version,summary,object_labels,object_annotations,\
             namespace_labels,owner_kind,owner_name,summary.by,summary.events,\
             summary.occurrences,summary.window,summary.first_seen,summary.last_seen,\
             summary.samples,summary.text"
            .split(',')
            .collect();
        pinned.sort_unstable();
        assert_eq!(
            (STORED_FORM, all),
            (1, pinned.iter().map(|k| (*k).to_string()).collect())
        );
    }

    #[test]
    fn a_stored_event_reads_without_decoding_as_it_was_written() {
        let e = full();
        let mut plain = e.clone();
        plain.raw = None;
        for (text, array) in [
            (to_stored(&e).unwrap(), false),
            (
                format!(
                    "[{},{}]",
                    to_stored(&e).unwrap(),
                    to_stored(&plain).unwrap()
                ),
                true,
            ),
        ] {
            let refs = stored_refs(&text, array).unwrap();
            assert_eq!(refs.len(), if array { 2 } else { 1 });
            for (r, was) in refs.iter().zip([&e, &plain]) {
                // The text spliced into a body is what `to_json` writes.
                assert_eq!(r.event, to_json(was, false).unwrap());
                assert_eq!(r.uid, "u\"9");
                assert_eq!(r.resource_version, "7");
                assert_eq!(r.seen, e.last_seen.map(|t| t.timestamp_millis()));
            }
        }
        assert!(stored_refs("[{\"event\":{}}", true).is_err());
        assert!(stored_refs("{\"raw\":null}", false).is_err());
        // The same through spans written beside the array: no scan of the array.
        let mut text = String::from("[");
        let mut spans = Vec::new();
        let stored: Vec<_> = [&e, &plain]
            .iter()
            .map(|x| to_stored_spanned(x).unwrap())
            .collect();
        for (i, (x, (s, range))) in [&e, &plain].iter().zip(&stored).enumerate() {
            if i > 0 {
                text.push(',');
            }
            let at = text.len();
            text.push_str(s);
            spans.push(span_of(x, at + range.start..at + range.end));
        }
        text.push(']');
        let spans = serde_json::to_string(&spans).unwrap();
        assert_eq!(
            spanned_refs(&text, &spans).unwrap(),
            stored_refs(&text, true).unwrap()
        );
        // Spans that do not fit the text are refused, not spliced.
        let mut shifted: Spans = serde_json::from_str(&spans).unwrap();
        for s in &mut shifted {
            s.0 += 1;
        }
        assert!(spanned_refs(&text, &serde_json::to_string(&shifted).unwrap()).is_err());
        assert!(spanned_refs(&text[1..], &spans).is_err());
    }

    fn cluster() -> Arc<str> {
        Arc::from("test")
    }

    #[test]
    fn core_v1_legacy_event() {
        let j = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"web.17d2","namespace":"shop","uid":"u1","resourceVersion":"48214002","creationTimestamp":"2024-05-01T10:01:10Z"},
            "involvedObject":{"kind":"Pod","namespace":"shop","name":"web","uid":"p1","fieldPath":"spec.containers{web}"},
            "reason":"BackOff","message":"Back-off restarting","source":{"component":"kubelet","host":"worker-2"},
            "firstTimestamp":"2024-05-01T10:01:10Z","lastTimestamp":"2024-05-01T10:09:42Z","count":37,"type":"Warning","eventTime":null}"#;
        let e = decode(j, &cluster()).unwrap();
        assert_eq!(
            (e.uid.as_str(), e.count, e.kind.as_str()),
            ("u1", 37, "Pod")
        );
        assert_eq!(e.source, "kubelet");
        assert_eq!(e.host, "worker-2");
        assert_eq!(e.field_path, "spec.containers{web}");
        assert_eq!(e.get(&Field::LastSeen), "2024-05-01T10:09:42Z");
        assert_eq!(e.get(&Field::FirstSeen), "2024-05-01T10:01:10Z");
        assert_eq!(e.api_version, ApiVersion::CoreV1);
        assert!(e.raw.is_some());
    }

    #[test]
    fn new_style_event_through_core_v1_uses_series() {
        let j = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"a","namespace":"shop","uid":"u2","resourceVersion":"1","creationTimestamp":"2024-05-01T10:00:00Z"},
            "involvedObject":{"kind":"Pod","name":"web"},"reason":"FailedScheduling","message":"0/3 nodes",
            "source":{},"firstTimestamp":null,"lastTimestamp":null,"type":"Warning","eventTime":"2024-05-01T10:00:00.123456Z",
            "series":{"count":5,"lastObservedTime":"2024-05-01T10:04:00.654321Z"},"reportingComponent":"default-scheduler","reportingInstance":"sched-1"}"#;
        let e = decode(j, &cluster()).unwrap();
        assert_eq!(e.count, 5);
        assert_eq!(e.get(&Field::LastSeen), "2024-05-01T10:04:00.654321Z");
        assert_eq!(e.get(&Field::FirstSeen), "2024-05-01T10:00:00.123456Z");
        assert_eq!(e.source, "default-scheduler");
        assert_eq!(e.host, "sched-1");
    }

    #[test]
    fn events_k8s_io_v1() {
        let j = r#"{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"a","namespace":"shop","uid":"u3","resourceVersion":"9","creationTimestamp":"2024-05-01T10:00:00Z"},
            "eventTime":"2024-05-01T10:00:00.123456Z","reportingController":"default-scheduler","reportingInstance":"i",
            "reason":"FailedScheduling","regarding":{"kind":"Pod","namespace":"shop","name":"web","uid":"p"},"note":"0/3 nodes","type":"Warning"}"#;
        let e = decode(j, &cluster()).unwrap();
        assert_eq!(e.api_version, ApiVersion::EventsV1);
        assert_eq!(e.message, "0/3 nodes");
        assert_eq!(e.object_name, "web");
        assert_eq!(e.source, "default-scheduler");
        assert_eq!(e.count, 1);
        assert_eq!(e.get(&Field::LastSeen), "2024-05-01T10:00:00.123456Z");
    }

    #[test]
    fn real_events_decode() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/real-events/k9s-gke-pulled.json"
        );
        let text = std::fs::read_to_string(dir).unwrap();
        let e = decode(&text, &cluster()).unwrap();
        assert_eq!(e.reason, "Pulled");
        assert_eq!(e.source, "kubelet");
    }

    #[test]
    fn missing_uid_is_an_error() {
        assert!(matches!(
            decode(r#"{"metadata":{}}"#, &cluster()),
            Err(DecodeError::NoUid)
        ));
        assert!(matches!(
            decode(
                r#"{"apiVersion":"apps/v1","metadata":{"uid":"x"}}"#,
                &cluster()
            ),
            Err(DecodeError::ApiVersion(_))
        ));
    }
}
