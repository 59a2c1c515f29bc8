//! A small client of Prometheus' HTTP API (query_range, reload). One
//! HTTP/1.0 exchange per call: Prometheus answers 1.0 without chunking and
//! closes, so no HTTP stack is needed here.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::problem::ApiError;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Prometheus at `host:port` (plain HTTP, normally on loopback or the
/// management network).
#[derive(Clone, Debug)]
pub struct Prometheus {
    pub addr: String,
}

/// One series of a range query.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub labels: std::collections::BTreeMap<String, String>,
    /// `[unix seconds, value]`.
    pub points: Vec<(f64, f64)>,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Matrix>,
}

/// A range query's series (`values`) or an instant query's (`value`).
#[derive(Deserialize)]
struct Matrix {
    metric: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// `application/x-www-form-urlencoded` of one value.
pub fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Prometheus {
    pub async fn query_range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: u64,
    ) -> Result<Vec<Series>, ApiError> {
        let body = format!(
            "query={}&start={start}&end={end}&step={step}",
            form_escape(query)
        );
        self.series("/api/v1/query_range", &body).await
    }

    /// An instant query: each series with its one point.
    pub async fn query(&self, query: &str) -> Result<Vec<Series>, ApiError> {
        let body = format!("query={}", form_escape(query));
        self.series("/api/v1/query", &body).await
    }

    async fn series(&self, path: &str, body: &str) -> Result<Vec<Series>, ApiError> {
        let (status, text) = self.call("POST", path, body).await?;
        let a: Answer = serde_json::from_str(&text).map_err(|e| {
            ApiError::unavailable(format!("Prometheus answered {status} with no JSON: {e}"))
        })?;
        if a.status != "success" {
            return Err(ApiError::unavailable(format!(
                "Prometheus refused the query: {}",
                a.error.unwrap_or_default()
            )));
        }
        Ok(a.data
            .map(|d| d.result)
            .unwrap_or_default()
            .into_iter()
            .map(|m| Series {
                labels: m.metric,
                points: m
                    .values
                    .into_iter()
                    .chain(m.value)
                    .filter_map(|(t, v)| Some((t, v.parse().ok()?)))
                    .collect(),
            })
            .collect())
    }

    /// `POST /-/reload` (Prometheus runs with `--web.enable-lifecycle`).
    pub async fn reload(&self) -> Result<(), ApiError> {
        match self.call("POST", "/-/reload", "").await? {
            (200, _) => Ok(()),
            (s, body) => Err(ApiError::unavailable(format!(
                "Prometheus reload answered {s}: {}",
                body.trim()
            ))),
        }
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> Result<(u16, String), ApiError> {
        let exchange = async {
            let mut s = TcpStream::connect(&self.addr).await?;
            let req = format!(
                "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                self.addr,
                body.len()
            );
            s.write_all(req.as_bytes()).await?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await?;
            Ok::<_, std::io::Error>(resp)
        };
        let resp = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::unavailable(format!("Prometheus {} timed out", self.addr)))?
            .map_err(|e| ApiError::unavailable(format!("Prometheus {}: {e}", self.addr)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(form_escape("a b{x=\"1\"}&c"), "a%20b%7Bx%3D%221%22%7D%26c");
    }
}
