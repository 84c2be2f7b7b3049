//! The schedule sets agents fire on their own while no controller is reachable (agent
//! autonomy): each agent gets, over its session, the schedules that target it with their
//! sequence plans (guard rails included), and the pauses and drain that apply to it. A set is
//! sent after every session opens and to every connected agent whenever the scheduler reloads
//! (apply, delete, schedule pause or resume, fleet pause, drain, a guard rail's pause).
//! Its version is a digest of its content, so an unchanged set keeps its version.

use std::sync::Arc;

use syncfleet_proto::v1;

use super::scheduler::Scheduler;
use crate::documents::model::Targets;

/// What every agent's schedule set is cut from, built once per scheduler (re)load and shared:
/// each schedule with its sequence's plan, its pause and its JSON already encoded, and the
/// fleet pause. An agent's set is then its targets' entries plus its drain, without a store
/// read or a JSON encoding per agent (a reconnect storm of thousands of agents costs one build).
#[derive(Debug, Default)]
pub(super) struct SetParts {
    fleet_paused: bool,
    /// By schedule name.
    schedules: Vec<(Targets, v1::AgentSchedule)>,
}

impl Scheduler {
    /// Build [`SetParts`] from the loaded schedules and the stored pauses, and keep it.
    pub(super) async fn refresh_set_parts(&self) -> Arc<SetParts> {
        let mut chosen = Vec::new();
        {
            let st = self.state.lock().await;
            let mut names: Vec<&String> = st.entries.keys().collect();
            names.sort();
            for name in names {
                let Some(e) = st.entries.get(name) else {
                    continue;
                };
                let Some(seq) = st.sequences.get(&e.doc.sequence) else {
                    continue;
                };
                chosen.push((e.doc.clone(), seq.plan(), seq.on_failure_proto()));
            }
        }
        let fleet_paused = match self.fleet.fleet_pause().await {
            Ok(p) => p.is_some(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the fleet pause for the schedule sets");
                false
            }
        };
        let mut parts = SetParts {
            fleet_paused,
            schedules: Vec::with_capacity(chosen.len()),
        };
        for (doc, stages, on_failure) in chosen {
            let paused = matches!(
                self.fleet.schedule_pause(&doc.name).await,
                Ok(Some(_)) | Err(_)
            );
            let schedule_json = match serde_json::to_string(&doc) {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(schedule = %doc.name, error = %e, "cannot encode a schedule");
                    continue;
                }
            };
            parts.schedules.push((
                doc.targets.clone(),
                v1::AgentSchedule {
                    schedule_json,
                    stages,
                    on_failure: on_failure as i32,
                    paused,
                },
            ));
        }
        let parts = Arc::new(parts);
        self.state.lock().await.set_parts = Some(Arc::clone(&parts));
        parts
    }

    /// The schedule set of `agent`: every schedule targeting it whose sequence exists, with
    /// the pauses and drain in force (schedules with `autonomy: false` included, so the agent
    /// knows them; it never fires them). Cut from the shared [`SetParts`] of the last load.
    pub async fn schedule_set_for(&self, agent: &v1::Agent) -> v1::ScheduleSet {
        let cached = self.state.lock().await.set_parts.clone();
        let parts = match cached {
            Some(p) => p,
            None => self.refresh_set_parts().await,
        };
        let labels = agent.labels.clone().into_iter().collect();
        let mut set = v1::ScheduleSet {
            fleet_paused: parts.fleet_paused,
            // A paused fleet says so first, as `Fleet::run_blocked` does.
            drained: !parts.fleet_paused && agent.drain.as_ref().is_some_and(|d| d.paused),
            ..Default::default()
        };
        for (targets, schedule) in &parts.schedules {
            if targets.matches(&agent.name, &labels) {
                set.schedules.push(schedule.clone());
            }
        }
        set.version = version_of(&set);
        set
    }

    /// Send `agent` its schedule set, if it is connected and not revoked.
    pub(super) async fn push_schedule_set(&self, agent: &str) {
        let stored = match self.fleet.store.get_agent(agent).await {
            Ok(Some(a)) => a.agent,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(agent, error = %e, "cannot read the agent for its schedule set");
                return;
            }
        };
        if !matches!(self.fleet.revocation(agent).await, Ok(None)) {
            return;
        }
        let set = self.schedule_set_for(&stored).await;
        if !self.fleet.send_schedule_set(agent, set).await {
            tracing::debug!(
                agent,
                "agent not connected; schedule set sent when it connects"
            );
        }
    }

    /// Send every connected agent its schedule set.
    pub(super) async fn push_schedule_sets(&self) {
        let agents = match self.fleet.store.list_agents().await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list agents for their schedule sets");
                return;
            }
        };
        for a in agents {
            if self.fleet.is_connected(&a.name) {
                self.push_schedule_set(&a.name).await;
            }
        }
    }
}

/// A digest of the set's content (version left out): equal sets, equal versions.
fn version_of(set: &v1::ScheduleSet) -> u64 {
    use prost::Message;
    let mut body = set.clone();
    body.version = 0;
    let hex = syncfleet_proto::digest::sha256_hex(&body.encode_to_vec());
    // Never 0, which means "no set".
    u64::from_str_radix(hex.get(..16).unwrap_or("1"), 16)
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use syncfleet_proto::v1::controller_message::Msg;
    use tokio::sync::mpsc;

    use super::super::testkit::*;
    use crate::fleet::FleetError;

    async fn next_set(
        rx: &mut mpsc::Receiver<Result<v1::ControllerMessage, FleetError>>,
    ) -> v1::ScheduleSet {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a schedule set within 5 s")
                .expect("session open")
                .expect("no error");
            if let Some(Msg::ScheduleSet(s)) = m.msg {
                return s;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn agents_get_their_schedule_set_on_connect_and_after_every_change() {
        let w = every_10s("k", &["a1"], "overlap: buffer_one\n").await;
        let (s, _stop) = start_scheduler(&w, w.start);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (tx, mut rx) = mpsc::channel(64);
        let hello = v1::Hello {
            name: "a1".into(),
            ..Default::default()
        };
        w.fleet.on_connect(&hello, tx).await.unwrap();
        w.fleet.announce_connected("a1");
        let first = next_set(&mut rx).await;
        assert_ne!(first.version, 0);
        assert_eq!(first.schedules.len(), 1);
        let doc: serde_json::Value =
            serde_json::from_str(&first.schedules[0].schedule_json).unwrap();
        assert_eq!(doc["name"], "k");
        assert_eq!(doc["overlap"], "buffer_one");
        assert!(!first.schedules[0].stages.is_empty(), "the sequence's plan");
        assert!(!first.schedules[0].paused && !first.fleet_paused && !first.drained);
        // A reload without a change: the same version.
        s.reload();
        assert_eq!(next_set(&mut rx).await.version, first.version);
        // A schedule pause reaches the agent.
        let pause = v1::Pause {
            paused: true,
            note: "maintenance".into(),
            ..Default::default()
        };
        w.fleet.set_schedule_pause("k", &pause).await.unwrap();
        s.reload();
        let paused = next_set(&mut rx).await;
        assert!(paused.schedules[0].paused);
        assert_ne!(paused.version, first.version);
        // So does a drain.
        crate::fleet::set_drain(&w.fleet, "a1", true, "patching", "operator/o")
            .await
            .unwrap();
        s.reload();
        assert!(next_set(&mut rx).await.drained);
        w.shutdown.cancel();
    }
}
