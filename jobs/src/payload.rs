//! Payload parsing shared by every kind: deserialize into the kind's argument struct and, when
//! that fails, name the field (`payload.sizes[0].width`), so the API's 400 and a dead job's
//! `last_error` both point at it. Semantic checks stay in each kind.

use hopper_workers::FieldError;
use hopper_workers::JobError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Parses a payload, naming the first field that does not fit `T`.
pub(crate) fn parse<T: DeserializeOwned>(payload: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "payload".to_owned()
        } else {
            format!("payload.{path}")
        };
        FieldError::new(field, e.into_inner().to_string())
    })
}

/// A bad payload found at run time (a payload enqueued before validation existed, or by a
/// chain): it will never get better, so it is permanent.
pub(crate) fn permanent(e: FieldError) -> JobError {
    JobError::permanent(format!("invalid payload: {e}"))
}

/// `"a"` or `["a", "b"]`, as a list.
#[cfg_attr(not(any(feature = "email", feature = "etl")), allow(dead_code))]
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// An SQL identifier we accept for tables and columns: ASCII letters, digits and `_`, not
/// starting with a digit, at most 63 bytes (PostgreSQL's limit). Identifiers are also quoted
/// when used; this keeps them portable and free of quoting games.
#[cfg_attr(not(any(feature = "etl", feature = "pdf")), allow(dead_code))]
pub(crate) fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Args {
        sizes: Vec<Size>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Size {
        width: u32,
    }

    #[test]
    fn names_the_nested_field() {
        let e = parse::<Args>(&json!({"sizes": [{"width": "x"}]})).expect_err("bad");
        assert_eq!(e.field, "payload.sizes[0].width");
        let e = parse::<Args>(&json!({})).expect_err("missing");
        assert_eq!(e.field, "payload");
        assert!(e.message.contains("sizes"), "{e}");
    }
}
