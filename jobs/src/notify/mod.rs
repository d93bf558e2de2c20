//! `notify.send`: one notification delivered to a user over several channels, each one
//! delivered and recorded on its own.
//!
//! Payload:
//!
//! ```json
//! {"user": "42", "type": "welcome", "title": "Hello", "body": "Welcome aboard",
//!  "data": {"any": "json"}, "channels": ["websocket", "email", "push", "webhook"],
//!  "email": "ada@example.com"}
//! ```
//!
//! `type` (default `"default"`) selects the email templates; `email` is the address of the
//! `email` channel (without it that channel is skipped).
//! With `push` among the channels, the push message (the notification as JSON, its id a
//! 36-byte job id) must fit one Web Push, [`push::MAX_PAYLOAD`] bytes: a larger one is
//! refused at enqueue, naming the largest of `title`, `body` and `data`.
//!
//! **Delivery record.** Every delivery (a channel; for `webhook` each URL, for `push` each
//! subscription) is recorded as `delivered`, `failed` (with the error) or `skipped` (with
//! why) in the job's checkpoint, saved after each one. An endpoint is named there, and in
//! errors, by its [`breaker::label`] (scheme, host, port, `/…#HASH`), never whole: a webhook
//! URL's path or query may be its secret, a push endpoint is a capability URL (an entry a
//! version before labels saved under the whole URL is moved to the label). A retry reads it
//! back and sends only what is not done yet, so a failing webhook is retried without sending
//! the email twice.
//! The URLs of `webhook` are sent to side by side, and so are the push services of `push`
//! (each service's subscriptions one after another, behind its one circuit), up to
//! [`SIDE_BY_SIDE`] at once: an endpoint that answers only at `[http] timeout`, or never,
//! does not hold back the others, unless that many such endpoints take every place. A URL
//! listed twice is one endpoint.
//! Each channel's idempotency key is `<job id>.<channel>` (`Hopper-Id` of webhooks, the
//! email's `Message-ID`); the inbox notification's id is the job id.
//!
//! **Outcome.** Every channel delivered or skipped: succeeded, the record as the result
//! (`{"channels": {"email": {"state": "delivered"}, ...}}`). A retryable failure (5xx,
//! timeout, unreachable): the job retries with its backoff, or after the longest
//! `Retry-After` (seconds) a failed endpoint answered with (within `[retry] backoff_max`).
//! Only endpoints whose circuit is open left to do: the job snoozes until the earliest probe,
//! its attempts not spent. Only permanent failures left (a 4xx webhook answer): dead, the
//! record in its checkpoint.
//! Retrying a dead notification (`hopper retry`) starts at attempt 1, which tries every
//! failed delivery again and still sends nothing that was delivered.
//!
//! Files: `channels.rs` (the channel names), `record.rs` (the delivery record), `email.rs`,
//! `webhook.rs`, `push.rs` (one channel each), `breaker.rs` (the circuit breaker per
//! endpoint), `ports.rs` (what the kind needs from the shell: the inbox and the push
//! subscriptions, implemented over the broker by `hopper::notify`), `circuits.rs` (the port
//! through which the breakers share their state between nodes, also the shell's).

pub mod breaker;
pub mod channels;
pub mod circuits;
mod email;
pub mod ports;
pub mod push;
pub mod record;
pub mod webhook;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, stream};

use hopper_workers::{FieldError, JobContext, JobError, JobResult, Kind, Registry};
use lettre::message::Mailbox;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use self::breaker::Breakers;
use self::channels::Channel;
use self::circuits::Circuits;
use self::email::Mailer;
use self::ports::{Inbox, Notification, PushSubscription, PushSubscriptions};
use self::push::Pusher;
use self::record::{Outcome, Record};
use self::webhook::{Sent, Webhooks};
use crate::email::SendEmail;
use crate::http::HttpClient;
use crate::{JobsConfig, JobsError};

/// Deliveries by `channel` and `outcome` (`delivered`, `failed`, `skipped`, `waiting` for an
/// open circuit).
pub const NOTIFICATIONS: &str = "hopper_notifications_total";
/// Seconds per delivery attempt, by `channel`.
pub const DELIVERY_SECONDS: &str = "hopper_notify_delivery_seconds";
/// 1 while the circuit of `endpoint` (a webhook URL, a push service origin) is open.
pub const CIRCUIT_OPEN: &str = "hopper_notify_circuit_open";

/// How many endpoints of one channel (webhook URLs, push services) one delivery sends to at
/// once: each may take up to `[http] timeout` to fail.
const SIDE_BY_SIDE: usize = 8;

/// The payload of `notify.send` (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyArgs {
    user: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    title: String,
    body: String,
    #[serde(default)]
    data: Value,
    channels: Vec<Channel>,
    #[serde(default)]
    email: Option<String>,
    /// A chain predecessor's result: accepted, not read.
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
}

/// `notify.send`.
pub struct SendNotification {
    inbox: Arc<dyn Inbox>,
    subscriptions: Arc<dyn PushSubscriptions>,
    mailer: Mailer,
    webhooks: Webhooks,
    urls: Vec<String>,
    pusher: Option<Pusher>,
    breakers: Arc<Breakers>,
}

impl std::fmt::Debug for SendNotification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendNotification")
            .field("webhooks", &self.urls)
            .field("push", &self.pusher.is_some())
            .finish_non_exhaustive()
    }
}

/// Registers `notify.send`, delivering to `inbox` and to the subscriptions of
/// `subscriptions` (the shell's broker-backed ports), with the `[notify]`, `[smtp]` and
/// `[http]` settings of `config`.
pub fn register_notify(
    registry: &mut Registry,
    config: &JobsConfig,
    inbox: Arc<dyn Inbox>,
    subscriptions: Arc<dyn PushSubscriptions>,
) -> Result<(), JobsError> {
    registry.add(SendNotification::new(config, inbox, subscriptions)?)?;
    Ok(())
}

/// Checks `[notify] templates` (a directory whose `*.j2` files all parse), for a node's start
/// and `hopper check-config`; one-shot commands (`hopper enqueue`) never render an email and
/// may run from another directory than the node's, where a relative path means nothing.
pub fn check_templates(config: &JobsConfig) -> Result<(), JobsError> {
    email::check_templates(&config.notify.templates).map_err(|message| JobsError::Config {
        key: "notify.templates".to_owned(),
        message,
    })
}

impl SendNotification {
    /// The kind for `config`, delivering through the two ports.
    pub fn new(
        config: &JobsConfig,
        inbox: Arc<dyn Inbox>,
        subscriptions: Arc<dyn PushSubscriptions>,
    ) -> Result<Self, JobsError> {
        config.validate()?;
        let n = &config.notify;
        let client = HttpClient::new(config)?;
        let pusher = if n.vapid_private_key.as_os_str().is_empty() {
            None
        } else {
            Some(Pusher::load(
                client.clone(),
                &n.vapid_private_key,
                &n.vapid_subject,
            )?)
        };
        Ok(Self {
            inbox,
            subscriptions,
            mailer: Mailer {
                transport: SendEmail::new(config)?,
                templates: n.templates.clone(),
            },
            webhooks: Webhooks {
                client,
                secret: n.webhook_secret.clone(),
            },
            urls: n.webhooks.clone(),
            pusher,
            breakers: Arc::new(Breakers::new(n.breaker_failures, n.breaker_cooldown)),
        })
    }

    /// The same kind, its circuit breakers sharing their state through `store` (the broker,
    /// in the shell) so that every node agrees on which endpoints are down.
    #[must_use]
    pub fn with_circuits(mut self, store: Arc<dyn Circuits>) -> Self {
        self.breakers = Arc::new(self.breakers.with_settings().shared(store));
        self
    }

    /// The circuits of this kind's endpoints.
    pub fn breakers(&self) -> Arc<Breakers> {
        Arc::clone(&self.breakers)
    }
}

/// What one attempt found besides its record: whether a delivery failed in a way a retry may
/// fix, the longest `Retry-After` a failed endpoint asked for, and the earliest probe of an
/// open circuit it had to wait for.
#[derive(Default)]
struct Attempt {
    retry: bool,
    retry_after: Option<Duration>,
    wait: Option<Duration>,
}

impl Attempt {
    fn wait(&mut self, d: Duration) {
        self.wait = Some(self.wait.map_or(d, |w| w.min(d)));
    }

    /// Takes in one endpoint's failed delivery.
    fn endpoint_failed(&mut self, sent: &webhook::Sent) {
        self.retry = true;
        if let Some(d) = sent.retry_after {
            self.retry_after = Some(self.retry_after.map_or(d, |a| a.max(d)));
        }
    }
}

/// Counts one delivery's outcome.
fn count(channel: Channel, outcome: &Outcome, started: Instant) {
    count_took(channel, outcome, started.elapsed());
}

/// [`count`] for a delivery that took `took`.
fn count_took(channel: Channel, outcome: &Outcome, took: Duration) {
    let label = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Failed { .. } => "failed",
        Outcome::Skipped { .. } => "skipped",
    };
    metrics::counter!(NOTIFICATIONS, "channel" => channel.name(), "outcome" => label).increment(1);
    metrics::histogram!(DELIVERY_SECONDS, "channel" => channel.name()).record(took.as_secs_f64());
}

/// One endpoint's delivery: how it went and how long it took, or how long its open circuit
/// holds it back.
type Delivery = Result<(Sent, Duration), Duration>;

/// A retryable or permanent job error as a delivery outcome.
fn outcome_of(r: Result<(), JobError>, attempt: &mut Attempt) -> Outcome {
    match r {
        Ok(()) => Outcome::Delivered,
        Err(JobError::Permanent { message }) => Outcome::permanent(message),
        Err(e) => {
            attempt.retry = true;
            Outcome::retryable(webhook::describe(&e))
        }
    }
}

impl SendNotification {
    async fn save(cx: &JobContext, record: &Record) -> Result<(), JobError> {
        cx.save_checkpoint(record.to_value()).await
    }

    /// The `webhook` channel: each URL on its own, behind its circuit, up to [`SIDE_BY_SIDE`]
    /// at once (one URL that answers slowly, or not until the client's timeout, does not
    /// hold back the others). The record is saved as each delivery ends.
    async fn webhooks(
        &self,
        cx: &JobContext,
        n: &Notification,
        record: &mut Record,
        attempt: &mut Attempt,
    ) -> Result<(), JobError> {
        let ch = Channel::Webhook;
        if self.urls.is_empty() {
            record.set_channel(ch.name(), Outcome::skipped("no webhooks configured"));
            return Ok(());
        }
        let id = ch.idempotency_key(cx.job().id.as_str());
        let body = json!({
            "id": id, "type": n.kind, "user": n.user, "title": n.title, "body": n.body,
            "data": n.data,
        })
        .to_string();
        let mut due: Vec<(String, String)> = Vec::new();
        for url in &self.urls {
            let shown = breaker::label(url);
            record.relabel_endpoint(ch.name(), url, &shown);
            record.relabel_endpoint(ch.name(), &breaker::label_as_written(url), &shown);
            // A URL listed twice is one endpoint: delivered once.
            if !record.endpoint_done(ch.name(), &shown) && !due.iter().any(|(_, s)| *s == shown) {
                due.push((url.clone(), shown));
            }
        }
        let (id, body) = (id.as_str(), body.as_bytes());
        let sends = stream::iter(due)
            .map(|(url, shown): (String, String)| async move {
                let sent = self.webhook(&url, &shown, id, body).await;
                (shown, sent)
            })
            .buffer_unordered(SIDE_BY_SIDE);
        Self::note_all(cx, ch, sends, record, attempt).await?;
        record.settle_endpoints(ch.name());
        Ok(())
    }

    /// One webhook delivery behind the circuit of its URL.
    async fn webhook(&self, url: &str, shown: &str, id: &str, body: &[u8]) -> Delivery {
        self.breakers.admit(url).await?;
        let started = Instant::now();
        let sent = self.webhooks.send(url, shown, id, body).await;
        let took = started.elapsed();
        if sent.endpoint_failed {
            self.breakers.failure(url).await;
        } else {
            self.breakers.success(url).await;
        }
        Ok((sent, took))
    }

    /// Notes each endpoint's delivery as it ends, in the record (saved after each) and the
    /// attempt. Every delivery under way is waited for, even once a save failed (the error
    /// is answered after): dropping them would forget deliveries made (sent again by the
    /// retry) and probes whose outcome no breaker then hears.
    async fn note_all(
        cx: &JobContext,
        ch: Channel,
        mut sends: impl Stream<Item = (String, Delivery)> + Unpin,
        record: &mut Record,
        attempt: &mut Attempt,
    ) -> Result<(), JobError> {
        let mut unsaved = None;
        while let Some((shown, sent)) = sends.next().await {
            let (sent, took) = match sent {
                Ok(done) => done,
                Err(wait) => {
                    attempt.wait(wait);
                    metrics::counter!(NOTIFICATIONS, "channel" => ch.name(), "outcome" => "waiting")
                        .increment(1);
                    record.set_endpoint(
                        ch.name(),
                        &shown,
                        Outcome::retryable("circuit open: waiting for the next probe"),
                    );
                    continue;
                }
            };
            if sent.endpoint_failed {
                attempt.endpoint_failed(&sent);
            }
            count_took(ch, &sent.outcome, took);
            record.set_endpoint(ch.name(), &shown, sent.outcome);
            if unsaved.is_none()
                && let Err(e) = Self::save(cx, record).await
            {
                unsaved = Some(e);
            }
        }
        unsaved.map_or(Ok(()), Err)
    }

    /// The `push` channel: each subscription on its own, behind its push service's circuit.
    /// The push services are sent to side by side, up to [`SIDE_BY_SIDE`] at once, and the
    /// subscriptions of one service one after the other (so that the failures which open its
    /// circuit hold back its later subscriptions, as they would any later delivery).
    async fn push(
        &self,
        cx: &JobContext,
        n: &Notification,
        record: &mut Record,
        attempt: &mut Attempt,
    ) -> Result<(), JobError> {
        let ch = Channel::Push;
        let Some(pusher) = &self.pusher else {
            record.set_channel(
                ch.name(),
                Outcome::skipped("Web Push is not configured ([notify] vapid_private_key)"),
            );
            return Ok(());
        };
        let subs = match self.subscriptions.list(&n.user).await {
            Ok(s) => s,
            Err(e) => {
                attempt.retry = true;
                record.set_channel(
                    ch.name(),
                    Outcome::retryable(format!("listing subscriptions: {e}")),
                );
                return Ok(());
            }
        };
        if subs.is_empty()
            && record
                .channels
                .get(ch.name())
                .is_none_or(|c| c.endpoints.is_empty())
        {
            record.set_channel(ch.name(), Outcome::skipped("no push subscriptions"));
            return Ok(());
        }
        let payload = serde_json::to_vec(n).unwrap_or_default();
        // By push service, in the order their first subscription comes.
        // Owned, as a stream's items (borrowed ones make the future's `Send` unprovable).
        let mut by_origin: Vec<(String, Vec<(PushSubscription, String)>)> = Vec::new();
        for sub in &subs {
            let shown = breaker::label(&sub.endpoint);
            record.relabel_endpoint(ch.name(), &sub.endpoint, &shown);
            record.relabel_endpoint(ch.name(), &breaker::label_as_written(&sub.endpoint), &shown);
            if record.endpoint_done(ch.name(), &shown) {
                continue;
            }
            let origin = reqwest::Url::parse(&sub.endpoint)
                .map(|u| push::origin(&u))
                .unwrap_or_else(|_| sub.endpoint.clone());
            if by_origin
                .iter()
                .any(|(_, group)| group.iter().any(|(_, s)| *s == shown))
            {
                continue;
            }
            match by_origin.iter_mut().find(|(o, _)| *o == origin) {
                Some((_, group)) => group.push((sub.clone(), shown)),
                None => by_origin.push((origin, vec![(sub.clone(), shown)])),
            }
        }
        let payload = payload.as_slice();
        let user = n.user.as_str();
        let sends = stream::iter(by_origin)
            .map(|(origin, group)| {
                // Pinned: `flatten_unordered` polls each service's stream in place.
                Box::pin(stream::iter(group).then(move |(sub, shown)| {
                    let origin = origin.clone();
                    async move {
                        let sent = self.push_one(pusher, &origin, &sub, &shown, payload, user);
                        let sent = sent.await;
                        (shown, sent)
                    }
                }))
            })
            .flatten_unordered(SIDE_BY_SIDE);
        Self::note_all(cx, ch, sends, record, attempt).await?;
        record.settle_endpoints(ch.name());
        Ok(())
    }

    /// One push behind its service's circuit (as [`Self::webhook`]); a subscription the
    /// service says is gone is forgotten.
    async fn push_one(
        &self,
        pusher: &Pusher,
        origin: &str,
        sub: &PushSubscription,
        shown: &str,
        payload: &[u8],
        user: &str,
    ) -> Delivery {
        self.breakers.admit(origin).await?;
        let started = Instant::now();
        let pushed = pusher.send(sub, shown, payload).await;
        let took = started.elapsed();
        if pushed.sent.endpoint_failed {
            self.breakers.failure(origin).await;
        } else {
            self.breakers.success(origin).await;
        }
        if pushed.gone
            && let Err(e) = self.subscriptions.remove(user, &sub.endpoint).await
        {
            tracing::warn!(user = %user, error = %e, "could not remove a gone push subscription");
        }
        Ok((pushed.sent, took))
    }
}

impl Kind for SendNotification {
    const NAME: &'static str = "notify.send";
    type Args = NotifyArgs;

    async fn run(&self, cx: JobContext, args: NotifyArgs) -> JobResult {
        let n = Notification {
            id: cx.job().id.to_string(),
            user: args.user,
            kind: args.kind.unwrap_or_else(|| "default".to_owned()),
            title: args.title,
            body: args.body,
            data: args.data,
        };
        let mut record = Record::from_checkpoint(cx.checkpoint());
        // A fresh start (`hopper retry` of the dead job) tries failed deliveries again: after
        // a run that ended the job, or on a first attempt that is not a snooze's wake-up (a
        // snooze gives the attempt back, so a first attempt runs again while an open circuit
        // holds a delivery: forgetting then resent every delivery failed for good at each
        // wake-up). A job that died without its own answer (a timeout, interruptions) is
        // retried as attempt 1 with no snooze noted.
        let woke = std::mem::take(&mut record.snoozed);
        if record.ended || (cx.attempt() == 1 && !woke) {
            record.forget_failures();
        }
        let mut attempt = Attempt::default();
        for &ch in &args.channels {
            if record.channel_done(ch.name()) {
                continue;
            }
            let started = Instant::now();
            match ch {
                Channel::Websocket => {
                    let r = self.inbox.deliver(&n).await.map_err(JobError::retryable);
                    let outcome = outcome_of(r, &mut attempt);
                    count(ch, &outcome, started);
                    record.set_channel(ch.name(), outcome);
                }
                Channel::Email => {
                    let outcome = match &args.email {
                        None => Outcome::skipped("no email address (payload.email)"),
                        Some(to) => outcome_of(self.mailer.send(&cx, &n, to).await, &mut attempt),
                    };
                    count(ch, &outcome, started);
                    record.set_channel(ch.name(), outcome);
                }
                Channel::Webhook => self.webhooks(&cx, &n, &mut record, &mut attempt).await?,
                Channel::Push => self.push(&cx, &n, &mut record, &mut attempt).await?,
            }
            Self::save(&cx, &record).await?;
        }
        let (retryable, permanent) = record.failures();
        // Whether this run's answer below ends the job `dead` (see `Record::ended`): a retry
        // when none is left, or a delivery failed for good with nothing to wait for.
        let ends = if attempt.retry {
            cx.attempt() > cx.job().max_retries
        } else {
            attempt.wait.is_none() && !permanent.is_empty()
        };
        if ends {
            record.ended = true;
            Self::save(&cx, &record).await?;
        }
        if attempt.retry {
            let message = retryable.join("; ");
            return Err(match attempt.retry_after {
                Some(after) => JobError::retry_after(message, after),
                None => JobError::retryable(message),
            });
        }
        if let Some(wait) = attempt.wait {
            record.snoozed = true;
            Self::save(&cx, &record).await?;
            return Err(JobError::snooze(wait));
        }
        if !permanent.is_empty() {
            return Err(JobError::permanent(permanent.join("; ")));
        }
        Ok(record.to_value())
    }

    /// The rules serde cannot express: a user, a one-line title, known channels each listed
    /// once, a type usable as a template name, an address that parses.
    fn check(&self, args: &NotifyArgs) -> Result<(), FieldError> {
        // As the inbox stores users (`NewInboxEntry::check`): refused here, not by every
        // attempt until the job is dead.
        if args.user.trim().is_empty()
            || args.user.len() > 256
            || args.user.chars().any(char::is_control)
        {
            return Err(FieldError::new(
                "payload.user",
                hopper_workers::broker::inbox::NAME_RULE,
            ));
        }
        if args.title.is_empty() || args.title.contains(['\r', '\n']) {
            return Err(FieldError::new(
                "payload.title",
                "must be a non-empty single line",
            ));
        }
        if let Some(kind) = &args.kind {
            let ok = !kind.is_empty()
                && kind.len() <= 64
                && !kind.starts_with('.')
                && !kind.contains("..")
                && kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return Err(FieldError::new(
                    "payload.type",
                    "must be 1 to 64 letters, digits, '_', '-' or '.' (it names a template)",
                ));
            }
        }
        if args.channels.is_empty() {
            return Err(FieldError::new(
                "payload.channels",
                "needs at least one of websocket, email, push, webhook",
            ));
        }
        let mut seen = HashSet::new();
        for (i, ch) in args.channels.iter().enumerate() {
            if !seen.insert(*ch) {
                return Err(FieldError::new(
                    format!("payload.channels[{i}]"),
                    format!("{} is listed twice", ch.name()),
                ));
            }
        }
        if let Some(to) = &args.email {
            to.parse::<Mailbox>()
                .map_err(|e| FieldError::new("payload.email", format!("{to:?}: {e}")))?;
        }
        if args.channels.contains(&Channel::Push) {
            check_push_size(args)?;
        }
        Ok(())
    }
}

/// A job id as the push message carries it: every id is a UUID, 36 bytes.
const ID_PLACEHOLDER: &str = "00000000-0000-0000-0000-000000000000";

/// Refuses a notification whose push message could never be pushed: push services take one
/// 4096-byte record (RFC 8030, RFC 8291), [`push::MAX_PAYLOAD`] bytes of message once
/// encrypted. Checked at enqueue, where the client hears of it, rather than at delivery,
/// where the job would only go dead. The field named is the largest of the client's.
fn check_push_size(args: &NotifyArgs) -> Result<(), FieldError> {
    let n = Notification {
        id: ID_PLACEHOLDER.to_owned(),
        user: args.user.clone(),
        kind: args.kind.clone().unwrap_or_else(|| "default".to_owned()),
        title: args.title.clone(),
        body: args.body.clone(),
        data: args.data.clone(),
    };
    let size = serde_json::to_vec(&n).map_or(usize::MAX, |v| v.len());
    if size <= push::MAX_PAYLOAD {
        return Ok(());
    }
    let data = serde_json::to_vec(&args.data).map_or(usize::MAX, |v| v.len());
    let field = [
        ("payload.title", args.title.len()),
        ("payload.body", args.body.len()),
        ("payload.data", data),
    ]
    .into_iter()
    .max_by_key(|(_, len)| *len)
    .map_or("payload.body", |(f, _)| f);
    Err(FieldError::new(
        field,
        format!(
            "the push message would be {size} bytes, over the {} bytes one Web Push can carry \
             (a 4096-byte record once encrypted); shorten title, body and data, or leave \
             \"push\" out of channels",
            push::MAX_PAYLOAD
        ),
    ))
}
