-- Hopper SQLite schema, version 1: jobs and their event log.
--
-- Applied by `workers/src/broker/sqlite.rs` inside one write transaction, after which
-- `PRAGMA user_version` is 1. Never edit a released migration: add the next numbered file.
--
-- Times are milliseconds since the Unix epoch (INTEGER). JSON (payload, result) is TEXT.

CREATE TABLE jobs (
    -- The rowid: the order of enqueueing, used as the FIFO tie-break and as the list cursor.
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT    NOT NULL UNIQUE,
    queue               TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    payload             TEXT    NOT NULL,
    priority            INTEGER NOT NULL,
    state               TEXT    NOT NULL,
    run_at              INTEGER NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_retries         INTEGER NOT NULL,
    timeout_ms          INTEGER,
    interruptions       INTEGER NOT NULL DEFAULT 0,
    interruption_streak INTEGER NOT NULL DEFAULT 0,
    lease_token         INTEGER NOT NULL DEFAULT 0,
    lease_until         INTEGER,
    progress            INTEGER NOT NULL DEFAULT 0,
    progress_message    TEXT,
    result              TEXT,
    last_error          TEXT,
    unique_key          TEXT,
    created_at          INTEGER NOT NULL,
    started_at          INTEGER,
    finished_at         INTEGER
);

-- At most one job per unique key; jobs without a key stay out of the index.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key) WHERE unique_key IS NOT NULL;

-- Fetch: an index walk in (priority, due time, enqueue order) over a queue's queued jobs only.
CREATE INDEX jobs_fetch ON jobs (queue, priority, run_at, seq) WHERE state = 'queued';

-- Promotion of due scheduled/retrying jobs by fetch.
CREATE INDEX jobs_due ON jobs (queue, run_at) WHERE state IN ('scheduled', 'retrying');

-- Rescue of expired leases.
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE state = 'running';

-- Counts per queue and state (`queues`), listing by queue (and state) newest first, drop_queue.
CREATE INDEX jobs_queue_state ON jobs (queue, state);

-- Listing by state newest first (the rowid is the index's last column), retry of every dead
-- job, and purge, whose oldest-first walk meets the earliest finished jobs first.
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE events (
    -- AUTOINCREMENT: an id is never reused after trimming, so a client resuming "after id N"
    -- never skips an event.
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT    NOT NULL,
    queue    TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    type     TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,
    progress INTEGER,
    message  TEXT,
    result   TEXT,
    error    TEXT
);

-- A job's history, and deleting it with the job.
CREATE INDEX events_job ON events (job_id);

-- Processed and failed in the last minute (`queues`).
CREATE INDEX events_type_at ON events (type, at);
