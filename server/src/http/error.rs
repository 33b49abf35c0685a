//! How REST answers a refusal. Every failure is a [`WireError`] (one code
//! catalogue for REST and WebSocket, `wire::errors`) and becomes
//! `{"error":{"code":"snake_case","message":"human sentence"}}` with its
//! code's status; validation errors add the offending `field`, refusals that
//! pass add `"retryable": true` and, when known, `retry_after`. What the
//! body extractors reject maps to the catalogue here.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::wire::errors::{ErrorCode, WireError};

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retryable: bool,
    /// Seconds to wait before retrying, for `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<f64>,
}

/// The detail of a failure of ours, handed from the response to the request's
/// log line (`track_http`), so it is logged once, with the route.
#[derive(Debug, Clone)]
pub struct Failure(pub WireError);

impl IntoResponse for WireError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field,
                retryable: self.code.retryable(),
                retry_after: self.retry_after_secs(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(seconds.max(1)),
            );
        }
        if self.detail.is_some() {
            response.extensions_mut().insert(Failure(self));
        }
        response
    }
}

impl From<JsonRejection> for WireError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                Self::new(ErrorCode::ValidationFailed, e.body_text())
            }
            JsonRejection::JsonSyntaxError(_) => Self::new(
                ErrorCode::MalformedJson,
                "the request body is not valid JSON",
            ),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            }
            other => Self::new(ErrorCode::BadRequest, other.body_text()),
        }
    }
}

impl From<QueryRejection> for WireError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(ErrorCode::InvalidQuery, rejection.body_text())
    }
}

impl From<PathRejection> for WireError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(ErrorCode::InvalidPath, rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(error: WireError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_have_the_documented_shape() {
        let (status, json) = body(WireError::validation("username", "too short")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "validation_failed", "message": "too short", "field": "username"}})
        );
        let (status, json) = body(WireError::not_found("room")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "not_found", "message": "no such room"}})
        );
    }

    #[tokio::test]
    async fn internal_details_stay_out_of_the_response() {
        let (status, json) = body(
            crate::store::StoreError::Internal("connection string mongodb://u:p@h".into()).into(),
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json.to_string().contains("mongodb://"));
        assert_eq!(json["error"]["code"], "internal");
        assert_eq!(json["error"]["retryable"], true, "{json}");
        let (status, json) = body(crate::store::StoreError::Conflict("email").into()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(json["error"]["field"], "email");
    }

    #[test]
    fn unauthorized_responses_carry_www_authenticate() {
        let response = WireError::new(ErrorCode::MissingToken, "sign in").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
