//! The managed Redis: one pod (a StatefulSet, so its volume follows it) with
//! AOF on a persistent volume when persistence is on, its Service, the
//! generated password it requires, and the NetworkPolicy that lets only the
//! chat pods reach it (anything else in the cluster could otherwise read every
//! message, or forge one through the persist stream).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use rand::RngCore;
use serde_json::json;

use super::{BuildError, Component, child_meta, identity, selector_labels, typed};
use crate::crd::ChatCluster;

pub fn redis_name(instance: &str) -> String {
    format!("{instance}-redis")
}

pub fn redis_auth_secret_name(instance: &str) -> String {
    format!("{instance}-redis-auth")
}

/// A fresh password: 32 random bytes in hex, safe inside a URL.
pub fn generate_password() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The managed Redis's password. The caller supplies it (generated once, or
/// read back from this Secret) and never rewrites an existing one.
pub fn redis_auth_secret(
    cluster: &ChatCluster,
    password: &str,
) -> Result<Option<Secret>, BuildError> {
    if cluster.spec.managed_redis().is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    Ok(Some(Secret {
        metadata: child_meta(cluster, redis_auth_secret_name(&instance), Component::Redis)?,
        data: Some(BTreeMap::from([(
            "password".to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }))
}

/// Redis keeps memory below this share of its container's limit, evicting
/// only keys that expire (dedupe keys, rooms' recent logs) and refusing
/// writes once none are left, rather than being killed for memory with
/// acked messages in its persist stream.
const MAXMEMORY_SHARE_PERCENT: u64 = 75;

/// `256Mi`, `1Gi`, `500M`, `1048576` in bytes; `None` for what this does not read.
fn quantity_bytes(quantity: &str) -> Option<u64> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// Only the chat pods may connect to Redis.
pub fn redis_network_policy(cluster: &ChatCluster) -> Result<Option<NetworkPolicy>, BuildError> {
    if cluster.spec.managed_redis().is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "podSelector": {"matchLabels": selector_labels(&instance, Component::Redis)},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "from": [{"podSelector": {"matchLabels": selector_labels(&instance, Component::Server)}}],
            "ports": [{"protocol": "TCP", "port": 6379}],
        }],
    });
    Ok(Some(NetworkPolicy {
        metadata: child_meta(cluster, redis_name(&instance), Component::Redis)?,
        spec: Some(typed("Redis NetworkPolicy spec", spec)?),
    }))
}

pub fn redis_statefulset(cluster: &ChatCluster) -> Result<Option<StatefulSet>, BuildError> {
    let Some(redis) = cluster.spec.managed_redis() else {
        return Ok(None);
    };
    let (instance, _) = identity(cluster)?;
    let name = redis_name(&instance);
    let meta = child_meta(cluster, name.clone(), Component::Redis)?;
    let persistence = &redis.persistence;
    // Acked messages wait in a Redis stream until they reach MongoDB: with
    // persistence, every write is in the append-only file (fsynced each second).
    let mut args: Vec<String> = if persistence.enabled {
        vec![
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
            "/data",
        ]
    } else {
        vec!["--appendonly", "no", "--save", ""]
    }
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Kubernetes expands $(REDIS_PASSWORD) from the container's environment.
    args.extend(["--requirepass".to_owned(), "$(REDIS_PASSWORD)".to_owned()]);
    args.extend(["--maxmemory-policy".to_owned(), "volatile-ttl".to_owned()]);
    let memory_limit = redis
        .resources
        .limits
        .as_ref()
        .and_then(|limits| limits.get("memory"))
        .and_then(|quantity| quantity_bytes(&quantity.0));
    if let Some(limit) = memory_limit {
        args.extend([
            "--maxmemory".to_owned(),
            (limit / 100 * MAXMEMORY_SHARE_PERCENT).to_string(),
        ]);
    }
    let password =
        json!({"secretKeyRef": {"name": redis_auth_secret_name(&instance), "key": "password"}});
    let claims = persistence.enabled.then(|| {
        vec![json!({
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": persistence.storage_class_name,
                "resources": {"requests": {"storage": persistence.size}},
            },
        })]
    });
    let volumes = (!persistence.enabled).then(|| vec![json!({"name": "data", "emptyDir": {}})]);
    let spec = json!({
        "replicas": 1,
        "serviceName": name,
        "selector": {"matchLabels": selector_labels(&instance, Component::Redis)},
        "template": {
            "metadata": {"labels": meta.labels},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                // Nothing in it calls the Kubernetes API.
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "redis",
                    "image": redis.image,
                    "args": args,
                    // REDISCLI_AUTH: the probe's redis-cli authenticates without the password in its arguments.
                    "env": [
                        {"name": "REDIS_PASSWORD", "valueFrom": password},
                        {"name": "REDISCLI_AUTH", "valueFrom": password},
                    ],
                    "ports": [{"name": "redis", "containerPort": 6379}],
                    "resources": redis.resources,
                    "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
                    "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
                "volumes": volumes,
            },
        },
        "volumeClaimTemplates": claims,
    });
    Ok(Some(StatefulSet {
        metadata: meta,
        spec: Some(typed("Redis StatefulSet spec", spec)?),
        status: None,
    }))
}

pub fn redis_service(cluster: &ChatCluster) -> Result<Option<Service>, BuildError> {
    if cluster.spec.managed_redis().is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "selector": selector_labels(&instance, Component::Redis),
        "ports": [{"name": "redis", "port": 6379, "targetPort": "redis"}],
    });
    Ok(Some(Service {
        metadata: child_meta(cluster, redis_name(&instance), Component::Redis)?,
        spec: Some(typed("Redis Service spec", spec)?),
        status: None,
    }))
}
