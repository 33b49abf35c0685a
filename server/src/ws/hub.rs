//! The hub: which local connections receive which rooms, and fan-out to them.
//!
//! The lock is a plain mutex held only to copy the list of recipients; sending
//! happens after it is released and never waits: each connection has a bounded
//! queue, and a connection whose queue is full is disconnected (told why) rather
//! than slowing the room for everyone else.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// The bytes this item will write: what it counts against the queue's
    /// byte budget (a replay counts all of its frames).
    pub fn bytes(&self) -> usize {
        match self {
            Outbound::Direct(frame) => frame.len(),
            Outbound::Message(message) => message.frame.len(),
            Outbound::Event(event) | Outbound::Left(event) => event.frame.len(),
            Outbound::Resuming { .. } | Outbound::Reset { .. } => 0,
            Outbound::Replayed(replay) => replay.bytes(),
        }
    }

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

impl Replay {
    pub fn bytes(&self) -> usize {
        self.frame.len() + self.replay.iter().map(|(_, f)| f.len()).sum::<usize>()
    }
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
    /// The user or the client address already has as many connections as allowed.
    TooManyConnections,
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
            Kick::TooManyConnections => "too_many_connections",
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
            Kick::TooManyConnections => 4009,
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
            Kick::TooManyConnections => {
                "too many connections for this user or address; close another first"
            }
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
    /// The client's address, for the per-address connection cap.
    pub address: IpAddr,
    queue: mpsc::Sender<Outbound>,
    /// Bytes queued and not yet taken by the writer (see [`HubLimits::queue_bytes`]).
    queued_bytes: AtomicUsize,
    max_queue_bytes: usize,
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

    /// Queues an item without waiting. A full queue, in items or in bytes,
    /// disconnects the connection: a client that stops reading holds at most
    /// `max_queue_bytes` of the pod's memory.
    pub fn send(&self, item: Outbound) -> bool {
        let bytes = item.bytes();
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let refused = if queued > self.max_queue_bytes {
            Some(true)
        } else {
            match self.queue.try_send(item) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some(true),
                Err(mpsc::error::TrySendError::Closed(_)) => Some(false),
            }
        };
        match refused {
            None => true,
            Some(slow) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                if slow {
                    self.kick(Kick::SlowConsumer);
                }
                false
            }
        }
    }

    /// The writer took `item` off the queue.
    pub fn dequeued(&self, item: &Outbound) {
        self.queued_bytes.fetch_sub(item.bytes(), Ordering::Relaxed);
    }

    /// The most a join or resume may replay at once: half the queue's bytes,
    /// so a replay never makes its own connection a slow consumer.
    pub fn max_replay_bytes(&self) -> usize {
        self.max_queue_bytes / 2
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
    per_user: HashMap<Id, usize>,
    per_address: HashMap<IpAddr, usize>,
}

/// What one user or client address may hold of this pod's connections.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub connections_per_user: usize,
    pub connections_per_address: usize,
    /// Bytes queued for one connection before it counts as a slow consumer.
    pub queue_bytes: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            connections_per_user: usize::MAX,
            connections_per_address: usize::MAX,
            queue_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    limits: HubLimits,
}

impl Hub {
    pub fn new(limits: HubLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Adds a connection, unless its user or its address is at the cap
    /// (checked and counted under one lock, so a burst of connects cannot
    /// overshoot it).
    pub fn register(
        &self,
        user: Id,
        username: String,
        address: IpAddr,
        queue: mpsc::Sender<Outbound>,
    ) -> Result<Arc<Connection>, Kick> {
        let mut inner = lock(&self.inner);
        let of_user = inner.per_user.get(&user).copied().unwrap_or(0);
        let of_address = inner.per_address.get(&address).copied().unwrap_or(0);
        if of_user >= self.limits.connections_per_user
            || of_address >= self.limits.connections_per_address
        {
            return Err(Kick::TooManyConnections);
        }
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            user,
            username,
            connected_at: crate::model::now(),
            address,
            queue,
            queued_bytes: AtomicUsize::new(0),
            max_queue_bytes: self.limits.queue_bytes,
            kick: watch::Sender::new(None),
        });
        inner.connections.insert(connection.id, connection.clone());
        *inner.per_user.entry(user).or_default() += 1;
        *inner.per_address.entry(address).or_default() += 1;
        Ok(connection)
    }

    /// Forgets a closed connection; returns the rooms it was subscribed to.
    pub fn unregister(&self, id: ConnId) -> Vec<Id> {
        let mut inner = lock(&self.inner);
        if let Some(connection) = inner.connections.remove(&id) {
            let Inner {
                per_user,
                per_address,
                ..
            } = &mut *inner;
            release(per_user, connection.user);
            release(per_address, connection.address);
        }
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

    /// The rooms with at least one subscriber here.
    pub fn open_rooms(&self) -> Vec<Id> {
        lock(&self.inner).rooms.keys().copied().collect()
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

/// One connection fewer for `key`; the entry goes when it reaches zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut count) = counts.entry(key) {
        *count.get_mut() -= 1;
        if *count.get() == 0 {
            count.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Outbound {
        Outbound::direct(Utf8Bytes::from(text.to_owned()))
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn register(hub: &Hub, user: Id, tx: mpsc::Sender<Outbound>) -> Arc<Connection> {
        hub.register(user, "u".into(), HERE, tx).unwrap()
    }

    #[test]
    fn users_and_addresses_are_capped_and_a_closed_connection_frees_its_slot() {
        let hub = Hub::new(HubLimits {
            connections_per_user: 2,
            connections_per_address: 3,
            ..HubLimits::default()
        });
        let (tx, _rx) = mpsc::channel(1);
        let alice = Id::new();
        let first = register(&hub, alice, tx.clone());
        register(&hub, alice, tx.clone());
        assert_eq!(
            hub.register(alice, "a".into(), HERE, tx.clone())
                .unwrap_err(),
            Kick::TooManyConnections
        );
        register(&hub, Id::new(), tx.clone());
        let elsewhere: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(
            hub.register(Id::new(), "b".into(), HERE, tx.clone())
                .is_err()
        );
        assert!(
            hub.register(Id::new(), "b".into(), elsewhere, tx.clone())
                .is_ok()
        );
        hub.unregister(first.id);
        assert!(
            hub.register(alice, "a".into(), "192.0.2.2".parse().unwrap(), tx)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_queue_over_its_bytes_kicks_the_connection() {
        let hub = Hub::new(HubLimits {
            queue_bytes: 10,
            ..HubLimits::default()
        });
        let (tx, mut rx) = mpsc::channel(64);
        let connection = register(&hub, Id::new(), tx);
        assert!(connection.send(frame("12345")));
        assert!(connection.send(frame("12345")));
        let taken = rx.try_recv().unwrap();
        connection.dequeued(&taken);
        assert!(connection.send(frame("12345")), "the writer made room");
        assert!(!connection.send(frame("123456")));
        assert_eq!(connection.kicked().await, Kick::SlowConsumer);
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
        let a = register(&hub, Id::new(), tx_a);
        let b = register(&hub, Id::new(), tx_b);
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
        let slow = register(&hub, Id::new(), tx_slow);
        let fast = register(&hub, Id::new(), tx_fast);
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
        let connection = register(&hub, user, tx.clone());
        register(&hub, Id::new(), tx);
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
        let connection = register(&hub, Id::new(), tx);
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
