//! Bad input gets a clear error naming the problem, and nothing is enqueued: HTTP requests
//! refused with a 4xx naming the field, unknown config keys, bad CLI flags.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use crate::util::Scratch;

/// Each bad request gets its status and a JSON error naming the field; the queue stays empty.
#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let s = Scratch::new();
    s.write_config_with_server("body_limit = 4096\n", "");
    let (_d, api) = s.serve(&["--no-workers"]);

    let (st, body) = api
        .post_raw("/v1/jobs", "application/json", "{not json")
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"payload": {}}), 400, "kind"),
        (json!({"kind": "no.such.kind", "payload": {}}), 422, "kind"),
        (
            json!({"kind": "sys.noop", "payload": {}, "priority": 12}),
            400,
            "priority",
        ),
        (
            json!({"kind": "sys.noop", "payload": {}, "delay": "-5s"}),
            400,
            "delay",
        ),
        (
            json!({"kind": "sys.noop", "payload": {}, "run_at": "tomorrow"}),
            400,
            "run_at",
        ),
        (
            json!({"kind": "sys.noop", "payload": [1, 2]}),
            400,
            "payload",
        ),
        (
            json!({"kind": "sys.sleep", "payload": {"ms": "long"}}),
            400,
            "payload.ms",
        ),
        // Past what a job's record can hold: refused, not answered with one timeout and
        // stored with another.
        (
            json!({"kind": "sys.noop", "payload": {}, "timeout": "500000000y"}),
            400,
            "timeout",
        ),
        (
            json!({"kind": "sys.noop", "payload": {}, "timeout": "101y"}),
            400,
            "timeout",
        ),
        (
            json!({"kind": "sys.noop", "payload": {}, "max_retries": 4_294_967_296_u64}),
            400,
            "max_retries",
        ),
    ];
    for (body, status, field) in cases {
        let (st, resp) = api.enqueue(body.clone()).await;
        assert_eq!(st, status, "{body} -> {resp}");
        assert_eq!(resp["error"]["field"], field, "{body} -> {resp}");
        assert!(resp["error"]["code"].is_string(), "{resp}");
        // The message says the rule, not "must be a non-negative integer" for a positive one.
        if field == "max_retries" {
            assert!(
                resp["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("1000")),
                "{resp}"
            );
        }
    }

    let big = json!({"kind": "sys.noop", "payload": {"blob": "x".repeat(10_000)}});
    let (st, resp) = api.enqueue(big).await;
    assert_eq!(st, 413, "{resp}");
    assert!(resp["error"]["message"].is_string(), "{resp}");

    // A body declared larger than the limit is refused on its headers, at once: not read up
    // to the limit, nor waited for until the request times out (503 after 30 s).
    let host = api.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 99999999999\r\n\r\n{\"kind\"",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut head),
    )
    .await
    .expect("answered before the request timed out")
    .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");

    let (st, _) = api.post("/v1/jobs/no-such-id/cancel").await;
    assert_eq!(st, 404);

    // Nothing was enqueued.
    let page = api.get_json("/v1/jobs", &[("queue", "default")]).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0, "{page}");
}

/// An unknown config key is refused with the key named and exit code 2, by `serve` and by
/// `check-config`.
#[test]
fn unknown_config_key_is_named() {
    let s = Scratch::with_config("[worker]\nconcurency = 4\n");
    for args in [&["check-config"][..], &["queues"][..]] {
        let out = s.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("concurency"), "{args:?}: {err}");
    }
}

/// A bad CLI flag exits 2 with a usage message; a bad value names the flag.
#[test]
fn bad_cli_flags_exit_2() {
    let s = Scratch::with_config("");
    let out = s.cli(&["jobs", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = s.cli(&["enqueue", "sys.noop", "--priority", "12"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("priority"));
    // A payload or data file that cannot be read is the flag's fault too.
    for args in [
        &["enqueue", "sys.noop", "--payload", "@no-such-file.json"][..],
        &[
            "enqueue",
            "sys.noop",
            "--then",
            "sys.noop=@no-such-file.json",
        ][..],
        &["publish", "orders.created", "--data", "@no-such-file.json"][..],
    ] {
        let out = s.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no-such-file.json"), "{args:?}: {err}");
    }
    let out = s.cli(&["job", "does-not-exist"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // Nothing was enqueued by the refused command.
    let jobs = s.cli_jobs(&[]);
    assert_eq!(jobs.len(), 0, "{jobs:#?}");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A broker URL's password never reaches an error: not when the broker is down, not when the
/// URL is unusable (which is a config problem, exit 2, found by `check-config` too).
#[test]
fn broker_passwords_stay_out_of_errors() {
    let down = Scratch::with_config("").with_env("HOPPER_BROKER", "redis://:hunter2@127.0.0.1:1/0");
    let out = down.cli(&["queues"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("redis://***@127.0.0.1:1/0"), "{err}");

    for url in [
        "redis://u:hunter2@127.0.0.1:99999/0",
        "redis://u:hunter2@127.0.0.1:6379/x",
        "postgres://u:hunter2@db/jobs",
    ] {
        let bad = Scratch::with_config("").with_env("HOPPER_BROKER", url);
        for args in [&["check-config"][..], &["queues"], &["serve"]] {
            let out = bad.cli(args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{url} {args:?}: {err}");
            assert!(err.contains("broker.url"), "{url} {args:?}: {err}");
            assert!(!err.contains("hunter2"), "{url} {args:?}: {err}");
        }
    }
    // `bench --broker` is checked with the config, as HOPPER_BROKER is: exit 2 naming the
    // flag (it was opened unchecked, exit 1), and no password.
    for url in [
        "redi://:hunter2@h/0",
        "redis://u:hunter2@h:notaport/0",
        "sqlite://",
    ] {
        let out = down.cli(&["bench", "--broker", url, "--jobs", "1"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains("broker.url (set by --broker)"), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{url}: {err}");
    }
}

/// A setting only a job kind can judge (`smtp.url`) is a config problem like any other:
/// `check-config` finds it, and `serve` refuses it with exit 2 naming the key.
#[test]
fn an_unusable_smtp_url_is_a_config_error() {
    let s = Scratch::with_config("[smtp]\nurl = \"smtp://mailer:hunter2@:25\"\nfrom = \"a@b.c\"\n");
    for args in [&["check-config"][..], &["serve"]] {
        let out = s.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("smtp.url"), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "{args:?}: {err}");
    }
}

/// `[notify] templates` naming no directory (a typo) fell back to the built-in emails for
/// good, and a template that does not parse failed every email of its type: both are config
/// errors naming the key, from `check-config` and from `serve`.
#[test]
fn a_missing_or_broken_templates_directory_is_a_config_error() {
    let s = Scratch::with_config("[notify]\ntemplates = \"no-such-templates\"\n");
    for args in [&["check-config"][..], &["serve"]] {
        let out = s.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("notify.templates"), "{args:?}: {err}");
        assert!(err.contains("no-such-templates"), "{args:?}: {err}");
    }
    let broken = s.dir.path().join("mail");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("default.txt.j2"), "Hi {{ title }}").unwrap();
    std::fs::write(broken.join("welcome.html.j2"), "<p>{% if title %}</p>").unwrap();
    let s = Scratch::with_config(&format!("[notify]\ntemplates = \"{}\"\n", broken.display()));
    let out = s.cli(&["check-config"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("welcome.html.j2"), "{err}");
    std::fs::remove_file(broken.join("welcome.html.j2")).unwrap();
    s.cli_ok(&["check-config"]);
}

/// A value the broker refuses (a queue name, a kind) is bad usage, exit 2, by every command
/// that takes one; a page size out of range too.
#[test]
fn bad_cli_values_exit_2() {
    let s = Scratch::with_config("");
    s.cli_ok(&["enqueue", "sys.noop"]);
    for args in [
        &["jobs", "--queue", "a b"][..],
        &["jobs", "--kind", ""],
        &["jobs", "--limit", "0"],
        &["jobs", "--limit", "100000"],
        &["pause", "a b"],
        &["resume", ""],
        &["retry", "--all-dead", "--queue", "a b"],
        &["tail", "--queue", "a b"],
        &["tail", "--kind", ""],
        // A file that cannot be read, as `--payload @FILE`'s.
        &["enqueue", "--file", "/no/such/jobs.ndjson"],
        &["enqueue", "--file", "/"],
    ] {
        let out = s.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
    let out = s.cli(&["retry", "--all-dead", "--queue", "a b"]);
    assert!(stderr(&out).contains("--queue"), "{out:?}");
    // A bare `retry` names both ways to say which jobs; ids and --all-dead do not mix.
    let out = s.cli(&["retry"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("--all-dead"), "{out:?}");
    let out = s.cli(&[
        "retry",
        "--all-dead",
        "01a22e08-83e9-762c-9c6e-25a90b984a64",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `enqueue --file`: a line longer than `[server] body_limit` (the largest body the API
/// takes) or not UTF-8 is a refused line, exit 2 naming it, and nothing of its batch is
/// enqueued.
#[test]
fn enqueue_file_refuses_a_huge_or_binary_line() {
    let s = Scratch::new();
    s.write_config_with_server("body_limit = 4096\n", "");
    let ok = r#"{"kind": "sys.noop"}"#;
    let huge = format!(
        r#"{{"kind": "sys.noop", "payload": {{"blob": "{}"}}}}"#,
        "x".repeat(100_000)
    );
    std::fs::write(
        s.path().join("huge.ndjson"),
        format!("{ok}\n{huge}\n{ok}\n"),
    )
    .unwrap();
    let out = s.cli(&["enqueue", "--file", "huge.ndjson"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 2") && err.contains("body_limit"),
        "{err}"
    );
    assert!(err.contains("nothing was enqueued"), "{err}");

    let mut binary = format!("{ok}\n").into_bytes();
    binary.extend_from_slice(b"{\"kind\": \"sys.noop\", \"queue\": \"\xff\"}\n");
    std::fs::write(s.path().join("binary.ndjson"), binary).unwrap();
    let out = s.cli(&["enqueue", "--file", "binary.ndjson"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2") && err.contains("UTF-8"), "{err}");

    assert_eq!(s.cli_jobs(&[]).len(), 0);
    // A line of exactly the limit is taken, as a body of that size would be.
    let padded = format!(
        r#"{{"kind": "sys.noop", "payload": {{"pad": "{}"}}}}"#,
        "y".repeat(4096 - 44)
    );
    assert_eq!(padded.len(), 4096);
    std::fs::write(s.path().join("edge.ndjson"), format!("{padded}\r\n")).unwrap();
    s.cli_ok(&["enqueue", "--file", "edge.ndjson"]);
    assert_eq!(s.cli_jobs(&[]).len(), 1);
}

/// A query parameter that takes one value, given twice, is refused naming it instead of
/// silently read as its last value; the list parameters of `/v1/events` may repeat.
#[tokio::test]
async fn a_repeated_query_parameter_is_refused() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    api.enqueue_ok(json!({"kind": "sys.noop"})).await;
    for (path, field) in [
        ("/v1/jobs?state=queued&state=dead", "state"),
        ("/v1/jobs?limit=1&queue=default&limit=5", "limit"),
        ("/v1/events?limit=1&limit=2", "limit"),
        ("/v1/events?since=1&since=2", "since"),
        ("/v1/notifications?since=1&since=2", "since"),
        ("/v1/notifications?token=a&since=1&token=b", "token"),
    ] {
        let (st, body) = api.call(reqwest::Method::GET, path, None).await;
        assert_eq!(st, 400, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
    let page = api
        .get_json("/v1/events", &[("queue", "default"), ("queue", "other")])
        .await;
    assert!(!page["events"].as_array().unwrap().is_empty(), "{page}");
}

/// No `POST` route reads a query parameter, nor do most `GET` routes: one given is refused
/// naming it, and nothing is done. `POST
/// /v1/jobs?queue=mail` put the job in `default` without a word.
#[tokio::test]
async fn a_query_parameter_a_post_route_does_not_read_is_refused() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    let job = json!({"kind": "sys.noop"});
    let id = api.enqueue_ok(job.clone()).await;
    let batch = json!({"jobs": [job]});
    let publish = json!({"topic": "user.created", "data": {}});
    for (path, body, field) in [
        ("/v1/jobs?queue=mail", Some(&job), "queue"),
        ("/v1/jobs?priority=1&token=x", Some(&job), "priority"),
        ("/v1/jobs/batch?atomic=false", Some(&batch), "atomic"),
        ("/v1/publish?key=k1", Some(&publish), "key"),
        ("/v1/queues/default/pause?for=10s", None, "for"),
        (&format!("/v1/jobs/{id}/cancel?force=true"), None, "force"),
    ] {
        let (st, answer) = api.call(reqwest::Method::POST, path, body).await;
        assert_eq!(st, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{path}: {answer}");
    }
    // Nor do these GET routes read any.
    for (path, field) in [
        ("/v1/queues?queue=mail", "queue"),
        ("/v1/workers?x=1", "x"),
        ("/v1/circuits?open=1", "open"),
        (&format!("/v1/jobs/{id}?brief=true"), "brief"),
    ] {
        let (st, answer) = api.call(reqwest::Method::GET, path, None).await;
        assert_eq!(st, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{path}: {answer}");
    }
    let (st, job) = api
        .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(st, 200, "{job}");
    assert_eq!(job["state"], "queued", "the cancel was not done: {job}");
    assert_eq!(s.cli_jobs(&[]).len(), 1, "nothing more was enqueued");
    let (st, queues) = api.call(reqwest::Method::GET, "/v1/queues", None).await;
    assert_eq!(st, 200, "{queues}");
    assert!(
        !queues.to_string().contains("\"paused\":true"),
        "the pause was not done: {queues}"
    );
    // A token goes in the Authorization header on these routes: one in the query was ignored.
    let (st, answer) = api
        .call(
            reqwest::Method::POST,
            "/v1/jobs?token=x",
            Some(&json!({"kind": "sys.noop"})),
        )
        .await;
    assert_eq!(st, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "token", "{answer}");
    // The routes that take some refuse the others: a typo of `since` replayed everything.
    for (method, path, field) in [
        (reqwest::Method::GET, "/v1/notifications?sinse=5", "sinse"),
        (
            reqwest::Method::DELETE,
            "/v1/users/42/push-subscriptions?endpoint=https://p.example/x&all=1",
            "all",
        ),
    ] {
        let (st, answer) = api.call(method, path, None).await;
        assert_eq!(st, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{path}: {answer}");
    }
}

/// A `[[schedule]]` of a kind this build does not have, or with a payload its kind refuses,
/// is a config error naming it (exit 2) from `check-config` and from `serve`: the payload is
/// fixed, so every tick would otherwise enqueue a job that goes straight to `dead`.
#[test]
fn a_schedule_its_kind_refuses_is_a_config_error() {
    for (schedule, key) in [
        ("kind = \"no.such\"\n", "schedule[0].kind"),
        (
            "kind = \"sys.sleep\"\npayload = { ms = \"long\" }\n",
            "schedule[0].payload.ms",
        ),
    ] {
        let s = Scratch::with_config(&format!(
            "[[schedule]]\nname = \"tick\"\ncron = \"* * * * * *\"\n{schedule}"
        ));
        for args in [&["check-config"][..], &["serve"]] {
            let out = s.cli(args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{schedule} {args:?}: {err}");
            assert!(err.contains(key), "{schedule} {args:?}: {err}");
        }
        assert_eq!(s.cli_jobs(&[]).len(), 0, "{schedule}");
    }
    // The engine's own kind is registered by every node, not by the registry `check-config`
    // builds without a broker: a schedule of it is good config.
    let s = Scratch::with_config(
        "[[schedule]]\nname = \"purge\"\ncron = \"0 * * * * *\"\nkind = \"hopper.retention\"\n",
    );
    let out = s.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A `[[subscription]]` whose payload has no template (every job gets it as written) and
/// its kind refuses is a config error naming it, as a schedule's is: every publish to it
/// failed with a 400 that blamed the client's `data`. A templated payload is judged per
/// publish.
#[test]
fn a_fixed_subscription_payload_its_kind_refuses_is_a_config_error() {
    let sub = "[[subscription]]\ntopic = \"a.b\"\nkind = \"sys.sleep\"\n";
    let s = Scratch::with_config(&format!("{sub}payload = {{ ms = \"x\" }}\n"));
    for args in [&["check-config"][..], &["serve"]] {
        let out = s.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("subscription[0].payload.ms"),
            "{args:?}: {err}"
        );
    }
    for payload in ["{ ms = 5 }", "{ ms = \"{{ data.ms }}\" }"] {
        let s = Scratch::with_config(&format!("{sub}payload = {payload}\n"));
        let out = s.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(0), "{payload}: {}", stderr(&out));
    }
}

/// A client's job on `hopper.maintenance`, which every pool serves one job at a time, would
/// hold retention back as long as it runs: refused naming `queue`, over the API (a chain's
/// later step too) and from the CLI.
#[tokio::test]
async fn a_clients_job_on_the_maintenance_queue_is_refused() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    for (body, field) in [
        (
            json!({"kind": "sys.sleep", "queue": "hopper.maintenance", "payload": {"ms": 1}}),
            "queue",
        ),
        (
            json!({"kind": "hopper.retention", "queue": "hopper.maintenance",
                   "then": [{"kind": "sys.noop"}]}),
            "queue",
        ),
        // Nor does Hopper's own kind run anywhere else, where nothing keeps it to one at a
        // time, nor as a chain's step.
        (
            json!({"kind": "hopper.retention", "queue": "default"}),
            "queue",
        ),
        (
            json!({"kind": "sys.noop", "then": [{"kind": "hopper.retention"}]}),
            "kind",
        ),
        // A schedule's tick keys are the schedules' own: a client holding one would skip
        // that tick, silently.
        (
            json!({"kind": "sys.noop", "unique_key": "schedule:nightly:1800000000000"}),
            "unique_key",
        ),
        // Nor are a publish's (`publish:KEY:SUBSCRIPTION`): a job holding one answers that
        // publish as a duplicate, and a job marked so dead makes no `job.dead` alert.
        (
            json!({"kind": "sys.noop", "unique_key": "publish:order-1:3f8b195963412583"}),
            "unique_key",
        ),
        (
            json!({"kind": "sys.noop", "then": [{"kind": "sys.noop", "unique_key": "publish:x"}]}),
            "unique_key",
        ),
    ] {
        let (st, answer) = api.enqueue(body.clone()).await;
        assert_eq!(st, 400, "{body}: {answer}");
        assert!(
            answer["error"]["field"]
                .as_str()
                .is_some_and(|f| f.ends_with(field)),
            "{body}: {answer}"
        );
    }
    let out = s.cli(&["enqueue", "sys.noop", "--unique-key", "publish:order-1:x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--unique-key"), "{}", stderr(&out));
    // Run now by an operator, with no queue named, it goes on the maintenance queue.
    let (st, answer) = api.enqueue(json!({"kind": "hopper.retention"})).await;
    assert_eq!(st, 201, "{answer}");
    assert_eq!(answer["queue"], "hopper.maintenance", "{answer}");
    let out = s.cli(&["enqueue", "sys.noop", "--queue", "hopper.maintenance"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Hopper's own queue"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.cli_jobs(&[]).len(), 1, "the retention run only");
    // A subscription or a schedule naming it is a config error, not a publish that fails (or
    // a relayed event skipped) at run time.
    for (table, key) in [
        (
            "[[subscription]]\ntopic = \"a.b\"\nkind = \"sys.noop\"\nqueue = \"hopper.maintenance\"\n",
            "subscription[0].queue",
        ),
        (
            "[[schedule]]\nname = \"t\"\ncron = \"0 * * * * *\"\nkind = \"sys.noop\"\nqueue = \"hopper.maintenance\"\n",
            "schedule[0].queue",
        ),
        (
            "[[schedule]]\nname = \"t\"\ncron = \"0 * * * * *\"\nkind = \"hopper.retention\"\nqueue = \"default\"\n",
            "schedule[0].queue",
        ),
        (
            "[[queue]]\nname = \"hopper.maintenance\"\nconcurrency = 5\n",
            "queue[0].name",
        ),
        (
            "[[schedule]]\nname = \" \"\ncron = \"0 * * * * *\"\nkind = \"sys.noop\"\n",
            "schedule[0].name",
        ),
        (
            "[[schedule]]\nname = \"a\\tb\"\ncron = \"0 * * * * *\"\nkind = \"sys.noop\"\n",
            "schedule[0].name",
        ),
        // A queue no client may create (only dots: not nameable in a URL) is refused up front,
        // not retried every tick or blamed on a publish's data.
        (
            "[[schedule]]\nname = \"t\"\ncron = \"0 * * * * *\"\nkind = \"sys.noop\"\nqueue = \"..\"\n",
            "schedule[0].queue",
        ),
        (
            "[[subscription]]\ntopic = \"a.b\"\nkind = \"sys.noop\"\nqueue = \".\"\n",
            "subscription[0].queue",
        ),
    ] {
        let s = Scratch::with_config(table);
        let out = s.cli(&["check-config"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{table}: {err}");
        assert!(err.contains(key), "{table}: {err}");
    }
}

/// `hopper enqueue` where no job database exists (the wrong directory, most often) creates one
/// where no `hopper serve` will see the job: it still enqueues, and says so on stderr once.
#[test]
fn enqueue_where_no_database_exists_warns() {
    let s = Scratch::with_config("");
    let first = s.cli(&["enqueue", "sys.noop"]);
    let err = stderr(&first);
    assert_eq!(first.status.code(), Some(0), "{err}");
    assert!(err.contains("warning: no job database at"), "{err}");
    let again = s.cli(&["enqueue", "sys.noop"]);
    let err = stderr(&again);
    assert_eq!(again.status.code(), Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(s.cli_jobs(&[]).len(), 2);
}

/// `HOPPER_TOKENS` of separators only (`","`) named no token and turned auth off over the
/// file's tokens: a config error naming the variable, from `check-config` and `serve`.
#[test]
fn hopper_tokens_of_separators_only_is_a_config_error() {
    let s = Scratch::with_config("[auth]\ntokens = [\"t1\"]\n").with_env("HOPPER_TOKENS", " , ");
    for args in [&["check-config"][..], &["serve"]] {
        let out = s.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("auth.tokens (set by HOPPER_TOKENS)"),
            "{args:?}: {err}"
        );
    }
}

/// A bad value in `HOPPER_BROKER` or `HOPPER_TOKENS` is a config error (exit 2) that names
/// the variable it came from: the file's own `[broker] url` is fine, and an operator reading
/// "broker.url ... in config.toml" would look for the fault in the wrong place.
#[test]
fn a_bad_environment_override_names_the_variable() {
    for (var, value, key) in [
        ("HOPPER_BROKER", "postgres://db/jobs", "broker.url"),
        ("HOPPER_TOKENS", "s3cret token", "auth.tokens[0]"),
    ] {
        let s = Scratch::with_config("").with_env(var, value);
        for args in [&["check-config"][..], &["queues"]] {
            let out = s.cli(args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{var} {args:?}: {err}");
            assert!(
                err.contains(key) && err.contains(&format!("set by {var}")),
                "{var} {args:?}: {err}"
            );
            assert!(!err.contains("s3cret"), "a token is never shown: {err}");
        }
    }
}

/// An SSE client resuming from a `Last-Event-ID` this broker never issued (one from a Redis
/// broker, here on SQLite) is refused with the header named, not a `since` it never sent.
#[tokio::test]
async fn a_foreign_last_event_id_is_refused_naming_the_header() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/events", api.base))
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", "1732000000000-0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["field"], "Last-Event-ID", "{body}");
    // Refused like the route's other parameters (it was `invalid_field`, unlike the rest and
    // the OpenAPI document).
    assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
    // Not text, or sent twice: no cursor either, refused the same way (it was ignored, and
    // the stream started from now).
    let twice = [("Last-Event-ID", "1"), ("Last-Event-ID", "2")];
    let latin1 = reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap();
    for headers in [twice.to_vec(), vec![]] {
        let mut req = reqwest::Client::new()
            .get(format!("{}/v1/events", api.base))
            .header("Accept", "text/event-stream");
        if headers.is_empty() {
            req = req.header("Last-Event-ID", latin1.clone());
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], "Last-Event-ID", "{body}");
    }
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            "/v1/events?since=1732000000000-0",
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
    assert_eq!(body["error"]["field"], "since", "{body}");
}

/// A bad queue weight (`[worker] queues` or `hopper worker --queues`) is a config error:
/// exit 2, naming `worker.queues`, the entry and what a weight may be, found by
/// `check-config` too. Before weights existed, the entry was refused as a bad queue name.
#[test]
fn a_bad_queue_weight_is_a_config_error() {
    let s = Scratch::with_config("[worker]\nqueues = [\"critical:6\", \"low:0\"]\n");
    for args in [&["check-config"][..], &["worker"]] {
        let out = s.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("worker.queues") && err.contains("\"low:0\""),
            "{args:?}: {err}"
        );
        assert!(err.contains("weight") && err.contains("1 to 1000"), "{err}");
    }
    let fine = Scratch::with_config("");
    for weights in ["a:1001", "a:x", "a:-3"] {
        let out = fine.cli(&["worker", "--queues", &format!("b:2,{weights}")]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{weights}: {err}");
        assert!(
            err.contains("worker.queues") && err.contains(&format!("{weights:?}")),
            "{weights}: {err}"
        );
        assert!(err.contains("weight"), "{weights}: {err}");
    }
}

/// A concurrency past the maximum (10000) is a config error naming `worker.concurrency`, exit
/// 2, from `check-config`, from `worker` and from `hopper worker --concurrency`, instead of a
/// worker that starts with it. Bounded in time: before the fix the worker ran on.
#[test]
fn a_huge_concurrency_is_a_config_error() {
    let s = Scratch::with_config("[worker]\nconcurrency = 1000000000000000\n");
    let fine = Scratch::with_config("");
    let runs: [(&Scratch, &[&str]); 3] = [
        (&s, &["check-config"]),
        (&s, &["worker"]),
        (&fine, &["worker", "--concurrency", "10001"]),
    ];
    for (scratch, args) in runs {
        let out = scratch.cli_within(args, std::time::Duration::from_secs(30));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("worker.concurrency") && err.contains("10000"),
            "{args:?}: {err}"
        );
    }
}

/// What a job holds reaches the terminal escaped: a unique key, a payload or an error with
/// ESC, BEL or a newline in it cannot retitle or clear the operator's terminal, nor forge a
/// line of `hopper job` or `hopper jobs`. Before, they were printed raw.
#[test]
fn job_texts_reach_the_terminal_escaped() {
    let s = Scratch::with_config("");
    let key = "k\u{1b}]0;pwned\u{7}\u{1b}[2Jx\nfake line";
    let out = s.cli(&["enqueue", "sys.noop", "--unique-key", key]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for args in [vec!["job", id.as_str()], vec!["jobs"]] {
        let out = s.cli(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{args:?}: {text:?}"
        );
        if args[0] == "job" {
            assert!(text.contains("\\u{1b}]0;pwned"), "{text}");
            assert!(!text.lines().any(|l| l.starts_with("fake line")), "{text}");
        }
    }
}

/// A config file toml cannot read is named with its line and key, but no secret in it is
/// shown: not the line of a misspelt `url` holding a password, not a token given with the
/// wrong type. Before, `check-config` (and every command reading the file, into the journal)
/// printed both.
#[test]
fn config_parse_errors_hide_secrets() {
    for (text, key) in [
        (
            "[broker]\nurll = \"redis://:pw-SECRET42@127.0.0.1:6379/0\"\n",
            "urll",
        ),
        ("[auth]\ntokens = \"tok-SECRET\"\n", "tokens"),
    ] {
        let s = Scratch::new();
        let path = s.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = s.cli(&["check-config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = stderr(&out);
        assert!(!err.contains("SECRET"), "{err}");
        assert!(err.contains(key) && err.contains("line 2"), "{err}");
    }
}
