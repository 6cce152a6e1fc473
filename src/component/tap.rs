//! Taps: the events leaving a stage (or entering a sink), copied to whoever listens
//! (`eventflow tap`, `GET /-/tap`). A tap never slows the pipeline: each listener has a
//! bounded buffer, and what does not fit is dropped and counted for that listener only. With
//! no listener a tap costs one atomic load per batch.
//!
//! Tap points are kept per stage id for the life of the pipeline's topology (a [`Taps`] it
//! owns, not a process-wide registry), so a listener keeps receiving across a reload that
//! rebuilds its stage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::event::Event;

/// The tap points of one running pipeline, by stage id: owned by its topology (and shared
/// with its API endpoint), so two pipelines in one process never share them.
#[derive(Clone, Default)]
pub struct Taps(Arc<Mutex<HashMap<String, Arc<TapPoint>>>>);

impl Taps {
    /// The tap point of stage `stage`, made on first use.
    pub fn point(&self, stage: &str) -> Arc<TapPoint> {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(g.entry(stage.to_string()).or_default())
    }

    /// The stage ids that have a tap point (every stage this pipeline started).
    pub fn stages(&self) -> Vec<String> {
        let g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ids: Vec<String> = g.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Where a stage's events can be copied to listeners.
#[derive(Default)]
pub struct TapPoint {
    listeners: AtomicUsize,
    subs: Mutex<Vec<Listener>>,
}

struct Listener {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

/// A listener's end: the events as JSON lines, and how many did not fit its buffer.
pub struct Subscription {
    pub rx: mpsc::Receiver<String>,
    pub dropped: Arc<AtomicU64>,
}

impl TapPoint {
    /// Copies `batch` to the listeners, if there are any.
    #[inline]
    pub fn publish(&self, batch: &[Event]) {
        if self.listeners.load(Ordering::Relaxed) > 0 {
            self.publish_to_listeners(batch);
        }
    }

    fn publish_to_listeners(&self, batch: &[Event]) {
        let mut subs = self
            .subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subs.retain(|s| !s.tx.is_closed());
        self.listeners.store(subs.len(), Ordering::Relaxed);
        for e in batch {
            // Encoded only if some listener has room for it.
            let mut line: Option<String> = None;
            for s in subs.iter() {
                if s.tx.capacity() == 0 {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let text =
                    line.get_or_insert_with(|| crate::event::to_json(e, false).unwrap_or_default());
                if s.tx.try_send(text.clone()).is_err() {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A new listener with room for `buffer` events.
    pub fn subscribe(&self, buffer: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subs = self
            .subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subs.push(Listener {
            tx,
            dropped: Arc::clone(&dropped),
        });
        self.listeners.store(subs.len(), Ordering::Relaxed);
        Subscription { rx, dropped }
    }
}
