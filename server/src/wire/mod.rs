//! What crosses the wire, defined once: WebSocket frames ([`frames`]) and the
//! JSON views of users and rooms ([`views`]) that REST answers and frames
//! carry. Both shells (`http`, `ws`) and the engine speak in these types;
//! chat messages themselves are [`crate::model::Message`]s.

pub mod frames;
pub mod views;
