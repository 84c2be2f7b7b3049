//! `FleetService`: the operators' API (agents, runs, documents, schedules, holds, access).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use syncfleet_proto::v1::{self, fleet_service_server::FleetService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authorize::{Authorize, CallCtx, status_with_request_id, with_request_id};
use super::status::bad_input;
use super::status::store_status;
use crate::auth::Security;
use crate::auth::console_login;
use crate::fleet::{Fleet, MAX_AGENTS_PER_CALL, Plan, Selection};
use crate::limits::{self, LimitError, check_ident, check_text, clip, echo};
use crate::run_ids;
use crate::store::{AuditQuery, Listing, MAX_AUDIT_PAGE, MAX_PAGE, PAGE_BYTES, RunQuery};

/// `FleetService` implementation.
#[derive(Debug, Clone)]
pub struct FleetSvc {
    pub fleet: Arc<Fleet>,
    pub scheduler: Arc<crate::schedule::scheduler::Scheduler>,
    pub security: Arc<Security>,
    /// On a follower, mutations are stored and the leader is woken to act on them.
    pub leadership: crate::leader::Leadership,
    /// The web console's base URL (`https://host:7444`) for sign-in links; `None` when the
    /// console is disabled.
    pub console_url: Option<String>,
}

/// What the leader must do after a follower stored the mutation `action`.
fn wake_for(action: &str) -> Option<crate::leader::Wake> {
    use crate::leader::Wake;
    match action {
        "Apply" | "DeleteDocument" | "PauseSchedule" | "ResumeSchedule" | "PauseFleet"
        | "ResumeFleet" | "DrainAgent" | "ResumeAgent" => Some(Wake::Reload),
        "StartRun" | "StartRuns" | "ApproveRun" => Some(Wake::Dispatch),
        _ => None,
    }
}

/// The decision an operator takes on a run a guard rail held.
#[derive(Clone, Copy)]
enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    /// The RPC name, which is also the audited action and the role table's key.
    fn action(self) -> &'static str {
        match self {
            Verdict::Approve => "ApproveRun",
            Verdict::Reject => "RejectRun",
        }
    }
}

impl FleetSvc {
    /// ApproveRun / RejectRun: the same request shape (a held run's id and a note), the same
    /// checks and the same audit; only the decision taken on the run differs.
    async fn decide_held_run(
        &self,
        request: Request<(String, String)>,
        verdict: Verdict,
    ) -> Result<Response<v1::Run>, Status> {
        let action = verdict.action();
        let target = format!("run/{}", clip(&request.get_ref().0));
        let ctx = self.security.authorize(&request, action, &target).await?;
        let (id, note) = request.into_inner();
        let result: Result<_, Status> = async {
            check_ident("run id", &id)
                .and(check_text("note", &note))
                .map_err(bad_input)?;
            let id = run_id(&self.fleet.store, &id).await?;
            let run = match verdict {
                Verdict::Approve => self.fleet.approve_run(&id, &ctx.who(), &note).await?,
                Verdict::Reject => self.fleet.reject_run(&id, &ctx.who(), &note).await?,
            };
            Ok(Response::new(run))
        }
        .await;
        self.finish_with(&ctx, action, &target, &note, result).await
    }

    /// PauseSchedule / ResumeSchedule.
    async fn schedule_pause(
        &self,
        request: Request<v1::PauseScheduleRequest>,
        paused: bool,
    ) -> Result<Response<v1::ScheduleStatus>, Status> {
        let action = if paused {
            "PauseSchedule"
        } else {
            "ResumeSchedule"
        };
        let target = format!("schedule/{}", clip(&request.get_ref().name));
        let ctx = self.security.authorize(&request, action, &target).await?;
        let req = request.into_inner();
        let result = match check_ident("schedule", &req.name).and(check_text("note", &req.note)) {
            Ok(()) => crate::schedule::status::set_schedule_pause(
                &self.fleet,
                &self.scheduler,
                &req.name,
                paused,
                &req.note,
                &ctx.who(),
            )
            .await
            .map(Response::new)
            .map_err(Status::from),
            Err(e) => Err(bad_input(e)),
        };
        self.finish_with(&ctx, action, &target, &req.note, result)
            .await
    }

    /// DrainAgent / ResumeAgent.
    async fn drain(
        &self,
        request: Request<v1::DrainAgentRequest>,
        draining: bool,
    ) -> Result<Response<v1::Agent>, Status> {
        let action = if draining {
            "DrainAgent"
        } else {
            "ResumeAgent"
        };
        let target = format!("agent/{}", clip(&request.get_ref().name));
        let ctx = self.security.authorize(&request, action, &target).await?;
        let req = request.into_inner();
        let result = match check_ident("agent", &req.name).and(check_text("note", &req.note)) {
            Ok(()) => {
                let r = crate::fleet::set_drain(
                    &self.fleet,
                    &req.name,
                    draining,
                    &req.note,
                    &ctx.who(),
                )
                .await;
                // The agents' schedule sets carry the drain.
                self.scheduler.reload();
                r.map(Response::new).map_err(Status::from)
            }
            Err(e) => Err(bad_input(e)),
        };
        self.finish_with(&ctx, action, &target, &req.note, result)
            .await
    }

    /// PauseFleet / ResumeFleet.
    async fn fleet_pause(
        &self,
        request: Request<v1::PauseFleetRequest>,
        paused: bool,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        let action = if paused { "PauseFleet" } else { "ResumeFleet" };
        let target = "fleet".to_string();
        let ctx = self.security.authorize(&request, action, &target).await?;
        let req = request.into_inner();
        let result = match check_text("note", &req.note) {
            Ok(()) => {
                let r =
                    crate::fleet::set_fleet_pause(&self.fleet, paused, &req.note, &ctx.who()).await;
                // The agents' schedule sets carry the fleet pause.
                self.scheduler.reload();
                r.map(Response::new).map_err(Status::from)
            }
            Err(e) => Err(bad_input(e)),
        };
        self.finish_with(&ctx, action, &target, &req.note, result)
            .await
    }

    /// Audit the outcome of an authorized mutating call and tag it with its request id.
    async fn finish<T>(
        &self,
        ctx: &CallCtx,
        action: &str,
        target: &str,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        self.finish_with(ctx, action, target, "", result).await
    }

    /// [`finish`](Self::finish) with the audit entry's detail: the caller's note or reason
    /// (cut to [`limits::MAX_TEXT`] when it was refused as too long), or what an apply did.
    async fn finish_with<T>(
        &self,
        ctx: &CallCtx,
        action: &str,
        target: &str,
        detail: &str,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        let detail = if detail.len() > limits::MAX_TEXT {
            clip(detail)
        } else {
            detail.to_string()
        };
        self.security
            .record(ctx, action, target, &detail, &result)
            .await;
        if result.is_ok()
            && let Some(wake) = wake_for(action)
        {
            self.leadership.wake_leader(wake).await;
        }
        tag(ctx, result)
    }
}

fn check_start_run(req: &v1::StartRunRequest) -> Result<(), LimitError> {
    check_ident("agent", &req.agent)?;
    check_ident("sequence", &req.sequence)?;
    check_steps_input(&req.steps)
}

/// The audit target of a `StartRuns` call: its selection, cut to a bounded length.
fn start_runs_target(req: &v1::StartRunsRequest) -> String {
    if req.all {
        "agents/all".to_string()
    } else if !req.selector.is_empty() {
        format!("selector/{}", clip(&req.selector))
    } else {
        let mut names: Vec<&str> = req.agents.iter().take(5).map(String::as_str).collect();
        let more = req.agents.len().saturating_sub(names.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        names.sort_unstable();
        clip(&format!("agents/{}{more}", names.join(",")))
    }
}

fn check_start_runs(req: &v1::StartRunsRequest) -> Result<(), LimitError> {
    limits::check_count(
        "agents",
        req.agents.len(),
        "agents",
        MAX_AGENTS_PER_CALL,
        "StartRuns call",
    )?;
    for (i, a) in req.agents.iter().enumerate() {
        check_ident(&format!("agents[{i}]"), a)?;
    }
    check_text("selector", &req.selector)?;
    check_ident("sequence", &req.sequence)?;
    check_ident("idempotency_key", &req.idempotency_key)?;
    check_steps_input(&req.steps)
}

/// Bounds of a request's ad-hoc steps.
fn check_steps_input(steps: &[v1::StepSpec]) -> Result<(), LimitError> {
    limits::check_count(
        "steps",
        steps.len(),
        "steps",
        limits::MAX_STEPS_PER_RUN,
        "run",
    )?;
    for (i, s) in steps.iter().enumerate() {
        limits::check_engine_name(&format!("steps[{i}].ma"), &s.ma)?;
        limits::check_engine_name(&format!("steps[{i}].profile"), &s.profile)?;
    }
    Ok(())
}

/// The audit detail of an apply: `dry run` or `applied`, then what changed and whether it was
/// forced over inventory problems (`applied: 2 created, 1 changed, forced over 3 inventory
/// problem(s)`). A refused apply gives only the mode and flags (`apply, forced`); the audit
/// entry adds the error.
fn apply_detail(req: &v1::ApplyRequest, resp: Option<&v1::ApplyResponse>) -> String {
    let mut parts = Vec::new();
    let mode = match resp {
        Some(r) => {
            for action in ["created", "changed", "deleted", "unchanged"] {
                let n = r.changes.iter().filter(|c| c.action == action).count();
                if n > 0 {
                    parts.push(format!("{n} {action}"));
                }
            }
            let blocking = r.warnings.iter().filter(|w| w.blocking).count();
            if req.force && blocking > 0 {
                parts.push(format!("forced over {blocking} inventory problem(s)"));
            }
            if req.dry_run { "dry run" } else { "applied" }
        }
        None => {
            if req.force {
                parts.push("forced".to_string());
            }
            if req.dry_run { "dry run" } else { "apply" }
        }
    };
    if req.prune {
        parts.push("prune".to_string());
    }
    match (resp, parts.is_empty()) {
        (_, true) => mode.to_string(),
        (Some(_), false) => format!("{mode}: {}", parts.join(", ")),
        (None, false) => format!("{mode}, {}", parts.join(", ")),
    }
}

/// The full run id an operator's id or unique prefix names ([`run_ids`]), as a gRPC status on
/// failure.
async fn run_id(store: &Arc<dyn crate::store::Store>, typed: &str) -> Result<String, Status> {
    Ok(run_ids::resolve(store, typed).await?)
}

/// Attach the call's request id to its response or error.
fn tag<T>(ctx: &CallCtx, result: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    result
        .map(|r| with_request_id(r, &ctx.request_id))
        .map_err(|e| status_with_request_id(e, &ctx.request_id))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::RunUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl FleetService for FleetSvc {
    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        let ctx = self.security.authorize(&request, "ListAgents", "").await?;
        let result: Result<_, Status> = async {
            let req = request.into_inner();
            // Bounded even for clients older than paging (they send no page size): their
            // first page plus a token they ignore, never a reply past their decode limit.
            let size = match req.page_size {
                0 => 500,
                n => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
            };
            let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let mut page = self
                .fleet
                .store
                .list_agents_page(token, size)
                .await
                .map_err(store_status)?
                .map(|a| self.fleet.agent_view(a));
            page.fit(PAGE_BYTES, prost::Message::encoded_len, |a| {
                Listing::Agents.token(&a.name)
            });
            Ok(Response::new(v1::ListAgentsResponse {
                agents: page.items,
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        }
        .await;
        tag(&ctx, result)
    }

    async fn get_agent(
        &self,
        request: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let ctx = self.security.authorize(&request, "GetAgent", "").await?;
        let result: Result<_, Status> = async {
            let name = request.into_inner().name;
            check_ident("agent", &name).map_err(bad_input)?;
            let n = name.clone();
            let stored = self
                .fleet
                .store
                .get_agent(&n)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("no agent named {}", echo(&name))))?;
            Ok(Response::new(self.fleet.agent_view(stored.agent)))
        }
        .await;
        tag(&ctx, result)
    }

    async fn start_run(
        &self,
        request: Request<v1::StartRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let target = format!("agent/{}", clip(&request.get_ref().agent));
        let ctx = self
            .security
            .authorize(&request, "StartRun", &target)
            .await?;
        let result: Result<_, Status> = async {
            let req = request.into_inner();
            check_start_run(&req).map_err(bad_input)?;
            let plan = Plan::from_request(req.steps, req.sequence)?;
            let run = self.fleet.start_one(&req.agent, &plan, &ctx.who()).await?;
            Ok(Response::new(run))
        }
        .await;
        self.finish(&ctx, "StartRun", &target, result).await
    }

    async fn start_runs(
        &self,
        request: Request<v1::StartRunsRequest>,
    ) -> Result<Response<v1::StartRunsResponse>, Status> {
        let target = start_runs_target(request.get_ref());
        let ctx = self
            .security
            .authorize(&request, "StartRuns", &target)
            .await?;
        let result: Result<_, Status> = async {
            let req = request.into_inner();
            check_start_runs(&req).map_err(bad_input)?;
            let selection = Selection::from_request(req.agents, req.selector, req.all)?;
            let plan = Plan::from_request(req.steps, req.sequence)?;
            let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key.as_str());
            let out = self
                .fleet
                .start_runs(&selection, &plan, key, &ctx.who())
                .await?;
            Ok(Response::new(v1::StartRunsResponse {
                runs: out.runs,
                refused: out
                    .refused
                    .into_iter()
                    .map(|r| v1::RunRefusal {
                        agent: r.agent,
                        reason: r.error.to_string(),
                    })
                    .collect(),
            }))
        }
        .await;
        let detail = match &result {
            Ok(r) => format!(
                "{} run(s) started, {} agent(s) refused",
                r.get_ref().runs.len(),
                r.get_ref().refused.len()
            ),
            Err(_) => String::new(),
        };
        self.finish_with(&ctx, "StartRuns", &target, &detail, result)
            .await
    }

    async fn get_run(
        &self,
        request: Request<v1::GetRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let ctx = self.security.authorize(&request, "GetRun", "").await?;
        let result: Result<_, Status> = async {
            let typed = request.into_inner().id;
            check_ident("run id", &typed).map_err(bad_input)?;
            let id = run_id(&self.fleet.store, &typed).await?;
            let i = id.clone();
            self.fleet
                .store
                .get_run(&i)
                .await
                .map_err(store_status)?
                .map(Response::new)
                .ok_or_else(|| Status::not_found(format!("no run with id {}", echo(&id))))
        }
        .await;
        tag(&ctx, result)
    }

    async fn list_runs(
        &self,
        request: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let ctx = self.security.authorize(&request, "ListRuns", "").await?;
        let result: Result<_, Status> = async {
            let req = request.into_inner();
            check_ident("schedule", &req.schedule).map_err(bad_input)?;
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
                schedule: (!req.schedule.is_empty()).then_some(req.schedule),
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
            let page = self
                .fleet
                .store
                .list_runs(&query)
                .await
                .map_err(store_status)?;
            Ok(Response::new(v1::ListRunsResponse {
                runs: page.runs,
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        }
        .await;
        tag(&ctx, result)
    }

    type WatchRunsStream = WatchStream;

    async fn watch_runs(
        &self,
        request: Request<v1::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let ctx = self.security.authorize(&request, "WatchRuns", "").await?;
        let result: Result<_, Status> = async {
            let mut req = request.into_inner();
            check_ident("run id", &req.run_id)
                .and(check_ident("agent", &req.agent))
                .map_err(bad_input)?;
            if !req.run_id.is_empty() {
                req.run_id = run_id(&self.fleet.store, &req.run_id).await?;
            }
            // Subscribe before reading the snapshot, so no change falls between the two.
            let rx = self.fleet.subscribe();
            let fleet = Arc::clone(&self.fleet);
            let (tx, out) = mpsc::channel(256);
            let snapshot = if req.run_id.is_empty() {
                None
            } else {
                let id = req.run_id.clone();
                Some(
                    fleet
                        .store
                        .get_run(&id)
                        .await
                        .map_err(store_status)?
                        .ok_or_else(|| {
                            Status::not_found(format!("no run with id {}", echo(&req.run_id)))
                        })?,
                )
            };
            tokio::spawn(super::watch_runs::forward(
                rx,
                Arc::clone(&fleet.store),
                req,
                snapshot,
                tx,
            ));
            Ok(Response::new(
                Box::pin(ReceiverStream::new(out)) as Self::WatchRunsStream
            ))
        }
        .await;
        tag(&ctx, result)
    }

    async fn cancel_run(
        &self,
        request: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let target = format!("run/{}", clip(&request.get_ref().id));
        let ctx = self
            .security
            .authorize(&request, "CancelRun", &target)
            .await?;
        let req = request.into_inner();
        let result: Result<_, Status> = async {
            check_ident("run id", &req.id)
                .and(check_text("reason", &req.reason))
                .map_err(bad_input)?;
            let id = run_id(&self.fleet.store, &req.id).await?;
            let run = self.fleet.cancel_run(&id, &req.reason, &ctx.who()).await?;
            self.leadership
                .wake_leader(crate::leader::Wake::Cancel(run.id.clone()))
                .await;
            Ok(Response::new(run))
        }
        .await;
        self.finish_with(&ctx, "CancelRun", &target, &req.reason, result)
            .await
    }

    async fn approve_run(
        &self,
        request: Request<v1::ApproveRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        self.decide_held_run(request.map(|r| (r.id, r.note)), Verdict::Approve)
            .await
    }

    async fn reject_run(
        &self,
        request: Request<v1::RejectRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        self.decide_held_run(request.map(|r| (r.id, r.note)), Verdict::Reject)
            .await
    }

    async fn apply(
        &self,
        request: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        let target = format!("{} document(s)", request.get_ref().documents.len());
        let ctx = self.security.authorize(&request, "Apply", &target).await?;
        let req = request.into_inner();
        let result = crate::schedule::documents::apply_documents(
            &self.fleet,
            &self.scheduler,
            &req,
            &ctx.who(),
        )
        .await
        .map(Response::new)
        .map_err(Status::from);
        let detail = apply_detail(&req, result.as_ref().ok().map(Response::get_ref));
        self.finish_with(&ctx, "Apply", &target, &detail, result)
            .await
    }

    async fn get_documents(
        &self,
        request: Request<v1::GetDocumentsRequest>,
    ) -> Result<Response<v1::GetDocumentsResponse>, Status> {
        let ctx = self
            .security
            .authorize(&request, "GetDocuments", "")
            .await?;
        let result: Result<_, Status> = async {
            Ok(Response::new(
                crate::documents::apply::get_documents(
                    self.fleet.store.as_ref(),
                    request.into_inner(),
                )
                .await?,
            ))
        }
        .await;
        tag(&ctx, result)
    }

    async fn delete_document(
        &self,
        request: Request<v1::DeleteDocumentRequest>,
    ) -> Result<Response<v1::DeleteDocumentResponse>, Status> {
        let target = format!(
            "{}/{}",
            clip(&request.get_ref().kind),
            clip(&request.get_ref().name)
        );
        let ctx = self
            .security
            .authorize(&request, "DeleteDocument", &target)
            .await?;
        let result: Result<_, Status> = async {
            Ok(Response::new(
                crate::schedule::documents::delete_document(
                    &self.fleet,
                    &self.scheduler,
                    request.into_inner(),
                )
                .await?,
            ))
        }
        .await;
        self.finish(&ctx, "DeleteDocument", &target, result).await
    }

    async fn get_schedule(
        &self,
        request: Request<v1::GetScheduleRequest>,
    ) -> Result<Response<v1::ScheduleStatus>, Status> {
        let ctx = self.security.authorize(&request, "GetSchedule", "").await?;
        let result: Result<_, Status> = async {
            let name = request.into_inner().name;
            Ok(Response::new(
                crate::schedule::status::get_schedule(&self.fleet, &self.scheduler, &name).await?,
            ))
        }
        .await;
        tag(&ctx, result)
    }

    async fn pause_schedule(
        &self,
        request: Request<v1::PauseScheduleRequest>,
    ) -> Result<Response<v1::ScheduleStatus>, Status> {
        self.schedule_pause(request, true).await
    }

    async fn resume_schedule(
        &self,
        request: Request<v1::PauseScheduleRequest>,
    ) -> Result<Response<v1::ScheduleStatus>, Status> {
        self.schedule_pause(request, false).await
    }

    async fn drain_agent(
        &self,
        request: Request<v1::DrainAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        self.drain(request, true).await
    }

    async fn resume_agent(
        &self,
        request: Request<v1::DrainAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        self.drain(request, false).await
    }

    async fn pause_fleet(
        &self,
        request: Request<v1::PauseFleetRequest>,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        self.fleet_pause(request, true).await
    }

    async fn resume_fleet(
        &self,
        request: Request<v1::PauseFleetRequest>,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        self.fleet_pause(request, false).await
    }

    async fn get_fleet_status(
        &self,
        request: Request<v1::GetFleetStatusRequest>,
    ) -> Result<Response<v1::FleetStatus>, Status> {
        let ctx = self
            .security
            .authorize(&request, "GetFleetStatus", "")
            .await?;
        let result: Result<_, Status> = async {
            Ok(Response::new(
                crate::fleet::fleet_status(&self.fleet).await?,
            ))
        }
        .await;
        tag(&ctx, result)
    }

    async fn list_notifiers(
        &self,
        request: Request<v1::ListNotifiersRequest>,
    ) -> Result<Response<v1::ListNotifiersResponse>, Status> {
        let ctx = self
            .security
            .authorize(&request, "ListNotifiers", "")
            .await?;
        let result: Result<_, Status> = async {
            let notifiers = crate::notify::list(self.fleet.store.as_ref()).await?;
            Ok(Response::new(v1::ListNotifiersResponse { notifiers }))
        }
        .await;
        tag(&ctx, result)
    }

    async fn get_notifier(
        &self,
        request: Request<v1::GetNotifierRequest>,
    ) -> Result<Response<v1::NotifierStatus>, Status> {
        let name = request.get_ref().name.clone();
        let target = format!("notifier/{}", clip(&name));
        let ctx = self
            .security
            .authorize(&request, "GetNotifier", &target)
            .await?;
        let result: Result<_, Status> = async {
            check_ident("name", &name).map_err(bad_input)?;
            Ok(Response::new(
                crate::notify::get(self.fleet.store.as_ref(), &name).await?,
            ))
        }
        .await;
        tag(&ctx, result)
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let target = format!("agent/{}", request.get_ref().agent);
        let ctx = self
            .security
            .authorize(&request, "CreateToken", &target)
            .await?;
        let result = self
            .security
            .create_token(&ctx.who(), request.into_inner())
            .await
            .map_err(Status::from);
        let detail = result
            .as_ref()
            .map(|r| {
                format!(
                    "token {} expires {}",
                    r.token_id,
                    syncfleet_proto::time::rfc3339(&r.expires_at.unwrap_or_default())
                )
            })
            .unwrap_or_default();
        self.security
            .record(&ctx, "CreateToken", &target, &detail, &result)
            .await;
        result
            .map(|r| with_request_id(Response::new(r), &ctx.request_id))
            .map_err(|e| status_with_request_id(e, &ctx.request_id))
    }

    async fn revoke_agent(
        &self,
        request: Request<v1::RevokeAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let target = format!("agent/{}", clip(&request.get_ref().name));
        let ctx = self
            .security
            .authorize(&request, "RevokeAgent", &target)
            .await?;
        let req = request.into_inner();
        let checked = check_ident("agent", &req.name)
            .and(check_text("note", &req.note))
            .map_err(bad_input);
        let result = match checked {
            Ok(()) => self
                .security
                .revoke(&ctx.who(), &req.name, &req.note)
                .await
                .map_err(Status::from),
            Err(e) => Err(e),
        };
        self.security
            .record(&ctx, "RevokeAgent", &target, &req.note, &result)
            .await;
        result
            .map(|r| with_request_id(Response::new(r), &ctx.request_id))
            .map_err(|e| status_with_request_id(e, &ctx.request_id))
    }

    async fn create_operator(
        &self,
        request: Request<v1::CreateOperatorRequest>,
    ) -> Result<Response<v1::CertificateResponse>, Status> {
        let target = format!("operator/{}", request.get_ref().name);
        let ctx = self
            .security
            .authorize(&request, "CreateOperator", &target)
            .await?;
        let req = request.into_inner();
        // A certificate is handed out only once it is recorded, so `ListOperators` shows every
        // certificate that can be in use.
        let result = match self.security.create_operator(&req) {
            Ok(resp) => self
                .security
                .record_operator(&resp.cert_pem, &ctx.who())
                .await
                .map(|()| resp),
            Err(e) => Err(e),
        }
        .map_err(Status::from);
        let detail = format!(
            "role {}",
            v1::Role::try_from(req.role)
                .unwrap_or(v1::Role::Unspecified)
                .as_str_name()
                .trim_start_matches("ROLE_")
                .to_ascii_lowercase()
        );
        self.security
            .record(&ctx, "CreateOperator", &target, &detail, &result)
            .await;
        result
            .map(|r| with_request_id(Response::new(r), &ctx.request_id))
            .map_err(|e| status_with_request_id(e, &ctx.request_id))
    }

    async fn list_operators(
        &self,
        request: Request<v1::ListOperatorsRequest>,
    ) -> Result<Response<v1::ListOperatorsResponse>, Status> {
        let ctx = self
            .security
            .authorize(&request, "ListOperators", "")
            .await?;
        let certificates = self
            .security
            .list_operators()
            .await
            .map_err(|e| status_with_request_id(Status::from(e), &ctx.request_id))?;
        Ok(with_request_id(
            Response::new(v1::ListOperatorsResponse { certificates }),
            &ctx.request_id,
        ))
    }

    async fn revoke_operator(
        &self,
        request: Request<v1::RevokeOperatorRequest>,
    ) -> Result<Response<v1::RevokeOperatorResponse>, Status> {
        let target = format!("operator/{}", clip(&request.get_ref().name));
        let ctx = self
            .security
            .authorize(&request, "RevokeOperator", &target)
            .await?;
        let req = request.into_inner();
        let checked = check_ident("operator", &req.name)
            .and(check_text("note", &req.note))
            .map_err(bad_input);
        let result = match checked {
            Ok(()) => self
                .security
                .revoke_operator(&ctx.who, &req.name, &req.note)
                .await
                .map(|certificates| v1::RevokeOperatorResponse { certificates })
                .map_err(Status::from),
            Err(e) => Err(e),
        };
        self.security
            .record(&ctx, "RevokeOperator", &target, &req.note, &result)
            .await;
        result
            .map(|r| with_request_id(Response::new(r), &ctx.request_id))
            .map_err(|e| status_with_request_id(e, &ctx.request_id))
    }

    async fn get_version(
        &self,
        request: Request<v1::GetVersionRequest>,
    ) -> Result<Response<v1::GetVersionResponse>, Status> {
        let ctx = self.security.authorize(&request, "GetVersion", "").await?;
        Ok(with_request_id(
            Response::new(v1::GetVersionResponse {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            &ctx.request_id,
        ))
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        let ctx = self.security.authorize(&request, "ListAudit", "").await?;
        let result: Result<_, Status> = async {
            let req = request.into_inner();
            // `limit` is the page size of clients older than `page_size`, with its old bound.
            let limit = match (req.page_size, req.limit) {
                (0, 0) => 100,
                (0, n) => usize::try_from(n)
                    .unwrap_or(MAX_AUDIT_PAGE)
                    .min(MAX_AUDIT_PAGE),
                (n, _) => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
            };
            let query = AuditQuery {
                since_ms: req.since.as_ref().map(syncfleet_proto::time::to_millis),
                who: (!req.who.is_empty()).then_some(req.who),
                limit,
                page_token: (!req.page_token.is_empty()).then_some(req.page_token),
            };
            let mut page = self
                .fleet
                .store
                .list_audit_page(&query)
                .await
                .map_err(store_status)?;
            page.fit(PAGE_BYTES, prost::Message::encoded_len, |e| {
                Listing::Audit.token(&e.id.to_string())
            });
            Ok(Response::new(v1::ListAuditResponse {
                entries: page.items,
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        }
        .await;
        tag(&ctx, result)
    }

    async fn create_console_login(
        &self,
        request: Request<v1::CreateConsoleLoginRequest>,
    ) -> Result<Response<v1::ConsoleLogin>, Status> {
        let target = "console".to_string();
        let ctx = self
            .security
            .authorize(&request, "CreateConsoleLogin", &target)
            .await?;
        let result: Result<_, Status> = async {
            let Some(base) = &self.console_url else {
                return Err(Status::failed_precondition(
                    "the web console is disabled on this controller (console.enabled = false)",
                ));
            };
            let who = console_login::StoredIdentity::of(&ctx.who).ok_or_else(|| {
                Status::permission_denied(format!("{} is not an operator", ctx.who))
            })?;
            let minted = console_login::mint(
                self.fleet.store.as_ref(),
                base,
                who,
                console_login::LOGIN_TTL,
                chrono::Utc::now().timestamp_millis(),
            )
            .await?;
            Ok(Response::new(v1::ConsoleLogin {
                url: minted.url,
                expires_at: Some(syncfleet_proto::time::from_millis(minted.expires_ms)),
            }))
        }
        .await;
        // The link is a credential: who asked for one is recorded (never the link itself).
        let detail = match &result {
            Ok(r) => format!(
                "sign-in link valid until {}",
                syncfleet_proto::time::rfc3339(&r.get_ref().expires_at.unwrap_or_default())
            ),
            Err(_) => String::new(),
        };
        self.finish_with(&ctx, "CreateConsoleLogin", &target, &detail, result)
            .await
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[test]
    fn apply_audit_detail_tells_dry_runs_applies_refusals_and_forcing() {
        let req = |dry_run, force| v1::ApplyRequest {
            dry_run,
            force,
            ..Default::default()
        };
        let resp = v1::ApplyResponse {
            changes: ["created", "created", "unchanged"]
                .iter()
                .map(|a| v1::DocumentChange {
                    action: (*a).into(),
                    ..Default::default()
                })
                .collect(),
            warnings: vec![v1::ApplyWarning {
                blocking: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            apply_detail(&req(true, false), Some(&resp)),
            "dry run: 2 created, 1 unchanged"
        );
        assert_eq!(
            apply_detail(&req(false, true), Some(&resp)),
            "applied: 2 created, 1 unchanged, forced over 1 inventory problem(s)"
        );
        assert_eq!(apply_detail(&req(false, false), None), "apply");
        assert_eq!(apply_detail(&req(true, true), None), "dry run, forced");
    }

    #[test]
    fn start_run_input_is_limited() {
        let step = v1::StepSpec {
            ma: "AD".into(),
            profile: "Delta Import".into(),
        };
        let mut req = v1::StartRunRequest {
            agent: "sync-01".into(),
            steps: vec![step.clone(); limits::MAX_STEPS_PER_RUN],
            sequence: String::new(),
        };
        assert!(check_start_run(&req).is_ok());
        req.steps.push(step);
        assert_eq!(
            check_start_run(&req).unwrap_err().to_string(),
            "steps: 257 steps; at most 256 steps per run"
        );
        req.steps.truncate(1);
        req.steps[0].profile = "p".repeat(300);
        let e = check_start_run(&req).unwrap_err().to_string();
        assert!(
            e.starts_with("steps[0].profile \"pppp")
                && e.ends_with("… (300 bytes) is too long; the limit is 256 characters"),
            "{e}"
        );
    }
}
