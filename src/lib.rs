//! `hopper`: the application shell of Hopper, a durable job-queue daemon.
//!
//! The shell owns process concerns only: the command line, the config file, the HTTP API,
//! signals, logging and the wiring of the engine's parts. It holds no SQL, no Lua and no job
//! logic: storing and running jobs is `hopper-workers`' business, what a job does is
//! `hopper-jobs`'.
//!
//! # Layout
//!
//! - [`cli`]: the `hopper` commands and their exit codes; inspection commands talk to the
//!   broker directly.
//! - [`exit`]: the exit codes of every command.
//! - [`config`]: the typed `config.toml`, its defaults, environment overrides, `validate()`.
//! - [`app`]: wiring: broker + registry + pool + HTTP server ([`app::serve`]) or the pool
//!   alone ([`app::worker`]), a node built once.
//! - [`api`]: the HTTP API, built by [`api::router`] from an [`api::AppState`]; its
//!   `events` module streams `GET /v1/events` from one reader of the event log per process;
//!   `job_body` reads one job's JSON for `POST /v1/jobs`, `POST /v1/jobs/batch` and
//!   `hopper enqueue --file`; `openapi` serves the OpenAPI document generated from the same
//!   route list; `rate_limit` enforces `[server] rate_limit` on `/v1`.
//! - [`bus`]: the event bus: `[[subscription]]`s, `POST /v1/publish`'s fan-out into one
//!   batch of jobs, and the relay of job events (`job.dead`) to it.
//! - [`notify`]: user notifications' ports over the broker (a user's inbox, their Web Push
//!   subscriptions) for `notify.send` (registered by [`app`]), and users' JWTs;
//!   `api::notifications` streams the inbox (`GET /v1/notifications`), `api::push` stores
//!   the subscriptions.
//! - [`metrics`]: `GET /metrics`: the Prometheus recorder, the gauges read at scrape time
//!   (queue depth, worker slots), HTTP and event-stream metrics.
//! - [`service`]: what both front doors call: submit a job or a chain, or a batch of them;
//!   look one up.
//!   [`service::submit`] is the one place a new job is checked.
//! - [`view`]: the JSON shown around jobs (a job's history and chain steps) and the queue
//!   listing; jobs and events serialize themselves.
//! - [`bench`]: `hopper bench`, the drain, enqueue-batch, latency and events workloads, and the CPU
//!   each job cost (this process, Redis).
//! - [`chaos`]: `hopper chaos`, a fault campaign on processes of its own (broker, API,
//!   workers) that kills, stops and restarts them while `chaos.ledger` jobs run, then prints
//!   a ledger of lost and duplicated jobs; one file each for the driver (`mod`), the
//!   processes, the faults, the HTTP client, the ledger kind, the ledger check, the log
//!   count and the report.
//! - [`logging`]: the log's level and format (`[log] format`: text or JSON lines).
//! - [`shutdown`]: Ctrl-C and SIGTERM.
//! - [`systemd`]: the notify protocol of `Type=notify` units: `READY=1`, `STATUS=`, a
//!   watchdog fed only while the pool makes progress, `STOPPING=1` and stop-timeout
//!   extensions.
//! - [`out`]: writing results to stdout (lines, JSON, tables).

pub mod api;
pub mod app;
pub mod bench;
pub mod bus;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod exit;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod out;
pub mod service;
pub mod shutdown;
pub mod systemd;
pub mod view;
