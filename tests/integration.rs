//! Integration tests of the daemon as shipped: the real `hopper` binary, a real SQLite file
//! (and a real Redis where a test says so), real HTTP on 127.0.0.1.
//!
//! One test binary (like ripgrep's `tests/tests.rs`); each module is one area.

/// Fixtures: daemons and the CLI in a scratch directory, the HTTP API, waiting, Redis, peers.
mod util;

/// Bulk enqueue: `POST /v1/jobs/batch` and `hopper enqueue --file`, on SQLite and Redis.
mod e2e_batch;
/// `hopper bench --workload notify`, run small: notifications delivered to WebSocket users.
mod e2e_bench_notify;
/// The event bus: `POST /v1/publish` and `hopper publish` fanning out to `[[subscription]]`
/// jobs, idempotency keys, and `job.dead` relayed exactly once across nodes and restarts.
mod e2e_bus;
/// `hopper chaos`: a small fault campaign's ledger, and its kind kept out of normal use.
mod e2e_chaos;
/// The circuit breakers of notification endpoints shared through the broker, shown in
/// `GET /v1/circuits`, `hopper queues` and `/metrics`.
mod e2e_circuits;
/// The dashboard at `GET /`, in a real headless Chromium.
mod e2e_dashboard;
/// The demo chain: etl.sync -> pdf.report -> email.send, with real HTTP and SMTP peers.
mod e2e_demo_chain;
/// `GET /v1/events`: WebSocket, SSE and JSON page; resume, lag, auth, across processes.
mod e2e_events;
/// A worker killed mid-job, cancel, graceful and hard shutdown, durability across SIGKILL.
mod e2e_failures;
/// Bad input: HTTP 4xx naming the field, unknown config keys, bad CLI flags.
mod e2e_input;
/// Priorities, delays, retries with backoff, dead jobs and retrying them, chains, schedules
/// across processes, retention.
mod e2e_lifecycle;
/// The daemon's log: JSON lines (`[log] format`) and the job's fields on every line it causes.
mod e2e_logs;
/// `GET /metrics`: outcome counters and queue gauges after a known mix of jobs, parsed as
/// Prometheus text; the token rule; `hopper worker`'s `metrics_listen`.
mod e2e_metrics;
/// `GET /v1/notifications` (JWT, replay, live across nodes, 4001, rate limit) and a user's
/// Web Push subscriptions.
mod e2e_notifications;
/// `notify.send` end to end: all four channels to real peers (WebSocket as user 42 and not
/// 43, SMTP, Web Push decrypted, signed webhook) on SQLite and Redis; a down webhook retried.
mod e2e_notify_send;
/// `[[queue]] rate_limit`: worker processes on Redis and on one SQLite file together start
/// no more of a queue's jobs a second than its rate.
mod e2e_queue_rates;
/// Queue controls: pause, resume and retry-dead over HTTP and the CLI, across processes.
mod e2e_queues;
/// `[server] rate_limit`: 429 with Retry-After per token or address, bad rates refused.
mod e2e_ratelimit;
/// The Redis broker: three nodes through a SIGKILL and a SIGSTOP past the lease, a Redis
/// restart under load, the README tour with `HOPPER_BROKER`, and a TLS broker.
mod e2e_redis;
/// systemd's notify protocol (READY, STATUS, a watchdog that stops when the fetch loop hangs,
/// STOPPING) on a socket the test binds, and a rolling restart of three worker nodes.
mod e2e_systemd;
/// `hopper tail`: following the event log of a broker or of a remote node's WebSocket, with
/// a job's exit code.
mod e2e_tail;
/// The newcomer's path: `serve` with no config, enqueue over HTTP, inspect with the CLI.
mod e2e_tour;
/// "Why is my job not running" (`waiting` of a job, one test per reason) and the registry of
/// worker nodes (`GET /v1/workers`, `hopper workers`) on SQLite and Redis.
mod e2e_why;
