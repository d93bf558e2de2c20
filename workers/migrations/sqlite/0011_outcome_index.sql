-- Hopper SQLite schema, version 11: the events' type index holds outcomes only.
--
-- `events_type_at` had an entry for every event, but its one reader (`queues`: processed and
-- failed in the last minute, `RECENT_OUTCOMES` in `workers/src/broker/sqlite/sql.rs`) asks
-- only for succeeded, retrying and dead events. A job's `job.enqueued` and `job.started` (and
-- every `job.progress`) paid for an index entry nobody read: two of a plain job's three event
-- inserts now write one B-tree fewer. The query's condition must stay the index's own, word
-- for word, for SQLite to use it. It is written with OR, not `type IN (...)`: SQLite checks
-- an IN list of three or more values at each insert by building a temporary B-tree of it.

DROP INDEX events_type_at;

CREATE INDEX events_outcome_at ON events (type, at)
    WHERE type = 'job.succeeded' OR type = 'job.retrying' OR type = 'job.dead';
