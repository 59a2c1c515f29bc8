//! RFC 7047 §5.1 value notation: atoms, `["set", [...]]`, `["map", [[k, v], ...]]`,
//! `["uuid", "..."]` and `["named-uuid", "..."]`, in both directions.
//!
//! A column with min 0 / max 1 is an "optional": the empty set when absent, the bare atom
//! when present. A one-element set may also be sent as the bare atom, which the server does.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{OvsdbError, Result};

/// `["uuid", id]`: a reference to an existing row.
pub fn uuid(id: &str) -> Value {
    json!(["uuid", id])
}

/// `["named-uuid", name]`: a reference to a row inserted earlier in the same transaction.
pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// `["set", [items...]]`.
pub fn set<I, T>(items: I) -> Value
where
    I: IntoIterator<Item = T>,
    T: Into<Value>,
{
    json!([
        "set",
        items.into_iter().map(Into::into).collect::<Vec<Value>>()
    ])
}

/// The empty set, i.e. an unset optional column.
pub fn empty_set() -> Value {
    json!(["set", []])
}

/// An optional column: the atom, or the empty set for `None`.
pub fn optional<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or_else(empty_set, Into::into)
}

/// `["map", [[k, v], ...]]`.
pub fn map<I, K, V>(pairs: I) -> Value
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<Value>,
    V: Into<Value>,
{
    let pairs: Vec<Value> = pairs
        .into_iter()
        .map(|(k, v)| Value::Array(vec![k.into(), v.into()]))
        .collect();
    json!(["map", pairs])
}

fn tagged<'a>(v: &'a Value, tag: &str) -> Option<&'a Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(t), inner]) if t == tag => Some(inner),
        _ => None,
    }
}

/// The elements of a set-valued datum (a bare atom counts as a one-element set).
pub fn set_items(v: &Value) -> Result<Vec<&Value>> {
    match tagged(v, "set") {
        Some(Value::Array(items)) => Ok(items.iter().collect()),
        Some(other) => Err(OvsdbError::protocol(format!("set without array: {other}"))),
        None if tagged(v, "map").is_some() => {
            Err(OvsdbError::protocol(format!("map where set expected: {v}")))
        }
        None => Ok(vec![v]),
    }
}

/// The pairs of a map-valued datum.
pub fn map_pairs(v: &Value) -> Result<Vec<(&Value, &Value)>> {
    let bad = || OvsdbError::protocol(format!("not a map: {v}"));
    let items = tagged(v, "map").and_then(Value::as_array).ok_or_else(bad)?;
    items
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([k, v]) => Ok((k, v)),
            _ => Err(bad()),
        })
        .collect()
}

/// The id of a `["uuid", id]` atom.
pub fn as_uuid(v: &Value) -> Result<&str> {
    tagged(v, "uuid")
        .and_then(Value::as_str)
        .ok_or_else(|| OvsdbError::protocol(format!("not a uuid: {v}")))
}

/// A string→string map column (external_ids, other_config, status...).
pub fn string_map(v: &Value) -> Result<BTreeMap<String, String>> {
    map_pairs(v)?
        .into_iter()
        .map(|(k, v)| match (k.as_str(), v.as_str()) {
            (Some(k), Some(v)) => Ok((k.to_string(), v.to_string())),
            _ => Err(OvsdbError::protocol(format!(
                "non-string map entry {k}: {v}"
            ))),
        })
        .collect()
}

/// A set of uuids (references).
pub fn uuid_set(v: &Value) -> Result<Vec<String>> {
    set_items(v)?
        .into_iter()
        .map(|u| as_uuid(u).map(str::to_string))
        .collect()
}

/// A set of integers.
pub fn int_set(v: &Value) -> Result<Vec<i64>> {
    set_items(v)?
        .into_iter()
        .map(|i| {
            i.as_i64()
                .ok_or_else(|| OvsdbError::protocol(format!("not an integer: {i}")))
        })
        .collect()
}

/// An optional integer column.
pub fn optional_int(v: &Value) -> Result<Option<i64>> {
    Ok(int_set(v)?.first().copied())
}

/// An optional string column.
pub fn optional_string(v: &Value) -> Result<Option<String>> {
    let items = set_items(v)?;
    match items.first() {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(OvsdbError::protocol(format!("not a string: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(uuid("abc"), json!(["uuid", "abc"]));
        assert_eq!(named_uuid("p"), json!(["named-uuid", "p"]));
        assert_eq!(set([1, 2]), json!(["set", [1, 2]]));
        assert_eq!(set(Vec::<Value>::new()), json!(["set", []]));
        assert_eq!(optional(Some(7)), json!(7));
        assert_eq!(optional::<i64>(None), json!(["set", []]));
        assert_eq!(
            map([("a", "1"), ("b", "2")]),
            json!(["map", [["a", "1"], ["b", "2"]]])
        );
        assert_eq!(set([uuid("u1")]), json!(["set", [["uuid", "u1"]]]));
    }

    #[test]
    fn decodes_sets_and_bare_atoms() {
        assert_eq!(int_set(&json!(["set", [10, 20]])).unwrap(), vec![10, 20]);
        assert_eq!(int_set(&json!(5)).unwrap(), vec![5]);
        assert_eq!(optional_int(&json!(["set", []])).unwrap(), None);
        assert_eq!(optional_int(&json!(3)).unwrap(), Some(3));
        assert_eq!(optional_string(&json!("x")).unwrap().as_deref(), Some("x"));
        assert_eq!(optional_string(&json!(["set", []])).unwrap(), None);
        // A single uuid is sent bare, and must not be mistaken for a set of two strings.
        assert_eq!(uuid_set(&json!(["uuid", "u1"])).unwrap(), vec!["u1"]);
        assert_eq!(
            uuid_set(&json!(["set", [["uuid", "u1"], ["uuid", "u2"]]])).unwrap(),
            vec!["u1", "u2"]
        );
    }

    #[test]
    fn decodes_maps() {
        let m = string_map(&json!(["map", [["k", "v"], ["a", "b"]]])).unwrap();
        assert_eq!(m.get("k").map(String::as_str), Some("v"));
        assert_eq!(m.len(), 2);
        assert!(string_map(&json!(["map", []])).unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed() {
        assert!(as_uuid(&json!("u1")).is_err());
        assert!(as_uuid(&json!(["named-uuid", "x"])).is_err());
        assert!(string_map(&json!(["set", []])).is_err());
        assert!(string_map(&json!(["map", [["k", 1]]])).is_err());
        assert!(string_map(&json!(["map", [["k"]]])).is_err());
        assert!(int_set(&json!(["set", ["x"]])).is_err());
        assert!(set_items(&json!(["map", []])).is_err());
        assert!(optional_string(&json!(4)).is_err());
    }
}
