//! The MongoDB store: durable state shared by every chat pod.
//!
//! Documents have their own types (`*Doc`) with BSON ids and dates, mapped to and
//! from the domain model here and nowhere else. Uniqueness is enforced by
//! indexes created at start-up, never by read-then-write in the application, so
//! it holds across pods and concurrent requests.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{self, Document, doc, oid::ObjectId};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Cursor, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::{Inserted, Store, StoreError, StoreResult};
use crate::model::{
    AttachedFile, Attachment, Blob, HistoryPage, HistoryQuery, Id, Message, MessageKind, Page,
    ProfileUpdate, RefreshToken, Revoke, Room, RoomKind, RoomPage, Timestamp, Upload, User,
};

mod documents;
mod errors;
mod indexes;

use documents::*;
use errors::*;

const DUPLICATE_KEY: i32 = 11000;
const USERNAME_INDEX: &str = "username_unique";
/// A dedupe key names one message of its room.
const DEDUPE_INDEX: &str = "room_dedupe_unique";
const EMAIL_INDEX: &str = "email_unique";

#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
    dedupe_ttl: time::Duration,
    /// Whether the server keeps a text index of messages (MongoDB does;
    /// some wire-compatible servers do not): search uses it, or scans with
    /// one case-insensitive pattern per term.
    text_index: bool,
}

impl MongoStore {
    /// Connects (lazily: the driver keeps a pool) and creates the indexes, which
    /// needs the server, so a wrong URI or an unreachable server fails here.
    pub async fn connect(uri: &str, db_name: &str) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::Unavailable(format!("invalid MongoDB URI: {}", e.kind)))?;
        options
            .app_name
            .get_or_insert_with(|| "chat-server".to_owned());
        // The driver's default of 30 s would hold every request that long while
        // MongoDB is down; fail fast and let readiness and retries handle it.
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(5));
        // A write counts once a majority of the replica set has it in its
        // journal, so a primary lost right after cannot take it along (the
        // URI's `w` and `journal` still win).
        options.write_concern.get_or_insert_with(|| {
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build()
        });
        let client = Client::with_options(options).map_err(map_error)?;
        let store = Self {
            db: client.database(db_name),
            dedupe_ttl: crate::store::DEDUPE_TTL,
            text_index: false,
        };
        let text_index = store.create_indexes().await?;
        Ok(Self {
            text_index,
            ..store
        })
    }

    /// How long a dedupe key is remembered (default [`crate::store::DEDUPE_TTL`]).
    pub fn with_dedupe_ttl(self, ttl: Duration) -> Self {
        Self {
            dedupe_ttl: time::Duration::try_from(ttl).unwrap_or(crate::store::DEDUPE_TTL),
            ..self
        }
    }

    fn users(&self) -> Collection<UserDoc> {
        self.db.collection("users")
    }

    fn rooms(&self) -> Collection<RoomDoc> {
        self.db.collection("rooms")
    }

    /// Applies [`crate::model::settle`] to a stored change: the earlier
    /// changes it replaces leave the `target_seq` index, and the text it
    /// makes unreadable is blanked. Idempotent, so a batch written twice
    /// settles the same way.
    async fn settle(&self, change: &Message) -> StoreResult<()> {
        let Some(target) = change.target_seq else {
            return Ok(());
        };
        let room = change.room_id.object_id();
        let target = seq_to_i64(target)?;
        let found = self
            .messages()
            .find(doc! {"room_id": room, "target_seq": target})
            .await
            .map_err(map_error)?;
        let live = collect(found)
            .await
            .map_err(map_error)?
            .into_iter()
            .map(Message::try_from)
            .collect::<StoreResult<Vec<_>>>()?;
        let settled = crate::model::settle(change, &live);
        let mut out = settled
            .settled
            .iter()
            .map(|seq| seq_to_i64(*seq))
            .collect::<StoreResult<Vec<_>>>()?;
        if !settled.counts {
            out.push(seq_to_i64(change.seq)?);
        }
        if !out.is_empty() {
            self.messages()
                .update_many(
                    doc! {"room_id": room, "seq": {"$in": out}, "target_seq": target},
                    doc! {"$set": {"settled_target_seq": target}, "$unset": {"target_seq": ""}},
                )
                .await
                .map_err(map_error)?;
        }
        if !settled.blanked.is_empty() {
            let blanked = settled
                .blanked
                .iter()
                .map(|seq| seq_to_i64(*seq))
                .collect::<StoreResult<Vec<_>>>()?;
            self.messages()
                .update_many(
                    doc! {"room_id": room, "seq": {"$in": blanked}},
                    doc! {
                        "$set": {"content": "", "mentions_room": false},
                        "$unset": {"attachments": "", "mentions": ""},
                    },
                )
                .await
                .map_err(map_error)?;
        }
        Ok(())
    }

    /// Takes dedupe key `key` off the room's message that has held it for
    /// longer than the dedupe window, so a new message may use it; returns
    /// how many it freed (0 or 1).
    async fn free_expired_key(&self, room: Id, key: &str) -> StoreResult<u64> {
        let until = to_bson_date(crate::model::now() - self.dedupe_ttl);
        let freed = self
            .messages()
            .update_many(
                doc! {"room_id": room.object_id(), "dedupe": key, "created_at": {"$lte": until}},
                doc! {"$unset": {"dedupe": ""}},
            )
            .await
            .map_err(map_error)?;
        Ok(freed.modified_count)
    }

    fn messages(&self) -> Collection<MessageDoc> {
        self.db.collection("messages")
    }

    fn refresh_tokens(&self) -> Collection<RefreshTokenDoc> {
        self.db.collection("refresh_tokens")
    }

    /// What each user has uploaded, in bytes: `{_id: user, bytes}`.
    fn upload_usage(&self) -> Collection<Document> {
        self.db.collection("upload_usage")
    }

    /// Subtracts `bytes` from what `user` has uploaded.
    async fn give_back(&self, user: ObjectId, bytes: i64) -> StoreResult<()> {
        self.upload_usage()
            .update_one(doc! {"_id": user}, doc! {"$inc": {"bytes": -bytes}})
            .await
            .map_err(map_error)?;
        Ok(())
    }

    fn avatars(&self) -> Collection<AvatarDoc> {
        self.db.collection("avatars")
    }

    fn attachments(&self) -> Collection<AttachmentDoc> {
        self.db.collection("attachments")
    }

    /// File bytes: GridFS (`blobs.files`, `blobs.chunks`), one file per
    /// content, its `_id` the content's SHA-256.
    fn blobs(&self) -> mongodb::gridfs::GridFsBucket {
        self.db.gridfs_bucket(
            mongodb::options::GridFsBucketOptions::builder()
                .bucket_name("blobs".to_owned())
                .build(),
        )
    }

    /// Stores `content` as the GridFS file `name` (an attachment's own: its
    /// id, or its id and `.thumbnail`), so deleting one attachment never
    /// touches another's bytes.
    async fn put_blob(&self, name: &str, content: &[u8]) -> StoreResult<()> {
        use futures_util::AsyncWriteExt;
        let bucket = self.blobs();
        let id = bson::Bson::String(name.to_owned());
        let mut upload = bucket
            .open_upload_stream(name)
            .id(id.clone())
            .await
            .map_err(map_error)?;
        let written = match upload.write_all(content).await {
            Ok(()) => upload.close().await,
            Err(e) => Err(e),
        };
        let Err(error) = written else {
            return Ok(());
        };
        // Chunks without their file document would be left behind.
        if let Err(e) = bucket.delete(id).await {
            tracing::debug!(error = %e, "nothing to clean up after a failed upload");
        }
        Err(StoreError::Unavailable(format!(
            "MongoDB: cannot store a file: {error}"
        )))
    }

    /// Removes the GridFS files of `record` (best effort: a file left over
    /// takes space, never shows).
    async fn drop_blobs(&self, record: &AttachmentDoc) {
        let id = record.id.to_hex();
        let names = std::iter::once(id.clone()).chain(
            record
                .thumbnail_sha256
                .as_ref()
                .map(|_| thumbnail_name(&id)),
        );
        for name in names {
            if let Err(e) = self.blobs().delete(bson::Bson::String(name)).await {
                tracing::warn!(error = %e, "cannot remove a deleted file");
            }
        }
    }

    /// Removes the attachment records `filter` matches, one at a time so
    /// that of two deletions racing (a message's and its room's) only the
    /// one that removed a record gives its bytes back to the quota, then
    /// their files.
    async fn forget_attachments(&self, filter: Document) -> StoreResult<u64> {
        let records = collect(
            self.attachments()
                .find(filter.clone())
                .await
                .map_err(map_error)?,
        )
        .await
        .map_err(map_error)?;
        let mut forgotten = 0;
        for record in records {
            // Still matching: an unsent file sent meanwhile is kept.
            let mut one = filter.clone();
            one.insert("_id", record.id);
            let deleted = self
                .attachments()
                .delete_one(one)
                .await
                .map_err(map_error)?;
            if deleted.deleted_count == 0 {
                continue;
            }
            self.give_back(record.user_id, record.size).await?;
            self.drop_blobs(&record).await;
            forgotten += 1;
        }
        Ok(forgotten)
    }

    async fn update_room(&self, room: Id, update: Document) -> StoreResult<Option<Room>> {
        let doc = self
            .rooms()
            .find_one_and_update(doc! {"_id": room.object_id()}, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_error)?;
        doc.map(Room::try_from).transpose()
    }
}

#[async_trait]
impl Store for MongoStore {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn create_user(&self, user: &User) -> StoreResult<()> {
        match self.users().insert_one(UserDoc::from(user)).await {
            Ok(_) => Ok(()),
            Err(e) => match duplicate_key(&e) {
                Some(message) if message.contains(EMAIL_INDEX) => {
                    Err(StoreError::Conflict("email"))
                }
                Some(_) => Err(StoreError::Conflict("username")),
                None => Err(map_error(e)),
            },
        }
    }

    async fn user(&self, id: Id) -> StoreResult<Option<User>> {
        let doc = self
            .users()
            .find_one(doc! {"_id": id.object_id()})
            .await
            .map_err(map_error)?;
        Ok(doc.map(User::from))
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let doc = self
            .users()
            .find_one(doc! {"email": email})
            .await
            .map_err(map_error)?;
        Ok(doc.map(User::from))
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let doc = self
            .users()
            .find_one(doc! {"username_key": User::username_key(username)})
            .await
            .map_err(map_error)?;
        Ok(doc.map(User::from))
    }

    async fn update_profile(&self, id: Id, update: &ProfileUpdate) -> StoreResult<Option<User>> {
        let mut set = Document::new();
        let mut unset = Document::new();
        if let Some(hash) = &update.password_hash {
            set.insert("password_hash", hash.as_str());
        }
        if let Some(blocked) = &update.blocked {
            let ids: Vec<ObjectId> = blocked.iter().map(|id| id.object_id()).collect();
            set.insert("blocked", ids);
        }
        for (field, value) in [
            ("display_name", &update.display_name),
            ("avatar_url", &update.avatar_url),
            ("avatar_color", &update.avatar_color),
        ] {
            match value {
                Some(Some(value)) => {
                    set.insert(field, value.as_str());
                }
                Some(None) => {
                    unset.insert(field, "");
                }
                None => {}
            }
        }
        let mut change = Document::new();
        if !set.is_empty() {
            change.insert("$set", set);
        }
        if !unset.is_empty() {
            change.insert("$unset", unset);
        }
        if change.is_empty() {
            return self.user(id).await;
        }
        let doc = self
            .users()
            .find_one_and_update(doc! {"_id": id.object_id()}, change)
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_error)?;
        Ok(doc.map(User::from))
    }

    async fn save_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let doc = RefreshTokenDoc {
            hash: token.hash.clone(),
            user_id: token.user_id.object_id(),
            expires_at: to_bson_date(token.expires_at),
            family: Some(token.family.object_id()),
            used: token.used,
        };
        self.refresh_tokens()
            .insert_one(doc)
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn use_refresh_token(&self, hash: &str) -> StoreResult<Option<RefreshToken>> {
        let doc = self
            .refresh_tokens()
            .find_one_and_update(doc! {"_id": hash}, doc! {"$set": {"used": true}})
            .return_document(ReturnDocument::Before)
            .await
            .map_err(map_error)?;
        Ok(doc.map(RefreshToken::from))
    }

    async fn revoke_refresh_tokens(&self, which: Revoke) -> StoreResult<u64> {
        let filter = match which {
            Revoke::Family(family) => doc! {"family": family.object_id()},
            Revoke::User(user) => doc! {"user_id": user.object_id()},
        };
        let deleted = self
            .refresh_tokens()
            .delete_many(filter)
            .await
            .map_err(map_error)?;
        Ok(deleted.deleted_count)
    }

    async fn create_room(&self, room: &Room) -> StoreResult<()> {
        self.rooms()
            .insert_one(RoomDoc::from(room))
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn room(&self, id: Id) -> StoreResult<Option<Room>> {
        let doc = self
            .rooms()
            .find_one(doc! {"_id": id.object_id()})
            .await
            .map_err(map_error)?;
        doc.map(Room::try_from).transpose()
    }

    async fn rooms_visible_to(&self, user: Id, page: Page) -> StoreResult<RoomPage> {
        let filter = doc! {"$or": [{"is_private": false}, {"members": user.object_id()}]};
        let total = self
            .rooms()
            .count_documents(filter.clone())
            .await
            .map_err(map_error)?;
        let cursor = self
            .rooms()
            .find(filter)
            .sort(doc! {"_id": 1})
            .skip(page.offset)
            .limit(i64::try_from(page.limit).unwrap_or(i64::MAX))
            .await
            .map_err(map_error)?;
        let rooms = collect(cursor)
            .await
            .map_err(map_error)?
            .into_iter()
            .map(Room::try_from)
            .collect::<StoreResult<_>>()?;
        Ok(RoomPage { rooms, total })
    }

    async fn room_mates(&self, user: Id) -> StoreResult<Vec<Id>> {
        let cursor = self
            .rooms()
            .find(doc! {"members": user.object_id()})
            .await
            .map_err(map_error)?;
        let mut mates = std::collections::BTreeSet::from([user]);
        for room in collect(cursor).await.map_err(map_error)? {
            mates.extend(Room::try_from(room)?.members);
        }
        Ok(mates.into_iter().collect())
    }

    async fn add_member(&self, room: Id, user: Id) -> StoreResult<Option<Room>> {
        self.update_room(room, doc! {"$addToSet": {"members": user.object_id()}})
            .await
    }

    async fn remove_member(&self, room: Id, user: Id) -> StoreResult<Option<Room>> {
        self.update_room(
            room,
            doc! {"$pull": {"members": user.object_id(), "admins": user.object_id()}},
        )
        .await
    }

    async fn set_admin(&self, room: Id, user: Id, admin: bool) -> StoreResult<Option<Room>> {
        let update = if admin {
            doc! {"$addToSet": {"admins": user.object_id()}}
        } else {
            doc! {"$pull": {"admins": user.object_id()}}
        };
        self.update_room(room, update).await
    }

    async fn set_last_seen(&self, user: Id, at: Timestamp) -> StoreResult<()> {
        self.users()
            .update_one(
                doc! {"_id": user.object_id()},
                doc! {"$set": {"last_seen_at": to_bson_date(at)}},
            )
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn rename_room(
        &self,
        room: Id,
        name: String,
        description: String,
    ) -> StoreResult<Option<Room>> {
        let update = doc! {"$set": {"name": name, "description": description}};
        self.update_room(room, update).await
    }

    async fn delete_room(&self, room: Id) -> StoreResult<bool> {
        let deleted = self
            .rooms()
            .delete_one(doc! {"_id": room.object_id()})
            .await
            .map_err(map_error)?;
        // The room goes first: should the history delete fail, what remains is
        // unreachable rather than a room without its history.
        self.messages()
            .delete_many(doc! {"room_id": room.object_id()})
            .await
            .map_err(map_error)?;
        self.forget_attachments(doc! {"room_id": room.object_id()})
            .await?;
        Ok(deleted.deleted_count > 0)
    }

    async fn direct_room(&self, candidate: &Room) -> StoreResult<Room> {
        let key = candidate
            .direct_key
            .as_deref()
            .ok_or_else(|| StoreError::Internal("direct room without a direct key".into()))?;
        if let Some(existing) = self
            .rooms()
            .find_one(doc! {"direct_key": key})
            .await
            .map_err(map_error)?
        {
            return Room::try_from(existing);
        }
        match self.rooms().insert_one(RoomDoc::from(candidate)).await {
            Ok(_) => Ok(candidate.clone()),
            // Another request created it between our read and our insert.
            Err(e) if duplicate_key(&e).is_some() => self
                .rooms()
                .find_one(doc! {"direct_key": key})
                .await
                .map_err(map_error)?
                .map(Room::try_from)
                .transpose()?
                .ok_or_else(|| {
                    StoreError::Internal("direct room vanished after a duplicate insert".into())
                }),
            Err(e) => Err(map_error(e)),
        }
    }

    async fn insert_message(
        &self,
        message: &Message,
        dedupe: Option<&str>,
    ) -> StoreResult<Inserted> {
        if let Some(key) = dedupe
            && let Some(earlier) = self.deduplicated(message.room_id, key).await?
        {
            return Ok(Inserted::Duplicate(Box::new(earlier)));
        }
        let document = MessageDoc::keyed(message, dedupe)?;
        let mut written = self.messages().insert_one(&document).await;
        if let (Err(e), Some(key)) = (&written, dedupe)
            && duplicate_key(e).is_some_and(|m| names_index(&m, DEDUPE_INDEX))
        {
            // A retry that came between the check and the insert, or a key
            // last used longer ago than the window: the first wins, the
            // second frees the key and inserts again.
            if let Some(earlier) = self.deduplicated(message.room_id, key).await? {
                return Ok(Inserted::Duplicate(Box::new(earlier)));
            }
            self.free_expired_key(message.room_id, key).await?;
            written = self.messages().insert_one(&document).await;
        }
        match written {
            Ok(_) => {}
            Err(e) if duplicate_key(&e).is_some() => {
                let filter = doc! {"room_id": document.room_id, "seq": document.seq};
                let existing = self
                    .messages()
                    .find_one(filter)
                    .await
                    .map_err(map_error)?
                    .ok_or_else(|| StoreError::Internal("duplicate message not found".into()))?;
                return Ok(Inserted::Existing(Box::new(Message::try_from(existing)?)));
            }
            Err(e) => return Err(map_error(e)),
        }
        if message.kind.is_change() {
            self.settle(message).await?;
        }
        Ok(Inserted::New)
    }

    async fn insert_messages(&self, batch: &[(Message, Option<String>)]) -> StoreResult<()> {
        // A key twice in one batch: the first seq keeps it, the later one is
        // a retry the bus appended as new (see the trait).
        let mut first_seq: HashMap<(Id, &str), u64> = HashMap::new();
        let mut stored: Vec<(&Message, Option<&str>)> = Vec::with_capacity(batch.len());
        for (message, key) in batch {
            let key = key.as_deref();
            if let Some(key) = key
                && *first_seq
                    .entry((message.room_id, key))
                    .or_insert(message.seq)
                    != message.seq
            {
                continue;
            }
            stored.push((message, key));
        }
        // Every message of the batch may be a retry of a stored one: then
        // there is nothing to insert, and MongoDB refuses an empty insert.
        if stored.is_empty() {
            return Ok(());
        }
        let documents = stored
            .iter()
            .map(|(message, key)| MessageDoc::keyed(message, *key))
            .collect::<StoreResult<Vec<_>>>()?;
        // One unordered insert: a message stored before (the batch written
        // twice) does not stop the rest, and the index refuses a key that
        // names another message of the room.
        let refused =
            refused_for_key(self.messages().insert_many(&documents).ordered(false).await)?;
        let mut skipped = vec![false; stored.len()];
        for index in refused {
            let (Some((message, Some(key))), Some(document)) =
                (stored.get(index), documents.get(index))
            else {
                continue;
            };
            // Rare: the key's message is older than the window, so the key
            // is free again; else this is a retry, not stored.
            if self.free_expired_key(message.room_id, key).await? > 0 {
                ignore_duplicates(self.messages().insert_one(document).await)?;
            } else {
                skipped[index] = true;
            }
        }
        for ((message, _), skipped) in stored.iter().zip(skipped) {
            if message.kind.is_change() && !skipped {
                self.settle(message).await?;
            }
        }
        Ok(())
    }

    async fn deduplicated(&self, room: Id, dedupe: &str) -> StoreResult<Option<Message>> {
        let since = to_bson_date(crate::model::now() - self.dedupe_ttl);
        self.messages()
            .find_one(
                doc! {"room_id": room.object_id(), "dedupe": dedupe, "created_at": {"$gt": since}},
            )
            .await
            .map_err(map_error)?
            .map(Message::try_from)
            .transpose()
    }

    async fn replies(
        &self,
        room: Id,
        parent: u64,
        before: Option<u64>,
        limit: u64,
    ) -> StoreResult<Vec<Message>> {
        let mut filter = doc! {"room_id": room.object_id(), "reply_to": seq_to_i64(parent)?};
        if let Some(before) = before {
            filter.insert("seq", doc! {"$lt": seq_to_i64(before)?});
        }
        let cursor = self
            .messages()
            .find(filter)
            .sort(doc! {"seq": -1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(map_error)?;
        let mut replies = collect(cursor)
            .await
            .map_err(map_error)?
            .into_iter()
            .map(Message::try_from)
            .collect::<StoreResult<Vec<_>>>()?;
        replies.reverse();
        Ok(replies)
    }

    async fn reply_counts(
        &self,
        room: Id,
        parents: &[u64],
    ) -> StoreResult<std::collections::HashMap<u64, u64>> {
        let mut counts = std::collections::HashMap::new();
        if parents.is_empty() {
            return Ok(counts);
        }
        let parents = parents
            .iter()
            .map(|seq| seq_to_i64(*seq))
            .collect::<StoreResult<Vec<_>>>()?;
        let cursor = self
            .messages()
            .find(doc! {"room_id": room.object_id(), "reply_to": {"$in": parents}})
            .await
            .map_err(map_error)?;
        for reply in collect(cursor).await.map_err(map_error)? {
            if let Some(parent) = reply.reply_to.and_then(|p| u64::try_from(p).ok()) {
                *counts.entry(parent).or_default() += 1;
            }
        }
        Ok(counts)
    }

    async fn search(&self, rooms: &[Id], query: &super::SearchQuery) -> StoreResult<Vec<Message>> {
        if rooms.is_empty() || query.terms.is_empty() {
            return Ok(Vec::new());
        }
        let rooms: Vec<ObjectId> = rooms.iter().map(|r| r.object_id()).collect();
        let mut filter = doc! {"room_id": {"$in": rooms}, "type": {"$in": MessageKind::SEARCHED.map(MessageKind::name).to_vec()}};
        if let Some(from) = query.from {
            filter.insert("user_id", from.object_id());
        }
        if let Some(before) = query.before {
            filter.insert("created_at", doc! {"$lt": to_bson_date(before)});
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let found = if self.text_index {
            // Quoted terms: every one must be there.
            let phrase: Vec<String> = query.terms.iter().map(|t| format!("\"{t}\"")).collect();
            filter.insert("$text", doc! {"$search": phrase.join(" ")});
            self.messages()
                .find(filter)
                .projection(doc! {"score": {"$meta": "textScore"}})
                .sort(doc! {"score": {"$meta": "textScore"}})
                .limit(limit)
                .await
        } else {
            let each: Vec<Document> = query
                .terms
                .iter()
                .map(|t| doc! {"content": {"$regex": regex_escape(t), "$options": "i"}})
                .collect();
            filter.insert("$and", each);
            self.messages()
                .find(filter)
                .sort(doc! {"created_at": -1})
                .limit(limit)
                .await
        }
        .map_err(map_error)?;
        collect(found)
            .await
            .map_err(map_error)?
            .into_iter()
            .map(Message::try_from)
            .collect()
    }

    async fn changes_of(&self, room: Id, seqs: &[u64]) -> StoreResult<Vec<Message>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = seqs
            .iter()
            .map(|seq| seq_to_i64(*seq))
            .collect::<StoreResult<Vec<_>>>()?;
        let cursor = self
            .messages()
            .find(doc! {"room_id": room.object_id(), "target_seq": {"$in": seqs}})
            .sort(doc! {"seq": 1})
            .await
            .map_err(map_error)?;
        collect(cursor)
            .await
            .map_err(map_error)?
            .into_iter()
            .map(Message::try_from)
            .collect()
    }

    async fn messages(&self, room: Id, query: HistoryQuery) -> StoreResult<HistoryPage> {
        let room_id = room.object_id();
        let shown = doc! {
            "room_id": room_id,
            "type": {"$in": MessageKind::SHOWN.map(MessageKind::name).to_vec()},
            "reply_to": {"$exists": false},
        };
        let total = self
            .messages()
            .count_documents(shown.clone())
            .await
            .map_err(map_error)?;
        if matches!(query, HistoryQuery::Latest { offset, .. } if offset >= total) {
            // Past the oldest: nothing to skip through.
            return Ok(HistoryPage {
                messages: Vec::new(),
                total,
            });
        }
        // Pages show messages; a resume (`After`) replays changes as well.
        let (filter, skip, limit, order) = match query {
            HistoryQuery::Latest { offset, limit } => (shown, offset, limit, -1),
            HistoryQuery::BeforeSeq { seq, limit } => {
                let mut filter = shown;
                filter.insert("seq", doc! {"$lt": seq_to_i64(seq)?});
                (filter, 0, limit, -1)
            }
            HistoryQuery::After { seq, limit } => {
                let filter = doc! {"room_id": room_id, "seq": {"$gt": seq_to_i64(seq)?}};
                (filter, 0, limit, 1)
            }
        };
        let cursor = self
            .messages()
            .find(filter)
            .sort(doc! {"seq": order})
            .skip(skip)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(map_error)?;
        let mut messages = collect(cursor)
            .await
            .map_err(map_error)?
            .into_iter()
            .map(Message::try_from)
            .collect::<StoreResult<Vec<_>>>()?;
        if order < 0 {
            messages.reverse();
        }
        Ok(HistoryPage { messages, total })
    }

    async fn newest_seq(&self, room: Id) -> StoreResult<u64> {
        let newest = self
            .db
            .collection::<Document>("messages")
            .find_one(doc! {"room_id": room.object_id()})
            .sort(doc! {"seq": -1})
            .projection(doc! {"seq": 1, "_id": 0})
            .await
            .map_err(map_error)?;
        match newest {
            Some(doc) => u64::try_from(doc.get_i64("seq").map_err(|_| corrupt("seq"))?)
                .map_err(|_| corrupt("seq")),
            None => Ok(0),
        }
    }

    async fn save_attachment(&self, attachment: &Attachment, upload: Upload) -> StoreResult<()> {
        let doc = AttachmentDoc::try_from(attachment)?;
        let id = doc.id.to_hex();
        self.put_blob(&id, &upload.content).await?;
        let stored = match &upload.thumbnail {
            Some(thumbnail) => self.put_blob(&thumbnail_name(&id), thumbnail).await,
            None => Ok(()),
        };
        let stored = match stored {
            Ok(()) => self
                .attachments()
                .insert_one(&doc)
                .await
                .map(drop)
                .map_err(map_error),
            Err(e) => Err(e),
        };
        if stored.is_err() {
            self.drop_blobs(&doc).await;
        }
        stored
    }

    async fn delete_attachments(&self, ids: &[Id]) -> StoreResult<()> {
        let ids: Vec<ObjectId> = ids.iter().map(|id| id.object_id()).collect();
        self.forget_attachments(doc! {"_id": {"$in": ids}})
            .await
            .map(drop)
    }

    async fn mark_sent(&self, ids: &[Id]) -> StoreResult<u64> {
        let ids: Vec<ObjectId> = ids.iter().map(|id| id.object_id()).collect();
        let marked = self
            .attachments()
            .update_many(doc! {"_id": {"$in": ids}}, doc! {"$set": {"sent": true}})
            .await
            .map_err(map_error)?;
        Ok(marked.matched_count)
    }

    async fn expire_unsent(&self, before: Timestamp) -> StoreResult<u64> {
        self.forget_attachments(doc! {"sent": false, "created_at": {"$lt": to_bson_date(before)}})
            .await
    }

    async fn attachment(&self, id: Id) -> StoreResult<Option<Attachment>> {
        self.attachments()
            .find_one(doc! {"_id": id.object_id()})
            .await
            .map_err(map_error)?
            .map(Attachment::try_from)
            .transpose()
    }

    async fn open_attachment(
        &self,
        attachment: &Attachment,
        thumbnail: bool,
    ) -> StoreResult<Option<Blob>> {
        use futures_util::StreamExt;
        use tokio_util::compat::FuturesAsyncReadCompatExt;
        let id = attachment.file.id.object_id().to_hex();
        let name = if thumbnail { thumbnail_name(&id) } else { id };
        let bucket = self.blobs();
        let Some(file) = bucket
            .find_one(doc! {"_id": &name})
            .await
            .map_err(map_error)?
        else {
            return Ok(None);
        };
        let stream = bucket
            .open_download_stream(file.id)
            .await
            .map_err(map_error)?;
        Ok(Some(Blob {
            len: file.length,
            chunks: tokio_util::io::ReaderStream::new(stream.compat()).boxed(),
        }))
    }

    async fn save_avatar(&self, user: Id, image: Option<bytes::Bytes>) -> StoreResult<()> {
        let filter = doc! {"_id": user.object_id()};
        match image {
            Some(image) => {
                let doc = AvatarDoc {
                    id: user.object_id(),
                    image: bson::Binary {
                        subtype: bson::spec::BinarySubtype::Generic,
                        bytes: image.to_vec(),
                    },
                };
                self.avatars()
                    .replace_one(filter, doc)
                    .upsert(true)
                    .await
                    .map_err(map_error)?;
            }
            None => {
                self.avatars().delete_one(filter).await.map_err(map_error)?;
            }
        }
        Ok(())
    }

    async fn avatar(&self, user: Id) -> StoreResult<Option<bytes::Bytes>> {
        Ok(self
            .avatars()
            .find_one(doc! {"_id": user.object_id()})
            .await
            .map_err(map_error)?
            .map(|doc| bytes::Bytes::from(doc.image.bytes)))
    }

    async fn reserve_upload(&self, user: Id, bytes: u64, quota: u64) -> StoreResult<bool> {
        let (Ok(size), quota) = (
            i64::try_from(bytes),
            i64::try_from(quota).unwrap_or(i64::MAX),
        ) else {
            return Ok(false);
        };
        if size > quota {
            return Ok(false);
        }
        let id = user.object_id();
        // One conditional increment; a first upload creates the counter
        // instead, and should another pod create it first, the increment
        // is tried once more against it.
        for _ in 0..2 {
            let updated = self
                .upload_usage()
                .update_one(
                    doc! {"_id": id, "bytes": {"$lte": quota - size}},
                    doc! {"$inc": {"bytes": size}},
                )
                .await
                .map_err(map_error)?;
            if updated.matched_count > 0 {
                return Ok(true);
            }
            match self
                .upload_usage()
                .insert_one(doc! {"_id": id, "bytes": size})
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if duplicate_key(&e).is_some() => continue,
                Err(e) => return Err(map_error(e)),
            }
        }
        Ok(false)
    }

    async fn release_upload(&self, user: Id, bytes: u64) -> StoreResult<()> {
        self.give_back(user.object_id(), i64::try_from(bytes).unwrap_or(i64::MAX))
            .await
    }

    async fn uploaded_bytes(&self, user: Id) -> StoreResult<u64> {
        let usage = self
            .upload_usage()
            .find_one(doc! {"_id": user.object_id()})
            .await
            .map_err(map_error)?;
        // Written only as 64-bit integers (the sizes are i64).
        let bytes = usage.and_then(|doc| doc.get_i64("bytes").ok()).unwrap_or(0);
        Ok(u64::try_from(bytes).unwrap_or(0))
    }
}

/// Reads a cursor to the end; pages are bounded by the caller's limit.
async fn collect<T: serde::de::DeserializeOwned + Send + Sync>(
    mut cursor: Cursor<T>,
) -> mongodb::error::Result<Vec<T>> {
    let mut items = Vec::new();
    while cursor.advance().await? {
        items.push(cursor.deserialize_current()?);
    }
    Ok(items)
}
