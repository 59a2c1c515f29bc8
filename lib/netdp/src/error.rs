use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetdpError {
    /// The network namespace file does not exist.
    #[error("network namespace {0} does not exist")]
    NetnsMissing(PathBuf),
    /// The network namespace file exists but cannot be opened or entered.
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a netlink request.
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// An interface of that name is already there.
    #[error("interface {0} already exists")]
    LinkExists(String),
    /// The interface is not there.
    #[error("interface {0} not found")]
    LinkMissing(String),
    /// Writing a sysctl failed.
    #[error("cannot write sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// Turning transmit checksum offload off failed.
    #[error("cannot set checksum offload of {ifname}: {source}")]
    Ethtool {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    /// Sending gratuitous ARP failed.
    #[error("gratuitous ARP on {ifname}: {source}")]
    Garp {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    /// The helper thread that entered the namespace died.
    #[error("netns helper thread panicked")]
    ThreadPanicked,
}

impl NetdpError {
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink {
            op: op.into(),
            source,
        }
    }

    /// The kernel's errno for a refused netlink request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            _ => None,
        }
    }
}
