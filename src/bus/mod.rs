//! The event bus: an event published on a topic becomes one job per matching
//! `[[subscription]]`, stored in one broker batch, all or none.
//!
//! - [`Bus`]: the subscriptions, checked once from the config ([`Bus::compile`]), and
//!   [`Bus::publish`], what `POST /v1/publish` and `hopper publish` call.
//! - `topic`: topics and the AMQP-style patterns (`user.*`, `#`) that match them.
//! - `template`: a subscription's `payload`, minijinja templates over `{data, topic, key}`.
//! - `identity`: a subscription's stable id, part of its jobs' unique keys.
//! - `relay`: Hopper's own job events (`job.dead`, …) published as topics, exactly once
//!   across nodes and restarts.
//!
//! **Idempotency lives in the broker, in the same atomic step as the jobs.** Every job a
//! publish creates carries the unique key `publish:<key>:<subscription id>` (a fresh key
//! when the publisher gave none; the id a short hash of the subscription's content, see
//! `identity`, so that reordering `[[subscription]]`s between a crash and a replay keeps
//! each one's keys), and unique keys are the broker's own (per queue, stored in
//! the same transaction or script as the job), on SQLite, Redis and Redis Cluster alike. A
//! replay of a key therefore creates nothing and answers the first jobs, flagged
//! `duplicate`; a retry after a failure half-way (a Redis connection lost between two
//! queues' scripts) creates exactly what is missing. A key holds as long as its jobs are kept
//! (`[retention]`: 7 days for succeeded jobs by default), so at least the 24 hours the API
//! promises with the default retention.
//!
//! **No loops.** The `publish:` prefix of those unique keys also marks a job as made by a
//! subscription: the relay never turns such a job's events into new jobs.
//!
//! Not here: the HTTP and CLI front doors (`crate::api::publish`, `crate::cli`), the job
//! checks (`crate::service`).

mod identity;
mod relay;
pub mod template;
pub mod topic;

use std::sync::Arc;

use hopper_workers::event::{Event, EventType};
use hopper_workers::job::{JobId, valid_name};
use hopper_workers::{BrokerError, FieldError, Registry};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{SubscriptionConfig, SubscriptionFilter};
use crate::service::{BatchError, EnqueueRequest, Service, Submission};
pub use relay::{RELAY_CURSOR, run_relay};
pub use template::Template;
pub use topic::{Pattern, check_topic};

/// The prefix of the unique key of every job a subscription created: its mark.
pub const KEY_PREFIX: &str = "publish:";
/// Longest publish key, in bytes (the unique keys built from it stay within 256).
pub const MAX_KEY: usize = 200;
/// `hopper_publish_total{topic, matched}`: publishes, by the first matching subscription's
/// pattern (so that the label's values are bounded by the config), or `(unmatched)`.
pub const PUBLISH_TOTAL: &str = "hopper_publish_total";
/// The `topic` label of a publish no subscription matched.
pub const UNMATCHED: &str = "(unmatched)";
/// The first segment of the topics Hopper publishes itself (`job.dead`): a client may not.
pub const JOB_TOPICS: &str = "job";

/// One `[[subscription]]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    /// Its place in the config: `subscription[index]` in messages and answers.
    pub index: usize,
    /// Its stable id (a short hash of its content, see `identity`), part of its jobs'
    /// unique keys: the same wherever the subscription stands in the config.
    pub id: String,
    pub pattern: Pattern,
    pub kind: String,
    pub queue: Option<String>,
    pub priority: Option<u8>,
    pub payload: Template,
    pub filter: SubscriptionFilter,
}

impl Subscription {
    /// The unique key of the job this subscription makes for a publish of `key`:
    /// `publish:<key>:<id>`.
    pub fn unique_key(&self, key: &str) -> String {
        format!("{KEY_PREFIX}{key}:{}", self.id)
    }
}

/// Every subscription of the config. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Bus {
    subscriptions: Arc<Vec<Subscription>>,
}

/// One event to publish, as a client gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    /// A topic (see [`check_topic`]), not under `job.`.
    pub topic: String,
    /// Anything JSON; the templates see it as `data`.
    pub data: Value,
    /// The idempotency key: the same key again creates nothing new.
    pub key: Option<String>,
}

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Published {
    pub topic: String,
    /// How many subscriptions matched (one job each).
    pub matched: usize,
    /// True when the key was seen before: every job existed already, nothing was created.
    pub duplicate: bool,
    /// One per matching subscription, in config order.
    pub jobs: Vec<PublishedJob>,
}

/// One job of a publish.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PublishedJob {
    /// The index of the `[[subscription]]` that made it.
    pub subscription: usize,
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    /// False when its key was taken: this is the job a publish with the same key created.
    pub created: bool,
}

/// Why a publish stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request is wrong (its `topic`, `data` or `key`), named.
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Bus {
    /// Checks every `[[subscription]]`, pushing one problem per bad key
    /// (`subscription[1].payload.to: …`). The kinds are checked apart
    /// ([`Bus::check_kinds`]): which exist depends on the build and the config.
    pub fn compile(configs: &[SubscriptionConfig], p: &mut Vec<String>) -> Self {
        let mut subscriptions = Vec::with_capacity(configs.len());
        let ids = identity::subscription_ids(configs);
        for ((index, c), id) in configs.iter().enumerate().zip(ids) {
            let at = format!("subscription[{index}]");
            let pattern = Pattern::parse(&c.topic)
                .map_err(|e| p.push(format!("{at}.topic: {e}")))
                .ok();
            if c.kind.is_empty() {
                p.push(format!("{at}.kind: is required"));
            }
            if let Some(why) = c
                .queue
                .as_deref()
                .and_then(|q| crate::config::job_queue_problem(q, &c.kind))
            {
                p.push(format!("{at}.queue: {why}"));
            }
            if c.priority.is_some_and(|pr| pr > 9) {
                p.push(format!("{at}.priority: must be 0 to 9"));
            }
            let payload = Template::compile(&c.payload.clone().unwrap_or_default())
                .map_err(|(key, why)| p.push(format!("{at}.payload.{key}: {why}")))
                .ok();
            // Topics under "job." are Hopper's own (`job.dead`, ...), which no client may
            // publish: a pattern naming that prefix and none of them never fires.
            if let Some(pattern) = &pattern
                && pattern.as_str().split('.').next() == Some(JOB_TOPICS)
                && !EventType::ALL.iter().any(|t| pattern.matches(t.as_str()))
            {
                p.push(format!(
                    "{at}.topic: {:?} matches none of the job events ({}), the only topics \
                     under \"job.\"",
                    c.topic,
                    EventType::ALL.map(EventType::as_str).join(", ")
                ));
            }
            let filter = c.filter.clone().unwrap_or_default();
            if let Some(pattern) = &pattern
                && (filter.queue.is_some() || filter.kind.is_some())
                && !pattern.may_match_under(JOB_TOPICS)
            {
                p.push(format!(
                    "{at}.filter: only a subscription to job events (a topic under \"job.\") \
                     takes a filter"
                ));
            }
            if let Some(q) = &filter.queue
                && !valid_name(q)
            {
                p.push(format!(
                    "{at}.filter.queue: {q:?} is not a valid queue name"
                ));
            }
            if let (Some(pattern), Some(payload)) = (pattern, payload) {
                subscriptions.push(Subscription {
                    index,
                    id,
                    pattern,
                    kind: c.kind.clone(),
                    queue: c.queue.clone(),
                    priority: c.priority,
                    payload,
                    filter,
                });
            }
        }
        Self {
            subscriptions: Arc::new(subscriptions),
        }
    }

    /// The problems of subscriptions whose kind `registry` does not know, or whose payload
    /// (when it has no template) their kind refuses.
    pub fn check_kinds(&self, registry: &Registry) -> Vec<String> {
        let mut problems = Vec::new();
        for s in self.subscriptions.iter().filter(|s| !s.kind.is_empty()) {
            match registry.get(&s.kind) {
                None => problems.push(format!(
                    "subscription[{}].kind: no job kind {:?} is registered (known: {})",
                    s.index,
                    s.kind,
                    registry.kinds().collect::<Vec<_>>().join(", ")
                )),
                // A payload without templates is every job's: one its kind refuses would
                // fail every publish (blaming the client's `data`), so it is checked here, as
                // a schedule's is.
                Some(handler) => {
                    if let Some(payload) = s.payload.fixed()
                        && let Err(e) = handler.validate(&payload)
                    {
                        problems.push(format!(
                            "subscription[{}].{}: {}",
                            s.index, e.field, e.message
                        ));
                    }
                }
            }
        }
        problems
    }

    /// The subscriptions.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// Whether any subscription may take Hopper's own `job.*` events (the relay runs only
    /// then).
    pub fn takes_job_events(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|s| s.pattern.may_match_under(JOB_TOPICS))
    }

    /// Publishes a client's event: checks it, then stores one job per matching subscription
    /// in one broker batch, all or none. See the module docs for the key.
    pub async fn publish(
        &self,
        service: &Service,
        req: Publish,
    ) -> Result<Published, PublishError> {
        check_topic(&req.topic)?;
        if req.topic.split('.').next() == Some(JOB_TOPICS) {
            return Err(FieldError::invalid(
                "topic",
                "topics under \"job.\" are Hopper's own job events; publish under another name",
            )
            .into());
        }
        // Counted in bytes, as the unique keys it becomes are, and told in bytes: a key of
        // non-ASCII text reaches the limit in fewer characters.
        if let Some(key) = &req.key
            && (key.is_empty() || key.len() > MAX_KEY)
        {
            return Err(FieldError::invalid(
                "key",
                format!(
                    "must be 1 to {MAX_KEY} bytes of UTF-8; this one is {} bytes",
                    key.len()
                ),
            )
            .into());
        }
        let matching: Vec<&Subscription> = self
            .subscriptions
            .iter()
            .filter(|s| s.pattern.matches(&req.topic))
            .collect();
        fan_out(service, &matching, &req.topic, req.data, req.key).await
    }

    /// Publishes one of Hopper's own job events on its type's topic (`job.dead`), to the
    /// subscriptions whose filter takes its queue and kind, with the event's id as the key:
    /// whichever node publishes it, and however often, its jobs are created once.
    pub async fn publish_event(
        &self,
        service: &Service,
        event: &Event,
    ) -> Result<Published, PublishError> {
        let topic = event.kind_of_event.as_str();
        let matching: Vec<&Subscription> = self.event_subscriptions(event).collect();
        let data = serde_json::to_value(event).map_err(BrokerError::backend)?;
        fan_out(service, &matching, topic, data, Some(event.id.clone())).await
    }

    /// The subscriptions that take a job event: topic and filter.
    pub fn event_subscriptions<'a>(
        &'a self,
        event: &'a Event,
    ) -> impl Iterator<Item = &'a Subscription> + 'a {
        let topic = event.kind_of_event.as_str();
        self.subscriptions.iter().filter(move |s| {
            s.pattern.matches(topic)
                && s.filter.queue.as_ref().is_none_or(|q| *q == event.queue)
                && s.filter.kind.as_ref().is_none_or(|k| *k == event.kind)
        })
    }
}

/// Renders each matching subscription's job and stores them all in one batch.
async fn fan_out(
    service: &Service,
    matching: &[&Subscription],
    topic: &str,
    data: Value,
    key: Option<String>,
) -> Result<Published, PublishError> {
    let label = matching
        .first()
        .map_or(UNMATCHED, |s| s.pattern.as_str())
        .to_owned();
    // Counted once accepted: a publish refused (a template that fails on its data, a job the
    // engine refuses) published nothing.
    let count = || {
        metrics::counter!(PUBLISH_TOTAL, "topic" => label.clone(), "matched" => (!matching.is_empty()).to_string())
            .increment(1);
    };
    if matching.is_empty() {
        count();
        return Ok(Published {
            topic: topic.to_owned(),
            matched: 0,
            duplicate: false,
            jobs: Vec::new(),
        });
    }
    let context = json!({ "data": data, "topic": topic, "key": key });
    // A publish without a key still marks its jobs (see the module docs), with a key no
    // other publish has.
    let key = key.unwrap_or_else(|| JobId::generate().0);
    let mut batch = Vec::with_capacity(matching.len());
    for s in matching {
        let payload = s.payload.render(&context).map_err(|(at, why)| {
            FieldError::invalid(
                "data",
                format!("subscription[{}].payload.{at}: {why}", s.index),
            )
        })?;
        let req = EnqueueRequest {
            queue: s.queue.clone(),
            priority: s.priority,
            unique_key: Some(s.unique_key(&key)),
            ..EnqueueRequest::new(s.kind.clone(), payload)
        };
        batch.push(Submission {
            first: req,
            then: Vec::new(),
        });
    }
    let done = service.submit_batch(batch).await.map_err(|e| match e {
        BatchError::Job { index, error } => {
            let s = matching.get(index).map_or(0, |s| s.index);
            PublishError::Field(FieldError::invalid(
                "data",
                format!(
                    "subscription[{s}]: its job's {}: {}",
                    error.field, error.message
                ),
            ))
        }
        BatchError::Broker(e) => PublishError::Broker(e),
    })?;
    count();
    let jobs: Vec<PublishedJob> = matching
        .iter()
        .zip(done)
        .map(|(s, d)| PublishedJob {
            subscription: s.index,
            id: d.job.id,
            kind: d.job.kind,
            queue: d.job.queue,
            created: d.created,
        })
        .collect();
    Ok(Published {
        topic: topic.to_owned(),
        matched: matching.len(),
        duplicate: jobs.iter().all(|j| !j.created),
        jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(text: &str) -> Vec<SubscriptionConfig> {
        #[derive(serde::Deserialize)]
        struct File {
            subscription: Vec<SubscriptionConfig>,
        }
        toml::from_str::<File>(text)
            .expect("subscriptions")
            .subscription
    }

    #[test]
    fn reordering_subscriptions_keeps_each_ones_unique_key() {
        let a = "[[subscription]]\ntopic = \"user.*\"\nkind = \"email\"\npayload = { to = \"{{ data.email }}\" }\n";
        let b = "[[subscription]]\ntopic = \"user.*\"\nkind = \"webhook\"\nqueue = \"hooks\"\n";
        let mut p = Vec::new();
        let before = Bus::compile(&configs(&format!("{a}{b}")), &mut p);
        let after = Bus::compile(&configs(&format!("{b}{a}")), &mut p);
        assert!(p.is_empty(), "{p:?}");
        let keys = |bus: &Bus, kind: &str| {
            bus.subscriptions()
                .iter()
                .find(|s| s.kind == kind)
                .map(|s| s.unique_key("k1"))
                .expect("the subscription")
        };
        for kind in ["email", "webhook"] {
            assert_eq!(keys(&before, kind), keys(&after, kind), "{kind}");
            assert!(keys(&before, kind).starts_with("publish:k1:"), "{kind}");
        }
        assert_ne!(keys(&before, "email"), keys(&before, "webhook"));
    }

    /// Under "job." only the job events are ever published: a pattern there that matches
    /// none of them is refused, naming it; one that matches some is taken.
    #[test]
    fn a_job_topic_matching_no_job_event_is_refused() {
        let sub =
            |topic: &str| format!("[[subscription]]\ntopic = \"{topic}\"\nkind = \"sys.noop\"\n");
        for never in ["job.foo", "job.dead.x", "job.*.*"] {
            let mut p = Vec::new();
            Bus::compile(&configs(&sub(never)), &mut p);
            assert_eq!(p.len(), 1, "{never}: {p:?}");
            assert!(p[0].starts_with("subscription[0].topic:"), "{p:?}");
            assert!(p[0].contains("job.dead"), "{p:?}");
        }
        for fires in [
            "job.dead",
            "job.*",
            "job.#",
            "job.dead.#",
            "#",
            "*.dead",
            "user.created",
        ] {
            let mut p = Vec::new();
            Bus::compile(&configs(&sub(fires)), &mut p);
            assert!(p.is_empty(), "{fires}: {p:?}");
        }
    }
}
