//! What a post needs to know about a room, as this pod knows it: who may
//! write in it (and so may be mentioned), learned from the store once, then
//! kept until an event says otherwise; and which of its recent messages a
//! reply may answer, from the messages delivered here. A post in steady
//! state asks the database nothing.
//!
//! What makes that safe is the bus: while this pod listens to a room, every
//! message, removal (and its deletion) reaches the pod, removals as
//! evictions, in order with what was published before. So a membership read
//! from the store stays true until an eviction arrives, provided the read
//! began while the pod was already listening and no eviction of the room
//! overtook it. A [`Ticket`], taken before the read, carries the room's
//! generation; the answer is kept only if the generation is unchanged when
//! it comes back. Every eviction of the room, the end of listening, and a
//! gap in the bus's frames ([`Admissions::lost`]: its pub/sub connection
//! dropped or came back) move the generation on. Threads need no ticket:
//! from the first message delivered here on, the pod sees every later one,
//! deletions included ([`Parents`]); a gap starts that over.
//!
//! Pure state behind a mutex: no I/O, unit tested below.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use crate::model::{Id, ThreadRole};
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
    parents: Parents,
}

/// The most messages per room that [`Parents`] keeps as answerable: replies
/// answer recent messages; an older parent is looked up in the store.
const RECENT_PARENTS: usize = 256;

/// Which of a room's recent seqs a reply may answer, from what was
/// delivered here: the text messages on the main line not deleted since.
#[derive(Default)]
struct Parents {
    /// Every seq from the first to the second was delivered here (`None`:
    /// nothing yet since listening began, or since a gap).
    seen: Option<(u64, u64)>,
    /// Of those, the seqs a reply may answer.
    open: BTreeSet<u64>,
}

impl Parents {
    fn delivered(&mut self, seq: u64, role: ThreadRole) {
        self.seen = match self.seen {
            // Delivered before (a repair after a reconnection): applied then.
            Some((_, newest)) if seq <= newest => return,
            Some((from, _)) => Some((from, seq)),
            None => Some((seq, seq)),
        };
        match role {
            ThreadRole::Parent => {
                self.open.insert(seq);
            }
            ThreadRole::Deletes(target) => {
                self.open.remove(&target);
            }
            ThreadRole::Other => {}
        }
        if self.open.len() > RECENT_PARENTS
            && let (Some(oldest), Some((_, newest))) = (self.open.pop_first(), self.seen)
        {
            self.seen = Some((oldest + 1, newest));
        }
    }

    /// Whether a reply may answer `seq`; `None` when this pod cannot tell.
    fn answerable(&self, seq: u64) -> Option<bool> {
        let (from, newest) = self.seen?;
        (from..=newest)
            .contains(&seq)
            .then(|| self.open.contains(&seq))
    }
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
                    parents: Parents::default(),
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
        self.admit_all(ticket, &[user])
    }

    /// [`Admissions::admit`] for every one of `users` (a room's members, as
    /// one read of the room listed them).
    pub(crate) fn admit_all(&self, ticket: Ticket, users: &[Id]) -> bool {
        let mut inner = lock(&self.inner);
        match inner.rooms.get_mut(&ticket.room) {
            Some(room) if Some(room.generation) == ticket.generation => {
                room.members.extend(users);
                true
            }
            _ => false,
        }
    }

    /// A fresh read of `room` listed `members`: whoever is known here but
    /// not among them was removed and the eviction did not arrive.
    pub(crate) fn keep_only(&self, room: Id, members: &[Id]) {
        let members: HashSet<&Id> = members.iter().collect();
        let mut inner = lock(&self.inner);
        let gone: Vec<Id> = inner.rooms.get(&room).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .filter(|m| !members.contains(m))
                .copied()
                .collect()
        });
        for user in gone {
            inner.forget(room, Some(user));
        }
    }

    /// The bus delivered `room`'s message at `seq` here.
    pub(crate) fn delivered(&self, room: Id, seq: u64, role: ThreadRole) {
        if let Some(room) = lock(&self.inner).rooms.get_mut(&room) {
            room.parents.delivered(seq, role);
        }
    }

    /// Whether a reply in `room` may answer the message at `seq` (a text
    /// message on the main line, not deleted); `None` when this pod cannot
    /// tell (older than what it keeps, or newer than what reached it).
    pub(crate) fn answerable(&self, room: Id, seq: u64) -> Option<bool> {
        lock(&self.inner).rooms.get(&room)?.parents.answerable(seq)
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

    /// The bus may have missed evictions and messages (its pub/sub
    /// connection dropped or came back): everything learned is learned again.
    pub(crate) fn lost(&self) {
        let mut inner = lock(&self.inner);
        let rooms: Vec<Id> = inner.rooms.keys().copied().collect();
        for room in rooms {
            inner.forget(room, None);
        }
        for room in inner.rooms.values_mut() {
            room.parents = Parents::default();
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

    #[test]
    fn a_room_read_admits_every_member_and_a_fresh_read_drops_the_removed() {
        let (room, alice, bob) = ids();
        let admissions = Admissions::default();
        admissions.listening(room);
        assert!(admissions.admit_all(admissions.ticket(room), &[alice, bob]));
        assert!(admissions.is_admitted(room, alice) && admissions.is_admitted(room, bob));
        // A sweep's read no longer lists bob: his eviction was lost.
        let in_flight = admissions.ticket(room);
        admissions.keep_only(room, &[alice]);
        assert!(admissions.is_admitted(room, alice));
        assert!(!admissions.is_admitted(room, bob));
        assert!(
            !admissions.admit(in_flight, bob),
            "a read begun before the sweep may predate the removal"
        );
    }

    #[test]
    fn a_reply_may_answer_a_recent_message_of_the_main_line_until_it_is_deleted() {
        let (room, _, _) = ids();
        let admissions = Admissions::default();
        admissions.listening(room);
        assert_eq!(
            admissions.answerable(room, 7),
            None,
            "nothing delivered yet"
        );
        admissions.delivered(room, 7, ThreadRole::Parent);
        admissions.delivered(room, 8, ThreadRole::Other);
        admissions.delivered(room, 9, ThreadRole::Parent);
        assert_eq!(admissions.answerable(room, 7), Some(true));
        assert_eq!(
            admissions.answerable(room, 8),
            Some(false),
            "a reply or a change"
        );
        assert_eq!(
            admissions.answerable(room, 6),
            None,
            "before this pod listened"
        );
        assert_eq!(
            admissions.answerable(room, 10),
            None,
            "not delivered here yet"
        );
        admissions.delivered(room, 10, ThreadRole::Deletes(7));
        assert_eq!(admissions.answerable(room, 7), Some(false));
        // A repair hands over what was delivered already: no resurrection.
        admissions.delivered(room, 7, ThreadRole::Parent);
        assert_eq!(admissions.answerable(room, 7), Some(false));
        assert_eq!(admissions.answerable(room, 9), Some(true));
    }

    #[test]
    fn threads_are_learned_again_after_a_gap_and_only_recent_ones_are_kept() {
        let (room, _, _) = ids();
        let admissions = Admissions::default();
        admissions.listening(room);
        admissions.delivered(room, 1, ThreadRole::Parent);
        admissions.lost();
        assert_eq!(admissions.answerable(room, 1), None);
        admissions.delivered(room, 2, ThreadRole::Parent);
        assert_eq!(admissions.answerable(room, 1), None);
        assert_eq!(admissions.answerable(room, 2), Some(true));

        let last = 2 + RECENT_PARENTS as u64;
        for seq in 3..=last {
            admissions.delivered(room, seq, ThreadRole::Parent);
        }
        assert_eq!(admissions.answerable(room, 2), None, "the oldest went");
        assert_eq!(admissions.answerable(room, 3), Some(true));
        assert_eq!(admissions.answerable(room, last), Some(true));
        admissions.deaf(room);
        assert_eq!(admissions.answerable(room, last), None);
    }
}
