//! The API's error shape, `{"error": {"code", "message", "field"?}}`, and the extractors that
//! make axum's own rejections come out in it.
//!
//! Codes are stable strings clients may match on; messages are for people and may change.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hopper_workers::BrokerError;
use serde_json::{Value, json};

use crate::service::{FieldError, SubmitError};

/// An API failure: HTTP status, stable code, message, and the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 about one field.
    pub fn field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A 500 that tells the client nothing of the failure but a reference: the detail goes
    /// to the log under that reference (`error_id`), never to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::now_v7();
        tracing::error!(error_id = %id, error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error; the server log has the detail under error_id {id}"),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(f) = &self.field {
            e["field"] = json!(f);
        }
        json!({ "error": e })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        let status = if e.code == "unknown_kind" {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            code: e.code,
            message: e.message,
            field: Some(e.field),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Field(e) => e.into(),
            SubmitError::Broker(e) => e.into(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotFound(id) => Self::not_found(format!("job {id} not found")),
            BrokerError::Conflict { .. } | BrokerError::LeaseLost(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            BrokerError::Invalid(f) => f.into(),
            BrokerError::Unavailable(_) => {
                tracing::warn!(error = %e, "broker unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    e.to_string(),
                )
            }
            BrokerError::Backend(_) | BrokerError::Config(_) => Self::internal(e),
        }
    }
}

/// A JSON request body, parsed whatever the `Content-Type` says (plain `curl -d` sends
/// `application/x-www-form-urlencoded`), with every failure in the API's error shape: over
/// the body limit -> 413 `payload_too_large`, not JSON -> 400 `invalid_json`.
#[derive(Debug, Clone)]
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(r.status(), "invalid_body", r.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the request body is empty; expected a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            )
        })
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than [server] body_limit",
    )
}

/// Gives error responses that were not made by our handlers (unknown route, wrong method, a
/// timeout, a body rejected by a layer) the API's JSON shape, keeping their status and
/// headers (e.g. `Allow`).
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::not_found("no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this route does not accept that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => {
            ApiError::new(status, "timeout", "the request did not complete in time")
        }
        // An extractor's rejection (a path segment or query string that is not UTF-8 or
        // not well-formed): its own text says what was wrong, so it is kept as the message.
        StatusCode::BAD_REQUEST => {
            let (parts, body) = res.into_parts();
            let text = axum::body::to_bytes(body, REJECTION_TEXT_LIMIT)
                .await
                .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
                .unwrap_or_default();
            let message = if text.is_empty() {
                "the request could not be read".to_owned()
            } else {
                text
            };
            let err = ApiError::new(status, "invalid_request", message);
            return json_response(parts, &err);
        }
        _ => ApiError::new(
            status,
            "error",
            status.canonical_reason().unwrap_or("error"),
        ),
    };
    let (parts, _) = res.into_parts();
    json_response(parts, &err)
}

/// The most of a rejection's text kept as an error's message.
const REJECTION_TEXT_LIMIT: usize = 4096;

/// `parts` (status and headers kept) with `err` as the JSON body.
fn json_response(mut parts: axum::http::response::Parts, err: &ApiError) -> Response {
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(err.body().to_string()))
}

/// The answer to a handler that panicked: a 500 like any internal error, with the panic's
/// message only in the log, so no handler bug ever drops a connection.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::internal(format_args!("handler panicked: {detail}")).into_response()
}
