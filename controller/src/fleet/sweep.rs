//! Periodic housekeeping: pending runs sent when due or failed past the pending deadline,
//! agents without a session marked lost and their in-flight runs ended `unknown`, and the
//! session state a previous controller process left behind.

use chrono::Utc;
use syncfleet_proto::time::to_millis;
use syncfleet_proto::v1;

use super::Fleet;

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
        let lost_ms = i64::try_from(self.settings.agent_lost_after.as_millis()).unwrap_or(i64::MAX);
        match self.store.list_agents().await {
            Ok(agents) => {
                for a in agents {
                    if a.state == v1::AgentState::Disconnected as i32 && !self.is_connected(&a.name)
                    {
                        let since = a.state_since.as_ref().map_or(0, to_millis);
                        if now_ms - since >= lost_ms {
                            tracing::warn!(agent = %a.name, "agent lost");
                            self.set_agent_state(&a.name, v1::AgentState::Lost).await;
                            self.orphan_runs(&a.name).await;
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep: cannot list agents"),
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

    /// Mark every agent stored as connected by a previous controller process as disconnected
    /// (no session survives a restart).
    pub async fn reset_sessions_after_restart(&self) {
        if let Ok(agents) = self.store.list_agents().await {
            for a in agents {
                // Not one whose session this controller has already opened.
                if a.state == v1::AgentState::Connected as i32 && !self.is_connected(&a.name) {
                    self.set_agent_state(&a.name, v1::AgentState::Disconnected)
                        .await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use syncfleet_proto::time::from_millis;

    use super::*;
    use crate::fleet::fixtures::{fleet, run};
    use crate::fleet::{FleetError, RunBlocked};

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
