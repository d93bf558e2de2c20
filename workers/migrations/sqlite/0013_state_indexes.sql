-- Hopper SQLite schema, version 13: the state index is back, and retention's walk has an
-- index of finished jobs of its own.
--
-- Version 12 replaced `jobs_state (state)` with `jobs_state_finished (state, finished_at)`.
-- That served retention's purge, but not `list` by state alone (`GET /v1/jobs?state=…`, the
-- dashboard's state filter, `hopper jobs --state`): `jobs_state` keeps each state's rows in
-- rowid (`seq`) order, so a page newest first reads `limit` rows, where the new index made
-- SQLite read and sort every job of the state. Here `jobs_state` is restored and the purge
-- gets a partial index holding finished jobs only (a job gets its entry when it finishes;
-- queued and running ones have none): its `finished_at < ?` implies the index's condition,
-- and the walk stops at the bound.

CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);

DROP INDEX IF EXISTS jobs_state_finished;

CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
