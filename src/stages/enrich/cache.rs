//! The metadata cache of `enrich`: per kind, namespace and name, the labels, the chosen
//! annotations and the controller of each object its watches have seen.
//!
//! Bounded by `max_objects`: past it, objects deleted longer than `keep_deleted` ago go first,
//! then the tenth least recently used (counted in `eventflow_enrich_evicted_total`). Readers
//! (the stage, once per batch) take a shared lock; the watches write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::event::Labels;

/// What is kept of one object.
#[derive(Debug, Default, PartialEq)]
pub struct Meta {
    pub labels: Option<Arc<Labels>>,
    /// Only the annotation keys the stage lists.
    pub annotations: Option<Arc<Labels>>,
    /// The `ownerReference` with `controller: true`: kind and name (same namespace).
    pub controller: Option<(Box<str>, Box<str>)>,
}

struct Entry {
    meta: Arc<Meta>,
    /// The cache's clock at the last lookup or write (least recently used goes first).
    used: AtomicU64,
    /// When a watch saw it deleted.
    deleted_at: Option<Instant>,
    /// The list generation of its kind that last showed it.
    generation: u32,
}

/// Where a kind's watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Not needed yet: no event has named this kind.
    NotStarted,
    /// Started; the first list has not finished.
    Listing,
    /// Listed: the cache holds what the API server holds.
    Synced,
    /// Failing before it ever listed (no permission, unknown resource): do not wait for it.
    Failing,
}

/// Names are short and not chosen by an attacker who could collide them to slow the cache
/// down much (they are Kubernetes object names): a fast hash, seeded per process.
type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct KindStore {
    /// namespace ("" for cluster-scoped kinds) -> name -> entry.
    objects: Map<Map<Entry>>,
    generation: u32,
}

struct Inner {
    kinds: Vec<KindStore>,
    sync: Vec<Sync>,
    count: usize,
    /// One copy of each distinct label map: the Pods of one workload share theirs.
    interned: std::collections::HashSet<Arc<Labels>, foldhash::fast::RandomState>,
}

impl Inner {
    fn intern(&mut self, labels: Option<Arc<Labels>>) -> Option<Arc<Labels>> {
        let l = labels?;
        if let Some(same) = self.interned.get(&*l) {
            return Some(same.clone());
        }
        self.interned.insert(l.clone());
        Some(l)
    }

    /// Forgets label maps no cached object uses any more.
    fn unintern(&mut self) {
        self.interned.retain(|l| Arc::strong_count(l) > 1);
    }
}

/// The cache, shared by the stage and its watches.
pub struct Cache {
    inner: RwLock<Inner>,
    clock: AtomicU64,
    max_objects: usize,
    keep_deleted: Duration,
    /// Bumped on every write: a batch waiting for an object looks again.
    changed: tokio::sync::watch::Sender<u64>,
    size: metrics::Gauge,
    evicted: metrics::Counter,
}

/// A read view for one batch.
pub struct View<'a> {
    inner: RwLockReadGuard<'a, Inner>,
    cache: &'a Cache,
}

impl View<'_> {
    /// The object `kind/ns/name`, if cached and not deleted longer than `keep_deleted` ago.
    pub fn get(&self, kind: usize, ns: &str, name: &str) -> Option<&Arc<Meta>> {
        let e = self.inner.kinds.get(kind)?.objects.get(ns)?.get(name)?;
        if e.deleted_at
            .is_some_and(|at| at.elapsed() > self.cache.keep_deleted)
        {
            return None;
        }
        e.used.store(self.cache.tick(), Ordering::Relaxed);
        Some(&e.meta)
    }

    pub fn sync(&self, kind: usize) -> Sync {
        self.inner.sync.get(kind).copied().unwrap_or(Sync::Failing)
    }
}

impl Cache {
    pub fn new(kinds: usize, max_objects: usize, keep_deleted: Duration, stage: &str) -> Cache {
        Cache {
            inner: RwLock::new(Inner {
                kinds: (0..kinds).map(|_| KindStore::default()).collect(),
                sync: vec![Sync::NotStarted; kinds],
                count: 0,
                interned: std::collections::HashSet::default(),
            }),
            clock: AtomicU64::new(0),
            max_objects: max_objects.max(1),
            keep_deleted,
            changed: tokio::sync::watch::channel(0).0,
            size: super::telemetry::cached(stage),
            evicted: super::telemetry::evicted(stage),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    pub fn view(&self) -> View<'_> {
        View {
            inner: self
                .inner
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            cache: self,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves when the cache changes after `seen` (see [`Cache::version`]).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Marks a kind's watch as started, once: true if it was not started before.
    pub fn start(&self, kind: usize) -> bool {
        let mut g = self.write();
        match g.sync.get_mut(kind) {
            Some(s @ Sync::NotStarted) => {
                *s = Sync::Listing;
                true
            }
            _ => false,
        }
    }

    pub fn set_sync(&self, kind: usize, s: Sync) {
        if let Some(x) = self.write().sync.get_mut(kind) {
            *x = s;
        }
        self.bump();
    }

    /// A relist of `kind` begins: objects it does not show again count as deleted.
    pub fn begin_list(&self, kind: usize) {
        if let Some(k) = self.write().kinds.get_mut(kind) {
            k.generation = k.generation.wrapping_add(1);
        }
    }

    /// The relist of `kind` ended: what it did not show was deleted meanwhile.
    pub fn end_list(&self, kind: usize) {
        {
            let mut g = self.write();
            let now = Instant::now();
            if let Some(k) = g.kinds.get_mut(kind) {
                let generation = k.generation;
                for e in k.objects.values_mut().flat_map(|n| n.values_mut()) {
                    if e.generation != generation && e.deleted_at.is_none() {
                        e.deleted_at = Some(now);
                    }
                }
            }
            if let Some(s) = g.sync.get_mut(kind) {
                *s = Sync::Synced;
            }
        }
        self.bump();
    }

    /// Stores what a watch saw of an object.
    pub fn put(&self, kind: usize, ns: &str, name: &str, mut meta: Meta) {
        let used = self.tick();
        {
            let mut g = self.write();
            meta.labels = g.intern(meta.labels.take());
            let Some(k) = g.kinds.get_mut(kind) else {
                return;
            };
            let generation = k.generation;
            let names = k.objects.entry(Box::from(ns)).or_default();
            let added = if let Some(e) = names.get_mut(name) {
                if *e.meta != meta {
                    e.meta = Arc::new(meta);
                }
                e.deleted_at = None;
                e.generation = generation;
                e.used.store(used, Ordering::Relaxed);
                false
            } else {
                names.insert(
                    Box::from(name),
                    Entry {
                        meta: Arc::new(meta),
                        used: AtomicU64::new(used),
                        deleted_at: None,
                        generation,
                    },
                );
                true
            };
            if added {
                g.count += 1;
                if g.count > self.max_objects {
                    self.evict(&mut g);
                }
            }
            self.size.set(g.count as f64);
        }
        self.bump();
    }

    /// A watch saw the object deleted: kept for `keep_deleted`.
    pub fn delete(&self, kind: usize, ns: &str, name: &str) {
        let mut g = self.write();
        if let Some(e) = g
            .kinds
            .get_mut(kind)
            .and_then(|k| k.objects.get_mut(ns))
            .and_then(|n| n.get_mut(name))
        {
            e.deleted_at = Some(Instant::now());
        }
    }

    /// Forgets objects deleted longer than `keep_deleted` ago.
    pub fn purge(&self) {
        let mut g = self.write();
        let removed = Self::remove(&mut g, |e| {
            e.deleted_at
                .is_some_and(|at| at.elapsed() > self.keep_deleted)
        });
        if removed > 0 {
            self.size.set(g.count as f64);
        }
        g.unintern();
    }

    /// Past `max_objects`: expired deletions first, then the least recently used tenth.
    fn evict(&self, g: &mut Inner) {
        let expired = |e: &Entry| {
            e.deleted_at
                .is_some_and(|at| at.elapsed() > self.keep_deleted)
        };
        Self::remove(g, expired);
        if g.count <= self.max_objects {
            return;
        }
        let mut used: Vec<u64> = g
            .kinds
            .iter()
            .flat_map(|k| k.objects.values().flat_map(|n| n.values()))
            .map(|e| e.used.load(Ordering::Relaxed))
            .collect();
        let n = (self.max_objects / 10)
            .max(1)
            .min(used.len().saturating_sub(1));
        let (_, cut, _) = used.select_nth_unstable(n);
        let cut = *cut;
        let evicted = Self::remove(g, |e| e.used.load(Ordering::Relaxed) < cut);
        self.evicted.increment(evicted as u64);
        g.unintern();
    }

    fn remove(g: &mut Inner, doomed: impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for k in &mut g.kinds {
            for names in k.objects.values_mut() {
                let before = names.len();
                names.retain(|_, e| !doomed(e));
                removed += before - names.len();
            }
            k.objects.retain(|_, names| !names.is_empty());
        }
        g.count -= removed;
        removed
    }

    /// Objects cached now.
    pub fn len(&self) -> usize {
        self.view().inner.count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(team: &str) -> Meta {
        Meta {
            labels: Some(Arc::new(Labels::from([("team".into(), team.into())]))),
            ..Meta::default()
        }
    }

    #[test]
    fn the_least_recently_used_go_first_past_the_bound() {
        let c = Cache::new(1, 100, Duration::from_secs(60), "t");
        for i in 0..100 {
            c.put(0, "ns", &format!("o{i}"), meta("a"));
        }
        // o0 is used again: it stays; o1.. are the oldest.
        assert!(c.view().get(0, "ns", "o0").is_some());
        c.put(0, "ns", "o100", meta("a"));
        assert!(c.len() <= 100, "{}", c.len());
        assert!(c.view().get(0, "ns", "o0").is_some());
        assert!(c.view().get(0, "ns", "o1").is_none());
        assert!(c.view().get(0, "ns", "o100").is_some());
    }

    #[test]
    fn a_relist_marks_what_it_did_not_show_as_deleted() {
        let c = Cache::new(1, 100, Duration::ZERO, "t");
        c.begin_list(0);
        c.put(0, "ns", "gone", meta("a"));
        c.put(0, "ns", "kept", meta("a"));
        c.end_list(0);
        c.begin_list(0);
        c.put(0, "ns", "kept", meta("b"));
        c.end_list(0);
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.view().get(0, "ns", "gone").is_none());
        let v = c.view();
        let kept = v.get(0, "ns", "kept").map(|m| m.labels.clone());
        assert_eq!(
            kept.flatten()
                .and_then(|l| l.get("team").cloned())
                .as_deref(),
            Some("b")
        );
    }
}
