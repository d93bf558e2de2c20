//! The SQL of every operation, in one place, as named constants.
//!
//! It owns statement text only: which statement runs when, and what its rows mean, is the
//! business of the files that run them. The schema itself is not here but in the migrations
//! (`workers/migrations/sqlite/*.sql`, applied by `super::open`). Column lists are spelled out
//! so that a query and its row decoder (`super::rows`) can be checked side by side; statements
//! that end an attempt or move a chain return `id, queue, kind, attempt` first, the columns of
//! `super::rows::Owner`, so that one decoder serves them all.

/// The columns `super::rows::job_from_row` decodes, `seq` first.
macro_rules! job_columns {
    () => {
        "seq, id, queue, kind, payload, priority, state, run_at, attempt, max_retries, \
         timeout_ms, interruptions, interruption_streak, lease_token, lease_until, progress, \
         progress_message, result, last_error, unique_key, created_at, started_at, finished_at, \
         chain_id, chain_index, chain_next, checkpoint"
    };
}

/// The columns `super::rows::event_from_row` decodes.
macro_rules! event_columns {
    () => {
        "id, type, job_id, queue, kind, at, attempt, progress, message, result, error"
    };
}

/// What a retry resets: the job starts over, queued, with a fresh set of attempts. Shared by
/// the single retry and the bulk one so that the two cannot drift apart.
macro_rules! start_over {
    () => {
        "state = 'queued', attempt = 0, interruption_streak = 0, finished_at = NULL, \
         lease_until = NULL, progress = 0, progress_message = NULL"
    };
}

// Transactions. `BEGIN IMMEDIATE` takes the write lock up front (see the module docs of
// `super`); every command of a batch runs in its own savepoint.
pub const BEGIN: &str = "BEGIN IMMEDIATE";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";
pub const SAVEPOINT: &str = "SAVEPOINT op";
pub const RELEASE: &str = "RELEASE op";
pub const ROLLBACK_TO: &str = "ROLLBACK TO op";

// Opening. WAL is a property of the file; `user_version` records the schema version.
pub const JOURNAL_MODE_WAL: &str = "PRAGMA journal_mode = WAL";
pub const USER_VERSION: &str = "PRAGMA user_version";

pub const INSERT_EVENT: &str = "INSERT INTO events \
    (job_id, queue, kind, type, at, attempt, progress, message, result, error) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// The `job.enqueued` events of the jobs an enqueue batch created: the rows from `?1`, the
/// batch's first, in their order (`super::events::EnqueuedEvents`).
pub const INSERT_ENQUEUED_EVENTS: &str = "INSERT INTO events (job_id, queue, kind, type, at, attempt) \
    SELECT id, queue, kind, 'job.enqueued', ?2, attempt FROM jobs WHERE seq >= ?1 ORDER BY seq";

/// A unique key is unique within its queue (`0003_unique_per_queue.sql`). The job holding it
/// is read whole, not looked up again by its id: a row another program wrote may hold an id
/// that is not UTF-8 text, which no statement finds (`super::rows::stored_id`).
pub const FIND_UNIQUE: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE queue = ?1 AND unique_key = ?2"
);
pub const INSERT_JOB: &str = "INSERT INTO jobs \
    (id, queue, kind, payload, priority, state, run_at, max_retries, timeout_ms, unique_key, \
     created_at, chain_id, chain_index, chain_next) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
    ON CONFLICT (id) DO NOTHING";

/// Due scheduled and retrying jobs become queued, keeping their due time as `run_at` so they
/// line up as if queued then; at most `?3` of them, earliest due first (a walk of `jobs_due`),
/// so that one fetch does bounded work however many jobs fell due at once.
pub const PROMOTE_DUE: &str = "UPDATE jobs SET state = 'queued' \
    WHERE seq IN (SELECT seq FROM jobs \
                  WHERE queue = ?1 AND state IN ('scheduled', 'retrying') AND run_at <= ?2 \
                  ORDER BY run_at, seq LIMIT ?3)";
/// Leases up to `?2` queued jobs; a new attempt starts without the last one's progress.
pub const FETCH: &str = concat!(
    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
     lease_until = ?3, started_at = COALESCE(started_at, ?4), progress = 0, \
     progress_message = NULL \
     WHERE seq IN (SELECT seq FROM jobs WHERE queue = ?1 AND state = 'queued' \
                   ORDER BY priority, run_at, seq LIMIT ?2) \
     RETURNING ",
    job_columns!()
);

// Finishing an attempt. Each is fenced by the lease token and the running state; the attempt
// returned is the one that ended (for its event). Succeeded and dead also return the chain
// link, to move the chain along.
pub const FINISH_SUCCEEDED: &str = "UPDATE jobs SET state = 'succeeded', result = ?3, \
    finished_at = ?4, progress = 100, interruption_streak = 0, lease_until = NULL \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
    RETURNING id, queue, kind, attempt, chain_id, chain_index, chain_next";
pub const FINISH_RETRY: &str = "UPDATE jobs SET state = 'retrying', run_at = ?3, \
    last_error = ?4, interruption_streak = 0, lease_until = NULL \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
    RETURNING id, queue, kind, attempt";
pub const FINISH_DEAD: &str = "UPDATE jobs SET state = 'dead', last_error = ?3, \
    finished_at = ?4, interruption_streak = 0, lease_until = NULL \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
    RETURNING id, queue, kind, attempt, chain_id, chain_index, chain_next";
pub const FINISH_SNOOZE: &str = "UPDATE jobs SET state = 'scheduled', run_at = ?3, \
    attempt = MAX(attempt - 1, 0), interruption_streak = 0, lease_until = NULL, \
    last_error = COALESCE(?4, last_error) \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
    RETURNING id, queue, kind, attempt + 1";
// A released job keeps its place in line: its run_at (never later than now, ?3, for a job
// that was running) and its seq.
pub const FINISH_RELEASED: &str = "UPDATE jobs SET state = 'queued', run_at = MIN(run_at, ?3), \
    attempt = MAX(attempt - 1, 0), lease_until = NULL \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
    RETURNING id, queue, kind, attempt + 1";

// A fetched row whose id is not UTF-8 text is given one (`super::lifecycle::bury_unreadable`),
// its events first, found by the row's stored id.
pub const ID_TAKEN: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)";
pub const RENAME_EVENTS: &str =
    "UPDATE events SET job_id = ?2 WHERE job_id = (SELECT id FROM jobs WHERE seq = ?1)";
pub const RENAME_JOB: &str = "UPDATE jobs SET id = ?2 WHERE seq = ?1";

pub const HEARTBEAT: &str = "UPDATE jobs SET lease_until = ?3 \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running'";
pub const LEASE_STATE: &str = "SELECT state FROM jobs WHERE id = ?1 AND lease_token = ?2";
pub const PROGRESS: &str = "UPDATE jobs SET progress = ?3, progress_message = ?4 \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
    RETURNING id, queue, kind, attempt";

pub const CHECKPOINT: &str = "UPDATE jobs SET checkpoint = ?3 \
    WHERE id = ?1 AND lease_token = ?2 AND state = 'running'";

pub const STATE_OF: &str = "SELECT state FROM jobs WHERE id = ?1";
pub const CANCEL: &str = concat!(
    "UPDATE jobs SET state = 'cancelled', finished_at = ?2, lease_until = NULL \
     WHERE id = ?1 AND state NOT IN ('succeeded', 'dead', 'cancelled') RETURNING ",
    job_columns!()
);
pub const RETRY: &str = concat!(
    "UPDATE jobs SET ",
    start_over!(),
    ", run_at = ?2 WHERE id = ?1 AND state IN ('dead', 'cancelled') RETURNING ",
    job_columns!()
);
// The dead jobs that died at or before ?4, the time the request began: one it retried that
// ran and died again meanwhile is not retried twice.
// Two texts rather than `?2 IS NULL OR queue = ?2`, which would keep SQLite from using the
// queue's index.
pub const RETRY_DEAD_CHUNK: &str = concat!(
    "UPDATE jobs SET ",
    start_over!(),
    ", run_at = ?1 WHERE seq IN (SELECT seq FROM jobs WHERE state = 'dead' AND (finished_at IS NULL OR finished_at <= ?4) LIMIT ?3) \
     RETURNING id, queue, kind, attempt, chain_id, chain_index"
);
pub const RETRY_DEAD_CHUNK_IN: &str = concat!(
    "UPDATE jobs SET ",
    start_over!(),
    ", run_at = ?1 \
     WHERE seq IN (SELECT seq FROM jobs WHERE queue = ?2 AND state = 'dead' AND (finished_at IS NULL OR finished_at <= ?4) LIMIT ?3) \
     RETURNING id, queue, kind, attempt, chain_id, chain_index"
);

// Rescue. SET expressions read the row as it was, RETURNING as it is now: the attempt returned
// is the interrupted one.
pub const RESCUE_POISON: &str = "UPDATE jobs SET state = 'dead', \
    attempt = MAX(attempt - 1, 0), interruptions = interruptions + 1, \
    interruption_streak = interruption_streak + 1, \
    last_error = 'poison pill: interrupted ' || (interruption_streak + 1) || \
    ' times in a row (its lease expired each time)', \
    finished_at = ?1, lease_until = NULL \
    WHERE state = 'running' AND lease_until < ?1 AND ?2 > 0 AND interruption_streak + 1 >= ?2 \
    RETURNING id, queue, kind, attempt + 1, last_error, chain_id, chain_index";
pub const RESCUE: &str = "UPDATE jobs SET state = 'queued', \
    attempt = MAX(attempt - 1, 0), interruptions = interruptions + 1, \
    interruption_streak = interruption_streak + 1, lease_until = NULL \
    WHERE state = 'running' AND lease_until < ?1 \
    RETURNING id, queue, kind, attempt + 1";

pub const GET: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?1");
pub const HISTORY: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE job_id = ?1 ORDER BY id"
);
pub const EVENTS_AFTER: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"
);
pub const EVENTS_END: &str = "SELECT max(id) FROM events";
pub const EVENTS_OLDEST: &str = "SELECT min(id) FROM events";
pub const EVENTS_EXIST_AFTER: &str = "SELECT EXISTS (SELECT 1 FROM events WHERE id > ?1)";
pub const COUNTS: &str = "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state";
/// Its condition on `type` is the WHERE of the partial index `events_outcome_at`
/// (`0011_outcome_index.sql`), word for word, so that SQLite uses it.
pub const RECENT_OUTCOMES: &str = "SELECT queue, type, count(*) FROM events \
    WHERE (type = 'job.succeeded' OR type = 'job.retrying' OR type = 'job.dead') \
    AND at >= ?1 GROUP BY queue, type";

// The parts `list` builds its query from: only the filters given become clauses, so SQLite can
// pick the index that fits (`?1 IS NULL OR ...` would defeat it). The text varies over 16
// shapes at most, each cached as a prepared statement.
pub const LIST: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE 1");
pub const LIST_QUEUE: &str = " AND queue = ?";
pub const LIST_STATE: &str = " AND state = ?";
pub const LIST_KIND: &str = " AND kind = ?";
/// Jobs older than the cursor, which is the `seq` of the last job of the previous page.
pub const LIST_AFTER_CURSOR: &str = " AND seq < ?";
pub const LIST_NEWEST_FIRST: &str = " ORDER BY seq DESC LIMIT ?";

/// A chain step is purged only once the step after it is gone, so that a later step retried
/// finds its predecessor (see the chain notes of `crate::broker`): a chain goes from its end.
pub const PURGE_CHUNK: &str = "DELETE FROM jobs WHERE seq IN \
    (SELECT seq FROM jobs WHERE state = ?1 AND finished_at < ?2 \
     AND (chain_next IS NULL \
          OR NOT EXISTS (SELECT 1 FROM jobs AS later WHERE later.id = jobs.chain_next)) \
     LIMIT ?3) RETURNING id";
pub const DELETE_JOB_EVENTS: &str = "DELETE FROM events WHERE job_id = ?1 RETURNING id";
/// The cursor (in `cursors`) holding the newest event id a purge or a queue's drop deleted
/// from the middle of the log (see `read::trimmed_after`); `hopper.` names are never a
/// schedule's or a subscription's.
pub const REMOVED_EVENTS_CURSOR: &str = "hopper.events_removed";
/// Raises the cursor `?3` ([`REMOVED_EVENTS_CURSOR`]) to `?1` (never lowers it); `?2` now.
pub const RAISE_REMOVED_EVENTS: &str = "INSERT INTO cursors (name, value, updated_at) \
    VALUES (?3, ?1, ?2) \
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
    WHERE CAST(excluded.value AS INTEGER) > CAST(cursors.value AS INTEGER)";
pub const EVENT_CUT: &str = "SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1";
pub const TRIM_EVENTS_CHUNK: &str = "DELETE FROM events WHERE id IN \
    (SELECT id FROM events WHERE id <= ?1 ORDER BY id LIMIT ?2)";
pub const DROP_CHUNK: &str = "DELETE FROM jobs WHERE seq IN \
    (SELECT seq FROM jobs WHERE queue = ?1 LIMIT ?2) RETURNING id";

// Chains. The step after a succeeded one is queued with its result as `input`; the waiting
// steps after a dead or cancelled one are cancelled; retrying a step puts the steps cancelled
// after it back to waiting.
pub const CHAIN_PROMOTE: &str = "UPDATE jobs SET state = 'queued', run_at = ?3, \
    payload = json_set(payload, '$.input', json(?2)) \
    WHERE id = ?1 AND state = 'waiting' RETURNING id, queue, kind, attempt";
pub const CHAIN_CANCEL_REST: &str = "UPDATE jobs SET state = 'cancelled', finished_at = ?3, \
    last_error = ?4 \
    WHERE chain_id = ?1 AND chain_index > ?2 AND state = 'waiting' \
    RETURNING id, queue, kind, attempt";
/// A step of an existing chain, read whole for the reason `FIND_UNIQUE` is.
pub const CHAIN_STEP: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE chain_id = ?1 AND chain_index = ?2"
);
pub const CHAIN_PREDECESSOR: &str =
    "SELECT state, result FROM jobs WHERE chain_id = ?1 AND chain_index = ?2";
/// A retried later step: queued with its predecessor's result, or waiting for it.
pub const CHAIN_REQUEUE_STEP: &str = "UPDATE jobs SET state = ?2, \
    payload = CASE WHEN ?3 IS NULL THEN payload ELSE json_set(payload, '$.input', json(?3)) END \
    WHERE id = ?1";
pub const CHAIN_RESUME_REST: &str = "UPDATE jobs SET state = 'waiting', finished_at = NULL, \
    last_error = NULL \
    WHERE chain_id = ?1 AND chain_index > ?2 AND state = 'cancelled'";

pub const PING: &str = "SELECT 1";

// Paused queues (`super::pausing`; fetch and queues read them too).
pub const PAUSE: &str = "INSERT INTO paused_queues (queue, paused_at) VALUES (?1, ?2) \
    ON CONFLICT (queue) DO NOTHING";
pub const RESUME: &str = "DELETE FROM paused_queues WHERE queue = ?1";
pub const IS_PAUSED: &str = "SELECT EXISTS (SELECT 1 FROM paused_queues WHERE queue = ?1)";
pub const PAUSED_QUEUES: &str = "SELECT queue FROM paused_queues";

// Job rate limits (`super::rating`): a queue's `next` start, ms on the broker's clock.
pub const RATE_NEXT: &str = "SELECT next_start FROM queue_rates WHERE queue = ?1";
pub const SET_RATE_NEXT: &str = "INSERT INTO queue_rates (queue, next_start) VALUES (?1, ?2) \
    ON CONFLICT (queue) DO UPDATE SET next_start = excluded.next_start";
pub const DROP_RATE: &str = "DELETE FROM queue_rates WHERE queue = ?1";
pub const CURSOR: &str = "SELECT value FROM cursors WHERE name = ?1";
pub const SAVE_CURSOR: &str = "INSERT INTO cursors (name, value, updated_at) VALUES (?1, ?2, ?3) \
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";
// The circuit breakers of `notify.send`'s endpoints (`super::circuits`).
pub const CIRCUITS: &str =
    "SELECT endpoint, failures, open_until, cooldown_ms, probing FROM circuits ORDER BY endpoint";
pub const CIRCUIT: &str =
    "SELECT endpoint, failures, open_until, cooldown_ms, probing FROM circuits WHERE endpoint = ?1";
pub const SAVE_CIRCUIT: &str = "INSERT INTO circuits (endpoint, failures, open_until, cooldown_ms, probing) \
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (endpoint) DO UPDATE SET failures = excluded.failures, \
    open_until = excluded.open_until, cooldown_ms = excluded.cooldown_ms, probing = excluded.probing";
pub const DROP_CIRCUIT: &str = "DELETE FROM circuits WHERE endpoint = ?1";
// The registry of worker nodes (`super::nodes`).
pub const NODE_UPSERT: &str = "INSERT INTO worker_nodes (id, last_seen, node) VALUES (?1, ?2, ?3) \
     ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, node = excluded.node";
pub const NODES_EXPIRE: &str = "DELETE FROM worker_nodes WHERE last_seen < ?1";
pub const NODE_DELETE: &str = "DELETE FROM worker_nodes WHERE id = ?1";
pub const NODES: &str = "SELECT last_seen, node FROM worker_nodes WHERE last_seen >= ?1";

/// Queued jobs of a queue at a priority or a more urgent one (an index range of `jobs_fetch`).
pub const READY_AHEAD: &str =
    "SELECT count(*) FROM jobs WHERE queue = ?1 AND state = 'queued' AND priority <= ?2";
// Users' inboxes and Web Push subscriptions (`0008_inbox.sql`, `super::inbox`).
pub const INBOX_TRIM: &str = "DELETE FROM inbox WHERE at < ?1";
pub const INBOX_INSERT: &str = "INSERT INTO inbox (id, user, at, body) VALUES (?1, ?2, ?3, ?4) \
    ON CONFLICT (id) DO NOTHING";
pub const INBOX_SEQ_OF: &str = "SELECT seq FROM inbox WHERE id = ?1";
pub const INBOX_READ_ALL: &str = "SELECT seq, id, user, at, body FROM inbox \
    WHERE seq > ?1 AND at >= ?2 ORDER BY seq LIMIT ?3";
pub const INBOX_READ_USER: &str = "SELECT seq, id, user, at, body FROM inbox \
    WHERE user = ?1 AND seq > ?2 AND at >= ?3 ORDER BY seq LIMIT ?4";
pub const INBOX_EXISTS_AFTER: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE seq > ?1)";
/// The newest entry's `seq`: an append trims only entries older than `keep`, never its own,
/// so the newest handed out is kept. (Not `sqlite_sequence`: an append of a kept id, `ON
/// CONFLICT DO NOTHING`, moves it on without an entry.)
pub const INBOX_END: &str = "SELECT max(seq) FROM inbox";
pub const PUSH_UPSERT: &str = "INSERT INTO push_subscriptions \
    (user, endpoint, p256dh, auth, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
    ON CONFLICT (user, endpoint) DO UPDATE SET p256dh = excluded.p256dh, auth = excluded.auth";
pub const PUSH_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM push_subscriptions WHERE user = ?1 AND endpoint = ?2)";
pub const PUSH_COUNT: &str = "SELECT COUNT(*) FROM push_subscriptions WHERE user = ?1";
pub const PUSH_LIST: &str = "SELECT endpoint, p256dh, auth FROM push_subscriptions \
    WHERE user = ?1 ORDER BY endpoint";
pub const PUSH_DELETE: &str = "DELETE FROM push_subscriptions WHERE user = ?1 AND endpoint = ?2";
