//! The agent's durable journal (what makes execution exactly-once and events never lost):
//! accepted run ids and the event outbox, in one SQLite file.
//!
//! - A run id is written here *before* the agent acts on it, in the same transaction that checks
//!   for it, so a resent `StartRun` (after a reconnect, a controller restart or an agent restart)
//!   is recognised and never executed twice.
//! - Every event gets the next per-agent sequence number and stays in the outbox until the
//!   controller acknowledges it. The highest seq ever issued is kept apart from the outbox, so
//!   numbers are never reused after the outbox is pruned.
//! - Each step's engine run number is written as soon as it is known, and each step's result
//!   with its `StepFinished` event, so a run interrupted by an agent restart can be completed
//!   from the engine's run history instead of being reported `unknown`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use syncfleet_proto::v1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    accepted_at INTEGER NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    spec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    ma TEXT NOT NULL,
    run_number INTEGER NOT NULL,
    result TEXT,
    PRIMARY KEY (run_id, step_index)
);
CREATE TABLE IF NOT EXISTS autonomy (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS change_state (
    schedule TEXT NOT NULL,
    source TEXT NOT NULL,
    digest TEXT NOT NULL,
    cursor TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (schedule, source)
);
"#;

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("agent journal {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the agent data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent journal {path}: stored record is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(transparent)]
    Protect(#[from] crate::protect::ProtectError),
}

/// Outcome of [`Journal::accept_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// First time this run id is seen: it is now journaled and must be executed.
    New,
    /// Already journaled: do nothing.
    Duplicate,
}

/// A step of a run as the journal knows it ([`Journal::steps_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub index: u32,
    /// Empty when the step never reached the engine.
    pub ma: String,
    /// Engine run number; 0 when unknown.
    pub run_number: u64,
    /// `None` while the step runs; `Some("")` for a skipped step; else the engine's result.
    pub result: Option<String>,
}

/// What a change source stored after its last poll ([`Journal::change_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeState {
    /// The source's cursor (a USN, a generalized time, a watermark), as it displays it.
    pub cursor: String,
    /// What the source compares entries with (LDAP: DN to hash of the watched attributes).
    pub state: Vec<u8>,
}

/// The durable journal. Cheap calls; safe to share between tasks.
pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Open or create the journal file.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent() {
            crate::protect::create_private_dir(dir).map_err(|e| match e {
                crate::protect::CreateDirError::Io { path, source } => {
                    JournalError::Io { path, source }
                }
                crate::protect::CreateDirError::Protect(p) => JournalError::Protect(p),
            })?;
        }
        let err = |source| JournalError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let created = !path.exists();
        let conn = Connection::open(path).map_err(err)?;
        // A journal this call created is restricted on Windows like the key (an existing one
        // keeps the access an administrator gave it).
        if created {
            crate::protect::on_windows(path, crate::protect::Kind::File)?;
        }
        // Small cache: the agent must stay light (idle memory budget 10 MB).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-512;
             PRAGMA busy_timeout=5000;",
        )
        .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock means a panic mid-call; SQLite rolled back, the connection is fine.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Record a run id as accepted, unless it already is.
    pub fn accept_run(&self, spec: &v1::StartRun) -> Result<Accept, JournalError> {
        let now = chrono::Utc::now().timestamp_millis();
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO runs (run_id, accepted_at, spec) VALUES (?1, ?2, ?3)",
                params![spec.run_id, now, spec.encode_to_vec()],
            )
            .map_err(|e| self.err(e))?;
        Ok(if n == 1 {
            Accept::New
        } else {
            Accept::Duplicate
        })
    }

    /// A record of the agent's autonomy (the controller's schedule set, the hand-over state).
    pub fn autonomy_record(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        self.conn()
            .query_row("SELECT value FROM autonomy WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Store (replace) a record of the agent's autonomy.
    pub fn set_autonomy_record(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "INSERT INTO autonomy (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Mark a run as finished (its RunFinished event is in the outbox). Its step records are
    /// no longer needed: only an unfinished run is completed from them after a restart.
    pub fn finish_run(&self, run_id: &str) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute("UPDATE runs SET finished = 1 WHERE run_id = ?1", [run_id])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM steps WHERE run_id = ?1", [run_id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Runs accepted and not finished (e.g. interrupted by an agent restart), oldest first.
    pub fn unfinished_runs(&self) -> Result<Vec<v1::StartRun>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT spec FROM runs WHERE finished = 0 ORDER BY accepted_at")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let body = row.map_err(|e| self.err(e))?;
            out.push(
                v1::StartRun::decode(body.as_slice()).map_err(|e| JournalError::Corrupt {
                    path: self.path.clone(),
                    detail: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// Append an event to the outbox with the next sequence number; returns it as stored.
    pub fn append(
        &self,
        run_id: &str,
        kind: v1::agent_event::Kind,
    ) -> Result<v1::AgentEvent, JournalError> {
        self.append_at(run_id, kind, syncfleet_proto::time::now())
    }

    /// [`append`](Self::append) with the time the event happened (an event held in memory
    /// while the journal could not be written keeps its own time). A `StepFinished` or
    /// `StepSkipped` event also records the step's result, in the same transaction.
    pub fn append_at(
        &self,
        run_id: &str,
        kind: v1::agent_event::Kind,
        at: prost_types::Timestamp,
    ) -> Result<v1::AgentEvent, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let event = self.append_in(&tx, run_id, kind, at)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(event)
    }

    /// The state a change source stored for (`schedule`, `source`), if it was stored for the
    /// same definition (`digest`): a changed definition starts from a new baseline.
    pub fn change_state(
        &self,
        schedule: &str,
        source: &str,
        digest: &str,
    ) -> Result<Option<ChangeState>, JournalError> {
        self.conn()
            .query_row(
                "SELECT cursor, state FROM change_state
                 WHERE schedule = ?1 AND source = ?2 AND digest = ?3",
                params![schedule, source, digest],
                |r| {
                    Ok(ChangeState {
                        cursor: r.get(0)?,
                        state: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Store a change source's new cursor and state and, when it saw changes, append its
    /// `ChangeDetected` event to the outbox, in ONE transaction: after a restart the source
    /// resumes from exactly the state whose changes were reported, so none is missed or
    /// reported twice. Returns the event as stored.
    pub fn store_change(
        &self,
        schedule: &str,
        source: &str,
        digest: &str,
        state: &ChangeState,
        detected: Option<v1::ChangeDetected>,
    ) -> Result<Option<v1::AgentEvent>, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO change_state (schedule, source, digest, cursor, state)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (schedule, source) DO UPDATE SET digest = excluded.digest,
               cursor = excluded.cursor, state = excluded.state",
            params![schedule, source, digest, state.cursor, state.state],
        )
        .map_err(|e| self.err(e))?;
        let event = match detected {
            Some(d) => Some(self.append_in(
                &tx,
                "",
                v1::agent_event::Kind::ChangeDetected(d),
                syncfleet_proto::time::now(),
            )?),
            None => None,
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(event)
    }

    /// Forget the state of a source no schedule has any more.
    pub fn forget_change_state(&self, schedule: &str, source: &str) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "DELETE FROM change_state WHERE schedule = ?1 AND source = ?2",
                params![schedule, source],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Append an event within `tx` (see [`append_at`](Self::append_at)).
    fn append_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        run_id: &str,
        kind: v1::agent_event::Kind,
        at: prost_types::Timestamp,
    ) -> Result<v1::AgentEvent, JournalError> {
        use v1::agent_event::Kind;
        let last: i64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or(0);
        let seq = last + 1;
        let step = match &kind {
            Kind::StepFinished(f) => Some((f.index, f.run_number, f.result.clone())),
            Kind::StepSkipped(s) => Some((s.index, 0, String::new())),
            _ => None,
        };
        if let Some((index, run_number, result)) = step {
            tx.execute(
                "INSERT INTO steps (run_id, step_index, ma, run_number, result)
                 VALUES (?1, ?2, '', ?3, ?4)
                 ON CONFLICT(run_id, step_index) DO UPDATE SET result = excluded.result,
                   run_number = CASE WHEN excluded.run_number > 0
                                     THEN excluded.run_number ELSE run_number END",
                params![
                    run_id,
                    index,
                    i64::try_from(run_number).unwrap_or(i64::MAX),
                    result
                ],
            )
            .map_err(|e| self.err(e))?;
        }
        let event = v1::AgentEvent {
            seq: u64::try_from(seq).unwrap_or(0),
            at: Some(at),
            run_id: run_id.to_string(),
            kind: Some(kind),
        };
        tx.execute(
            "INSERT INTO outbox (seq, body) VALUES (?1, ?2)",
            params![seq, event.encode_to_vec()],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [seq],
        )
        .map_err(|e| self.err(e))?;
        Ok(event)
    }

    /// Record the engine run number of a step that is executing (the step's result is not
    /// known yet). A retried step's new run number replaces the earlier one.
    pub fn record_step_run(
        &self,
        run_id: &str,
        index: u32,
        ma: &str,
        run_number: u64,
    ) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "INSERT INTO steps (run_id, step_index, ma, run_number, result)
                 VALUES (?1, ?2, ?3, ?4, NULL)
                 ON CONFLICT(run_id, step_index) DO UPDATE SET ma = excluded.ma,
                   run_number = excluded.run_number, result = NULL",
                params![
                    run_id,
                    index,
                    ma,
                    i64::try_from(run_number).unwrap_or(i64::MAX)
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The steps of a run the journal knows of, by index.
    pub fn steps_of(&self, run_id: &str) -> Result<Vec<StepRecord>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT step_index, ma, run_number, result FROM steps
                 WHERE run_id = ?1 ORDER BY step_index",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok(StepRecord {
                    index: r.get(0)?,
                    ma: r.get(1)?,
                    run_number: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    result: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Fill the journal's "disk": cap the file at its size (SQLite's `max_page_count`) and use
    /// up its free pages, so every write that needs space fails with SQLite's own "database or
    /// disk is full" (`SQLITE_FULL`), as on a full volume. Tests only: a real full disk needs a
    /// size-limited mount, which needs mount privileges a CI container usually lacks.
    #[cfg(test)]
    pub(crate) fn fill_disk(&self) {
        let conn = self.conn();
        let _created = conn.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)", []);
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap_or(0);
        let _set: Result<i64, _> =
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            });
        for size in [4096, 512, 64, 1] {
            for _ in 0..100_000 {
                if conn
                    .execute("INSERT INTO filler (b) VALUES (zeroblob(?1))", [size])
                    .is_err()
                {
                    break;
                }
            }
        }
    }

    /// Space returns: lift the cap of [`fill_disk`](Self::fill_disk). Tests only.
    #[cfg(test)]
    pub(crate) fn free_disk(&self) {
        let _set: Result<i64, _> =
            self.conn()
                .query_row("PRAGMA max_page_count = 1073741823", [], |r| r.get(0));
    }

    /// Highest sequence number ever issued (0 = none).
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        let v: Option<i64> = self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
    }

    /// Up to `limit` outbox events with seq above `after`, in order.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<v1::AgentEvent>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT body FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    i64::try_from(after).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let body = row.map_err(|e| self.err(e))?;
            out.push(v1::AgentEvent::decode(body.as_slice()).map_err(|e| {
                JournalError::Corrupt {
                    path: self.path.clone(),
                    detail: e.to_string(),
                }
            })?);
        }
        Ok(out)
    }

    /// The controller stored everything up to `seq`: drop it from the outbox.
    pub fn ack(&self, seq: u64) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "DELETE FROM outbox WHERE seq <= ?1",
                [i64::try_from(seq).unwrap_or(i64::MAX)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// When the oldest run accepted here whose details the controller may not have stored yet
    /// was accepted (Unix ms): a run not finished, or one with events still in the outbox
    /// (not acknowledged). `None` when every accepted run is finished and acknowledged. Engine
    /// runs of such a run started after this time, so run history that ended before it can be
    /// cleared without losing anything the controller still needs.
    pub fn oldest_unstored_run_ms(&self) -> Result<Option<i64>, JournalError> {
        let conn = self.conn();
        let mut run_ids = std::collections::BTreeSet::new();
        {
            let mut stmt = conn
                .prepare_cached("SELECT body FROM outbox ORDER BY seq")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .map_err(|e| self.err(e))?;
            for row in rows {
                let body = row.map_err(|e| self.err(e))?;
                let event =
                    v1::AgentEvent::decode(body.as_slice()).map_err(|e| JournalError::Corrupt {
                        path: self.path.clone(),
                        detail: e.to_string(),
                    })?;
                run_ids.insert(event.run_id);
            }
        }
        let mut oldest: Option<i64> = conn
            .query_row(
                "SELECT MIN(accepted_at) FROM runs WHERE finished = 0",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let mut stmt = conn
            .prepare_cached("SELECT accepted_at FROM runs WHERE run_id = ?1")
            .map_err(|e| self.err(e))?;
        for id in &run_ids {
            let at: Option<i64> = stmt
                .query_row([id], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(at) = at {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        Ok(oldest)
    }

    /// Number of events waiting for acknowledgement.
    pub fn outbox_len(&self) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str) -> v1::StartRun {
        v1::StartRun {
            run_id: id.into(),
            ..Default::default()
        }
    }

    fn detected(changes: u64) -> v1::ChangeDetected {
        v1::ChangeDetected {
            schedule: "people-sync".into(),
            source: "people".into(),
            changes,
            cursor: "20".into(),
            examples: vec!["uid=a,ou=people".into()],
        }
    }

    #[test]
    fn a_change_state_and_its_event_are_stored_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let base = ChangeState {
            cursor: "10".into(),
            state: b"baseline".to_vec(),
        };
        // Large enough to need new pages, which a full disk refuses.
        let next = ChangeState {
            cursor: "20".into(),
            state: vec![7; 256 * 1024],
        };
        {
            let j = Journal::open(&path).unwrap();
            assert_eq!(
                j.store_change("people-sync", "people", "d1", &base, None)
                    .unwrap(),
                None
            );
            assert_eq!(j.last_seq().unwrap(), 0, "a baseline queues no event");
            // The disk is full: neither the state nor the event is written.
            j.fill_disk();
            assert!(
                j.store_change("people-sync", "people", "d1", &next, Some(detected(3)))
                    .is_err()
            );
            j.free_disk();
            assert_eq!(
                j.change_state("people-sync", "people", "d1").unwrap(),
                Some(base.clone())
            );
            assert!(j.events_after(0, 10).unwrap().is_empty());
            let ev = j
                .store_change("people-sync", "people", "d1", &next, Some(detected(3)))
                .unwrap()
                .unwrap();
            assert_eq!((ev.seq, ev.run_id.as_str()), (1, ""));
        }
        // Reopened (an agent restart): the state and the event are both there.
        let j = Journal::open(&path).unwrap();
        assert_eq!(
            j.change_state("people-sync", "people", "d1").unwrap(),
            Some(next)
        );
        let events = j.events_after(0, 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].kind,
            Some(v1::agent_event::Kind::ChangeDetected(detected(3)))
        );
        // Another definition of the source starts from no state; forgetting removes it.
        assert_eq!(j.change_state("people-sync", "people", "d2").unwrap(), None);
        j.forget_change_state("people-sync", "people").unwrap();
        assert_eq!(j.change_state("people-sync", "people", "d1").unwrap(), None);
    }

    #[test]
    fn run_ids_are_accepted_once_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        {
            let j = Journal::open(&path).unwrap();
            assert_eq!(j.accept_run(&start("r1")).unwrap(), Accept::New);
            assert_eq!(j.accept_run(&start("r1")).unwrap(), Accept::Duplicate);
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.accept_run(&start("r1")).unwrap(), Accept::Duplicate);
        assert_eq!(j.unfinished_runs().unwrap().len(), 1);
        j.finish_run("r1").unwrap();
        assert!(j.unfinished_runs().unwrap().is_empty());
    }

    /// The oldest run whose details are not stored: unfinished, or with unacknowledged events;
    /// none once everything is finished and acknowledged.
    #[test]
    fn oldest_unstored_run_is_unfinished_or_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("agent.db")).unwrap();
        assert_eq!(j.oldest_unstored_run_ms().unwrap(), None);
        j.accept_run(&start("old")).unwrap();
        j.accept_run(&start("new")).unwrap();
        let at = |id: &str| -> i64 {
            j.conn()
                .query_row(
                    "SELECT accepted_at FROM runs WHERE run_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap()
        };
        // Make the order of acceptance unambiguous.
        j.conn()
            .execute(
                "UPDATE runs SET accepted_at = accepted_at - 1000 WHERE run_id = 'old'",
                [],
            )
            .unwrap();
        assert_eq!(j.oldest_unstored_run_ms().unwrap(), Some(at("old")));
        let kind = || v1::agent_event::Kind::RunFinished(v1::RunFinished::default());
        let e1 = j.append("old", kind()).unwrap();
        j.finish_run("old").unwrap();
        // Finished, but its event is not acknowledged: still the oldest.
        assert_eq!(j.oldest_unstored_run_ms().unwrap(), Some(at("old")));
        j.ack(e1.seq).unwrap();
        assert_eq!(j.oldest_unstored_run_ms().unwrap(), Some(at("new")));
        let e2 = j.append("new", kind()).unwrap();
        j.finish_run("new").unwrap();
        j.ack(e2.seq).unwrap();
        assert_eq!(j.oldest_unstored_run_ms().unwrap(), None);
    }

    #[test]
    fn seqs_never_repeat_after_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let kind = || v1::agent_event::Kind::RunStarted(v1::RunStarted::default());
        {
            let j = Journal::open(&path).unwrap();
            assert_eq!(j.append("r", kind()).unwrap().seq, 1);
            assert_eq!(j.append("r", kind()).unwrap().seq, 2);
            j.ack(2).unwrap();
            assert_eq!(j.outbox_len().unwrap(), 0);
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.append("r", kind()).unwrap().seq, 3);
        let pending = j.events_after(0, 10).unwrap();
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(j.last_seq().unwrap(), 3);
    }
}
