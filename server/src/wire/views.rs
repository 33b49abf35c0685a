//! What the API returns: the domain types minus secrets, ids as hex strings and
//! times as RFC 3339.

use serde::Serialize;

use crate::model::{Id, Room, RoomKind, Timestamp, User};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserView {
    pub id: Id,
    pub username: String,
    /// Only in the caller's own profile: other users' addresses are private.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub avatar_color: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// Whether the user has a live connection; in single-user lookups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// When their last live connection closed (absent: never seen online).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
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

#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// A page of a list, in the shape every paginated endpoint uses.
#[derive(Debug, Serialize)]
pub struct PageView<T: Serialize> {
    #[serde(flatten)]
    pub items: T,
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
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

    #[test]
    fn pages_flatten_their_items() {
        #[derive(Serialize)]
        struct Rooms {
            rooms: Vec<u8>,
        }
        let json = serde_json::to_value(PageView {
            items: Rooms { rooms: vec![1] },
            total: 9,
            offset: 2,
            limit: 1,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"rooms": [1], "total": 9, "offset": 2, "limit": 1})
        );
    }
}
