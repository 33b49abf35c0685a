//! What every handler shares, cheap to clone (all `Arc`s).

use std::sync::Arc;

use crate::auth::TokenIssuer;
use crate::blocking::Slots;
use crate::config::Limits;
use crate::engine::chat::Chat;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenIssuer>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub chat: Arc<Chat>,
    pub login_limits: Arc<crate::auth::limits::LoginLimits>,
    pub hashes: Arc<Slots>,
    pub limits: Arc<Limits>,
    /// Uploads being hashed and thumbnailed at once.
    pub image_decoders: Arc<Slots>,
    /// The pod's upload memory, a permit a byte (`Limits::upload_memory_bytes`).
    pub upload_memory: Arc<tokio::sync::Semaphore>,
    /// This instance's name (CHAT_POD_NAME), in sessions and logs.
    pub pod: Arc<str>,
    /// Web origins other than the server's own allowed to call it and open
    /// WebSockets (CHAT_CORS_ORIGINS).
    pub web_origins: Arc<[axum::http::HeaderValue]>,
}
