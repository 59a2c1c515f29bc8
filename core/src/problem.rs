//! Every error the API returns is an RFC 7807 problem document
//! (`application/problem+json`) with a stable machine-readable `code`.
//!
//! Handlers return `Result<_, ApiError>`. Use the extractors in this module
//! ([`Json`], [`Query`], [`Path`]) instead of axum's so that malformed
//! requests also answer with problem JSON rather than axum's plain text.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An API error, rendered as problem JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable identifier clients match on, e.g. `app_not_found`.
    pub code: &'static str,
    /// Human-readable explanation for this occurrence.
    pub detail: String,
    /// Seconds after which a refused (429) request may be retried; sent as
    /// `Retry-After`.
    pub retry_after: Option<u64>,
}

/// The wire form of [`ApiError`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }
    /// Too many attempts: retry after `seconds` (at least 1).
    pub fn too_many(detail: impl Into<String>, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", detail)
        }
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }
    /// No credentials, or credentials that do not identify anyone.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "valid credentials are required",
        )
    }
    /// The caller can see the resource but may not do this to it.
    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }
    /// A dependency (etcd) is unreachable; the client should retry later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub fn to_problem(&self) -> Problem {
        Problem {
            type_: format!("urn:leengine:problem:{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_string(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, detail = %self.detail, "request failed");
        }
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"leengine\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<etcd_client::Error> for ApiError {
    fn from(err: etcd_client::Error) -> Self {
        if leengine_store::is_unavailable(&err) {
            Self::unavailable(format!("etcd unavailable: {err}"))
        } else {
            Self::internal(format!("etcd: {err}"))
        }
    }
}

/// A record read from etcd does not decode: the data is damaged, not the request.
impl From<serde_json::Error> for ApiError {
    fn from(err: serde_json::Error) -> Self {
        Self::internal(format!("stored record does not decode: {err}"))
    }
}

impl From<leengine_store::record::Corrupt> for ApiError {
    fn from(err: leengine_store::record::Corrupt) -> Self {
        Self::internal(format!("stored record does not decode: {err}"))
    }
}

impl From<leengine_store::record::ReadError> for ApiError {
    fn from(err: leengine_store::record::ReadError) -> Self {
        match err {
            leengine_store::record::ReadError::Etcd(e) => e.into(),
            leengine_store::record::ReadError::Corrupt(e) => e.into(),
        }
    }
}

/// JSON body extractor and response type whose rejections are problem JSON.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        T::deserialize(ObjectsOnly(value)).map(Json).map_err(|e| {
            ApiError::bad_request("invalid_body", format!("invalid request body: {e}"))
        })
    }
}

/// Serde accepts a struct written as a JSON array of its fields in order
/// (`[null, true]`); a request body like that is a client bug, so a struct
/// must come as a JSON object. Everything else decodes as serde_json would.
struct ObjectsOnly(serde_json::Value);

impl<'de> serde::Deserializer<'de> for ObjectsOnly {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(v)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        if !self.0.is_object() {
            return Err(serde::de::Error::custom(format!(
                "expected a JSON object for {name}"
            )));
        }
        self.0.deserialize_struct(name, fields, v)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_option(v)
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, v)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    let code = match &rej {
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        JsonRejection::JsonSyntaxError(_) => "invalid_json",
        JsonRejection::JsonDataError(_) => "invalid_body",
        _ => "invalid_body",
    };
    let status = match rej.status() {
        // A body that parses but has the wrong shape is still a bad request to us.
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s => s,
    };
    ApiError::new(status, code, rej.body_text())
}

/// Query-string extractor whose rejections are problem JSON.
#[derive(Clone, Copy, Debug, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|rej: QueryRejection| ApiError::bad_request("invalid_query", rej.body_text()))
    }
}

/// Path-parameter extractor whose rejections are problem JSON.
#[derive(Clone, Copy, Debug, Default)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|rej: PathRejection| {
                let status = if rej.status().is_server_error() {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::BAD_REQUEST
                };
                ApiError::new(status, "invalid_path", rej.body_text())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Body {
        a: Option<u32>,
        b: Vec<String>,
    }

    async fn decode(body: &'static str) -> Result<Json<Body>, ApiError> {
        let req = Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        Json::<Body>::from_request(req, &()).await
    }

    #[tokio::test]
    async fn bodies_must_be_objects() {
        let ok = decode(r#"{"a": 1, "b": ["x"]}"#).await.unwrap();
        assert_eq!(
            ok.0,
            Body {
                a: Some(1),
                b: vec!["x".into()]
            }
        );
        let seq = decode(r#"[1, ["x"]]"#).await.unwrap_err();
        assert_eq!(
            (seq.status, seq.code),
            (StatusCode::BAD_REQUEST, "invalid_body")
        );
        let syntax = decode("{").await.unwrap_err();
        assert_eq!(syntax.code, "invalid_json");
        let shape = decode(r#"{"a": "x", "b": []}"#).await.unwrap_err();
        assert_eq!(shape.code, "invalid_body");
    }

    #[tokio::test]
    async fn renders_problem_json() {
        let resp = ApiError::not_found("app_not_found", "no app x").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let p: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(p.status, 404);
        assert_eq!(p.code, "app_not_found");
        assert_eq!(p.title, "Not Found");
        assert_eq!(p.detail, "no app x");
        assert_eq!(p.type_, "urn:leengine:problem:app_not_found");
    }

    #[tokio::test]
    async fn unauthorized_asks_for_credentials() {
        let resp = ApiError::unauthorized().into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn too_many_says_when_to_retry() {
        let resp = ApiError::too_many("slow down", 0).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}
