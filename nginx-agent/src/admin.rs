//! Client of the lua admin endpoint on 127.0.0.1 (one small request per
//! change; a raw HTTP/1.0 exchange keeps the agent free of an HTTP stack).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use leengine_slb::render::ADMIN_PATH;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Admin {
    pub port: u16,
}

impl Admin {
    /// Token of the last full push (`dump` after nginx loaded the dump,
    /// empty after a start without one).
    pub async fn gen(&self) -> Result<String, String> {
        Ok(self.call("GET", "?only=gen", "").await?.trim().to_string())
    }

    /// `Some(token)`: the body is the whole state, stamped with the token;
    /// `None`: a merge.
    pub async fn post(&self, body: &str, replace: Option<&str>) -> Result<String, String> {
        let query = match replace {
            Some(token) => format!("?mode=replace&gen={token}"),
            None => "?mode=merge".to_string(),
        };
        self.call("POST", &query, body).await
    }

    async fn call(&self, method: &str, query: &str, body: &str) -> Result<String, String> {
        let exchange = async {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.set_nodelay(true)?;
            let req = format!(
                "{method} {ADMIN_PATH}{query} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
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
        let status = head.split(' ').nth(1).unwrap_or("");
        if status == "200" {
            Ok(body.to_string())
        } else {
            Err(format!("admin endpoint answered {status}: {}", body.trim()))
        }
    }
}
