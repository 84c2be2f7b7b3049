//! Interval triggers: fire times `epoch + n*every + phase` on the UTC time line, computed
//! arithmetically.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{TriggerError, from_nanos, nanos};

/// `epoch + n*every + phase`, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grid {
    pub(super) every: Duration,
    pub(super) every_ns: i128,
    pub(super) phase_ns: i128,
}

impl Grid {
    pub(super) fn new(every: Duration, phase: Duration) -> Result<Grid, TriggerError> {
        if every < Duration::from_secs(1) {
            return Err(TriggerError::new(
                "trigger.every",
                format!(
                    "{} is too short; use at least 1s",
                    humantime::format_duration(every)
                ),
            ));
        }
        if phase >= every {
            return Err(TriggerError::new(
                "trigger.phase",
                format!(
                    "{} must be shorter than trigger.every ({})",
                    humantime::format_duration(phase),
                    humantime::format_duration(every)
                ),
            ));
        }
        let every_ns = i128::try_from(every.as_nanos()).map_err(|_| {
            TriggerError::new("trigger.every", "is too long; use at most a few years")
        })?;
        // Checked above: phase < every.
        let phase_ns = phase.as_nanos() as i128;
        Ok(Grid {
            every,
            every_ns,
            phase_ns,
        })
    }

    /// Index of the last grid point at or before `t`.
    pub(super) fn index_at_or_before(&self, t: DateTime<Utc>) -> i128 {
        (nanos(t) - self.phase_ns).div_euclid(self.every_ns)
    }

    pub(super) fn point(&self, k: i128) -> Option<DateTime<Utc>> {
        from_nanos(k.checked_mul(self.every_ns)?.checked_add(self.phase_ns)?)
    }

    pub(super) fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.point(self.index_at_or_before(t) + 1)
    }

    pub(super) fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.point(self.index_at_or_before(t))
    }

    /// Grid points in `(lo, hi]`.
    pub(super) fn count(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> u64 {
        let n = self.index_at_or_before(hi) - self.index_at_or_before(lo);
        u64::try_from(n.max(0)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Trigger;
    use crate::trigger::testutil::*;

    #[test]
    fn every_with_phase_is_epoch_aligned() {
        let t = Trigger::compile(&every_doc("5m", Some("30s"))).unwrap();
        assert_eq!(
            t.upcoming(utc("2026-01-01T10:00:00Z"), 2),
            vec![utc("2026-01-01T10:00:30Z"), utc("2026-01-01T10:05:30Z")]
        );
        assert_eq!(
            t.next_after(utc("2026-01-01T10:00:30Z")),
            Some(utc("2026-01-01T10:05:30Z"))
        );
        assert_eq!(
            t.next_after(utc("2026-01-01T10:00:29.999Z")),
            Some(utc("2026-01-01T10:00:30Z"))
        );
        // An interval ignores the time zone and DST: still every 5 minutes on the UTC line.
        let mut doc = every_doc("1h", None);
        doc.trigger.time_zone = Some("Europe/Oslo".into());
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(
            t.upcoming(utc("2026-10-24T23:30:00Z"), 3),
            vec![
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T01:00:00Z"),
                utc("2026-10-25T02:00:00Z"),
            ]
        );
    }
}
