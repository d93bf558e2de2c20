-- Hopper SQLite schema, version 4: queues paused by an operator.
--
-- A queue is paused while it has a row here. Fetch looks its queue up in the same write
-- transaction that would lease jobs, so every process on the file honours a pause from its
-- next fetch on. A queue may be paused before it holds any job.

CREATE TABLE paused_queues (
    queue     TEXT PRIMARY KEY NOT NULL,
    -- When it was paused, ms since the epoch (for operators; nothing reads it yet).
    paused_at INTEGER NOT NULL
) WITHOUT ROWID;
