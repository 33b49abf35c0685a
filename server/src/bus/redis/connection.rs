//! How the bus reaches Redis: one server, the primary Sentinel names (found
//! again after each failover), or a Redis Cluster, where the slot map decides
//! which shard holds a room and which persist stream that shard's appends go
//! to.
//!
//! Every key of a room carries the room id as its hash tag, so a room lives
//! on one shard with its sharded pub/sub channel. A batch of appends may span
//! rooms; it goes to one shard at a time, as one script call that declares
//! only the shard's persist stream (Redis refuses declared keys of several
//! slots) and reaches the rooms' keys, all local to that shard, by name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, RedisResult,
    Value,
};

use crate::model::Id;
use crate::sync::lock;

/// The stream of acked messages waiting to be written to the store, on a
/// single Redis. In a cluster each shard has its own (see [`SlotMap`]).
pub const PERSIST_STREAM: &str = "chat:persist";
/// Every persist stream a cluster has had, so a pod that starts after a
/// resharding still drains the streams of the old layout.
pub const PERSIST_STREAMS: &str = "chat:persist:streams";

const TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is, from `CHAT_REDIS_URL` or `CHAT_REDIS_SENTINELS`.
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    Sentinel(Arc<Sentinels>),
    Cluster {
        client: Box<ClusterClient>,
        seeds: Vec<String>,
    },
}

impl Target {
    /// A comma-separated list of seed nodes is a cluster; one URL is a cluster
    /// if that server says so (`cluster_enabled:1`), as a cloud provider's
    /// single configuration endpoint does.
    pub async fn discover(urls: &str) -> RedisResult<Self> {
        let seeds: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        if let [url] = seeds.as_slice() {
            let client = redis::Client::open(url.as_str())?;
            let mut probe = client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(TIMEOUT))
                        .set_response_timeout(Some(TIMEOUT)),
                )
                .await?;
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut probe)
                .await?;
            if !info.contains("cluster_enabled:1") {
                return Ok(Self::Single(client));
            }
        }
        Ok(Self::Cluster {
            client: Box::new(cluster_builder(&seeds).build()?),
            seeds,
        })
    }

    /// The primary of `master` as the Sentinels at `sentinels` report it;
    /// fails unless one of them names a primary that answers as one now, so
    /// a wrong name or password stops start-up.
    pub async fn sentinel(
        sentinels: &[(String, u16)],
        master: &str,
        password: Option<&str>,
    ) -> RedisResult<Self> {
        let addresses = sentinels
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder =
            SentinelClientBuilder::new(addresses, master, SentinelServerType::Master)?;
        if let Some(password) = password {
            builder = builder
                .set_client_to_sentinel_password(password)
                .set_client_to_redis_password(password);
        }
        let sentinels = Sentinels {
            client: tokio::sync::Mutex::new(builder.build()?),
        };
        sentinels.primary().await?;
        Ok(Self::Sentinel(Arc::new(sentinels)))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// A new multiplexed connection, reconnecting by itself.
    pub async fn connect(&self) -> RedisResult<Commands> {
        self.connect_waiting(Duration::ZERO).await
    }

    /// [`Target::connect`] for commands that may block for up to `blocking`
    /// on the server (`WAIT`), which the response timeout must allow.
    pub async fn connect_waiting(&self, blocking: Duration) -> RedisResult<Commands> {
        let response_timeout = TIMEOUT + blocking;
        match self {
            Self::Single(_) | Self::Sentinel(_) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(response_timeout));
                let db = match self {
                    Self::Single(client) => client.get_connection_info().redis_settings().db(),
                    _ => 0,
                };
                let connection = Reconnecting(Arc::new(Shared {
                    target: self.clone(),
                    db,
                    config,
                    current: tokio::sync::Mutex::default(),
                    generations: AtomicU64::default(),
                }));
                connection.connection().await?;
                Ok(Commands::Single(connection))
            }
            Self::Cluster { client, .. } if blocking.is_zero() => {
                Ok(Commands::Cluster(client.get_async_connection().await?))
            }
            Self::Cluster { seeds, .. } => Ok(Commands::Cluster(
                cluster_builder(seeds)
                    .response_timeout(response_timeout)
                    .build()?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    /// A client of the one server, or of the server Sentinel names as the
    /// primary now (for pub/sub, whose connection is reopened after a loss).
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Self::Single(client) => Ok(client.clone()),
            Self::Sentinel(sentinels) => sentinels.primary().await,
            Self::Cluster { .. } => Err(RedisError::from((
                redis::ErrorKind::Client,
                "a cluster has no single server",
            ))),
        }
    }

    /// A pub/sub connection to the one server, or to the primary Sentinel
    /// names now; like every connection, given up if it takes longer than
    /// [`TIMEOUT`] (an address whose pod is gone may never answer).
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        let client = self.client().await?;
        bounded(client.get_async_pubsub()).await
    }

    /// A cluster connection whose sharded pub/sub messages (and disconnection
    /// notices) go to `pushes`; it resubscribes by itself after a reconnect.
    pub async fn subscriber(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<ClusterConnection> {
        let Self::Cluster { seeds, .. } = self else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "sharded pub/sub needs a cluster",
            )));
        };
        cluster_builder(seeds)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .build()?
            .get_async_connection()
            .await
    }
}

/// `request` unless it takes longer than [`TIMEOUT`]: for what redis-rs
/// leaves unbounded (pub/sub connections and their commands), which would
/// otherwise wait forever on a peer that vanished without closing.
pub async fn bounded<T>(request: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "redis did not answer in time",
            )))
        })
}

/// The Sentinels of one master name.
pub struct Sentinels {
    /// Asks the Sentinels in turn and checks the server they name says
    /// `ROLE master`; one lookup at a time.
    client: tokio::sync::Mutex<SentinelClient>,
}

impl Sentinels {
    /// Bounded: a Sentinel that does not answer (a lost node) must not hold
    /// every command waiting for a connection.
    async fn primary(&self) -> RedisResult<redis::Client> {
        let lookup = async { self.client.lock().await.async_get_client().await };
        tokio::time::timeout(2 * TIMEOUT, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "no Sentinel named the primary in time",
                )))
            })
    }
}

/// A multiplexed connection to the one server, or to the primary Sentinel
/// names, given up as soon as the server it reached stops answering as the
/// primary (the connection fails, a command times out, or it answers
/// `READONLY` as a demoted replica) and opened again, behind Sentinel to the
/// primary it names then. A timeout counts: a server gone without closing
/// (its node lost) leaves a connection on which every command would time
/// out until TCP gives up, many minutes later, and redis-rs's own
/// `ConnectionManager` reconnects only once the socket fails. A failed
/// command is not retried: its caller decides (an append is answered
/// `unavailable` and retried by its client).
/// Clones share the connection.
#[derive(Clone)]
pub struct Reconnecting(Arc<Shared>);

struct Shared {
    /// `Single` or `Sentinel`.
    target: Target,
    /// The database the URL selects (each connection selects it).
    db: i64,
    config: AsyncConnectionConfig,
    /// The live connection and its generation, so a failure on an old one
    /// does not throw away its replacement.
    current: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generations: AtomicU64,
}

impl Reconnecting {
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut current = self.0.current.lock().await;
        if let Some(live) = &*current {
            return Ok(live.clone());
        }
        let connection = self
            .0
            .target
            .client()
            .await?
            .get_multiplexed_async_connection_with_config(&self.0.config)
            .await?;
        let generation = self.0.generations.fetch_add(1, Ordering::Relaxed);
        *current = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    async fn after<T>(&self, generation: u64, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result
            && not_the_primary(e)
        {
            let mut current = self.0.current.lock().await;
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                tracing::warn!(error = %e, "redis connection lost; opening another");
                *current = None;
            }
        }
        result
    }
}

/// Whether an error means the server is gone or is no longer the primary.
fn not_the_primary(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "UNBLOCKED"))
}

fn cluster_builder(seeds: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .retries(3)
}

/// Commands to Redis, whichever shape it has. Clones share one multiplexed
/// connection (per node, in a cluster).
#[derive(Clone)]
pub enum Commands {
    /// One server, or the primary behind Sentinel.
    Single(Reconnecting),
    Cluster(ClusterConnection),
}

impl Commands {
    /// How a room's channel is published to: sharded on a cluster, so a
    /// message travels only through its room's shard.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(reconnecting) => Box::pin(async move {
                let (generation, mut connection) = reconnecting.connection().await?;
                let result = connection.req_packed_command(cmd).await;
                reconnecting.after(generation, result).await
            }),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(reconnecting) => Box::pin(async move {
                let (generation, mut connection) = reconnecting.connection().await?;
                let result = connection
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                reconnecting.after(generation, result).await
            }),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(reconnecting) => reconnecting.0.db,
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 of the hash
/// tag (the part between the first `{` and the next `}`, if not empty) or of
/// the whole key, modulo 16384.
pub fn slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|b| *b == b'}')
            .filter(|close| *close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// The slot of every key of `room`.
pub fn room_slot(room: Id) -> u16 {
    slot(&format!("{{{room}}}"))
}

/// Which node serves which slots, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// (first slot, last slot, "host:port" of the master)
    ranges: Vec<(u16, u16, String)>,
    /// Each node's persist stream, derived once from `ranges` (appends look
    /// it up for every message).
    streams: BTreeMap<String, String>,
}

impl SlotMap {
    pub fn parse(reply: &Value) -> Option<Self> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return None;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return None;
            };
            ranges.push((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                format!("{host}:{port}"),
            ));
        }
        ranges.sort();
        let streams = persist_streams(&ranges);
        Some(Self { ranges, streams })
    }

    pub fn node(&self, slot: u16) -> Option<&str> {
        node_of(&self.ranges, slot)
    }

    /// Each node's persist stream (see [`persist_streams`]), by node.
    pub fn persist_streams(&self) -> &BTreeMap<String, String> {
        &self.streams
    }

    /// The persist stream of the shard that holds `room`.
    pub fn stream_for(&self, room: Id) -> Option<String> {
        let node = self.node(room_slot(room))?;
        self.streams.get(node).cloned()
    }
}

fn node_of(ranges: &[(u16, u16, String)], slot: u16) -> Option<&str> {
    ranges
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&slot))
        .map(|(_, _, node)| node.as_str())
}

/// Each node's persist stream: `chat:persist:{N}` with the smallest N whose
/// slot the node serves. Every pod derives the same names from the same map.
fn persist_streams(ranges: &[(u16, u16, String)]) -> BTreeMap<String, String> {
    let mut nodes: Vec<&str> = ranges.iter().map(|(_, _, n)| n.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let mut streams = BTreeMap::new();
    // 16384 slots: some N below a million hashes onto every node's slots.
    for n in 0u32..1_000_000 {
        if streams.len() == nodes.len() {
            break;
        }
        let stream = format!("{PERSIST_STREAM}:{{{n}}}");
        if let Some(node) = node_of(ranges, slot(&stream)) {
            streams.entry(node.to_owned()).or_insert(stream);
        }
    }
    streams
}

/// Where appends go: the one persist stream of a single Redis, or the
/// stream of the shard that holds the room, from a slot map kept current.
pub struct Layout {
    cluster: Option<Mutex<SlotMap>>,
}

impl Layout {
    pub async fn of(commands: &mut Commands) -> RedisResult<Self> {
        let cluster = match commands {
            Commands::Single(_) => None,
            Commands::Cluster(_) => Some(Mutex::new(slot_map(commands).await?)),
        };
        Ok(Self { cluster })
    }

    pub fn stream_for(&self, room: Id) -> String {
        self.cluster
            .as_ref()
            .and_then(|map| lock(map).stream_for(room))
            .unwrap_or_else(|| PERSIST_STREAM.to_owned())
    }

    /// The persist streams appends go to now.
    pub fn streams(&self) -> Vec<String> {
        match &self.cluster {
            None => vec![PERSIST_STREAM.to_owned()],
            Some(map) => lock(map).persist_streams().values().cloned().collect(),
        }
    }

    /// Reads the slot map again (after a resharding, or a failover that
    /// moved a master); keeps the old one if Redis cannot say.
    pub async fn refresh(&self, commands: &mut Commands) {
        let Some(current) = &self.cluster else { return };
        match slot_map(commands).await {
            Ok(map) => {
                let mut current = lock(current);
                if *current != map {
                    tracing::info!(
                        shards = map.persist_streams().len(),
                        "redis cluster slot map changed"
                    );
                    *current = map;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the redis cluster slot map"),
        }
    }
}

async fn slot_map(commands: &mut Commands) -> RedisResult<SlotMap> {
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(commands)
        .await?;
    SlotMap::parse(&reply).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "CLUSTER SLOTS answered something else than a slot map",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_redis_computes() {
        // From `CLUSTER KEYSLOT` of Redis 7.
        assert_eq!(slot("{a}"), 15495);
        assert_eq!(slot("{b}x"), 3300);
        assert_eq!(slot("x{e}y"), 15363);
        assert_eq!(slot("foo"), 12182);
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot("{}foo"), slot("{}foo"));
        assert_ne!(slot("{}foo"), slot("foo"));
    }

    fn three_masters() -> SlotMap {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |first: i64, last: i64, port: i64| {
            Value::Array(vec![
                Value::Int(first),
                Value::Int(last),
                node(port),
                node(port + 100),
            ])
        };
        SlotMap::parse(&Value::Array(vec![
            range(10923, 16383, 7003),
            range(0, 5460, 7001),
            range(5461, 10922, 7002),
        ]))
        .unwrap()
    }

    #[test]
    fn every_node_gets_a_persist_stream_it_serves() {
        let map = three_masters();
        let streams = map.persist_streams();
        assert_eq!(streams.len(), 3);
        for (node, stream) in streams {
            assert_eq!(map.node(slot(stream)), Some(node.as_str()));
        }
        let room = Id::new();
        let stream = map.stream_for(room).unwrap();
        assert_eq!(map.node(slot(&stream)), map.node(room_slot(room)));
    }

    #[test]
    fn a_reply_that_is_not_a_slot_map_is_refused() {
        assert_eq!(SlotMap::parse(&Value::Int(1)), None);
        assert_eq!(
            SlotMap::parse(&Value::Array(vec![Value::Array(vec![Value::Int(0)])])),
            None
        );
    }
}
