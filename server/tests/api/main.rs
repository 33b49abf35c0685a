//! End-to-end tests of the REST API over real HTTP, each run against the
//! embedded store and against MongoDB (see `common`).

mod common;

mod abuse;
mod accounts;
mod attachments;
mod changes;
mod chaos;
mod cluster;
mod history;
mod mentions;
mod operations;
mod profiles;
mod realtime;
mod redis_cluster;
mod redis_failover;
mod room_list;
mod rooms;
mod search;
mod store_contract;
mod threads;
