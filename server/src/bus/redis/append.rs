//! Group commit: a pod's appends go to Redis as few script calls as possible,
//! one per shard, each assigning seqs, logging, queueing for persistence and
//! publishing every message it carries.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::BusError;
use super::connection::{Commands, Layout};
use super::keys::{channel, dedupe_key, log_key, seq_key};
use super::persist::backlog_key;
use crate::model::Id;

/// Messages kept in a room's log for fast resume (approximately: the stream
/// is trimmed a node at a time).
pub const RECENT_LEN: usize = 1000;
/// How long an idle room's log is kept.
const LOG_TTL_SECS: u64 = 24 * 3600;
/// The most messages one script call carries.
pub const APPEND_BATCH: usize = 64;
/// While messages keep coming, a pod calls the append script at most this
/// often, so each call carries what arrived meanwhile; a message after a
/// quiet spell goes out at once. A few milliseconds of latency under load
/// buy Redis several times fewer calls, syscalls and AOF writes.
const APPEND_LINGER: Duration = Duration::from_millis(2);

/// What the script answers for one message.
pub mod status {
    /// A retry: the value is the first message.
    pub const RETRY: i64 = 0;
    /// Appended: the value is its seq.
    pub const NEW: i64 = 1;
    /// The room's counter is missing: pass the store's newest seq as floor.
    pub const NO_COUNTER: i64 = 2;
    /// A retry of a message no longer in the log: the value is its seq.
    pub const RETRY_ELSEWHERE: i64 = 3;
    /// The room's slot is not on the shard the batch went to (a resharding):
    /// nothing of this message was written; route it again.
    pub const MOVED: i64 = 4;
}

/// Appends a batch of messages, in order, on one Redis or one shard.
/// KEYS: the persist stream and its backlog count. ARGV: log length, log ttl, the publish
/// command (`PUBLISH`, or `SPUBLISH` in a cluster), dedupe ttl, then per message: its
/// room's seq, log and dedupe keys, floor, head, tail, channel, whether to
/// dedupe. Returns per message {status, value} (see [`status`]).
///
/// Redis spends more on each call (a read, a script set-up, an AOF write and
/// a reply) than on the commands inside, so a pod sends what its clients
/// posted meanwhile in one call, and the batch is one entry of the persist
/// stream (payloads joined by newlines, which JSON escapes). The room keys
/// are reached by name rather than declared, since a cluster refuses
/// declared keys of several slots; a key that is not on this shard fails
/// its first access, before anything of that message is written. The
/// room's log is a stream whose ids are the seqs: `XADD` with an explicit id
/// and approximate trimming costs less than a sorted set of whole payloads,
/// and `resume` reads it with `XRANGE`. The dedupe key holds only the seq,
/// and is claimed and checked by one `SET NX GET` after the seq is taken.
/// The log's expiry is set when it is created (`NOMKSTREAM` tells, at no
/// extra command) and renewed every 64 messages.
const APPEND: &str = r"
local log_len, ttl, publish, dedupe_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function failed(reply) return type(reply) == 'table' and reply.err end
local function append(seq_key, log_key, dedupe_key, floor, head, tail, channel, dedupe, persisted)
  if floor ~= '-1' then
    local set = redis.pcall('SET', seq_key, floor, 'NX')
    if failed(set) then return {4, set.err} end
  end
  local seq = redis.pcall('INCR', seq_key)
  if failed(seq) then return {4, seq.err} end
  if seq == 1 and floor == '-1' then
    -- A new room, or Redis lost the counter: only the store can tell.
    redis.call('DEL', seq_key)
    return {2, ''}
  end
  if dedupe then
    -- Claims the key for this seq, or finds the retried message's: one
    -- command either way. A retry gives its seq back (nothing came between).
    local previous = redis.call('SET', dedupe_key, seq, 'NX', 'GET', 'EX', dedupe_ttl)
    if previous then
      redis.call('DECR', seq_key)
      local first = redis.call('XRANGE', log_key, previous, previous)
      if first[1] then return {0, first[1][2][2]} end
      return {3, previous}
    end
  end
  local payload = head .. seq .. tail
  persisted[#persisted + 1] = payload
  local id = seq .. '-0'
  local added = redis.pcall('XADD', log_key, 'NOMKSTREAM', 'MAXLEN', '~', log_len, id, 'm', payload)
  if failed(added) then
    -- The log outlived its counter and holds higher seqs: start it anew.
    redis.call('DEL', log_key)
    added = false
  end
  if not added then
    -- A new log (NOMKSTREAM added nothing): it expires unless renewed.
    redis.call('XADD', log_key, id, 'm', payload)
    redis.call('EXPIRE', log_key, ttl)
  elseif seq % 64 == 0 then
    redis.call('EXPIRE', log_key, ttl)
  end
  redis.call(publish, channel, payload)
  return {1, tostring(seq)}
end
local out, persisted = {}, {}
for i = 5, #ARGV, 8 do
  out[#out + 1] = append(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
    ARGV[i + 5], ARGV[i + 6], ARGV[i + 7] == '1', persisted)
end
if persisted[1] then
  redis.call('XADD', KEYS[1], '*', 'b', table.concat(persisted, '\n'))
  redis.call('INCRBY', KEYS[2], #persisted)
end
return out
";

/// A message waiting for the committer, and where its outcome goes.
pub struct PendingAppend {
    pub room: Id,
    pub head: String,
    pub tail: String,
    pub dedupe: Option<String>,
    /// -1, or the seq to start the room's counter from if it is missing.
    pub floor: i64,
    pub done: oneshot::Sender<Result<(i64, String), BusError>>,
}

/// Sends what clients posted since the previous call (at most
/// `APPEND_LINGER` ago) as one script call per shard, so under load Redis
/// pays its per-call cost once for many messages.
pub async fn commit(
    connection: Commands,
    layout: Arc<Layout>,
    mut queue: mpsc::Receiver<PendingAppend>,
    dedupe_ttl: Duration,
) {
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
        // One call per shard, in parallel; a room's messages keep their order.
        let mut shards: Vec<(String, Vec<PendingAppend>)> = Vec::new();
        for pending in batch.drain(..) {
            let stream = layout.stream_for(pending.room);
            match shards.iter_mut().find(|(s, _)| *s == stream) {
                Some((_, messages)) => messages.push(pending),
                None => shards.push((stream, vec![pending])),
            }
        }
        let calls = shards.into_iter().map(|(stream, messages)| {
            let mut connection = connection.clone();
            let script = &script;
            let layout = &layout;
            async move {
                let outcome = call(script, &mut connection, &stream, &messages, dedupe_ttl).await;
                if outcome.iter().flatten().any(|(s, _)| *s == status::MOVED) {
                    layout.refresh(&mut connection).await;
                }
                answer(messages, outcome);
            }
        });
        futures_util::future::join_all(calls).await;
    }
}

async fn call(
    script: &Script,
    connection: &mut Commands,
    stream: &str,
    messages: &[PendingAppend],
    dedupe_ttl: Duration,
) -> Result<Vec<(i64, String)>, String> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(stream)
        .key(backlog_key(stream))
        .arg(RECENT_LEN)
        .arg(LOG_TTL_SECS)
        .arg(connection.publish_command())
        .arg(dedupe_ttl.as_secs().max(1));
    for pending in messages {
        let room = pending.room;
        invocation
            .arg(seq_key(room))
            .arg(log_key(room))
            .arg(dedupe_key(room, pending.dedupe.as_deref().unwrap_or("-")))
            .arg(pending.floor)
            .arg(&pending.head)
            .arg(&pending.tail)
            .arg(channel(room))
            .arg(if pending.dedupe.is_some() { "1" } else { "0" });
    }
    let outcomes: Vec<(i64, String)> = invocation
        .invoke_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    if outcomes.len() != messages.len() {
        return Err(format!(
            "the append script answered {} of {} messages",
            outcomes.len(),
            messages.len()
        ));
    }
    Ok(outcomes)
}

fn answer(messages: Vec<PendingAppend>, outcome: Result<Vec<(i64, String)>, String>) {
    match outcome {
        Ok(outcomes) => {
            for (pending, outcome) in messages.into_iter().zip(outcomes) {
                // The sender may have gone (its client left); the message stands.
                let _ = pending.done.send(Ok(outcome));
            }
        }
        Err(error) => {
            for pending in messages {
                let _ = pending.done.send(Err(BusError::Unavailable(error.clone())));
            }
        }
    }
}
