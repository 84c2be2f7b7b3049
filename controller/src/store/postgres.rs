//! PostgreSQL store: the tables of the SQLite store in a database that several controllers can
//! share (`store = "postgres://…"`).
//!
//! Semantics follow [`super::sqlite`] call for call: the same orderings (text keys use the "C"
//! collation, so ids and keys sort by bytes as in SQLite), the same page tokens, insert-or-ignore
//! for new runs, one transaction per batch. Where SQLite relies on its single writer,
//! PostgreSQL gets explicit row locks: [`Store::update_state`] and
//! [`Store::commit_event_batches`] read with `SELECT … FOR UPDATE`, and `update_state` also
//! takes a transaction-scoped advisory lock on its key, so two calls on a key that does not
//! exist yet cannot both see it missing.
//!
//! Everything is bounded: the pool holds at most [`POOL_SIZE`] connections, a caller waits at
//! most [`POOL_WAIT`] for one, connecting times out after [`CONNECT_TIMEOUT`], and every session
//! runs with a `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout`
//! (see [`SESSION_OPTIONS`]; a URL's own `options` come after ours and win).
//!
//! The schema is versioned: [`MIGRATIONS`] are embedded SQL files applied in order, in one
//! transaction under an advisory lock, so controllers that start together do not race; the
//! applied versions are rows of `syncfleet_schema`. A database migrated by a newer controller
//! is refused ([`StoreError::PgSchemaTooNew`]).
//!
//! Every write begins with [`PgStore::begin_write`]. Inside leader-only work (a task running
//! under [`super::fence::with_epoch`]) it locks the leader lease row `FOR SHARE` and compares
//! its epoch with the task's, in the write's own transaction: once another controller has taken
//! the lease, the write is refused ([`StoreError::Fenced`]) and [`PgStore::fenced_out`]
//! reports it so the controller steps down. Taking the lease updates that row, so it waits for
//! writes in progress under the old epoch to end, and none can commit after it.
//!
//! The leader lease ([`PgStore::lease_acquire`], [`PgStore::lease_renew`],
//! [`PgStore::lease_release`], [`PgStore::lease_read`]) is the row `leader` of `leases`, timed
//! by the database's clock so that the controllers' clocks do not matter. Followers wake the
//! leader with `NOTIFY` on [`LEADER_CHANNEL`] ([`PgStore::notify_leader`], [`PgStore::listen`]).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prost::Message;
use syncfleet_proto::v1;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    AuditQuery, EventBatch, Listing, MAX_AUDIT_PAGE, MAX_PAGE, PRUNABLE_RUN_STATES, Page,
    PruneKind, RunPage, RunQuery, StateDecision, StateUpdate, Store, StoreError, StoredAgent,
    StoredDocument, decode, page_token, parse_page_token, run_created_ms, run_state_label,
};

/// Schema migrations, in order: (version, name, SQL). Applied versions are recorded in
/// `syncfleet_schema`; a migration is never edited once released, only followed by a new one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("postgres/0001_initial.sql")),
    (2, "leases", include_str!("postgres/0002_leases.sql")),
    (3, "run_steps", include_str!("postgres/0003_run_steps.sql")),
    (4, "retention", include_str!("postgres/0004_retention.sql")),
];

/// The migration after whose SQL the steps of runs stored before are moved to `run_steps`
/// ([`split_run_steps`], in the migration's transaction).
const RUN_STEPS_VERSION: i32 = 3;

/// The `NOTIFY` channel on which controllers wake the leader (see [`PgStore::notify_leader`]).
pub const LEADER_CHANNEL: &str = "syncfleet_leader";

/// The leader lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The holding controller process (empty: never held).
    pub holder: String,
    /// Grows by one on every change of holder.
    pub epoch: i64,
    /// The holder's address for agents (`advertise_url`).
    pub advertise_url: String,
    /// Whether the lease is still within its TTL (database clock).
    pub live: bool,
}

/// Most connections one controller opens.
pub const POOL_SIZE: usize = 16;
/// Longest wait for a free pooled connection before a call fails.
pub const POOL_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a new connection (TCP, authentication).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Session settings of every connection: a statement may run 30 s, wait 10 s for a lock, and a
/// transaction left idle (a controller stuck mid-write) is ended after 60 s.
pub const SESSION_OPTIONS: &str =
    "-c statement_timeout=30000 -c lock_timeout=10000 -c idle_in_transaction_session_timeout=60000";

/// Key of the advisory lock held while migrating (any constant shared by every controller
/// version; "syncflt" in ASCII).
const MIGRATION_LOCK: i64 = 0x73_79_6e_63_66_6c_74;
/// First key of the two-key advisory locks of [`Store::update_state`] (the second is a hash of
/// the state key). Two-key and one-key advisory locks never conflict with each other.
const STATE_LOCK_SPACE: i32 = 0x7366_7374;

/// PostgreSQL-backed [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    url: String,
    /// The connection settings, for the dedicated `LISTEN` connection.
    config: tokio_postgres::Config,
    /// The highest epoch whose fenced write was refused (the lease had moved on), 0 if none.
    fenced_out: std::sync::Arc<tokio::sync::watch::Sender<i64>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).finish()
    }
}

/// `url` with any password replaced by `***` (in the user part and in a `password=` parameter),
/// so that it can be logged and shown in errors.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?'])
            .map(|i| rest + i)
            .unwrap_or(out.len());
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// An error and its causes, joined (tokio-postgres puts the server's message in the cause).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = c.source();
    }
    text
}

impl PgStore {
    /// Connect to the database at `url` (`postgres://` or `postgresql://`), check that it
    /// answers, and bring its schema up to date. Fails with [`StoreError::PgConnect`] (naming
    /// the URL without its password and what to check) when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let bad_url = |problem: String| StoreError::PgUrl {
            url: shown.clone(),
            problem,
        };
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| bad_url(chain(&e)))?;
        if matches!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require) {
            return Err(bad_url(
                "sslmode=require is not supported: this controller has no TLS connector for PostgreSQL; reach the database over a trusted network or a unix socket with sslmode=disable or prefer".into(),
            ));
        }
        let options = match cfg.get_options() {
            Some(own) if !own.trim().is_empty() => format!("{SESSION_OPTIONS} {own}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        cfg.options(options);
        if cfg.get_application_name().is_none() {
            cfg.application_name("syncfleet-controller");
        }
        cfg.connect_timeout(CONNECT_TIMEOUT);
        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| bad_url(e.to_string()))?;
        let store = Self {
            pool,
            url: shown,
            config: cfg,
            fenced_out: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        };
        let mut conn = store.pool.get().await.map_err(|e| StoreError::PgConnect {
            url: store.url.clone(),
            detail: chain(&e),
        })?;
        store.migrate(&mut conn).await?;
        tracing::info!(url = %store.url, "PostgreSQL store ready");
        Ok(store)
    }

    /// Apply the migrations this database lacks, in one transaction under
    /// [`MIGRATION_LOCK`].
    async fn migrate(&self, conn: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
        let tx = conn.transaction().await.map_err(|e| self.err(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.err(&e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS syncfleet_schema (
                 version INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| self.err(&e))?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM syncfleet_schema",
                &[],
            )
            .await
            .map_err(|e| self.err(&e))?
            .get(0);
        let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > known {
            return Err(StoreError::PgSchemaTooNew {
                url: self.url.clone(),
                found: current,
                known,
            });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(sql).await.map_err(|e| self.err(&e))?;
            if *version == RUN_STEPS_VERSION {
                self.split_run_steps(&tx).await?;
            }
            tx.execute(
                "INSERT INTO syncfleet_schema (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(|e| self.err(&e))?;
            tracing::info!(url = %self.url, version, name, "PostgreSQL store schema migrated");
        }
        tx.commit().await.map_err(|e| self.err(&e))
    }

    fn err(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Postgres {
            url: self.url.clone(),
            detail: chain(e),
        }
    }

    /// A pooled connection (waits at most [`POOL_WAIT`]).
    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Postgres {
            url: self.url.clone(),
            detail: chain(&e),
        })
    }

    /// Begin a write transaction: every write of this store starts here. Within leader-only
    /// work, the lease row is locked `FOR SHARE` and its epoch must still be the task's (see
    /// the module documentation); otherwise the write is refused with [`StoreError::Fenced`].
    async fn begin_write<'a>(
        &self,
        conn: &'a mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
        let tx = conn.transaction().await.map_err(|e| self.err(&e))?;
        if let Some(mine) = super::fence::current() {
            let current: i64 = tx
                .query_opt(
                    "SELECT epoch FROM leases WHERE name = 'leader' FOR SHARE",
                    &[],
                )
                .await
                .map_err(|e| self.err(&e))?
                .map(|r| r.get(0))
                .unwrap_or(0);
            if current != mine {
                drop(tx);
                self.fenced_out.send_if_modified(|refused| {
                    let newer = mine > *refused;
                    *refused = (*refused).max(mine);
                    newer
                });
                return Err(StoreError::Fenced { mine, current });
            }
        }
        Ok(tx)
    }

    /// The highest epoch whose fenced write was refused (0 if none), changing when a refusal
    /// concerns a newer epoch than any before: the controller steps down if it is its own.
    pub fn fenced_out(&self) -> tokio::sync::watch::Receiver<i64> {
        self.fenced_out.subscribe()
    }

    /// Take the leader lease for `holder` if it has expired (or was never held): a new epoch,
    /// expiring `ttl` from now on the database's clock. `Some(epoch)` when taken, `None` when
    /// another controller holds it.
    pub async fn lease_acquire(
        &self,
        holder: &str,
        advertise_url: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let ttl_ms = to_i64(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let rows = self
            .read(
                "UPDATE leases SET holder = $1, epoch = epoch + 1, advertise_url = $2,
                     expires_at = now() + $3::BIGINT * interval '1 millisecond'
                 WHERE name = 'leader' AND expires_at <= now() RETURNING epoch",
                &[&holder, &advertise_url, &ttl_ms],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Extend the lease `holder` holds with `epoch` to `ttl` from now. `false` when the lease
    /// has another holder or epoch: it was lost.
    pub async fn lease_renew(
        &self,
        holder: &str,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ttl_ms = to_i64(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let rows = self
            .read(
                "UPDATE leases SET expires_at = now() + $3::BIGINT * interval '1 millisecond'
                 WHERE name = 'leader' AND holder = $1 AND epoch = $2 RETURNING epoch",
                &[&holder, &epoch, &ttl_ms],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Let the lease `holder` holds with `epoch` expire now (a clean stop), so that another
    /// controller takes it without waiting for the TTL.
    pub async fn lease_release(&self, holder: &str, epoch: i64) -> Result<(), StoreError> {
        self.read(
            "UPDATE leases SET expires_at = now()
             WHERE name = 'leader' AND holder = $1 AND epoch = $2 RETURNING epoch",
            &[&holder, &epoch],
        )
        .await?;
        Ok(())
    }

    /// The leader lease as stored.
    pub async fn lease_read(&self) -> Result<LeaseRow, StoreError> {
        let rows = self
            .read(
                "SELECT holder, epoch, advertise_url, expires_at > now() FROM leases
                 WHERE name = 'leader'",
                &[],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| LeaseRow {
                holder: r.get(0),
                epoch: r.get(1),
                advertise_url: r.get(2),
                live: r.get(3),
            })
            .unwrap_or(LeaseRow {
                holder: String::new(),
                epoch: 0,
                advertise_url: String::new(),
                live: false,
            }))
    }

    /// Wake the leader: `NOTIFY` [`LEADER_CHANNEL`] with `payload` (delivered to every
    /// controller listening, see [`PgStore::listen`]).
    pub async fn notify_leader(&self, payload: &str) -> Result<(), StoreError> {
        self.read(
            "SELECT pg_notify($1, $2)::TEXT",
            &[&LEADER_CHANNEL, &payload],
        )
        .await?;
        Ok(())
    }

    /// A dedicated connection listening on [`LEADER_CHANNEL`]: the payloads, in order. The
    /// receiver ends when the connection fails; listen again then.
    pub async fn listen(&self) -> Result<tokio::sync::mpsc::Receiver<String>, StoreError> {
        let (client, mut connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|e| StoreError::PgConnect {
                    url: self.url.clone(),
                    detail: chain(&e),
                })?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let url = self.url.clone();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(url = %url, error = %chain(&e), "the LISTEN connection failed");
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {LEADER_CHANNEL}"))
            .await
            .map_err(|e| self.err(&e))?;
        // The client must live as long as the connection is listened to: the task above ends
        // when the connection closes, which dropping the client would cause.
        let keep = rx;
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let _client = client;
            let mut keep = keep;
            while let Some(p) = keep.recv().await {
                if out_tx.send(p).await.is_err() {
                    return;
                }
            }
        });
        Ok(out_rx)
    }

    /// Run a read query on a pooled connection.
    async fn read(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(sql).await.map_err(|e| self.err(&e))?;
        conn.query(&stmt, args).await.map_err(|e| self.err(&e))
    }

    /// Runs from rows of `(id, header body, ...)` with a [`STEPS_COLUMN`] column `steps`.
    fn load_runs(rows: &[Row]) -> Result<Vec<v1::Run>, StoreError> {
        rows.iter()
            .map(|r| {
                let id: &str = r.get(0);
                let mut run: v1::Run = decode(&format!("run {id}"), r.get::<_, &[u8]>(1))?;
                let steps: Option<Vec<Vec<u8>>> = r.get("steps");
                if let Some(steps) = steps {
                    run.steps = steps
                        .iter()
                        .map(|b| decode(&format!("a step of run {id}"), b))
                        .collect::<Result<_, _>>()?;
                }
                Ok(run)
            })
            .collect()
    }

    /// Move the steps of runs stored before `run_steps` existed out of their run's record,
    /// inside the migration's transaction. A run whose record holds no steps is left alone.
    async fn split_run_steps(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        let mut after = String::new();
        loop {
            let rows = tx
                .query(
                    "SELECT id, body FROM runs WHERE id > $1 ORDER BY id LIMIT 1000",
                    &[&after],
                )
                .await
                .map_err(|e| self.err(&e))?;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            let mut runs = Vec::new();
            for r in &rows {
                let id: &str = r.get(0);
                let run: v1::Run = decode(&format!("run {id}"), r.get::<_, &[u8]>(1))?;
                if !run.steps.is_empty() {
                    runs.push(run);
                }
            }
            if !runs.is_empty() {
                let cols = RunColumns::of(runs);
                tx.execute(
                    "UPDATE runs SET body = n.body FROM unnest($1::TEXT[], $2::BYTEA[]) AS n(id, body)
                     WHERE runs.id = n.id",
                    &[&cols.ids, &cols.bodies],
                )
                .await
                .map_err(|e| self.err(&e))?;
                tx.execute(
                    UPSERT_STEPS,
                    &[&cols.step_run, &cols.step_idx, &cols.step_body],
                )
                .await
                .map_err(|e| self.err(&e))?;
            }
        }
        Ok(())
    }
}

/// Runs as the column arrays of the multi-row statements (`unnest`): headers (the record
/// without steps) and steps.
#[derive(Default)]
struct RunColumns {
    ids: Vec<String>,
    agents: Vec<String>,
    states: Vec<String>,
    created: Vec<i64>,
    bodies: Vec<Vec<u8>>,
    schedules: Vec<String>,
    /// Steps per run, in the order of `ids`.
    lens: Vec<i32>,
    step_run: Vec<String>,
    step_idx: Vec<i32>,
    step_body: Vec<Vec<u8>>,
}

impl RunColumns {
    fn of(runs: impl IntoIterator<Item = v1::Run>) -> Self {
        let mut c = Self::default();
        for mut run in runs {
            let steps = std::mem::take(&mut run.steps);
            for (idx, step) in steps.iter().enumerate() {
                c.step_run.push(run.id.clone());
                c.step_idx.push(i32::try_from(idx).unwrap_or(i32::MAX));
                c.step_body.push(step.encode_to_vec());
            }
            c.lens.push(i32::try_from(steps.len()).unwrap_or(i32::MAX));
            c.states.push(run_state_label(&run).to_string());
            c.created.push(run_created_ms(&run));
            c.bodies.push(run.encode_to_vec());
            c.agents.push(run.agent);
            c.schedules.push(run.schedule);
            c.ids.push(run.id);
        }
        c
    }

    /// The last version of each run (by id): a multi-row upsert may touch a row once only.
    fn of_latest(runs: impl IntoIterator<Item = v1::Run>) -> Self {
        let mut latest: Vec<v1::Run> = Vec::new();
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for run in runs {
            match at.get(&run.id) {
                Some(&i) => latest[i] = run,
                None => {
                    at.insert(run.id.clone(), latest.len());
                    latest.push(run);
                }
            }
        }
        Self::of(latest)
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A run's steps in order, as a column `steps` of a query on `runs` (one round trip for a
/// page of runs with their steps).
const STEPS_COLUMN: &str =
    "(SELECT array_agg(s.body ORDER BY s.idx) FROM run_steps s WHERE s.run_id = runs.id) AS steps";

/// Upsert run headers from column arrays (ids, agents, states, created, bodies, schedules).
const UPSERT_RUNS: &str = "INSERT INTO runs (id, agent, state, created_at, body, schedule)
     SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[], $6::TEXT[])
     ON CONFLICT (id) DO UPDATE SET state = excluded.state, body = excluded.body";

/// Insert new run headers from column arrays; the ids inserted.
const INSERT_RUNS: &str = "INSERT INTO runs (id, agent, state, created_at, body, schedule)
     SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[], $6::TEXT[])
     ON CONFLICT (id) DO NOTHING RETURNING id";

/// Write steps (run ids, positions, bodies), skipping those whose stored body is the same.
const UPSERT_STEPS: &str = "INSERT INTO run_steps (run_id, idx, body)
     SELECT * FROM unnest($1::TEXT[], $2::INTEGER[], $3::BYTEA[])
     ON CONFLICT (run_id, idx) DO UPDATE SET body = excluded.body
     WHERE run_steps.body IS DISTINCT FROM excluded.body";

/// Delete the steps past each run's last (run ids, step counts).
const TRIM_STEPS: &str =
    "DELETE FROM run_steps s USING unnest($1::TEXT[], $2::INTEGER[]) AS n(run_id, len)
     WHERE s.run_id = n.run_id AND s.idx >= n.len";

/// Adds `$3` to counter `$2` of schedule `$1`.
const BUMP_COUNTER: &str =
    "INSERT INTO schedule_counters (schedule, counter, value) VALUES ($1, $2, $3)
     ON CONFLICT (schedule, counter)
     DO UPDATE SET value = schedule_counters.value + excluded.value";

const UPSERT_STATE: &str = "INSERT INTO state (key, value) VALUES ($1, $2)
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

impl PgStore {
    /// Upsert `runs` (headers, changed steps, trimmed steps) in `tx`: three statements
    /// whatever their number.
    async fn upsert_runs(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        runs: RunColumns,
    ) -> Result<(), StoreError> {
        if runs.ids.is_empty() {
            return Ok(());
        }
        let c = &runs;
        tx.execute(
            UPSERT_RUNS,
            &[
                &c.ids,
                &c.agents,
                &c.states,
                &c.created,
                &c.bodies,
                &c.schedules,
            ],
        )
        .await
        .map_err(|e| self.err(&e))?;
        tx.execute(UPSERT_STEPS, &[&c.step_run, &c.step_idx, &c.step_body])
            .await
            .map_err(|e| self.err(&e))?;
        tx.execute(TRIM_STEPS, &[&c.ids, &c.lens])
            .await
            .map_err(|e| self.err(&e))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get_agent(&self, name: &str) -> Result<Option<StoredAgent>, StoreError> {
        let rows = self
            .read(
                "SELECT body, last_event_seq FROM agents WHERE name = $1",
                &[&name],
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(StoredAgent {
                    agent: decode(&format!("agent {name}"), r.get::<_, &[u8]>(0))?,
                    last_event_seq: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                })
            })
            .transpose()
    }

    async fn list_agents(&self) -> Result<Vec<v1::Agent>, StoreError> {
        let rows = self
            .read("SELECT name, body FROM agents ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|r| {
                let name: &str = r.get(0);
                decode(&format!("agent {name}"), r.get::<_, &[u8]>(1))
            })
            .collect()
    }

    async fn list_agents_page(
        &self,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<v1::Agent>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // Every name is non-empty, so "" starts at the first; `name` is COLLATE "C", so the
        // order is byte order, as in SQLite.
        let after = page_token.map(|t| Listing::Agents.key(t)).transpose()?;
        let rows = self
            .read(
                "SELECT name, body FROM agents WHERE name > $1 ORDER BY name LIMIT $2",
                &[
                    &after.unwrap_or(""),
                    &i64::try_from(limit + 1).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        let agents = rows
            .iter()
            .map(|r| {
                let name: &str = r.get(0);
                decode(&format!("agent {name}"), r.get::<_, &[u8]>(1))
            })
            .collect::<Result<Vec<v1::Agent>, _>>()?;
        Ok(Page::from_rows(agents, limit, |a| {
            Listing::Agents.token(&a.name)
        }))
    }

    async fn put_agent(&self, agent: &v1::Agent) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        tx.execute(
            "INSERT INTO agents (name, body) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            &[&agent.name, &agent.encode_to_vec()],
        )
        .await
        .map_err(|e| self.err(&e))?;
        tx.commit().await.map_err(|e| self.err(&e))
    }

    async fn insert_runs(&self, runs: &[v1::Run]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        // A run listed twice is inserted once, as its first version (as one at a time would).
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<v1::Run> = runs
            .iter()
            .filter(|r| seen.insert(r.id.as_str()))
            .cloned()
            .collect();
        let c = RunColumns::of(firsts);
        let inserted: std::collections::HashSet<String> = tx
            .query(
                INSERT_RUNS,
                &[
                    &c.ids,
                    &c.agents,
                    &c.states,
                    &c.created,
                    &c.bodies,
                    &c.schedules,
                ],
            )
            .await
            .map_err(|e| self.err(&e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let keep: Vec<usize> = (0..c.step_run.len())
            .filter(|&i| inserted.contains(&c.step_run[i]))
            .collect();
        let pick = |v: &[String]| keep.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let step_run = pick(&c.step_run);
        let step_idx: Vec<i32> = keep.iter().map(|&i| c.step_idx[i]).collect();
        let step_body: Vec<Vec<u8>> = keep.iter().map(|&i| c.step_body[i].clone()).collect();
        tx.execute(UPSERT_STEPS, &[&step_run, &step_idx, &step_body])
            .await
            .map_err(|e| self.err(&e))?;
        tx.commit().await.map_err(|e| self.err(&e))?;
        // In order: true for the first occurrence of an id that was inserted.
        let mut first = std::collections::HashSet::new();
        Ok(runs
            .iter()
            .map(|r| first.insert(r.id.as_str()) && inserted.contains(&r.id))
            .collect())
    }

    async fn put_runs(&self, runs: &[v1::Run]) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        self.upsert_runs(&tx, RunColumns::of_latest(runs.iter().cloned()))
            .await?;
        tx.commit().await.map_err(|e| self.err(&e))
    }

    async fn get_run(&self, id: &str) -> Result<Option<v1::Run>, StoreError> {
        let rows = self
            .read(
                &format!("SELECT id, body, {STEPS_COLUMN} FROM runs WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(Self::load_runs(&rows)?.pop())
    }

    async fn run_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // A range on the primary key (index seek) in byte order, as in SQLite; not LIKE, which
        // would treat `_` and `%` in the prefix as wildcards.
        let upper = format!("{prefix}\u{10FFFF}");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read(
                "SELECT id FROM runs WHERE id >= $1 AND id < $2 ORDER BY id LIMIT $3",
                &[&prefix, &upper, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn list_runs(&self, q: &RunQuery) -> Result<RunPage, StoreError> {
        let mut sql = format!("SELECT id, body, created_at, {STEPS_COLUMN} FROM runs WHERE TRUE");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(agent) = &q.agent {
            arg(&mut sql, " AND agent = ?", Box::new(agent.clone()));
        }
        if let Some(schedule) = &q.schedule {
            arg(&mut sql, " AND schedule = ?", Box::new(schedule.clone()));
        }
        if !q.states.is_empty() {
            let states: Vec<String> = q.states.iter().map(|s| s.label().to_string()).collect();
            arg(&mut sql, " AND state = ANY(?)", Box::new(states));
        }
        if let Some(since) = q.since_ms {
            arg(&mut sql, " AND created_at >= ?", Box::new(since));
        }
        if let Some(until) = q.until_ms {
            arg(&mut sql, " AND created_at < ?", Box::new(until));
        }
        if let Some(token) = &q.page_token {
            let (ms, id) = parse_page_token(token)?;
            // A row-value comparison: an index range on (created_at, id).
            arg(&mut sql, " AND (created_at, id) < (?", Box::new(ms));
            arg(&mut sql, ", ?)", Box::new(id.to_string()));
        }
        let limit = q.limit.clamp(1, 1000);
        arg(
            &mut sql,
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            Box::new(i64::try_from(limit + 1).unwrap_or(1001)),
        );
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let mut rows = self.read(&sql, &refs).await?;
        let mut page = RunPage::default();
        if rows.len() > limit {
            rows.truncate(limit);
            page.next_page_token = rows.last().map(|r| page_token(r.get(2), r.get(0)));
        }
        page.runs = Self::load_runs(&rows)?;
        Ok(page)
    }

    async fn runs_in_states(
        &self,
        agent: Option<&str>,
        states: &[v1::RunState],
    ) -> Result<Vec<v1::Run>, StoreError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let states: Vec<String> = states.iter().map(|s| s.label().to_string()).collect();
        let rows = self
            .read(
                &format!(
                    "SELECT id, body, {STEPS_COLUMN} FROM runs WHERE state = ANY($1)
                     AND ($2::TEXT IS NULL OR agent = $2) ORDER BY created_at, id"
                ),
                &[&states, &agent],
            )
            .await?;
        Self::load_runs(&rows)
    }

    async fn commit_event_batches(&self, batches: &[EventBatch]) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        // The agents' rows locked in name order (no deadlock between concurrent batches), the
        // events and runs written with multi-row statements: a handful of round trips per
        // call whatever the number of agents, events and runs.
        let mut names: Vec<&str> = batches.iter().map(|b| b.agent.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut stored: std::collections::HashMap<String, u64> = tx
            .query(
                "SELECT name, last_event_seq FROM agents WHERE name = ANY($1) ORDER BY name FOR UPDATE",
                &[&names],
            )
            .await
            .map_err(|e| self.err(&e))?
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect();
        let mut seqs = Vec::with_capacity(batches.len());
        let (mut ev_agent, mut ev_seq, mut ev_run, mut ev_at, mut ev_body) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for batch in batches {
            let mut max_seq = stored.get(&batch.agent).copied().unwrap_or(0);
            for ev in &batch.events {
                ev_agent.push(batch.agent.clone());
                ev_seq.push(to_i64(ev.seq));
                ev_run.push(ev.run_id.clone());
                ev_at.push(
                    ev.at
                        .as_ref()
                        .map(syncfleet_proto::time::to_millis)
                        .unwrap_or(0),
                );
                ev_body.push(ev.encode_to_vec());
                max_seq = max_seq.max(ev.seq);
            }
            if let Some(s) = stored.get_mut(&batch.agent) {
                *s = max_seq;
            }
            seqs.push(max_seq);
        }
        tx.execute(
            "INSERT INTO run_events (agent, seq, run_id, at, body)
             SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[])
             ON CONFLICT (agent, seq) DO NOTHING",
            &[&ev_agent, &ev_seq, &ev_run, &ev_at, &ev_body],
        )
        .await
        .map_err(|e| self.err(&e))?;
        self.upsert_runs(
            &tx,
            RunColumns::of_latest(batches.iter().flat_map(|b| b.runs.iter().cloned())),
        )
        .await?;
        for batch in batches {
            for (key, value) in &batch.states {
                tx.execute(UPSERT_STATE, &[key, value])
                    .await
                    .map_err(|e| self.err(&e))?;
            }
            for (schedule, counter, by) in &batch.counters {
                tx.execute(BUMP_COUNTER, &[schedule, counter, &to_i64(*by)])
                    .await
                    .map_err(|e| self.err(&e))?;
            }
        }
        let (agents, agent_seqs): (Vec<String>, Vec<i64>) =
            stored.into_iter().map(|(a, s)| (a, to_i64(s))).unzip();
        tx.execute(
            "UPDATE agents SET last_event_seq = n.seq
             FROM unnest($1::TEXT[], $2::BIGINT[]) AS n(name, seq) WHERE agents.name = n.name",
            &[&agents, &agent_seqs],
        )
        .await
        .map_err(|e| self.err(&e))?;
        tx.commit().await.map_err(|e| self.err(&e))?;
        Ok(seqs)
    }

    async fn list_documents(&self, kind: Option<&str>) -> Result<Vec<StoredDocument>, StoreError> {
        let rows = self
            .read(
                "SELECT kind, name, json FROM documents WHERE $1::TEXT IS NULL OR kind = $1
                 ORDER BY kind, name",
                &[&kind],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredDocument {
                kind: r.get(0),
                name: r.get(1),
                json: r.get(2),
            })
            .collect())
    }

    async fn list_documents_page(
        &self,
        kind: &str,
        page_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<StoredDocument>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let after = page_token.map(|t| Listing::Documents.key(t)).transpose()?;
        let rows = self
            .read(
                "SELECT kind, name, json FROM documents WHERE kind = $1 AND name > $2
                 ORDER BY name LIMIT $3",
                &[
                    &kind,
                    &after.unwrap_or(""),
                    &i64::try_from(limit + 1).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        let docs = rows
            .iter()
            .map(|r| StoredDocument {
                kind: r.get(0),
                name: r.get(1),
                json: r.get(2),
            })
            .collect();
        Ok(Page::from_rows(docs, limit, |d| {
            Listing::Documents.token(&d.name)
        }))
    }

    async fn write_documents(
        &self,
        upserts: &[StoredDocument],
        deletes: &[(String, String)],
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        for d in upserts {
            tx.execute(
                "INSERT INTO documents (kind, name, json, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, name) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                &[&d.kind, &d.name, &d.json, &now],
            )
            .await
            .map_err(|e| self.err(&e))?;
        }
        for (kind, name) in deletes {
            tx.execute(
                "DELETE FROM documents WHERE kind = $1 AND name = $2",
                &[kind, name],
            )
            .await
            .map_err(|e| self.err(&e))?;
        }
        tx.commit().await.map_err(|e| self.err(&e))
    }

    async fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self
            .read("SELECT value FROM state WHERE key = $1", &[&key])
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.commit_schedule_state("", &[(key.to_string(), Some(value.to_vec()))], &[], None)
            .await
    }

    async fn delete_state_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.commit_schedule_state("", &[], &[], Some(prefix)).await
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self
            .read(
                "SELECT key, value FROM state WHERE starts_with(key, $1) ORDER BY key",
                &[&prefix],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn commit_schedule_state(
        &self,
        schedule: &str,
        records: &[(String, Option<Vec<u8>>)],
        deltas: &[(&str, u64)],
        delete_prefix: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        if let Some(prefix) = delete_prefix {
            tx.execute("DELETE FROM state WHERE starts_with(key, $1)", &[&prefix])
                .await
                .map_err(|e| self.err(&e))?;
        }
        for (key, value) in records {
            match value {
                Some(v) => tx.execute(UPSERT_STATE, &[key, v]).await,
                None => tx.execute("DELETE FROM state WHERE key = $1", &[key]).await,
            }
            .map_err(|e| self.err(&e))?;
        }
        for (counter, by) in deltas {
            tx.execute(BUMP_COUNTER, &[&schedule, counter, &to_i64(*by)])
                .await
                .map_err(|e| self.err(&e))?;
        }
        tx.commit().await.map_err(|e| self.err(&e))
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
        let rows = self
            .read(
                "SELECT counter, value FROM schedule_counters WHERE schedule = $1 ORDER BY counter",
                &[&schedule],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    async fn append_audit(&self, entry: &v1::AuditEntry) -> Result<u64, StoreError> {
        let at = entry
            .at
            .as_ref()
            .map(syncfleet_proto::time::to_millis)
            .unwrap_or(0);
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO audit (at, who, body) VALUES ($1, $2, $3) RETURNING id",
                &[&at, &entry.who, &entry.encode_to_vec()],
            )
            .await
            .map_err(|e| self.err(&e))?
            .get(0);
        tx.commit().await.map_err(|e| self.err(&e))?;
        Ok(u64::try_from(id).unwrap_or(0))
    }

    async fn list_audit_page(&self, q: &AuditQuery) -> Result<Page<v1::AuditEntry>, StoreError> {
        let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
        let before = q
            .page_token
            .as_deref()
            .map(Listing::audit_id)
            .transpose()?
            .unwrap_or(i64::MAX);
        let rows = self
            .read(
                "SELECT id, body FROM audit
                 WHERE id < $1 AND ($2::BIGINT IS NULL OR at >= $2) AND ($3::TEXT IS NULL OR who = $3)
                 ORDER BY id DESC LIMIT $4",
                &[
                    &before,
                    &q.since_ms,
                    &q.who,
                    &i64::try_from(limit + 1).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        let entries = rows
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let mut entry: v1::AuditEntry =
                    decode(&format!("audit entry {id}"), r.get::<_, &[u8]>(1))?;
                entry.id = u64::try_from(id).unwrap_or(0);
                Ok(entry)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Page::from_rows(entries, limit, |e| {
            Listing::Audit.token(&e.id.to_string())
        }))
    }

    async fn prune(
        &self,
        kind: PruneKind,
        before_ms: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        // Fenced like every leader write; rows another transaction holds are skipped (`SKIP
        // LOCKED`), so a prune never waits for a writer and a writer waits for no more than
        // the rows of one batch.
        let tx = self.begin_write(&mut conn).await?;
        let deleted = match kind {
            PruneKind::Runs => {
                let states: Vec<&str> = PRUNABLE_RUN_STATES.iter().map(|s| s.label()).collect();
                tx.execute(
                    "WITH doomed AS (
                         SELECT id FROM runs WHERE state = ANY($1) AND created_at < $2
                         ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED),
                     steps AS (DELETE FROM run_steps WHERE run_id IN (SELECT id FROM doomed))
                     DELETE FROM runs WHERE id IN (SELECT id FROM doomed)",
                    &[&states, &before_ms, &limit],
                )
                .await
            }
            PruneKind::Events => {
                tx.execute(
                    "DELETE FROM run_events WHERE ctid IN (
                         SELECT ctid FROM run_events WHERE at < $1
                         ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    &[&before_ms, &limit],
                )
                .await
            }
            PruneKind::Audit => {
                tx.execute(
                    "DELETE FROM audit WHERE id IN (
                         SELECT id FROM audit WHERE at < $1
                         ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    &[&before_ms, &limit],
                )
                .await
            }
        }
        .map_err(|e| self.err(&e))?;
        tx.commit().await.map_err(|e| self.err(&e))?;
        Ok(deleted)
    }

    async fn update_state(&self, key: &str, f: StateUpdate) -> Result<StateDecision, StoreError> {
        let mut conn = self.conn().await?;
        let tx = self.begin_write(&mut conn).await?;
        // The advisory lock serialises calls on a key that has no row yet (FOR UPDATE locks
        // only rows that exist).
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&STATE_LOCK_SPACE, &key],
        )
        .await
        .map_err(|e| self.err(&e))?;
        let current: Option<Vec<u8>> = tx
            .query_opt("SELECT value FROM state WHERE key = $1 FOR UPDATE", &[&key])
            .await
            .map_err(|e| self.err(&e))?
            .map(|r| r.get(0));
        let decision = f(current.as_deref());
        if let Ok(v) = &decision {
            tx.execute(UPSERT_STATE, &[&key, v])
                .await
                .map_err(|e| self.err(&e))?;
        }
        tx.commit().await.map_err(|e| self.err(&e))?;
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "tests: a failed call fails the test with its error"
    )]
    use super::*;
    use syncfleet_tests::postgres::TestPostgres;

    /// A database written before run steps were stored apart (steps inside `runs.body`, the
    /// indexes of then, schema version 2) is migrated when a controller connects: its runs
    /// read back identical, with their steps in `run_steps`.
    #[tokio::test]
    async fn runs_stored_before_run_steps_read_back_identical() {
        let pg = TestPostgres::shared();
        let url = pg.create_database("oldsteps");
        let runs: Vec<v1::Run> = (0..1500)
            .map(|i| v1::Run {
                id: format!("run-{i:05}"),
                agent: "a".into(),
                state: v1::RunState::Running as i32,
                created_at: Some(syncfleet_proto::time::from_millis(1_000 + i)),
                steps: (0..(i % 4) * 2)
                    .map(|k| v1::Step {
                        index: u32::try_from(k).unwrap(),
                        profile: format!("Delta Import {k}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        {
            let store = PgStore::connect(&url).await.unwrap();
            let conn = store.conn().await.unwrap();
            conn.batch_execute(
                "DROP TABLE run_steps;
                 DROP INDEX runs_by_agent_created; DROP INDEX runs_by_state_created;
                 DROP INDEX runs_by_schedule_created;
                 CREATE INDEX runs_by_agent ON runs (agent, created_at);
                 CREATE INDEX runs_by_state ON runs (state);
                 CREATE INDEX runs_by_schedule ON runs (schedule, created_at);
                 DROP INDEX run_events_by_at;
                 DELETE FROM syncfleet_schema WHERE version >= 3;",
            )
            .await
            .unwrap();
            for r in &runs {
                conn.execute(
                    "INSERT INTO runs (id, agent, state, created_at, body, schedule)
                     VALUES ($1, $2, 'running', $3, $4, '')",
                    &[&r.id, &r.agent, &run_created_ms(r), &r.encode_to_vec()],
                )
                .await
                .unwrap();
            }
        }
        let store = PgStore::connect(&url).await.unwrap();
        for r in [&runs[0], &runs[1], &runs[3], &runs[1499]] {
            assert_eq!(store.get_run(&r.id).await.unwrap().as_ref(), Some(r));
        }
        let all = store
            .runs_in_states(Some("a"), &[v1::RunState::Running])
            .await
            .unwrap();
        assert_eq!(all, runs);
        let conn = store.conn().await.unwrap();
        let with_steps = conn
            .query("SELECT body FROM runs", &[])
            .await
            .unwrap()
            .iter()
            .filter(|r| {
                !v1::Run::decode(r.get::<_, &[u8]>(0))
                    .unwrap()
                    .steps
                    .is_empty()
            })
            .count();
        assert_eq!(with_steps, 0, "no run record keeps its steps");
    }

    /// A connection refused at startup is an error naming the URL (without its password) and
    /// what to check, within the connect timeout.
    #[tokio::test]
    async fn unreachable_server_is_a_clear_error_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://sf:hunter2@127.0.0.1:{port}/syncfleet");
        let started = tokio::time::Instant::now();
        let err = PgStore::connect(&url).await.unwrap_err();
        assert!(started.elapsed() < CONNECT_TIMEOUT * 3, "{err}");
        assert!(matches!(err, StoreError::PgConnect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("postgres://sf:***@127.0.0.1:{port}/syncfleet")),
            "{text}"
        );
        assert!(text.contains("check that PostgreSQL runs"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// A database that does not exist names the problem the server reported.
    #[tokio::test]
    async fn missing_database_is_a_clear_error() {
        let pg = TestPostgres::shared();
        let err = PgStore::connect(&pg.url("no_such_db")).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no_such_db"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(text.contains("the database must exist"), "{text}");
    }

    #[tokio::test]
    async fn sslmode_require_is_refused_with_the_reason() {
        let err = PgStore::connect("postgres://sf:pw@127.0.0.1:1/x?sslmode=require")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PgUrl { .. }), "{err:?}");
        assert!(err.to_string().contains("sslmode=require"), "{err}");
    }

    /// Controllers starting together on a new database: the schema is created once, each
    /// waits for the other's migration instead of failing on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_starts_migrate_once() {
        let pg = TestPostgres::shared();
        let url = pg.create_database("migrate");
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::connect(&url).await })
            })
            .collect();
        for s in starts {
            s.await.unwrap().unwrap();
        }
        let store = PgStore::connect(&url).await.unwrap();
        let rows = store
            .read(
                "SELECT version, name FROM syncfleet_schema ORDER BY version",
                &[],
            )
            .await
            .unwrap();
        let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let known: Vec<(i32, String)> = MIGRATIONS
            .iter()
            .map(|(v, n, _)| (*v, n.to_string()))
            .collect();
        assert_eq!(applied, known);
    }

    /// Every pooled session is bounded by the store's timeouts; a URL's own `options` win.
    #[tokio::test]
    async fn sessions_carry_the_timeouts() {
        let pg = TestPostgres::shared();
        let url = pg.create_database("bounds");
        let show = |store: PgStore, setting: &'static str| async move {
            let rows = store.read(&format!("SHOW {setting}"), &[]).await.unwrap();
            rows[0].get::<_, String>(0)
        };
        let store = PgStore::connect(&url).await.unwrap();
        assert_eq!(show(store.clone(), "statement_timeout").await, "30s");
        assert_eq!(show(store.clone(), "lock_timeout").await, "10s");
        assert_eq!(
            show(store.clone(), "idle_in_transaction_session_timeout").await,
            "1min"
        );
        assert_eq!(
            show(store, "application_name").await,
            "syncfleet-controller"
        );
        let own = PgStore::connect(&format!(
            "{url}?options=-c%20statement_timeout%3D5000&application_name=ctl-2"
        ))
        .await
        .unwrap();
        assert_eq!(show(own.clone(), "statement_timeout").await, "5s");
        assert_eq!(show(own, "application_name").await, "ctl-2");
    }

    /// A schema written by a newer controller is refused rather than used half-understood.
    #[tokio::test]
    async fn newer_schema_is_refused() {
        let pg = TestPostgres::shared();
        let url = pg.create_database("newer");
        let store = PgStore::connect(&url).await.unwrap();
        let conn = store.conn().await.unwrap();
        conn.execute(
            "INSERT INTO syncfleet_schema (version, name) VALUES (999, 'future')",
            &[],
        )
        .await
        .unwrap();
        drop(conn);
        let err = PgStore::connect(&url).await.unwrap_err();
        assert!(
            matches!(err, StoreError::PgSchemaTooNew { found: 999, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("newer than this controller"),
            "{err}"
        );
    }

    /// The harness's start time, printed for the record (`--no-capture` shows it).
    #[test]
    fn harness_start_time() {
        let pg = TestPostgres::shared();
        eprintln!("PostgreSQL test server started in {:?}", pg.started_in);
        assert!(pg.port() > 0);
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://sf:s3cret@db.example:5432/syncfleet"),
            "postgres://sf:***@db.example:5432/syncfleet"
        );
        assert_eq!(
            redact_url("postgresql://sf@db/x?password=s3cret&sslmode=disable"),
            "postgresql://sf@db/x?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }
}
