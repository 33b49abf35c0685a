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

/// An unordered `insert_many` whose only failures were duplicate keys
/// succeeded: what it refused is already stored.
pub(super) fn ignore_duplicates<T>(written: mongodb::error::Result<T>) -> StoreResult<()> {
    match written {
        Ok(_) => Ok(()),
        Err(e) => match e.kind.as_ref() {
            ErrorKind::InsertMany(failure)
                if failure.write_concern_error.is_none()
                    && failure
                        .write_errors
                        .as_ref()
                        .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY)) =>
            {
                Ok(())
            }
            _ => Err(map_error(e)),
        },
    }
}

/// What an unordered `insert_many` of messages refused because the room
/// holds another message with the same dedupe key, by position in the
/// batch. Its other duplicates are messages stored before (the batch
/// written twice): written, as far as the caller is concerned.
pub(super) fn refused_for_key<T>(written: mongodb::error::Result<T>) -> StoreResult<Vec<usize>> {
    match written {
        Ok(_) => Ok(Vec::new()),
        Err(e) => match e.kind.as_ref() {
            ErrorKind::InsertMany(failure)
                if failure.write_concern_error.is_none()
                    && failure
                        .write_errors
                        .as_ref()
                        .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY)) =>
            {
                Ok(failure
                    .write_errors
                    .iter()
                    .flatten()
                    .filter(|w| names_index(&w.message, DEDUPE_INDEX))
                    .map(|w| w.index)
                    .collect())
            }
            _ => Err(map_error(e)),
        },
    }
}

/// Whether a duplicate-key message (`E11000 ... index: NAME dup key: ...`)
/// is about index `name`.
pub(super) fn names_index(message: &str, name: &str) -> bool {
    message.contains(&format!("index: {name} "))
}
