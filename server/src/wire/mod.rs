//! What crosses the wire, defined once: WebSocket frames ([`frames`]), the
//! JSON views of users and rooms ([`views`]) that REST answers and frames
//! carry, and the catalogue of error and close codes ([`errors`]). Both shells (`http`, `ws`) and the engine speak in these types;
//! chat messages themselves are [`crate::model::Message`]s.

pub mod errors;
pub mod frames;
#[cfg(test)]
mod typescript;
pub mod views;
