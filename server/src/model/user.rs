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
    /// The colour behind their initials, `#rrggbb` (absent: one derived from the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_color: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// When the user's last live connection, on any server, closed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_seen_at: Option<Timestamp>,
    /// Users this one blocked: they cannot start a direct message with
    /// them, write in their direct room, or add them to a room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<Id>,
}

/// The most users one user may block.
pub const MAX_BLOCKED: usize = 1000;

/// Who does something in a room: the author fields copied into each
/// message (and each system message about them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub id: Id,
    pub username: String,
}

impl From<&User> for Author {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            username: user.username.clone(),
        }
    }
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
    pub avatar_color: Option<Option<String>>,
    /// A new password's hash (a password change).
    pub password_hash: Option<String>,
    /// The whole new list of blocked users.
    pub blocked: Option<Vec<Id>>,
}

impl ProfileUpdate {
    pub fn apply(&self, user: &mut User) {
        if let Some(display_name) = &self.display_name {
            user.display_name.clone_from(display_name);
        }
        if let Some(avatar_url) = &self.avatar_url {
            user.avatar_url.clone_from(avatar_url);
        }
        if let Some(avatar_color) = &self.avatar_color {
            user.avatar_color.clone_from(avatar_color);
        }
        if let Some(password_hash) = &self.password_hash {
            user.password_hash.clone_from(password_hash);
        }
        if let Some(blocked) = &self.blocked {
            user.blocked.clone_from(blocked);
        }
    }
}

/// A refresh token as stored: only its SHA-256, so a leaked database does not leak
/// usable tokens.
///
/// Each use replaces the token with a new one of the same `family` (one
/// sign-in on one device) and keeps the used one, marked, until it expires:
/// a used token presented again means it was stolen (the thief or the owner
/// used it first), and the whole family is revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub hash: String,
    pub user_id: Id,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: Timestamp,
    /// Tokens stored before families existed each make a family of their own.
    #[serde(default = "Id::new")]
    pub family: Id,
    #[serde(default)]
    pub used: bool,
}

/// Which refresh tokens to revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// One sign-in: sign-out, or a reused token.
    Family(Id),
    /// Every sign-in of a user: sign-out everywhere, a password change.
    User(Id),
}
