//! The Redis bus: sequencing, durable hand-off and cross-pod fan-out for many
//! chat pods, on one Redis or a Redis Cluster.
//!
//! One Lua script does, atomically: dedupe by client_id, `INCR` the room's seq,
//! add the message to the room's log (the recent messages `resume` reads),
//! queue it on the persist stream and publish it, for every message a pod's
//! clients posted since its previous call (group commit, [`append`]). Because
//! Redis runs scripts one at a time, every pod sees a room's messages in seq
//! order. A message is acked once the script has run: it is in the stream
//! (Redis with AOF keeps it through a restart), and the persist workers
//! ([`persist`]) move it into the store in batches with idempotent writes,
//! claiming what a dead pod left pending. A pod subscribes only to the
//! channels of rooms it has local subscribers in. In a cluster a room's keys
//! and its sharded channel live on one shard ([`keys`]), each shard has its
//! own persist stream, and a message travels only through its room's shard
//! ([`connection`]).

mod append;
pub mod connection;
mod keys;
pub mod owner;
mod persist;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamRangeReply;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use self::append::{APPEND_BATCH, PendingAppend, RECHECK_SECS, commit, status};
pub use self::append::{Durability, FAILOVER_SEQ_GAP};
use self::connection::{Commands, Layout, PERSIST_STREAMS, Target, bounded};
use self::keys::{
    NOTICES, channel, legacy_seq_key, log_key, recheck_key, room_of_channel, seq_key, sessions_key,
};
use super::{Audience, Bus, BusError, Deliver, split_at_seq};
use crate::metrics::Metrics;
use crate::model::{Id, Message, MessageKind, Session, ThreadRole};
use crate::store::Store;
use crate::sync::lock;
use crate::wire::frames::encode;

pub use self::connection::PERSIST_STREAM;

/// Each pod rewrites its sessions this often; a session not rewritten for
/// `SESSION_TTL` belongs to a dead pod and is ignored.
const SESSION_HEARTBEAT: Duration = Duration::from_secs(15);
const SESSION_TTL: Duration = Duration::from_secs(45);
/// How often a pod in a cluster rereads the slot map and looks for persist
/// streams it does not drain yet.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(10);
/// After a pub/sub connection to a node dropped, the resubscriptions redis-rs
/// makes by itself within this long each repair their room.
const REPAIR_WINDOW: Duration = Duration::from_secs(60);
/// How often the pub/sub connection to one Redis is pinged: a server gone
/// without closing (its node lost) shows within this and a timeout, rather
/// than when TCP gives up, many minutes later.
const PUBSUB_PING: Duration = Duration::from_secs(5);

/// A session as stored in Redis: with the time its pod must refresh it by.
#[derive(serde::Serialize, Deserialize)]
struct StoredSession {
    #[serde(flatten)]
    session: Session,
    expires_at: i64,
}

fn stored(session: &Session) -> String {
    let ttl = i64::try_from(SESSION_TTL.as_secs()).unwrap_or(i64::MAX);
    let expires_at = time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .saturating_add(ttl);
    // Plain strings, ids and numbers: serializing cannot fail.
    serde_json::to_string(&StoredSession {
        session: session.clone(),
        expires_at,
    })
    .unwrap_or_default()
}

fn unavailable(error: redis::RedisError) -> BusError {
    BusError::Unavailable(error.to_string())
}

fn parse_message(payload: &str) -> Result<Message, BusError> {
    serde_json::from_str(payload)
        .map_err(|e| BusError::Internal(format!("corrupt message from redis: {e}")))
}

/// The pub/sub side: a dedicated connection on one Redis; on a cluster, a
/// RESP3 cluster connection with sharded subscriptions.
#[derive(Clone)]
enum Subscriber {
    Single(PubSubSink),
    Cluster(ClusterConnection),
}

impl Subscriber {
    async fn subscribe(&mut self, room: Id) -> redis::RedisResult<()> {
        match self {
            Self::Single(sink) => bounded(sink.subscribe(channel(room))).await,
            Self::Cluster(connection) => connection.ssubscribe(channel(room)).await,
        }
    }

    async fn unsubscribe(&mut self, room: Id) -> redis::RedisResult<()> {
        match self {
            Self::Single(sink) => bounded(sink.unsubscribe(channel(room))).await,
            Self::Cluster(connection) => connection.sunsubscribe(channel(room)).await,
        }
    }
}

pub struct RedisBus {
    target: Target,
    commands: Commands,
    layout: Arc<Layout>,
    /// Messages waiting for the committer's next script call.
    appends: mpsc::Sender<PendingAppend>,
    store: Arc<dyn Store>,
    hub: Arc<dyn Deliver>,
    pod: String,
    /// Rooms this pod wants, re-subscribed after a reconnect.
    wanted: Mutex<HashSet<Id>>,
    /// The live pub/sub connection, absent while Redis is unreachable.
    sink: Mutex<Option<Subscriber>>,
    /// Per wanted room, the newest seq handed to local subscribers: where a
    /// repair starts after the pub/sub connection was lost.
    delivered: Mutex<HashMap<Id, u64>>,
    /// The persist streams this pod runs a worker for.
    workers: Mutex<HashSet<String>>,
    /// Each persist stream's messages not yet in the store, summed into the
    /// backlog gauge.
    backlogs: Mutex<HashMap<String, i64>>,
    metrics: Arc<Metrics>,
}

/// A frame on the notices channel and whose connections it is for.
#[derive(serde::Serialize, Deserialize)]
struct Notice {
    audience: Audience,
    frame: String,
}

/// Frames on a room channel: messages carry a seq; `_evict` is a control frame.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    room_id: Id,
    seq: Option<u64>,
    user_id: Option<Id>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    timestamp: Option<crate::model::Timestamp>,
    reply_to: Option<u64>,
    target_seq: Option<u64>,
}

impl RedisBus {
    /// Connects and starts the pub/sub listener, the committer and the
    /// persist workers. Fails if Redis cannot be reached now; later outages
    /// are survived.
    pub async fn start(
        target: Target,
        store: Arc<dyn Store>,
        hub: Arc<dyn Deliver>,
        pod: &str,
        metrics: Arc<Metrics>,
        dedupe_ttl: Duration,
        durability: Durability,
    ) -> Result<Arc<Self>, BusError> {
        if durability.replicas > 0 && target.is_cluster() {
            return Err(BusError::Unavailable(
                "waiting for replicas (CHAT_REDIS_MIN_REPLICAS) is not supported on a Redis Cluster; set it to 0".into(),
            ));
        }
        let mut commands = target.connect().await.map_err(unavailable)?;
        let layout = Arc::new(Layout::of(&mut commands).await.map_err(unavailable)?);
        let (appends, queue) = mpsc::channel(4 * APPEND_BATCH);
        // Its own connection: WAIT blocks every command behind it.
        let committer = target
            .connect_waiting(durability.timeout)
            .await
            .map_err(unavailable)?;
        tokio::spawn(commit(
            committer,
            layout.clone(),
            queue,
            dedupe_ttl,
            durability,
        ));
        let bus = Arc::new(Self {
            target: target.clone(),
            commands,
            layout,
            appends,
            store,
            hub,
            pod: pod.to_owned(),
            wanted: Mutex::default(),
            sink: Mutex::default(),
            delivered: Mutex::default(),
            workers: Mutex::default(),
            backlogs: Mutex::default(),
            metrics,
        });
        bus.drain_streams().await?;
        match target {
            Target::Single(_) | Target::Sentinel(_) => {
                tokio::spawn(listen(Arc::downgrade(&bus)));
            }
            Target::Cluster { .. } => {
                tokio::spawn(listen_sharded(Arc::downgrade(&bus)));
                tokio::spawn(listen_notices_sharded(Arc::downgrade(&bus)));
                tokio::spawn(follow_topology(Arc::downgrade(&bus)));
            }
        }
        tokio::spawn(heartbeat(Arc::downgrade(&bus), pod.to_owned()));
        Ok(bus)
    }

    /// Starts a persist worker for every stream appends go to now and, in a
    /// cluster, every stream a previous slot map had (it may hold entries).
    async fn drain_streams(self: &Arc<Self>) -> Result<(), BusError> {
        let mut streams = self.layout.streams();
        if self.target.is_cluster() {
            let mut commands = self.commands.clone();
            commands
                .sadd::<_, _, ()>(PERSIST_STREAMS, &streams)
                .await
                .map_err(unavailable)?;
            let known: Vec<String> = commands
                .smembers(PERSIST_STREAMS)
                .await
                .map_err(unavailable)?;
            streams.extend(known);
            streams.sort_unstable();
            streams.dedup();
        }
        for stream in streams {
            if lock(&self.workers).contains(&stream) {
                continue;
            }
            // A blocking XREADGROUP would stall every command multiplexed
            // with it, so each worker has a connection of its own.
            let mut worker = self.target.connect().await.map_err(unavailable)?;
            persist::create_group(&mut worker, &stream)
                .await
                .map_err(unavailable)?;
            lock(&self.workers).insert(stream.clone());
            tokio::spawn(persist::persist(
                Arc::downgrade(self),
                worker,
                stream,
                self.pod.clone(),
            ));
        }
        Ok(())
    }

    fn backlog(&self, stream: &str, length: i64) {
        let mut backlogs = lock(&self.backlogs);
        backlogs.insert(stream.to_owned(), length);
        self.metrics.persist_backlog.set(backlogs.values().sum());
    }

    /// A frame from a room channel, for the local subscribers of that room.
    fn deliver(&self, payload: String) {
        let envelope: Envelope = match serde_json::from_str(&payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable frame on a room channel");
                return;
            }
        };
        let room = envelope.room_id;
        let kind = MessageKind::from_name(&envelope.kind);
        match (kind, envelope.kind.as_str(), envelope.seq) {
            (Some(kind), _, Some(seq)) => {
                let role = ThreadRole::of(kind, envelope.reply_to, envelope.target_seq);
                self.deliver_message(
                    room,
                    seq,
                    envelope.timestamp,
                    role,
                    Utf8Bytes::from(payload),
                );
            }
            (_, "_evict", _) => self.hub.evict(room, envelope.user_id),
            _ => {
                self.hub.event(room, Utf8Bytes::from(payload));
            }
        }
    }

    /// A frame from the notices channel, for the local connections of its audience.
    fn deliver_notice(&self, payload: &str) {
        match serde_json::from_str::<Notice>(payload) {
            Ok(notice) => self
                .hub
                .notice(&notice.audience, &Utf8Bytes::from(notice.frame)),
            Err(e) => tracing::warn!(error = %e, "unreadable frame on the notices channel"),
        }
    }

    fn deliver_message(
        &self,
        room: Id,
        seq: u64,
        accepted: Option<crate::model::Timestamp>,
        role: ThreadRole,
        frame: Utf8Bytes,
    ) {
        if let Some(newest) = lock(&self.delivered).get_mut(&room) {
            *newest = (*newest).max(seq);
        }
        self.hub.message(room, seq, accepted, role, frame);
    }

    /// After the pub/sub connection came back: hands local subscribers what was
    /// published while it was down, before anything newer (the caller has
    /// subscribed but not read yet), so nobody sees a gap. Connections drop
    /// what they already have.
    async fn repair(&self) {
        let rooms: Vec<Id> = lock(&self.delivered).keys().copied().collect();
        for room in rooms {
            self.repair_room(room).await;
        }
    }

    async fn repair_room(&self, room: Id) {
        let Some(after) = lock(&self.delivered).get(&room).copied() else {
            return;
        };
        // After a failover the first command meets the old primary's dead
        // connection, which it replaces: once more on the new one.
        let repaired = match self.missed_since(room, after).await {
            Err(BusError::Unavailable(_)) => self.missed_since(room, after).await,
            repaired => repaired,
        };
        match repaired {
            Ok(missed) => {
                for message in missed {
                    self.deliver_message(
                        room,
                        message.seq,
                        Some(message.timestamp),
                        message.thread_role(),
                        encode(&message),
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, %room, "cannot repair a room after reconnecting")
            }
        }
    }

    /// What was published to `room` after seq `after`, for a repair.
    async fn missed_since(&self, room: Id, after: u64) -> Result<Vec<Message>, BusError> {
        let newest = self.newest_seq(room).await?;
        self.missed(room, after, newest, usize::MAX)
            .await?
            .ok_or_else(|| {
                BusError::Internal(format!(
                    "more than {} messages missed; clients will resume",
                    crate::bus::MAX_RESUME
                ))
            })
    }

    /// Counts a Redis failure the caller reports to its client.
    fn failed(&self, error: redis::RedisError) -> BusError {
        self.metrics.bus_errors.inc();
        unavailable(error)
    }

    /// The message a retry names by its seq, once it has left the room's
    /// log: from the store, where it is unless the persist stream has not
    /// reached it yet (then the client is asked to retry later).
    async fn retried(&self, room: Id, seq: &str) -> Result<Message, BusError> {
        let seq: u64 = seq
            .parse()
            .map_err(|_| BusError::Internal(format!("corrupt dedupe entry {seq:?}")))?;
        self.missed(room, seq.saturating_sub(1), seq, usize::MAX)
            .await?
            .into_iter()
            .flatten()
            .find(|message| message.seq == seq)
            .ok_or_else(|| {
                BusError::Unavailable("the original of this retry is not stored yet".into())
            })
    }

    /// Where a room's missing counter starts: above the store's newest seq,
    /// the newest in the room's log and the counter of the previous key
    /// layout, since acked messages may not be persisted yet.
    async fn seq_floor(&self, room: Id) -> Result<u64, BusError> {
        let stored = self.store.newest_seq(room).await?;
        let mut commands = self.commands.clone();
        let legacy: Option<u64> = commands
            .get(legacy_seq_key(room))
            .await
            .map_err(unavailable)?;
        let logged: StreamRangeReply = commands
            .xrevrange_count(log_key(room), "+", "-", 1)
            .await
            .map_err(unavailable)?;
        let logged = logged
            .ids
            .first()
            .and_then(|entry| entry.id.split('-').next()?.parse().ok());
        Ok(stored.max(legacy.unwrap_or(0)).max(logged.unwrap_or(0)))
    }

    async fn publish(&self, room: Id, payload: &str) -> redis::RedisResult<()> {
        let mut commands = self.commands.clone();
        redis::cmd(commands.publish_command())
            .arg(channel(room))
            .arg(payload)
            .query_async(&mut commands)
            .await
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Option<Result<(), BusError>> {
        let mut commands = self.commands.clone();
        let pong: redis::RedisResult<()> = redis::cmd("PING").query_async(&mut commands).await;
        // The category only: a connection error may name the URL.
        Some(pong.map_err(|e| BusError::Unavailable(e.category().to_owned())))
    }

    async fn append(&self, draft: Message, dedupe: Option<String>) -> Result<Message, BusError> {
        let room = draft.room_id;
        let (head, tail) = split_at_seq(&draft)?;
        let mut floor: i64 = -1;
        let mut checked = false;
        for _ in 0..4 {
            let (done, outcome) = oneshot::channel();
            let pending = PendingAppend {
                room,
                head: head.clone(),
                tail: tail.clone(),
                dedupe: dedupe.clone(),
                floor,
                checked,
                done,
            };
            let stopped = || BusError::Internal("the redis committer stopped".into());
            self.appends.send(pending).await.map_err(|_| stopped())?;
            let (status, payload) = outcome.await.map_err(|_| stopped())?.inspect_err(|_| {
                self.metrics.bus_errors.inc();
            })?;
            match status {
                // First message since Redis lost or never had the counter: carry on
                // from what the store holds, never reusing a seq.
                status::NO_COUNTER => {
                    floor = i64::try_from(self.seq_floor(room).await?).unwrap_or(i64::MAX)
                }
                // Redis may have lost this room's dedupe keys: a retry of a
                // message already stored is answered with it.
                status::CHECK_STORE => {
                    if let Some(key) = &dedupe
                        && let Some(stored) = self.store.deduplicated(room, key).await?
                    {
                        return Ok(stored);
                    }
                    checked = true;
                }
                // The committer has reread the slot map; send it again.
                status::MOVED => {}
                status::NEW => {
                    let seq = payload.parse().map_err(|_| {
                        BusError::Internal(format!("the append script answered seq {payload:?}"))
                    })?;
                    return Ok(Message { seq, ..draft });
                }
                status::RETRY_ELSEWHERE => return self.retried(room, &payload).await,
                status::RETRY => return parse_message(&payload),
                other => {
                    return Err(BusError::Internal(format!(
                        "the append script answered status {other}"
                    )));
                }
            }
        }
        Err(BusError::Internal(
            "the seq counter could not be initialised".into(),
        ))
    }

    async fn newest_seq(&self, room: Id) -> Result<u64, BusError> {
        let mut commands = self.commands.clone();
        let current: Option<u64> = commands.get(seq_key(room)).await.map_err(unavailable)?;
        match current {
            Some(seq) => Ok(seq),
            None => {
                let stored = self.seq_floor(room).await?;
                let restored: bool = commands
                    .set_nx(seq_key(room), stored)
                    .await
                    .map_err(unavailable)?;
                if restored && stored > 0 {
                    // As the append script does when it restores a counter.
                    let _: () = commands
                        .set_ex(recheck_key(room), 1, RECHECK_SECS)
                        .await
                        .map_err(unavailable)?;
                }
                Ok(commands
                    .get::<_, Option<u64>>(seq_key(room))
                    .await
                    .map_err(unavailable)?
                    .unwrap_or(stored))
            }
        }
    }

    async fn missed(
        &self,
        room: Id,
        after: u64,
        upto: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<Message>>, BusError> {
        if upto <= after {
            return Ok(Some(Vec::new()));
        }
        let mut budget = crate::bus::ReadBudget::new(max_bytes);
        let mut commands = self.commands.clone();
        let mut recent = Vec::new();
        let mut from = after + 1;
        // The log a chunk at a time, so a resume from far behind stops at
        // its budget instead of reading up to 1,000 messages first.
        while from <= upto {
            let chunk: StreamRangeReply = commands
                .xrange_count(log_key(room), from, upto, crate::bus::READ_CHUNK)
                .await
                .map_err(unavailable)?;
            for entry in &chunk.ids {
                let payload: String = entry.get("m").ok_or_else(|| {
                    BusError::Internal(format!("log entry {} has no message", entry.id))
                })?;
                if !budget.spend(payload.len()) {
                    return Ok(None);
                }
                let message = parse_message(&payload)?;
                from = message.seq + 1;
                recent.push(message);
            }
            if (chunk.ids.len() as u64) < crate::bus::READ_CHUNK {
                break;
            }
        }
        // The log holds the newest messages; older ones come from the store.
        let covered_from = recent.first().map_or(upto + 1, |m| m.seq);
        if covered_from > after + 1 {
            let Some(mut older) = crate::bus::stored_between(
                self.store.as_ref(),
                room,
                after,
                covered_from,
                &mut budget,
            )
            .await?
            else {
                return Ok(None);
            };
            older.append(&mut recent);
            recent = older;
        }
        Ok(Some(recent))
    }

    async fn subscribe(&self, room: Id) -> Result<(), BusError> {
        lock(&self.wanted).insert(room);
        let sink = lock(&self.sink).clone();
        match sink {
            Some(mut sink) => sink.subscribe(room).await.map_err(|e| self.failed(e))?,
            None => {
                return Err(BusError::Unavailable(
                    "not connected to redis pub/sub".into(),
                ));
            }
        }
        if !lock(&self.delivered).contains_key(&room) {
            let newest = self.newest_seq(room).await?;
            lock(&self.delivered).entry(room).or_insert(newest);
        }
        Ok(())
    }

    async fn unsubscribe(&self, room: Id) {
        lock(&self.wanted).remove(&room);
        lock(&self.delivered).remove(&room);
        let sink = lock(&self.sink).clone();
        if let Some(mut sink) = sink
            && let Err(e) = sink.unsubscribe(room).await
        {
            tracing::debug!(error = %e, %room, "redis unsubscribe failed");
        }
    }

    async fn publish_event(&self, room: Id, frame: Utf8Bytes) {
        if let Err(e) = self.publish(room, frame.as_str()).await {
            // Other pods miss this typing/presence frame; local members still get it.
            self.metrics.bus_errors.inc();
            tracing::warn!(error = %e, %room, "redis publish failed; delivering locally only");
            self.hub.event(room, frame);
        }
    }

    async fn notify(&self, audience: Audience, frame: Utf8Bytes) {
        let notice = Notice {
            audience,
            frame: frame.as_str().to_owned(),
        };
        // An audience and a string: serializing cannot fail.
        let payload = serde_json::to_string(&notice).unwrap_or_default();
        let mut commands = self.commands.clone();
        let published: redis::RedisResult<()> = redis::cmd(commands.publish_command())
            .arg(NOTICES)
            .arg(&payload)
            .query_async(&mut commands)
            .await;
        if let Err(e) = published {
            // Other pods miss it (their clients find the room on their next
            // list); local connections still get it.
            self.metrics.bus_errors.inc();
            tracing::warn!(error = %e, "redis publish of a room-list notice failed; delivering locally only");
            self.hub.notice(&notice.audience, &frame);
        }
    }

    async fn evict(&self, room: Id, user: Option<Id>) {
        let frame =
            serde_json::json!({"type": "_evict", "room_id": room, "user_id": user}).to_string();
        if let Err(e) = self.publish(room, &frame).await {
            self.metrics.bus_errors.inc();
            tracing::warn!(error = %e, %room, "redis publish failed; evicting locally only");
            self.hub.evict(room, user);
        }
    }

    async fn session_changed(&self, session: &Session) {
        let mut commands = self.commands.clone();
        let key = sessions_key(session.user_id);
        let written: redis::RedisResult<()> = redis::pipe()
            .hset(&key, &session.connection_id, stored(session))
            .ignore()
            .expire(
                &key,
                i64::try_from(SESSION_TTL.as_secs()).unwrap_or(i64::MAX),
            )
            .ignore()
            .query_async(&mut commands)
            .await;
        if let Err(e) = written {
            self.metrics.bus_errors.inc();
            tracing::warn!(error = %e, "cannot record a session in redis");
        }
    }

    async fn session_closed(&self, user: Id, connection_id: &str) {
        let mut commands = self.commands.clone();
        if let Err(e) = commands
            .hdel::<_, _, ()>(sessions_key(user), connection_id)
            .await
        {
            self.metrics.bus_errors.inc();
            tracing::warn!(error = %e, "cannot remove a session from redis");
        }
    }

    async fn sessions_of(&self, user: Id) -> Result<Vec<Session>, BusError> {
        let mut commands = self.commands.clone();
        let all: std::collections::HashMap<String, String> = commands
            .hgetall(sessions_key(user))
            .await
            .map_err(unavailable)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (field, value) in all {
            match serde_json::from_str::<StoredSession>(&value) {
                Ok(stored) if stored.expires_at > now => live.push(stored.session),
                _ => stale.push(field),
            }
        }
        if !stale.is_empty() {
            let _: redis::RedisResult<()> = commands.hdel(sessions_key(user), stale).await;
        }
        live.sort_by_key(|s| s.connected_at);
        Ok(live)
    }
}

/// Rewrites this pod's sessions before they expire, so a pod that dies takes
/// its sessions with it within `SESSION_TTL`.
async fn heartbeat(bus: Weak<RedisBus>, pod: String) {
    let mut tick = tokio::time::interval(SESSION_HEARTBEAT);
    loop {
        tick.tick().await;
        let Some(this) = bus.upgrade() else { return };
        for session in this.hub.sessions(&pod, None) {
            this.session_changed(&session).await;
        }
    }
}

/// Keeps a pub/sub connection up, subscribed to the wanted rooms, and hands
/// what arrives to the hub. Reconnects with backoff when Redis goes away
/// (behind Sentinel, to whichever server is the primary then).
async fn listen(bus: Weak<RedisBus>) {
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let stream = {
            let Some(this) = bus.upgrade() else { return };
            // Behind Sentinel, the primary of now: after a failover, the new one.
            match this.target.pubsub().await {
                Ok(pubsub) => {
                    let (mut sink, stream) = pubsub.split();
                    let mut channels: Vec<String> =
                        lock(&this.wanted).iter().copied().map(channel).collect();
                    let rooms = channels.len();
                    channels.push(NOTICES.to_owned());
                    let subscribed = bounded(sink.subscribe(&channels)).await;
                    match subscribed {
                        Ok(()) => {
                            *lock(&this.sink) = Some(Subscriber::Single(sink.clone()));
                            if lost {
                                tracing::info!(rooms, "redis pub/sub reconnected");
                                // Evictions published while it was down never came.
                                this.hub.lost();
                                this.repair().await;
                            }
                            backoff = Duration::from_millis(100);
                            Some((sink, stream))
                        }
                        Err(e) => {
                            this.metrics.bus_errors.inc();
                            tracing::warn!(error = %e, "redis resubscribe failed");
                            None
                        }
                    }
                }
                Err(e) => {
                    if !lost {
                        this.metrics.bus_errors.inc();
                        tracing::warn!(error = %e, "redis pub/sub unreachable; cross-pod delivery paused");
                    }
                    None
                }
            }
        };
        if let Some((mut sink, mut stream)) = stream {
            let mut ping = tokio::time::interval(PUBSUB_PING);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else { break };
                        let Some(this) = bus.upgrade() else { return };
                        match message.get_payload::<String>() {
                            Ok(payload) if message.get_channel_name() == NOTICES => {
                                this.deliver_notice(&payload)
                            }
                            Ok(payload) => this.deliver(payload),
                            Err(e) => tracing::warn!(error = %e, "unreadable pub/sub payload"),
                        }
                    }
                    _ = ping.tick() => {
                        if let Err(e) = bounded(sink.ping::<redis::Value>()).await {
                            tracing::debug!(error = %e, "redis pub/sub ping failed");
                            break;
                        }
                    }
                }
            }
            let Some(this) = bus.upgrade() else { return };
            *lock(&this.sink) = None;
            this.hub.lost();
            this.metrics.bus_errors.inc();
            tracing::warn!(
                "redis pub/sub connection lost; cross-pod delivery paused until it returns"
            );
        }
        lost = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The cluster's notices channel, on a subscriber connection of its own,
/// apart from the rooms': a room's resubscription after its master restarts
/// must not depend on a channel of another node.
async fn listen_notices_sharded(bus: Weak<RedisBus>) {
    let (pushes, mut received) = mpsc::unbounded_channel();
    let mut backoff = Duration::from_millis(100);
    // Kept for the connection's life: dropping it would end the subscription.
    let _connection = loop {
        let Some(this) = bus.upgrade() else { return };
        let subscribed = match this.target.subscriber(pushes.clone()).await {
            Ok(mut connection) => connection.ssubscribe(NOTICES).await.map(|()| connection),
            Err(e) => Err(e),
        };
        match subscribed {
            Ok(connection) => break connection,
            Err(e) => {
                this.metrics.bus_errors.inc();
                tracing::warn!(error = %e, "redis cluster notices channel unreachable; room lists update on reload only");
            }
        }
        drop(this);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    while let Some(push) = received.recv().await {
        let Some(this) = bus.upgrade() else { return };
        if push.kind == redis::PushKind::SMessage {
            match push.data.get(1).map(redis::from_redis_value_ref::<String>) {
                Some(Ok(payload)) => this.deliver_notice(&payload),
                _ => tracing::warn!("unreadable notice on the notices channel"),
            }
        }
    }
}

/// The cluster's pub/sub: sharded subscriptions on a RESP3 cluster
/// connection, whose messages arrive as pushes. redis-rs reconnects to a node
/// and resubscribes by itself; each resubscription after a disconnection
/// repairs its room, as [`listen`] does after a reconnect.
async fn listen_sharded(bus: Weak<RedisBus>) {
    let (pushes, mut received) = mpsc::unbounded_channel();
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(this) = bus.upgrade() else { return };
        match this.target.subscriber(pushes.clone()).await {
            Ok(connection) => {
                let mut subscriber = Subscriber::Cluster(connection);
                let rooms: Vec<Id> = lock(&this.wanted).iter().copied().collect();
                for room in rooms {
                    if let Err(e) = subscriber.subscribe(room).await {
                        tracing::warn!(error = %e, %room, "redis ssubscribe failed");
                    }
                }
                *lock(&this.sink) = Some(subscriber);
                break;
            }
            Err(e) => {
                this.metrics.bus_errors.inc();
                tracing::warn!(error = %e, "redis cluster pub/sub unreachable; cross-pod delivery paused");
            }
        }
        drop(this);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    let mut disconnected: Option<tokio::time::Instant> = None;
    while let Some(push) = received.recv().await {
        let Some(this) = bus.upgrade() else { return };
        match push.kind {
            redis::PushKind::SMessage => match push.data.get(1).map(redis::from_redis_value_ref) {
                Some(Ok(payload)) => this.deliver(payload),
                _ => tracing::warn!("unreadable sharded pub/sub message"),
            },
            redis::PushKind::Disconnection => {
                disconnected = Some(tokio::time::Instant::now());
                this.hub.lost();
                this.metrics.bus_errors.inc();
                tracing::warn!(
                    "a redis cluster pub/sub connection dropped; it resubscribes when the node is back"
                );
            }
            redis::PushKind::SSubscribe
                if disconnected.is_some_and(|at| at.elapsed() < REPAIR_WINDOW) =>
            {
                let room = push
                    .data
                    .first()
                    .and_then(|name| redis::from_redis_value_ref::<String>(name).ok())
                    .and_then(|name| room_of_channel(&name));
                if let Some(room) = room {
                    // Evictions published while it was down never came.
                    this.hub.lost();
                    this.repair_room(room).await;
                }
            }
            _ => {}
        }
    }
}

/// Follows the cluster's slot map, so appends go to the shard that holds a
/// room after a resharding and every persist stream keeps a worker.
async fn follow_topology(bus: Weak<RedisBus>) {
    let mut tick = tokio::time::interval(TOPOLOGY_REFRESH);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(this) = bus.upgrade() else { return };
        let mut commands = this.commands.clone();
        this.layout.refresh(&mut commands).await;
        if let Err(e) = this.drain_streams().await {
            tracing::warn!(error = %e, "cannot start the persist workers of new streams");
        }
    }
}
