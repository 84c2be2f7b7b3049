//! Pending export counters the agents report in their heartbeats, held in memory.
//!
//! The fleet records them as heartbeats arrive ([`HeartbeatPending::record`]); the metrics read
//! them at scrape time ([`HeartbeatPending::snapshot`]). A type of its own so that neither
//! depends on the other.

use std::collections::HashMap;

use syncfleet_proto::v1;

// -------------------------------------------------------------------------------------------
// Heartbeat pending counters

/// Pending exports (add, update, delete) per MA of one agent.
pub type MaExports = Vec<(String, [u64; 3])>;

/// Pending export counters per agent and MA from the agents' last heartbeats.
#[derive(Default)]
pub struct HeartbeatPending {
    by_agent: std::sync::Mutex<HashMap<String, MaExports>>,
}

impl std::fmt::Debug for HeartbeatPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatPending").finish_non_exhaustive()
    }
}

impl HeartbeatPending {
    /// Keep what a heartbeat says (a heartbeat without readings leaves the last ones).
    pub fn record(&self, agent: &str, hb: &v1::Heartbeat) {
        if hb.pending.is_empty() {
            return;
        }
        let rows = hb
            .pending
            .iter()
            .map(|p| {
                let c = p.counters.unwrap_or_default();
                (
                    p.ma.clone(),
                    [c.export_add, c.export_update, c.export_delete],
                )
            })
            .collect();
        self.lock().insert(agent.to_string(), rows);
    }

    /// The last readings of every agent that sent some: per agent, (MA, [add, update, delete]).
    pub fn snapshot(&self) -> HashMap<String, MaExports> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MaExports>> {
        self.by_agent.lock().unwrap_or_else(|p| p.into_inner())
    }
}
