//! The shell's side of user notifications: the ports `notify.send` delivers through
//! (`hopper_jobs::notify::ports`), implemented over the broker, and the users' JWTs.
//!
//! - [`inbox`]: [`BrokerInbox`], the `Inbox` port: keeps a notification in its user's inbox
//!   for `[notify] keep`, which wakes the `GET /v1/notifications` connections of every node
//!   (`crate::api::notifications` streams it).
//! - [`push_store`]: [`BrokerPushSubscriptions`], the `PushSubscriptions` port over the
//!   subscriptions `POST /v1/users/{id}/push-subscriptions` stores.
//! - [`circuits`]: [`BrokerCircuits`], the `Circuits` port: the circuit breakers of
//!   `notify.send`'s endpoints kept in the broker, shared by every node; [`register`] gives
//!   the kind all three ports.
//! - [`jwt`]: [`jwt::Verifier`], a user's identity from a JWT (`[auth] jwt_secret`,
//!   `jwt_public_key`).
//! - [`offline`]: [`Offline`], ports that refuse every call, for `hopper check-config` (which
//!   knows `notify.send` without opening the broker).
//!
//! Not here: the `notify.send` kind itself (`hopper_jobs`), the HTTP routes (`crate::api`).

pub mod circuits;
pub mod inbox;
pub mod jwt;
pub mod offline;
pub mod push_store;

pub use circuits::BrokerCircuits;
pub use inbox::BrokerInbox;
pub use offline::Offline;
pub use push_store::BrokerPushSubscriptions;

use std::sync::Arc;

use hopper_jobs::notify::SendNotification;
use hopper_jobs::notify::ports::{Inbox, PushSubscriptions};
use hopper_workers::{Broker, Registry};

/// The two ports over `broker`, as `notify.send` is given them when it is registered:
/// notifications kept for `[notify] keep`. Without a broker (`hopper check-config`), the
/// [`Offline`] ones.
pub fn ports_or_offline(
    broker: Option<&Arc<dyn Broker>>,
    notify: &hopper_jobs::NotifyConfig,
) -> (Arc<dyn Inbox>, Arc<dyn PushSubscriptions>) {
    match broker {
        Some(b) => ports(b.clone(), notify),
        None => (Arc::new(Offline), Arc::new(Offline)),
    }
}

/// The two ports over `broker`, as `notify.send` is given them when it is registered:
/// notifications kept for `[notify] keep`.
pub fn ports(
    broker: Arc<dyn Broker>,
    notify: &hopper_jobs::NotifyConfig,
) -> (Arc<dyn Inbox>, Arc<dyn PushSubscriptions>) {
    (
        Arc::new(BrokerInbox::new(broker.clone(), notify.keep)),
        Arc::new(BrokerPushSubscriptions::new(broker)),
    )
}

/// Registers `notify.send` with its three ports over `broker`: the inbox, the push
/// subscriptions and the circuits its breakers share with every node.
pub fn register(
    registry: &mut Registry,
    config: &hopper_jobs::JobsConfig,
    broker: Arc<dyn Broker>,
) -> anyhow::Result<()> {
    let (inbox, subscriptions) = ports(broker.clone(), &config.notify);
    let kind = SendNotification::new(config, inbox, subscriptions)?
        .with_circuits(Arc::new(BrokerCircuits::new(broker)));
    registry.add(kind)?;
    Ok(())
}
