//! Test fixtures, one file a topic:
//!
//! - `daemon`: a scratch directory with its config, the `hopper` CLI, and `serve` / `worker`
//!   processes ([`Scratch`], [`Daemon`]).
//! - `api`: an HTTP client for the `/v1` API and readers of its answers ([`Api`]).
//! - `wait`: polling a condition under one generous deadline instead of sleeping.
//! - `redis`: the shared Redis with a prefix of a test's own, and `redis-server`s of a test's
//!   own, plain or TLS.
//! - `peers`: in-test HTTP and SMTP peers for the jobs to talk to.
//! - `notify_peers`: the webhook receiver (HMAC checked) and Web Push service (VAPID checked,
//!   payload decrypted) of `notify.send`, shared with `jobs/tests/kinds`.
//! - `inbox_client`: a user's JWT and WebSocket on `GET /v1/notifications`.
//! - `follow`: a long-running CLI command (`hopper tail`) read line by line ([`Follow`]).
//! - `ws_peer`: an in-test WebSocket server speaking the `/v1/events` contract.
//! - `stream`: a WebSocket and an SSE client of `GET /v1/events`.
//! - `silent_ws`: a WebSocket client that never answers a ping.
//!
//! The tests say what they check; the set-up and the waiting live here.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod api;
mod daemon;
mod follow;
pub mod inbox_client;
pub mod notify_peers;
pub mod peers;
pub mod redis;
pub mod silent_ws;
pub mod stream;
pub mod wait;
pub mod ws_peer;

pub use api::{Api, count, events, ms, noop, sleep, step_ids};
pub use daemon::{Daemon, Scratch};
pub use follow::Follow;
pub use wait::now_ms;
