//! The job kinds' settings: one typed struct the shell embeds from `config.toml` (`[smtp]`,
//! `[files]`, `[etl]`). This module owns the field names, their defaults and the checks that
//! can be made before anything runs; it does not read files or the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::JobsError;

/// Settings of every job kind. Each field's doc states its default; durations are written
/// as humantime strings (`"30s"`, `"2m"`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Where job inputs given as relative paths and all outputs live. Default `data/files`.
    pub files_dir: PathBuf,
    /// Where `email.send` writes `.eml` files when no `[smtp]` is configured.
    /// Default `data/outbox`.
    pub outbox_dir: PathBuf,
    /// The SMTP relay. Default none: mail goes to the outbox.
    pub smtp: Option<SmtpConfig>,
    /// Named secrets and databases for `etl.sync`. Default empty.
    pub etl: EtlConfig,
    /// Time limit of one HTTP request (image download, one ETL page), e.g. `"30s"`.
    /// Default 30 s.
    #[serde(deserialize_with = "duration")]
    pub http_timeout: Duration,
    /// Largest download `image.resize` accepts, in bytes. Default 50 MiB.
    pub max_download_bytes: u64,
    /// Largest image (width x height) `image.resize` and a report logo decode. Default 100 M.
    pub image_max_pixels: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            files_dir: PathBuf::from("data/files"),
            outbox_dir: PathBuf::from("data/outbox"),
            smtp: None,
            etl: EtlConfig::default(),
            http_timeout: Duration::from_secs(30),
            max_download_bytes: 50 * 1024 * 1024,
            image_max_pixels: 100_000_000,
        }
    }
}

impl fmt::Debug for JobsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobsConfig")
            .field("files_dir", &self.files_dir)
            .field("outbox_dir", &self.outbox_dir)
            .field("smtp", &self.smtp)
            .field("etl", &self.etl)
            .field("http_timeout", &self.http_timeout)
            .field("max_download_bytes", &self.max_download_bytes)
            .field("image_max_pixels", &self.image_max_pixels)
            .finish()
    }
}

impl JobsConfig {
    /// Checks what can be checked without connecting, naming the key of the first problem.
    pub fn validate(&self) -> Result<(), JobsError> {
        let bad = |key: &str, message: &str| {
            Err(JobsError::Config {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.files_dir.as_os_str().is_empty() {
            return bad("files.dir", "must not be empty");
        }
        if self.http_timeout.is_zero() {
            return bad("http_timeout", "must be greater than zero");
        }
        if self.image_max_pixels == 0 {
            return bad("image_max_pixels", "must be greater than zero");
        }
        if let Some(smtp) = &self.smtp {
            if smtp.url.is_empty() {
                return bad("smtp.url", "must not be empty");
            }
            if !smtp.from.contains('@') {
                return bad("smtp.from", "must be an email address");
            }
        }
        for name in self.etl.databases.keys() {
            if name.starts_with("sqlite:") {
                return bad(
                    &format!("etl.databases.{name}"),
                    "names starting with \"sqlite:\" are reserved for SQLite files",
                );
            }
        }
        Ok(())
    }
}

/// The SMTP relay `email.send` delivers through.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://host:25` (plain), `smtp://host:587?tls=required` (STARTTLS), or
    /// `smtps://host:465` (TLS); credentials as `smtp://user:password@host`. Required.
    pub url: String,
    /// The sender address of every message, e.g. `Hopper <hopper@example.com>`. Required.
    pub from: String,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &redact_url(&self.url))
            .field("from", &self.from)
            .finish()
    }
}

/// Named secrets and databases for `etl.sync`: a payload names them, it never carries them.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtlConfig {
    /// Bearer tokens by name (`source.token` in a payload). Default none.
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: JobsConfig = serde_json::from_value(serde_json::json!({})).expect("empty");
        assert_eq!(c, JobsConfig::default());
        let c: JobsConfig = serde_json::from_value(serde_json::json!({
            "http_timeout": "5s",
            "smtp": {"url": "smtp://localhost:25", "from": "a@b.c"},
            "etl": {"tokens": {"gh": "secret"}}
        }))
        .expect("parse");
        assert_eq!(c.http_timeout, Duration::from_secs(5));
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
