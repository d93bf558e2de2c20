-- Hopper SQLite schema, version 11: the events' type index holds outcomes only.
--
-- `events_type_at` had an entry for every event, but its one reader (`queues`: processed and
-- failed in the last minute, `RECENT_OUTCOMES` in `workers/src/broker/sqlite/sql.rs`) asks
-- only for succeeded, retrying and dead events. A job's `job.enqueued` and `job.started` (and
-- every `job.progress`) paid for an index entry nobody read: two of a plain job's three event
-- inserts now write one B-tree fewer. The query's `type IN (...)` list must stay the index's
-- own, word for word, for SQLite to use it.

DROP INDEX events_type_at;

CREATE INDEX events_outcome_at ON events (type, at)
    WHERE type IN ('job.succeeded', 'job.retrying', 'job.dead');
