//! JSON-RPC 1.0 framing as OVSDB uses it: JSON objects back to back on a byte stream,
//! with no length prefix or delimiter, so the decoder finds message ends by parsing.

use serde_json::{json, Value};

use crate::error::{OvsdbError, Result};

/// Accumulates stream bytes and yields complete JSON values.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value, `None` if more bytes are needed, or an error when the
    /// stream is not JSON (the connection cannot resynchronise then).
    pub(crate) fn next_value(&mut self) -> Option<Result<Value>> {
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match stream.next() {
            None => {
                self.buf.clear();
                None
            }
            Some(Ok(v)) => {
                let used = stream.byte_offset();
                self.buf.drain(..used);
                Some(Ok(v))
            }
            Some(Err(e)) if e.is_eof() => None,
            Some(Err(e)) => Some(Err(OvsdbError::protocol(format!(
                "invalid JSON from server: {e}"
            )))),
        }
    }
}

/// A decoded message from the server.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// Reply to one of our requests (ids we send are always unsigned integers).
    Response {
        id: u64,
        result: Result<Value, Value>,
    },
    /// A request the server expects an answer to (`echo` keepalive).
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A notification (`update` of a monitor, `locked`...).
    Notification { method: String, params: Value },
}

pub(crate) fn classify(msg: Value) -> Result<Incoming> {
    let Value::Object(mut obj) = msg else {
        return Err(OvsdbError::protocol(format!(
            "message is not an object: {msg}"
        )));
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    if let Some(method) = obj.remove("method") {
        let method = method
            .as_str()
            .ok_or_else(|| OvsdbError::protocol(format!("method is not a string: {method}")))?
            .to_string();
        let params = obj.remove("params").unwrap_or(Value::Null);
        return Ok(if id.is_null() {
            Incoming::Notification { method, params }
        } else {
            Incoming::Request { id, method, params }
        });
    }
    let id = id
        .as_u64()
        .ok_or_else(|| OvsdbError::protocol(format!("response with foreign id {id}")))?;
    let error = obj.remove("error").unwrap_or(Value::Null);
    let result = if error.is_null() {
        Ok(obj.remove("result").unwrap_or(Value::Null))
    } else {
        Err(error)
    };
    Ok(Incoming::Response { id, result })
}

pub(crate) fn request(id: u64, method: &str, params: Value) -> Vec<u8> {
    json!({"id": id, "method": method, "params": params})
        .to_string()
        .into_bytes()
}

pub(crate) fn response(id: Value, result: Value) -> Vec<u8> {
    json!({"id": id, "result": result, "error": null})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_back_to_back_and_partial_messages() {
        let mut f = Framer::default();
        let text = br#"{"id":1,"result":[]} {"id":2,"result":{"a":"}{"}}{"method":"echo","#;
        f.push(text);
        assert_eq!(
            f.next_value().unwrap().unwrap(),
            json!({"id": 1, "result": []})
        );
        assert_eq!(
            f.next_value().unwrap().unwrap(),
            json!({"id": 2, "result": {"a": "}{"}})
        );
        assert!(f.next_value().is_none());
        f.push(br#""params":[],"id":"echo"}"#);
        assert_eq!(
            f.next_value().unwrap().unwrap(),
            json!({"method": "echo", "params": [], "id": "echo"})
        );
        assert!(f.next_value().is_none());
        f.push(b"  \n");
        assert!(f.next_value().is_none());
    }

    #[test]
    fn byte_by_byte_feed_yields_the_same_message() {
        let msg = json!({"id": 7, "result": [{"rows": [{"name": "ü"}]}], "error": null});
        let bytes = msg.to_string().into_bytes();
        let mut f = Framer::default();
        let mut got = None;
        for b in &bytes {
            f.push(&[*b]);
            if let Some(v) = f.next_value() {
                got = Some(v.unwrap());
            }
        }
        assert_eq!(got, Some(msg));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut f = Framer::default();
        f.push(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(matches!(f.next_value(), Some(Err(OvsdbError::Protocol(_)))));
    }

    #[test]
    fn classifies_messages() {
        assert_eq!(
            classify(json!({"id": 3, "result": [1], "error": null})).unwrap(),
            Incoming::Response {
                id: 3,
                result: Ok(json!([1]))
            }
        );
        assert_eq!(
            classify(json!({"id": 4, "result": null, "error": "unknown database"})).unwrap(),
            Incoming::Response {
                id: 4,
                result: Err(json!("unknown database"))
            }
        );
        assert_eq!(
            classify(json!({"id": "echo", "method": "echo", "params": []})).unwrap(),
            Incoming::Request {
                id: json!("echo"),
                method: "echo".into(),
                params: json!([])
            }
        );
        assert_eq!(
            classify(json!({"id": null, "method": "update", "params": ["m1", {}]})).unwrap(),
            Incoming::Notification {
                method: "update".into(),
                params: json!(["m1", {}])
            }
        );
        assert!(classify(json!([1])).is_err());
        assert!(classify(json!({"id": "x", "result": 1})).is_err());
    }

    #[test]
    fn encodes_requests_and_responses() {
        let r: Value = serde_json::from_slice(&request(9, "echo", json!([]))).unwrap();
        assert_eq!(r, json!({"id": 9, "method": "echo", "params": []}));
        let r: Value = serde_json::from_slice(&response(json!("echo"), json!(["x"]))).unwrap();
        assert_eq!(r, json!({"id": "echo", "result": ["x"], "error": null}));
    }
}
