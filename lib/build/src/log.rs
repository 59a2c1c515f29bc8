//! The tail of a build log kept in the run record: etcd values should stay
//! small (the default request limit is 1.5 MiB and every status update
//! rewrites the record), while the full log lives on the builder's disk.

/// Default cap on the log kept in etcd.
pub const DEFAULT_LOG_TAIL_BYTES: usize = 32 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundedLog {
    /// The most recent output, at most `max` bytes, cut at a line boundary.
    text: String,
    /// Bytes dropped from the front so far.
    truncated: u64,
    max: usize,
}

impl BoundedLog {
    pub fn new(max: usize) -> Self {
        Self {
            text: String::new(),
            truncated: 0,
            max,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Appends one line (a trailing newline is added) and drops whole lines
    /// from the front until the text fits.
    pub fn push_line(&mut self, line: &str) {
        self.text.push_str(line.trim_end_matches('\n'));
        self.text.push('\n');
        if self.text.len() <= self.max {
            return;
        }
        let excess = (self.text.len() - self.max..=self.text.len())
            .find(|i| self.text.is_char_boundary(*i))
            .unwrap_or(self.text.len());
        // Cut after the first newline at or beyond `excess`; a single line
        // longer than the cap is cut mid-line at a char boundary.
        let cut = match self.text[excess..].find('\n') {
            Some(i) if excess + i + 1 < self.text.len() => excess + i + 1,
            _ => (excess..=self.text.len())
                .find(|i| self.text.is_char_boundary(*i))
                .unwrap_or(self.text.len()),
        };
        self.truncated += cut as u64;
        self.text.drain(..cut);
    }
}

/// Replaces the user-info of every `scheme://user:secret@host` in `text`
/// with `***`: git prints remote URLs in its messages, and a URL someone
/// wrote with a token in it must not reach a run log.
pub fn redact_credentials(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_credentials(
                "fatal: could not read from 'https://bob:glpat-x1@git.example/a.git'"
            ),
            "fatal: could not read from 'https://***@git.example/a.git'"
        );
        assert_eq!(
            redact_credentials("a https://t@h/x and ssh://git@h:22/y b"),
            "a https://***@h/x and ssh://***@h:22/y b"
        );
        assert_eq!(redact_credentials("https://h/x@y"), "https://h/x@y");
        assert_eq!(redact_credentials("no urls"), "no urls");
    }

    #[test]
    fn keeps_the_tail_within_the_cap() {
        let mut log = BoundedLog::new(20);
        for i in 0..10 {
            log.push_line(&format!("line {i}"));
        }
        assert!(log.text.len() <= 20, "{:?}", log.text);
        assert!(log.text.ends_with("line 9\n"));
        assert!(log.text.starts_with("line "), "cut at a line start");
        assert_eq!(
            usize::try_from(log.truncated).unwrap() + log.text.len(),
            10 * 7
        );
    }

    #[test]
    fn one_huge_line_is_cut_at_a_char_boundary() {
        let mut log = BoundedLog::new(10);
        log.push_line(&"é".repeat(20));
        assert!(log.text.len() <= 10);
        assert!(log.text.ends_with('\n'));
    }

    #[test]
    fn small_logs_are_untouched() {
        let mut log = BoundedLog::new(100);
        log.push_line("a\n");
        log.push_line("b");
        assert_eq!(log.text, "a\nb\n");
        assert_eq!(log.truncated, 0);
    }
}
