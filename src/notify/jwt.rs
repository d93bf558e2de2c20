//! Users' JWTs: who a `GET /v1/notifications` connection (or a push-subscription request)
//! belongs to. The token's `sub` is the user id; `exp` is required (60 s of leeway for
//! clocks), and an `nbf` (not before), when present, is honoured with the same leeway. HS256
//! tokens are verified with `[auth] jwt_secret`, RS256 and EdDSA (Ed25519) ones with the
//! public key in the PEM file `[auth] jwt_public_key`; any other algorithm is refused,
//! whatever the token's header says.
//!
//! A refusal says why in a few stable words (`expired token`, `bad signature`), never echoing
//! the token or the key.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;

/// Verifies users' JWTs with the configured keys.
pub struct Verifier {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.secret.is_some())
            .field("public", &self.public.as_ref().map(|(_, a)| *a))
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    /// Required (see `verify`); seconds since the epoch. A NumericDate may have a fraction
    /// (RFC 7519 §2), so it is read as a number of any kind; `verify` keeps its whole seconds.
    #[serde(default)]
    exp: f64,
}

/// A token that passed: the user it names, and when it stops being valid.
#[derive(Debug)]
pub struct Verified {
    pub sub: String,
    /// `exp`, seconds since the Unix epoch.
    pub exp: u64,
}

impl Verified {
    /// How long from now until `exp` (zero once past; the validation's 60 s leeway is not
    /// granted again to a stream that outlives its token).
    pub fn remaining(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::time::Duration::from_secs(self.exp.saturating_sub(now))
    }
}

impl Verifier {
    /// The verifier `[auth]` configures: `Ok(None)` when neither `jwt_secret` nor
    /// `jwt_public_key` is set; an error naming the key when the public key file cannot be
    /// read or is neither an RSA nor an Ed25519 public key in PEM.
    pub fn from_config(auth: &AuthConfig) -> Result<Option<Self>, String> {
        let secret = if auth.jwt_secret.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_secret(auth.jwt_secret.as_bytes())
                    .map_err(|_| "auth.jwt_secret: not usable as an HS256 key".to_owned())?,
            )
        };
        let public = if auth.jwt_public_key.is_empty() {
            None
        } else {
            let path = &auth.jwt_public_key;
            let pem = std::fs::read(path)
                .map_err(|e| format!("auth.jwt_public_key: cannot read {path}: {e}"))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (k, Algorithm::RS256))
                .or_else(|_| DecodingKey::from_ed_pem(&pem).map(|k| (k, Algorithm::EdDSA)))
                .map_err(|_| {
                    format!(
                        "auth.jwt_public_key: {path} is not an RSA or Ed25519 public key in PEM"
                    )
                })?;
            Some(key)
        };
        Ok((secret.is_some() || public.is_some()).then_some(Self { secret, public }))
    }

    /// The user a token names (`sub`) and its `exp`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        let key = match (header.alg, &self.secret, &self.public) {
            (Algorithm::HS256, Some(secret), _) => secret,
            (alg, _, Some((key, expected))) if alg == *expected => key,
            _ => return Err("token algorithm not accepted"),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token that says when it starts to be valid is refused before then (RFC 7519
        // 4.1.5); the same leeway as `exp`.
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => "expired token",
            ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::MissingRequiredClaim(_) => "token without exp or sub",
            _ => "invalid token",
        })?;
        let Claims { sub, exp } = data.claims;
        if hopper_workers::broker::inbox::check_name("sub", &sub).is_err() {
            return Err("token sub is not a user id");
        }
        // The validation above parsed `exp` as a finite, non-negative number within u64 and
        // found it not past; the cast keeps its whole seconds (saturating, never wrapping).
        let exp = exp.floor() as u64;
        Ok(Verified { sub, exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier() -> Verifier {
        let auth = AuthConfig {
            jwt_secret: "s3cret-for-tests".into(),
            ..AuthConfig::default()
        };
        Verifier::from_config(&auth)
            .expect("a usable secret")
            .expect("a verifier when jwt_secret is set")
    }

    fn sign(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret-for-tests").expect("an HS256 key"),
        )
        .expect("signing")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn an_exp_with_a_fraction_is_a_valid_numeric_date() {
        let exp = now() + 3600;
        let token = sign(&json!({ "sub": "42", "exp": exp as f64 + 0.75 }));
        let v = verifier()
            .verify(&token)
            .expect("a fractional exp is accepted");
        assert_eq!(v.sub, "42");
        assert_eq!(v.exp, exp, "whole seconds kept");
        let left = v.remaining().as_secs();
        assert!((3590..=3600).contains(&left), "{left}");
    }

    #[test]
    fn refusals_say_why() {
        let v = verifier();
        let past = now() - 3600;
        assert_eq!(
            v.verify(&sign(&json!({ "sub": "42", "exp": past as f64 + 0.5 })))
                .err(),
            Some("expired token")
        );
        assert_eq!(
            v.verify(&sign(&json!({ "sub": "42" }))).err(),
            Some("token without exp or sub")
        );
        assert_eq!(
            v.verify(&sign(&json!({ "sub": "42", "exp": "tomorrow" })))
                .err(),
            Some("invalid token")
        );
        assert_eq!(v.verify("not.a.token").err(), Some("malformed token"));
        let exp = now() + 3600;
        for sub in ["", "  ", "a\u{7}b"] {
            assert_eq!(
                v.verify(&sign(&json!({ "sub": sub, "exp": exp }))).err(),
                Some("token sub is not a user id"),
                "{sub:?}"
            );
        }
    }
}
