//! A byte buffer that refuses to grow past a limit, for what renders templates (a
//! notification's email parts, an event-bus subscription's payload in the shell): a template
//! looping over its data fails at the limit instead of filling memory.

/// An in-memory [`Write`](std::io::Write) that fails once a write would take it past `limit`
/// bytes, and remembers that it did ([`Capped::over`]), so that the caller can tell that
/// failure from the template's own.
#[derive(Debug)]
pub struct Capped {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl Capped {
    /// An empty buffer that holds at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            over: false,
        }
    }

    /// Whether a write was refused for passing the limit.
    pub fn over(&self) -> bool {
        self.over
    }

    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("the rendered text is too large"));
        }
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::Capped;

    #[test]
    fn writes_up_to_the_limit_then_refuses() {
        let mut c = Capped::new(5);
        assert!(c.write_all(b"abc").is_ok());
        assert!(c.write_all(b"de").is_ok());
        assert!(!c.over());
        assert!(c.write_all(b"f").is_err());
        assert!(c.over());
        assert_eq!(c.into_inner(), b"abcde");
    }
}
