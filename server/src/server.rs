//! Start-up and shutdown: build the state from the configuration, bind the
//! listener, serve until a signal, drain.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tower::ServiceExt;

use crate::auth::TokenIssuer;
use crate::auth::jwt::load_or_create_secret;
use crate::auth::limits::LoginLimits;
use crate::blocking::Slots;
use crate::bus::local::LocalBus;
use crate::bus::redis::connection::Target;
use crate::bus::redis::owner;
use crate::bus::redis::{Durability, RedisBus};
use crate::bus::{Bus, BusError};
use crate::config::{Config, RedisEndpoint, Secret};
use crate::engine::chat::Chat;
use crate::engine::hub::{Hub, HubLimits};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::{Store, StoreError};
use crate::wire::errors::Kick;

/// tokio's default backlog of 1024 drops SYNs under a burst of connects, which
/// clients then retry only after a second.
const LISTEN_BACKLOG: u32 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot read or create the JWT key in {dir}: {source}")]
    JwtSecret { dir: String, source: std::io::Error },
    #[error("cannot start the message bus: {0}")]
    Bus(crate::bus::BusError),
    #[error(
        "{0}: servers that share CHAT_REDIS_URL must share one MongoDB (CHAT_MONGODB_URI); \
         a server that moved to a new CHAT_DATA_DIR can start once the old claim lapses (60 s)"
    )]
    SharedRedis(owner::ClaimError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Connects to the configured store and Redis and assembles the shared state.
pub async fn build_state(config: &Config) -> Result<AppState, StartError> {
    let (store, embedded_id): (Arc<dyn Store>, _) = match &config.mongodb_uri {
        Some(uri) => (
            Arc::new(
                MongoStore::connect(uri.expose(), &config.mongodb_db)
                    .await?
                    .with_dedupe_ttl(config.dedupe_ttl),
            ),
            None,
        ),
        None => {
            let store = EmbeddedStore::open(&config.data_dir)?.with_dedupe_ttl(config.dedupe_ttl);
            let id = store.id().to_owned();
            (Arc::new(store), Some(id))
        }
    };
    let secret = match &config.jwt_secret {
        Some(secret) => secret.expose().as_bytes().to_vec(),
        None => {
            load_or_create_secret(&config.data_dir).map_err(|source| StartError::JwtSecret {
                dir: config.data_dir.display().to_string(),
                source,
            })?
        }
    };
    let metrics = Arc::new(Metrics::new()?);
    let hub = Arc::new(Hub::new(
        HubLimits {
            connections_per_user: config.limits.connections_per_user,
            connections_per_address: config.limits.connections_per_address,
            queue_bytes: config.limits.queue_bytes,
        },
        metrics.frames_sent.clone(),
        metrics.delivery_latency.clone(),
    ));
    let bus: Arc<dyn Bus> = match &config.redis {
        Some(redis) => {
            let unavailable = |e: redis::RedisError| {
                StartError::Bus(BusError::Unavailable(format!("redis: {}", e.category())))
            };
            let target = match &redis.endpoint {
                RedisEndpoint::Urls(urls) => Target::discover(urls.expose()).await,
                RedisEndpoint::Sentinel {
                    sentinels,
                    master,
                    password,
                } => {
                    Target::sentinel(sentinels, master, password.as_ref().map(Secret::expose)).await
                }
            }
            .map_err(unavailable)?;
            if let Some(id) = embedded_id {
                // Before anything of the bus starts: its persist workers would
                // write another store's messages into this one.
                let mut commands = target.connect().await.map_err(unavailable)?;
                owner::claim(&mut commands, &id)
                    .await
                    .map_err(StartError::SharedRedis)?;
                tokio::spawn(owner::keep(commands, id));
            }
            RedisBus::start(
                target,
                store.clone(),
                hub.clone(),
                &config.pod_name,
                metrics.clone(),
                config.dedupe_ttl,
                Durability {
                    replicas: redis.min_replicas,
                    timeout: redis.wait_timeout,
                },
            )
            .await
            .map_err(StartError::Bus)?
        }
        None => Arc::new(LocalBus::new(store.clone(), hub.clone(), &config.pod_name)),
    };
    let chat = Arc::new(Chat::new(
        store.clone(),
        hub,
        bus.clone(),
        &config.pod_name,
        config.rate_limit_per_sec,
        config.rate_limit_burst,
        metrics.append_latency.clone(),
    ));
    let login_limits = Arc::new(LoginLimits::new(config.limits.signups_per_address_per_hour));
    tokio::spawn(forget_idle_rate_limits(
        Arc::downgrade(&chat),
        Arc::downgrade(&login_limits),
    ));
    tokio::spawn(sweep_memberships(Arc::downgrade(&chat)));
    tokio::spawn(expire_unsent_uploads(Arc::downgrade(&store)));
    let hashes = Arc::new(Slots::new(
        config.limits.password_hashes,
        Some(crate::auth::password::HASH_WAIT),
        metrics
            .blocking_running
            .with_label_values(&["password_hash"]),
    ));
    let image_decoders = Arc::new(Slots::new(
        crate::attachment::DECODERS_PER_POD,
        None,
        metrics
            .blocking_running
            .with_label_values(&["image_decode"]),
    ));
    Ok(AppState {
        health: Arc::new(Health::new(store.clone(), bus.clone())),
        chat,
        pod: Arc::from(config.pod_name.as_str()),
        store,
        tokens: Arc::new(TokenIssuer::new(&secret, config.jwt_ttl)),
        metrics,
        login_limits,
        hashes,
        image_decoders,
        // Never less than one largest file, which would wait for ever.
        upload_memory: Arc::new(tokio::sync::Semaphore::new(
            config
                .limits
                .upload_memory_bytes
                .max(config.limits.attachment_bytes),
        )),
        limits: Arc::new(config.limits.clone()),
        web_origins: config.cors_origins.clone().into(),
    })
}

/// Keeps the rate limiter's memory bounded by users active in the last minute.
async fn forget_idle_rate_limits(chat: Weak<Chat>, logins: Weak<LoginLimits>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let (Some(chat), Some(logins)) = (chat.upgrade(), logins.upgrade()) else {
            return;
        };
        chat.forget_idle_users();
        logins.forget_idle();
    }
}

/// Deletes, every hour, the files uploaded more than
/// [`crate::attachment::UNSENT_UPLOAD_TTL`] ago and never sent. Every pod
/// does it; it is idempotent. Holds the store only while it runs, so a
/// stopped server's embedded store still closes.
async fn expire_unsent_uploads(store: Weak<dyn Store>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let ttl = time::Duration::try_from(crate::attachment::UNSENT_UPLOAD_TTL)
            .unwrap_or(time::Duration::DAY);
        match store.expire_unsent(crate::model::now() - ttl).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "deleted files uploaded and never sent"),
            Err(e) => tracing::warn!(error = %e, "cannot delete files never sent"),
        }
    }
}

/// See [`Chat::sweep_memberships`].
async fn sweep_memberships(chat: Weak<Chat>) {
    let mut tick = tokio::time::interval(crate::engine::chat::MEMBERSHIP_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(chat) = chat.upgrade() else { return };
        chat.sweep_memberships().await;
    }
}

/// The whole service: the REST API, probes, metrics and web client
/// ([`crate::http`]) with the WebSocket endpoint ([`crate::ws`]) among its
/// routes, so every layer (deadlines, metrics, tracing) covers both.
pub fn app(state: AppState, config: &Config) -> axum::Router {
    let sockets = axum::Router::new().route("/ws", axum::routing::get(crate::ws::upgrade));
    crate::http::router(state, &config.cors_origins, &config.web_dir, sockets)
}

pub fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|source| StartError::Bind { addr, source })
}

/// Serves until `shutdown` resolves, then drains: readiness fails at once, no new
/// connections are accepted, and in-flight requests get `grace` to finish.
///
/// HTTP/1.1 only, through hyper directly rather than `axum::serve`, because
/// that is where a client that never finishes its headers can be cut off
/// (`header_timeout`, which also closes idle keep-alive connections): without
/// it each such socket holds a descriptor for ever. Browsers reach a pod over
/// HTTP/1.1 (the Ingress speaks it to its backends), and WebSockets upgrade from it.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
    header_timeout: Duration,
) -> std::io::Result<()> {
    let (draining_tx, mut draining) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        state.health.start_draining();
        // WebSocket clients reconnect (to another pod) and resume from their last seq.
        state.chat.hub.kick_all(Kick::Shutdown);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: draining connections"
        );
        // Upgraded connections are not tracked by the HTTP server's graceful
        // shutdown: wait for them to say goodbye (their close frame) ourselves.
        let deadline = tokio::time::Instant::now() + grace;
        while state.chat.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = draining_tx.send(true);
    });

    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // Every HTTP connection's task holds a receiver; `closed()` below waits
    // for the last one to finish (upgraded WebSockets are not HTTP any more).
    let (stop, stopping) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was
                    // taken: give the pod a moment instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async {
                let _ = draining.wait_for(|draining| *draining).await;
            } => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        // The plain TCP stream, so that a WebSocket gets it back after the
        // upgrade (see `ws::handshake`).
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async {
                    let _ = stopping.wait_for(|stop| *stop).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => Ok(()),
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over: closing the remaining connections");
            Ok(())
        }
    }
}
