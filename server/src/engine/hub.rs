//! The hub: which local connections receive which rooms, and fan-out to them.
//!
//! The lock is a plain mutex held only to copy the list of recipients; sending
//! happens after it is released and never waits: each connection has a bounded
//! queue, and a connection whose queue is full is disconnected (told why) rather
//! than slowing the room for everyone else.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use prometheus::{Histogram, IntCounter};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::outbox::{Opcode, Outbox, Outgoing, Sent};

use crate::model::{Id, Session, ThreadRole, Timestamp};
use crate::sync::lock;
use crate::wire::errors::Kick;

pub(crate) type ConnId = u64;

/// What is sent to a connection: a frame, or a step of a join or resume
/// that the connection's cursors turn into frames (see `cursor`).
///
/// Room frames are built once and shared by every recipient (cloning a
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

/// One live WebSocket connection as the rest of the server sees it.
#[derive(Debug)]
pub struct Connection {
    pub id: ConnId,
    pub user: Id,
    pub username: String,
    pub connected_at: Timestamp,
    /// The client's address, for the per-address connection cap.
    pub address: IpAddr,
    /// The socket's sending side.
    pub outbox: Outbox,
    frames_sent: IntCounter,
    /// Set once, by whoever closes the connection first; both the reader and
    /// the flusher task wait on it, so it must wake every waiter.
    kick: watch::Sender<Option<Kick>>,
}

impl Connection {
    pub fn author(&self) -> crate::model::Author {
        crate::model::Author {
            id: self.user,
            username: self.username.clone(),
        }
    }

    /// Sends an item without waiting: written to the socket at once, or
    /// left for the connection's flusher. A client that does not read, so
    /// that more than the queue's bytes wait ([`HubLimits::queue_bytes`]), is disconnected (a slow
    /// consumer): it holds at most that much of the pod's memory.
    pub fn send(&self, item: Outbound) -> bool {
        let mut outgoing = self.outbox.lock();
        let sent = match item {
            Outbound::Direct(frame) => self.text(&mut outgoing, *frame),
            Outbound::Message(message) => {
                match outgoing
                    .cursors
                    .live(message.room, message.seq, message.frame.clone())
                {
                    Some(frame) => self.text(&mut outgoing, frame),
                    None => Sent::Accepted,
                }
            }
            Outbound::Event(event) => {
                if outgoing.cursors.is_subscribed(event.room) {
                    self.text(&mut outgoing, event.frame.clone())
                } else {
                    Sent::Accepted
                }
            }
            Outbound::Left(event) => {
                outgoing.cursors.left(event.room);
                self.text(&mut outgoing, event.frame.clone())
            }
            Outbound::Resuming { room } => {
                outgoing.cursors.resuming(room);
                Sent::Accepted
            }
            Outbound::Reset { room } => {
                outgoing.cursors.left(room);
                Sent::Accepted
            }
            Outbound::Replayed(replayed) => {
                let Replay {
                    room,
                    frame,
                    replay,
                    upto,
                } = *replayed;
                let frames = outgoing.cursors.replayed(room, replay, upto);
                std::iter::once(frame)
                    .chain(frames)
                    .map(|frame| self.text(&mut outgoing, frame))
                    .find(|sent| *sent != Sent::Accepted)
                    .unwrap_or(Sent::Accepted)
            }
        };
        drop(outgoing);
        match sent {
            Sent::Accepted => true,
            Sent::Overflow => {
                self.kick(Kick::SlowConsumer);
                false
            }
            Sent::Closed => false,
        }
    }

    fn text(&self, outgoing: &mut Outgoing, frame: Utf8Bytes) -> Sent {
        let sent = self
            .outbox
            .frame(outgoing, Opcode::Text, Bytes::from(frame));
        if sent == Sent::Accepted {
            self.frames_sent.inc();
        }
        sent
    }

    /// The most a join or resume may replay at once: half the queue's bytes,
    /// so a replay never makes its own connection a slow consumer.
    pub fn max_replay_bytes(&self) -> usize {
        self.outbox.max_waiting_bytes() / 2
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

/// Frames waiting for one client (beyond what its socket holds) before it
/// counts as slow, whatever their bytes.
pub(crate) const QUEUE_FRAMES: usize = 512;

pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    limits: HubLimits,
    /// Frames handed to sockets (`chat_ws_frames_sent_total`).
    frames_sent: IntCounter,
    /// From a message's acceptance to its hand-off here
    /// (`chat_delivery_latency_seconds`), whichever bus brought it.
    delivery_latency: Histogram,
    /// Who may write in the rooms open here; evictions arrive here, so the
    /// hub keeps it current.
    pub(crate) admissions: super::admission::Admissions,
}

impl Hub {
    pub fn new(limits: HubLimits, frames_sent: IntCounter, delivery_latency: Histogram) -> Self {
        Self {
            inner: Mutex::default(),
            next_id: AtomicU64::new(0),
            limits,
            frames_sent,
            delivery_latency,
            admissions: Default::default(),
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
        stream: Arc<TcpStream>,
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
            outbox: Outbox::new(stream, self.limits.queue_bytes, QUEUE_FRAMES),
            frames_sent: self.frames_sent.clone(),
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

    /// Hands `frame` to every local connection of `audience`.
    pub fn notify(&self, audience: &crate::bus::Audience, frame: &Utf8Bytes) {
        let connections: Vec<Arc<Connection>> = lock(&self.inner)
            .connections
            .values()
            .filter(|c| audience.includes(c.user))
            .cloned()
            .collect();
        for connection in connections {
            connection.send(Outbound::direct(frame.clone()));
        }
    }

    /// Stops delivery of `room` to `user`'s connections (or all), telling
    /// them, and forgets that they may write in it.
    pub fn evict(&self, room: Id, user: Option<Id>) {
        self.admissions.forget(room, user);
        let left = Outbound::left(
            room,
            crate::wire::frames::encode(&crate::wire::frames::ServerFrame::Left { room_id: room }),
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

/// What the bus hands this process goes to the connections here.
impl crate::bus::Deliver for Hub {
    fn message(
        &self,
        room: Id,
        seq: u64,
        accepted: Option<Timestamp>,
        role: ThreadRole,
        frame: Utf8Bytes,
    ) {
        self.admissions.delivered(room, seq, role);
        self.broadcast(room, Outbound::message(room, seq, frame));
        if let Some(accepted) = accepted {
            let elapsed = (crate::model::now() - accepted).as_seconds_f64();
            self.delivery_latency.observe(elapsed.max(0.0));
        }
    }

    fn event(&self, room: Id, frame: Utf8Bytes) {
        self.broadcast(room, Outbound::event(room, frame));
    }

    fn notice(&self, audience: &crate::bus::Audience, frame: &Utf8Bytes) {
        self.notify(audience, frame);
    }

    fn evict(&self, room: Id, user: Option<Id>) {
        Hub::evict(self, room, user);
    }

    fn lost(&self) {
        self.admissions.lost();
    }

    fn sessions(&self, pod: &str, user: Option<Id>) -> Vec<Session> {
        Hub::sessions(self, pod, |c| user.is_none_or(|user| c.user == user))
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
    use tokio::io::AsyncReadExt;

    use super::*;

    fn frame(text: &str) -> Outbound {
        Outbound::direct(Utf8Bytes::from(text.to_owned()))
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn hub(limits: HubLimits) -> Hub {
        Hub::new(
            limits,
            IntCounter::new("frames", "frames").unwrap(),
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("latency", "latency"))
                .unwrap(),
        )
    }

    /// A connected pair on loopback: the server's end, and the client's.
    async fn socket() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    async fn connect(hub: &Hub) -> (Arc<Connection>, TcpStream) {
        let (server, client) = socket().await;
        let connection = hub.register(Id::new(), "u".into(), HERE, server).unwrap();
        (connection, client)
    }

    /// What the client reads until nothing comes for `quiet` (or the end).
    async fn read_until_quiet(client: &mut TcpStream, quiet: std::time::Duration) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, client.read(&mut chunk)).await {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        bytes
    }

    /// The text frames the client has received so far (the server's frames
    /// are unmasked: a length, then the text).
    async fn received(client: &mut TcpStream) -> Vec<String> {
        let bytes = read_until_quiet(client, std::time::Duration::from_millis(100)).await;
        let mut texts = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(bytes[at], 0x81, "a final text frame");
            let (len, start) = match bytes[at + 1] {
                126 => (
                    u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                    at + 4,
                ),
                127 => (
                    u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
                    at + 10,
                ),
                len => (len as usize, at + 2),
            };
            texts.push(String::from_utf8(bytes[start..start + len].to_vec()).unwrap());
            at = start + len;
        }
        texts
    }

    #[tokio::test]
    async fn users_and_addresses_are_capped_and_a_closed_connection_frees_its_slot() {
        let hub = hub(HubLimits {
            connections_per_user: 2,
            connections_per_address: 3,
            ..HubLimits::default()
        });
        let (stream, _client) = socket().await;
        let alice = Id::new();
        let register = |user, address| hub.register(user, "a".into(), address, stream.clone());
        let first = register(alice, HERE).unwrap();
        register(alice, HERE).unwrap();
        assert_eq!(register(alice, HERE).unwrap_err(), Kick::TooManyConnections);
        register(Id::new(), HERE).unwrap();
        let elsewhere: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(register(Id::new(), HERE).is_err());
        assert!(register(Id::new(), elsewhere).is_ok());
        hub.unregister(first.id);
        assert!(register(alice, "192.0.2.2".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn frames_reach_the_socket_in_order_without_a_writer_task() {
        let hub = hub(HubLimits::default());
        let (connection, mut client) = connect(&hub).await;
        let long = "x".repeat(70_000);
        for text in ["one", &"y".repeat(300), &long, "four"] {
            assert!(connection.send(frame(text)));
        }
        assert_eq!(
            received(&mut client).await,
            vec!["one".to_owned(), "y".repeat(300), long, "four".to_owned()]
        );
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_kicked_once_over_its_bytes_and_the_room_goes_on() {
        let hub = hub(HubLimits {
            queue_bytes: 256 * 1024,
            ..HubLimits::default()
        });
        let (slow, _slow_client) = connect(&hub).await;
        let (fast, mut fast_client) = connect(&hub).await;
        let room = Id::new();
        hub.subscribe(room, &slow);
        hub.subscribe(room, &fast);
        let chunk = "z".repeat(16 * 1024);
        let reader = tokio::spawn(async move {
            read_until_quiet(&mut fast_client, std::time::Duration::from_secs(2))
                .await
                .len()
        });
        // The kernel's socket buffers take some megabytes first.
        let mut sent = 0;
        while slow.send(frame(&chunk)) {
            sent += 1;
            assert!(sent < 10_000, "never counted as slow");
            fast.send(frame(&chunk));
            if sent % 16 == 0 {
                // Let the fast reader keep up, as a reading client does.
                fast.outbox.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
        fast.send(frame(&chunk));
        assert_eq!(slow.kicked().await, Kick::SlowConsumer);
        fast.outbox.flush().await.unwrap();
        let frame_len = chunk.len() + 4;
        assert_eq!(
            reader.await.unwrap(),
            (sent + 1) * frame_len,
            "the fast member got everything"
        );
    }

    #[tokio::test]
    async fn fans_out_to_subscribers_only() {
        let hub = hub(HubLimits::default());
        let (a, mut a_client) = connect(&hub).await;
        let (b, mut b_client) = connect(&hub).await;
        let room = Id::new();
        hub.subscribe(room, &a);
        assert_eq!(hub.broadcast(room, frame("hi")), 1);
        assert_eq!(received(&mut a_client).await, ["hi"]);
        assert!(received(&mut b_client).await.is_empty());
        hub.subscribe(room, &b);
        hub.unsubscribe(room, a.id);
        assert_eq!(hub.broadcast(room, frame("again")), 1);
        assert!(received(&mut a_client).await.is_empty());
        assert_eq!(received(&mut b_client).await, ["again"]);
        assert_eq!(hub.unregister(b.id), vec![room]);
        assert_eq!(hub.broadcast(room, frame("nobody")), 0);
    }

    #[tokio::test]
    async fn sessions_list_a_users_connections_and_rooms() {
        let hub = hub(HubLimits::default());
        let (stream, _client) = socket().await;
        let user = Id::new();
        let connection = hub
            .register(user, "u".into(), HERE, stream.clone())
            .unwrap();
        hub.register(Id::new(), "v".into(), HERE, stream).unwrap();
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
        let hub = hub(HubLimits::default());
        let (connection, _client) = connect(&hub).await;
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
