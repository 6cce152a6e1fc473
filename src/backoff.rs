//! Retry delays shared by every stage that retries (sql, webhook, kube_events): exponential
//! with jitter. The n-th delay is uniform in [d/2, d], d = `initial` * 2^n, capped at `max`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::types::Dur;

/// Retry delays: exponential (doubling) with jitter. The parameters are the stage type's
/// defaults in milliseconds (the first delay, the longest); a block that sets one field keeps
/// the other at the stage's default.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct BackoffConfig<const INITIAL_MS: u64 = 500, const MAX_MS: u64 = 30_000> {
    /// The first delay.
    #[serde(default = "millis::<INITIAL_MS>")]
    pub initial: Dur,
    /// The longest delay.
    #[serde(default = "millis::<MAX_MS>")]
    pub max: Dur,
}

fn millis<const MS: u64>() -> Dur {
    Dur::millis(MS)
}

impl<const I: u64, const M: u64> Default for BackoffConfig<I, M> {
    fn default() -> Self {
        BackoffConfig {
            initial: millis::<I>(),
            max: millis::<M>(),
        }
    }
}

impl BackoffConfig {
    pub const fn new(initial: Dur, max: Dur) -> BackoffConfig {
        BackoffConfig { initial, max }
    }
}

impl<const I: u64, const M: u64> BackoffConfig<I, M> {
    /// Refuses a zero first delay (a retry loop that never waits) and a cap below it.
    pub fn validate(&self, field: &str) -> Vec<crate::types::Invalid> {
        let mut out = Vec::new();
        if self.initial.0.is_zero() {
            out.push(crate::types::Invalid::new(
                format!("{field}.initial"),
                "must be above zero",
            ));
        }
        if self.max < self.initial {
            out.push(crate::types::Invalid::new(
                format!("{field}.max"),
                format!("`{}` is below `initial` ({})", self.max, self.initial),
            ));
        }
        out
    }

    /// A fresh sequence of delays.
    pub fn start(&self) -> Backoff {
        Backoff {
            initial: self.initial.0,
            max: self.max.0,
            n: 0,
        }
    }
}

/// A sequence of retry delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    n: u32,
}

impl Backoff {
    /// The next delay (and the one after it doubles, up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .initial
            .saturating_mul(1u32 << self.n.min(16))
            .min(self.max);
        self.n = self.n.saturating_add(1);
        d.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Starts over from `initial` (after a success).
    pub fn reset(&mut self) {
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        let mut b = BackoffConfig::new(Dur::millis(100), Dur::millis(500)).start();
        let bounds = [(50, 100), (100, 200), (200, 400), (250, 500), (250, 500)];
        for (lo, hi) in bounds {
            let d = u64::try_from(b.next_delay().as_millis()).unwrap_or(u64::MAX);
            assert!((lo..=hi).contains(&d), "{d} not in [{lo}, {hi}]");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
