//! The built web client (`CHAT_WEB_DIR`) at `/`.
//!
//! Vite names what it builds under `assets/` by content hash, so those files
//! are cached for a year; `index.html` and the rest are revalidated on every
//! load, so a new release shows at once. Any other path that is not a file
//! gets `index.html` (the client's own routes survive a reload), except under
//! `/api`, `/ws`, `/metrics` and the probes, whose unknown paths stay the
//! API's JSON 404.

use std::convert::Infallible;
use std::path::Path;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use super::error::WireError;

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

/// Paths that belong to the server, never to the web client.
const RESERVED: [&str; 5] = ["/api", "/ws", "/metrics", "/healthz", "/readyz"];

#[derive(Clone)]
pub(crate) struct WebClient {
    /// None when no client is built: then the server is API-only.
    built: Option<Built>,
}

#[derive(Clone)]
struct Built {
    assets: ServeDir,
    pages: ServeDir<ServeFile>,
}

fn is_reserved(path: &str) -> bool {
    RESERVED.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

impl WebClient {
    /// Serves `dir` when it holds a built client (`index.html`); otherwise
    /// every unknown path is a JSON 404, as for an API-only server.
    pub(crate) fn new(dir: &Path) -> Self {
        let index = dir.join("index.html");
        if !index.is_file() {
            tracing::info!(dir = %dir.display(), "no web client built there; serving the API only");
            return Self { built: None };
        }
        Self {
            built: Some(Built {
                assets: ServeDir::new(dir),
                pages: ServeDir::new(dir).fallback(ServeFile::new(index)),
            }),
        }
    }

    pub(crate) async fn respond(self, request: Request) -> Response {
        let Some(Built { assets, pages }) = self.built else {
            return WireError::not_found("route").into_response();
        };
        if is_reserved(request.uri().path()) {
            return WireError::not_found("route").into_response();
        }
        let hashed = request.uri().path().starts_with("/assets/");
        let result: Result<Response, Infallible> = if hashed {
            // A missing asset is a 404, never the page.
            assets
                .oneshot(request)
                .await
                .map(IntoResponse::into_response)
        } else {
            pages
                .oneshot(request)
                .await
                .map(IntoResponse::into_response)
        };
        let mut response = match result {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if response.status().is_success() || response.status().as_u16() == 304 {
            let policy = if hashed { IMMUTABLE } else { REVALIDATE };
            response.headers_mut().insert(header::CACHE_CONTROL, policy);
        }
        response
    }
}
