//! The job kinds' settings: the `[files]`, `[smtp]`, `[etl]`, `[http]` and `[notify]` sections of
//! `config.toml`, declared once here and embedded as they are by the shell's config. This
//! module owns the field names, their defaults and the checks that can be made before anything
//! runs; it does not read files or the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::JobsError;

/// Settings of every job kind: the `[files]`, `[smtp]`, `[etl]`, `[http]` and `[notify]` sections of
/// `config.toml`, declared here once, in the shape the file has; the shell embeds each
/// section as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    pub files: FilesConfig,
    pub smtp: SmtpConfig,
    pub etl: EtlConfig,
    pub http: HttpConfig,
    pub notify: NotifyConfig,
}

impl JobsConfig {
    /// Checks what can be checked without connecting; every problem, each starting with the
    /// key it is about.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.files.dir.as_os_str().is_empty() {
            p.push("files.dir: must not be empty".to_owned());
        }
        if self.files.image_max_pixels == 0 {
            p.push("files.image_max_pixels: must be greater than zero".to_owned());
        }
        // 0 would refuse every download and input file at run time.
        if self.files.max_download_bytes == 0 {
            p.push("files.max_download_bytes: must be greater than zero".to_owned());
        }
        if self.http.timeout.is_zero() {
            p.push("http.timeout: must be greater than zero".to_owned());
        }
        if self.notify.keep < Duration::from_secs(1) {
            p.push("notify.keep: must be at least \"1s\"".to_owned());
        }
        if self.notify.max_messages_per_minute == 0 {
            p.push("notify.max_messages_per_minute: must be at least 1".to_owned());
        }
        if self.notify.max_connections_per_user == 0 {
            p.push("notify.max_connections_per_user: must be at least 1".to_owned());
        }
        if self.smtp.relay().is_some() {
            if self.smtp.from.trim().is_empty() {
                p.push("smtp.from: is required when smtp.url is set: an email address".to_owned());
            } else if !self.smtp.from.contains('@') {
                p.push(format!(
                    "smtp.from: {:?} is not an email address (write `a@example.com` or \
                     `Name <a@example.com>`)",
                    self.smtp.from
                ));
            }
            let scheme = self.smtp.url.split("://").next().unwrap_or_default();
            if !scheme.eq_ignore_ascii_case("smtp") && !scheme.eq_ignore_ascii_case("smtps") {
                p.push(
                    "smtp.url: must start with smtp:// (plain, or STARTTLS with ?tls=required) \
                     or smtps:// (TLS)"
                        .to_owned(),
                );
            }
        }
        for entry in &self.http.allow_hosts {
            if let Err(why) = AllowHost::parse(entry) {
                p.push(format!("http.allow_hosts: {entry:?} {why}"));
            }
        }
        p.extend(self.notify.problems());
        for (name, token) in &self.etl.tokens {
            if let Err(why) = token.prefix() {
                p.push(format!("etl.tokens.{name}.url_prefix: {why}"));
            }
        }
        for name in self.etl.databases.keys() {
            if name.starts_with("sqlite:") {
                p.push(format!(
                    "etl.databases.{name}: names starting with \"sqlite:\" are reserved for \
                     SQLite files"
                ));
            }
        }
        p
    }

    /// [`JobsConfig::problems`], the first one as an error.
    pub fn validate(&self) -> Result<(), JobsError> {
        match self.problems().into_iter().next() {
            None => Ok(()),
            Some(problem) => {
                let (key, message) = problem.split_once(": ").unwrap_or(("config", &problem));
                Err(JobsError::Config {
                    key: key.to_owned(),
                    message: message.to_owned(),
                })
            }
        }
    }
}

/// `[files]`: where job inputs and outputs live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Job inputs given as relative paths, and every output. Default `"data/files"`.
    pub dir: PathBuf,
    /// Where `email.send` writes `.eml` files when `[smtp] url` is empty. Default `"data/outbox"`.
    pub outbox: PathBuf,
    /// Largest download or input file accepted, in bytes: an `image.resize` source (URL or
    /// file), one `etl.sync` page, a report logo. Default 50 MiB.
    pub max_download_bytes: u64,
    /// Largest image (width x height) `image.resize` and a report logo decode, and largest
    /// output `image.resize` makes.
    /// Default 100,000,000.
    pub image_max_pixels: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/files"),
            outbox: PathBuf::from("data/outbox"),
            max_download_bytes: 50 * 1024 * 1024,
            image_max_pixels: 100_000_000,
        }
    }
}

/// `[smtp]`: the mail relay of `email.send`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://host:25` (plain), `smtp://host:587?tls=required` (STARTTLS), or
    /// `smtps://host:465` (TLS); credentials as `smtp://user:password@host`. Default `""`: no
    /// relay, mail goes to `[files] outbox` as `.eml` files.
    pub url: String,
    /// The sender of every message, e.g. `Hopper <hopper@example.com>`. Default `""`
    /// (required when `url` is set).
    pub from: String,
}

impl SmtpConfig {
    /// The relay, when one is configured.
    pub fn relay(&self) -> Option<&Self> {
        (!self.url.is_empty()).then_some(self)
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &redact_url(&self.url))
            .field("from", &self.from)
            .finish()
    }
}

/// `[notify]`: the channels of `notify.send` and the user side of notifications.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// A directory of email templates (minijinja): `TYPE.txt.j2` and `TYPE.html.j2` per
    /// notification type, falling back to `default.txt.j2` / `default.html.j2`, then to the
    /// built-in ones. Default `""`: the built-in templates only.
    pub templates: PathBuf,
    /// URLs every notification with the `webhook` channel is POSTed to. Default none.
    pub webhooks: Vec<String>,
    /// The HMAC-SHA256 key of the `Hopper-Signature` header; required with `webhooks`.
    /// Never logged or shown. Default `""`.
    pub webhook_secret: String,
    /// Consecutive failures of one endpoint (a webhook URL, a push service origin) that open
    /// its circuit. Default 5.
    pub breaker_failures: u32,
    /// How long an open circuit waits before one probe; doubles after each failed probe, up
    /// to an hour. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub breaker_cooldown: Duration,
    /// The VAPID private key (P-256) of Web Push: a file holding a PEM (SEC1 or PKCS#8) key
    /// or the raw 32-byte key in base64url. Default `""`: the `push` channel is skipped.
    pub vapid_private_key: PathBuf,
    /// The VAPID `sub` claim: `mailto:ops@example.com` or an `https://` URL. Default `""`
    /// (required with `vapid_private_key`).
    pub vapid_subject: String,
    /// How long a user's inbox keeps a notification for replay on reconnect. Default `"24h"`.
    #[serde(with = "duration_str")]
    pub keep: Duration,
    /// Most notifications one `GET /v1/notifications` connection receives per minute; the
    /// excess is dropped with a `rate_limited` frame. Default 60.
    pub max_messages_per_minute: u32,
    /// Most `GET /v1/notifications` connections one user (a JWT's `sub`) holds open at once
    /// on one server; past it a new one is 429 `too_many_connections`, so that one user
    /// cannot take every place under `[server] max_connections`. Default 16.
    pub max_connections_per_user: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            templates: PathBuf::new(),
            webhooks: Vec::new(),
            webhook_secret: String::new(),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            vapid_private_key: PathBuf::new(),
            vapid_subject: String::new(),
            keep: Duration::from_secs(24 * 3600),
            max_messages_per_minute: 60,
            max_connections_per_user: 16,
        }
    }
}

impl NotifyConfig {
    /// What is wrong with the section, each problem starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (i, url) in self.webhooks.iter().enumerate() {
            let ok = url::Url::parse(url).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
            });
            if !ok {
                p.push(format!(
                    "notify.webhooks: entry {i} is not an http(s) URL with a host and no \
                     credentials"
                ));
            }
        }
        if !self.webhooks.is_empty() && self.webhook_secret.is_empty() {
            p.push("notify.webhook_secret: is required when notify.webhooks is set".to_owned());
        }
        if self.breaker_failures == 0 {
            p.push("notify.breaker_failures: must be greater than zero".to_owned());
        }
        if self.breaker_cooldown.is_zero() {
            p.push("notify.breaker_cooldown: must be greater than zero".to_owned());
        }
        let subject_ok =
            self.vapid_subject.starts_with("mailto:") || self.vapid_subject.starts_with("https://");
        if !self.vapid_private_key.as_os_str().is_empty() && !subject_ok {
            p.push(
                "notify.vapid_subject: must be a mailto: or https:// URL when \
                 notify.vapid_private_key is set"
                    .to_owned(),
            );
        }
        p
    }
}

impl fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("templates", &self.templates)
            .field("webhooks", &self.webhooks)
            .field("webhook_secret", &"***")
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("vapid_private_key", &self.vapid_private_key)
            .field("vapid_subject", &self.vapid_subject)
            .field("keep", &self.keep)
            .field("max_messages_per_minute", &self.max_messages_per_minute)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .finish()
    }
}

/// `[etl]`: named secrets and databases `etl.sync` payloads refer to: a payload names them,
/// it never carries them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtlConfig {
    /// Bearer tokens by name, each bound to the URLs it may be sent to:
    /// `tokens.crm = { token = "…", url_prefix = "https://api.crm.example/" }`; a payload with
    /// `source.token = "crm"` must fetch a URL under that prefix. Default none.
    pub tokens: BTreeMap<String, EtlToken>,
    /// PostgreSQL URLs by name (`target.database` in a payload), e.g.
    /// `warehouse = "postgres://etl@db/warehouse"`. Default none.
    pub databases: BTreeMap<String, String>,
}

impl fmt::Debug for EtlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtlConfig")
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .field(
                "databases",
                &self
                    .databases
                    .iter()
                    .map(|(k, v)| (k, redact_url(v)))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish()
    }
}

/// One entry of `[etl] tokens`: a bearer token and the URLs it may be sent to.
///
/// ```toml
/// [etl]
/// tokens.crm = { token = "s3cr3t", url_prefix = "https://api.crm.example/v1/" }
/// ```
#[derive(Clone, PartialEq, Serialize)]
pub struct EtlToken {
    /// The secret, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Every URL the token is sent to starts with this (compared after both are normalized:
    /// host case, default port, `..` segments). An `https://` prefix keeps the token off
    /// plain HTTP; an `http://` prefix is the explicit opt-in to send it in clear.
    pub url_prefix: String,
}

impl EtlToken {
    /// The prefix, normalized as URLs are before they are compared with it; or why it is
    /// unusable.
    pub fn prefix(&self) -> Result<String, &'static str> {
        let url = url::Url::parse(&self.url_prefix)
            .map_err(|_| "must be an absolute http:// or https:// URL")?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL");
        }
        if url.host().is_none() {
            return Err("must name a host");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must not have a query or fragment");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials");
        }
        Ok(url.to_string())
    }

    /// True when `url` (normalized by parsing) is one the token may be sent to.
    pub fn covers(&self, url: &url::Url) -> bool {
        self.prefix().is_ok_and(|p| url.as_str().starts_with(&p))
    }
}

/// A table `{ token, url_prefix }`. A bare string (an unbound token) is refused with the way
/// forward, and without echoing it: it is a secret.
impl<'de> Deserialize<'de> for EtlToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bound {
            token: String,
            url_prefix: String,
        }
        struct Table;
        impl<'de> Visitor<'de> for Table {
            type Value = EtlToken;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a table { token = "…", url_prefix = "https://api.example.com/" }"#)
            }
            fn visit_str<E: de::Error>(self, _secret: &str) -> Result<EtlToken, E> {
                Err(E::custom(
                    r#"a token is bound to the URLs it may be sent to: write { token = "…", url_prefix = "https://api.example.com/" }"#,
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EtlToken, A::Error> {
                let b = Bound::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EtlToken {
                    token: b.token,
                    url_prefix: b.url_prefix,
                })
            }
        }
        d.deserialize_any(Table)
    }
}

impl fmt::Debug for EtlToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtlToken")
            .field("token", &"***")
            .field("url_prefix", &self.url_prefix)
            .finish()
    }
}

/// `[http]`: outgoing HTTP of job kinds (image downloads, ETL pages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Time limit of one request. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Non-public hosts jobs may reach anyway: host names (`"files.internal"`, allowed
    /// whatever they resolve to), addresses (`"127.0.0.1"`, `"::1"`) and networks
    /// (`"10.0.0.0/8"`, `"fd00::/8"`). Loopback, private, link-local (cloud metadata) and
    /// other non-public addresses are refused otherwise. Default none.
    pub allow_hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            allow_hosts: Vec::new(),
        }
    }
}

/// One parsed entry of `[http] allow_hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowHost {
    /// A host name, lowercase, without a trailing dot.
    Name(String),
    /// An address and a prefix length (32 or 128 for a single address).
    Net(IpAddr, u8),
}

impl AllowHost {
    /// Parses `"name"`, `"ip"` or `"ip/len"`; or says why not.
    pub fn parse(entry: &str) -> Result<Self, &'static str> {
        if let Some((ip, len)) = entry.split_once('/') {
            let ip: IpAddr = ip.parse().map_err(|_| "is not an IP network (IP/len)")?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return match len.parse::<u8>() {
                Ok(len) if len <= max => Ok(Self::Net(ip, len)),
                _ => Err("has a prefix length out of range"),
            };
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Self::Net(ip, if ip.is_ipv4() { 32 } else { 128 }));
        }
        let name = entry.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err("is neither a host name, an IP address nor an IP network");
        }
        if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err("is not a valid IP address");
        }
        Ok(Self::Name(name))
    }

    /// True when `ip` is in this network (never for a name).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let Self::Net(net, len) = self else {
            return false;
        };
        let (net, ip, len) = match (net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(n.to_bits()),
                u128::from(i.to_bits()),
                u32::from(*len) + 96,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (n.to_bits(), i.to_bits(), u32::from(*len)),
            _ => return false,
        };
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        net & mask == ip & mask
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A URL as logs and debug output show it: the engine's one rule (credentials replaced).
fn redact_url(url: &str) -> String {
    hopper_workers::broker::shown_url(url)
}

/// Durations as humantime strings (`"30s"`, `"2m"`, `"7d"`), both ways; the shell's config
/// uses it too, so every duration in `config.toml` reads and fails alike.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// The longest duration a config takes: what the API takes for a job's delay or timeout.
    /// Longer ones (`"1000000000d"`) parsed, and the times made from them were past what a
    /// timestamp shows (a job's `run_at` as a bare number of milliseconds).
    pub const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let d = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); expected e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"7d\""
            ))
        })?;
        if d > MAX {
            return Err(serde::de::Error::custom(format!(
                "duration {text:?} is longer than 100 years"
            )));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: JobsConfig = serde_json::from_value(serde_json::json!({})).expect("empty");
        assert_eq!(c, JobsConfig::default());
        let c: JobsConfig = serde_json::from_value(serde_json::json!({
            "http": {"timeout": "5s"},
            "smtp": {"url": "smtp://localhost:25", "from": "a@b.c"},
            "etl": {"tokens": {"gh": {"token": "tok-3f9a", "url_prefix": "https://api.github.com/"}}}
        }))
        .expect("parse");
        assert_eq!(c.http.timeout, Duration::from_secs(5));
        assert!(!format!("{c:?}").contains("tok-3f9a"));
        assert!(serde_json::from_value::<JobsConfig>(serde_json::json!({"nope": 1})).is_err());
    }

    /// Each `[smtp]` problem says what is wrong: a `from` given but not an address is not
    /// "required", and an `http://` relay names the schemes that work (lettre's own text
    /// spoke of TLS features).
    #[test]
    fn smtp_problems_say_what_is_wrong() {
        let problems = |url: &str, from: &str| {
            let mut c = JobsConfig::default();
            c.smtp.url = url.into();
            c.smtp.from = from.into();
            c.problems()
        };
        assert!(problems("smtp://h:25", "a@b.c").is_empty());
        assert!(problems("SMTPS://h:465", "Ann <a@b.c>").is_empty());
        let p = problems("smtp://h:25", "");
        assert!(p[0].starts_with("smtp.from: is required"), "{p:?}");
        let p = problems("smtp://h:25", "notanemail");
        assert!(
            p[0].contains("\"notanemail\" is not an email address"),
            "{p:?}"
        );
        let p = problems("http://h", "a@b.c");
        assert!(
            p[0].starts_with("smtp.url: must start with smtp://"),
            "{p:?}"
        );
    }

    #[test]
    fn size_limits_of_zero_are_refused() {
        let mut c = JobsConfig::default();
        c.files.max_download_bytes = 0;
        c.files.image_max_pixels = 0;
        let keys: Vec<String> = c
            .problems()
            .iter()
            .filter_map(|l| l.split(':').next().map(str::to_owned))
            .collect();
        assert_eq!(
            keys,
            ["files.image_max_pixels", "files.max_download_bytes"],
            "{keys:?}"
        );
    }

    #[test]
    fn notify_problems_name_their_key_and_hide_the_secret() {
        let mut n = NotifyConfig {
            webhook_secret: "whsec_hidden".into(),
            ..NotifyConfig::default()
        };
        assert!(n.problems().is_empty());
        assert!(!format!("{n:?}").contains("whsec_hidden"));
        n.webhooks = vec!["ftp://x/".into(), "https://u:p@h/".into()];
        n.webhook_secret.clear();
        n.breaker_failures = 0;
        n.vapid_private_key = "vapid.pem".into();
        n.vapid_subject = "ops@example.com".into();
        let p = n.problems();
        let keys: Vec<&str> = p.iter().filter_map(|l| l.split(':').next()).collect();
        assert_eq!(
            keys,
            [
                "notify.webhooks",
                "notify.webhooks",
                "notify.webhook_secret",
                "notify.breaker_failures",
                "notify.vapid_subject"
            ],
            "{p:?}"
        );
        assert!(
            !p.iter().any(|l| l.contains("u:p")),
            "no credentials echoed"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h/db"),
            "postgres://***@h/db".to_owned()
        );
        assert_eq!(redact_url("smtp://h:25"), "smtp://h:25");
    }
}
