//! Shutdown on SIGTERM (systemd, the kubelet) or SIGINT (a terminal).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The handlers, installed when this is made: a signal that arrives
/// before anyone waits is kept, not given its default action (which would
/// kill the process without its clean-up).
#[derive(Debug)]
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

/// Which signal asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Term,
    Int,
}

impl Shutdown {
    /// Needs a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Term,
            _ = self.int.recv() => Stop::Int,
        }
    }

    /// Installs the handlers and waits; for servers' graceful shutdown.
    pub async fn signalled() -> std::io::Result<Stop> {
        Ok(Self::install()?.recv().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigterm_is_caught_and_named() {
        let mut s = Shutdown::install().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        assert_eq!(s.recv().await, Stop::Term);
    }
}
