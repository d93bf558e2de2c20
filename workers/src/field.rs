//! [`FieldError`]: the one shape of "this field of a request is wrong, and why", shared by the
//! job model, the job kinds' payload checks, schedules, the config and the HTTP API.
//!
//! The field is a path as the user wrote it (`payload.sizes[0].width`, `then[1].queue`), so an
//! error can be moved under its parent with [`FieldError::under`] without being rebuilt.

/// A field of a request that is not acceptable: where, a stable code, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The path of the field, e.g. `payload.sizes[0].width`.
    pub field: String,
    /// A stable code clients may match on: `invalid_field`, `missing_field`,
    /// `unknown_field` or `unknown_kind`.
    pub code: &'static str,
    /// For people; may change.
    pub message: String,
}

impl FieldError {
    /// An `invalid_field` error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_code("invalid_field", field, message)
    }

    /// An `invalid_field` error (the same as [`FieldError::new`]; reads better at call sites
    /// that also build other codes).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, message)
    }

    /// An `invalid_field` error for a text of `len` bytes where 1 to `max` are allowed. Such
    /// limits are counted in bytes of UTF-8 (what keys, events and labels are bounded by), so
    /// the message says bytes: text that is not ASCII reaches the limit in fewer characters.
    pub fn byte_length(field: impl Into<String>, max: usize, len: usize) -> Self {
        Self::new(
            field,
            format!("must be 1 to {max} bytes of UTF-8; this one is {len} bytes"),
        )
    }

    /// An error with another stable code.
    pub fn with_code(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }

    /// The same error one level down: `under("then[0]")` turns `kind` into `then[0].kind`.
    #[must_use]
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_builds_paths() {
        assert_eq!(
            FieldError::new("kind", "x").under("then[0]").field,
            "then[0].kind"
        );
        assert_eq!(
            FieldError::new("[2]", "x").under("payload.sizes").field,
            "payload.sizes[2]"
        );
        assert_eq!(FieldError::new("", "x").under("payload").field, "payload");
    }
}
