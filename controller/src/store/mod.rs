//! The controller's durable state behind one trait, so the embedded default can be replaced by
//! another engine without touching the fleet logic.
//!
//! [`sqlite::SqliteStore`] is the embedded default (bundled SQLite in WAL mode);
//! [`postgres::PgStore`] keeps the same tables in a PostgreSQL database that several
//! controllers can share. Which one a controller uses is its `store` setting
//! ([`crate::config::StoreLocation`]). Records are kept as their protobuf encoding next to the
//! few columns queries filter on, so a field added to the protocol is stored without a schema
//! migration. Both implementations pass one conformance suite (`conformance`, tests only).
//!
//! Every state key is built in [`keys`], so a reader finds the whole key space in one file.

use syncfleet_proto::v1;

#[cfg(test)]
mod conformance;
pub mod expiring;
pub mod fence;
pub mod keys;
#[cfg(test)]
mod measure;
pub mod postgres;
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
    #[error(
        "invalid page token {token:?}; pass the next_page_token of the previous response unchanged, or no token for the first page"
    )]
    BadPageToken { token: String },
    #[error("the store worker stopped: {0}")]
    Worker(String),
    #[error(
        "invalid PostgreSQL store URL {url}: {problem}; use postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    PgUrl { url: String, problem: String },
    #[error(
        "cannot connect to the PostgreSQL store {url}: {detail}; check that PostgreSQL runs and accepts TCP connections at that host and port, that the user, password and database in the URL are right (the database must exist), and that pg_hba.conf admits this host"
    )]
    PgConnect { url: String, detail: String },
    #[error("database error in the PostgreSQL store {url}: {detail}")]
    Postgres { url: String, detail: String },
    #[error(
        "the PostgreSQL store {url} has schema version {found}, newer than this controller knows ({known}); a newer controller migrated it: run that version, or restore the database from a backup taken before the upgrade"
    )]
    PgSchemaTooNew { url: String, found: i32, known: i32 },
    #[error(
        "write refused: this controller's leader lease (epoch {mine}) was taken by another controller (epoch {current}); this controller steps down to follower"
    )]
    Fenced { mine: i64, current: i64 },
}

/// A stored protobuf record, or [`StoreError::Corrupt`] naming it.
pub(crate) fn decode<M: prost::Message + Default>(
    what: &str,
    body: &[u8],
) -> Result<M, StoreError> {
    M::decode(body).map_err(|e| StoreError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// The `created_at` column of a run (Unix ms; 0 when unset).
pub(crate) fn run_created_ms(run: &v1::Run) -> i64 {
    run.created_at
        .as_ref()
        .map(syncfleet_proto::time::to_millis)
        .unwrap_or(0)
}

/// The `state` column of a run (its state's label).
pub(crate) fn run_state_label(run: &v1::Run) -> &'static str {
    v1::RunState::try_from(run.state)
        .unwrap_or(v1::RunState::Unspecified)
        .label()
}

/// The page token after `run` in [`Store::list_runs`]: `<created ms>_<id>`.
pub(crate) fn page_token(created_ms: i64, id: &str) -> String {
    format!("{created_ms}_{id}")
}

/// `(created ms, id)` of a page token of [`page_token`], or [`StoreError::BadPageToken`].
pub(crate) fn parse_page_token(token: &str) -> Result<(i64, &str), StoreError> {
    let (ms, id) = token.split_once('_').ok_or_else(|| bad_page_token(token))?;
    let ms: i64 = ms.parse().map_err(|_| bad_page_token(token))?;
    Ok((ms, id))
}

/// [`StoreError::BadPageToken`] quoting (at most 80 characters of) the token.
fn bad_page_token(token: &str) -> StoreError {
    StoreError::BadPageToken {
        token: token.chars().take(80).collect(),
    }
}

/// The most agents or documents one page of [`Store::list_agents_page`] or
/// [`Store::list_documents_page`] holds.
pub const MAX_PAGE: usize = 1000;
/// The most entries one page of [`Store::list_audit_page`] holds (the audit log's `limit` of
/// clients older than paging allowed this many in one reply).
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// What a page token of a keyset listing continues after: the token names its listing so that
/// a token of another listing is refused rather than silently read as a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Agents,
    Documents,
    Audit,
}

impl Listing {
    fn prefix(self) -> &'static str {
        match self {
            Listing::Agents => "agent:",
            Listing::Documents => "document:",
            Listing::Audit => "audit:",
        }
    }

    /// The page token after the entry with `key` (an agent or document name, an audit id).
    pub fn token(self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }

    /// The key a token of [`Listing::token`] continues after, or
    /// [`StoreError::BadPageToken`] when `token` is not one of this listing's tokens.
    pub fn key(self, token: &str) -> Result<&str, StoreError> {
        match token.strip_prefix(self.prefix()) {
            Some(key) if !key.is_empty() && !key.chars().any(char::is_control) => Ok(key),
            _ => Err(bad_page_token(token)),
        }
    }

    /// The audit id a token continues after (entries with lower ids follow).
    pub fn audit_id(token: &str) -> Result<i64, StoreError> {
        Listing::Audit
            .key(token)?
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| bad_page_token(token))
    }
}

/// One page of a keyset listing ([`Store::list_agents_page`], [`Store::list_documents_page`],
/// [`Store::list_audit_page`]): at most the asked-for number of items, in the listing's order,
/// and the token of the next page (`None` on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` rows read in order: the extra row only tells that a next
    /// page exists, which then starts after the last kept item's key.
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Self {
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(key)
        } else {
            None
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}

/// About how many bytes one page of a listing reply holds at most (see [`Page::fit`]): half
/// of a gRPC client's default 4 MiB decode limit, leaving room for the envelope.
pub const PAGE_BYTES: usize = 2 * 1024 * 1024;

impl<T> Page<T> {
    /// The page with each item converted; the token is kept.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_page_token: self.next_page_token,
        }
    }

    /// Ends the page early once its items' `size` passes `budget` bytes (keeping at least one
    /// item), so that a reply built from it stays under a client's message size limit
    /// however large single items are; the next page then starts after the last item kept.
    pub fn fit(&mut self, budget: usize, size: impl Fn(&T) -> usize, key: impl Fn(&T) -> String) {
        let mut total = 0usize;
        for (i, item) in self.items.iter().enumerate() {
            total = total.saturating_add(size(item));
            if total > budget && i > 0 {
                self.items.truncate(i);
                self.next_page_token = self.items.last().map(key);
                return;
            }
        }
    }
}

/// Filter and page of [`Store::list_audit_page`].
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Entries at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Entries of this identity.
    pub who: Option<String>,
    /// 1..=[`MAX_AUDIT_PAGE`].
    pub limit: usize,
    pub page_token: Option<String>,
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

/// What [`Store::prune`] deletes: the three kinds of rows that grow without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PruneKind {
    /// Ended runs (with their steps) created before the cutoff. Runs that have not ended and
    /// runs `held` by a guard rail (they wait for an operator's decision) are never pruned.
    Runs,
    /// The agents' events as stored on arrival (`run_events`), by the agent's event time.
    /// Runs keep their own state; the events are the raw record of how they got there.
    Events,
    /// Audit entries, by their time.
    Audit,
}

impl PruneKind {
    /// Every kind, in the order the pruner visits them.
    pub const ALL: [PruneKind; 3] = [PruneKind::Runs, PruneKind::Events, PruneKind::Audit];

    /// The name used in settings (`retention.<name>`) and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            PruneKind::Runs => "runs",
            PruneKind::Events => "events",
            PruneKind::Audit => "audit",
        }
    }
}

/// The run states whose runs [`Store::prune`] may delete: ended, and not waiting for an
/// operator (`held` is left alone).
pub(crate) const PRUNABLE_RUN_STATES: [v1::RunState; 6] = [
    v1::RunState::Succeeded,
    v1::RunState::CompletedWithErrors,
    v1::RunState::Failed,
    v1::RunState::Skipped,
    v1::RunState::Cancelled,
    v1::RunState::Unknown,
];

/// One agent's share of [`Store::commit_event_batches`]: its new events, the runs they
/// changed, and what else the events decided (change records, schedule counters), committed
/// with them so that an acknowledged event has had all of its effect.
#[derive(Debug, Clone, Default)]
pub struct EventBatch {
    pub agent: String,
    pub events: Vec<v1::AgentEvent>,
    pub runs: Vec<v1::Run>,
    /// State records written (upserted) in the same transaction.
    pub states: Vec<(String, Vec<u8>)>,
    /// `(schedule, counter, by)` added to schedule counters in the same transaction.
    pub counters: Vec<(String, String, u64)>,
}

/// What the function of [`Store::update_state`] decided: `Ok(new value)` is written, `Err(why)`
/// leaves the record as it was and is handed back to the caller.
pub type StateDecision = Result<Vec<u8>, String>;

/// The read-modify-write function of [`Store::update_state`]: the current value in, the
/// decision out. It runs inside the store's write transaction, so it must not block on
/// anything but computation.
pub type StateUpdate = Box<dyn FnOnce(Option<&[u8]>) -> StateDecision + Send + 'static>;

/// Durable controller state.
///
/// The trait is async so that an implementation decides how calls reach its database: the
/// embedded SQLite store queues writes to its writer thread, which commits many callers'
/// writes together, and runs reads on tokio's blocking pool; PostgreSQL awaits its client.
/// Whatever the implementation, a write returns `Ok` only once it is durably committed. Writes that belong together have batch forms ([`Store::insert_runs`],
/// [`Store::commit_event_batches`]) so that one fire time's runs, or many agents' events, cost
/// one transaction rather than one each.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get_agent(&self, name: &str) -> Result<Option<StoredAgent>, StoreError>;
    /// Every agent, by name. For the controller's own fleet-wide work (scheduler, sweeper,
    /// metrics); an operator's listing goes through [`Store::list_agents_page`].
    async fn list_agents(&self) -> Result<Vec<v1::Agent>, StoreError>;
    /// At most `limit` (1..=[`MAX_PAGE`]) agents by name, after the agent a token of
    /// [`Listing::Agents`] names (from the first when `None`). The query itself is bounded
    /// (`name > after ORDER BY name LIMIT n`), so a page costs the same at any fleet size.
    async fn list_agents_page(
        &self,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<v1::Agent>, StoreError>;
    /// Insert or replace an agent's description (its event seq is kept).
    async fn put_agent(&self, agent: &v1::Agent) -> Result<(), StoreError>;

    /// Insert new runs in one transaction. For each run, in order: false (and nothing changed
    /// for it) when a run with its id exists already.
    async fn insert_runs(&self, runs: &[v1::Run]) -> Result<Vec<bool>, StoreError>;
    /// Insert one new run. Returns false (and changes nothing) when the id exists already.
    async fn insert_run(&self, run: &v1::Run) -> Result<bool, StoreError> {
        Ok(self
            .insert_runs(std::slice::from_ref(run))
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
    /// Replace runs (by id) in one transaction.
    async fn put_runs(&self, runs: &[v1::Run]) -> Result<(), StoreError>;
    async fn get_run(&self, id: &str) -> Result<Option<v1::Run>, StoreError>;
    /// Ids of runs that start with `prefix`, in id order, at most `limit` of them.
    async fn run_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError>;
    /// Every run in one of `states`, optionally of one agent, oldest first.
    async fn runs_in_states(
        &self,
        agent: Option<&str>,
        states: &[v1::RunState],
    ) -> Result<Vec<v1::Run>, StoreError>;

    /// Durably record batches of agents' events together with the runs they changed, all in
    /// one transaction, and advance each agent's stored event seq to the highest seq of its
    /// events. Returns each batch's new stored seq, in order. Events whose seq is not above
    /// the stored seq must have been filtered out by the caller.
    async fn commit_event_batches(&self, batches: &[EventBatch]) -> Result<Vec<u64>, StoreError>;
    /// [`Store::commit_event_batches`] for one agent.
    async fn commit_agent_events(
        &self,
        agent: &str,
        events: &[v1::AgentEvent],
        runs: &[v1::Run],
    ) -> Result<u64, StoreError> {
        let batch = EventBatch {
            agent: agent.to_string(),
            events: events.to_vec(),
            runs: runs.to_vec(),
            ..EventBatch::default()
        };
        Ok(self
            .commit_event_batches(std::slice::from_ref(&batch))
            .await?
            .first()
            .copied()
            .unwrap_or(0))
    }

    /// Fleet documents of one kind (all kinds when `None`), by kind then name.
    async fn list_documents(&self, kind: Option<&str>) -> Result<Vec<StoredDocument>, StoreError>;
    /// At most `limit` (1..=[`MAX_PAGE`]) documents of `kind` by name, after the document a
    /// token of [`Listing::Documents`] names (from the first when `None`).
    async fn list_documents_page(
        &self,
        kind: &str,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<StoredDocument>, StoreError>;
    /// Upsert and delete documents in one transaction (an apply is all or nothing).
    async fn write_documents(
        &self,
        upserts: &[StoredDocument],
        deletes: &[(String, String)],
    ) -> Result<(), StoreError>;

    /// Operational state records (pauses, drains, scheduler cursors), encoded by the caller,
    /// under the keys of [`keys`].
    async fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    async fn delete_state_prefix(&self, prefix: &str) -> Result<(), StoreError>;

    /// State records whose key starts with `prefix`, by key.
    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Write (`Some`) or delete (`None`) state records, delete every record under
    /// `delete_prefix` (when given), and add to a schedule's counters, in one transaction, so
    /// that a crash never leaves a fire time both kept and counted, or neither.
    async fn commit_schedule_state(
        &self,
        schedule: &str,
        records: &[(String, Option<Vec<u8>>)],
        deltas: &[(&str, u64)],
        delete_prefix: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Add to named counters of a schedule (e.g. `fired`, `skipped_overlap`).
    async fn bump_counters(&self, schedule: &str, deltas: &[(&str, u64)])
    -> Result<(), StoreError>;
    async fn counters(&self, schedule: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// Append an audit entry (its `id` is assigned here); the log is never updated through
    /// this interface, and only [`Store::prune`] deletes old entries.
    async fn append_audit(&self, entry: &v1::AuditEntry) -> Result<u64, StoreError>;
    /// The newest `limit` audit entries, newest first: the first page of
    /// [`Store::list_audit_page`].
    async fn list_audit(
        &self,
        since_ms: Option<i64>,
        who: Option<&str>,
        limit: usize,
    ) -> Result<Vec<v1::AuditEntry>, StoreError> {
        let query = AuditQuery {
            since_ms,
            who: who.map(str::to_string),
            limit,
            page_token: None,
        };
        Ok(self.list_audit_page(&query).await?.items)
    }
    /// One page of audit entries, newest first (by id: ids grow with time, so entries
    /// appended meanwhile land before the first page and never shift a later one).
    async fn list_audit_page(&self, query: &AuditQuery)
    -> Result<Page<v1::AuditEntry>, StoreError>;

    /// Delete at most `limit` rows of `kind` older than `before_ms` (Unix ms) in one short
    /// transaction and return how many were deleted (fewer than `limit`: nothing older is
    /// left). Callers prune in small batches so that writers never wait for more than one
    /// batch; see `crate::retention`.
    async fn prune(&self, kind: PruneKind, before_ms: i64, limit: usize)
    -> Result<u64, StoreError>;

    /// Atomically read-modify-write one state record: `f` gets the current value and decides.
    /// Used where a check and its update must not race (consuming a one-time token).
    async fn update_state(&self, key: &str, f: StateUpdate) -> Result<StateDecision, StoreError>;
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod page_tests {
    use super::*;

    fn page(sizes: &[usize]) -> Page<(String, usize)> {
        let items = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("i{i}"), *n))
            .collect();
        Page {
            items,
            next_page_token: Some("agent:end".into()),
        }
    }

    #[test]
    fn a_page_ends_early_at_its_byte_budget_and_continues_after_the_last_item_kept() {
        let key = |item: &(String, usize)| Listing::Agents.token(&item.0);
        let mut p = page(&[40, 40, 40, 40]);
        p.fit(100, |item| item.1, key);
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.next_page_token.as_deref(), Some("agent:i1"));
        // Under the budget: unchanged, its own token kept.
        let mut p = page(&[40, 40]);
        p.fit(100, |item| item.1, key);
        assert_eq!(
            (p.items.len(), p.next_page_token.as_deref()),
            (2, Some("agent:end"))
        );
        // One item larger than the budget still makes a page, so paging always advances.
        let mut p = page(&[500, 1]);
        p.fit(100, |item| item.1, key);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.next_page_token.as_deref(), Some("agent:i0"));
    }

    #[test]
    fn page_tokens_name_their_listing_and_bad_ones_are_quoted() {
        assert_eq!(Listing::Agents.key("agent:sync-01").unwrap(), "sync-01");
        let e = Listing::Agents.key("document:sync-01").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid page token \"document:sync-01\"; pass the next_page_token of the previous response unchanged, or no token for the first page"
        );
        let long = "x".repeat(500);
        match Listing::Documents.key(&long).unwrap_err() {
            StoreError::BadPageToken { token } => assert_eq!(token.len(), 80),
            other => panic!("{other:?}"),
        }
    }
}
