//! `tracing` set up the same way in every binary: to stderr (stdout is for
//! results), filtered by an environment variable, text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line (journald, log shippers).
    Json,
}

/// Log settings; `Logs::default()` is `RUST_LOG`, else `info`, as text.
#[derive(Debug, Clone)]
pub struct Logs {
    /// Variable holding the filter (`RUST_LOG` syntax).
    pub env: &'static str,
    /// Filter when the variable is unset or invalid.
    pub default: &'static str,
    pub format: LogFormat,
}

impl Default for Logs {
    fn default() -> Self {
        Self {
            env: "RUST_LOG",
            default: "info",
            format: LogFormat::Text,
        }
    }
}

impl Logs {
    pub fn filter(&self) -> EnvFilter {
        EnvFilter::try_from_env(self.env).unwrap_or_else(|_| EnvFilter::new(self.default))
    }

    /// Installs the subscriber; a second call (tests) leaves the first in place.
    pub fn init(&self) {
        let b = tracing_subscriber::fmt()
            .with_env_filter(self.filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        let _ = match self.format {
            LogFormat::Json => b.json().flatten_event(true).try_init(),
            LogFormat::Text => b.try_init(),
        };
    }
}
