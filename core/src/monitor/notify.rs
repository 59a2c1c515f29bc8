//! Alertmanager's webhook → the app's activity feed and its current Owners
//! and Masters (e-mail over SMTP, and/or each user's own webhook).
//!
//! Alertmanager repeats notifications and several core replicas may each
//! get one; the last notified state of every alert (its fingerprint) is
//! kept in etcd and changed by compare-and-swap, so each firing and each
//! resolution reaches every recipient once.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use etcd_client::TxnOp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::alerts::{APP_LABEL, DEFAULT_LABEL, RULE_LABEL};
use crate::access::{Kind, Member, Role};
use crate::activity;
use crate::auth::{constant_time_eq, credentials, Caller, Credentials};
use crate::problem::{ApiError, Json};
use crate::server::Core;
use crate::store::{self, Db};
use crate::users::User;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to reach one user: `{prefix}/core/notify/{user}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `http://host:port/path`; gets a JSON POST per notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// An address SMTP and a mail header can carry as is.
pub fn valid_email(e: &str) -> bool {
    e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !d.starts_with('.') && !d.ends_with('.')
        })
        && e.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b',' | b'"' | b'\\'))
}

/// `(host:port, path)` of a plain-HTTP webhook URL.
pub fn parse_webhook(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = hostport.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let clean = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    (!host.is_empty() && clean(hostport) && clean(path))
        .then(|| (hostport.to_string(), path.to_string()))
}

pub fn router() -> Router<Core> {
    Router::new()
        .route("/api/v1/monitor/alertmanager", post(receive))
        .route(
            "/api/v1/user/notifications",
            get(show_contact).put(set_contact),
        )
}

async fn show_contact(State(core): State<Core>, caller: Caller) -> Result<Json<Contact>, ApiError> {
    let c = core
        .db
        .get::<Contact>(&core.db.keys.core_notify(&caller.user))
        .await?;
    Ok(Json(c.map(|c| c.value).unwrap_or_default()))
}

async fn set_contact(
    State(core): State<Core>,
    caller: Caller,
    Json(c): Json<Contact>,
) -> Result<Json<Contact>, ApiError> {
    if let Some(e) = c.email.as_deref().filter(|e| !valid_email(e)) {
        return Err(ApiError::bad_request(
            "invalid_contact",
            format!("email: {e:?} is not an e-mail address"),
        ));
    }
    if let Some(w) = c.webhook.as_deref().filter(|w| parse_webhook(w).is_none()) {
        return Err(ApiError::bad_request(
            "invalid_contact",
            format!("webhook: {w:?} is not http://host:port/path"),
        ));
    }
    let key = core.db.keys.core_notify(&caller.user);
    // No compare: the caller's own record, last write wins.
    let _ = core.db.commit(vec![], vec![store::put(&key, &c)]).await?;
    Ok(Json(c))
}

/// Alertmanager's webhook payload (version 4), the parts used.
#[derive(Debug, Deserialize)]
pub struct Payload {
    pub alerts: Vec<Alert>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    pub fingerprint: String,
}

async fn receive(
    State(core): State<Core>,
    headers: HeaderMap,
    Json(p): Json<Payload>,
) -> Result<StatusCode, ApiError> {
    let Some(secret) = core.settings.monitor.webhook_secret.as_deref() else {
        return Err(ApiError::not_found(
            "alerts_disabled",
            "the Alertmanager webhook is not configured",
        ));
    };
    match credentials(&headers)? {
        Some(Credentials::Bearer(t)) if constant_time_eq(t.as_bytes(), secret.as_bytes()) => {}
        _ => return Err(ApiError::unauthorized()),
    }
    for a in &p.alerts {
        handle(&core, a).await?;
    }
    Ok(StatusCode::OK)
}

/// An alert's app: its rule's label, else the app whose namespace it is in.
async fn app_of(db: &Db, a: &Alert) -> Result<Option<String>, ApiError> {
    if let Some(app) = a.labels.get(APP_LABEL) {
        return Ok(Some(app.clone()));
    }
    let Some(ns) = a.labels.get("namespace") else {
        return Ok(None);
    };
    Ok(crate::deploy::spec::all(db)
        .await?
        .into_iter()
        .find(|s| &s.namespace == ns)
        .map(|s| s.name))
}

fn key_safe(f: &str) -> bool {
    !f.is_empty() && f.len() <= 64 && f.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Who hears of an alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The app's current Owners and Masters (and its activity feed).
    App(String),
    /// The Region's administrators: a default alert that belongs to no app
    /// (a node's swap guard, a container outside every app swapping).
    Admins,
    /// Logged only.
    Nobody,
}

/// Pure: `app` is the app [`app_of`] found for the alert.
pub fn audience(a: &Alert, app: Option<String>) -> Audience {
    match app {
        Some(app) => Audience::App(app),
        None if a.labels.contains_key(DEFAULT_LABEL) => Audience::Admins,
        None => Audience::Nobody,
    }
}

async fn handle(core: &Core, a: &Alert) -> Result<(), ApiError> {
    let firing = match a.status.as_str() {
        "firing" => true,
        "resolved" => false,
        other => {
            tracing::warn!(status = other, "alert with an unknown status ignored");
            return Ok(());
        }
    };
    if !key_safe(&a.fingerprint) {
        tracing::warn!(fingerprint = %a.fingerprint, "alert with a bad fingerprint ignored");
        return Ok(());
    }
    let db = &core.db;
    let who = audience(a, app_of(db, a).await?);
    let key = match &who {
        Audience::App(app) => db.keys.core_alert_state(app, &a.fingerprint),
        Audience::Admins => db.keys.core_region_alert_state(&a.fingerprint),
        Audience::Nobody => {
            tracing::warn!(labels = ?a.labels, status = %a.status, "alert of no app: logged only");
            return Ok(());
        }
    };
    let seen = db.get::<Value>(&key).await?;
    let (compare, op) = match (&seen, firing) {
        (Some(s), true) if s.value["startsAt"] == a.starts_at.as_str() => return Ok(()),
        (None, false) => return Ok(()),
        (s, true) => (
            store::unchanged(&key, s.as_ref().map(|s| s.mod_revision)),
            store::put(&key, &json!({ "startsAt": a.starts_at })),
        ),
        (Some(s), false) => (
            store::unchanged(&key, Some(s.mod_revision)),
            store::delete(&key),
        ),
    };
    let mut ops: Vec<TxnOp> = vec![op];
    if let Audience::App(app) = &who {
        let action = if firing {
            "alert_firing"
        } else {
            "alert_resolved"
        };
        let ev = activity::event("alertmanager", action, json!({ "alert": a }));
        ops.push(activity::op(&db.keys, Kind::App, app, &ev));
    }
    if !db.commit(vec![compare], ops).await?.applied() {
        // Another replica recorded this transition and notifies.
        return Ok(());
    }
    let (subject_app, recipients) = match &who {
        Audience::App(app) => (app.as_str(), recipients(db, app).await?),
        _ => ("region", admins(db).await?),
    };
    tracing::info!(audience = ?who, status = %a.status, recipients = ?recipients.iter().map(|r| &r.0).collect::<Vec<_>>(), "alert");
    for (user, contact) in recipients {
        deliver(core, subject_app, a, &user, &contact).await;
    }
    Ok(())
}

/// The Region's administrators (users with the admin flag) with their contacts.
async fn admins(db: &Db) -> Result<Vec<(String, Contact)>, ApiError> {
    let users = db.list::<User>(&db.keys.core_users_prefix()).await?;
    let mut out = Vec::new();
    for (_, u) in users.into_iter().filter(|(_, u)| u.admin) {
        let c = db.get::<Contact>(&db.keys.core_notify(&u.name)).await?;
        out.push((u.name, c.map(|c| c.value).unwrap_or_default()));
    }
    Ok(out)
}

/// Current Owners and Masters with their contacts.
async fn recipients(db: &Db, app: &str) -> Result<Vec<(String, Contact)>, ApiError> {
    let members = db
        .list::<Member>(&db.keys.core_members_prefix(Kind::App.as_str(), app))
        .await?;
    let mut out = Vec::new();
    for (_, m) in members.into_iter().filter(|(_, m)| m.role >= Role::Master) {
        let c = db.get::<Contact>(&db.keys.core_notify(&m.user)).await?;
        out.push((m.user, c.map(|c| c.value).unwrap_or_default()));
    }
    Ok(out)
}

async fn deliver(core: &Core, app: &str, a: &Alert, user: &str, c: &Contact) {
    let m = &core.settings.monitor;
    let subject = format!(
        "[{}] {app}: {}",
        a.status,
        a.labels
            .get(RULE_LABEL)
            .or(a.labels.get("alertname"))
            .map_or("alert", String::as_str)
    );
    let text = format!(
        "App: {app}\nStatus: {}\nSince: {}\nSummary: {}\nValue: {}\nLabels: {}\n",
        a.status,
        a.starts_at,
        a.annotations.get("summary").map_or("", String::as_str),
        a.annotations.get("value").map_or("", String::as_str),
        serde_json::to_string(&a.labels).unwrap_or_default()
    );
    if let (Some(to), Some(smtp)) = (&c.email, &m.smtp) {
        if let Err(e) = send_mail(smtp, &m.mail_from, to, &subject, &text).await {
            tracing::warn!(%user, %to, error = %e, "alert e-mail not sent");
        }
    }
    if let Some(url) = &c.webhook {
        let body = json!({ "app": app, "user": user, "alert": a }).to_string();
        if let Err(e) = post_webhook(url, &body).await {
            tracing::warn!(%user, %url, error = %e, "alert webhook not delivered");
        }
    }
}

async fn reply<R: AsyncBufReadExt + Unpin>(r: &mut R, want: u16) -> Result<(), String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("SMTP server closed the connection".into());
        }
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        return if code == want {
            Ok(())
        } else {
            Err(format!("SMTP: {}", line.trim_end()))
        };
    }
}

/// One message over plain SMTP (a relay on loopback or the management network).
pub async fn send_mail(
    server: &str,
    from: &str,
    to: &str,
    subject: &str,
    text: &str,
) -> Result<(), String> {
    let talk = async {
        let s = TcpStream::connect(server)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        reply(&mut r, 220).await?;
        for (cmd, want) in [
            ("EHLO leengine-core".to_string(), 250),
            (format!("MAIL FROM:<{from}>"), 250),
            (format!("RCPT TO:<{to}>"), 250),
            ("DATA".to_string(), 354),
        ] {
            w.write_all(format!("{cmd}\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            reply(&mut r, want).await?;
        }
        let body: String = text
            .lines()
            .map(|l| {
                if l.starts_with('.') {
                    format!(".{l}\r\n")
                } else {
                    format!("{l}\r\n")
                }
            })
            .collect();
        let msg = format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: {}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}.\r\n",
            subject.replace(['\r', '\n'], " "),
            chrono::Utc::now().to_rfc2822()
        );
        w.write_all(msg.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        reply(&mut r, 250).await?;
        let _ = w.write_all(b"QUIT\r\n").await;
        Ok::<_, String>(())
    };
    tokio::time::timeout(TIMEOUT, talk)
        .await
        .map_err(|_| format!("SMTP {server} timed out"))?
}

async fn post_webhook(url: &str, body: &str) -> Result<(), String> {
    let (hostport, path) = parse_webhook(url).ok_or("not http://host:port/path")?;
    let talk = async {
        let mut s = TcpStream::connect(&hostport)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&resp);
        match head.split(' ').nth(1) {
            Some(c) if c.starts_with('2') => Ok(()),
            _ => Err(format!(
                "answered {}",
                head.lines().next().unwrap_or("nothing")
            )),
        }
    };
    tokio::time::timeout(TIMEOUT, talk)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(labels: &[(&str, &str)]) -> Alert {
        Alert {
            status: "firing".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: Default::default(),
            starts_at: String::new(),
            ends_at: String::new(),
            fingerprint: "f1".into(),
        }
    }

    #[test]
    fn default_alerts_of_no_app_go_to_the_admins() {
        let guard = alert(&[
            ("alertname", "LeengineSwapGuardUnconstrained"),
            (DEFAULT_LABEL, "swap_guard"),
            ("node", "n1"),
        ]);
        assert_eq!(audience(&guard, None), Audience::Admins);
        let swapping = alert(&[(DEFAULT_LABEL, "swap"), ("namespace", "web-u1")]);
        assert_eq!(
            audience(&swapping, Some("web".into())),
            Audience::App("web".into()),
            "a container of an app swapping: the app's Owners and Masters"
        );
        assert_eq!(audience(&swapping, None), Audience::Admins);
        let stray = alert(&[("alertname", "SomethingElse")]);
        assert_eq!(audience(&stray, None), Audience::Nobody);
    }

    #[test]
    fn contacts_are_checked() {
        assert!(valid_email("ops@example.com"));
        assert!(!valid_email("ops@example.com>\r\nRCPT TO:<x@y"));
        assert!(!valid_email("no-at"));
        assert_eq!(
            parse_webhook("http://127.0.0.1:8000/hook"),
            Some(("127.0.0.1:8000".into(), "/hook".into()))
        );
        assert_eq!(
            parse_webhook("http://h:1"),
            Some(("h:1".into(), "/".into()))
        );
        assert_eq!(parse_webhook("https://h:1/x"), None);
        assert_eq!(parse_webhook("http://h/x"), None);
        assert_eq!(parse_webhook("http://h:1/a b"), None);
    }
}
