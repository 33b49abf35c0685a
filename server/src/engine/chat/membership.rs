//! Who is in a room, as the store says: membership confirmed before posting
//! (and kept a few seconds), swept on every room open here, joins that post
//! a system message, and the announcements of REST membership changes.

use std::time::{Duration, Instant};

use super::{Chat, ChatError, Membership};
use crate::model::{Author, Id, Room, RoomKind};
use crate::store::StoreError;
use crate::sync::lock;

/// How long a membership the store confirmed is trusted for posting. A
/// removal reaches other pods as an eviction message; if that is lost, the
/// removed user can post for at most this long.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(5);
/// How often a pod re-reads the membership of every room open on it and
/// stops delivering to connections whose user is no longer a member (or
/// whose room is gone), eviction message or not.
pub const MEMBERSHIP_SWEEP: Duration = Duration::from_secs(10);
/// After a membership check found the store unreachable, how long posts
/// trust the subscription without asking it again (a check waits for the
/// driver's timeout, seconds, when the store is down).
const STORE_PROBE: Duration = Duration::from_secs(10);

impl Chat {
    /// Whether `user` is still a member of `room`, from the store at most
    /// [`MEMBERSHIP_TTL`] ago. The live subscription alone is not proof: it
    /// ends on other pods only when the eviction message arrives. A user found
    /// removed is evicted here and now. While the store is unreachable the
    /// subscription is trusted, so a database outage does not stop chat.
    pub(super) async fn confirm_member(&self, room: Id, user: Id) -> Result<(), ChatError> {
        let fresh = lock(&self.confirmed_members)
            .get(&(room, user))
            .is_some_and(|at| at.elapsed() < MEMBERSHIP_TTL);
        if fresh {
            return Ok(());
        }
        // While the database is known to be down, do not wait for it on
        // every post: one post probes it per STORE_PROBE.
        if lock(&self.store_down_until).is_some_and(|until| Instant::now() < until) {
            return Ok(());
        }
        let member = match self.store.room(room).await {
            Ok(Some(current)) if current.kind == RoomKind::Direct && current.is_member(user) => {
                // The other one may have blocked this one since.
                let other = current.members.iter().find(|m| **m != user).copied();
                let blocked = match other {
                    Some(other) => self
                        .store
                        .user(other)
                        .await?
                        .is_some_and(|o| o.blocked.contains(&user)),
                    None => false,
                };
                if blocked {
                    return Err(ChatError::NotAllowed(
                        "the other member of this direct room blocked you",
                    ));
                }
                true
            }
            Ok(current) => current.is_some_and(|r| r.is_member(user)),
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
            lock(&self.confirmed_members).insert((room, user), Instant::now());
            Ok(())
        } else {
            lock(&self.confirmed_members).remove(&(room, user));
            tracing::info!(room_id = %room, user_id = %user, "a removed member was still subscribed: evicted");
            self.hub.evict(room, Some(user));
            Err(ChatError::NotSubscribed)
        }
    }

    /// Forgets which rooms `user` was confirmed a member of, so their next
    /// post asks the store again: someone blocked them, and their direct
    /// room must stop taking their messages now (see `confirm_member`).
    pub fn reconfirm(&self, user: Id) {
        lock(&self.confirmed_members).retain(|(_, member), _| *member != user);
    }

    /// Re-reads the membership of every room open on this pod and stops
    /// delivery to whoever is no longer in it: the guarantee that a removed
    /// member stops reading does not rest on an eviction message arriving.
    /// One store read per open room per [`MEMBERSHIP_SWEEP`].
    pub async fn sweep_memberships(&self) {
        for room in self.hub.open_rooms() {
            if lock(&self.store_down_until).is_some_and(|until| Instant::now() < until) {
                return;
            }
            let current = match self.store.room(room).await {
                Ok(current) => current,
                Err(e) => {
                    tracing::warn!(room_id = %room, error = %e, "membership sweep: cannot read the room");
                    if matches!(e, StoreError::Unavailable(_)) {
                        *lock(&self.store_down_until) = Some(Instant::now() + STORE_PROBE);
                    }
                    continue;
                }
            };
            for connection in self.hub.subscribers(room) {
                if !current
                    .as_ref()
                    .is_some_and(|r| r.is_member(connection.user))
                {
                    tracing::info!(room_id = %room, user_id = %connection.user, "membership sweep: evicted a non-member");
                    self.hub.evict(room, Some(connection.user));
                }
            }
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
