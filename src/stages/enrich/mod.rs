//! `enrich`: adds the involved object's labels (and chosen annotations), its namespace's
//! labels and its top controller (`owner_kind`, `owner_name`) to each event, from
//! metadata-only watches kept in a bounded cache — no API request per event.
//!
//! A watch per kind starts the first time an event needs that kind (Namespaces for
//! `namespace_labels`; the involved object's kind if it is in `kinds`; the owners' kinds while
//! following `ownerReferences` with `controller: true`, Pod -> ReplicaSet -> Deployment).
//! An event whose object (or namespace, or owner) is not cached yet waits, with the rest of its
//! batch, until the cache has it or `wait_for_cache` has passed — only while that kind is
//! still being listed, or when the event is recent (the object usually appears a moment before
//! its first event); then it passes with what was found, counted as `enrich_miss`. Events of
//! another cluster pass untouched. See [`cache`] for the memory bound and deletions.

pub mod cache;
pub mod telemetry;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::component::{
    BuildContext, BuildError, Explanation, Invalid, Stage, StageConfig, StageError, StageKind,
    StageType, Step, Transform, TransformContext, Verdict,
};
use crate::event::{Event, EventData};
use crate::types::Dur;
use cache::{Cache, Meta, Sync, View};
pub use watch::meta_of;

/// The kinds `enrich` can watch: kind, group, version, plural, namespaced.
pub const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("Namespace", "", "v1", "namespaces", false),
    ("Pod", "", "v1", "pods", true),
    ("ReplicaSet", "apps", "v1", "replicasets", true),
    ("Deployment", "apps", "v1", "deployments", true),
    ("StatefulSet", "apps", "v1", "statefulsets", true),
    ("DaemonSet", "apps", "v1", "daemonsets", true),
    ("Job", "batch", "v1", "jobs", true),
    ("CronJob", "batch", "v1", "cronjobs", true),
    ("Node", "", "v1", "nodes", false),
    ("Service", "", "v1", "services", true),
    (
        "PersistentVolumeClaim",
        "",
        "v1",
        "persistentvolumeclaims",
        true,
    ),
];

const NAMESPACE: usize = 0;

/// The index of `kind` in [`KINDS`].
pub fn kind_index(kind: &str) -> Option<usize> {
    KINDS.iter().position(|(k, ..)| *k == kind)
}

/// Adds labels, chosen annotations and the owning workload of each event's involved object.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Add the involved object's labels as `object_labels`.
    #[serde(default = "yes")]
    pub object_labels: bool,
    /// Annotation keys of the involved object to add as `object_annotations` (only these:
    /// annotations can be large). Default: none.
    #[serde(default)]
    pub object_annotations: Vec<String>,
    /// Add the labels of the event's namespace as `namespace_labels` (watches Namespaces).
    #[serde(default = "yes")]
    pub namespace_labels: bool,
    /// Add the top controller of the involved object as `owner_kind` and `owner_name`,
    /// following `ownerReferences` with `controller: true` through the kinds in `kinds`
    /// (Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob).
    #[serde(default = "yes")]
    pub owner: bool,
    /// The kinds whose metadata may be watched, for involved objects and owners. Each is
    /// watched only once an event needs it. Known kinds: Pod, ReplicaSet, Deployment,
    /// StatefulSet, DaemonSet, Job, CronJob, Node, Service, PersistentVolumeClaim.
    #[serde(default = "default_kinds")]
    pub kinds: Vec<String>,
    /// The most objects cached, all kinds together (least recently used are forgotten first,
    /// counted in `eventflow_enrich_evicted_total`).
    #[serde(default = "default_max_objects")]
    pub max_objects: u64,
    /// How long an event waits for its object to appear in the cache (while its kind is first
    /// listed, or when the event is recent) before passing without it (`enrich_miss`).
    #[serde(default = "default_wait")]
    pub wait_for_cache: Dur,
    /// How long a deleted object's metadata is kept, so events about its deletion still get
    /// its labels.
    #[serde(default = "default_keep_deleted")]
    pub keep_deleted: Dur,
    /// Enrich only events whose `cluster` is this (others pass untouched). Default: the
    /// kubeconfig context's name, or `in-cluster` — what a `kube_events` source with the same
    /// `kubeconfig` and `context` calls its cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// A kubeconfig file. Default: with neither `kubeconfig` nor `context` set, those of the
    /// `kube_events` sources upstream (when they all name the same); else in-cluster config,
    /// then `$KUBECONFIG`, then `~/.kube/config`.
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context. Default: the upstream sources' (as for `kubeconfig`), else its
    /// current context.
    #[serde(default)]
    pub context: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_kinds() -> Vec<String> {
    [
        "Pod",
        "ReplicaSet",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
    ]
    .map(String::from)
    .to_vec()
}

fn default_max_objects() -> u64 {
    100_000
}

fn default_wait() -> Dur {
    Dur::secs(2)
}

fn default_keep_deleted() -> Dur {
    Dur::secs(300)
}

/// One cached object when every Pod's labels differ, measured (0.9 KB: BENCHMARKS.md; 0.2 KB
/// when a workload's Pods share them).
const BYTES_PER_OBJECT: u64 = 1024;

impl StageConfig for EnrichConfig {
    fn memory(&self) -> Vec<crate::budget::Bound> {
        vec![crate::budget::Bound::each(
            "objects cached",
            "max_objects",
            self.max_objects,
            BYTES_PER_OBJECT,
        )]
    }

    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if !self.object_labels
            && !self.namespace_labels
            && !self.owner
            && self.object_annotations.is_empty()
        {
            out.push(Invalid::new(
                "object_labels",
                "every switch is off (object_labels, object_annotations, namespace_labels, owner): this stage would add nothing",
            ));
        }
        let known: Vec<&str> = KINDS
            .iter()
            .map(|(k, ..)| *k)
            .filter(|k| *k != "Namespace")
            .collect();
        for (i, k) in self.kinds.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                let hint = crate::types::did_you_mean(k, known.iter().copied())
                    .map(|m| format!(" (did you mean `{m}`?)"))
                    .unwrap_or_default();
                out.push(Invalid::new(
                    format!("kinds[{i}]"),
                    format!(
                        "unknown kind `{k}`{hint}; the kinds enrich can watch: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        for (i, a) in self.object_annotations.iter().enumerate() {
            if a.is_empty() {
                out.push(Invalid::new(
                    format!("object_annotations[{i}]"),
                    "an empty annotation key",
                ));
            }
        }
        crate::component::in_range(&mut out, "max_objects", self.max_objects, 1, 10_000_000);
        if self.wait_for_cache.0 > Duration::from_secs(60) {
            out.push(Invalid::new(
                "wait_for_cache",
                "at most 1m (events wait this long, holding their batch)",
            ));
        }
        out
    }

    fn explain(&self, e: &EventData) -> Explanation {
        let mut steps = Vec::new();
        let kind_watched = self.kinds.contains(&e.kind);
        let mut adds = Vec::new();
        if kind_watched && self.object_labels {
            adds.push(format!("the labels of {} `{}`", e.kind, e.object_name));
        }
        if kind_watched && !self.object_annotations.is_empty() {
            adds.push(format!(
                "its annotations {}",
                self.object_annotations.join(", ")
            ));
        }
        if self.namespace_labels && !namespace_of(e).is_empty() {
            adds.push(format!("the labels of namespace `{}`", namespace_of(e)));
        }
        if kind_watched && self.owner {
            adds.push("its top controller (owner_kind, owner_name)".to_string());
        }
        if !kind_watched {
            steps.push(Step::note(format!(
                "kind `{}` is not in `kinds`: no object labels or owner",
                e.kind
            )));
        }
        steps.push(Step::note(if adds.is_empty() {
            "adds nothing to this event".to_string()
        } else {
            format!(
                "adds {} from the cluster's watched metadata (not known without a cluster)",
                adds.join(", ")
            )
        }));
        Explanation::new(Verdict::Passes, steps)
    }

    /// A test has no cluster: its events pass as given (give them the labels `enrich` would
    /// add).
    fn offline(&self) -> Option<Arc<dyn StageConfig>> {
        Some(Arc::new(crate::component::Passthrough))
    }

    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Stage, BuildError>> {
        Box::pin(async move {
            let (client, context_name) =
                crate::kube_client::connect(self.kubeconfig.as_deref(), self.context.as_deref())
                    .await
                    .map_err(|e| cx.failed(e))?;
            let enricher =
                Enricher::new(self, &cx.id, self.cluster.clone().unwrap_or(context_name));
            Ok(Stage::Transform(Box::new(EnrichStage {
                enricher,
                client,
                watches: JoinSet::new(),
                stage: cx.id.clone(),
            }) as Box<dyn Transform>))
        })
    }
}

/// The namespace whose labels an event gets: its object's, else its own.
fn namespace_of(e: &EventData) -> &str {
    if e.object_namespace.is_empty() {
        &e.namespace
    } else {
        &e.object_namespace
    }
}

/// What one lookup found for an event.
#[derive(Debug, Default)]
pub struct Found {
    object: Option<Arc<Meta>>,
    namespace: Option<Arc<Meta>>,
    owner: Option<(Box<str>, Box<str>)>,
    /// Something is missing that may still appear (wait for it).
    pending: bool,
    /// Something is missing.
    missing: bool,
    /// Kinds whose watches must start.
    start: Vec<usize>,
}

/// The decision for each event, given the cache: usable on its own (benchmarks).
pub struct Enricher {
    cache: Arc<Cache>,
    cluster: String,
    object_labels: bool,
    annotations: Arc<[String]>,
    namespace_labels: bool,
    owner: bool,
    /// By [`KINDS`] index: may it be watched.
    allowed: Vec<bool>,
    wait: Duration,
    enriched: metrics::Counter,
    missed: metrics::Counter,
    not_watched: metrics::Counter,
    other_cluster: metrics::Counter,
}

/// How a batch came out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub enriched: u64,
    pub missed: u64,
    pub not_watched: u64,
    pub other_cluster: u64,
}

impl Enricher {
    pub fn new(cfg: &EnrichConfig, stage: &str, cluster: String) -> Enricher {
        let mut allowed: Vec<bool> = KINDS
            .iter()
            .map(|(k, ..)| cfg.kinds.iter().any(|x| x == k))
            .collect();
        allowed[NAMESPACE] = cfg.namespace_labels;
        Enricher {
            cache: Arc::new(Cache::new(
                KINDS.len(),
                usize::try_from(cfg.max_objects).unwrap_or(usize::MAX),
                cfg.keep_deleted.0,
                stage,
            )),
            cluster,
            object_labels: cfg.object_labels,
            annotations: cfg.object_annotations.clone().into(),
            namespace_labels: cfg.namespace_labels,
            owner: cfg.owner,
            allowed,
            wait: cfg.wait_for_cache.0,
            enriched: telemetry::events(stage, "enriched"),
            missed: telemetry::events(stage, "enrich_miss"),
            not_watched: telemetry::events(stage, "not_watched"),
            other_cluster: telemetry::events(stage, "other_cluster"),
        }
    }

    /// The cache (benchmarks and tests fill it directly).
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Whether a missing object may still appear for this event: its kind is being listed,
    /// or the event is recent.
    fn may_appear(&self, view: &View<'_>, kind: usize, e: &EventData) -> bool {
        match view.sync(kind) {
            Sync::NotStarted | Sync::Listing => true,
            Sync::Failing => false,
            Sync::Synced => {
                let seen = e.last_seen.or(e.first_seen);
                let recent = chrono::Duration::from_std(self.wait + Duration::from_secs(60))
                    .unwrap_or(chrono::Duration::MAX);
                seen.is_none_or(|t| chrono::Utc::now() - t <= recent)
            }
        }
    }

    /// Looks `kind/ns/name` up, noting a watch to start and whether to wait.
    fn lookup(
        &self,
        view: &View<'_>,
        f: &mut Found,
        kind: usize,
        ns: &str,
        name: &str,
        e: &EventData,
    ) -> Option<Arc<Meta>> {
        let ns = if KINDS[kind].4 { ns } else { "" };
        if let Some(m) = view.get(kind, ns, name) {
            return Some(m.clone());
        }
        if view.sync(kind) == Sync::NotStarted {
            f.start.push(kind);
        }
        f.missing = true;
        f.pending |= self.may_appear(view, kind, e);
        None
    }

    /// What the cache has for `e` (None: not this stage's cluster).
    pub fn find(&self, view: &View<'_>, event: &EventData) -> Option<Found> {
        if *event.cluster != *self.cluster {
            return None;
        }
        let mut found = Found::default();
        let ns = namespace_of(event);
        if self.namespace_labels && !ns.is_empty() {
            found.namespace = self.lookup(view, &mut found, NAMESPACE, "", ns, event);
        }
        let Some(kind) = kind_index(&event.kind).filter(|k| *k != NAMESPACE && self.allowed[*k])
        else {
            return Some(found);
        };
        found.object = self.lookup(view, &mut found, kind, ns, &event.object_name, event);
        if self.owner
            && let Some(obj) = &found.object
        {
            let mut next = obj.controller.clone();
            for _ in 0..8 {
                let Some((kind_name, name)) = next.take() else {
                    break;
                };
                let watched =
                    kind_index(&kind_name).filter(|i| *i != NAMESPACE && self.allowed[*i]);
                found.owner = Some((kind_name, name.clone()));
                let Some(i) = watched else { break };
                match self.lookup(view, &mut found, i, ns, &name, event) {
                    Some(m) => next.clone_from(&m.controller),
                    None => break,
                }
            }
        }
        Some(found)
    }

    /// Sets what was found on `e`.
    fn apply(&self, e: Event, f: &Found) -> Event {
        let labels = |m: &Option<Arc<Meta>>| m.as_ref().and_then(|m| m.labels.clone());
        let object_labels = if self.object_labels {
            labels(&f.object)
        } else {
            None
        };
        let annotations = f.object.as_ref().and_then(|m| m.annotations.clone());
        let namespace_labels = labels(&f.namespace);
        if object_labels.is_none()
            && annotations.is_none()
            && namespace_labels.is_none()
            && f.owner.is_none()
        {
            return e;
        }
        e.modify(|d| {
            d.object_labels = object_labels;
            d.object_annotations = annotations;
            d.namespace_labels = namespace_labels;
            if let Some((k, n)) = &f.owner {
                d.owner_kind = k.to_string();
                d.owner_name = n.to_string();
            }
        })
    }

    /// What the cache has now for each event of a batch (`None`: another cluster's), and
    /// whether any of them misses something that may still appear; the kinds whose watches
    /// must start are added to `start`.
    fn find_all(&self, batch: &[Event], start: &mut Vec<usize>) -> (Vec<Option<Found>>, bool) {
        let view = self.cache.view();
        let mut pending = false;
        let found = batch
            .iter()
            .map(|e| {
                let f = self.find(&view, e);
                if let Some(f) = &f {
                    start.extend_from_slice(&f.start);
                    pending |= f.pending;
                }
                f
            })
            .collect();
        (found, pending)
    }

    /// Sets what was found on each event, and counts the outcomes.
    fn apply_all(&self, batch: Vec<Event>, found: Vec<Option<Found>>) -> (Vec<Event>, Tally) {
        let mut t = Tally::default();
        let out = batch
            .into_iter()
            .zip(found)
            .map(|(e, f)| match f {
                None => {
                    t.other_cluster += 1;
                    e
                }
                Some(f) => {
                    if f.missing {
                        t.missed += 1;
                    } else if kind_index(&e.kind).is_none_or(|k| !self.allowed[k]) {
                        t.not_watched += 1;
                    } else {
                        t.enriched += 1;
                    }
                    self.apply(e, &f)
                }
            })
            .collect();
        (out, t)
    }

    /// Enriches a batch with what the cache has now (no waiting); the kinds whose watches must
    /// start are added to `start`. Benchmarks call this directly.
    pub fn enrich_now(&self, batch: Vec<Event>, start: &mut Vec<usize>) -> (Vec<Event>, Tally) {
        let (found, _) = self.find_all(&batch, start);
        self.apply_all(batch, found)
    }

    fn count(&self, t: Tally) {
        for (c, n) in [
            (&self.enriched, t.enriched),
            (&self.missed, t.missed),
            (&self.not_watched, t.not_watched),
            (&self.other_cluster, t.other_cluster),
        ] {
            if n > 0 {
                c.increment(n);
            }
        }
    }
}

struct EnrichStage {
    enricher: Enricher,
    client: kube::Client,
    watches: JoinSet<()>,
    stage: String,
}

impl EnrichStage {
    fn start(&mut self, kinds: &mut Vec<usize>) {
        for kind in kinds.drain(..) {
            if !self.enricher.cache.start(kind) {
                continue;
            }
            let (name, group, version, plural, _) = KINDS[kind];
            let gvk = kube::api::GroupVersionKind::gvk(group, version, name);
            let ar = kube::core::ApiResource::from_gvk_with_plural(&gvk, plural);
            tracing::info!(stage = %self.stage, kind = name, "enrich: watching the metadata of this kind");
            self.watches.spawn(watch::run(
                self.client.clone(),
                kind,
                name,
                ar,
                self.enricher.cache.clone(),
                self.enricher.annotations.clone(),
                self.stage.clone(),
            ));
        }
    }

    /// Enriches one batch, waiting up to `wait_for_cache` for what may still appear (the
    /// cache is looked at again only when it changed).
    async fn process(&mut self, batch: Vec<Event>) -> Vec<Event> {
        let mut start = Vec::new();
        let deadline = tokio::time::Instant::now() + self.enricher.wait;
        let mut changed = self.enricher.cache.subscribe();
        let found = loop {
            changed.borrow_and_update();
            let (found, pending) = self.enricher.find_all(&batch, &mut start);
            self.start(&mut start);
            if !pending {
                break found;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { break found },
                () = tokio::time::sleep_until(deadline) => break self.enricher.find_all(&batch, &mut start).0,
            }
        };
        let (out, tally) = self.enricher.apply_all(batch, found);
        self.enricher.count(tally);
        out
    }
}

impl Transform for EnrichStage {
    fn run(
        mut self: Box<Self>,
        mut cx: TransformContext,
    ) -> BoxFuture<'static, Result<(), StageError>> {
        Box::pin(async move {
            let mut purge = tokio::time::interval(Duration::from_secs(10));
            purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    batch = cx.input.recv() => {
                        let Some(batch) = batch else { break };
                        let started = std::time::Instant::now();
                        let out = self.process(batch).await;
                        cx.metrics.processing.record(started.elapsed().as_secs_f64());
                        cx.out.send(out).await;
                    }
                    _ = purge.tick() => self.enricher.cache.purge(),
                }
            }
            self.watches.abort_all();
            Ok(())
        })
    }
}

pub const TYPE: StageType = StageType {
    name: "enrich",
    kind: StageKind::Transform,
    summary: "adds the involved object's labels, its namespace's labels and its owning workload, from watched metadata",
    parse: crate::component::parse_config::<EnrichConfig>,
    schema: crate::component::schema_of::<EnrichConfig>,
    describe: telemetry::describe,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn cfg(text: &str) -> EnrichConfig {
        yaml::from_node(&yaml::parse(text).unwrap()).unwrap()
    }

    #[test]
    fn validation_names_the_field_and_the_kinds_it_knows() {
        let problems =
            cfg("kinds: [Pod, Deploymnet]\nmax_objects: 0\nwait_for_cache: 5m\n").validate();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|p| p.contains("kinds[1]") && p.contains("did you mean `Deployment`")),
            "{text:?}"
        );
        assert!(text.iter().any(|p| p.contains("max_objects")), "{text:?}");
        assert!(
            text.iter().any(|p| p.contains("wait_for_cache")),
            "{text:?}"
        );
        let off = cfg("object_labels: false\nnamespace_labels: false\nowner: false\n").validate();
        assert!(
            off.iter()
                .any(|p| p.to_string().contains("would add nothing"))
        );
        assert!(cfg("{}").validate().is_empty());
    }

    fn event(ns: &str, pod: &str) -> Event {
        Event::new(
            EventData {
                cluster: Arc::from("prod"),
                namespace: ns.into(),
                object_namespace: ns.into(),
                kind: "Pod".into(),
                object_name: pod.into(),
                ..EventData::default()
            },
            crate::event::Finalizers::None,
        )
    }

    #[test]
    fn the_owner_chain_ends_at_the_top_controller_or_an_unwatched_kind() {
        let e = Enricher::new(&cfg("kinds: [Pod, ReplicaSet]\n"), "t", "prod".into());
        let c = e.cache();
        let k = |n: &str| kind_index(n).unwrap();
        for n in ["Namespace", "Pod", "ReplicaSet"] {
            c.start(k(n));
            c.end_list(k(n));
        }
        c.put(k("Namespace"), "", "shop", Meta::default());
        c.put(
            k("Pod"),
            "shop",
            "web-1",
            Meta {
                controller: Some(("ReplicaSet".into(), "web-7d".into())),
                ..Meta::default()
            },
        );
        c.put(
            k("ReplicaSet"),
            "shop",
            "web-7d",
            Meta {
                controller: Some(("Deployment".into(), "web".into())),
                ..Meta::default()
            },
        );
        let mut start = Vec::new();
        let (out, tally) = e.enrich_now(
            vec![event("shop", "web-1"), event("shop", "gone")],
            &mut start,
        );
        // Deployment is not in `kinds`: the ReplicaSet's controller is as far as it goes.
        assert_eq!(
            (out[0].owner_kind.as_str(), out[0].owner_name.as_str()),
            ("Deployment", "web")
        );
        assert_eq!(out[1].owner_kind, "");
        assert_eq!(tally.enriched, 1);
        assert_eq!(tally.missed, 1);
        for ev in out {
            ev.discard();
        }
        let other = Event::new(
            EventData {
                cluster: Arc::from("staging"),
                ..EventData::default()
            },
            crate::event::Finalizers::None,
        );
        let (out, tally) = e.enrich_now(vec![other], &mut start);
        assert_eq!(tally.other_cluster, 1);
        for ev in out {
            ev.discard();
        }
    }
}
