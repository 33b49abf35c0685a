//! Login attempt limits, per account and per client address, so passwords
//! cannot be guessed quickly from one machine or against one account from
//! many. Limits are per instance (GCRA token buckets from `governor`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Attempts per account: a burst of 10, then one every 6 seconds.
const ACCOUNT_BURST: u32 = 10;
const ACCOUNT_PERIOD: Duration = Duration::from_secs(6);
/// Attempts per address: a burst of 30, then one per second (shared NATs log in a lot).
const ADDRESS_BURST: u32 = 30;
const ADDRESS_PERIOD: Duration = Duration::from_secs(1);

pub struct LoginLimits {
    accounts: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
}

fn quota(period: Duration, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map_or_else(|| Quota::per_second(burst), |q| q.allow_burst(burst))
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            accounts: DefaultKeyedRateLimiter::keyed(quota(ACCOUNT_PERIOD, ACCOUNT_BURST)),
            addresses: DefaultKeyedRateLimiter::keyed(quota(ADDRESS_PERIOD, ADDRESS_BURST)),
        }
    }
}

impl LoginLimits {
    /// Takes one attempt for `account` (a normalised e-mail) from `address`, or
    /// says how long to wait.
    pub fn check(&self, account: &str, address: IpAddr) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        self.addresses
            .check_key(&address)
            .map_err(|wait| wait.wait_time_from(now))?;
        self.accounts
            .check_key(&account.to_owned())
            .map_err(|wait| wait.wait_time_from(now))
    }

    /// Forgets keys idle long enough to have full buckets.
    pub fn forget_idle(&self) {
        self.accounts.retain_recent();
        self.addresses.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gets_its_burst_then_waits() {
        let limits = LoginLimits::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..ACCOUNT_BURST {
            assert!(limits.check("alice@example.com", ip).is_ok());
        }
        let wait = limits.check("alice@example.com", ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= ACCOUNT_PERIOD, "{wait:?}");
        assert!(
            limits.check("bob@example.com", ip).is_ok(),
            "other accounts are unaffected"
        );
    }

    #[test]
    fn an_address_gets_its_burst_across_accounts() {
        let limits = LoginLimits::default();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        for i in 0..ADDRESS_BURST {
            assert!(limits.check(&format!("user{i}@example.com"), ip).is_ok());
        }
        assert!(limits.check("another@example.com", ip).is_err());
        assert!(
            limits
                .check("another@example.com", "10.0.0.3".parse().unwrap())
                .is_ok()
        );
    }
}
