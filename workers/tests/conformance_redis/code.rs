//! How the broker's Lua code reaches Redis: as one Redis Function library called with
//! `FCALL`, loaded again when Redis lost it, and as scripts (`EVALSHA`) where Redis refuses
//! functions. Each test has a `redis-server` of its own: they flush its code or change its
//! users, which the Redis every other test shares must not see.
//! Part of the `conformance_redis` test binary (its fixtures are the parent module's).

use super::private_redis::Server;
use super::*;

/// How many times each command ran on `conn`'s server (`INFO commandstats`), by name.
fn command_calls(conn: &mut redis::Connection) -> std::collections::HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("info");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// A node of the broker on `server`'s Redis, under a prefix of its own.
async fn node(server: &Server) -> RedisBroker {
    RedisBroker::connect(
        &server.url(),
        &unique_prefix(),
        hopper_workers::clock::system(),
    )
    .await
    .expect("connect")
}

/// Enqueues, fetches and finishes one job of `queue`, failing the test on any error.
async fn one_job_through(b: &RedisBroker, queue: &str) {
    let ids = b
        .enqueue(vec![job("k").queue(queue)])
        .await
        .expect("enqueue");
    let got = b
        .fetch(queue, 10, Duration::from_secs(30))
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1, "fetched {got:?}");
    assert_eq!(got[0].id, ids[0].job.id);
    for r in b
        .finish(vec![finish(
            got[0].lease(),
            Outcome::Succeeded { result: json!(1) },
        )])
        .await
        .expect("finish")
    {
        r.expect("finish the job");
    }
    let job = b.get(&ids[0].job.id).await.expect("get").expect("stored");
    assert_eq!(job.state, JobState::Succeeded);
}

/// The library the broker loaded: one, named `hopper_<version>`, with a function per script.
fn hopper_libraries(conn: &mut redis::Connection) -> Vec<(String, Vec<String>)> {
    let libs: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("hopper_*")
        .query(conn)
        .expect("function list");
    let mut out = Vec::new();
    let redis::Value::Array(libs) = libs else {
        panic!("FUNCTION LIST answered {libs:?}");
    };
    for lib in libs {
        let fields: Vec<(String, redis::Value)> = match lib {
            redis::Value::Array(v) => v
                .chunks(2)
                .filter_map(|p| match (&p[0], p.get(1)) {
                    (redis::Value::BulkString(k), Some(v)) => {
                        Some((String::from_utf8_lossy(k).into_owned(), v.clone()))
                    }
                    _ => None,
                })
                .collect(),
            redis::Value::Map(m) => m
                .into_iter()
                .filter_map(|(k, v)| match k {
                    redis::Value::BulkString(k) => {
                        Some((String::from_utf8_lossy(&k).into_owned(), v))
                    }
                    _ => None,
                })
                .collect(),
            other => panic!("a library as {other:?}"),
        };
        let name = fields
            .iter()
            .find(|(k, _)| k == "library_name")
            .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
            .expect("a library name");
        let functions = fields
            .iter()
            .find(|(k, _)| k == "functions")
            .map(|(_, v)| format!("{v:?}"))
            .unwrap_or_default();
        let names = functions
            .split('"')
            .filter(|s| s.starts_with("hopper_"))
            .map(str::to_owned)
            .collect();
        out.push((name, names));
    }
    out
}

#[tokio::test]
async fn the_code_runs_as_one_function_library() {
    let server = Server::start();
    let mut conn = server.conn();
    let b = node(&server).await;
    let libs = hopper_libraries(&mut conn);
    assert_eq!(libs.len(), 1, "{libs:?}");
    let (name, functions) = &libs[0];
    assert!(name.starts_with("hopper_"), "{name}");
    for script in ["enqueue", "fetch", "finish", "get"] {
        assert!(
            functions.iter().any(|f| f == &format!("{name}_{script}")),
            "no function for {script} in {functions:?}"
        );
    }
    one_job_through(&b, "q").await;
    let calls = command_calls(&mut conn);
    assert!(calls.get("fcall").copied().unwrap_or(0) >= 3, "{calls:?}");
    assert_eq!(calls.get("evalsha"), None, "{calls:?}");
    // A second node of the same build loads the same library, not a second one.
    let _b2 = node(&server).await;
    assert_eq!(hopper_libraries(&mut conn).len(), 1);
}

/// As after a restart of a Redis that keeps nothing on disk, or a failover to a replica
/// that never had the library: the broker loads it again and the call goes through.
#[tokio::test]
async fn a_library_lost_by_redis_is_loaded_again() {
    let server = Server::start();
    let mut conn = server.conn();
    let b = node(&server).await;
    one_job_through(&b, "q").await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query(&mut conn)
        .expect("flush");
    assert!(hopper_libraries(&mut conn).is_empty());
    one_job_through(&b, "q").await;
    assert_eq!(hopper_libraries(&mut conn).len(), 1);
    // And in a pipeline (an enqueue to a queue not seen yet goes with its index writes).
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query(&mut conn)
        .expect("flush");
    one_job_through(&b, "other").await;
}

/// A Redis that refuses functions (here an ACL user denied the `FUNCTION` command; a Redis 6
/// has none) gets the same code as scripts.
#[tokio::test]
async fn where_redis_refuses_functions_the_code_runs_as_scripts() {
    let server = Server::start();
    let mut conn = server.conn();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nofunctions")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-function")
        .query(&mut conn)
        .expect("acl setuser");
    let url = server.url().replace("redis://", "redis://nofunctions:pw@");
    let b = RedisBroker::connect(&url, &unique_prefix(), hopper_workers::clock::system())
        .await
        .expect("connect without functions");
    one_job_through(&b, "q").await;
    let calls = command_calls(&mut conn);
    assert!(calls.get("evalsha").copied().unwrap_or(0) >= 3, "{calls:?}");
    assert!(hopper_libraries(&mut conn).is_empty());
    // Scripts lost are loaded again too.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut conn)
        .expect("flush");
    one_job_through(&b, "q").await;
}
