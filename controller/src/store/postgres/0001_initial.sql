-- The controller's tables, as in the SQLite store: records are their protobuf encoding (BYTEA)
-- next to the few columns queries filter on. Text keys use the "C" collation so that ORDER BY
-- and range scans compare bytes, exactly like SQLite's default BINARY collation (the database's
-- own collation, e.g. en_US.UTF-8, would order ids and keys differently).
--
-- Multi-controller note: a later migration adds a `leases` table (one row per lease name:
-- holder, epoch, expiry); epoch-fenced writes then check the caller's epoch against that row
-- inside the same transaction as the write (every write of the store begins in one place).

CREATE TABLE agents (
    name TEXT COLLATE "C" PRIMARY KEY,
    body BYTEA NOT NULL,
    last_event_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    agent TEXT COLLATE "C" NOT NULL,
    schedule TEXT COLLATE "C" NOT NULL DEFAULT '',
    state TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX runs_by_agent ON runs (agent, created_at);
CREATE INDEX runs_by_created ON runs (created_at, id);
CREATE INDEX runs_by_state ON runs (state);
CREATE INDEX runs_by_schedule ON runs (schedule, created_at);

CREATE TABLE run_events (
    agent TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    run_id TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (agent, seq)
);
CREATE INDEX run_events_by_run ON run_events (run_id, seq);

CREATE TABLE documents (
    kind TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    json TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE state (
    key TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Audit ids come from the identity column's sequence: increasing, never reused.
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    who TEXT COLLATE "C" NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX audit_by_who ON audit (who, at);
CREATE INDEX audit_by_at ON audit (at);

CREATE TABLE schedule_counters (
    schedule TEXT COLLATE "C" NOT NULL,
    counter TEXT COLLATE "C" NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (schedule, counter)
);
