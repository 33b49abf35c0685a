//! Refresh tokens: 256 random bits, given to the client once and stored only as
//! a SHA-256 digest. Each use rotates the token (the old one is consumed), so a
//! stolen token stops working as soon as either party uses it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// How long a refresh token stays valid if unused.
pub const TTL: time::Duration = time::Duration::days(30);

/// A new token and the digest to store for it.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let digest = digest(&token);
    (token, digest)
}

pub fn digest(token: &str) -> String {
    crate::attachment::content_hash(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_stored_only_as_digests() {
        let (token, stored) = generate();
        let (other, _) = generate();
        assert_ne!(token, other);
        assert_eq!(token.len(), 43);
        assert_eq!(stored, digest(&token));
        assert_eq!(stored.len(), 64);
        assert!(!stored.contains(&token));
    }
}
