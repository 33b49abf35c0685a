//! The REST API, probes and metrics: routes, middleware, handlers.

pub(crate) mod attachments;
pub mod auth;
pub(crate) mod avatars;
pub(crate) mod caller;
pub(crate) mod client_address;
pub mod error;
pub(crate) mod extract;
pub mod messages;
pub(crate) mod ops;
pub mod rooms;
pub(crate) mod search;
pub mod users;
pub(crate) mod web;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower::ServiceBuilder;
use tower_http::LatencyUnit;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use self::error::WireError;
use crate::state::AppState;
use crate::wire::errors::ErrorCode;

/// JSON bodies of this API are small; anything larger is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const UPLOAD_ROUTE: &str = "/api/rooms/{id}/attachments";

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The web client keeps its tokens in `localStorage`, so an injected script
/// would own the account: only the client's own files may run or style the
/// page (no inline script, no `eval`), it talks only to its own origin
/// (`'self'` covers `ws:`/`wss:` to the same host), and no other site may
/// frame it. Sent with every response; API bodies are JSON and unaffected.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Every route of the service: the API, probes, metrics, the web client,
/// and `sockets` (the WebSocket endpoint, which lives in its own shell).
pub fn router(
    state: AppState,
    cors_origins: &[HeaderValue],
    web_dir: &std::path::Path,
    sockets: Router<AppState>,
) -> Router {
    let web = web::WebClient::new(web_dir);
    let api = Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/logout-all", post(auth::logout_all))
        .route("/api/users/me/password", put(auth::change_password))
        .route("/api/users/me", get(users::me).patch(users::update_me))
        .route(
            "/api/users/me/avatar",
            put(avatars::put).delete(avatars::delete),
        )
        .route("/api/users/{id}/avatar", get(avatars::get))
        .route("/api/users/me/blocks", get(users::blocks))
        .route(
            "/api/users/me/blocks/{user_id}",
            put(users::block).delete(users::unblock),
        )
        .route("/api/users", get(users::find))
        .route("/api/users/{id}", get(users::get))
        .route("/api/rooms", post(rooms::create).get(rooms::list))
        .route(
            "/api/rooms/{id}",
            get(rooms::get).patch(rooms::update).delete(rooms::delete),
        )
        .route("/api/rooms/{id}/join", post(rooms::join))
        .route("/api/rooms/{id}/leave", post(rooms::leave))
        .route(
            "/api/rooms/{id}/members/{user_id}",
            post(rooms::add_member).delete(rooms::remove_member),
        )
        .route(
            "/api/rooms/{id}/admins/{user_id}",
            put(rooms::add_admin).delete(rooms::remove_admin),
        )
        .route("/api/rooms/{id}/messages", get(messages::history))
        .route(UPLOAD_ROUTE, post(attachments::upload))
        .route(
            "/api/attachments/{id}",
            get(attachments::download).delete(attachments::delete),
        )
        .route(
            "/api/attachments/{id}/thumbnail",
            get(attachments::thumbnail),
        )
        .route("/api/dm/{user_id}", post(rooms::direct))
        .route("/api/search", get(search::search))
        .route("/api/sessions", get(users::sessions));

    Router::new()
        .merge(api)
        .merge(sockets)
        .route("/healthz", get(ops::healthz))
        .merge(
            Router::new()
                .route("/readyz", get(ops::readyz))
                .route("/metrics", get(ops::metrics))
                .route_layer(middleware::from_fn(not_relayed)),
        )
        .fallback(move |request: axum::extract::Request| web.clone().respond(request))
        .method_not_allowed_fallback(|| async {
            WireError::new(ErrorCode::MethodNotAllowed, "this route does not take that method")
        })
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        // Runs after routing, so it sees the matched route template.
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &Request<_>| {
                            let request_id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                            // The path only: query strings may carry tokens.
                            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
                        })
                        .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(LatencyUnit::Micros)),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(|_| -> Response {
                    // Outside `track_http` (a panic unwound it): logged here.
                    let error = WireError::internal("handler panicked");
                    error.log("http");
                    error.into_response()
                }))
                .option_layer(cors(cors_origins))
                .layer(SetResponseHeaderLayer::if_not_present(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)))
                .layer(SetResponseHeaderLayer::if_not_present(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
                .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
                .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .with_state(state)
}

/// Answers 408 for a request whose body and handling take longer than
/// `CHAT_HTTP_REQUEST_TIMEOUT_SECS` (a WebSocket's upgrade answers at once, so
/// its life is not bounded by this).
async fn deadline(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    // An upload carries up to CHAT_MAX_ATTACHMENT_BYTES over whatever link
    // the user has: it gets CHAT_UPLOAD_TIMEOUT_SECS instead.
    let is_upload = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|path| path.as_str() == UPLOAD_ROUTE);
    let limit = if is_upload {
        state.limits.upload_timeout
    } else {
        state.limits.request_timeout
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => WireError::new(
            ErrorCode::RequestTimeout,
            "the request took too long to arrive or to answer",
        )
        .into_response(),
    }
}

/// Counts and times every request under its route template (`/api/rooms/{id}`),
/// never the raw path, so ids do not explode the label cardinality; logs the
/// failures of ours it answered (see [`error::Failure`]).
async fn track_http(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    // Any token is a valid method: label only the ones the API knows, so
    // invented methods cannot grow the series without end.
    let method = match *request.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    // Our failures are logged here, once, inside the request's span.
    if let Some(error::Failure(error)) = response.extensions_mut().remove() {
        error.log("http");
    }
    state.metrics.observe_http(
        &route,
        &method,
        response.status().as_str(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Headers a proxy adds to what it relays (nginx and Traefik ingress
/// controllers, cloud load balancers).
const RELAYED_BY: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Readiness and metrics are for the cluster (kubelet, Prometheus), which
/// asks the pod directly: a request relayed by a proxy, as everything
/// through the operator's Ingress (which routes `/`) is, gets 404, so the
/// internals (backend errors, every route's traffic) are not public.
async fn not_relayed(request: axum::extract::Request, next: middleware::Next) -> Response {
    if RELAYED_BY
        .iter()
        .any(|name| request.headers().contains_key(*name))
    {
        return WireError::not_found("route").into_response();
    }
    next.run(request).await
}

/// Exact origins only, credentials allowed; no layer at all (same origin only)
/// when none are configured.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID])
            .expose_headers([REQUEST_ID])
            .max_age(Duration::from_secs(600)),
    )
}
