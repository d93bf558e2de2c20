//! `email.send` against a small SMTP server on 127.0.0.1:0, and into the outbox; attachments
//! that are huge or not regular files.

use hopper_jobs::{JobsConfig, SmtpConfig};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::common::{self, is_permanent, is_retryable, ok, run};

/// One message as the server received it.
pub(crate) struct Received {
    pub(crate) recipients: Vec<String>,
    pub(crate) data: Vec<u8>,
}

/// Speaks enough SMTP for lettre: greeting, EHLO/HELO, MAIL, RCPT (550 for any address
/// containing "refused"), DATA (with dot-unstuffing), RSET, NOOP, QUIT.
pub(crate) async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                let _ = write.write_all(b"220 test.local ESMTP\r\n").await;
                let mut recipients = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-test.local\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("HELO") {
                        b"250 test.local\r\n"
                    } else if upper.starts_with("MAIL FROM") {
                        recipients.clear();
                        b"250 2.1.0 OK\r\n"
                    } else if upper.starts_with("RCPT TO") {
                        if line.contains("refused") {
                            b"550 5.1.1 no such user\r\n"
                        } else {
                            recipients.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                            b"250 2.1.5 OK\r\n"
                        }
                    } else if upper.starts_with("DATA") {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut data = Vec::new();
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                            data.extend_from_slice(unstuffed.as_bytes());
                        }
                        let _ = tx.send(Received {
                            recipients: std::mem::take(&mut recipients),
                            data,
                        });
                        b"250 2.0.0 queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                        b"250 OK\r\n"
                    } else {
                        b"502 not implemented\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

fn smtp_config(dir: &std::path::Path, port: u16) -> JobsConfig {
    JobsConfig {
        smtp: SmtpConfig {
            url: format!("smtp://127.0.0.1:{port}"),
            from: "Hopper <hopper@example.com>".into(),
        },
        ..common::config(dir)
    }
}

#[tokio::test]
async fn sends_multipart_with_attachments_and_chain_input() {
    let (port, mut inbox) = smtp_server().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = smtp_config(tmp.path(), port);
    let attachment: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::create_dir_all(config.files.dir.join("docs")).expect("mkdir");
    std::fs::create_dir_all(config.files.dir.join("reports")).expect("mkdir");
    std::fs::write(config.files.dir.join("docs/a.bin"), &attachment).expect("write");
    std::fs::write(config.files.dir.join("reports/q3.pdf"), b"%PDF-1.7 fake").expect("write");
    let registry = common::registry(&config);

    let result = ok(run(
        &registry,
        "email.send",
        json!({
            "to": ["a@example.com", "Bé <b@example.com>"],
            "cc": "c@example.com",
            "bcc": ["d@example.com"],
            "reply_to": "r@example.com",
            "subject": "Rapport été €",
            "text": "Bonjour, voici le rapport.\n.\nUne ligne qui commence par un point.",
            "html": "<p>Bonjour, <b>voici</b> le rapport €</p>",
            "attachments": [{"path": "docs/a.bin", "filename": "data.bin", "content_type": "application/octet-stream"}],
            "input": {"path": "reports/q3.pdf", "pages": 3},
        }),
    )
    .await);
    assert_eq!(result["recipients"], 4);
    assert!(
        result["message_id"]
            .as_str()
            .is_some_and(|m| m.ends_with("@example.com>"))
    );

    let got = inbox.recv().await.expect("message received");
    let mut rcpt = got.recipients.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        [
            "a@example.com",
            "b@example.com",
            "c@example.com",
            "d@example.com"
        ]
    );
    let msg = MessageParser::default().parse(&got.data).expect("parse");
    assert_eq!(msg.subject(), Some("Rapport été €"));
    let to: Vec<_> = msg
        .to()
        .expect("to")
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(to, ["a@example.com", "b@example.com"]);
    assert!(
        msg.body_text(0)
            .expect("text")
            .contains("Une ligne qui commence par un point.")
    );
    assert!(
        msg.body_html(0)
            .expect("html")
            .contains("<b>voici</b> le rapport €")
    );
    let files: Vec<_> = msg
        .attachments()
        .map(|a| {
            (
                a.attachment_name().unwrap_or_default().to_owned(),
                a.contents().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        files.len(),
        2,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(files[0].0, "data.bin");
    assert_eq!(files[0].1, attachment);
    assert_eq!(files[1].0, "q3.pdf");
    assert_eq!(files[1].1, b"%PDF-1.7 fake");
    // Bcc recipients get the mail but are not shown. (The Message-ID, random before its
    // `@example.com`, may end in a `d`: not a sighting.)
    let shown: String = String::from_utf8_lossy(&got.data)
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("message-id:"))
        .collect();
    assert!(!shown.contains("d@example.com"), "{shown}");
}

/// Sends a one-line mail to `to` through the SMTP server on `port`, with a config of its own.
async fn send_to(port: u16, to: &str) -> common::Ran {
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = common::registry(&smtp_config(tmp.path(), port));
    let payload = json!({"to": to, "subject": "x", "text": "x"});
    run(&registry, "email.send", payload).await
}

#[tokio::test]
async fn refused_recipient_is_permanent() {
    let (port, _inbox) = smtp_server().await;
    let ran = send_to(port, "refused@example.com").await;
    assert!(is_permanent(&ran.result), "{:?}", ran.result);
}

#[tokio::test]
async fn server_down_is_retryable() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let ran = send_to(port, "a@example.com").await;
    assert!(is_retryable(&ran.result), "{:?}", ran.result);
}

#[tokio::test]
async fn without_smtp_writes_the_outbox() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let registry = common::registry(&config);
    let result = ok(run(
        &registry,
        "email.send",
        json!({"to": "a@example.com", "subject": "Outbox", "html": "<p>hi</p>"}),
    )
    .await);
    let path = result["outbox"].as_str().expect("outbox path");
    assert!(path.starts_with(config.files.outbox.to_str().expect("utf-8")));
    let bytes = std::fs::read(path).expect("eml written");
    let msg = MessageParser::default().parse(&bytes).expect("parse");
    assert_eq!(msg.subject(), Some("Outbox"));
    assert!(msg.body_html(0).expect("html").contains("<p>hi</p>"));
    assert_eq!(result["recipients"], 1);
}

#[tokio::test]
async fn validate_names_the_field() {
    let (_tmp, registry) = common::temp_registry();
    let base = json!({"to": "a@example.com", "subject": "s", "text": "t"});
    assert!(common::validate(&registry, "email.send", &base).is_ok());
    let with = |k: &str, v: serde_json::Value| {
        let mut p = base.clone();
        p[k] = v;
        p
    };
    common::assert_refused(
        &registry,
        "email.send",
        vec![
            (with("to", json!("nope")), "payload.to[0]"),
            (with("cc", json!(["a@b.c", "x"])), "payload.cc[1]"),
            (
                with("attachments", json!([{"path": "../etc/passwd"}])),
                "payload.attachments[0].path",
            ),
            (json!({"to": "a@b.c", "subject": "s"}), "payload.text"),
            (with("subject", json!(3)), "payload.subject"),
        ],
    );
}

/// Attachments are sized before they are read: a file over the limit fails the job for good
/// without being loaded (a 1 TiB sparse file: reading it first failed to allocate, an error
/// retried as if memory might free up), and something that is not a regular file (a FIFO,
/// whose read never ends) is refused rather than read.
#[tokio::test]
async fn attachments_are_sized_before_they_are_read() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    std::fs::create_dir_all(config.files.dir.join("docs")).expect("mkdir");
    std::fs::write(config.files.dir.join("docs/small.txt"), b"hello").expect("write");
    std::fs::File::create(config.files.dir.join("docs/huge.bin"))
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse file");
    let fifo = config.files.dir.join("docs/pipe.pdf");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let registry = common::registry(&config);
    let send = |path: &str| {
        json!({"to": "a@example.com", "subject": "s", "text": "t",
               "attachments": [{"path": "docs/small.txt"}, {"path": path}]})
    };

    let ran = run(&registry, "email.send", send("docs/huge.bin")).await;
    let message = common::error_message(&ran.result);
    assert!(is_permanent(&ran.result), "{message}");
    assert!(
        message.contains("docs/huge.bin") && message.contains("26214400"),
        "{message}"
    );

    let ran = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        run(&registry, "email.send", send("docs/pipe.pdf")),
    )
    .await
    .expect("a FIFO attachment is refused, not read forever");
    let message = common::error_message(&ran.result);
    assert!(is_permanent(&ran.result), "{message}");
    assert!(message.contains("not a regular file"), "{message}");
    assert!(
        std::fs::read_dir(&config.files.outbox).map_or(true, |mut d| d.next().is_none()),
        "nothing sent"
    );
}
