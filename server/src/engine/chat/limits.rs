//! Per-user budgets: messages (and REST changes, which post system
//! messages), typing and read events, control frames (join, leave, resume,
//! auth, ping), and reads whose cost grows with the room. GCRA buckets from
//! `governor`, per instance; pure, so tested here without a server.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::ChatError;
use crate::model::Id;

/// Typing and read frames per user per second, after a burst.
const EVENTS_PER_SEC: NonZeroU32 = NonZeroU32::new(5).unwrap();
const EVENT_BURST: NonZeroU32 = NonZeroU32::new(20).unwrap();
/// Join, leave, resume, auth and ping frames per user per second, after a
/// burst big enough for several tabs reopening dozens of rooms at once.
const CONTROL_PER_SEC: NonZeroU32 = NonZeroU32::new(20).unwrap();
const CONTROL_BURST: NonZeroU32 = NonZeroU32::new(200).unwrap();
/// Reads whose cost grows with the room (a search, history by `offset`), in
/// units per user per second, after a burst: see [`Limits::read`].
const READS_PER_SEC: NonZeroU32 = NonZeroU32::new(10).unwrap();
const READ_BURST: NonZeroU32 = NonZeroU32::new(100).unwrap();
/// A resume costs one more control frame per this many bytes it read: a
/// replay of 2 MiB is the work of 32 frames, not one.
const REPLAY_BYTES_PER_FRAME: usize = 64 * 1024;

pub struct Limits {
    /// Messages and changes, and REST calls that post system messages.
    messages: DefaultKeyedRateLimiter<Id>,
    /// Typing and read markers: not stored, but fanned out to the whole room,
    /// so they get a budget of their own.
    events: DefaultKeyedRateLimiter<Id>,
    /// Join, leave, resume, auth and ping: each costs a store read, a replay
    /// or a fan-out of presence, so they are budgeted too.
    control: DefaultKeyedRateLimiter<Id>,
    /// Searches and history read by offset: their cost grows with the
    /// rooms' size, so they have a budget of their own, charged by cost.
    reads: DefaultKeyedRateLimiter<Id>,
}

impl Limits {
    /// With `per_sec` messages a second per user after a burst of `burst`
    /// (CHAT_RATE_LIMIT_PER_SEC and _BURST); the other budgets are fixed.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            messages: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            events: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(EVENTS_PER_SEC).allow_burst(EVENT_BURST),
            ),
            control: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(CONTROL_PER_SEC).allow_burst(CONTROL_BURST),
            ),
            reads: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(READS_PER_SEC).allow_burst(READ_BURST),
            ),
        }
    }

    /// Takes one message of `user`'s budget: a message or change, or a REST
    /// change that posts a system message or changes rooms (create, join,
    /// leave, add, remove, promote, delete, open a direct room, a profile):
    /// looping over them would otherwise flood a room with system messages.
    pub fn message(&self, user: Id) -> Result<(), ChatError> {
        take(&self.messages, user)
    }

    /// Takes one typing or read frame of `user`'s budget.
    pub fn event(&self, user: Id) -> Result<(), ChatError> {
        take(&self.events, user)
    }

    /// Takes one control frame (join, leave, resume, auth, ping) of `user`'s budget.
    pub fn control(&self, user: Id) -> Result<(), ChatError> {
        take(&self.control, user)
    }

    /// Takes `units` of `user`'s read budget (at most the whole burst), or
    /// says how long to wait: a search costs 5, a history page 1 per 1,000
    /// messages its `offset` skips.
    pub fn read(&self, user: Id, units: u32) -> Result<(), ChatError> {
        let units = NonZeroU32::new(units.min(READ_BURST.get())).unwrap_or(NonZeroU32::MIN);
        match self.reads.check_key_n(&user, units) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ChatError::RateLimited(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // Never more than the burst: unreachable, and no reason to refuse.
            Err(_) => Ok(()),
        }
    }

    /// Charges `user`'s control budget for a replay that read `bytes`, or
    /// empties it when it has less left: the next frames then wait.
    pub fn charge_replay(&self, user: Id, bytes: usize) {
        let mut owed = u32::try_from(bytes / REPLAY_BYTES_PER_FRAME).unwrap_or(u32::MAX);
        let mut step = owed.min(CONTROL_BURST.get());
        while let Some(cells) = NonZeroU32::new(step.min(owed)) {
            match self.control.check_key_n(&user, cells) {
                Ok(Ok(())) => owed -= cells.get(),
                // Fewer left than that: take what there is, halving.
                _ => step /= 2,
            }
        }
    }

    /// Drops the state of users idle long enough to have full buckets.
    pub fn forget_idle(&self) {
        self.messages.retain_recent();
        self.events.retain_recent();
        self.control.retain_recent();
        self.reads.retain_recent();
    }
}

/// Takes one token of `key`'s budget in `limiter`, or says how long to wait.
fn take(limiter: &DefaultKeyedRateLimiter<Id>, key: Id) -> Result<(), ChatError> {
    limiter.check_key(&key).map_err(|not_until| {
        ChatError::RateLimited(not_until.wait_time_from(DefaultClock::default().now()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals(results: impl Iterator<Item = Result<(), ChatError>>) -> usize {
        results.filter(|r| r.is_err()).count()
    }

    #[test]
    fn each_budget_is_per_user_and_its_own() {
        let limits = Limits::new(1, 3);
        let (alice, bob) = (Id::new(), Id::new());
        assert_eq!(refusals((0..5).map(|_| limits.message(alice))), 2);
        assert!(limits.message(bob).is_ok(), "bob's budget is his");
        assert!(limits.event(alice).is_ok(), "events are another budget");
        assert!(limits.control(alice).is_ok());
        assert!(
            matches!(limits.message(alice), Err(ChatError::RateLimited(wait)) if wait.as_millis() > 0)
        );
    }

    #[test]
    fn reads_are_charged_by_cost_and_never_refused_for_being_dear() {
        let limits = Limits::new(10, 20);
        let alice = Id::new();
        assert!(limits.read(alice, 60).is_ok());
        assert!(limits.read(alice, 30).is_ok());
        assert!(limits.read(alice, 30).is_err(), "100 a burst: 90 spent");
        // More than the whole burst costs the whole burst, once it is full.
        let bob = Id::new();
        assert!(limits.read(bob, u32::MAX).is_ok());
        assert!(limits.read(bob, 1).is_err());
    }

    #[test]
    fn a_replay_spends_a_control_frame_per_64_kib_and_empties_what_is_short() {
        let limits = Limits::new(10, 20);
        let alice = Id::new();
        // 2 MiB: 32 frames of 200.
        for _ in 0..6 {
            limits.charge_replay(alice, 2 * 1024 * 1024);
        }
        assert!(limits.control(alice).is_ok(), "8 frames left");
        limits.charge_replay(alice, 2 * 1024 * 1024);
        assert!(
            limits.control(alice).is_err(),
            "charged past what was left: empty"
        );
        let bob = Id::new();
        limits.charge_replay(bob, 1000);
        assert_eq!(
            refusals((0..200).map(|_| limits.control(bob))),
            0,
            "under 64 KiB is free"
        );
    }
}
