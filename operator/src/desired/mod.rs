//! The desired state: every child object of a ChatCluster, built by pure
//! functions of the resource (and, for the generated JWT key, a value the
//! caller supplies). The controller applies them; `chat-operator render`
//! prints them. Nothing here talks to a cluster.

mod mongodb;
mod redis;
mod server;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::crd::ChatCluster;

pub use mongodb::{
    MongoDbCredentials, mongodb_auth_secret, mongodb_auth_secret_name, mongodb_disruption_budget,
    mongodb_init_job, mongodb_name, mongodb_network_policy, mongodb_service, mongodb_statefulset,
};
pub use redis::{
    REDIS_MASTER_NAME, SENTINEL_PORT, generate_password, redis_auth_secret, redis_auth_secret_name,
    redis_disruption_budgets, redis_headless_services, redis_name, redis_network_policy,
    redis_sentinel_name, redis_sentinel_network_policy, redis_sentinel_service,
    redis_sentinel_statefulset, redis_service, redis_statefulset,
};
pub use server::{
    config_map, connection_secret, deployment, disruption_budget, generate_jwt_key,
    horizontal_autoscaler, ingress, jwt_secret, jwt_secret_name, service, service_monitor,
};

/// The field manager of every server-side apply, and the value of
/// `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "chat-operator";
/// The pod template annotation that changes, and so rolls the pods, when the
/// configuration or the secrets they read change.
pub const CONFIG_HASH: &str = "chatcluster.dev/config-hash";
pub const HTTP_PORT: i32 = 8080;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the ChatCluster has no {0}")]
    Missing(&'static str),
    #[error("building {what}: {source}")]
    Shape {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// Which part of the product an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Server,
    Redis,
    RedisSentinel,
    MongoDb,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Server => "server",
            Component::Redis => "redis",
            Component::RedisSentinel => "redis-sentinel",
            Component::MongoDb => "mongodb",
        }
    }
}

/// The cluster's name and namespace, which every child needs.
pub(crate) fn identity(cluster: &ChatCluster) -> Result<(String, String), BuildError> {
    let name = cluster
        .metadata
        .name
        .clone()
        .ok_or(BuildError::Missing("metadata.name"))?;
    let namespace = cluster
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    Ok((name, namespace))
}

/// The labels that select a component's pods.
pub fn selector_labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "chatcluster".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// The standard labels every child carries.
pub fn labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(instance, component);
    labels.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "chatcluster".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGER.to_owned(),
    );
    labels
}

/// Spread `component`'s pods over nodes where the scheduler can, so one
/// node lost takes at most one of them.
pub(crate) fn spread(instance: &str, component: Component) -> serde_json::Value {
    json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": selector_labels(instance, component)},
        },
    }]}})
}

/// A Kubernetes quantity as a number: `128Mi`, `1.5Gi`, `2Pi`, `500m`,
/// `1e3`, `2E` (the API server's grammar: a decimal number, then a binary
/// suffix, a decimal suffix or an exponent). None for anything else.
pub fn quantity_value(quantity: &str) -> Option<f64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    // Digits, at most one point, and a digit somewhere.
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 2f64.powi(10),
        "Mi" => 2f64.powi(20),
        "Gi" => 2f64.powi(30),
        "Ti" => 2f64.powi(40),
        "Pi" => 2f64.powi(50),
        "Ei" => 2f64.powi(60),
        exponent => {
            let digits = exponent.strip_prefix(['e', 'E'])?;
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(digits.parse().ok()?)
        }
    };
    let value = number * scale;
    value.is_finite().then_some(value)
}

/// A quantity of bytes (a volume's size, a memory limit), rounded up to a
/// whole byte as the API server does.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let value = quantity_value(quantity)?.ceil();
    // Exactly representable below 2^53; every real size is.
    (value < 2f64.powi(63)).then_some(value as u64)
}

/// `key=value,...` for a label selector string (the scale subresource's).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of a child: name, namespace, labels, and the owner reference that
/// lets Kubernetes garbage-collect it with the ChatCluster.
pub(crate) fn child_meta(
    cluster: &ChatCluster,
    name: String,
    component: Component,
) -> Result<ObjectMeta, BuildError> {
    let (instance, namespace) = identity(cluster)?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(labels(&instance, component)),
        owner_references: Some(vec![owner_reference(cluster)?]),
        ..Default::default()
    })
}

/// The Secrets whose credentials the data volumes depend on: Redis's
/// password and MongoDB's users and keyfile. The ChatCluster does not own
/// them (no garbage collection): like the volumes, which a StatefulSet
/// leaves behind, they outlive it, so a `helm uninstall` and install, or a
/// ChatCluster deleted and applied again, finds its data reachable.
pub fn data_credentials(instance: &str) -> [String; 2] {
    [
        redis_auth_secret_name(instance),
        mongodb_auth_secret_name(instance),
    ]
}

/// `child_meta` without the owner, for `data_credentials`.
pub(crate) fn kept_meta(
    cluster: &ChatCluster,
    name: String,
    component: Component,
) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        owner_references: None,
        ..child_meta(cluster, name, component)?
    })
}

fn owner_reference(cluster: &ChatCluster) -> Result<OwnerReference, BuildError> {
    Ok(OwnerReference {
        api_version: ChatCluster::api_version(&()).into_owned(),
        kind: ChatCluster::kind(&()).into_owned(),
        name: cluster
            .metadata
            .name
            .clone()
            .ok_or(BuildError::Missing("metadata.name"))?,
        // Rendering without a cluster has no uid; the API server fills nothing in,
        // so the controller always builds from a live object that has one.
        uid: cluster.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Turns a JSON shape into a typed object; the shapes are ours, so a failure
/// is a bug the builder tests catch.
pub(crate) fn typed<T: DeserializeOwned>(
    what: &'static str,
    value: serde_json::Value,
) -> Result<T, BuildError> {
    serde_json::from_value(value).map_err(|source| BuildError::Shape { what, source })
}

/// A StatefulSet whose pods are stamped with `secrets_digest`, the digest
/// of the secret values they read at start (a Secret's value reaches an
/// environment variable only then), so a changed value rolls them as a
/// changed template does: a Redis pod left on the old password while the
/// chat pods roll onto the new one answers them `WRONGPASS`.
pub fn rolled_with(
    mut set: k8s_openapi::api::apps::v1::StatefulSet,
    secrets_digest: &str,
) -> k8s_openapi::api::apps::v1::StatefulSet {
    if let Some(spec) = set.spec.as_mut() {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CONFIG_HASH.to_owned(), secrets_digest.to_owned());
    }
    set
}

/// A short stable digest of everything that must roll the pods when it changes.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
