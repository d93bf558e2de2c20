//! User notifications against the real binary (Hopper issue 12, items 2 and 4): a real
//! WebSocket client on `GET /v1/notifications`, authenticated by a JWT, receives the
//! notifications delivered through the `Inbox` port (`hopper::notify::BrokerInbox`) by
//! another broker handle (this test process, on the daemon's SQLite file or Redis prefix):
//! only its own user's, replayed after `since` on reconnect, live from any node on one Redis;
//! bad or expired JWTs are closed with 4001; past `[notify] max_messages_per_minute` the
//! excess is dropped with one `rate_limited` frame. Push subscriptions: POST, list, DELETE,
//! and 400s naming the field.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use hopper::notify::BrokerInbox;
use hopper_jobs::notify::ports::{Inbox, Notification};
use hopper_workers::broker::{Broker, OpenOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::util::inbox_client::{
    AUTH, SECRET, connect_as, expect_notification, jwt, jwt_with, url,
};
use crate::util::redis::{RedisKeys, SHARED_URL};
use crate::util::stream::{self, Next, Socket, close, connect_with, next_json};
use crate::util::{Scratch, now_ms, wait};

const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// An Ed25519 key pair made for this test (`openssl genpkey -algorithm ed25519`).
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
    MC4CAQAwBQYDK2VwBCIEINalsBmEDVr81CfXrgdIJbLa2qgGPIP3W0nAJzOmeSJ2\n\
    -----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
    MCowBQYDK2VwAyEA24C2BbAZn5qNTstpA2aLsfhVRNI7l383V94gmr0Q/kE=\n\
    -----END PUBLIC KEY-----\n";

fn note(id: &str, user: &str) -> Notification {
    Notification {
        id: id.into(),
        user: user.into(),
        kind: "welcome".into(),
        title: format!("Hello {user}"),
        body: format!("body of {id}"),
        data: json!({ "n": id }),
    }
}

/// The port over the daemon's broker, from this process: another broker handle.
async fn inbox(url: &str, prefix: &str) -> (BrokerInbox, Arc<dyn Broker>) {
    let broker = hopper_workers::broker::open_with(
        url,
        &OpenOptions::new(prefix),
        hopper_workers::clock::system(),
    )
    .await
    .unwrap();
    (BrokerInbox::new(broker.clone(), DAY), broker)
}

async fn expect_close(ws: &mut Socket, code: u16, says: &str) {
    match stream::next(ws).await {
        Next::Closed(Some(frame)) => {
            assert_eq!(u16::from(frame.code), code, "{frame:?}");
            assert!(frame.reason.contains(says), "{}", frame.reason);
        }
        other => panic!("not closed with {code}: {other:?}"),
    }
}

#[tokio::test]
async fn user_42_receives_their_notification_and_user_43_does_not() {
    let s = Scratch::with_config(AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    let mut ws42 = connect_as(&api, "42", "").await;
    // User 43 sends the JWT as a header instead of in the query.
    let bearer = format!("Bearer {}", jwt("43"));
    let mut ws43 = connect_with(&url(&api, ""), &[("authorization", &bearer)])
        .await
        .unwrap();
    let (port, _) = inbox(&s.broker_url(), "hopper").await;
    port.deliver(&note("n1", "42")).await.unwrap();
    let f = expect_notification(&mut ws42, "n1").await;
    assert_eq!(f["user"], "42");
    assert_eq!(f["kind"], "welcome");
    assert_eq!(f["title"], "Hello 42");
    assert_eq!(f["body"], "body of n1");
    assert_eq!(f["data"], json!({ "n": "n1" }));
    assert!(f["cursor"].is_string() && f["at"].is_string(), "{f}");
    // 43's first frame is its own notification: n1 never reached it.
    port.deliver(&note("n2", "43")).await.unwrap();
    expect_notification(&mut ws43, "n2").await;
    // And 42 does not get 43's: its next frame is its own next one.
    port.deliver(&note("n3", "42")).await.unwrap();
    expect_notification(&mut ws42, "n3").await;
    close(ws42).await;
    close(ws43).await;
}

#[tokio::test]
async fn a_notification_delivered_while_offline_is_replayed_on_reconnect() {
    let s = Scratch::with_config(AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    let (port, _) = inbox(&s.broker_url(), "hopper").await;
    let mut ws = connect_as(&api, "42", "").await;
    port.deliver(&note("n1", "42")).await.unwrap();
    let cursor = expect_notification(&mut ws, "n1").await["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    close(ws).await;

    port.deliver(&note("n2", "42")).await.unwrap();
    // A retried delivery is a no-op.
    port.deliver(&note("n2", "42")).await.unwrap();
    port.deliver(&note("other", "43")).await.unwrap();

    let mut ws = connect_as(&api, "42", &format!("since={cursor}")).await;
    expect_notification(&mut ws, "n2").await;
    // Then live, no duplicate at the seam.
    port.deliver(&note("n3", "42")).await.unwrap();
    expect_notification(&mut ws, "n3").await;
    close(ws).await;

    // Without `since`: everything kept for the user, once each, then live.
    let mut ws = connect_as(&api, "42", "").await;
    for id in ["n1", "n2", "n3"] {
        expect_notification(&mut ws, id).await;
    }
    port.deliver(&note("n4", "42")).await.unwrap();
    expect_notification(&mut ws, "n4").await;
    close(ws).await;
}

/// The client's `since` may be ahead of the server's one inbox reader (which follows another
/// process's appends within a poll): what the reader broadcasts up to `since` is not sent.
#[tokio::test]
async fn a_since_ahead_of_the_servers_reader_gets_nothing_twice() {
    let s = Scratch::with_config(AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    let (port, broker) = inbox(&s.broker_url(), "hopper").await;
    for round in 0..5 {
        let first = format!("s{round}-a");
        let entry = hopper_workers::broker::NewInboxEntry {
            id: first.clone(),
            user: "42".into(),
            body: serde_json::to_value(note(&first, "42")).unwrap(),
        };
        let cursor = broker.inbox_append(&entry, DAY).await.unwrap().cursor;
        // At once, before the server's reader has likely seen it.
        let mut ws = connect_as(&api, "42", &format!("since={cursor}")).await;
        let next = format!("s{round}-b");
        port.deliver(&note(&next, "42")).await.unwrap();
        expect_notification(&mut ws, &next).await;
        close(ws).await;
    }
}

/// A `since` past the end of the inbox log (kept from before the broker's data was replaced,
/// or from another broker): told with one `gap` frame, then every kept notification, then
/// the live ones. Taken as "seen up to there", it hid every new notification of the log.
async fn a_since_past_the_end_of_the_inbox_gets_a_gap_then_everything(
    api: &crate::util::Api,
    broker_url: &str,
    prefix: &str,
    past_end: &str,
) {
    let (port, _) = inbox(broker_url, prefix).await;
    // `0` is before everything, an empty log's too: no gap.
    let mut ws = connect_as(api, "42", "since=0").await;
    port.deliver(&note("p0", "42")).await.unwrap();
    expect_notification(&mut ws, "p0").await;
    close(ws).await;
    port.deliver(&note("p1", "42")).await.unwrap();
    let mut ws = connect_as(api, "42", &format!("since={past_end}")).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["type"], "gap", "{gap}");
    expect_notification(&mut ws, "p0").await;
    expect_notification(&mut ws, "p1").await;
    port.deliver(&note("p2", "42")).await.unwrap();
    expect_notification(&mut ws, "p2").await;
    close(ws).await;
}

#[tokio::test]
async fn a_since_past_the_end_of_the_inbox_on_sqlite() {
    let s = Scratch::with_config(AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    a_since_past_the_end_of_the_inbox_gets_a_gap_then_everything(
        &api,
        &s.broker_url(),
        "hopper",
        "1000",
    )
    .await;
}

#[tokio::test]
async fn a_since_past_the_end_of_the_inbox_on_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    // A stream id in the year 2286: no entry of this log comes after it.
    a_since_past_the_end_of_the_inbox_gets_a_gap_then_everything(
        &api,
        SHARED_URL,
        &keys.prefix,
        "9999999999999-0",
    )
    .await;
}

#[tokio::test]
async fn api_nodes_on_one_redis_both_stream_a_notification_appended_elsewhere() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, AUTH);
    let (_a, api_a) = s.serve(&["--no-workers"]);
    let (_b, api_b) = s.serve(&["--no-workers"]);
    let mut on_a = connect_as(&api_a, "42", "").await;
    let mut on_b = connect_as(&api_b, "42", "").await;
    let mut other = connect_as(&api_b, "43", "").await;
    let (port, _) = inbox(SHARED_URL, &keys.prefix).await;
    port.deliver(&note("r1", "42")).await.unwrap();
    let a = expect_notification(&mut on_a, "r1").await;
    let b = expect_notification(&mut on_b, "r1").await;
    assert_eq!(a["cursor"], b["cursor"]);
    port.deliver(&note("r2", "43")).await.unwrap();
    expect_notification(&mut other, "r2").await;
    close(on_a).await;

    // Replayed from Redis on reconnect, on either node.
    port.deliver(&note("r3", "42")).await.unwrap();
    expect_notification(&mut on_b, "r3").await;
    let since = a["cursor"].as_str().unwrap();
    let mut again = connect_as(&api_a, "42", &format!("since={since}")).await;
    expect_notification(&mut again, "r3").await;
    close(again).await;
    close(on_b).await;
    close(other).await;
}

#[tokio::test]
async fn bad_expired_or_missing_jwts_are_closed_with_4001() {
    let s = Scratch::with_config(AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    for (query, says) in [
        (
            format!("token={}", jwt_with(SECRET, "42", -3600)),
            "expired",
        ),
        (
            format!("token={}", jwt_with("another-secret", "42", 3600)),
            "signature",
        ),
        ("token=not.a.jwt".to_owned(), "unauthorized"),
        (String::new(), "missing token"),
        // Valid only from an hour on (`nbf`, RFC 7519 4.1.5): not yet.
        (
            format!(
                "token={}",
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &json!({"sub": "42", "exp": now_ms() / 1000 + 7200,
                            "nbf": now_ms() / 1000 + 3600}),
                    &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
                )
                .unwrap()
            ),
            "not valid yet",
        ),
    ] {
        let mut ws = connect_with(&url(&api, &query), &[]).await.unwrap();
        expect_close(&mut ws, 4001, says).await;
    }
    // The bearer tokens of /v1 name no user: refused here too.
    let mut ws = connect_with(&url(&api, ""), &[("authorization", "Bearer s3cret")])
        .await
        .unwrap();
    expect_close(&mut ws, 4001, "unauthorized").await;
    // A valid JWT as a `token.JWT` subprotocol entry beside `hopper` is accepted.
    let protocols = format!("hopper, token.{}", jwt("42"));
    let mut ws = connect_with(&url(&api, ""), &[("sec-websocket-protocol", &protocols)])
        .await
        .unwrap();
    let (port, _) = inbox(&s.broker_url(), "hopper").await;
    port.deliver(&note("p1", "42")).await.unwrap();
    expect_notification(&mut ws, "p1").await;
    close(ws).await;
}

/// A connection lasts no longer than its JWT: at `exp` the server closes it with 4001, so a
/// short-lived token is how a user's access ends (the notifications kept flowing before).
#[tokio::test]
async fn a_stream_is_closed_with_4001_when_its_jwt_expires() {
    let s = Scratch::with_config(AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    let q = format!("token={}", jwt_with(SECRET, "42", 8));
    let mut ws = connect_with(&url(&api, &q), &[]).await.unwrap();
    let (port, _) = inbox(&s.broker_url(), "hopper").await;
    port.deliver(&note("x1", "42")).await.unwrap();
    expect_notification(&mut ws, "x1").await;
    expect_close(&mut ws, 4001, "expired").await;
}

/// One user holds at most `[notify] max_connections_per_user` streams on a server: past it a
/// new one is 429 `too_many_connections` (before the upgrade), while another user still
/// connects, and closing one gives its place back.
#[tokio::test]
async fn one_user_cannot_take_every_connection() {
    let s = Scratch::with_config(&format!("{AUTH}\n[notify]\nmax_connections_per_user = 2\n"));
    let (_d, api) = s.serve(&["--no-workers"]);
    let first = connect_as(&api, "42", "").await;
    let second = connect_as(&api, "42", "").await;
    let q = format!("token={}", jwt("42"));
    match connect_with(&url(&api, &q), &[]).await {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status(), 429);
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        }
        other => panic!("a third stream of user 42 was not refused: {other:?}"),
    }
    let other_user = connect_as(&api, "43", "").await;
    close(first).await;
    let third = wait::until("user 42's closed stream gives its place back", async || {
        connect_with(&url(&api, &q), &[])
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    for ws in [second, other_user, third] {
        close(ws).await;
    }
}

#[tokio::test]
async fn an_eddsa_jwt_verified_with_the_public_key_file_is_accepted() {
    let s = Scratch::new();
    std::fs::write(s.path().join("jwt.pem"), ED_PUBLIC).unwrap();
    s.write_config(&format!(
        "[auth]\njwt_public_key = \"{}\"\n",
        s.path().join("jwt.pem").display()
    ));
    let (_d, api) = s.serve(&["--no-workers"]);
    let exp = now_ms() / 1000 + 3600;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &json!({ "sub": "42", "exp": exp }),
        &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut ws = connect_with(&url(&api, &format!("token={token}")), &[])
        .await
        .unwrap();
    let (port, _) = inbox(&s.broker_url(), "hopper").await;
    port.deliver(&note("e1", "42")).await.unwrap();
    expect_notification(&mut ws, "e1").await;
    close(ws).await;
    // An HS256 token is refused: no secret is configured.
    let mut ws = connect_as(&api, "42", "").await;
    expect_close(&mut ws, 4001, "algorithm").await;
}

#[tokio::test]
async fn past_the_message_rate_the_excess_is_dropped_with_one_rate_limited_frame() {
    let s = Scratch::with_config(&format!("{AUTH}[notify]\nmax_messages_per_minute = 2\n"));
    let (_d, api) = s.serve(&["--no-workers"]);
    let (port, _) = inbox(&s.broker_url(), "hopper").await;
    // Kept before the connection: replayed, which the limit does not count; once it has
    // arrived, the connection is live.
    port.deliver(&note("m0", "42")).await.unwrap();
    let mut ws = connect_as(&api, "42", "").await;
    expect_notification(&mut ws, "m0").await;
    for i in 1..=5 {
        port.deliver(&note(&format!("m{i}"), "42")).await.unwrap();
    }
    expect_notification(&mut ws, "m1").await;
    let second = expect_notification(&mut ws, "m2").await;
    let limited = next_json(&mut ws).await;
    assert_eq!(limited["type"], "rate_limited", "{limited}");
    assert_eq!(limited["dropped"], 3, "{limited}");
    assert_eq!(limited["limit_per_minute"], 2, "{limited}");
    assert_eq!(limited["since"], second["cursor"], "{limited}");
    close(ws).await;
    // The dropped ones stay in the inbox: a reconnect with `since` replays them.
    let since = limited["since"].as_str().unwrap();
    let mut ws = connect_as(&api, "42", &format!("since={since}")).await;
    for id in ["m3", "m4", "m5"] {
        expect_notification(&mut ws, id).await;
    }
    close(ws).await;
}

#[tokio::test]
async fn the_route_answers_json_errors_before_any_upgrade() {
    // Without a JWT key: 404 not_configured, upgrade or not.
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    let (status, body) = api.call(Method::GET, "/v1/notifications", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_configured", "{body}");
    match connect_with(&url(&api, ""), &[]).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 404),
        other => panic!("the upgrade was not refused: {other:?}"),
    }

    let s = Scratch::with_config(AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    let (status, body) = api.call(Method::GET, "/v1/notifications", None).await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(body["error"]["code"], "upgrade_required", "{body}");
    let (status, body) = api
        .call(Method::GET, "/v1/notifications?since=garbage", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "since", "{body}");
}

fn subscription(endpoint: &str) -> Value {
    json!({
        "endpoint": endpoint,
        "expirationTime": null,
        "keys": {
            "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
            "auth": "tBHItJI5svbpez7KI4CCXg"
        }
    })
}

#[tokio::test]
async fn push_subscriptions_are_stored_listed_and_deleted_per_user() {
    let s = Scratch::with_config(&format!("{AUTH}tokens = [\"app-token\"]\n"));
    let (_d, api) = s.serve(&["--no-workers"]);
    let path = "/v1/users/42/push-subscriptions";
    let me = jwt("42");
    let a = subscription("https://push.example.net/send/a");
    let (status, body) = api.call_as(Method::POST, path, &me, Some(&a)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["subscription"]["endpoint"], a["endpoint"]);
    assert_eq!(body["subscription"]["keys"], a["keys"]);
    let (status, _) = api.call_as(Method::POST, path, &me, Some(&a)).await;
    assert_eq!(status, 200, "the same endpoint again replaces it");
    // The application's token acts for any user.
    let b = subscription("https://push.example.net/send/b");
    let (status, _) = api.call_as(Method::POST, path, "app-token", Some(&b)).await;
    assert_eq!(status, 201);
    let (status, body) = api.call_as(Method::GET, path, &me, None).await;
    assert_eq!(status, 200, "{body}");
    let endpoints: Vec<&str> = body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        endpoints,
        [
            a["endpoint"].as_str().unwrap(),
            b["endpoint"].as_str().unwrap()
        ]
    );
    // The port reads what the route stored.
    let (_, broker) = inbox(&s.broker_url(), "hopper").await;
    let port = hopper::notify::BrokerPushSubscriptions::new(broker);
    let listed = hopper_jobs::notify::ports::PushSubscriptions::list(&port, "42")
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);

    // Another user's JWT, no token, a bad token.
    let (status, body) = api.call_as(Method::GET, path, &jwt("43"), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = api.call_as(Method::GET, path, "", None).await;
    assert_eq!(status, 401);
    let (status, _) = api
        .call_as(Method::GET, path, &jwt_with("nope", "42", 3600), None)
        .await;
    assert_eq!(status, 401);

    // Bad bodies: 400 naming the field, nothing stored.
    let mut bad_keys = a.clone();
    bad_keys["keys"]["p256dh"] = json!("not base64!");
    let mut short_auth = a.clone();
    short_auth["keys"]["auth"] = json!("AAAA");
    let mut no_auth = a.clone();
    no_auth["keys"].as_object_mut().unwrap().remove("auth");
    for (body, field) in [
        (subscription("http://push.example.net/plain"), "endpoint"),
        (subscription("not a url"), "endpoint"),
        (json!({ "keys": a["keys"] }), "endpoint"),
        (json!({ "endpoint": a["endpoint"] }), "keys"),
        (bad_keys, "keys.p256dh"),
        (short_auth, "keys.auth"),
        (no_auth, "keys.auth"),
    ] {
        let (status, answer) = api.call_as(Method::POST, path, &me, Some(&body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }

    // DELETE needs the endpoint; forgets it once.
    let (status, body) = api.call_as(Method::DELETE, path, &me, None).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("endpoint")),
        "{body}"
    );
    let del = format!("{path}?endpoint=https%3A%2F%2Fpush.example.net%2Fsend%2Fa");
    let (status, _) = api.call_as(Method::DELETE, &del, &me, None).await;
    assert_eq!(status, 204);
    let (status, body) = api.call_as(Method::DELETE, &del, &me, None).await;
    assert_eq!(status, 404, "{body}");
    let (_, body) = api.call_as(Method::GET, path, &me, None).await;
    assert_eq!(body["subscriptions"].as_array().unwrap().len(), 1, "{body}");
}

/// Past `MAX_PUSH_SUBSCRIPTIONS` (20) a user's new endpoint is a 400 naming `endpoint`; an
/// endpoint the user has already is still replaced, and another user is unaffected.
async fn push_subscriptions_are_capped_per_user(api: &crate::util::Api) {
    let path = "/v1/users/42/push-subscriptions";
    for i in 0..20 {
        let sub = subscription(&format!("https://push.example.net/send/{i}"));
        let (status, body) = api.call(Method::POST, path, Some(&sub)).await;
        assert_eq!(status, 201, "{i}: {body}");
    }
    let extra = subscription("https://push.example.net/send/20");
    let (status, body) = api.call(Method::POST, path, Some(&extra)).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("endpoint")),
        "{body}"
    );
    let again = subscription("https://push.example.net/send/7");
    let (status, body) = api.call(Method::POST, path, Some(&again)).await;
    assert_eq!(
        status, 200,
        "re-registering an endpoint still works: {body}"
    );
    let (_, body) = api.call(Method::GET, path, None).await;
    assert_eq!(
        body["subscriptions"].as_array().unwrap().len(),
        20,
        "{body}"
    );
    let other = "/v1/users/43/push-subscriptions";
    let (status, body) = api.call(Method::POST, other, Some(&extra)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn push_subscriptions_are_capped_per_user_on_sqlite() {
    // A config with a free port: with none, `serve` goes for 127.0.0.1:8080, which
    // `e2e_tour` holds on purpose while it runs.
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    push_subscriptions_are_capped_per_user(&api).await;
}

#[tokio::test]
async fn push_subscriptions_are_capped_per_user_on_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    let (_d, api) = s.serve(&["--no-workers"]);
    push_subscriptions_are_capped_per_user(&api).await;
}
