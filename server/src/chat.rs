//! The chat service: posting to rooms, live subscriptions and resume, for one
//! process (the in-process bus).
//!
//! Each room has a sequencing lock. Under it a message gets the next `seq`, is
//! written to the store (durably: it is acked only after the write), and is
//! handed to the hub, so every subscriber sees a room's messages in seq order.
//! Subscribing and resuming take the same lock to learn the room's newest seq,
//! which is what lets the writer's cursor (see `ws::cursor`) deliver exactly once.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::model::{HistoryQuery, Id, Message, MessageKind, Room};
use crate::store::{Inserted, Store, StoreError};
use crate::ws::hub::{Connection, Hub, Outbound};
use crate::ws::protocol::{PresenceStatus, ServerFrame};

/// How many missed messages one resume replays; a client further behind reads
/// the history API first.
pub const MAX_RESUME: u64 = 1000;
/// How many recent (user, client_id) pairs are remembered to dedupe retries.
const ACK_CACHE: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("you are not in this room")]
    NotSubscribed,
    #[error("no such room")]
    NoSuchRoom,
    #[error("too many messages; retry in {0:?}")]
    RateLimited(Duration),
    #[error("missed more than {MAX_RESUME} messages; load them with the history API, then resume")]
    TooFarBehind,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A membership change made through the REST API, for its system message.
#[derive(Debug, Clone, Copy)]
pub enum Membership<'a> {
    Added { by: &'a str },
    Left,
    Removed { by: &'a str },
}

/// Who posts: the author fields copied into each message.
#[derive(Debug, Clone)]
pub struct Author {
    pub id: Id,
    pub username: String,
}

type Sequencer = Arc<tokio::sync::Mutex<Option<u64>>>;

pub struct Chat {
    store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    sequencers: Mutex<HashMap<Id, Sequencer>>,
    acks: Mutex<AckCache>,
    limiter: DefaultKeyedRateLimiter<Id>,
}

#[derive(Default)]
struct AckCache {
    map: HashMap<(Id, String), Message>,
    order: VecDeque<(Id, String)>,
}

impl AckCache {
    fn get(&self, key: &(Id, String)) -> Option<Message> {
        self.map.get(key).cloned()
    }

    fn insert(&mut self, key: (Id, String), message: Message) {
        if self.map.insert(key.clone(), message).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > ACK_CACHE {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serializes once; every recipient shares the bytes.
pub fn encode<T: serde::Serialize>(value: &T) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize a frame");
        String::from(r#"{"type":"error","code":"internal","message":"unserializable frame"}"#)
    }))
}

impl Chat {
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, per_sec: u32, burst: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            store,
            hub,
            sequencers: Mutex::new(HashMap::new()),
            acks: Mutex::new(AckCache::default()),
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
        }
    }

    fn sequencer(&self, room: Id) -> Sequencer {
        lock(&self.sequencers).entry(room).or_default().clone()
    }

    async fn newest_seq(&self, room: Id) -> Result<u64, StoreError> {
        let page = self
            .store
            .messages(
                room,
                HistoryQuery::Latest {
                    offset: 0,
                    limit: 1,
                },
            )
            .await?;
        Ok(page.messages.last().map_or(0, |m| m.seq))
    }

    /// One token of `user`'s message budget, or how long to wait for one.
    pub fn check_rate(&self, user: Id) -> Result<(), Duration> {
        self.limiter
            .check_key(&user)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Posts a member's message from `connection`. A retry with the same
    /// `client_id` returns the message stored the first time.
    pub async fn post(
        &self,
        connection: &Connection,
        room: Id,
        content: String,
        client_id: Option<String>,
    ) -> Result<Message, ChatError> {
        if !self.hub.is_subscribed(room, connection.id) {
            return Err(ChatError::NotSubscribed);
        }
        let key = client_id.map(|c| (connection.user, c));
        if let Some(previous) = key.as_ref().and_then(|k| lock(&self.acks).get(k)) {
            return Ok(previous);
        }
        let author = Author {
            id: connection.user,
            username: connection.username.clone(),
        };
        let message = self
            .append(room, &author, MessageKind::Text, content)
            .await?;
        if let Some(key) = key {
            lock(&self.acks).insert(key, message.clone());
        }
        Ok(message)
    }

    /// Posts a server message about `about` (joins, leaves, room events).
    pub async fn post_system(
        &self,
        room: Id,
        about: &Author,
        content: String,
    ) -> Result<Message, ChatError> {
        self.append(room, about, MessageKind::System, content).await
    }

    async fn append(
        &self,
        room: Id,
        author: &Author,
        kind: MessageKind,
        content: String,
    ) -> Result<Message, ChatError> {
        let sequencer = self.sequencer(room);
        let mut newest = sequencer.lock().await;
        let mut seq = match *newest {
            Some(seq) => seq + 1,
            None => self.newest_seq(room).await? + 1,
        };
        let message = loop {
            let message = Message {
                kind,
                id: Id::new(),
                room_id: room,
                user_id: author.id,
                username: author.username.clone(),
                content: content.clone(),
                timestamp: crate::model::now(),
                seq,
            };
            match self.store.insert_message(&message).await? {
                Inserted::New => break message,
                // Another process wrote this seq (two servers on one store without
                // Redis): take the next free one rather than lose the message.
                Inserted::Existing(_) => seq = self.newest_seq(room).await? + 1,
            }
        };
        *newest = Some(seq);
        let frame = encode(&message);
        self.hub.broadcast(room, || Outbound::Message {
            room,
            seq,
            frame: frame.clone(),
        });
        Ok(message)
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
    /// someone who is no longer a member.
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
            self.member_removed(room, who.id);
        }
        self.post_system(room, who, content).await?;
        Ok(())
    }

    /// Starts live delivery of `room` to `connection`; returns the room's newest seq.
    pub async fn subscribe(
        &self,
        connection: &Arc<Connection>,
        room: Id,
    ) -> Result<u64, ChatError> {
        let sequencer = self.sequencer(room);
        let mut newest = sequencer.lock().await;
        let last = match *newest {
            Some(seq) => seq,
            None => self.newest_seq(room).await?,
        };
        *newest = Some(last);
        let first_here = self
            .hub
            .user_subscriptions(room, connection.user)
            .is_empty();
        self.hub.subscribe(room, connection);
        let frame = encode(&ServerFrame::Joined {
            room_id: room,
            last_seq: last,
        });
        connection.send(Outbound::Joined { room, last, frame });
        drop(newest);
        if first_here {
            self.announce(room, connection, PresenceStatus::Online);
        }
        Ok(last)
    }

    /// Replays what `connection` missed after `last_seq`, then continues live.
    pub async fn resume(
        &self,
        connection: &Arc<Connection>,
        room: Id,
        last_seq: u64,
    ) -> Result<(), ChatError> {
        let upto = {
            let sequencer = self.sequencer(room);
            let mut newest = sequencer.lock().await;
            let upto = match *newest {
                Some(seq) => seq,
                None => self.newest_seq(room).await?,
            };
            *newest = Some(upto);
            if upto.saturating_sub(last_seq) > MAX_RESUME {
                return Err(ChatError::TooFarBehind);
            }
            connection.send(Outbound::Resuming { room });
            if !self.hub.is_subscribed(room, connection.id) {
                self.hub.subscribe(room, connection);
            }
            upto
        };
        // Read outside the lock: the room keeps flowing; live messages are held
        // by the connection's cursor until this replay is written.
        let missed = if upto > last_seq {
            self.store
                .messages(
                    room,
                    HistoryQuery::After {
                        seq: last_seq,
                        limit: upto - last_seq,
                    },
                )
                .await?
                .messages
        } else {
            Vec::new()
        };
        let replay = missed
            .iter()
            .filter(|m| m.seq <= upto)
            .map(|m| (m.seq, encode(m)))
            .collect();
        let frame = encode(&ServerFrame::Resumed {
            room_id: room,
            from_seq: last_seq,
            last_seq: upto,
        });
        connection.send(Outbound::Replayed {
            room,
            frame,
            replay,
            upto,
        });
        Ok(())
    }

    pub fn unsubscribe(&self, connection: &Connection, room: Id) {
        self.hub.unsubscribe(room, connection.id);
        connection.send(Outbound::Left {
            room,
            frame: encode(&ServerFrame::Left { room_id: room }),
        });
        if self
            .hub
            .user_subscriptions(room, connection.user)
            .is_empty()
        {
            self.announce(room, connection, PresenceStatus::Offline);
        }
    }

    /// A connection closed: forget it, and tell its rooms if its user is gone.
    pub fn disconnected(&self, connection: &Connection) {
        for room in self.hub.unregister(connection.id) {
            if self
                .hub
                .user_subscriptions(room, connection.user)
                .is_empty()
            {
                self.announce(room, connection, PresenceStatus::Offline);
            }
        }
    }

    fn announce(&self, room: Id, connection: &Connection, status: PresenceStatus) {
        let frame = ServerFrame::Presence {
            room_id: room,
            user_id: connection.user,
            username: connection.username.clone(),
            status,
        };
        self.relay(room, &frame);
    }

    /// `user` is no longer a member of `room`: stop live delivery to all of
    /// their connections.
    pub fn member_removed(&self, room: Id, user: Id) {
        for connection in self.hub.user_subscriptions(room, user) {
            self.unsubscribe(&connection, room);
        }
    }

    /// The room is gone: nobody receives it any more.
    pub fn room_deleted(&self, room: Id) {
        for connection in self.hub.subscribers(room) {
            self.unsubscribe(&connection, room);
        }
        lock(&self.sequencers).remove(&room);
    }

    /// Relays a seq-less event (typing, read marker) to the room's subscribers.
    pub fn relay(&self, room: Id, frame: &ServerFrame) {
        let frame = encode(frame);
        self.hub.broadcast(room, || Outbound::Event {
            room,
            frame: frame.clone(),
        });
    }

    /// Drops rate-limiter state of users idle long enough to have a full bucket.
    pub fn forget_idle_users(&self) {
        self.limiter.retain_recent();
    }
}
