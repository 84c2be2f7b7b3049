//! The controller's half of an agent's session stream (`AgentService.Session`), once the
//! caller's certificate has named an agent: independent of the gRPC handler, so it takes any
//! stream of agent messages and returns the stream of controller messages.
//!
//! The protocol:
//! 1. A revoked agent is refused, and so is a first message that is not `Hello` or a `Hello`
//!    naming another agent than the certificate; refusals are audited.
//! 2. The session is registered (replacing an older one of the same agent), `Welcome` is sent
//!    with the highest event seq already stored, and every run owed to the agent is (re)sent.
//! 3. Incoming messages are read in batches (what is already buffered, up to
//!    [`MAX_EVENT_BATCH`]): heartbeats and command acknowledgements are handled at once, the
//!    batch's events are stored in one transaction, and only then acknowledged with a
//!    cumulative `EventAck`. Events that cannot be stored are not acknowledged: the session is
//!    closed and the agent replays them after reconnecting.
//! 4. When the stream ends or fails, the session is unregistered (unless a newer one replaced
//!    it).

use std::ops::ControlFlow;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use syncfleet_proto::v1::{
    self, agent_message::Msg as AgentMsg, controller_message::Msg as CtrlMsg,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Fleet, SessionTx};
use crate::auth::{PeerIdentity, Security};

/// Most events applied and stored in one transaction.
pub const MAX_EVENT_BATCH: usize = 1000;

/// Messages queued for the agent before the session applies back-pressure.
const OUTBOUND_QUEUE: usize = 1024;

/// The controller's side of a session, as the gRPC handler returns it.
pub type Outbound = ReceiverStream<Result<v1::ControllerMessage, Status>>;

/// Open the session of agent `id` (already authenticated by its client certificate) from
/// `peer` over `inbound`, and serve it on a task of its own until `inbound` ends.
///
/// Fails, before anything is registered, when the agent was revoked (its status from
/// [`Security::check_revoked`]), with `INVALID_ARGUMENT` when the first message is not `Hello`,
/// and with `PERMISSION_DENIED` when `Hello` names another agent than the certificate.
pub async fn open<S>(
    fleet: &Arc<Fleet>,
    security: &Security,
    id: &PeerIdentity,
    peer: &str,
    mut inbound: S,
) -> Result<Outbound, Status>
where
    S: Stream<Item = Result<v1::AgentMessage, Status>> + Send + Unpin + 'static,
{
    if let Err(status) = security.check_revoked(id).await {
        security
            .audit(
                &id.to_string(),
                "Session",
                &format!("agent/{}", id.name),
                "denied",
                status.message(),
                "",
                peer,
            )
            .await;
        return Err(status);
    }
    let mut hello = match inbound.next().await.transpose()? {
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
        let msg = format!(
            "certificate identifies agent {:?} but Hello claims {:?}",
            id.name, hello.name
        );
        security
            .audit(
                &id.to_string(),
                "Session",
                &format!("agent/{}", hello.name),
                "denied",
                &msg,
                "",
                peer,
            )
            .await;
        return Err(Status::permission_denied(msg));
    }
    // Labels assigned by the enrollment token win over the agent's own.
    for (k, v) in security.assigned_labels(&id.name).await {
        hello.labels.insert(k, v);
    }
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (welcome, session_id, stored_seq) = fleet.on_connect(&hello, tx.clone()).await?;
    // The channel is fresh and its receiver is returned below: this cannot fail.
    let _ = tx
        .send(Ok(v1::ControllerMessage {
            msg: Some(CtrlMsg::Welcome(welcome)),
        }))
        .await;
    let session = OpenSession {
        fleet: Arc::clone(fleet),
        agent: hello.name,
        session_id,
        stored_seq,
        tx,
    };
    tokio::spawn(session.serve(inbound));
    Ok(ReceiverStream::new(rx))
}

/// A registered session being served.
struct OpenSession {
    fleet: Arc<Fleet>,
    agent: String,
    session_id: u64,
    /// The highest event seq of the agent stored so far; events at or below it are replays.
    stored_seq: u64,
    tx: SessionTx,
}

impl OpenSession {
    /// Send what the agent is owed, then handle its messages batch by batch until the stream
    /// ends, fails, or its events cannot be stored; then unregister the session.
    async fn serve<S>(mut self, mut inbound: S)
    where
        S: Stream<Item = Result<v1::AgentMessage, Status>> + Unpin,
    {
        self.fleet.dispatch_for_agent(&self.agent).await;
        while let Some(batch) = next_batch(&mut inbound).await {
            if self.handle(batch).await.is_break() {
                break;
            }
        }
        self.fleet.on_disconnect(&self.agent, self.session_id).await;
    }

    /// Handle one batch of messages: heartbeats and acknowledgements in order, then the
    /// batch's events stored together and acknowledged. Breaks when the session must end.
    async fn handle(&mut self, msgs: Vec<Result<v1::AgentMessage, Status>>) -> ControlFlow<()> {
        let fleet = &self.fleet;
        let name = &self.agent;
        let mut events = Vec::new();
        let mut failed = None;
        for m in msgs {
            match m {
                Ok(v1::AgentMessage { msg: Some(msg) }) => match msg {
                    AgentMsg::Event(ev) => events.push(ev),
                    AgentMsg::Heartbeat(hb) => fleet.touch(name, Some(&hb)),
                    AgentMsg::CommandAck(ack) => {
                        if !ack.accepted {
                            fleet.command_refused(name, &ack).await;
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
        fleet.touch(name, None);
        if !events.is_empty() {
            match fleet.apply_events(name, events, self.stored_seq).await {
                Ok(seq) => {
                    self.stored_seq = seq;
                    // Acks are cumulative: if the queue is full a later one covers this.
                    let _ = self.tx.try_send(Ok(v1::ControllerMessage {
                        msg: Some(CtrlMsg::EventAck(v1::EventAck { up_to_seq: seq })),
                    }));
                }
                Err(e) => {
                    // Not acknowledged: the agent keeps the events and replays them.
                    tracing::error!(agent = %name, error = %e, "cannot store agent events; closing the session");
                    let _ = self
                        .tx
                        .send(Err(Status::unavailable(
                            "controller store error; reconnect later",
                        )))
                        .await;
                    return ControlFlow::Break(());
                }
            }
        }
        if let Some(status) = failed {
            tracing::info!(agent = %name, status = %status.message(), "session stream ended");
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Wait for the next message, then take what is already buffered behind it (up to
/// [`MAX_EVENT_BATCH`]) so that a burst of events is stored in one transaction. `None` when the
/// stream has ended.
async fn next_batch<S>(inbound: &mut S) -> Option<Vec<Result<v1::AgentMessage, Status>>>
where
    S: Stream<Item = Result<v1::AgentMessage, Status>> + Unpin,
{
    let first = inbound.next().await?;
    let mut msgs = vec![first];
    while msgs.len() < MAX_EVENT_BATCH {
        match inbound.next().now_or_never() {
            Some(Some(m)) => msgs.push(m),
            _ => break,
        }
    }
    Some(msgs)
}
