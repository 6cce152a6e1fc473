//! An event as an OTLP log record: the mapping of the OpenTelemetry collector's
//! `k8seventsreceiver`, so that dashboards and queries built for it work unchanged, plus what
//! it leaves out (the cluster, the reporting controller and instance, the fields `enrich`
//! adds under the semantic conventions' names).
//!
//! Fields the normalized event does not carry (the action, `eventTime`, `series`, the creation
//! time, the involved object's API and resource versions) are read from the object as
//! received (`raw`, which a source keeps when an `otlp` sink is downstream). An event without
//! it (a summary from `aggregate`, an event from a test case without an object) falls back to
//! the normalized fields: its time is its last-seen time, and what cannot be known is left
//! out.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Deserialize;

use crate::event::{ApiVersion, EventData};

/// The instrumentation scope of every record.
pub const SCOPE: &str = "eventflow";

/// What the mapping reads from the object as received (borrowed from its text where it has
/// no escapes).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Raw<'a> {
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    last_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    first_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    deprecated_last_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    deprecated_first_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    series: Option<RawSeries<'a>>,
    #[serde(borrow)]
    metadata: RawMeta<'a>,
    #[serde(borrow)]
    involved_object: Option<RawRef<'a>>,
    #[serde(borrow)]
    regarding: Option<RawRef<'a>>,
    count: Option<i64>,
    deprecated_count: Option<i64>,
    #[serde(borrow)]
    reporting_controller: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reporting_component: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reporting_instance: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawSeries<'a> {
    count: Option<i64>,
    #[serde(borrow)]
    last_observed_time: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawMeta<'a> {
    #[serde(borrow)]
    creation_timestamp: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawRef<'a> {
    #[serde(borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resource_version: Option<Cow<'a, str>>,
}

fn time(s: Option<&Cow<'_, str>>) -> Option<DateTime<Utc>> {
    let s = s.filter(|s| !s.is_empty())?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn nanos(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// The severity of an Event `type`, case-insensitively; unknown types are unspecified.
pub fn severity(type_: &str) -> (SeverityNumber, &str) {
    match type_.to_ascii_lowercase().as_str() {
        "normal" => (SeverityNumber::Info, type_),
        "warning" => (SeverityNumber::Warn, type_),
        "error" => (SeverityNumber::Error, type_),
        "critical" => (SeverityNumber::Fatal, type_),
        _ => (SeverityNumber::Unspecified, ""),
    }
}

/// A time as Go's `time.Time.String()` writes it in UTC (what the collector puts in
/// `k8s.event.start_time`): `2024-05-01 10:00:00 +0000 UTC`, fractions only when there are.
pub fn go_time(t: DateTime<Utc>) -> String {
    let frac = t.timestamp_subsec_nanos();
    if frac == 0 {
        t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()
    } else {
        let digits = format!("{frac:09}");
        format!(
            "{}.{} +0000 UTC",
            t.format("%Y-%m-%d %H:%M:%S"),
            digits.trim_end_matches('0')
        )
    }
}

fn string(key: impl Into<String>, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: impl Into<String>, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..KeyValue::default()
    }
}

/// The owner kinds that have a semantic-conventions name attribute.
const OWNER_KINDS: [&str; 6] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicaSet",
];

/// String attributes, in order.
pub type Attrs = Vec<(String, String)>;

/// One event, mapped: the resource's attributes (strings) and the record.
pub struct Mapped {
    pub resource: Attrs,
    pub record: LogRecord,
}

/// The attributes the stage config adds, rendered per event.
pub trait Extra {
    /// `(resource attributes, record attributes)` for `e`, or why they cannot be made.
    fn extra(&self, e: &EventData) -> Result<(Attrs, Attrs), String>;
}

/// Maps one event; `observed` is when eventflow received it.
pub fn map(e: &EventData, observed: DateTime<Utc>, extra: &dyn Extra) -> Result<Mapped, String> {
    let raw: Raw = e
        .raw
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let (static_resource, static_attrs) = extra.extra(e)?;
    let resource = resource(e, &raw, static_resource);
    let when = match e.api_version {
        ApiVersion::EventsV1 => time(
            raw.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref()),
        )
        .or_else(|| time(raw.event_time.as_ref()))
        .or_else(|| time(raw.deprecated_last_timestamp.as_ref()))
        .or_else(|| time(raw.last_timestamp.as_ref()))
        .or_else(|| time(raw.deprecated_first_timestamp.as_ref()))
        .or_else(|| time(raw.first_timestamp.as_ref())),
        ApiVersion::CoreV1 => time(raw.event_time.as_ref())
            .or_else(|| time(raw.last_timestamp.as_ref()))
            .or_else(|| time(raw.first_timestamp.as_ref())),
    }
    .or(if e.raw.is_some() {
        None
    } else {
        e.last_seen.or(e.first_seen)
    });
    let (number, text) = severity(&e.type_);
    Ok(Mapped {
        resource,
        record: LogRecord {
            time_unix_nano: when.map_or(0, nanos),
            observed_time_unix_nano: nanos(observed),
            severity_number: number as i32,
            severity_text: text.to_string(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(e.message.clone())),
            }),
            attributes: attributes(e, raw, static_attrs),
            ..LogRecord::default()
        },
    })
}

/// The resource: the involved object, where it runs, what `enrich` added, the config's.
fn resource(e: &EventData, raw: &Raw<'_>, configured: Attrs) -> Attrs {
    let object = raw.involved_object.as_ref().or(raw.regarding.as_ref());
    let mut resource: Attrs = Vec::with_capacity(12);
    if !e.cluster.is_empty() {
        resource.push(("k8s.cluster.name".into(), e.cluster.to_string()));
    }
    resource.push(("k8s.node.name".into(), e.host.clone()));
    resource.push(("k8s.object.kind".into(), e.kind.clone()));
    resource.push(("k8s.object.name".into(), e.object_name.clone()));
    resource.push(("k8s.object.uid".into(), e.object_uid.clone()));
    resource.push(("k8s.object.fieldpath".into(), e.field_path.clone()));
    resource.push((
        "k8s.object.api_version".into(),
        object
            .and_then(|o| o.api_version.as_deref())
            .unwrap_or_default()
            .to_string(),
    ));
    resource.push((
        "k8s.object.resource_version".into(),
        object
            .and_then(|o| o.resource_version.as_deref())
            .unwrap_or_default()
            .to_string(),
    ));
    // What `enrich` adds, under the semantic conventions' names.
    let kind = e.kind.to_ascii_lowercase();
    if let Some(labels) = &e.object_labels {
        for (k, v) in labels.iter() {
            resource.push((format!("k8s.{kind}.label.{k}"), v.clone()));
        }
    }
    if let Some(labels) = &e.namespace_labels {
        for (k, v) in labels.iter() {
            resource.push((format!("k8s.namespace.label.{k}"), v.clone()));
        }
    }
    if !e.owner_name.is_empty() && OWNER_KINDS.contains(&e.owner_kind.as_str()) {
        resource.push((
            format!("k8s.{}.name", e.owner_kind.to_ascii_lowercase()),
            e.owner_name.clone(),
        ));
    }
    for (k, v) in configured {
        resource.retain(|(key, _)| *key != k);
        resource.push((k, v));
    }
    resource
}

/// The record's attributes: the Event's own, then the config's.
fn attributes(e: &EventData, raw: Raw<'_>, configured: Attrs) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(12);
    attributes.push(string("k8s.event.reason", e.reason.clone()));
    attributes.push(string(
        "k8s.event.action",
        raw.action.map(Cow::into_owned).unwrap_or_default(),
    ));
    if let Some(created) = time(raw.metadata.creation_timestamp.as_ref()) {
        attributes.push(string("k8s.event.start_time", go_time(created)));
    }
    attributes.push(string("k8s.event.name", e.name.clone()));
    attributes.push(string("k8s.event.uid", e.uid.clone()));
    attributes.push(string("k8s.namespace.name", e.object_namespace.clone()));
    let with_raw = e.raw.is_some();
    let count = if with_raw {
        raw.count
            .filter(|c| *c != 0)
            .or(raw.deprecated_count.filter(|c| *c != 0))
            .or(raw.series.as_ref().and_then(|s| s.count))
            .unwrap_or(0)
    } else {
        e.count
    };
    if count != 0 {
        attributes.push(int("k8s.event.count", count));
    }
    let controller = if with_raw {
        raw.reporting_controller
            .or(raw.reporting_component)
            .map(Cow::into_owned)
            .unwrap_or_default()
    } else {
        e.source.clone()
    };
    if !controller.is_empty() {
        attributes.push(string("k8s.event.reporting_controller", controller));
    }
    let instance = if with_raw {
        raw.reporting_instance
            .map(Cow::into_owned)
            .unwrap_or_default()
    } else {
        e.host.clone()
    };
    if !instance.is_empty() {
        attributes.push(string("k8s.event.reporting_instance", instance));
    }
    for (k, v) in configured {
        attributes.retain(|a| a.key != k);
        attributes.push(string(k, v));
    }
    attributes
}

/// Whether `kv` are the string attributes `attrs`, in order.
fn same_attributes(kv: &[KeyValue], attrs: &Attrs) -> bool {
    kv.len() == attrs.len()
        && kv.iter().zip(attrs).all(|(a, (k, v))| {
            a.key == *k
                && matches!(a.value.as_ref().and_then(|x| x.value.as_ref()),
                    Some(any_value::Value::StringValue(s)) if s == v)
        })
}

/// The export request of mapped events: one `ResourceLogs` per distinct resource (in the order
/// they first appear), each with one scope.
pub fn request(mapped: Vec<Mapped>) -> ExportLogsServiceRequest {
    use std::hash::BuildHasher;
    let mut resource_logs: Vec<ResourceLogs> = Vec::new();
    // The hash of a resource's attributes -> its places in `resource_logs` (the attributes are
    // moved into the request, not copied for a key).
    let hasher = foldhash::fast::FixedState::default();
    let mut seen: HashMap<u64, Vec<usize>, foldhash::fast::RandomState> = HashMap::default();
    for m in mapped {
        let h = hasher.hash_one(&m.resource);
        let places = seen.entry(h).or_default();
        let same = places.iter().copied().find(|&i| {
            resource_logs[i]
                .resource
                .as_ref()
                .is_some_and(|r| same_attributes(&r.attributes, &m.resource))
        });
        if let Some(i) = same {
            resource_logs[i].scope_logs[0].log_records.push(m.record);
            continue;
        }
        places.push(resource_logs.len());
        let attributes = m.resource.into_iter().map(|(k, v)| string(k, v)).collect();
        resource_logs.push(ResourceLogs {
            resource: Some(Resource {
                attributes,
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                log_records: vec![m.record],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        });
    }
    ExportLogsServiceRequest { resource_logs }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoExtra;
    impl Extra for NoExtra {
        fn extra(&self, _: &EventData) -> Result<(Attrs, Attrs), String> {
            Ok((Vec::new(), Vec::new()))
        }
    }

    fn attr<'a>(kv: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        kv.iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn severities_follow_the_collector() {
        assert_eq!(severity("warning"), (SeverityNumber::Warn, "warning"));
        assert_eq!(severity("Normal"), (SeverityNumber::Info, "Normal"));
        assert_eq!(severity("ERROR"), (SeverityNumber::Error, "ERROR"));
        assert_eq!(severity("Critical"), (SeverityNumber::Fatal, "Critical"));
        assert_eq!(severity("Odd"), (SeverityNumber::Unspecified, ""));
    }

    #[test]
    fn go_time_is_what_go_prints() {
        let t = DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
            .unwrap_or_default()
            .with_timezone(&Utc);
        assert_eq!(go_time(t), "2024-05-01 10:00:00 +0000 UTC");
        let t = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.120Z")
            .unwrap_or_default()
            .with_timezone(&Utc);
        assert_eq!(go_time(t), "2024-05-01 10:00:00.12 +0000 UTC");
    }

    #[test]
    fn events_v1_time_is_the_last_observation_and_count_comes_from_the_series() {
        let j = r#"{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"n","namespace":"shop","uid":"u","creationTimestamp":"2024-05-01T09:59:59Z"},
            "regarding":{"kind":"Pod","name":"web","namespace":"shop","apiVersion":"v1","resourceVersion":"42"},"note":"pulled","type":"Normal","reason":"Pulled","action":"Pulling",
            "eventTime":"2024-05-01T10:00:00.000001Z","series":{"count":3,"lastObservedTime":"2024-05-01T10:05:00Z"},"reportingController":"kubelet","reportingInstance":"node-1"}"#;
        let e = crate::event::decode(j, &std::sync::Arc::from("prod")).unwrap_or_default();
        let m = map(&e, Utc::now(), &NoExtra).unwrap_or_else(|e| panic!("{e}"));
        let five = DateTime::parse_from_rfc3339("2024-05-01T10:05:00Z").unwrap_or_default();
        assert_eq!(m.record.time_unix_nano, nanos(five.with_timezone(&Utc)));
        assert_eq!(
            attr(&m.record.attributes, "k8s.event.count"),
            Some(&any_value::Value::IntValue(3))
        );
        assert_eq!(
            attr(&m.record.attributes, "k8s.event.action"),
            Some(&any_value::Value::StringValue("Pulling".into()))
        );
        assert_eq!(
            attr(&m.record.attributes, "k8s.event.start_time"),
            Some(&any_value::Value::StringValue(
                "2024-05-01 09:59:59 +0000 UTC".into()
            ))
        );
        assert!(
            m.resource
                .contains(&("k8s.object.resource_version".into(), "42".into()))
        );
        assert!(
            m.resource
                .contains(&("k8s.cluster.name".into(), "prod".into()))
        );
    }
}
