use serde::{Deserialize, Serialize};

use super::{Id, Timestamp};

/// A file as messages carry it and the upload answers it: what a client
/// needs to show it (a thumbnail, or a name, a type and a size to download)
/// and fetch it (`GET /api/attachments/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ts_rs::TS)]
pub struct AttachedFile {
    pub id: Id,
    pub filename: String,
    /// The type the server found in the bytes, never the one the uploader claimed.
    pub content_type: String,
    pub size: u64,
    /// An image's dimensions (images the server could decode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub height: Option<u32>,
    /// Whether `GET /api/attachments/{id}/thumbnail` has a small version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub thumbnail: bool,
}

/// An uploaded file as stored: who uploaded it into which room (which
/// decides who may read it), and the hashes of its bytes and thumbnail
/// (their ETags; the embedded store also files the bytes under them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub file: AttachedFile,
    pub room_id: Id,
    pub user_id: Id,
    pub sha256: String,
    /// The thumbnail's content (its type is in `thumbnail_type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_type: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// Named by a message. Files never sent expire (see
    /// `attachment::UNSENT_UPLOAD_TTL`).
    #[serde(default)]
    pub sent: bool,
}

/// Content to store beside an [`Attachment`]: its bytes and, for an image,
/// its thumbnail's.
#[derive(Debug, Clone)]
pub struct Upload {
    pub content: bytes::Bytes,
    pub thumbnail: Option<bytes::Bytes>,
}

/// Stored bytes being read: a stream of chunks and the total length.
pub struct Blob {
    pub len: u64,
    pub chunks: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob").field("len", &self.len).finish()
    }
}
