-- Hopper SQLite schema, version 5: the state of each queue's job rate limit
-- (`[[queue]] rate_limit`, see workers/src/broker/rate.rs).
--
-- A rated fetch reads and advances its queue's row in the same write transaction that leases
-- the jobs, so every process on the file shares one budget. A queue fetched without a rate
-- has no row and costs nothing.

CREATE TABLE queue_rates (
    queue      TEXT PRIMARY KEY NOT NULL,
    -- The earliest time the queue's next job may start, ms since the epoch (fractional: an
    -- interval such as 1000/3 ms is kept exactly enough over many starts).
    next_start REAL NOT NULL
) WITHOUT ROWID;
