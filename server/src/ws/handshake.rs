//! The WebSocket opening handshake (RFC 6455 §4.2), done here rather than by
//! axum's `WebSocketUpgrade` because the connection needs the TCP socket
//! itself: its frames are written to it directly by whoever fans a message
//! out (see `outbox`), which axum's `WebSocket` does not allow.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::error::WireError;
use crate::wire::errors::ErrorCode;

/// A request that asked for a WebSocket and may be answered with one.
pub(crate) struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request cannot become a WebSocket.
#[derive(Debug)]
pub struct NotWebSocket(&'static str);

impl From<NotWebSocket> for WireError {
    fn from(NotWebSocket(why): NotWebSocket) -> Self {
        WireError::new(ErrorCode::WebsocketRequired, why)
    }
}

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        WireError::from(self).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = NotWebSocket;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let key = check(&parts.method, &parts.headers)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotWebSocket("this connection cannot be upgraded"))?;
        Ok(Self { key, on_upgrade })
    }
}

/// The request's `Sec-WebSocket-Key`, if it is a WebSocket opening handshake.
fn check(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, NotWebSocket> {
    if method != Method::GET {
        return Err(NotWebSocket("a WebSocket is opened with GET"));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(NotWebSocket(
            "`Connection` header did not include `upgrade`",
        ));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(NotWebSocket("`Upgrade` header did not include `websocket`"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(NotWebSocket(
            "`Sec-WebSocket-Version` header did not include 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(NotWebSocket("`Sec-WebSocket-Key` header missing"))?;
    if !is_key(key.as_bytes()) {
        return Err(NotWebSocket(
            "`Sec-WebSocket-Key` must be 16 bytes in base64",
        ));
    }
    Ok(key.clone())
}

/// A nonce as RFC 6455 §4.1 has clients send it: 16 bytes in base64, 24
/// characters of which the last two are padding (and the one before them
/// holds 2 bits: one of `AQgw`).
fn is_key(key: &[u8]) -> bool {
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/');
    key.len() == 24
        && key[..21].iter().all(base64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

impl Handshake {
    /// Answers 101 (echoing `protocol` if given) and, once the client has
    /// it, runs `connection` with the socket and any bytes the client sent
    /// right behind its request.
    pub(crate) fn accept<F, Fut>(self, protocol: Option<String>, connection: F) -> Response
    where
        F: FnOnce(TcpStream, Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade did not complete");
                    return;
                }
            };
            // `server::serve` hands hyper the plain TCP stream, so this holds;
            // anything else is a bug worth a loud log, not a crash.
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    // A copy: the bytes are a view of hyper's read buffer,
                    // kilobytes that would otherwise stay allocated for the
                    // connection's life.
                    let early = Bytes::copy_from_slice(&parts.read_buf);
                    drop(parts.read_buf);
                    connection(parts.io.into_inner(), early).await
                }
                Err(_) => tracing::error!("an upgraded connection is not a TCP stream"),
            }
        });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_browser_handshake_is_accepted_and_anything_short_of_one_is_not() {
        assert!(check(&Method::GET, &headers(&GOOD)).is_ok());
        assert!(check(&Method::POST, &headers(&GOOD)).is_err());
        for missing in 0..GOOD.len() {
            let mut partial = GOOD.to_vec();
            partial.remove(missing);
            assert!(
                check(&Method::GET, &headers(&partial)).is_err(),
                "{missing}"
            );
        }
        let mut old = GOOD.to_vec();
        old[2] = ("sec-websocket-version", "8");
        assert!(check(&Method::GET, &headers(&old)).is_err());
        for key in [
            "",
            "x",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ==dGhl",
            "dGhlIHNhbXBsZSBub25j!Q==",
            "AAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            let mut bad = GOOD.to_vec();
            bad[3] = ("sec-websocket-key", key);
            assert!(check(&Method::GET, &headers(&bad)).is_err(), "{key:?}");
        }
        let mut zeros = GOOD.to_vec();
        zeros[3] = ("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA==");
        assert!(check(&Method::GET, &headers(&zeros)).is_ok());
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
