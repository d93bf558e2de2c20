//! Hopper's job kinds: what each kind of job *does*. The engine (`hopper-workers`) knows how
//! to run a job; this crate only implements [`Kind`](hopper_workers::Kind)s (a payload
//! struct, a `check`, one `run`) and registers them. It never sees a broker, a queue or the
//! HTTP API.
//!
//! # Layout
//!
//! - [`config`]: [`JobsConfig`], the `[smtp]`, `[files]`, `[etl]`, `[http]` and `[notify]`
//!   settings the shell embeds.
//! - [`files`]: relative paths under the files directory, and the refusal to leave it.
//! - [`capped`]: a byte buffer that refuses to grow past a limit, where templates render.
//! - `payload` (private): serde helpers several payload types share (one string or a list,
//!   SQL identifiers); parsing itself is the engine's.
//! - `http` (private, feature `http`): the shared [`HttpClient`] (redirects followed and
//!   checked hop by hop), status classification; `http/guard.rs`: which addresses outgoing
//!   requests may reach (`[http] allow_hosts`).
//! - `decode` (private): decoding untrusted images within limits.
//! - [`email`] (feature `email`): `email.send`.
//! - [`image`] (feature `image`): `image.resize`.
//! - [`pdf`] (feature `pdf`): `pdf.report`, with `pdf/table.rs` (where rows come from) and
//!   `pdf/layout.rs` (font, page geometry, drawing).
//! - [`etl`] (feature `etl`): `etl.sync`, with `etl/source.rs` (fetching pages),
//!   `etl/mapping.rs` (items to rows) and `etl/target.rs` (the SQL).
//! - [`cleanup`] (feature `cleanup`): `cleanup.purge`.
//! - [`notify`] (feature `notify`): `notify.send`, with `notify/channels.rs`,
//!   `notify/record.rs` (the delivery record kept in the job's checkpoint), `notify/email.rs`,
//!   `notify/webhook.rs`, `notify/push.rs` (Web Push), `notify/breaker.rs` (a circuit
//!   breaker per endpoint), `notify/ports.rs` (the inbox and push subscriptions the shell
//!   provides) and `notify/circuits.rs` (the store through which breakers share their state,
//!   also the shell's). Not registered by [`register_all`]: it needs those ports, so the shell calls
//!   [`notify::register_notify`].
//!
//! Every kind receives its clients (SMTP transport, HTTP client, database pools) when it is
//! registered, sorts its failures into retryable and permanent ones, and checks payloads in
//! [`Kind::check`](hopper_workers::Kind::check) (reached through
//! [`Handler::validate`](hopper_workers::Handler::validate)) so that the API can answer 400
//! before anything is enqueued.

pub mod capped;
pub mod config;
pub mod files;
// With every kind disabled, nothing parses payloads.
#[cfg_attr(not(feature = "kind"), allow(dead_code))]
mod payload;

#[cfg(any(feature = "image", feature = "pdf"))]
mod decode;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "cleanup")]
pub mod cleanup;
#[cfg(feature = "email")]
pub mod email;
#[cfg(feature = "etl")]
pub mod etl;
#[cfg(feature = "image")]
pub mod image;
#[cfg(feature = "notify")]
pub mod notify;
#[cfg(feature = "pdf")]
pub mod pdf;

pub use config::{
    EtlConfig, EtlToken, FilesConfig, HttpConfig, JobsConfig, NotifyConfig, SmtpConfig,
};
#[cfg(feature = "http")]
pub use http::HttpClient;

use hopper_workers::Registry;
use hopper_workers::registry::RegistryError;

/// Why the job kinds could not be registered: a configuration problem found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A configuration value is unusable; `key` names it as written in `config.toml`.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// A shared client could not be built.
    #[error("cannot build the {what}: {message}")]
    Client { what: &'static str, message: String },
}

/// Registers every kind enabled by this crate's features, building the shared clients once:
/// one HTTP client, one pooled SMTP transport, one lazily connected pool per PostgreSQL URL.
/// All but `notify.send`, which needs the shell's ports: see [`notify::register_notify`].
///
/// ```no_run
/// let mut registry = hopper_workers::Registry::new();
/// hopper_jobs::register_all(&mut registry, &hopper_jobs::JobsConfig::default())?;
/// # Ok::<(), hopper_jobs::JobsError>(())
/// ```
#[cfg_attr(not(feature = "kind"), allow(unused_variables))]
pub fn register_all(registry: &mut Registry, config: &JobsConfig) -> Result<(), JobsError> {
    config.validate()?;
    #[cfg(feature = "http")]
    let http = HttpClient::new(config)?;
    #[cfg(feature = "email")]
    registry.add(email::SendEmail::new(config)?)?;
    #[cfg(feature = "image")]
    registry.add(image::Resize::new(config, http.clone()))?;
    #[cfg(feature = "pdf")]
    registry.add(pdf::Report::new(config)?)?;
    #[cfg(feature = "etl")]
    registry.add(etl::Sync::new(config, http.clone())?)?;
    #[cfg(feature = "cleanup")]
    registry.add(cleanup::Purge::new(config))?;
    Ok(())
}
