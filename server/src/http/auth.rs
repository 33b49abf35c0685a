//! `/api/auth/*`: register, login, refresh, logout.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::caller::AuthUser;
use super::client_address::ClientAddress;
use super::error::WireError;
use super::extract::Json;
use crate::auth::{password, refresh};
use crate::model::{Id, ProfileUpdate, RefreshToken, Revoke, User};
use crate::state::AppState;
use crate::validate;
use crate::wire::errors::ErrorCode;
use crate::wire::views::{SessionView, UserView};

#[derive(Debug, Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

pub async fn register(
    State(state): State<AppState>,
    client: ClientAddress,
    Json(request): Json<RegisterRequest>,
) -> Result<impl IntoResponse, WireError> {
    let username = validate::username(&request.username)?;
    let email = validate::email(&request.email)?;
    validate::password(&request.password)?;
    state
        .login_limits
        .check_registration(client.bucket())
        .map_err(|wait| {
            WireError::rate_limited("too many accounts created from your address; wait", wait)
        })?;
    let password_hash = state
        .hashes
        .run(move || password::hash(&request.password))
        .await?
        .map_err(WireError::internal)?;
    let user = User {
        id: Id::new(),
        username,
        email,
        password_hash,
        display_name: None,
        avatar_url: None,
        avatar_color: None,
        created_at: crate::model::now(),
        last_seen_at: None,
        blocked: Vec::new(),
    };
    state.store.create_user(&user).await?;
    tracing::info!(user_id = %user.id, username = %user.username, "user registered");
    Ok((StatusCode::CREATED, axum::Json(UserView::own(user))))
}

pub async fn login(
    State(state): State<AppState>,
    client: ClientAddress,
    Json(request): Json<LoginRequest>,
) -> Result<axum::Json<SessionView>, WireError> {
    let account = request.email.trim().to_lowercase();
    state
        .login_limits
        .check(&account, client.bucket())
        .map_err(|wait| {
            WireError::rate_limited("too many sign-in attempts; wait and try again", wait)
        })?;
    let invalid = || {
        WireError::new(
            ErrorCode::InvalidCredentials,
            "the email or password is wrong",
        )
    };
    // A malformed address cannot have an account; answer exactly as for a wrong one.
    let user = match validate::email(&request.email) {
        Ok(email) => state.store.user_by_email(&email).await?,
        Err(_) => None,
    };
    let candidate = request.password;
    let user = state
        .hashes
        .run(move || match user {
            Some(user) if password::verify(&candidate, &user.password_hash) => Some(user),
            Some(_) => None,
            None => {
                password::verify_against_nothing(&candidate);
                None
            }
        })
        .await?
        .ok_or_else(invalid)?;
    state.login_limits.signed_in(&account, client.bucket());
    tracing::info!(user_id = %user.id, "user signed in");
    Ok(axum::Json(start_session(&state, user, None).await?))
}

/// Exchanges a refresh token for a new access token and a new refresh token of
/// the same sign-in; the old refresh token is used up. A used one presented
/// again was copied: the whole sign-in is revoked, thief and owner alike
/// sign in again.
pub async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<axum::Json<SessionView>, WireError> {
    let invalid = || {
        WireError::new(
            ErrorCode::InvalidRefreshToken,
            "the refresh token is invalid or expired; sign in again",
        )
    };
    let stored = state
        .store
        .use_refresh_token(&refresh::digest(&request.refresh_token))
        .await?
        .ok_or_else(invalid)?;
    if stored.used {
        let revoked = state
            .store
            .revoke_refresh_tokens(Revoke::Family(stored.family))
            .await?;
        tracing::warn!(user_id = %stored.user_id, revoked, "a used refresh token was presented again: its sign-in is revoked");
        return Err(invalid());
    }
    if stored.expires_at <= crate::model::now() {
        return Err(invalid());
    }
    let user = state
        .store
        .user(stored.user_id)
        .await?
        .ok_or_else(invalid)?;
    Ok(axum::Json(
        start_session(&state, user, Some(stored.family)).await?,
    ))
}

/// Revokes the refresh token's sign-in. Idempotent: an unknown token is
/// already revoked.
pub async fn logout(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<StatusCode, WireError> {
    if let Some(token) = state
        .store
        .use_refresh_token(&refresh::digest(&request.refresh_token))
        .await?
    {
        state
            .store
            .revoke_refresh_tokens(Revoke::Family(token.family))
            .await?;
        tracing::info!(user_id = %token.user_id, "user signed out");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every refresh token of the caller: every device must sign in again
/// once its access token expires (within `CHAT_JWT_TTL_SECS`).
pub async fn logout_all(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<StatusCode, WireError> {
    let revoked = state
        .store
        .revoke_refresh_tokens(Revoke::User(caller.id))
        .await?;
    tracing::info!(user_id = %caller.id, revoked, "user signed out everywhere");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Changes the caller's password, revokes every sign-in, and answers with a
/// new session for this device.
pub async fn change_password(
    State(state): State<AppState>,
    caller: AuthUser,
    client: ClientAddress,
    Json(request): Json<PasswordChange>,
) -> Result<axum::Json<SessionView>, WireError> {
    validate::password(&request.new_password).map_err(|e| e.for_field("new_password"))?;
    let user = super::users::existing(&state, caller.id).await?;
    // Guessing the current password here is a sign-in attempt like any other.
    state
        .login_limits
        .check(&user.email, client.bucket())
        .map_err(|wait| {
            WireError::rate_limited("too many password attempts; wait and try again", wait)
        })?;
    let stored_hash = user.password_hash.clone();
    let (current, new) = (request.current_password, request.new_password);
    let new_hash = state
        .hashes
        .run(move || {
            password::verify(&current, &stored_hash)
                .then(|| password::hash(&new))
                .transpose()
        })
        .await?
        .map_err(WireError::internal)?
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::InvalidCredentials,
                "the current password is wrong",
            )
        })?;
    let update = ProfileUpdate {
        password_hash: Some(new_hash),
        ..ProfileUpdate::default()
    };
    let user = state
        .store
        .update_profile(caller.id, &update)
        .await?
        .ok_or_else(|| WireError::not_found("user"))?;
    let revoked = state
        .store
        .revoke_refresh_tokens(Revoke::User(caller.id))
        .await?;
    tracing::info!(user_id = %caller.id, revoked, "password changed: every sign-in revoked");
    Ok(axum::Json(start_session(&state, user, None).await?))
}

/// Issues an access token and a refresh token: of a new sign-in, or of
/// `family` when refreshing.
async fn start_session(
    state: &AppState,
    user: User,
    family: Option<Id>,
) -> Result<SessionView, WireError> {
    let access = state.tokens.issue(&user).map_err(WireError::internal)?;
    let (refresh_token, hash) = refresh::generate();
    state
        .store
        .save_refresh_token(&RefreshToken {
            hash,
            user_id: user.id,
            expires_at: crate::model::now() + refresh::TTL,
            family: family.unwrap_or_default(),
            used: false,
        })
        .await?;
    Ok(SessionView {
        token: access.token,
        token_type: "Bearer",
        expires_in: access.expires_in,
        refresh_token,
        user: UserView::own(user),
    })
}
