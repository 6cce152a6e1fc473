//! One metadata-only watch per kind that `enrich` needs, started the first time an event needs
//! it and kept until the stage stops: a list, then changes, written to the [`Cache`].

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::cache::{Cache, Meta, Sync};
use crate::event::Labels;

/// What a watch keeps of an object's metadata.
pub fn meta_of(m: &kube::api::ObjectMeta, annotations: &[String]) -> Meta {
    let labels = m
        .labels
        .as_ref()
        .filter(|l| !l.is_empty())
        .map(|l| Arc::new(l.clone()));
    let annotations = m.annotations.as_ref().and_then(|all| {
        let picked: Labels = annotations
            .iter()
            .filter_map(|k| all.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        (!picked.is_empty()).then(|| Arc::new(picked))
    });
    let controller = m.owner_references.as_ref().and_then(|refs| {
        refs.iter()
            .find(|r| r.controller == Some(true))
            .map(|r| (Box::from(r.kind.as_str()), Box::from(r.name.as_str())))
    });
    Meta {
        labels,
        annotations,
        controller,
    }
}

/// Watches `ar` (kind number `kind` in the cache) until aborted.
pub async fn run(
    client: kube::Client,
    kind: usize,
    kind_name: &'static str,
    ar: ApiResource,
    cache: Arc<Cache>,
    annotations: Arc<[String]>,
    stage: String,
) {
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &ar);
    let errors = super::telemetry::watch_errors(&stage, kind_name);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if failing {
                    tracing::info!(stage = %stage, kind = kind_name, "enrich: watching again");
                    failing = false;
                }
                match ev {
                    Event::Init => cache.begin_list(kind),
                    Event::InitApply(o) | Event::Apply(o) => {
                        let m = &o.metadata;
                        let (ns, name) = (
                            m.namespace.as_deref().unwrap_or(""),
                            m.name.as_deref().unwrap_or(""),
                        );
                        cache.put(kind, ns, name, meta_of(m, &annotations));
                    }
                    Event::InitDone => cache.end_list(kind),
                    Event::Delete(o) => {
                        let m = &o.metadata;
                        cache.delete(
                            kind,
                            m.namespace.as_deref().unwrap_or(""),
                            m.name.as_deref().unwrap_or(""),
                        );
                    }
                }
            }
            Err(e) => {
                errors.increment(1);
                if !failing {
                    tracing::warn!(stage = %stage, kind = kind_name, error = %e, "enrich: cannot watch this kind (retrying); its events pass without what it would add — does the service account have list and watch on it?");
                    failing = true;
                }
                if cache.view().sync(kind) == Sync::Listing {
                    cache.set_sync(kind, Sync::Failing);
                }
            }
        }
    }
}
