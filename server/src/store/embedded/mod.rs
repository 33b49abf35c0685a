//! The embedded store: one redb file in `CHAT_DATA_DIR`, for a single process.
//!
//! redb is an ACID, crash-safe, pure-Rust B-tree store: a committed write survives
//! a crash or restart, which is what lets the one-command demo keep its history.
//! Records are JSON values keyed by raw ids; secondary tables act as unique
//! indexes. redb allows one writer at a time, which is what makes the
//! check-then-insert of unique names and direct rooms atomic here. Calls run on
//! the blocking thread pool because redb's I/O is synchronous.
//!
//! Messages are acked only once committed, and a commit waits for the disk
//! (fsync). Commits are grouped: messages that arrive while one commit is under
//! way are written together by the next, so the disk's sync rate bounds the
//! number of commits per second, not the number of messages.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Inserted, Store, StoreError, StoreResult};
use crate::model::{
    Attachment, Blob, HistoryPage, HistoryQuery, Id, Message, Page, ProfileUpdate, RefreshToken,
    Revoke, Room, RoomPage, Upload, User,
};
use crate::sync::lock;

mod commits;
mod files;
mod main_line;
mod search_index;
#[cfg(test)]
mod tests;

use commits::*;
use files::*;
use main_line::*;
use search_index::*;

const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
const USERS_BY_NAME: TableDefinition<&str, &[u8]> = TableDefinition::new("users_by_username");
const USERS_BY_EMAIL: TableDefinition<&str, &[u8]> = TableDefinition::new("users_by_email");
const REFRESH_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
const ROOMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rooms");
const DIRECT_ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("direct_rooms");
/// Keyed by room id followed by the big-endian seq, so one room's messages are a
/// contiguous range in seq order.
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// Messages per room, not counting edits and deletions (history's total).
const MESSAGE_COUNTS: TableDefinition<&[u8], u64> = TableDefinition::new("message_counts");
/// What history pages show: the room's text and system messages of the main
/// line (not changes, not thread replies), keyed as in MESSAGES. A page
/// walks this index, so edits, reactions and replies, however many, cost
/// it nothing (before, a page after 10,000 reaction clicks parsed 10,000
/// records to find its 50 messages).
const MAIN_LINE: TableDefinition<&[u8], ()> = TableDefinition::new("main_line");
/// The main-line index's layout in META; a database without it is indexed
/// when opened.
const MAIN_LINE_VERSION: &str = "1";
/// Edits and deletions by the message they change: room id, the target's
/// seq, then the change's seq (all big-endian); the change is in MESSAGES.
const CHANGES: TableDefinition<&[u8], ()> = TableDefinition::new("changes");
/// Thread replies by the message they answer: room id, the parent's seq,
/// then the reply's seq; the reply is in MESSAGES.
const REPLIES: TableDefinition<&[u8], ()> = TableDefinition::new("replies");
/// Room id followed by the dedupe key → the seq it was stored under and when
/// the key expires (see [`DedupeEntry`]).
const DEDUPE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedupe");
/// The search index: room id, the message's bucket of seqs ([`word_bucket`],
/// 4 bytes big-endian), a word of a text message or an edit
/// (`search::words`), a 0 byte, then the message's seq. Words are
/// alphanumeric UTF-8, which never has a 0 or 0xFF byte, so within a bucket
/// the keys of all words with a prefix are one range: `room|bucket|prefix` up
/// to `room|bucket|prefix|0xFF`.
///
/// Why buckets: a message's dozen words sorted by word alone land on a
/// dozen pages spread over the whole index, and redb copies every page a
/// transaction touches, so indexing cost several times the message's own
/// write. New messages' keys all fall in their room's newest bucket, a few
/// dozen pages that a batch shares; a search reads the buckets newest first
/// and stops once it has enough.
const SEARCH_WORDS: TableDefinition<&[u8], ()> = TableDefinition::new("search_words");
/// Seqs per index bucket: 2^8.
const WORD_BUCKET_BITS: u32 = 8;
/// The index's layout in META; a database with none or another is indexed
/// anew when opened.
const SEARCH_INDEX_VERSION: &str = "words-3";
/// Attachment records by id.
const ATTACHMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("attachments");
/// Room id followed by attachment id: a room's attachments, for its deletion.
const ROOM_ATTACHMENTS: TableDefinition<&[u8], ()> = TableDefinition::new("room_attachments");
/// Bytes uploaded per user id (the quota).
const UPLOADED_BYTES: TableDefinition<&[u8], u64> = TableDefinition::new("uploaded_bytes");
/// How many records name each stored content (attachments and thumbnails),
/// so bytes are removed with the last record that needs them.
const BLOB_REFS: TableDefinition<&str, u64> = TableDefinition::new("blob_refs");
/// Profile pictures by user id (a few KiB each).
const AVATARS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("avatars");
/// The database's own facts: `id`, its identity.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The file inside `CHAT_DATA_DIR`.
pub const FILE_NAME: &str = "chat.redb";

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    commits: Arc<Mutex<CommitQueue>>,
    /// When expired refresh tokens were last swept out.
    refresh_sweep: Arc<Mutex<Option<std::time::Instant>>>,
    id: String,
    dedupe_ttl: time::Duration,
    blobs: super::blob_dir::BlobDir,
    /// Held while contents are written and counted, or counted and removed:
    /// the same content uploaded while its last other copy is deleted must
    /// not lose its file between the two.
    blob_counts: Arc<Mutex<()>>,
}

/// How often saving a refresh token, or committing messages, also sweeps out
/// expired refresh tokens, or dedupe keys.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

macro_rules! internal_from {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Internal(format!("embedded store: {error}"))
            }
        }
    )*};
}
internal_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "{} is in use by another process (is another chat-server running with this CHAT_DATA_DIR?)",
                path.display()
            )),
            other => StoreError::from(other),
        })?;
        // Read transactions fail on tables that were never created, so create all now.
        let tx = db.begin_write()?;
        tx.open_table(USERS)?;
        tx.open_table(USERS_BY_NAME)?;
        tx.open_table(USERS_BY_EMAIL)?;
        tx.open_table(REFRESH_TOKENS)?;
        tx.open_table(ROOMS)?;
        tx.open_table(DIRECT_ROOMS)?;
        tx.open_table(MESSAGES)?;
        tx.open_table(MESSAGE_COUNTS)?;
        tx.open_table(CHANGES)?;
        tx.open_table(REPLIES)?;
        tx.open_table(DEDUPE)?;
        tx.open_table(ATTACHMENTS)?;
        tx.open_table(ROOM_ATTACHMENTS)?;
        tx.open_table(UPLOADED_BYTES)?;
        tx.open_table(BLOB_REFS)?;
        tx.open_table(AVATARS)?;
        tx.open_table(SEARCH_WORDS)?;
        tx.open_table(MAIN_LINE)?;
        index_if_needed(&tx)?;
        main_line_if_needed(&tx)?;
        let id = {
            let mut meta = tx.open_table(META)?;
            let existing = meta.get("id")?.map(|id| id.value().to_owned());
            match existing {
                Some(id) => id,
                None => {
                    let id = Id::new().to_string();
                    meta.insert("id", id.as_str())?;
                    id
                }
            }
        };
        tx.commit()?;
        Ok(Self {
            db: Arc::new(db),
            commits: Arc::default(),
            refresh_sweep: Arc::default(),
            id,
            dedupe_ttl: crate::store::DEDUPE_TTL,
            blobs: super::blob_dir::BlobDir::new(dir),
            blob_counts: Arc::default(),
        })
    }

    /// How long a dedupe key is remembered (default [`crate::store::DEDUPE_TTL`]).
    pub fn with_dedupe_ttl(self, ttl: std::time::Duration) -> Self {
        Self {
            dedupe_ttl: time::Duration::try_from(ttl).unwrap_or(crate::store::DEDUPE_TTL),
            ..self
        }
    }

    /// This database's identity, made when it was created: tells two embedded
    /// stores apart (see `bus::redis::owner`).
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Internal(format!("embedded store task failed: {e}")))?
    }

    /// The user that the unique index `index` maps `key` to.
    async fn user_through(
        &self,
        index: TableDefinition<'static, &'static str, &'static [u8]>,
        key: String,
    ) -> StoreResult<Option<User>> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            let Some(id) = tx.open_table(index)?.get(key.as_str())? else {
                return Ok(None);
            };
            get_json(&tx.open_table(USERS)?, id.value())
        })
        .await
    }

    /// Reads a room, applies `change` and writes it back in one write transaction.
    async fn modify_room(
        &self,
        room: Id,
        change: impl FnOnce(&mut Room) + Send + 'static,
    ) -> StoreResult<Option<Room>> {
        self.run(move |db| {
            let tx = db.begin_write()?;
            let updated = {
                let mut rooms = tx.open_table(ROOMS)?;
                let Some(mut record) = get_json::<_, Room>(&rooms, room.bytes().as_slice())? else {
                    return Ok(None);
                };
                change(&mut record);
                rooms.insert(room.bytes().as_slice(), to_json(&record)?.as_slice())?;
                record
            };
            tx.commit()?;
            Ok(Some(updated))
        })
        .await
    }
}

fn to_json<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

fn get_json<'k, K, V>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> StoreResult<Option<V>>
where
    K: redb::Key + 'static,
    V: DeserializeOwned,
{
    match table.get(key)? {
        Some(value) => Ok(Some(serde_json::from_slice(value.value())?)),
        None => Ok(None),
    }
}

fn message_key(room: Id, seq: u64) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..12].copy_from_slice(&room.bytes());
    key[12..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The seq that ends an index key (a [`child_key`], a [`word_key`]).
fn trailing_seq(key: &[u8]) -> StoreResult<u64> {
    let seq: [u8; 8] = key
        .len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|seq| seq.try_into().ok())
        .ok_or_else(|| StoreError::Internal("embedded store: corrupt index key".into()))?;
    Ok(u64::from_be_bytes(seq))
}

/// A message's child (a change of it, a reply to it) in an index: the room,
/// the parent's seq, the child's seq.
fn child_key(room: Id, target: u64, seq: u64) -> [u8; 28] {
    let mut key = [0u8; 28];
    key[..20].copy_from_slice(&message_key(room, target));
    key[20..].copy_from_slice(&seq.to_be_bytes());
    key
}

#[async_trait]
impl Store for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(|db| {
            db.begin_read()?.open_table(USERS)?;
            Ok(())
        })
        .await
    }

    async fn create_user(&self, user: &User) -> StoreResult<()> {
        let user = user.clone();
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let name_key = User::username_key(&user.username);
                let id = user.id.bytes();
                let mut by_name = tx.open_table(USERS_BY_NAME)?;
                if by_name.get(name_key.as_str())?.is_some() {
                    return Err(StoreError::Conflict("username"));
                }
                let mut by_email = tx.open_table(USERS_BY_EMAIL)?;
                if by_email.get(user.email.as_str())?.is_some() {
                    return Err(StoreError::Conflict("email"));
                }
                by_name.insert(name_key.as_str(), id.as_slice())?;
                by_email.insert(user.email.as_str(), id.as_slice())?;
                tx.open_table(USERS)?
                    .insert(id.as_slice(), to_json(&user)?.as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn user(&self, id: Id) -> StoreResult<Option<User>> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            get_json(&tx.open_table(USERS)?, id.bytes().as_slice())
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.user_through(USERS_BY_EMAIL, email.to_owned()).await
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.user_through(USERS_BY_NAME, User::username_key(username))
            .await
    }

    async fn update_profile(&self, id: Id, update: &ProfileUpdate) -> StoreResult<Option<User>> {
        let update = update.clone();
        self.run(move |db| {
            let tx = db.begin_write()?;
            let updated = {
                let mut users = tx.open_table(USERS)?;
                let Some(mut user) = get_json::<_, User>(&users, id.bytes().as_slice())? else {
                    return Ok(None);
                };
                update.apply(&mut user);
                users.insert(id.bytes().as_slice(), to_json(&user)?.as_slice())?;
                user
            };
            tx.commit()?;
            Ok(Some(updated))
        })
        .await
    }

    async fn save_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let token = token.clone();
        let sweep = {
            let mut last = lock(&self.refresh_sweep);
            let due = last.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let mut tokens = tx.open_table(REFRESH_TOKENS)?;
                tokens.insert(token.hash.as_str(), to_json(&token)?.as_slice())?;
                // Expired tokens are useless; sweep them now and then, while
                // holding the writer anyway (not on every sign-in: that read
                // every token there is).
                if sweep {
                    let now = crate::model::now();
                    tokens.retain(|_, value| {
                        serde_json::from_slice::<RefreshToken>(value)
                            .is_ok_and(|t| t.expires_at > now)
                    })?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn use_refresh_token(&self, hash: &str) -> StoreResult<Option<RefreshToken>> {
        let hash = hash.to_owned();
        self.run(move |db| {
            let tx = db.begin_write()?;
            let before = {
                let mut tokens = tx.open_table(REFRESH_TOKENS)?;
                let before: Option<RefreshToken> = get_json(&tokens, hash.as_str())?;
                if let Some(token) = before.as_ref().filter(|t| !t.used) {
                    let used = RefreshToken {
                        used: true,
                        ..token.clone()
                    };
                    tokens.insert(hash.as_str(), to_json(&used)?.as_slice())?;
                }
                before
            };
            tx.commit()?;
            Ok(before)
        })
        .await
    }

    async fn revoke_refresh_tokens(&self, which: Revoke) -> StoreResult<u64> {
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut revoked = 0;
            {
                let mut tokens = tx.open_table(REFRESH_TOKENS)?;
                // A scan: revoking is rare (sign-out, a password change, a theft).
                tokens.retain(|_, value| {
                    let keep =
                        serde_json::from_slice::<RefreshToken>(value).is_ok_and(|t| match which {
                            Revoke::Family(family) => t.family != family,
                            Revoke::User(user) => t.user_id != user,
                        });
                    revoked += u64::from(!keep);
                    keep
                })?;
            }
            tx.commit()?;
            Ok(revoked)
        })
        .await
    }

    async fn create_room(&self, room: &Room) -> StoreResult<()> {
        let room = room.clone();
        self.run(move |db| {
            let tx = db.begin_write()?;
            tx.open_table(ROOMS)?
                .insert(room.id.bytes().as_slice(), to_json(&room)?.as_slice())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn room(&self, id: Id) -> StoreResult<Option<Room>> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            get_json(&tx.open_table(ROOMS)?, id.bytes().as_slice())
        })
        .await
    }

    async fn rooms_visible_to(&self, user: Id, page: Page) -> StoreResult<RoomPage> {
        // A scan: the embedded store serves one process and a modest number of
        // rooms. Keys are ObjectIds, so the scan is already in creation order.
        self.run(move |db| {
            let tx = db.begin_read()?;
            let mut rooms = Vec::new();
            let mut total = 0u64;
            for entry in tx.open_table(ROOMS)?.iter()? {
                let (_, value) = entry?;
                let room: Room = serde_json::from_slice(value.value())?;
                if !room.is_visible_to(user) {
                    continue;
                }
                if total >= page.offset && (rooms.len() as u64) < page.limit {
                    rooms.push(room);
                }
                total += 1;
            }
            Ok(RoomPage { rooms, total })
        })
        .await
    }

    async fn room_mates(&self, user: Id) -> StoreResult<Vec<Id>> {
        // A scan, as for `rooms_visible_to`.
        self.run(move |db| {
            let tx = db.begin_read()?;
            let mut mates = std::collections::BTreeSet::from([user]);
            for entry in tx.open_table(ROOMS)?.iter()? {
                let (_, value) = entry?;
                let room: Room = serde_json::from_slice(value.value())?;
                if room.members.contains(&user) {
                    mates.extend(room.members);
                }
            }
            Ok(mates.into_iter().collect())
        })
        .await
    }

    async fn add_member(&self, room: Id, user: Id) -> StoreResult<Option<Room>> {
        self.modify_room(room, move |room| {
            if !room.members.contains(&user) {
                room.members.push(user);
            }
        })
        .await
    }

    async fn remove_member(&self, room: Id, user: Id) -> StoreResult<Option<Room>> {
        self.modify_room(room, move |room| {
            room.members.retain(|m| *m != user);
            room.admins.retain(|m| *m != user);
        })
        .await
    }

    async fn set_admin(&self, room: Id, user: Id, admin: bool) -> StoreResult<Option<Room>> {
        self.modify_room(room, move |room| {
            room.admins.retain(|m| *m != user);
            if admin {
                room.admins.push(user);
            }
        })
        .await
    }

    async fn set_last_seen(&self, user: Id, at: crate::model::Timestamp) -> StoreResult<()> {
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let mut users = tx.open_table(USERS)?;
                if let Some(mut record) = get_json::<_, User>(&users, user.bytes().as_slice())? {
                    record.last_seen_at = Some(at);
                    users.insert(user.bytes().as_slice(), to_json(&record)?.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn rename_room(
        &self,
        room: Id,
        name: String,
        description: String,
    ) -> StoreResult<Option<Room>> {
        self.modify_room(room, move |room| {
            room.name = name;
            room.description = description;
        })
        .await
    }

    async fn delete_room(&self, room: Id) -> StoreResult<bool> {
        let blobs = self.blobs.clone();
        let counts = self.blob_counts.clone();
        self.run(move |db| {
            let _counting = lock(&counts);
            let tx = db.begin_write()?;
            let existed = {
                let mut rooms = tx.open_table(ROOMS)?;
                let removed = rooms.remove(room.bytes().as_slice())?;
                match removed {
                    Some(value) => {
                        let record: Room = serde_json::from_slice(value.value())?;
                        if let Some(key) = &record.direct_key {
                            tx.open_table(DIRECT_ROOMS)?.remove(key.as_str())?;
                        }
                        let start = message_key(room, 0);
                        let end = message_key(room, u64::MAX);
                        tx.open_table(MESSAGES)?
                            .retain_in(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        tx.open_table(MAIN_LINE)?
                            .retain_in(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        tx.open_table(MESSAGE_COUNTS)?
                            .remove(room.bytes().as_slice())?;
                        let (start, end) =
                            (child_key(room, 0, 0), child_key(room, u64::MAX, u64::MAX));
                        tx.open_table(CHANGES)?
                            .retain_in(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        tx.open_table(REPLIES)?
                            .retain_in(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        let (start, end) = room_words(room);
                        tx.open_table(SEARCH_WORDS)?
                            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
                        Some(forget_attachments(&tx, room)?)
                    }
                    None => None,
                }
            };
            tx.commit()?;
            let Some(unused) = existed else {
                return Ok(false);
            };
            remove_blobs(&blobs, unused);
            Ok(true)
        })
        .await
    }

    async fn direct_room(&self, candidate: &Room) -> StoreResult<Room> {
        let candidate = candidate.clone();
        self.run(move |db| {
            let key = candidate
                .direct_key
                .clone()
                .ok_or_else(|| StoreError::Internal("direct room without a direct key".into()))?;
            let tx = db.begin_write()?;
            let room = {
                let mut direct = tx.open_table(DIRECT_ROOMS)?;
                let mut rooms = tx.open_table(ROOMS)?;
                let existing = match direct.get(key.as_str())? {
                    Some(id) => get_json::<_, Room>(&rooms, id.value())?,
                    None => None,
                };
                match existing {
                    Some(room) => room,
                    None => {
                        let id = candidate.id.bytes();
                        direct.insert(key.as_str(), id.as_slice())?;
                        rooms.insert(id.as_slice(), to_json(&candidate)?.as_slice())?;
                        candidate
                    }
                }
            };
            tx.commit()?;
            Ok(room)
        })
        .await
    }

    async fn insert_message(
        &self,
        message: &Message,
        dedupe: Option<&str>,
    ) -> StoreResult<Inserted> {
        let (done, outcome) = oneshot::channel();
        let start_committer = {
            let mut queue = lock(&self.commits);
            queue.waiting.push(PendingInsert {
                message: message.clone(),
                dedupe: dedupe.map(|key| (key.to_owned(), crate::model::now() + self.dedupe_ttl)),
                done,
            });
            !std::mem::replace(&mut queue.committing, true)
        };
        if start_committer {
            let (db, commits) = (Arc::downgrade(&self.db), self.commits.clone());
            tokio::task::spawn_blocking(move || commit_waiting(&db, &commits));
        }
        outcome.await.map_err(|_| {
            StoreError::Internal("embedded store: the commit ended without an outcome".into())
        })?
    }

    async fn insert_messages(&self, batch: &[(Message, Option<String>)]) -> StoreResult<()> {
        let expires_at = crate::model::now() + self.dedupe_ttl;
        let batch: Vec<_> = batch
            .iter()
            .map(|(m, key)| (m.clone(), key.clone().map(|key| (key, expires_at))))
            .collect();
        self.run(move |db| {
            write_messages(db, &batch, false)?
                .into_iter()
                .try_for_each(|outcome| outcome.map(drop))
        })
        .await
    }

    async fn messages(&self, room: Id, query: HistoryQuery) -> StoreResult<HistoryPage> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            let total = tx
                .open_table(MESSAGE_COUNTS)?
                .get(room.bytes().as_slice())?
                .map_or(0, |c| c.value());
            if matches!(query, HistoryQuery::Latest { offset, .. } if offset >= total) {
                // Past the oldest: nothing to skip through.
                return Ok(HistoryPage {
                    messages: Vec::new(),
                    total,
                });
            }
            let table = tx.open_table(MESSAGES)?;
            let take = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            let mut messages = Vec::new();
            match query {
                // A resume: everything in the stream after the seq, in order.
                HistoryQuery::After { seq, limit } => {
                    let from = message_key(room, seq.saturating_add(1));
                    let to = message_key(room, u64::MAX);
                    for entry in table
                        .range(from.as_slice()..to.as_slice())?
                        .take(take(limit))
                    {
                        let (_, value) = entry?;
                        messages.push(serde_json::from_slice::<Message>(value.value())?);
                    }
                }
                // Pages: the main line, newest first, through its index.
                HistoryQuery::Latest { offset, limit } => {
                    messages = main_line_page(&tx, &table, room, u64::MAX, offset, limit)?;
                }
                HistoryQuery::BeforeSeq { seq, limit } => {
                    messages = main_line_page(&tx, &table, room, seq, 0, limit)?;
                }
            }
            Ok(HistoryPage { messages, total })
        })
        .await
    }

    async fn replies(
        &self,
        room: Id,
        parent: u64,
        before: Option<u64>,
        limit: u64,
    ) -> StoreResult<Vec<Message>> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            let index = tx.open_table(REPLIES)?;
            let table = tx.open_table(MESSAGES)?;
            let from = child_key(room, parent, 0);
            let to = child_key(room, parent, before.unwrap_or(u64::MAX));
            let take = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut replies = Vec::new();
            for entry in index
                .range(from.as_slice()..to.as_slice())?
                .rev()
                .take(take)
            {
                let (key, _) = entry?;
                let key = message_key(room, trailing_seq(key.value())?);
                if let Some(reply) = get_json::<_, Message>(&table, key.as_slice())? {
                    replies.push(reply);
                }
            }
            replies.reverse();
            Ok(replies)
        })
        .await
    }

    async fn reply_counts(
        &self,
        room: Id,
        parents: &[u64],
    ) -> StoreResult<std::collections::HashMap<u64, u64>> {
        let parents = parents.to_vec();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let index = tx.open_table(REPLIES)?;
            let mut counts = std::collections::HashMap::new();
            for parent in parents {
                let (from, to) = (
                    child_key(room, parent, 0),
                    child_key(room, parent, u64::MAX),
                );
                let count = index.range(from.as_slice()..=to.as_slice())?.count() as u64;
                if count > 0 {
                    counts.insert(parent, count);
                }
            }
            Ok(counts)
        })
        .await
    }

    /// Each room's index buckets that hold words, newest first, until the
    /// room has given `limit` messages (see [`SEARCH_WORDS`]).
    async fn search(&self, rooms: &[Id], query: &super::SearchQuery) -> StoreResult<Vec<Message>> {
        let rooms = rooms.to_vec();
        let query = query.clone();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let words = tx.open_table(SEARCH_WORDS)?;
            let table = tx.open_table(MESSAGES)?;
            let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
            let mut found = Vec::new();
            for room in rooms {
                let mut from_room = 0;
                let mut below = None;
                'buckets: while let Some(bucket) = previous_bucket(&words, room, below)? {
                    below = Some(bucket);
                    for seq in bucket_matches(&words, room, bucket, &query.terms)?
                        .into_iter()
                        .rev()
                    {
                        let Some(message) =
                            get_json::<_, Message>(&table, message_key(room, seq).as_slice())?
                        else {
                            continue;
                        };
                        if query.from.is_none_or(|from| message.user_id == from)
                            && query.before.is_none_or(|before| message.timestamp < before)
                        {
                            found.push(message);
                            from_room += 1;
                            if from_room >= limit {
                                break 'buckets;
                            }
                        }
                    }
                }
            }
            found.sort_by_key(|m| std::cmp::Reverse(m.timestamp));
            found.truncate(limit);
            Ok(found)
        })
        .await
    }

    async fn changes_of(&self, room: Id, seqs: &[u64]) -> StoreResult<Vec<Message>> {
        let seqs = seqs.to_vec();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let index = tx.open_table(CHANGES)?;
            let table = tx.open_table(MESSAGES)?;
            let mut found = Vec::new();
            for target in seqs {
                found.extend(live_changes(&index, &table, room, target)?);
            }
            found.sort_by_key(|c| c.seq);
            Ok(found)
        })
        .await
    }

    async fn deduplicated(&self, room: Id, dedupe: &str) -> StoreResult<Option<Message>> {
        let key = dedupe_key(room, dedupe);
        self.run(move |db| {
            let tx = db.begin_read()?;
            let Some(entry) = get_json::<_, DedupeEntry>(&tx.open_table(DEDUPE)?, key.as_slice())?
            else {
                return Ok(None);
            };
            if entry.expires_at <= crate::model::now() {
                return Ok(None);
            }
            get_json(
                &tx.open_table(MESSAGES)?,
                message_key(room, entry.seq).as_slice(),
            )
        })
        .await
    }

    async fn newest_seq(&self, room: Id) -> StoreResult<u64> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(MESSAGES)?;
            let (from, to) = (message_key(room, 0), message_key(room, u64::MAX));
            let newest = match table.range(from.as_slice()..to.as_slice())?.next_back() {
                Some(entry) => {
                    let (key, _) = entry?;
                    let seq: [u8; 8] = key.value()[12..].try_into().map_err(|_| {
                        StoreError::Internal("embedded store: corrupt message key".into())
                    })?;
                    u64::from_be_bytes(seq)
                }
                None => 0,
            };
            Ok(newest)
        })
        .await
    }

    async fn save_attachment(&self, attachment: &Attachment, upload: Upload) -> StoreResult<()> {
        let blobs = self.blobs.clone();
        let counts = self.blob_counts.clone();
        let attachment = attachment.clone();
        self.run(move |db| {
            let _counting = lock(&counts);
            blobs.put(&attachment.sha256, &upload.content)?;
            if let (Some(sha256), Some(thumbnail)) =
                (&attachment.thumbnail_sha256, &upload.thumbnail)
            {
                blobs.put(sha256, thumbnail)?;
            }
            let tx = db.begin_write()?;
            {
                let id = attachment.file.id.bytes();
                tx.open_table(ATTACHMENTS)?
                    .insert(id.as_slice(), to_json(&attachment)?.as_slice())?;
                tx.open_table(ROOM_ATTACHMENTS)?
                    .insert(attachment_key(attachment.room_id, id).as_slice(), ())?;
                let mut refs = tx.open_table(BLOB_REFS)?;
                for sha256 in
                    std::iter::once(&attachment.sha256).chain(&attachment.thumbnail_sha256)
                {
                    let count = refs.get(sha256.as_str())?.map_or(0, |v| v.value());
                    refs.insert(sha256.as_str(), count + 1)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_attachments(&self, ids: &[Id]) -> StoreResult<()> {
        let ids = ids.to_vec();
        let blobs = self.blobs.clone();
        let counts = self.blob_counts.clone();
        self.run(move |db| {
            let _counting = lock(&counts);
            let tx = db.begin_write()?;
            let unused = forget_attachment_ids(&tx, &ids)?;
            tx.commit()?;
            remove_blobs(&blobs, unused);
            Ok(())
        })
        .await
    }

    async fn mark_sent(&self, ids: &[Id]) -> StoreResult<u64> {
        let ids = ids.to_vec();
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut marked = 0;
            {
                let mut records = tx.open_table(ATTACHMENTS)?;
                for id in ids {
                    let key = id.bytes();
                    let Some(mut record) = get_json::<_, Attachment>(&records, key.as_slice())?
                    else {
                        continue;
                    };
                    if !record.sent {
                        record.sent = true;
                        records.insert(key.as_slice(), to_json(&record)?.as_slice())?;
                    }
                    marked += 1;
                }
            }
            tx.commit()?;
            Ok(marked)
        })
        .await
    }

    async fn expire_unsent(&self, before: crate::model::Timestamp) -> StoreResult<u64> {
        let blobs = self.blobs.clone();
        let counts = self.blob_counts.clone();
        self.run(move |db| {
            let _counting = lock(&counts);
            let tx = db.begin_write()?;
            let expired = {
                let records = tx.open_table(ATTACHMENTS)?;
                let mut expired = Vec::new();
                for entry in records.iter()? {
                    let (_, value) = entry?;
                    let record: Attachment = serde_json::from_slice(value.value())?;
                    if !record.sent && record.created_at < before {
                        expired.push(record.file.id);
                    }
                }
                expired
            };
            let unused = forget_attachment_ids(&tx, &expired)?;
            tx.commit()?;
            remove_blobs(&blobs, unused);
            Ok(expired.len() as u64)
        })
        .await
    }

    async fn attachment(&self, id: Id) -> StoreResult<Option<Attachment>> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            get_json(&tx.open_table(ATTACHMENTS)?, id.bytes().as_slice())
        })
        .await
    }

    async fn open_attachment(
        &self,
        attachment: &Attachment,
        thumbnail: bool,
    ) -> StoreResult<Option<Blob>> {
        let sha256 = if thumbnail {
            attachment.thumbnail_sha256.as_deref()
        } else {
            Some(attachment.sha256.as_str())
        };
        match sha256 {
            Some(sha256) => self.blobs.open(sha256).await,
            None => Ok(None),
        }
    }

    async fn save_avatar(&self, user: Id, image: Option<bytes::Bytes>) -> StoreResult<()> {
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let mut avatars = tx.open_table(AVATARS)?;
                match image {
                    Some(image) => avatars.insert(user.bytes().as_slice(), image.as_ref())?,
                    None => avatars.remove(user.bytes().as_slice())?,
                };
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn avatar(&self, user: Id) -> StoreResult<Option<bytes::Bytes>> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            let avatars = tx.open_table(AVATARS)?;
            Ok(avatars
                .get(user.bytes().as_slice())?
                .map(|image| bytes::Bytes::copy_from_slice(image.value())))
        })
        .await
    }

    async fn reserve_upload(&self, user: Id, bytes: u64, quota: u64) -> StoreResult<bool> {
        self.run(move |db| {
            let tx = db.begin_write()?;
            let reserved = {
                let mut uploaded = tx.open_table(UPLOADED_BYTES)?;
                let key = user.bytes();
                let used = uploaded.get(key.as_slice())?.map_or(0, |v| v.value());
                let fits = used.checked_add(bytes).is_some_and(|total| total <= quota);
                if fits {
                    uploaded.insert(key.as_slice(), used + bytes)?;
                }
                fits
            };
            tx.commit()?;
            Ok(reserved)
        })
        .await
    }

    async fn release_upload(&self, user: Id, bytes: u64) -> StoreResult<()> {
        self.run(move |db| {
            let tx = db.begin_write()?;
            give_back(&mut tx.open_table(UPLOADED_BYTES)?, user, bytes)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn uploaded_bytes(&self, user: Id) -> StoreResult<u64> {
        self.run(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(UPLOADED_BYTES)?;
            Ok(table.get(user.bytes().as_slice())?.map_or(0, |v| v.value()))
        })
        .await
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}
