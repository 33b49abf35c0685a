//! The documents as MongoDB stores them (`*Doc`, with BSON ids and dates),
//! mapped to and from the domain model here and nowhere else.

use super::*;

pub(super) fn to_bson_date(ts: Timestamp) -> bson::DateTime {
    let millis = ts.unix_timestamp_nanos() / 1_000_000;
    bson::DateTime::from_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// BSON dates are milliseconds since the epoch, which every date we write fits.
pub(super) fn from_bson_date(date: bson::DateTime) -> Timestamp {
    let nanos = i128::from(date.timestamp_millis()) * 1_000_000;
    Timestamp::from_unix_timestamp_nanos(nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `text` as a regular expression matching itself.
pub(super) fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}/-".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub(super) fn seq_to_i64(seq: u64) -> StoreResult<i64> {
    i64::try_from(seq).map_err(|_| StoreError::Internal(format!("seq {seq} out of range")))
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("MongoDB: unexpected {what} in stored document"))
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct UserDoc {
    #[serde(rename = "_id")]
    pub(super) id: ObjectId,
    pub(super) username: String,
    pub(super) username_key: String,
    pub(super) email: String,
    pub(super) password_hash: String,
    pub(super) display_name: Option<String>,
    pub(super) avatar_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) avatar_color: Option<String>,
    pub(super) created_at: bson::DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_seen_at: Option<bson::DateTime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) blocked: Vec<ObjectId>,
}

impl From<&User> for UserDoc {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.object_id(),
            username: user.username.clone(),
            username_key: User::username_key(&user.username),
            email: user.email.clone(),
            password_hash: user.password_hash.clone(),
            display_name: user.display_name.clone(),
            avatar_url: user.avatar_url.clone(),
            avatar_color: user.avatar_color.clone(),
            created_at: to_bson_date(user.created_at),
            last_seen_at: user.last_seen_at.map(to_bson_date),
            blocked: user.blocked.iter().map(|id| id.object_id()).collect(),
        }
    }
}

impl From<UserDoc> for User {
    fn from(doc: UserDoc) -> Self {
        Self {
            id: doc.id.into(),
            username: doc.username,
            email: doc.email,
            password_hash: doc.password_hash,
            display_name: doc.display_name,
            avatar_url: doc.avatar_url,
            avatar_color: doc.avatar_color,
            created_at: from_bson_date(doc.created_at),
            last_seen_at: doc.last_seen_at.map(from_bson_date),
            blocked: doc.blocked.into_iter().map(Id::from).collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RoomDoc {
    #[serde(rename = "_id")]
    pub(super) id: ObjectId,
    pub(super) name: String,
    pub(super) description: String,
    pub(super) is_private: bool,
    pub(super) kind: String,
    pub(super) creator_id: ObjectId,
    pub(super) members: Vec<ObjectId>,
    pub(super) admins: Vec<ObjectId>,
    /// Absent (not null) on group rooms, so the sparse unique index ignores them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(super) direct_key: Option<String>,
    pub(super) created_at: bson::DateTime,
}

impl From<&Room> for RoomDoc {
    fn from(room: &Room) -> Self {
        Self {
            id: room.id.object_id(),
            name: room.name.clone(),
            description: room.description.clone(),
            is_private: room.is_private,
            kind: match room.kind {
                RoomKind::Group => "group",
                RoomKind::Direct => "direct",
            }
            .to_owned(),
            creator_id: room.creator_id.object_id(),
            members: room.members.iter().map(Id::object_id).collect(),
            admins: room.admins.iter().map(Id::object_id).collect(),
            direct_key: room.direct_key.clone(),
            created_at: to_bson_date(room.created_at),
        }
    }
}

impl TryFrom<RoomDoc> for Room {
    type Error = StoreError;

    fn try_from(doc: RoomDoc) -> StoreResult<Self> {
        Ok(Self {
            id: doc.id.into(),
            name: doc.name,
            description: doc.description,
            is_private: doc.is_private,
            kind: match doc.kind.as_str() {
                "group" => RoomKind::Group,
                "direct" => RoomKind::Direct,
                _ => return Err(corrupt("room kind")),
            },
            creator_id: doc.creator_id.into(),
            members: doc.members.into_iter().map(Id::from).collect(),
            admins: doc.admins.into_iter().map(Id::from).collect(),
            direct_key: doc.direct_key,
            created_at: from_bson_date(doc.created_at),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MessageDoc {
    #[serde(rename = "_id")]
    pub(super) id: ObjectId,
    pub(super) room_id: ObjectId,
    pub(super) seq: i64,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) user_id: ObjectId,
    pub(super) username: String,
    pub(super) content: String,
    pub(super) created_at: bson::DateTime,
    /// Changes: the seq of the message they change. A change that no longer
    /// counts (see [`crate::model::settle`]) has it as `settled_target_seq`,
    /// out of the index history pages read.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "settled_target_seq"
    )]
    pub(super) target_seq: Option<i64>,
    /// Thread replies: the seq of the message they answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reply_to: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) mentions: Vec<ObjectId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) mentions_room: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) attachments: Vec<AttachedFile>,
    /// The sender's dedupe key (their `client_id`), if they gave one: kept
    /// on the message itself, unique within the room (`DEDUPE_INDEX`), so a
    /// retry is refused by the insert that would store it twice, with no
    /// read before and no second document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) dedupe: Option<String>,
}

impl MessageDoc {
    /// The document of `message`, with its sender's dedupe key.
    pub(super) fn keyed(message: &Message, dedupe: Option<&str>) -> StoreResult<Self> {
        Ok(Self {
            dedupe: dedupe.map(str::to_owned),
            ..Self::try_from(message)?
        })
    }
}

impl TryFrom<&Message> for MessageDoc {
    type Error = StoreError;

    fn try_from(message: &Message) -> StoreResult<Self> {
        Ok(Self {
            id: message.id.object_id(),
            room_id: message.room_id.object_id(),
            seq: seq_to_i64(message.seq)?,
            kind: message.kind.name().to_owned(),
            user_id: message.user_id.object_id(),
            username: message.username.clone(),
            content: message.content.clone(),
            created_at: to_bson_date(message.timestamp),
            target_seq: message.target_seq.map(seq_to_i64).transpose()?,
            reply_to: message.reply_to.map(seq_to_i64).transpose()?,
            mentions: message.mentions.iter().map(|id| id.object_id()).collect(),
            mentions_room: message.mentions_room,
            attachments: message.attachments.clone(),
            dedupe: None,
        })
    }
}

impl TryFrom<MessageDoc> for Message {
    type Error = StoreError;

    fn try_from(doc: MessageDoc) -> StoreResult<Self> {
        Ok(Self {
            kind: MessageKind::from_name(&doc.kind).ok_or_else(|| corrupt("message type"))?,
            id: doc.id.into(),
            room_id: doc.room_id.into(),
            user_id: doc.user_id.into(),
            username: doc.username,
            content: doc.content,
            timestamp: from_bson_date(doc.created_at),
            target_seq: doc
                .target_seq
                .map(|seq| u64::try_from(seq).map_err(|_| corrupt("target seq")))
                .transpose()?,
            reply_to: doc
                .reply_to
                .map(|seq| u64::try_from(seq).map_err(|_| corrupt("reply_to")))
                .transpose()?,
            reply_count: 0,
            mentions: doc.mentions.into_iter().map(Id::from).collect(),
            mentions_room: doc.mentions_room,
            attachments: doc.attachments,
            edited_at: None,
            deleted: false,
            reactions: Default::default(),
            seq: u64::try_from(doc.seq).map_err(|_| corrupt("seq"))?,
        })
    }
}

/// The GridFS name of an attachment's thumbnail.
pub(super) fn thumbnail_name(attachment: &str) -> String {
    format!("{attachment}.thumbnail")
}

/// A profile picture, kept whole (the server made it small).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AvatarDoc {
    /// The user's id.
    #[serde(rename = "_id")]
    pub(super) id: ObjectId,
    pub(super) image: bson::Binary,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AttachmentDoc {
    #[serde(rename = "_id")]
    pub(super) id: ObjectId,
    pub(super) room_id: ObjectId,
    pub(super) user_id: ObjectId,
    pub(super) filename: String,
    pub(super) content_type: String,
    pub(super) size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) height: Option<u32>,
    pub(super) sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) thumbnail_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) thumbnail_type: Option<String>,
    pub(super) created_at: bson::DateTime,
    #[serde(default)]
    pub(super) sent: bool,
}

impl TryFrom<&Attachment> for AttachmentDoc {
    type Error = StoreError;

    fn try_from(attachment: &Attachment) -> StoreResult<Self> {
        let file = &attachment.file;
        Ok(Self {
            id: file.id.object_id(),
            room_id: attachment.room_id.object_id(),
            user_id: attachment.user_id.object_id(),
            filename: file.filename.clone(),
            content_type: file.content_type.clone(),
            size: i64::try_from(file.size)
                .map_err(|_| StoreError::Internal("attachment size out of range".into()))?,
            width: file.width,
            height: file.height,
            sha256: attachment.sha256.clone(),
            thumbnail_sha256: attachment.thumbnail_sha256.clone(),
            thumbnail_type: attachment.thumbnail_type.clone(),
            created_at: to_bson_date(attachment.created_at),
            sent: attachment.sent,
        })
    }
}

impl TryFrom<AttachmentDoc> for Attachment {
    type Error = StoreError;

    fn try_from(doc: AttachmentDoc) -> StoreResult<Self> {
        Ok(Self {
            file: AttachedFile {
                id: doc.id.into(),
                filename: doc.filename,
                content_type: doc.content_type,
                size: u64::try_from(doc.size).map_err(|_| corrupt("attachment size"))?,
                width: doc.width,
                height: doc.height,
                thumbnail: doc.thumbnail_sha256.is_some(),
            },
            room_id: doc.room_id.into(),
            user_id: doc.user_id.into(),
            sha256: doc.sha256,
            thumbnail_sha256: doc.thumbnail_sha256,
            thumbnail_type: doc.thumbnail_type,
            created_at: from_bson_date(doc.created_at),
            sent: doc.sent,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RefreshTokenDoc {
    /// The token's SHA-256 in hex.
    #[serde(rename = "_id")]
    pub(super) hash: String,
    pub(super) user_id: ObjectId,
    pub(super) expires_at: bson::DateTime,
    /// Absent on tokens stored before families existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) family: Option<ObjectId>,
    #[serde(default)]
    pub(super) used: bool,
}

impl From<RefreshTokenDoc> for RefreshToken {
    fn from(doc: RefreshTokenDoc) -> Self {
        Self {
            hash: doc.hash,
            user_id: doc.user_id.into(),
            expires_at: from_bson_date(doc.expires_at),
            family: doc.family.map_or_else(Id::new, Id::from),
            used: doc.used,
        }
    }
}
