//! The job kinds' settings: the `[files]`, `[smtp]`, `[etl]` and `[http]` sections of
//! `config.toml`, declared once here and embedded as they are by the shell's config. This
//! module owns the field names, their defaults and the checks that can be made before anything
//! runs; it does not read files or the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::JobsError;

/// Settings of every job kind: the `[files]`, `[smtp]`, `[etl]` and `[http]` sections of
/// `config.toml`, declared here once, in the shape the file has; the shell embeds each
/// section as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    pub files: FilesConfig,
    pub smtp: SmtpConfig,
    pub etl: EtlConfig,
    pub http: HttpConfig,
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
        if self.http.timeout.is_zero() {
            p.push("http.timeout: must be greater than zero".to_owned());
        }
        if self.smtp.relay().is_some() && !self.smtp.from.contains('@') {
            p.push("smtp.from: is required when smtp.url is set: an email address".to_owned());
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
    /// Largest download `image.resize` accepts, in bytes. Default 50 MiB.
    pub max_download_bytes: u64,
    /// Largest image (width x height) `image.resize` and a report logo decode.
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

/// `[etl]`: named secrets and databases `etl.sync` payloads refer to: a payload names them,
/// it never carries them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtlConfig {
    /// Bearer tokens by name: `source.token = "crm"` sends `tokens.crm`. Default none.
    pub tokens: BTreeMap<String, String>,
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

/// `[http]`: outgoing HTTP of job kinds (image downloads, ETL pages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Time limit of one request. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
        }
    }
}

/// A URL with its password (if any) replaced, for logs and debug output.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Durations as humantime strings (`"30s"`, `"2m"`, `"7d"`), both ways; the shell's config
/// uses it too, so every duration in `config.toml` reads and fails alike.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); expected e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"7d\""
            ))
        })
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
            "etl": {"tokens": {"gh": "secret"}}
        }))
        .expect("parse");
        assert_eq!(c.http.timeout, Duration::from_secs(5));
        assert!(!format!("{c:?}").contains("secret"));
        assert!(serde_json::from_value::<JobsConfig>(serde_json::json!({"nope": 1})).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h/db"),
            "postgres://u:***@h/db".to_owned()
        );
        assert_eq!(redact_url("smtp://h:25"), "smtp://h:25");
    }
}
