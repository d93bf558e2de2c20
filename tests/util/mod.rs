//! Test fixtures, one file a topic:
//!
//! - `daemon`: a scratch directory with its config, the `hopper` CLI, and `serve` / `worker`
//!   processes ([`Scratch`], [`Daemon`]).
//! - `api`: an HTTP client for the `/v1` API and readers of its answers ([`Api`]).
//! - `wait`: polling a condition under one generous deadline instead of sleeping.
//! - `redis`: the shared Redis with a prefix of a test's own, and `redis-server`s of a test's
//!   own, plain or TLS.
//! - `peers`: in-test HTTP and SMTP peers for the jobs to talk to.
//! - `stream`: a WebSocket and an SSE client of `GET /v1/events`.
//!
//! The tests say what they check; the set-up and the waiting live here.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod api;
mod daemon;
pub mod peers;
pub mod redis;
pub mod stream;
pub mod wait;

pub use api::{Api, count, events, ms, noop, sleep, step_ids};
pub use daemon::{Daemon, Scratch};
pub use wait::now_ms;
