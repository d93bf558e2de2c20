//! Topics and the patterns subscriptions match them with, AMQP-style: a topic is
//! dot-separated segments (`user.created`); in a pattern `*` stands for exactly one segment
//! and `#` for any number of them, none included (`user.*`, `billing.#`, `#`).
//!
//! It owns the syntax of both and the match; what a match enqueues is `super`'s.

use hopper_workers::FieldError;

/// Longest topic, in bytes: ASCII characters, the only ones a topic may hold.
pub const MAX_TOPIC: usize = 255;

/// The rule a topic keeps, as a refusal says it.
const TOPIC_RULE: &str = "must be 1 to 255 ASCII characters: dot-separated segments of letters, digits, \
     '-' or '_' (e.g. \"user.created\")";

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a published topic: segments of letters, digits, `-` and `_`, no wildcard.
pub fn check_topic(topic: &str) -> Result<(), FieldError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC || !topic.split('.').all(valid_segment) {
        return Err(FieldError::invalid("topic", TOPIC_RULE));
    }
    Ok(())
}

/// A subscription's topic pattern, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Word(String),
    /// `*`: exactly one segment.
    One,
    /// `#`: zero or more segments.
    Any,
}

impl Pattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > MAX_TOPIC {
            return Err("must be 1 to 255 ASCII characters".into());
        }
        let segments = text
            .split('.')
            .map(|s| match s {
                "*" => Ok(Segment::One),
                "#" => Ok(Segment::Any),
                s if valid_segment(s) => Ok(Segment::Word(s.to_owned())),
                s => Err(format!(
                    "segment {s:?}: a segment is letters, digits, '-' or '_', or a wildcard \
                     alone ('*' one segment, '#' any number)"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // `#.#` means what `#` means; collapsing keeps the match from retrying each split.
        let mut segments = segments;
        segments.dedup_by(|a, b| *a == Segment::Any && *b == Segment::Any);
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` (a valid topic) matches.
    pub fn matches(&self, topic: &str) -> bool {
        let words: Vec<&str> = topic.split('.').collect();
        matches_from(&self.segments, &words)
    }

    /// Whether some topic whose first segment is `first` could match: how the job-event
    /// relay knows a pattern may take `job.*` events.
    pub fn may_match_under(&self, first: &str) -> bool {
        match self.segments.first() {
            Some(Segment::Word(w)) => w == first,
            Some(Segment::One | Segment::Any) => true,
            None => false,
        }
    }
}

fn matches_from(pattern: &[Segment], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=words.len()).any(|skip| matches_from(rest, &words[skip..]))
        }
        Some((Segment::One, rest)) => !words.is_empty() && matches_from(rest, &words[1..]),
        Some((Segment::Word(w), rest)) => {
            words.first().is_some_and(|first| first == w) && matches_from(rest, &words[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn m(pattern: &str, topic: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(topic)
    }

    #[test]
    fn wildcards_match_like_amqp() {
        assert!(m("user.created", "user.created"));
        assert!(!m("user.created", "user.deleted"));
        assert!(m("user.*", "user.created"));
        assert!(!m("user.*", "user"));
        assert!(!m("user.*", "user.created.v2"));
        assert!(m("user.#", "user"));
        assert!(m("user.#", "user.created.v2"));
        assert!(m("#", "anything.at.all"));
        assert!(m("*.created", "order.created"));
        assert!(m("a.#.z", "a.z"));
        assert!(m("a.#.z", "a.b.c.z"));
        assert!(m("#.#.z", "a.b.z"));
        assert!(!m("a.#.z", "a.b.c"));
    }

    #[test]
    fn bad_patterns_and_topics_are_refused() {
        for bad in ["", "user.", ".x", "user.cre*", "a b", "a..b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "user.*", "#", "a..b", "é"] {
            assert_eq!(check_topic(bad).unwrap_err().field, "topic", "{bad:?}");
        }
        assert!(check_topic("user.created").is_ok());
        assert!(Pattern::parse("job.*").unwrap().may_match_under("job"));
        assert!(Pattern::parse("#").unwrap().may_match_under("job"));
        assert!(!Pattern::parse("user.*").unwrap().may_match_under("job"));
    }
}
