//! `durable: true`: a queue table in the `state` database between the pipeline and the
//! receiver.
//!
//! Two loops run side by side:
//! - **intake** writes each incoming batch to the queue in one transaction and only then lets
//!   the events go (which acknowledges them to their source). At `max_queued` it stops reading
//!   its input until deliveries make room: the stages before it slow down (back-pressure).
//! - **delivery** reads the queue oldest first, `batch.max_events` rows at a time (a partial
//!   batch waits until its oldest event is `batch.max_wait` old), up to `max_in_flight`
//!   requests at once. A delivered batch is deleted (together with the next batches' pins, or
//!   once `max_in_flight` batches' worth are delivered, or when nothing is in flight: a commit
//!   every few requests); a retryable failure is retried for up to
//!   `retry_for`; a batch that fails for good is moved to the dead-letter table in the same
//!   transaction that deletes it from the queue. A batch is pinned in the table before its first
//!   attempt (the batches read ahead are pinned together), so after a crash the same events go
//!   out together with the same delivery id.
//!
//! When the input closes (shutdown) the intake has written everything; the delivery loop keeps
//! delivering while the receiver accepts and stops at the first retryable failure, leaving the
//! rest queued for the next start. When a reload starts a new instance of the stage, the old
//! one stops delivering as soon as its requests in flight are answered (it no longer waits
//! for retries) and the new one takes over the queue; the old intake keeps writing what still
//! reaches it. One instance delivers from a queue at a time, so a reload never sends a row
//! twice. Two processes share a `state` database with the same stage id only as replicas under
//! leader election: only the leader delivers (a standby waits; a replica that stops leading
//! drops its requests in flight, which stay queued and pinned for the next leader).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::queue::{Pending, Store};
use super::{Budget, Outcome};
use crate::backoff::BackoffConfig;
use crate::component::SinkContext;
use crate::event::ack::Status;
use crate::event::{Event, Finalizers, StoredRef, ack_all};
use crate::health::StageHealth;
use crate::metrics as shared_metrics;
use crate::state::db::{DbError, retrying};

/// One queue in this process, shared by the instances of its stage (a reload runs the old and
/// the new one side by side for a while): the newest instance delivers, every instance's
/// intake writes, and the count and wake-ups are common to all.
pub struct Slot {
    /// Held by the instance that delivers.
    delivering: tokio::sync::Mutex<()>,
    /// Bumped when an instance starts: older ones stop delivering.
    generation: watch::Sender<u64>,
    /// Bumped when rows are added (wakes the delivery loop).
    added: watch::Sender<u64>,
    /// Rows were removed (wakes an intake waiting at the bound).
    room: Notify,
    /// Events in the queue.
    queued: AtomicU64,
}

/// The slot of the queue of `stage` in the state database at `state_url`, shared by the
/// instances of the stage in this running pipeline.
pub fn slot(shared: &crate::component::Shared, state_url: &str, stage: &str) -> Arc<Slot> {
    shared.get_or_insert_with(
        &format!("webhook-queue\u{0}{state_url}\u{0}{stage}"),
        || Slot {
            delivering: tokio::sync::Mutex::new(()),
            generation: watch::channel(0).0,
            added: watch::channel(0).0,
            room: Notify::new(),
            queued: AtomicU64::new(0),
        },
    )
}

/// `max_queued`'s default.
pub fn default_max_queued() -> u64 {
    100_000
}

/// `retry_for`'s default: a day.
pub fn default_retry_for() -> crate::types::Dur {
    crate::types::Dur::secs(24 * 3600)
}

/// A durable stage's queue, opened when the stage is built: its store and the `state` URL it
/// lives at.
pub struct Queue {
    store: Store,
    url: String,
}

impl Queue {
    /// Opens the queue in the pipeline's `state` database.
    pub async fn open(
        cx: &crate::component::BuildContext,
    ) -> Result<Queue, crate::component::BuildError> {
        let state = cx.state.clone().unwrap_or_default();
        let store = Store::open(&state.url).await.map_err(|e| {
            cx.error_from(
                "field `state.url`: the state database (its durable queue)",
                e,
            )
        })?;
        Ok(Queue {
            store,
            url: state.url,
        })
    }

    /// Runs the stage from this queue ([`run`]) until its input closes and its deliveries
    /// stopped, then closes the store.
    pub async fn run(
        self,
        sender: Arc<dyn Sender>,
        shared: &crate::component::Shared,
        cx: &mut SinkContext,
        health: Arc<StageHealth>,
    ) {
        let slot = slot(shared, &self.url, &cx.metrics.id);
        run(sender, self.store.clone(), slot, cx, health).await;
        self.store.close().await;
    }
}

/// The events a look at a durable queue reads ahead, at least: a backlog drains in few large
/// reads (each query costs a round trip and a pass over the index whatever its size).
pub const READ_AHEAD_EVENTS: usize = 1024;

/// How a durable queue is drained: its bounds and its batches.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most events the queue holds (back-pressure beyond).
    pub max_queued: u64,
    /// Rows per delivery, and how long a partial batch waits for its oldest row.
    pub batch: crate::stages::batch::BatchConfig,
    /// Deliveries at once.
    pub max_in_flight: usize,
    /// How long a delivery that keeps failing retryably is retried before it is dead-lettered.
    pub retry_for: Duration,
    /// Retries of a dead letter sent again (`eventflow dead-letter resend`).
    pub retries: u32,
}

impl Limits {
    /// The events one look at the queue reads: [`READ_AHEAD_EVENTS`], or two batches per
    /// request in flight if that is more. The loop looks again when fewer than this many are
    /// read ahead, so it holds at most twice this many besides the batches in flight.
    pub fn read_ahead(&self) -> usize {
        read_ahead(self.max_in_flight, self.batch.max_events)
    }
}

/// [`Limits::read_ahead`] of a sink sending `max_in_flight` requests of `max_events` at once.
pub fn read_ahead(max_in_flight: usize, max_events: usize) -> usize {
    READ_AHEAD_EVENTS.max(max_in_flight.saturating_mul(max_events).saturating_mul(2))
}

/// The most events such a sink holds read ahead: a look starts while fewer than
/// [`read_ahead`] are waiting, and reads that many more.
pub fn held_ahead(max_in_flight: usize, max_events: usize) -> usize {
    read_ahead(max_in_flight, max_events).saturating_mul(2)
}

/// What a durable queue needs of the sink that sends from it (a webhook, `loki`).
pub trait Sender: Send + Sync + 'static {
    /// The stage id.
    fn stage(&self) -> &str;
    /// Whether this replica leads (only the leader delivers).
    fn leadership(&self) -> &crate::leader::Leadership;
    fn limits(&self) -> Limits;
    /// Delivers one batch under `budget`; with `stop`, a retry is not waited for once the
    /// stage is stopping.
    fn send<'a>(
        &'a self,
        events: &'a [Event],
        health: Option<&'a StageHealth>,
        budget: Budget,
        stop: Option<watch::Receiver<bool>>,
    ) -> futures::future::BoxFuture<'a, Outcome>;
    /// Its way of sending queued events as they are stored, without decoding them, if it
    /// has one (else they are decoded and go to [`Sender::send`]).
    fn stored(&self) -> Option<&dyn SendsStored> {
        None
    }
}

/// A [`Sender`] that takes queued events as they are stored.
pub trait SendsStored: Send + Sync {
    /// [`Sender::send`] of events as they are stored.
    fn send_stored<'a>(
        &'a self,
        events: &'a [StoredRef<'a>],
        health: Option<&'a StageHealth>,
        budget: Budget,
        stop: Option<watch::Receiver<bool>>,
    ) -> futures::future::BoxFuture<'a, Outcome>;
}

/// One running durable sink: what its intake and its delivery loop share.
struct Durable {
    delivery: Arc<dyn Sender>,
    limits: Limits,
    store: Store,
    health: Arc<StageHealth>,
    slot: Arc<Slot>,
    gauge: metrics::Gauge,
    dead: metrics::Counter,
    latency: shared_metrics::Delivered,
    processing: metrics::Histogram,
}

impl Durable {
    /// The stage id.
    /// Counts the queue again (another replica may have added to it or delivered from it).
    /// Returns the count, 0 when it cannot be read (logged).
    async fn recount(&self) -> u64 {
        match self.store.count(self.stage()).await {
            Ok(n) => {
                self.slot.queued.store(n, Ordering::SeqCst);
                self.gauge.set(n as f64);
                n
            }
            Err(e) => {
                tracing::warn!(stage = %self.stage(), error = %e, "state database: cannot count the queue");
                0
            }
        }
    }

    fn stage(&self) -> &str {
        self.delivery.stage()
    }

    fn queued(&self) -> u64 {
        self.slot.queued.load(Ordering::SeqCst)
    }

    fn add(&self, n: u64) {
        let now_queued = self.slot.queued.fetch_add(n, Ordering::SeqCst) + n;
        self.gauge.set(now_queued as f64);
        self.slot.added.send_modify(|v| *v += 1);
    }

    fn sub(&self, n: u64) {
        let now_queued = self
            .slot
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |before| {
                Some(before.saturating_sub(n))
            })
            .unwrap_or(0)
            .saturating_sub(n);
        self.gauge.set(now_queued as f64);
        self.slot.room.notify_waiters();
    }

    /// Runs a database write, retrying while the database is unavailable unless `give_up`
    /// says to stop; true when it was written.
    async fn persist<F, Fut>(&self, what: &str, give_up: impl Fn() -> bool, op: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), DbError>>,
    {
        let retry = |e: &DbError, wait: Duration| {
            self.health.failing();
            if give_up() {
                return false;
            }
            tracing::warn!(stage = %self.stage(), error = %e, wait = ?wait, "state database: cannot {what}; retrying");
            true
        };
        let mut backoff = BackoffConfig::<500, 30_000>::default().start();
        match retrying(&mut backoff, retry, op).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(stage = %self.stage(), error = %e, "state database: cannot {what}");
                false
            }
        }
    }
}

/// Runs a durable webhook sink until its input closes and its delivery loop has stopped.
pub async fn run(
    delivery: Arc<dyn Sender>,
    store: Store,
    slot: Arc<Slot>,
    cx: &mut SinkContext,
    health: Arc<StageHealth>,
) {
    let id = cx.metrics.id.clone();
    let stage: &str = &id;
    slot.generation.send_modify(|g| *g += 1);
    let shared = Arc::new(Durable {
        limits: delivery.limits(),
        delivery,
        store,
        health,
        slot: slot.clone(),
        gauge: super::telemetry::webhook_queued(stage),
        dead: super::telemetry::webhook_dead_lettered(stage),
        latency: shared_metrics::latency(stage, cx.metrics.type_name),
        processing: cx.metrics.processing.clone(),
    });
    let queued = shared.recount().await;
    if queued > 0 {
        tracing::info!(stage, queued, "resuming the deliveries queued before");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let written = cx.metrics.discarded("queue_write_failed");
    let intake = async {
        intake(&shared, cx, &written).await;
        let _ = stop_tx.send(true);
    };
    let mut generation = slot.generation.subscribe();
    let deliveries = async {
        let mut lead = shared.delivery.leadership().clone();
        let mut stop = stop_rx.clone();
        loop {
            // A standby leaves the queue to the leader (the queue is shared in the state
            // database); without leader election this replica always leads.
            if !lead.is_leader() {
                tokio::select! {
                    () = lead.acquired() => {}
                    _ = stop.wait_for(|s| *s) => return,
                    _ = generation.changed() => return,
                }
                let _ = shared.recount().await;
            }
            let turn = tokio::select! {
                turn = slot.delivering.lock() => Some(turn),
                _ = generation.changed() => None,
            };
            if turn.is_none() {
                return;
            }
            let ended = deliver_loop(&shared, stop_rx.clone(), generation.clone()).await;
            if ended != LoopEnd::NotLeader {
                return;
            }
            tracing::info!(
                stage,
                "no longer the leader: queue deliveries stopped; the next leader resumes them"
            );
        }
    };
    tokio::join!(intake, deliveries);
    let left = shared.queued();
    if left > 0 {
        tracing::info!(
            stage,
            queued = left,
            "webhook stopped with events queued; they are delivered at the next start"
        );
    }
}

async fn intake(shared: &Durable, cx: &mut SinkContext, write_failed: &metrics::Counter) {
    let max = shared.limits.max_queued.max(1);
    let warned = std::sync::atomic::AtomicBool::new(false);
    super::super::batch::run_batched(
        &mut cx.input,
        1000,
        Duration::from_millis(5),
        1,
        |batch| {
            let warned = &warned;
            async move {
                let mut rest = batch;
                while !rest.is_empty() {
                    // Room for how many? At the bound, wait (back-pressure on the stages
                    // before); never write past it.
                    let room = loop {
                        let notified = shared.slot.room.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        let queued = shared.queued();
                        if queued < max {
                            let room = usize::try_from(max - queued).unwrap_or(usize::MAX);
                            break room.min(rest.len());
                        }
                        if !warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                stage = %shared.stage(),
                                max_queued = max,
                                "webhook queue is full; holding back new events until deliveries make room"
                            );
                        }
                        notified.await;
                    };
                    let tail = rest.split_off(room);
                    write(shared, rest, write_failed).await;
                    rest = tail;
                }
            }
        },
    )
    .await;
}

/// Writes a batch to the queue, retrying while the database is unavailable. An event the
/// database refuses for good is rejected (counted), not retried forever.
async fn write(shared: &Durable, batch: Vec<Event>, write_failed: &metrics::Counter) {
    let mut backoff = BackoffConfig::<500, 30_000>::default().start();
    let retry = |e: &DbError, wait: Duration| {
        shared.health.failing();
        tracing::warn!(stage = %shared.stage(), error = %e, wait = ?wait, "state database: cannot queue events; retrying");
        true
    };
    match retrying(&mut backoff, retry, || {
        shared
            .store
            .push(shared.stage(), &batch, shared.limits.batch.max_events)
    })
    .await
    {
        Ok(()) => {
            shared.add(batch.len() as u64);
            // Queued durably: from here on the queue (or the dead letters) keeps them.
            ack_all(&batch, Status::Delivered);
        }
        Err(e) if batch.len() > 1 => {
            tracing::warn!(stage = %shared.stage(), error = %e, "state database refused a batch; queueing its events one by one");
            for one in batch {
                Box::pin(write(shared, vec![one], write_failed)).await;
            }
        }
        Err(e) => {
            tracing::error!(stage = %shared.stage(), uid = %batch[0].uid, error = %e, "state database refused the event; it is not delivered");
            write_failed.increment(1);
            crate::event::refuse_all(
                &batch,
                shared.stage(),
                &format!("the state database refused to queue it: {e}"),
            );
        }
    }
}

/// The next batches at the head of the queue (after `cursor`), or when to look again.
enum Next {
    Batches(Vec<Vec<Pending>>),
    Empty,
    WaitUntil(Instant),
}

/// Reads batches holding up to `limit` events from the head of the queue in one query. A batch pinned by an
/// earlier attempt goes out as it was (up to `batch.max_events`); the others are cut at
/// `batch.max_events`. A partial batch at the end of what was read is left for the next look
/// (the read may have cut it, or more may come), except when it is the only one: then it goes
/// once its oldest event is `batch.max_wait` old (at once when stopping).
async fn next_batches(
    shared: &Durable,
    cursor: i64,
    stopping: bool,
    limit: usize,
) -> Result<Next, DbError> {
    let cfg = &shared.limits;
    let max = cfg.batch.max_events.max(1);
    let limit = limit.max(max);
    let rows = shared.store.head(shared.stage(), cursor, limit).await?;
    let mut batches: Vec<Vec<Pending>> = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while let Some(first) = rows.next() {
        let mut n = first.len();
        let mut batch = vec![first];
        while n < max
            && let Some(r) = rows.next_if(|r| batch[0].continues(r) && n + r.len() <= max)
        {
            n += r.len();
            batch.push(r);
        }
        batches.push(batch);
    }
    let events = |b: &[Pending]| b.iter().map(Pending::len).sum::<usize>();
    let partial_tail = batches
        .last()
        .is_some_and(|b| events(b) < max && (b[0].batch.is_none() || batches.len() > 1));
    if batches.len() > 1 && partial_tail {
        batches.pop();
    }
    let Some(only) = batches.first() else {
        return Ok(Next::Empty);
    };
    if batches.len() == 1 && only[0].batch.is_none() && events(only) < max && !stopping {
        let due = only[0]
            .born_at
            .saturating_add(i64::try_from(cfg.batch.max_wait.0.as_millis()).unwrap_or(i64::MAX));
        let now = chrono::Utc::now().timestamp_millis();
        if now < due {
            return Ok(Next::WaitUntil(
                Instant::now() + Duration::from_millis((due - now).unsigned_abs()),
            ));
        }
    }
    Ok(Next::Batches(batches))
}

/// Removes delivered rows and pins the batches about to go out (one transaction), retried
/// while the database is unavailable unless `halting`.
async fn settle(shared: &Durable, delivered: Vec<Delivered>, pins: Vec<(i64, i64)>, halting: bool) {
    if delivered.is_empty() && pins.is_empty() {
        return;
    }
    let ids: Vec<i64> = delivered.iter().map(|d| d.0).collect();
    let events: usize = delivered.iter().map(|d| d.1).sum();
    let written = shared
        .persist(
            "remove delivered events from the queue",
            || halting,
            || shared.store.settle(shared.stage(), &ids, &pins),
        )
        .await;
    if written {
        shared.sub(events as u64);
    } else if !delivered.is_empty() {
        tracing::warn!(stage = %shared.stage(), events, "delivered events stay queued and are sent again at the next start (same delivery ids)");
    }
}

/// A delivered queue row: its id and how many events it held.
type Delivered = (i64, usize);

/// Why a delivery loop ended.
#[derive(Debug, PartialEq, Eq)]
enum LoopEnd {
    /// The stage stopped, or a newer instance took over.
    Done,
    /// This replica stopped leading (with leader election).
    NotLeader,
}

/// A batch read ahead: its rows, and its pin (a batch that needs one goes out once it is
/// written).
struct Ready {
    rows: Vec<Pending>,
    pin: Pin,
}

/// Where a batch read ahead stands with its pin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// Pinned, or it needs none: it may go out.
    Done,
    /// It needs one, not yet being written.
    Needed,
    /// Being written (with the removals under way).
    Writing,
}

/// What the delivery loop keeps between turns.
struct Loop {
    /// Each batch in flight is a task of its own: it makes progress (and frees its database
    /// connection) while the loop waits on the database itself.
    in_flight: tokio::task::JoinSet<(Outcome, Vec<Delivered>)>,
    /// Batches read and not yet sent (at most twice [`Limits::read_ahead`] events).
    ready: std::collections::VecDeque<Ready>,
    /// Rows delivered and not yet removed: removed together with the next pins, in one commit.
    delivered: Vec<Delivered>,
    /// The removals and pins being written (one commit at a time); sending goes on meanwhile.
    settling: Option<futures::future::BoxFuture<'static, ()>>,
    /// The look at the queue under way (one at a time, beside the commit).
    reading: Option<futures::future::BoxFuture<'static, Result<Next, DbError>>>,
    /// The row id the next look starts after.
    cursor: i64,
    /// Whether to look at the queue again (not after a look found nothing, until rows are
    /// added, a wait is over or the stage stops).
    look: bool,
    /// The last look found the queue empty.
    empty: bool,
    /// When to look again.
    wake: Option<Instant>,
}

/// Delivers from the queue until the stage stops (see the module's notes), a newer instance
/// of it starts (`generation` changes) or this replica stops leading, whichever comes first.
/// Database work (removing what was delivered, pinning, reading ahead) runs beside the
/// requests: a request that finishes is followed by the next one at once.
async fn deliver_loop(
    shared: &Arc<Durable>,
    mut stop: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
) -> LoopEnd {
    let mut lead = shared.delivery.leadership().clone();
    // Rows another replica queued wake no one here: with leader election, look again now
    // and then.
    let poll = lead.elected().then_some(Duration::from_secs(1));
    let mut added = shared.slot.added.subscribe();
    // Deliveries in flight stop retrying once this instance stops or is superseded.
    let (halt, halted_rx) = watch::channel(false);
    let cfg = &shared.limits;
    let mut l = Loop {
        in_flight: tokio::task::JoinSet::new(),
        ready: std::collections::VecDeque::new(),
        delivered: Vec::new(),
        settling: None,
        reading: None,
        cursor: 0,
        look: true,
        empty: false,
        wake: None,
    };
    let mut halted = false;
    let mut superseded = false;
    let mut db_backoff = BackoffConfig::<500, 30_000>::default().start();
    loop {
        let stopping = *stop.borrow();
        // Sticky: `changed()` below marks the new generation seen.
        superseded |= generation.has_changed().unwrap_or(true);
        let leading = lead.is_leader();
        if stopping || superseded || !leading {
            halt.send_replace(true);
        }
        if !leading {
            // Fencing: requests in flight were dropped by `deliver`; do not wait for them.
            l.in_flight.abort_all();
            while l.in_flight.join_next().await.is_some() {}
            if let Some(op) = l.settling.take() {
                op.await;
            }
            l.reading = None;
            settle(shared, std::mem::take(&mut l.delivered), Vec::new(), true).await;
            return LoopEnd::NotLeader;
        }
        let sending = !(superseded || (stopping && halted));
        let halting = *halted_rx.borrow();
        if sending {
            while l.in_flight.len() < cfg.max_in_flight
                && l.ready.front().is_some_and(|r| r.pin == Pin::Done)
                && let Some(r) = l.ready.pop_front()
            {
                l.in_flight
                    .spawn(send(shared.clone(), r.rows, halted_rx.clone()));
            }
        } else {
            l.ready.clear();
        }
        let now = Now {
            sending,
            stopping,
            halting,
        };
        start_db_work(shared, &mut l, cfg, now);
        if l.in_flight.is_empty()
            && l.ready.is_empty()
            && l.settling.is_none()
            && l.reading.is_none()
            && l.delivered.is_empty()
            && (superseded || (stopping && (halted || l.empty)))
        {
            return LoopEnd::Done;
        }
        let mut waits = Waits {
            added: &mut added,
            generation: &mut generation,
            stop: &mut stop,
            lead: &mut lead,
        };
        let turn = waits.next_turn(&mut l, superseded, stopping).await;
        halted |= turn.halted;
        superseded |= turn.superseded;
        l.delivered.extend(turn.delivered);
        if turn.woken {
            l.look = true;
        }
        if let Some(read) = turn.read {
            absorb(shared, read, &mut l, &mut db_backoff, poll);
        }
    }
}

/// Starts the database work there is to do, beside what is under way: one commit at a time
/// removing the rows delivered (once `max_in_flight` batches' worth are, or nothing is in
/// flight, or pins are to be written, or the stage stops: a commit every few requests, not one
/// per request — a server that flushes its log at each commit waits for each; a crash sends
/// the delivered rows not yet removed again, with the same delivery ids) and pinning the
/// batches read ahead that need it; and one look ahead at the queue.
fn start_db_work(shared: &Arc<Durable>, l: &mut Loop, cfg: &Limits, now: Now) {
    let Now {
        sending,
        stopping,
        halting,
    } = now;
    if l.settling.is_none() {
        let pins = pin(&mut l.ready, cfg.batch.max_events);
        // Stopping, superseded (not sending) or halting: now.
        let flush = stopping
            || !sending
            || halting
            || !pins.is_empty()
            || l.in_flight.is_empty()
            || l.delivered.iter().map(|d| d.1).sum::<usize>()
                >= cfg.max_in_flight.saturating_mul(cfg.batch.max_events);
        if flush && !(l.delivered.is_empty() && pins.is_empty()) {
            let removing = std::mem::take(&mut l.delivered);
            let shared = shared.clone();
            l.settling = Some(Box::pin(async move {
                settle(&shared, removing, pins, halting).await;
            }));
        }
    }
    let read_ahead = cfg.read_ahead();
    let ready_events: usize = l.ready.iter().flat_map(|r| &r.rows).map(Pending::len).sum();
    if l.reading.is_none() && sending && l.look && ready_events < read_ahead {
        // Nothing in flight, read ahead or waiting to be removed: look from the head again (a
        // row committed late by a concurrent writer is not skipped for long).
        if l.in_flight.is_empty()
            && l.ready.is_empty()
            && l.delivered.is_empty()
            && l.settling.is_none()
        {
            l.cursor = 0;
        }
        l.look = false;
        let (shared, cursor) = (shared.clone(), l.cursor);
        l.reading = Some(Box::pin(async move {
            next_batches(&shared, cursor, stopping, read_ahead).await
        }));
    }
}

/// The state of the stage as a turn of the delivery loop starts.
#[derive(Clone, Copy)]
struct Now {
    /// Batches go out (not once superseded, nor when stopping after a retry was given up).
    sending: bool,
    /// The stage is stopping: a partial batch goes out at once.
    stopping: bool,
    /// Deliveries stop retrying: a database write is tried once.
    halting: bool,
}
/// What [`deliver_loop`] waits on between two turns.
struct Waits<'a> {
    added: &'a mut watch::Receiver<u64>,
    generation: &'a mut watch::Receiver<u64>,
    stop: &'a mut watch::Receiver<bool>,
    lead: &'a mut crate::leader::Leadership,
}

/// What happened while [`deliver_loop`] waited.
#[derive(Default)]
struct Turn {
    /// Rows delivered by the batches that finished.
    delivered: Vec<Delivered>,
    /// A batch stopped retrying because the stage is stopping.
    halted: bool,
    /// A newer instance of the stage started.
    superseded: bool,
    /// What the look at the queue under way found.
    read: Option<Result<Next, DbError>>,
    /// Rows were added, the time to look again came, or the stage is stopping: look again.
    woken: bool,
}

impl Waits<'_> {
    /// Waits for the next thing to act on: batches finishing (all that have, at once), the
    /// database work finishing, rows added, a newer instance, the time to look again, a stop,
    /// or lost leadership.
    async fn next_turn(&mut self, l: &mut Loop, superseded: bool, stopping: bool) -> Turn {
        let mut turn = Turn::default();
        let mut settled = false;
        let settling = async {
            match l.settling.as_mut() {
                Some(op) => op.await,
                None => std::future::pending().await,
            }
        };
        let reading = async {
            match l.reading.as_mut() {
                Some(op) => op.await,
                None => std::future::pending().await,
            }
        };
        let in_flight = &mut l.in_flight;
        let wake = l.wake;
        tokio::select! {
            biased;
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let mut finished = vec![done];
                while let Some(done) = in_flight.try_join_next() {
                    finished.push(done);
                }
                for done in finished {
                    match done {
                        Ok((Outcome::Interrupted, _)) => turn.halted = true,
                        Ok((_, ids)) => turn.delivered.extend(ids),
                        Err(_) => {}
                    }
                }
            }
            () = settling => settled = true,
            read = reading => turn.read = Some(read),
            _ = self.added.changed() => turn.woken = true,
            _ = self.generation.changed(), if !superseded => turn.superseded = true,
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                turn.woken = true;
            }
            _ = self.stop.changed(), if !stopping => turn.woken = true,
            () = self.lead.lost() => {}
        }
        if settled {
            l.settling = None;
            // The batches pinned by that commit may go out now.
            for r in &mut l.ready {
                if r.pin == Pin::Writing {
                    r.pin = Pin::Done;
                }
            }
        }
        if turn.read.is_some() {
            l.reading = None;
        }
        if turn.woken {
            l.wake = None;
        }
        turn
    }
}

/// Whether a batch must be pinned before it goes out: one not pinned yet, unless it is one
/// full row (`max` events; nothing can join it after a restart).
fn needs_pin(b: &[Pending], max: usize) -> bool {
    max > 1 && b.first().is_some_and(|r| r.batch.is_none()) && !(b.len() == 1 && b[0].len() >= max)
}

/// Marks the batches read ahead that need a pin as pinned (they wait until it is written);
/// returns their `(first, last)` row ids to write.
fn pin(ready: &mut std::collections::VecDeque<Ready>, max: usize) -> Vec<(i64, i64)> {
    let mut pins = Vec::new();
    for r in ready.iter_mut() {
        if r.pin != Pin::Needed || !needs_pin(&r.rows, max) {
            continue;
        }
        if let (Some(first), Some(last)) =
            (r.rows.first().map(|r| r.id), r.rows.last().map(|r| r.id))
        {
            pins.push((first, last));
            r.rows[0].batch = Some(last);
            r.pin = Pin::Writing;
        }
    }
    pins
}

/// Takes in what a look at the queue found: batches go to `ready` (and move the cursor);
/// else when to look again, and whether the queue was empty.
fn absorb(
    shared: &Durable,
    read: Result<Next, DbError>,
    l: &mut Loop,
    db_backoff: &mut crate::backoff::Backoff,
    poll: Option<Duration>,
) {
    let max = shared.limits.batch.max_events;
    l.empty = false;
    match read {
        Ok(Next::Batches(b)) => {
            db_backoff.reset();
            if let Some(last) = b.last() {
                l.cursor = last[last.len() - 1].id;
            }
            l.ready.extend(b.into_iter().map(|rows| Ready {
                pin: if needs_pin(&rows, max) {
                    Pin::Needed
                } else {
                    Pin::Done
                },
                rows,
            }));
            // There may be more: read ahead again once there is room.
            l.look = true;
        }
        Ok(Next::Empty) => {
            l.empty = true;
            l.wake = poll.map(|p| Instant::now() + p);
        }
        Ok(Next::WaitUntil(t)) => l.wake = Some(t),
        Err(e) => {
            shared.health.failing();
            let wait = db_backoff.next_delay();
            tracing::warn!(stage = %shared.stage(), error = %e, wait = ?wait, "state database: cannot read the queue; retrying");
            l.wake = Some(Instant::now() + wait);
        }
    }
}

/// Delivers one batch of queued rows; returns the outcome and the rows to remove from the
/// queue (delivered). A batch that failed for good is moved to the dead letters here. Rows in
/// this version's form go to a sender that takes them as stored without being decoded.
async fn send(
    shared: Arc<Durable>,
    rows: Vec<Pending>,
    halt: watch::Receiver<bool>,
) -> (Outcome, Vec<Delivered>) {
    let shared = &*shared;
    let started = std::time::Instant::now();
    let as_stored = shared
        .delivery
        .stored()
        .filter(|_| rows.iter().all(Pending::in_this_form));
    let stop = || Some(halt.clone());
    let (outcome, good) = if let Some(sender) = as_stored {
        let send = async |events: &[StoredRef<'_>]| {
            sender
                .send_stored(events, Some(&shared.health), budget(shared), stop())
                .await
        };
        send_rows(shared, &rows, &halt, Pending::refs, send).await
    } else {
        let decoded = |r: &Pending| {
            let events = r.events()?.into_iter();
            Ok(events.map(|e| Event::new(e, Finalizers::None)).collect())
        };
        let send = async |events: &[Event]| {
            let health = Some(&*shared.health);
            shared
                .delivery
                .send(events, health, budget(shared), stop())
                .await
        };
        send_rows(shared, &rows, &halt, decoded, send).await
    };
    let delivered = match outcome {
        Outcome::Delivered { .. } => good.iter().map(|r| (r.id, r.len())).collect(),
        _ => Vec::new(),
    };
    shared.processing.record(started.elapsed().as_secs_f64());
    (outcome, delivered)
}

/// A queued event as a delivery takes it: decoded, or as stored.
trait Queued {
    /// Its uid and resourceVersion (a delivery id is made of them).
    fn version(&self) -> (&str, &str);
    /// When Kubernetes last saw it, unix milliseconds.
    fn seen_ms(&self) -> Option<i64>;
}

impl Queued for Event {
    fn version(&self) -> (&str, &str) {
        (&self.uid, &self.resource_version)
    }

    fn seen_ms(&self) -> Option<i64> {
        crate::event::EventData::seen_ms(self)
    }
}

impl Queued for StoredRef<'_> {
    fn version(&self) -> (&str, &str) {
        (&self.uid, &self.resource_version)
    }

    fn seen_ms(&self) -> Option<i64> {
        self.seen
    }
}

/// Sends the events of the `rows` that `read` reads (the others are dead-lettered); returns
/// the outcome and the rows sent. A delivery records each event's latency; one that failed for
/// good is moved to the dead letters under its delivery id.
async fn send_rows<'r, T: Queued>(
    shared: &Durable,
    rows: &'r [Pending],
    halt: &watch::Receiver<bool>,
    read: impl Fn(&'r Pending) -> serde_json::Result<Vec<T>>,
    send: impl AsyncFnOnce(&[T]) -> Outcome,
) -> (Outcome, Vec<&'r Pending>) {
    let mut events = Vec::new();
    // When each event entered the pipeline (its row's oldest).
    let mut born = Vec::new();
    let mut good = Vec::with_capacity(rows.len());
    for (r, es) in readable(shared, rows, halt, read).await {
        born.extend(std::iter::repeat_n(r.born_at, es.len()));
        events.extend(es);
        good.push(r);
    }
    if events.is_empty() {
        return (Outcome::Delivered { attempts: 0 }, good);
    }
    let outcome = send(&events).await;
    match &outcome {
        Outcome::Delivered { .. } => {
            let now = chrono::Utc::now().timestamp_millis();
            for (born, e) in born.into_iter().zip(&events) {
                let in_pipeline = u64::try_from(now - born).unwrap_or(0);
                let seen = e
                    .seen_ms()
                    .and_then(chrono::DateTime::from_timestamp_millis);
                shared
                    .latency
                    .record_seen(seen, Duration::from_millis(in_pipeline));
            }
        }
        Outcome::Failed { reason, attempts } => {
            let id = crate::stages::send::delivery_id_of(events.iter().map(Queued::version));
            bury(shared, &good, &id, *attempts, reason, halt).await;
        }
        Outcome::Interrupted => {}
    }
    (outcome, good)
}

/// The rows that read with `read`, with what each gave; a row that does not (written by
/// another version, or damaged) is moved to the dead letters for a person to see.
async fn readable<'r, T>(
    shared: &Durable,
    rows: &'r [Pending],
    halt: &watch::Receiver<bool>,
    read: impl Fn(&'r Pending) -> serde_json::Result<T>,
) -> Vec<(&'r Pending, T)> {
    let mut good = Vec::with_capacity(rows.len());
    for r in rows {
        match read(r) {
            Ok(t) => good.push((r, t)),
            Err(e) => {
                let reason = format!("cannot read the queued event: {e}");
                tracing::error!(stage = %shared.stage(), row = r.id, reason = %reason, "dead-lettering a queued event");
                bury(shared, &[r], "", 0, &reason, halt).await;
            }
        }
    }
    good
}

/// A queued delivery's budget: retried for up to `retry_for` from now.
fn budget(shared: &Durable) -> Budget {
    Budget::Until(Instant::now().into_std() + shared.limits.retry_for)
}

/// Moves rows to the dead letters (counted).
async fn bury(
    shared: &Durable,
    rows: &[&Pending],
    delivery_id: &str,
    attempts: u32,
    reason: &str,
    stop: &watch::Receiver<bool>,
) {
    let moved = shared
        .persist(
            "move a failed delivery to the dead letters",
            || *stop.borrow(),
            || {
                shared
                    .store
                    .bury(shared.stage(), rows, delivery_id, attempts, reason)
            },
        )
        .await;
    if moved {
        let events: usize = rows.iter().map(|r| r.len()).sum();
        shared.sub(events as u64);
        shared.dead.increment(events as u64);
        tracing::error!(
            stage = %shared.stage(),
            delivery_id,
            events,
            "delivery moved to the dead-letter table (`eventflow dead-letter list`)"
        );
    }
}
