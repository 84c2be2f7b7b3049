-- The leader lease of controllers sharing this database: one row per lease name. `holder` is
-- the controller process holding it (unique per process start), `epoch` grows by one on every
-- change of holder, `expires_at` is on the database's clock (renewals set it to now() + TTL),
-- `advertise_url` is the holder's address for agents. Writes of leader-only work lock this row
-- FOR SHARE and compare its epoch with their own inside the write's transaction.
CREATE TABLE leases (
    name TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    advertise_url TEXT NOT NULL DEFAULT ''
);
INSERT INTO leases (name, holder, epoch, expires_at) VALUES ('leader', '', 0, '-infinity');
