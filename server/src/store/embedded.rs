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

/// Messages waiting for the next group commit.
#[derive(Default)]
struct CommitQueue {
    waiting: Vec<PendingInsert>,
    /// Whether a blocking task is committing; it takes whatever waits until
    /// nothing does, so at most one runs and no message waits without one.
    committing: bool,
    /// When expired dedupe keys were last swept out.
    dedupe_swept: Option<std::time::Instant>,
}

struct PendingInsert {
    message: Message,
    /// The dedupe key and when it expires.
    dedupe: Option<(String, crate::model::Timestamp)>,
    done: oneshot::Sender<StoreResult<Inserted>>,
}

#[derive(Serialize, Deserialize)]
struct DedupeEntry {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: crate::model::Timestamp,
}

fn dedupe_key(room: Id, key: &str) -> Vec<u8> {
    let mut bytes = room.bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

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

/// Removes `room`'s attachment records in `tx` (see [`forget_attachment_ids`]).
fn forget_attachments(tx: &redb::WriteTransaction, room: Id) -> StoreResult<Vec<String>> {
    let (start, end) = (
        attachment_key(room, [0; 12]),
        attachment_key(room, [0xff; 12]),
    );
    let ids = tx
        .open_table(ROOM_ATTACHMENTS)?
        .range(start.as_slice()..=end.as_slice())?
        .map(|entry| {
            entry.map(|(key, _)| {
                let mut id = [0; 12];
                id.copy_from_slice(&key.value()[12..24]);
                Id::from_bytes(id)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    forget_attachment_ids(tx, &ids)
}

/// Removes the attachment records `ids` in `tx`, giving their bytes back to
/// their uploaders' quotas; returns the contents no record needs any more.
fn forget_attachment_ids(tx: &redb::WriteTransaction, ids: &[Id]) -> StoreResult<Vec<String>> {
    let mut listed = tx.open_table(ROOM_ATTACHMENTS)?;
    let mut records = tx.open_table(ATTACHMENTS)?;
    let mut uploaded = tx.open_table(UPLOADED_BYTES)?;
    let mut refs = tx.open_table(BLOB_REFS)?;
    let mut unused = Vec::new();
    for id in ids {
        let Some(record) = records.remove(id.bytes().as_slice())? else {
            continue;
        };
        let attachment: Attachment = serde_json::from_slice(record.value())?;
        drop(record);
        listed.remove(attachment_key(attachment.room_id, id.bytes()).as_slice())?;
        give_back(&mut uploaded, attachment.user_id, attachment.file.size)?;
        for sha256 in std::iter::once(attachment.sha256).chain(attachment.thumbnail_sha256) {
            let count = refs.get(sha256.as_str())?.map_or(0, |v| v.value());
            if count <= 1 {
                refs.remove(sha256.as_str())?;
                unused.push(sha256);
            } else {
                refs.insert(sha256.as_str(), count - 1)?;
            }
        }
    }
    Ok(unused)
}

/// Subtracts `bytes` from what `user` has uploaded.
fn give_back(uploaded: &mut redb::Table<&[u8], u64>, user: Id, bytes: u64) -> StoreResult<()> {
    let key = user.bytes();
    let used = uploaded.get(key.as_slice())?.map_or(0, |v| v.value());
    uploaded.insert(key.as_slice(), used.saturating_sub(bytes))?;
    Ok(())
}

/// Removes contents no record needs, after the commit that made them so:
/// should removing fail, a file is left over, never a record without its file.
fn remove_blobs(blobs: &super::blob_dir::BlobDir, unused: Vec<String>) {
    for sha256 in unused {
        if let Err(e) = blobs.remove(&sha256) {
            tracing::warn!(error = %e, "cannot remove a deleted file");
        }
    }
}

fn attachment_key(room: Id, attachment: [u8; 12]) -> [u8; 24] {
    let mut key = [0; 24];
    key[..12].copy_from_slice(&room.bytes());
    key[12..].copy_from_slice(&attachment);
    key
}

/// Commits the waiting messages, one transaction per round, until none wait.
///
/// The database is held only while writing, never while waking the callers:
/// once the last of them has its outcome, dropping the store closes the file,
/// so a restart in the same process can open it again.
fn commit_waiting(db: &Weak<Database>, commits: &Mutex<CommitQueue>) {
    /// If writing panics, the waiting callers get an error instead of waiting
    /// forever, and the next insert starts a new committer.
    struct Reset<'a>(&'a Mutex<CommitQueue>);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let mut queue = lock(self.0);
                queue.committing = false;
                queue.waiting.clear();
            }
        }
    }
    let _reset = Reset(commits);
    loop {
        let (batch, sweep) = {
            let mut queue = lock(commits);
            if queue.waiting.is_empty() {
                queue.committing = false;
                return;
            }
            let sweep = queue
                .dedupe_swept
                .is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
            if sweep {
                queue.dedupe_swept = Some(std::time::Instant::now());
            }
            (std::mem::take(&mut queue.waiting), sweep)
        };
        let (messages, waiters): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| ((pending.message, pending.dedupe), pending.done))
            .unzip();
        let written = match db.upgrade() {
            Some(db) => write_messages(&db, &messages, sweep),
            None => Err(StoreError::Unavailable(
                "the embedded store was closed".into(),
            )),
        };
        match written {
            Ok(outcomes) => {
                for (done, outcome) in waiters.into_iter().zip(outcomes) {
                    let _ = done.send(outcome);
                }
            }
            Err(e) => {
                for done in waiters {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Writes `messages` in one transaction, each unless its `(room, seq)` is
/// already stored (earlier, or earlier in the same batch) or its dedupe key
/// names a stored message of the room that has not expired. The outer error
/// fails them all (nothing was committed); an inner one only that message.
/// With `sweep`, expired dedupe keys are removed in the same transaction.
fn write_messages(
    db: &Database,
    messages: &[(Message, Option<(String, crate::model::Timestamp)>)],
    sweep: bool,
) -> StoreResult<Vec<StoreResult<Inserted>>> {
    let tx = db.begin_write()?;
    let mut outcomes = Vec::with_capacity(messages.len());
    {
        let mut table = tx.open_table(MESSAGES)?;
        let mut counts = tx.open_table(MESSAGE_COUNTS)?;
        let mut changes = tx.open_table(CHANGES)?;
        let mut replies = tx.open_table(REPLIES)?;
        let mut dedupes = tx.open_table(DEDUPE)?;
        let mut words = tx.open_table(SEARCH_WORDS)?;
        let mut main_line = tx.open_table(MAIN_LINE)?;
        let now = crate::model::now();
        if sweep {
            dedupes.retain(|_, value| {
                serde_json::from_slice::<DedupeEntry>(value).is_ok_and(|e| e.expires_at > now)
            })?;
        }
        for (message, dedupe) in messages {
            let dedupe = dedupe
                .as_ref()
                .map(|(key, expires_at)| (dedupe_key(message.room_id, key), *expires_at));
            if let Some((key, _)) = &dedupe
                && let Some(entry) = get_json::<_, DedupeEntry>(&dedupes, key.as_slice())?
                && entry.expires_at > now
                && let Some(earlier) = get_json::<_, Message>(
                    &table,
                    message_key(message.room_id, entry.seq).as_slice(),
                )?
            {
                outcomes.push(Ok(Inserted::Duplicate(Box::new(earlier))));
                continue;
            }
            let key = message_key(message.room_id, message.seq);
            if let Some(existing) = get_json::<_, Message>(&table, key.as_slice())? {
                outcomes.push(Ok(Inserted::Existing(Box::new(existing))));
                continue;
            }
            let target = message.target_seq.filter(|_| message.kind.is_change());
            let settled = match target {
                Some(target) => {
                    let live = live_changes(&changes, &table, message.room_id, target)?;
                    crate::model::settle(message, &live)
                }
                None => crate::model::Settled::default(),
            };
            // Copied only when its own text goes (a change that raced a deletion).
            let blanked;
            let message = if settled.blanked.contains(&message.seq) {
                let mut copy = message.clone();
                blank(&mut copy);
                blanked = copy;
                &blanked
            } else {
                message
            };
            let record = match to_json(message) {
                Ok(record) => record,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            table.insert(key.as_slice(), record.as_slice())?;
            index_words(&mut words, message)?;
            match (target, message.reply_to) {
                (Some(target), _) => {
                    for seq in &settled.settled {
                        changes.remove(child_key(message.room_id, target, *seq).as_slice())?;
                    }
                    if settled.counts {
                        let key = child_key(message.room_id, target, message.seq);
                        changes.insert(key.as_slice(), ())?;
                    }
                    for seq in settled.blanked.iter().filter(|s| **s != message.seq) {
                        let key = message_key(message.room_id, *seq);
                        if let Some(mut gone) = get_json::<_, Message>(&table, key.as_slice())? {
                            unindex_words(&mut words, &gone)?;
                            blank(&mut gone);
                            table.insert(key.as_slice(), to_json(&gone)?.as_slice())?;
                        }
                    }
                }
                (None, Some(parent)) => {
                    let key = child_key(message.room_id, parent, message.seq);
                    replies.insert(key.as_slice(), ())?;
                }
                (None, None) => {
                    let room = message.room_id.bytes();
                    let count = counts.get(room.as_slice())?.map_or(0, |c| c.value());
                    counts.insert(room.as_slice(), count + 1)?;
                    main_line.insert(key.as_slice(), ())?;
                }
            }
            if let Some((dedupe, expires_at)) = dedupe {
                let entry = DedupeEntry {
                    seq: message.seq,
                    expires_at,
                };
                dedupes.insert(dedupe.as_slice(), to_json(&entry)?.as_slice())?;
            }
            outcomes.push(Ok(Inserted::New));
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// The changes to `target` that still count (see [`crate::model::settle`]).
fn live_changes(
    index: &impl ReadableTable<&'static [u8], ()>,
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    room: Id,
    target: u64,
) -> StoreResult<Vec<Message>> {
    let (from, to) = (
        child_key(room, target, 0),
        child_key(room, target, u64::MAX),
    );
    let mut live = Vec::new();
    for entry in index.range(from.as_slice()..=to.as_slice())? {
        let (key, _) = entry?;
        let key = message_key(room, trailing_seq(key.value())?);
        if let Some(change) = get_json::<_, Message>(table, key.as_slice())? {
            live.push(change);
        }
    }
    Ok(live)
}

/// Removes the text of a deleted message or of an edit nothing shows any
/// more, with what named its files and whom it mentioned.
fn blank(message: &mut Message) {
    message.content.clear();
    message.attachments.clear();
    message.mentions.clear();
    message.mentions_room = false;
}

/// Takes what [`index_words`] added for `message` out of the index.
fn unindex_words(words: &mut redb::Table<&[u8], ()>, message: &Message) -> StoreResult<()> {
    for word in crate::search::words(&message.content) {
        words.remove(word_key(message.room_id, &word, message.seq).as_slice())?;
    }
    Ok(())
}

/// Adds what a search can find in `message` to the index: the words of a
/// text message or an edit (whose text search also matches).
fn index_words(words: &mut redb::Table<&[u8], ()>, message: &Message) -> StoreResult<()> {
    if !matches!(
        message.kind,
        crate::model::MessageKind::Text | crate::model::MessageKind::Edit
    ) {
        return Ok(());
    }
    for word in crate::search::words(&message.content) {
        words.insert(word_key(message.room_id, &word, message.seq).as_slice(), ())?;
    }
    Ok(())
}

/// The index bucket of `seq`. Seqs past 2^40, which no room reaches, share
/// the last one: still found, only in a bigger bucket.
fn word_bucket(seq: u64) -> u32 {
    u32::try_from(seq >> WORD_BUCKET_BITS).unwrap_or(u32::MAX)
}

fn word_key(room: Id, word: &str, seq: u64) -> Vec<u8> {
    let mut key = word_prefix(room, word_bucket(seq), word);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `room|bucket|prefix`, with room for the rest of a key.
fn word_prefix(room: Id, bucket: u32, prefix: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + 4 + prefix.len() + 9);
    key.extend_from_slice(&room.bytes());
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(prefix.as_bytes());
    key
}

/// The keys of every word in `bucket` of `room` that starts with `prefix`,
/// as `start..end` (see [`SEARCH_WORDS`]).
fn word_range(room: Id, bucket: u32, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = word_prefix(room, bucket, prefix);
    let mut end = start.clone();
    end.push(0xff);
    (start, end)
}

/// Every index key of `room`, as `start..end`.
fn room_words(room: Id) -> (Vec<u8>, Vec<u8>) {
    let mut end = room.bytes().to_vec();
    end.extend_from_slice(&[0xff; 5]);
    (room.bytes().to_vec(), end)
}

/// The newest bucket of `room`'s index below `below` (or at all) that holds
/// any word: one seek, however many seqs lie between (a failover skips
/// 100,000).
fn previous_bucket(
    words: &redb::ReadOnlyTable<&[u8], ()>,
    room: Id,
    below: Option<u32>,
) -> StoreResult<Option<u32>> {
    let (start, mut end) = room_words(room);
    if let Some(below) = below {
        end = word_prefix(room, below, "");
    }
    let Some(entry) = words.range(start.as_slice()..end.as_slice())?.next_back() else {
        return Ok(None);
    };
    let (key, _) = entry?;
    let bucket = key
        .value()
        .get(12..16)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| StoreError::Internal("embedded store: corrupt index key".into()))?;
    Ok(Some(bucket))
}

/// The seqs in `bucket` of `room` with a word starting with each of `terms`.
fn bucket_matches(
    words: &redb::ReadOnlyTable<&[u8], ()>,
    room: Id,
    bucket: u32,
    terms: &[String],
) -> StoreResult<std::collections::BTreeSet<u64>> {
    let mut seqs: Option<std::collections::BTreeSet<u64>> = None;
    for term in terms {
        let (start, end) = word_range(room, bucket, term);
        let mut with_term = std::collections::BTreeSet::new();
        for entry in words.range(start.as_slice()..end.as_slice())? {
            let (key, _) = entry?;
            let seq = trailing_seq(key.value())?;
            if seqs.as_ref().is_none_or(|seqs| seqs.contains(&seq)) {
                with_term.insert(seq);
            }
        }
        if with_term.is_empty() {
            return Ok(with_term);
        }
        seqs = Some(with_term);
    }
    Ok(seqs.unwrap_or_default())
}

/// Indexes every stored message once, in a database made before the index
/// or with an index of another layout.
fn index_if_needed(tx: &redb::WriteTransaction) -> StoreResult<()> {
    let mut meta = tx.open_table(META)?;
    if meta
        .get("search_index")?
        .is_some_and(|v| v.value() == SEARCH_INDEX_VERSION)
    {
        return Ok(());
    }
    tx.delete_table(SEARCH_WORDS)?;
    let messages = tx.open_table(MESSAGES)?;
    let mut words = tx.open_table(SEARCH_WORDS)?;
    let mut indexed = 0u64;
    for entry in messages.iter()? {
        let (_, value) = entry?;
        let message: Message = serde_json::from_slice(value.value())?;
        index_words(&mut words, &message)?;
        indexed += 1;
    }
    meta.insert("search_index", SEARCH_INDEX_VERSION)?;
    if indexed > 0 {
        tracing::info!(messages = indexed, "indexed the stored messages for search");
    }
    Ok(())
}

/// Builds [`MAIN_LINE`] from the stored messages once, for a database
/// written before it existed.
fn main_line_if_needed(tx: &redb::WriteTransaction) -> StoreResult<()> {
    let mut meta = tx.open_table(META)?;
    if meta
        .get("main_line")?
        .is_some_and(|v| v.value() == MAIN_LINE_VERSION)
    {
        return Ok(());
    }
    let messages = tx.open_table(MESSAGES)?;
    let mut main_line = tx.open_table(MAIN_LINE)?;
    let mut indexed = 0u64;
    for entry in messages.iter()? {
        let (key, value) = entry?;
        let message: Message = serde_json::from_slice(value.value())?;
        if on_main_line(&message) {
            main_line.insert(key.value(), ())?;
            indexed += 1;
        }
    }
    meta.insert("main_line", MAIN_LINE_VERSION)?;
    if indexed > 0 {
        tracing::info!(
            messages = indexed,
            "indexed the stored messages for history pages"
        );
    }
    Ok(())
}

/// The main-line messages of `room` below seq `before`, skipping the newest
/// `skip`, then at most `limit`, oldest first: the index's keys are skipped
/// without reading a record.
fn main_line_page(
    tx: &redb::ReadTransaction,
    table: &redb::ReadOnlyTable<&[u8], &[u8]>,
    room: Id,
    before: u64,
    skip: u64,
    limit: u64,
) -> StoreResult<Vec<Message>> {
    let take = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let (from, to) = (message_key(room, 0), message_key(room, before));
    let index = tx.open_table(MAIN_LINE)?;
    let mut messages = Vec::new();
    for entry in index
        .range(from.as_slice()..to.as_slice())?
        .rev()
        .skip(take(skip))
        .take(take(limit))
    {
        let (key, _) = entry?;
        if let Some(message) = get_json::<_, Message>(table, key.value())? {
            messages.push(message);
        }
    }
    messages.reverse();
    Ok(messages)
}

/// Whether history pages show `message`: not a change, not a thread reply.
fn on_main_line(message: &Message) -> bool {
    !message.kind.is_change() && message.reply_to.is_none()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageKind;
    use crate::store::SearchQuery;
    use redb::ReadableTableMetadata;

    fn query(terms: &[&str]) -> SearchQuery {
        SearchQuery {
            terms: terms.iter().map(|t| t.to_string()).collect(),
            from: None,
            before: None,
            limit: 10,
        }
    }

    fn seqs(found: &[Message]) -> std::collections::BTreeSet<u64> {
        found.iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn search_finds_word_starts_and_a_database_from_before_the_index_is_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let room = Id::new();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let texts = [
                "we deploy on friday",
                "redeploy later",
                "Déjà vu, Friday",
                "friday in the second bucket",
                "friday in the fourth, deploy too",
                "friday, far ahead",
            ];
            let batch: Vec<(Message, Option<String>)> = texts
                .iter()
                // The last seq is past what buckets tell apart, and a
                // search seeks over the empty buckets before it.
                .zip([1, 2, 3, 300, 1000, 1 << 45])
                .map(|(text, seq)| {
                    let message = Message::new(
                        MessageKind::Text,
                        room,
                        Id::new(),
                        "a".into(),
                        (*text).into(),
                    );
                    (Message { seq, ..message }, None)
                })
                .collect();
            store.insert_messages(&batch).await.unwrap();
            let found = store.search(&[room], &query(&["depl"])).await.unwrap();
            assert_eq!(
                seqs(&found),
                [1, 1000].into(),
                "a word start, not inside 'redeploy'"
            );
            let found = store.search(&[room], &query(&["fri", "dé"])).await.unwrap();
            assert_eq!(seqs(&found), [3].into());
            let found = store.search(&[room], &query(&["friday"])).await.unwrap();
            assert_eq!(
                seqs(&found),
                [1, 3, 300, 1000, 1 << 45].into(),
                "every bucket"
            );
            let newest = SearchQuery {
                limit: 2,
                ..query(&["friday"])
            };
            let found = store.search(&[room], &newest).await.unwrap();
            assert_eq!(seqs(&found), [1000, 1 << 45].into(), "the newest first");
            assert!(
                store
                    .search(&[Id::new()], &query(&["depl"]))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        // As a database written before the index existed.
        {
            let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(SEARCH_WORDS).unwrap();
            tx.open_table(META).unwrap().remove("search_index").unwrap();
            tx.commit().unwrap();
        }
        let indexed = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let found = store.search(&[room], &query(&["friday"])).await.unwrap();
            assert_eq!(found.len(), 5, "indexed when opened");
            let tx = store.db.begin_read().unwrap();
            tx.open_table(SEARCH_WORDS).unwrap().len().unwrap()
        };
        // As a database with the first layout (room, word, seq): indexed
        // anew, the old keys gone.
        {
            let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
            let tx = db.begin_write().unwrap();
            let mut old_key = room.bytes().to_vec();
            old_key.extend_from_slice(b"friday\0");
            old_key.extend_from_slice(&3u64.to_be_bytes());
            tx.open_table(SEARCH_WORDS)
                .unwrap()
                .insert(old_key.as_slice(), ())
                .unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("search_index", "words-1")
                .unwrap();
            tx.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let found = store.search(&[room], &query(&["friday"])).await.unwrap();
        assert_eq!(found.len(), 5);
        let tx = store.db.begin_read().unwrap();
        assert_eq!(
            tx.open_table(SEARCH_WORDS).unwrap().len().unwrap(),
            indexed,
            "the old layout's keys are gone"
        );
    }

    #[tokio::test]
    async fn clicks_that_cancel_out_leave_nothing_to_load_and_a_deletion_blanks_every_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (room, bob) = (Id::new(), Id::new());
        let record = |kind, seq: u64, content: &str, target: Option<u64>| Message {
            seq,
            target_seq: target,
            ..Message::new(kind, room, bob, "bob".into(), content.into())
        };
        let mut batch = vec![(record(MessageKind::Text, 1, "secret plans", None), None)];
        for seq in 2..1002 {
            let kind = if seq % 2 == 0 {
                MessageKind::React
            } else {
                MessageKind::Unreact
            };
            batch.push((record(kind, seq, "👍", Some(1)), None));
        }
        batch.push((record(MessageKind::React, 1002, "🎉", Some(1)), None));
        batch.push((
            record(MessageKind::Edit, 1003, "covert plans", Some(1)),
            None,
        ));
        batch.push((record(MessageKind::Edit, 1004, "open plans", Some(1)), None));
        store.insert_messages(&batch).await.unwrap();
        let live: Vec<u64> = seqs(&store.changes_of(room, &[1]).await.unwrap())
            .into_iter()
            .collect();
        assert_eq!(
            live,
            [1002, 1004],
            "the reaction still there and the last edit"
        );
        assert!(
            store
                .search(&[room], &query(&["covert"]))
                .await
                .unwrap()
                .is_empty()
        );

        let delete = record(MessageKind::Delete, 1005, "", Some(1));
        store.insert_messages(&[(delete, None)]).await.unwrap();
        let live: Vec<u64> = seqs(&store.changes_of(room, &[1]).await.unwrap())
            .into_iter()
            .collect();
        assert_eq!(live, [1005]);
        for word in ["secret", "open", "plans"] {
            assert!(
                store
                    .search(&[room], &query(&[word]))
                    .await
                    .unwrap()
                    .is_empty(),
                "{word}"
            );
        }
        let stored = store
            .messages(
                room,
                HistoryQuery::After {
                    seq: 0,
                    limit: 2000,
                },
            )
            .await
            .unwrap();
        let texts: Vec<&Message> = stored
            .messages
            .iter()
            .filter(|m| matches!(m.kind, MessageKind::Text | MessageKind::Edit))
            .collect();
        assert_eq!(texts.len(), 3);
        assert!(texts.iter().all(|m| m.content.is_empty()), "{texts:?}");
    }

    #[tokio::test]
    async fn pages_read_the_main_line_and_an_older_database_gets_it_on_opening() {
        let dir = tempfile::tempdir().unwrap();
        let room = Id::new();
        let record = |kind, seq: u64, target: Option<u64>, reply_to: Option<u64>| {
            let message = Message::new(kind, room, Id::new(), "a".into(), format!("m{seq}"));
            Message {
                seq,
                target_seq: target,
                reply_to,
                ..message
            }
        };
        let mut batch = vec![(record(MessageKind::Text, 1, None, None), None)];
        for seq in 2..500 {
            let kind = if seq % 2 == 0 {
                MessageKind::React
            } else {
                MessageKind::Unreact
            };
            batch.push((
                Message {
                    content: "👍".into(),
                    ..record(kind, seq, Some(1), None)
                },
                None,
            ));
        }
        batch.push((record(MessageKind::Text, 500, None, Some(1)), None));
        batch.push((record(MessageKind::System, 501, None, None), None));
        batch.push((record(MessageKind::Text, 502, None, None), None));
        let latest = HistoryQuery::Latest {
            offset: 0,
            limit: 50,
        };
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.insert_messages(&batch).await.unwrap();
            let page = store.messages(room, latest).await.unwrap();
            assert_eq!(seqs(&page.messages), [1, 501, 502].into());
            let older = HistoryQuery::BeforeSeq { seq: 502, limit: 1 };
            assert_eq!(
                seqs(&store.messages(room, older).await.unwrap().messages),
                [501].into()
            );
        }
        // As a database written before the index existed.
        {
            let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(MAIN_LINE).unwrap();
            tx.open_table(META).unwrap().remove("main_line").unwrap();
            tx.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let page = store.messages(room, latest).await.unwrap();
        assert_eq!(
            (seqs(&page.messages), page.total),
            ([1, 501, 502].into(), 3)
        );
    }
}
