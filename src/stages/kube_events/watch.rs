//! One list-then-watch loop (per namespace, or one for all): what it does next after each
//! list and watch ends, and how a page or a watch chunk becomes emitted events and checkpoint
//! rows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use tokio::sync::{mpsc, oneshot};

use super::resource::{PageHead, decode_page};
use super::seen::{Generation, next_generation};
use super::{Admission, Counters, Flavor, FromWatch, KubeEvent, KubeEventsConfig, Row, Seen};
use crate::backoff::Backoff;
use crate::component::Shutdown;
use crate::event::EventData;
use crate::health::StageHealth;

/// One list-then-watch loop; `RAW`: each object's JSON text is kept as the event's `raw`.
pub(super) struct WatchLoop<const RAW: bool> {
    pub(super) api: Api<KubeEvent<RAW>>,
    pub(super) slot: u16,
    pub(super) namespace: Option<String>,
    pub(super) cfg: KubeEventsConfig,
    pub(super) cluster: Arc<str>,
    /// The API server's URL, for messages.
    pub(super) server: Arc<str>,
    pub(super) seen: Arc<Mutex<Seen>>,
    pub(super) tx: mpsc::Sender<FromWatch>,
    pub(super) counters: Counters,
    pub(super) first_start: bool,
    pub(super) health: Arc<StageHealth>,
}

/// What the loop does next (after a delay).
enum Next {
    /// List (again): at the start, or when the resourceVersion is gone.
    Relist,
    /// Watch from this resourceVersion.
    Watch(String),
}

/// The accumulated output of a batch of items.
#[derive(Default)]
struct PageOut {
    /// Objects read (counted once per batch).
    read: u64,
    emit: Vec<EventData>,
    rows: Vec<Row>,
    handled: Vec<Row>,
    forget: Vec<String>,
}

impl<const RAW: bool> WatchLoop<RAW> {
    fn verb_target(&self) -> String {
        let group = match self.cfg.api {
            Flavor::CoreV1 => "\"\" (core)",
            Flavor::EventsV1 => "\"events.k8s.io\"",
        };
        let scope = match &self.namespace {
            Some(ns) => format!("in namespace `{ns}`"),
            None => "cluster-wide (all namespaces)".to_string(),
        };
        format!("resource `events` in API group {group} {scope}")
    }

    /// Logs and counts an API error; returns true when it is a 410 Gone.
    fn report(&self, what: &str, e: &kube::Error) -> bool {
        if let kube::Error::Api(s) = e {
            match s.code {
                403 => {
                    self.counters.forbidden.increment(1);
                    tracing::error!(
                        server = %self.server,
                        message = %s.message,
                        "the API server refused to {what} Events (403 Forbidden): grant the verbs `list` and `watch` on {} to the identity eventflow runs as (its kubeconfig user or service account)",
                        self.verb_target()
                    );
                    return false;
                }
                401 => {
                    self.counters.unauthorized.increment(1);
                    tracing::error!(server = %self.server, message = %s.message, "the API server did not accept eventflow's credentials (401 Unauthorized) when trying to {what} Events: check the kubeconfig user's token or certificate");
                    return false;
                }
                410 => return true,
                _ => {}
            }
        }
        tracing::warn!(server = %self.server, error = %e, "cannot {what} Events from the API server; retrying with backoff");
        false
    }

    pub(super) async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut st = LoopState {
            backoff: self.cfg.backoff.start(),
            generation: 0,
            empty_in_a_row: 0,
            listed_once: false,
        };
        let mut next = Next::Relist;
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() {
                tokio::select! {
                    () = shutdown.requested() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            if shutdown.is_requested() {
                return;
            }
            let step = match next {
                Next::Relist => self.relist(&mut st, &mut shutdown).await,
                Next::Watch(rv) => self.rewatch(rv, &mut st, &mut shutdown).await,
            };
            match step {
                Some(step) => (next, delay) = step,
                None => return,
            }
        }
    }

    /// Lists again; what comes next and after which delay (`None`: shutdown).
    async fn relist(
        self: &Arc<Self>,
        st: &mut LoopState,
        shutdown: &mut Shutdown,
    ) -> Option<(Next, Duration)> {
        st.generation = next_generation(st.generation);
        if !st.listed_once {
            self.counters.relist_initial.increment(1);
        }
        match self.list(st.generation, !st.listed_once, shutdown).await {
            Ok(Some(rv)) => {
                st.listed_once = true;
                self.health.synced();
                Some((Next::Watch(rv), Duration::ZERO))
            }
            Ok(None) => None,
            Err(e) => {
                // A 410 here is an expired continue token: the list starts over.
                self.counters.list_errors.increment(1);
                self.counters.relist_error.increment(1);
                self.health.failing();
                self.report("list", &e);
                Some((Next::Relist, st.backoff.next_delay()))
            }
        }
    }

    /// Watches from `rv` until the watch ends; what comes next (`None`: shutdown).
    async fn rewatch(
        &self,
        rv: String,
        st: &mut LoopState,
        shutdown: &mut Shutdown,
    ) -> Option<(Next, Duration)> {
        let started = tokio::time::Instant::now();
        let next = match self.watch(&rv, shutdown).await {
            WatchEnd::Shutdown => return None,
            WatchEnd::StartFailed(e) => {
                self.counters.watch_errors.increment(1);
                self.counters.restarts_error.increment(1);
                self.health.failing();
                if self.report("watch", &e) {
                    // An HTTP 410 on the watch itself: kube would retry the same
                    // resourceVersion forever; a relist is the way out.
                    self.counters.relist_expired.increment(1);
                    (Next::Relist, st.backoff.next_delay())
                } else {
                    (Next::Watch(rv), st.backoff.next_delay())
                }
            }
            WatchEnd::Expired => {
                self.counters.relist_expired.increment(1);
                tracing::info!("the watch's resourceVersion expired (410); relisting");
                (Next::Relist, Duration::ZERO)
            }
            WatchEnd::Ended { rv: last, items }
                if items == 0 && started.elapsed() < Duration::from_secs(1) =>
            {
                // A watch that ends at once with nothing in it: something between us and the
                // server is closing it. Back off, and after three in a row relist.
                self.health.synced();
                st.empty_in_a_row += 1;
                self.counters.restarts_empty.increment(1);
                if st.empty_in_a_row >= 3 {
                    st.empty_in_a_row = 0;
                    self.counters.relist_empty.increment(1);
                    tracing::warn!("the watch keeps closing at once with no events; relisting");
                    (Next::Relist, st.backoff.next_delay())
                } else {
                    (Next::Watch(last), st.backoff.next_delay())
                }
            }
            WatchEnd::Ended { rv: last, .. } => {
                self.health.synced();
                st.empty_in_a_row = 0;
                st.backoff.reset();
                self.counters.restarts_closed.increment(1);
                (Next::Watch(last), Duration::ZERO)
            }
        };
        Some(next)
    }

    fn list_params(&self) -> ListParams {
        let mut lp = ListParams::default().limit(self.cfg.page_size.max(1));
        if let Some(l) = &self.cfg.label_selector {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.cfg.field_selector {
            lp = lp.fields(f);
        }
        lp
    }

    /// Lists every page; emits what is new; forgets what is gone. Returns the list's rv.
    ///
    /// A page is fetched as text and decoded (and its objects taken) on a blocking thread,
    /// while the next page is fetched: its continue token is handed over as soon as the
    /// decoder has read the page's `metadata`. Pages go out in order.
    async fn list(
        self: &Arc<Self>,
        generation: Generation,
        initial: bool,
        shutdown: &mut Shutdown,
    ) -> Result<Option<String>, kube::Error> {
        let mut lp = self.list_params();
        let mut list_rv: Option<String> = None;
        // The page before, being decoded while this one is fetched.
        let mut decoding: Option<Decoding> = None;
        loop {
            let text = tokio::select! {
                () = shutdown.requested() => return Ok(None),
                t = self.fetch_page(&lp) => t,
            };
            // The page before goes out first, whatever became of this one: its versions are
            // in `seen` already, so they would not be emitted by a relist.
            if let Some(d) = decoding.take()
                && !self.send(decoded(d).await?).await
            {
                return Ok(None);
            }
            let text = text?;
            let (head_tx, head_rx) = oneshot::channel();
            let me = self.clone();
            let span = tracing::Span::current();
            let task = tokio::task::spawn_blocking(move || {
                span.in_scope(|| me.take_page(&text, head_tx, generation, initial))
            });
            let Ok(head) = head_rx.await else {
                // Decoded (or failed) without a `metadata`: the last page.
                if !self.send(decoded(task).await?).await {
                    return Ok(None);
                }
                break;
            };
            if list_rv.is_none() {
                list_rv = head.resource_version;
            }
            decoding = Some(task);
            match head.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp.continue_token = Some(c),
                None => break,
            }
        }
        if let Some(d) = decoding.take()
            && !self.send(decoded(d).await?).await
        {
            return Ok(None);
        }
        let gone = self
            .seen
            .lock()
            .map(|mut s| s.sweep(self.slot, generation))
            .unwrap_or_default();
        if !gone.is_empty() && self.tx.send(FromWatch::Forget(gone)).await.is_err() {
            return Ok(None);
        }
        Ok(Some(list_rv.unwrap_or_default()))
    }

    /// One list page's text (what [`Api::list`] asks for, not decoded: that is done on a
    /// blocking thread).
    async fn fetch_page(&self, lp: &ListParams) -> Result<String, kube::Error> {
        let mut req = kube::core::Request::new(self.api.resource_url())
            .list(lp)
            .map_err(kube::Error::BuildRequest)?;
        req.extensions_mut().insert("list");
        self.api.clone().into_client().request_text(req).await
    }

    /// Decodes a page and takes its objects (on a blocking thread).
    fn take_page(
        &self,
        text: &str,
        head: oneshot::Sender<PageHead>,
        generation: Generation,
        initial: bool,
    ) -> Result<PageOut, kube::Error> {
        let items = decode_page::<RAW>(text, head).map_err(kube::Error::SerdeError)?;
        let mut out = PageOut::default();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for item in items {
            self.take(&mut seen, item, generation, initial, &mut out);
        }
        Ok(out)
    }

    /// Decides what to do with one object.
    fn take(
        &self,
        seen: &mut Seen,
        item: KubeEvent<RAW>,
        generation: Generation,
        initial_list: bool,
        out: &mut PageOut,
    ) {
        out.read += 1;
        let data = match item.data {
            Ok(d) => d,
            Err(e) => {
                self.counters.malformed.increment(1);
                tracing::warn!(
                    namespace = item.meta.namespace.as_deref().unwrap_or(""),
                    name = item.meta.name.as_deref().unwrap_or(""),
                    error = %e,
                    "skipping an Event that cannot be decoded"
                );
                return;
            }
        };
        let last = data
            .last_seen
            .map_or_else(|| chrono::Utc::now().timestamp(), |t| t.timestamp());
        let evicted = match seen.admit(
            &data.uid,
            &data.resource_version,
            last,
            self.slot,
            generation,
        ) {
            Admission::AlreadySeen => {
                self.counters.already_seen.increment(1);
                return;
            }
            Admission::New { evicted } => evicted,
        };
        let row = Row::new(&data.uid, &data.namespace, &data.resource_version, last);
        if !evicted.is_empty() {
            self.counters.evicted.increment(evicted.len() as u64);
            tracing::warn!(
                evicted = evicted.len(),
                max_tracked = self.cfg.max_tracked,
                "more Event versions than `max_tracked`: forgot the oldest tenth"
            );
            out.forget.extend(evicted);
        }
        if initial_list
            && self.first_start
            && let Some(age) = self.cfg.max_event_age
            && chrono::Utc::now().timestamp() - last
                > i64::try_from(age.0.as_secs()).unwrap_or(i64::MAX)
        {
            self.counters.too_old.increment(1);
            out.handled.push(row);
            return;
        }
        let mut data = data;
        data.cluster = self.cluster.clone();
        out.emit.push(data);
        out.rows.push(row);
    }

    /// Hands a batch to the source task; false once the source is gone.
    async fn send(&self, out: PageOut) -> bool {
        if out.read > 0 {
            self.counters.read.increment(out.read);
            self.counters
                .last_event
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        let PageOut {
            read: _,
            mut emit,
            mut rows,
            handled,
            forget,
        } = out;
        if !forget.is_empty() && self.tx.send(FromWatch::Forget(forget)).await.is_err() {
            return false;
        }
        if !handled.is_empty() && self.tx.send(FromWatch::Handled(handled)).await.is_err() {
            return false;
        }
        while !emit.is_empty() {
            let n = emit.len().min(self.cfg.max_batch());
            let rest_e = emit.split_off(n);
            let rest_r = rows.split_off(n);
            if self.tx.send(FromWatch::Emit(emit, rows)).await.is_err() {
                return false;
            }
            emit = rest_e;
            rows = rest_r;
        }
        true
    }

    async fn watch(&self, rv: &str, shutdown: &mut Shutdown) -> WatchEnd {
        let timeout = u32::try_from(self.cfg.watch_timeout.0.as_secs())
            .unwrap_or(u32::MAX)
            .max(1);
        let mut wp = WatchParams::default().timeout(timeout);
        if let Some(l) = &self.cfg.label_selector {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.cfg.field_selector {
            wp = wp.fields(f);
        }
        let stream = tokio::select! {
            () = shutdown.requested() => return WatchEnd::Shutdown,
            s = self.api.watch(&wp, rv) => match s {
                Ok(s) => {
                    self.health.synced();
                    s
                }
                Err(e) => return WatchEnd::StartFailed(e),
            },
        };
        let idle = self.cfg.watch_timeout.0 + Duration::from_secs(10);
        let mut stream = std::pin::pin!(stream.ready_chunks(self.cfg.max_batch()));
        let mut position = WatchPosition {
            rv: rv.to_string(),
            items: 0,
        };
        loop {
            let chunk = tokio::select! {
                () = shutdown.requested() => return WatchEnd::Shutdown,
                c = tokio::time::timeout(idle, stream.next()) => match c {
                    Ok(Some(c)) => c,
                    Ok(None) => return WatchEnd::Ended { rv: position.rv, items: position.items },
                    Err(_) => {
                        tracing::warn!(silent_for = ?idle, "the watch sent nothing for longer than its timeout; reconnecting");
                        return WatchEnd::Ended { rv: position.rv, items: 1 };
                    }
                },
            };
            let mut out = PageOut::default();
            let expired = self.take_chunk(chunk, &mut position, &mut out);
            if !self.send(out).await {
                return WatchEnd::Shutdown;
            }
            if expired {
                return WatchEnd::Expired;
            }
        }
    }

    /// Takes a chunk of watch events into `out`; true when the watch reported 410 Gone (the
    /// rest of the chunk is not read).
    fn take_chunk(
        &self,
        chunk: Vec<Result<WatchEvent<KubeEvent<RAW>>, kube::Error>>,
        at: &mut WatchPosition,
        out: &mut PageOut,
    ) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ev in chunk {
            at.items += 1;
            match ev {
                Ok(WatchEvent::Added(k) | WatchEvent::Modified(k)) => {
                    if let Some(v) = k.resource_version() {
                        v.clone_into(&mut at.rv);
                    }
                    self.take(&mut seen, k, 0, false, out);
                }
                Ok(WatchEvent::Deleted(k)) => {
                    if let Some(v) = k.resource_version() {
                        v.clone_into(&mut at.rv);
                    }
                    out.read += 1;
                    self.counters.deleted.increment(1);
                    if let Some(uid) = k.uid().map(str::to_string) {
                        seen.remove(&uid);
                        out.forget.push(uid);
                    }
                }
                Ok(WatchEvent::Bookmark(b)) => at.rv = b.metadata.resource_version,
                Ok(WatchEvent::Error(s)) if s.code == 410 => return true,
                Ok(WatchEvent::Error(s)) => {
                    self.counters.watch_errors.increment(1);
                    tracing::warn!(code = s.code, message = %s.message, "the watch reported an error");
                }
                Err(kube::Error::Api(s)) if s.code == 0 => {
                    self.counters.malformed.increment(1);
                    tracing::warn!(error = %s.message, "skipping a watch line that is not a valid Event");
                }
                Err(e) => {
                    self.counters.malformed.increment(1);
                    tracing::warn!(error = %e, "skipping a watch line that cannot be read");
                }
            }
        }
        false
    }
}

/// A page being decoded on a blocking thread.
type Decoding = tokio::task::JoinHandle<Result<PageOut, kube::Error>>;

/// What a page's decoding gave (a panic in it is an error of the list, like a bad page).
async fn decoded(d: Decoding) -> Result<PageOut, kube::Error> {
    d.await.map_err(|e| kube::Error::Service(Box::new(e)))?
}

/// Where a watch is: the last resourceVersion it reported, and how many items it sent.
struct WatchPosition {
    rv: String,
    items: u64,
}

/// What one watch loop carries from one list or watch to the next.
struct LoopState {
    backoff: Backoff,
    generation: Generation,
    empty_in_a_row: u32,
    listed_once: bool,
}

enum WatchEnd {
    Shutdown,
    StartFailed(kube::Error),
    Expired,
    Ended { rv: String, items: u64 },
}
