//! The one catalogue of what the server refuses and why it closes: every
//! error code a client can receive, over REST (`{"error":{"code",...}}`) and
//! over WebSocket (`{"type":"error","code",...}`) alike, with its HTTP status
//! and whether the same request may succeed later unchanged; and every
//! WebSocket close code. docs/api.md and docs/protocol.md describe each one
//! (a test holds them to this list); the web client's `ErrorCode` type is
//! generated from it.

use std::time::Duration;

use serde::Serialize;

/// Declares [`ErrorCode`] from one table: variant, wire name, HTTP status,
/// retryable. The wire name is written once and used by serde, the
/// TypeScript type and [`ErrorCode::as_str`].
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $status:literal, $retryable:literal;)*) => {
        /// Why a request or frame was refused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ts_rs::TS)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)*
        }

        impl ErrorCode {
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code on the wire, e.g. `"not_found"`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// The HTTP status REST answers with.
            pub const fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// Whether the same request (with the same `client_id`) may succeed
            /// if sent again later, after `retry_after` when there is one.
            pub const fn retryable(self) -> bool {
                match self {
                    $(ErrorCode::$variant => $retryable,)*
                }
            }
        }
    };
}

error_codes! {
    // The request or frame itself.
    /// Not a JSON object with a string `type`, or a binary frame (WebSocket).
    MalformedFrame = "malformed_frame", 400, false;
    /// A frame `type` the server does not know (WebSocket).
    UnknownType = "unknown_type", 400, false;
    /// A known frame with missing or wrongly typed fields (WebSocket).
    InvalidFrame = "invalid_frame", 400, false;
    /// A message with neither text nor files.
    EmptyMessage = "empty_message", 400, false;
    /// A message over `MAX_CONTENT_CHARS`.
    MessageTooLong = "message_too_long", 400, false;
    /// A message with more than `MAX_ATTACHMENTS` files.
    TooManyAttachments = "too_many_attachments", 400, false;
    /// The body is not JSON.
    MalformedJson = "malformed_json", 400, false;
    /// The body could not be read as asked.
    BadRequest = "bad_request", 400, false;
    /// A query parameter is of the wrong type or unknown.
    InvalidQuery = "invalid_query", 400, false;
    /// A path segment is of the wrong type.
    InvalidPath = "invalid_path", 400, false;
    /// A plain request to the WebSocket endpoint.
    WebsocketRequired = "websocket_required", 400, false;
    /// An upload without bytes.
    EmptyFile = "empty_file", 400, false;
    /// An upload cut off or malformed.
    BadBody = "bad_body", 400, false;
    /// A field breaks a rule; `field` names it when known.
    ValidationFailed = "validation_failed", 422, false;
    /// The body is not sent as JSON.
    UnsupportedMediaType = "unsupported_media_type", 415, false;
    /// The body is over the size limit.
    PayloadTooLarge = "payload_too_large", 413, false;
    /// An upload over the largest file allowed.
    FileTooLarge = "file_too_large", 413, false;
    /// An upload without `Content-Length`.
    LengthRequired = "length_required", 411, false;
    /// The route exists with other methods.
    MethodNotAllowed = "method_not_allowed", 405, false;

    // Who is asking.
    /// No token.
    MissingToken = "missing_token", 401, false;
    /// A malformed, forged or foreign token.
    InvalidToken = "invalid_token", 401, false;
    /// An expired access token: refresh it.
    TokenExpired = "token_expired", 401, false;
    /// A wrong e-mail or password.
    InvalidCredentials = "invalid_credentials", 401, false;
    /// An unknown, used, revoked or expired refresh token.
    InvalidRefreshToken = "invalid_refresh_token", 401, false;
    /// A WebSocket handshake from another site's page.
    OriginNotAllowed = "origin_not_allowed", 403, false;

    // What they ask for.
    /// Allowed to see it, not to do this.
    Forbidden = "forbidden", 403, false;
    /// The room is not open on this connection, or the caller is not a member.
    NotJoined = "not_joined", 403, false;
    /// The other user blocked the caller.
    Blocked = "blocked", 403, false;
    /// Uploads past the user's quota.
    QuotaExceeded = "quota_exceeded", 403, false;
    /// No such thing, or a private one the caller is not in.
    NotFound = "not_found", 404, false;
    /// A username or e-mail taken; `field` names which.
    AlreadyExists = "already_exists", 409, false;
    /// The owner leaving or being removed.
    OwnerCannotLeave = "owner_cannot_leave", 409, false;
    /// Changing a direct room's members.
    DirectRoom = "direct_room", 409, false;
    /// Too many messages missed to replay: page history first.
    ResumeTooFar = "resume_too_far", 409, false;
    /// A message's reactions, or the caller's on it, are at their bound.
    TooManyReactions = "too_many_reactions", 409, false;
    /// The caller's block list is full.
    TooManyBlocks = "too_many_blocks", 409, false;

    // The server's state: these pass.
    /// Over a rate limit: retry after `retry_after` seconds.
    RateLimited = "rate_limited", 429, true;
    /// The request body or answer took too long.
    RequestTimeout = "request_timeout", 408, true;
    /// Redis or the database is unreachable.
    Unavailable = "unavailable", 503, true;
    /// Every slot for the work (password hashing) is taken.
    Busy = "busy", 503, true;
    /// Our fault: the details are in the server's log.
    Internal = "internal", 500, true;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal as a client receives it: REST answers it with its code's status
/// (`http::error`), a WebSocket connection sends it as an `error` frame and
/// stays open.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// The request field at fault, for `validation_failed` and `already_exists`.
    pub field: Option<&'static str>,
    /// How long to wait before retrying, for `rate_limited` and `busy`.
    pub retry_after: Option<Duration>,
    /// What went wrong on our side, for the log of whoever answers; never sent.
    pub detail: Option<String>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            detail: None,
        }
    }

    /// A well-formed request whose `field` breaks a rule.
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message).for_field(field)
    }

    /// `what` is the kind of thing, e.g. "room": the message says no such room exists.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no such {what}"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// Over a limit; `Retry-After` and `retry_after` say for how long.
    pub fn rate_limited(message: impl Into<String>, wait: Duration) -> Self {
        Self::new(ErrorCode::RateLimited, message).retry_after(wait)
    }

    /// This pod has no room for the request right now.
    pub fn busy(message: impl Into<String>, wait: Duration) -> Self {
        Self::new(ErrorCode::Busy, message).retry_after(wait)
    }

    /// A dependency is down: the client gets a sentence, the log `detail`.
    pub fn unavailable(message: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self {
            detail: Some(detail.to_string()),
            ..Self::new(ErrorCode::Unavailable, message)
        }
    }

    /// A failure of ours: the client gets a generic sentence, the log `detail`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self {
            detail: Some(detail.to_string()),
            ..Self::new(
                ErrorCode::Internal,
                "something went wrong on our side; try again",
            )
        }
    }

    pub fn for_field(self, field: &'static str) -> Self {
        Self {
            field: Some(field),
            ..self
        }
    }

    pub fn retry_after(self, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..self
        }
    }

    /// `retry_after` as the wire writes it: seconds, rounded up to the millisecond.
    pub fn retry_after_secs(&self) -> Option<f64> {
        self.retry_after
            .map(|wait| (wait.as_secs_f64() * 1000.0).ceil() / 1000.0)
    }

    /// Logs the refusal once, where it is answered: our failures and
    /// unavailable dependencies with their detail, nothing for the client's.
    pub fn log(&self, shell: &'static str) {
        let Some(detail) = &self.detail else { return };
        if self.code == ErrorCode::Internal {
            tracing::error!(shell, code = %self.code, error = %detail, "request failed");
        } else {
            tracing::warn!(shell, code = %self.code, error = %detail, "request refused");
        }
    }
}

/// Why the server closes a WebSocket connection: its close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The outbound queue overflowed; the client should reconnect and resume.
    SlowConsumer,
    /// The client kept sending after being told to stop.
    Flooding,
    /// Too many invalid frames in a row.
    Abuse,
    /// The token expired and was not refreshed with an `auth` frame.
    TokenExpired,
    /// No frame or pong within the idle timeout.
    Idle,
    /// The server is shutting down; reconnect to another pod.
    Shutdown,
    /// The client closed the connection.
    Gone,
    /// The socket failed (reset, protocol violation, oversized frame).
    Broken,
    /// The user or the client address already has as many connections as allowed.
    TooManyConnections,
}

impl Kick {
    /// The reason as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kick::SlowConsumer => "slow_consumer",
            Kick::Flooding => "flooding",
            Kick::Abuse => "abuse",
            Kick::TokenExpired => "token_expired",
            Kick::Idle => "idle",
            Kick::Shutdown => "shutdown",
            Kick::Gone => "client_closed",
            Kick::Broken => "broken",
            Kick::TooManyConnections => "too_many_connections",
        }
    }

    pub fn close_code(self) -> u16 {
        match self {
            Kick::SlowConsumer => 4008,
            Kick::Flooding => 4029,
            Kick::Abuse => 1008,
            Kick::TokenExpired => 4001,
            Kick::Idle => 4000,
            Kick::Shutdown => 1012,
            Kick::Gone => 1000,
            Kick::Broken => 1002,
            Kick::TooManyConnections => 4009,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Kick::SlowConsumer => "slow consumer: outbound queue overflowed; reconnect and resume",
            Kick::Flooding => "rate limit exceeded repeatedly",
            Kick::Abuse => "too many invalid frames",
            Kick::TokenExpired => "token expired; reconnect with a fresh token",
            Kick::Idle => "idle timeout",
            Kick::Shutdown => "server shutting down; reconnect",
            Kick::Gone => "closed",
            Kick::Broken => "connection failed",
            Kick::TooManyConnections => {
                "too many connections for this user or address; close another first"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        ["api.md", "protocol.md"]
            .iter()
            .map(|name| std::fs::read_to_string(root.join(name)).unwrap())
            .collect()
    }

    #[test]
    fn every_code_has_one_name_a_status_and_a_line_in_the_docs() {
        let docs = docs();
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
            assert!(
                axum::http::StatusCode::from_u16(code.http_status())
                    .is_ok_and(|s| s.is_client_error() || s.is_server_error()),
                "{code}"
            );
            assert!(
                docs.contains(&format!("`{code}`")),
                "{code} is not described in docs/api.md or docs/protocol.md"
            );
        }
    }

    #[test]
    fn only_the_servers_state_is_worth_a_retry() {
        for &code in ErrorCode::ALL {
            assert_eq!(
                code.retryable(),
                code.http_status() >= 500 || matches!(code.http_status(), 408 | 429),
                "{code}"
            );
        }
    }

    #[test]
    fn every_close_code_is_documented() {
        let docs = docs();
        for kick in [
            Kick::SlowConsumer,
            Kick::Flooding,
            Kick::Abuse,
            Kick::TokenExpired,
            Kick::Idle,
            Kick::Shutdown,
            Kick::Gone,
            Kick::Broken,
            Kick::TooManyConnections,
        ] {
            assert!(
                docs.contains(&format!("| {} |", kick.close_code())),
                "close code {} ({kick:?}) is not in docs/protocol.md",
                kick.close_code()
            );
        }
    }
}
