//! Group commit: a pod's appends go to Redis as few script calls as possible,
//! one per shard, each assigning seqs, logging, queueing for persistence and
//! publishing every message it carries.

use std::sync::Arc;
use std::time::Duration;

use redis::{Pipeline, Script};
use tokio::sync::{mpsc, oneshot};

use super::BusError;
use super::connection::{Commands, Layout};
use super::keys::{channel, dedupe_key, fence_key, log_key, seq_key};
use super::persist::backlog_key;
use crate::model::Id;

/// Messages kept in a room's log for fast resume (approximately: the stream
/// is trimmed a node at a time).
pub(super) const RECENT_LEN: usize = 1000;
/// How long an idle room's log is kept.
const LOG_TTL_SECS: u64 = 24 * 3600;
/// The most messages one script call carries.
pub(super) const APPEND_BATCH: usize = 64;
/// While a pod appends fast (see [`Pace`]), it calls the append script at
/// most this often, so each call carries what arrived meanwhile. A few
/// milliseconds of latency at high rates buy Redis several times fewer calls,
/// syscalls and AOF writes.
const APPEND_LINGER: Duration = Duration::from_millis(2);

/// How far a room's seq skips ahead the first time it is appended to on a
/// new primary (see [`Durability`]). What the lost primary may have
/// published beyond its replicas is at most one batch per pod (a pod writes
/// nothing more until its last batch is on the replicas), so this covers
/// more than a thousand pods.
pub const FAILOVER_SEQ_GAP: u64 = 100_000;

/// What an ack waits for beyond the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Replicas a batch must have reached (`WAIT`) before its messages are
    /// acked; 0 acks once the primary has them.
    pub replicas: u32,
    pub timeout: Duration,
}

/// What the script answers for one message.
pub(super) mod status {
    /// A retry: the value is the first message.
    pub(crate) const RETRY: i64 = 0;
    /// Appended: the value is its seq.
    pub(crate) const NEW: i64 = 1;
    /// The room's counter is missing: pass the store's newest seq as floor.
    pub(crate) const NO_COUNTER: i64 = 2;
    /// A retry of a message no longer in the log: the value is its seq.
    pub(crate) const RETRY_ELSEWHERE: i64 = 3;
    /// The room's slot is not on the shard the batch went to (a resharding):
    /// nothing of this message was written; route it again.
    pub(crate) const MOVED: i64 = 4;
    /// The room's keys were lost lately (see [`super::RECHECK_SECS`]) and
    /// the message's dedupe key is not in Redis: nothing was written; look
    /// the key up in the store, and send the message again marked as
    /// checked if the store has none.
    pub(crate) const CHECK_STORE: i64 = 5;
}

/// For this long after a room's counter is made again from the store (Redis
/// lost it) or fenced on a promoted replica (which may lack what the lost
/// primary wrote), a message whose dedupe key Redis lacks is looked up in the
/// store first: the clients whose acks were lost retry within this, and a
/// retry of a message already stored must be answered with it, not appended
/// under a second seq. The marker is the counter's key plus `:recheck`.
pub(super) const RECHECK_SECS: u64 = 600;

/// Appends a batch of messages, in order, on one Redis or one shard.
/// KEYS: the persist stream, its backlog count and its fence. ARGV: log length, log ttl, the
/// publish command (`PUBLISH`, or `SPUBLISH` in a cluster), dedupe ttl, whether to fence,
/// the fence's gap, the recheck ttl, then per message: its
/// room's seq, log and dedupe keys, floor, head, tail, channel, whether to
/// dedupe (0, 1, or 2: yes, and the store has no such message). Returns per message {status, value} (see [`status`]).
///
/// Redis spends more on each call (a read, a script set-up, an AOF write and
/// a reply) than on the commands inside, so a pod sends what its clients
/// posted meanwhile in one call, and the batch is one entry of the persist
/// stream (payloads joined by newlines, which JSON escapes; field `d` holds
/// their senders' dedupe keys, a line each, empty for none: a client_id has
/// no control characters). The room keys
/// are reached by name rather than declared, since a cluster refuses
/// declared keys of several slots; a key that is not on this shard fails
/// its first access, before anything of that message is written. The
/// room's log is a stream whose ids are the seqs: `XADD` with an explicit id
/// and approximate trimming costs less than a sorted set of whole payloads,
/// and `resume` reads it with `XRANGE`. The dedupe key holds only the seq,
/// and is claimed and checked by one `SET NX GET` after the seq is taken.
/// The log's expiry is set when it is created (`NOMKSTREAM` tells, at no
/// extra command) and renewed every 64 messages.
///
/// With durable acks (ARGV 5 is 1) the script also fences seqs against a
/// failover. Replication is asynchronous, so a primary that dies may have
/// published messages its replicas never got; their seqs were seen live but
/// the promoted replica's counters are behind them. A promoted replica has a
/// new replication id: the first call on it starts a new epoch (KEYS[3]
/// remembers the id and the epoch), and each room skips its counter ahead
/// by ARGV 6 the first time it is appended to in that epoch, so no seq is
/// ever given to two messages.
const APPEND: &str = r"
local log_len, ttl, publish, dedupe_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local recheck_ttl = ARGV[7]
local function failed(reply) return type(reply) == 'table' and reply.err end
-- A key on another shard is MOVED (status 4, only that message); a replica
-- (a URL that reaches one, a primary just demoted) fails the whole call, as
-- a READONLY error, before anything is written: the caller's connection
-- then finds the primary again, and the client retries.
local function moved(reply)
  if string.sub(reply.err, 1, 8) == 'READONLY' then return error(reply) end
  return {4, reply.err}
end
local epoch = false
if ARGV[5] == '1' then
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  local fence = redis.call('HMGET', KEYS[3], 'replid', 'epoch')
  if fence[1] == replid then
    epoch = fence[2]
  else
    epoch = tostring(redis.call('HINCRBY', KEYS[3], 'epoch', 1))
    redis.call('HSET', KEYS[3], 'replid', replid)
  end
end
local function append(seq_key, log_key, dedupe_key, floor, head, tail, channel, dedupe, persisted, keys)
  local recheck = seq_key .. ':recheck'
  if floor ~= '-1' then
    local set = redis.pcall('SET', seq_key, floor, 'NX')
    if failed(set) then return moved(set) end
    if set and floor ~= '0' then redis.call('SET', recheck, '1', 'EX', recheck_ttl) end
  end
  local seq = redis.pcall('INCR', seq_key)
  if failed(seq) then return moved(seq) end
  if seq == 1 and floor == '-1' then
    -- A new room, or Redis lost the counter: only the store can tell.
    redis.call('DEL', seq_key)
    return {2, ''}
  end
  if epoch and redis.call('HGET', KEYS[3], seq_key) ~= epoch then
    -- First message of this room on this primary: skip what a lost one may
    -- have published (not for a new room, nor in the very first epoch).
    redis.call('HSET', KEYS[3], seq_key, epoch)
    if epoch ~= '1' and floor ~= '0' then
      seq = redis.call('INCRBY', seq_key, ARGV[6])
      redis.call('SET', recheck, '1', 'EX', recheck_ttl)
    end
  end
  if dedupe ~= '0' then
    -- Claims the key for this seq, or finds the retried message's: one
    -- command either way. A retry gives its seq back (nothing came between).
    local previous = redis.call('SET', dedupe_key, seq, 'NX', 'GET', 'EX', dedupe_ttl)
    if previous then
      redis.call('DECR', seq_key)
      local first = redis.call('XRANGE', log_key, previous, previous)
      if first[1] then return {0, first[1][2][2]} end
      return {3, previous}
    end
    -- The room's keys were lost lately: unless the store was asked (dedupe
    -- '2'), it is (status 5), and nothing is written.
    if dedupe == '1' and redis.call('EXISTS', recheck) == 1 then
      redis.call('DEL', dedupe_key)
      redis.call('DECR', seq_key)
      return {5, ''}
    end
  end
  local payload = head .. seq .. tail
  persisted[#persisted + 1] = payload
  -- The store keeps the sender's key too (what follows ':dedupe:' in the
  -- key's name), so a retry this Redis forgets is still stored once.
  keys[#keys + 1] = dedupe ~= '0' and string.match(dedupe_key, ':dedupe:(.*)$') or ''
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
local out, persisted, keys = {}, {}, {}
for i = 8, #ARGV, 8 do
  out[#out + 1] = append(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
    ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], persisted, keys)
end
if persisted[1] then
  local keyed = table.concat(keys, '\n')
  if string.find(keyed, '[^\n]') then
    redis.call('XADD', KEYS[1], '*', 'b', table.concat(persisted, '\n'), 'd', keyed)
  else
    redis.call('XADD', KEYS[1], '*', 'b', table.concat(persisted, '\n'))
  end
  redis.call('INCRBY', KEYS[2], #persisted)
end
return out
";

/// Whether the committer waits for more messages before a call: only while
/// the pod appends more than [`Pace::FAST`] messages a second.
///
/// Redis spends about 30 µs of CPU per call beyond the messages in it
/// (measured, docs/benchmarks.md): at 500 messages a second per pod that is
/// 1.5% of a core, not worth the 2 ms a wait adds to every message (it was
/// most of the p50); at thousands a second it is what bounds Redis, and a
/// wait then carries several messages per call. The rate is counted over
/// windows of [`Pace::WINDOW`], so a burst starts batching within one.
#[derive(Debug)]
pub(super) struct Pace {
    window_start: tokio::time::Instant,
    appended: usize,
    fast: bool,
}

impl Pace {
    pub(super) const FAST: usize = 1000;
    pub(super) const WINDOW: Duration = Duration::from_millis(100);

    pub(super) fn new(now: tokio::time::Instant) -> Self {
        Self {
            window_start: now,
            appended: 0,
            fast: false,
        }
    }

    /// Whether to wait for more messages before a call made at `now`.
    pub(super) fn fast(&mut self, now: tokio::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Self::WINDOW {
            // Over the window just ended: messages a second above FAST?
            self.fast = self.appended as u128 * 1000 > Self::FAST as u128 * elapsed.as_millis();
            self.window_start = now;
            self.appended = 0;
        }
        self.fast
    }

    /// Counts the messages of a call.
    pub(super) fn sent(&mut self, messages: usize) {
        self.appended += messages;
    }
}

/// A message waiting for the committer, and where its outcome goes.
pub(super) struct PendingAppend {
    pub room: Id,
    pub head: String,
    pub tail: String,
    pub dedupe: Option<String>,
    /// -1, or the seq to start the room's counter from if it is missing.
    pub floor: i64,
    /// The store holds no message of this dedupe key (see
    /// [`status::CHECK_STORE`]).
    pub checked: bool,
    pub done: oneshot::Sender<Result<(i64, String), BusError>>,
}

/// Sends what clients posted since the previous call as one script call per
/// shard; while the pod appends fast, at most every `APPEND_LINGER`, so
/// under load Redis pays its per-call cost once for many messages.
///
/// With durable acks, each call is followed on the same connection by
/// `WAIT` for the replicas, and a batch that did not reach them in time is
/// answered `unavailable` (its clients retry; dedupe finds what was
/// written). Until a later `WAIT` says the replicas caught up, nothing more
/// is written: what a failover can lose stays within one batch per pod.
pub(super) async fn commit(
    mut connection: Commands,
    layout: Arc<Layout>,
    mut queue: mpsc::Receiver<PendingAppend>,
    dedupe_ttl: Duration,
    durability: Durability,
) {
    let script = Script::new(APPEND);
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    let mut last_call: Option<tokio::time::Instant> = None;
    let mut behind = false;
    let mut pace = Pace::new(tokio::time::Instant::now());
    while queue.recv_many(&mut batch, APPEND_BATCH).await > 0 {
        if pace.fast(tokio::time::Instant::now())
            && let Some(due) = last_call.map(|at| at + APPEND_LINGER)
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
        pace.sent(batch.len());
        if behind {
            match replicated(&mut connection, durability).await {
                Ok(()) => behind = false,
                Err(error) => {
                    answer(std::mem::take(&mut batch), Err(error));
                    continue;
                }
            }
        }
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
                let outcome = call(
                    script,
                    &mut connection,
                    &stream,
                    &messages,
                    dedupe_ttl,
                    durability,
                )
                .await;
                if outcome.iter().flatten().any(|(s, _)| *s == status::MOVED) {
                    layout.refresh(&mut connection).await;
                }
                (messages, outcome)
            }
        });
        for (messages, outcome) in futures_util::future::join_all(calls).await {
            behind |= outcome.as_ref().is_err_and(|e| e.behind);
            answer(messages, outcome.map_err(|e| e.message));
        }
    }
}

/// Why a call's messages are not acked.
struct CallError {
    message: String,
    /// The script may have run but its writes are not known to be on the
    /// replicas.
    behind: bool,
}

async fn call(
    script: &Script,
    connection: &mut Commands,
    stream: &str,
    messages: &[PendingAppend],
    dedupe_ttl: Duration,
    durability: Durability,
) -> Result<Vec<(i64, String)>, CallError> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(stream)
        .key(backlog_key(stream))
        .key(fence_key(stream))
        .arg(RECENT_LEN)
        .arg(LOG_TTL_SECS)
        .arg(connection.publish_command())
        .arg(dedupe_ttl.as_secs().max(1))
        .arg(if durability.replicas > 0 { "1" } else { "0" })
        .arg(FAILOVER_SEQ_GAP)
        .arg(RECHECK_SECS);
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
            .arg(match (&pending.dedupe, pending.checked) {
                (None, _) => "0",
                (Some(_), false) => "1",
                (Some(_), true) => "2",
            });
    }
    let failed = |e: redis::RedisError, behind| CallError {
        message: e.to_string(),
        behind,
    };
    let outcomes: Vec<(i64, String)> = if durability.replicas == 0 {
        invocation
            .invoke_async(connection)
            .await
            .map_err(|e| failed(e, false))?
    } else {
        // One pipeline, so the WAIT goes down the connection the script's
        // writes went down (WAIT counts that connection's writes only); a
        // reconnection in between would make it answer for nothing.
        let mut pipeline = redis::pipe();
        pipeline.invoke_script(&invocation);
        wait_command(&mut pipeline, durability);
        let sent = pipeline.query_async(connection).await;
        let sent = match sent {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                invocation
                    .load_async(connection)
                    .await
                    .map_err(|e| failed(e, false))?;
                pipeline.query_async(connection).await
            }
            sent => sent,
        };
        let (outcomes, replicas): (Vec<(i64, String)>, u32) = sent.map_err(|e| failed(e, true))?;
        if replicas < durability.replicas {
            return Err(CallError {
                message: short_of_replicas(replicas, durability),
                behind: true,
            });
        }
        outcomes
    };
    if outcomes.len() != messages.len() {
        return Err(CallError {
            message: format!(
                "the append script answered {} of {} messages",
                outcomes.len(),
                messages.len()
            ),
            behind: false,
        });
    }
    Ok(outcomes)
}

fn wait_command(pipeline: &mut Pipeline, durability: Durability) {
    pipeline
        .cmd("WAIT")
        .arg(durability.replicas)
        .arg(u64::try_from(durability.timeout.as_millis()).unwrap_or(u64::MAX));
}

fn short_of_replicas(replicas: u32, durability: Durability) -> String {
    format!(
        "on {replicas} of {} redis replicas after {} ms",
        durability.replicas,
        durability.timeout.as_millis()
    )
}

/// Waits until the replicas have everything this connection wrote.
async fn replicated(connection: &mut Commands, durability: Durability) -> Result<(), String> {
    let mut pipeline = redis::pipe();
    wait_command(&mut pipeline, durability);
    let (replicas,): (u32,) = pipeline
        .query_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    if replicas < durability.replicas {
        return Err(short_of_replicas(replicas, durability));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a pace with `rate` messages a second, one per call, for
    /// `seconds`; answers whether it lingers at the end.
    fn paced(pace: &mut Pace, start: tokio::time::Instant, rate: u64, seconds: u64) -> bool {
        let gap = Duration::from_micros(1_000_000 / rate);
        let mut fast = false;
        for i in 0..rate * seconds {
            fast = pace.fast(start + gap * u32::try_from(i).unwrap());
            pace.sent(1);
        }
        fast
    }

    #[test]
    fn a_pod_waits_only_while_it_appends_fast() {
        let start = tokio::time::Instant::now();
        let mut pace = Pace::new(start);
        assert!(!paced(&mut pace, start, 500, 1), "500/s goes out at once");
        let start = start + Duration::from_secs(1);
        assert!(paced(&mut pace, start, 4000, 1), "4,000/s is batched");
        let start = start + Duration::from_secs(1);
        assert!(
            !paced(&mut pace, start, 200, 1),
            "and stops once the rate falls"
        );
    }

    #[test]
    fn after_a_quiet_spell_the_first_message_goes_out_at_once() {
        let start = tokio::time::Instant::now();
        let mut pace = Pace::new(start);
        assert!(paced(&mut pace, start, 5000, 1));
        // Ten seconds of nothing, then one message: the window that ends
        // then counted one message in ten seconds.
        assert!(!pace.fast(start + Duration::from_secs(11)));
    }
}
