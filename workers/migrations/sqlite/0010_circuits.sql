-- Hopper SQLite schema, version 10: the circuit breakers of `notify.send`'s endpoints.
--
-- One row per endpoint (a webhook URL, a push service origin) that is open or counting
-- consecutive failures, shared by every process on the file (`Broker::circuits`). A closed
-- circuit with no failures has no row.

CREATE TABLE circuits (
    endpoint    TEXT PRIMARY KEY NOT NULL,
    failures    INTEGER NOT NULL,
    -- When its probe may go, ms since the epoch on the broker's clock; NULL while closed.
    open_until  INTEGER,
    cooldown_ms INTEGER NOT NULL,
    probing     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
