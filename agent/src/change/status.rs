//! The status of each poller, as heartbeats report it, and the backoff of failing polls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncfleet_proto::v1;

/// Longest wait between the polls of a failing source (unless its poll interval is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait before the next poll after `consecutive_errors` failures in a row: the poll
/// interval after the first, doubling with each further failure, capped at [`MAX_BACKOFF`]
/// (or the poll interval when that is longer). Zero failures: the poll interval.
pub fn backoff(poll: Duration, consecutive_errors: u32) -> Duration {
    let cap = MAX_BACKOFF.max(poll);
    let shift = consecutive_errors.saturating_sub(1).min(20);
    poll.saturating_mul(1u32 << shift).min(cap)
}

/// One poller's status, shared between the poller and the heartbeat.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus(Arc<Mutex<v1::ChangeSourceStatus>>);

impl SourceStatus {
    pub fn new(schedule: &str, source: &str, kind: &str, target: &str) -> Self {
        Self(Arc::new(Mutex::new(v1::ChangeSourceStatus {
            schedule: schedule.to_string(),
            source: source.to_string(),
            kind: kind.to_string(),
            target: target.to_string(),
            ..Default::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, v1::ChangeSourceStatus> {
        // A poisoned lock means a panic mid-update of plain fields; the value is usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy for a heartbeat.
    pub fn snapshot(&self) -> v1::ChangeSourceStatus {
        self.lock().clone()
    }

    /// The cursor stored (at start, from the journal).
    pub fn set_cursor(&self, cursor: &str) {
        self.lock().cursor = cursor.to_string();
    }

    /// A poll worked and saw `changes`.
    pub fn polled(&self, cursor: &str, changes: u64) {
        let now = syncfleet_proto::time::now();
        let mut s = self.lock();
        s.cursor = cursor.to_string();
        s.last_poll = Some(now);
        if changes > 0 {
            s.last_change = Some(now);
            s.changes_total += changes;
        }
        s.error.clear();
        s.error_since = None;
        s.consecutive_errors = 0;
    }

    /// A poll failed; returns the number of failures in a row.
    pub fn failed(&self, error: &str) -> u32 {
        let mut s = self.lock();
        s.last_poll = Some(syncfleet_proto::time::now());
        if s.error_since.is_none() {
            s.error_since = s.last_poll;
        }
        s.error = error.to_string();
        s.consecutive_errors = s.consecutive_errors.saturating_add(1);
        s.consecutive_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_poll_interval_up_to_five_minutes() {
        let poll = Duration::from_secs(5);
        let waits: Vec<u64> = (0..10).map(|n| backoff(poll, n).as_secs()).collect();
        assert_eq!(waits, [5, 5, 10, 20, 40, 80, 160, 300, 300, 300]);
        // A poll interval above the cap is kept: backoff never polls more often than asked.
        assert_eq!(
            backoff(Duration::from_secs(600), 5),
            Duration::from_secs(600)
        );
        assert_eq!(backoff(poll, u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_success_clears_the_error_and_the_count() {
        let s = SourceStatus::new("nightly", "people", "ldap", "ldap://x dc=x");
        assert_eq!(s.failed("bind refused"), 1);
        assert_eq!(s.failed("bind refused"), 2);
        let snap = s.snapshot();
        assert_eq!(snap.error, "bind refused");
        assert!(snap.error_since.is_some());
        s.polled("42", 3);
        let snap = s.snapshot();
        assert_eq!(
            (
                snap.error.as_str(),
                snap.consecutive_errors,
                snap.changes_total
            ),
            ("", 0, 3)
        );
        assert!(snap.error_since.is_none() && snap.last_change.is_some());
    }
}
