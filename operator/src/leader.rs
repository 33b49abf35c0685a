//! Leader election through a `coordination.k8s.io` Lease, so that two
//! replicas of the operator never reconcile at once: only the holder runs the
//! controller, and a holder that loses the Lease stops (and is restarted as a
//! follower) rather than risk two writers.
//!
//! The lease manager renews the Lease, but a renewal that fails (the API
//! server unreachable from this pod, or refusing it) only logs: it would go
//! on reconciling past the moment a follower may take the Lease over. So
//! this replica also reads the Lease back on its own, and steps down once
//! its last renewal is older than [`STEP_DOWN_AFTER`], before the Lease can
//! expire for the others. Every call of the election has a deadline (the
//! caller gives a client with timeouts, and the reads here are bounded).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a Lease is held without renewal, and how early it is renewed:
/// every 10 s.
const LEASE_SECONDS: u64 = 20;
const RENEW_GRACE_SECONDS: u64 = 10;
/// A renewal this late means renewals fail: stop reconciling. With a check
/// every [`CHECK_EVERY`], each read bounded by [`CALL_TIMEOUT`], this
/// replica has stopped at most 18 s after its last renewal, before the 20 s
/// after which a follower may take the Lease.
const STEP_DOWN_AFTER: Duration = Duration::from_secs(15);
const CHECK_EVERY: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
// Stopped before a follower may take over; a renewal merely late by a check
// does not trip it.
const _: () = assert!(
    STEP_DOWN_AFTER.as_secs() + CHECK_EVERY.as_secs() + CALL_TIMEOUT.as_secs() < LEASE_SECONDS
);
const _: () = assert!(
    LEASE_SECONDS - RENEW_GRACE_SECONDS + CHECK_EVERY.as_secs() + CALL_TIMEOUT.as_secs()
        < STEP_DOWN_AFTER.as_secs()
);

pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    leases: Api<Lease>,
    name: String,
    identity: String,
}

/// Starts competing for the Lease `name` in `namespace` as `identity`.
pub async fn compete(
    client: Client,
    name: &str,
    namespace: &str,
    identity: &str,
) -> Result<Leadership, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client.clone(), name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_GRACE_SECONDS)
        .build()
        .await?;
    let (state, task) = manager.watch().await;
    Ok(Leadership {
        state,
        task,
        leases: Api::namespaced(client, namespace),
        name: name.to_owned(),
        identity: identity.to_owned(),
    })
}

impl Leadership {
    /// Waits until this replica holds the Lease; false if the election stopped.
    pub async fn acquired(&mut self) -> bool {
        self.state.wait_for(|leader| *leader).await.is_ok()
    }

    /// A future that resolves when this replica no longer holds the Lease,
    /// or can no longer be sure it does (see [`renewal_age`]).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        let leases = self.leases.clone();
        let (name, identity) = (self.name.clone(), self.identity.clone());
        async move {
            tokio::select! {
                _ = state.wait_for(|leader| !*leader) => {}
                () = overdue(leases, name, identity) => {}
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Gives the Lease up, so a follower takes over at once instead of
    /// waiting for it to expire.
    pub async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "releasing the leader lease"),
            Ok(Err(error)) => tracing::warn!(%error, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
}

/// Resolves once this replica's last renewal seen is [`STEP_DOWN_AFTER`]
/// old, or the Lease names another holder. A read that fails keeps the last
/// renewal seen: an API server this replica cannot reach is one it cannot
/// renew on either.
async fn overdue(leases: Api<Lease>, name: String, identity: String) {
    // Called right after the Lease was acquired.
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        match tokio::time::timeout(CALL_TIMEOUT, leases.get(&name)).await {
            Ok(Ok(lease)) => {
                let now = k8s_openapi::jiff::Timestamp::now();
                match renewal_age(&lease, &identity, now) {
                    Some(age) => {
                        renewed = tokio::time::Instant::now()
                            .checked_sub(age)
                            .unwrap_or(renewed);
                    }
                    None => {
                        let holder = lease.spec.and_then(|s| s.holder_identity);
                        tracing::error!(?holder, "the leader lease names another holder");
                        return;
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "reading the leader lease"),
            Err(_) => tracing::warn!("reading the leader lease timed out"),
        }
        if renewed.elapsed() >= STEP_DOWN_AFTER {
            tracing::error!(
                since_renewal_s = renewed.elapsed().as_secs(),
                "the leader lease has not been renewed in time; stepping down"
            );
            return;
        }
    }
}

/// How long ago `identity` last renewed `lease` (its own clock wrote
/// `renewTime`, so no skew between machines enters), or `None` if the Lease
/// is not held by `identity`.
pub fn renewal_age(
    lease: &Lease,
    identity: &str,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        // Held with no time: as old as can be.
        return Some(Duration::MAX);
    };
    let age = now.duration_since(renewed.0);
    Some(Duration::try_from(age).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    fn lease(holder: &str, renewed: Option<Timestamp>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                renew_time: renewed.map(MicroTime),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn the_age_of_the_last_renewal_is_read_from_the_lease() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let twelve_ago = now - SignedDuration::from_secs(12);
        assert_eq!(
            renewal_age(&lease("me", Some(twelve_ago)), "me", now),
            Some(Duration::from_secs(12))
        );
        // Another holder: not ours at all.
        assert_eq!(renewal_age(&lease("other", Some(now)), "me", now), None);
        assert_eq!(renewal_age(&Lease::default(), "me", now), None);
        // A renewal "in the future" (a clock stepped back): not overdue.
        let ahead = now + SignedDuration::from_secs(3);
        assert_eq!(
            renewal_age(&lease("me", Some(ahead)), "me", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            renewal_age(&lease("me", None), "me", now),
            Some(Duration::MAX)
        );
    }
}
