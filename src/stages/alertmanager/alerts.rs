//! Events as Alertmanager alerts, and the table of alerts still firing that the sink re-posts.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AlertmanagerConfig;
use crate::event::EventData;

/// One alert of Alertmanager's API v2 (`POST /api/v2/alerts` takes a list of them).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

impl Alert {
    /// The alert of `e` at `now`: labels and annotations from the configured fields (a label
    /// whose value is empty is left out, as Prometheus does), `startsAt` = first seen,
    /// `endsAt` = last seen + `resolve_after`.
    pub fn of(cfg: &AlertmanagerConfig, e: &EventData, now: DateTime<Utc>) -> Alert {
        let mut labels: BTreeMap<String, String> = cfg
            .labels
            .iter()
            .map(|(name, field)| (name.clone(), e.get(field).into_owned()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if let Some(severity) = cfg.severity.get(&e.type_).or(cfg.severity.get("*")) {
            labels.insert("severity".into(), severity.clone());
        }
        for (k, v) in &cfg.static_labels {
            labels.insert(k.clone(), v.clone());
        }
        let annotations = cfg
            .annotations
            .iter()
            .map(|(name, field)| (name.clone(), e.get(field).into_owned()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let last = e.last_seen.or(e.first_seen).unwrap_or(now);
        let starts_at = e.first_seen.unwrap_or(last).min(last);
        Alert {
            labels,
            annotations,
            starts_at,
            ends_at: last + cfg.resolve_after.0,
            generator_url: cfg.generator_url.clone(),
        }
    }

    /// Alertmanager's identity of an alert: its label set.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.labels.hash(&mut h);
        h.finish()
    }
}

/// The alerts still firing that this sink posted, by label set, bounded: re-posted every
/// `resolve_after / 3` until they end, so an Alertmanager that restarted (it keeps no alerts
/// on disk) learns them again.
#[derive(Debug, Default)]
pub struct Firing {
    alerts: HashMap<u64, Alert>,
}

impl Firing {
    /// Records alerts Alertmanager accepted that have not ended by `now`; the newest of a label
    /// set wins. At `max` the alerts ending first are forgotten (they resolve at their `endsAt`
    /// all the same); returns how many.
    pub fn record(&mut self, alerts: &[Alert], max: usize, now: DateTime<Utc>) -> usize {
        for a in alerts.iter().filter(|a| a.ends_at > now) {
            match self.alerts.get_mut(&a.fingerprint()) {
                Some(old) if old.ends_at > a.ends_at => {}
                Some(old) => *old = a.clone(),
                None => {
                    self.alerts.insert(a.fingerprint(), a.clone());
                }
            }
        }
        let over = self.alerts.len().saturating_sub(max);
        if over > 0 {
            let mut ends: Vec<(DateTime<Utc>, u64)> =
                self.alerts.iter().map(|(k, a)| (a.ends_at, *k)).collect();
            ends.sort_unstable();
            for (_, k) in ends.into_iter().take(over) {
                self.alerts.remove(&k);
            }
        }
        over
    }

    /// Forgets the alerts that ended by `now` and returns the others.
    pub fn still_firing(&mut self, now: DateTime<Utc>) -> Vec<Alert> {
        self.alerts.retain(|_, a| a.ends_at > now);
        self.alerts.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, ends: i64) -> Alert {
        Alert {
            labels: BTreeMap::from([("alertname".into(), name.into())]),
            annotations: BTreeMap::new(),
            starts_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            ends_at: DateTime::from_timestamp(ends, 0).unwrap_or_default(),
            generator_url: String::new(),
        }
    }

    #[test]
    fn the_table_keeps_the_newest_of_each_label_set_and_forgets_what_ends_first() {
        let mut f = Firing::default();
        let zero = DateTime::from_timestamp(0, 0).unwrap_or_default();
        assert_eq!(f.record(&[alert("a", 10), alert("b", 20)], 2, zero), 0);
        // An older copy of `a` does not replace the newer one.
        f.record(&[alert("a", 5)], 2, zero);
        assert_eq!(
            f.still_firing(DateTime::from_timestamp(9, 0).unwrap_or_default())
                .len(),
            2
        );
        // A third label set at the bound of 2: the one ending first goes.
        assert_eq!(f.record(&[alert("c", 30)], 2, zero), 1);
        // An alert that ended already is not remembered.
        f.record(
            &[alert("old", 1)],
            3,
            DateTime::from_timestamp(2, 0).unwrap_or_default(),
        );
        assert_eq!(f.len(), 2);
        let mut names: Vec<String> = f
            .still_firing(DateTime::from_timestamp(0, 0).unwrap_or_default())
            .iter()
            .map(|a| a.labels["alertname"].clone())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
        // Ended alerts are forgotten.
        assert_eq!(
            f.still_firing(DateTime::from_timestamp(25, 0).unwrap_or_default())
                .len(),
            1
        );
        assert_eq!(f.len(), 1);
    }
}
