//! Periodic housekeeping: pending runs sent when due or failed past the pending deadline,
//! agents without a session marked lost and their in-flight runs ended `unknown`, and the
//! session state a previous controller process left behind.

use chrono::Utc;
use futures::StreamExt as _;
use syncfleet_proto::time::to_millis;
use syncfleet_proto::v1;

use super::Fleet;

/// Agent records reset at once at the start of a term (see
/// [`Fleet::reset_sessions_after_restart`]).
const RESET_CONCURRENCY: usize = 256;

impl Fleet {
    /// Periodic housekeeping: fail runs pending past the deadline; mark long-disconnected
    /// agents lost.
    pub async fn sweep(&self) {
        let deadline_ms =
            i64::try_from(self.settings.pending_deadline.as_millis()).unwrap_or(i64::MAX);
        let now_ms = Utc::now().timestamp_millis();
        match self
            .store
            .runs_in_states(None, &[v1::RunState::Pending])
            .await
        {
            Ok(runs) => {
                for run in runs {
                    if self.covered_by_agent(&run) && self.end_covered(&run).await {
                        continue;
                    }
                    let created = run
                        .created_at
                        .as_ref()
                        .map_or(0, to_millis)
                        .max(Self::dispatch_at_ms(&run));
                    if now_ms >= Self::dispatch_at_ms(&run)
                        && now_ms - created < deadline_ms
                        && self.is_connected(&run.agent)
                    {
                        // Due (e.g. after its jitter) and its agent is here.
                        self.send_start(run).await;
                        continue;
                    }
                    if now_ms - created >= deadline_ms {
                        let deadline = humantime::format_duration(self.settings.pending_deadline);
                        let msg = match self.run_blocked(&run.agent, None).await {
                            Ok(Some(blocked)) => format!(
                                "not started within the pending deadline ({deadline}) because {blocked}; the run was never started"
                            ),
                            _ if self.is_connected(&run.agent) => format!(
                                "not started within the pending deadline ({deadline}); the run was never started"
                            ),
                            _ => format!(
                                "agent {} did not connect within the pending deadline ({deadline}); the run was never started",
                                run.agent
                            ),
                        };
                        if let Err(e) = self
                            .finish_run_here(&run.id, v1::RunState::Failed, msg)
                            .await
                        {
                            tracing::error!(error = %e, "cannot fail an expired pending run");
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep: cannot list pending runs"),
        }
        // Only the agents whose time has come (`lost_watch.rs`): an idle sweep reads no agent.
        let lost_ms = i64::try_from(self.settings.agent_lost_after.as_millis()).unwrap_or(i64::MAX);
        for agent in self.lost_watch.due(now_ms, lost_ms) {
            if self.is_connected(&agent) {
                continue;
            }
            tracing::warn!(agent = %agent, "agent lost");
            self.set_agent_state(&agent, v1::AgentState::Lost).await;
            self.orphan_runs(&agent).await;
        }
    }

    /// Runs that were sent to an agent now lost end `unknown`: their outcome may never be
    /// reported (if the agent returns with their events, those still apply).
    async fn orphan_runs(&self, agent: &str) {
        let name = agent.to_string();
        let runs = match self
            .store
            .runs_in_states(
                Some(&name),
                &[v1::RunState::Dispatched, v1::RunState::Running],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(agent, error = %e, "cannot list the runs of a lost agent");
                return;
            }
        };
        for run in runs {
            let msg = format!(
                "agent {agent} was lost (no session for {}) while this run was in flight; its outcome is unknown",
                humantime::format_duration(self.settings.agent_lost_after)
            );
            if let Err(e) = self
                .finish_run_here(&run.id, v1::RunState::Unknown, msg)
                .await
            {
                tracing::error!(error = %e, "cannot mark an orphaned run unknown");
            }
        }
    }

    /// At the start of a leadership term: mark every agent stored as connected by a previous
    /// controller process as disconnected (no session survives a restart), and watch every
    /// disconnected agent for when it becomes lost. One read of the agents; the writes go to
    /// the store [`RESET_CONCURRENCY`] at a time, so that it commits them in groups (10,000
    /// agents in a few transactions, not 10,000).
    pub async fn reset_sessions_after_restart(&self) {
        self.lost_watch.clear();
        let agents = match self.store.list_agents().await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the agents to reset their sessions; agents left connected by a previous controller are not watched until they reconnect");
                return;
            }
        };
        let mut stale = Vec::new();
        for a in agents {
            if a.state == v1::AgentState::Disconnected as i32 {
                let since = a.state_since.as_ref().map_or(0, to_millis);
                self.lost_watch.disconnected(&a.name, since);
            } else if a.state == v1::AgentState::Connected as i32 && !self.is_connected(&a.name) {
                // Not one whose session this controller has already opened.
                stale.push(a.name);
            }
        }
        futures::stream::iter(stale)
            .for_each_concurrent(RESET_CONCURRENCY, |name| async move {
                self.set_agent_state(&name, v1::AgentState::Disconnected)
                    .await;
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use syncfleet_proto::time::from_millis;

    use super::*;
    use crate::fleet::fixtures::{fleet, run};
    use crate::fleet::{FleetError, RunBlocked};

    async fn stored_state(store: &dyn crate::store::Store, agent: &str) -> v1::AgentState {
        let a = store.get_agent(agent).await.unwrap().unwrap().agent;
        v1::AgentState::try_from(a.state).unwrap()
    }

    #[tokio::test]
    async fn a_new_term_resets_left_over_sessions_and_watches_disconnected_agents() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = fleet(dir.path()).await;
        // "a" (the fixture's): disconnected two hours ago; "b": stored connected by a previous
        // controller; "c": lost already; plus 10,000 more left connected.
        let mut a = store.get_agent("a").await.unwrap().unwrap().agent;
        a.state = v1::AgentState::Disconnected as i32;
        a.state_since = Some(from_millis(Utc::now().timestamp_millis() - 7_200_000));
        store.put_agent(&a).await.unwrap();
        let agent = |name: &str, state: v1::AgentState| v1::Agent {
            name: name.into(),
            state: state as i32,
            state_since: Some(syncfleet_proto::time::now()),
            ..Default::default()
        };
        store
            .put_agent(&agent("b", v1::AgentState::Connected))
            .await
            .unwrap();
        store
            .put_agent(&agent("c", v1::AgentState::Lost))
            .await
            .unwrap();
        futures::future::join_all((0..10_000).map(|i| {
            let store = std::sync::Arc::clone(&store);
            async move {
                store
                    .put_agent(&agent(&format!("x{i:05}"), v1::AgentState::Connected))
                    .await
                    .unwrap();
            }
        }))
        .await;

        fleet.reset_sessions_after_restart().await;
        assert_eq!(
            stored_state(store.as_ref(), "b").await,
            v1::AgentState::Disconnected
        );
        assert_eq!(
            stored_state(store.as_ref(), "x09999").await,
            v1::AgentState::Disconnected
        );
        assert_eq!(fleet.lost_watch.len(), 10_002, "a, b and the 10,000");

        // The sweep declares lost only the agent disconnected for longer than 60 s.
        fleet.sweep().await;
        assert_eq!(
            stored_state(store.as_ref(), "a").await,
            v1::AgentState::Lost
        );
        assert_eq!(
            stored_state(store.as_ref(), "b").await,
            v1::AgentState::Disconnected
        );
        assert_eq!(
            stored_state(store.as_ref(), "c").await,
            v1::AgentState::Lost
        );
        assert_eq!(fleet.lost_watch.len(), 10_001);
    }

    #[tokio::test]
    async fn an_agent_whose_session_ended_is_lost_after_agent_lost_after_unless_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn crate::store::Store> = std::sync::Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("c.db")).unwrap(),
        );
        let fleet = Fleet::new(
            std::sync::Arc::clone(&store),
            crate::fleet::Settings {
                heartbeat_interval: std::time::Duration::from_secs(1),
                agent_lost_after: std::time::Duration::ZERO,
                pending_deadline: std::time::Duration::from_secs(60),
            },
        );
        let hello = |name: &str| v1::Hello {
            name: name.into(),
            ..Default::default()
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let (_, gone, _) = fleet.on_connect(&hello("gone"), tx).await.unwrap();
        let (tx, _rx2) = tokio::sync::mpsc::channel(8);
        let (_, back, _) = fleet.on_connect(&hello("back"), tx).await.unwrap();
        fleet.on_disconnect("gone", gone).await;
        fleet.on_disconnect("back", back).await;
        let (tx, _rx3) = tokio::sync::mpsc::channel(8);
        fleet.on_connect(&hello("back"), tx).await.unwrap();
        fleet.sweep().await;
        assert_eq!(
            stored_state(store.as_ref(), "gone").await,
            v1::AgentState::Lost
        );
        assert_eq!(
            stored_state(store.as_ref(), "back").await,
            v1::AgentState::Connected
        );
    }

    #[tokio::test]
    async fn a_run_held_back_by_a_pause_past_the_deadline_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = fleet(dir.path()).await;
        let mut r = run();
        r.state = v1::RunState::Pending as i32;
        r.created_at = Some(from_millis(Utc::now().timestamp_millis() - 10_000));
        store.insert_run(&r).await.unwrap();
        let pause = v1::Pause {
            paused: true,
            note: "MIM hotfix".into(),
            by: "operator/admin".into(),
            at: None,
        };
        fleet.set_fleet_pause(&pause).await.unwrap();
        // A new run is refused with the same reason.
        let refused = fleet
            .start_run(
                "a",
                vec![v1::StepSpec {
                    ma: "AD".into(),
                    profile: "Delta Import".into(),
                }],
                "operator/admin",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, FleetError::Blocked(RunBlocked::FleetPaused(p)) if p.note == "MIM hotfix"),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("MIM hotfix"), "{refused}");
        fleet.sweep().await;
        let r = store.get_run("r").await.unwrap().unwrap();
        assert_eq!(r.state, v1::RunState::Failed as i32);
        assert!(
            r.message
                .contains("because the fleet is paused by operator/admin: MIM hotfix"),
            "{}",
            r.message
        );
        assert!(!r.message.contains("did not connect"), "{}", r.message);
    }
}
