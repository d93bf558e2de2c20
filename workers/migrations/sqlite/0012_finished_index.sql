-- Hopper SQLite schema, version 12: the state index orders each state's jobs by when they
-- finished.
--
-- Retention (`PURGE_CHUNK` in `workers/src/broker/sqlite/sql.rs`) deletes a state's jobs that
-- finished before a bound, 500 at a time. With `jobs_state (state)` alone, SQLite walked
-- every job of the state and read each row to test its `finished_at`, and the chunk that
-- ends a purge (fewer than 500 due) walked all of the state's retained jobs (a week of
-- succeeded ones) inside the writer's transaction, once a minute, holding up every write of
-- this process and of any other on the file. On `(state, finished_at)` the walk stops at the
-- bound. Every query that used `jobs_state` finds the same prefix here, so it is replaced,
-- not joined: no index more to keep up on each write.

DROP INDEX jobs_state;

CREATE INDEX jobs_state_finished ON jobs (state, finished_at);
