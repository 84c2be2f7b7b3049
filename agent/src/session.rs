//! The agent's one outbound connection (the agent only dials out, so a sync server needs no
//! inbound port): dial the controller over mTLS, say
//! Hello, replay the outbox, then serve commands and stream events until the stream breaks;
//! reconnect with exponential backoff and full jitter.
//!
//! The reader (commands, acknowledgements) and the writer (events, heartbeats) run as separate
//! tasks so a slow direction never stalls the other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use syncfleet_proto::v1::{
    self, agent_message::Msg as AgentMsg, agent_service_client::AgentServiceClient,
    controller_message::Msg as CtrlMsg,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::engine::{MaInfo, SyncEngine};
use crate::executor::Executor;
use crate::identity::channel::{ChannelError, LiveChannel, connect, set_live};
use crate::identity::files::{revoked_message, unusable_reason};
use crate::journal::{Accept, Journal};

/// Longest wait from the Hello to the controller's Welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest gRPC message accepted or sent on the session.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why a session could not be established or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("controller refused the session: {0}")]
    Refused(tonic::Status),
    #[error("session stream failed: {0}")]
    Stream(tonic::Status),
    #[error("controller closed the session, or did not answer within 10 s, before its Welcome")]
    NoWelcome,
    #[error("agent journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
}

impl SessionError {
    /// The controller's refusal of the session or of its stream, if that is how it ended.
    pub fn refusal(&self) -> Option<&tonic::Status> {
        match self {
            SessionError::Refused(s) | SessionError::Stream(s) => Some(s),
            _ => None,
        }
    }
}

fn inventory_proto(inv: &[MaInfo]) -> Vec<v1::ManagementAgent> {
    inv.iter()
        .map(|m| v1::ManagementAgent {
            name: m.name.clone(),
            guid: m.guid.clone(),
            r#type: m.ma_type.clone(),
            run_profiles: m
                .run_profiles
                .iter()
                .map(|p| v1::RunProfile {
                    name: p.name.clone(),
                    step_types: p.steps.iter().map(|s| s.step_type.clone()).collect(),
                })
                .collect(),
        })
        .collect()
}

/// Everything a session needs, shared across reconnects.
pub struct SessionContext {
    pub cfg: AgentConfig,
    /// The open session's channel (for renewal over the live connection).
    pub live: LiveChannel,
    pub engine: Arc<dyn SyncEngine>,
    pub journal: Arc<Journal>,
    pub executor: Arc<Executor>,
    pub outbox: Arc<Notify>,
    /// The controller's schedules, fired here while no controller is reachable.
    pub autonomy: Arc<crate::autonomy::Autonomy>,
    /// Engine run-history housekeeping, reported in heartbeats.
    pub housekeeping: Arc<crate::housekeeping::Housekeeping>,
    /// The change sources of the schedules (`trigger.on_change`), reported in heartbeats.
    pub changes: Arc<crate::change::Watcher>,
    /// Turns to open a session, shared with the other agents of this process.
    pub gate: crate::connect_gate::ConnectGate,
}

impl std::fmt::Debug for SessionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionContext")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

/// Keep a session open until `shutdown`, reconnecting as needed.
pub async fn run_forever(ctx: Arc<SessionContext>, shutdown: CancellationToken) {
    let mut attempt: u32 = 0;
    let mut targets = Targets::new(ctx.cfg.controller_urls());
    let mut redirected = false;
    let mut outage = Outage::new(tokio::time::Instant::now());
    while !shutdown.is_cancelled() {
        // An expired (or not yet valid) certificate cannot connect: say why, wait, check again.
        if let Some(msg) = unusable_reason(&ctx.cfg, chrono::Utc::now()) {
            tracing::error!("{msg}");
            tokio::select! {
                () = tokio::time::sleep(ctx.cfg.reconnect_max_backoff) => continue,
                () = shutdown.cancelled() => return,
            }
        }
        let welcomed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = targets.current();
        let result = tokio::select! {
            r = run_session(&ctx, &target, &shutdown, &welcomed) => r,
            () = shutdown.cancelled() => return,
        };
        // The connection is gone: renewals open their own until the next session.
        set_live(&ctx.live, None);
        ctx.autonomy.session_lost();
        if welcomed.load(std::sync::atomic::Ordering::Relaxed) {
            attempt = 0;
            redirected = false;
            outage = Outage::new(tokio::time::Instant::now());
        }
        if let Err(e) = &result
            && let Some(msg) = e.refusal().and_then(|s| revoked_message(s, &ctx.cfg))
        {
            tracing::error!("{msg}");
            attempt = attempt.max(16); // the longest wait: retrying sooner cannot help
        }
        let leader = result
            .as_ref()
            .err()
            .and_then(SessionError::refusal)
            .and_then(leader_pointer);
        match result {
            Ok(()) => {
                tracing::warn!(controller = %target, "controller closed the session; reconnecting")
            }
            Err(e) => {
                tracing::warn!(controller = %target, error = %e, "session ended; reconnecting")
            }
        }
        match leader {
            Some(leader) => {
                // A follower named the leader: go there next, at once the first time (a pointer
                // met right after following one waits like any other failure).
                tracing::info!(follower = %target, leader = %leader, "going to the leader");
                targets.redirect(leader);
                if !redirected {
                    redirected = true;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            }
            None => {
                redirected = false;
                targets.advance();
            }
        }
        outage.check(tokio::time::Instant::now(), &ctx.cfg.controller_urls());
        attempt = attempt.saturating_add(1);
        let cap = ctx.cfg.reconnect_max_backoff;
        let base = Duration::from_millis(250).saturating_mul(1u32 << attempt.min(16));
        let ceiling = base.min(cap);
        // Full jitter: spread reconnects of a whole fleet after a controller restart.
        let wait = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Since when no session has been open (the agent's start, or the end of the last session
/// the controller welcomed), and whether that outage was reported.
#[derive(Debug)]
struct Outage {
    since: tokio::time::Instant,
    reported: bool,
}

impl Outage {
    fn new(since: tokio::time::Instant) -> Self {
        Self {
            since,
            reported: false,
        }
    }

    /// After a failed attempt: once the outage has lasted
    /// [`CONTROLLER_UNREACHABLE_AFTER`](crate::event_ids::CONTROLLER_UNREACHABLE_AFTER), say
    /// so once as an error (event id
    /// [`ControllerUnreachable`](crate::event_ids::EventId::ControllerUnreachable)).
    fn check(&mut self, now: tokio::time::Instant, controllers: &[String]) {
        let down = now.saturating_duration_since(self.since);
        if self.reported || down < crate::event_ids::CONTROLLER_UNREACHABLE_AFTER {
            return;
        }
        self.reported = true;
        tracing::error!(
            event_id = crate::event_ids::EventId::ControllerUnreachable.code(),
            controllers = %controllers.join(", "),
            down_secs = down.as_secs(),
            "no controller reachable for {}; still retrying",
            humantime::format_duration(Duration::from_secs(down.as_secs()))
        );
    }
}

/// Metadata key of a follower controller's `UNAVAILABLE` answer: the leader's address.
pub const LEADER_METADATA: &str = "syncfleet-leader";

/// The leader a follower's refusal names, if it is one.
fn leader_pointer(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let url = status.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    (url.starts_with("https://") && url.len() > "https://".len()).then(|| url.to_string())
}

/// The controller to dial next: a leader a follower pointed to, else the configured ones in
/// turn.
#[derive(Debug)]
struct Targets {
    urls: Vec<String>,
    next: usize,
    pointed: Option<String>,
}

impl Targets {
    fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            next: 0,
            pointed: None,
        }
    }

    fn current(&self) -> String {
        match &self.pointed {
            Some(url) => url.clone(),
            None => self
                .urls
                .get(self.next % self.urls.len().max(1))
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn redirect(&mut self, leader: String) {
        self.pointed = Some(leader);
    }

    /// After a session with the current target ended: a pointed-to leader is tried once,
    /// then the list goes on from where it was.
    fn advance(&mut self) {
        if self.pointed.take().is_none() {
            self.next = (self.next + 1) % self.urls.len().max(1);
        }
    }
}

async fn run_session(
    ctx: &SessionContext,
    controller: &str,
    shutdown: &CancellationToken,
    welcomed: &std::sync::atomic::AtomicBool,
) -> Result<(), SessionError> {
    let target = crate::config::AgentConfig {
        controller: controller.to_string(),
        ..ctx.cfg.clone()
    };
    // From the connection to the Welcome, one of this process's turns (released on every way out).
    let turn = ctx.gate.turn().await;
    let channel = connect(&target).await?;
    let session_channel = channel.clone();
    let inventory = match ctx.executor.refresh_inventory().await {
        Ok(inv) => inv,
        Err(e) => {
            tracing::warn!(error = %e, "engine inventory unavailable");
            Vec::new()
        }
    };
    let info = ctx.engine.info();
    // From here to the Welcome nothing fires on its own: the Hello's report of what the agent
    // covered stays true until the controller has recorded it.
    let handshake = ctx.autonomy.handshake().await;
    let (autonomy, autonomous_since) = ctx.autonomy.reports();
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(256);
    let hello = v1::Hello {
        name: ctx.cfg.name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: ctx.cfg.labels.clone().into_iter().collect(),
        engine: Some(v1::EngineInfo {
            kind: info.kind,
            version: info.version,
        }),
        inventory: inventory_proto(&inventory),
        runs_in_flight: ctx.executor.runs_in_flight(),
        last_event_seq: ctx.journal.last_seq()?,
        hostname: hostname(),
        autonomy,
        autonomous_since,
        autonomy_after_seconds: ctx.cfg.autonomy_after.as_secs(),
        schedule_set_version: ctx.autonomy.set_version(),
    };
    // The channel is empty and its receiver alive: this send cannot fail.
    let _ = tx
        .send(v1::AgentMessage {
            msg: Some(AgentMsg::Hello(hello)),
        })
        .await;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Bounded: firing waits for this handshake, so a controller that accepts connections but
    // does not answer (stopped, overloaded) must not hold the agent's schedules for long.
    let (mut inbound, welcome) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(SessionError::Refused)?
            .into_inner();
        match inbound.message().await.map_err(SessionError::Stream)? {
            Some(v1::ControllerMessage {
                msg: Some(CtrlMsg::Welcome(w)),
            }) => Ok((inbound, w)),
            _ => Err(SessionError::NoWelcome),
        }
    })
    .await
    .map_err(|_| SessionError::NoWelcome)??;
    welcomed.store(true, std::sync::atomic::Ordering::Relaxed);
    // The controller has recorded what the agent covered: the schedules are its own again.
    ctx.autonomy.welcomed();
    drop(handshake);
    drop(turn);
    set_live(&ctx.live, Some(session_channel.clone()));
    tracing::info!(controller = %controller, acked = welcome.acked_event_seq, "session open");
    if let Err(e) = ctx.journal.ack(welcome.acked_event_seq) {
        tracing::warn!(error = %e, "cannot prune acknowledged events from the journal");
    }
    let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));

    let session_done = CancellationToken::new();
    let reader = {
        let tx = tx.clone();
        let done = session_done.clone();
        let journal = Arc::clone(&ctx.journal);
        let executor = Arc::clone(&ctx.executor);
        let outbox = Arc::clone(&ctx.outbox);
        let autonomy = Arc::clone(&ctx.autonomy);
        async move {
            let r = read_loop(&mut inbound, &tx, &journal, &executor, &outbox, &autonomy).await;
            done.cancel();
            r
        }
    };
    let writer = write_loop(ctx, &tx, welcome.acked_event_seq, heartbeat, &session_done);
    tokio::select! {
        r = reader => r,
        r = writer => r,
        () = shutdown.cancelled() => Ok(()),
    }
}

async fn read_loop(
    inbound: &mut tonic::Streaming<v1::ControllerMessage>,
    tx: &mpsc::Sender<v1::AgentMessage>,
    journal: &Journal,
    executor: &Arc<Executor>,
    outbox: &Notify,
    autonomy: &crate::autonomy::Autonomy,
) -> Result<(), SessionError> {
    while let Some(msg) = inbound.message().await.map_err(SessionError::Stream)? {
        match msg.msg {
            Some(CtrlMsg::EventAck(ack)) => {
                // A journal that cannot be written keeps acknowledged events a while longer;
                // the next acknowledgement covers them. Not a reason to drop the session.
                if let Err(e) = journal.ack(ack.up_to_seq) {
                    tracing::warn!(error = %e, "cannot prune acknowledged events from the journal");
                }
            }
            Some(CtrlMsg::Command(cmd)) => {
                let ack = handle_command(cmd, journal, executor);
                if tx
                    .send(v1::AgentMessage {
                        msg: Some(AgentMsg::CommandAck(ack)),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                outbox.notify_one();
            }
            Some(CtrlMsg::ScheduleSet(set)) => match autonomy.store_set(set) {
                Ok(version) => {
                    let ack = v1::ScheduleSetAck { version };
                    if tx
                        .send(v1::AgentMessage {
                            msg: Some(AgentMsg::ScheduleSetAck(ack)),
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                // Not acknowledged: the controller sends the set again with the next session.
                Err(e) => tracing::warn!(error = %e, "cannot store the schedule set"),
            },
            Some(CtrlMsg::Welcome(_)) | None => {}
        }
    }
    Ok(())
}

pub(crate) fn handle_command(
    cmd: v1::Command,
    journal: &Journal,
    executor: &Arc<Executor>,
) -> v1::CommandAck {
    let mut ack = v1::CommandAck {
        command_id: cmd.command_id.clone(),
        accepted: true,
        reason: String::new(),
        duplicate: false,
    };
    match cmd.kind {
        Some(v1::command::Kind::StartRun(start)) => {
            let steps =
                start.steps.len() + start.stages.iter().map(|s| s.steps.len()).sum::<usize>();
            if start.run_id.is_empty() || steps == 0 {
                ack.accepted = false;
                ack.reason = "StartRun needs a run_id and at least one step".into();
                return ack;
            }
            // Only what this engine has, whatever the controller asks (checked before journaling).
            if let Err(reason) = crate::inventory::check_start_run(&start, &executor.inventory()) {
                tracing::warn!(run_id = %start.run_id, %reason, "run refused");
                ack.accepted = false;
                ack.reason = reason;
                return ack;
            }
            // A run whose events could not be recorded must not start.
            if let Some(problem) = executor.journal_problem() {
                tracing::warn!(run_id = %start.run_id, %problem, "run refused");
                ack.accepted = false;
                ack.reason = problem;
                return ack;
            }
            // Journal first: once this returns New, the run id can never start again.
            match journal.accept_run(&start) {
                Ok(Accept::New) => {
                    tracing::info!(run_id = %start.run_id, trace_id = crate::telemetry::trace_id_of(&start.traceparent).unwrap_or_default(), steps = start.steps.len(), "run accepted");
                    executor.start(start);
                }
                Ok(Accept::Duplicate) => {
                    tracing::info!(run_id = %start.run_id, trace_id = crate::telemetry::trace_id_of(&start.traceparent).unwrap_or_default(), "run already accepted; not executing again");
                    ack.duplicate = true;
                }
                Err(e) => {
                    ack.accepted = false;
                    ack.reason = format!("cannot journal the run: {e}");
                }
            }
        }
        Some(v1::command::Kind::CancelRun(c)) => {
            if !executor.cancel(&c.run_id) {
                ack.accepted = false;
                ack.reason = format!("run {} is not executing on this agent", c.run_id);
            }
        }
        None => {
            ack.accepted = false;
            ack.reason = "empty command (newer controller?)".into();
        }
    }
    ack
}

async fn write_loop(
    ctx: &SessionContext,
    tx: &mpsc::Sender<v1::AgentMessage>,
    mut sent: u64,
    heartbeat: Duration,
    done: &CancellationToken,
) -> Result<(), SessionError> {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pending = crate::telemetry::PendingCache::new();
    // When each run the engine executes without us was first seen, by (MA, run number).
    let mut engine_runs_seen: HashMap<(String, u64), prost_types::Timestamp> = HashMap::new();
    // The last list read, sent again when the engine is unhealthy or too slow to answer.
    let mut engine_runs_last: Vec<v1::EngineRun> = Vec::new();
    loop {
        // Replay / stream everything not yet sent on this session, in seq order.
        loop {
            let batch = ctx.journal.events_after(sent, 256)?;
            if batch.is_empty() {
                break;
            }
            for ev in batch {
                let seq = ev.seq;
                if tx
                    .send(v1::AgentMessage {
                        msg: Some(AgentMsg::Event(ev)),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                sent = seq;
            }
        }
        tokio::select! {
            () = ctx.outbox.notified() => {}
            _ = tick.tick() => {
                let health = ctx.executor.health().await;
                // The heartbeat must not wait on a frozen engine: its status is read only
                // while it is healthy, and for at most ENGINE_RUNS_WAIT.
                if health.healthy
                    && let Ok(running) =
                        tokio::time::timeout(ENGINE_RUNS_WAIT, ctx.executor.foreign_runs()).await
                {
                    engine_runs_last = engine_runs_now(
                        running,
                        &mut engine_runs_seen,
                        syncfleet_proto::time::now(),
                    );
                }
                let engine_runs = engine_runs_last.clone();
                let hk = ctx.housekeeping.status();
                let hb = v1::Heartbeat {
                    engine_runs,
                    sent_at: Some(syncfleet_proto::time::now()),
                    engine_healthy: health.healthy,
                    engine_detail: health.detail,
                    runs_in_flight: ctx.executor.runs_in_flight(),
                    pending: pending.snapshot(&ctx.engine),
                    agent_problem: ctx.executor.journal_problem().unwrap_or_default(),
                    runs_cleared_before: hk.cleared_before.map(syncfleet_proto::time::to_proto),
                    clear_runs_total: hk.total,
                    clear_runs_problem: hk.problem,
                    change_sources: ctx.changes.statuses(),
                };
                if tx.send(v1::AgentMessage { msg: Some(AgentMsg::Heartbeat(hb)) }).await.is_err() {
                    return Ok(());
                }
            }
            () = done.cancelled() => return Ok(()),
        }
    }
}

/// How long a heartbeat waits for the engine's MA statuses (runs it did not start) before it
/// goes out with the list read last.
const ENGINE_RUNS_WAIT: Duration = Duration::from_secs(5);

/// The heartbeat's `engine_runs` from the MAs' runs in progress that this process did not
/// start; `seen` keeps when each was first seen (entries of runs no longer running are dropped).
fn engine_runs_now(
    now_running: Vec<(String, String, u64, String)>,
    seen: &mut HashMap<(String, u64), prost_types::Timestamp>,
    now: prost_types::Timestamp,
) -> Vec<v1::EngineRun> {
    let keys: Vec<(String, u64)> = now_running
        .iter()
        .map(|(ma, _, n, _)| (ma.clone(), *n))
        .collect();
    seen.retain(|k, _| keys.contains(k));
    now_running
        .into_iter()
        .map(|(ma, profile, run_number, origin)| {
            let since = *seen.entry((ma.clone(), run_number)).or_insert(now);
            v1::EngineRun {
                ma,
                profile,
                run_number,
                origin,
                seen_since: Some(since),
            }
        })
        .collect()
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod engine_runs_tests {
    use super::*;
    use syncfleet_proto::time::from_millis;

    #[test]
    fn engine_runs_keep_when_first_seen_and_forget_ended_ones() {
        let mut seen = HashMap::new();
        let full_sync = || {
            (
                "AD".to_string(),
                "Full Sync".to_string(),
                12,
                "outside syncfleet".to_string(),
            )
        };
        let first = engine_runs_now(vec![full_sync()], &mut seen, from_millis(1_000));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].ma, "AD");
        assert_eq!(first[0].run_number, 12);
        assert_eq!(first[0].seen_since, Some(from_millis(1_000)));
        let again = engine_runs_now(vec![full_sync()], &mut seen, from_millis(6_000));
        assert_eq!(again[0].seen_since, Some(from_millis(1_000)));
        assert!(engine_runs_now(Vec::new(), &mut seen, from_millis(9_000)).is_empty());
        assert!(seen.is_empty());
        // The same MA's next run is a new one.
        let mut next = full_sync();
        next.2 = 13;
        let later = engine_runs_now(vec![next], &mut seen, from_millis(12_000));
        assert_eq!(later[0].seen_since, Some(from_millis(12_000)));
    }
}

#[cfg(test)]
mod controller_choice_tests {
    use super::*;

    #[test]
    fn a_followers_pointer_is_tried_once_then_the_list_goes_on() {
        let mut t = Targets::new(vec!["https://a:1".into(), "https://b:1".into()]);
        assert_eq!(t.current(), "https://a:1");
        t.advance();
        assert_eq!(t.current(), "https://b:1");
        t.redirect("https://c:1".into());
        assert_eq!(t.current(), "https://c:1");
        t.advance();
        assert_eq!(t.current(), "https://b:1");
        t.advance();
        assert_eq!(t.current(), "https://a:1");
    }

    #[test]
    fn only_unavailable_with_an_https_leader_is_a_pointer() {
        let mut s = tonic::Status::unavailable("follower");
        assert_eq!(leader_pointer(&s), None);
        s.metadata_mut()
            .insert(LEADER_METADATA, "https://lead:7443".parse().unwrap());
        assert_eq!(leader_pointer(&s).as_deref(), Some("https://lead:7443"));
        let mut other = tonic::Status::permission_denied("no");
        other
            .metadata_mut()
            .insert(LEADER_METADATA, "https://lead:7443".parse().unwrap());
        assert_eq!(leader_pointer(&other), None);
    }
}

#[cfg(test)]
mod outage_tests {
    use super::*;
    use crate::event_ids::{EventId, capture};

    #[test]
    fn a_long_outage_is_reported_once_as_controller_unreachable() {
        let (events, _guard) = capture::start();
        let start = tokio::time::Instant::now();
        let urls = vec![
            "https://ctl-a:7443".to_string(),
            "https://ctl-b:7443".to_string(),
        ];
        let mut outage = Outage::new(start);
        outage.check(start + Duration::from_secs(299), &urls);
        assert!(events.with_id(EventId::ControllerUnreachable).is_empty());
        outage.check(start + Duration::from_secs(301), &urls);
        outage.check(start + Duration::from_secs(900), &urls);
        let seen = events.with_id(EventId::ControllerUnreachable);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].level, tracing::Level::ERROR);
        assert!(seen[0].message.contains("for 5m 1s"), "{}", seen[0].message);
        // A new outage (after a session was open) is reported again.
        let mut outage = Outage::new(start + Duration::from_secs(1000));
        outage.check(start + Duration::from_secs(1400), &urls);
        assert_eq!(events.with_id(EventId::ControllerUnreachable).len(), 2);
    }
}

#[cfg(test)]
mod change_source_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use syncfleet_proto::v1;
    use tokio::sync::{Notify, mpsc};
    use tokio_util::sync::CancellationToken;

    use super::{AgentMsg, SessionContext, write_loop};
    use crate::engine::SyncEngine;
    use crate::engine::sim::SimConfig;
    use crate::executor::ExecutorOptions;
    use crate::executor::testkit::build;

    /// A schedule set stored from the controller starts its change sources' pollers, and the
    /// next heartbeat carries their status (here a source whose server refuses connections).
    #[tokio::test]
    async fn a_stored_schedule_sets_sources_are_polled_and_reported_in_heartbeats() {
        let (h, sim) = build(SimConfig::example(0), ExecutorOptions::default()).await;
        let engine: Arc<dyn SyncEngine> = sim;
        let outbox = Arc::new(Notify::new());
        let autonomy = crate::autonomy::Autonomy::open(
            "sync-01",
            Duration::ZERO,
            syncfleet_proto::schedule_model::Clock::System,
            Arc::clone(&h.journal),
            Arc::clone(&h.exec),
            Arc::clone(&outbox),
        )
        .unwrap();
        let changes = crate::change::Watcher::new(
            Arc::clone(&h.journal),
            Arc::clone(&outbox),
            Default::default(),
        );
        let shutdown = CancellationToken::new();
        let watcher_task =
            tokio::spawn(Arc::clone(&changes).run(autonomy.subscribe_set(), shutdown.clone()));
        // A loopback port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let doc = serde_json::json!({
            "name": "hr-sync",
            "sequence": "quick",
            "targets": {"agents": ["sync-01"]},
            "trigger": {"on_change": {"sources": [{
                "name": "hr",
                "poll": "1h",
                "http": {"url": format!("http://127.0.0.1:{port}/watermark"), "pointer": "/v"},
            }]}},
        });
        autonomy
            .store_set(v1::ScheduleSet {
                version: 3,
                schedules: vec![v1::AgentSchedule {
                    schedule_json: doc.to_string(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap();
        let ctx = SessionContext {
            cfg: crate::AgentConfig::default(),
            live: Default::default(),
            engine: Arc::clone(&engine),
            journal: Arc::clone(&h.journal),
            executor: Arc::clone(&h.exec),
            outbox,
            autonomy,
            housekeeping: crate::housekeeping::Housekeeping::new(
                engine,
                Arc::clone(&h.journal),
                None,
                Duration::from_secs(3600),
            ),
            changes,
            gate: Default::default(),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let done = CancellationToken::new();
        let writer = write_loop(&ctx, &tx, 0, Duration::from_millis(50), &done);
        let reader = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no heartbeat with the source's failed poll"
                );
                let Some(v1::AgentMessage {
                    msg: Some(AgentMsg::Heartbeat(hb)),
                }) = rx.recv().await
                else {
                    continue;
                };
                if let Some(s) = hb.change_sources.first()
                    && s.consecutive_errors > 0
                {
                    done.cancel();
                    return hb.change_sources;
                }
            }
        };
        let (w, sources) = tokio::join!(writer, reader);
        w.unwrap();
        assert_eq!(sources.len(), 1);
        let s = &sources[0];
        assert_eq!(
            (s.schedule.as_str(), s.source.as_str(), s.kind.as_str()),
            ("hr-sync", "hr", "http")
        );
        assert!(
            s.target.contains(&format!("127.0.0.1:{port}")),
            "{}",
            s.target
        );
        assert!(s.error.contains("GET http://127.0.0.1"), "{}", s.error);
        assert!(s.error_since.is_some() && s.last_poll.is_some());
        shutdown.cancel();
        watcher_task.await.unwrap();
    }
}
