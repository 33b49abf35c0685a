use serde::{Deserialize, Serialize};

use super::{Id, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Written by a member.
    Text,
    /// Written by the server: joins, leaves and room events.
    System,
    /// A change to the text of the message at `target_seq` (its author's).
    Edit,
    /// The message at `target_seq` deleted (by its author, or the room's
    /// owner or an admin): it stays in history as a tombstone.
    Delete,
    /// The sender's reaction `content` (an emoji) added to the message at `target_seq`.
    React,
    /// The sender's reaction `content` taken back from the message at `target_seq`.
    Unreact,
}

impl MessageKind {
    const ALL: [MessageKind; 6] = [
        MessageKind::Text,
        MessageKind::System,
        MessageKind::Edit,
        MessageKind::Delete,
        MessageKind::React,
        MessageKind::Unreact,
    ];

    /// The `type` on the wire and in the store.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::System => "system",
            MessageKind::Edit => "edit",
            MessageKind::Delete => "delete",
            MessageKind::React => "react",
            MessageKind::Unreact => "unreact",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// A change to another message (an edit, a deletion, a reaction): in
    /// the stream with a seq of its own, so live delivery and resume carry
    /// it, but shown by changing its target.
    pub fn is_change(self) -> bool {
        !matches!(self, MessageKind::Text | MessageKind::System)
    }
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
    /// For an edit or a deletion: the seq of the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<u64>,
    /// A reply in the thread of the message at this seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// In history: how many replies its thread has.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_count: u64,
    /// Members the text mentions (`@username`), resolved when it was posted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Id>,
    /// The text calls the whole room (`@room`, by its owner or an admin).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mentions_room: bool,
    /// Files posted with the text (uploaded first, to the same room).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<super::AttachedFile>,
    /// In history: when the text was last edited.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub edited_at: Option<Timestamp>,
    /// In history: deleted; the content is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// In history: who reacted with what, by emoji.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reactions: std::collections::BTreeMap<String, Vec<Id>>,
    /// Position in the room, starting at 1 and increasing by one per message
    /// or change. Last, so Redis can splice it in (see `split_at_seq`).
    pub seq: u64,
}

impl Message {
    /// A new message or change of `kind` by `user_id`, now, not yet numbered
    /// (seq 0: the bus gives it its seq), with nothing else set.
    pub fn new(
        kind: MessageKind,
        room_id: Id,
        user_id: Id,
        username: String,
        content: String,
    ) -> Self {
        Self {
            kind,
            id: Id::new(),
            room_id,
            user_id,
            username,
            content,
            timestamp: super::now(),
            target_seq: None,
            reply_to: None,
            reply_count: 0,
            mentions: Vec::new(),
            mentions_room: false,
            attachments: Vec::new(),
            edited_at: None,
            deleted: false,
            reactions: Default::default(),
            seq: 0,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// History shows messages as they are now: applies `changes` (edits and
/// deletions, in any order) to `messages`, in seq order. A deletion is
/// final: an edit after it changes nothing.
pub fn apply_changes(messages: &mut [Message], changes: &[Message]) {
    let mut changes: Vec<&Message> = changes.iter().filter(|c| c.kind.is_change()).collect();
    changes.sort_by_key(|c| c.seq);
    for change in changes {
        let Some(target) = messages
            .iter_mut()
            .find(|m| Some(m.seq) == change.target_seq && m.kind == MessageKind::Text)
        else {
            continue;
        };
        match change.kind {
            MessageKind::Edit if !target.deleted => {
                target.content.clone_from(&change.content);
                target.edited_at = Some(change.timestamp);
            }
            MessageKind::Delete => {
                target.deleted = true;
                target.content.clear();
                target.attachments.clear();
                target.edited_at = None;
                target.reactions.clear();
            }
            MessageKind::React if !target.deleted => {
                let users = target.reactions.entry(change.content.clone()).or_default();
                if !users.contains(&change.user_id) {
                    users.push(change.user_id);
                }
            }
            MessageKind::Unreact => {
                if let Some(users) = target.reactions.get_mut(&change.content) {
                    users.retain(|u| *u != change.user_id);
                    if users.is_empty() {
                        target.reactions.remove(&change.content);
                    }
                }
            }
            _ => {}
        }
    }
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
            timestamp: time::macros::datetime!(2026-01-02 03:04:05.678 UTC),
            seq: 7,
            ..Message::new(
                MessageKind::Text,
                Id::new(),
                Id::new(),
                "alice".into(),
                "hi".into(),
            )
        };
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["type"], "text");
        assert_eq!(json["timestamp"], "2026-01-02T03:04:05.678Z");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["id"], message.id.to_string());
        // Fields of changes and of history's view are absent from a plain message.
        for absent in [
            "target_seq",
            "mentions",
            "mentions_room",
            "edited_at",
            "deleted",
            "reactions",
        ] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back, message);
    }

    fn message(kind: MessageKind, seq: u64, content: &str, target: Option<u64>) -> Message {
        Message {
            timestamp: time::macros::datetime!(2026-01-02 03:04:05 UTC)
                + time::Duration::seconds(i64::try_from(seq).unwrap()),
            target_seq: target,
            seq,
            ..Message::new(kind, Id::new(), Id::new(), "alice".into(), content.into())
        }
    }

    #[test]
    fn history_shows_the_last_edit_and_deletions_for_good() {
        let mut messages = vec![
            message(MessageKind::Text, 1, "helo", None),
            message(MessageKind::Text, 2, "oops", None),
            message(MessageKind::System, 3, "bob joined", None),
        ];
        let changes = vec![
            // Out of order, as a page of changes may come.
            message(MessageKind::Edit, 6, "hello!", Some(1)),
            message(MessageKind::Edit, 4, "hello", Some(1)),
            message(MessageKind::Delete, 5, "", Some(2)),
            message(MessageKind::Edit, 7, "undeleted?", Some(2)),
            // A system message cannot be changed.
            message(MessageKind::Delete, 8, "", Some(3)),
        ];
        apply_changes(&mut messages, &changes);
        assert_eq!(messages[0].content, "hello!");
        assert_eq!(messages[0].edited_at, Some(changes[0].timestamp));
        assert!(messages[1].deleted && messages[1].content.is_empty());
        assert_eq!(messages[1].edited_at, None);
        assert!(!messages[2].deleted);
        let json = serde_json::to_value(&messages[0]).unwrap();
        assert!(json["edited_at"].is_string(), "{json}");
    }

    #[test]
    fn reactions_are_sets_per_emoji_and_go_with_a_deletion() {
        let mut messages = vec![
            message(MessageKind::Text, 1, "hi", None),
            message(MessageKind::Text, 2, "bye", None),
        ];
        let mut bob = message(MessageKind::React, 3, "👍", Some(1));
        bob.user_id = Id::new();
        let mut bob_again = bob.clone();
        bob_again.seq = 4;
        let carol = message(MessageKind::React, 5, "👍", Some(1));
        let mut bob_back = bob.clone();
        bob_back.kind = MessageKind::Unreact;
        bob_back.seq = 6;
        let party = message(MessageKind::React, 7, "🎉", Some(2));
        let gone = message(MessageKind::Delete, 8, "", Some(2));
        apply_changes(
            &mut messages,
            &[bob, bob_again, carol.clone(), bob_back, party, gone],
        );
        assert_eq!(messages[0].reactions.get("👍"), Some(&vec![carol.user_id]));
        assert!(
            messages[1].reactions.is_empty(),
            "a deleted message keeps no reactions"
        );
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_name(kind.name()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
