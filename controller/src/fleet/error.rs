//! Why a fleet operation was refused or failed. Each message is what the caller sees (the API
//! maps a variant to its gRPC code in `api/status.rs`), so it names the problem and the way out.

use syncfleet_proto::v1;

use super::RunBlocked;
use crate::limits::echo;
use crate::store::StoreError;

/// A refused or failed fleet operation.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The controller store failed (or, for listings, the page token is not one it issued).
    #[error(transparent)]
    Store(#[from] StoreError),

    /// An ad-hoc run request without steps.
    #[error("a run needs at least one step (MA and run profile)")]
    NoStepsRequested,

    /// A run (scheduled, manual or continuation) without steps.
    #[error("a run needs at least one step")]
    NoSteps,

    /// A run for an agent that never enrolled; `known` lists the agents that did.
    #[error(
        "no agent named {name:?}; known agents: {}",
        if .known.is_empty() { "none yet".to_string() } else { .known.join(", ") }
    )]
    UnknownAgent { name: String, known: Vec<String> },

    /// A drain of an agent that never enrolled.
    #[error("no agent named {}", echo(.0))]
    NoSuchAgent(String),

    /// A run for an agent revoked since, which has not enrolled again.
    #[error(
        "agent {agent} was revoked{}; it takes no runs until it enrols again with a new token ('syncfleet tokens create --agent {agent}', then 'syncfleet-agent enroll' on the server)",
        revocation_details(.revocation)
    )]
    Revoked {
        agent: String,
        revocation: v1::Pause,
    },

    /// The fleet is paused, the schedule paused or the agent draining.
    #[error("{0}")]
    Blocked(RunBlocked),

    /// No stored run has this (full) id.
    #[error("no run with id {0:?}")]
    NoSuchRun(String),

    /// Approval of a run that is not held.
    #[error(
        "run {id} is {}, not held; only held runs can be approved",
        .state.label()
    )]
    NotHeld { id: String, state: v1::RunState },

    /// Approval of a held run that was approved before.
    #[error("run {id} was already approved by {by}; its continuation is run {continuation}")]
    AlreadyApproved {
        id: String,
        by: String,
        continuation: String,
    },

    /// Approval or rejection of a held run that was rejected before.
    #[error(
        "run {id} was already rejected by {by} at {at}: {note}; the decision is final (start a new run if the change turns out to be expected)"
    )]
    AlreadyRejected {
        id: String,
        by: String,
        at: String,
        note: String,
    },

    /// Rejection of a held run that was approved before: its continuation already exists.
    #[error(
        "run {id} was already approved by {by} at {at}; its continuation is run {continuation}, so it can no longer be rejected (cancel the continuation if it still runs)"
    )]
    ApprovedBeforeReject {
        id: String,
        by: String,
        at: String,
        continuation: String,
    },

    /// Rejection of a run that is not held.
    #[error(
        "run {id} is {}, not held; only held runs can be rejected",
        .state.label()
    )]
    NotHeldToReject { id: String, state: v1::RunState },

    /// Rejection without a note.
    #[error("a rejection needs a note saying why: pass --note TEXT")]
    RejectNeedsNote,

    /// Cancellation of a run that has ended.
    #[error("run {id} already ended ({}); nothing to cancel", .state.label())]
    AlreadyEnded { id: String, state: v1::RunState },

    /// A pending run left `pending` while it was being cancelled.
    #[error("the run changed state meanwhile; try again")]
    ChangedMeanwhile,

    /// A step names a management agent missing from the agent's last inventory.
    #[error(
        "agent {agent} has no management agent {ma:?}; its MAs are: {}",
        .known.join(", ")
    )]
    UnknownMa {
        agent: String,
        ma: String,
        known: Vec<String>,
    },

    /// A step names a run profile its management agent does not have.
    #[error(
        "management agent {ma:?} on {agent} has no run profile {profile:?}; its run profiles are: {}",
        .known.join(", ")
    )]
    UnknownProfile {
        agent: String,
        ma: String,
        profile: String,
        known: Vec<String>,
    },

    /// A manual run of a sequence that is not stored.
    #[error("no sequence named {}; see 'syncfleet get sequences'", echo(.0))]
    NoSuchSequence(String),

    /// A stored sequence document that no longer parses.
    #[error("stored sequence {0} is unreadable")]
    UnreadableSequence(String),

    /// Pausing the fleet needs a reason, shown to everyone the pause refuses.
    #[error("say why the fleet is paused: pass --note TEXT")]
    PauseWithoutNote,

    /// A session stream whose first message is not `Hello`.
    #[error("the first message of a session must be Hello")]
    NoHello,

    /// A `Hello` naming another agent than the caller's certificate.
    #[error("certificate identifies agent {certificate:?} but Hello claims {claimed:?}")]
    NameMismatch {
        certificate: String,
        claimed: String,
    },

    /// The controller closed the agent's session (it was revoked); the reason says why.
    #[error("{0}")]
    SessionClosed(String),

    /// A label selector that does not parse.
    #[error("bad label selector: {0}")]
    BadSelector(String),

    /// A fan-out whose selection matched no agent.
    #[error("{} matches no agent; see 'syncfleet agents list'", echo(.0))]
    NothingSelected(String),

    /// A fan-out selecting more agents than one call may start.
    #[error(
        "the selection has {count} agents; one call starts runs on at most {max}: split it (e.g. by label selector)"
    )]
    TooManyAgents { count: usize, max: usize },

    /// A fan-out that names no selection, or more than one.
    #[error("select the agents in exactly one way: agent names, a label selector, or all ({0})")]
    Selection(String),

    /// A run request with both steps and a sequence, or neither.
    #[error("{0}")]
    PlanChoice(&'static str),

    /// An agent refused by an earlier call with the same idempotency key; the reason is the
    /// one given then.
    #[error("{0}")]
    Refused(String),

    /// The agent's events could not be stored: the session ends without acknowledging them,
    /// and the agent replays them after reconnecting.
    #[error("controller store error; reconnect later")]
    EventsNotStored,
}

/// " at <time> by <who> (<note>)", each part only when known.
fn revocation_details(r: &v1::Pause) -> String {
    let mut out = String::new();
    if let Some(at) = &r.at {
        out.push_str(&format!(" at {}", syncfleet_proto::time::rfc3339(at)));
    }
    if !r.by.is_empty() {
        out.push_str(&format!(" by {}", r.by));
    }
    if !r.note.is_empty() {
        out.push_str(&format!(" ({})", r.note));
    }
    out
}
