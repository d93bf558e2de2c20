//! Exit codes of the `hopper` command: 0 ok, 1 failure, 2 bad usage or bad config, 3 not
//! found (and 4 for `hopper tail --job` on a cancelled job). Every command (the CLI's and `hopper bench`) reports through these, so the codes are
//! the same wherever an error comes from.

use hopper_workers::BrokerError;

use crate::config::ConfigError;

/// Failures with their own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2.
    #[error("{0}")]
    Usage(String),
    /// Exit 3.
    #[error("{0}")]
    NotFound(String),
    /// A command that reports an outcome as its exit code: `hopper tail --job` exits 1 when
    /// the job is dead, 4 when it was cancelled.
    #[error("{message}")]
    Ended { message: String, code: u8 },
}

/// The error and its causes as one line, `outer: inner: innermost`, each cause once: a link
/// whose text already ends with its cause's text (errors that print their source and also
/// return it) does not repeat it.
pub fn message(err: &anyhow::Error) -> String {
    let mut links: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if links.last().is_some_and(|prev| prev.ends_with(&text)) {
            continue;
        }
        links.push(text);
    }
    links.join(": ")
}

/// Whether `err` is a broker that cannot be reached right now: worth waiting for, unlike a
/// broker setting that cannot work.
pub fn broker_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<BrokerError>(),
            Some(BrokerError::Unavailable(_))
        )
    })
}

/// The exit code for an error: 2 for bad usage or config (a value the broker refused as
/// invalid, and a broker URL or setting it cannot use, included), 3 for not found, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<ConfigError>() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Usage(_) => 2,
                CliError::NotFound(_) => 3,
                CliError::Ended { code, .. } => *code,
            };
        }
        // A job kind's setting it cannot use (`smtp.url`, `etl.databases.*`) is a bad config
        // like any other, with the key named.
        if let Some(hopper_jobs::JobsError::Config { .. }) =
            cause.downcast_ref::<hopper_jobs::JobsError>()
        {
            return 2;
        }
        match cause.downcast_ref::<BrokerError>() {
            Some(BrokerError::NotFound(_)) => return 3,
            // A value the broker refused as input (a queue name, a kind, a cursor): bad usage.
            Some(BrokerError::Invalid(_)) => return 2,
            // A broker URL or setting that cannot work (an unknown scheme, a refused
            // password, an evicting Redis): bad config, and never `tail --job`'s 1 (dead).
            Some(BrokerError::Config(_)) => return 2,
            _ => {}
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use hopper_workers::FieldError;
    use hopper_workers::job::JobId;

    use super::*;

    #[test]
    fn a_cause_printed_by_its_error_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let inner = anyhow::Error::new(BrokerError::Unavailable(Box::new(io)));
        let err = inner.context("opening broker redis://h");
        assert_eq!(
            message(&err),
            "opening broker redis://h: broker unavailable: refused"
        );
        let plain = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(message(&plain), "top: middle: root");
    }

    #[test]
    fn exit_codes_follow_the_error() {
        let nf: anyhow::Error = CliError::NotFound("x".into()).into();
        assert_eq!(exit_code(&nf), 3);
        let nf: anyhow::Error = BrokerError::NotFound(JobId("x".into())).into();
        assert_eq!(exit_code(&nf.context("getting the job")), 3);
        let cfg: anyhow::Error = ConfigError::Invalid {
            origin: "c.toml".into(),
            problems: vec![],
        }
        .into();
        assert_eq!(exit_code(&cfg), 2);
        let refused: anyhow::Error =
            BrokerError::Invalid(FieldError::new("queue", "must be 1 to 64 characters")).into();
        assert_eq!(exit_code(&refused.context("cannot pause queue \"a b\"")), 2);
        let smtp: anyhow::Error = hopper_jobs::JobsError::Config {
            key: "smtp.url".into(),
            message: "empty host".into(),
        }
        .into();
        assert_eq!(exit_code(&smtp.context("registering the job kinds")), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
    }
}
