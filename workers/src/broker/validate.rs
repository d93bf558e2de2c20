//! The checks every broker makes on its input before it writes anything.
//!
//! It owns the broker-independent half of [`Broker::enqueue`](super::Broker::enqueue)'s "all or
//! none": every job of a batch is validated before the first is stored, so one bad job fails
//! the batch with a [`FieldError`](crate::job::FieldError) and writes nothing. What a valid
//! job is belongs to [`NewJob::validate`]; how a batch is stored belongs to each broker.

use crate::error::BrokerResult;
use crate::job::NewJob;

/// Validates every job of an enqueue batch; the first invalid one is the error.
// Only the SQLite broker calls it so far; the Redis broker's enqueue should too.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(super) fn validate_batch(jobs: &[NewJob]) -> BrokerResult<()> {
    for job in jobs {
        job.validate()?;
    }
    Ok(())
}
