-- Hopper SQLite schema, version 2: chains.
--
-- A chain's steps are jobs linked by `chain_next`; `chain_id` is the first step's id and
-- `chain_index` a step's position. Steps after the first wait in state 'waiting' until the
-- step before them succeeds.

ALTER TABLE jobs ADD COLUMN chain_id TEXT;
ALTER TABLE jobs ADD COLUMN chain_index INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN chain_next TEXT;

-- The steps after a given one: cancelled together, resumed together, listed together.
CREATE INDEX jobs_chain ON jobs (chain_id, chain_index) WHERE chain_id IS NOT NULL;
