-- Hopper SQLite schema, version 6: named cursors in the event log.
--
-- A reader of the event log that must resume where it stopped, on any process sharing the
-- file and after a restart (the job-event relay of `[[subscription]]`), keeps its last event
-- id here under a stable name.

CREATE TABLE cursors (
    name       TEXT PRIMARY KEY NOT NULL,
    -- An event id, as `events` issued it.
    value      TEXT NOT NULL,
    -- When it was last saved, ms since the epoch (for operators; nothing reads it yet).
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
