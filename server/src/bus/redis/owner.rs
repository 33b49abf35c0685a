//! One embedded store per Redis.
//!
//! Servers that share a Redis must share their store too (MongoDB): each
//! server on its own embedded store would sequence rooms in Redis that its
//! store does not have, and accounts made on one would be unknown to the
//! others. A server on the embedded store therefore claims the Redis for its
//! database's id, renews the claim while it runs, and refuses to start when
//! another database holds it. The claim expires, so a server that moved to a
//! new data directory can start once the old claim lapses.

use std::time::Duration;

use redis::Script;

use super::connection::Commands;

/// The claim. One key, so it lives on one node of a Redis Cluster.
const KEY: &str = "chat:embedded-store";
/// How long a claim outlives its last renewal.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);
/// How often a running server renews its claim.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);

/// Takes or renews the claim for `ARGV[1]` unless another id holds it;
/// returns the holder's id then.
const CLAIM: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
";

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("this Redis is in use by a server on another embedded store ({holder})")]
    HeldBy { holder: String },
    #[error("cannot claim Redis for the embedded store: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Claims the Redis for the embedded store `store_id`.
pub async fn claim(commands: &mut Commands, store_id: &str) -> Result<(), ClaimError> {
    let holder: Option<String> = Script::new(CLAIM)
        .key(KEY)
        .arg(store_id)
        .arg(CLAIM_TTL.as_secs())
        .invoke_async(commands)
        .await?;
    match holder {
        Some(holder) => Err(ClaimError::HeldBy { holder }),
        None => Ok(()),
    }
}

/// Renews the claim for as long as the server runs.
pub async fn keep(mut commands: Commands, store_id: String) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        match claim(&mut commands, &store_id).await {
            Ok(()) => {}
            Err(e @ ClaimError::HeldBy { .. }) => {
                tracing::error!(error = %e, "another server took this Redis: run several servers on one MongoDB");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the embedded store's claim on Redis")
            }
        }
    }
}
