//! Keys of the store's key-value state ([`super::Store::get_state`] and friends), built here and
//! only here so that their layout is written down once.
//!
//! Keys are `/`-separated paths; the first segment says what the record is. Schedule names
//! contain no `/`, so a schedule's prefix (e.g. [`buffered_prefix`]) never matches the keys of
//! another schedule whose name merely starts with the same letters.

/// The fleet-wide maintenance pause (a `Pause`).
pub const FLEET_PAUSE: &str = "pause/fleet";

/// Prefix of every schedule's buffered fire times.
pub const BUFFERED_ALL: &str = "buffered/";

/// The key `/readyz` reads to check that the store answers; nothing is stored under it.
pub const READYZ_PROBE: &str = "readyz";

/// A schedule's pause record (a `Pause`, kept after a resume to say who resumed it and when).
pub fn schedule_pause(schedule: &str) -> String {
    format!("pause/schedule/{schedule}")
}

/// A schedule's cursor: every fire time up to it is accounted for.
pub fn cursor(schedule: &str) -> String {
    format!("cursor/{schedule}")
}

/// A schedule's catch-up decided at a start and not yet evaluated.
pub fn catchup(schedule: &str) -> String {
    format!("catchup/{schedule}")
}

/// Prefix of a schedule's buffered fire times, one key per agent ([`buffered`]).
pub fn buffered_prefix(schedule: &str) -> String {
    format!("{BUFFERED_ALL}{schedule}/")
}

/// The fire time buffered for `schedule` on `agent` (overlap policy `buffer_one`).
pub fn buffered(schedule: &str, agent: &str) -> String {
    format!("{}{agent}", buffered_prefix(schedule))
}

/// Prefix of every change record ([`changes`]).
pub const CHANGES_ALL: &str = "changes/";

/// The changes agent `agent` reported for `schedule` and no run has taken yet (a
/// `PendingChanges`, JSON), with the schedule's last change-triggered run on the agent.
pub fn changes(schedule: &str, agent: &str) -> String {
    format!("{CHANGES_ALL}{schedule}/{agent}")
}

/// The schedule and agent of a [`changes`] key.
pub fn changes_of(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(CHANGES_ALL)?.split_once('/')
}

/// An enrollment token's record.
pub fn token(id: &str) -> String {
    format!("token/{id}")
}

/// An agent's revocation record (a `Pause`: `at` = when revoked, `paused` = not enrolled again
/// since).
pub fn revoked(agent: &str) -> String {
    format!("revoked/{agent}")
}

/// An operator's revocation record (a `Pause`: `at` = when revoked; every certificate of that
/// name issued until then is refused).
pub fn operator_revoked(operator: &str) -> String {
    format!("revoked-operator/{operator}")
}

/// Prefix of every operator's revocation record ([`operator_revoked`]).
pub fn operator_revoked_prefix() -> String {
    operator_revoked("")
}

/// The record of one operator certificate the controller issued (an `OperatorCertificate`),
/// keyed by name and serial so that listing one operator's certificates is a prefix read.
pub fn operator_cert(operator: &str, serial: &str) -> String {
    format!("{}{operator}/{serial}", operator_certs_prefix())
}

/// Prefix of every operator certificate record ([`operator_cert`]).
pub fn operator_certs_prefix() -> String {
    "operator-cert/".to_string()
}

/// The labels an enrollment token assigned to an agent.
pub fn labels(agent: &str) -> String {
    format!("labels/{agent}")
}

/// Prefix of every agent's revocation record ([`revoked`]), to read them all at once.
pub fn revoked_prefix() -> String {
    revoked("")
}

/// The runs a `StartRuns` call with idempotency key `key` from caller `who` created (so a
/// retried call returns them instead of starting new ones).
pub fn start_runs_idempotency(who: &str, key: &str) -> String {
    format!("idempotency/start-runs/{who}/{key}")
}

/// Prefix of all notifiers' records.
pub const NOTIFIERS_ALL: &str = "notify/";

/// Prefix of every notifier's records ([`notifier_status`], [`notifier_problem`]).
pub fn notifier_prefix(notifier: &str) -> String {
    format!("notify/{notifier}/")
}

/// A notifier's delivery counts and last error (JSON, `notify::records`).
pub fn notifier_status(notifier: &str) -> String {
    format!("notify/{notifier}/status")
}

/// Prefix of the problems a notifier knows about.
pub fn notifier_problems(notifier: &str) -> String {
    format!("notify/{notifier}/problem/")
}

/// One problem a notifier knows about (JSON, `notify::records`): deduplication, so a problem
/// is sent once until it clears, also across controller restarts. `problem` is
/// `kind/subject` (`held/<run id>`).
pub fn notifier_problem(notifier: &str, problem: &str) -> String {
    format!("notify/{notifier}/problem/{problem}")
}

/// Prefix of every web console sign-in link's record ([`console_login`]).
pub const CONSOLE_LOGINS_ALL: &str = "console-login/";

/// A web console sign-in link's record (JSON, `console::login`), by the SHA-256 (hex) of its
/// secret: the secret itself is never stored.
pub fn console_login(hash: &str) -> String {
    format!("{CONSOLE_LOGINS_ALL}{hash}")
}

/// Prefix of every web console session's record ([`console_session`]).
pub const CONSOLE_SESSIONS_ALL: &str = "console-session/";

/// A web console session's record (JSON, `console::session`), by the SHA-256 (hex) of the
/// session cookie's value.
pub fn console_session(hash: &str) -> String {
    format!("{CONSOLE_SESSIONS_ALL}{hash}")
}
