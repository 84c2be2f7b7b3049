//! Failed enrollments per peer address in a sliding window.
//!
//! A peer that failed [`ENROLL_FAILURES_PER_WINDOW`] times within the last [`ENROLL_WINDOW`]
//! waits until its oldest failure leaves the window. The window slides with every failure's
//! own time, so a burst cannot get twice the allowance by straddling a minute boundary, as a
//! count per calendar minute would allow.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use syncfleet_proto::sync::lock;

/// Failed enrollments allowed per peer address within [`ENROLL_WINDOW`]; then the address
/// waits until the oldest failure leaves the window. Successes are not counted: provisioning
/// many agents from one host must not be slowed by a few mistyped tokens.
pub const ENROLL_FAILURES_PER_WINDOW: usize = 10;
/// The sliding window of [`ENROLL_FAILURES_PER_WINDOW`].
pub const ENROLL_WINDOW: Duration = Duration::from_secs(60);

/// The failure times of each peer address still inside the window.
#[derive(Debug, Default)]
pub struct FailureWindow {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureWindow {
    /// How long `ip` must wait at `now` before its next attempt, when it is over the limit.
    /// Failures that left the window are forgotten (of every address, so the map stays
    /// bounded by the addresses that failed within the last window).
    pub fn retry_after(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut map = lock(&self.failures);
        map.retain(|_, q| {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= ENROLL_WINDOW)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
        let q = map.get(&ip)?;
        if q.len() < ENROLL_FAILURES_PER_WINDOW {
            return None;
        }
        q.front()
            .map(|oldest| ENROLL_WINDOW.saturating_sub(now.saturating_duration_since(*oldest)))
    }

    /// `ip` failed at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        lock(&self.failures).entry(ip).or_default().push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn a_burst_straddling_a_minute_boundary_gets_the_allowance_once() {
        let w = FailureWindow::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Ten failures in the last second of one minute...
        for _ in 0..ENROLL_FAILURES_PER_WINDOW {
            assert_eq!(w.retry_after(PEER, at(59)), None);
            w.failed(PEER, at(59));
        }
        // ...and the first seconds of the next are still refused, until 60 s after them.
        assert_eq!(w.retry_after(PEER, at(61)), Some(Duration::from_secs(58)));
        assert_eq!(w.retry_after(PEER, at(118)), Some(Duration::from_secs(1)));
        assert_eq!(w.retry_after(PEER, at(119)), None);
    }

    #[test]
    fn the_window_slides_with_each_failure_and_other_addresses_are_not_affected() {
        let w = FailureWindow::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for i in 0..ENROLL_FAILURES_PER_WINDOW as u64 {
            w.failed(PEER, at(i * 5));
        }
        // Failures at 0, 5, ..., 45: the one at 0 leaves at 60, then one more is allowed.
        assert_eq!(w.retry_after(PEER, at(50)), Some(Duration::from_secs(10)));
        assert_eq!(w.retry_after(PEER, at(60)), None);
        w.failed(PEER, at(60));
        assert_eq!(w.retry_after(PEER, at(61)), Some(Duration::from_secs(4)));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));
        assert_eq!(w.retry_after(other, at(61)), None);
    }
}
