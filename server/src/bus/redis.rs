//! The Redis bus: sequencing, durable hand-off and cross-pod fan-out for many
//! chat pods.
//!
//! One Lua script does, atomically: dedupe by client_id, `INCR` the room's seq,
//! `XADD` the message to the persistence stream, add it to the room's log (the
//! recent messages `resume` reads) and `PUBLISH` it, for every message a pod's
//! clients posted since its previous call (group commit). Because Redis runs
//! scripts one at a time, every pod sees a room's messages in seq order. A
//! message is acked once the script has run: it is in the stream (Redis with
//! AOF keeps it through a restart), and the persist worker moves it into the
//! store in batches with idempotent writes, claiming what a dead pod left
//! pending. A pod subscribes only to the channels of rooms it has local
//! subscribers in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, Script};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::{Bus, BusError, split_at_seq};
use crate::metrics::Metrics;
use crate::model::{HistoryQuery, Id, Message};
use crate::store::Store;
use crate::sync::lock;
use crate::ws::hub::{Hub, Outbound, Session};
use crate::ws::protocol::encode;

/// The stream of acked messages waiting to be written to the store.
pub const PERSIST_STREAM: &str = "chat:persist";
const PERSIST_GROUP: &str = "chat-persist";
/// Messages kept in a room's log for fast resume (approximately: the
/// stream is trimmed a node at a time).
const RECENT_LEN: usize = 1000;
/// How long a client_id is remembered for retries.
const DEDUPE_TTL_SECS: u64 = 24 * 3600;
/// Entries pending this long belong to a dead pod and are claimed.
const CLAIM_IDLE_MS: u64 = 30_000;
/// Stream entries per persist batch; each holds the messages of one append
/// call, up to `APPEND_BATCH`.
const PERSIST_BATCH: usize = 100;
/// Each pod rewrites its sessions this often; a session not rewritten for
/// `SESSION_TTL` belongs to a dead pod and is ignored.
const SESSION_HEARTBEAT: Duration = Duration::from_secs(15);
const SESSION_TTL: Duration = Duration::from_secs(45);

/// Appends a batch of messages, in order.
/// KEYS: the persist stream, then per message its room's seq, log and dedupe
/// keys. ARGV: log length, dedupe ttl, then per message: floor, head, tail,
/// channel, whether to dedupe. Returns per message {status, value}: 1 new
/// (value is its seq), 0 a retry (value is the first message), 3 a retry of a
/// message no longer in the log (value is its seq), 2 the seq counter is
/// missing and the caller must pass the store's newest seq as the floor.
///
/// Redis spends more on each call (a read, a script set-up, an AOF write and
/// a reply) than on the commands inside, so a pod sends what its clients
/// posted meanwhile in one call, and the batch is one entry of the persist
/// stream (payloads joined by newlines, which JSON escapes). The room's log
/// is a stream whose ids are the seqs: `XADD` with an explicit id and
/// approximate trimming costs less than a sorted set of whole payloads, and
/// `resume` reads it with `XRANGE`. The dedupe key holds only the seq. The
/// log's expiry is renewed when it is created and every 64 messages.
const APPEND: &str = r"
local out, persisted = {}, {}
local log_len, ttl = ARGV[1], ARGV[2]
for i = 0, (#KEYS - 1) / 3 - 1 do
  local seq_key, log_key, dedupe_key = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
  local floor, dedupe = ARGV[3 + 5 * i], ARGV[7 + 5 * i] == '1'
  local previous = dedupe and redis.call('GET', dedupe_key)
  if previous then
    local first = redis.call('XRANGE', log_key, previous, previous)
    if first[1] then
      out[i + 1] = {0, first[1][2][2]}
    else
      out[i + 1] = {3, previous}
    end
  else
    if floor ~= '-1' then redis.call('SET', seq_key, floor, 'NX') end
    local seq = redis.call('INCR', seq_key)
    if seq == 1 and floor == '-1' then
      -- A new room, or Redis lost the counter: only the store can tell.
      redis.call('DEL', seq_key)
      out[i + 1] = {2, ''}
    else
      local payload = ARGV[4 + 5 * i] .. seq .. ARGV[5 + 5 * i]
      persisted[#persisted + 1] = payload
      local id = seq .. '-0'
      local added = redis.pcall('XADD', log_key, 'MAXLEN', '~', log_len, id, 'm', payload)
      if type(added) == 'table' and added.err then
        -- The log outlived its counter and holds higher seqs: start it anew.
        redis.call('DEL', log_key)
        redis.call('XADD', log_key, id, 'm', payload)
      end
      if seq % 64 == 0 or redis.call('XLEN', log_key) == 1 then
        redis.call('EXPIRE', log_key, ttl)
      end
      redis.call('PUBLISH', ARGV[6 + 5 * i], payload)
      if dedupe then redis.call('SET', dedupe_key, seq, 'EX', ttl) end
      out[i + 1] = {1, tostring(seq)}
    end
  end
end
if persisted[1] then
  redis.call('XADD', KEYS[1], '*', 'b', table.concat(persisted, '\n'))
end
return out
";

/// The most messages one script call carries.
const APPEND_BATCH: usize = 64;
/// While messages keep coming, a pod calls the append script at most this
/// often, so each call carries what arrived meanwhile; a message after a
/// quiet spell goes out at once. A few milliseconds of latency under load
/// buy Redis several times fewer calls, syscalls and AOF writes.
const APPEND_LINGER: Duration = Duration::from_millis(2);

// A room's keys share the room id as their hash tag, so in a Redis Cluster
// they live on one shard with the room's channel.

fn channel(room: Id) -> String {
    format!("chat:room:{{{room}}}")
}

fn seq_key(room: Id) -> String {
    format!("chat:room:{{{room}}}:seq")
}

/// Before the keys had hash tags; read once when a room's counter is missing
/// so an upgrade never reuses a seq acked but not yet persisted.
fn legacy_seq_key(room: Id) -> String {
    format!("chat:room:{room}:seq")
}

fn log_key(room: Id) -> String {
    format!("chat:room:{{{room}}}:log")
}

fn dedupe_key(room: Id, key: &str) -> String {
    format!("chat:room:{{{room}}}:dedupe:{key}")
}

fn sessions_key(user: Id) -> String {
    format!("chat:sessions:{user}")
}

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

pub struct RedisBus {
    commands: ConnectionManager,
    /// Messages waiting for the committer's next script call.
    appends: mpsc::Sender<PendingAppend>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// Rooms this pod wants, re-subscribed after a reconnect.
    wanted: Mutex<HashSet<Id>>,
    /// The live pub/sub connection, absent while Redis is unreachable.
    sink: Mutex<Option<PubSubSink>>,
    /// Per wanted room, the newest seq handed to local subscribers: where a
    /// repair starts after the pub/sub connection was lost.
    delivered: Mutex<HashMap<Id, u64>>,
    metrics: Arc<Metrics>,
}

/// A message waiting for the committer, and where its outcome goes.
struct PendingAppend {
    room: Id,
    head: String,
    tail: String,
    dedupe: Option<String>,
    /// -1, or the seq to start the room's counter from if it is missing.
    floor: i64,
    done: oneshot::Sender<Result<(i64, String), BusError>>,
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
}

impl RedisBus {
    /// Connects and starts the pub/sub listener and the persist worker. Fails
    /// if Redis cannot be reached now; later outages are survived.
    pub async fn start(
        client: redis::Client,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        pod: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, BusError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let commands = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(unavailable)?;
        let mut setup = commands.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(PERSIST_STREAM)
            .arg(PERSIST_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut setup)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(unavailable(e));
        }
        // A blocking XREADGROUP would stall every command multiplexed with it,
        // so the worker has a connection of its own.
        let worker = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unavailable)?;
        let (appends, queue) = mpsc::channel(4 * APPEND_BATCH);
        tokio::spawn(commit(commands.clone(), queue));
        let bus = Arc::new(Self {
            commands,
            appends,
            store,
            hub,
            wanted: Mutex::default(),
            sink: Mutex::default(),
            delivered: Mutex::default(),
            metrics,
        });
        tokio::spawn(listen(Arc::downgrade(&bus), client));
        tokio::spawn(persist(Arc::downgrade(&bus), worker, pod.to_owned()));
        tokio::spawn(heartbeat(Arc::downgrade(&bus), pod.to_owned()));
        Ok(bus)
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
        match (envelope.kind.as_str(), envelope.seq) {
            ("text" | "system", Some(seq)) => {
                self.deliver_message(room, seq, Utf8Bytes::from(payload));
                if let Some(accepted) = envelope.timestamp {
                    self.metrics.observe_delivery(accepted);
                }
            }
            ("_evict", _) => self.hub.evict(room, envelope.user_id),
            _ => {
                self.hub
                    .broadcast(room, Outbound::event(room, Utf8Bytes::from(payload)));
            }
        }
    }

    fn deliver_message(&self, room: Id, seq: u64, frame: Utf8Bytes) {
        if let Some(newest) = lock(&self.delivered).get_mut(&room) {
            *newest = (*newest).max(seq);
        }
        self.hub
            .broadcast(room, Outbound::message(room, seq, frame));
    }

    /// After the pub/sub connection came back: hands local subscribers what was
    /// published while it was down, before anything newer (the caller has
    /// subscribed but not read yet), so nobody sees a gap. Connections drop
    /// what they already have.
    async fn repair(&self) {
        let rooms: Vec<(Id, u64)> = lock(&self.delivered)
            .iter()
            .map(|(room, seq)| (*room, *seq))
            .collect();
        for (room, after) in rooms {
            let repaired = async {
                let newest = self.newest_seq(room).await?;
                if newest.saturating_sub(after) > crate::chat::MAX_RESUME {
                    return Err(BusError::Internal(format!(
                        "{} messages missed; clients will resume",
                        newest - after
                    )));
                }
                self.missed(room, after, newest).await
            };
            match repaired.await {
                Ok(missed) => {
                    for message in missed {
                        self.deliver_message(room, message.seq, encode(&message));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, %room, "cannot repair a room after reconnecting")
                }
            }
        }
    }

    /// Counts a Redis failure the caller reports to its client.
    fn failed(&self, error: redis::RedisError) -> BusError {
        self.metrics.bus_errors.inc();
        unavailable(error)
    }

    /// The message a retry names by its seq, once it has left the recent
    /// buffer: from the store, where it is unless the persist stream has not
    /// reached it yet (then the client is asked to retry later).
    async fn retried(&self, room: Id, seq: &str) -> Result<Message, BusError> {
        let seq: u64 = seq
            .parse()
            .map_err(|_| BusError::Internal(format!("corrupt dedupe entry {seq:?}")))?;
        self.missed(room, seq.saturating_sub(1), seq)
            .await?
            .into_iter()
            .find(|message| message.seq == seq)
            .ok_or_else(|| {
                BusError::Unavailable("the original of this retry is not stored yet".into())
            })
    }

    /// Where a room's missing counter starts: the store's newest seq, or the
    /// counter the previous key layout left if it is higher (acked messages
    /// not persisted yet).
    async fn seq_floor(&self, room: Id) -> Result<u64, BusError> {
        let stored = self.store.newest_seq(room).await?;
        let mut commands = self.commands.clone();
        let legacy: Option<u64> = commands
            .get(legacy_seq_key(room))
            .await
            .map_err(unavailable)?;
        Ok(stored.max(legacy.unwrap_or(0)))
    }

    async fn publish(&self, room: Id, payload: &str) -> redis::RedisResult<()> {
        let mut commands = self.commands.clone();
        commands.publish::<_, _, ()>(channel(room), payload).await
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn append(&self, draft: Message, dedupe: Option<String>) -> Result<Message, BusError> {
        let room = draft.room_id;
        let (head, tail) = split_at_seq(&draft)?;
        let mut floor: i64 = -1;
        for _ in 0..3 {
            let (done, outcome) = oneshot::channel();
            let pending = PendingAppend {
                room,
                head: head.clone(),
                tail: tail.clone(),
                dedupe: dedupe.clone(),
                floor,
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
                2 => floor = i64::try_from(self.seq_floor(room).await?).unwrap_or(i64::MAX),
                1 => {
                    let seq = payload.parse().map_err(|_| {
                        BusError::Internal(format!("the append script answered seq {payload:?}"))
                    })?;
                    return Ok(Message { seq, ..draft });
                }
                3 => return self.retried(room, &payload).await,
                _ => return parse_message(&payload),
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
                let _: bool = commands
                    .set_nx(seq_key(room), stored)
                    .await
                    .map_err(unavailable)?;
                Ok(commands
                    .get::<_, Option<u64>>(seq_key(room))
                    .await
                    .map_err(unavailable)?
                    .unwrap_or(stored))
            }
        }
    }

    async fn missed(&self, room: Id, after: u64, upto: u64) -> Result<Vec<Message>, BusError> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let mut commands = self.commands.clone();
        let recent: StreamRangeReply = commands
            .xrange(log_key(room), after + 1, upto)
            .await
            .map_err(unavailable)?;
        let mut found = BTreeMap::new();
        for entry in &recent.ids {
            let payload: String = entry.get("m").ok_or_else(|| {
                BusError::Internal(format!("log entry {} has no message", entry.id))
            })?;
            let message = parse_message(&payload)?;
            found.insert(message.seq, message);
        }
        // The buffer holds the newest messages; older ones come from the store.
        let covered_from = found.keys().next().copied().unwrap_or(upto + 1);
        if covered_from > after + 1 {
            let limit = covered_from - after - 1;
            let page = self
                .store
                .messages(room, HistoryQuery::After { seq: after, limit })
                .await?;
            for message in page.messages.into_iter().filter(|m| m.seq < covered_from) {
                found.insert(message.seq, message);
            }
        }
        Ok(found.into_values().collect())
    }

    async fn subscribe(&self, room: Id) -> Result<(), BusError> {
        lock(&self.wanted).insert(room);
        let sink = lock(&self.sink).clone();
        match sink {
            Some(mut sink) => sink
                .subscribe(channel(room))
                .await
                .map_err(|e| self.failed(e))?,
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
            && let Err(e) = sink.unsubscribe(channel(room)).await
        {
            tracing::debug!(error = %e, %room, "redis unsubscribe failed");
        }
    }

    async fn publish_event(&self, room: Id, frame: Utf8Bytes) {
        if let Err(e) = self.publish(room, frame.as_str()).await {
            // Other pods miss this typing/presence frame; local members still get it.
            self.metrics.bus_errors.inc();
            tracing::warn!(error = %e, %room, "redis publish failed; delivering locally only");
            self.hub.broadcast(room, Outbound::event(room, frame));
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
        for session in this.hub.sessions(&pod, |_| true) {
            this.session_changed(&session).await;
        }
    }
}

/// Keeps a pub/sub connection up, subscribed to the wanted rooms, and hands
/// what arrives to the hub. Reconnects with backoff when Redis goes away.
async fn listen(bus: Weak<RedisBus>, client: redis::Client) {
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let stream = {
            let Some(this) = bus.upgrade() else { return };
            match client.get_async_pubsub().await {
                Ok(pubsub) => {
                    let (mut sink, stream) = pubsub.split();
                    let rooms: Vec<String> =
                        lock(&this.wanted).iter().copied().map(channel).collect();
                    let subscribed = if rooms.is_empty() {
                        Ok(())
                    } else {
                        sink.subscribe(&rooms).await
                    };
                    match subscribed {
                        Ok(()) => {
                            *lock(&this.sink) = Some(sink);
                            if lost {
                                tracing::info!(rooms = rooms.len(), "redis pub/sub reconnected");
                                this.repair().await;
                            }
                            backoff = Duration::from_millis(100);
                            Some(stream)
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
        if let Some(mut stream) = stream {
            while let Some(message) = stream.next().await {
                let Some(this) = bus.upgrade() else { return };
                match message.get_payload::<String>() {
                    Ok(payload) => this.deliver(payload),
                    Err(e) => tracing::warn!(error = %e, "unreadable pub/sub payload"),
                }
            }
            let Some(this) = bus.upgrade() else { return };
            *lock(&this.sink) = None;
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

/// Up to a batch of this consumer's entries: with `pending`, those it read
/// before and has not acknowledged ("0", answered at once); otherwise new ones
/// (">"), waiting up to a second for some when `wait`.
async fn read_batch(
    connection: &mut ConnectionManager,
    consumer: &str,
    pending: bool,
    wait: bool,
) -> redis::RedisResult<Vec<StreamId>> {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(PERSIST_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(PERSIST_BATCH);
    if wait && !pending {
        read.arg("BLOCK").arg(1000);
    }
    read.arg("STREAMS")
        .arg(PERSIST_STREAM)
        .arg(if pending { "0" } else { ">" });
    let reply: Option<StreamReadReply> = read.query_async(connection).await?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// Moves acked messages from the stream into the store, in batches, with
/// idempotent writes. Entries are acknowledged (and deleted) only after the
/// store accepted them, so a crash or a store outage loses nothing: they stay
/// pending, are retried, and a dead pod's are claimed by a live one.
async fn persist(bus: Weak<RedisBus>, mut connection: ConnectionManager, consumer: String) {
    let mut read_pending = true;
    let mut backoff = Duration::from_millis(100);
    // None: claim at once, so a pod that starts picks up what a dead one left.
    let mut last_claim: Option<tokio::time::Instant> = None;
    let mut prefetched: Option<Vec<StreamId>> = None;
    loop {
        let Some(this) = bus.upgrade() else { return };
        if last_claim.is_none_or(|at| at.elapsed() > Duration::from_millis(CLAIM_IDLE_MS / 2)) {
            last_claim = Some(tokio::time::Instant::now());
            let claimed: redis::RedisResult<redis::Value> = redis::cmd("XAUTOCLAIM")
                .arg(PERSIST_STREAM)
                .arg(PERSIST_GROUP)
                .arg(&consumer)
                .arg(CLAIM_IDLE_MS)
                .arg("0-0")
                .arg("COUNT")
                .arg(PERSIST_BATCH)
                .arg("JUSTID")
                .query_async(&mut connection)
                .await;
            if claimed.is_ok() {
                read_pending = true;
            }
        }
        let reply = match prefetched.take() {
            Some(entries) => Ok(entries),
            None => read_batch(&mut connection, &consumer, read_pending, true).await,
        };
        let entries = match reply {
            Ok(entries) => entries,
            Err(e) => {
                this.metrics.bus_errors.inc();
                tracing::warn!(error = %e, "persist worker cannot read the stream");
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                read_pending = true;
                continue;
            }
        };
        if entries.is_empty() {
            read_pending = false;
            if let Ok(backlog) = connection.xlen::<_, i64>(PERSIST_STREAM).await {
                this.metrics.persist_backlog.set(backlog);
            }
            continue;
        }
        let mut ids = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        for entry in entries {
            // "b": the messages of one append call, one per line; "m": one
            // message, as pods before group commit wrote them.
            let payloads: Option<String> = entry.get("b").or_else(|| entry.get("m"));
            let parsed: Option<Result<Vec<Message>, BusError>> = payloads
                .as_deref()
                .map(|payloads| payloads.split('\n').map(parse_message).collect());
            match parsed {
                Some(Ok(messages)) => batch.extend(messages),
                // Unreadable entries can never be written; drop them rather than block the queue.
                _ => {
                    tracing::error!(entry = %entry.id, "unreadable entry in the persist stream; dropped")
                }
            }
            ids.push(entry.id);
        }
        // The next batch is read while this one is written, so the store's
        // write time alone sets the pace, not round trips to Redis.
        let mut reader = connection.clone();
        let next = async {
            if read_pending {
                return None;
            }
            read_batch(&mut reader, &consumer, false, false)
                .await
                .ok()
                .filter(|entries| !entries.is_empty())
        };
        let (written, next) = tokio::join!(this.store.insert_messages(&batch), next);
        match written {
            Ok(()) => {
                // Read after a write that succeeded; after a failure the
                // entries are pending and read again with the rest.
                prefetched = next;
                backoff = Duration::from_millis(100);
                this.metrics.persisted.inc_by(batch.len() as u64);
                let acked: redis::RedisResult<(i64,)> = redis::pipe()
                    .cmd("XACK")
                    .arg(PERSIST_STREAM)
                    .arg(PERSIST_GROUP)
                    .arg(&ids)
                    .ignore()
                    .cmd("XDEL")
                    .arg(PERSIST_STREAM)
                    .arg(&ids)
                    .ignore()
                    .cmd("XLEN")
                    .arg(PERSIST_STREAM)
                    .query_async(&mut connection)
                    .await;
                if let Ok((backlog,)) = acked {
                    this.metrics.persist_backlog.set(backlog);
                }
                if let Err(e) = acked {
                    // Written but not acked: they will be written again, idempotently.
                    this.metrics.bus_errors.inc();
                    tracing::warn!(error = %e, "persist worker cannot ack");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = ids.len(), "cannot persist messages yet; will retry");
                if let Ok(backlog) = connection.xlen::<_, i64>(PERSIST_STREAM).await {
                    this.metrics.persist_backlog.set(backlog);
                }
                read_pending = true;
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Group commit: sends what clients posted since the previous call (at most
/// `APPEND_LINGER` ago) as one script call, so under load Redis pays its
/// per-call cost once for many messages.
async fn commit(mut connection: ConnectionManager, mut queue: mpsc::Receiver<PendingAppend>) {
    let script = Script::new(APPEND);
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    let mut last_call: Option<tokio::time::Instant> = None;
    while queue.recv_many(&mut batch, APPEND_BATCH).await > 0 {
        if let Some(due) = last_call.map(|at| at + APPEND_LINGER)
            && batch.len() < APPEND_BATCH
            && tokio::time::Instant::now() < due
        {
            tokio::time::sleep_until(due).await;
            while batch.len() < APPEND_BATCH {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        last_call = Some(tokio::time::Instant::now());
        let mut invocation = script.prepare_invoke();
        invocation
            .key(PERSIST_STREAM)
            .arg(RECENT_LEN)
            .arg(DEDUPE_TTL_SECS);
        for pending in &batch {
            let room = pending.room;
            invocation
                .key(seq_key(room))
                .key(log_key(room))
                .key(dedupe_key(room, pending.dedupe.as_deref().unwrap_or("-")))
                .arg(pending.floor)
                .arg(&pending.head)
                .arg(&pending.tail)
                .arg(channel(room))
                .arg(if pending.dedupe.is_some() { "1" } else { "0" });
        }
        let outcome: redis::RedisResult<Vec<(i64, String)>> =
            invocation.invoke_async(&mut connection).await;
        match outcome {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (pending, outcome) in batch.drain(..).zip(outcomes) {
                    // The sender may have gone (its client left); the message stands.
                    let _ = pending.done.send(Ok(outcome));
                }
            }
            outcome => {
                let error = match outcome {
                    Err(e) => e.to_string(),
                    Ok(outcomes) => format!(
                        "the append script answered {} of {} messages",
                        outcomes.len(),
                        batch.len()
                    ),
                };
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Err(BusError::Unavailable(error.clone())));
                }
            }
        }
    }
}
