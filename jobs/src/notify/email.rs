//! The `email` channel: the notification rendered with its type's templates and sent through
//! `email.send`'s transport (the `[smtp]` relay, or the outbox), as `multipart/alternative`
//! with a text and an HTML part.
//!
//! Templates (minijinja) come from `[notify] templates`: `TYPE.txt.j2` and `TYPE.html.j2`,
//! else `default.txt.j2` and `default.html.j2`, else the built-in ones below; each part is
//! looked up on its own. Variables: `title`, `body`, `data` (the payload's JSON) and `user`.
//! The HTML part is auto-escaped. The subject is the title. The `Message-ID` is derived from
//! the job id (`<JOB.email@DOMAIN>`), the same on every retry. A render is bounded: at most
//! [`RENDER_FUEL`] template instructions and [`MAX_RENDERED`] bytes a part, else the delivery
//! fails for good (a template looping over the payload's lists within each other would run
//! for hours and fill the memory, and a job's timeout cannot stop a render).

use std::path::PathBuf;

use hopper_workers::{JobContext, JobError};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use minijinja::Environment;
use serde_json::json;

use super::ports::Notification;
use crate::capped::Capped;
use crate::email::SendEmail;

/// The text part when no template file applies.
const BUILTIN_TEXT: &str = "{{ title }}\n\n{{ body }}\n";
/// The HTML part when no template file applies.
const BUILTIN_HTML: &str = "<!doctype html>\n<html><body>\n<h1>{{ title }}</h1>\n\
    <p>{{ body }}</p>\n</body></html>\n";

/// Instructions one part's render may run (minijinja's fuel): a template looping over the
/// payload's lists within itself (rows × columns) would otherwise run on for hours, past the
/// job's timeout, which cannot interrupt it.
pub const RENDER_FUEL: u64 = 20_000_000;
/// The most bytes one rendered part may have.
pub const MAX_RENDERED: usize = 10 * 1024 * 1024;

/// Checks `[notify] templates` at start: a directory, and every `*.j2` in it a template
/// minijinja can parse. A mistyped path fell back to the built-in templates for good, and a
/// syntax error failed every email of its type; either is a config error now, naming the key
/// and the file. Empty: the built-in templates only, nothing to check.
pub(super) fn check_templates(dir: &std::path::Path) -> Result<(), String> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the directory {}: {e}", dir.display()))?;
    let env = Environment::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read the directory {}: {e}", dir.display()))?
            .path();
        if path.extension().is_none_or(|x| x != "j2") || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        env.template_from_str(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Renders both parts of a notification of type `kind`.
fn render_parts(
    kind: &str,
    text_src: String,
    html_src: String,
    vars: &serde_json::Value,
) -> Result<(String, String), JobError> {
    let mut env = Environment::new();
    env.set_fuel(Some(RENDER_FUEL));
    // Names ending in .html are auto-escaped, .txt ones are not.
    env.add_template_owned("notification.txt", text_src)
        .and_then(|()| env.add_template_owned("notification.html", html_src))
        .map_err(|e| JobError::permanent(format!("template of type {kind:?}: {e}")))?;
    let render = |name: &str| {
        let mut out = Capped::new(MAX_RENDERED);
        env.get_template(name)
            .and_then(|t| {
                t.render_captured_to(
                    minijinja::Value::from(minijinja::value::Serde(vars)),
                    &mut out,
                )
                .map(drop)
            })
            .map_err(|e| {
                let e = if out.over() {
                    format!("the part is over {MAX_RENDERED} bytes")
                } else {
                    e.to_string()
                };
                JobError::permanent(format!("rendering {name} of type {kind:?}: {e}"))
            })?;
        String::from_utf8(out.into_inner())
            .map_err(|e| JobError::permanent(format!("rendering {name}: {e}")))
    };
    Ok((render("notification.txt")?, render("notification.html")?))
}

/// Renders and sends notification emails.
pub(super) struct Mailer {
    pub(super) transport: SendEmail,
    /// `[notify] templates`; empty for the built-in templates only.
    pub(super) templates: PathBuf,
}

impl Mailer {
    /// The source of `kind`'s template with extension `ext` (`txt` or `html`).
    async fn source(&self, kind: &str, ext: &str) -> Result<String, JobError> {
        if !self.templates.as_os_str().is_empty() {
            for name in [kind, "default"] {
                let path = self.templates.join(format!("{name}.{ext}.j2"));
                match tokio::fs::read_to_string(&path).await {
                    Ok(text) => return Ok(text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(JobError::retryable(format!(
                            "template {}: {e}",
                            path.display()
                        )));
                    }
                }
            }
        }
        Ok(if ext == "html" {
            BUILTIN_HTML
        } else {
            BUILTIN_TEXT
        }
        .to_owned())
    }

    /// The text and HTML parts of `n`, rendered off the runtime's threads within
    /// [`RENDER_FUEL`] and [`MAX_RENDERED`].
    pub(super) async fn render(&self, n: &Notification) -> Result<(String, String), JobError> {
        let text_src = self.source(&n.kind, "txt").await?;
        let html_src = self.source(&n.kind, "html").await?;
        let kind = n.kind.clone();
        let vars = json!({"title": n.title, "body": n.body, "data": n.data, "user": n.user});
        tokio::task::spawn_blocking(move || render_parts(&kind, text_src, html_src, &vars))
            .await
            .map_err(|e| JobError::retryable(format!("rendering the email: {e}")))?
    }

    /// Renders `n` and sends it to `to`.
    pub(super) async fn send(
        &self,
        cx: &JobContext,
        n: &Notification,
        to: &str,
    ) -> Result<(), JobError> {
        let (text, html) = self.render(n).await?;
        let from = self.transport.from()?;
        let to: Mailbox = to
            .parse()
            .map_err(|e| JobError::permanent(format!("address {to:?}: {e}")))?;
        let name = format!("{}.email", cx.job().id);
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(n.title.clone())
            .message_id(Some(format!("<{name}@{}>", from.email.domain())))
            .date_now()
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| JobError::permanent(format!("cannot build the message: {e}")))?;
        self.transport.deliver(cx, message, &name).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{check_templates, render_parts};

    /// A missing directory and a template that does not parse are config errors naming the
    /// path; a directory of good templates (and other files) passes, as does no directory.
    #[test]
    fn the_templates_directory_is_checked_at_start() {
        assert_eq!(check_templates(std::path::Path::new("")), Ok(()));
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let why = check_templates(&missing).expect_err("missing");
        assert!(why.contains("nope"), "{why}");
        std::fs::write(dir.path().join("welcome.txt.j2"), "Hi {{ title }}").expect("write");
        std::fs::write(dir.path().join("README"), "{% not a template").expect("write");
        assert_eq!(check_templates(dir.path()), Ok(()));
        std::fs::write(dir.path().join("welcome.html.j2"), "<p>{{ title </p>").expect("write");
        let why = check_templates(dir.path()).expect_err("syntax");
        assert!(why.contains("welcome.html.j2"), "{why}");
    }

    /// What README promises of a template: the HTML part escaped, `tojson` for a map as JSON.
    #[test]
    fn templates_escape_html_and_print_json_with_tojson() {
        let vars = json!({"title": "<b>hi</b>", "data": {"a": 1}});
        let (text, html) = render_parts(
            "t",
            "{{ title }} {{ data|tojson }}".into(),
            "<p>{{ title }}</p>".into(),
            &vars,
        )
        .expect("renders");
        assert_eq!(text, r#"<b>hi</b> {"a": 1}"#);
        assert_eq!(html, "<p>&lt;b&gt;hi&lt;&#x2f;b&gt;</p>");
    }
}
