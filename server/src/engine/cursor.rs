//! Per-connection, per-room delivery cursors: the piece that makes resume
//! exact (no gap, no duplicate) while live messages keep arriving.
//!
//! A connection's outbox holds one [`Cursors`] under its lock. Live messages
//! and replayed history meet here, under that lock, so their interleaving is
//! decided in one place:
//! - `Live { last }`: a message with `seq <= last` was already sent and is dropped;
//! - `Resuming`: live messages are held until the replay arrives, then those
//!   newer than the replay follow it.

use std::collections::HashMap;

use crate::model::Id;

/// A frame ready to write, tagged with its room seq.
pub(crate) type Sequenced<F> = (u64, F);

#[derive(Debug)]
enum Cursor<F> {
    Live { last: u64 },
    Resuming { held: Vec<Sequenced<F>> },
}

#[derive(Debug)]
pub struct Cursors<F> {
    rooms: HashMap<Id, Cursor<F>>,
}

impl<F> Default for Cursors<F> {
    fn default() -> Self {
        Self {
            rooms: HashMap::new(),
        }
    }
}

impl<F> Cursors<F> {
    pub fn left(&mut self, room: Id) {
        self.rooms.remove(&room);
    }

    /// A resume began: hold live messages until [`Cursors::replayed`].
    pub fn resuming(&mut self, room: Id) {
        self.rooms
            .insert(room, Cursor::Resuming { held: Vec::new() });
    }

    /// A live message: what to write now (nothing, it, or nothing yet).
    pub fn live(&mut self, room: Id, seq: u64, frame: F) -> Option<F> {
        match self.rooms.get_mut(&room) {
            Some(Cursor::Live { last }) if seq <= *last => None,
            Some(Cursor::Live { last }) => {
                *last = seq;
                Some(frame)
            }
            Some(Cursor::Resuming { held }) => {
                held.push((seq, frame));
                None
            }
            // Not subscribed (any more): a message still in flight from before a leave.
            None => None,
        }
    }

    /// The replay of a resume: everything after the client's `last_seq` up to
    /// `upto`, in seq order. Returns the frames to write, in order: the replay,
    /// then the held live messages newer than it.
    pub fn replayed(&mut self, room: Id, replay: Vec<Sequenced<F>>, upto: u64) -> Vec<F> {
        let held = match self.rooms.remove(&room) {
            Some(Cursor::Resuming { held }) => held,
            Some(live @ Cursor::Live { .. }) => {
                // A second resume overtook this one; it will deliver.
                self.rooms.insert(room, live);
                return Vec::new();
            }
            None => return Vec::new(),
        };
        let mut out = Vec::with_capacity(replay.len() + held.len());
        let mut last = 0;
        for (seq, frame) in replay {
            if seq > last {
                last = seq;
                out.push(frame);
            }
        }
        last = last.max(upto);
        for (seq, frame) in held {
            if seq > last {
                last = seq;
                out.push(frame);
            }
        }
        self.rooms.insert(room, Cursor::Live { last });
        out
    }

    pub fn is_subscribed(&self, room: Id) -> bool {
        self.rooms.contains_key(&room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_flow_once_in_order() {
        let room = Id::new();
        let mut cursors = Cursors::default();
        cursors.resuming(room);
        assert!(
            cursors.replayed(room, Vec::new(), 4).is_empty(),
            "joined when the room was at 4"
        );
        assert_eq!(cursors.live(room, 4, "m4"), None, "already seen at join");
        assert_eq!(cursors.live(room, 5, "m5"), Some("m5"));
        assert_eq!(cursors.live(room, 5, "m5 again"), None, "a duplicate");
        assert_eq!(cursors.live(room, 6, "m6"), Some("m6"));
    }

    #[test]
    fn messages_of_rooms_not_joined_are_dropped() {
        let room = Id::new();
        let mut cursors = Cursors::default();
        assert_eq!(cursors.live(room, 1, "m1"), None);
        cursors.resuming(room);
        cursors.replayed(room, Vec::new(), 0);
        cursors.left(room);
        assert_eq!(cursors.live(room, 2, "m2"), None);
    }

    #[test]
    fn resume_replays_then_continues_without_gap_or_duplicate() {
        let room = Id::new();
        let mut cursors = Cursors::default();
        cursors.resuming(room);
        // Live messages 8..=10 arrive while the replay of 4..=8 is being read.
        assert_eq!(cursors.live(room, 8, "m8 live"), None);
        assert_eq!(cursors.live(room, 9, "m9"), None);
        assert_eq!(cursors.live(room, 10, "m10"), None);
        let out = cursors.replayed(room, vec![(5, "m5"), (6, "m6"), (7, "m7"), (8, "m8")], 8);
        assert_eq!(out, vec!["m5", "m6", "m7", "m8", "m9", "m10"]);
        assert_eq!(cursors.live(room, 10, "m10 again"), None);
        assert_eq!(cursors.live(room, 11, "m11"), Some("m11"));
    }

    #[test]
    fn an_empty_replay_still_releases_held_messages() {
        let room = Id::new();
        let mut cursors = Cursors::default();
        cursors.resuming(room);
        assert_eq!(cursors.live(room, 3, "m3"), None);
        assert_eq!(cursors.replayed(room, Vec::new(), 2), vec!["m3"]);
        assert_eq!(cursors.live(room, 4, "m4"), Some("m4"));
    }
}
