-- Run steps stored apart from their run: one row per step (`idx` is its position in the run),
-- so that an agent event rewrites the run's header and the steps it changed, not the whole
-- run. The steps of runs stored before this migration are moved out of `runs.body` by the
-- controller in the same transaction (it decodes the protobuf records).
CREATE TABLE run_steps (
    run_id TEXT COLLATE "C" NOT NULL,
    idx INTEGER NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (run_id, idx)
);

-- Indexes ending in the order of a `runs list` page, (created_at, id), so that a filtered
-- first page is read from an index in order.
DROP INDEX runs_by_agent;
DROP INDEX runs_by_state;
DROP INDEX runs_by_schedule;
CREATE INDEX runs_by_agent_created ON runs (agent, created_at, id);
CREATE INDEX runs_by_state_created ON runs (state, created_at, id);
CREATE INDEX runs_by_schedule_created ON runs (schedule, created_at, id);
