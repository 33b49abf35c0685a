//! The persist worker: moves acked messages from a persist stream into the
//! store. Every pod runs one per stream (one on a single Redis, one per
//! shard in a cluster), all in one consumer group, so the load is shared and
//! a dead pod's pending entries are claimed by a live one.

use std::sync::Weak;
use std::time::Duration;

use redis::streams::{StreamId, StreamReadReply};
use redis::{AsyncCommands, Script};

use super::connection::Commands;
use super::{BusError, RedisBus, parse_message};

pub(super) const PERSIST_GROUP: &str = "chat-persist";
/// Entries pending this long belong to a dead pod and are claimed.
const CLAIM_IDLE_MS: u64 = 30_000;
/// Stream entries per persist batch; each holds the messages of one append
/// call, up to `APPEND_BATCH`.
const PERSIST_BATCH: usize = 100;
/// Once caught up, the worker waits this long before reading again, so a
/// steady flow is read, written and acknowledged in batches of this many
/// milliseconds rather than one wake, store write and ack per append call.
/// History trails live delivery by about this much (`resume` reads the log
/// and never does).
const PERSIST_LINGER: Duration = Duration::from_millis(100);

/// Acknowledges and deletes persisted entries and takes their messages off
/// the stream's backlog count (entries hold several messages, so the
/// stream's length is not the backlog). Only entries this call deleted count,
/// so an entry acknowledged twice is not subtracted twice. KEYS: stream,
/// backlog. ARGV: group, then per entry its id and message count. Returns the
/// messages still waiting.
const ACK: &str = r"
local gone = 0
for i = 2, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then gone = gone + tonumber(ARGV[i + 1]) end
end
local left = redis.call('DECRBY', KEYS[2], gone)
if left < 0 then
  redis.call('SET', KEYS[2], 0)
  left = 0
end
return left
";

/// The count of acked messages in `stream` not yet in the store.
pub(super) fn backlog_key(stream: &str) -> String {
    // `chat:persist:{N}:backlog` shares the stream's hash tag and shard.
    format!("{stream}:backlog")
}

/// Creates the consumer group (and the stream) if they do not exist.
pub(super) async fn create_group(
    connection: &mut Commands,
    stream: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(PERSIST_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// Up to a batch of this consumer's entries: with `pending`, those it read
/// before and has not acknowledged ("0", answered at once); otherwise new ones
/// (">"), waiting up to a second for some when `wait`.
async fn read_batch(
    connection: &mut Commands,
    stream: &str,
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
        .arg(stream)
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
pub(super) async fn persist(
    bus: Weak<RedisBus>,
    mut connection: Commands,
    stream: String,
    consumer: String,
) {
    let ack = Script::new(ACK);
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
                .arg(&stream)
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
            None => read_batch(&mut connection, &stream, &consumer, read_pending, true).await,
        };
        let entries = match reply {
            Ok(entries) => entries,
            // Redis came back without its data (no persistence, a restore):
            // the stream and its group are gone, and appends make a new
            // stream no group reads. Make the group again, from its start.
            Err(e) if e.code() == Some("NOGROUP") => {
                match create_group(&mut connection, &stream).await {
                    Ok(()) => {
                        tracing::warn!(%stream, "the persist stream's group was gone (Redis lost its data); made again")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %stream, "cannot make the persist stream's group again")
                    }
                }
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                read_pending = true;
                continue;
            }
            Err(e) => {
                this.metrics.bus_errors.inc();
                tracing::warn!(error = %e, %stream, "persist worker cannot read the stream");
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                read_pending = true;
                continue;
            }
        };
        if entries.is_empty() {
            read_pending = false;
            if let Ok(backlog) = connection.get::<_, Option<i64>>(backlog_key(&stream)).await {
                this.backlog(&stream, backlog.unwrap_or(0));
            }
            continue;
        }
        let mut ids = Vec::with_capacity(entries.len());
        let mut counts = Vec::with_capacity(entries.len());
        let mut batch = Vec::with_capacity(entries.len());
        for entry in entries {
            // "b": the messages of one append call, one per line, and "d"
            // their dedupe keys; "m": one message, as pods before group
            // commit wrote them.
            let payloads: Option<String> = entry.get("b").or_else(|| entry.get("m"));
            let keys: Option<String> = entry.get("d");
            let parsed: Option<Result<Vec<_>, BusError>> = payloads.as_deref().map(|payloads| {
                let mut keys = keys.as_deref().map(|keys| keys.split('\n'));
                payloads
                    .split('\n')
                    .map(|payload| {
                        let key = keys.as_mut().and_then(Iterator::next);
                        let key = key.filter(|k| !k.is_empty()).map(str::to_owned);
                        Ok((parse_message(payload)?, key))
                    })
                    .collect()
            });
            counts.push(
                parsed
                    .as_ref()
                    .map_or(0, |p| p.as_ref().map_or(0, Vec::len)),
            );
            match parsed {
                Some(Ok(messages)) => batch.extend(messages),
                // Unreadable entries can never be written; drop them rather than block the queue.
                _ => {
                    tracing::error!(entry = %entry.id, "unreadable entry in the persist stream; dropped")
                }
            }
            ids.push(entry.id);
        }
        // Behind (a full batch): the next batch is read while this one is
        // written, so the store's write time alone sets the pace, not round
        // trips to Redis. Caught up: the worker lingers instead (below), so
        // the store takes a few large inserts a second rather than many
        // small ones, each with its fixed cost.
        let mut reader = connection.clone();
        let full = ids.len() >= PERSIST_BATCH;
        let next = async {
            if read_pending || !full {
                return None;
            }
            read_batch(&mut reader, &stream, &consumer, false, false)
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
                let mut ack = ack.prepare_invoke();
                ack.key(&stream)
                    .key(backlog_key(&stream))
                    .arg(PERSIST_GROUP);
                for (id, count) in ids.iter().zip(&counts) {
                    ack.arg(id).arg(count);
                }
                let acked: redis::RedisResult<i64> = ack.invoke_async(&mut connection).await;
                if let Ok(backlog) = acked {
                    this.backlog(&stream, backlog);
                }
                if let Err(e) = acked {
                    // Written but not acked: they will be written again, idempotently.
                    this.metrics.bus_errors.inc();
                    tracing::warn!(error = %e, "persist worker cannot ack");
                }
                if !full {
                    // Caught up: let the next batch gather rather than wake
                    // for every append call.
                    drop(this);
                    tokio::time::sleep(PERSIST_LINGER).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = ids.len(), "cannot persist messages yet; will retry");
                if let Ok(backlog) = connection.get::<_, Option<i64>>(backlog_key(&stream)).await {
                    this.backlog(&stream, backlog.unwrap_or(0));
                }
                read_pending = true;
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
