//! Pauses and drains: the fleet-wide pause, schedule pauses and agent drains, stored as
//! `Pause` records, and [`Fleet::run_blocked`], the one check every path that creates a run
//! consults.

use syncfleet_proto::time::now;
use syncfleet_proto::v1;

use super::{Fleet, FleetError};
use crate::store::{StoreError, keys};

/// Why no new run may be created: the message says who paused what, why, and how to resume.
#[derive(Debug, Clone, PartialEq)]
pub enum RunBlocked {
    FleetPaused(v1::Pause),
    /// Schedule name and its pause.
    SchedulePaused(String, v1::Pause),
    /// Agent name and its drain.
    AgentDraining(String, v1::Pause),
}

impl std::fmt::Display for RunBlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = |p: &v1::Pause| {
            if p.by.is_empty() {
                String::new()
            } else {
                format!(" by {}", p.by)
            }
        };
        match self {
            RunBlocked::FleetPaused(p) => write!(
                f,
                "the fleet is paused{}: {}; resume with 'syncfleet fleet resume'",
                by(p),
                p.note
            ),
            RunBlocked::SchedulePaused(name, p) => write!(
                f,
                "schedule {name} is paused{}: {}; resume it with 'syncfleet schedules resume {name}'",
                by(p),
                p.note
            ),
            RunBlocked::AgentDraining(agent, d) => write!(
                f,
                "agent {agent} is draining{}{}; resume it with 'syncfleet agents resume {agent}'",
                if d.by.is_empty() {
                    String::new()
                } else {
                    format!(" (by {})", d.by)
                },
                if d.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.note)
                }
            ),
        }
    }
}

impl Fleet {
    /// Why a new run for `agent` may not be created now, if it may not: the fleet is paused,
    /// `schedule` (when given) is paused, or the agent drains.
    ///
    /// This is the one check every path that creates a run consults ([`Fleet::create_run`]
    /// enforces it; the scheduler asks first so it can count the skip): scheduled fires,
    /// catch-ups, buffered fire times released after the running run, manual runs and approval
    /// continuations. An approval passes no schedule: a guard rail pauses the schedule of the
    /// run it held, and approving that run is how an operator lets it through.
    pub async fn run_blocked(
        &self,
        agent: &str,
        schedule: Option<&str>,
    ) -> Result<Option<RunBlocked>, StoreError> {
        if let Some(p) = self.fleet_pause().await? {
            return Ok(Some(RunBlocked::FleetPaused(p)));
        }
        if let Some(name) = schedule
            && let Some(p) = self.schedule_pause(name).await?
        {
            return Ok(Some(RunBlocked::SchedulePaused(name.to_string(), p)));
        }
        let name = agent.to_string();
        if let Some(stored) = self.store.get_agent(&name).await?
            && let Some(d) = stored.agent.drain.filter(|d| d.paused)
        {
            return Ok(Some(RunBlocked::AgentDraining(agent.to_string(), d)));
        }
        Ok(None)
    }

    /// Fail with [`FleetError::Blocked`] when the fleet is paused or the agent drains (manual
    /// runs honour the same rules as scheduled ones).
    pub async fn check_not_paused(&self, agent: &str) -> Result<(), FleetError> {
        match self.run_blocked(agent, None).await? {
            Some(blocked) => Err(FleetError::Blocked(blocked)),
            None => Ok(()),
        }
    }

    pub(super) async fn get_pause(&self, key: &str) -> Result<Option<v1::Pause>, StoreError> {
        let k = key.to_string();
        let raw = self.store.get_state(&k).await?;
        raw.map(|b| {
            <v1::Pause as prost::Message>::decode(b.as_slice()).map_err(|e| StoreError::Corrupt {
                what: key.to_string(),
                detail: e.to_string(),
            })
        })
        .transpose()
        .map(|p| p.filter(|p| p.paused))
    }

    async fn put_pause(&self, key: &str, pause: &v1::Pause) -> Result<(), StoreError> {
        let k = key.to_string();
        let body = prost::Message::encode_to_vec(pause);
        self.store.put_state(&k, &body).await
    }

    /// The fleet-wide maintenance pause, when on.
    pub async fn fleet_pause(&self) -> Result<Option<v1::Pause>, StoreError> {
        self.get_pause(keys::FLEET_PAUSE).await
    }

    pub async fn set_fleet_pause(&self, pause: &v1::Pause) -> Result<(), StoreError> {
        self.put_pause(keys::FLEET_PAUSE, pause).await
    }

    /// A schedule's pause, when on.
    pub async fn schedule_pause(&self, schedule: &str) -> Result<Option<v1::Pause>, StoreError> {
        self.get_pause(&keys::schedule_pause(schedule)).await
    }

    /// The last pause record of a schedule, on or off (who resumed it, when).
    pub async fn schedule_pause_record(
        &self,
        schedule: &str,
    ) -> Result<Option<v1::Pause>, StoreError> {
        let k = keys::schedule_pause(schedule);
        let raw = self.store.get_state(&k).await?;
        Ok(raw.and_then(|b| <v1::Pause as prost::Message>::decode(b.as_slice()).ok()))
    }

    pub async fn set_schedule_pause(
        &self,
        schedule: &str,
        pause: &v1::Pause,
    ) -> Result<(), StoreError> {
        self.put_pause(&keys::schedule_pause(schedule), pause).await
    }

    /// Set or clear an agent's drain. Returns the agent, or `None` when unknown.
    pub async fn set_drain(
        &self,
        agent: &str,
        drain: v1::Pause,
    ) -> Result<Option<v1::Agent>, StoreError> {
        // The agent record's read-modify-write, under the lock of its key.
        let _guard = self
            .run_locks
            .lock(&super::sessions::agent_record_key(agent))
            .await;
        let name = agent.to_string();
        let updated = {
            let s = &self.store;
            async move {
                let Some(mut stored) = s.get_agent(&name).await? else {
                    return Ok::<_, StoreError>(None);
                };
                stored.agent.drain = Some(drain);
                s.put_agent(&stored.agent).await?;
                Ok(Some(stored.agent))
            }
        }
        .await?;
        Ok(updated.map(|a| self.agent_view(a)))
    }
}

pub async fn set_drain(
    fleet: &Fleet,
    name: &str,
    draining: bool,
    note: &str,
    who: &str,
) -> Result<v1::Agent, FleetError> {
    let drain = v1::Pause {
        paused: draining,
        note: note.to_string(),
        by: who.to_string(),
        at: Some(now()),
    };
    let agent = fleet
        .set_drain(name, drain)
        .await?
        .ok_or_else(|| FleetError::NoSuchAgent(name.to_string()))?;
    tracing::info!(agent = name, draining, by = who, "agent drain changed");
    Ok(agent)
}

pub async fn fleet_status(fleet: &Fleet) -> Result<v1::FleetStatus, FleetError> {
    let pause = fleet.fleet_pause().await?;
    let draining = fleet
        .store
        .list_agents()
        .await?
        .into_iter()
        .filter(|a| a.drain.as_ref().is_some_and(|d| d.paused))
        .map(|a| a.name)
        .collect();
    Ok(v1::FleetStatus { pause, draining })
}

pub async fn set_fleet_pause(
    fleet: &Fleet,
    paused: bool,
    note: &str,
    who: &str,
) -> Result<v1::FleetStatus, FleetError> {
    if paused && note.trim().is_empty() {
        return Err(FleetError::PauseWithoutNote);
    }
    let pause = v1::Pause {
        paused,
        note: note.to_string(),
        by: who.to_string(),
        at: Some(now()),
    };
    fleet.set_fleet_pause(&pause).await?;
    tracing::info!(paused, by = who, note, "fleet pause changed");
    fleet_status(fleet).await
}
