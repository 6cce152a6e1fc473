//! What a finite run did with its events, sink by sink: the summary `eventflow run` prints when
//! its sources finished (a backfill, a cron job), read from the run's own counters.
//!
//! For a sink, *delivered* is `eventflow_events_sent_total`; *failed* is what it gave up on
//! (its `*_failed` discards, what the server refused for good, what a durable queue
//! dead-lettered); *discarded* is the rest of its discards (dropped on purpose and counted).

use std::collections::BTreeMap;

/// One sink's figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkSummary {
    pub delivered: u64,
    pub failed: u64,
    pub discarded: u64,
}

/// The discard reasons of a sink that mean "not delivered" (given up on, refused for good).
fn is_failure(reason: &str) -> bool {
    reason.ends_with("_failed")
        // Items an Elasticsearch cluster refused, by their error type.
        || reason.starts_with("es_")
        || matches!(
            reason,
            "loki_refused"
                | "loki_too_old"
                | "loki_out_of_order"
                | "loki_line_too_long"
                | "otlp_rejected"
        )
}

/// The figures of each of `sinks` (stage ids) from the Prometheus text of the run's metrics.
pub fn of_sinks(metrics_text: &str, sinks: &[String]) -> BTreeMap<String, SinkSummary> {
    let mut out: BTreeMap<String, SinkSummary> = sinks
        .iter()
        .map(|s| (s.clone(), SinkSummary::default()))
        .collect();
    for line in metrics_text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let Some(stage) = labels.get("stage") else {
            continue;
        };
        let Some(s) = out.get_mut(*stage) else {
            continue;
        };
        match name {
            crate::metrics::SENT => s.delivered += value,
            crate::metrics::DISCARDED => {
                if labels.get("reason").is_some_and(|r| is_failure(r)) {
                    s.failed += value;
                } else {
                    s.discarded += value;
                }
            }
            "eventflow_webhook_dead_lettered_events_total" => s.failed += value,
            _ => {}
        }
    }
    out
}

/// `name{a="x",b="y"} 7` -> the name, the labels, the value (counters only: whole numbers).
fn sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, u64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.trim_start_matches(','), v.trim_end_matches('"')))
        })
        .collect();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((name, labels, value.max(0.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_are_summed_from_their_counters() {
        let text = "# HELP x\n\
            eventflow_events_sent_total{stage=\"db\",type=\"sql\"} 7\n\
            eventflow_events_sent_total{stage=\"warn\",type=\"filter\"} 9\n\
            eventflow_events_discarded_total{stage=\"hook\",type=\"webhook\",reason=\"webhook_failed\"} 2\n\
            eventflow_events_discarded_total{stage=\"hook\",type=\"webhook\",reason=\"downstream_stopped\"} 1\n\
            eventflow_webhook_dead_lettered_events_total{stage=\"q\"} 3\n";
        let s = of_sinks(text, &["db".into(), "hook".into(), "q".into()]);
        assert_eq!(
            s["db"],
            SinkSummary {
                delivered: 7,
                failed: 0,
                discarded: 0
            }
        );
        assert_eq!(
            s["hook"],
            SinkSummary {
                delivered: 0,
                failed: 2,
                discarded: 1
            }
        );
        assert_eq!(
            s["q"],
            SinkSummary {
                delivered: 0,
                failed: 3,
                discarded: 0
            }
        );
        assert!(!s.contains_key("warn"), "only the sinks");
    }
}
