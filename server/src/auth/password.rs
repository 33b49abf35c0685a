//! Password hashing with argon2id (OWASP's recommended parameters, the crate's
//! defaults) in PHC string form, so parameters can be raised later without
//! invalidating stored hashes.
//!
//! Hashing is deliberately slow (tens of milliseconds) and big (19 MiB each),
//! so callers run these functions through [`crate::blocking::Slots`], never on
//! an async worker and never more at once than the pod allows.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Makes the allocator hand each hash's working memory back to the system.
///
/// argon2id works in 19 MiB of memory per hash. glibc serves a block that big
/// with its own mapping, but after freeing one it raises its threshold for
/// that (up to 32 MiB), so the next ones are carved from the calling thread's
/// arena and kept there: with hashes spread over the blocking pool's threads,
/// a server that had a few dozen sign-ins held hundreds of MiB it no longer
/// used. A fixed threshold keeps big blocks mapped and unmapped on free.
/// Call once at start-up; elsewhere than glibc this does nothing.
pub fn return_hash_memory_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_BYTES: libc::c_int = 1 << 20;
        // SAFETY: mallopt only sets an allocator tunable; it takes glibc's own
        // locks and has no preconditions.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

pub fn hash(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches `stored`. The comparison inside argon2 is constant
/// time; a malformed stored hash counts as a mismatch.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends the same work as a real verification when there is no account, so the
/// response time of a failed login does not reveal whether the e-mail exists.
pub fn verify_against_nothing(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    if let Some(dummy) = DUMMY.get_or_init(|| hash("not a real password").ok()) {
        let _ = verify(password, dummy);
    }
}

/// How long a sign-up or sign-in may wait for a hashing slot (see
/// [`crate::blocking::Slots`]): a few hashes' time, short of a client's
/// patience; later ones are turned away (503 `busy`) rather than queued
/// without end.
pub const HASH_WAIT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery staple").unwrap();
        let b = hash("correct horse battery staple").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify("correct horse battery staple", &a));
        assert!(!verify("correct horse battery stapler", &a));
        assert!(!verify("", &a));
    }

    #[test]
    fn a_malformed_stored_hash_never_matches() {
        assert!(!verify("anything", "not-a-phc-string"));
        assert!(!verify("anything", ""));
    }
}
