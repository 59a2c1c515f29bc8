//! A blocking HTTP/1.0 exchange on loopback, for tests that observe a
//! service's HTTP API (Prometheus, Alertmanager, agents' /metrics).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `(status, body)`; `None` when nothing answered. The body is a form.
pub fn http(method: &str, port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    exchange(
        method,
        port,
        path,
        "application/x-www-form-urlencoded",
        body,
    )
}

/// Like [`http`] with a JSON body.
pub fn http_json(method: &str, port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    exchange(method, port, path, "application/json", body)
}

fn exchange(
    method: &str,
    port: u16,
    path: &str,
    content_type: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Percent-encoding of a form value.
pub fn form(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
