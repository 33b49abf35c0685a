//! The bus: how a message gets its `seq`, becomes durable and reaches every
//! subscriber on every pod. Two implementations:
//! - [`local::LocalBus`]: one process; seq from the store, written before delivery;
//! - [`redis::RedisBus`]: many pods sharing Redis: an atomic script assigns the
//!   seq, queues the message for persistence on a stream, keeps a short recent
//!   buffer for resume and publishes it, so pub/sub order is seq order.

pub(crate) mod local;
pub mod redis;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use crate::model::{Id, Message, Session, ThreadRole, Timestamp};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("bus error: {0}")]
    Internal(String),
}

/// Whose connections a frame about the room list is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Every connected user: a public room appeared or went.
    Everyone,
    /// These users only: a private room's members, a direct room's two people.
    Users(Vec<Id>),
}

impl Audience {
    pub fn includes(&self, user: Id) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Users(users) => users.contains(&user),
        }
    }
}

/// Where a bus hands what arrives for this process: the engine's hub, which
/// knows the connections (as Centrifuge's broker calls its node's handler).
/// The bus knows rooms, seqs and encoded frames, never a socket.
pub trait Deliver: Send + Sync + 'static {
    /// A message (or change) of `room` at `seq`, for the room's subscribers
    /// here; `accepted` is when it was accepted, for the delivery latency
    /// the hub measures (the same for every bus), and `role` what it does
    /// to the room's threads, which the hub keeps for replies posted here.
    fn message(
        &self,
        room: Id,
        seq: u64,
        accepted: Option<Timestamp>,
        role: ThreadRole,
        frame: Utf8Bytes,
    );
    /// A seq-less event (typing, read, presence) for the room's subscribers here.
    fn event(&self, room: Id, frame: Utf8Bytes);
    /// A frame about room lists or profiles, for `audience`'s connections here.
    fn notice(&self, audience: &Audience, frame: &Utf8Bytes);
    /// Stops delivering `room` to `user` (or to everyone) here.
    fn evict(&self, room: Id, user: Option<Id>);
    /// Evictions may have been missed (the pub/sub connection dropped, or
    /// came back after a drop): what was known to hold until an eviction
    /// said otherwise must be learned again.
    fn lost(&self);
    /// The live connections here (of `user`, or all), named as on `pod`.
    fn sessions(&self, pod: &str, user: Option<Id>) -> Vec<Session>;
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether the shared service behind the bus answers, for readiness;
    /// `None` when there is none.
    async fn ping(&self) -> Option<Result<(), BusError>> {
        None
    }

    /// Gives `draft` the room's next seq, makes it durable and delivers it to
    /// every subscriber of the room. With `dedupe` (the sender's id and
    /// client_id, unique within the room), a retry returns the message stored
    /// the first time.
    async fn append(&self, draft: Message, dedupe: Option<String>) -> Result<Message, BusError>;

    /// The newest seq of the room.
    async fn newest_seq(&self, room: Id) -> Result<u64, BusError>;

    /// The messages with `after < seq <= upto`, in order, for a resume;
    /// `None` once they are more than `MAX_RESUME` or their JSON more than
    /// `max_bytes`: reading stops there, so a resume from far behind costs
    /// one budget's worth of reads, not the whole backlog. Seqs may have
    /// gaps (a Redis failover skips ahead), so `upto - after` does not
    /// count them.
    async fn missed(
        &self,
        room: Id,
        after: u64,
        upto: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<Message>>, BusError>;

    /// This process starts receiving `room`; returns once it will not miss any.
    async fn subscribe(&self, room: Id) -> Result<(), BusError>;

    /// This process has no subscriber of `room` left.
    async fn unsubscribe(&self, room: Id);

    /// Relays a seq-less frame (typing, read, presence) to the room's
    /// subscribers everywhere. Best effort: such frames are not stored.
    async fn publish_event(&self, room: Id, frame: Utf8Bytes);

    /// Delivers a frame about the room list (a room added to or removed
    /// from it) to `audience`'s connections on every pod. Best effort, as
    /// typing is: a client that missed one still finds the room in
    /// `GET /api/rooms`.
    async fn notify(&self, audience: Audience, frame: Utf8Bytes);

    /// Stops delivery of `room` to `user` (or to everyone) on every pod.
    async fn evict(&self, room: Id, user: Option<Id>);

    /// Records or refreshes a local connection in the cluster-wide list.
    async fn session_changed(&self, session: &Session);

    async fn session_closed(&self, user: Id, connection_id: &str);

    /// The live connections of `user` on every pod, oldest first.
    async fn sessions_of(&self, user: Id) -> Result<Vec<Session>, BusError>;
}

/// How many missed messages one resume replays; a client further behind reads
/// the history API first.
pub const MAX_RESUME: u64 = 1000;

/// How many messages the bus reads from Redis or the store at a time for a
/// resume, between checks of its budget.
pub const READ_CHUNK: u64 = 64;

/// What a resume may still read (see [`Bus::missed`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadBudget {
    messages: u64,
    bytes: usize,
}

impl ReadBudget {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            messages: crate::bus::MAX_RESUME,
            bytes: max_bytes,
        }
    }

    /// Spends one message of `bytes`; false once the budget is overspent.
    pub fn spend(&mut self, bytes: usize) -> bool {
        match (self.messages.checked_sub(1), self.bytes.checked_sub(bytes)) {
            (Some(messages), Some(bytes)) => {
                self.messages = messages;
                self.bytes = bytes;
                true
            }
            _ => false,
        }
    }
}

/// The stored messages with `after < seq < before`, oldest first, read a
/// chunk at a time while `budget` lasts (`None` once it is overspent).
/// Sizes are those of the JSON of a stored message without history's
/// fields, near enough to stop reading where the exact check would refuse.
pub async fn stored_between(
    store: &dyn crate::store::Store,
    room: Id,
    after: u64,
    before: u64,
    budget: &mut ReadBudget,
) -> Result<Option<Vec<Message>>, BusError> {
    let mut found = Vec::new();
    let mut from = after;
    while from + 1 < before {
        let limit = (before - from - 1).min(READ_CHUNK);
        let page = store
            .messages(room, crate::model::HistoryQuery::After { seq: from, limit })
            .await?;
        let full = page.messages.len() as u64 == limit;
        for message in page.messages {
            if message.seq >= before {
                return Ok(Some(found));
            }
            if !budget.spend(approximate_len(&message)) {
                return Ok(None);
            }
            from = message.seq;
            found.push(message);
        }
        if !full {
            break;
        }
    }
    Ok(Some(found))
}

/// A lower bound of `message`'s JSON length: its texts plus the fixed
/// fields (ids, timestamp, names).
fn approximate_len(message: &Message) -> usize {
    const FIXED: usize = 160;
    FIXED
        + message.content.len()
        + message.username.len()
        + message.attachments.len() * FIXED
        + message.mentions.len() * 26
}

/// A message with seq 0 serialized, split where the seq goes, so Redis can
/// splice in the seq it assigns without parsing JSON. `Message` ends with `seq`.
pub fn split_at_seq(draft: &Message) -> Result<(String, String), BusError> {
    let json = serde_json::to_string(&Message {
        seq: 0,
        ..draft.clone()
    })
    .map_err(|e| BusError::Internal(format!("cannot serialize a message: {e}")))?;
    let head = json
        .strip_suffix("0}")
        .filter(|head| head.ends_with("\"seq\":"))
        .ok_or_else(|| BusError::Internal("message JSON does not end with its seq".into()))?;
    Ok((head.to_owned(), "}".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageKind;

    #[test]
    fn a_message_can_be_spliced_with_its_seq() {
        let draft = Message {
            target_seq: Some(3),
            reply_to: Some(2),
            mentions: vec![Id::new()],
            mentions_room: true,
            ..Message::new(
                MessageKind::Edit,
                Id::new(),
                Id::new(),
                "a\"lice".into(),
                "\"seq\":0}".into(),
            )
        };
        let (head, tail) = split_at_seq(&draft).unwrap();
        let spliced: Message = serde_json::from_str(&format!("{head}42{tail}")).unwrap();
        assert_eq!(spliced, Message { seq: 42, ..draft });
    }
}
