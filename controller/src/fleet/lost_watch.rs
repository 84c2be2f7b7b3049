//! Which agents are disconnected, and when each is to be declared lost.
//!
//! The sweeper runs every second. Finding the agents that have been disconnected for
//! `agent_lost_after` by reading every agent record would make an idle controller's cost grow
//! with the fleet (10,000 records decoded a second); instead the agents stored
//! `disconnected` are kept here in deadline order, so a sweep looks only at those whose time
//! has come. Entries are added where the fleet stores an agent disconnected (a session ending,
//! a revocation, the sessions a previous controller left behind) and removed when the agent
//! connects; a new leadership term fills it from the store once
//! ([`super::Fleet::reset_sessions_after_restart`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use syncfleet_proto::sync::lock;

#[derive(Debug, Default)]
struct Inner {
    /// Agent → when it was stored disconnected (Unix ms).
    since: HashMap<String, i64>,
    /// (since, agent), oldest first.
    by_time: BTreeSet<(i64, String)>,
}

/// Disconnected agents in the order they become lost.
#[derive(Debug, Default)]
pub struct LostWatch {
    inner: Mutex<Inner>,
}

impl LostWatch {
    /// `agent` was stored disconnected at `since_ms` (replacing an earlier entry).
    pub fn disconnected(&self, agent: &str, since_ms: i64) {
        let mut g = lock(&self.inner);
        if let Some(old) = g.since.insert(agent.to_string(), since_ms) {
            g.by_time.remove(&(old, agent.to_string()));
        }
        g.by_time.insert((since_ms, agent.to_string()));
    }

    /// `agent` connected, or is no longer to be watched.
    pub fn forget(&self, agent: &str) {
        let mut g = lock(&self.inner);
        if let Some(old) = g.since.remove(agent) {
            g.by_time.remove(&(old, agent.to_string()));
        }
    }

    /// Remove and return the agents disconnected for at least `lost_after_ms` at `now_ms`,
    /// longest first. Costs in proportion to the agents returned, not to those watched.
    pub fn due(&self, now_ms: i64, lost_after_ms: i64) -> Vec<String> {
        let mut g = lock(&self.inner);
        let mut out = Vec::new();
        while let Some((since, _)) = g.by_time.first() {
            if now_ms.saturating_sub(*since) < lost_after_ms {
                break;
            }
            let Some((_, agent)) = g.by_time.pop_first() else {
                break;
            };
            g.since.remove(&agent);
            out.push(agent);
        }
        out
    }

    /// Forget every agent (a new leadership term rebuilds the watch from the store).
    pub fn clear(&self) {
        let mut g = lock(&self.inner);
        g.since.clear();
        g.by_time.clear();
    }

    /// How many agents are watched.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.inner).since.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_come_due_in_deadline_order_and_only_once() {
        let w = LostWatch::default();
        w.disconnected("b", 2_000);
        w.disconnected("a", 1_000);
        w.disconnected("c", 9_000);
        assert!(w.due(1_500, 1_000).is_empty());
        assert_eq!(w.due(3_000, 1_000), ["a", "b"]);
        assert!(w.due(3_000, 1_000).is_empty(), "returned once");
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_reconnected_agent_is_never_due_and_a_new_disconnection_restarts_its_clock() {
        let w = LostWatch::default();
        w.disconnected("a", 1_000);
        w.forget("a");
        assert!(w.due(100_000, 1_000).is_empty());
        w.disconnected("b", 1_000);
        w.disconnected("b", 5_000);
        assert!(w.due(5_500, 1_000).is_empty());
        assert_eq!(w.due(6_000, 1_000), ["b"]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn looking_at_a_large_fleet_costs_only_what_is_due() {
        let w = LostWatch::default();
        for i in 0..10_000 {
            w.disconnected(&format!("a{i:05}"), 1_000 + i);
        }
        assert_eq!(
            w.due(1_000 + 60_000 + 4, 60_000),
            ["a00000", "a00001", "a00002", "a00003", "a00004"]
        );
        assert_eq!(w.len(), 9_995);
        w.clear();
        assert_eq!(w.len(), 0);
    }
}
