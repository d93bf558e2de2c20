//! A user's side of `GET /v1/notifications`: HS256 JWTs for a user id, a WebSocket connected
//! as that user, and reading the notification frames it receives.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::api::Api;
use super::stream::{Socket, connect_with, next_json};
use super::wait::now_ms;

/// The `[auth] jwt_secret` of [`AUTH`], which [`jwt`] signs with.
pub const SECRET: &str = "notify-test-secret";
/// The `[auth]` section that makes the server verify [`jwt`]'s tokens.
pub const AUTH: &str = "[auth]\njwt_secret = \"notify-test-secret\"\n";

/// An HS256 JWT for `sub`, expiring `exp_in_s` seconds from now (negative: expired), signed
/// with `secret`.
pub fn jwt_with(secret: &str, sub: &str, exp_in_s: i64) -> String {
    let exp = now_ms() / 1000 + exp_in_s;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A JWT for `sub` signed with [`SECRET`], valid for an hour.
pub fn jwt(sub: &str) -> String {
    jwt_with(SECRET, sub, 3600)
}

/// The `ws://` URL of the server's `GET /v1/notifications` with `query`.
pub fn url(api: &Api, query: &str) -> String {
    let addr = api.base.trim_start_matches("http://");
    format!("ws://{addr}/v1/notifications?{query}")
}

/// Connects as `sub` with the token in the query.
pub async fn connect_as(api: &Api, sub: &str, query: &str) -> Socket {
    let q = format!("token={}&{query}", jwt(sub));
    connect_with(&url(api, &q), &[]).await.unwrap()
}

/// Reads the next frame: a notification with this `id`.
pub async fn expect_notification(ws: &mut Socket, id: &str) -> Value {
    let f = next_json(ws).await;
    assert_eq!(f["type"], "notification", "{f}");
    assert_eq!(f["id"], id, "{f}");
    f
}
