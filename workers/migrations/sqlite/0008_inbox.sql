-- Hopper SQLite schema, version 8: users' notification inboxes and Web Push subscriptions.
--
-- `inbox` is one log of every user's notifications in append order: `seq` is the cursor
-- readers follow (AUTOINCREMENT, so a deleted entry's number is never reused and a cursor
-- never points into newer entries). `id` makes an append idempotent; entries older than the
-- caller's `keep` are deleted as new ones are appended.

CREATE TABLE inbox (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    id   TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    -- When it was appended, ms since the epoch.
    at   INTEGER NOT NULL,
    -- The notification's JSON, as the shell gave it.
    body TEXT NOT NULL
);
CREATE INDEX inbox_by_user ON inbox (user, seq);
CREATE INDEX inbox_by_at ON inbox (at);

-- A user's Web Push subscriptions, one per push-service endpoint.
CREATE TABLE push_subscriptions (
    user       TEXT NOT NULL,
    endpoint   TEXT NOT NULL,
    p256dh     TEXT NOT NULL,
    auth       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user, endpoint)
) WITHOUT ROWID;
