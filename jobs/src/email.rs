//! `email.send`: builds one message and hands it to the SMTP relay of `[smtp]` (lettre's
//! pooled async transport, shared by every job), or, with no `[smtp]`, writes it as an
//! `.eml` file into the outbox directory. This module owns the payload, the message layout and
//! the sorting of SMTP failures; it does not own the relay's connection settings (the config).
//!
//! Payload:
//!
//! ```json
//! {"to": "a@example.com" | ["a@example.com", "B <b@example.com>"], "cc": [...], "bcc": [...],
//!  "reply_to": "r@example.com", "subject": "Report", "text": "...", "html": "<p>...</p>",
//!  "attachments": [{"path": "reports/q3.pdf", "filename": "Q3.pdf", "content_type": "application/pdf"}],
//!  "attach_input": true}
//! ```
//!
//! At least one of `text` and `html` (both: `multipart/alternative`). Attachment paths are
//! relative to the files directory and may not leave it; each must be a regular file, and
//! together they may not exceed [`MAX_ATTACHMENT_BYTES`] (sized before they are read).
//!
//! **Chain input rule:** as a later step of a chain, the previous step's result arrives as
//! `input`. Unless `attach_input` is false, the file at `input.path` (e.g. `pdf.report`'s
//! `{"path", "pages"}`) and the file at each `input.outputs[].path` (e.g. `image.resize`'s
//! outputs) are attached too, after the payload's own attachments.
//!
//! Errors: a 5xx SMTP reply (a refused recipient, say) is permanent; a 4xx reply, a refused
//! connection or a timeout is retryable. The `Message-ID` is derived from the job id, so a
//! retried message carries the same id and receivers can drop duplicates.
//!
//! Result: `{"message_id", "recipients": n}`, plus `"outbox": path` when written to a file.
//!
//! [`SendEmail`] is a [`Kind`]: its payload is [`EmailArgs`], the address and attachment rules
//! serde cannot express are its `check`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hopper_workers::FieldError;
use hopper_workers::{JobContext, JobError, JobResult, Kind};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::json;

use crate::files::{FilesDir, check_relative, io_error, read_capped, safe_name};
use crate::payload::one_or_many;
use crate::{JobsConfig, JobsError};

/// Sender used for outbox files when no `[smtp] from` is configured.
const OUTBOX_FROM: &str = "Hopper <hopper@localhost>";
/// Attachments larger than this in total make the job fail permanently: relays refuse them.
pub const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;

/// The payload of `email.send` (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailArgs {
    #[serde(deserialize_with = "one_or_many")]
    to: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    cc: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    bcc: Vec<String>,
    reply_to: Option<String>,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    #[serde(default)]
    attachments: Vec<AttachmentArgs>,
    #[serde(default = "yes")]
    attach_input: bool,
    /// A chain predecessor's result: the files it names are attached.
    #[serde(default)]
    input: Option<PrevFiles>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentArgs {
    path: String,
    filename: Option<String>,
    content_type: Option<String>,
}

/// The part of a chain predecessor's result `email.send` reads: the file at `path` (e.g.
/// `pdf.report`'s) and the files at `outputs[].path` (e.g. `image.resize`'s).
#[derive(Debug, Deserialize)]
struct PrevFiles {
    path: Option<String>,
    #[serde(default)]
    outputs: Vec<PrevOutput>,
}

#[derive(Debug, Deserialize)]
struct PrevOutput {
    path: Option<String>,
}

impl PrevFiles {
    /// The files named, in order: `path`, then each output's.
    fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.path
            .iter()
            .chain(self.outputs.iter().filter_map(|o| o.path.as_ref()))
            .cloned()
    }
}

/// Where messages go.
enum Delivery {
    /// The relay; the pooled transport is built on first use, because lettre's pool starts a
    /// background task and registration may run outside the Tokio runtime.
    Smtp {
        builder: Box<AsyncSmtpTransportBuilder>,
        transport: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
    },
    Outbox {
        dir: PathBuf,
    },
}

/// `email.send`.
pub struct SendEmail {
    delivery: Delivery,
    files: FilesDir,
}

impl std::fmt::Debug for SendEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let delivery = match &self.delivery {
            Delivery::Smtp { .. } => "smtp",
            Delivery::Outbox { .. } => "outbox",
        };
        f.debug_struct("SendEmail")
            .field("delivery", &delivery)
            .finish()
    }
}

impl SendEmail {
    /// The handler for `config`: SMTP when `[smtp]` is set, else the outbox.
    pub fn new(config: &JobsConfig) -> Result<Self, JobsError> {
        let delivery =
            match config.smtp.relay() {
                Some(smtp) => {
                    let from = smtp
                        .from
                        .parse::<Mailbox>()
                        .map_err(|e| JobsError::Config {
                            key: "smtp.from".into(),
                            message: e.to_string(),
                        })?;
                    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&smtp.url)
                        .map_err(|e| JobsError::Config {
                            key: "smtp.url".into(),
                            message: e.to_string(),
                        })?;
                    Delivery::Smtp {
                        builder: Box::new(builder),
                        transport: OnceLock::new(),
                        from,
                    }
                }
                None => Delivery::Outbox {
                    dir: config.files.outbox.clone(),
                },
            };
        Ok(Self {
            delivery,
            files: FilesDir::new(&config.files.dir),
        })
    }

    /// Hands `message` to the relay, or writes it into the outbox as `<name>.eml` (answering
    /// its path). Shared with `notify.send`'s email channel.
    pub(crate) async fn deliver(
        &self,
        cx: &JobContext,
        message: Message,
        name: &str,
    ) -> Result<Option<PathBuf>, JobError> {
        match &self.delivery {
            Delivery::Smtp {
                builder, transport, ..
            } => {
                let transport = transport.get_or_init(|| (**builder).clone().build());
                tokio::select! {
                    () = cx.cancelled() => Err(JobError::retryable("cancelled while sending")),
                    sent = transport.send(message) => {
                        sent.map_err(|e| smtp_error(&e))?;
                        Ok(None)
                    }
                }
            }
            Delivery::Outbox { dir } => write_outbox(dir, name, &message.formatted())
                .await
                .map(Some),
        }
    }

    /// The sender of every message: `[smtp] from`, or a local one for the outbox.
    pub(crate) fn from(&self) -> Result<Mailbox, JobError> {
        match &self.delivery {
            Delivery::Smtp { from, .. } => Ok(from.clone()),
            Delivery::Outbox { .. } => OUTBOX_FROM
                .parse()
                .map_err(|e| JobError::permanent(format!("outbox sender: {e}"))),
        }
    }

    /// Reads every attachment: the payload's, then the chain input's.
    async fn attachments(&self, args: &EmailArgs) -> Result<Vec<SinglePart>, JobError> {
        let mut wanted: Vec<(String, Option<String>, Option<String>)> = args
            .attachments
            .iter()
            .map(|a| (a.path.clone(), a.filename.clone(), a.content_type.clone()))
            .collect();
        if args.attach_input
            && let Some(input) = &args.input
        {
            wanted.extend(input.paths().map(|p| (p, None, None)));
        }
        let mut parts = Vec::with_capacity(wanted.len());
        let mut total = 0u64;
        for (rel, filename, content_type) in wanted {
            let path = self.files.existing(&rel)?;
            let room = MAX_ATTACHMENT_BYTES - total;
            let what = format!("attachment {rel:?}");
            let file = path.clone();
            let body = tokio::task::spawn_blocking(move || {
                read_capped(&file, &what, room, || {
                    JobError::permanent(format!(
                        "{what}: attachments are limited to {MAX_ATTACHMENT_BYTES} bytes in total"
                    ))
                })
            })
            .await
            .map_err(|e| JobError::retryable(format!("attachment task failed: {e}")))??;
            total += body.len() as u64;
            let filename = filename.unwrap_or_else(|| file_name(&path));
            let content_type = match content_type {
                Some(ct) => ContentType::parse(&ct)
                    .map_err(|e| JobError::permanent(format!("content_type {ct:?}: {e}")))?,
                None => ContentType::parse(guess_content_type(&filename))
                    .map_err(|e| JobError::permanent(format!("content type: {e}")))?,
            };
            parts.push(Attachment::new(filename).body(body, content_type));
        }
        Ok(parts)
    }

    fn build(
        &self,
        cx: &JobContext,
        args: &EmailArgs,
        files: Vec<SinglePart>,
    ) -> Result<Message, JobError> {
        let from = self.from()?;
        let domain = from.email.domain().to_owned();
        let mut b = Message::builder()
            .from(from)
            .subject(args.subject.clone())
            .message_id(Some(format!("<{}@{domain}>", cx.job().id)))
            .date_now();
        let mbox = |s: &String| {
            s.parse::<Mailbox>()
                .map_err(|e| JobError::permanent(format!("invalid payload: {s:?}: {e}")))
        };
        for a in &args.to {
            b = b.to(mbox(a)?);
        }
        for a in &args.cc {
            b = b.cc(mbox(a)?);
        }
        for a in &args.bcc {
            b = b.bcc(mbox(a)?);
        }
        if let Some(r) = &args.reply_to {
            b = b.reply_to(mbox(r)?);
        }
        let body = match (&args.text, &args.html) {
            (Some(t), Some(h)) => {
                Body::Multi(MultiPart::alternative_plain_html(t.clone(), h.clone()))
            }
            (Some(t), None) => Body::Single(SinglePart::plain(t.clone())),
            (None, Some(h)) => Body::Single(SinglePart::html(h.clone())),
            (None, None) => return Err(JobError::permanent("invalid payload: no text or html")),
        };
        let built = if files.is_empty() {
            match body {
                Body::Multi(m) => b.multipart(m),
                Body::Single(s) => b.singlepart(s),
            }
        } else {
            let mut mixed = match body {
                Body::Multi(m) => MultiPart::mixed().multipart(m),
                Body::Single(s) => MultiPart::mixed().singlepart(s),
            };
            for f in files {
                mixed = mixed.singlepart(f);
            }
            b.multipart(mixed)
        };
        built.map_err(|e| JobError::permanent(format!("cannot build the message: {e}")))
    }
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".to_owned())
}

fn guess_content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "zip" => "application/zip",
        "eml" => "message/rfc822",
        _ => "application/octet-stream",
    }
}

/// Sorts an SMTP failure: a 5xx reply is final, everything else may pass on a later try.
fn smtp_error(e: &lettre::transport::smtp::Error) -> JobError {
    let mut message = format!("smtp: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_permanent() || e.is_client() {
        JobError::permanent(message)
    } else {
        JobError::retryable(message)
    }
}

impl Kind for SendEmail {
    const NAME: &'static str = "email.send";
    type Args = EmailArgs;

    async fn run(&self, cx: JobContext, args: EmailArgs) -> JobResult {
        let files = self.attachments(&args).await?;
        let message = self.build(&cx, &args, files)?;
        cx.progress(50, Some("message built".to_owned()));
        let recipients = message.envelope().to().len();
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_owned();
        match self.deliver(&cx, message, cx.job().id.as_str()).await? {
            None => Ok(json!({ "message_id": message_id, "recipients": recipients })),
            Some(path) => Ok(json!({
                "message_id": message_id,
                "recipients": recipients,
                "outbox": path.display().to_string(),
            })),
        }
    }

    /// The rules serde cannot express: addresses that parse, a one-line subject, a body,
    /// attachments under the files directory.
    fn check(&self, args: &EmailArgs) -> Result<(), FieldError> {
        if args.to.is_empty() {
            return Err(FieldError::new("payload.to", "needs at least one address"));
        }
        for (name, list) in [("to", &args.to), ("cc", &args.cc), ("bcc", &args.bcc)] {
            for (i, addr) in list.iter().enumerate() {
                addr.parse::<Mailbox>().map_err(|e| {
                    FieldError::new(format!("payload.{name}[{i}]"), format!("{addr:?}: {e}"))
                })?;
            }
        }
        if let Some(r) = &args.reply_to {
            r.parse::<Mailbox>()
                .map_err(|e| FieldError::new("payload.reply_to", e.to_string()))?;
        }
        if args.subject.contains(['\r', '\n']) {
            return Err(FieldError::new("payload.subject", "must be a single line"));
        }
        if args.text.is_none() && args.html.is_none() {
            return Err(FieldError::new("payload.text", "give text, html or both"));
        }
        for (i, a) in args.attachments.iter().enumerate() {
            check_relative(&a.path)
                .map_err(|m| FieldError::new(format!("payload.attachments[{i}].path"), m))?;
            if let Some(ct) = &a.content_type {
                ContentType::parse(ct).map_err(|e| {
                    FieldError::new(
                        format!("payload.attachments[{i}].content_type"),
                        e.to_string(),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Writes `<dir>/<job id>.eml` whole or not at all (temp file, then rename), so a retry
/// overwrites rather than duplicates.
async fn write_outbox(dir: &Path, job_id: &str, bytes: &[u8]) -> Result<PathBuf, JobError> {
    let io = |e: std::io::Error| io_error("outbox", &e);
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let name = safe_name(job_id);
    let path = dir.join(format!("{name}.eml"));
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, &path).await.map_err(io)?;
    Ok(path)
}
