//! The message of a config file toml could not read: where (line, column, key) and what, with
//! no secret in it.
//!
//! toml's own rendering quotes the offending line of the file, and a wrong type repeats the
//! value (`invalid type: string "tok-…", expected a sequence`): a mistyped `url` with a
//! password, or `tokens` given as a string, put the secret on the terminal and in the journal
//! of every command that read the file. The line is never shown here, and a value is shown
//! only when its key holds no secret (a bad `lease = "soon"` still says `soon`).

/// Key names (any part of the key's path) whose values are not shown: URLs carry passwords,
/// and the rest are secrets by name.
const SECRET_PARTS: &[&str] = &[
    "url", "token", "secret", "password", "private", "database", "webhook",
];

/// `error` (from parsing `text`) as one line: `line L, column C: what, in `key``.
pub(super) fn describe(text: &str, mut error: toml::de::Error) -> String {
    let at = error.span().map(|span| line_and_column(text, span.start));
    // Without its input, toml renders the message and the key's path (`in `auth.tokens``),
    // not the line.
    error.set_input(None);
    let rendered = error.to_string();
    let mut parts = rendered.trim_end().lines();
    let what = parts.next().unwrap_or("").trim().to_owned();
    let key = parts
        .next()
        .and_then(|l| l.trim().strip_prefix("in "))
        .map(|k| k.trim_matches('`').to_owned());
    let what = match &key {
        Some(k) if is_secret(k) => hide_strings(&what),
        _ => what,
    };
    let mut out = String::new();
    if let Some((line, column)) = at {
        out.push_str(&format!("line {line}, column {column}: "));
    }
    out.push_str(&what);
    if let Some(k) = key {
        out.push_str(&format!(", in `{k}`"));
    }
    out
}

/// Whether `key`'s value may be a secret: a part of its name says so, or it is a whole section
/// given as a value (`broker = "redis://:pw@…"`, `auth = "tok…"`), which may hold anything its
/// keys would have.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.contains('.') || SECRET_PARTS.iter().any(|part| key.contains(part))
}

/// `what` with every double-quoted string (serde writes a value as `string "…"`, escaped as
/// Rust's Debug does) replaced by `"…"`.
fn hide_strings(what: &str) -> String {
    let mut out = String::with_capacity(what.len());
    let mut chars = what.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        // Inside a quoted value: skip to its closing quote, escapes included.
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        out.push_str("…\"");
    }
    out
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_hidden_escapes_and_all() {
        assert_eq!(
            hide_strings(r#"invalid type: string "a\"b", expected a sequence"#),
            r#"invalid type: string "…", expected a sequence"#
        );
        assert_eq!(hide_strings("no quotes"), "no quotes");
    }

    #[test]
    fn positions_count_lines_and_characters() {
        assert_eq!(line_and_column("a\nbé = 1", 5), (2, 3));
        assert_eq!(line_and_column("", 3), (1, 1));
    }
}
