//! The chat service: what a connection or a REST call can do to a room's live
//! stream, independent of how messages are sequenced and fanned out (see
//! [`crate::bus`]). One `Chat`, its work split by job:
//!
//! - [`post`]: posting and changing messages;
//! - [`open`]: opening a room with or without a resume point, and closing it;
//! - [`presence`]: presence, sessions, last seen, typing and read events;
//! - [`membership`]: membership confirmed, swept, joined and announced;
//! - [`limits`]: the per-user budgets.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Histogram;

use crate::bus::{Audience, Bus, BusError};
use crate::engine::hub::Hub;
use crate::model::{Author, Id, Message, MessageKind};
use crate::store::{Store, StoreError};
use crate::wire::errors::{ErrorCode, WireError};
use crate::wire::frames::{ServerFrame, encode};

mod limits;
mod membership;
mod open;
mod post;
mod presence;
#[cfg(test)]
mod tests;

pub use crate::bus::MAX_RESUME;
pub use limits::Limits;
pub use membership::MEMBERSHIP_SWEEP;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("you are not in this room")]
    NotSubscribed,
    #[error("no such room")]
    NoSuchRoom,
    #[error("too many messages; retry in {0:?}")]
    RateLimited(Duration),
    #[error("missed more than {MAX_RESUME} messages; load them with the history API, then resume")]
    TooFarBehind,
    #[error("no such message in this room")]
    NoSuchMessage,
    #[error("no such attachment of yours in this room")]
    NoSuchAttachment,
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("{0}")]
    TooManyReactions(&'static str),
    #[error("messaging is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One mapping for both shells: REST and WebSocket refuse alike.
impl From<ChatError> for WireError {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::NoSuchRoom | ChatError::NoSuchMessage | ChatError::NoSuchAttachment => {
                Self::new(ErrorCode::NotFound, error.to_string())
            }
            ChatError::NotSubscribed => Self::new(ErrorCode::NotJoined, error.to_string()),
            ChatError::RateLimited(wait) => Self::rate_limited(error.to_string(), wait),
            ChatError::TooFarBehind => Self::new(ErrorCode::ResumeTooFar, error.to_string()),
            ChatError::NotAllowed(why) => Self::forbidden(why),
            ChatError::TooManyReactions(why) => Self::new(ErrorCode::TooManyReactions, why),
            ChatError::Unavailable(detail) => {
                Self::unavailable("messaging is unavailable; try again shortly", detail)
            }
            ChatError::Store(e) => e.into(),
        }
    }
}

impl From<BusError> for ChatError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::Store(e) => ChatError::Store(e),
            BusError::Unavailable(detail) => ChatError::Unavailable(detail),
            BusError::Internal(detail) => ChatError::Store(StoreError::Internal(detail)),
        }
    }
}

/// What a member posts: text, files, or both; maybe in a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub content: String,
    /// A reply in the thread of the message at this seq.
    pub reply_to: Option<u64>,
    /// Files uploaded to the room by the sender.
    pub attachments: Vec<Id>,
}

/// What a change does to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Its new text.
    Edit(String),
    Delete,
    /// The sender's reaction, an emoji, added or taken back.
    React(String),
    Unreact(String),
}

/// A membership change made through the REST API, for its system message.
#[derive(Debug, Clone, Copy)]
pub enum Membership<'a> {
    Added { by: &'a str },
    Left,
    Removed { by: &'a str },
}

pub struct Chat {
    store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    /// The per-user budgets.
    pub limits: Limits,
    /// Until when the store is taken to be down (see `confirm_member`).
    store_down_until: Mutex<Option<Instant>>,
    /// Users by lower-cased username, as mentions name them: a username
    /// never changes and a user is never deleted, so an entry stays true.
    usernames: moka::sync::Cache<String, Id>,
    /// `chat_append_latency_seconds`: acceptance to the bus's answer.
    append_latency: Histogram,
    pod: String,
}

/// The most usernames a pod keeps for resolving mentions (some 100 bytes
/// each); the least used go first.
const USERNAMES_KEPT: u64 = 100_000;

impl Chat {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        pod: &str,
        per_sec: u32,
        burst: u32,
        append_latency: Histogram,
    ) -> Self {
        Self {
            store,
            hub,
            bus,
            limits: Limits::new(per_sec, burst),
            store_down_until: Mutex::default(),
            usernames: moka::sync::Cache::new(USERNAMES_KEPT),
            append_latency,
            pod: pod.to_owned(),
        }
    }

    pub fn bus_name(&self) -> &'static str {
        self.bus.name()
    }

    /// Drops rate-limiter state of users idle long enough to have a full
    /// bucket.
    pub fn forget_idle_users(&self) {
        self.limits.forget_idle();
    }

    /// Posts a server message about `about` (joins, leaves, room events).
    pub async fn post_system(
        &self,
        room: Id,
        about: &Author,
        content: String,
    ) -> Result<Message, ChatError> {
        self.append(draft(room, about, MessageKind::System, content), None)
            .await
    }

    /// Appends `draft` to its room's stream (see [`Bus::append`]), timing it.
    async fn append(&self, draft: Message, dedupe: Option<String>) -> Result<Message, ChatError> {
        let accepted = draft.timestamp;
        let appended = self.bus.append(draft, dedupe).await?;
        let elapsed = (crate::model::now() - accepted).as_seconds_f64();
        self.append_latency.observe(elapsed.max(0.0));
        Ok(appended)
    }

    /// Sends `frame` to every connection of `audience`, on every pod: a
    /// change to their room lists, or to someone's profile.
    pub async fn notify(&self, audience: Audience, frame: &ServerFrame) {
        self.bus.notify(audience, encode(frame)).await;
    }

    /// The room is gone: nobody receives it any more.
    pub async fn room_deleted(&self, room: Id) {
        self.bus.evict(room, None).await;
    }

    /// Relays a seq-less event (typing, read marker, presence) to the room.
    pub async fn relay(&self, room: Id, frame: &ServerFrame) {
        self.bus.publish_event(room, encode(frame)).await;
    }
}

fn draft(room: Id, author: &Author, kind: MessageKind, content: String) -> Message {
    Message::new(kind, room, author.id, author.username.clone(), content)
}
