use serde::{Deserialize, Serialize};

use super::{Id, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// A named room that members join and leave.
    Group,
    /// The one private room of two users; its membership never changes.
    Direct,
}

/// A room and its membership.
///
/// Membership lives on the room (not in a join table) because every read of a
/// room needs it for authorization, and chat rooms are small enough for that;
/// MongoDB's 16 MB document limit still allows ~600k members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Room {
    pub id: Id,
    pub name: String,
    pub description: String,
    pub is_private: bool,
    pub kind: RoomKind,
    pub creator_id: Id,
    pub members: Vec<Id>,
    pub admins: Vec<Id>,
    /// For direct rooms: the two user ids in order, the key that makes the room unique.
    pub direct_key: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
}

impl Room {
    pub fn new_group(name: String, description: String, is_private: bool, creator: Id) -> Self {
        Self {
            id: Id::new(),
            name,
            description,
            is_private,
            kind: RoomKind::Group,
            creator_id: creator,
            members: vec![creator],
            admins: Vec::new(),
            direct_key: None,
            created_at: super::now(),
        }
    }

    /// The direct room of `a` and `b`, named after both users as they see it.
    pub fn new_direct(a: Id, b: Id, name: String) -> Self {
        Self {
            id: Id::new(),
            name,
            description: String::new(),
            is_private: true,
            kind: RoomKind::Direct,
            creator_id: a,
            members: if a == b { vec![a] } else { vec![a, b] },
            admins: Vec::new(),
            direct_key: Some(Self::direct_key(a, b)),
            created_at: super::now(),
        }
    }

    /// The same key whichever of the two users asks, so the store's uniqueness
    /// constraint on it makes a second direct room for the pair impossible.
    pub fn direct_key(a: Id, b: Id) -> String {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        format!("{low}:{high}")
    }

    pub fn is_member(&self, user: Id) -> bool {
        self.members.contains(&user)
    }

    pub fn is_owner(&self, user: Id) -> bool {
        self.kind == RoomKind::Group && self.creator_id == user
    }

    /// Whether `user` may see this room at all. Private rooms are invisible to
    /// non-members: every endpoint answers as if they did not exist.
    pub fn is_visible_to(&self, user: Id) -> bool {
        !self.is_private || self.is_member(user)
    }

    /// Owners and admins manage membership of group rooms.
    pub fn can_manage_members(&self, user: Id) -> bool {
        self.kind == RoomKind::Group && (self.is_owner(user) || self.admins.contains(&user))
    }
}

/// One page of the rooms a user can see, with the total for pagination.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPage {
    pub rooms: Vec<Room>,
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_key_is_the_same_whichever_user_asks() {
        let (a, b) = (Id::new(), Id::new());
        assert_eq!(Room::direct_key(a, b), Room::direct_key(b, a));
        assert_ne!(Room::direct_key(a, b), Room::direct_key(a, Id::new()));
    }

    #[test]
    fn private_rooms_are_visible_to_members_only() {
        let owner = Id::new();
        let stranger = Id::new();
        let public = Room::new_group("a".into(), String::new(), false, owner);
        let private = Room::new_group("b".into(), String::new(), true, owner);
        assert!(public.is_visible_to(stranger));
        assert!(private.is_visible_to(owner));
        assert!(!private.is_visible_to(stranger));
    }

    #[test]
    fn owners_and_admins_manage_members_but_nobody_manages_a_direct_room() {
        let owner = Id::new();
        let admin = Id::new();
        let member = Id::new();
        let mut room = Room::new_group("a".into(), String::new(), false, owner);
        room.members.extend([admin, member]);
        room.admins.push(admin);
        assert!(room.can_manage_members(owner));
        assert!(room.can_manage_members(admin));
        assert!(!room.can_manage_members(member));
        let direct = Room::new_direct(owner, member, "dm".into());
        assert!(!direct.can_manage_members(owner));
        assert!(!direct.is_owner(owner));
    }
}
