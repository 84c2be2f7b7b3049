//! The controller's durable state behind one trait, so the embedded default can be replaced by
//! another engine without touching the fleet logic.
//!
//! [`sqlite::SqliteStore`] is the embedded default (bundled SQLite in WAL mode). Records are kept
//! as their protobuf encoding next to the few columns queries filter on, so a field added to
//! the protocol is stored without a schema migration.
//!
//! The trait is synchronous: SQLite calls block, so async callers go through
//! [`blocking`], which runs them on tokio's blocking pool.

use std::sync::Arc;

use syncfleet_proto::v1;

pub mod keys;
pub mod sqlite;

/// Store failures. A store error on a request path becomes gRPC `INTERNAL`/`UNAVAILABLE`; it
/// never loses data already committed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error in {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store {path} {problem}; the controller does not start on it: restore controller.db from a backup, or move it aside (e.g. rename it to controller.db.damaged) to start with a new, empty store without its runs, schedules and audit log"
    )]
    Damaged { path: String, problem: String },
    #[error("stored record {what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("invalid page token; pass the next_page_token of the previous response unchanged")]
    BadPageToken,
    #[error("the store worker stopped: {0}")]
    Worker(String),
}

/// An agent as stored: its last known description plus the highest event seq stored for it.
#[derive(Debug, Clone)]
pub struct StoredAgent {
    pub agent: v1::Agent,
    pub last_event_seq: u64,
}

/// A stored fleet document (canonical JSON; see `crate::documents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    pub kind: String,
    pub name: String,
    pub json: String,
}

/// Filter and page of [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub agent: Option<String>,
    /// Only runs created by this schedule.
    pub schedule: Option<String>,
    pub states: Vec<v1::RunState>,
    /// Created at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Created before (Unix ms).
    pub until_ms: Option<i64>,
    /// 1..=1000.
    pub limit: usize,
    pub page_token: Option<String>,
}

/// One page of runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunPage {
    pub runs: Vec<v1::Run>,
    pub next_page_token: Option<String>,
}

/// Durable controller state.
pub trait Store: Send + Sync + 'static {
    fn get_agent(&self, name: &str) -> Result<Option<StoredAgent>, StoreError>;
    fn list_agents(&self) -> Result<Vec<v1::Agent>, StoreError>;
    /// Insert or replace an agent's description (its event seq is kept).
    fn put_agent(&self, agent: &v1::Agent) -> Result<(), StoreError>;

    /// Insert a new run. Returns false (and changes nothing) when the id exists already.
    fn insert_run(&self, run: &v1::Run) -> Result<bool, StoreError>;
    /// Replace runs (by id) in one transaction.
    fn put_runs(&self, runs: &[v1::Run]) -> Result<(), StoreError>;
    fn get_run(&self, id: &str) -> Result<Option<v1::Run>, StoreError>;
    /// Ids of runs that start with `prefix`, in id order, at most `limit` of them.
    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError>;
    fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError>;
    /// Every run in one of `states`, optionally of one agent, oldest first.
    fn runs_in_states(
        &self,
        agent: Option<&str>,
        states: &[v1::RunState],
    ) -> Result<Vec<v1::Run>, StoreError>;

    /// Durably record a batch of an agent's events together with the runs they changed, in one
    /// transaction, and advance the agent's stored event seq to the highest seq in `events`.
    /// Events whose seq is not above the stored seq must have been filtered out by the caller.
    fn commit_agent_events(
        &self,
        agent: &str,
        events: &[v1::AgentEvent],
        runs: &[v1::Run],
    ) -> Result<u64, StoreError>;

    /// Fleet documents of one kind (all kinds when `None`), by kind then name.
    fn list_documents(&self, kind: Option<&str>) -> Result<Vec<StoredDocument>, StoreError>;
    /// Upsert and delete documents in one transaction (an apply is all or nothing).
    fn write_documents(
        &self,
        upserts: &[StoredDocument],
        deletes: &[(String, String)],
    ) -> Result<(), StoreError>;

    /// Operational state records (pauses, drains, scheduler cursors), prost-encoded by the
    /// caller, keyed like `pause/fleet`, `pause/schedule/NAME`, `cursor/NAME`.
    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete_state_prefix(&self, prefix: &str) -> Result<(), StoreError>;

    /// State records whose key starts with `prefix`, by key.
    fn list_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Write (`Some`) or delete (`None`) state records and add to a schedule's counters in one
    /// transaction, so that a crash never leaves a fire time both kept and counted, or neither.
    fn commit_schedule_state(
        &self,
        schedule: &str,
        records: &[(String, Option<Vec<u8>>)],
        deltas: &[(&str, u64)],
    ) -> Result<(), StoreError>;

    /// Add to named counters of a schedule (e.g. `fired`, `skipped_overlap`).
    fn bump_counters(&self, schedule: &str, deltas: &[(&str, u64)]) -> Result<(), StoreError>;
    fn counters(&self, schedule: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// Append an audit entry (its `id` is assigned here); the log is never updated or pruned
    /// through this interface.
    fn append_audit(&self, entry: &v1::AuditEntry) -> Result<u64, StoreError>;
    /// Audit entries, newest first.
    fn list_audit(
        &self,
        since_ms: Option<i64>,
        who: Option<&str>,
        limit: usize,
    ) -> Result<Vec<v1::AuditEntry>, StoreError>;

    /// Atomically read-modify-write one state record: `f` gets the current value and returns
    /// the new one (`None` = unchanged) plus a result. Used where a check and its update must
    /// not race (consuming a one-time token).
    fn update_state(&self, key: &str, f: StateUpdate<'_>) -> Result<bool, StoreError>;
}

/// The read-modify-write function of [`Store::update_state`]: current value in, new value
/// (`None` = unchanged) and a result out.
pub type StateUpdate<'a> = &'a mut dyn FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, bool);

/// Run a store call on tokio's blocking pool.
pub async fn blocking<T, F>(store: &Arc<dyn Store>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
}
