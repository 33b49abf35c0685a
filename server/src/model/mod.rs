//! Domain types shared by the HTTP layer and both stores.
//!
//! These types know nothing about BSON or redb: each store maps them to its own
//! records, so the API shape and the storage shape can evolve separately.

mod attachment;
mod id;
mod message;
mod room;
mod session;
mod user;

pub use attachment::{AttachedFile, Attachment, Blob, Upload};
pub use id::{Id, InvalidId};
pub use message::{
    HistoryPage, HistoryQuery, MAX_REACTIONS, MAX_REACTIONS_PER_USER, Message, MessageKind,
    Settled, ThreadRole, apply_changes, as_now, settle,
};
pub use room::{Room, RoomKind, RoomPage};
pub use session::Session;
pub use user::{Author, MAX_BLOCKED, ProfileUpdate, RefreshToken, Revoke, User};

/// Timestamps are stored and compared as UTC instants and rendered as RFC 3339.
pub type Timestamp = time::OffsetDateTime;

/// The current instant, truncated to milliseconds: the precision both stores keep, so
/// a value read back compares equal to the one written.
pub fn now() -> Timestamp {
    let now = time::OffsetDateTime::now_utc();
    let millis = now.unix_timestamp_nanos() / 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000).unwrap_or(now)
}

/// A page request: `limit` items after skipping `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}
