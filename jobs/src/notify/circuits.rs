//! The port through which the circuit breakers (`breaker.rs`) share their state: the shell
//! implements it over the broker (`hopper::notify::BrokerCircuits`), so that every node
//! agrees on which endpoints are down and operators can see them. The jobs crate never sees
//! a broker.
//!
//! Times cross the port as delays from now (the store stamps them on its own clock), never as
//! instants of this process.

use std::time::Duration;

use async_trait::async_trait;

/// One endpoint's shared circuit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CircuitState {
    /// Consecutive failures while closed.
    pub failures: u32,
    /// `Some` while open: how long until its probe may go (zero: it may go now).
    pub open_for: Option<Duration>,
    /// The cool-down of the current (or next) opening.
    pub cooldown: Duration,
    /// A probe is under way on some node: other deliveries keep waiting.
    pub probing: bool,
}

/// Where the circuits of every node are kept.
#[async_trait]
pub trait Circuits: Send + Sync {
    /// The circuit of `endpoint`; `None` when it is closed with no failures. `Err` describes
    /// why the store cannot be read (the breaker then goes on with its own state).
    async fn load(&self, endpoint: &str) -> Result<Option<CircuitState>, String>;

    /// Stores the circuit of `endpoint`, replacing it (a closed one with no failures is
    /// forgotten).
    async fn save(&self, endpoint: &str, state: &CircuitState) -> Result<(), String>;
}
