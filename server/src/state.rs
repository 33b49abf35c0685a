//! What every handler shares, cheap to clone (all `Arc`s).

use std::sync::Arc;

use crate::auth::TokenIssuer;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenIssuer>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}
