//! Pieces of payload types that several kinds share: a field that takes one string or a
//! list, and the SQL identifiers `etl.sync` and `pdf.report` accept. Parsing a payload and
//! naming its bad field is the engine's (`hopper_workers::kind`); each kind's own rules stay
//! in its `check`.

use serde::{Deserialize, Deserializer};

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
