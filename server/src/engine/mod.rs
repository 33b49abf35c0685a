//! The engine: what happens to a room's stream, apart from the transports
//! that carry it (the `ws` and `http` shells) and the ports it stands on (the
//! [`crate::bus`] that sequences and fans out, the [`crate::store`] that
//! keeps).
//!
//! - [`chat`]: posting and changing messages, opening a room with a resume
//!   point (the replay, shown as it is now), presence and last seen,
//!   membership checks, and the per-user limits;
//! - [`hub`]: this process's connections and which rooms each has open; the
//!   bus hands it what arrives ([`crate::bus::Deliver`]);
//! - [`admission`]: who may write in a room, learned from the store once and
//!   kept current by the bus's evictions, so posts do not wait for the store;
//! - [`cursor`]: per connection and room, what was delivered, so a resume and
//!   live messages meet without a gap or a duplicate;
//! - [`outbox`]: each connection's bounded queue of frames and the writer
//!   that sends them.

pub(crate) mod admission;
pub mod chat;
pub(crate) mod cursor;
pub(crate) mod hub;
pub(crate) mod outbox;
