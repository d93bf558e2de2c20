//! The `notify` workload: how fast user notifications reach users connected on
//! `GET /v1/notifications`, and what it costs.
//!
//! The bench starts, in this process, what an API node runs for notifications: the inbox
//! reader (`crate::api::notifications::InboxHub`) and the HTTP API on `127.0.0.1:0`, over the
//! bench's broker, with a JWT secret of its own (random per run, never printed) and no
//! per-connection message limit to speak of. In a child process (`super::clients`), N
//! WebSocket clients connect, client `i` as the user `bench-<uuid>-<i>` with a JWT the child
//! signs. Then notifications are appended through the `Inbox` port
//! (`crate::notify::BrokerInbox`, what `notify.send`'s `websocket` channel uses) at a steady
//! rate, round-robin over the users, so that each user gets the same number. Each carries the
//! wall clock in microseconds in its `data`, taken just before the append; a client
//! subtracts it from the time the frame arrived. A sample spans the broker's write, the
//! reader's read, the fan-out to the user's connections and the WebSocket.
//!
//! `delivered_per_s` is the notifications received over all clients divided by the time from
//! the first append to the last client having all of its own. Memory is this process's (the
//! server and the producer); the clients' peak is reported apart.
//!
//! The notifications stay in the bench users' inboxes for `[notify] keep` (the inbox has no
//! delete): the users are unique per run, so nobody ever reads them.
//!
//! Not here: the clients (`clients`), the report and its printing (`super`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hopper_jobs::notify::ports::{Inbox, Notification};
use hopper_workers::Registry;
use hopper_workers::job::JobId;
use serde_json::json;

use super::clients::{DATA_STAMP, NOTIFICATIONS_PATH, bench_user};
use super::events::{Clients, memory};
use super::{Bench, Delivery, Report, micros_now, per_s};
use crate::api::AppState;
use crate::notify::BrokerInbox;

/// How long the clients may take, after the last append, to receive everything.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// At most this many appends in flight at once.
const IN_FLIGHT: usize = 64;

impl Bench {
    pub(super) async fn notify(
        &self,
        rate: u64,
        duration: Duration,
        clients: usize,
    ) -> Result<Report> {
        if rate == 0 || clients == 0 {
            bail!(crate::exit::CliError::Usage(
                "--rate and --clients must be at least 1".into()
            ));
        }
        let total = u128::from(rate) * duration.as_millis() / 1000;
        let per_user = u64::try_from((total / clients as u128).max(1)).unwrap_or(u64::MAX);

        // The server's config: a JWT secret of this run, room for every client, no message
        // limit in the way of the rate being measured.
        let secret = format!("{}{}", JobId::generate(), JobId::generate());
        let mut config = self.config.clone();
        config.auth.jwt_secret.clone_from(&secret);
        config.auth.jwt_public_key.clear();
        config.notify.max_messages_per_minute = u32::MAX;
        config.server.max_connections = config.server.max_connections.max(clients + 16);
        let keep = config.notify.keep;

        let stop = self.shutdown.child_token();
        let state = AppState::new(
            self.broker.clone(),
            Arc::new(Registry::new()),
            self.clock.clone(),
            Arc::new(config),
        );
        let reader = tokio::spawn(state.inbox.clone().run(stop.clone()));
        let (addr, server) = super::serve_api(state, &stop).await?;

        let users = format!("{}-", self.queue);
        let url = format!("ws://{addr}{NOTIFICATIONS_PATH}");
        let ran = async {
            let mut child =
                Clients::start(&url, clients, per_user, Some((&users, &secret)), &stop).await?;
            tracing::info!(
                clients,
                per_user,
                "users connected; appending notifications"
            );
            let inbox = BrokerInbox::new(self.broker.clone(), keep);
            let started = Instant::now();
            let sent = per_user * clients as u64;
            self.append_steadily(&inbox, &users, clients, sent, rate as f64)
                .await?;
            let summary = child.finish(DELIVERY_DEADLINE).await?;
            let elapsed = started.elapsed().as_secs_f64();
            let (rss_mb, peak_rss_mb) = memory();
            Ok::<_, anyhow::Error>(Report {
                delivery: Delivery {
                    clients: Some(clients),
                    events: Some(sent),
                    events_per_s: None,
                    delivered: Some(summary.delivered),
                    delivered_per_s: Some(per_s(summary.delivered, elapsed)),
                    lagged_clients: Some(summary.lagged_clients),
                    incomplete_clients: Some(summary.incomplete_clients),
                    delivery_p50_ms: summary.p50_ms,
                    delivery_p95_ms: summary.p95_ms,
                    delivery_p99_ms: summary.p99_ms,
                    delivery_max_ms: summary.max_ms,
                    rss_mb,
                    peak_rss_mb,
                    clients_peak_rss_mb: summary.peak_rss_mb,
                },
                ..Report::new("notify", self, sent)
            })
        }
        .await;
        stop.cancel();
        let _ = server.await;
        let _ = reader.await;
        ran
    }

    /// Appends `total` notifications at `per_s` a second, round-robin over the `clients`
    /// users, catching up every 5 ms with up to [`IN_FLIGHT`] appends at once.
    async fn append_steadily(
        &self,
        inbox: &BrokerInbox,
        users: &str,
        clients: usize,
        total: u64,
        per_s: f64,
    ) -> Result<()> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut sent = 0u64;
        while sent < total {
            tokio::select! {
                () = self.shutdown.cancelled() => bail!("interrupted"),
                _ = tick.tick() => {}
            }
            let due = ((per_s * started.elapsed().as_secs_f64()) as u64).min(total);
            while sent < due {
                let upto = due.min(sent + IN_FLIGHT as u64);
                let appends = (sent..upto).map(|seq| {
                    let n = Notification {
                        id: format!("{users}n{seq}"),
                        user: bench_user(users, (seq % clients as u64) as usize),
                        kind: "bench".into(),
                        title: "bench".into(),
                        body: String::new(),
                        data: json!({ DATA_STAMP: micros_now() }),
                    };
                    async move { inbox.deliver(&n).await }
                });
                for r in futures::future::join_all(appends).await {
                    r.map_err(|e| anyhow::anyhow!(e))
                        .context("appending a notification")?;
                }
                sent = upto;
            }
        }
        Ok(())
    }
}
