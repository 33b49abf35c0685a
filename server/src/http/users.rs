//! `/api/users/*`: profiles.

use axum::extract::State;
use serde::Deserialize;

use super::caller::AuthUser;
use super::error::WireError;
use super::extract::{Json, Path, Query, parse_id, present};
use crate::model::ProfileUpdate;
use crate::state::AppState;
use crate::validate;
use crate::wire::errors::ErrorCode;
use crate::wire::views::UserView;

/// A field left out is unchanged; `null` clears it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    #[serde(default, deserialize_with = "present")]
    pub display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub avatar_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub avatar_color: Option<Option<String>>,
}

pub async fn me(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<axum::Json<UserView>, WireError> {
    let user = existing(&state, caller.id).await?;
    Ok(axum::Json(UserView::own(user)))
}

pub async fn update_me(
    State(state): State<AppState>,
    caller: AuthUser,
    Json(request): Json<ProfileRequest>,
) -> Result<axum::Json<UserView>, WireError> {
    // Each change reaches everyone who shares a room with the caller: it
    // spends the same budget as other changes.
    state.chat.limits.message(caller.id)?;
    let update = ProfileUpdate {
        display_name: request
            .display_name
            .map(|name| {
                name.map(|n| validate::text("display_name", &n, 1, 64))
                    .transpose()
            })
            .transpose()?,
        avatar_url: request
            .avatar_url
            .map(|url| url.map(|u| validate::avatar_url(&u)).transpose())
            .transpose()?,
        avatar_color: request
            .avatar_color
            .map(|color| color.map(|c| validate::color(&c)).transpose())
            .transpose()?,
        password_hash: None,
        blocked: None,
    };
    let user = state
        .store
        .update_profile(caller.id, &update)
        .await?
        .ok_or_else(|| WireError::not_found("user"))?;
    profile_changed(&state, &user).await;
    Ok(axum::Json(UserView::own(user)))
}

/// Tells everyone who shares a room with `user` (and `user`'s other
/// sessions), on every pod, how `user` now looks; nobody else is told (a
/// stranger sees the new profile when they next look it up).
pub async fn profile_changed(state: &AppState, user: &crate::model::User) {
    let audience = match state.store.room_mates(user.id).await {
        Ok(mates) => crate::bus::Audience::Users(mates),
        Err(e) => {
            // The change is stored; only its live announcement is lost.
            tracing::warn!(error = %e, user = %user.id, "cannot find whom a profile change concerns");
            return;
        }
    };
    let frame = crate::wire::frames::ServerFrame::UserUpdated {
        user: UserView::public(user.clone()),
    };
    state.chat.notify(audience, &frame).await;
}

/// My live WebSocket connections, on every pod.
pub async fn sessions(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<axum::Json<serde_json::Value>, WireError> {
    let sessions = state.chat.sessions_of(caller.id).await?;
    Ok(axum::Json(serde_json::json!({ "sessions": sessions })))
}

pub async fn get(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<axum::Json<UserView>, WireError> {
    let id = parse_id(&id, "user")?;
    let user = existing(&state, id).await?;
    Ok(axum::Json(with_presence(&state, caller.id, user).await))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    username: String,
}

/// `GET /api/users?username=bob`: finds a user by exact username (any case),
/// so a client can start a direct message or invite someone by name.
pub async fn find(
    State(state): State<AppState>,
    caller: AuthUser,
    Query(lookup): Query<Lookup>,
) -> Result<axum::Json<UserView>, WireError> {
    let username = validate::username(&lookup.username)?;
    let user = state
        .store
        .user_by_username(&username)
        .await?
        .ok_or_else(|| WireError::not_found("user"))?;
    Ok(axum::Json(with_presence(&state, caller.id, user).await))
}

/// `user`'s public profile, with whether they are online and when they were
/// last seen if `caller` shares a room (or a direct room) with them: anyone
/// else could otherwise watch when a stranger comes and goes.
async fn with_presence(
    state: &AppState,
    caller: crate::model::Id,
    user: crate::model::User,
) -> UserView {
    let mates = match state.store.room_mates(user.id).await {
        Ok(mates) => mates.contains(&caller),
        Err(e) => {
            tracing::warn!(error = %e, user_id = %user.id, "cannot tell whether a user shares a room with the caller");
            false
        }
    };
    if !mates {
        return UserView::public(user);
    }
    let last_seen_at = user.last_seen_at;
    // Presence is a nicety here: if it cannot be read, say nothing rather than fail.
    let online = state
        .chat
        .sessions_of(user.id)
        .await
        .map(|sessions| !sessions.is_empty())
        .ok();
    UserView {
        online,
        last_seen_at,
        ..UserView::public(user)
    }
}

/// `GET /api/users/me/blocks`: the users I blocked.
pub async fn blocks(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<axum::Json<serde_json::Value>, WireError> {
    let me = existing(&state, caller.id).await?;
    Ok(axum::Json(serde_json::json!({ "users": me.blocked })))
}

/// `PUT /api/users/me/blocks/{user_id}`: blocks a user, who can then no
/// longer start a direct message with me, write in our direct room, or add
/// me to a room. They are not told.
pub async fn block(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(user_id): Path<String>,
) -> Result<axum::http::StatusCode, WireError> {
    set_blocked(&state, &caller, &user_id, true).await
}

/// `DELETE /api/users/me/blocks/{user_id}`: unblocks a user.
pub async fn unblock(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(user_id): Path<String>,
) -> Result<axum::http::StatusCode, WireError> {
    set_blocked(&state, &caller, &user_id, false).await
}

async fn set_blocked(
    state: &AppState,
    caller: &AuthUser,
    user_id: &str,
    blocked: bool,
) -> Result<axum::http::StatusCode, WireError> {
    state.chat.limits.message(caller.id)?;
    let other = parse_id(user_id, "user")?;
    if other == caller.id {
        return Err(WireError::validation(
            "user_id",
            "you cannot block yourself",
        ));
    }
    if state.store.user(other).await?.is_none() {
        return Err(WireError::not_found("user"));
    }
    let me = existing(state, caller.id).await?;
    let mut list = me.blocked;
    if list.contains(&other) == blocked {
        return Ok(axum::http::StatusCode::NO_CONTENT);
    }
    if blocked {
        if list.len() >= crate::model::MAX_BLOCKED {
            return Err(WireError::new(
                ErrorCode::TooManyBlocks,
                format!("you can block at most {} users", crate::model::MAX_BLOCKED),
            ));
        }
        list.push(other);
    } else {
        list.retain(|id| *id != other);
    }
    let update = ProfileUpdate {
        blocked: Some(list),
        ..ProfileUpdate::default()
    };
    state.store.update_profile(caller.id, &update).await?;
    if blocked {
        // Our direct room, if there is one, stops taking their messages now
        // on this pod; other pods see it when they next confirm membership.
        state.chat.reconfirm(other);
    }
    tracing::info!(user_id = %caller.id, other = %other, blocked, "block list changed");
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The user `id`, or 404 `not_found` naming a user.
pub async fn existing(
    state: &AppState,
    id: crate::model::Id,
) -> Result<crate::model::User, WireError> {
    state
        .store
        .user(id)
        .await?
        .ok_or_else(|| WireError::not_found("user"))
}
