//! chatcluster's chat server.
//!
//! Requests enter through [`http`] (REST, probes, metrics), are authenticated by
//! [`auth`], checked by [`validate`] and the pure rules on [`model`] types, and
//! read or write durable state through [`store`] (MongoDB or embedded). [`server`]
//! wires it together from a [`config::Config`].

pub mod attachment;
pub mod auth;
pub mod blocking;
pub mod bus;
pub mod chat;
pub mod config;
pub mod health;
pub mod http;
pub mod mention;
pub mod metrics;
pub mod model;
pub mod search;
pub mod server;
pub mod state;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod validate;
pub mod ws;
