//! Fleet documents (shared by the controller and the agents, which fire schedules on their own
//! while no controller is reachable): the declarative `Sequence` and `Schedule` kinds of fleet files, applied with
//! `syncfleet apply -f` and read back unchanged with `syncfleet get`. These types are the single definition used by the YAML loader, the store
//! (canonical JSON), `syncfleet get`, the scheduler and the agent plan.
//!
//! Field names and forms follow the fleet file format:
//!
//! ```yaml
//! kind: Sequence
//! name: delta-cycle
//! stages:
//!   - steps: [{ma: AD, profile: Delta Import}, {ma: HR, profile: Delta Import}]
//!   - steps: [{ma: AD, profile: Export, only_if: pending_exports, guard: {max_pending_deletes: 500}}]
//! on_failure: stop
//! ---
//! kind: Schedule
//! name: delta-every-5m
//! sequence: delta-cycle
//! targets: {selector: "env=prod"}
//! trigger: {every: 5m, phase: 30s}
//! overlap: skip
//! catchup_window: 10m
//! jitter: 10s
//! blackout: [{cron: "0 22 * * 6", duration: 4h}]
//! ```

use std::time::Duration;

use crate::echo::echo;
use crate::v1;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where the scheduler reads the time. `Tokio` follows tokio's clock (paused in tests) from a
/// fixed wall-clock origin; `System` is the real wall clock.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Tokio {
        wall: DateTime<Utc>,
        mono: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock following tokio time from now.
    pub fn tokio_from(wall: DateTime<Utc>) -> Self {
        Clock::Tokio {
            wall,
            mono: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall, mono } => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(*mono);
                *wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
            }
        }
    }

    /// Time left until `t` (zero when past).
    pub fn until(&self, t: DateTime<Utc>) -> Duration {
        (t - self.now()).to_std().unwrap_or(Duration::ZERO)
    }
}

/// Deterministic run id of a scheduled fire: the same (schedule, agent, nominal time) always
/// gives the same id.
pub fn run_id_for(schedule: &str, agent: &str, nominal: DateTime<Utc>) -> String {
    let key = format!("{schedule}\u{0}{agent}\u{0}{}", nominal.timestamp_millis());
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes()).to_string()
}

/// What a failed step does to the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Stop,
    Continue,
}

/// When a step runs at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The MA has staged changes (pending imports), from the engine or earlier steps.
    StagedChanges,
    /// The MA has pending exports.
    PendingExports,
    /// An earlier step of this run exported something on the MA (confirming import).
    Exported,
}

/// A limit: a count of objects (`500`) or a percentage of the MA's connectors (`"2%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Count(u64),
    Percent(f64),
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Count(n) => s.serialize_u64(*n),
            Limit::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Limit::Count(n)),
            Raw::Text(t) => parse_limit(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Parse `"500"` or `"2%"` / `"2.5 %"`.
pub fn parse_limit(t: &str) -> Result<Limit, String> {
    let t = t.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("{} is not a percentage; write e.g. \"2%\"", echo(t)))?;
        if !(v.is_finite() && v > 0.0 && v <= 100.0) {
            return Err(format!(
                "{} must be a percentage above 0 and at most 100",
                echo(t)
            ));
        }
        Ok(Limit::Percent(v))
    } else {
        t.parse::<u64>().map(Limit::Count).map_err(|_| {
            format!(
                "{} is neither a count (500) nor a percentage (\"2%\")",
                echo(t)
            )
        })
    }
}

impl Limit {
    pub fn to_proto(self) -> v1::Limit {
        v1::Limit {
            kind: Some(match self {
                Limit::Count(n) => v1::limit::Kind::Count(n),
                Limit::Percent(p) => v1::limit::Kind::Percent(p),
            }),
        }
    }
}

/// Guard rails of a step: limits on the MA's pending counters, checked by the agent just before
/// the step runs (a step holds when a counter is above its limit). Each is a count or a
/// percentage of the MA's connectors (`NumTotalConnectors`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Maximum pending export deletes (`NumExportDelete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_deletes: Option<Limit>,
    /// Maximum staged deletes (`NumImportDelete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staged_deletes: Option<Limit>,
    /// Maximum staged adds (`NumImportAdd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staged_adds: Option<Limit>,
    /// Maximum staged updates (`NumImportUpdate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staged_updates: Option<Limit>,
    /// Maximum staged renames. The engine has no pending-rename counter, so this limits the
    /// renames that earlier steps of the same run staged on the MA (their `stage-rename`
    /// counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staged_renames: Option<Limit>,
    /// Maximum pending export adds (`NumExportAdd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_adds: Option<Limit>,
    /// Maximum pending export updates (`NumExportUpdate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_updates: Option<Limit>,
}

impl Guard {
    /// The field names, in the order fleet files and tables show them.
    pub const FIELDS: [&'static str; 7] = [
        "max_pending_deletes",
        "max_staged_deletes",
        "max_staged_adds",
        "max_staged_updates",
        "max_staged_renames",
        "max_pending_adds",
        "max_pending_updates",
    ];

    /// Every limit with its field name, in [`Guard::FIELDS`] order.
    pub fn limits(&self) -> [(&'static str, Option<Limit>); 7] {
        let [a, b, c, d, e, f, g] = Self::FIELDS;
        [
            (a, self.max_pending_deletes),
            (b, self.max_staged_deletes),
            (c, self.max_staged_adds),
            (d, self.max_staged_updates),
            (e, self.max_staged_renames),
            (f, self.max_pending_adds),
            (g, self.max_pending_updates),
        ]
    }

    /// The agent's form.
    pub fn to_proto(self) -> v1::Guard {
        v1::Guard {
            max_pending_deletes: self.max_pending_deletes.map(Limit::to_proto),
            max_staged_deletes: self.max_staged_deletes.map(Limit::to_proto),
            max_staged_adds: self.max_staged_adds.map(Limit::to_proto),
            max_staged_updates: self.max_staged_updates.map(Limit::to_proto),
            max_staged_renames: self.max_staged_renames.map(Limit::to_proto),
            max_pending_adds: self.max_pending_adds.map(Limit::to_proto),
            max_pending_updates: self.max_pending_updates.map(Limit::to_proto),
        }
    }
}

impl v1::Guard {
    /// Every limit with its field name, in [`Guard::FIELDS`] order (unset ones `None`).
    pub fn limits(&self) -> [(&'static str, Option<&v1::Limit>); 7] {
        let [a, b, c, d, e, f, g] = Guard::FIELDS;
        [
            (a, self.max_pending_deletes.as_ref()),
            (b, self.max_staged_deletes.as_ref()),
            (c, self.max_staged_adds.as_ref()),
            (d, self.max_staged_updates.as_ref()),
            (e, self.max_staged_renames.as_ref()),
            (f, self.max_pending_adds.as_ref()),
            (g, self.max_pending_updates.as_ref()),
        ]
    }
}

/// One step of a sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDoc {
    pub ma: String,
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_if: Option<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

/// Steps that may run in parallel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDoc {
    pub steps: Vec<StepDoc>,
}

/// `kind: Sequence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceDoc {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub stages: Vec<StageDoc>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// Which agents a schedule runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Agent names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Label selector: comma-separated `key=value` (all must match), e.g. `env=prod,role=primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// When a schedule fires: a list of cron expressions in a time zone, or an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TriggerDoc {
    /// Cron expressions: 5 fields (minute precision) or 6 (with seconds first). One string or a
    /// list; the schedule fires at the earliest match of any.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub cron: Vec<String>,
    /// IANA time zone of the cron expressions and blackout windows (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Fixed interval, aligned to the Unix epoch plus `phase`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub every: Option<Duration>,
    /// Offset of interval fire times from the epoch-aligned grid.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub phase: Option<Duration>,
    /// Run when a connected system changes, as the target agents detect it. With `cron` or
    /// `every` as well, those fire as usual: a fallback ("at least every 6 h") for changes a
    /// source cannot see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_change: Option<OnChangeDoc>,
}

/// `trigger.on_change`: change detection on the target agents. Each agent polls the sources
/// next to it with its own credentials and reports what changed; the controller decides when to
/// run (after `quiet_for` without changes, at least `min_interval` after the previous run), so a
/// storm of changes gives one run that says how many it coalesced.
///
/// ```yaml
/// trigger:
///   every: 6h                      # fallback: at least every 6 h
///   on_change:
///     quiet_for: 10s
///     min_interval: 1m
///     sources:
///       - name: people
///         poll: 5s
///         ldap:
///           url: ldaps://dc01.corp.example:636
///           base: OU=People,DC=corp,DC=example
///           object_classes: [user]
///           credential: corp-ldap         # [credentials.corp-ldap] in the agent's config
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnChangeDoc {
    /// What is watched; at least one, names unique within the schedule.
    pub sources: Vec<ChangeSourceDoc>,
    /// A run starts only once no change was seen for this long (default 10 s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub quiet_for: Option<Duration>,
    /// At least this long between the starts of two change-triggered runs on one agent
    /// (default 1 min).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub min_interval: Option<Duration>,
}

impl OnChangeDoc {
    /// Default of `quiet_for`.
    pub const QUIET_FOR: Duration = Duration::from_secs(10);
    /// Default of `min_interval`.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

    pub fn quiet_for(&self) -> Duration {
        self.quiet_for.unwrap_or(Self::QUIET_FOR)
    }

    pub fn min_interval(&self) -> Duration {
        self.min_interval.unwrap_or(Self::MIN_INTERVAL)
    }
}

/// One watched system; exactly one of `ldap`, `sql` and `http`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSourceDoc {
    /// Name within the schedule (letters, digits, `-`, `_`, `.`), shown by `schedules show`.
    pub name: String,
    /// How often the agent asks the source (default 5 s for LDAP, 30 s for SQL and HTTP).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub poll: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapSourceDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlSourceDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSourceDoc>,
}

impl ChangeSourceDoc {
    /// The poll interval, with the default of the source's kind.
    pub fn poll(&self) -> Duration {
        self.poll.unwrap_or(if self.ldap.is_some() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(30)
        })
    }

    /// `ldap`, `sql` or `http` (the first given), for messages and metrics.
    pub fn kind(&self) -> &'static str {
        if self.ldap.is_some() {
            "ldap"
        } else if self.sql.is_some() {
            "sql"
        } else {
            "http"
        }
    }
}

/// Attributes whose changes never trigger a run unless a source says otherwise: they change on
/// every logon or failed password and would start a sync for nothing.
pub const DEFAULT_IGNORED_ATTRIBUTES: &[&str] = &[
    "lastLogon",
    "lastLogonTimestamp",
    "lastLogoff",
    "logonCount",
    "badPwdCount",
    "badPasswordTime",
    "msDS-LastSuccessfulInteractiveLogonTime",
    "msDS-LastFailedInteractiveLogonTime",
    "msDS-FailedInteractiveLogonCount",
    "msDS-FailedInteractiveLogonCountAtLastSuccessfulLogon",
    "pwdFailureTime",
    "authTimestamp",
    // Operational attributes that move with any write, watched or not.
    "uSNChanged",
    "whenChanged",
    "modifyTimestamp",
    "entryCSN",
    "modifiersName",
    "dSCorePropagationData",
    "replPropertyMetaData",
];

/// Scope of an LDAP search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LdapScope {
    /// The base entry only.
    Base,
    /// Its direct children.
    One,
    /// The whole subtree (default).
    #[default]
    Sub,
}

/// How the agent finds changed entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStamp {
    /// `usn` on Active Directory and AD LDS (the root DSE has `highestCommittedUSN`),
    /// `modify_timestamp` elsewhere.
    #[default]
    Auto,
    /// `uSNChanged` (Active Directory, AD LDS): exact, per domain controller.
    Usn,
    /// `modifyTimestamp` (any LDAPv3 directory; one-second resolution, so the last second is
    /// read again and repeated entries are recognised by their content).
    ModifyTimestamp,
}

/// `ldap` source: entries under `base` of the given classes, compared by the attributes that
/// are not ignored. Adds, deletes and renames count as changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSourceDoc {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_tls: Option<bool>,
    /// Where to look, e.g. `OU=People,DC=corp,DC=example`.
    pub base: String,
    #[serde(default)]
    pub scope: LdapScope,
    /// Only entries of these object classes (any of them; all entries when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_classes: Vec<String>,
    /// An extra LDAP filter ANDed with the object classes, e.g. `(!(isCriticalSystemObject=TRUE))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Attributes whose changes are ignored, in addition to [`DEFAULT_IGNORED_ATTRIBUTES`]
    /// (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_attributes: Vec<String>,
    /// Attributes of the defaults that should count after all (e.g. `logonCount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch_attributes: Vec<String>,
    #[serde(default)]
    pub change_stamp: ChangeStamp,
    /// A credential of the agent's configuration (`[credentials.NAME]`): bind DN and password
    /// file, or a client certificate for SASL EXTERNAL. Anonymous when left out. Secrets never
    /// leave the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Database of an `sql` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlDriver {
    Postgres,
    SqlServer,
}

/// `sql` source: a query returning one value, the watermark (`SELECT max(updated_at) FROM
/// person`); a change is the watermark moving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceDoc {
    pub driver: SqlDriver,
    /// Connection without secrets: a `postgres://user@host/db` URL or key-value string, or an
    /// ADO.NET string for SQL Server (`Server=tcp:db01,1433;Database=HR;...`). Without a
    /// credential SQL Server uses the agent's own Windows account.
    pub connection: String,
    /// Returns one row with one column (text, number or timestamp).
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `http` source: a URL answering JSON, and a JSON pointer (RFC 6901) to the watermark in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceDoc {
    /// `https://` (or `http://` on loopback).
    pub url: String,
    /// e.g. `/lastModified` or `/value/0/changeNumber`.
    pub pointer: String,
    /// Bearer token or basic credentials from the agent's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}

/// A window in which the schedule does not fire (patching, backups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackoutDoc {
    /// Start of each window (cron, in the schedule's time zone).
    pub cron: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// What to do when a fire time comes while the previous run on that agent still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip this fire time (counted as `skipped_overlap`).
    #[default]
    Skip,
    /// Keep one pending fire time, start it when the running run ends; later ones are dropped
    /// (counted as `buffer_dropped`).
    BufferOne,
    /// Stop the running run through the engine, then start.
    CancelOther,
}

/// `kind: Schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDoc {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub sequence: String,
    pub targets: Targets,
    pub trigger: TriggerDoc,
    #[serde(default)]
    pub overlap: Overlap,
    /// After controller downtime, at most one catch-up run for a fire time missed within this
    /// window; 0 = never catch up.
    #[serde(default, with = "humantime_serde")]
    pub catchup_window: Option<Duration>,
    /// Random delay added to each fire time, bounded by the gap to the next fire time.
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackout: Vec<BlackoutDoc>,
    /// No fire times before this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    /// No fire times after this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<DateTime<Utc>>,
    /// Whether the target agents fire this schedule themselves while no controller is
    /// reachable (default true). `false` for schedules that must only run under a
    /// controller's eye: a pause or drain issued during an outage cannot reach a cut-off agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autonomy: Option<bool>,
}

/// `kind: Notifier`: who hears about problems of the fleet, and through which transport. Read
/// by the controller's notifier (`controller/src/notify/`); agents never see it.
///
/// ```yaml
/// kind: Notifier
/// name: ops-teams
/// on: [held, failed, agent_lost, engine_unhealthy, schedule_saturated]
/// targets: {selector: "env=prod"}      # agents whose problems count (all when left out)
/// schedules: [delta-every-5m]         # runs and saturation of these schedules only
/// resolved: true                      # also say when a problem cleared
/// webhook: {url: "https://example.webhook.office.com/...", timeout: 10s}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierDoc {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The kinds of problem that are sent; at least one.
    pub on: Vec<NotifyOn>,
    /// Agents whose problems are sent: every agent when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targets>,
    /// Schedules whose runs and saturation are sent: runs of any schedule (and manual runs)
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<String>,
    /// Also send a message when a problem clears (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<bool>,
    /// HTTP POST of a JSON body; exactly one of `webhook` and `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDoc>,
    /// SMTP e-mail; exactly one of `webhook` and `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailDoc>,
}

/// A kind of problem a notifier sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// A run stopped before a step whose guard rail tripped, waiting for an approval.
    Held,
    /// A run ended failed, completed with errors, or with an unknown outcome.
    Failed,
    /// An agent without a session for longer than `agent_lost_after`.
    AgentLost,
    /// An agent's engine did not answer its health probe.
    EngineUnhealthy,
    /// A schedule whose runs take longer than its interval allows.
    ScheduleSaturated,
}

impl NotifyOn {
    /// The name used in fleet files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Held => "held",
            NotifyOn::Failed => "failed",
            NotifyOn::AgentLost => "agent_lost",
            NotifyOn::EngineUnhealthy => "engine_unhealthy",
            NotifyOn::ScheduleSaturated => "schedule_saturated",
        }
    }
}

/// A notifier's webhook: `POST url` with a JSON body (`text` for Slack and Teams incoming
/// webhooks, plus structured fields for generic receivers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDoc {
    /// `https://` (or `http://` for a receiver on a trusted network).
    pub url: String,
    /// PEM file of the CA certificates that sign the receiver's certificate, instead of the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Limit of one delivery attempt (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// A notifier's e-mail transport. The password is never in the document: `password_env` names
/// the controller's environment variable holding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailDoc {
    /// SMTP server host name (also the name its certificate must carry).
    pub server: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    pub from: String,
    pub to: Vec<String>,
    /// SMTP AUTH user; needs `password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable of the controller that holds the SMTP password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// PEM file of the CA certificates that sign the server's certificate, instead of the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Limit of one delivery attempt (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (submission, port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or a trusted network.
    None,
}

/// Any fleet document.
// Documents are few and short-lived; boxing the larger variant would only add noise to every
// match on them.
#[allow(
    clippy::large_enum_variant,
    reason = "documents are few and short-lived; boxing would add noise to every match"
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Document {
    Sequence(SequenceDoc),
    Schedule(ScheduleDoc),
    Notifier(NotifierDoc),
}

impl Document {
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Sequence(_) => "Sequence",
            Document::Schedule(_) => "Schedule",
            Document::Notifier(_) => "Notifier",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Document::Sequence(s) => &s.name,
            Document::Schedule(s) => &s.name,
            Document::Notifier(n) => &n.name,
        }
    }
}

impl SequenceDoc {
    /// The agent plan of this sequence.
    pub fn plan(&self) -> Vec<v1::PlanStage> {
        self.stages
            .iter()
            .map(|st| v1::PlanStage {
                steps: st
                    .steps
                    .iter()
                    .map(|s| v1::PlanStep {
                        ma: s.ma.clone(),
                        profile: s.profile.clone(),
                        only_if: match s.only_if {
                            None => v1::Condition::Always,
                            Some(Condition::StagedChanges) => v1::Condition::StagedChanges,
                            Some(Condition::PendingExports) => v1::Condition::PendingExports,
                            Some(Condition::Exported) => v1::Condition::Exported,
                        } as i32,
                        guard: s.guard.map(Guard::to_proto),
                    })
                    .collect(),
            })
            .collect()
    }

    pub fn on_failure_proto(&self) -> v1::OnFailure {
        match self.on_failure {
            OnFailure::Stop => v1::OnFailure::Stop,
            OnFailure::Continue => v1::OnFailure::Continue,
        }
    }
}

impl Targets {
    /// Parsed selector pairs; `Err` names the malformed part.
    pub fn selector_pairs(&self) -> Result<Vec<(String, String)>, String> {
        let Some(sel) = &self.selector else {
            return Ok(Vec::new());
        };
        sel.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("selector part {} must look like key=value", echo(p)))
            })
            .collect()
    }

    /// Whether an agent with this name and labels is targeted.
    pub fn matches(&self, name: &str, labels: &std::collections::HashMap<String, String>) -> bool {
        if self.agents.iter().any(|a| a == name) {
            return true;
        }
        match self.selector_pairs() {
            Ok(pairs) if !pairs.is_empty() => pairs
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_counts_and_percentages() {
        assert_eq!(parse_limit("500"), Ok(Limit::Count(500)));
        assert_eq!(parse_limit("2%"), Ok(Limit::Percent(2.0)));
        assert!(parse_limit("2x").is_err());
        assert!(parse_limit("0%").is_err());
        let g: Guard =
            serde_json::from_str(r#"{"max_pending_deletes": "2%", "max_staged_deletes": 10}"#)
                .unwrap();
        assert_eq!(g.max_pending_deletes, Some(Limit::Percent(2.0)));
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"max_pending_deletes":"2%","max_staged_deletes":10}"#
        );
    }

    #[test]
    fn guards_on_adds_updates_and_renames_parse_and_reach_the_plan() {
        let g: Guard = serde_json::from_str(
            r#"{"max_staged_adds": 100, "max_staged_updates": "5%", "max_staged_renames": 0,
                "max_pending_adds": "0.5%", "max_pending_updates": 2000}"#,
        )
        .unwrap();
        assert_eq!(g.max_staged_adds, Some(Limit::Count(100)));
        assert_eq!(g.max_staged_updates, Some(Limit::Percent(5.0)));
        assert_eq!(g.max_staged_renames, Some(Limit::Count(0)));
        assert_eq!(g.max_pending_adds, Some(Limit::Percent(0.5)));
        assert_eq!(g.max_pending_updates, Some(Limit::Count(2000)));
        assert_eq!(g.max_pending_deletes, None);
        // Written back in the same form, unset limits left out.
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"max_staged_adds":100,"max_staged_updates":"5%","max_staged_renames":0,"max_pending_adds":"0.5%","max_pending_updates":2000}"#
        );
        let p = g.to_proto();
        let names: Vec<&str> = p
            .limits()
            .iter()
            .filter(|(_, l)| l.is_some())
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            names,
            [
                "max_staged_adds",
                "max_staged_updates",
                "max_staged_renames",
                "max_pending_adds",
                "max_pending_updates"
            ]
        );
        assert_eq!(
            p.max_staged_updates.unwrap().kind,
            Some(v1::limit::Kind::Percent(5.0))
        );
        // A misspelt limit is refused, not ignored.
        let e = serde_json::from_str::<Guard>(r#"{"max_staged_add": 1}"#).unwrap_err();
        assert!(
            e.to_string().contains("unknown field `max_staged_add`"),
            "{e}"
        );
    }

    #[test]
    fn selector_matches_all_pairs() {
        let t = Targets {
            agents: vec![],
            selector: Some("env=prod, role=primary".into()),
        };
        let mut labels = std::collections::HashMap::new();
        labels.insert("env".to_string(), "prod".to_string());
        assert!(!t.matches("a", &labels));
        labels.insert("role".to_string(), "primary".to_string());
        assert!(t.matches("a", &labels));
    }
}
