//! Client of the lua admin endpoint on 127.0.0.1 (one small request per
//! change; a raw HTTP/1.0 exchange keeps the agent free of an HTTP stack).
//! Every request carries the admin secret: the port is open to every local
//! process, the secret file only to the agent (and nginx's root master).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use leengine_slb::render::{ADMIN_PATH, ADMIN_SECRET_HEADER};

const TIMEOUT: Duration = Duration::from_secs(5);

/// `Debug` by hand: it holds the secret, which must not reach a log.
#[derive(Clone)]
pub struct Admin {
    pub port: u16,
    pub secret: String,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// nginx refused these items (507); the others were stored.
    Refused(Vec<Refusal>),
    Failed(String),
}

/// One item nginx did not store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Item key (`u:{domain}`, `r:{domain}`, `h:{host}`; `-` for the push token).
    pub key: String,
    /// No room in the shared dict (else: the router cannot use the route).
    pub full: bool,
    pub reason: String,
}

impl Admin {
    /// Token of the last full push (`dump` after nginx loaded the dump,
    /// empty after a start without one).
    pub async fn gen(&self) -> Result<String, String> {
        self.get("?only=gen").await
    }

    /// Marker of the config generation the workers answering now run.
    pub async fn generation(&self) -> Result<String, String> {
        self.get("?only=generation").await
    }

    async fn get(&self, query: &str) -> Result<String, String> {
        match self.call("GET", query, "").await? {
            (200, body) => Ok(body.trim().to_string()),
            (status, body) => Err(answered(status, &body)),
        }
    }

    /// `Some(token)`: the body is the whole state, stamped with the token;
    /// `None`: a merge.
    pub async fn post(&self, body: &str, replace: Option<&str>) -> Result<(), PushError> {
        let query = match replace {
            Some(token) => format!("?mode=replace&gen={token}"),
            None => "?mode=merge".to_string(),
        };
        match self.call("POST", &query, body).await {
            Ok((200, _)) => Ok(()),
            Ok((507, body)) => Err(PushError::Refused(parse_refused(&body))),
            Ok((status, body)) => Err(PushError::Failed(answered(status, &body))),
            Err(e) => Err(PushError::Failed(e)),
        }
    }

    /// `(status, body)` of one exchange.
    async fn call(&self, method: &str, query: &str, body: &str) -> Result<(u16, String), String> {
        let exchange = async {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.set_nodelay(true)?;
            let req = format!(
                "{method} {ADMIN_PATH}{query} HTTP/1.0\r\nHost: 127.0.0.1\r\n{ADMIN_SECRET_HEADER}: {}\r\nContent-Length: {}\r\n\r\n{body}",
                self.secret,
                body.len()
            );
            s.write_all(req.as_bytes()).await?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await?;
            Ok::<_, std::io::Error>(resp)
        };
        let resp = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("admin endpoint 127.0.0.1:{} timed out", self.port))?
            .map_err(|e| format!("admin endpoint 127.0.0.1:{}: {e}", self.port))?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_string()))
    }
}

fn answered(status: u16, body: &str) -> String {
    format!("admin endpoint answered {status}: {}", body.trim())
}

/// The 507 body: `full {key} {reason}` (no room) or `refused {key}
/// {reason}` (an unusable route) per item; key `-` is the push token.
fn parse_refused(body: &str) -> Vec<Refusal> {
    body.lines()
        .filter_map(|l| {
            let (full, rest) = match l.split_once(' ')? {
                ("full", rest) => (true, rest),
                ("refused", rest) => (false, rest),
                _ => return None,
            };
            let (key, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            Some(Refusal {
                key: key.to_string(),
                full,
                reason: reason.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_items() {
        let r = |key: &str, full, reason: &str| Refusal {
            key: key.into(),
            full,
            reason: reason.into(),
        };
        assert_eq!(
            parse_refused(
                "full u:a.com no memory\nrefused r:b.com bad regex x\nfull - no memory\n"
            ),
            vec![
                r("u:a.com", true, "no memory"),
                r("r:b.com", false, "bad regex x"),
                r("-", true, "no memory")
            ]
        );
    }
}
