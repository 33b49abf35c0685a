//! What the driver's errors mean to the rest of the server.

use super::*;

/// Connection trouble means "try later" (503); anything else is our bug or data (500).
pub(super) fn map_error(error: mongodb::error::Error) -> StoreError {
    match *error.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. } => {
            StoreError::Unavailable(format!("MongoDB: {}", error.kind))
        }
        _ => StoreError::Internal(format!("MongoDB: {}", error.kind)),
    }
}

/// The name of the unique index a write violated, if that is why it failed.
pub(super) fn duplicate_key(error: &mongodb::error::Error) -> Option<String> {
    let message = match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == DUPLICATE_KEY => &e.message,
        ErrorKind::Command(e) if e.code == DUPLICATE_KEY => &e.message,
        _ => return None,
    };
    Some(message.clone())
}

/// The refusals of an unordered `insert_many` that failed only on duplicate
/// keys (and no write concern); None for any other failure.
fn only_duplicates(error: &mongodb::error::Error) -> Option<&[mongodb::error::IndexedWriteError]> {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => failure
            .write_errors
            .as_deref()
            .filter(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY)),
        _ => None,
    }
}

/// An unordered `insert_many` whose only failures were duplicate keys
/// succeeded: what it refused is already stored.
pub(super) fn ignore_duplicates<T>(written: mongodb::error::Result<T>) -> StoreResult<()> {
    match written {
        Ok(_) => Ok(()),
        Err(e) if only_duplicates(&e).is_some() => Ok(()),
        Err(e) => Err(map_error(e)),
    }
}

/// What an unordered `insert_many` of messages refused because the room
/// holds another message with the same dedupe key, by position in the
/// batch. Its other duplicates are messages stored before (the batch
/// written twice): written, as far as the caller is concerned.
pub(super) fn refused_for_key<T>(written: mongodb::error::Result<T>) -> StoreResult<Vec<usize>> {
    let Err(e) = written else {
        return Ok(Vec::new());
    };
    match only_duplicates(&e) {
        Some(refused) => Ok(refused
            .iter()
            .filter(|w| names_index(&w.message, DEDUPE_INDEX))
            .map(|w| w.index)
            .collect()),
        None => Err(map_error(e)),
    }
}

/// Whether a duplicate-key message (`E11000 ... index: NAME dup key: ...`)
/// is about index `name`.
pub(super) fn names_index(message: &str, name: &str) -> bool {
    message.contains(&format!("index: {name} "))
}
