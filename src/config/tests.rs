//! Tests of the config: the committed file, parsing, the one check, overrides.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use super::*;

const COMMITTED: &str = include_str!("../../config.toml");

#[test]
fn committed_config_is_the_default() {
    let parsed = Config::from_toml(COMMITTED, Path::new("config.toml")).unwrap();
    assert_eq!(parsed, Config::default());
    assert!(Config::default().validate().is_ok());
}

#[test]
fn committed_config_lists_every_key() {
    // Every key the defaults serialize to appears in the committed file, so a new field
    // cannot be added without documenting it there.
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for (section, table) in &defaults {
        let Some(table) = table.as_table() else {
            continue;
        };
        assert!(
            COMMITTED.contains(&format!("[{section}]")),
            "config.toml lacks [{section}]"
        );
        for key in table.keys() {
            assert!(
                COMMITTED
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
                "config.toml lacks {section}.{key}"
            );
        }
    }
    for key in ["[[queue]]", "name =", "concurrency =", "paused ="] {
        assert!(COMMITTED.contains(key), "config.toml lacks {key}");
    }
}

#[test]
fn unknown_key_is_named_with_the_file() {
    let err = Config::from_toml(
        "[worker]\nconcurency = 4\n",
        Path::new("/etc/hopper/config.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/etc/hopper/config.toml"), "{err}");
    assert!(err.contains("concurency"), "{err}");

    let err = Config::from_toml("[sever]\n", Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sever"), "{err}");
}

/// A config toml cannot read names the line, column and key, but never shows a secret: not the
/// line's text (a misspelt `url` with a password), not a value of a secret key given with the
/// wrong type. Before, both were printed, on the terminal and in the journal.
#[test]
fn parse_errors_name_the_place_and_hide_secrets() {
    for (text, key) in [
        (
            "[broker]\nurll = \"redis://:pw-SECRET42@127.0.0.1/0\"\n",
            "urll",
        ),
        ("[auth]\ntokens = \"tok-SECRET\"\n", "tokens"),
        ("\nbroker = \"redis://:pw-SECRET@h/0\"\n", "broker"),
        ("\nauth = \"tok-SECRET\"\n", "auth"),
        ("[auth]\njwt_secrett = \"jwt-SECRET\"\n", "jwt_secrett"),
        ("[broker]\nurl = [\"redis://:pw-SECRET@h/0\"]\n", "url"),
        ("[smtp]\nurl = [\"smtp://u:SECRET@h\"]\n", "url"),
        (
            "[notify]\nwebhook_secret = [\"SECRET\"]\n",
            "webhook_secret",
        ),
    ] {
        let err = Config::from_toml(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET"), "{text:?}: {err}");
        assert!(err.contains(key), "{text:?}: {err}");
        assert!(err.contains("line 2"), "{text:?}: {err}");
    }
}

#[test]
fn durations_parse_and_bad_ones_are_named() {
    let c = Config::from_toml(
        "[worker]\nlease = \"2m\"\nheartbeat = \"500ms\"\n[retention]\ndead = \"1d\"\n",
        Path::new("c.toml"),
    )
    .unwrap();
    assert_eq!(c.worker.lease, Duration::from_secs(120));
    assert_eq!(c.worker.heartbeat, Duration::from_millis(500));
    assert_eq!(c.retention.dead, Duration::from_secs(86_400));

    let err = Config::from_toml("[worker]\nlease = \"soon\"\n", Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lease") && err.contains("soon"), "{err}");

    // Past what a job's times can show: refused, naming the key.
    for (section, key) in [
        ("retry", "backoff_max"),
        ("worker", "lease"),
        ("worker", "unknown_kind_grace"),
    ] {
        let err = Config::from_toml(
            &format!("[{section}]\n{key} = \"1000000000d\"\n"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(key) && err.contains("100 years"), "{err}");
    }
}

/// Hopper's own schedules keep their last tick under their names: a config's schedule may not
/// take one (`hopper.retention` moved the built-in retention's cursor).
#[test]
fn schedule_names_of_hoppers_own_are_refused() {
    let mut c = Config::default();
    c.schedules.push(ScheduleConfig {
        name: "hopper.retention".into(),
        cron: "0 * * * * *".into(),
        kind: "sys.noop".into(),
        ..ScheduleConfig::default()
    });
    let problems = c.validate().unwrap_err();
    assert!(
        problems[0].starts_with("schedule[0].name") && problems[0].contains("Hopper's own"),
        "{problems:?}"
    );
}

#[test]
fn durability_parses_and_bad_values_are_named() {
    use hopper_workers::broker::Durability;
    assert_eq!(Config::default().broker.durability, Durability::Full);
    let c = Config::from_toml("[broker]\ndurability = \"normal\"\n", Path::new("c.toml")).unwrap();
    assert_eq!(c.broker.durability, Durability::Normal);

    let err = Config::from_toml("[broker]\ndurability = \"fast\"\n", Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("durability") && err.contains("fast"), "{err}");
    assert!(err.contains("full") && err.contains("normal"), "{err}");
}

#[test]
fn log_format_parses_and_bad_values_are_named() {
    assert_eq!(Config::default().log.format, LogFormat::Text);
    let c = Config::from_toml("[log]\nformat = \"json\"\n", Path::new("c.toml")).unwrap();
    assert_eq!(c.log.format, LogFormat::Json);

    let err = Config::from_toml("[log]\nformat = \"xml\"\n", Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("format") && err.contains("xml"), "{err}");
    assert!(err.contains("text") && err.contains("json"), "{err}");
}

/// A concurrency past the documented maximum, `[worker]`'s or a queue's, is a config error
/// naming the key, the value and the maximum. Before, `concurrency = 1000000000000000` was
/// accepted, and the pool then asked the broker for that many jobs per fetch.
#[test]
fn concurrency_has_a_maximum() {
    let toml = "[worker]\nconcurrency = 1000000000000000\n\
                [[queue]]\nname = \"a\"\nconcurrency = 10001\n";
    let c = Config::from_toml(toml, Path::new("c.toml")).unwrap();
    let problems = c.validate().unwrap_err();
    for (key, value) in [
        ("worker.concurrency", "1000000000000000"),
        ("queue[0].concurrency", "10001"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(key) && p.contains(value) && p.contains("10000")),
            "{key} missing from {problems:#?}"
        );
    }
    let mut most = Config::default();
    most.worker.concurrency = hopper_workers::pool::MAX_CONCURRENCY;
    assert!(most.validate().is_ok());
}

#[test]
fn validate_reports_every_problem() {
    let mut c = Config::default();
    c.worker.concurrency = 0;
    c.worker.heartbeat = Duration::from_secs(60);
    c.server.listen = "nowhere".into();
    c.server.ws_ping_interval = Duration::from_millis(500);
    c.server.max_batch = 0;
    c.broker.url = "postgres://x".into();
    c.queues.push(QueueConfig {
        name: "a b".into(),
        concurrency: Some(0),
        paused: false,
        rate_limit: RateLimit::Off,
    });
    let problems = c.validate().unwrap_err();
    for key in [
        "worker.concurrency",
        "worker.heartbeat",
        "server.listen",
        "server.ws_ping_interval",
        "server.max_batch",
        "broker.url",
        "queue[0].name",
        "queue[0].concurrency",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(key)),
            "{key} missing from {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 8, "{problems:#?}");
}

#[test]
fn public_listen_needs_tokens() {
    let mut c = Config::default();
    c.server.listen = "0.0.0.0:8080".into();
    let problems = c.validate().unwrap_err();
    assert!(problems[0].contains("tokens"), "{problems:?}");
    c.auth.tokens = vec!["s3cret".into()];
    assert!(c.validate().is_ok());
}

#[test]
fn env_overrides_are_typed() {
    let mut c = Config::default();
    c.apply_env(|k| match k {
        ENV_BROKER => Some("redis://127.0.0.1:6379/0".into()),
        ENV_TOKENS => Some("a, b,,c".into()),
        _ => None,
    });
    assert_eq!(c.broker.url, "redis://127.0.0.1:6379/0");
    assert_eq!(c.auth.tokens, vec!["a", "b", "c"]);
}

/// `HOPPER_TOKENS` of separators only names no token: a config error naming the variable,
/// never auth turned off over the file's tokens.
#[test]
fn tokens_of_separators_only_are_a_config_error() {
    for value in [",", " , ", ",,"] {
        let mut c = Config::default();
        c.auth.tokens = vec!["t1".into()];
        c.apply_env(|k| (k == ENV_TOKENS).then(|| value.to_owned()));
        let problems = c.validate().unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("auth.tokens (set by HOPPER_TOKENS): names no token")),
            "{value:?}: {problems:?}"
        );
    }
    // Unset or blank, the file's tokens stay.
    let mut c = Config::default();
    c.auth.tokens = vec!["t1".into()];
    c.apply_env(|k| (k == ENV_TOKENS).then(|| "  ".to_owned()));
    assert_eq!(c.auth.tokens, vec!["t1"]);
    assert!(c.validate().is_ok());
}

#[test]
fn pool_config_maps_queues() {
    let c = Config::from_toml(
        "[worker]\nqueues = [\"a\", \"b\"]\nconcurrency = 4\n\
         [[queue]]\nname = \"b\"\nconcurrency = 2\npaused = true\n",
        Path::new("c.toml"),
    )
    .unwrap();
    let pc = c.settings().unwrap().pool;
    assert_eq!(pc.concurrency, 4);
    assert_eq!(pc.queues.len(), 3, "a, b and the maintenance queue");
    assert_eq!(pc.queues[2].name, MAINTENANCE_QUEUE);
    assert_eq!(pc.queues[0].concurrency, None);
    assert_eq!(pc.queues[1].concurrency, Some(2));
    assert!(pc.queues[1].paused);
    assert_eq!(pc.retry.base, Duration::from_secs(1));
}

/// Every pool serves the maintenance queue, one job at a time: naming it in `[worker] queues`
/// (with a weight or not) neither serves it twice nor changes that.
#[test]
fn the_maintenance_queue_is_served_once_when_named() {
    let c = Config::from_toml(
        "[worker]\nqueues = [\"a\", \"hopper.maintenance:5\"]\n",
        Path::new("c.toml"),
    )
    .unwrap();
    let pc = c.settings().unwrap().pool;
    let got: Vec<(&str, Option<usize>, u32)> = pc
        .queues
        .iter()
        .map(|q| (q.name.as_str(), q.concurrency, q.weight))
        .collect();
    assert_eq!(got, [("a", None, 1), (MAINTENANCE_QUEUE, Some(1), 1)]);
}

#[test]
fn tokens_are_not_debug_printed() {
    let mut c = Config::default();
    c.auth.tokens = vec!["hunter2".into()];
    c.broker.url = "redis://:hunter3@127.0.0.1:6379/0".into();
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("hunter3"), "{shown}");
    assert!(shown.contains("redis://***@127.0.0.1:6379/0"), "{shown}");
}

#[test]
fn cluster_urls_are_checked() {
    for good in [
        "redis-cluster://127.0.0.1:7101,127.0.0.1:7102",
        "rediss-cluster://u:p@h:1/",
        "redis-cluster://h:1/0",
    ] {
        let mut c = Config::default();
        c.broker.url = good.into();
        assert!(c.validate().is_ok(), "{good}: {:?}", c.validate());
    }
    for bad in [
        "redis-cluster://",
        "redis-cluster://h",
        "redis-cluster://h:1,",
        "redis-cluster://h:x",
        "redis-cluster://u:s3cret@h:1/2",
    ] {
        let mut c = Config::default();
        c.broker.url = bad.into();
        let problems = c.validate().unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("broker.url") && p.contains("redis-cluster://")),
            "{bad}: {problems:?}"
        );
        assert!(
            problems.iter().all(|p| !p.contains("s3cret")),
            "{problems:?}"
        );
    }
}

#[test]
fn subscriptions_are_checked_naming_index_and_key() {
    let config = Config::from_toml(
        r#"
[[subscription]]
topic = "user.created"
kind = "sys.noop"
payload = { to = "{{ data.email }}", n = "{{ data.n }}" }

[[subscription]]
topic = "user.cre*"
kind = ""
queue = "a b"
priority = 12
payload = { to = "{{ data. }}", nested = { s = "{% if %}" } }

[[subscription]]
topic = "user.created"
kind = "sys.noop"
filter = { queue = "default" }
"#,
        Path::new("c.toml"),
    )
    .unwrap();
    let problems = config.validate().unwrap_err();
    for want in [
        "subscription[1].topic:",
        "subscription[1].kind: is required",
        "subscription[1].queue:",
        "subscription[1].priority:",
        "subscription[1].payload.",
        "subscription[2].filter:",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want} in {problems:#?}"
        );
    }
    assert!(
        !problems.iter().any(|p| p.starts_with("subscription[0]")),
        "{problems:#?}"
    );
}

/// A schedule's name keys the broker cursor of its last tick, so one too long for it is a
/// config problem naming the key, not a warning at every tick.
#[test]
fn schedule_names_fit_the_broker_cursor() {
    let mut c = Config::default();
    c.schedules.push(ScheduleConfig {
        name: "n".repeat(101),
        cron: "0 * * * * *".into(),
        kind: "sys.noop".into(),
        ..ScheduleConfig::default()
    });
    let problems = c.validate().unwrap_err();
    assert!(
        problems[0].starts_with("schedule[0].name") && problems[0].contains("100"),
        "{problems:?}"
    );
    c.schedules[0].name = "n".repeat(100);
    assert!(c.validate().is_ok());
}

#[test]
fn worker_queues_take_weights() {
    let c = Config::from_toml(
        "[worker]\nqueues = [\"critical:6\", \"default:2\", \"low\", \"bulk:1000\"]\n",
        Path::new("c.toml"),
    )
    .unwrap();
    let pc = c.settings().unwrap().pool;
    let got: Vec<(&str, u32)> = pc
        .queues
        .iter()
        .map(|q| (q.name.as_str(), q.weight))
        .collect();
    assert_eq!(
        got,
        [
            ("critical", 6),
            ("default", 2),
            ("low", 1),
            ("bulk", 1000),
            (MAINTENANCE_QUEUE, 1)
        ]
    );
    let names: Vec<&str> = c.worker.queue_names().collect();
    assert_eq!(names, ["critical", "default", "low", "bulk"]);
}

#[test]
fn bad_queue_weights_are_named_with_the_key_and_entry() {
    for bad in [
        "a:0", "a:-1", "a:1.5", "a:x", "a:", "a:1001", "a:+2", "a: 2", "a:2:3",
    ] {
        let mut c = Config::default();
        c.worker.queues = vec![bad.into()];
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{bad}: {problems:#?}");
        let p = &problems[0];
        assert!(p.starts_with("worker.queues: "), "{bad}: {p}");
        assert!(p.contains(&format!("{bad:?}")), "{bad}: {p}");
        assert!(p.contains("1 to 1000"), "{bad}: {p}");
    }
    // A bad name before a weight is named too; every bad entry is reported at once, and the
    // same queue twice (weights aside) is one problem.
    let mut c = Config::default();
    c.worker.queues = vec![
        ":3".into(),
        "a b:2".into(),
        "a:0".into(),
        "b:2".into(),
        "b".into(),
    ];
    let problems = c.validate().unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems.iter().all(|p| p.starts_with("worker.queues: ")),
        "{problems:#?}"
    );
    for entry in ["\":3\"", "\"a b:2\"", "\"a:0\"", "\"b\" is listed twice"] {
        assert!(
            problems.iter().any(|p| p.contains(entry)),
            "{entry} in {problems:#?}"
        );
    }
}

/// The schedule name's limit is counted in bytes (the broker's cursor names are), so the
/// refusal says bytes: a name of 60 `é` is 60 characters, and "at most 100 characters"
/// would read as wrong.
#[test]
fn a_schedule_name_limit_is_told_in_bytes() {
    let mut c = Config::default();
    c.schedules.push(ScheduleConfig {
        name: "é".repeat(60),
        cron: "0 * * * * *".into(),
        kind: "sys.noop".into(),
        ..ScheduleConfig::default()
    });
    let problems = c.validate().unwrap_err();
    assert!(
        problems[0].starts_with("schedule[0].name")
            && problems[0].contains("100 bytes")
            && problems[0].contains("120"),
        "{problems:?}"
    );
}
