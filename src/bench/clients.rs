//! The `events` workload's clients: N WebSocket clients following one URL, measuring how late
//! each progress frame arrives, in a process of their own.
//!
//! `hopper bench --workload events` starts this side as a child process (`hopper bench
//! --follow URL`, a hidden flag), so that the server's memory and CPU are measured apart from
//! the clients'; as the issue puts it, the clients are peers on loopback. The child connects
//! every client, prints `ready`, follows until each client has seen every job's completion (or
//! lagged, or the parent closed its stdin), then prints one JSON line, [`Summary`].
//!
//! A sample is the arrival time minus the microsecond wall-clock stamp the job's handler put
//! in the progress message just before writing it (`STAMP`): both processes read the same
//! clock. Samples go into one shared histogram (exact to the microsecond below 1.024 ms, then
//! within 0.2 %), not into a list: a thousand clients at thousands of events a second would
//! make the list the largest thing in the process.
//!
//! The `notify` workload uses the same child for `GET /v1/notifications`: when the URL is that
//! route, client `i` connects as the user `<user prefix><i>` with a JWT it signs with the
//! secret the parent passes in [`SECRET_ENV`] (never on the command line), counts
//! `notification` frames instead of completions, and measures each from the microsecond stamp
//! the producer put in its `data` ([`DATA_STAMP`]). A `rate_limited` frame counts as lagged.
//!
//! Not here: the server, the jobs and the report (`events`, `notify`, `super`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::micros_now;

/// Marks the bench's timestamp in a progress message.
pub(super) const STAMP: &str = "bench-us:";
/// What the child prints once every client is connected.
pub(super) const READY: &str = "ready";
/// The environment variable through which the `notify` workload hands its clients the JWT
/// secret of its API.
pub(super) const SECRET_ENV: &str = "HOPPER_BENCH_JWT_SECRET";
/// The key of a notification's `data` holding the producer's microsecond stamp.
pub(super) const DATA_STAMP: &str = "bench_us";
/// The route whose URL makes the child follow notifications rather than job events.
pub(super) const NOTIFICATIONS_PATH: &str = "/v1/notifications";

/// Client `i`'s user in the `notify` workload, whose users all start with `prefix`.
pub(super) fn bench_user(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

/// An HS256 JWT for `user`, valid for a day, signed with `secret`.
pub(super) fn bench_jwt(secret: &str, user: &str) -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .context("the bench's JWT secret")?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": user, "exp": exp }),
        &key,
    )
    .context("signing a bench user's JWT")
}

/// What the clients measured, printed by the child as its last line.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Summary {
    /// Progress frames received and measured, over all clients.
    pub delivered: u64,
    pub lagged_clients: usize,
    pub incomplete_clients: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The client process's peak resident memory, in MB.
    pub peak_rss_mb: Option<f64>,
}

/// A client's socket buffers: the library's 128 KiB each way, times a thousand clients, would
/// be most of this process's memory. The library zeroes the free part of the read buffer
/// before every read, so a larger one costs a memset per frame when frames come one a read;
/// 8 KiB still takes thirty frames a read when a client is behind.
fn socket() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(4 * 1024)
}

/// The child's side: connects `clients` clients to `url`, says [`READY`], follows until every
/// client saw `jobs` completions (or, on `GET /v1/notifications`, `jobs` notifications each;
/// or stdin closed: the parent gave up), prints the [`Summary`]. `users` is the prefix of the
/// notification clients' user ids.
pub(super) async fn run(url: &str, clients: usize, jobs: u64, users: &str) -> Result<()> {
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let notifications = url.contains(NOTIFICATIONS_PATH);
    let secret = if notifications {
        std::env::var(SECRET_ENV).with_context(|| format!("{SECRET_ENV} is not set"))?
    } else {
        String::new()
    };
    let mut followers = Vec::with_capacity(clients);
    for i in 0..clients {
        // Connected one by one, before any job: the server subscribes each stream before it
        // answers the upgrade, so each is open when the first event is appended.
        let target = if notifications {
            let jwt = bench_jwt(&secret, &bench_user(users, i))?;
            format!("{url}?token={jwt}")
        } else {
            url.to_owned()
        };
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(target.as_str(), Some(socket()), false)
                .await
                .with_context(|| format!("connecting a client to {url}"))?;
        followers.push(tokio::spawn(follow(ws, shared.clone(), jobs, stop.clone())));
    }
    crate::out::line(READY)?;
    // The parent closes our stdin when it stops waiting.
    let parent_gone = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
            stop.cancel();
        })
    };
    futures::future::join_all(followers).await;
    parent_gone.abort();
    let summary = Summary {
        delivered: shared.latency.count(),
        lagged_clients: shared.lagged.load(Ordering::Acquire),
        incomplete_clients: shared.incomplete.load(Ordering::Acquire),
        p50_ms: shared.latency.percentile_ms(0.50),
        p95_ms: shared.latency.percentile_ms(0.95),
        p99_ms: shared.latency.percentile_ms(0.99),
        max_ms: shared.latency.max_ms(),
        peak_rss_mb: super::events::memory().1,
    };
    crate::out::line(&serde_json::to_string(&summary)?)?;
    Ok(())
}

/// What the clients share: the latency histogram and how many of them lagged or missed events.
#[derive(Default)]
struct Shared {
    latency: Histogram,
    lagged: AtomicUsize,
    incomplete: AtomicUsize,
}

/// The fields of a frame a client looks at.
#[derive(Deserialize)]
struct FrameView<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    /// A notification's `data`, where the `notify` workload stamps it.
    #[serde(default)]
    data: Option<StampView>,
}

/// The producer's stamp in a notification's `data`.
#[derive(Deserialize)]
struct StampView {
    #[serde(default)]
    bench_us: Option<u64>,
}

/// What a client needs of an event frame, found without parsing it: at a thousand clients
/// each frame is read a thousand times, and a JSON parse per frame was a fifth of this
/// process's CPU (a cost that is the bench's, not the server's).
///
/// An event frame is the server's serialization of `Event`, whose first two keys are `id` (a
/// cursor, which holds no quote) and `type`; a progress frame's stamp is the only `message`
/// key at the top level, and a string value cannot hold the unescaped text `"message":"`.
/// Anything else (`gap`, `lagged`, a notification) is parsed as JSON.
struct EventScan<'a> {
    kind: &'a str,
    rest: &'a str,
}

impl<'a> EventScan<'a> {
    fn of(text: &'a str) -> Option<Self> {
        let after_id = text.strip_prefix("{\"id\":\"")?;
        let (_, tail) = after_id.split_once('"')?;
        let typed = tail.strip_prefix(",\"type\":\"")?;
        let (kind, rest) = typed.split_once('"')?;
        Some(Self { kind, rest })
    }

    /// The producer's microsecond stamp in a progress frame's `message`.
    fn stamp(&self) -> Option<u64> {
        let key = "\"message\":\"";
        let at = self.rest.find(key)? + key.len();
        let digits = self.rest.get(at..)?.strip_prefix(STAMP)?;
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits.get(..end)?.parse().ok()
    }
}

/// One client: reads frames until it has seen `jobs` completions (or notifications), lagged
/// (or was rate limited), or is stopped.
async fn follow<S>(mut ws: S, shared: Arc<Shared>, jobs: u64, stop: CancellationToken)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut done = 0u64;
    // Registered once: a wait made per frame would register a thousand clients on the one
    // token's list of waiters for every event.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    while done < jobs {
        let msg = tokio::select! {
            () = &mut stopped => break,
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        let now = micros_now();
        if let Some(scan) = EventScan::of(text.as_str()) {
            match scan.kind {
                "job.progress" => {
                    if let Some(at) = scan.stamp() {
                        shared.latency.record(now.saturating_sub(at));
                    }
                }
                "job.succeeded" | "job.dead" | "job.cancelled" => done += 1,
                _ => {}
            }
            continue;
        }
        let Ok(frame) = serde_json::from_str::<FrameView<'_>>(text.as_str()) else {
            continue;
        };
        match frame.kind {
            "notification" => {
                if let Some(at) = frame.data.and_then(|d| d.bench_us) {
                    shared.latency.record(now.saturating_sub(at));
                }
                done += 1;
            }
            "lagged" | "rate_limited" => {
                shared.lagged.fetch_add(1, Ordering::AcqRel);
                break;
            }
            _ => {}
        }
    }
    if done < jobs {
        shared.incomplete.fetch_add(1, Ordering::AcqRel);
    }
}

/// Bits of a value kept exactly: below `2^EXACT_BITS` µs every microsecond has its bucket;
/// above, `2^(EXACT_BITS - 1)` buckets per power of two (relative error under 0.2 %).
const EXACT_BITS: u32 = 10;
const HALF: usize = 1 << (EXACT_BITS - 1);
const EXACT: usize = 1 << EXACT_BITS;
/// Latencies up to 2^40 µs (12 days) have a bucket; longer ones count as that.
const TOP_EXPONENT: usize = 40 - EXACT_BITS as usize;

/// A histogram of microseconds that many tasks record into at once.
pub(super) struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..EXACT + TOP_EXPONENT * HALF)
                .map(|_| AtomicU64::new(0))
                .collect(),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub(super) fn record(&self, us: u64) {
        let i = bucket(us).min(self.buckets.len() - 1);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.max.fetch_max(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// The nearest-rank percentile `q`, in milliseconds (the lower bound of its bucket).
    pub(super) fn percentile_ms(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Acquire);
            if seen >= rank {
                return Some(floor(i) as f64 / 1000.0);
            }
        }
        self.max_ms()
    }

    pub(super) fn max_ms(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.max.load(Ordering::Acquire) as f64 / 1000.0)
    }
}

/// The bucket of `us`.
fn bucket(us: u64) -> usize {
    let Ok(v) = usize::try_from(us) else {
        return usize::MAX;
    };
    if v < EXACT {
        return v;
    }
    // v has at least EXACT_BITS + 1 significant bits; keep the top EXACT_BITS.
    let shift = (usize::BITS - v.leading_zeros() - EXACT_BITS) as usize;
    EXACT + (shift - 1) * HALF + ((v >> shift) - HALF)
}

/// The smallest value in bucket `i`.
fn floor(i: usize) -> u64 {
    if i < EXACT {
        return i as u64;
    }
    let k = i - EXACT;
    let shift = k / HALF + 1;
    ((k % HALF + HALF) as u64) << shift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_are_scanned_like_parsed() {
        let progress = r#"{"id":"1-0@q","type":"job.progress","job_id":"j","queue":"q","kind":"k","at":"2026-01-01T00:00:00Z","attempt":1,"progress":25,"message":"bench-us:12345"}"#;
        let scan = EventScan::of(progress).expect("an event frame");
        assert_eq!(scan.kind, "job.progress");
        assert_eq!(scan.stamp(), Some(12345));
        let done = r#"{"id":"7","type":"job.succeeded","job_id":"j","queue":"q","kind":"k","at":"x","attempt":1,"result":{"message":"bench-us:1"}}"#;
        assert_eq!(EventScan::of(done).map(|s| s.kind), Some("job.succeeded"));
        assert!(EventScan::of(r#"{"type":"lagged","resume":"1"}"#).is_none());
        assert!(
            EventScan::of(r#"{"cursor":"1","data":{"bench_us":3},"type":"notification"}"#)
                .is_none()
        );
    }

    #[test]
    fn buckets_are_exact_below_a_millisecond_and_close_above() {
        for us in [0u64, 1, 999, 1023] {
            assert_eq!(floor(bucket(us)), us);
        }
        for us in [1024u64, 1025, 2047, 2048, 2_500, 49_999, 3_000_000] {
            let f = floor(bucket(us));
            assert!(
                f <= us && (us - f) as f64 <= us as f64 * 0.002,
                "{us} -> {f}"
            );
        }
    }

    #[test]
    fn histogram_percentiles_in_milliseconds() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(us);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.percentile_ms(0.50), Some(0.5));
        assert_eq!(h.percentile_ms(0.95), Some(0.95));
        assert_eq!(h.percentile_ms(0.99), Some(0.99));
        assert_eq!(h.max_ms(), Some(1.0));
        h.record(40_000);
        assert_eq!(h.max_ms(), Some(40.0));
        assert_eq!(Histogram::default().percentile_ms(0.5), None);
    }
}
