//! The search index (see `SEARCH_WORDS`): the words of text messages and
//! edits by room and bucket of seqs, added and removed with them, read
//! newest bucket first; a database with an older layout is indexed anew.

use super::*;

/// Takes what [`index_words`] added for `message` out of the index.
pub(super) fn unindex_words(
    words: &mut redb::Table<&[u8], ()>,
    message: &Message,
) -> StoreResult<()> {
    for word in crate::search::words(&message.content) {
        words.remove(word_key(message.room_id, &word, message.seq).as_slice())?;
    }
    Ok(())
}

/// Adds what a search can find in `message` to the index: the words of a
/// text message or an edit (whose text search also matches).
pub(super) fn index_words(
    words: &mut redb::Table<&[u8], ()>,
    message: &Message,
) -> StoreResult<()> {
    if !crate::model::MessageKind::SEARCHED.contains(&message.kind) {
        return Ok(());
    }
    for word in crate::search::words(&message.content) {
        words.insert(word_key(message.room_id, &word, message.seq).as_slice(), ())?;
    }
    Ok(())
}

/// The index bucket of `seq`. Seqs past 2^40, which no room reaches, share
/// the last one: still found, only in a bigger bucket.
pub(super) fn word_bucket(seq: u64) -> u32 {
    u32::try_from(seq >> WORD_BUCKET_BITS).unwrap_or(u32::MAX)
}

pub(super) fn word_key(room: Id, word: &str, seq: u64) -> Vec<u8> {
    let mut key = word_prefix(room, word_bucket(seq), word);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `room|bucket|prefix`, with room for the rest of a key.
pub(super) fn word_prefix(room: Id, bucket: u32, prefix: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + 4 + prefix.len() + 9);
    key.extend_from_slice(&room.bytes());
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(prefix.as_bytes());
    key
}

/// The keys of every word in `bucket` of `room` that starts with `prefix`,
/// as `start..end` (see [`SEARCH_WORDS`]).
pub(super) fn word_range(room: Id, bucket: u32, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = word_prefix(room, bucket, prefix);
    let mut end = start.clone();
    end.push(0xff);
    (start, end)
}

/// Every index key of `room`, as `start..end`.
pub(super) fn room_words(room: Id) -> (Vec<u8>, Vec<u8>) {
    let mut end = room.bytes().to_vec();
    end.extend_from_slice(&[0xff; 5]);
    (room.bytes().to_vec(), end)
}

/// The newest bucket of `room`'s index below `below` (or at all) that holds
/// any word: one seek, however many seqs lie between (a failover skips
/// 100,000).
pub(super) fn previous_bucket(
    words: &redb::ReadOnlyTable<&[u8], ()>,
    room: Id,
    below: Option<u32>,
) -> StoreResult<Option<u32>> {
    let (start, mut end) = room_words(room);
    if let Some(below) = below {
        end = word_prefix(room, below, "");
    }
    let Some(entry) = words.range(start.as_slice()..end.as_slice())?.next_back() else {
        return Ok(None);
    };
    let (key, _) = entry?;
    let bucket = key
        .value()
        .get(12..16)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| StoreError::Internal("embedded store: corrupt index key".into()))?;
    Ok(Some(bucket))
}

/// The seqs in `bucket` of `room` with a word starting with each of `terms`.
pub(super) fn bucket_matches(
    words: &redb::ReadOnlyTable<&[u8], ()>,
    room: Id,
    bucket: u32,
    terms: &[String],
) -> StoreResult<std::collections::BTreeSet<u64>> {
    let mut seqs: Option<std::collections::BTreeSet<u64>> = None;
    for term in terms {
        let (start, end) = word_range(room, bucket, term);
        let mut with_term = std::collections::BTreeSet::new();
        for entry in words.range(start.as_slice()..end.as_slice())? {
            let (key, _) = entry?;
            let seq = trailing_seq(key.value())?;
            if seqs.as_ref().is_none_or(|seqs| seqs.contains(&seq)) {
                with_term.insert(seq);
            }
        }
        if with_term.is_empty() {
            return Ok(with_term);
        }
        seqs = Some(with_term);
    }
    Ok(seqs.unwrap_or_default())
}

/// Indexes every stored message once, in a database made before the index
/// or with an index of another layout.
pub(super) fn index_if_needed(tx: &redb::WriteTransaction) -> StoreResult<()> {
    let mut meta = tx.open_table(META)?;
    if meta
        .get("search_index")?
        .is_some_and(|v| v.value() == SEARCH_INDEX_VERSION)
    {
        return Ok(());
    }
    tx.delete_table(SEARCH_WORDS)?;
    let messages = tx.open_table(MESSAGES)?;
    let mut words = tx.open_table(SEARCH_WORDS)?;
    let mut indexed = 0u64;
    for entry in messages.iter()? {
        let (_, value) = entry?;
        let message: Message = serde_json::from_slice(value.value())?;
        index_words(&mut words, &message)?;
        indexed += 1;
    }
    meta.insert("search_index", SEARCH_INDEX_VERSION)?;
    if indexed > 0 {
        tracing::info!(messages = indexed, "indexed the stored messages for search");
    }
    Ok(())
}
