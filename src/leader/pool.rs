//! `mode: per_source`: the Leases of the units (sources, and stages that must be alone) shared
//! out among the replicas. Each replica renews a membership Lease (`<lease>-member-<hash>`,
//! labelled `eventflow.io/members-of: <lease>`) and counts the live ones; it takes a unit's
//! Lease only while it holds fewer than ceil(units / replicas), and hands over the extra ones
//! (gracefully: the stage finishes its term first) when more replicas appear.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ListParams, PostParams};
use tokio::sync::watch;

use super::LeaderElectionConfig;

pub const LEADER: &str = "eventflow_leader";
pub const SOURCES_LED: &str = "eventflow_sources_led";
pub const HANDOVERS: &str = "eventflow_handovers_total";
pub const REPLICAS: &str = "eventflow_replicas";

/// The label that marks the membership Leases of one election.
const MEMBERS_OF: &str = "eventflow.io/members-of";

/// A unit's Lease name: `<lease>-<unit>`, the unit's `_` as `-` (Lease names are DNS names).
pub fn lease_name(lease: &str, unit: &str) -> String {
    format!("{lease}-{}", unit.replace('_', "-"))
}

/// The units of this replica and how many it holds.
pub struct Pool {
    units: usize,
    held: AtomicUsize,
    releasing: AtomicUsize,
    replicas: AtomicUsize,
    led: metrics::Gauge,
}

impl Pool {
    pub fn new(_cfg: &LeaderElectionConfig, _identity: &str, units: usize) -> Pool {
        Pool {
            units,
            held: AtomicUsize::new(0),
            releasing: AtomicUsize::new(0),
            replicas: AtomicUsize::new(1),
            led: metrics::gauge!(SOURCES_LED),
        }
    }

    /// The most units one replica should hold: ceil(units / live replicas).
    pub fn share(&self) -> usize {
        let n = self.replicas.load(Ordering::SeqCst).max(1);
        self.units.div_ceil(n)
    }
}

/// One unit's place in the pool.
pub struct Unit {
    pub id: String,
    pub pool: Arc<Pool>,
    /// Told when the stage's term ended (see [`super::Leadership::term_ended`]).
    pub drained: Arc<tokio::sync::Notify>,
    /// Whether a handover waits for that (sources do).
    pub drains: bool,
}

impl Unit {
    /// Whether this replica may take one more Lease.
    pub fn may_take(&self) -> bool {
        self.pool.held.load(Ordering::SeqCst) < self.pool.share()
    }

    /// Whether this unit should be handed over (this replica holds more than its share and no
    /// other handover already brings it down to it). Reserves the handover when it says yes.
    pub fn should_release(&self) -> bool {
        let p = &self.pool;
        let share = p.share();
        p.releasing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                let held = p.held.load(Ordering::SeqCst);
                (held.saturating_sub(r) > share).then_some(r + 1)
            })
            .is_ok()
    }

    /// The handover reserved by [`Unit::should_release`] is done.
    pub fn released(&self) {
        let _ = self
            .pool
            .releasing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                Some(r.saturating_sub(1))
            });
    }

    /// This replica started (`true`) or stopped leading the unit, and why.
    pub fn led(&self, leading: bool, cause: &'static str) {
        let p = &self.pool;
        let n = if leading {
            p.held.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            p.held
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                    Some(h.saturating_sub(1))
                })
                .map_or(0, |h| h.saturating_sub(1))
        };
        p.led.set(n as f64);
        metrics::gauge!(LEADER, "source" => self.id.clone()).set(if leading { 1.0 } else { 0.0 });
        metrics::counter!(HANDOVERS, "cause" => cause).increment(1);
        tracing::info!(unit = %self.id, leading, cause, held = n, share = p.share(), "leader election per source");
    }
}

fn member_name(lease: &str, identity: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(identity.as_bytes());
    let hash = crate::hex::encode(&d[..5]);
    format!("{lease}-member-{hash}")
}

/// Renews this replica's membership Lease every `retry_period` and counts the live members;
/// on stop, clears it (the others count one fewer at once).
pub async fn membership(
    api: Api<Lease>,
    cfg: LeaderElectionConfig,
    identity: String,
    pool: Arc<Pool>,
    mut stop: watch::Receiver<bool>,
) {
    let name = member_name(&cfg.lease, &identity);
    let replicas = metrics::gauge!(REPLICAS);
    let mut seen = std::collections::HashMap::new();
    loop {
        if let Err(e) = renew(&api, &cfg, &name, &identity, true).await {
            tracing::warn!(error = %e, "leader election per source: cannot renew this replica's membership Lease");
        }
        match count(&api, &cfg, &mut seen).await {
            Ok(n) => {
                let n = n.max(1);
                if pool.replicas.swap(n, Ordering::SeqCst) != n {
                    tracing::info!(
                        replicas = n,
                        share = pool.share(),
                        "leader election per source: replicas counted"
                    );
                }
                replicas.set(n as f64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election per source: cannot list the membership Leases");
            }
        }
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            () = tokio::time::sleep(cfg.retry_period.0) => false,
        };
        if stopping {
            let _ = renew(&api, &cfg, &name, &identity, false).await;
            return;
        }
    }
}

async fn renew(
    api: &Api<Lease>,
    cfg: &LeaderElectionConfig,
    name: &str,
    identity: &str,
    alive: bool,
) -> Result<(), kube::Error> {
    let spec = LeaseSpec {
        holder_identity: alive.then(|| identity.to_string()),
        lease_duration_seconds: i32::try_from(cfg.lease_duration.0.as_secs()).ok(),
        renew_time: Some(super::now()),
        ..LeaseSpec::default()
    };
    if let Some(mut lease) = api.get_opt(name).await? {
        lease.spec = Some(spec);
        return api
            .replace(name, &PostParams::default(), &lease)
            .await
            .map(|_| ());
    }
    let new = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([(MEMBERS_OF.to_string(), cfg.lease.clone())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    };
    api.create(&PostParams::default(), &new).await.map(|_| ())
}

/// The live members: a membership Lease with a holder that changed (was renewed) within
/// `lease_duration` by this replica's own clock (as a standby judges a Lease's expiry: clock
/// skew between nodes does not matter). `seen`: each Lease's last resourceVersion and when it
/// changed.
async fn count(
    api: &Api<Lease>,
    cfg: &LeaderElectionConfig,
    seen: &mut std::collections::HashMap<String, (String, tokio::time::Instant)>,
) -> Result<usize, kube::Error> {
    let list = api
        .list(&ListParams::default().labels(&format!("{MEMBERS_OF}={}", cfg.lease)))
        .await?;
    let now = tokio::time::Instant::now();
    let mut live = 0;
    for l in &list.items {
        let name = l.metadata.name.clone().unwrap_or_default();
        let rv = l.metadata.resource_version.clone().unwrap_or_default();
        let at = match seen.get(&name) {
            Some((old, at)) if *old == rv => *at,
            _ => {
                seen.insert(name, (rv, now));
                now
            }
        };
        let held = l.spec.as_ref().is_some_and(|s| super::holder(s).is_some());
        if held && now.duration_since(at) <= cfg.lease_duration.0 {
            live += 1;
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(pool: &Arc<Pool>, id: &str) -> Unit {
        Unit {
            id: id.into(),
            pool: pool.clone(),
            drained: Arc::new(tokio::sync::Notify::new()),
            drains: true,
        }
    }

    #[test]
    fn a_replica_takes_its_share_and_hands_over_the_rest() {
        let cfg: LeaderElectionConfig =
            serde_json::from_value(serde_json::json!({})).unwrap_or_else(|e| panic!("{e}"));
        let pool = Arc::new(Pool::new(&cfg, "me", 12));
        let units: Vec<Unit> = (0..12).map(|i| unit(&pool, &format!("c{i}"))).collect();
        // Alone: all 12.
        for u in &units {
            assert!(u.may_take());
            u.led(true, "acquired");
        }
        assert!(!units[0].may_take());
        // Three replicas now: the share is 4; 8 handovers are reserved, then no more.
        pool.replicas.store(3, Ordering::SeqCst);
        let handing: Vec<&Unit> = units.iter().filter(|u| u.should_release()).collect();
        assert_eq!(handing.len(), 8);
        for u in handing {
            u.led(false, "rebalanced");
            u.released();
        }
        assert_eq!(pool.held.load(Ordering::SeqCst), 4);
        assert!(!units[0].may_take(), "no more than the share");
        assert!(!units[0].should_release());
        // One replica gone: the share is 6 again.
        pool.replicas.store(2, Ordering::SeqCst);
        assert!(units[0].may_take());
        assert_eq!(lease_name("eventflow", "c_01"), "eventflow-c-01");
    }
}
