//! Operating the fleet: schedules (list, show, pause, resume), agent drains, the fleet-wide
//! pause, and approving held runs.
//!
//! Table output puts the resulting state on stdout (one line, or the `show` block) and hints
//! (what the change means, how to undo it) on stderr; `-o json`/`-o yaml` print the object the
//! controller returned ([`output`] shapes).

use syncfleet_proto::v1::{
    ApproveRunRequest, DrainAgentRequest, GetDocumentsRequest, GetFleetStatusRequest,
    GetScheduleRequest, PauseFleetRequest, PauseScheduleRequest, ScheduleStatus,
};

use super::connect::Client;
use super::fleetdocs::parse_documents;
use super::human::{self, ScheduleRow};
use super::{CliError, EXIT_OK, OutputFormat, Session, out, output};
use crate::fleetfile;
use crate::model::{Document, ScheduleDoc};

/// The schedule document carried in a status, if it can be read.
pub fn status_doc(s: &ScheduleStatus) -> Option<ScheduleDoc> {
    match fleetfile::from_json("Schedule", &s.json) {
        Ok(Document::Schedule(d)) => Some(d),
        _ => None,
    }
}

/// `schedule NAME: paused since … by …: "note"` / `schedule NAME: active`.
pub fn schedule_state_line(s: &ScheduleStatus) -> String {
    format!(
        "schedule {}: {}\n",
        s.name,
        human::pause_brief(s.pause.as_ref(), "paused", "active")
    )
}

impl Session<'_> {
    pub(super) async fn runs_approve(
        &self,
        client: &mut Client,
        id: &str,
        note: &str,
    ) -> Result<u8, CliError> {
        let run = client
            .approve_run(ApproveRunRequest {
                id: id.to_string(),
                note: note.to_string(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::run_json(&run))?,
            OutputFormat::Table => {
                out(&format!("{}\n", run.id))?;
                eprintln!(
                    "held run {id} approved: it continues as run {} on agent {} ({}); see it with 'syncfleet runs show {}'",
                    run.id,
                    run.agent,
                    run.state().label(),
                    run.id
                );
            }
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn agents_drain(
        &self,
        client: &mut Client,
        name: &str,
        note: &str,
        drain: bool,
    ) -> Result<u8, CliError> {
        let req = DrainAgentRequest {
            name: name.to_string(),
            note: note.to_string(),
        };
        let agent = if drain {
            client.drain_agent(req).await
        } else {
            client.resume_agent(req).await
        }
        .map_err(|e| self.rpc_err(&e))?
        .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::agent_json(&agent))?,
            OutputFormat::Table => {
                out(&format!(
                    "agent {}: {}\n",
                    agent.name,
                    human::pause_brief(agent.drain.as_ref(), "draining", "not draining")
                ))?;
                if drain {
                    eprintln!(
                        "running runs on {} finish; nothing new starts there until 'syncfleet agents resume {}'",
                        agent.name, agent.name
                    );
                }
            }
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn schedules_list(&self, client: &mut Client) -> Result<u8, CliError> {
        let resp = client
            .get_documents(GetDocumentsRequest {
                kind: "Schedule".to_string(),
                name: String::new(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        let docs = parse_documents("Schedule", &resp.documents).map_err(CliError::Failed)?;
        let mut rows = Vec::new();
        for d in docs {
            let Document::Schedule(doc) = d else { continue };
            match client
                .get_schedule(GetScheduleRequest {
                    name: doc.name.clone(),
                })
                .await
            {
                Ok(s) => rows.push(ScheduleRow {
                    doc,
                    status: s.into_inner(),
                }),
                // Deleted since the list was read.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(self.rpc_err(&status)),
            }
        }
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&serde_json::Value::Array(
                rows.iter()
                    .map(|r| output::schedule_status_json(&r.status))
                    .collect(),
            ))?,
            OutputFormat::Table => {
                if rows.is_empty() {
                    eprintln!("no schedules yet; create them with 'syncfleet apply -f FILE|DIR'");
                } else {
                    out(&human::schedules_table(&rows))?;
                }
            }
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn schedules_show(
        &self,
        client: &mut Client,
        name: &str,
    ) -> Result<u8, CliError> {
        let s = client
            .get_schedule(GetScheduleRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                self.data(&output::schedule_status_json(&s))?;
            }
            OutputFormat::Table => out(&human::schedule_details(&s, status_doc(&s).as_ref()))?,
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn schedules_pause(
        &self,
        client: &mut Client,
        name: &str,
        note: &str,
        pause: bool,
    ) -> Result<u8, CliError> {
        let req = PauseScheduleRequest {
            name: name.to_string(),
            note: note.to_string(),
        };
        let s = if pause {
            client.pause_schedule(req).await
        } else {
            client.resume_schedule(req).await
        }
        .map_err(|e| self.rpc_err(&e))?
        .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                self.data(&output::schedule_status_json(&s))?;
            }
            OutputFormat::Table => {
                out(&schedule_state_line(&s))?;
                if pause {
                    eprintln!(
                        "running runs go on; no new runs until 'syncfleet schedules resume {}'",
                        s.name
                    );
                } else if let Some(t) = s.next.first() {
                    let tz = human::zone(&s.time_zone).unwrap_or(chrono_tz::Tz::UTC);
                    eprintln!("next fire time: {}", human::zoned_rfc3339(Some(t), tz));
                }
            }
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn fleet_pause(
        &self,
        client: &mut Client,
        note: &str,
        pause: bool,
    ) -> Result<u8, CliError> {
        let req = PauseFleetRequest {
            note: note.to_string(),
        };
        let f = if pause {
            client.pause_fleet(req).await
        } else {
            client.resume_fleet(req).await
        }
        .map_err(|e| self.rpc_err(&e))?
        .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::fleet_status_json(&f))?,
            OutputFormat::Table => {
                out(&human::fleet_status(&f))?;
                if pause {
                    eprintln!(
                        "no new runs start anywhere; running runs go on; resume with 'syncfleet fleet resume'"
                    );
                }
            }
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn fleet_status(&self, client: &mut Client) -> Result<u8, CliError> {
        let f = client
            .get_fleet_status(GetFleetStatusRequest {})
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::fleet_status_json(&f))?,
            OutputFormat::Table => out(&human::fleet_status(&f))?,
        }
        Ok(EXIT_OK)
    }
}
