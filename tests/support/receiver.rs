//! The webhook receiver of the tests and benchmarks: a real HTTP server (axum) on 127.0.0.1,
//! on a thread and runtime of its own (so synchronous tests, async tests and benchmarks use it
//! alike), that records what it accepted and answers with injected faults: a status, a
//! `Retry-After`, a body, a delay.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A request the receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    /// When the request arrived.
    pub arrived: Instant,
    /// When it was answered.
    pub at: Instant,
    /// Its `X-Eventflow-Instance` (the replica that sent it, with leader election).
    pub instance: String,
    pub status: u16,
    pub query: String,
    pub delivery_id: String,
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
}

/// One injected answer.
#[derive(Clone)]
struct Answer {
    status: u16,
    retry_after: Option<&'static str>,
    delay: Duration,
    body: &'static str,
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Got>>,
    answers: Mutex<VecDeque<Answer>>,
    /// Every answer waits this long (after an injected answer's own delay).
    delay: Mutex<Duration>,
    active: AtomicUsize,
    peak: AtomicUsize,
    /// With a tally: requests are counted with it and not recorded.
    tally: Option<fn(&[u8]) -> u64>,
    tallied: AtomicU64,
    /// The answer when no injected one is left (200 unless set).
    status: std::sync::atomic::AtomicU16,
}

/// A running receiver; clones share it. It stops with the test process.
#[derive(Clone, Default)]
pub struct Receiver(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Receiver {
    /// A receiver on a free port, and its URL (`http://127.0.0.1:PORT/hook`).
    pub fn start() -> (Receiver, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let url = format!("http://{}/hook", l.local_addr().expect("receiver address"));
        (Receiver::on(l), url)
    }

    /// A receiver on `port` (one a test reserved and keeps closed until now).
    pub fn on_port(port: u16) -> Receiver {
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        Receiver::on(l)
    }

    /// A receiver on `listener`.
    pub fn on(listener: std::net::TcpListener) -> Receiver {
        let r = Receiver::default();
        r.serve(listener);
        r
    }

    /// A receiver on a free port that records nothing but the sum of `count` over the bodies
    /// (for benchmarks, where keeping every body would cost memory and time); and its URL.
    pub fn tallying(count: fn(&[u8]) -> u64) -> (Receiver, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let url = format!("http://{}/hook", l.local_addr().expect("receiver address"));
        let r = Receiver(Arc::new(Inner {
            tally: Some(count),
            ..Inner::default()
        }));
        r.serve(l);
        (r, url)
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let app = Router::new().fallback(receive).with_state(self.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(l, app).await;
            });
        });
    }

    /// The first `n` requests get `status` (then 200).
    pub fn failing_first(self, n: usize, status: u16) -> Receiver {
        for _ in 0..n {
            self.answer(status, None, Duration::ZERO);
        }
        self
    }

    /// The next request not yet answered by an injected answer gets this one.
    pub fn answer(&self, status: u16, retry_after: Option<&'static str>, delay: Duration) {
        self.answer_body(status, retry_after, delay, "injected");
    }

    /// [`Receiver::answer`] with a body.
    pub fn answer_body(
        &self,
        status: u16,
        retry_after: Option<&'static str>,
        delay: Duration,
        body: &'static str,
    ) {
        lock(&self.0.answers).push_back(Answer {
            status,
            retry_after,
            delay,
            body,
        });
    }

    /// Answers `status` to every request with no injected answer (instead of 200).
    pub fn refusing(self, status: u16) -> Receiver {
        self.0.status.store(status, Ordering::SeqCst);
        self
    }

    /// Forgets the injected answers not used yet.
    pub fn clear_answers(&self) {
        lock(&self.0.answers).clear();
    }

    /// Every later answer waits `d` first.
    pub fn set_delay(&self, d: Duration) {
        *lock(&self.0.delay) = d;
    }

    /// Every request so far, in the order answered (refused ones included).
    pub fn got(&self) -> Vec<Got> {
        lock(&self.0.got).clone()
    }

    /// The requests answered 2xx.
    pub fn accepted(&self) -> Vec<Got> {
        lock(&self.0.got)
            .iter()
            .filter(|g| (200..300).contains(&g.status))
            .cloned()
            .collect()
    }

    /// The most requests it was answering at once.
    pub fn peak(&self) -> usize {
        self.0.peak.load(Ordering::SeqCst)
    }

    /// The tally of a [`Receiver::tallying`] receiver.
    pub fn tallied(&self) -> u64 {
        self.0.tallied.load(Ordering::Relaxed)
    }

    /// Sets the tally back to zero.
    pub fn reset_tally(&self) {
        self.0.tallied.store(0, Ordering::Relaxed);
    }
}

async fn receive(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = &r.0;
    let arrived = Instant::now();
    if let Some(count) = r.tally {
        r.tallied.fetch_add(count(&body), Ordering::Relaxed);
        return (StatusCode::OK, "ok").into_response();
    }
    let now = r.active.fetch_add(1, Ordering::SeqCst) + 1;
    r.peak.fetch_max(now, Ordering::SeqCst);
    let answer = lock(&r.answers).pop_front();
    if let Some(a) = &answer {
        tokio::time::sleep(a.delay).await;
    }
    let delay = *lock(&r.delay);
    tokio::time::sleep(delay).await;
    r.active.fetch_sub(1, Ordering::SeqCst);
    let status = match &answer {
        Some(a) => a.status,
        None => match r.status.load(Ordering::SeqCst) {
            0 => 200,
            s => s,
        },
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    lock(&r.got).push(Got {
        arrived,
        at: Instant::now(),
        instance: header("x-eventflow-instance"),
        status,
        query: uri.query().unwrap_or_default().to_string(),
        delivery_id: header("x-eventflow-delivery-id"),
        text: String::from_utf8_lossy(&body).into_owned(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let Some(a) = answer else {
        return (code, if code.is_success() { "ok" } else { "refused" }).into_response();
    };
    let mut resp = (code, a.body).into_response();
    if let Some(ra) = a.retry_after.and_then(|v| v.parse().ok()) {
        resp.headers_mut().insert("retry-after", ra);
    }
    resp
}
