//! Liveness and readiness.
//!
//! Liveness only says the process answers: restarting a pod because MongoDB is
//! down would not bring MongoDB back. Readiness says whether this pod should get
//! traffic: every configured dependency answers within a deadline and the pod is
//! not draining for shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::bus::Bus;
use crate::store::Store;

/// How long one dependency may take to answer a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Health {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    draining: AtomicBool,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub draining: bool,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        Self {
            store,
            bus,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on readiness fails, so load balancers stop sending new work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub async fn readiness(&self) -> Readiness {
        let store = async {
            let result = tokio::time::timeout(CHECK_TIMEOUT, self.store.ping()).await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            Check {
                name: self.store.name(),
                ok: error.is_none(),
                error,
            }
        };
        let redis = async {
            let result = tokio::time::timeout(CHECK_TIMEOUT, self.bus.ping()).await;
            let error = match result {
                Ok(None) => return None,
                Ok(Some(Ok(()))) => None,
                Ok(Some(Err(e))) => Some(e.to_string()),
                Err(_) => Some("redis: timed out".to_owned()),
            };
            Some(Check {
                name: "redis",
                ok: error.is_none(),
                error,
            })
        };
        let (store, redis) = tokio::join!(store, redis);
        let checks: Vec<Check> = std::iter::once(store).chain(redis).collect();
        let draining = self.is_draining();
        Readiness {
            ready: !draining && checks.iter().all(|c| c.ok),
            draining,
            checks,
        }
    }
}
