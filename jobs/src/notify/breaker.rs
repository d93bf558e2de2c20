//! The circuit breaker of `notify.send`'s endpoints (each webhook URL, each push service
//! origin): after `[notify] breaker_failures` consecutive failures an endpoint's circuit
//! opens; while it is open, deliveries to it are not attempted (the job snoozes, its attempts
//! not spent) for a cool-down that starts at `[notify] breaker_cooldown` and doubles after
//! each failed probe, up to [`MAX_COOLDOWN`]; once it has passed, one delivery is let through
//! as the probe, and its outcome closes the circuit or opens it again.
//!
//! **Shared state.** With a [`Circuits`] store ([`Breakers::shared`], the broker in the
//! shell), every node reads an endpoint's circuit before a delivery and writes it back after
//! one, so the nodes agree: failures are counted across nodes, a circuit one node opened
//! holds back every node, and one probe goes at a time (a probe holds the circuit for up to
//! [`PROBE_WINDOW`], after which another node may probe). Concurrent writes are last-writer
//! wins, which may lose a failure count (the circuit opens one failure later). When the store
//! cannot be reached, each process goes on with its own state (logged), as without a store.
//!
//! This module owns the state machine and the `hopper_notify_circuit_open` gauge (1 while
//! this process sees the endpoint's circuit open); the channels decide what counts as a
//! failure (5xx, timeouts, refused connections).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::CIRCUIT_OPEN;
use super::circuits::{CircuitState, Circuits};
use hopper_workers::metrics::{ENDPOINT_LABELS, OTHER};

/// The longest cool-down of an open circuit.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// How long a probe holds a shared circuit: other nodes wait that long for its outcome before
/// one of them probes (the prober may have died).
pub const PROBE_WINDOW: Duration = Duration::from_secs(60);

/// The state of one endpoint.
#[derive(Debug, Default)]
struct Circuit {
    /// Consecutive failures while closed.
    failures: u32,
    /// Open until then (a probe may go after it).
    open_until: Option<Instant>,
    /// The cool-down of the current (or next) opening.
    cooldown: Duration,
    /// A probe is under way: other deliveries keep waiting.
    probing: bool,
}

impl Circuit {
    /// The circuit a shared state describes, read now.
    fn from_shared(s: &CircuitState) -> Self {
        let now = Instant::now();
        Self {
            failures: s.failures,
            open_until: s.open_for.map(|d| now + d),
            cooldown: s.cooldown,
            // A probe whose window passed is presumed lost: another may go.
            probing: s.probing && s.open_for.is_some_and(|d| !d.is_zero()),
        }
    }

    /// Its shared state, `probe` holding it for [`PROBE_WINDOW`].
    fn to_shared(&self, probe: bool) -> CircuitState {
        let now = Instant::now();
        CircuitState {
            failures: self.failures,
            open_for: if probe {
                Some(PROBE_WINDOW)
            } else {
                self.open_until.map(|u| u.saturating_duration_since(now))
            },
            cooldown: self.cooldown,
            probing: probe || self.probing,
        }
    }
}

/// Every endpoint's circuit, shared by all jobs of the process (and, with a store, by every
/// node).
pub struct Breakers {
    failures: u32,
    cooldown: Duration,
    circuits: Mutex<HashMap<String, Circuit>>,
    store: Option<Arc<dyn Circuits>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("failures", &self.failures)
            .field("cooldown", &self.cooldown)
            .field("shared", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Breakers {
    /// Circuits opening after `failures` consecutive failures, for `cooldown` at first.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown: cooldown.max(Duration::from_millis(1)),
            circuits: Mutex::new(HashMap::new()),
            store: None,
        }
    }

    /// New breakers with the same settings, and no state yet.
    pub fn with_settings(&self) -> Self {
        Self::new(self.failures, self.cooldown)
    }

    /// The same breakers, sharing their state through `store` (see the module docs).
    #[must_use]
    pub fn shared(mut self, store: Arc<dyn Circuits>) -> Self {
        self.store = Some(store);
        self
    }

    /// Takes the store's view of `endpoint`, when there is a store and it answers.
    async fn pull(&self, endpoint: &str) {
        let Some(store) = &self.store else { return };
        let shared = match store.load(endpoint).await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(endpoint = %label(endpoint), %error, "circuit store unreachable: using this node's state");
                return;
            }
        };
        let (was_open, is_open) = {
            let mut circuits = self.circuits();
            let was_open = circuits
                .get(endpoint)
                .is_some_and(|c| c.open_until.is_some());
            match &shared {
                Some(s) => {
                    circuits.insert(endpoint.to_owned(), Circuit::from_shared(s));
                }
                None => {
                    circuits.remove(endpoint);
                }
            }
            (
                was_open,
                shared.as_ref().is_some_and(|s| s.open_for.is_some()),
            )
        };
        if was_open != is_open {
            show_circuit(endpoint, is_open);
        }
    }

    /// Writes this node's view of `endpoint` to the store, when there is one.
    async fn push(&self, endpoint: &str, probe: bool) {
        let Some(store) = &self.store else { return };
        let state = self
            .circuits()
            .get(endpoint)
            .map(|c| c.to_shared(probe))
            .unwrap_or_default();
        if let Err(error) = store.save(endpoint, &state).await {
            tracing::warn!(endpoint = %label(endpoint), %error, "circuit store unreachable: state kept on this node only");
        }
    }

    fn circuits(&self) -> std::sync::MutexGuard<'_, HashMap<String, Circuit>> {
        self.circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// May a delivery to `endpoint` go now? `Err(wait)` while its circuit is open (or another
    /// delivery is probing it): try again after `wait`. When the cool-down has passed, the
    /// caller's delivery is the probe and must be reported with [`Self::success`] or
    /// [`Self::failure`].
    pub async fn admit(&self, endpoint: &str) -> Result<(), Duration> {
        self.pull(endpoint).await;
        if self.admit_local(endpoint)? {
            self.push(endpoint, true).await;
        }
        Ok(())
    }

    /// [`Self::admit`] on this node's state: `Ok(true)` for a probe.
    fn admit_local(&self, endpoint: &str) -> Result<bool, Duration> {
        let mut circuits = self.circuits();
        let Some(c) = circuits.get_mut(endpoint) else {
            return Ok(false);
        };
        let Some(until) = c.open_until else {
            return Ok(false);
        };
        let now = Instant::now();
        if c.probing {
            return Err(self.cooldown.min(Duration::from_secs(5)));
        }
        if now < until {
            return Err(until - now);
        }
        c.probing = true;
        Ok(true)
    }

    /// `endpoint` answered: its circuit closes and its failures are forgotten.
    pub async fn success(&self, endpoint: &str) {
        let Some(was) = self.circuits().remove(endpoint) else {
            return;
        };
        if was.open_until.is_some() {
            tracing::info!(endpoint = %label(endpoint), "circuit closed: the probe succeeded");
            show_circuit(endpoint, false);
        }
        self.push(endpoint, false).await;
    }

    /// `endpoint` failed (5xx, timeout, unreachable). Opens its circuit after enough
    /// consecutive failures, or again (for twice as long) after a failed probe. Returns the
    /// cool-down when this failure opened the circuit.
    pub async fn failure(&self, endpoint: &str) -> Option<Duration> {
        let opened = self.failure_local(endpoint);
        self.push(endpoint, false).await;
        opened
    }

    /// [`Self::failure`] on this node's state.
    fn failure_local(&self, endpoint: &str) -> Option<Duration> {
        let mut circuits = self.circuits();
        let c = circuits.entry(endpoint.to_owned()).or_default();
        let opened = if c.open_until.is_some() {
            // A failed probe (or a delivery that was let through before the circuit opened).
            let cooldown = if c.probing {
                (c.cooldown * 2).min(MAX_COOLDOWN)
            } else {
                c.cooldown
            };
            c.cooldown = cooldown;
            c.probing = false;
            c.open_until = Some(Instant::now() + cooldown);
            Some(cooldown)
        } else {
            c.failures += 1;
            if c.failures >= self.failures {
                c.cooldown = self.cooldown;
                c.open_until = Some(Instant::now() + self.cooldown);
                Some(self.cooldown)
            } else {
                None
            }
        };
        if let Some(cooldown) = opened {
            tracing::warn!(
                endpoint = %label(endpoint),
                cooldown = %humantime::format_duration(cooldown),
                "circuit open: deliveries wait"
            );
            show_circuit(endpoint, true);
        }
        opened
    }

    /// The endpoints whose circuit is open now, with the time left before their probe.
    pub fn open(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut open: Vec<_> = self
            .circuits()
            .iter()
            .filter_map(|(e, c)| {
                c.open_until
                    .map(|u| (e.clone(), u.saturating_duration_since(now)))
            })
            .collect();
        open.sort();
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_n_failures_probes_once_and_doubles() {
        let b = Breakers::new(3, Duration::from_millis(40));
        for _ in 0..2 {
            assert!(b.admit("e").await.is_ok());
            assert_eq!(b.failure("e").await, None);
        }
        assert!(b.admit("e").await.is_ok());
        assert_eq!(b.failure("e").await, Some(Duration::from_millis(40)));
        assert!(b.admit("e").await.is_err(), "open");
        assert!(b.admit("other").await.is_ok(), "per endpoint");
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit("e").await.is_ok(), "the probe");
        assert!(b.admit("e").await.is_err(), "one probe at a time");
        assert_eq!(b.failure("e").await, Some(Duration::from_millis(80)));
        assert_eq!(b.open().len(), 1);
        std::thread::sleep(Duration::from_millis(90));
        assert!(b.admit("e").await.is_ok(), "the second probe");
        b.success("e").await;
        assert!(b.admit("e").await.is_ok());
        assert!(b.open().is_empty());
        assert_eq!(b.failure("e").await, None, "failures start over");
    }

    #[tokio::test]
    async fn cooldown_stops_doubling_at_an_hour() {
        let b = Breakers::new(1, Duration::from_secs(2000));
        b.failure("e").await;
        {
            let mut c = b.circuits();
            let c = c.get_mut("e").expect("circuit");
            c.open_until = Some(Instant::now());
        }
        assert!(b.admit("e").await.is_ok());
        assert_eq!(b.failure("e").await, Some(MAX_COOLDOWN));
    }
}

/// Sets `hopper_notify_circuit_open` of `endpoint` at once, when it has a label of its own.
/// An endpoint past the label cap shares `_other`, whose value (how many of them are open)
/// only a scrape, which reads every circuit, can tell (`hopper::metrics`).
fn show_circuit(endpoint: &str, open: bool) {
    let shown = ENDPOINT_LABELS.of(&label(endpoint));
    if shown != OTHER {
        metrics::gauge!(CIRCUIT_OPEN, "endpoint" => shown).set(if open { 1.0 } else { 0.0 });
    }
}

/// How an endpoint is named in metric labels and log lines: its scheme, host and port, then,
/// when it has a path or a query, `/…` and the first 8 hex digits of the whole URL's SHA-256.
/// Webhook URLs often carry their secret in the path or query (Slack's
/// `/services/T…/B…/XXXX`, `?token=`) and push endpoints are capability URLs, so neither is
/// ever shown whole; the hash still tells two endpoints of one host apart.
pub fn label(endpoint: &str) -> String {
    // One URL however it is written: the scheme and host in any case, a fragment (never sent)
    // or none. The hash is of the URL as parsed, so the same endpoint listed twice in two
    // spellings is one endpoint (delivered once, one circuit).
    let parsed = url::Url::parse(endpoint).ok().map(|mut u| {
        u.set_fragment(None);
        u
    });
    let key = parsed.as_ref().map_or(endpoint, url::Url::as_str);
    shown(parsed.as_ref(), key)
}

/// The label a notification's record filed an endpoint under until 2026-12-02, when the hash
/// was of the URL as written: a delivery under way across the upgrade has its endpoints filed
/// again under [`label`] (`Record::relabel_endpoint`), so what it delivered is not sent twice.
pub fn label_as_written(endpoint: &str) -> String {
    shown(url::Url::parse(endpoint).ok().as_ref(), endpoint)
}

/// The origin, then `/…#` and 8 hex digits of `hashed`'s SHA-256 when the URL has a path or a
/// query; `endpoint#` and the digits when it is not a URL with a host.
fn shown(parsed: Option<&url::Url>, hashed: &str) -> String {
    let digest = Sha256::digest(hashed.as_bytes());
    let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    match parsed {
        Some(u) if u.host_str().is_some() => {
            let origin = u.origin().ascii_serialization();
            if (u.path().is_empty() || u.path() == "/") && u.query().is_none() {
                origin
            } else {
                format!("{origin}/…#{short}")
            }
        }
        _ => format!("endpoint#{short}"),
    }
}

#[cfg(test)]
mod label_tests {
    use super::{label, label_as_written};

    #[test]
    fn labels_hide_paths_and_queries_but_tell_endpoints_apart() {
        let a = label("https://hooks.slack.com/services/T0/B0/s3cret");
        let b = label("https://hooks.slack.com/services/T0/B0/other");
        assert!(a.starts_with("https://hooks.slack.com/…#"), "{a}");
        assert!(!a.contains("s3cret"));
        assert_ne!(a, b);
        assert!(!label("https://h.example/in?token=abc").contains("abc"));
        assert_eq!(label("https://push.example"), "https://push.example");
        assert!(label("not a url").starts_with("endpoint#"));
        // One endpoint, however it is spelled.
        let hook = label("http://127.0.0.1:18410/hook/SECRETPATH");
        for same in [
            "HTTP://127.0.0.1:18410/hook/SECRETPATH",
            "http://127.0.0.1:18410/hook/SECRETPATH#frag",
        ] {
            assert_eq!(label(same), hook, "{same}");
        }
        // As written, the spellings differ (the records of deliveries begun before are filed
        // again from these); a URL already in its parsed form has one label either way.
        assert_ne!(
            label_as_written("HTTP://127.0.0.1:18410/hook/SECRETPATH"),
            hook
        );
        assert_eq!(
            label_as_written("http://127.0.0.1:18410/hook/SECRETPATH"),
            hook
        );
    }
}
