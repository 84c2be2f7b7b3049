//! How many agents of one process may be opening a session at once.
//!
//! Opening a session costs CPU on both ends: a TLS handshake with key exchange and certificate
//! checks, then the Hello the controller records. Agents in their own processes on their own
//! servers pay their half on their own CPU. Agents that share one process (`dev`'s simulated
//! fleet, which also hosts the controller) share its CPU: started together, a thousand
//! handshakes each get a thousandth of it, none finishes within the connect and Welcome
//! timeouts, and every agent retries into the same crowd. The fleet never connects.
//!
//! A shared [`ConnectGate`] lets at most a few of them open a session at a time. Each attempt
//! then finishes quickly, the others wait their turn without spending CPU, and the fleet
//! connects at the machine's full speed. Time spent waiting for the gate does not count against
//! the connect or Welcome timeouts. The gate is released once the session is open (or the
//! attempt failed): an open session does not hold it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most this many session openings at once per CPU of the machine, for [`ConnectGate::for_cpus`].
const OPENINGS_PER_CPU: usize = 4;

/// Shared by the agents of one process; [`ConnectGate::open`] (the default) lets every agent
/// connect at once, as the `syncfleet-agent` process (one agent) does.
#[derive(Debug, Clone, Default)]
pub struct ConnectGate(Option<Arc<Semaphore>>);

impl ConnectGate {
    /// No limit: for an agent alone in its process.
    pub fn open() -> Self {
        Self(None)
    }

    /// At most `openings` agents opening a session at once (at least one).
    pub fn limited(openings: usize) -> Self {
        Self(Some(Arc::new(Semaphore::new(openings.max(1)))))
    }

    /// A limit that keeps this machine's CPUs busy without crowding them:
    /// [`OPENINGS_PER_CPU`] per CPU.
    pub fn for_cpus() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::limited(cpus.saturating_mul(OPENINGS_PER_CPU))
    }

    /// Wait for a turn; the turn ends when the returned value is dropped.
    pub async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        match &self.0 {
            // The semaphore is never closed, so acquiring can only succeed.
            Some(semaphore) => Arc::clone(semaphore).acquire_owned().await.ok(),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_limited_gate_lets_in_only_its_number_until_a_turn_ends() {
        let gate = ConnectGate::limited(2);
        let a = gate.turn().await;
        let b = gate.turn().await;
        assert!(a.is_some() && b.is_some());
        let third = tokio::time::timeout(Duration::from_secs(60), gate.turn()).await;
        assert!(third.is_err(), "a third opening got in while two were open");
        drop(a);
        let third = tokio::time::timeout(Duration::from_millis(1), gate.turn()).await;
        assert!(
            matches!(third, Ok(Some(_))),
            "the ended turn was not handed on"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_never_waits() {
        let gate = ConnectGate::open();
        let mut turns = Vec::new();
        for _ in 0..1000 {
            turns.push(
                tokio::time::timeout(Duration::from_millis(1), gate.turn())
                    .await
                    .expect("an open gate made an opening wait"),
            );
        }
        assert!(turns.iter().all(Option::is_none));
    }

    #[test]
    fn a_zero_limit_still_lets_one_in() {
        let gate = ConnectGate::limited(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let turn = tokio::time::timeout(Duration::from_secs(1), gate.turn()).await;
            assert!(matches!(turn, Ok(Some(_))));
        });
    }
}
