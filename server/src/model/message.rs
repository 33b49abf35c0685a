use serde::{Deserialize, Serialize};

use super::{Id, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Written by a member.
    Text,
    /// Written by the server: joins, leaves and room events.
    System,
}

/// A chat message exactly as clients receive it, live or from history:
/// `{"type","id","room_id","user_id","username","content","timestamp","seq"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: MessageKind,
    pub id: Id,
    pub room_id: Id,
    pub user_id: Id,
    pub username: String,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: Timestamp,
    /// Position in the room, starting at 1 and increasing by one per message.
    pub seq: u64,
}

/// Which slice of a room's history to read. Both forms return messages oldest
/// first, so a page can be appended to or prepended to a view as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The `limit` messages before the newest `offset` ones: offset 0 is the latest page.
    Latest { offset: u64, limit: u64 },
    /// The `limit` messages with a seq below `seq`: scrolling back from a known message.
    BeforeSeq { seq: u64, limit: u64 },
    /// The `limit` messages with a seq above `seq`: what a resuming client missed.
    After { seq: u64, limit: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// All messages in the room.
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_the_wire_shape() {
        let message = Message {
            kind: MessageKind::Text,
            id: Id::new(),
            room_id: Id::new(),
            user_id: Id::new(),
            username: "alice".into(),
            content: "hi".into(),
            timestamp: time::macros::datetime!(2026-01-02 03:04:05.678 UTC),
            seq: 7,
        };
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["type"], "text");
        assert_eq!(json["timestamp"], "2026-01-02T03:04:05.678Z");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["id"], message.id.to_string());
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back, message);
    }
}
