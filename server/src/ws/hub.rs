//! The hub: which local connections receive which rooms, and fan-out to them.
//!
//! The lock is a plain mutex held only to copy the list of recipients; sending
//! happens after it is released and never waits: each connection has a bounded
//! queue, and a connection whose queue is full is disconnected (told why) rather
//! than slowing the room for everyone else.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::model::{Id, Timestamp};
use crate::sync::lock;

pub type ConnId = u64;

/// What a connection's writer task receives.
///
/// Two words at most, payloads behind pointers: tokio's channel allocates its
/// slots 32 at a time, so every connection, idle or not, pays 32 times this
/// size. Room frames are built once and shared by every recipient (cloning a
/// `Message`, `Event` or `Left` copies a pointer).
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame for this connection alone (ack, error, pong, ...).
    Direct(Box<Utf8Bytes>),
    /// A room message, written at most once per seq (see `cursor`).
    Message(Arc<RoomMessage>),
    /// A room event without seq (typing, read, presence): written if subscribed.
    Event(Arc<RoomEvent>),
    /// The connection no longer receives the room; `frame` tells it so.
    Left(Arc<RoomEvent>),
    /// Hold the room's live messages until `Replayed` (a join or a resume began).
    Resuming { room: Id },
    /// A join or resume failed after `Resuming`: forget the room silently.
    Reset { room: Id },
    /// The end of a join or resume.
    Replayed(Box<Replay>),
}

impl Outbound {
    pub fn direct(frame: Utf8Bytes) -> Self {
        Outbound::Direct(Box::new(frame))
    }

    pub fn message(room: Id, seq: u64, frame: Utf8Bytes) -> Self {
        Outbound::Message(Arc::new(RoomMessage { room, seq, frame }))
    }

    pub fn event(room: Id, frame: Utf8Bytes) -> Self {
        Outbound::Event(Arc::new(RoomEvent { room, frame }))
    }

    pub fn left(room: Id, frame: Utf8Bytes) -> Self {
        Outbound::Left(Arc::new(RoomEvent { room, frame }))
    }
}

#[derive(Debug)]
pub struct RoomMessage {
    pub room: Id,
    pub seq: u64,
    pub frame: Utf8Bytes,
}

#[derive(Debug)]
pub struct RoomEvent {
    pub room: Id,
    pub frame: Utf8Bytes,
}

/// `frame` (`joined` or `resumed`), the replay of missed messages, then the
/// held live ones newer than `upto`.
#[derive(Debug, Clone)]
pub struct Replay {
    pub room: Id,
    pub frame: Utf8Bytes,
    pub replay: Vec<(u64, Utf8Bytes)>,
    pub upto: u64,
}

/// Why the server closes a connection: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The outbound queue overflowed; the client should reconnect and resume.
    SlowConsumer,
    /// The client kept sending after being told to stop.
    Flooding,
    /// Too many invalid frames in a row.
    Abuse,
    /// The token expired and was not refreshed with an `auth` frame.
    TokenExpired,
    /// No frame or pong within the idle timeout.
    Idle,
    /// The server is shutting down; reconnect to another pod.
    Shutdown,
    /// The client closed the connection.
    Gone,
    /// The socket failed (reset, protocol violation, oversized frame).
    Broken,
}

impl Kick {
    /// The reason as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kick::SlowConsumer => "slow_consumer",
            Kick::Flooding => "flooding",
            Kick::Abuse => "abuse",
            Kick::TokenExpired => "token_expired",
            Kick::Idle => "idle",
            Kick::Shutdown => "shutdown",
            Kick::Gone => "client_closed",
            Kick::Broken => "broken",
        }
    }

    pub fn close_code(self) -> u16 {
        match self {
            Kick::SlowConsumer => 4008,
            Kick::Flooding => 4029,
            Kick::Abuse => 1008,
            Kick::TokenExpired => 4001,
            Kick::Idle => 4000,
            Kick::Shutdown => 1012,
            Kick::Gone => 1000,
            Kick::Broken => 1002,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Kick::SlowConsumer => "slow consumer: outbound queue overflowed; reconnect and resume",
            Kick::Flooding => "rate limit exceeded repeatedly",
            Kick::Abuse => "too many invalid frames",
            Kick::TokenExpired => "token expired; reconnect with a fresh token",
            Kick::Idle => "idle timeout",
            Kick::Shutdown => "server shutting down; reconnect",
            Kick::Gone => "closed",
            Kick::Broken => "connection failed",
        }
    }
}

/// One live WebSocket connection as the rest of the server sees it.
#[derive(Debug)]
pub struct Connection {
    pub id: ConnId,
    pub user: Id,
    pub username: String,
    pub connected_at: Timestamp,
    queue: mpsc::Sender<Outbound>,
    /// Set once, by whoever closes the connection first; both the reader and
    /// the writer task wait on it, so it must wake every waiter.
    kick: watch::Sender<Option<Kick>>,
}

impl Connection {
    pub fn author(&self) -> crate::chat::Author {
        crate::chat::Author {
            id: self.user,
            username: self.username.clone(),
        }
    }

    /// Queues an item without waiting. A full queue disconnects the connection.
    pub fn send(&self, item: Outbound) -> bool {
        match self.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick(Kick::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the connection to close with `reason`; the first reason wins.
    pub fn kick(&self, reason: Kick) {
        self.kick.send_if_modified(|kick| {
            let first = kick.is_none();
            if first {
                *kick = Some(reason);
            }
            first
        });
    }

    /// Resolves once the connection has been kicked, with the reason.
    pub async fn kicked(&self) -> Kick {
        let mut kicked = self.kick.subscribe();
        // The sender lives as long as `self`, so this only ends with a reason.
        match kicked.wait_for(Option::is_some).await {
            Ok(reason) => reason.unwrap_or(Kick::Gone),
            Err(_) => Kick::Gone,
        }
    }
}

/// A live connection as listed by `GET /api/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub connection_id: String,
    pub user_id: Id,
    pub pod: String,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: Timestamp,
    pub rooms: Vec<Id>,
}

#[derive(Default)]
struct Inner {
    connections: HashMap<ConnId, Arc<Connection>>,
    rooms: HashMap<Id, HashMap<ConnId, Arc<Connection>>>,
    rooms_of: HashMap<ConnId, HashSet<Id>>,
}

#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

impl Hub {
    pub fn register(
        &self,
        user: Id,
        username: String,
        queue: mpsc::Sender<Outbound>,
    ) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            user,
            username,
            connected_at: crate::model::now(),
            queue,
            kick: watch::Sender::new(None),
        });
        lock(&self.inner)
            .connections
            .insert(connection.id, connection.clone());
        connection
    }

    /// Forgets a closed connection; returns the rooms it was subscribed to.
    pub fn unregister(&self, id: ConnId) -> Vec<Id> {
        let mut inner = lock(&self.inner);
        inner.connections.remove(&id);
        let rooms: Vec<Id> = inner.rooms_of.remove(&id).into_iter().flatten().collect();
        for room in &rooms {
            if let Some(members) = inner.rooms.get_mut(room) {
                members.remove(&id);
                if members.is_empty() {
                    inner.rooms.remove(room);
                }
            }
        }
        rooms
    }

    pub fn subscribe(&self, room: Id, connection: &Arc<Connection>) {
        let mut inner = lock(&self.inner);
        inner
            .rooms
            .entry(room)
            .or_default()
            .insert(connection.id, connection.clone());
        inner
            .rooms_of
            .entry(connection.id)
            .or_default()
            .insert(room);
    }

    pub fn unsubscribe(&self, room: Id, id: ConnId) {
        let mut inner = lock(&self.inner);
        if let Some(rooms) = inner.rooms_of.get_mut(&id) {
            rooms.remove(&room);
        }
        if let Some(members) = inner.rooms.get_mut(&room) {
            members.remove(&id);
            if members.is_empty() {
                inner.rooms.remove(&room);
            }
        }
    }

    pub fn is_subscribed(&self, room: Id, id: ConnId) -> bool {
        lock(&self.inner)
            .rooms
            .get(&room)
            .is_some_and(|members| members.contains_key(&id))
    }

    /// The connections subscribed to `room`, copied so no lock is held while sending.
    pub fn subscribers(&self, room: Id) -> Vec<Arc<Connection>> {
        lock(&self.inner)
            .rooms
            .get(&room)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends `item` to every subscriber of `room` (room items are shared, so
    /// this copies no payload).
    pub fn broadcast(&self, room: Id, item: Outbound) -> usize {
        let subscribers = self.subscribers(room);
        subscribers
            .iter()
            .filter(|connection| connection.send(item.clone()))
            .count()
    }

    /// The connections of `user` subscribed to `room`.
    pub fn user_subscriptions(&self, room: Id, user: Id) -> Vec<Arc<Connection>> {
        self.subscribers(room)
            .into_iter()
            .filter(|c| c.user == user)
            .collect()
    }

    /// The local connections `which` selects, as sessions of pod `pod`.
    pub fn sessions(&self, pod: &str, which: impl Fn(&Connection) -> bool) -> Vec<Session> {
        let inner = lock(&self.inner);
        let mut sessions: Vec<Session> = inner
            .connections
            .values()
            .filter(|c| which(c))
            .map(|c| Session {
                connection_id: format!("{pod}/{}", c.id),
                user_id: c.user,
                pod: pod.to_owned(),
                connected_at: c.connected_at,
                rooms: inner
                    .rooms_of
                    .get(&c.id)
                    .map(|r| r.iter().copied().collect())
                    .unwrap_or_default(),
            })
            .collect();
        sessions.sort_by_key(|s| s.connected_at);
        sessions
    }

    pub fn connection_count(&self) -> usize {
        lock(&self.inner).connections.len()
    }

    /// Stops delivery of `room` to `user`'s connections (or all), telling them.
    pub fn evict(&self, room: Id, user: Option<Id>) {
        let left = Outbound::left(
            room,
            super::protocol::encode(&super::protocol::ServerFrame::Left { room_id: room }),
        );
        for connection in self.subscribers(room) {
            if user.is_none_or(|user| user == connection.user) {
                self.unsubscribe(room, connection.id);
                connection.send(left.clone());
            }
        }
    }

    /// Kicks every connection (shutdown).
    pub fn kick_all(&self, reason: Kick) {
        let connections: Vec<_> = lock(&self.inner).connections.values().cloned().collect();
        for connection in connections {
            connection.kick(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Outbound {
        Outbound::direct(Utf8Bytes::from(text.to_owned()))
    }

    #[test]
    fn outbound_items_stay_two_words() {
        // Every connection's queue holds a first block of 32 of these, idle or
        // not: at 80 bytes they were 2.5 KiB of each connection's memory.
        assert!(std::mem::size_of::<Outbound>() <= 16);
    }

    #[tokio::test]
    async fn fans_out_to_subscribers_only() {
        let hub = Hub::default();
        let (tx_a, mut rx_a) = mpsc::channel(8);
        let (tx_b, mut rx_b) = mpsc::channel(8);
        let a = hub.register(Id::new(), "a".into(), tx_a);
        let b = hub.register(Id::new(), "b".into(), tx_b);
        let room = Id::new();
        hub.subscribe(room, &a);
        assert_eq!(hub.broadcast(room, frame("hi")), 1);
        assert!(matches!(rx_a.try_recv(), Ok(Outbound::Direct(_))));
        assert!(rx_b.try_recv().is_err());
        hub.subscribe(room, &b);
        hub.unsubscribe(room, a.id);
        assert_eq!(hub.broadcast(room, frame("again")), 1);
        assert!(rx_a.try_recv().is_err());
        assert!(rx_b.try_recv().is_ok());
        assert_eq!(hub.unregister(b.id), vec![room]);
        assert_eq!(hub.broadcast(room, frame("nobody")), 0);
    }

    #[tokio::test]
    async fn a_full_queue_kicks_the_slow_consumer_without_blocking() {
        let hub = Hub::default();
        let (tx_slow, _rx_slow) = mpsc::channel(2);
        let (tx_fast, mut rx_fast) = mpsc::channel(16);
        let slow = hub.register(Id::new(), "slow".into(), tx_slow);
        let fast = hub.register(Id::new(), "fast".into(), tx_fast);
        let room = Id::new();
        hub.subscribe(room, &slow);
        hub.subscribe(room, &fast);
        for i in 0..5 {
            hub.broadcast(room, frame(&i.to_string()));
        }
        assert_eq!(slow.kicked().await, Kick::SlowConsumer);
        let mut received = 0;
        while rx_fast.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, 5, "the fast member got everything");
    }

    #[test]
    fn sessions_list_a_users_connections_and_rooms() {
        let hub = Hub::default();
        let user = Id::new();
        let (tx, _rx) = mpsc::channel(1);
        let connection = hub.register(user, "u".into(), tx.clone());
        hub.register(Id::new(), "other".into(), tx);
        let room = Id::new();
        hub.subscribe(room, &connection);
        let sessions = hub.sessions("pod-1", |c| c.user == user);
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].rooms, vec![room]);
        assert_eq!(sessions[0].pod, "pod-1");
        hub.unregister(connection.id);
        assert!(hub.sessions("pod-1", |c| c.user == user).is_empty());
    }

    #[tokio::test]
    async fn a_kick_wakes_the_reader_and_the_writer_with_the_first_reason() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(1);
        let connection = hub.register(Id::new(), "a".into(), tx);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let connection = connection.clone();
                tokio::spawn(async move { connection.kicked().await })
            })
            .collect();
        tokio::task::yield_now().await;
        connection.kick(Kick::Shutdown);
        connection.kick(Kick::Idle);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Kick::Shutdown);
        }
        assert_eq!(
            connection.kicked().await,
            Kick::Shutdown,
            "a late waiter sees it too"
        );
    }
}
