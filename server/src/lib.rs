//! chatcluster's chat server: REST and WebSocket chat over a bus (one
//! process, or many pods on Redis) and a store (embedded, or MongoDB).
//!
//! Layers, each using only those below it (`scripts/check_layers.py` fails
//! the tests on an import cycle):
//!
//! - **shells**, which speak to clients: [`http`] (REST, probes, metrics, the
//!   web client; its [`http::caller`] is the signed-in user) and [`ws`] (the
//!   WebSocket handshake and each connection's reader). [`server`] builds
//!   both from a [`config::Config`] into one app; [`state::AppState`] is what
//!   their handlers share.
//! - **the engine** ([`engine`]), which knows rooms and connections: posting
//!   and changing messages, opening a room with a replay as it is now,
//!   presence, membership and per-user limits ([`engine::chat`]), this
//!   process's connections ([`engine::hub`]), resume cursors and outboxes.
//! - **ports**: the [`bus`] gives each message its seq, makes it durable and
//!   fans it out, handing what arrives to the engine's hub through
//!   [`bus::Deliver`]; the [`store`] keeps users, rooms, history and files.
//!   [`health`] watches both for `/readyz`.
//! - **the base**, pure or nearly: [`model`] (the data and its rules),
//!   [`wire`] (frames, views and the error and close codes, defined once;
//!   the web client's TypeScript is generated from them), [`validate`] (input rules),
//!   [`auth`] (tokens, passwords, sign-in limits), [`search`], [`mention`],
//!   [`attachment`], [`blocking`] (bounded slots for CPU-heavy work),
//!   [`metrics`], [`sync`], [`telemetry`].

// What only this crate uses is `pub(crate)`, and the lint keeps it so.
#![warn(unreachable_pub)]

pub(crate) mod attachment;
pub mod auth;
pub(crate) mod blocking;
pub mod bus;
pub mod config;
pub mod engine;
pub(crate) mod health;
pub mod http;
pub(crate) mod mention;
pub(crate) mod metrics;
pub mod model;
pub(crate) mod search;
pub mod server;
pub mod state;
pub mod store;
pub(crate) mod sync;
pub mod telemetry;
pub mod validate;
pub mod wire;
pub(crate) mod ws;
