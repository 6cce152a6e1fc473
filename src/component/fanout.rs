//! A stage's output: one bounded sender per downstream stage, editable while events flow.
//!
//! The engine edits a running fan-out through a control channel: [`Edit::Set`] adds a
//! downstream or replaces its sender (a rebuilt stage), [`Edit::Remove`] detaches one. The
//! edits of one reload arrive as one message and are applied together between two batches,
//! so a batch goes either to the old set of downstreams or to the new one, never to neither.
//! A send that is blocked on a full channel still takes edits, so a stuck downstream can be
//! replaced without deadlocking its upstream.

use metrics::Counter;
use tokio::sync::mpsc;

use crate::event::Event;
use crate::event::ack::Status;

pub use crate::event::Batch;

/// The sending end of an edge into a stage's input, with that stage's queue gauge.
#[derive(Debug, Clone)]
pub struct Edge {
    pub tx: mpsc::Sender<Batch>,
    /// `eventflow_stage_queue_events` of the receiving stage: raised here, lowered on receipt.
    pub queued: metrics::Gauge,
}

/// A change to a fan-out's downstream set.
#[derive(Debug)]
pub enum Edit {
    Set(String, Edge),
    Remove(String),
}

/// The sending half of the engine's control over a fan-out.
pub type Control = mpsc::UnboundedSender<Vec<Edit>>;

/// A stage's output.
pub struct Fanout {
    outs: Vec<(String, Edge)>,
    /// Downstreams whose task ended without the engine detaching them (a crash). Until the
    /// engine replaces or removes them, the copy each would have received fails: a batch
    /// that a wanted stage never sees is not delivered.
    gone: Vec<String>,
    control: mpsc::UnboundedReceiver<Vec<Edit>>,
    sent: Counter,
    lost: Counter,
    /// The stage's tap: what leaves it, copied to listeners.
    tap: Option<std::sync::Arc<super::tap::TapPoint>>,
}

impl Fanout {
    /// A fan-out with initial downstreams and its control handle.
    pub fn new(outs: Vec<(String, Edge)>, sent: Counter, lost: Counter) -> (Fanout, Control) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Fanout {
                outs,
                gone: Vec::new(),
                control: rx,
                sent,
                lost,
                tap: None,
            },
            tx,
        )
    }

    fn apply(&mut self, edits: Vec<Edit>) {
        for e in edits {
            match e {
                Edit::Set(id, tx) => {
                    self.gone.retain(|g| *g != id);
                    match self.outs.iter_mut().find(|(i, _)| *i == id) {
                        Some(slot) => slot.1 = tx,
                        None => self.outs.push((id, tx)),
                    }
                }
                Edit::Remove(id) => {
                    self.gone.retain(|g| *g != id);
                    self.outs.retain(|(i, _)| *i != id);
                }
            }
        }
    }

    fn apply_pending(&mut self) {
        while let Ok(edits) = self.control.try_recv() {
            self.apply(edits);
        }
    }

    /// Copies what this fan-out sends to `tap`'s listeners.
    pub fn set_tap(&mut self, tap: std::sync::Arc<super::tap::TapPoint>) {
        self.tap = Some(tap);
    }

    /// Sends a batch to every downstream stage, waiting for room (back-pressure).
    pub async fn send(&mut self, batch: Batch) {
        self.apply_pending();
        if batch.is_empty() {
            return;
        }
        if let Some(t) = &self.tap {
            t.publish(&batch);
        }
        let n = batch.len() as u64;
        if !self.gone.is_empty() {
            // The copies for downstreams that are gone: made, and failed at once.
            self.lost.increment(n * self.gone.len() as u64);
            for e in &batch {
                for _ in &self.gone {
                    e.clone().ack(Status::Errored);
                }
            }
        }
        let mut delivered_any = false;
        let mut i = 0;
        let mut batch = Some(batch);
        while i < self.outs.len() {
            let last = i + 1 == self.outs.len();
            let id = self.outs[i].0.clone();
            let payload = if last { batch.take() } else { batch.clone() };
            let Some(payload) = payload else { break };
            if let Some(()) = self.send_one(&id, payload).await {
                delivered_any = true;
            } else {
                // The downstream is gone (its task ended). Count what it will never get;
                // the copies dropped here fail their batches (the source replays them).
                tracing::error!(downstream = %id, events = n, "downstream stage stopped; its copy of these events (and of every later batch) fails, so the source will replay them");
                self.lost.increment(n);
                self.outs.retain(|(o, _)| *o != id);
                self.gone.push(id);
                continue;
            }
            // Edits applied while waiting may have reordered the list: move past `id`.
            i = self
                .outs
                .iter()
                .position(|(o, _)| *o == id)
                .map_or(i, |p| p + 1);
        }
        if delivered_any {
            self.sent.increment(n);
        } else if batch.is_some() {
            tracing::error!(events = n, "no downstream stage to send to; events lost");
            self.lost.increment(n);
        }
    }

    /// Sends to one downstream, following edits that replace it while we wait.
    /// Returns `None` if the downstream is gone.
    async fn send_one(&mut self, id: &str, mut payload: Batch) -> Option<()> {
        loop {
            let edge = self.outs.iter().find(|(o, _)| o == id)?.1.clone();
            let tx = edge.tx;
            let n = payload.len() as f64;
            tokio::select! {
                biased;
                permit = tx.reserve() => match permit {
                    Ok(p) => {
                        edge.queued.increment(n);
                        p.send(payload);
                        return Some(());
                    }
                    Err(_) => return None,
                },
                edits = self.control.recv() => if let Some(e) = edits {
                    self.apply(e);
                    if !self.outs.iter().any(|(o, _)| o == id) {
                        // Detached while we waited (removed by a reload): this copy is no
                        // longer wanted there. Dropping it is the detach itself, not a loss.
                        payload.iter().for_each(Event::discard);
                        return Some(());
                    }
                } else {
                    // The engine dropped the control handle: no more edits; just send.
                    let r = tx.send(std::mem::take(&mut payload)).await;
                    if r.is_ok() {
                        edge.queued.increment(n);
                    }
                    return r.ok();
                },
            }
        }
    }
}
