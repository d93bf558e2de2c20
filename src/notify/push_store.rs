//! The `PushSubscriptions` port over the broker: the Web Push subscriptions users registered
//! with `POST /v1/users/{id}/push-subscriptions` (`crate::api::push`), as `notify.send`'s
//! `push` channel reads them and forgets the ones whose push service answered 404 or 410.

use std::sync::Arc;

use async_trait::async_trait;
use hopper_jobs::notify::ports::{PushKeys, PushSubscription, PushSubscriptions};
use hopper_workers::Broker;
use hopper_workers::broker::WebPush;

/// [`PushSubscriptions`] over a broker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerPushSubscriptions {
    broker: Arc<dyn Broker>,
}

impl BrokerPushSubscriptions {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self { broker }
    }
}

/// The port's shape of a stored subscription.
pub fn to_port(w: WebPush) -> PushSubscription {
    PushSubscription {
        endpoint: w.endpoint,
        keys: PushKeys {
            p256dh: w.p256dh,
            auth: w.auth,
        },
    }
}

#[async_trait]
impl PushSubscriptions for BrokerPushSubscriptions {
    async fn list(&self, user: &str) -> Result<Vec<PushSubscription>, String> {
        let subs = self
            .broker
            .push_subscriptions(user)
            .await
            .map_err(|e| format!("reading the push subscriptions of user {user}: {e}"))?;
        Ok(subs.into_iter().map(to_port).collect())
    }

    async fn remove(&self, user: &str, endpoint: &str) -> Result<(), String> {
        self.broker
            .push_unsubscribe(user, endpoint)
            .await
            .map(drop)
            .map_err(|e| format!("removing a push subscription of user {user}: {e}"))
    }
}
