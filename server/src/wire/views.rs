//! What the API returns: the domain types minus secrets, ids as hex strings and
//! times as RFC 3339.

use serde::Serialize;

use ts_rs::TS;

use crate::model::{Id, Message, Room, RoomKind, Timestamp, User};
use crate::search::Snippet;

#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct UserView {
    pub id: Id,
    pub username: String,
    /// Only in the caller's own profile: other users' addresses are private.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub avatar_color: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[ts(type = "string")]
    pub created_at: Timestamp,
    /// Whether the user has a live connection; in single-user lookups.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub online: Option<bool>,
    /// When their last live connection closed (absent: never seen online).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[ts(type = "string", optional)]
    pub last_seen_at: Option<Timestamp>,
}

impl UserView {
    pub fn own(user: User) -> Self {
        Self {
            email: Some(user.email.clone()),
            last_seen_at: user.last_seen_at,
            ..Self::public(user)
        }
    }

    /// What anyone may read of a user: no e-mail, and no presence (only
    /// people who share a room with them see that, by `with_presence`).
    pub fn public(user: User) -> Self {
        Self {
            id: user.id,
            username: user.username,
            email: None,
            display_name: user.display_name,
            avatar_url: user.avatar_url,
            avatar_color: user.avatar_color,
            created_at: user.created_at,
            online: None,
            last_seen_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct RoomView {
    pub id: Id,
    pub name: String,
    pub description: String,
    pub is_private: bool,
    pub is_direct: bool,
    pub creator_id: Id,
    pub members: Vec<Id>,
    pub admins: Vec<Id>,
    #[serde(with = "time::serde::rfc3339")]
    #[ts(type = "string")]
    pub created_at: Timestamp,
}

impl From<Room> for RoomView {
    fn from(room: Room) -> Self {
        Self {
            id: room.id,
            name: room.name,
            description: room.description,
            is_private: room.is_private,
            is_direct: room.kind == RoomKind::Direct,
            creator_id: room.creator_id,
            members: room.members,
            admins: room.admins,
            created_at: room.created_at,
        }
    }
}

/// A page of the room list (`GET /api/rooms`).
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct RoomsPage {
    pub rooms: Vec<RoomView>,
    /// Rooms the caller can see in all.
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
}

/// A page of a room's history or of a thread (`GET /api/rooms/{id}/messages`),
/// oldest first, each message as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct HistoryView {
    pub messages: Vec<Message>,
    /// Messages in the room (or replies in the thread).
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
}

/// A signed-in session: a short-lived access token and the refresh token that
/// renews it.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct SessionView {
    pub token: String,
    #[ts(type = "\"Bearer\"")]
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: UserView,
}

/// One result of `GET /api/search`.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct SearchHit {
    /// As it is now (edits applied).
    pub message: Message,
    pub room_name: String,
    pub snippet: Snippet,
    pub score: f64,
}

/// What `GET /api/search` answers: the terms it looked for, best results first.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct SearchView {
    pub terms: Vec<String>,
    pub results: Vec<SearchHit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_views_never_contain_the_password_hash() {
        let user = User {
            id: Id::new(),
            username: "alice".into(),
            email: "alice@example.com".into(),
            password_hash: "$argon2id$secret".into(),
            display_name: Some("Alice".into()),
            avatar_url: None,
            avatar_color: None,
            created_at: crate::model::now(),
            last_seen_at: None,
            blocked: vec![Id::new()],
        };
        let own = serde_json::to_value(UserView::own(user.clone())).unwrap();
        let public = serde_json::to_value(UserView::public(user)).unwrap();
        assert!(!own.to_string().contains("argon2") && !public.to_string().contains("argon2"));
        assert!(
            own.get("blocked").is_none() && public.get("blocked").is_none(),
            "{own}"
        );
        assert_eq!(own["email"], "alice@example.com");
        assert!(public.get("email").is_none());
        assert_eq!(public["display_name"], "Alice");
    }

    #[test]
    fn room_views_carry_creator_and_members() {
        let owner = Id::new();
        let room = Room::new_group("General".into(), String::new(), false, owner);
        let json = serde_json::to_value(RoomView::from(room)).unwrap();
        assert_eq!(json["creator_id"], owner.to_string());
        assert_eq!(json["members"], serde_json::json!([owner.to_string()]));
        assert_eq!(json["is_direct"], false);
    }
}
