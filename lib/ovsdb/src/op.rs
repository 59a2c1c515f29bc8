//! Transaction operations (RFC 7047 §5.2) and their results.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{OvsdbError, Result};

/// One operation of a `transact` request.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    json: Value,
}

/// A `where` clause element: `[column, function, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond(Value);

/// A `mutate` element: `[column, mutator, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation(Value);

/// When a `wait` operation is satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The selected rows equal the given rows.
    Equal,
    /// The selected rows differ from the given rows.
    NotEqual,
}

impl Cond {
    /// A condition with any RFC 7047 function (`==`, `!=`, `<`, `includes`, `excludes`...).
    pub fn new(column: &str, function: &str, value: Value) -> Self {
        Cond(json!([column, function, value]))
    }
    pub fn eq(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, "==", value.into())
    }
    pub fn ne(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, "!=", value.into())
    }
    /// The column (set or map) contains every element of `value`.
    pub fn includes(column: &str, value: Value) -> Self {
        Self::new(column, "includes", value)
    }
    pub fn excludes(column: &str, value: Value) -> Self {
        Self::new(column, "excludes", value)
    }
}

impl Mutation {
    /// A mutation with any RFC 7047 mutator (`+=`, `-=`, `insert`, `delete`...).
    pub fn new(column: &str, mutator: &str, value: Value) -> Self {
        Mutation(json!([column, mutator, value]))
    }
    /// Add the elements of a set or the pairs of a map (existing map keys are kept).
    pub fn insert(column: &str, value: Value) -> Self {
        Self::new(column, "insert", value)
    }
    /// Remove set elements, or map entries by key (a set of keys) or by pair (a map).
    pub fn delete(column: &str, value: Value) -> Self {
        Self::new(column, "delete", value)
    }
}

fn conds_json(conds: Vec<Cond>) -> Value {
    Value::Array(conds.into_iter().map(|c| c.0).collect())
}

fn columns_json(columns: &[&str]) -> Value {
    Value::Array(columns.iter().map(|c| json!(c)).collect())
}

impl Op {
    pub fn insert(table: &str, row: Value) -> Self {
        Op {
            json: json!({"op": "insert", "table": table, "row": row}),
        }
    }

    /// An insert whose new row can be referred to later in the same transaction as
    /// `datum::named_uuid(uuid_name)`.
    pub fn insert_named(table: &str, row: Value, uuid_name: &str) -> Self {
        Op {
            json: json!({"op": "insert", "table": table, "row": row, "uuid-name": uuid_name}),
        }
    }

    /// Select rows; an empty `columns` slice selects every column.
    pub fn select(table: &str, conds: Vec<Cond>, columns: &[&str]) -> Self {
        let mut json = json!({"op": "select", "table": table, "where": conds_json(conds)});
        if !columns.is_empty() {
            json["columns"] = columns_json(columns);
        }
        Op { json }
    }

    pub fn update(table: &str, conds: Vec<Cond>, row: Value) -> Self {
        Op {
            json: json!({"op": "update", "table": table, "where": conds_json(conds), "row": row}),
        }
    }

    pub fn mutate(table: &str, conds: Vec<Cond>, mutations: Vec<Mutation>) -> Self {
        let mutations: Vec<Value> = mutations.into_iter().map(|m| m.0).collect();
        Op {
            json: json!({"op": "mutate", "table": table, "where": conds_json(conds), "mutations": mutations}),
        }
    }

    pub fn delete(table: &str, conds: Vec<Cond>) -> Self {
        Op {
            json: json!({"op": "delete", "table": table, "where": conds_json(conds)}),
        }
    }

    /// Block the transaction until the selected `columns` of the rows matching `conds`
    /// compare (`until`) with `rows`, or fail it with "timed out" after `timeout`
    /// (`None` waits forever; `Some(ZERO)` turns it into a precondition check).
    pub fn wait(
        table: &str,
        conds: Vec<Cond>,
        columns: &[&str],
        until: Until,
        rows: Vec<Value>,
        timeout: Option<Duration>,
    ) -> Self {
        let until = match until {
            Until::Equal => "==",
            Until::NotEqual => "!=",
        };
        let mut json = json!({
            "op": "wait", "table": table, "where": conds_json(conds),
            "columns": columns_json(columns), "until": until, "rows": rows,
        });
        if let Some(t) = timeout {
            json["timeout"] = json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        }
        Op { json }
    }

    /// Fails the transaction unless no row matches `conds` (precondition, no waiting).
    pub fn assert_absent(table: &str, conds: Vec<Cond>) -> Self {
        Self::wait(
            table,
            conds,
            &[],
            Until::Equal,
            vec![],
            Some(Duration::ZERO),
        )
    }

    /// Fails the transaction unless at least one row matches `conds`.
    pub fn assert_present(table: &str, conds: Vec<Cond>) -> Self {
        Self::wait(
            table,
            conds,
            &[],
            Until::NotEqual,
            vec![],
            Some(Duration::ZERO),
        )
    }

    /// Recorded in the server's log with the transaction.
    pub fn comment(text: &str) -> Self {
        Op {
            json: json!({"op": "comment", "comment": text}),
        }
    }

    /// "insert Port", "wait Bridge", "comment": used in error messages.
    pub fn label(&self) -> String {
        let op = self.json["op"].as_str().unwrap_or("?");
        match self.json["table"].as_str() {
            Some(t) => format!("{op} {t}"),
            None => op.to_string(),
        }
    }

    pub fn to_json(&self) -> &Value {
        &self.json
    }

    pub(crate) fn into_json(self) -> Value {
        self.json
    }
}

/// The result of one successful operation.
#[derive(Debug, Clone, PartialEq)]
pub struct OpResult(pub Value);

impl OpResult {
    /// Rows of a `select`.
    pub fn rows(&self) -> Result<&[Value]> {
        self.0
            .get("rows")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .ok_or_else(|| OvsdbError::protocol(format!("result without rows: {}", self.0)))
    }

    /// The new row's uuid of an `insert`.
    pub fn uuid(&self) -> Result<&str> {
        self.0
            .get("uuid")
            .ok_or_else(|| OvsdbError::protocol(format!("result without uuid: {}", self.0)))
            .and_then(crate::datum::as_uuid)
    }

    /// Rows touched by `update`, `mutate` or `delete`.
    pub fn count(&self) -> Result<u64> {
        self.0
            .get("count")
            .and_then(Value::as_u64)
            .ok_or_else(|| OvsdbError::protocol(format!("result without count: {}", self.0)))
    }
}

/// Turns a `transact` reply into per-operation results, mapping the first failure
/// (an operation error, or the extra trailing commit error) to `OvsdbError::Operation`.
pub(crate) fn parse_results(labels: &[String], reply: Value) -> Result<Vec<OpResult>> {
    let Value::Array(items) = reply else {
        return Err(OvsdbError::protocol(format!(
            "transact result is not an array: {reply}"
        )));
    };
    for (index, item) in items.iter().enumerate() {
        let Some(err) = item.get("error") else {
            continue;
        };
        if err.is_null() {
            continue;
        }
        let (index, op) = match labels.get(index) {
            Some(label) => (Some(index), format!("op {index} ({label})")),
            None => (None, "commit".to_string()),
        };
        return Err(OvsdbError::Operation {
            index,
            op,
            error: err.as_str().unwrap_or("unknown").to_string(),
            details: item
                .get("details")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    if items.len() < labels.len() {
        return Err(OvsdbError::protocol(format!(
            "transact returned {} results for {} operations",
            items.len(),
            labels.len()
        )));
    }
    Ok(items.into_iter().take(labels.len()).map(OpResult).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum;

    #[test]
    fn builds_rfc7047_operations() {
        let op = Op::select("Bridge", vec![Cond::eq("name", "br0")], &["_uuid", "ports"]);
        assert_eq!(
            op.to_json(),
            &json!({"op": "select", "table": "Bridge", "where": [["name", "==", "br0"]], "columns": ["_uuid", "ports"]})
        );
        assert!(Op::select("Port", vec![], &[])
            .to_json()
            .get("columns")
            .is_none());

        let op = Op::mutate(
            "Bridge",
            vec![Cond::eq("_uuid", datum::uuid("u"))],
            vec![Mutation::insert(
                "ports",
                datum::set([datum::named_uuid("p")]),
            )],
        );
        assert_eq!(
            op.to_json(),
            &json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", "u"]]],
                    "mutations": [["ports", "insert", ["set", [["named-uuid", "p"]]]]]})
        );
        assert_eq!(op.label(), "mutate Bridge");

        let op = Op::insert_named("Port", json!({"name": "p"}), "port");
        assert_eq!(op.to_json()["uuid-name"], "port");

        let op = Op::wait(
            "Interface",
            vec![Cond::eq("name", "v")],
            &["ofport"],
            Until::NotEqual,
            vec![json!({"ofport": ["set", []]})],
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(
            op.to_json(),
            &json!({"op": "wait", "table": "Interface", "where": [["name", "==", "v"]], "columns": ["ofport"],
                    "until": "!=", "rows": [{"ofport": ["set", []]}], "timeout": 1500})
        );
        assert_eq!(Op::assert_absent("Port", vec![]).to_json()["timeout"], 0);
        assert_eq!(Op::comment("x").label(), "comment");
    }

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("insert T{i}")).collect()
    }

    #[test]
    fn parses_success() {
        let r = parse_results(
            &labels(3),
            json!([{"uuid": ["uuid", "u1"]}, {"count": 1}, {"rows": [{"name": "a"}]}]),
        )
        .unwrap();
        assert_eq!(r[0].uuid().unwrap(), "u1");
        assert_eq!(r[1].count().unwrap(), 1);
        assert_eq!(r[2].rows().unwrap().len(), 1);
        assert!(r[0].rows().is_err());
    }

    #[test]
    fn maps_operation_error() {
        let err = parse_results(
            &labels(3),
            json!([{}, {"error": "timed out", "details": "\"wait\" timed out"}, null]),
        )
        .unwrap_err();
        match err {
            OvsdbError::Operation {
                index,
                ref op,
                ref error,
                ref details,
            } => {
                assert_eq!(index, Some(1));
                assert_eq!(op, "op 1 (insert T1)");
                assert_eq!(error, "timed out");
                assert_eq!(details.as_deref(), Some("\"wait\" timed out"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn maps_commit_error_beyond_the_operations() {
        let err = parse_results(
            &labels(1),
            json!([{"uuid": ["uuid", "u"]}, {"error": "constraint violation", "details": "duplicate name"}]),
        )
        .unwrap_err();
        assert!(err.is_constraint_violation());
        assert!(matches!(err, OvsdbError::Operation { index: None, .. }));
        assert!(
            err.to_string()
                .contains("commit: constraint violation: duplicate name"),
            "{err}"
        );
    }

    #[test]
    fn rejects_short_or_odd_replies() {
        assert!(matches!(
            parse_results(&labels(2), json!([{}])),
            Err(OvsdbError::Protocol(_))
        ));
        assert!(matches!(
            parse_results(&labels(1), json!({})),
            Err(OvsdbError::Protocol(_))
        ));
    }
}
