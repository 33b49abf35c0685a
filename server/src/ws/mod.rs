//! `GET /ws`: the real-time protocol (see docs/protocol.md).
//!
//! The token is checked before the upgrade, so a bad token gets an HTTP 401
//! with the JSON error body instead of a socket that silently closes.

pub(crate) mod connection;
pub(crate) mod handshake;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde::Deserialize;

use self::handshake::{Handshake, NotWebSocket};
use crate::http::client_address::ClientAddress;
use crate::http::error::WireError;
use crate::http::extract::{Query, parse_id};
use crate::state::AppState;
use crate::wire::errors::ErrorCode;

/// Incoming frames are chat-sized; a larger one closes the connection (1009).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The subprotocol a browser selects when it passes its token as `bearer.<jwt>`.
const SUBPROTOCOL: &str = "chat";

#[derive(Debug, Deserialize)]
pub(crate) struct WsParams {
    pub token: Option<String>,
    pub room_id: Option<String>,
}

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    client: ClientAddress,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
    handshake: Result<Handshake, NotWebSocket>,
) -> Result<Response, WireError> {
    check_origin(&headers, &state.web_origins)?;
    let (token, protocol) = find_token(&params, &headers)?;
    let claims = state.tokens.verify(&token)?;
    let handshake = handshake?;
    let room = match &params.room_id {
        Some(raw) => Some(
            state
                .chat
                .ensure_member(parse_id(raw, "room")?, &claims.author())
                .await?
                .id,
        ),
        None => None,
    };
    let address = client.bucket();
    Ok(handshake.accept(protocol, move |socket, early| {
        connection::run(socket, early, state, claims, room, address)
    }))
}

/// A browser names the page that opens a WebSocket in `Origin`, and sends
/// it whatever page that is: only the server's own pages (the origin's host
/// is the request's `Host`) and the origins of CHAT_CORS_ORIGINS may open
/// one. A client that is no browser sends no `Origin` and is not asked.
/// (Tokens are not cookies, so another site's page could not sign in with
/// one anyway; this keeps it from trying with a token it was given.)
fn check_origin(headers: &HeaderMap, allowed: &[HeaderValue]) -> Result<(), WireError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if allowed.contains(origin) {
        return Ok(());
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let own = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .is_some_and(|(_, authority)| host.is_some_and(|h| h.eq_ignore_ascii_case(authority)));
    if own {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::OriginNotAllowed,
            "WebSockets are opened from this server's own pages or the origins in CHAT_CORS_ORIGINS",
        ))
    }
}

/// The token from `?token=`, `Authorization: Bearer`, or a `bearer.<jwt>`
/// entry of `Sec-WebSocket-Protocol` (browsers cannot set headers on a
/// WebSocket). Also returns the subprotocol to echo in the last case.
fn find_token(
    params: &WsParams,
    headers: &HeaderMap,
) -> Result<(String, Option<String>), WireError> {
    if let Some(token) = params.token.as_deref().filter(|t| !t.is_empty()) {
        return Ok((token.to_owned(), None));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        return Ok((token.trim().to_owned(), None));
    }
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v: &HeaderValue| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if let Some(token) = offered.iter().find_map(|p| p.strip_prefix("bearer.")) {
        let echo = if offered.contains(&SUBPROTOCOL) {
            SUBPROTOCOL.to_owned()
        } else {
            format!("bearer.{token}")
        };
        return Ok((token.to_owned(), Some(echo)));
    }
    Err(WireError::new(
        ErrorCode::MissingToken,
        "pass the token as ?token=, Authorization: Bearer, or Sec-WebSocket-Protocol: bearer.<token>",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn only_the_servers_own_pages_and_listed_origins_open_websockets() {
        let listed = [HeaderValue::from_static("https://app.example.com")];
        let allowed = |origin, host| check_origin(&headers(origin, host), &listed).is_ok();
        assert!(allowed(None, "chat.example.com"), "no browser");
        assert!(allowed(
            Some("https://chat.example.com"),
            "chat.example.com"
        ));
        assert!(allowed(Some("http://localhost:8080"), "localhost:8080"));
        assert!(allowed(
            Some("https://CHAT.example.com"),
            "chat.example.com"
        ));
        assert!(allowed(Some("https://app.example.com"), "chat.example.com"));
        assert!(!allowed(Some("https://evil.example"), "chat.example.com"));
        assert!(!allowed(Some("http://localhost:9999"), "localhost:8080"));
        assert!(
            !allowed(Some("null"), "chat.example.com"),
            "a sandboxed page"
        );
        assert!(!allowed(
            Some("chrome-extension://chat.example.com"),
            "chat.example.com"
        ));
    }
}
