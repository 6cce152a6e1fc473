//! Readiness of the running stages that talk to something outside, read by `/readyz`.
//!
//! A source registers itself when it starts; it is ready once it has completed its initial
//! sync (for `kube_events`: the first full list). A sink (`sql`, `webhook`) registers ready and
//! reports its writes. Either stops being ready when its target has been failing for longer
//! than its `unready_after`. A stage that has stopped unregisters.
//!
//! The registry ([`Health`]) belongs to the running pipeline: the engine hands it to stages
//! through their build context and the API reads it, so two pipelines in one process (tests)
//! do not see each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    synced: bool,
    failing_since: Option<Instant>,
    /// Not ready at once, for this reason (e.g. a NATS stream that does not exist).
    blocked: Option<String>,
}

type Map = Mutex<BTreeMap<String, Arc<StageHealth>>>;

/// The health of one stage (a source, or a sink that talks to something outside).
#[derive(Debug)]
pub struct StageHealth {
    id: String,
    unready_after: Duration,
    state: Mutex<State>,
    registry: Weak<Map>,
}

/// The stages of one running pipeline that report their health.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Map>);

fn lock(m: &Map) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<StageHealth>>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Health {
    /// Registers (or replaces) the health of stage `id`: not ready until
    /// [`StageHealth::synced`].
    pub fn register(&self, id: &str, unready_after: Duration) -> Arc<StageHealth> {
        let h = Arc::new(StageHealth {
            id: id.to_string(),
            unready_after,
            state: Mutex::new(State {
                synced: false,
                failing_since: None,
                blocked: None,
            }),
            registry: Arc::downgrade(&self.0),
        });
        lock(&self.0).insert(id.to_string(), h.clone());
        h
    }

    /// Every registered stage's problem, if any.
    pub fn problems(&self) -> Vec<String> {
        let stages: Vec<Arc<StageHealth>> = lock(&self.0).values().cloned().collect();
        stages.iter().filter_map(|h| h.problem()).collect()
    }
}

impl StageHealth {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The source talks to its server successfully.
    pub fn synced(&self) {
        self.with(|s| {
            s.synced = true;
            s.failing_since = None;
            s.blocked = None;
        });
    }

    /// Not ready at once, for `reason`, until the next success ([`StageHealth::synced`]).
    pub fn blocked(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.with(|s| {
            s.failing_since.get_or_insert_with(Instant::now);
            s.blocked = Some(reason);
        });
    }

    /// A request failed; the first failure of a run starts the clock.
    pub fn failing(&self) {
        self.with(|s| {
            s.failing_since.get_or_insert_with(Instant::now);
        });
    }

    /// The stage has stopped: it no longer counts.
    pub fn stopped(self: &Arc<Self>) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut r = lock(&registry);
        if r.get(&self.id).is_some_and(|h| Arc::ptr_eq(h, self)) {
            r.remove(&self.id);
        }
    }

    /// Why the source is not ready, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.with(|s| match s.failing_since {
            _ if s.blocked.is_some() => Some(format!(
                "stage `{}`: {}",
                self.id,
                s.blocked.as_deref().unwrap_or_default()
            )),
            Some(t) if t.elapsed() >= self.unready_after => Some(format!(
                "stage `{}`: failing for {}s",
                self.id,
                t.elapsed().as_secs()
            )),
            _ if !s.synced => Some(format!("stage `{}`: initial sync not complete", self.id)),
            _ => None,
        })
    }
}
