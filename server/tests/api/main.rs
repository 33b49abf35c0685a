//! End-to-end tests of the REST API and the WebSocket protocol over real
//! TCP, each run against the embedded store and against MongoDB (see
//! `common`), and the store contract. Clusters of servers and faults are the
//! `cluster` target.

mod common;

mod abuse;
mod accounts;
mod attachments;
mod changes;
mod history;
mod mentions;
mod operations;
mod profiles;
mod realtime;
mod room_list;
mod rooms;
mod search;
mod store_contract;
mod threads;
