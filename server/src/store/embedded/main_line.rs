//! The main-line index (see `MAIN_LINE`): the text and system messages
//! history pages show, without changes or replies; built on opening for a
//! database from before it.

use super::*;

/// Builds [`MAIN_LINE`] from the stored messages once, for a database
/// written before it existed.
pub(super) fn main_line_if_needed(tx: &redb::WriteTransaction) -> StoreResult<()> {
    let mut meta = tx.open_table(META)?;
    if meta
        .get("main_line")?
        .is_some_and(|v| v.value() == MAIN_LINE_VERSION)
    {
        return Ok(());
    }
    let messages = tx.open_table(MESSAGES)?;
    let mut main_line = tx.open_table(MAIN_LINE)?;
    let mut indexed = 0u64;
    for entry in messages.iter()? {
        let (key, value) = entry?;
        let message: Message = serde_json::from_slice(value.value())?;
        if message.on_main_line() {
            main_line.insert(key.value(), ())?;
            indexed += 1;
        }
    }
    meta.insert("main_line", MAIN_LINE_VERSION)?;
    if indexed > 0 {
        tracing::info!(
            messages = indexed,
            "indexed the stored messages for history pages"
        );
    }
    Ok(())
}

/// The main-line messages of `room` below seq `before`, skipping the newest
/// `skip`, then at most `limit`, oldest first: the index's keys are skipped
/// without reading a record.
pub(super) fn main_line_page(
    tx: &redb::ReadTransaction,
    table: &redb::ReadOnlyTable<&[u8], &[u8]>,
    room: Id,
    before: u64,
    skip: u64,
    limit: u64,
) -> StoreResult<Vec<Message>> {
    let take = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let (from, to) = (message_key(room, 0), message_key(room, before));
    let index = tx.open_table(MAIN_LINE)?;
    let mut messages = Vec::new();
    for entry in index
        .range(from.as_slice()..to.as_slice())?
        .rev()
        .skip(take(skip))
        .take(take(limit))
    {
        let (key, _) = entry?;
        if let Some(message) = get_json::<_, Message>(table, key.value())? {
            messages.push(message);
        }
    }
    messages.reverse();
    Ok(messages)
}
