//! Durable state behind one interface with two implementations: MongoDB for
//! clusters ([`mongo::MongoStore`]) and a file-backed embedded database for a
//! single process ([`embedded::EmbeddedStore`]). The HTTP layer only sees
//! [`Store`]; both implementations pass the same contract suite
//! (`server/tests/api/store_contract.rs`) and the whole API suite.

mod blob_dir;
pub mod embedded;
pub mod mongo;

use async_trait::async_trait;

use crate::model::{
    Attachment, Blob, HistoryPage, HistoryQuery, Id, Message, Page, ProfileUpdate, RefreshToken,
    Revoke, Room, RoomPage, Upload, User,
};

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness constraint refused the write; names the field (`username`, `email`).
    #[error("{0} is already taken")]
    Conflict(&'static str),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Internal(String),
}

impl From<StoreError> for crate::wire::errors::WireError {
    fn from(error: StoreError) -> Self {
        use crate::wire::errors::ErrorCode;
        match error {
            StoreError::Conflict(field) => Self::new(
                ErrorCode::AlreadyExists,
                format!("that {field} is already taken"),
            )
            .for_field(field),
            StoreError::Unavailable(detail) => {
                Self::unavailable("the database is unavailable; try again shortly", detail)
            }
            StoreError::Internal(detail) => Self::internal(detail),
        }
    }
}

/// The outcome of [`Store::insert_message`], which is idempotent on `(room_id, seq)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    New,
    /// A message with this room and seq was already stored (a retried write); the
    /// stored copy is returned and nothing was changed.
    Existing(Box<Message>),
    /// A message with this dedupe key was stored in the room within
    /// [`DEDUPE_TTL`] (a client's retry): that one is returned, nothing changed.
    Duplicate(Box<Message>),
}

/// How long a dedupe key (a sender's `client_id` in a room) is remembered.
pub const DEDUPE_TTL: time::Duration = time::Duration::hours(24);

/// What a search asks the store for (see [`Store::search`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub terms: Vec<String>,
    pub from: Option<Id>,
    pub before: Option<crate::model::Timestamp>,
    pub limit: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which implementation this is, for logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// Succeeds when the database answers; `/readyz` calls it.
    async fn ping(&self) -> StoreResult<()>;

    /// Inserts a user; [`StoreError::Conflict`] names `username` or `email` when taken.
    async fn create_user(&self, user: &User) -> StoreResult<()>;
    async fn user(&self, id: Id) -> StoreResult<Option<User>>;
    /// Looks up by e-mail address, which callers pass already normalised.
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// Looks up by username, regardless of case (through the unique key).
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    async fn update_profile(&self, id: Id, update: &ProfileUpdate) -> StoreResult<Option<User>>;

    async fn save_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    /// Marks the token with this hash used and returns it as it was before,
    /// atomically: of two concurrent uses of one refresh token, only one sees
    /// it unused.
    async fn use_refresh_token(&self, hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// Deletes the refresh tokens `which` names; returns how many.
    async fn revoke_refresh_tokens(&self, which: Revoke) -> StoreResult<u64>;

    async fn create_room(&self, room: &Room) -> StoreResult<()>;
    async fn room(&self, id: Id) -> StoreResult<Option<Room>>;
    /// Public rooms and the rooms `user` belongs to, oldest first.
    async fn rooms_visible_to(&self, user: Id, page: Page) -> StoreResult<RoomPage>;
    /// Everyone who shares a room (public, private or direct) with `user`,
    /// `user` included: whom a change of their profile concerns, and who
    /// sees their presence.
    async fn room_mates(&self, user: Id) -> StoreResult<Vec<Id>>;
    /// Adds a member (no-op if present); `None` if the room does not exist.
    async fn add_member(&self, room: Id, user: Id) -> StoreResult<Option<Room>>;
    /// Removes a member and any admin role; `None` if the room does not exist.
    async fn remove_member(&self, room: Id, user: Id) -> StoreResult<Option<Room>>;
    /// Grants or revokes the admin role of a member; `None` if the room does not exist.
    async fn set_admin(&self, room: Id, user: Id, admin: bool) -> StoreResult<Option<Room>>;
    /// Records when `user` was last online (their last connection closed).
    async fn set_last_seen(&self, user: Id, at: crate::model::Timestamp) -> StoreResult<()>;
    /// A new name and description; `None` when the room does not exist.
    async fn rename_room(
        &self,
        room: Id,
        name: String,
        description: String,
    ) -> StoreResult<Option<Room>>;
    /// Deletes the room, its history and its attachments (their bytes too,
    /// unless another attachment has the same content); false if it did not exist.
    async fn delete_room(&self, room: Id) -> StoreResult<bool>;
    /// Returns the direct room with `candidate.direct_key`, inserting `candidate`
    /// only if there is none, so concurrent calls for one pair agree on one room.
    async fn direct_room(&self, candidate: &Room) -> StoreResult<Room>;

    /// Stores a message unless one with the same `(room_id, seq)` exists, or
    /// (with a `dedupe` key, the sender's `client_id`) unless the room has a
    /// message of that key from the last [`DEDUPE_TTL`]. The key is kept with
    /// the message, so a retry after a restart still finds it.
    async fn insert_message(
        &self,
        message: &Message,
        dedupe: Option<&str>,
    ) -> StoreResult<Inserted>;
    /// Stores a batch, each message with its dedupe key if its sender gave
    /// one, skipping messages whose `(room_id, seq)` is already stored (the
    /// persist worker may deliver a batch more than once) and messages whose
    /// key names another seq within [`DEDUPE_TTL`]: a client's retry that a
    /// bus which lost its own keys (a Redis that lost its data) appended as
    /// new. The keys are remembered as [`Store::insert_message`]'s are.
    async fn insert_messages(&self, batch: &[(Message, Option<String>)]) -> StoreResult<()>;
    /// The message stored in `room` under a dedupe key within [`DEDUPE_TTL`].
    async fn deduplicated(&self, room: Id, dedupe: &str) -> StoreResult<Option<Message>>;
    /// A page of history: with `Latest` and `BeforeSeq`, messages only, not
    /// thread replies (the total counts them); with `After` (a resume),
    /// everything in the stream, in seq order.
    async fn messages(&self, room: Id, query: HistoryQuery) -> StoreResult<HistoryPage>;
    /// The replies in the thread of the message at `parent`: the newest
    /// `limit` (with `before`, the newest below that seq), oldest first.
    async fn replies(
        &self,
        room: Id,
        parent: u64,
        before: Option<u64>,
        limit: u64,
    ) -> StoreResult<Vec<Message>>;
    /// How many replies each of the messages at `parents` has (absent: none).
    async fn reply_counts(
        &self,
        room: Id,
        parents: &[u64],
    ) -> StoreResult<std::collections::HashMap<u64, u64>>;
    /// Candidates for a search in `rooms`: text messages and edits whose
    /// text has every one of `terms`, optionally by `from` and before
    /// `before`, at most `limit`, best (or newest) first. The caller ranks
    /// them on the messages' current text.
    async fn search(&self, rooms: &[Id], query: &SearchQuery) -> StoreResult<Vec<Message>>;
    /// The edits and deletions of the messages at `seqs`, in seq order.
    async fn changes_of(&self, room: Id, seqs: &[u64]) -> StoreResult<Vec<Message>>;
    /// The highest seq stored for `room`, 0 if it has no messages.
    async fn newest_seq(&self, room: Id) -> StoreResult<u64>;

    /// Stores an uploaded file: its bytes (and its thumbnail's) first, then
    /// the record that makes them readable, so a record never names bytes
    /// that are not there. Its size must have been reserved
    /// ([`Store::reserve_upload`]).
    async fn save_attachment(&self, attachment: &Attachment, upload: Upload) -> StoreResult<()>;
    /// Adds `bytes` to what `user` has uploaded if the total stays within
    /// `quota`, atomically (uploads racing each other, on any pod, cannot
    /// pass it together); false, and nothing changed, if it would not.
    async fn reserve_upload(&self, user: Id, bytes: u64, quota: u64) -> StoreResult<bool>;
    /// Gives back a reservation whose file was not stored after all.
    async fn release_upload(&self, user: Id, bytes: u64) -> StoreResult<()>;
    async fn attachment(&self, id: Id) -> StoreResult<Option<Attachment>>;
    /// Marks the attachments `ids` as sent in a message, so they never
    /// expire; says how many of them there were.
    async fn mark_sent(&self, ids: &[Id]) -> StoreResult<u64>;
    /// Deletes the attachments never sent that were uploaded before
    /// `before` (as [`Store::delete_attachments`] does); says how many.
    async fn expire_unsent(&self, before: crate::model::Timestamp) -> StoreResult<u64>;
    /// Deletes the attachments `ids` (a deleted message's), giving their
    /// bytes back to the quota, and the stored bytes no other one needs.
    async fn delete_attachments(&self, ids: &[Id]) -> StoreResult<()>;
    /// Reads an attachment's bytes, or its thumbnail's; `None` when none
    /// are stored.
    async fn open_attachment(
        &self,
        attachment: &Attachment,
        thumbnail: bool,
    ) -> StoreResult<Option<Blob>>;
    /// Stores (or with `None` removes) `user`'s profile picture: a small
    /// image the server made, so it is kept whole beside the user.
    async fn save_avatar(&self, user: Id, image: Option<bytes::Bytes>) -> StoreResult<()>;
    async fn avatar(&self, user: Id) -> StoreResult<Option<bytes::Bytes>>;
    /// The bytes `user` has uploaded (or reserved) and not deleted: what the
    /// quota counts (thumbnails are not counted).
    async fn uploaded_bytes(&self, user: Id) -> StoreResult<u64>;
}
