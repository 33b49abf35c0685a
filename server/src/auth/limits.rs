//! Sign-in and sign-up limits per client address and per account, so passwords
//! cannot be guessed quickly and accounts cannot be made by the thousand.
//! Limits are per instance (GCRA token buckets from `governor`); addresses are
//! the HTTP shell's client buckets (`ClientAddress::bucket`: the client
//! behind trusted proxies, IPv6 per /64).
//!
//! A wrong password locks out the pair (account, address) that tried it, not
//! the account: anyone who knows an e-mail could otherwise keep its owner out
//! by failing on purpose. Guessing one account from many addresses is still
//! bounded by a looser per-account bucket, which an address the account
//! signed in from lately skips: failures from everywhere else (110 from 11
//! addresses) must not keep the owner out at home.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::sync::lock;

/// Attempts per account from one address: a burst of 10, then one every 6 seconds.
const PAIR_BURST: u32 = 10;
const PAIR_PERIOD: Duration = Duration::from_secs(6);
/// Attempts per account from everywhere: a burst of 100, then one a second.
const ACCOUNT_BURST: u32 = 100;
const ACCOUNT_PERIOD: Duration = Duration::from_secs(1);
/// Attempts per address: a burst of 30, then one per second (shared NATs log in a lot).
const ADDRESS_BURST: u32 = 30;
const ADDRESS_PERIOD: Duration = Duration::from_secs(1);
/// Sign-ups per address are `CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR`, a third of
/// them at once. This also bounds how fast `/register` can be used to learn
/// which e-mails have accounts.
const SIGNUP_BURST_SHARE: u32 = 3;
/// An address an account signed in from is known to it for this long...
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// ...and a pod remembers at most this many (account, address) pairs; past
/// it, the oldest tenth is forgotten.
const KNOWN_MAX: usize = 100_000;

pub struct LoginLimits {
    pairs: DefaultKeyedRateLimiter<(String, IpAddr)>,
    accounts: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    /// (account, address) pairs that signed in, and when they last did.
    known: Mutex<HashMap<(String, IpAddr), Instant>>,
}

fn quota(period: Duration, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map_or_else(|| Quota::per_second(burst), |q| q.allow_burst(burst))
}

impl LoginLimits {
    pub fn new(signups_per_hour: u32) -> Self {
        let signups_per_hour = signups_per_hour.max(1);
        let signup_period = Duration::from_secs(3600) / signups_per_hour;
        let signup_burst = (signups_per_hour / SIGNUP_BURST_SHARE).max(1);
        Self {
            pairs: DefaultKeyedRateLimiter::keyed(quota(PAIR_PERIOD, PAIR_BURST)),
            accounts: DefaultKeyedRateLimiter::keyed(quota(ACCOUNT_PERIOD, ACCOUNT_BURST)),
            addresses: DefaultKeyedRateLimiter::keyed(quota(ADDRESS_PERIOD, ADDRESS_BURST)),
            registrations: DefaultKeyedRateLimiter::keyed(quota(signup_period, signup_burst)),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one sign-in attempt for `account` (a normalised e-mail) from
    /// `address`, or says how long to wait.
    pub fn check(&self, account: &str, address: IpAddr) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        let wait = |e: governor::NotUntil<_>| e.wait_time_from(now);
        self.addresses.check_key(&address).map_err(wait)?;
        let pair = (account.to_owned(), address);
        self.pairs.check_key(&pair).map_err(wait)?;
        let known = lock(&self.known)
            .get(&pair)
            .is_some_and(|at| at.elapsed() < KNOWN_FOR);
        if known {
            return Ok(());
        }
        self.accounts.check_key(&pair.0).map_err(wait)
    }

    /// Remembers that `account` signed in from `address` (see [`KNOWN_FOR`]).
    pub fn signed_in(&self, account: &str, address: IpAddr) {
        let mut known = lock(&self.known);
        if known.len() >= KNOWN_MAX {
            let mut ages: Vec<Instant> = known.values().copied().collect();
            let (_, cut, _) = ages.select_nth_unstable(KNOWN_MAX / 10);
            let cut = *cut;
            known.retain(|_, at| *at > cut);
        }
        known.insert((account.to_owned(), address), Instant::now());
    }

    /// Takes one sign-up from `address`, or says how long to wait.
    pub fn check_registration(&self, address: IpAddr) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        self.registrations
            .check_key(&address)
            .map_err(|e| e.wait_time_from(now))
    }

    /// Forgets keys idle long enough to have full buckets.
    pub fn forget_idle(&self) {
        self.pairs.retain_recent();
        self.accounts.retain_recent();
        self.addresses.retain_recent();
        self.registrations.retain_recent();
        lock(&self.known).retain(|_, at| at.elapsed() < KNOWN_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gets_its_burst_from_one_address_then_waits() {
        let limits = LoginLimits::new(60);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..PAIR_BURST {
            assert!(limits.check("alice@example.com", ip).is_ok());
        }
        let wait = limits.check("alice@example.com", ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= PAIR_PERIOD, "{wait:?}");
        assert!(
            limits.check("bob@example.com", ip).is_ok(),
            "other accounts are unaffected"
        );
    }

    #[test]
    fn someone_failing_on_purpose_does_not_lock_the_owner_out() {
        let limits = LoginLimits::new(60);
        let attacker: IpAddr = "203.0.113.66".parse().unwrap();
        while limits.check("alice@example.com", attacker).is_ok() {}
        assert!(
            limits
                .check("alice@example.com", "198.51.100.7".parse().unwrap())
                .is_ok(),
            "alice signs in from her own address"
        );
    }

    #[test]
    fn one_account_guessed_from_many_addresses_hits_the_account_bucket() {
        let limits = LoginLimits::new(60);
        let refused = (0..=ACCOUNT_BURST)
            .map(|i| IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]))
            .filter(|ip| limits.check("alice@example.com", *ip).is_err())
            .count();
        assert_eq!(refused, 1);
    }

    #[test]
    fn an_address_the_account_signed_in_from_skips_the_account_bucket() {
        let limits = LoginLimits::new(60);
        let home: IpAddr = "198.51.100.7".parse().unwrap();
        limits.signed_in("alice@example.com", home);
        for i in 0..=ACCOUNT_BURST {
            let _ = limits.check("alice@example.com", IpAddr::from([10, 2, 0, i as u8]));
        }
        assert!(
            limits
                .check("alice@example.com", "198.51.100.8".parse().unwrap())
                .is_err(),
            "a new address waits"
        );
        assert!(
            limits.check("alice@example.com", home).is_ok(),
            "home does not"
        );
    }

    #[test]
    fn an_address_gets_its_burst_across_accounts() {
        let limits = LoginLimits::new(60);
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

    #[test]
    fn sign_ups_are_limited_per_address() {
        let limits = LoginLimits::new(60);
        let ip: IpAddr = "10.0.0.4".parse().unwrap();
        for _ in 0..20 {
            assert!(limits.check_registration(ip).is_ok());
        }
        let wait = limits.check_registration(ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(
            limits
                .check_registration("10.0.0.5".parse().unwrap())
                .is_ok()
        );
    }
}
