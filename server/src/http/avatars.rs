//! `/api/users/me/avatar` (set, remove) and `/api/users/{id}/avatar` (read):
//! profile pictures. The server makes each one a small square from what was
//! uploaded, so it is the same size for everyone, strips whatever else the
//! file carried, and is never anything but a PNG or a JPEG.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::attachments::{decode_in_turn, file_headers, header_value, is_fresh, read_upload};
use super::caller::AuthUser;
use super::error::WireError;
use super::extract::{Path, parse_id};
use crate::attachment;
use crate::model::{Id, ProfileUpdate};
use crate::state::AppState;
use crate::wire::views::UserView;

/// Where a user's picture is read; the version changes with the picture,
/// so clients may cache each address for as long as they like.
fn avatar_url(user: Id, hash: &str) -> String {
    format!("/api/users/{user}/avatar?v={}", &hash[..12])
}

pub(crate) async fn put(
    State(state): State<AppState>,
    caller: AuthUser,
    body: Body,
) -> Result<axum::Json<UserView>, WireError> {
    state.chat.limits.message(caller.id)?;
    let content = read_upload(&state, body, state.limits.attachment_bytes).await?;
    let bytes = content.bytes.clone();
    let picture = decode_in_turn(&state, move || attachment::avatar(&bytes))
        .await?
        .ok_or_else(|| {
            WireError::validation(
                "avatar",
                "the picture must be a PNG, JPEG, GIF or WebP image",
            )
        })?;
    let hash = attachment::content_hash(&picture.bytes);
    state
        .store
        .save_avatar(caller.id, Some(picture.bytes.into()))
        .await?;
    set_url(&state, caller.id, Some(avatar_url(caller.id, &hash))).await
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<axum::Json<UserView>, WireError> {
    state.chat.limits.message(caller.id)?;
    // The profile stops naming the picture before the picture goes.
    let view = set_url(&state, caller.id, None).await?;
    state.store.save_avatar(caller.id, None).await?;
    Ok(view)
}

async fn set_url(
    state: &AppState,
    user: Id,
    url: Option<String>,
) -> Result<axum::Json<UserView>, WireError> {
    let update = ProfileUpdate {
        avatar_url: Some(url),
        ..ProfileUpdate::default()
    };
    let user = state
        .store
        .update_profile(user, &update)
        .await?
        .ok_or_else(|| WireError::not_found("user"))?;
    super::users::profile_changed(state, &user).await;
    Ok(axum::Json(UserView::own(user)))
}

/// Any signed-in user may see anyone's picture, as they may see their name.
pub(crate) async fn get(
    State(state): State<AppState>,
    _caller: AuthUser,
    Path(raw_id): Path<String>,
    request: HeaderMap,
) -> Result<Response, WireError> {
    let id = parse_id(&raw_id, "user")?;
    let image = state
        .store
        .avatar(id)
        .await?
        .ok_or_else(|| WireError::not_found("avatar"))?;
    let hash = attachment::content_hash(&image);
    let mut headers = file_headers(&hash)?;
    if is_fresh(&request, &hash) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    headers.insert(
        header::CONTENT_TYPE,
        header_value(attachment::sniff(&image).content_type)?,
    );
    Ok((headers, image).into_response())
}
