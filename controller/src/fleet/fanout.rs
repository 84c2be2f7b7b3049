//! Manual runs on many agents at once (`StartRuns`), and the single `StartRun`, which is the
//! same path with one named agent.
//!
//! One request is decided against data read once: the agents (inventories, drains), the
//! revocations (one prefix listing) and the fleet pause. Each selected agent either gets a run
//! or a refusal with its reason (unknown agent, revoked, paused fleet, draining agent, an MA or
//! run profile missing from its inventory). The runs are stored in one transaction and sent
//! concurrently ([`Fleet::create_runs`]).
//!
//! Idempotency: with a key, the ids of the runs created and the refusals are stored under
//! [`keys::start_runs_idempotency`] (scoped to the caller) right after the runs; a later call
//! with the same key and caller returns those runs as they are now and creates nothing. Two
//! calls with one key racing each other are not deduplicated: the key is for retries.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use syncfleet_proto::v1;

use super::runs::{NewRun, check_steps};
use super::{Fleet, FleetError, RunBlocked, steps_of};
use crate::documents::{
    self,
    model::{Document, SequenceDoc, Targets},
};
use crate::store::{StoreError, keys};

/// The most agents one `StartRuns` call may select; a larger fleet is started in several calls
/// (each is one store transaction and one response message).
pub const MAX_AGENTS_PER_CALL: usize = 10_000;

/// Which agents a fan-out targets.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Named agents (unknown names are refused one by one).
    Agents(Vec<String>),
    /// A label selector in the schedules' syntax (`env=prod,site=eu`).
    Selector(String),
    /// Every enrolled agent.
    All,
}

impl Selection {
    /// The selection of a request: exactly one of names, selector, all.
    pub fn from_request(
        agents: Vec<String>,
        selector: String,
        all: bool,
    ) -> Result<Self, FleetError> {
        let given = [!agents.is_empty(), !selector.trim().is_empty(), all];
        match given {
            [true, false, false] => Ok(Selection::Agents(agents)),
            [false, true, false] => Ok(Selection::Selector(selector)),
            [false, false, true] => Ok(Selection::All),
            [false, false, false] => Err(FleetError::Selection("none was given".into())),
            _ => Err(FleetError::Selection(format!(
                "{} were given",
                [
                    (given[0], "agent names"),
                    (given[1], "a selector"),
                    (given[2], "all")
                ]
                .iter()
                .filter(|(g, _)| *g)
                .map(|(_, w)| *w)
                .collect::<Vec<_>>()
                .join(" and ")
            ))),
        }
    }

    /// How the selection reads in audit entries and errors.
    pub fn describe(&self) -> String {
        match self {
            Selection::Agents(names) if names.len() == 1 => format!("agent/{}", names[0]),
            Selection::Agents(names) => format!("agents/{}", names.join(",")),
            Selection::Selector(s) => format!("selector/{s}"),
            Selection::All => "agents/all".to_string(),
        }
    }
}

/// What the runs execute.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Ad-hoc steps, one stage each, in order.
    Steps(Vec<v1::StepSpec>),
    /// A stored sequence, by name.
    Sequence(String),
}

impl Plan {
    /// The plan of a request: steps (each with an MA and a run profile) or a sequence name,
    /// exactly one of them.
    pub fn from_request(steps: Vec<v1::StepSpec>, sequence: String) -> Result<Self, FleetError> {
        match (steps.is_empty(), sequence.is_empty()) {
            (true, true) => Err(FleetError::PlanChoice(
                "give either steps (MA:PROFILE) or a sequence name",
            )),
            (false, false) => Err(FleetError::PlanChoice(
                "give either steps or a sequence, not both",
            )),
            (true, false) => Ok(Plan::Sequence(sequence)),
            (false, true) => {
                if steps
                    .iter()
                    .any(|s| s.ma.trim().is_empty() || s.profile.trim().is_empty())
                {
                    return Err(FleetError::PlanChoice(
                        "every step needs an MA name and a run profile name",
                    ));
                }
                Ok(Plan::Steps(steps))
            }
        }
    }
}

/// An agent of the selection that got no run, and why.
#[derive(Debug)]
pub struct Refusal {
    pub agent: String,
    pub error: FleetError,
}

/// What a fan-out did: the runs (in agent-name order) and the refusals.
#[derive(Debug, Default)]
pub struct FanOut {
    pub runs: Vec<v1::Run>,
    pub refused: Vec<Refusal>,
}

/// The stored answer of a call with an idempotency key: run ids and refusals.
fn idempotency_record(out: &FanOut) -> Vec<u8> {
    v1::StartRunsResponse {
        runs: out
            .runs
            .iter()
            .map(|r| v1::Run {
                id: r.id.clone(),
                agent: r.agent.clone(),
                ..Default::default()
            })
            .collect(),
        refused: out
            .refused
            .iter()
            .map(|r| v1::RunRefusal {
                agent: r.agent.clone(),
                reason: r.error.to_string(),
            })
            .collect(),
    }
    .encode_to_vec()
}

impl Fleet {
    /// Start `plan` on every agent of `selection` as `who` (see the module doc).
    /// `Ok` with refusals when some agents got no run; `Err` when the request itself is wrong
    /// (bad selector, nothing selected, too many agents, unknown sequence) or the store failed.
    pub async fn start_runs(
        self: &Arc<Self>,
        selection: &Selection,
        plan: &Plan,
        idempotency_key: Option<&str>,
        who: &str,
    ) -> Result<FanOut, FleetError> {
        let key = idempotency_key.map(|k| keys::start_runs_idempotency(who, k));
        if let Some(key) = &key
            && let Some(previous) = self.replay(key).await?
        {
            return Ok(previous);
        }
        let (steps, sequence, on_failure) = self.plan_steps(plan).await?;
        let specs: Vec<v1::StepSpec> = steps
            .iter()
            .map(|s| v1::StepSpec {
                ma: s.ma.clone(),
                profile: s.profile.clone(),
            })
            .collect();
        let agents = self.store.list_agents().await?;
        let mut by_name: HashMap<String, v1::Agent> =
            agents.into_iter().map(|a| (a.name.clone(), a)).collect();
        let mut out = FanOut::default();
        let mut selected: Vec<v1::Agent> = match selection {
            Selection::Agents(names) => {
                let mut picked = Vec::with_capacity(names.len());
                for name in names {
                    match by_name.remove(name) {
                        Some(a) => picked.push(a),
                        // Named twice: one run.
                        None if picked.iter().any(|a: &v1::Agent| &a.name == name) => {}
                        None => out.refused.push(Refusal {
                            agent: name.clone(),
                            error: FleetError::NoSuchAgent(name.clone()),
                        }),
                    }
                }
                picked
            }
            Selection::Selector(sel) => {
                let targets = Targets {
                    agents: Vec::new(),
                    selector: Some(sel.clone()),
                };
                let pairs = targets.selector_pairs().map_err(FleetError::BadSelector)?;
                if pairs.is_empty() {
                    return Err(FleetError::BadSelector(
                        "the selector is empty; give key=value pairs, e.g. env=prod".into(),
                    ));
                }
                by_name
                    .into_values()
                    .filter(|a| targets.matches(&a.name, &a.labels.clone().into_iter().collect()))
                    .collect()
            }
            Selection::All => by_name.into_values().collect(),
        };
        if selected.is_empty() && out.refused.is_empty() {
            return Err(FleetError::NothingSelected(selection.describe()));
        }
        if selected.len() > MAX_AGENTS_PER_CALL {
            return Err(FleetError::TooManyAgents {
                count: selected.len(),
                max: MAX_AGENTS_PER_CALL,
            });
        }
        selected.sort_by(|a, b| a.name.cmp(&b.name));
        let revoked = self.revoked_agents().await?;
        let fleet_pause = self.fleet_pause().await?;
        let mut news = Vec::with_capacity(selected.len());
        for agent in selected {
            let refusal = if revoked.contains(&agent.name) {
                match self.revocation(&agent.name).await? {
                    Some(revocation) => Some(FleetError::Revoked {
                        agent: agent.name.clone(),
                        revocation,
                    }),
                    None => None,
                }
            } else if let Some(p) = &fleet_pause {
                Some(FleetError::Blocked(RunBlocked::FleetPaused(p.clone())))
            } else if let Some(d) = agent.drain.as_ref().filter(|d| d.paused) {
                Some(FleetError::Blocked(RunBlocked::AgentDraining(
                    agent.name.clone(),
                    d.clone(),
                )))
            } else {
                check_steps(&agent, &specs).err()
            };
            match refusal {
                Some(error) => out.refused.push(Refusal {
                    agent: agent.name,
                    error,
                }),
                None => news.push(NewRun {
                    agent: agent.name,
                    steps: steps.clone(),
                    origin: "manual".into(),
                    requested_by: who.to_string(),
                    sequence: sequence.clone(),
                    on_failure,
                    ..NewRun::default()
                }),
            }
        }
        if !news.is_empty() {
            out.runs = self
                .create_runs(news)
                .await?
                .into_iter()
                .map(|(run, _)| run)
                .collect();
        }
        out.refused.sort_by(|a, b| a.agent.cmp(&b.agent));
        if let Some(key) = &key {
            self.store.put_state(key, &idempotency_record(&out)).await?;
        }
        Ok(out)
    }

    /// The answer of an earlier call with this idempotency key, its runs as they are now.
    async fn replay(&self, key: &str) -> Result<Option<FanOut>, FleetError> {
        let Some(raw) = self.store.get_state(key).await? else {
            return Ok(None);
        };
        let stored =
            v1::StartRunsResponse::decode(raw.as_slice()).map_err(|e| StoreError::Corrupt {
                what: key.to_string(),
                detail: e.to_string(),
            })?;
        let mut out = FanOut::default();
        for r in stored.runs {
            let id = r.id.clone();
            out.runs.push(self.store.get_run(&id).await?.unwrap_or(r));
        }
        out.refused = stored
            .refused
            .into_iter()
            .map(|r| Refusal {
                agent: r.agent,
                error: FleetError::Refused(r.reason),
            })
            .collect();
        Ok(Some(out))
    }

    /// The steps, sequence name and failure policy of `plan`.
    async fn plan_steps(
        &self,
        plan: &Plan,
    ) -> Result<(Vec<v1::Step>, String, v1::OnFailure), FleetError> {
        match plan {
            Plan::Steps(specs) => {
                if specs.is_empty() {
                    return Err(FleetError::NoStepsRequested);
                }
                let steps = specs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let i = u32::try_from(i).unwrap_or(u32::MAX);
                        v1::Step {
                            index: i,
                            stage: i,
                            ma: s.ma.clone(),
                            profile: s.profile.clone(),
                            state: v1::StepState::Waiting as i32,
                            ..Default::default()
                        }
                    })
                    .collect();
                Ok((steps, String::new(), v1::OnFailure::default()))
            }
            Plan::Sequence(name) => {
                let seq = self.stored_sequence(name).await?;
                Ok((steps_of(&seq), seq.name.clone(), seq.on_failure_proto()))
            }
        }
    }

    /// A stored sequence by name.
    async fn stored_sequence(&self, sequence: &str) -> Result<SequenceDoc, FleetError> {
        let docs = self.store.list_documents(Some("Sequence")).await?;
        let doc = docs
            .into_iter()
            .find(|d| d.name == sequence)
            .ok_or_else(|| FleetError::NoSuchSequence(sequence.to_string()))?;
        match documents::from_json("Sequence", &doc.json) {
            Ok(Document::Sequence(s)) => Ok(s),
            _ => Err(FleetError::UnreadableSequence(sequence.to_string())),
        }
    }

    /// One run on one named agent: [`Fleet::start_runs`] with that agent; its refusal is the
    /// error (an unknown agent's error lists the known agents).
    pub async fn start_one(
        self: &Arc<Self>,
        agent: &str,
        plan: &Plan,
        who: &str,
    ) -> Result<v1::Run, FleetError> {
        let selection = Selection::Agents(vec![agent.to_string()]);
        let mut out = self.start_runs(&selection, plan, None, who).await?;
        if let Some(run) = out.runs.pop() {
            return Ok(run);
        }
        match out.refused.pop() {
            Some(Refusal {
                error: FleetError::NoSuchAgent(name),
                ..
            }) => Err(self.unknown_agent(name).await?),
            Some(r) => Err(r.error),
            None => Err(FleetError::NothingSelected(selection.describe())),
        }
    }
}
