//! Locking shared in-memory state.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning. The state behind our mutexes is plain
/// maps and queues that every critical section leaves consistent; a panic in
/// another thread is no reason to take the server down, so carry on.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
