//! `/api/rooms/*` and `/api/dm/*`: rooms, membership and direct messages.
//!
//! Who may do what is decided by `Room`'s pure methods; handlers load, check,
//! and write. A private room a caller does not belong to answers 404 on every
//! endpoint, so its existence is not revealed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::caller::AuthUser;
use super::error::WireError;
use super::extract::{Json, Path, Query, parse_id};
use crate::bus::Audience;
use crate::engine::chat::Membership;
use crate::model::Author;
use crate::model::{Id, Page, Room, RoomKind};
use crate::state::AppState;
use crate::validate;
use crate::wire::errors::ErrorCode;
use crate::wire::frames::ServerFrame;
use crate::wire::views::{RoomView, RoomsPage};

pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub is_private: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// Checks a requested page size: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
pub fn page_limit(limit: Option<u64>) -> Result<u64, WireError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(WireError::validation(
            "limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        )),
    }
}

/// The room if `caller` may see it; 404 otherwise, whether or not it exists.
pub async fn visible_room(state: &AppState, raw_id: &str, caller: Id) -> Result<Room, WireError> {
    let id = parse_id(raw_id, "room")?;
    state
        .store
        .room(id)
        .await?
        .filter(|room| room.is_visible_to(caller))
        .ok_or_else(|| WireError::not_found("room"))
}

fn gone() -> WireError {
    WireError::not_found("room")
}

/// `room` is now in `audience`'s room lists (their other tabs and devices included).
async fn list_added(state: &AppState, audience: Audience, room: &RoomView) {
    let frame = ServerFrame::RoomAdded { room: room.clone() };
    state.chat.notify(audience, &frame).await;
}

/// `room` is no longer in `audience`'s room lists. A public room stays in
/// everyone's list while it exists, so only its deletion removes it.
async fn list_removed(state: &AppState, audience: Audience, room: Id) {
    let frame = ServerFrame::RoomRemoved { room_id: room };
    state.chat.notify(audience, &frame).await;
}

pub async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    Json(request): Json<CreateRoomRequest>,
) -> Result<impl IntoResponse, WireError> {
    state.chat.limits.message(caller.id)?;
    let name = validate::text("name", &request.name, 1, 100)?;
    let description = validate::text("description", &request.description, 0, 1000)?;
    let room = Room::new_group(name, description, request.is_private, caller.id);
    state.store.create_room(&room).await?;
    tracing::info!(room_id = %room.id, user_id = %caller.id, private = room.is_private, "room created");
    let audience = if room.is_private {
        Audience::Users(vec![caller.id])
    } else {
        Audience::Everyone
    };
    let view = RoomView::from(room);
    list_added(&state, audience, &view).await;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomRequest {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// Renames a room or changes its description: its owner's or an admin's
/// right; everyone who has it in their list sees the change live.
pub async fn update(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Json(request): Json<UpdateRoomRequest>,
) -> Result<axum::Json<RoomView>, WireError> {
    state.chat.limits.message(caller.id)?;
    let room = visible_room(&state, &id, caller.id).await?;
    if room.kind == RoomKind::Direct {
        return Err(WireError::new(
            ErrorCode::DirectRoom,
            "a direct room is named for its two people and cannot be renamed",
        ));
    }
    if !room.can_manage_members(caller.id) {
        return Err(WireError::forbidden(
            "only the room's owner or an admin can rename it",
        ));
    }
    let name = match &request.name {
        Some(name) => validate::text("name", name, 1, 100)?,
        None => room.name.clone(),
    };
    let description = match &request.description {
        Some(description) => validate::text("description", description, 0, 1000)?,
        None => room.description.clone(),
    };
    let room = state
        .store
        .rename_room(room.id, name, description)
        .await?
        .ok_or_else(gone)?;
    tracing::info!(room_id = %room.id, user_id = %caller.id, "room renamed");
    let audience = if room.is_private {
        Audience::Users(room.members.clone())
    } else {
        Audience::Everyone
    };
    let view = RoomView::from(room);
    let frame = ServerFrame::RoomUpdated { room: view.clone() };
    state.chat.notify(audience, &frame).await;
    Ok(axum::Json(view))
}

pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<RoomsPage>, WireError> {
    let page = Page {
        offset: super::extract::clamp(query.offset.unwrap_or(0)),
        limit: page_limit(query.limit)?,
    };
    let found = state.store.rooms_visible_to(caller.id, page).await?;
    Ok(axum::Json(RoomsPage {
        rooms: found.rooms.into_iter().map(RoomView::from).collect(),
        total: found.total,
        offset: page.offset,
        limit: page.limit,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<axum::Json<RoomView>, WireError> {
    Ok(axum::Json(
        visible_room(&state, &id, caller.id).await?.into(),
    ))
}

/// Joins a public room. Private rooms are joined by invitation only, and look
/// absent to outsiders. Joining a room one is in already changes nothing.
pub async fn join(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<axum::Json<RoomView>, WireError> {
    // Only an actual join spends the message budget (`Chat::ensure_member`).
    let room = state
        .chat
        .ensure_member(parse_id(&id, "room")?, &caller.author())
        .await?;
    Ok(axum::Json(room.into()))
}

pub async fn leave(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, WireError> {
    state.chat.limits.message(caller.id)?;
    let room = visible_room(&state, &id, caller.id).await?;
    if room.kind == RoomKind::Direct {
        return Err(WireError::new(
            ErrorCode::DirectRoom,
            "a direct room cannot be left",
        ));
    }
    if room.is_owner(caller.id) {
        return Err(WireError::new(
            ErrorCode::OwnerCannotLeave,
            "the owner cannot leave the room; delete it instead",
        ));
    }
    if room.is_member(caller.id) {
        state.store.remove_member(room.id, caller.id).await?;
        state
            .chat
            .membership_changed(room.id, &caller.author(), Membership::Left)
            .await?;
        tracing::info!(room_id = %room.id, user_id = %caller.id, "member left");
        if room.is_private {
            list_removed(&state, Audience::Users(vec![caller.id]), room.id).await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Loads a room the caller manages, and the target user's id from the path.
async fn managed_room(
    state: &AppState,
    caller: &AuthUser,
    room_id: &str,
    user_id: &str,
) -> Result<(Room, Id), WireError> {
    let room = visible_room(state, room_id, caller.id).await?;
    if room.kind == RoomKind::Direct {
        return Err(WireError::new(
            ErrorCode::DirectRoom,
            "the members of a direct room cannot change",
        ));
    }
    if !room.can_manage_members(caller.id) {
        return Err(WireError::forbidden(
            "only the room's owner or an admin can manage its members",
        ));
    }
    let user = parse_id(user_id, "user")?;
    Ok((room, user))
}

pub async fn add_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((room_id, user_id)): Path<(String, String)>,
) -> Result<axum::Json<RoomView>, WireError> {
    state.chat.limits.message(caller.id)?;
    let (room, user) = managed_room(&state, &caller, &room_id, &user_id).await?;
    let added = super::users::existing(&state, user).await?;
    if added.blocked.contains(&caller.id) {
        return Err(blocked_by(&added.username));
    }
    let added = Author::from(&added);
    if room.is_member(user) {
        return Ok(axum::Json(room.into()));
    }
    let room = state
        .store
        .add_member(room.id, user)
        .await?
        .ok_or_else(gone)?;
    let by = Membership::Added {
        by: &caller.username,
    };
    state.chat.membership_changed(room.id, &added, by).await?;
    tracing::info!(room_id = %room.id, user_id = %user, by = %caller.id, "member added");
    let view = RoomView::from(room);
    list_added(&state, Audience::Users(vec![user]), &view).await;
    Ok(axum::Json(view))
}

pub async fn remove_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((room_id, user_id)): Path<(String, String)>,
) -> Result<axum::Json<RoomView>, WireError> {
    state.chat.limits.message(caller.id)?;
    let (room, user) = managed_room(&state, &caller, &room_id, &user_id).await?;
    if room.is_owner(user) {
        return Err(WireError::new(
            ErrorCode::OwnerCannotLeave,
            "the owner cannot be removed from the room",
        ));
    }
    if room.admins.contains(&user) && !room.is_owner(caller.id) {
        return Err(WireError::forbidden("only the owner can remove an admin"));
    }
    if !room.is_member(user) {
        return Err(WireError::not_found("member"));
    }
    let removed = member_author(&state, user).await?;
    let room = state
        .store
        .remove_member(room.id, user)
        .await?
        .ok_or_else(gone)?;
    let by = Membership::Removed {
        by: &caller.username,
    };
    state.chat.membership_changed(room.id, &removed, by).await?;
    tracing::info!(room_id = %room.id, user_id = %user, by = %caller.id, "member removed");
    if room.is_private {
        list_removed(&state, Audience::Users(vec![user]), room.id).await;
    }
    Ok(axum::Json(room.into()))
}

async fn member_author(state: &AppState, user: Id) -> Result<Author, WireError> {
    Ok(Author::from(&super::users::existing(state, user).await?))
}

/// Grants (PUT) or revokes (DELETE) the admin role; the owner's privilege.
async fn set_admin(
    state: AppState,
    caller: AuthUser,
    room_id: String,
    user_id: String,
    admin: bool,
) -> Result<axum::Json<RoomView>, WireError> {
    let room = visible_room(&state, &room_id, caller.id).await?;
    if !room.is_owner(caller.id) {
        return Err(WireError::forbidden(
            "only the room's owner can change its admins",
        ));
    }
    let user = parse_id(&user_id, "user")?;
    if !room.is_member(user) {
        return Err(WireError::not_found("member"));
    }
    let room = state
        .store
        .set_admin(room.id, user, admin)
        .await?
        .ok_or_else(gone)?;
    Ok(axum::Json(room.into()))
}

pub async fn add_admin(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((room_id, user_id)): Path<(String, String)>,
) -> Result<axum::Json<RoomView>, WireError> {
    state.chat.limits.message(caller.id)?;
    set_admin(state, caller, room_id, user_id, true).await
}

pub async fn remove_admin(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((room_id, user_id)): Path<(String, String)>,
) -> Result<axum::Json<RoomView>, WireError> {
    state.chat.limits.message(caller.id)?;
    set_admin(state, caller, room_id, user_id, false).await
}

pub async fn delete(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, WireError> {
    state.chat.limits.message(caller.id)?;
    let room = visible_room(&state, &id, caller.id).await?;
    if !room.is_owner(caller.id) {
        return Err(WireError::forbidden("only the room's owner can delete it"));
    }
    if !state.store.delete_room(room.id).await? {
        return Err(gone());
    }
    state.chat.room_deleted(room.id).await;
    tracing::info!(room_id = %room.id, user_id = %caller.id, "room deleted");
    let audience = if room.is_private {
        Audience::Users(room.members.clone())
    } else {
        Audience::Everyone
    };
    list_removed(&state, audience, room.id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The one private room of the caller and `user_id`: 201 when this call created
/// it, 200 when it existed. Concurrent calls agree on one room (the store's
/// unique direct key decides).
pub async fn direct(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(user_id): Path<String>,
) -> Result<impl IntoResponse, WireError> {
    state.chat.limits.message(caller.id)?;
    let other_id = parse_id(&user_id, "user")?;
    if other_id == caller.id {
        return Err(WireError::validation(
            "user_id",
            "a direct room needs another user",
        ));
    }
    let other = super::users::existing(&state, other_id).await?;
    if other.blocked.contains(&caller.id) {
        return Err(blocked_by(&other.username));
    }
    let name = {
        let mut names = [caller.username.as_str(), other.username.as_str()];
        names.sort_unstable();
        names.join(", ")
    };
    let candidate = Room::new_direct(caller.id, other.id, name);
    let room = state.store.direct_room(&candidate).await?;
    let view = RoomView::from(room);
    if view.id != candidate.id {
        return Ok((StatusCode::OK, axum::Json(view)));
    }
    list_added(&state, Audience::Users(vec![caller.id, other.id]), &view).await;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// The answer when `whom` blocked the caller.
fn blocked_by(whom: &str) -> WireError {
    WireError::new(
        ErrorCode::Blocked,
        format!("{whom} does not accept this from you"),
    )
}
