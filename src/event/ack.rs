//! End-to-end acknowledgements.
//!
//! A source makes one [`Finalizer`] per batch it emits and keeps the receiver. Every event of
//! the batch holds the finalizer (an `Arc`), fan-out clones it with the event, and when the
//! last copy of the last event is dropped the finalizer reports the batch's worst status.
//! Every copy must be given an outcome before it is dropped (see [`crate::event::Event`]): a
//! sink acknowledges after its commit, a stage that drops a copy on purpose discards it. A
//! copy dropped without an outcome fails its batch, so a `Delivered` status means every sink
//! that received a copy committed it and every other copy was dropped on purpose.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::EventData;

use tokio::sync::oneshot;

/// The outcome of a batch. Worse outcomes win when copies disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    /// Committed by every sink that got a copy (or kept explicitly: a durable queue), or
    /// dropped on purpose. The only status that moves a source's checkpoint.
    Delivered = 0,
    /// Not delivered, and it may succeed later: a copy dropped without an outcome (a stage
    /// that crashed, a channel closed with it, a shutdown that timed out).
    Errored = 1,
    /// A sink gave up on it (a row the database refused, a delivery that failed for good).
    /// Not checkpointed either: a restart replays it once the cause is fixed.
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

/// The position of an event in its source batch, for [`Report::failed`]: which events of a
/// batch did not finish delivered. [`WHOLE_BATCH`] where that is not known.
pub type Seq = u32;

/// Stands for every event of a batch (a summary that failed, an event without a position).
pub const WHOLE_BATCH: Seq = Seq::MAX;

/// A sink's refusal of an event for good: which sink, why, and the event as that sink saw it
/// (after the transforms before it). A source that gives up on the event keeps these as dead
/// letters.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The event's position in its source batch; [`WHOLE_BATCH`] for a summary that merged
    /// events of the batch.
    pub seq: Seq,
    pub stage: Arc<str>,
    pub reason: String,
    pub event: EventData,
}

/// What a source learns of a batch: its worst status, and which of its events did not finish
/// delivered (so that a source can checkpoint the rest).
#[derive(Debug, Clone)]
pub struct Report {
    pub status: Status,
    /// Positions of the events that failed; [`WHOLE_BATCH`] among them means all.
    pub failed: Vec<Seq>,
    /// The refusals sinks gave with a reason ([`crate::event::Event::refuse`]).
    pub refusals: Vec<Refusal>,
}

/// At most this many refusals are kept per batch (each holds a copy of its event); the
/// positions of the rest are still reported failed.
const MAX_REFUSALS: usize = 1024;

impl Report {
    /// Every event failed (the engine went away without a report).
    pub fn all_failed() -> Report {
        Report {
            status: Status::Errored,
            failed: vec![WHOLE_BATCH],
            refusals: Vec::new(),
        }
    }

    /// The refusals of the event at `seq` (a whole-batch refusal applies to every event).
    pub fn refusals_of(&self, seq: Seq) -> impl Iterator<Item = &Refusal> {
        self.refusals
            .iter()
            .filter(move |r| r.seq == seq || r.seq == WHOLE_BATCH)
    }

    /// True if the event at `seq` finished delivered.
    pub fn delivered(&self, seq: Seq) -> bool {
        self.status == Status::Delivered
            || !self.failed.iter().any(|f| *f == seq || *f == WHOLE_BATCH)
    }
}

#[derive(Debug)]
enum Notify {
    Status(oneshot::Sender<Status>),
    Report(oneshot::Sender<Report>),
}

/// Reports a batch's final status to its source when the last event holding it is dropped.
#[derive(Debug)]
pub struct Finalizer {
    status: AtomicU8,
    /// Positions of failed events; touched only when something fails.
    failed: Mutex<Vec<Seq>>,
    /// Refusals with their reasons; touched only when a sink refuses an event.
    refusals: Mutex<Vec<Refusal>>,
    notify: Option<Notify>,
}

impl Finalizer {
    fn with(notify: Notify) -> Arc<Finalizer> {
        Arc::new(Finalizer {
            status: AtomicU8::new(Status::Delivered as u8),
            failed: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            notify: Some(notify),
        })
    }

    /// A new finalizer and the receiver of the batch's worst status.
    pub fn new() -> (Arc<Finalizer>, oneshot::Receiver<Status>) {
        let (tx, rx) = oneshot::channel();
        (Finalizer::with(Notify::Status(tx)), rx)
    }

    /// A new finalizer and the receiver of the batch's [`Report`] (which events failed).
    pub fn reporting() -> (Arc<Finalizer>, oneshot::Receiver<Report>) {
        let (tx, rx) = oneshot::channel();
        (Finalizer::with(Notify::Report(tx)), rx)
    }

    /// Records the outcome of the event at `seq`; the worst recorded outcome is the one
    /// reported.
    pub fn update(&self, s: Status, seq: Seq) {
        self.status.fetch_max(s as u8, Ordering::AcqRel);
        if s != Status::Delivered {
            self.failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(seq);
        }
    }

    /// Records a sink's refusal of an event (its status is given by [`Finalizer::update`]).
    pub fn refuse(&self, r: Refusal) {
        let mut all = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() < MAX_REFUSALS {
            all.push(r);
        }
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        let status = Status::from_u8(self.status.load(Ordering::Acquire));
        match self.notify.take() {
            Some(Notify::Status(tx)) => {
                let _ = tx.send(status);
            }
            Some(Notify::Report(tx)) => {
                let mut failed =
                    std::mem::take(self.failed.get_mut().unwrap_or_else(|e| e.into_inner()));
                failed.sort_unstable();
                failed.dedup();
                let refusals =
                    std::mem::take(self.refusals.get_mut().unwrap_or_else(|e| e.into_inner()));
                let _ = tx.send(Report {
                    status,
                    failed,
                    refusals,
                });
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventData, Finalizers, Merged};

    fn one() -> (Event, oneshot::Receiver<Status>) {
        let (f, rx) = Finalizer::new();
        (Event::new(EventData::default(), Finalizers::One(f)), rx)
    }

    #[tokio::test]
    async fn completes_when_the_last_copy_is_done_with_the_worst_status() {
        let (e, mut rx) = one();
        let copy = e.clone();
        e.ack(Status::Delivered);
        drop(e);
        assert!(rx.try_recv().is_err(), "one copy is still alive");
        copy.ack(Status::Errored);
        drop(copy);
        assert_eq!(rx.await.unwrap(), Status::Errored);
    }

    #[tokio::test]
    async fn delivered_only_when_every_copy_is_delivered_or_discarded() {
        let (e, rx) = one();
        let copy = e.clone();
        e.ack(Status::Delivered);
        copy.discard();
        drop((e, copy));
        assert_eq!(rx.await.unwrap(), Status::Delivered);
    }

    #[tokio::test]
    async fn a_copy_dropped_without_an_outcome_fails_the_batch() {
        let (e, rx) = one();
        let copy = e.clone();
        e.ack(Status::Delivered);
        drop((e, copy)); // the copy had no outcome: a crashed stage, a closed channel
        assert_eq!(rx.await.unwrap(), Status::Errored);
    }

    #[tokio::test]
    async fn a_copy_lost_in_a_panic_fails_the_batch() {
        let (e, rx) = one();
        let task = tokio::spawn(async move {
            let _held = e;
            panic!("injected");
        });
        assert!(task.await.is_err());
        assert_eq!(rx.await.unwrap(), Status::Errored);
    }

    #[tokio::test]
    async fn merged_finalizers_complete_with_the_summary() {
        let (a, rx1) = one();
        let (b, rx2) = one();
        let mut merged = Merged::default();
        merged.add(a);
        merged.add(b);
        let summary = Event::new(EventData::default(), merged.into_finalizers());
        summary.ack(Status::Rejected);
        drop(summary);
        assert_eq!(rx1.await.unwrap(), Status::Rejected);
        assert_eq!(rx2.await.unwrap(), Status::Rejected);
    }

    #[tokio::test]
    async fn a_report_names_the_events_that_failed() {
        let (f, rx) = Finalizer::reporting();
        let events: Vec<Event> = (0..4)
            .map(|i| Event::in_batch(EventData::default(), Finalizers::One(f.clone()), i))
            .collect();
        drop(f);
        events[0].ack(Status::Delivered);
        events[1].ack(Status::Rejected);
        events[2].ack(Status::Delivered);
        drop(events); // the 4th had no outcome
        let r = rx.await.unwrap();
        assert_eq!(r.status, Status::Rejected);
        assert_eq!(r.failed, vec![1, 3]);
        assert!(r.delivered(0) && !r.delivered(1) && r.delivered(2) && !r.delivered(3));
    }

    #[tokio::test]
    async fn a_report_says_which_stage_refused_which_event_and_why() {
        let (f, rx) = Finalizer::reporting();
        let data = EventData {
            uid: "u-1".into(),
            ..EventData::default()
        };
        let events: Vec<Event> = (0..3)
            .map(|i| Event::in_batch(data.clone(), Finalizers::One(f.clone()), i))
            .collect();
        drop(f);
        events[0].ack(Status::Delivered);
        events[1].refuse("db", "refused by a trigger");
        events[2].ack(Status::Errored);
        drop(events);
        let r = rx.await.unwrap();
        assert_eq!(r.failed, vec![1, 2]);
        let refused: Vec<_> = r.refusals_of(1).collect();
        assert_eq!(refused.len(), 1);
        assert_eq!(&*refused[0].stage, "db");
        assert_eq!(refused[0].reason, "refused by a trigger");
        assert_eq!(refused[0].event.uid, "u-1");
        assert_eq!(r.refusals_of(2).count(), 0, "an error is not a refusal");
    }

    #[tokio::test]
    async fn a_failed_summary_fails_every_event_it_merged() {
        let (f, rx) = Finalizer::reporting();
        let mut merged = Merged::default();
        merged.add(Event::in_batch(
            EventData::default(),
            Finalizers::One(f.clone()),
            0,
        ));
        merged.add(Event::in_batch(EventData::default(), Finalizers::One(f), 1));
        let summary = Event::new(EventData::default(), merged.into_finalizers());
        summary.ack(Status::Rejected);
        drop(summary);
        let r = rx.await.unwrap();
        assert!(!r.delivered(0) && !r.delivered(1));
    }

    #[tokio::test]
    async fn merged_events_fail_when_their_summary_is_never_made() {
        let (a, rx) = one();
        let (b, rx2) = one();
        let mut merged = Merged::default();
        merged.add(a);
        merged.add(b);
        drop(merged); // the aggregating stage crashed with the group open
        assert_eq!(rx.await.unwrap(), Status::Errored);
        assert_eq!(rx2.await.unwrap(), Status::Errored);
    }
}
