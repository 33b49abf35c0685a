//! Who may write in a room, as this pod knows it: learned from the store
//! once, then kept until an event says otherwise, so a post in steady state
//! asks the database nothing.
//!
//! What makes that safe is the bus: while this pod listens to a room, every
//! removal from it (and its deletion) reaches the pod as an eviction, in
//! order with what was published before. So a membership read from the
//! store stays true until an eviction arrives, provided the read began while
//! the pod was already listening and no eviction of the room overtook it.
//! A [`Ticket`], taken before the read, carries the room's generation; the
//! answer is kept only if the generation is unchanged when it comes back.
//! Every eviction of the room, the end of listening, and a gap in the bus's
//! control frames ([`Admissions::lost`]: its pub/sub connection dropped or
//! came back) move the generation on.
//!
//! Pure state behind a mutex: no I/O, unit tested below.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::model::Id;
use crate::sync::lock;

#[derive(Default)]
pub(crate) struct Admissions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The rooms this pod listens to, each with its generation and the
    /// users known to be its members since then.
    rooms: HashMap<Id, Room>,
    /// The last generation handed out: every change takes a new one, so a
    /// ticket of a room listened to before never matches a later listening.
    last: u64,
}

struct Room {
    generation: u64,
    members: HashSet<Id>,
}

/// A room's generation when a membership read began (`None`: the pod did not
/// listen to the room yet, so an eviction could have passed it by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    room: Id,
    generation: Option<u64>,
}

impl Inner {
    /// Moves `room`'s generation on (a ticket taken before no longer
    /// admits) and forgets `user`, or everyone, there.
    fn forget(&mut self, room: Id, user: Option<Id>) {
        self.last += 1;
        if let Some(state) = self.rooms.get_mut(&room) {
            state.generation = self.last;
            match user {
                Some(user) => {
                    state.members.remove(&user);
                }
                None => state.members.clear(),
            }
        }
    }
}

impl Admissions {
    /// The pod now receives `room`'s evictions (its bus subscription is
    /// active). Listening already: nothing changes.
    pub(crate) fn listening(&self, room: Id) {
        let mut inner = lock(&self.inner);
        if !inner.rooms.contains_key(&room) {
            inner.last += 1;
            let generation = inner.last;
            inner.rooms.insert(
                room,
                Room {
                    generation,
                    members: HashSet::new(),
                },
            );
        }
    }

    /// The pod stopped receiving `room`: what it knew may go stale.
    pub(crate) fn deaf(&self, room: Id) {
        lock(&self.inner).rooms.remove(&room);
    }

    /// Taken before reading `room`'s membership from the store.
    pub(crate) fn ticket(&self, room: Id) -> Ticket {
        Ticket {
            room,
            generation: lock(&self.inner).rooms.get(&room).map(|r| r.generation),
        }
    }

    /// The store said `user` is a member of the ticket's room: kept unless an
    /// eviction, the end of listening or a gap came since the ticket.
    /// Returns whether it was kept.
    pub(crate) fn admit(&self, ticket: Ticket, user: Id) -> bool {
        let mut inner = lock(&self.inner);
        match inner.rooms.get_mut(&ticket.room) {
            Some(room) if Some(room.generation) == ticket.generation => {
                room.members.insert(user);
                true
            }
            _ => false,
        }
    }

    /// Whether `user` is known to be a member of `room`.
    pub(crate) fn is_admitted(&self, room: Id, user: Id) -> bool {
        lock(&self.inner)
            .rooms
            .get(&room)
            .is_some_and(|r| r.members.contains(&user))
    }

    /// `user` (or everyone) is no longer known to be a member of `room`: an
    /// eviction, or a change that the store must be asked about again.
    pub(crate) fn forget(&self, room: Id, user: Option<Id>) {
        lock(&self.inner).forget(room, user);
    }

    /// `user` is no longer known to be a member of any room (someone blocked
    /// them: their direct room must be asked about again).
    pub(crate) fn forget_user(&self, user: Id) {
        let mut inner = lock(&self.inner);
        let rooms: Vec<Id> = inner
            .rooms
            .iter()
            .filter(|(_, r)| r.members.contains(&user))
            .map(|(room, _)| *room)
            .collect();
        for room in rooms {
            inner.forget(room, Some(user));
        }
    }

    /// The bus may have missed evictions (its pub/sub connection dropped or
    /// came back): everything learned is learned again.
    pub(crate) fn lost(&self) {
        let mut inner = lock(&self.inner);
        let rooms: Vec<Id> = inner.rooms.keys().copied().collect();
        for room in rooms {
            inner.forget(room, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Id, Id, Id) {
        (Id::new(), Id::new(), Id::new())
    }

    #[test]
    fn a_membership_read_while_listening_is_kept_until_an_eviction() {
        let (room, alice, bob) = ids();
        let admissions = Admissions::default();
        admissions.listening(room);
        for user in [alice, bob] {
            let ticket = admissions.ticket(room);
            assert!(admissions.admit(ticket, user));
        }
        assert!(admissions.is_admitted(room, alice));
        admissions.forget(room, Some(alice));
        assert!(!admissions.is_admitted(room, alice));
        assert!(admissions.is_admitted(room, bob), "only alice was evicted");
        admissions.forget(room, None);
        assert!(!admissions.is_admitted(room, bob));
    }

    #[test]
    fn a_read_begun_before_listening_is_not_kept() {
        let (room, alice, _) = ids();
        let admissions = Admissions::default();
        let ticket = admissions.ticket(room);
        admissions.listening(room);
        assert!(!admissions.admit(ticket, alice));
        assert!(!admissions.is_admitted(room, alice));
    }

    #[test]
    fn an_eviction_that_overtakes_a_read_discards_its_answer() {
        let (room, alice, bob) = ids();
        let admissions = Admissions::default();
        admissions.listening(room);
        let ticket = admissions.ticket(room);
        // The read began; meanwhile bob's removal arrived (the answer may
        // predate any removal, so none is trusted).
        admissions.forget(room, Some(bob));
        assert!(!admissions.admit(ticket, alice));
        assert!(admissions.admit(admissions.ticket(room), alice));
    }

    #[test]
    fn listening_again_does_not_revive_an_old_ticket() {
        let (room, alice, _) = ids();
        let admissions = Admissions::default();
        admissions.listening(room);
        let ticket = admissions.ticket(room);
        admissions.deaf(room);
        admissions.listening(room);
        assert!(!admissions.admit(ticket, alice));
        // Listening twice keeps what is known.
        assert!(admissions.admit(admissions.ticket(room), alice));
        admissions.listening(room);
        assert!(admissions.is_admitted(room, alice));
        admissions.deaf(room);
        assert!(!admissions.is_admitted(room, alice));
    }

    /// Admissions listening to two rooms, with `alice` known in both.
    fn alice_in_two_rooms() -> (Admissions, Id, Id, Id) {
        let (room, other, alice) = ids();
        let admissions = Admissions::default();
        for room in [room, other] {
            admissions.listening(room);
            assert!(admissions.admit(admissions.ticket(room), alice));
        }
        (admissions, room, other, alice)
    }

    #[test]
    fn a_gap_in_the_bus_forgets_everything_and_in_flight_reads() {
        let (admissions, room, other, alice) = alice_in_two_rooms();
        let in_flight = admissions.ticket(room);
        admissions.lost();
        assert!(!admissions.is_admitted(room, alice));
        assert!(!admissions.is_admitted(other, alice));
        assert!(!admissions.admit(in_flight, alice));
    }

    #[test]
    fn forgetting_a_user_reaches_every_room_they_were_known_in() {
        let (admissions, room, other, alice) = alice_in_two_rooms();
        admissions.forget_user(alice);
        assert!(!admissions.is_admitted(room, alice));
        assert!(!admissions.is_admitted(other, alice));
    }
}
