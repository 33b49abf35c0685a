//! Opening a room on a connection, with or without a resume point, and
//! closing it. Opening is exact: the connection's cursor holds live messages
//! (`Resuming`) before the hub subscribes it, the room's newest seq is read
//! after, and the replay of what was missed (as it is now) plus the held
//! messages newer than it are written in order. No message is lost or
//! repeated in between.

use std::sync::Arc;

use super::{Chat, ChatError};
use crate::engine::hub::{Connection, Outbound, Replay};
use crate::model::Id;
use crate::wire::frames::{PresenceStatus, ServerFrame, encode};

impl Chat {
    /// The `join` frame: joins the room when the user may (a public room, or
    /// one they are in), then opens it.
    pub async fn join(&self, connection: &Arc<Connection>, room: Id) -> Result<(), ChatError> {
        let ticket = self.hub.admissions.ticket(room);
        let joined = self.ensure_member(room, &connection.author()).await?;
        self.open(connection, room, None).await?;
        self.opened_by_member(ticket, &joined, connection.user)
            .await;
        Ok(())
    }

    /// The `resume` frame: opens a room the user is a member of, replaying
    /// what came after `last_seq` first.
    pub async fn resume(
        &self,
        connection: &Arc<Connection>,
        room: Id,
        last_seq: u64,
    ) -> Result<(), ChatError> {
        let ticket = self.hub.admissions.ticket(room);
        let current = self.visible_room(room, connection.user).await?;
        if !current.is_member(connection.user) {
            return Err(ChatError::NotSubscribed);
        }
        self.open(connection, room, Some(last_seq)).await?;
        self.opened_by_member(ticket, &current, connection.user)
            .await;
        Ok(())
    }

    /// Starts live delivery of `room` to `connection`. With `resume_after`, first
    /// replays the messages after that seq; without, answers `joined` with the
    /// room's newest seq.
    pub async fn open(
        &self,
        connection: &Arc<Connection>,
        room: Id,
        resume_after: Option<u64>,
    ) -> Result<(), ChatError> {
        let was_open = self.hub.is_subscribed(room, connection.id);
        let first_here = self
            .hub
            .user_subscriptions(room, connection.user)
            .is_empty();
        connection.send(Outbound::Resuming { room });
        self.hub.subscribe(room, connection);
        let opened = self
            .replay(
                connection.user,
                room,
                resume_after,
                connection.max_replay_bytes(),
            )
            .await;
        let (frame, replay, upto) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                connection.send(Outbound::Reset { room });
                if !was_open {
                    self.hub.unsubscribe(room, connection.id);
                    self.release(room).await;
                }
                return Err(e);
            }
        };
        connection.send(Outbound::Replayed(Box::new(Replay {
            room,
            frame,
            replay,
            upto,
        })));
        self.session_changed(connection).await;
        if first_here {
            self.announce(room, connection, PresenceStatus::Online)
                .await;
        }
        Ok(())
    }

    /// Subscribes this pod to the room, then reads where the room is and what
    /// the client missed.
    pub(super) async fn replay(
        &self,
        user: Id,
        room: Id,
        resume_after: Option<u64>,
        max_bytes: usize,
    ) -> Result<
        (
            axum::extract::ws::Utf8Bytes,
            Vec<(u64, axum::extract::ws::Utf8Bytes)>,
            u64,
        ),
        ChatError,
    > {
        self.bus.subscribe(room).await?;
        self.hub.admissions.listening(room);
        let upto = self.bus.newest_seq(room).await?;
        let Some(after) = resume_after else {
            return Ok((
                encode(&ServerFrame::Joined {
                    room_id: room,
                    last_seq: upto,
                }),
                Vec::new(),
                upto,
            ));
        };
        let missed = self.bus.missed(room, after, upto, max_bytes).await?;
        let Some(mut missed) = missed else {
            self.limits.charge_replay(user, max_bytes);
            return Err(ChatError::TooFarBehind);
        };
        crate::model::as_now(&mut missed);
        let replay: Vec<_> = missed.iter().map(|m| (m.seq, encode(m))).collect();
        let bytes = replay.iter().map(|(_, frame)| frame.len()).sum::<usize>();
        self.limits.charge_replay(user, bytes);
        // Bigger than the connection may queue: the client pages history instead.
        if bytes > max_bytes {
            return Err(ChatError::TooFarBehind);
        }
        let frame = encode(&ServerFrame::Resumed {
            room_id: room,
            from_seq: after,
            last_seq: upto,
        });
        Ok((frame, replay, upto))
    }

    /// Stops live delivery of `room` to `connection` (the `leave` frame).
    pub async fn close(&self, connection: &Connection, room: Id) {
        let was_open = self.hub.is_subscribed(room, connection.id);
        self.hub.unsubscribe(room, connection.id);
        connection.send(Outbound::left(
            room,
            encode(&ServerFrame::Left { room_id: room }),
        ));
        // Leaving a room one never opened changes nothing, and must tell
        // nobody: it could otherwise announce presence into any room id.
        if !was_open {
            return;
        }
        self.session_changed(connection).await;
        self.left(room, connection).await;
    }

    /// Unsubscribes this pod from a room none of its connections want.
    pub(super) async fn release(&self, room: Id) {
        if self.hub.subscribers(room).is_empty() {
            self.bus.unsubscribe(room).await;
            // Forgotten after the unsubscribe: however a join interleaves,
            // the pod never counts on evictions of a room it no longer hears.
            self.hub.admissions.deaf(room);
        }
    }
}
