//! `monitor` / `monitor_cancel` (RFC 7047 §4.1.5–4.1.7) and the `update` notifications.

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{OvsdbError, Result};

/// What to monitor in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorRequest {
    pub table: String,
    /// Columns to report; empty = all.
    pub columns: Vec<String>,
}

impl MonitorRequest {
    pub fn new(table: &str, columns: &[&str]) -> Self {
        MonitorRequest {
            table: table.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut req =
            json!({"select": {"initial": true, "insert": true, "delete": true, "modify": true}});
        if !self.columns.is_empty() {
            req["columns"] = json!(self.columns);
        }
        req
    }
}

/// `<table-updates>`: table name → row uuid → `{"old": row, "new": row}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableUpdates(pub Value);

/// One row's change. `old` is absent for an insert (and for the initial contents),
/// `new` is absent for a delete. On modify, `old` holds only the changed columns.
#[derive(Debug, Clone, PartialEq)]
pub struct RowUpdate<'a> {
    pub table: &'a str,
    pub uuid: &'a str,
    pub old: Option<&'a Map<String, Value>>,
    pub new: Option<&'a Map<String, Value>>,
}

impl TableUpdates {
    pub fn rows(&self) -> Result<Vec<RowUpdate<'_>>> {
        let bad = || OvsdbError::protocol(format!("malformed table-updates: {}", self.0));
        let tables = self.0.as_object().ok_or_else(bad)?;
        let mut out = Vec::new();
        for (table, rows) in tables {
            for (uuid, change) in rows.as_object().ok_or_else(bad)? {
                out.push(RowUpdate {
                    table,
                    uuid,
                    old: change.get("old").and_then(Value::as_object),
                    new: change.get("new").and_then(Value::as_object),
                });
            }
        }
        Ok(out)
    }
}

/// A running monitor. Dropping it cancels it on the server (without waiting).
#[derive(Debug)]
pub struct Monitor {
    client: Client,
    id: String,
    initial: TableUpdates,
    rx: mpsc::UnboundedReceiver<Value>,
}

impl Monitor {
    pub(crate) fn new(
        client: Client,
        id: String,
        initial: TableUpdates,
        rx: mpsc::UnboundedReceiver<Value>,
    ) -> Self {
        Monitor {
            client,
            id,
            initial,
            rx,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The monitored tables' contents when the monitor started.
    pub fn initial(&self) -> &TableUpdates {
        &self.initial
    }

    /// The next committed change; `Unavailable` once the connection is gone.
    pub async fn next(&mut self) -> Result<TableUpdates> {
        match self.rx.recv().await {
            Some(v) => Ok(TableUpdates(v)),
            None => Err(self.client.closed_error()),
        }
    }

    /// Stops the monitor and waits for the server to confirm.
    pub async fn cancel(mut self) -> Result<()> {
        let id = std::mem::take(&mut self.id);
        self.client.monitor_cancel(&id).await
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            self.client.monitor_forget(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json() {
        let r = MonitorRequest::new("Interface", &["name", "ofport"]).to_json();
        assert_eq!(r["columns"], json!(["name", "ofport"]));
        assert_eq!(r["select"]["modify"], json!(true));
        assert!(MonitorRequest::new("Port", &[])
            .to_json()
            .get("columns")
            .is_none());
    }

    #[test]
    fn parses_table_updates() {
        let u = TableUpdates(json!({
            "Interface": {
                "u1": {"new": {"name": "a", "ofport": 3}, "old": {"ofport": ["set", []]}},
                "u2": {"old": {"name": "b"}}
            }
        }));
        let rows = u.rows().unwrap();
        assert_eq!(rows.len(), 2);
        let u1 = rows.iter().find(|r| r.uuid == "u1").unwrap();
        assert_eq!(u1.table, "Interface");
        assert_eq!(u1.new.unwrap()["ofport"], json!(3));
        let u2 = rows.iter().find(|r| r.uuid == "u2").unwrap();
        assert!(u2.new.is_none());
        assert!(TableUpdates(json!([1])).rows().is_err());
    }
}
