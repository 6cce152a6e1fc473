//! The object type the kube client decodes Events into: our normalized event, decoded straight
//! from the response text (the object's JSON text is borrowed from it, not copied, and kept as
//! `raw`, without `metadata.managedFields`, only when `RAW`: a stage downstream reads it), plus
//! the metadata the client needs. An
//! object that does not normalize still decodes: it carries its error, so one bad item cannot
//! fail a whole list page.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicResourceScope;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::event::{EventData, WireEvent};

/// Which Events API to read (the `api` field of `kube_events`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
pub enum Flavor {
    #[default]
    #[serde(rename = "core/v1")]
    CoreV1,
    #[serde(rename = "events.k8s.io/v1")]
    EventsV1,
}

/// One Event as received; with its `raw` JSON text when `RAW`.
#[derive(Debug, Clone)]
pub struct KubeEvent<const RAW: bool = true> {
    pub meta: ObjectMeta,
    /// The normalized event (cluster left empty), or why it could not be normalized.
    pub data: Result<EventData, String>,
}

/// The cluster is set by the source after decoding.
static NO_CLUSTER: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

#[derive(Deserialize)]
struct MetaOnly {
    #[serde(default)]
    metadata: MetaFields,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MetaFields {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl<'de, const RAW: bool> Deserialize<'de> for KubeEvent<RAW> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Borrowed from the response text: the kube client decodes lists and watch lines
        // from strings.
        let raw = <&'de RawValue>::deserialize(d)?;
        let text = raw.get();
        let parsed = serde_json::from_str::<WireEvent>(text)
            .map_err(|e| e.to_string())
            .and_then(|w| w.normalize(&NO_CLUSTER, None).map_err(|e| e.to_string()));
        match parsed {
            Ok(mut data) => {
                // The list-then-watch loop reads the resourceVersion and uid from `data`;
                // `meta` is filled only for objects that do not decode.
                let meta = ObjectMeta::default();
                if RAW {
                    data.raw = Some(without_managed_fields(text));
                }
                Ok(KubeEvent {
                    meta,
                    data: Ok(data),
                })
            }
            Err(e) => {
                let m = serde_json::from_str::<MetaOnly>(text)
                    .map(|m| m.metadata)
                    .unwrap_or_default();
                Ok(KubeEvent {
                    meta: ObjectMeta {
                        name: m.name,
                        namespace: m.namespace,
                        uid: m.uid,
                        resource_version: m.resource_version,
                        ..ObjectMeta::default()
                    },
                    data: Err(e),
                })
            }
        }
    }
}

/// Where a list page says the list is: its resourceVersion and the token of the next page.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PageHead {
    pub resource_version: Option<String>,
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
}

/// Decodes a list page's items in one pass over its text, handing its `metadata` to `head` as
/// soon as it is read (the API server writes it before `items`), so that the next page can be
/// asked for while this one's items are decoded. A page with no `metadata` drops `head`.
///
/// Without `RAW` each object is first decoded straight into the normalized event (one pass over
/// its text); only when that fails for any object is the page read again the lenient way
/// ([`KubeEvent`]'s own decoding: the object's text first, then the event from it), so that a
/// bad object is skipped alone and the rest of the page still goes out.
pub fn decode_page<const RAW: bool>(
    text: &str,
    head: tokio::sync::oneshot::Sender<PageHead>,
) -> Result<Vec<KubeEvent<RAW>>, serde_json::Error> {
    let mut head = Some(head);
    if !RAW && let Ok(items) = decode_items::<Strict>(text, &mut head) {
        return Ok(items
            .into_iter()
            .map(|Strict(data)| KubeEvent {
                meta: ObjectMeta::default(),
                data: Ok(data),
            })
            .collect());
    }
    decode_items::<KubeEvent<RAW>>(text, &mut head)
}

fn decode_items<'de, T: Deserialize<'de>>(
    text: &'de str,
    head: &mut Option<tokio::sync::oneshot::Sender<PageHead>>,
) -> Result<Vec<T>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let items = serde::de::DeserializeSeed::deserialize(
        PageSeed::<T> {
            head,
            item: std::marker::PhantomData,
        },
        &mut de,
    )?;
    de.end()?;
    Ok(items)
}

/// An Event decoded in one pass, or an error for anything that does not normalize.
struct Strict(EventData);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WireEvent::deserialize(d)?
            .normalize(&NO_CLUSTER, None)
            .map(Strict)
            .map_err(serde::de::Error::custom)
    }
}

struct PageSeed<'h, T> {
    head: &'h mut Option<tokio::sync::oneshot::Sender<PageHead>>,
    item: std::marker::PhantomData<T>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum PageField {
    Metadata,
    Items,
    #[serde(other)]
    Other,
}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for PageSeed<'_, T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for PageSeed<'_, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of Events (an object with `metadata` and `items`)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(field) = map.next_key::<PageField>()? {
            match field {
                PageField::Metadata => {
                    let head: PageHead = map.next_value()?;
                    if let Some(tx) = self.head.take() {
                        let _ = tx.send(head);
                    }
                }
                PageField::Items => {
                    items = map.next_value::<Option<Vec<T>>>()?.unwrap_or_default();
                }
                PageField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(items)
    }
}

#[derive(Deserialize)]
struct ManagedFieldsOf<'a> {
    #[serde(borrow)]
    metadata: Option<ManagedFields<'a>>,
}

#[derive(Deserialize)]
struct ManagedFields<'a> {
    #[serde(borrow, rename = "managedFields")]
    managed_fields: Option<&'a RawValue>,
}

/// An Event object's JSON text without its `metadata.managedFields` (the API server's record of
/// which client wrote which field: often a third of an Event's text, and nothing an Event's
/// reader uses; `kubectl get` hides it too). The rest is the text as received, byte for byte.
pub fn without_managed_fields(text: &str) -> Box<str> {
    let span = serde_json::from_str::<ManagedFieldsOf>(text)
        .ok()
        .and_then(|o| o.metadata?.managed_fields)
        .and_then(|v| {
            // Where the value lies in `text` (it is borrowed from it).
            let start = (v.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
            member_span(text, start, start + v.get().len())
        });
    match span.and_then(|(from, to)| Some((text.get(..from)?, text.get(to..)?))) {
        Some((head, tail)) => format!("{head}{tail}").into_boxed_str(),
        None => Box::from(text),
    }
}

/// The bytes to remove for the member whose value is `text[start..end]`: its key, the colon,
/// the value, and one comma beside it. None if the key is not written plainly.
fn member_span(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let before = text.get(..start)?.trim_end();
    let before = before.strip_suffix(':')?.trim_end();
    let key_start = before.strip_suffix("\"managedFields\"")?.len();
    let after = text.get(end..)?;
    let rest = after.trim_start();
    if let Some(next) = rest.strip_prefix(',') {
        // A member follows: remove up to it.
        let to = text.len() - next.trim_start().len();
        Some((key_start, to))
    } else {
        // The last member: remove the comma before it, if any.
        let head = text.get(..key_start)?.trim_end();
        let from = head.strip_suffix(',').map_or(key_start, str::len);
        Some((from, end))
    }
}

impl<const RAW: bool> KubeEvent<RAW> {
    /// The object's resourceVersion.
    pub fn resource_version(&self) -> Option<&str> {
        match &self.data {
            Ok(d) => Some(d.resource_version.as_str()),
            Err(_) => self.meta.resource_version.as_deref(),
        }
    }

    /// The object's uid.
    pub fn uid(&self) -> Option<&str> {
        match &self.data {
            Ok(d) => Some(d.uid.as_str()),
            Err(_) => self.meta.uid.as_deref(),
        }
    }
}

impl<const RAW: bool> kube::Resource for KubeEvent<RAW> {
    type DynamicType = Flavor;
    type Scope = DynamicResourceScope;

    fn kind(_: &Flavor) -> Cow<'_, str> {
        Cow::Borrowed("Event")
    }
    fn group(dt: &Flavor) -> Cow<'_, str> {
        Cow::Borrowed(match dt {
            Flavor::CoreV1 => "",
            Flavor::EventsV1 => "events.k8s.io",
        })
    }
    fn version(_: &Flavor) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &Flavor) -> Cow<'_, str> {
        Cow::Borrowed("events")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::{KubeEvent, decode_page, without_managed_fields};

    fn event(name: &str, count: &str) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"{name}","namespace":"ns","uid":"u-{name}","resourceVersion":"7"}},"involvedObject":{{"kind":"Pod","name":"p"}},"reason":"BackOff","type":"Warning","count":{count}}}"#
        )
    }

    fn names<const RAW: bool>(items: &[KubeEvent<RAW>]) -> Vec<Result<String, String>> {
        items
            .iter()
            .map(|i| match &i.data {
                Ok(d) => Ok(d.name.clone()),
                Err(_) => Err(i.meta.name.clone().unwrap_or_default()),
            })
            .collect()
    }

    /// A page's head arrives whatever its items hold; a bad item is skipped alone (the page
    /// is read again the lenient way), with and without the objects' text kept.
    #[test]
    fn a_page_decodes_in_one_pass_and_a_bad_item_fails_only_itself() {
        let good = format!(
            r#"{{"kind":"EventList","metadata":{{"resourceVersion":"9","continue":"next"}},"items":[{},{}]}}"#,
            event("a", "1"),
            event("b", "2")
        );
        let bad = format!(
            r#"{{"kind":"EventList","items":[{},{},{}],"metadata":{{"resourceVersion":"9"}}}}"#,
            event("a", "1"),
            event("bad", r#""three""#),
            event("c", "3")
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let items = decode_page::<false>(&good, tx).expect("page");
        let head = rx.blocking_recv().expect("head");
        assert_eq!(head.resource_version.as_deref(), Some("9"));
        assert_eq!(head.continue_.as_deref(), Some("next"));
        assert_eq!(names(&items), [Ok("a".into()), Ok("b".into())]);
        assert!(
            items
                .iter()
                .all(|i| i.data.as_ref().is_ok_and(|d| d.raw.is_none()))
        );

        let want = [
            Ok("a".to_string()),
            Err("bad".to_string()),
            Ok("c".to_string()),
        ];
        let (tx, rx) = tokio::sync::oneshot::channel();
        let items = decode_page::<false>(&bad, tx).expect("page");
        assert_eq!(names(&items), want);
        assert_eq!(rx.blocking_recv().expect("head").continue_, None);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let items = decode_page::<true>(&bad, tx).expect("page");
        assert_eq!(names(&items), want);
        assert!(items[0].data.as_ref().is_ok_and(|d| d.raw.is_some()));

        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(decode_page::<false>(r#"{"metadata":{},"items":[{"#, tx).is_err());
        assert!(
            rx.blocking_recv().is_ok(),
            "the head was read before the error"
        );
    }

    #[test]
    fn managed_fields_are_cut_and_the_rest_kept_byte_for_byte() {
        let mf = r#"[{"manager":"kubelet","fieldsV1":{"f:count":{},"f:note":"x}],"}}]"#;
        for (text, want) in [
            (
                format!(
                    r#"{{"metadata":{{"name":"a","managedFields":{mf},"uid":"u"}},"reason":"R"}}"#
                ),
                r#"{"metadata":{"name":"a","uid":"u"},"reason":"R"}"#,
            ),
            (
                format!(r#"{{"metadata":{{"name":"a", "managedFields" : {mf} }},"x":1}}"#),
                r#"{"metadata":{"name":"a" },"x":1}"#,
            ),
            (
                format!(r#"{{"metadata":{{"managedFields":{mf}}}}}"#),
                r#"{"metadata":{}}"#,
            ),
            (
                format!("{{\"metadata\": {{\n  \"managedFields\": {mf},\n  \"name\": \"a\"\n}}}}"),
                "{\"metadata\": {\n  \"name\": \"a\"\n}}",
            ),
            // No managedFields, or not in metadata, or a key written with an escape: as is.
            (
                r#"{"metadata":{"name":"a"}}"#.to_string(),
                r#"{"metadata":{"name":"a"}}"#,
            ),
            (
                format!(r#"{{"managedFields":{mf},"metadata":{{}}}}"#),
                &*format!(r#"{{"managedFields":{mf},"metadata":{{}}}}"#).leak(),
            ),
            (
                format!(r#"{{"metadata":{{"managed\u0046ields":{mf}}}}}"#),
                &*format!(r#"{{"metadata":{{"managed\u0046ields":{mf}}}}}"#).leak(),
            ),
        ] {
            let got = without_managed_fields(&text);
            assert_eq!(&*got, want, "{text}");
            serde_json::from_str::<serde_json::Value>(&got).expect("still JSON");
        }
    }
}
