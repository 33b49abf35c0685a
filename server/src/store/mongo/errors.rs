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

/// A dedupe entry's id: the room and the sender's key.
pub(super) fn dedupe_id(room: Id, key: &str) -> String {
    format!("{room}:{key}")
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
