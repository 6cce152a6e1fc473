//! A stateful fake Kubernetes API server for Events, spoken to by the real kube client over
//! HTTP on 127.0.0.1.
//!
//! One store of core/v1 Events with one global resourceVersion, served through both
//! `/api/v1` and `/apis/events.k8s.io/v1` (converted on output); list with pagination and
//! continue tokens; watch with history replay from a resourceVersion, bookmarks and 410
//! expiry as a `200` + `ERROR` event; create / patch / put / delete so tests can inject
//! events (a write gets `uid`, `creationTimestamp`, `resourceVersion` and, as on a real server,
//! `managedFields`); the objects Events are about (namespaces, pods, workloads: [`objects`]) with list,
//! watch and the metadata-only form; Leases; fault knobs ([`Faults`]) and wait-for-condition
//! helpers instead of sleeps. The
//! admin API under `/__fake/` drives it from another process (see the `fake-apiserver` binary).

mod convert;
pub mod objects;
mod server;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, broadcast};

pub use convert::{Flavor, Selector, from_flavor, merge_patch, sample_event, status, to_flavor};

/// Which kind of request a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    List,
    Watch,
    Create,
    Patch,
    Delete,
    Get,
    Any,
}

/// How open watches are ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseMode {
    /// End the chunked body cleanly (like a server-side timeout).
    Graceful,
    /// Drop the connection without the final chunk.
    Abort,
}

/// One injected HTTP error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub op: Op,
    pub status: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// Send this text as the body instead of a Status (a proxy or ingress answering).
    #[serde(default)]
    pub raw_body: Option<String>,
}

/// Fault knobs. Counters are one-shot: each matching request consumes one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// HTTP errors for the next matching requests, in order.
    pub fail_next: VecDeque<Failure>,
    /// The next n watches get `200` + `ERROR 410` and close.
    pub expire_next_watch: u32,
    /// The next n watches get an HTTP 410 answer (not what real servers do).
    pub watch_410_as_http: u32,
    /// The next `continue` token is answered with 410 Expired.
    pub expire_continue_tokens: bool,
    /// The next n watches answer 200 and end at once with no items (a stale proxy).
    pub empty_watches: u32,
    /// Each watch ends cleanly after sending this many events.
    pub close_after_events: Option<u32>,
    /// Each watch drops its connection after sending this many events.
    pub abort_after_events: Option<u32>,
    /// Latency before the answer of every request of an op.
    pub delay: Vec<(Op, Duration)>,
    /// Latency between watch events.
    pub event_delay: Option<Duration>,
    /// Watches open and never send anything.
    pub stall_watch: bool,
    /// Lines written into the next (or current) watch as they are.
    pub inject_lines: VecDeque<String>,
    /// Send a BOOKMARK at this interval on watches that allow them.
    pub bookmark_interval: Option<Duration>,
    /// Answer 401 unless `Authorization: Bearer <token>` is sent.
    pub require_bearer: Option<String>,
    /// Answer 403 to these verbs (`list`, `watch`, `create`, ...); `*` is every verb.
    pub forbid: Vec<String>,
    /// Answer 403 to every request for these resources of [`objects::KINDS`] (plurals:
    /// `pods`, `replicasets`): a service account without those permissions.
    pub forbid_resources: Vec<String>,
    /// Delete Events older than this (by creation time), as the real `--event-ttl` does.
    pub event_ttl: Option<Duration>,
    /// Lease writes (`PUT`) that would make this identity the holder are not answered (the
    /// connection is held for up to a minute): "the API server stops answering the leader's
    /// renewals only".
    pub hang_lease_writes_of: Option<String>,
}

/// A request as received.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub params: BTreeMap<String, String>,
    pub authorization: Option<String>,
    /// Milliseconds since the server started.
    pub at_ms: u64,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.params.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
    pub fn is_list(&self) -> bool {
        self.method == "GET" && !self.is_watch() && self.path.ends_with("/events")
    }
    /// The `resourceVersion` parameter.
    pub fn rv(&self) -> Option<&str> {
        self.params.get("resourceVersion").map(String::as_str)
    }
    pub fn has_continue(&self) -> bool {
        self.params.contains_key("continue")
    }
}

/// An open watch.
#[derive(Debug, Clone, Serialize)]
pub struct WatcherInfo {
    pub id: u64,
    pub query: String,
    pub events_sent: u64,
}

/// What changed: an object at an rv, or a raw line to inject.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Object(&'static str, Arc<Value>),
    Line(Arc<str>),
}

/// An object's JSON text as served, per API, for one resourceVersion of it.
#[derive(Default)]
pub(crate) struct ObjectText {
    pub resource_version: String,
    /// By [`convert::Flavor`]: core/v1, events.k8s.io/v1.
    pub text: [Option<Arc<str>>; 2],
}

pub(crate) struct State {
    pub rv: u64,
    pub objects: BTreeMap<(String, String), Value>,
    pub created: HashMap<(String, String), Instant>,
    pub history: VecDeque<(u64, &'static str, Arc<Value>)>,
    pub history_len: usize,
    pub compacted_rv: u64,
    pub faults: Faults,
    pub requests: Vec<Recorded>,
    pub watchers: BTreeMap<u64, WatcherInfo>,
    pub next_watcher: u64,
    /// List snapshots kept for continue tokens: first-page rv -> items (their JSON text).
    pub snapshots: HashMap<u64, Arc<Vec<Arc<str>>>>,
    /// Each listed object's JSON text by (namespace, name), for the resourceVersion it was
    /// made of, per API; made once: a list costs the server what a real one's watch cache does
    /// (copying bytes it has), not a conversion and serialization of every object. An update
    /// has a new resourceVersion, so a stale entry is never served; the map is emptied when it
    /// outgrows the objects.
    pub texts: HashMap<(String, String), ObjectText>,
    pub next_uid: u64,
    pub uid_seed: u64,
    /// `coordination.k8s.io/v1` Leases by (namespace, name), with their own resourceVersions.
    pub leases: BTreeMap<(String, String), Value>,
    pub lease_rv: u64,
    /// Namespaces, pods, workloads: see [`objects`].
    pub objects_meta: objects::Objects,
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub tx: broadcast::Sender<Change>,
    /// Lease writes, for Lease watches: (namespace, name, the Lease).
    pub lease_tx: broadcast::Sender<(String, String, Value)>,
    /// Writes of [`objects`]: (resource, watch type, object).
    pub objects_tx: broadcast::Sender<(String, &'static str, Arc<Value>)>,
    pub kick: broadcast::Sender<CloseMode>,
    pub changed: Notify,
    pub started: Instant,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in the fake; keep serving anyway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A write was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for WriteError {}

impl State {
    /// Records a change: bumps the rv, stamps the object, appends history, broadcasts.
    fn commit(&mut self, tx: &broadcast::Sender<Change>, ty: &'static str, mut o: Value) -> Value {
        self.rv += 1;
        o["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let shared = Arc::new(o.clone());
        self.history.push_back((self.rv, ty, shared.clone()));
        while self.history.len() > self.history_len {
            if let Some((rv, _, _)) = self.history.pop_front() {
                self.compacted_rv = rv + 1;
            }
        }
        let _ = tx.send(Change::Object(ty, shared));
        o
    }

    fn new_uid(&mut self) -> String {
        self.next_uid += 1;
        let n = self.next_uid;
        let s = self.uid_seed;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (s >> 32) as u32,
            u16::try_from((s >> 16) & 0xffff).unwrap_or(0),
            (n >> 48) & 0xfff,
            (n >> 36) & 0xfff,
            n & 0xffff_ffff_ffff
        )
    }

    pub fn create(
        &mut self,
        tx: &broadcast::Sender<Change>,
        ns: &str,
        mut o: Value,
    ) -> Result<Value, WriteError> {
        if !o.is_object() {
            return Err(bad_request("the body must be a JSON object"));
        }
        if !o["metadata"].is_object() {
            o["metadata"] = serde_json::json!({});
        }
        o["metadata"]["namespace"] = Value::String(ns.to_string());
        let name = match o["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match o["metadata"]["generateName"].as_str() {
                Some(g) => format!("{g}{:x}", self.next_uid + 1),
                None => return Err(bad_request("metadata.name is required")),
            },
        };
        o["metadata"]["name"] = Value::String(name.clone());
        let key = (ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(WriteError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("events \"{name}\" already exists"),
            });
        }
        let uid = self.new_uid();
        o["metadata"]["uid"] = Value::String(uid);
        o["metadata"]["creationTimestamp"] =
            Value::String(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
        convert::track_fields(&mut o);
        let o = self.commit(tx, "ADDED", o);
        self.objects.insert(key.clone(), o.clone());
        self.created.insert(key, Instant::now());
        Ok(o)
    }

    pub fn patch(
        &mut self,
        tx: &broadcast::Sender<Change>,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, WriteError> {
        let key = (ns.to_string(), name.to_string());
        let Some(cur) = self.objects.get(&key) else {
            return Err(not_found(name));
        };
        let mut o = cur.clone();
        let identity = o["metadata"].clone();
        merge_patch(&mut o, patch);
        for k in ["name", "namespace", "uid", "creationTimestamp"] {
            o["metadata"][k] = identity[k].clone();
        }
        convert::track_fields(&mut o);
        let o = self.commit(tx, "MODIFIED", o);
        self.objects.insert(key, o.clone());
        Ok(o)
    }

    pub fn replace(
        &mut self,
        tx: &broadcast::Sender<Change>,
        ns: &str,
        name: &str,
        mut o: Value,
    ) -> Result<Value, WriteError> {
        let key = (ns.to_string(), name.to_string());
        let Some(cur) = self.objects.get(&key) else {
            return Err(not_found(name));
        };
        if let Some(rv) = o["metadata"]["resourceVersion"].as_str()
            && cur["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(WriteError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on events \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
            });
        }
        let identity = cur["metadata"].clone();
        for k in ["name", "namespace", "uid", "creationTimestamp"] {
            o["metadata"][k] = identity[k].clone();
        }
        convert::track_fields(&mut o);
        let o = self.commit(tx, "MODIFIED", o);
        self.objects.insert(key, o.clone());
        Ok(o)
    }

    pub fn delete(
        &mut self,
        tx: &broadcast::Sender<Change>,
        ns: &str,
        name: &str,
    ) -> Result<Value, WriteError> {
        let key = (ns.to_string(), name.to_string());
        let Some(o) = self.objects.remove(&key) else {
            return Err(not_found(name));
        };
        self.created.remove(&key);
        Ok(self.commit(tx, "DELETED", o))
    }
}

fn bad_request(msg: &str) -> WriteError {
    WriteError {
        code: 400,
        reason: "BadRequest",
        message: msg.to_string(),
    }
}

fn not_found(name: &str) -> WriteError {
    WriteError {
        code: 404,
        reason: "NotFound",
        message: format!("events \"{name}\" not found"),
    }
}

/// A running fake API server. Dropping it stops the server.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts on `127.0.0.1` at a free port.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::start_on(0).await
    }

    /// Starts on `127.0.0.1:port` (0 = any free port).
    pub async fn start_on(port: u16) -> std::io::Result<FakeApiServer> {
        let (tx, _) = broadcast::channel(4096);
        let (kick, _) = broadcast::channel(16);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                objects: BTreeMap::new(),
                created: HashMap::new(),
                history: VecDeque::new(),
                history_len: 1000,
                compacted_rv: 0,
                faults: Faults::default(),
                requests: Vec::new(),
                watchers: BTreeMap::new(),
                next_watcher: 0,
                snapshots: HashMap::new(),
                texts: HashMap::new(),
                next_uid: 0,
                uid_seed: seed,
                leases: BTreeMap::new(),
                lease_rv: 0,
                objects_meta: objects::Objects::default(),
            }),
            tx,
            lease_tx: broadcast::channel(256).0,
            objects_tx: broadcast::channel(65_536).0,
            kick,
            changed: Notify::new(),
            started: Instant::now(),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        // A real API server (Go's net/http) sets TCP_NODELAY on every connection; without it
        // each small watch event after the first waits for the client's delayed ACK (~40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |s| {
            let _ = s.set_nodelay(true);
        });
        let app = server::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let ttl_shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(s) = ttl_shared.upgrade() else {
                    return;
                };
                server::expire_ttl(&s);
            }
        });
        Ok(FakeApiServer { shared, addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A kubeconfig for this server; with `token`, a user that sends it as a bearer token.
    pub fn kubeconfig_yaml(&self, token: Option<&str>) -> String {
        kubeconfig_yaml(&self.url(), "fake", token)
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: Option<&str>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(token))
    }

    /// A kube client for this server (no proxy).
    pub fn client(&self) -> kube::Client {
        let url = self
            .url()
            .parse()
            .unwrap_or_else(|_| http_uri_fallback(self.port()));
        let mut cfg = kube::Config::new(url);
        cfg.proxy_url = None;
        match kube::Client::try_from(cfg) {
            Ok(c) => c,
            Err(e) => panic!("cannot build a kube client for the fake: {e}"),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State, &broadcast::Sender<Change>) -> R) -> R {
        let r = {
            let mut g = self.shared.lock();
            f(&mut g, &self.shared.tx)
        };
        self.shared.changed.notify_waiters();
        r
    }

    /// Creates or replaces an object of one of [`objects::KINDS`] (a Namespace, Pod,
    /// Deployment, ...: `apiVersion`, `kind` and `metadata` are what matters), as `enrich`'s
    /// watches see it.
    pub fn put_object(&self, o: Value) -> Result<Value, String> {
        objects::put(&self.shared, o)
    }

    /// Deletes an object of `kind` (e.g. `Pod`); `None` if there was none.
    pub fn delete_object(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        objects::delete(&self.shared, kind, ns, name)
    }

    /// Creates an Event in `ns` (stored form: core/v1).
    pub fn create(&self, ns: &str, o: Value) -> Result<Value, WriteError> {
        self.with(|s, tx| s.create(tx, ns, o))
    }

    /// Merge-patches an Event.
    pub fn patch(&self, ns: &str, name: &str, patch: &Value) -> Result<Value, WriteError> {
        self.with(|s, tx| s.patch(tx, ns, name, patch))
    }

    /// Deletes an Event.
    pub fn delete(&self, ns: &str, name: &str) -> Result<Value, WriteError> {
        self.with(|s, tx| s.delete(tx, ns, name))
    }

    /// Bumps an Event's count by one and its lastTimestamp to now, as the kubelet does.
    pub fn bump_count(&self, ns: &str, name: &str) -> Result<Value, WriteError> {
        self.with(|s, tx| {
            let key = (ns.to_string(), name.to_string());
            let count = s
                .objects
                .get(&key)
                .and_then(|o| o["count"].as_i64())
                .unwrap_or(1);
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            s.patch(
                tx,
                ns,
                name,
                &serde_json::json!({"count": count + 1, "lastTimestamp": now}),
            )
        })
    }

    /// The current global resourceVersion.
    pub fn rv(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Simulates writes to other resources: the global rv advances by `n`.
    pub fn bump_rv(&self, n: u64) {
        self.with(|s, _| s.rv += n);
    }

    /// Forgets all history: any watch from an older rv gets 410.
    pub fn compact(&self) {
        self.with(|s, _| {
            s.history.clear();
            s.compacted_rv = s.rv + 1;
        });
    }

    /// Keeps only the last `n` changes in history.
    pub fn history_len(&self, n: usize) {
        self.with(|s, _| s.history_len = n);
    }

    /// Changes the fault knobs.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        self.with(|s, _| f(&mut s.faults));
    }

    /// Queues an HTTP error for the next request of `op`.
    pub fn fail_next(&self, op: Op, status: u16, reason: &str, message: &str) {
        self.faults(|f| {
            f.fail_next.push_back(Failure {
                op,
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                raw_body: None,
            });
        });
    }

    /// Writes a raw line into the open watches (or the next one if none is open).
    pub fn inject_line(&self, line: &str) {
        let open = !self.shared.lock().watchers.is_empty();
        if open {
            let _ = self.shared.tx.send(Change::Line(Arc::from(line)));
        } else {
            self.faults(|f| f.inject_lines.push_back(line.to_string()));
        }
    }

    /// Ends every open watch.
    pub fn close_watches(&self, mode: CloseMode) {
        let _ = self.shared.kick.send(mode);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The open watches.
    pub fn watchers(&self) -> Vec<WatcherInfo> {
        self.shared.lock().watchers.values().cloned().collect()
    }

    /// The stored objects (core/v1 form).
    /// The Lease `ns/name`, if it exists.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .leases
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn objects(&self) -> Vec<Value> {
        self.shared.lock().objects.values().cloned().collect()
    }

    /// Waits until `cond` holds on the state; false on timeout.
    async fn wait(&self, timeout: Duration, mut cond: impl FnMut(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.shared.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(&self.shared.lock());
            }
        }
    }

    /// Waits for a request matching `pred` (among all requests so far); returns it.
    pub async fn wait_for_request(
        &self,
        mut pred: impl FnMut(&Recorded) -> bool,
        timeout: Duration,
    ) -> Option<Recorded> {
        let mut found = None;
        self.wait(timeout, |s| {
            found = s.requests.iter().find(|r| pred(r)).cloned();
            found.is_some()
        })
        .await;
        found
    }

    /// Waits until `n` requests match `pred`.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        mut pred: impl FnMut(&Recorded) -> bool,
        timeout: Duration,
    ) -> bool {
        self.wait(timeout, |s| {
            s.requests.iter().filter(|r| pred(r)).count() >= n
        })
        .await
    }

    /// Waits until exactly `n` watches are open.
    pub async fn wait_for_watchers(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.watchers.len() == n).await
    }
}

fn http_uri_fallback(port: u16) -> axum::http::Uri {
    axum::http::Uri::from_maybe_shared(format!("http://127.0.0.1:{port}"))
        .unwrap_or_else(|_| axum::http::Uri::from_static("http://127.0.0.1"))
}

/// A kubeconfig naming one cluster at `url`, with an optional bearer token.
pub fn kubeconfig_yaml(url: &str, context: &str, token: Option<&str>) -> String {
    let user = match token {
        Some(t) => format!("users:\n- name: {context}-user\n  user:\n    token: {t}\n"),
        None => String::new(),
    };
    let ctx_user = if token.is_some() {
        format!("\n    user: {context}-user")
    } else {
        String::new()
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {context}\n  cluster:\n    server: {url}\ncontexts:\n- name: {context}\n  context:\n    cluster: {context}{ctx_user}\ncurrent-context: {context}\n{user}"
    )
}
