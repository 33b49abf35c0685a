//! Presence and last seen: who is online in a room (announced when a
//! user's first connection opens it and their last one leaves), the
//! cluster-wide list of sessions, when a user was last seen, and the typing
//! and read events members relay.

use super::{Chat, ChatError};
use crate::engine::hub::Connection;
use crate::model::{Id, Session};
use crate::wire::frames::{PresenceStatus, ServerFrame};

impl Chat {
    /// Relays a member's typing or read frame to a room open on `connection`,
    /// within the user's event budget.
    pub async fn relay_from(
        &self,
        connection: &Connection,
        room: Id,
        frame: &ServerFrame,
    ) -> Result<(), ChatError> {
        if !self.hub.is_subscribed(room, connection.id) {
            return Err(ChatError::NotSubscribed);
        }
        self.limits.event(connection.user)?;
        self.relay(room, frame).await;
        Ok(())
    }

    /// A connection closed: forget it, tell its rooms if its user is gone,
    /// and, if it was their last anywhere, record when they were last seen.
    pub async fn disconnected(&self, connection: &Connection) {
        self.bus
            .session_closed(connection.user, &self.session_id(connection))
            .await;
        for room in self.hub.unregister(connection.id) {
            self.left(room, connection).await;
        }
        // Another tab on this pod answers it without asking Redis; when
        // Redis cannot say, this pod's word stands.
        let here = !self
            .hub
            .sessions(&self.pod, |c| c.user == connection.user)
            .is_empty();
        let gone = !here
            && self
                .bus
                .sessions_of(connection.user)
                .await
                .map_or(true, |sessions| sessions.is_empty());
        if gone
            && let Err(e) = self
                .store
                .set_last_seen(connection.user, crate::model::now())
                .await
        {
            tracing::warn!(error = %e, user_id = %connection.user, "cannot record when a user was last seen");
        }
    }

    /// A connection opened or changed rooms: update the cluster-wide list.
    pub async fn session_changed(&self, connection: &Connection) {
        let id = connection.id;
        if let Some(session) = self.hub.sessions(&self.pod, |c| c.id == id).pop() {
            self.bus.session_changed(&session).await;
        }
    }

    pub(super) fn session_id(&self, connection: &Connection) -> String {
        format!("{}/{}", self.pod, connection.id)
    }

    /// `user`'s live connections on every pod.
    pub async fn sessions_of(&self, user: Id) -> Result<Vec<Session>, ChatError> {
        Ok(self.bus.sessions_of(user).await?)
    }

    pub(super) async fn left(&self, room: Id, connection: &Connection) {
        if self
            .hub
            .user_subscriptions(room, connection.user)
            .is_empty()
        {
            self.announce(room, connection, PresenceStatus::Offline)
                .await;
        }
        self.release(room).await;
    }

    pub(super) async fn announce(&self, room: Id, connection: &Connection, status: PresenceStatus) {
        let frame = ServerFrame::Presence {
            room_id: room,
            user_id: connection.user,
            username: connection.username.clone(),
            status,
        };
        self.relay(room, &frame).await;
    }
}
