//! The process-heavy suites: clusters of servers on one Redis (single,
//! Sentinel, Redis Cluster) and the faults tried on them and on one server
//! (pods killed, Redis and MongoDB stopped for a minute, failovers). A target
//! of their own (`test = false`), so `cargo test` is a quick loop over the
//! rest; the test command (scripts/test.sh) runs them with
//! `cargo test -p chat-server --test cluster`.

#[path = "../api/common.rs"]
mod common;

mod chaos;
mod cluster;
mod redis_cluster;
mod redis_failover;
