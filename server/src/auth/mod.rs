//! Authentication: who is calling.
//!
//! Short-lived HS256 access tokens ([`jwt`]) carry identity to every pod without
//! a lookup; long-lived opaque refresh tokens ([`refresh`]) are stored (hashed)
//! so that logout can revoke them; passwords are argon2id ([`password`]).

pub mod jwt;
pub mod limits;
pub mod password;
pub mod refresh;

pub use jwt::{Claims, TokenError, TokenIssuer};
