//! Placeholder: the SQLite broker (being written).
use std::sync::Arc;

use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};

/// Opens the SQLite broker at `path` (see `SqliteBroker::open`).
pub async fn open(_path: &str, _clock: Arc<dyn Clock>) -> BrokerResult<Arc<dyn Broker>> {
    Err(BrokerError::Config("the SQLite broker is not built yet".into()))
}
