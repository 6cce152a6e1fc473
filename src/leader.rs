//! Leader election over a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! `leaderelection`:
//! - **acquire or renew** reads the Lease and writes it back with the resourceVersion it read
//!   (optimistic concurrency: of two candidates writing at once, the second gets 409 Conflict
//!   and loses);
//! - **a held Lease is taken over only after it expired by this candidate's own clock**: the
//!   candidate notes when it last saw the record change and waits `leaseDurationSeconds` from
//!   then, so clock skew between nodes does not matter;
//! - **fencing**: a leader that has not renewed for `renew_deadline` stops leading at once,
//!   before any other candidate may take over (`renew_deadline < lease_duration`), and goes back
//!   to being a candidate;
//! - **release**: on a graceful shutdown the leader clears the holder, so a standby takes over
//!   at its next try instead of waiting for the Lease to expire.
//!
//! The crates that exist were looked at first: `kube-lease-manager` (kube 5) takes a free
//! Lease with server-side apply but renews with an unconditional patch and judges expiry by the
//! holder's `renewTime` against the local clock (skew-dependent, and a stale leader's renewal
//! can land on a Lease someone else took); `kube-leader-election` is built on kube 4 and says
//! it has no fencing. Neither gives the guarantees above, hence this module.
//!
//! What leading means to the pipeline is [`Leadership`]: sources watch only while it says so,
//! and durable webhook queues deliver only while it says so.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::types::{Dur, Invalid};

mod pool;

/// What one Lease stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One Lease for the pipeline: one replica runs it, the others stand by.
    #[default]
    Pipeline,
    /// One Lease per source (`<lease>-<source id>`): every replica runs the pipeline, each source
    /// reads only on the replica that holds its Lease, and the sources are spread evenly (at
    /// most ceil(sources / replicas) each). Durable queues and paging sinks' resolutions also
    /// get a Lease of their own (`<lease>-<stage id>`): one replica delivers or resolves.
    PerSource,
}

/// The `leader_election:` section: several replicas, one leading at a time.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// `pipeline`: one replica runs everything; `per_source`: the sources are shared out among
    /// the replicas, one Lease each.
    #[serde(default)]
    pub mode: Mode,
    /// The Lease's name.
    #[serde(default = "default_lease")]
    pub lease: String,
    /// The Lease's namespace. Default: the pod's own (from its service account), else
    /// `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// This replica's name in the Lease. Default: `$POD_NAME`, else the host name, followed by
    /// a random suffix (two processes on one host differ).
    #[serde(default)]
    pub identity: Option<String>,
    /// How long a Lease holds without renewal; a standby takes over this long after it last
    /// saw the Lease change.
    #[serde(default = "default_lease_duration")]
    pub lease_duration: Dur,
    /// A leader that could not renew for this long stops leading (below `lease_duration`).
    #[serde(default = "default_renew_deadline")]
    pub renew_deadline: Dur,
    /// How often the leader renews and a standby tries to acquire.
    #[serde(default = "default_retry_period")]
    pub retry_period: Dur,
    /// The kubeconfig of the API server that holds the Lease. Default: as for `kube_events`
    /// (in-cluster, `$KUBECONFIG`, `~/.kube/config`).
    #[serde(default, deserialize_with = "crate::types::home_path_opt")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context. Default: its current context.
    #[serde(default)]
    pub context: Option<String>,
}

fn default_lease() -> String {
    "eventflow".into()
}
fn default_lease_duration() -> Dur {
    Dur::secs(15)
}
fn default_renew_deadline() -> Dur {
    Dur::secs(10)
}
fn default_retry_period() -> Dur {
    Dur::secs(2)
}

/// A leader must get at least this many tries to renew within `renew_deadline`.
const RENEW_TRIES: u32 = 2;

impl LeaderElectionConfig {
    /// What is wrong with the durations (field names relative to the section).
    pub fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        // The API server refuses other names: a Lease it cannot create would leave every
        // replica standing by forever.
        if !dns_subdomain(&self.lease) {
            out.push(Invalid::new(
                "lease",
                format!("`{}` is not a Kubernetes object name (lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit, at most 253)", self.lease),
            ));
        }
        if let Some(ns) = &self.namespace
            && !(dns_subdomain(ns) && ns.len() <= 63 && !ns.contains('.'))
        {
            out.push(Invalid::new(
                "namespace",
                format!(
                    "`{ns}` is not a namespace name (lowercase letters, digits and `-`, at most 63)"
                ),
            ));
        }
        if self.lease_duration.0 < Duration::from_secs(1) {
            out.push(Invalid::new("lease_duration", "must be at least 1s"));
        }
        if self.renew_deadline.0 >= self.lease_duration.0 {
            out.push(Invalid::new(
                "renew_deadline",
                format!(
                    "must be shorter than lease_duration ({}): a leader must stop before another may take over",
                    self.lease_duration
                ),
            ));
        }
        if self.retry_period.0.is_zero() {
            out.push(Invalid::new("retry_period", "must be above zero"));
        } else if self.retry_period.0 * RENEW_TRIES > self.renew_deadline.0 {
            out.push(Invalid::new(
                "retry_period",
                format!(
                    "must be at most renew_deadline / {RENEW_TRIES} ({}): the leader must get several tries to renew",
                    self.renew_deadline
                ),
            ));
        }
        out
    }

    /// The identity to hold the Lease as.
    fn identity(&self) -> String {
        if let Some(id) = &self.identity {
            return id.clone();
        }
        let base = std::env::var("POD_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "eventflow".into());
        format!("{base}_{:08x}", rand::random::<u32>())
    }

    /// The Lease's namespace.
    fn namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into())
        })
    }
}

/// The stages that get a Lease of their own with `mode: per_source`: the sources, then the
/// stages that must run on one replica at a time ([`crate::component::StageConfig::alone`]).
/// Each with whether it is a source (a source's handover waits for its term to end).
pub fn units_of(p: &crate::config::Pipeline) -> Vec<(String, bool)> {
    let sources = p
        .stages
        .values()
        .filter(|s| s.kind == crate::component::StageKind::Source);
    let alone = p
        .stages
        .values()
        .filter(|s| s.kind != crate::component::StageKind::Source && s.config.alone());
    sources
        .chain(alone)
        .map(|s| (s.id.clone(), s.kind == crate::component::StageKind::Source))
        .collect()
}

/// A DNS-1123 subdomain: what Kubernetes accepts as most object names.
fn dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

/// Whether this replica leads, and its identity. Without election it always leads.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    identity: Option<Arc<str>>,
    /// With `mode: per_source`: the Leadership of each stage that has a Lease of its own.
    per_stage: Option<Arc<std::collections::HashMap<String, Leadership>>>,
    /// Told when a term of the stage ends (its reads acknowledged and checkpointed): a
    /// graceful handover waits for it before releasing the Lease.
    drained: Option<Arc<tokio::sync::Notify>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership::always()
    }
}

impl Leadership {
    /// No election: this replica always leads.
    pub fn always() -> Leadership {
        let (_, rx) = watch::channel(true);
        Leadership {
            rx,
            identity: None,
            per_stage: None,
            drained: None,
        }
    }

    /// A handle following `rx`, for replica `identity`.
    fn following(rx: watch::Receiver<bool>, identity: &str) -> Leadership {
        Leadership {
            rx,
            identity: Some(Arc::from(identity)),
            per_stage: None,
            drained: None,
        }
    }

    /// What stage `id` follows: its own Lease's handle with `mode: per_source`, else this one.
    #[must_use]
    pub fn for_stage(&self, id: &str) -> Leadership {
        self.per_stage
            .as_ref()
            .and_then(|m| m.get(id))
            .cloned()
            .unwrap_or_else(|| self.clone())
    }

    /// A stage's term ended: what it read is acknowledged and checkpointed (a graceful
    /// handover releases the Lease now).
    pub fn term_ended(&self) {
        if let Some(d) = &self.drained {
            d.notify_one();
        }
    }

    /// Whether an election runs at all.
    pub fn elected(&self) -> bool {
        self.identity.is_some()
    }

    /// This replica's identity in the Lease (with election).
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once this replica leads (at once if it does).
    pub async fn acquired(&mut self) {
        let _ = self.rx.wait_for(|l| *l).await.map(|_| ());
    }

    /// Resolves once this replica stops leading (never without election; also when the
    /// elector is gone).
    pub async fn lost(&mut self) {
        if self.identity.is_none() || self.rx.wait_for(|l| !*l).await.map(|_| ()).is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why the election cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("leader_election: {0}")]
    Client(#[from] crate::kube_client::ClientError),
}

/// The running election: its [`Leadership`] and the task that renews.
pub struct Election {
    leadership: Leadership,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Connects to the API server and starts campaigning.
    pub async fn start(cfg: &LeaderElectionConfig) -> Result<Election, ElectionError> {
        let (client, _) =
            crate::kube_client::connect(cfg.kubeconfig.as_deref(), cfg.context.as_deref()).await?;
        let identity = cfg.identity();
        let namespace = cfg.namespace();
        let (tx, rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let candidate = Candidate {
            api: Api::namespaced(client, &namespace),
            name: cfg.lease.clone(),
            namespace,
            identity: identity.clone(),
            cfg: cfg.clone(),
            observed: None,
            seen_rv: "0".into(),
            unit: None,
        };
        tracing::info!(
            identity = %identity,
            lease = %candidate.name,
            namespace = %candidate.namespace,
            "leader election: campaigning"
        );
        crate::metrics::leader(false);
        let task = tokio::spawn(candidate.campaign(tx, stop_rx));
        Ok(Election {
            leadership: Leadership::following(rx, &identity),
            stop,
            task,
        })
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Stops campaigning; a leader releases the Lease (so a standby takes over at once).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// `mode: per_source`: one Lease per unit in `units` (the sources, then the stages that
    /// must be alone: durable queues, paging sinks), shared out among the replicas, plus a
    /// membership Lease per replica by which they count each other.
    pub async fn start_per_source(
        cfg: &LeaderElectionConfig,
        units: &[(String, bool)],
    ) -> Result<Election, ElectionError> {
        let (client, _) =
            crate::kube_client::connect(cfg.kubeconfig.as_deref(), cfg.context.as_deref()).await?;
        let identity = cfg.identity();
        let namespace = cfg.namespace();
        let api: Api<Lease> = Api::namespaced(client, &namespace);
        let (stop, stop_rx) = watch::channel(false);
        let pool = Arc::new(pool::Pool::new(cfg, &identity, units.len()));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(pool::membership(
            api.clone(),
            cfg.clone(),
            identity.clone(),
            pool.clone(),
            stop_rx.clone(),
        )));
        let mut per_stage = std::collections::HashMap::new();
        for (unit, is_source) in units {
            let (tx, rx) = watch::channel(false);
            let drained = Arc::new(tokio::sync::Notify::new());
            let mut l = Leadership::following(rx, &identity);
            l.drained = Some(drained.clone());
            per_stage.insert(unit.clone(), l);
            let candidate = Candidate {
                api: api.clone(),
                name: pool::lease_name(&cfg.lease, unit),
                namespace: namespace.clone(),
                identity: identity.clone(),
                cfg: cfg.clone(),
                observed: None,
                seen_rv: "0".into(),
                unit: Some(pool::Unit {
                    id: unit.clone(),
                    pool: pool.clone(),
                    drained,
                    drains: *is_source,
                }),
            };
            tasks.push(tokio::spawn(candidate.campaign(tx, stop_rx.clone())));
        }
        tracing::info!(identity = %identity, units = units.len(), namespace = %namespace, "leader election per source: campaigning");
        crate::metrics::leader(false);
        // The pipeline as a whole: this replica takes part (ready) and leads nothing alone.
        let (_, rx) = watch::channel(true);
        let mut leadership = Leadership::following(rx, &identity);
        leadership.per_stage = Some(Arc::new(per_stage));
        let task = tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        });
        Ok(Election {
            leadership,
            stop,
            task,
        })
    }
}

/// The Lease record as last seen, and when (by this process's clock).
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

struct Candidate {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    cfg: LeaderElectionConfig,
    observed: Option<Observed>,
    /// The resourceVersion of the Lease as last read (where a watch starts).
    seen_rv: String,
    /// With `mode: per_source`: the unit this Lease is for, and the pool that shares them out.
    unit: Option<pool::Unit>,
}

/// The Lease's changes as a watch reports them.
type LeaseChanges =
    futures::stream::BoxStream<'static, Result<kube::api::WatchEvent<Lease>, kube::Error>>;

/// The next Lease spec the watch reports (`None`: the watch ended or failed; never resolves
/// without a watch).
async fn next_change(changes: &mut Option<LeaseChanges>) -> Option<LeaseSpec> {
    use futures::StreamExt as _;
    let Some(stream) = changes.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match stream.next().await? {
            Ok(kube::api::WatchEvent::Added(l) | kube::api::WatchEvent::Modified(l)) => {
                return Some(l.spec.unwrap_or_default());
            }
            Ok(kube::api::WatchEvent::Deleted(_)) => return Some(LeaseSpec::default()),
            Ok(kube::api::WatchEvent::Bookmark(_)) => {}
            Ok(kube::api::WatchEvent::Error(_)) | Err(_) => return None,
        }
    }
}

/// A try's outcome.
enum Try {
    /// We hold the Lease now.
    Held,
    /// Someone else holds it (their identity, and when the Lease expires by our clock if
    /// it is not renewed), or our write lost a race.
    NotHeld(Option<String>, Option<Instant>),
}

/// Resolves once a stop is requested (or the requester is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

impl Candidate {
    /// Acquire, lead while renewals succeed, step down, repeat; until stopped.
    async fn campaign(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        loop {
            if !self.stand_by(&mut stop).await {
                return;
            }
            let mut renewed = Instant::now();
            let _ = leading.send(true);
            if let Some(u) = &self.unit {
                u.led(true, "acquired");
            } else {
                crate::metrics::leader(true);
            }
            crate::metrics::leader_transition();
            tracing::info!(leader = %self.identity, lease = %self.name, "leader election: this replica leads");
            // Leader: renew every retry_period; fenced once renew_deadline passes without one.
            loop {
                let deadline = renewed + self.cfg.renew_deadline.0;
                tokio::select! {
                    () = stopped(&mut stop) => {
                        let _ = leading.send(false);
                        match &self.unit {
                            Some(u) => u.led(false, "shutdown"),
                            None => crate::metrics::leader(false),
                        }
                        self.release().await;
                        return;
                    }
                    () = tokio::time::sleep(self.cfg.retry_period.0) => {}
                }
                if self.unit.as_ref().is_some_and(pool::Unit::should_release) {
                    self.hand_over(&leading).await;
                    break;
                }
                match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                    Ok(Ok(Try::Held)) => renewed = Instant::now(),
                    Ok(Ok(Try::NotHeld(h, _))) => {
                        tracing::warn!(
                            leader = h.as_deref().unwrap_or("(none)"),
                            "leader election: the Lease was taken over"
                        );
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "leader election: cannot renew the Lease; retrying");
                    }
                    Err(_) => {}
                }
                if Instant::now() >= deadline {
                    tracing::error!(
                        renew_deadline = %self.cfg.renew_deadline,
                        "leader election: no renewal within renew_deadline; stepping down"
                    );
                    break;
                }
            }
            if *leading.borrow() {
                let _ = leading.send(false);
                if let Some(u) = &self.unit {
                    u.led(false, "lost");
                }
            }
            if self.unit.is_none() {
                crate::metrics::leader(false);
            }
            crate::metrics::leader_transition();
            tracing::info!(identity = %self.identity, lease = %self.name, "leader election: this replica stands by");
            self.observed = None;
        }
    }

    /// Stands by until this replica holds the Lease (`true`) or is stopped (`false`).
    async fn stand_by(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        // Standby: try every half to whole retry_period (jittered, so that standbys do not
        // try in step; never longer, so a released Lease is taken within retry_period),
        // and at the moment the Lease expires. A watch on the Lease notes each renewal
        // as it happens, so expiry is measured from the renewal itself, not from the next
        // poll after it (the watch is an optimization: polling alone is correct).
        let mut last_holder: Option<String> = None;
        let mut changes: Option<LeaseChanges> = None;
        loop {
            let mut expiry = None;
            let attempt = if self.unit.as_ref().is_none_or(pool::Unit::may_take) {
                self.try_acquire_or_renew().await
            } else {
                // Enough Leases held here for now: watch this one, do not take it.
                self.peek().await
            };
            match attempt {
                Ok(Try::Held) => break,
                Ok(Try::NotHeld(h, expires)) => {
                    if h != last_holder {
                        tracing::info!(leader = h.as_deref().unwrap_or("(none)"), identity = %self.identity, "leader election: standing by");
                        last_holder = h;
                    }
                    expiry = expires;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read or write the Lease");
                }
            }
            if changes.is_none() {
                changes = self.watch_lease().await;
            }
            let poll = Instant::now()
                + self
                    .cfg
                    .retry_period
                    .0
                    .mul_f64(0.5 + rand::random::<f64>() * 0.5);
            loop {
                let wake = expiry.map_or(poll, |e: Instant| e.min(poll));
                tokio::select! {
                    () = stopped(stop) => return false,
                    () = tokio::time::sleep_until(wake) => break,
                    change = next_change(&mut changes) => match change {
                        Some(spec) => match self.expiry_after_change(spec) {
                            Some(e) => expiry = Some(e),
                            // Released or gone: try now.
                            None => break,
                        },
                        None => changes = None,
                    },
                }
            }
        }
        true
    }

    /// One try: take the Lease if it is free or expired, renew it if it is ours.
    async fn try_acquire_or_renew(&mut self) -> Result<Try, kube::Error> {
        let now_t = now();
        let duration = i32::try_from(self.cfg.lease_duration.0.as_secs()).unwrap_or(i32::MAX);
        let mine = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(now_t.clone()),
            renew_time: Some(now_t.clone()),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(mine.clone()),
            };
            return match self.api.create(&PostParams::default(), &new).await {
                Ok(_) => {
                    self.observe(mine);
                    Ok(Try::Held)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Try::NotHeld(None, None)),
                Err(e) => Err(e),
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        if let Some(rv) = &lease.metadata.resource_version {
            rv.clone_into(&mut self.seen_rv);
        }
        if let Some(at) = self.expiry_after_change(old.clone())
            && at > Instant::now()
        {
            return Ok(Try::NotHeld(holder(&old).map(str::to_string), Some(at)));
        }
        let ours = holder(&old) == Some(self.identity.as_str());
        let spec = LeaseSpec {
            acquire_time: if ours {
                old.acquire_time.clone()
            } else {
                Some(now_t)
            },
            lease_transitions: Some(if ours {
                old.lease_transitions.unwrap_or(0)
            } else {
                old.lease_transitions.unwrap_or(0).saturating_add(1)
            }),
            ..mine
        };
        lease.spec = Some(spec.clone());
        // `replace` sends the resourceVersion read above: a write in between makes it a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observe(spec);
                Ok(Try::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Try::NotHeld(None, None)),
            Err(e) => Err(e),
        }
    }

    /// A watch on this Lease from the version last read, if the server allows one.
    async fn watch_lease(&self) -> Option<LeaseChanges> {
        use futures::StreamExt as _;
        let params = kube::api::WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(290);
        match self.api.watch(&params, &self.seen_rv).await {
            Ok(s) => Some(s.boxed()),
            Err(e) => {
                tracing::debug!(error = %e, "leader election: cannot watch the Lease; polling");
                None
            }
        }
    }

    /// Notes the Lease as seen now if it changed (what a poll reads and what the watch
    /// reports alike); when it expires by this clock, or `None` if nobody (else) holds it.
    fn expiry_after_change(&mut self, spec: LeaseSpec) -> Option<Instant> {
        let someone_else = holder(&spec).is_some_and(|h| h != self.identity);
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.cfg.lease_duration.0, Duration::from_secs);
        if self.observed.as_ref().is_none_or(|o| o.spec != spec) {
            self.observe(spec);
        }
        let seen = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
        // A millisecond past expiry, so the try at that moment finds it expired.
        someone_else.then(|| seen + held_for + Duration::from_millis(1))
    }

    fn observe(&mut self, spec: LeaseSpec) {
        self.observed = Some(Observed {
            spec,
            at: Instant::now(),
        });
    }

    /// Reads the Lease without writing it: who holds it and when it expires by our clock.
    async fn peek(&mut self) -> Result<Try, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(Try::NotHeld(None, None));
        };
        if let Some(rv) = &lease.metadata.resource_version {
            rv.clone_into(&mut self.seen_rv);
        }
        let spec = lease.spec.unwrap_or_default();
        let h = holder(&spec).map(str::to_string);
        let at = self.expiry_after_change(spec);
        Ok(Try::NotHeld(h, at))
    }

    /// A graceful handover (this replica holds more than its share): stop the stage, wait
    /// until what it read is acknowledged and checkpointed (at most `renew_deadline`, while
    /// the Lease still holds), then release the Lease so another replica takes it at once.
    async fn hand_over(&mut self, leading: &watch::Sender<bool>) {
        let Some(unit) = self.unit.take() else { return };
        tracing::info!(lease = %self.name, unit = %unit.id, "leader election per source: handing this source over (more than this replica's share)");
        let drained = unit.drained.clone();
        let _ = leading.send(false);
        // A source finishes its term (what it read acknowledged and checkpointed); a durable
        // queue or a resolver just stops (what it had in flight stays queued for the next).
        let waited = if unit.drains {
            tokio::time::timeout(self.cfg.renew_deadline.0, drained.notified()).await
        } else {
            Ok(())
        };
        if waited.is_err() {
            tracing::warn!(unit = %unit.id, "leader election per source: the stage did not finish its term within renew_deadline; releasing anyway");
        }
        unit.led(false, "rebalanced");
        self.release().await;
        unit.released();
        self.unit = Some(unit);
    }

    /// Clears the holder if it is us (client-go's release: holder empty, duration 1s).
    async fn release(&mut self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(false);
            };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if holder(&spec) != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
            lease.spec = Some(spec);
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match tokio::time::timeout(self.cfg.renew_deadline.0, result).await {
            Ok(Ok(true)) => {
                tracing::info!(identity = %self.identity, "leader election: released the Lease");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election: cannot release the Lease; a standby takes over when it expires");
            }
            Err(_) => tracing::warn!(
                "leader election: releasing the Lease timed out; a standby takes over when it expires"
            ),
        }
    }
}
