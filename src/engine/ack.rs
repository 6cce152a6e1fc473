//! End-to-end acknowledgements.
//!
//! A source makes one [`Finalizer`] per batch it emits and keeps the receiver. Every event of
//! the batch holds the finalizer (an `Arc`), fan-out clones it with the event, and when the
//! last copy of the last event is dropped the finalizer reports the batch's worst status.
//! A sink drops events only after its commit, so a `Delivered` status means every sink that
//! received a copy committed it; a stage that drops a copy on purpose (filtered, deduplicated,
//! rate-limited) just drops it, which counts as done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::oneshot;

/// The outcome of a batch. Worse outcomes win when copies disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    /// Committed by every sink that got a copy, or dropped on purpose.
    Delivered = 0,
    /// A sink failed in a way that may succeed later (e.g. shut down before its commit).
    Errored = 1,
    /// A sink gave up on it for good (dead-lettered or permanently rejected).
    Rejected = 2,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Delivered,
            1 => Status::Errored,
            _ => Status::Rejected,
        }
    }
}

/// Reports a batch's final status to its source when the last event holding it is dropped.
#[derive(Debug)]
pub struct Finalizer {
    status: AtomicU8,
    notify: Option<oneshot::Sender<Status>>,
}

impl Finalizer {
    /// A new finalizer and the receiver its source waits on.
    pub fn new() -> (Arc<Finalizer>, oneshot::Receiver<Status>) {
        let (tx, rx) = oneshot::channel();
        (
            Arc::new(Finalizer {
                status: AtomicU8::new(Status::Delivered as u8),
                notify: Some(tx),
            }),
            rx,
        )
    }

    /// Records an outcome; the worst recorded outcome is the one reported.
    pub fn update(&self, s: Status) {
        self.status.fetch_max(s as u8, Ordering::AcqRel);
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        if let Some(tx) = self.notify.take() {
            let _ = tx.send(Status::from_u8(self.status.load(Ordering::Acquire)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventData, Finalizers};

    #[tokio::test]
    async fn completes_when_the_last_copy_is_dropped_with_the_worst_status() {
        let (f, mut rx) = Finalizer::new();
        let e = Event::new(EventData::default(), Finalizers::One(f));
        let copy = e.clone();
        drop(e);
        assert!(rx.try_recv().is_err(), "one copy is still alive");
        copy.set_status(Status::Errored);
        copy.set_status(Status::Delivered);
        drop(copy);
        assert_eq!(rx.await.unwrap(), Status::Errored);
    }

    #[tokio::test]
    async fn merged_finalizers_complete_with_the_summary() {
        let (f1, rx1) = Finalizer::new();
        let (f2, rx2) = Finalizer::new();
        let a = Event::new(EventData::default(), Finalizers::One(f1));
        let b = Event::new(EventData::default(), Finalizers::One(f2));
        let merged = Finalizers::merge([a.finalizers(), b.finalizers()]);
        let summary = Event::new(EventData::default(), merged);
        drop((a, b));
        summary.set_status(Status::Rejected);
        drop(summary);
        assert_eq!(rx1.await.unwrap(), Status::Rejected);
        assert_eq!(rx2.await.unwrap(), Status::Rejected);
    }
}
