//! Placeholder: the Redis broker (being written).
use std::sync::Arc;

use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};

/// Connects the Redis broker at `url` (see `RedisBroker::connect`).
pub async fn connect(_url: &str, _prefix: &str, _clock: Arc<dyn Clock>) -> BrokerResult<Arc<dyn Broker>> {
    Err(BrokerError::Config("the Redis broker is not built yet".into()))
}
