//! The job kinds driven through `Handler::run` against real parts on loopback: an SMTP
//! server speaking enough SMTP, an axum JSON API, SQLite files, the local PostgreSQL, real
//! images and PDFs on disk. One test binary, one module per kind.

mod common;

#[cfg(feature = "cleanup")]
mod cleanup;
#[cfg(all(feature = "image", feature = "etl"))]
mod egress;
#[cfg(feature = "email")]
mod email;
#[cfg(feature = "etl")]
mod etl;
#[cfg(feature = "image")]
mod image;
#[cfg(feature = "notify")]
mod notify;
/// The webhook receiver and Web Push service, shared with the workspace's end-to-end tests.
#[cfg(feature = "notify")]
#[path = "../../../tests/util/notify_peers.rs"]
mod notify_peers;
#[cfg(feature = "pdf")]
mod pdf;
