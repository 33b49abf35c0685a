//! `/api/rooms/{id}/attachments` (upload) and `/api/attachments/{id}`
//! (download, thumbnail): files posted in rooms, readable by whoever may
//! read the room's messages (a private or direct room's members only).
//!
//! An upload is the file itself as the request body (not a form), so a
//! browser can report its progress and nothing is parsed but the bytes. The
//! server decides the type from those bytes (`crate::attachment`), stores
//! them (`Store::save_attachment`) once their size fits the uploader's quota,
//! and answers with the [`AttachedFile`] a message then names in its
//! `attachments`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::caller::AuthUser;
use super::error::WireError;
use super::extract::{Path, Query, parse_id};
use crate::attachment;
use crate::model::{AttachedFile, Attachment, Id, Upload};
use crate::state::AppState;
use crate::wire::errors::ErrorCode;

/// Files are served with a policy of their own: nothing in them runs, even
/// opened directly in a tab (`sandbox`), and no other site embeds them.
const FILE_SECURITY_POLICY: &str = "default-src 'none'; img-src 'self'; sandbox";

#[derive(Debug, Deserialize)]
pub(crate) struct UploadParams {
    /// The file's name, shown to others and used when they save it.
    pub filename: Option<String>,
}

pub(crate) async fn upload(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<AttachedFile>), WireError> {
    state.chat.limits.message(caller.id)?;
    let room = parse_id(&raw_id, "room")?;
    state
        .store
        .room(room)
        .await?
        .filter(|r| r.is_member(caller.id))
        .ok_or_else(|| WireError::not_found("room"))?;

    let limits = &state.limits;
    // Refused before reading a byte when the declared size would not fit
    // (the body cannot be longer than it says).
    let used = state.store.uploaded_bytes(caller.id).await?;
    check_quota(
        used,
        declared_length(&headers).unwrap_or(0),
        limits.upload_quota_bytes,
    )?;
    let content = read_upload(&state, body, limits.attachment_bytes).await?;
    let size = content.bytes.len() as u64;
    // The quota holds exactly, however many uploads race on however many pods.
    if !state
        .store
        .reserve_upload(caller.id, size, limits.upload_quota_bytes)
        .await?
    {
        let used = state.store.uploaded_bytes(caller.id).await?;
        return Err(quota_exceeded(used, limits.upload_quota_bytes));
    }
    let mut reservation = Reservation {
        state: state.clone(),
        user: caller.id,
        bytes: size,
        kept: false,
    };

    let filename = attachment::clean_filename(params.filename.as_deref().unwrap_or_default());
    let attachment = store(&state, room, caller.id, filename, content.bytes.clone()).await?;
    reservation.kept = true;
    state.metrics.uploads.inc();
    state.metrics.upload_bytes.inc_by(attachment.file.size);
    tracing::info!(
        attachment_id = %attachment.file.id,
        room_id = %room,
        size = attachment.file.size,
        content_type = attachment.file.content_type,
        "file uploaded"
    );
    Ok((StatusCode::CREATED, axum::Json(attachment.file)))
}

/// An upload's share of its uploader's quota, given back unless the upload
/// is kept: after an error, and when the client hangs up mid-way (its
/// request's future, this with it, is dropped).
struct Reservation {
    state: AppState,
    user: Id,
    bytes: u64,
    kept: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let (store, user, bytes) = (self.state.store.clone(), self.user, self.bytes);
        tokio::spawn(async move {
            if let Err(e) = store.release_upload(user, bytes).await {
                tracing::warn!(error = %e, %user, bytes, "cannot give back an upload's reservation");
            }
        });
    }
}

/// Examines `content` and stores it with its record.
async fn store(
    state: &AppState,
    room: Id,
    user: Id,
    filename: String,
    content: bytes::Bytes,
) -> Result<Attachment, WireError> {
    let (attachment, upload) = examine(state, room, user, filename, content).await?;
    state.store.save_attachment(&attachment, upload).await?;
    Ok(attachment)
}

/// Hashes, sniffs and thumbnails `content` (see [`decode_in_turn`]).
async fn examine(
    state: &AppState,
    room: Id,
    user: Id,
    filename: String,
    content: bytes::Bytes,
) -> Result<(Attachment, Upload), WireError> {
    decode_in_turn(state, move || {
        let sha256 = attachment::content_hash(&content);
        let sniffed = attachment::sniff(&content);
        let thumbnail = sniffed
            .image
            .and_then(|format| attachment::thumbnail(&content, format));
        // An image that cannot be decoded is served as a plain download:
        // a browser should not be handed what our decoder refused.
        let content_type = match (&sniffed.image, &thumbnail) {
            (Some(_), None) => "application/octet-stream",
            _ => sniffed.content_type,
        };
        let file = AttachedFile {
            id: Id::new(),
            filename,
            content_type: content_type.to_owned(),
            size: content.len() as u64,
            width: thumbnail.as_ref().map(|t| t.width),
            height: thumbnail.as_ref().map(|t| t.height),
            thumbnail: thumbnail.is_some(),
        };
        let attachment = Attachment {
            file,
            room_id: room,
            user_id: user,
            sha256,
            thumbnail_sha256: thumbnail
                .as_ref()
                .map(|t| attachment::content_hash(&t.bytes)),
            thumbnail_type: thumbnail.as_ref().map(|t| t.content_type.to_owned()),
            created_at: crate::model::now(),
            sent: false,
        };
        let upload = Upload {
            content,
            thumbnail: thumbnail.map(|t| bytes::Bytes::from(t.bytes)),
        };
        (attachment, upload)
    })
    .await
}

fn too_large(limit: usize) -> WireError {
    WireError::new(
        ErrorCode::FileTooLarge,
        format!("a file may have at most {limit} bytes"),
    )
}

fn check_quota(used: u64, adding: u64, quota: u64) -> Result<(), WireError> {
    if used.saturating_add(adding) > quota {
        return Err(quota_exceeded(used, quota));
    }
    Ok(())
}

fn quota_exceeded(used: u64, quota: u64) -> WireError {
    WireError::new(
        ErrorCode::QuotaExceeded,
        format!(
            "your files would take more than your {quota} bytes ({used} used); delete messages with files you no longer need"
        ),
    )
}

pub(crate) async fn download(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WireError> {
    let attachment = readable(&state, &raw_id, caller.id).await?;
    serve(&state, &headers, &attachment, false).await
}

pub(crate) async fn thumbnail(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WireError> {
    let attachment = readable(&state, &raw_id, caller.id).await?;
    serve(&state, &headers, &attachment, true).await
}

/// Deletes a file of the caller's: one they uploaded and will not send, or
/// one they sent and take back (its message then shows it as gone). Its
/// bytes count no more against their quota.
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, WireError> {
    state.chat.limits.message(caller.id)?;
    let attachment = readable(&state, &raw_id, caller.id).await?;
    if attachment.user_id != caller.id {
        return Err(WireError::forbidden(
            "only who uploaded a file may delete it",
        ));
    }
    state
        .store
        .delete_attachments(&[attachment.file.id])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The attachment if `caller` may read its room's messages (as Slack does
/// with files: a public room's are anyone's who may read the room, a
/// private or direct room's are its members' only); 404 otherwise, whether
/// or not it exists.
async fn readable(state: &AppState, raw_id: &str, caller: Id) -> Result<Attachment, WireError> {
    let id = parse_id(raw_id, "attachment")?;
    let attachment = state
        .store
        .attachment(id)
        .await?
        .ok_or_else(|| WireError::not_found("attachment"))?;
    state
        .store
        .room(attachment.room_id)
        .await?
        .filter(|room| room.is_visible_to(caller))
        .ok_or_else(|| WireError::not_found("attachment"))?;
    Ok(attachment)
}

/// Streams `attachment`'s bytes, or its thumbnail's (404 if it has none).
/// Their content never changes, so its hash is the ETag and a browser
/// revalidates for nothing.
async fn serve(
    state: &AppState,
    request: &HeaderMap,
    attachment: &Attachment,
    thumbnail: bool,
) -> Result<Response, WireError> {
    let (sha256, content_type, inline) = if thumbnail {
        let (Some(sha256), Some(content_type)) =
            (&attachment.thumbnail_sha256, &attachment.thumbnail_type)
        else {
            return Err(WireError::not_found("thumbnail"));
        };
        (sha256, content_type, true)
    } else {
        let file = &attachment.file;
        (&attachment.sha256, &file.content_type, file.thumbnail)
    };
    let disposition = attachment::content_disposition(inline, &attachment.file.filename);
    let mut headers = file_headers(sha256)?;
    if is_fresh(request, sha256) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let Some(blob) = state.store.open_attachment(attachment, thumbnail).await? else {
        return Err(WireError::internal(format!(
            "the bytes of a stored attachment are missing: {}",
            attachment.file.id
        )));
    };
    headers.insert(header::CONTENT_TYPE, header_value(content_type)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.len));
    headers.insert(header::CONTENT_DISPOSITION, header_value(&disposition)?);
    Ok((headers, Body::from_stream(blob.chunks)).into_response())
}

/// What every served file carries: its hash as the ETag, private caching,
/// and a policy under which nothing in it runs.
pub(super) fn file_headers(hash: &str) -> Result<HeaderMap, WireError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, header_value(&format!("\"{hash}\""))?);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_SECURITY_POLICY),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    Ok(headers)
}

/// Whether the client's copy (`If-None-Match`) is the one with `hash`.
pub(super) fn is_fresh(request: &HeaderMap, hash: &str) -> bool {
    let etag = format!("\"{hash}\"");
    request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag))
}

pub(super) fn header_value(value: &str) -> Result<HeaderValue, WireError> {
    HeaderValue::from_str(value).map_err(|e| WireError::internal(format!("bad header: {e}")))
}

/// How long an upload waits for its share of the pod's upload memory.
const UPLOAD_MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// An upload's bytes, holding their share of the pod's upload memory
/// (`CHAT_UPLOAD_MEMORY_BYTES`) until dropped.
pub(super) struct UploadBody {
    pub bytes: bytes::Bytes,
    _memory: tokio::sync::OwnedSemaphorePermit,
}

/// Reads an upload's body. Its `Content-Length` is required (411 without
/// one: a chunked body would say its size only once read) and at most
/// `limit` (413); that many bytes of the pod's upload memory are taken
/// before a byte is read (503 `busy` if they do not come free within
/// seconds), and the body cannot be longer (HTTP's framing and the read's
/// limit). Never empty.
pub(super) async fn read_upload(
    state: &AppState,
    body: Body,
    limit: usize,
) -> Result<UploadBody, WireError> {
    // Exact for a `Content-Length` body and for none at all (empty), not
    // for a chunked one.
    let declared = axum::body::HttpBody::size_hint(&body)
        .exact()
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::LengthRequired,
                "send the file with its Content-Length",
            )
        })?;
    if declared > limit as u64 {
        return Err(too_large(limit));
    }
    if declared == 0 {
        return Err(WireError::new(ErrorCode::EmptyFile, "the file is empty"));
    }
    let share = u32::try_from(declared).map_err(|_| too_large(limit))?;
    let memory = tokio::time::timeout(
        UPLOAD_MEMORY_WAIT,
        state.upload_memory.clone().acquire_many_owned(share),
    )
    .await
    .map_err(|_| {
        tracing::warn!(bytes = declared, "upload memory taken: upload turned away");
        WireError::busy(
            "the server is receiving too many files at once; try again in a moment",
            std::time::Duration::from_secs(5),
        )
    })?
    .map_err(WireError::internal)?;
    let cut_off = || WireError::new(ErrorCode::BadBody, "the upload was cut off or malformed");
    let bytes = axum::body::to_bytes(body, share as usize)
        .await
        .map_err(|_| cut_off())?;
    if bytes.len() as u64 != declared {
        return Err(cut_off());
    }
    Ok(UploadBody {
        bytes,
        _memory: memory,
    })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Runs `work` on the blocking pool once one of the pod's decoding slots
/// is free (decoding is the costliest thing a request can ask of a pod).
pub(super) async fn decode_in_turn<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WireError> {
    Ok(state.image_decoders.run(work).await?)
}
