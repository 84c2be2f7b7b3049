//! Retry policy: which engine results a step retries, how often and how far apart.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use syncfleet_proto::vocab::{self, ResultClass};

/// Which results are retried, how often and how far apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Result strings retried (AutoSync `RetryCodes`).
    pub results: Vec<String>,
    /// Retries after the first attempt (AutoSync `RetryCount`).
    pub attempts: u32,
    /// Base delay; retry n waits `delay × n` with ±50 % jitter (AutoSync `RetrySleepInterval`).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            results: vec!["stopped-deadlocked".into()],
            attempts: 5,
            delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A result string that must never be retried automatically, if the policy lists one.
    pub fn forbidden_entry(&self) -> Option<&str> {
        self.results.iter().map(String::as_str).find(|r| {
            matches!(
                vocab::classify(r),
                ResultClass::GuardRail
                    | ResultClass::Success
                    | ResultClass::Warning
                    | ResultClass::Busy
                    | ResultClass::Transitional
                    | ResultClass::Intentional
            )
        })
    }

    pub(super) fn retries(&self, result: &str) -> bool {
        self.results
            .iter()
            .any(|r| r.eq_ignore_ascii_case(result.trim()))
    }

    /// How long to wait before retry `attempt` (1 for the first retry): `delay × attempt` with
    /// ±50 % jitter.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let factor = rand::rng().random_range(0.5..1.5);
        self.delay.mul_f64(f64::from(attempt) * factor)
    }
}

#[cfg(test)]
mod tests;
