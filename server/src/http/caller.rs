//! The authenticated caller of a REST request, from `Authorization: Bearer <jwt>`.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::WireError;
use crate::model::Id;
use crate::state::AppState;
use crate::wire::errors::ErrorCode;

#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Id,
    pub username: String,
}

impl AuthUser {
    pub fn author(&self) -> crate::model::Author {
        crate::model::Author {
            id: self.id,
            username: self.username.clone(),
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = WireError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WireError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            WireError::new(
                ErrorCode::MissingToken,
                "sign in: send Authorization: Bearer <token>",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::InvalidToken,
                    "the Authorization header must be Bearer <token>",
                )
            })?;
        let claims = state.tokens.verify(token)?;
        Ok(Self {
            id: claims.sub,
            username: claims.username,
        })
    }
}
