//! The write path of messages: inserts wait in a queue and are committed
//! together, one transaction per round (group commit), each checked against
//! its `(room, seq)` and dedupe key, indexed for history, threads, changes
//! and search, and settled (see `crate::model::settle`).

use super::*;

/// Messages waiting for the next group commit.
#[derive(Default)]
pub(super) struct CommitQueue {
    pub(super) waiting: Vec<PendingInsert>,
    /// Whether a blocking task is committing; it takes whatever waits until
    /// nothing does, so at most one runs and no message waits without one.
    pub(super) committing: bool,
    /// When expired dedupe keys were last swept out.
    pub(super) dedupe_swept: Option<std::time::Instant>,
}

pub(super) struct PendingInsert {
    pub(super) message: Message,
    /// The dedupe key and when it expires.
    pub(super) dedupe: Option<(String, crate::model::Timestamp)>,
    pub(super) done: oneshot::Sender<StoreResult<Inserted>>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct DedupeEntry {
    pub(super) seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub(super) expires_at: crate::model::Timestamp,
}

pub(super) fn dedupe_key(room: Id, key: &str) -> Vec<u8> {
    let mut bytes = room.bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

/// Commits the waiting messages, one transaction per round, until none wait.
///
/// The database is held only while writing, never while waking the callers:
/// once the last of them has its outcome, dropping the store closes the file,
/// so a restart in the same process can open it again.
pub(super) fn commit_waiting(db: &Weak<Database>, commits: &Mutex<CommitQueue>) {
    /// If writing panics, the waiting callers get an error instead of waiting
    /// forever, and the next insert starts a new committer.
    struct Reset<'a>(&'a Mutex<CommitQueue>);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let mut queue = lock(self.0);
                queue.committing = false;
                queue.waiting.clear();
            }
        }
    }
    let _reset = Reset(commits);
    loop {
        let (batch, sweep) = {
            let mut queue = lock(commits);
            if queue.waiting.is_empty() {
                queue.committing = false;
                return;
            }
            let sweep = queue
                .dedupe_swept
                .is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
            if sweep {
                queue.dedupe_swept = Some(std::time::Instant::now());
            }
            (std::mem::take(&mut queue.waiting), sweep)
        };
        let (messages, waiters): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| ((pending.message, pending.dedupe), pending.done))
            .unzip();
        let written = match db.upgrade() {
            Some(db) => write_messages(&db, &messages, sweep),
            None => Err(StoreError::Unavailable(
                "the embedded store was closed".into(),
            )),
        };
        match written {
            Ok(outcomes) => {
                for (done, outcome) in waiters.into_iter().zip(outcomes) {
                    let _ = done.send(outcome);
                }
            }
            Err(e) => {
                for done in waiters {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Writes `messages` in one transaction, each unless its `(room, seq)` is
/// already stored (earlier, or earlier in the same batch) or its dedupe key
/// names a stored message of the room that has not expired. The outer error
/// fails them all (nothing was committed); an inner one only that message.
/// With `sweep`, expired dedupe keys are removed in the same transaction.
pub(super) fn write_messages(
    db: &Database,
    messages: &[(Message, Option<(String, crate::model::Timestamp)>)],
    sweep: bool,
) -> StoreResult<Vec<StoreResult<Inserted>>> {
    let tx = db.begin_write()?;
    let mut outcomes = Vec::with_capacity(messages.len());
    {
        let mut table = tx.open_table(MESSAGES)?;
        let mut counts = tx.open_table(MESSAGE_COUNTS)?;
        let mut changes = tx.open_table(CHANGES)?;
        let mut replies = tx.open_table(REPLIES)?;
        let mut dedupes = tx.open_table(DEDUPE)?;
        let mut words = tx.open_table(SEARCH_WORDS)?;
        let mut main_line = tx.open_table(MAIN_LINE)?;
        let now = crate::model::now();
        if sweep {
            dedupes.retain(|_, value| {
                serde_json::from_slice::<DedupeEntry>(value).is_ok_and(|e| e.expires_at > now)
            })?;
        }
        for (message, dedupe) in messages {
            let dedupe = dedupe
                .as_ref()
                .map(|(key, expires_at)| (dedupe_key(message.room_id, key), *expires_at));
            if let Some((key, _)) = &dedupe
                && let Some(entry) = get_json::<_, DedupeEntry>(&dedupes, key.as_slice())?
                && entry.expires_at > now
                && let Some(earlier) = get_json::<_, Message>(
                    &table,
                    message_key(message.room_id, entry.seq).as_slice(),
                )?
            {
                outcomes.push(Ok(Inserted::Duplicate(Box::new(earlier))));
                continue;
            }
            let key = message_key(message.room_id, message.seq);
            if let Some(existing) = get_json::<_, Message>(&table, key.as_slice())? {
                outcomes.push(Ok(Inserted::Existing(Box::new(existing))));
                continue;
            }
            let target = message.target_seq.filter(|_| message.kind.is_change());
            let settled = match target {
                Some(target) => {
                    let live = live_changes(&changes, &table, message.room_id, target)?;
                    crate::model::settle(message, &live)
                }
                None => crate::model::Settled::default(),
            };
            // Copied only when its own text goes (a change that raced a deletion).
            let blanked;
            let message = if settled.blanked.contains(&message.seq) {
                let mut copy = message.clone();
                blank(&mut copy);
                blanked = copy;
                &blanked
            } else {
                message
            };
            let record = match to_json(message) {
                Ok(record) => record,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            table.insert(key.as_slice(), record.as_slice())?;
            index_words(&mut words, message)?;
            match (target, message.reply_to) {
                (Some(target), _) => {
                    for seq in &settled.settled {
                        changes.remove(child_key(message.room_id, target, *seq).as_slice())?;
                    }
                    if settled.counts {
                        let key = child_key(message.room_id, target, message.seq);
                        changes.insert(key.as_slice(), ())?;
                    }
                    for seq in settled.blanked.iter().filter(|s| **s != message.seq) {
                        let key = message_key(message.room_id, *seq);
                        if let Some(mut gone) = get_json::<_, Message>(&table, key.as_slice())? {
                            unindex_words(&mut words, &gone)?;
                            blank(&mut gone);
                            table.insert(key.as_slice(), to_json(&gone)?.as_slice())?;
                        }
                    }
                }
                (None, Some(parent)) => {
                    let key = child_key(message.room_id, parent, message.seq);
                    replies.insert(key.as_slice(), ())?;
                }
                (None, None) => {
                    let room = message.room_id.bytes();
                    let count = counts.get(room.as_slice())?.map_or(0, |c| c.value());
                    counts.insert(room.as_slice(), count + 1)?;
                    main_line.insert(key.as_slice(), ())?;
                }
            }
            if let Some((dedupe, expires_at)) = dedupe {
                let entry = DedupeEntry {
                    seq: message.seq,
                    expires_at,
                };
                dedupes.insert(dedupe.as_slice(), to_json(&entry)?.as_slice())?;
            }
            outcomes.push(Ok(Inserted::New));
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// The changes to `target` that still count (see [`crate::model::settle`]).
pub(super) fn live_changes(
    index: &impl ReadableTable<&'static [u8], ()>,
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    room: Id,
    target: u64,
) -> StoreResult<Vec<Message>> {
    let (from, to) = (
        child_key(room, target, 0),
        child_key(room, target, u64::MAX),
    );
    let mut live = Vec::new();
    for entry in index.range(from.as_slice()..=to.as_slice())? {
        let (key, _) = entry?;
        let key = message_key(room, trailing_seq(key.value())?);
        if let Some(change) = get_json::<_, Message>(table, key.as_slice())? {
            live.push(change);
        }
    }
    Ok(live)
}

/// Removes the text of a deleted message or of an edit nothing shows any
/// more, with what named its files and whom it mentioned.
pub(super) fn blank(message: &mut Message) {
    message.content.clear();
    message.attachments.clear();
    message.mentions.clear();
    message.mentions_room = false;
}
