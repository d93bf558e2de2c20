-- Hopper SQLite schema, version 7: the registry of worker nodes (`workers/src/nodes.rs`).
--
-- A running pool upserts its row every few seconds; a row not refreshed within the registry's
-- time to live is a node gone, left out of listings and deleted by the next registration.

CREATE TABLE worker_nodes (
    id        TEXT PRIMARY KEY NOT NULL,
    -- When the node last refreshed its row, ms since the epoch (the broker's clock).
    last_seen INTEGER NOT NULL,
    -- The node's entry as JSON (`WorkerNode`), read back whole.
    node      TEXT NOT NULL
) WITHOUT ROWID;
