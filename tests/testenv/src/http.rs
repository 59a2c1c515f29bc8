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

/// One request an [`HttpSink`] received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// A real HTTP server on a free loopback port that answers every request
/// `200` and records it: the far end of a webhook under test.
#[derive(Debug)]
pub struct HttpSink {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl HttpSink {
    pub fn start() -> HttpSink {
        let port = crate::run::free_port();
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the HTTP sink");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = got.clone();
        // Ends with the test process; the listener holds no other resource.
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                if let Some(r) = receive(s) {
                    keep.lock().expect("sink lock").push(r);
                }
            }
        });
        HttpSink { port, got }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().expect("sink lock").clone()
    }
}

fn receive(mut s: TcpStream) -> Option<Received> {
    use std::io::BufRead;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut r = std::io::BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        .ok()?;
    Some(Received {
        method,
        path,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
