//! gRPC services: `AgentService` (agents' session streams) and `FleetService` (operators).
//!
//! Every call is authenticated by the caller's client certificate (verified by TLS against the
//! fleet CA); the identity comes from its `spiffe://<fleet>/<role>/<name>` SAN. Agents may only
//! open sessions, operators may only use the fleet API.

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use syncfleet_proto::v1::{
    self, agent_message::Msg as AgentMsg, agent_service_server::AgentService,
    controller_message::Msg as CtrlMsg, fleet_service_server::FleetService,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{Fleet, store_status};
use crate::operations;
use crate::pki::{self, PeerIdentity, Role};
use crate::store::{self, RunQuery};

/// Most events applied and stored in one transaction.
const MAX_EVENT_BATCH: usize = 1000;

/// The verified identity of a caller, or `UNAUTHENTICATED` naming what is missing.
pub fn caller<T>(req: &Request<T>, fleet: &str) -> Result<PeerIdentity, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: syncfleet requires mutual TLS; use a certificate issued by this controller's CA",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    pki::identity_of(leaf.as_ref(), fleet).ok_or_else(|| {
        Status::unauthenticated(format!(
            "client certificate carries no identity of fleet {fleet:?} (expected a SAN URI spiffe://{fleet}/agent/NAME or spiffe://{fleet}/operator/NAME)"
        ))
    })
}

fn require(id: &PeerIdentity, role: Role) -> Result<(), Status> {
    if id.role == role {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{id} may not call this method (it is for {} identities)",
            match role {
                Role::Agent => "agent",
                Role::Operator => "operator",
            }
        )))
    }
}

/// `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentSvc {
    pub fleet: Arc<Fleet>,
    pub fleet_name: String,
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type SessionStream = ReceiverStream<Result<v1::ControllerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let id = caller(&request, &self.fleet_name)?;
        require(&id, Role::Agent)?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(v1::AgentMessage {
                msg: Some(AgentMsg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
        };
        if hello.name != id.name {
            tracing::warn!(claimed = %hello.name, certificate = %id, "agent claimed another name");
            return Err(Status::permission_denied(format!(
                "certificate identifies agent {:?} but Hello claims {:?}",
                id.name, hello.name
            )));
        }
        let (tx, rx) = mpsc::channel(1024);
        let (welcome, session_id, mut stored_seq) =
            self.fleet.on_connect(&hello, tx.clone()).await?;
        // The channel is fresh and its receiver is returned below: this cannot fail.
        let _ = tx
            .send(Ok(v1::ControllerMessage {
                msg: Some(CtrlMsg::Welcome(welcome)),
            }))
            .await;
        let fleet = Arc::clone(&self.fleet);
        let name = hello.name.clone();
        tokio::spawn(async move {
            fleet.dispatch_for_agent(&name).await;
            loop {
                let Some(first) = inbound.next().await else {
                    break;
                };
                let mut msgs = vec![first];
                // Drain what is already buffered so a burst is stored in one transaction.
                while msgs.len() < MAX_EVENT_BATCH {
                    match inbound.next().now_or_never() {
                        Some(Some(m)) => msgs.push(m),
                        _ => break,
                    }
                }
                let mut events = Vec::new();
                let mut failed = None;
                for m in msgs {
                    match m {
                        Ok(v1::AgentMessage { msg: Some(msg) }) => match msg {
                            AgentMsg::Event(ev) => events.push(ev),
                            AgentMsg::Heartbeat(hb) => fleet.touch(&name, Some(&hb)),
                            AgentMsg::CommandAck(ack) => {
                                if !ack.accepted {
                                    fleet.command_refused(&name, &ack).await;
                                }
                            }
                            AgentMsg::Hello(_) => {
                                tracing::warn!(agent = %name, "duplicate Hello ignored");
                            }
                        },
                        Ok(v1::AgentMessage { msg: None }) => {}
                        Err(status) => {
                            failed = Some(status);
                            break;
                        }
                    }
                }
                fleet.touch(&name, None);
                if !events.is_empty() {
                    match fleet.apply_events(&name, events, stored_seq).await {
                        Ok(seq) => {
                            stored_seq = seq;
                            // Acks are cumulative: if the queue is full a later one covers this.
                            let _ = tx.try_send(Ok(v1::ControllerMessage {
                                msg: Some(CtrlMsg::EventAck(v1::EventAck { up_to_seq: seq })),
                            }));
                        }
                        Err(e) => {
                            // Not acknowledged: the agent keeps the events and replays them.
                            tracing::error!(agent = %name, error = %e, "cannot store agent events; closing the session");
                            let _ = tx
                                .send(Err(Status::unavailable(
                                    "controller store error; reconnect later",
                                )))
                                .await;
                            break;
                        }
                    }
                }
                if let Some(status) = failed {
                    tracing::info!(agent = %name, status = %status.message(), "session stream ended");
                    break;
                }
            }
            fleet.on_disconnect(&name, session_id).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// `FleetService` implementation.
#[derive(Debug, Clone)]
pub struct FleetSvc {
    pub fleet: Arc<Fleet>,
    pub scheduler: Arc<crate::schedule::scheduler::Scheduler>,
    pub fleet_name: String,
}

impl FleetSvc {
    fn operator<T>(&self, req: &Request<T>) -> Result<PeerIdentity, Status> {
        let id = caller(req, &self.fleet_name)?;
        require(&id, Role::Operator)?;
        Ok(id)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::RunUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl FleetService for FleetSvc {
    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        self.operator(&request)?;
        let agents = store::blocking(&self.fleet.store, |s| s.list_agents())
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|a| self.fleet.agent_view(a))
            .collect();
        Ok(Response::new(v1::ListAgentsResponse { agents }))
    }

    async fn get_agent(
        &self,
        request: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        self.operator(&request)?;
        let name = request.into_inner().name;
        let n = name.clone();
        let stored = store::blocking(&self.fleet.store, move |s| s.get_agent(&n))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no agent named {name:?}")))?;
        Ok(Response::new(self.fleet.agent_view(stored.agent)))
    }

    async fn start_run(
        &self,
        request: Request<v1::StartRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        match (req.steps.is_empty(), req.sequence.is_empty()) {
            (true, true) => {
                return Err(Status::invalid_argument(
                    "give either steps (MA:PROFILE) or a sequence name",
                ));
            }
            (false, false) => {
                return Err(Status::invalid_argument(
                    "give either steps or a sequence, not both",
                ));
            }
            (true, false) => {
                let run = operations::start_sequence(
                    &self.fleet,
                    &req.agent,
                    &req.sequence,
                    &who.to_string(),
                )
                .await?;
                return Ok(Response::new(run));
            }
            (false, true) => {}
        }
        for s in &req.steps {
            if s.ma.trim().is_empty() || s.profile.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "every step needs an MA name and a run profile name",
                ));
            }
        }
        self.fleet.check_not_paused(&req.agent).await?;
        let run = self
            .fleet
            .start_run(&req.agent, req.steps, "manual", &who.to_string())
            .await?;
        Ok(Response::new(run))
    }

    async fn get_run(
        &self,
        request: Request<v1::GetRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        self.operator(&request)?;
        let id = request.into_inner().id;
        let i = id.clone();
        store::blocking(&self.fleet.store, move |s| s.get_run(&i))
            .await
            .map_err(store_status)?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no run with id {id:?}")))
    }

    async fn list_runs(
        &self,
        request: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        self.operator(&request)?;
        let req = request.into_inner();
        let states = req
            .states
            .iter()
            .map(|s| {
                v1::RunState::try_from(*s)
                    .map_err(|_| Status::invalid_argument(format!("unknown run state {s}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let query = RunQuery {
            agent: (!req.agent.is_empty()).then_some(req.agent),
            schedule: None,
            states,
            since_ms: req.since.as_ref().map(syncfleet_proto::time::to_millis),
            until_ms: req.until.as_ref().map(syncfleet_proto::time::to_millis),
            limit: if req.page_size == 0 {
                50
            } else {
                usize::try_from(req.page_size.min(1000)).unwrap_or(1000)
            },
            page_token: (!req.page_token.is_empty()).then_some(req.page_token),
        };
        let page = store::blocking(&self.fleet.store, move |s| s.list_runs(&query))
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::ListRunsResponse {
            runs: page.runs,
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type WatchRunsStream = WatchStream;

    async fn watch_runs(
        &self,
        request: Request<v1::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        self.operator(&request)?;
        let req = request.into_inner();
        // Subscribe before reading the snapshot, so no change falls between the two.
        let mut rx = self.fleet.subscribe();
        let fleet = Arc::clone(&self.fleet);
        let (tx, out) = mpsc::channel(256);
        let snapshot = if req.run_id.is_empty() {
            None
        } else {
            let id = req.run_id.clone();
            Some(
                store::blocking(&fleet.store, move |s| s.get_run(&id))
                    .await
                    .map_err(store_status)?
                    .ok_or_else(|| Status::not_found(format!("no run with id {:?}", req.run_id)))?,
            )
        };
        tokio::spawn(async move {
            let terminal =
                |r: &v1::Run| v1::RunState::try_from(r.state).is_ok_and(v1::RunState::is_terminal);
            if let Some(run) = snapshot {
                let done = terminal(&run);
                if tx.send(Ok(v1::RunUpdate { run: Some(run) })).await.is_err() || done {
                    return;
                }
            }
            loop {
                let run = match rx.recv().await {
                    Ok(r) => r,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "run watcher fell behind");
                        if req.run_id.is_empty() {
                            continue;
                        }
                        let id = req.run_id.clone();
                        match store::blocking(&fleet.store, move |s| s.get_run(&id)).await {
                            Ok(Some(r)) => r,
                            _ => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if (!req.run_id.is_empty() && run.id != req.run_id)
                    || (!req.agent.is_empty() && run.agent != req.agent)
                {
                    continue;
                }
                let done = !req.run_id.is_empty() && terminal(&run);
                if tx.send(Ok(v1::RunUpdate { run: Some(run) })).await.is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn cancel_run(
        &self,
        request: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        let run = self
            .fleet
            .cancel_run(&req.id, &req.reason, &who.to_string())
            .await?;
        Ok(Response::new(run))
    }

    async fn approve_run(
        &self,
        request: Request<v1::ApproveRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        let run = self
            .fleet
            .approve_run(&req.id, &who.to_string(), &req.note)
            .await?;
        Ok(Response::new(run))
    }

    async fn apply(
        &self,
        request: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        let who = self.operator(&request)?;
        let resp = operations::apply(
            &self.fleet,
            &self.scheduler,
            request.into_inner(),
            &who.to_string(),
        )
        .await?;
        Ok(Response::new(resp))
    }

    async fn get_documents(
        &self,
        request: Request<v1::GetDocumentsRequest>,
    ) -> Result<Response<v1::GetDocumentsResponse>, Status> {
        self.operator(&request)?;
        Ok(Response::new(
            operations::get_documents(&self.fleet, request.into_inner()).await?,
        ))
    }

    async fn delete_document(
        &self,
        request: Request<v1::DeleteDocumentRequest>,
    ) -> Result<Response<v1::DeleteDocumentResponse>, Status> {
        self.operator(&request)?;
        Ok(Response::new(
            operations::delete_document(&self.fleet, &self.scheduler, request.into_inner()).await?,
        ))
    }

    async fn get_schedule(
        &self,
        request: Request<v1::GetScheduleRequest>,
    ) -> Result<Response<v1::ScheduleStatus>, Status> {
        self.operator(&request)?;
        let name = request.into_inner().name;
        Ok(Response::new(
            operations::get_schedule(&self.fleet, &self.scheduler, &name).await?,
        ))
    }

    async fn pause_schedule(
        &self,
        request: Request<v1::PauseScheduleRequest>,
    ) -> Result<Response<v1::ScheduleStatus>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        Ok(Response::new(
            operations::set_schedule_pause(
                &self.fleet,
                &self.scheduler,
                &req.name,
                true,
                &req.note,
                &who.to_string(),
            )
            .await?,
        ))
    }

    async fn resume_schedule(
        &self,
        request: Request<v1::PauseScheduleRequest>,
    ) -> Result<Response<v1::ScheduleStatus>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        Ok(Response::new(
            operations::set_schedule_pause(
                &self.fleet,
                &self.scheduler,
                &req.name,
                false,
                &req.note,
                &who.to_string(),
            )
            .await?,
        ))
    }

    async fn drain_agent(
        &self,
        request: Request<v1::DrainAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        Ok(Response::new(
            operations::set_drain(&self.fleet, &req.name, true, &req.note, &who.to_string())
                .await?,
        ))
    }

    async fn resume_agent(
        &self,
        request: Request<v1::DrainAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        Ok(Response::new(
            operations::set_drain(&self.fleet, &req.name, false, &req.note, &who.to_string())
                .await?,
        ))
    }

    async fn pause_fleet(
        &self,
        request: Request<v1::PauseFleetRequest>,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        Ok(Response::new(
            operations::set_fleet_pause(&self.fleet, true, &req.note, &who.to_string()).await?,
        ))
    }

    async fn resume_fleet(
        &self,
        request: Request<v1::PauseFleetRequest>,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        let who = self.operator(&request)?;
        let req = request.into_inner();
        Ok(Response::new(
            operations::set_fleet_pause(&self.fleet, false, &req.note, &who.to_string()).await?,
        ))
    }

    async fn get_fleet_status(
        &self,
        request: Request<v1::GetFleetStatusRequest>,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        self.operator(&request)?;
        Ok(Response::new(operations::fleet_status(&self.fleet).await?))
    }
}
