//! Embedded SQLite store (bundled SQLite, WAL, `synchronous=FULL`).
//!
//! One connection writes and one reads, each behind a mutex: WAL lets reads proceed while a
//! write transaction is open. Every write is one transaction, so a batch of agent events and
//! the runs they change become durable together before the controller acknowledges them.
//!
//! SQLite calls block, so [`SqliteStore`] runs each on tokio's blocking pool; the synchronous
//! database code is [`SqliteDb`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use syncfleet_proto::v1;

use super::{
    EventBatch, RunPage, RunQuery, StateDecision, StateUpdate, Store, StoreError, StoredAgent,
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
CREATE INDEX IF NOT EXISTS runs_by_agent ON runs (agent, created_at);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at, id);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS run_events (
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (agent, seq)
);
CREATE INDEX IF NOT EXISTS run_events_by_run ON run_events (run_id, seq);
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

/// SQLite-backed [`Store`]: the calls of [`SqliteDb`] on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Arc<SqliteDb>,
}

/// The synchronous SQLite database behind [`SqliteStore`].
pub struct SqliteDb {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Open the database file at `path` (see [`SqliteDb::open`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(SqliteDb::open(path)?),
        })
    }
}

impl SqliteDb {
    /// Open the database file at `path`, creating it (and its folder) when it does not exist.
    ///
    /// An existing file is checked first (`PRAGMA quick_check`) and refused with
    /// [`StoreError::Damaged`] when it is empty or damaged: starting would otherwise replace a
    /// lost fleet by an empty one, or run on a store that fails calls at random later.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
        let writer = Connection::open(path).map_err(err)?;
        if existing.is_some() {
            check_integrity(&writer).map_err(damaged)?;
        } else {
            tracing::info!(path = %path.display(), "creating a new, empty store");
        }
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
                 PRAGMA busy_timeout=5000;",
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
        writer
            .execute_batch(
                "CREATE INDEX IF NOT EXISTS runs_by_schedule ON runs (schedule, created_at);",
            )
            .map_err(err)?;
        let reader = Connection::open(path).map_err(err)?;
        reader
            .execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")
            .map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock only means another thread panicked mid-call; SQLite rolled back its
        // open transaction, so the connection is still consistent.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
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

fn upsert_run(conn: &Connection, run: &v1::Run) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO runs (id, agent, state, created_at, body, schedule) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body",
        params![
            run.id,
            run.agent,
            run_state_label(run),
            run_created_ms(run),
            run.encode_to_vec(),
            run.schedule
        ],
    )
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

    pub fn put_agent(&self, agent: &v1::Agent) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO agents (name, body) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                params![agent.name, agent.encode_to_vec()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn insert_runs(&self, runs: &[v1::Run]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut inserted = Vec::with_capacity(runs.len());
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO runs (id, agent, state, created_at, body, schedule)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err(e))?;
            for run in runs {
                let n = ins
                    .execute(params![
                        run.id,
                        run.agent,
                        run_state_label(run),
                        run_created_ms(run),
                        run.encode_to_vec(),
                        run.schedule
                    ])
                    .map_err(|e| self.err(e))?;
                inserted.push(n == 1);
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(inserted)
    }

    pub fn put_runs(&self, runs: &[v1::Run]) -> Result<(), StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for run in runs {
            upsert_run(&tx, run).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn get_run(&self, id: &str) -> Result<Option<v1::Run>, StoreError> {
        let conn = self.reader();
        let body: Option<Vec<u8>> = conn
            .query_row("SELECT body FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        body.map(|b| decode(&format!("run {id}"), &b)).transpose()
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

    pub fn list_runs(&self, q: &RunQuery) -> Result<RunPage, StoreError> {
        let mut sql = String::from("SELECT id, created_at, body FROM runs WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(agent) = &q.agent {
            sql.push_str(" AND agent = ?");
            args.push(agent.clone().into());
        }
        if let Some(schedule) = &q.schedule {
            sql.push_str(" AND schedule = ?");
            args.push(schedule.clone().into());
        }
        if !q.states.is_empty() {
            sql.push_str(" AND state IN (");
            for (i, s) in q.states.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                args.push(s.label().to_string().into());
            }
            sql.push(')');
        }
        if let Some(since) = q.since_ms {
            sql.push_str(" AND created_at >= ?");
            args.push(since.into());
        }
        if let Some(until) = q.until_ms {
            sql.push_str(" AND created_at < ?");
            args.push(until.into());
        }
        if let Some(token) = &q.page_token {
            let (ms, id) = parse_page_token(token)?;
            sql.push_str(" AND (created_at < ? OR (created_at = ? AND id < ?))");
            args.push(ms.into());
            args.push(ms.into());
            args.push(id.to_string().into());
        }
        let limit = q.limit.clamp(1, 1000);
        sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?");
        args.push(i64::try_from(limit + 1).unwrap_or(1001).into());

        let conn = self.reader();
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
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
            page.runs.push(decode(&format!("run {id}"), &body)?);
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
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(|e| self.err(e))?;
            out.push(decode(&format!("run {id}"), &body)?);
        }
        Ok(out)
    }

    pub fn commit_event_batches(&self, batches: &[EventBatch]) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut seqs = Vec::with_capacity(batches.len());
        for batch in batches {
            seqs.push(self.commit_events_in(&tx, &batch.agent, &batch.events, &batch.runs)?);
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(seqs)
    }

    /// One agent's events and runs inside the transaction of [`Self::commit_event_batches`].
    fn commit_events_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        agent: &str,
        events: &[v1::AgentEvent],
        runs: &[v1::Run],
    ) -> Result<u64, StoreError> {
        let mut max_seq: u64 = tx
            .query_row(
                "SELECT last_event_seq FROM agents WHERE name = ?1",
                [agent],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO run_events (agent, seq, run_id, at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| self.err(e))?;
            for ev in events {
                let at = ev
                    .at
                    .as_ref()
                    .map(syncfleet_proto::time::to_millis)
                    .unwrap_or(0);
                let seq = i64::try_from(ev.seq).unwrap_or(i64::MAX);
                ins.execute(params![agent, seq, ev.run_id, at, ev.encode_to_vec()])
                    .map_err(|e| self.err(e))?;
                max_seq = max_seq.max(ev.seq);
            }
        }
        for run in runs {
            upsert_run(tx, run).map_err(|e| self.err(e))?;
        }
        tx.execute(
            "UPDATE agents SET last_event_seq = ?2 WHERE name = ?1",
            params![agent, i64::try_from(max_seq).unwrap_or(i64::MAX)],
        )
        .map_err(|e| self.err(e))?;
        Ok(max_seq)
    }

    pub fn write_documents(
        &self,
        upserts: &[StoredDocument],
        deletes: &[(String, String)],
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for d in upserts {
            tx.execute(
                "INSERT INTO documents (kind, name, json, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(kind, name) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                params![d.kind, d.name, d.json, now],
            )
            .map_err(|e| self.err(e))?;
        }
        for (kind, name) in deletes {
            tx.execute(
                "DELETE FROM documents WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.reader()
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO state (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn delete_state_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "DELETE FROM state WHERE substr(key, 1, length(?1)) = ?1",
                [prefix],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn bump_counters(&self, schedule: &str, deltas: &[(&str, u64)]) -> Result<(), StoreError> {
        self.commit_schedule_state(schedule, &[], deltas, None)
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

    pub fn commit_schedule_state(
        &self,
        schedule: &str,
        records: &[(String, Option<Vec<u8>>)],
        deltas: &[(&str, u64)],
        delete_prefix: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        if let Some(prefix) = delete_prefix {
            tx.execute(
                "DELETE FROM state WHERE substr(key, 1, length(?1)) = ?1",
                [prefix],
            )
            .map_err(|e| self.err(e))?;
        }
        for (key, value) in records {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO state (key, value) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![key, v],
                ),
                None => tx.execute("DELETE FROM state WHERE key = ?1", [key]),
            }
            .map_err(|e| self.err(e))?;
        }
        for (counter, by) in deltas {
            tx.execute(
                "INSERT INTO schedule_counters (schedule, counter, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(schedule, counter) DO UPDATE SET value = value + excluded.value",
                params![schedule, counter, i64::try_from(*by).unwrap_or(i64::MAX)],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn append_audit(&self, entry: &v1::AuditEntry) -> Result<u64, StoreError> {
        let at = entry
            .at
            .as_ref()
            .map(syncfleet_proto::time::to_millis)
            .unwrap_or(0);
        let conn = self.writer();
        conn.execute(
            "INSERT INTO audit (at, who, body) VALUES (?1, ?2, ?3)",
            params![at, entry.who, entry.encode_to_vec()],
        )
        .map_err(|e| self.err(e))?;
        Ok(u64::try_from(conn.last_insert_rowid()).unwrap_or(0))
    }

    pub fn list_audit(
        &self,
        since_ms: Option<i64>,
        who: Option<&str>,
        limit: usize,
    ) -> Result<Vec<v1::AuditEntry>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, body FROM audit WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR who = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![since_ms, who, i64::try_from(limit).unwrap_or(i64::MAX)],
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
        Ok(out)
    }

    pub fn update_state(&self, key: &str, f: StateUpdate) -> Result<StateDecision, StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let current: Option<Vec<u8>> = tx
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let decision = f(current.as_deref());
        if let Ok(v) = &decision {
            tx.execute(
                "INSERT INTO state (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(decision)
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
}

impl SqliteDb {
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

/// Run one [`SqliteDb`] call on tokio's blocking pool; the arguments must be owned.
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

    async fn put_agent(&self, agent: &v1::Agent) -> Result<(), StoreError> {
        let agent = agent.clone();
        on_pool!(self, |db| db.put_agent(&agent))
    }

    async fn insert_runs(&self, runs: &[v1::Run]) -> Result<Vec<bool>, StoreError> {
        let runs = runs.to_vec();
        on_pool!(self, |db| db.insert_runs(&runs))
    }

    async fn put_runs(&self, runs: &[v1::Run]) -> Result<(), StoreError> {
        let runs = runs.to_vec();
        on_pool!(self, |db| db.put_runs(&runs))
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
        on_pool!(self, |db| db.commit_event_batches(&batches))
    }

    async fn list_documents(&self, kind: Option<&str>) -> Result<Vec<StoredDocument>, StoreError> {
        let kind = kind.map(str::to_string);
        on_pool!(self, |db| db.list_documents(kind.as_deref()))
    }

    async fn write_documents(
        &self,
        upserts: &[StoredDocument],
        deletes: &[(String, String)],
    ) -> Result<(), StoreError> {
        let (upserts, deletes) = (upserts.to_vec(), deletes.to_vec());
        on_pool!(self, |db| db.write_documents(&upserts, &deletes))
    }

    async fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        on_pool!(self, |db| db.get_state(&key))
    }

    async fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        on_pool!(self, |db| db.put_state(&key, &value))
    }

    async fn delete_state_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let prefix = prefix.to_string();
        on_pool!(self, |db| db.delete_state_prefix(&prefix))
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
        on_pool!(self, |db| {
            let deltas: Vec<(&str, u64)> = deltas.iter().map(|(c, n)| (c.as_str(), *n)).collect();
            db.commit_schedule_state(&schedule, &records, &deltas, delete_prefix.as_deref())
        })
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
        let entry = entry.clone();
        on_pool!(self, |db| db.append_audit(&entry))
    }

    async fn list_audit(
        &self,
        since_ms: Option<i64>,
        who: Option<&str>,
        limit: usize,
    ) -> Result<Vec<v1::AuditEntry>, StoreError> {
        let who = who.map(str::to_string);
        on_pool!(self, |db| db.list_audit(since_ms, who.as_deref(), limit))
    }

    async fn update_state(&self, key: &str, f: StateUpdate) -> Result<StateDecision, StoreError> {
        let key = key.to_string();
        on_pool!(self, |db| db.update_state(&key, f))
    }
}
