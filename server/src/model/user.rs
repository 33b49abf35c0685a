use serde::{Deserialize, Serialize};

use super::{Id, Timestamp};

/// An account. `password_hash` is an argon2id PHC string; this type is never
/// serialized to clients (see `http::users::UserView`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Id,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
}

impl User {
    /// Usernames are unique regardless of case: `Alice` and `alice` are one name.
    pub fn username_key(username: &str) -> String {
        username.to_lowercase()
    }
}

/// A change to a profile; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileUpdate {
    pub display_name: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
}

impl ProfileUpdate {
    pub fn apply(&self, user: &mut User) {
        if let Some(display_name) = &self.display_name {
            user.display_name.clone_from(display_name);
        }
        if let Some(avatar_url) = &self.avatar_url {
            user.avatar_url.clone_from(avatar_url);
        }
    }
}

/// A refresh token as stored: only its SHA-256, so a leaked database does not leak
/// usable tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub hash: String,
    pub user_id: Id,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: Timestamp,
}
