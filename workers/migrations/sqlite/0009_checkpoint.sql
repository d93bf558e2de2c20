-- Hopper SQLite schema, version 9: a job's checkpoint.
--
-- What a running attempt saved with `JobContext::save_checkpoint` (JSON text), kept across
-- retries so that a later attempt can skip the work an earlier one finished (e.g. the
-- channels of a notification already delivered). NULL until an attempt saves one.

ALTER TABLE jobs ADD COLUMN checkpoint TEXT;
