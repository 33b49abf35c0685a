//! The names of a room's keys and channel. Each carries the room id as its
//! hash tag, so in a Redis Cluster they all live on the room's shard.

use crate::model::Id;

/// The channel of frames about users' room lists (see `Bus::notify`), which
/// every pod subscribes to; each hands a frame to the connections of its
/// audience. Such frames are rare (a room created, a member added).
pub(super) const NOTICES: &str = "chat:notices";

/// The room's pub/sub channel (sharded in a cluster).
pub(super) fn channel(room: Id) -> String {
    format!("chat:room:{{{room}}}")
}

/// The room's newest seq.
pub(super) fn seq_key(room: Id) -> String {
    format!("chat:room:{{{room}}}:seq")
}

/// The counter before the keys had hash tags; read once when a room's
/// counter is missing, so an upgrade never reuses a seq acked but not yet
/// persisted.
pub(super) fn legacy_seq_key(room: Id) -> String {
    format!("chat:room:{room}:seq")
}

/// Present while the room's dedupe keys may have been lost (see
/// `append::RECHECK_SECS`); the append script names it the same way.
pub(super) fn recheck_key(room: Id) -> String {
    format!("{}:recheck", seq_key(room))
}

/// The room's recent messages, a stream whose ids are their seqs.
pub(super) fn log_key(room: Id) -> String {
    format!("chat:room:{{{room}}}:log")
}

/// A retry's key: the sender and client_id (`key`) within the room.
pub(super) fn dedupe_key(room: Id, key: &str) -> String {
    format!("chat:room:{{{room}}}:dedupe:{key}")
}

/// Beside a persist stream (sharing its hash tag, so its shard): the
/// replication id of the primary appends last ran on, the epoch it started,
/// and the epoch each room's seq was last fenced in (see the append script).
pub(super) fn fence_key(stream: &str) -> String {
    format!("{stream}:fence")
}

/// The room a channel name belongs to.
pub(super) fn room_of_channel(channel: &str) -> Option<Id> {
    channel
        .strip_prefix("chat:room:{")?
        .strip_suffix('}')?
        .parse()
        .ok()
}

pub(super) fn sessions_key(user: Id) -> String {
    format!("chat:sessions:{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_names_its_room() {
        let room = Id::new();
        assert_eq!(room_of_channel(&channel(room)), Some(room));
        assert_eq!(room_of_channel("chat:room:{nope}"), None);
        assert_eq!(room_of_channel(&seq_key(room)), None);
    }
}
