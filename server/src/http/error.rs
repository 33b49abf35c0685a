//! The one error type of the HTTP API. Every failure becomes
//! `{"error":{"code":"snake_case","message":"human sentence"}}` with the right
//! status; validation errors add the offending `field`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::blocking::SlotError;
use crate::engine::chat::ChatError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
    retry_after: Option<std::time::Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// Seconds to wait before retrying, for `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<f64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 429 with `Retry-After` (whole seconds, rounded up) and `retry_after` in the body.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// 503 with `Retry-After`: this pod has no room for the request right now.
    pub fn busy(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A well-formed request whose `field` breaks a rule.
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                message,
            )
        }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// `what` is the kind of thing, e.g. "room": the message says no such room exists.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// A failure of ours: the detail goes to the log, the client gets a generic sentence.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side; try again",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field,
                retry_after: self
                    .retry_after
                    .map(|wait| (wait.as_secs_f64() * 1000.0).ceil() / 1000.0),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
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
        response
    }
}

impl From<crate::validate::Invalid> for ApiError {
    fn from(invalid: crate::validate::Invalid) -> Self {
        Self::validation(invalid.field, invalid.message)
    }
}

impl From<crate::auth::TokenError> for ApiError {
    fn from(error: crate::auth::TokenError) -> Self {
        match error {
            crate::auth::TokenError::Expired => Self::unauthorized(
                "token_expired",
                "the token has expired; refresh it or sign in again",
            ),
            crate::auth::TokenError::Invalid => {
                Self::unauthorized("invalid_token", "the token is invalid")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(field) => Self {
                field: Some(field),
                ..Self::conflict("already_exists", format!("that {field} is already taken"))
            },
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; try again shortly",
                )
            }
            StoreError::Internal(detail) => Self::internal(detail),
        }
    }
}

impl From<SlotError> for ApiError {
    fn from(error: SlotError) -> Self {
        match error {
            // Only password hashing waits for a slot a bounded time.
            SlotError::Busy => {
                tracing::warn!("password hashing saturated: request turned away");
                Self::busy(
                    "the server is busy checking other passwords; try again in a moment",
                    std::time::Duration::from_secs(1),
                )
            }
            SlotError::Failed(e) => Self::internal(e),
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::NoSuchRoom => Self::not_found("room"),
            ChatError::NotSubscribed => Self::forbidden(error.to_string()),
            ChatError::RateLimited(wait) => Self::rate_limited(error.to_string(), wait),
            ChatError::TooFarBehind => Self::conflict("resume_too_far", error.to_string()),
            ChatError::NoSuchMessage => Self::not_found("message"),
            ChatError::NoSuchAttachment => Self::not_found("attachment"),
            ChatError::NotAllowed(why) => Self::forbidden(why),
            ChatError::TooManyReactions(why) => Self::conflict("too_many_reactions", why),
            ChatError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "message bus unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "messaging is unavailable; try again shortly",
                )
            }
            ChatError::Store(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.body_text(),
            ),
            JsonRejection::JsonSyntaxError(_) => {
                Self::bad_request("malformed_json", "the request body is not valid JSON")
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            }
            other => Self::bad_request("bad_request", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_have_the_documented_shape() {
        let (status, json) = body(ApiError::validation("username", "too short")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "validation_failed", "message": "too short", "field": "username"}})
        );
        let (status, json) = body(ApiError::not_found("room")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "not_found", "message": "no such room"}})
        );
    }

    #[tokio::test]
    async fn internal_details_stay_out_of_the_response() {
        let (status, json) =
            body(StoreError::Internal("connection string mongodb://u:p@h".into()).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json.to_string().contains("mongodb://"));
        let (status, json) = body(StoreError::Conflict("email").into()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(json["error"]["field"], "email");
    }

    #[test]
    fn unauthorized_responses_carry_www_authenticate() {
        let response = ApiError::unauthorized("missing_token", "sign in").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
