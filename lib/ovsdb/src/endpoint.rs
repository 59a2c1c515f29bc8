use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::OvsdbError;

/// Where the OVSDB server listens: `unix:/var/run/openvswitch/db.sock` or `tcp:127.0.0.1:6640`
/// (the same spelling as `ovs-vsctl --db`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, resolved at connect time.
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = OvsdbError;

    fn from_str(s: &str) -> Result<Self, OvsdbError> {
        let bad = || OvsdbError::BadAddress(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            // rsplit so that bracketed IPv6 literals ("[::1]:6640") keep their colons.
            let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad());
            }
            return Ok(Endpoint::Tcp(addr.to_string()));
        }
        Err(bad())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            "unix:/run/openvswitch/db.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/openvswitch/db.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:6640".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:6640".into())
        );
        assert_eq!(
            "tcp:[::1]:6640".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:6640".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:6640"
                .parse::<Endpoint>()
                .unwrap()
                .to_string(),
            "tcp:127.0.0.1:6640"
        );
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "unix:",
            "/run/db.sock",
            "tcp:127.0.0.1",
            "tcp::6640",
            "tcp:h:0",
            "tcp:h:x",
            "ssl:h:1",
        ] {
            let err = bad.parse::<Endpoint>().unwrap_err();
            assert!(
                matches!(err, OvsdbError::BadAddress(ref s) if s == bad),
                "{bad}"
            );
        }
    }
}
