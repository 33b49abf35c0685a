//! chatcluster's Kubernetes operator.
//!
//! [`crd`] defines the `ChatCluster` resource; [`desired`] builds every child
//! object from it with pure functions; [`render`] prints them, as the operator
//! would apply them, without a cluster; [`status`] computes the resource's
//! status from what was observed, idempotently; [`controller`] reconciles
//! them in a cluster, with [`leader`] election and [`metrics`].

pub mod controller;
pub mod crd;
pub mod desired;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod status;
