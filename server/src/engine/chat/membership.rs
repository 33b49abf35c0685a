//! Who is in a room, as the store says: membership learned once per room
//! (per user in a direct room) while the pod listens to it, and kept until an eviction
//! (see `engine::admission`); swept on every room open here; joins that post
//! a system message, and the announcements of REST membership changes.

use std::time::{Duration, Instant};

use super::{Chat, ChatError, Membership};
use crate::engine::admission::Ticket;
use crate::model::{Author, Id, Room, RoomKind};
use crate::store::StoreError;
use crate::sync::lock;

/// How often a pod re-reads the membership of every room open on it and
/// stops delivery to connections whose user is no longer a member (or whose
/// room is gone), eviction message or not: how long a removed member can
/// post and read at most when the eviction was lost.
pub const MEMBERSHIP_SWEEP: Duration = Duration::from_secs(5);
/// After a membership check found the store unreachable, how long posts
/// trust the subscription without asking it again (a check waits for the
/// driver's timeout, seconds, when the store is down).
const STORE_PROBE: Duration = Duration::from_secs(10);

impl Chat {
    /// Whether `user` may write in `room`: known on this pod since the store
    /// last said so (an eviction makes it forgotten), else asked now. The
    /// live subscription alone is not proof: it ends on other pods only when
    /// the eviction message arrives. A user found removed is evicted here
    /// and now. While the store is unreachable the subscription is trusted,
    /// so a database outage does not stop chat.
    pub(super) async fn confirm_member(&self, room: Id, user: Id) -> Result<(), ChatError> {
        if self.hub.admissions.is_admitted(room, user) {
            return Ok(());
        }
        // While the database is known to be down, do not wait for it on
        // every post: one post probes it per STORE_PROBE.
        if lock(&self.store_down_until).is_some_and(|until| Instant::now() < until) {
            return Ok(());
        }
        let ticket = self.hub.admissions.ticket(room);
        let member = match self.store.room(room).await {
            Ok(Some(current)) if current.is_member(user) => {
                if self.blocked_in(&current, user).await? {
                    return Err(ChatError::NotAllowed(
                        "the other member of this direct room blocked you",
                    ));
                }
                self.learn_members(ticket, &current);
                true
            }
            Ok(_) => false,
            // Chat goes on while the database is down (messages wait in the
            // persist stream); so does the live subscription's word for it.
            // No removal can be made meanwhile: it needs the database too.
            Err(StoreError::Unavailable(_)) => {
                *lock(&self.store_down_until) = Some(Instant::now() + STORE_PROBE);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if member {
            self.hub.admissions.admit(ticket, user);
            Ok(())
        } else {
            tracing::info!(room_id = %room, user_id = %user, "a removed member was still subscribed: evicted");
            self.hub.evict(room, Some(user));
            Err(ChatError::NotSubscribed)
        }
    }

    /// What a read of a group room tells: every member listed may write in
    /// it (and be mentioned) without another read. A direct room's other
    /// member is not learned: a block is checked per writer.
    fn learn_members(&self, ticket: Ticket, current: &Room) {
        if current.kind == RoomKind::Group {
            self.hub.admissions.admit_all(ticket, &current.members);
        }
    }

    /// Whether `room` is a direct room whose other member blocked `user`.
    async fn blocked_in(&self, room: &Room, user: Id) -> Result<bool, StoreError> {
        if room.kind != RoomKind::Direct {
            return Ok(false);
        }
        let Some(other) = room.members.iter().find(|m| **m != user).copied() else {
            return Ok(false);
        };
        Ok(self
            .store
            .user(other)
            .await?
            .is_some_and(|o| o.blocked.contains(&user)))
    }

    /// After a join or resume opened `room` (read as `current`, with
    /// `ticket` taken before the read): `user` may write in it from now on
    /// without the store being asked again, the read being trusted if the
    /// pod listened to the room then. Otherwise (the first connection to
    /// the room here, or a direct room, whose blocks that read did not
    /// check) the store is asked now, so the first post does not wait for it.
    pub(super) async fn opened_by_member(&self, ticket: Ticket, current: &Room, user: Id) {
        if current.kind == RoomKind::Group
            && self.hub.admissions.admit_all(ticket, &current.members)
        {
            return;
        }
        match self.confirm_member(current.id, user).await {
            // Refused: the user was evicted and told; their next post says why.
            Ok(()) | Err(ChatError::NotSubscribed | ChatError::NotAllowed(_)) => {}
            Err(e) => {
                tracing::debug!(room_id = %current.id, user_id = %user, error = %e, "membership not learned on open; the first post asks");
            }
        }
    }

    /// Forgets which rooms `user` may write in, so their next post asks the
    /// store again: someone blocked them, and their direct room must stop
    /// taking their messages now (see `confirm_member`). Other pods learn it
    /// from their sweep.
    pub fn reconfirm(&self, user: Id) {
        self.hub.admissions.forget_user(user);
    }

    /// Re-reads the membership of every room open on this pod and stops
    /// delivery to whoever is no longer in it, and, in a direct room, forgets
    /// that a member the other blocked may write: neither guarantee rests on
    /// a message reaching this pod. One store read per open room per
    /// [`MEMBERSHIP_SWEEP`] (two more for a direct room).
    pub async fn sweep_memberships(&self) {
        for room in self.hub.open_rooms() {
            if lock(&self.store_down_until).is_some_and(|until| Instant::now() < until) {
                return;
            }
            let current = match self.store.room(room).await {
                Ok(current) => current,
                Err(e) => {
                    self.sweep_failed(room, &e);
                    continue;
                }
            };
            self.hub
                .admissions
                .keep_only(room, current.as_ref().map_or(&[], |r| &r.members));
            for connection in self.hub.subscribers(room) {
                if !current
                    .as_ref()
                    .is_some_and(|r| r.is_member(connection.user))
                {
                    tracing::info!(room_id = %room, user_id = %connection.user, "membership sweep: evicted a non-member");
                    self.hub.evict(room, Some(connection.user));
                }
            }
            let Some(current) = current.filter(|r| r.kind == RoomKind::Direct) else {
                continue;
            };
            for member in current.members.iter().copied() {
                if !self.hub.admissions.is_admitted(room, member) {
                    continue;
                }
                match self.blocked_in(&current, member).await {
                    Ok(false) => {}
                    Ok(true) => self.hub.admissions.forget(room, Some(member)),
                    Err(e) => self.sweep_failed(room, &e),
                }
            }
        }
    }

    fn sweep_failed(&self, room: Id, error: &StoreError) {
        tracing::warn!(room_id = %room, error = %error, "membership sweep: cannot read the room");
        if matches!(error, StoreError::Unavailable(_)) {
            *lock(&self.store_down_until) = Some(Instant::now() + STORE_PROBE);
        }
    }

    /// The room if `user` may see it.
    pub async fn visible_room(&self, room: Id, user: Id) -> Result<Room, ChatError> {
        self.store
            .room(room)
            .await?
            .filter(|r| r.is_visible_to(user))
            .ok_or(ChatError::NoSuchRoom)
    }

    /// Makes `author` a member of a room they can see (public rooms are open),
    /// announcing the join with a system message. Already a member: no change.
    pub async fn ensure_member(&self, room: Id, author: &Author) -> Result<Room, ChatError> {
        let room = self.visible_room(room, author.id).await?;
        if room.is_member(author.id) {
            return Ok(room);
        }
        // Joining posts a system message: it spends the message budget,
        // however the join came (REST, a `join` frame, `/ws?room_id=`).
        self.limits.message(author.id)?;
        let room = self
            .store
            .add_member(room.id, author.id)
            .await?
            .ok_or(ChatError::NoSuchRoom)?;
        self.post_system(
            room.id,
            author,
            format!("{} joined the room", author.username),
        )
        .await?;
        Ok(room)
    }

    /// Announces a membership change made over REST, and stops live delivery to
    /// someone who is no longer a member, on every pod.
    pub async fn membership_changed(
        &self,
        room: Id,
        who: &Author,
        change: Membership<'_>,
    ) -> Result<(), ChatError> {
        let content = match change {
            Membership::Added { by } => format!("{} was added by {by}", who.username),
            Membership::Left => format!("{} left the room", who.username),
            Membership::Removed { by } => format!("{} was removed by {by}", who.username),
        };
        if !matches!(change, Membership::Added { .. }) {
            self.bus.evict(room, Some(who.id)).await;
        }
        self.post_system(room, who, content).await?;
        Ok(())
    }
}
