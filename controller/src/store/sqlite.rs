//! Embedded SQLite store (bundled SQLite, WAL, `synchronous=FULL`).
//!
//! **Writes are group-committed.** One writer thread owns the only write connection. Every
//! write call is an operation queued to it (a bounded queue of [`QUEUE_CAPACITY`]: a caller
//! waits for room when it is full). The writer takes everything queued, up to
//! [`GROUP_MAX_OPS`] operations and [`GROUP_MAX_BYTES`] bytes, into one transaction, runs each
//! operation inside its own savepoint (a failing operation rolls back only its own changes and
//! gets its own error), commits once (one fsync for the group), and only then answers each
//! caller. So a write returns `Ok` only once it is durable, exactly as if it had its own
//! transaction, and an operation is atomic on its own ([`Store::update_state`]'s
//! read-modify-write, [`Store::commit_event_batches`]' batches), while thousands of concurrent
//! callers share a few fsyncs. When the commit fails, every operation of the group gets the
//! error and none of them is stored.
//!
//! **Reads** use a pool of [`READERS`] read-only connections; WAL lets them read while the
//! writer writes. SQLite calls block, so reads run on tokio's blocking pool.
//!
//! **Runs** are stored in two tables: `runs` holds a run's filter columns and its protobuf
//! without its steps, `run_steps` one row per step (`idx` is the step's position). Writing a
//! run rewrites its header and only the steps whose encoding differs from the stored one, so an
//! agent event that changes one step does not rewrite the others. Stores written before steps
//! were split out (schema version 0) are migrated when opened, in one transaction.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use syncfleet_proto::v1;
use tokio::sync::{mpsc, oneshot};

use super::{
    AuditQuery, EventBatch, Listing, MAX_AUDIT_PAGE, MAX_PAGE, PRUNABLE_RUN_STATES, Page,
    PruneKind, RunPage, RunQuery, StateDecision, StateUpdate, Store, StoreError, StoredAgent,
    StoredDocument, decode, page_token, parse_page_token, run_created_ms, run_state_label,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    last_event_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at, id);
CREATE TABLE IF NOT EXISTS run_steps (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_events (
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (agent, seq)
);
CREATE INDEX IF NOT EXISTS run_events_by_run ON run_events (run_id, seq);
CREATE INDEX IF NOT EXISTS run_events_by_at ON run_events (at);
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    json TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_who ON audit (who, at);
CREATE INDEX IF NOT EXISTS audit_by_at ON audit (at);
CREATE TABLE IF NOT EXISTS schedule_counters (
    schedule TEXT NOT NULL,
    counter TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (schedule, counter)
);
"#;

/// Columns added after the first release, with their definitions (added when missing).
const MIGRATIONS: &[(&str, &str, &str)] = &[(
    "runs",
    "schedule",
    "ALTER TABLE runs ADD COLUMN schedule TEXT NOT NULL DEFAULT ''",
)];

/// Indexes of `list_runs` and `runs_in_states`, created after [`MIGRATIONS`]. Each ends in
/// `(created_at, id)`, the order of a page, so a filtered first page reads its rows from the
/// index in order and stops after a page; the indexes they replace (without `id`, or on
/// `state` alone) made SQLite sort every matching run.
const RUN_INDEXES: &str = "
DROP INDEX IF EXISTS runs_by_agent;
DROP INDEX IF EXISTS runs_by_state;
DROP INDEX IF EXISTS runs_by_schedule;
CREATE INDEX IF NOT EXISTS runs_by_agent_created ON runs (agent, created_at, id);
CREATE INDEX IF NOT EXISTS runs_by_state_created ON runs (state, created_at, id);
CREATE INDEX IF NOT EXISTS runs_by_schedule_created ON runs (schedule, created_at, id);
";

/// `PRAGMA user_version` of a store whose runs keep their steps in `run_steps`.
const STEPS_SPLIT_VERSION: i64 = 1;

/// Read-only connections of the reader pool.
pub const READERS: usize = 4;
/// Write operations that may wait for the writer; callers beyond it wait for room.
pub const QUEUE_CAPACITY: usize = 4096;
/// Most operations committed together.
pub const GROUP_MAX_OPS: usize = 1024;
/// Most bytes (of records written, roughly) committed together.
pub const GROUP_MAX_BYTES: usize = 16 << 20;

/// SQLite-backed [`Store`]: reads of [`SqliteDb`] on tokio's blocking pool, writes queued to
/// its writer thread.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Arc<SqliteDb>,
}

/// Counts of the writer thread: operations applied and transactions committed (each commit is
/// one fsync of the write-ahead log under `synchronous=FULL`).
#[derive(Debug, Default)]
pub struct WriteStats {
    ops: AtomicU64,
    commits: AtomicU64,
}

impl WriteStats {
    /// `(operations, commits)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.ops.load(Ordering::Relaxed),
            self.commits.load(Ordering::Relaxed),
        )
    }
}

/// The SQLite database behind [`SqliteStore`]: the reader pool and the writer thread's queue.
/// Dropping it lets the writer finish (and answer) what was queued, then closes the file.
pub struct SqliteDb {
    path: PathBuf,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    queue: Option<mpsc::Sender<Box<dyn WriteOp>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    stats: Arc<WriteStats>,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for SqliteDb {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has committed and answered everything
        // queued; waiting for it means the file is closed when the store is gone.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl SqliteStore {
    /// Open the database file at `path` (see [`SqliteDb::open`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(SqliteDb::open(path)?),
        })
    }

    /// The writer thread's counts (operations, commits), for measurements.
    pub fn write_stats(&self) -> (u64, u64) {
        self.db.stats.get()
    }

    /// Queue `f` to the writer thread and wait for its answer, given after the commit of the
    /// group that holds it. `bytes` is roughly what it writes (for [`GROUP_MAX_BYTES`]).
    async fn write<T, F>(&self, bytes: usize, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Writer<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(Op {
            f: Some(f),
            outcome: None,
            reply: Some(reply),
            bytes,
        });
        let queue = self
            .db
            .queue
            .as_ref()
            .ok_or_else(|| StoreError::Worker("the store is closed".into()))?;
        queue
            .send(op)
            .await
            .map_err(|_| StoreError::Worker("the store's writer thread has stopped".into()))?;
        let stopped =
            || StoreError::Worker("the store's writer thread stopped before answering".into());
        // Under tokio's test clock, a paused clock jumps ahead whenever every task waits and
        // no blocking-pool task runs; the writer thread is invisible to it. In this crate's
        // tests the wait therefore runs on the blocking pool, so that the clock stands still
        // while a write is in flight, as it did when every store call ran there.
        #[cfg(test)]
        let answer = tokio::task::spawn_blocking(move || answer.blocking_recv())
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        #[cfg(not(test))]
        let answer = answer.await;
        answer.map_err(|_| stopped())?
    }
}

impl SqliteDb {
    /// Open the database file at `path`, creating it (and its folder) when it does not exist,
    /// and start its writer thread.
    ///
    /// An existing file is checked first (`PRAGMA quick_check`) and refused with
    /// [`StoreError::Damaged`] when it is empty or damaged: starting would otherwise replace a
    /// lost fleet by an empty one, or run on a store that fails calls at random later.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_queue(path, QUEUE_CAPACITY)
    }

    fn open_with_queue(path: &Path, queue_capacity: usize) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let err = |source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let damaged = |problem: String| StoreError::Damaged {
            path: path.display().to_string(),
            problem,
        };
        let existing = match std::fs::metadata(path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        // SQLite reads a zero-length file as a new, empty database. A store that was written
        // to is never empty (its header is written first), unless its whole content sits in a
        // write-ahead log next to it.
        let wal = path.with_file_name(format!(
            "{}-wal",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("controller.db")
        ));
        let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if existing == Some(0) && wal_len == 0 {
            return Err(damaged("is empty (0 bytes), not a database".into()));
        }
        let mut writer = Connection::open(path).map_err(err)?;
        if existing.is_some() {
            check_integrity(&writer).map_err(damaged)?;
        } else {
            tracing::info!(path = %path.display(), "creating a new, empty store");
        }
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
                 PRAGMA busy_timeout=5000; PRAGMA temp_store=MEMORY;",
            )
            .map_err(err)?;
        writer.execute_batch(SCHEMA).map_err(err)?;
        for (table, column, ddl) in MIGRATIONS {
            let present: bool = writer
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                ))
                .and_then(|mut st| st.exists([column]))
                .map_err(err)?;
            if !present {
                writer.execute_batch(ddl).map_err(err)?;
            }
        }
        writer.execute_batch(RUN_INDEXES).map_err(err)?;
        split_run_steps(&mut writer, &path.display().to_string())?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path).map_err(err)?;
            reader
                .execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")
                .map_err(err)?;
            readers.push(Mutex::new(reader));
        }
        let (queue, ops) = mpsc::channel(queue_capacity.max(1));
        let stats = Arc::new(WriteStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, &thread_path, ops, &thread_stats))
            .map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            readers,
            next_reader: AtomicUsize::new(0),
            queue: Some(queue),
            writer: Some(writer),
            stats,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// A free reader connection, else (all busy) one of them in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            match self.readers[(start + i) % n].try_lock() {
                Ok(conn) => return conn,
                // A poisoned lock only means another thread panicked mid-read; a read leaves
                // nothing half done on its connection.
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        self.readers[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Move the steps of runs stored before `run_steps` existed out of their run's record, in one
/// transaction, and mark the store as migrated (`user_version`). Idempotent: a run whose
/// record holds no steps is left as it is.
fn split_run_steps(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_string(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version >= STEPS_SPLIT_VERSION {
        return Ok(());
    }
    let mut after = String::new();
    let mut moved = 0usize;
    loop {
        let page: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare_cached("SELECT id, body FROM runs WHERE id > ?1 ORDER BY id LIMIT 1000")
                .map_err(err)?;
            let rows = stmt
                .query_map([&after], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        for (id, body) in page {
            let mut run: v1::Run = decode(&format!("run {id}"), &body)?;
            if run.steps.is_empty() {
                continue;
            }
            let steps = std::mem::take(&mut run.steps);
            tx.execute(
                "UPDATE runs SET body = ?2 WHERE id = ?1",
                params![id, run.encode_to_vec()],
            )
            .map_err(err)?;
            for (idx, step) in steps.iter().enumerate() {
                put_step(&tx, &id, idx, &step.encode_to_vec()).map_err(err)?;
            }
            moved += 1;
        }
    }
    tx.pragma_update(None, "user_version", STEPS_SPLIT_VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)?;
    if moved > 0 {
        tracing::info!(path, runs = moved, "store migrated: run steps stored apart");
    }
    Ok(())
}

/// `PRAGMA quick_check` on an existing database: `Err` describes what is wrong (at most a few
/// of SQLite's findings).
fn check_integrity(conn: &Connection) -> Result<(), String> {
    let found: Result<Vec<String>, rusqlite::Error> =
        conn.prepare("PRAGMA quick_check(5)").and_then(|mut st| {
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        });
    match found {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(()),
        Ok(rows) => Err(format!("is damaged (integrity check: {})", rows.join("; "))),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(
                e.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
        {
            Err(format!(
                "is damaged or not a SQLite database ({})",
                msg.unwrap_or_else(|| e.to_string())
            ))
        }
        Err(e) => Err(format!("cannot be checked ({e})")),
    }
}

/// The write connection as an operation sees it, inside the group's transaction and its own
/// savepoint.
pub struct Writer<'a> {
    conn: &'a Connection,
    path: &'a Path,
}

impl Writer<'_> {
    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }
}

/// One caller's write, queued to the writer thread.
trait WriteOp: Send {
    /// Roughly the bytes it writes.
    fn bytes(&self) -> usize;
    /// Run it inside its own savepoint of the group's transaction, keeping its outcome; its
    /// changes are rolled back to the savepoint when it fails. `Err` means the savepoint
    /// itself failed and the group's transaction can no longer be trusted.
    fn apply(&mut self, conn: &Connection, path: &Path) -> Result<(), rusqlite::Error>;
    /// Answer the caller once the group's commit is known (`Err`: it failed, nothing of the
    /// group is stored).
    fn answer(self: Box<Self>, commit: Result<(), &rusqlite::Error>, path: &Path);
}

struct Op<T, F> {
    f: Option<F>,
    outcome: Option<Result<T, StoreError>>,
    reply: Option<oneshot::Sender<Result<T, StoreError>>>,
    bytes: usize,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Writer<'_>) -> Result<T, StoreError> + Send + 'static,
{
    fn bytes(&self) -> usize {
        self.bytes
    }

    fn apply(&mut self, conn: &Connection, path: &Path) -> Result<(), rusqlite::Error> {
        let Some(f) = self.f.take() else {
            return Ok(());
        };
        conn.execute_batch("SAVEPOINT op")?;
        let writer = Writer { conn, path };
        // A panicking operation (e.g. the function of `update_state`) fails alone; the writer
        // thread and the other operations of the group go on.
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&writer))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(StoreError::Worker(format!(
                "a store write panicked and was rolled back: {what}"
            )))
        });
        if outcome.is_ok() {
            conn.execute_batch("RELEASE op")?;
        } else {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
        }
        self.outcome = Some(outcome);
        Ok(())
    }

    fn answer(mut self: Box<Self>, commit: Result<(), &rusqlite::Error>, path: &Path) {
        let result = match (self.outcome.take(), commit) {
            (Some(Err(own)), _) => Err(own),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(e)) => Err(StoreError::Sqlite {
                path: path.display().to_string(),
                source: copy_error(e),
            }),
            (None, Ok(())) => Err(StoreError::Worker(
                "the store's writer did not apply this write".into(),
            )),
        };
        if let Some(reply) = self.reply.take() {
            // A caller that stopped waiting gets nothing; its write is committed all the same.
            let _ = reply.send(result);
        }
    }
}

/// A copy of a commit error for each operation of its group (`rusqlite::Error` is not `Clone`).
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// The writer thread: take what is queued (at least one operation, at most a group's worth),
/// apply it in one transaction, commit, answer; until the queue is closed and empty.
fn writer_loop(
    conn: Connection,
    path: &Path,
    mut ops: mpsc::Receiver<Box<dyn WriteOp>>,
    stats: &WriteStats,
) {
    while let Some(first) = ops.blocking_recv() {
        let mut bytes = first.bytes();
        let mut group = vec![first];
        while group.len() < GROUP_MAX_OPS && bytes < GROUP_MAX_BYTES {
            match ops.try_recv() {
                Ok(op) => {
                    bytes += op.bytes();
                    group.push(op);
                }
                Err(_) => break,
            }
        }
        let outcome = commit_group(&conn, path, &mut group);
        stats
            .ops
            .fetch_add(u64::try_from(group.len()).unwrap_or(0), Ordering::Relaxed);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &outcome {
            tracing::error!(path = %path.display(), error = %e, operations = group.len(), "a store commit failed; its writes were refused");
        }
        for op in group {
            op.answer(outcome.as_ref().map(|_| ()), path);
        }
    }
}

/// One transaction for `group`: each operation in its savepoint, then one commit.
fn commit_group(
    conn: &Connection,
    path: &Path,
    group: &mut [Box<dyn WriteOp>],
) -> Result<(), rusqlite::Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut applied = Ok(());
    for op in group.iter_mut() {
        applied = op.apply(conn, path);
        if applied.is_ok() && conn.is_autocommit() {
            // SQLite rolls the whole transaction back on some errors (disk full, I/O): the
            // operations before this one are gone too.
            applied = Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("SQLite rolled the transaction back".into()),
            ));
        }
        if applied.is_err() {
            break;
        }
    }
    let done = applied.and_then(|()| conn.execute_batch("COMMIT"));
    if done.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

/// Insert or replace step `idx` of run `run_id`.
fn put_step(conn: &Connection, run_id: &str, idx: usize, body: &[u8]) -> rusqlite::Result<usize> {
    conn.prepare_cached("INSERT OR REPLACE INTO run_steps (run_id, idx, body) VALUES (?1, ?2, ?3)")?
        .execute(params![
            run_id,
            i64::try_from(idx).unwrap_or(i64::MAX),
            body
        ])
}

/// Rough size of a run's record, for [`GROUP_MAX_BYTES`].
fn run_bytes(runs: &[v1::Run]) -> usize {
    runs.iter().map(|r| r.encoded_len()).sum()
}

/// Run `sql` (an insert of a run's header row, `?1`..`?6` = id, agent, state, created_at,
/// body without steps, schedule) for `run`; the number of rows it changed.
fn write_run_header(conn: &Connection, sql: &str, run: &v1::Run) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params![
        run.id,
        run.agent,
        run_state_label(run),
        run_created_ms(run),
        run.encode_to_vec(),
        run.schedule
    ])
}

/// Insert `run` (header and every step) unless its id exists; whether it was inserted.
fn insert_run(w: &Writer<'_>, mut run: v1::Run) -> Result<bool, StoreError> {
    let steps = std::mem::take(&mut run.steps);
    let n = write_run_header(
        w.conn,
        "INSERT OR IGNORE INTO runs (id, agent, state, created_at, body, schedule)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &run,
    )
    .map_err(|e| w.err(e))?;
    if n == 1 {
        for (idx, step) in steps.iter().enumerate() {
            put_step(w.conn, &run.id, idx, &step.encode_to_vec()).map_err(|e| w.err(e))?;
        }
    }
    Ok(n == 1)
}

/// Insert or replace `run`: its header, and of its steps only those whose encoding differs
/// from the stored one (steps past its last are deleted).
fn upsert_run(w: &Writer<'_>, mut run: v1::Run) -> Result<(), StoreError> {
    let steps = std::mem::take(&mut run.steps);
    write_run_header(
        w.conn,
        "INSERT INTO runs (id, agent, state, created_at, body, schedule) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body",
        &run,
    )
    .map_err(|e| w.err(e))?;
    let stored: Vec<(i64, Vec<u8>)> = w
        .conn
        .prepare_cached("SELECT idx, body FROM run_steps WHERE run_id = ?1 ORDER BY idx")
        .and_then(|mut st| {
            st.query_map([&run.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(|e| w.err(e))?;
    for (idx, step) in steps.iter().enumerate() {
        let body = step.encode_to_vec();
        let same = stored
            .get(idx)
            .is_some_and(|(i, b)| usize::try_from(*i).ok() == Some(idx) && *b == body);
        if !same {
            put_step(w.conn, &run.id, idx, &body).map_err(|e| w.err(e))?;
        }
    }
    if stored.len() > steps.len() || stored.last().is_some_and(|(i, _)| *i >= steps.len() as i64) {
        w.conn
            .prepare_cached("DELETE FROM run_steps WHERE run_id = ?1 AND idx >= ?2")
            .and_then(|mut st| {
                st.execute(params![
                    run.id,
                    i64::try_from(steps.len()).unwrap_or(i64::MAX)
                ])
            })
            .map_err(|e| w.err(e))?;
    }
    Ok(())
}

/// A read transaction on a reader connection, ended when dropped: a run's header and its steps
/// are read in two statements, and must come from one snapshot (one commit of the writer).
fn read_snapshot(conn: &Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.unchecked_transaction()
}

/// A stored run: its header's record with its steps from `run_steps`.
fn load_run(conn: &Connection, id: &str, header: &[u8]) -> Result<v1::Run, StoreError> {
    let what = || format!("run {id}");
    let mut run: v1::Run = decode(&what(), header)?;
    let bodies: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT body FROM run_steps WHERE run_id = ?1 ORDER BY idx")
        .and_then(|mut st| st.query_map([id], |r| r.get(0))?.collect())
        .map_err(|e| StoreError::Corrupt {
            what: what(),
            detail: format!("its steps cannot be read: {e}"),
        })?;
    if !bodies.is_empty() {
        run.steps = bodies
            .iter()
            .map(|b| decode(&format!("a step of run {id}"), b))
            .collect::<Result<_, _>>()?;
    }
    Ok(run)
}

/// One agent's events and runs, inside [`Store::commit_event_batches`]' operation.
fn commit_events_in(w: &Writer<'_>, batch: EventBatch) -> Result<u64, StoreError> {
    let EventBatch {
        agent,
        events,
        runs,
        states,
        counters,
    } = batch;
    let mut max_seq: u64 = w
        .conn
        .prepare_cached("SELECT last_event_seq FROM agents WHERE name = ?1")
        .and_then(|mut st| st.query_row([&agent], |r| r.get::<_, i64>(0)).optional())
        .map_err(|e| w.err(e))?
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0);
    {
        let mut ins = w
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO run_events (agent, seq, run_id, at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| w.err(e))?;
        for ev in &events {
            let at = ev
                .at
                .as_ref()
                .map(syncfleet_proto::time::to_millis)
                .unwrap_or(0);
            let seq = i64::try_from(ev.seq).unwrap_or(i64::MAX);
            ins.execute(params![agent, seq, ev.run_id, at, ev.encode_to_vec()])
                .map_err(|e| w.err(e))?;
            max_seq = max_seq.max(ev.seq);
        }
    }
    for run in runs {
        upsert_run(w, run)?;
    }
    for (key, value) in &states {
        upsert_state(w, key, value)?;
    }
    for (schedule, counter, by) in &counters {
        bump_counter(w, schedule, counter, *by)?;
    }
    w.conn
        .prepare_cached("UPDATE agents SET last_event_seq = ?2 WHERE name = ?1")
        .and_then(|mut st| st.execute(params![agent, i64::try_from(max_seq).unwrap_or(i64::MAX)]))
        .map_err(|e| w.err(e))?;
    Ok(max_seq)
}

/// Adds `by` to a schedule's counter.
fn bump_counter(w: &Writer<'_>, schedule: &str, counter: &str, by: u64) -> Result<(), StoreError> {
    w.conn
        .prepare_cached(
            "INSERT INTO schedule_counters (schedule, counter, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(schedule, counter) DO UPDATE SET value = value + excluded.value",
        )
        .and_then(|mut st| {
            st.execute(params![
                schedule,
                counter,
                i64::try_from(by).unwrap_or(i64::MAX)
            ])
        })
        .map_err(|e| w.err(e))?;
    Ok(())
}

fn upsert_state(w: &Writer<'_>, key: &str, value: &[u8]) -> Result<(), StoreError> {
    w.conn
        .prepare_cached(
            "INSERT INTO state (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut st| st.execute(params![key, value]))
        .map_err(|e| w.err(e))?;
    Ok(())
}

impl SqliteDb {
    pub fn get_agent(&self, name: &str) -> Result<Option<StoredAgent>, StoreError> {
        let conn = self.reader();
        let row: Option<(Vec<u8>, i64)> = conn
            .query_row(
                "SELECT body, last_event_seq FROM agents WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(body, seq)| {
            Ok(StoredAgent {
                agent: decode(&format!("agent {name}"), &body)?,
                last_event_seq: u64::try_from(seq).unwrap_or(0),
            })
        })
        .transpose()
    }

    pub fn list_agents(&self) -> Result<Vec<v1::Agent>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT name, body FROM agents ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, body) = row.map_err(|e| self.err(e))?;
            out.push(decode(&format!("agent {name}"), &body)?);
        }
        Ok(out)
    }

    /// One page of agents by name: a range on the primary key, read in order and stopped
    /// after `limit + 1` rows (the extra row tells that a next page exists).
    pub fn list_agents_page(
        &self,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<v1::Agent>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // Every name is non-empty, so "" starts at the first.
        let after = page_token.map(|t| Listing::Agents.key(t)).transpose()?;
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT name, body FROM agents WHERE name > ?1 ORDER BY name LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    after.unwrap_or(""),
                    i64::try_from(limit + 1).unwrap_or(i64::MAX)
                ],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .map_err(|e| self.err(e))?;
        let mut out: Vec<v1::Agent> = Vec::new();
        for row in rows {
            let (name, body) = row.map_err(|e| self.err(e))?;
            out.push(decode(&format!("agent {name}"), &body)?);
        }
        Ok(Page::from_rows(out, limit, |a| {
            Listing::Agents.token(&a.name)
        }))
    }

    /// One page of one kind's documents by name (a range on the `(kind, name)` key).
    pub fn list_documents_page(
        &self,
        kind: &str,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<StoredDocument>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let after = page_token.map(|t| Listing::Documents.key(t)).transpose()?;
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT kind, name, json FROM documents WHERE kind = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    kind,
                    after.unwrap_or(""),
                    i64::try_from(limit + 1).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(StoredDocument {
                        kind: r.get(0)?,
                        name: r.get(1)?,
                        json: r.get(2)?,
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        let rows = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(Page::from_rows(rows, limit, |d| {
            Listing::Documents.token(&d.name)
        }))
    }

    pub fn get_run(&self, id: &str) -> Result<Option<v1::Run>, StoreError> {
        let conn = self.reader();
        let _snapshot = read_snapshot(&conn).map_err(|e| self.err(e))?;
        let body: Option<Vec<u8>> = conn
            .query_row("SELECT body FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        body.map(|b| load_run(&conn, id, &b)).transpose()
    }

    pub fn run_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // A range on the primary key (index seek), not LIKE: LIKE is case-insensitive and would
        // treat `_` and `%` in the prefix as wildcards.
        let conn = self.reader();
        let upper = format!("{prefix}\u{10FFFF}");
        let mut stmt = conn
            .prepare_cached("SELECT id FROM runs WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                rusqlite::params![prefix, upper, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| r.get::<_, String>(0),
            )
            .map_err(|e| self.err(e))?;
        let mut ids = Vec::new();
        for id in rows {
            ids.push(id.map_err(|e| self.err(e))?);
        }
        Ok(ids)
    }

    /// The SQL and arguments of one page of [`Store::list_runs`]. Every filter is an equality
    /// on the first column of an index ending in `(created_at, id)`, or a range on
    /// `runs_by_created`, and the page token is a row-value comparison on `(created_at, id)`,
    /// so SQLite reads a page's rows from an index in order and stops after it (see
    /// [`RUN_INDEXES`]). Several states are one such query per state, merged.
    fn list_runs_sql(q: &RunQuery) -> Result<(String, Vec<rusqlite::types::Value>), StoreError> {
        let limit = q.limit.clamp(1, 1000);
        let mut common = String::new();
        let mut common_args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(agent) = &q.agent {
            common.push_str(" AND agent = ?");
            common_args.push(agent.clone().into());
        }
        if let Some(schedule) = &q.schedule {
            common.push_str(" AND schedule = ?");
            common_args.push(schedule.clone().into());
        }
        if let Some(since) = q.since_ms {
            common.push_str(" AND created_at >= ?");
            common_args.push(since.into());
        }
        if let Some(until) = q.until_ms {
            common.push_str(" AND created_at < ?");
            common_args.push(until.into());
        }
        if let Some(token) = &q.page_token {
            let (ms, id) = parse_page_token(token)?;
            common.push_str(" AND (created_at, id) < (?, ?)");
            common_args.push(ms.into());
            common_args.push(id.to_string().into());
        }
        // With an agent or schedule, their index serves the page and the state is a filter
        // (`+state` keeps SQLite off the state index): SQLite has no statistics telling it
        // that one agent's runs are fewer than one state's.
        let state_term = if q.agent.is_some() || q.schedule.is_some() {
            " AND +state = ?"
        } else {
            " AND state = ?"
        };
        let lim = i64::try_from(limit + 1).unwrap_or(1001);
        let order = " ORDER BY created_at DESC, id DESC LIMIT ";
        let mut args = Vec::new();
        let sql = if q.states.len() <= 1 {
            let mut sql = String::from("SELECT id, created_at, body FROM runs WHERE 1=1");
            if let Some(state) = q.states.first() {
                sql.push_str(state_term);
                args.push(state.label().to_string().into());
            }
            sql.push_str(&common);
            args.extend(common_args);
            format!("{sql}{order}{lim}")
        } else {
            let mut labels: Vec<&str> = q.states.iter().map(|s| s.label()).collect();
            labels.sort_unstable();
            labels.dedup();
            let parts: Vec<String> = labels
                .iter()
                .map(|label| {
                    args.push(label.to_string().into());
                    args.extend(common_args.iter().cloned());
                    format!(
                        "SELECT * FROM (SELECT id, created_at, body FROM runs WHERE 1=1{state_term}{common}{order}{lim})"
                    )
                })
                .collect();
            format!("{}{order}{lim}", parts.join(" UNION ALL "))
        };
        Ok((sql, args))
    }

    pub fn list_runs(&self, q: &RunQuery) -> Result<RunPage, StoreError> {
        let limit = q.limit.clamp(1, 1000);
        let (sql, args) = Self::list_runs_sql(q)?;
        let conn = self.reader();
        let _snapshot = read_snapshot(&conn).map_err(|e| self.err(e))?;
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut page = RunPage::default();
        let mut last = None;
        for row in rows {
            let (id, created, body) = row.map_err(|e| self.err(e))?;
            if page.runs.len() == limit {
                page.next_page_token = last.take();
                break;
            }
            page.runs.push(load_run(&conn, &id, &body)?);
            last = Some(page_token(created, &id));
        }
        Ok(page)
    }

    pub fn runs_in_states(
        &self,
        agent: Option<&str>,
        states: &[v1::RunState],
    ) -> Result<Vec<v1::Run>, StoreError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from("SELECT id, body FROM runs WHERE state IN (");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        for (i, s) in states.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push(s.label().to_string().into());
        }
        sql.push(')');
        if let Some(agent) = agent {
            sql.push_str(" AND agent = ?");
            args.push(agent.to_string().into());
        }
        sql.push_str(" ORDER BY created_at, id");
        let conn = self.reader();
        let _snapshot = read_snapshot(&conn).map_err(|e| self.err(e))?;
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(|e| self.err(e))?;
            out.push(load_run(&conn, &id, &body)?);
        }
        Ok(out)
    }

    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.reader()
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn list_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, value FROM state WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([prefix], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// One page of the audit log, newest first: a range on the id (the rowid), read
    /// backwards and stopped after `limit + 1` rows.
    pub fn list_audit_page(&self, q: &AuditQuery) -> Result<Page<v1::AuditEntry>, StoreError> {
        let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
        let before = q
            .page_token
            .as_deref()
            .map(Listing::audit_id)
            .transpose()?
            .unwrap_or(i64::MAX);
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, body FROM audit WHERE id < ?1 AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR who = ?3)
                 ORDER BY id DESC LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    before,
                    q.since_ms,
                    q.who,
                    i64::try_from(limit + 1).unwrap_or(i64::MAX)
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(|e| self.err(e))?;
            let mut entry: v1::AuditEntry = decode(&format!("audit entry {id}"), &body)?;
            entry.id = u64::try_from(id).unwrap_or(0);
            out.push(entry);
        }
        Ok(Page::from_rows(out, limit, |e| {
            Listing::Audit.token(&e.id.to_string())
        }))
    }

    pub fn counters(&self, schedule: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT counter, value FROM schedule_counters WHERE schedule = ?1 ORDER BY counter",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([schedule], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub fn list_documents(&self, kind: Option<&str>) -> Result<Vec<StoredDocument>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT kind, name, json FROM documents WHERE ?1 IS NULL OR kind = ?1 ORDER BY kind, name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([kind], |r| {
                Ok(StoredDocument {
                    kind: r.get(0)?,
                    name: r.get(1)?,
                    json: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

/// Run one [`SqliteDb`] read on tokio's blocking pool; the arguments must be owned.
macro_rules! on_pool {
    ($self:ident, |$db:ident| $call:expr) => {{
        let $db = Arc::clone(&$self.db);
        tokio::task::spawn_blocking(move || $call)
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }};
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get_agent(&self, name: &str) -> Result<Option<StoredAgent>, StoreError> {
        let name = name.to_string();
        on_pool!(self, |db| db.get_agent(&name))
    }

    async fn list_agents(&self) -> Result<Vec<v1::Agent>, StoreError> {
        on_pool!(self, |db| db.list_agents())
    }

    async fn list_agents_page(
        &self,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<v1::Agent>, StoreError> {
        let token = page_token.map(str::to_string);
        on_pool!(self, |db| db.list_agents_page(token.as_deref(), limit))
    }

    async fn put_agent(&self, agent: &v1::Agent) -> Result<(), StoreError> {
        let (name, body) = (agent.name.clone(), agent.encode_to_vec());
        self.write(body.len(), move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO agents (name, body) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                )
                .and_then(|mut st| st.execute(params![name, body]))
                .map_err(|e| w.err(e))?;
            Ok(())
        })
        .await
    }

    async fn insert_runs(&self, runs: &[v1::Run]) -> Result<Vec<bool>, StoreError> {
        let runs = runs.to_vec();
        self.write(run_bytes(&runs), move |w| {
            runs.into_iter().map(|run| insert_run(w, run)).collect()
        })
        .await
    }

    async fn put_runs(&self, runs: &[v1::Run]) -> Result<(), StoreError> {
        let runs = runs.to_vec();
        self.write(run_bytes(&runs), move |w| {
            runs.into_iter().try_for_each(|run| upsert_run(w, run))
        })
        .await
    }

    async fn get_run(&self, id: &str) -> Result<Option<v1::Run>, StoreError> {
        let id = id.to_string();
        on_pool!(self, |db| db.get_run(&id))
    }

    async fn run_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        on_pool!(self, |db| db.run_ids_with_prefix(&prefix, limit))
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let query = query.clone();
        on_pool!(self, |db| db.list_runs(&query))
    }

    async fn runs_in_states(
        &self,
        agent: Option<&str>,
        states: &[v1::RunState],
    ) -> Result<Vec<v1::Run>, StoreError> {
        let agent = agent.map(str::to_string);
        let states = states.to_vec();
        on_pool!(self, |db| db.runs_in_states(agent.as_deref(), &states))
    }

    async fn commit_event_batches(&self, batches: &[EventBatch]) -> Result<Vec<u64>, StoreError> {
        let batches = batches.to_vec();
        let bytes = batches
            .iter()
            .map(|b| run_bytes(&b.runs) + b.events.iter().map(|e| e.encoded_len()).sum::<usize>())
            .sum();
        self.write(bytes, move |w| {
            batches
                .into_iter()
                .map(|batch| commit_events_in(w, batch))
                .collect()
        })
        .await
    }

    async fn list_documents(&self, kind: Option<&str>) -> Result<Vec<StoredDocument>, StoreError> {
        let kind = kind.map(str::to_string);
        on_pool!(self, |db| db.list_documents(kind.as_deref()))
    }

    async fn list_documents_page(
        &self,
        kind: &str,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<StoredDocument>, StoreError> {
        let (kind, token) = (kind.to_string(), page_token.map(str::to_string));
        on_pool!(self, |db| db.list_documents_page(
            &kind,
            token.as_deref(),
            limit
        ))
    }

    async fn write_documents(
        &self,
        upserts: &[StoredDocument],
        deletes: &[(String, String)],
    ) -> Result<(), StoreError> {
        let (upserts, deletes) = (upserts.to_vec(), deletes.to_vec());
        let bytes = upserts.iter().map(|d| d.json.len()).sum();
        self.write(bytes, move |w| {
            let now = chrono::Utc::now().timestamp_millis();
            for d in &upserts {
                w.conn
                    .prepare_cached(
                        "INSERT INTO documents (kind, name, json, updated_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(kind, name) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                    )
                    .and_then(|mut st| st.execute(params![d.kind, d.name, d.json, now]))
                    .map_err(|e| w.err(e))?;
            }
            for (kind, name) in &deletes {
                w.conn
                    .prepare_cached("DELETE FROM documents WHERE kind = ?1 AND name = ?2")
                    .and_then(|mut st| st.execute(params![kind, name]))
                    .map_err(|e| w.err(e))?;
            }
            Ok(())
        })
        .await
    }

    async fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        on_pool!(self, |db| db.get_state(&key))
    }

    async fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.write(value.len(), move |w| upsert_state(w, &key, &value))
            .await
    }

    async fn delete_state_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let prefix = prefix.to_string();
        self.write(0, move |w| {
            w.conn
                .prepare_cached("DELETE FROM state WHERE substr(key, 1, length(?1)) = ?1")
                .and_then(|mut st| st.execute([&prefix]))
                .map_err(|e| w.err(e))?;
            Ok(())
        })
        .await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        on_pool!(self, |db| db.list_state(&prefix))
    }

    async fn commit_schedule_state(
        &self,
        schedule: &str,
        records: &[(String, Option<Vec<u8>>)],
        deltas: &[(&str, u64)],
        delete_prefix: Option<&str>,
    ) -> Result<(), StoreError> {
        let schedule = schedule.to_string();
        let records = records.to_vec();
        let deltas: Vec<(String, u64)> = deltas.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        let delete_prefix = delete_prefix.map(str::to_string);
        let bytes = records
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.write(bytes, move |w| {
            if let Some(prefix) = &delete_prefix {
                w.conn
                    .prepare_cached("DELETE FROM state WHERE substr(key, 1, length(?1)) = ?1")
                    .and_then(|mut st| st.execute([prefix]))
                    .map_err(|e| w.err(e))?;
            }
            for (key, value) in &records {
                match value {
                    Some(v) => upsert_state(w, key, v)?,
                    None => {
                        w.conn
                            .prepare_cached("DELETE FROM state WHERE key = ?1")
                            .and_then(|mut st| st.execute([key]))
                            .map_err(|e| w.err(e))?;
                    }
                }
            }
            for (counter, by) in &deltas {
                bump_counter(w, &schedule, counter, *by)?;
            }
            Ok(())
        })
        .await
    }

    async fn bump_counters(
        &self,
        schedule: &str,
        deltas: &[(&str, u64)],
    ) -> Result<(), StoreError> {
        self.commit_schedule_state(schedule, &[], deltas, None)
            .await
    }

    async fn counters(&self, schedule: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let schedule = schedule.to_string();
        on_pool!(self, |db| db.counters(&schedule))
    }

    async fn append_audit(&self, entry: &v1::AuditEntry) -> Result<u64, StoreError> {
        let at = entry
            .at
            .as_ref()
            .map(syncfleet_proto::time::to_millis)
            .unwrap_or(0);
        let (who, body) = (entry.who.clone(), entry.encode_to_vec());
        self.write(body.len(), move |w| {
            w.conn
                .prepare_cached("INSERT INTO audit (at, who, body) VALUES (?1, ?2, ?3)")
                .and_then(|mut st| st.execute(params![at, who, body]))
                .map_err(|e| w.err(e))?;
            Ok(u64::try_from(w.conn.last_insert_rowid()).unwrap_or(0))
        })
        .await
    }

    async fn list_audit_page(
        &self,
        query: &AuditQuery,
    ) -> Result<Page<v1::AuditEntry>, StoreError> {
        let query = query.clone();
        on_pool!(self, |db| db.list_audit_page(&query))
    }

    async fn prune(
        &self,
        kind: PruneKind,
        before_ms: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One operation on the writer's queue: the batch shares a group commit with other
        // writers' operations and delays them by at most one bounded batch.
        self.write(0, move |w| {
            let deleted = match kind {
                PruneKind::Runs => {
                    let mut ids: Vec<String> = Vec::new();
                    // One index range per state (`runs_by_state_created`), stopping at `limit`.
                    for state in PRUNABLE_RUN_STATES {
                        let left = limit - i64::try_from(ids.len()).unwrap_or(i64::MAX);
                        if left <= 0 {
                            break;
                        }
                        let mut st = w
                            .conn
                            .prepare_cached(
                                "SELECT id FROM runs WHERE state = ?1 AND created_at < ?2
                                 ORDER BY created_at, id LIMIT ?3",
                            )
                            .map_err(|e| w.err(e))?;
                        let rows = st
                            .query_map(params![state.label(), before_ms, left], |r| r.get(0))
                            .map_err(|e| w.err(e))?;
                        for id in rows {
                            ids.push(id.map_err(|e| w.err(e))?);
                        }
                    }
                    for id in &ids {
                        w.conn
                            .prepare_cached("DELETE FROM run_steps WHERE run_id = ?1")
                            .and_then(|mut st| st.execute([id]))
                            .map_err(|e| w.err(e))?;
                        w.conn
                            .prepare_cached("DELETE FROM runs WHERE id = ?1")
                            .and_then(|mut st| st.execute([id]))
                            .map_err(|e| w.err(e))?;
                    }
                    ids.len()
                }
                PruneKind::Events => w
                    .conn
                    .prepare_cached(
                        "DELETE FROM run_events WHERE rowid IN
                         (SELECT rowid FROM run_events WHERE at < ?1 ORDER BY at LIMIT ?2)",
                    )
                    .and_then(|mut st| st.execute(params![before_ms, limit]))
                    .map_err(|e| w.err(e))?,
                PruneKind::Audit => w
                    .conn
                    .prepare_cached(
                        "DELETE FROM audit WHERE id IN
                         (SELECT id FROM audit WHERE at < ?1 ORDER BY at LIMIT ?2)",
                    )
                    .and_then(|mut st| st.execute(params![before_ms, limit]))
                    .map_err(|e| w.err(e))?,
            };
            Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn update_state(&self, key: &str, f: StateUpdate) -> Result<StateDecision, StoreError> {
        let key = key.to_string();
        self.write(0, move |w| {
            let current: Option<Vec<u8>> = w
                .conn
                .prepare_cached("SELECT value FROM state WHERE key = ?1")
                .and_then(|mut st| st.query_row([&key], |r| r.get(0)).optional())
                .map_err(|e| w.err(e))?;
            let decision = f(current.as_deref());
            if let Ok(v) = &decision {
                upsert_state(w, &key, v)?;
            }
            Ok(decision)
        })
        .await
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
