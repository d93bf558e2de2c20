//! `[server] rate_limit` on `/v1`: a keyed GCRA limiter (`governor`) counting each request,
//! the opening of a `/v1/events` stream included, against its client, and answering one past
//! the limit 429 `rate_limited` with `Retry-After` (whole seconds, at least 1).
//!
//! A client is the token it presents when `[auth] tokens` is set and it presents a valid one
//! (kept as the token's position in the list, so no secret is held or logged here), else its
//! peer address: with auth off, and for requests with no or a wrong token, which `/v1` then
//! refuses 401 anyway. The peer address comes from axum's `ConnectInfo`, which `crate::app`
//! serves the router with; a router driven without it (tests' `oneshot`) counts every request
//! against one unknown address.
//!
//! The limiter's map holds one entry per client seen; it is swept of clients whose allowance
//! is whole again (`retain_recent`) whenever it doubles past the last sweep, so addresses
//! that come and go cannot grow it without bound.
//!
//! Not here: parsing the rate (`crate::config::RateLimit`), and `/healthz`, `/readyz`, the
//! dashboard and anything else outside `/v1`, which are never limited.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use utoipa_axum::router::OpenApiRouter;

use super::{ApiError, AppState, constant_time_eq};
use crate::config::{Config, Per, RateLimit};

/// The limiter's map is not swept while it holds fewer clients than this.
const SWEEP_MIN: usize = 1024;

/// `v1` with the limit of `config` in front of every route, or as it is when the limit is off.
pub fn wrap(v1: OpenApiRouter<AppState>, config: &Arc<Config>) -> OpenApiRouter<AppState> {
    match Limiter::new(config.clone(), DefaultClock::default()) {
        Some(limiter) => v1.layer(middleware::from_fn_with_state(Arc::new(limiter), limit)),
        None => v1,
    }
}

/// Who a request is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Client {
    /// The position of the presented token in `[auth] tokens`: never the token itself.
    Token(usize),
    /// The peer's address; `None` when the router is served without `ConnectInfo`.
    Addr(Option<IpAddr>),
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(i) => write!(f, "auth.tokens[{i}]"),
            Self::Addr(Some(ip)) => write!(f, "{ip}"),
            Self::Addr(None) => f.write_str("an unknown address"),
        }
    }
}

/// The limiter of one server, on clock `C` (tests give a fake one).
pub struct Limiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<Client, DefaultKeyedStateStore<Client>, C, NoOpMiddleware<C::Instant>>,
    config: Arc<Config>,
    /// The map is swept when it holds this many clients.
    sweep_at: AtomicUsize,
}

impl<C: Clock> Limiter<C> {
    /// The limiter of `[server] rate_limit` and `rate_limit_burst`; `None` when the limit is
    /// off.
    pub fn new(config: Arc<Config>, clock: C) -> Option<Self> {
        let quota = quota(config.server.rate_limit, config.server.rate_limit_burst)?;
        Some(Self {
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock),
            config,
            sweep_at: AtomicUsize::new(SWEEP_MIN),
        })
    }

    /// Counts one request of `client`: `Ok`, or how long until it would pass.
    fn check(&self, client: &Client) -> Result<(), Duration> {
        let checked = self
            .limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()));
        self.sweep();
        checked
    }

    /// Drops the clients whose allowance is whole again once the map has doubled since the
    /// last sweep, so a sweep costs O(1) a request on average.
    fn sweep(&self) {
        if self.limiter.len() < self.sweep_at.load(Ordering::Relaxed) {
            return;
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let kept = self.limiter.len();
        self.sweep_at
            .store(kept.saturating_mul(2).max(SWEEP_MIN), Ordering::Relaxed);
    }

    /// The client of a request: its valid token, else its peer address.
    fn client(&self, headers: &HeaderMap, query: Option<&str>, peer: Option<IpAddr>) -> Client {
        let tokens = &self.config.auth.tokens;
        if !tokens.is_empty() {
            let found = presented(headers, query).find_map(|t| {
                tokens
                    .iter()
                    .position(|k| constant_time_eq(k.as_bytes(), t.as_bytes()))
            });
            if let Some(i) = found {
                return Client::Token(i);
            }
        }
        Client::Addr(peer)
    }

    /// Clients currently held (tests of the sweep).
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// The quota of a rate and burst; `None` when off.
fn quota(rate: RateLimit, burst: Option<u32>) -> Option<Quota> {
    let RateLimit::Every { count, per } = rate else {
        return None;
    };
    let quota = match per {
        Per::Second => Quota::per_second(count),
        Per::Minute => Quota::per_minute(count),
    };
    let burst = burst
        .or(rate.per_second_ceil())
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN);
    Some(quota.allow_burst(burst))
}

/// Every token a request presents, where `/v1` and `/v1/events` look for one: the
/// `Authorization: Bearer` header, the `token` query parameter, `Sec-WebSocket-Protocol`
/// entries `token.TOKEN`.
fn presented<'a>(headers: &'a HeaderMap, query: Option<&str>) -> impl Iterator<Item = String> + 'a {
    let bearer = super::bearer_token(headers).map(str::to_owned);
    let from_query: Vec<String> = query
        .and_then(|q| {
            Query::<Vec<(String, String)>>::try_from_uri(&format!("/?{q}").parse().ok()?).ok()
        })
        .map(|Query(pairs)| {
            pairs
                .into_iter()
                .filter(|(k, _)| k == "token")
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default();
    let protocols = super::protocol_tokens(headers).map(str::to_owned);
    bearer.into_iter().chain(from_query).chain(protocols)
}

/// The middleware: passes the request on, or answers 429 with `Retry-After`.
async fn limit(State(limiter): State<Arc<Limiter>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let client = limiter.client(req.headers(), req.uri().query(), peer);
    match limiter.check(&client) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            tracing::debug!(%client, wait_ms = wait.as_millis(), "rate limited");
            too_many(&limiter.config, wait)
        }
    }
}

/// 429 `rate_limited` with `Retry-After`: `wait` rounded up to whole seconds, at least 1.
fn too_many(config: &Config, wait: Duration) -> Response {
    let secs = retry_after(wait);
    let mut res = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "more than [server] rate_limit = \"{}\" requests; retry in {secs} s",
            config.server.rate_limit
        ),
    )
    .into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    res
}

/// `wait` in whole seconds, rounded up, at least 1 (`Retry-After: 0` would invite a retry
/// storm).
fn retry_after(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(rate: &str, burst: Option<u32>, tokens: &[&str]) -> Limiter<FakeRelativeClock> {
        let mut config = Config::default();
        config.server.rate_limit = rate.parse().unwrap();
        config.server.rate_limit_burst = burst;
        config.auth.tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
        Limiter::new(Arc::new(config), FakeRelativeClock::default()).unwrap()
    }

    #[test]
    fn off_builds_no_limiter() {
        let config = Arc::new(Config::default());
        assert!(Limiter::new(config, FakeRelativeClock::default()).is_none());
    }

    #[test]
    fn burst_then_the_steady_rate() {
        let l = limiter("5/s", Some(5), &[]);
        let c = Client::Addr(None);
        for _ in 0..5 {
            assert_eq!(l.check(&c), Ok(()));
        }
        let wait = l.check(&c).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        assert_eq!(retry_after(wait), 1);
        l.limiter.clock().advance(wait);
        assert_eq!(l.check(&c), Ok(()));
    }

    #[test]
    fn default_burst_is_a_seconds_worth() {
        let l = limiter("120/m", None, &[]);
        let c = Client::Addr(None);
        for _ in 0..2 {
            assert_eq!(l.check(&c), Ok(()));
        }
        let wait = l.check(&c).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_secs(2)), 2);
        assert_eq!(retry_after(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn a_valid_token_is_the_client_else_the_address() {
        let l = limiter("5/s", None, &["a", "b"]);
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(l.client(&h, None, Some(ip)), Client::Addr(Some(ip)));
        h.insert(header::AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_eq!(l.client(&h, None, Some(ip)), Client::Token(1));
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(l.client(&h, None, Some(ip)), Client::Addr(Some(ip)));
        assert_eq!(
            l.client(&h, Some("queue=x&token=a"), Some(ip)),
            Client::Token(0)
        );
        let mut ws = HeaderMap::new();
        ws.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "hopper, token.b".parse().unwrap(),
        );
        assert_eq!(l.client(&ws, None, None), Client::Token(1));
        assert_eq!(Client::Token(1).to_string(), "auth.tokens[1]");
    }

    #[test]
    fn clients_whose_allowance_is_whole_again_are_swept() {
        let l = limiter("5/s", Some(5), &[]);
        let ip =
            |i: usize| Client::Addr(Some(IpAddr::from(u32::try_from(i).unwrap().to_be_bytes())));
        for i in 0..SWEEP_MIN {
            assert_eq!(l.check(&ip(i)), Ok(()));
        }
        // A second later those are whole again: the sweep when the map doubles drops them.
        l.limiter.clock().advance(Duration::from_secs(1));
        for i in SWEEP_MIN..2 * SWEEP_MIN {
            assert_eq!(l.check(&ip(i)), Ok(()));
        }
        assert!(l.clients() <= SWEEP_MIN, "{} clients kept", l.clients());
    }
}
