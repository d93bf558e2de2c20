//! Writing the CLI's results to stdout: lines, JSON, and plain aligned tables.
//!
//! Results go to stdout, logs and errors to stderr, so `hopper jobs --json | jq` works. Writes
//! go through a locked handle and report failures (a closed pipe) instead of panicking the
//! way `println!` does.

use std::borrow::Cow;
use std::fmt::Display;
use std::io::{self, Write};

use serde::Serialize;

/// `text` as a terminal may show it: each control character (ESC, CR, a newline, ...) as its
/// escape (`\u{1b}`, `\r`, `\n`). What a job holds is anyone's input (a unique key, an
/// error, a progress message): printed raw, `\e]0;...\a` retitled the operator's terminal,
/// `\e[2J` cleared it, and a newline forged a line of output.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes one line.
pub fn line(text: impl Display) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{text}")
}

/// Writes `value` as one line of JSON.
pub fn json(value: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string(value).map_err(io::Error::other)?;
    line(text)
}

/// Writes a table: a header row, then rows, columns padded to their widest cell, each cell
/// [`shown`]. Columns whose header starts with `>` are right-aligned (numbers).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| shown(c).into_owned()).collect())
        .collect();
    let mut stdout = io::stdout().lock();
    let names: Vec<&str> = headers.iter().map(|h| h.trim_start_matches('>')).collect();
    let right: Vec<bool> = headers.iter().map(|h| h.starts_with('>')).collect();
    let mut widths: Vec<usize> = names.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&format!("{cell:>w$}"));
            } else {
                s.push_str(&format!("{cell:<w$}"));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(stdout, "{}", render(&mut names.iter().copied()))?;
    for row in &rows {
        writeln!(stdout, "{}", render(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(shown("plain é"), "plain é");
        assert!(matches!(shown("plain"), Cow::Borrowed(_)));
        assert_eq!(
            shown("k\u{1b}]0;pwned\u{7}\u{1b}[2Jx\nfake"),
            "k\\u{1b}]0;pwned\\u{7}\\u{1b}[2Jx\\nfake"
        );
    }
}
