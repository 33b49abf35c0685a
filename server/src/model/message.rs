use serde::{Deserialize, Serialize};

use super::{Id, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
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
        !Self::SHOWN.contains(&self)
    }

    /// What history pages show: messages, not the changes made to them
    /// (both stores query by this list).
    pub const SHOWN: [MessageKind; 2] = [MessageKind::Text, MessageKind::System];

    /// What search covers: members' text and the edits of it (an edit's
    /// match finds its message as it is now).
    pub const SEARCHED: [MessageKind; 2] = [MessageKind::Text, MessageKind::Edit];
}

/// What a message does to its room's threads, as the pods delivering it
/// keep track (see `engine::admission`): a reply may answer a text message
/// on the main line until a deletion takes it away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// A text message on the main line: replies may answer it.
    Parent,
    /// The deletion of the message at this seq.
    Deletes(u64),
    /// Anything else: a reply, a system message, an edit, a reaction.
    Other,
}

impl ThreadRole {
    pub fn of(kind: MessageKind, reply_to: Option<u64>, target_seq: Option<u64>) -> Self {
        match (kind, target_seq) {
            (MessageKind::Text, _) if reply_to.is_none() => Self::Parent,
            (MessageKind::Delete, Some(target)) => Self::Deletes(target),
            _ => Self::Other,
        }
    }
}

/// A chat message exactly as clients receive it, live or from history:
/// `{"type","id","room_id","user_id","username","content","timestamp","seq"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ts_rs::TS)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: MessageKind,
    pub id: Id,
    pub room_id: Id,
    pub user_id: Id,
    pub username: String,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    #[ts(type = "string")]
    pub timestamp: Timestamp,
    /// For an edit or a deletion: the seq of the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub target_seq: Option<u64>,
    /// A reply in the thread of the message at this seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
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
    #[ts(type = "string", optional)]
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
    /// On its room's main line, as history pages list it: a message (no
    /// change) that is not a reply in a thread.
    pub fn on_main_line(&self) -> bool {
        !self.kind.is_change() && self.reply_to.is_none()
    }

    pub fn thread_role(&self) -> ThreadRole {
        ThreadRole::of(self.kind, self.reply_to, self.target_seq)
    }

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

/// A resume replays what a client missed as it is now. Each message in
/// `replay` gets the changes made to it since (its last text, its deletion,
/// its reactions); the change records stay, so seqs remain contiguous, but
/// none carries text its target no longer shows: an edit that a later edit
/// replaced, or of a message deleted since, is sent without its text.
/// Before this, a client that joined after a message was edited and
/// deleted received the original and the edited text by resuming from 0.
pub fn as_now(replay: &mut [Message]) {
    let changes: Vec<Message> = replay
        .iter()
        .filter(|m| m.kind.is_change())
        .cloned()
        .collect();
    if changes.is_empty() {
        return;
    }
    apply_changes(replay, &changes);
    let mut shown_edit = std::collections::HashMap::new();
    let mut deleted = std::collections::HashSet::new();
    for change in &changes {
        let Some(target) = change.target_seq else {
            continue;
        };
        match change.kind {
            MessageKind::Delete => {
                deleted.insert(target);
            }
            MessageKind::Edit => {
                let newest = shown_edit.entry(target).or_insert(change.seq);
                *newest = (*newest).max(change.seq);
            }
            _ => {}
        }
    }
    for edit in replay.iter_mut().filter(|m| m.kind == MessageKind::Edit) {
        let Some(target) = edit.target_seq else {
            continue;
        };
        if deleted.contains(&target) || shown_edit.get(&target) != Some(&edit.seq) {
            edit.content.clear();
        }
    }
}

/// The most distinct reactions one message shows, and the most of them one
/// member may add: a message collects a bounded set, not a record per click.
pub const MAX_REACTIONS: usize = 20;
pub const MAX_REACTIONS_PER_USER: usize = 10;

/// What storing a change makes of the earlier changes to the same message
/// that still count (see [`settle`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Earlier changes that no longer count: left out of what history reads
    /// for the message (still stored, in seq order, for resumes).
    pub settled: Vec<u64>,
    /// Whether the new change itself counts (a repeated reaction and a
    /// reaction taken back do not).
    pub counts: bool,
    /// Records whose text is gone for good: edits replaced by a later one or
    /// of a message now deleted, and the deleted message itself.
    pub blanked: Vec<u64>,
}

/// The one compaction policy both stores apply as they store `change`,
/// given the changes to its target that still count (`live`, any order):
/// a message keeps at most its last edit, one record per reaction still
/// there, and its deletion, so history reads a bounded set however many
/// clicks there were; a deletion also blanks every copy of its text.
pub fn settle(change: &Message, live: &[Message]) -> Settled {
    let earlier = live.iter().filter(|c| c.seq < change.seq);
    if change.kind != MessageKind::Delete && earlier.clone().any(|c| c.kind == MessageKind::Delete)
    {
        // A change that raced the deletion: it shows nothing, keeps no text.
        return Settled {
            blanked: Vec::from_iter(Some(change.seq).filter(|_| change.kind == MessageKind::Edit)),
            ..Settled::default()
        };
    }
    let same_reaction = |c: &&Message| c.user_id == change.user_id && c.content == change.content;
    match change.kind {
        MessageKind::Edit => {
            let replaced: Vec<u64> = earlier
                .filter(|c| c.kind == MessageKind::Edit)
                .map(|c| c.seq)
                .collect();
            Settled {
                blanked: replaced.clone(),
                settled: replaced,
                counts: true,
            }
        }
        MessageKind::React => Settled {
            counts: !earlier
                .filter(|c| c.kind == MessageKind::React)
                .any(|c| same_reaction(&c)),
            ..Settled::default()
        },
        MessageKind::Unreact => {
            let settled: Vec<u64> = earlier
                .filter(|c| c.kind == MessageKind::React)
                .filter(same_reaction)
                .map(|c| c.seq)
                .collect();
            Settled {
                settled,
                counts: false,
                blanked: Vec::new(),
            }
        }
        MessageKind::Delete => {
            let earlier: Vec<&Message> = earlier.collect();
            let mut blanked: Vec<u64> = earlier
                .iter()
                .filter(|c| c.kind == MessageKind::Edit)
                .map(|c| c.seq)
                .collect();
            blanked.extend(change.target_seq);
            Settled {
                settled: earlier.iter().map(|c| c.seq).collect(),
                counts: true,
                blanked,
            }
        }
        MessageKind::Text | MessageKind::System => Settled::default(),
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
    fn a_replay_shows_no_text_that_was_edited_away_or_deleted() {
        let mut replay = vec![
            message(MessageKind::Text, 1, "my password is hunter2", None),
            message(MessageKind::Edit, 2, "my password is ***", Some(1)),
            message(MessageKind::Text, 3, "typo", None),
            message(MessageKind::Edit, 4, "typ0", Some(3)),
            message(MessageKind::Edit, 5, "typo fixed", Some(3)),
            message(MessageKind::Delete, 6, "", Some(1)),
            // The client has seq 0 (before the replay): its edit comes as
            // the change, its deletion too, and no text of it.
            message(MessageKind::Edit, 7, "older secret", Some(0)),
            message(MessageKind::Delete, 8, "", Some(0)),
        ];
        as_now(&mut replay);
        let seqs: Vec<u64> = replay.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7, 8], "no seq goes missing");
        assert!(replay[0].deleted && replay[0].content.is_empty());
        assert_eq!(replay[2].content, "typo fixed");
        let texts: Vec<&str> = replay.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["", "", "typo fixed", "", "typo fixed", "", "", ""]);
        let json = serde_json::to_string(&replay).unwrap();
        for secret in ["hunter2", "***", "older secret", "typ0"] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
    }

    #[test]
    fn a_message_keeps_its_last_edit_its_reactions_and_its_deletion() {
        let bob = Id::new();
        let by = |mut m: Message, user: Id| {
            m.user_id = user;
            m
        };
        let edit = message(MessageKind::Edit, 2, "one", Some(1));
        let react = by(message(MessageKind::React, 3, "👍", Some(1)), bob);
        let live = vec![edit.clone(), react.clone()];
        let again = settle(&message(MessageKind::Edit, 4, "two", Some(1)), &live);
        assert_eq!(
            (again.settled, again.blanked, again.counts),
            (vec![2], vec![2], true)
        );
        let twice = settle(
            &by(message(MessageKind::React, 5, "👍", Some(1)), bob),
            &live,
        );
        assert!(!twice.counts && twice.settled.is_empty());
        let other = settle(&message(MessageKind::React, 5, "👍", Some(1)), &live);
        assert!(other.counts, "another member's same emoji counts");
        let back = settle(
            &by(message(MessageKind::Unreact, 6, "👍", Some(1)), bob),
            &live,
        );
        assert_eq!((back.settled, back.counts), (vec![3], false));
        let gone = settle(&message(MessageKind::Delete, 7, "", Some(1)), &live);
        assert_eq!(gone.settled, vec![2, 3]);
        assert_eq!(gone.blanked, vec![2, 1], "its edit and the message");
        assert!(gone.counts);
        let late = settle(
            &message(MessageKind::Edit, 8, "raced", Some(1)),
            &[message(MessageKind::Delete, 7, "", Some(1))],
        );
        assert_eq!((late.counts, late.blanked), (false, vec![8]));
        // Stored again (a replayed batch): later records are not "earlier".
        let replayed = settle(&react, &live);
        assert!(replayed.counts, "a record does not repeat itself");
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
