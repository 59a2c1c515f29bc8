//! One-line errors and the exit statuses they end a binary with.

use std::error::Error;
use std::process::ExitCode;

/// Exit statuses shared by every LeEngine binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    /// The command failed; retrying the same thing fails the same way.
    Failed,
    /// Flags or configuration refused before anything ran.
    Usage,
    /// A service it needs (etcd, the apiserver) could not be reached: retry later.
    Unavailable,
    /// The command ran and found something that needs a human (leaks,
    /// addresses left alone).
    Attention,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unavailable => 3,
            Exit::Attention => 4,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// An error a binary ends with: the status it maps to, known from its type
/// where it was made, and its one-line text.
pub trait Fatal {
    fn exit(&self) -> Exit;
    fn line(&self) -> String;
}

/// Untyped errors are plain failures.
impl Fatal for anyhow::Error {
    fn exit(&self) -> Exit {
        Exit::Failed
    }

    fn line(&self) -> String {
        one_line(self.as_ref())
    }
}

/// An untyped error with the status chosen by the code that raised it.
#[derive(Debug)]
pub struct WithExit(pub Exit, pub anyhow::Error);

impl Fatal for WithExit {
    fn exit(&self) -> Exit {
        self.0
    }

    fn line(&self) -> String {
        self.1.line()
    }
}

/// The error and its causes, `: `-separated on one line. A cause whose text
/// the line already holds is left out: errors that spell out their source
/// (`"cannot read {path}: {e}"`) would otherwise repeat it. An error that
/// summarises its source deliberately does not report it as `source()`.
pub fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        let text = text.trim();
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        cause = c.source();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// clap's first paragraph (what is wrong), without the `error:` label, the
/// usage block and the `--help` hint: one line.
pub fn condense_clap(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let what: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .filter(|l| !l.starts_with("For more information"))
        .collect();
    what.join(" ").trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("connection refused")]
        Refused,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot reach etcd")]
        Connect(#[source] Inner),
        #[error("cannot reach etcd: {0}")]
        Spelled(#[source] Inner),
        #[error("etcd unavailable (refused)")]
        Summary(Inner),
        #[error("line one\n  line two")]
        Multiline,
    }

    #[test]
    fn causes_join_on_one_line() {
        assert_eq!(
            one_line(&Outer::Connect(Inner::Refused)),
            "cannot reach etcd: connection refused"
        );
    }

    #[test]
    fn a_cause_already_spelled_out_is_not_repeated() {
        assert_eq!(
            one_line(&Outer::Spelled(Inner::Refused)),
            "cannot reach etcd: connection refused"
        );
    }

    #[test]
    fn a_summarised_cause_is_not_a_source() {
        assert_eq!(
            one_line(&Outer::Summary(Inner::Refused)),
            "etcd unavailable (refused)"
        );
    }

    #[test]
    fn newlines_and_runs_of_spaces_collapse() {
        assert_eq!(one_line(&Outer::Multiline), "line one line two");
    }

    #[test]
    fn anyhow_context_is_part_of_the_chain() {
        let e = anyhow::Error::new(Outer::Connect(Inner::Refused)).context("starting");
        assert_eq!(e.line(), "starting: cannot reach etcd: connection refused");
        assert_eq!(e.exit(), Exit::Failed);
    }

    #[test]
    fn exit_codes_are_fixed() {
        let all = [
            (Exit::Ok, 0),
            (Exit::Failed, 1),
            (Exit::Usage, 2),
            (Exit::Unavailable, 3),
            (Exit::Attention, 4),
        ];
        for (exit, code) in all {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
        let e = WithExit(Exit::Usage, anyhow::anyhow!("--port 0 is not a port"));
        assert_eq!(
            (e.exit(), e.line()),
            (Exit::Usage, "--port 0 is not a port".into())
        );
    }

    #[derive(clap::Parser, Debug)]
    struct Flags {
        #[arg(long)]
        group: String,
    }

    #[test]
    fn clap_errors_condense_to_what_is_wrong() {
        use clap::Parser;
        let e = Flags::try_parse_from(["t"]).unwrap_err();
        let line = condense_clap(&e);
        assert!(line.contains("--group"), "{line}");
        assert!(
            !line.contains("Usage") && !line.contains('\n') && !line.starts_with("error"),
            "{line}"
        );
        let e = Flags::try_parse_from(["t", "--grop", "x"]).unwrap_err();
        let line = condense_clap(&e);
        assert!(line.contains("'--grop'"), "{line}");
        assert!(!line.contains("--help"), "{line}");
    }
}
