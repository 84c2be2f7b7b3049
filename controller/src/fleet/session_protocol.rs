//! The controller's half of an agent's session stream (`AgentService.Session`), once the
//! caller's certificate has named an agent that is not revoked: independent of the gRPC
//! handler, so it takes any stream of agent messages (whatever its transport's error type) and
//! returns the stream of controller messages, failing with [`FleetError`]s that the API maps to
//! status codes. What it needs from the security layer above it (the audit log, the labels an
//! enrollment token assigned) it asks through [`SessionAuthority`].
//!
//! The protocol:
//! 1. A first message that is not `Hello` is refused, and so is a `Hello` naming another agent
//!    than the certificate; that refusal is audited.
//! 2. The session is registered (replacing an older one of the same agent), `Welcome` is sent
//!    with the highest event seq already stored, and every run owed to the agent is (re)sent.
//! 3. Incoming messages are read in batches (what is already buffered, up to
//!    [`MAX_EVENT_BATCH`]): heartbeats and command acknowledgements are handled at once, the
//!    batch's events are stored in one transaction, and only then acknowledged with a
//!    cumulative `EventAck`. Events that cannot be stored are not acknowledged: the session is
//!    closed and the agent replays them after reconnecting.
//! 4. When the stream ends or fails, the session is unregistered (unless a newer one replaced
//!    it).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use syncfleet_proto::v1::{
    self, agent_message::Msg as AgentMsg, controller_message::Msg as CtrlMsg,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Fleet, FleetError, SessionTx};

/// Most events applied and stored in one transaction.
pub const MAX_EVENT_BATCH: usize = 1000;

/// Messages queued for the agent before the session applies back-pressure.
const OUTBOUND_QUEUE: usize = 1024;

/// The controller's side of a session: controller messages, or the error that ends it.
pub type Outbound = ReceiverStream<Result<v1::ControllerMessage, FleetError>>;

/// The agent at the other end of a session, as its client certificate identifies it.
#[derive(Debug, Clone, Copy)]
pub struct AgentPeer<'a> {
    /// The agent name in the certificate.
    pub name: &'a str,
    /// The certificate's identity as the audit log records callers (`agent/<name>`).
    pub who: &'a str,
    /// The caller's network address, for the audit log.
    pub address: &'a str,
}

/// What a session needs from the controller's security layer, which sits above the fleet and
/// implements this.
pub trait SessionAuthority: Send + Sync {
    /// Record in the audit log that `peer`'s `Session` call on `target` was denied because of
    /// `detail`. Never fails: an audit log that cannot be written is the implementor's to report.
    fn audit_denied(
        &self,
        peer: AgentPeer<'_>,
        target: &str,
        detail: &str,
    ) -> impl Future<Output = ()> + Send;

    /// The labels the enrollment token assigned to `agent`; they win over the agent's own.
    fn assigned_labels(&self, agent: &str)
    -> impl Future<Output = BTreeMap<String, String>> + Send;
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError<E> {
    /// The agent's stream failed before its first message; the transport's own error.
    #[error("{0}")]
    Inbound(E),
    /// The session was refused (see [`open`]) or could not be registered.
    #[error(transparent)]
    Refused(#[from] FleetError),
}

/// Open the session of the agent `peer` (authenticated by its client certificate, not revoked)
/// over `inbound`, and serve it on a task of its own until `inbound` ends.
///
/// Fails, before anything is registered, with [`FleetError::NoHello`] when the first message is
/// not `Hello`, and with [`FleetError::NameMismatch`] (audited) when `Hello` names another agent
/// than the certificate.
pub async fn open<S, E>(
    fleet: &Arc<Fleet>,
    authority: &impl SessionAuthority,
    peer: AgentPeer<'_>,
    mut inbound: S,
) -> Result<Outbound, OpenError<E>>
where
    S: Stream<Item = Result<v1::AgentMessage, E>> + Send + Unpin + 'static,
    E: Display + Send + 'static,
{
    let mut hello = match inbound
        .next()
        .await
        .transpose()
        .map_err(OpenError::Inbound)?
    {
        Some(v1::AgentMessage {
            msg: Some(AgentMsg::Hello(h)),
        }) => h,
        _ => return Err(FleetError::NoHello.into()),
    };
    if hello.name != peer.name {
        tracing::warn!(claimed = %hello.name, certificate = %peer.who, "agent claimed another name");
        let target = format!("agent/{}", hello.name);
        let refused = FleetError::NameMismatch {
            certificate: peer.name.to_string(),
            claimed: hello.name,
        };
        authority
            .audit_denied(peer, &target, &refused.to_string())
            .await;
        return Err(refused.into());
    }
    // Labels assigned by the enrollment token win over the agent's own.
    for (k, v) in authority.assigned_labels(peer.name).await {
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
    // The session's writes carry the opener's leader epoch (crate::store::fence).
    tokio::spawn(crate::store::fence::inherit(session.serve(inbound)));
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
    async fn serve<S, E>(mut self, mut inbound: S)
    where
        S: Stream<Item = Result<v1::AgentMessage, E>> + Unpin,
        E: Display,
    {
        self.fleet.dispatch_for_agent(&self.agent).await;
        // After the Welcome: the scheduler sends the agent its schedule set.
        self.fleet.announce_connected(&self.agent);
        while let Some(batch) = next_batch(&mut inbound).await {
            if self.handle(batch).await.is_break() {
                break;
            }
        }
        self.fleet.on_disconnect(&self.agent, self.session_id).await;
    }

    /// Handle one batch of messages: heartbeats and acknowledgements in order, then the
    /// batch's events stored together and acknowledged. Breaks when the session must end.
    async fn handle<E: Display>(
        &mut self,
        msgs: Vec<Result<v1::AgentMessage, E>>,
    ) -> ControlFlow<()> {
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
                    AgentMsg::ScheduleSetAck(ack) => {
                        fleet.schedule_set_acked(name, ack.version);
                    }
                    AgentMsg::Hello(_) => {
                        tracing::warn!(agent = %name, "duplicate Hello ignored");
                    }
                },
                Ok(v1::AgentMessage { msg: None }) => {}
                Err(e) => {
                    failed = Some(e);
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
                    let _ = self.tx.send(Err(FleetError::EventsNotStored)).await;
                    return ControlFlow::Break(());
                }
            }
        }
        if let Some(e) = failed {
            tracing::info!(agent = %name, status = %e, "session stream ended");
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Wait for the next message, then take what is already buffered behind it (up to
/// [`MAX_EVENT_BATCH`]) so that a burst of events is stored in one transaction. `None` when the
/// stream has ended.
async fn next_batch<S, E>(inbound: &mut S) -> Option<Vec<Result<v1::AgentMessage, E>>>
where
    S: Stream<Item = Result<v1::AgentMessage, E>> + Unpin,
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use futures::stream;

    use super::*;
    use crate::fleet::fixtures::fleet;

    /// Records what the session asked of the security layer.
    #[derive(Default)]
    struct Recorder {
        /// (who, target, detail, address) of each audited refusal.
        denied: Mutex<Vec<(String, String, String, String)>>,
        labels: BTreeMap<String, String>,
    }

    impl SessionAuthority for Recorder {
        async fn audit_denied(&self, peer: AgentPeer<'_>, target: &str, detail: &str) {
            self.denied.lock().unwrap().push((
                peer.who.to_string(),
                target.to_string(),
                detail.to_string(),
                peer.address.to_string(),
            ));
        }

        async fn assigned_labels(&self, _agent: &str) -> BTreeMap<String, String> {
            self.labels.clone()
        }
    }

    const PEER: AgentPeer<'static> = AgentPeer {
        name: "a",
        who: "agent/a",
        address: "127.0.0.1:5000",
    };

    fn hello(name: &str) -> v1::AgentMessage {
        v1::AgentMessage {
            msg: Some(AgentMsg::Hello(v1::Hello {
                name: name.into(),
                labels: [("site".to_string(), "own".to_string())].into(),
                ..Default::default()
            })),
        }
    }

    fn event(seq: u64) -> v1::AgentMessage {
        v1::AgentMessage {
            msg: Some(AgentMsg::Event(v1::AgentEvent {
                seq,
                run_id: "unknown".into(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn a_hello_naming_another_agent_is_refused_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, _) = fleet(dir.path()).await;
        let authority = Recorder::default();
        let inbound = stream::iter([Ok::<_, Infallible>(hello("b"))]);
        let Err(OpenError::Refused(refused)) = open(&fleet, &authority, PEER, inbound).await else {
            panic!("a Hello naming another agent must be refused");
        };
        assert!(
            matches!(&refused, FleetError::NameMismatch { certificate, claimed } if certificate == "a" && claimed == "b"),
            "{refused:?}"
        );
        let message = "certificate identifies agent \"a\" but Hello claims \"b\"";
        assert_eq!(refused.to_string(), message);
        assert_eq!(
            *authority.denied.lock().unwrap(),
            [(
                "agent/a".to_string(),
                "agent/b".to_string(),
                message.to_string(),
                "127.0.0.1:5000".to_string()
            )]
        );
        assert!(!fleet.is_connected("a") && !fleet.is_connected("b"));
    }

    #[tokio::test]
    async fn a_session_must_start_with_hello_and_a_failed_stream_keeps_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, _) = fleet(dir.path()).await;
        let authority = Recorder::default();
        let inbound = stream::iter([Ok::<_, Infallible>(event(1))]);
        let refused = open(&fleet, &authority, PEER, inbound).await.err();
        assert!(
            matches!(refused, Some(OpenError::Refused(FleetError::NoHello))),
            "{refused:?}"
        );
        let inbound = stream::iter([Err::<v1::AgentMessage, _>("connection reset".to_string())]);
        let failed = open(&fleet, &authority, PEER, inbound).await.err();
        assert!(
            matches!(&failed, Some(OpenError::Inbound(e)) if e == "connection reset"),
            "{failed:?}"
        );
        assert!(authority.denied.lock().unwrap().is_empty());
        assert!(!fleet.is_connected("a"));
    }

    #[tokio::test]
    async fn buffered_events_are_stored_together_and_acknowledged_once() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = fleet(dir.path()).await;
        let authority = Recorder {
            labels: [("site".to_string(), "assigned".to_string())].into(),
            ..Default::default()
        };
        let inbound =
            stream::iter([hello("a"), event(1), event(2), event(3)].map(Ok::<_, Infallible>));
        let outbound = open(&fleet, &authority, PEER, inbound).await.unwrap();
        let sent: Vec<CtrlMsg> = outbound.map(|m| m.unwrap().msg.unwrap()).collect().await;
        assert!(
            matches!(
                sent.as_slice(),
                [
                    CtrlMsg::Welcome(_),
                    CtrlMsg::EventAck(v1::EventAck { up_to_seq: 3 })
                ]
            ),
            "{sent:?}"
        );
        let stored = store.get_agent("a").await.unwrap().unwrap();
        assert_eq!(stored.last_event_seq, 3);
        assert_eq!(stored.agent.labels["site"], "assigned");
        assert!(
            !fleet.is_connected("a"),
            "the session ended with its stream"
        );
    }
}
