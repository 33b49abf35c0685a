//! The managed Redis: one pod (a StatefulSet, so its volume follows it) with
//! AOF on a persistent volume when persistence is on, its Service, the
//! generated password it requires, and the NetworkPolicy that lets only the
//! chat pods reach it (anything else in the cluster could otherwise read every
//! message, or forge one through the persist stream).
//!
//! Highly available (`replicas` above 1): the same StatefulSet runs a primary
//! and replicas, and three Sentinels (a StatefulSet of their own, keeping
//! what they learn on small volumes) watch them and promote a replica when
//! the primary fails. Every pod is known by its stable name under a
//! headless Service, never by address, so pods replaced on new addresses,
//! even all at once, find each other again (scripts beside this file).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rand::RngCore;
use serde_json::json;

use super::{
    BuildError, Component, child_meta, identity, kept_meta, quantity_bytes, selector_labels,
    spread, typed,
};
use crate::crd::{ChatCluster, ManagedRedis};

/// The name the Sentinels know the primary by (`CHAT_REDIS_MASTER_NAME`).
pub const REDIS_MASTER_NAME: &str = "chat";
pub const SENTINEL_PORT: i32 = 26379;
/// Three Sentinels, two of which must agree that the primary is down: one
/// may fail, or sit beside the primary on a lost node, and a failover still
/// happens; a partitioned minority cannot start one.
const SENTINELS: i32 = 3;
/// How long the primary may not answer before the Sentinels fail it over.
const DOWN_AFTER_MS: u32 = 5_000;
const REDIS_START: &str = concat!(
    include_str!("redis-common.sh"),
    include_str!("redis-server.sh")
);
/// The readiness probe of a highly available Redis pod, which also makes a
/// synced replica promotable.
const REDIS_READY: &str = include_str!("redis-ready.sh");
const SENTINEL_START: &str = concat!(
    include_str!("redis-common.sh"),
    include_str!("redis-sentinel.sh")
);
/// A Sentinel's volume holds one small configuration file.
const SENTINEL_VOLUME: &str = "64Mi";

pub fn redis_name(instance: &str) -> String {
    format!("{instance}-redis")
}

pub fn redis_sentinel_name(instance: &str) -> String {
    format!("{instance}-redis-sentinel")
}

/// The headless Service that gives `name`'s pods their stable names
/// (`<pod>.<name>-headless`), published before they are ready: a Redis
/// pod waiting for its primary is reachable by name already.
fn headless_name(name: &str) -> String {
    format!("{name}-headless")
}

/// The stable names of a StatefulSet `name`'s `count` pods, as the other
/// pods in the namespace reach them.
fn pod_names(name: &str, count: i32) -> String {
    let headless = headless_name(name);
    (0..count)
        .map(|ordinal| format!("{name}-{ordinal}.{headless}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The managed Redis, if it runs with Sentinels.
fn highly_available(cluster: &ChatCluster) -> Option<ManagedRedis> {
    cluster
        .spec
        .managed_redis()
        .filter(ManagedRedis::highly_available)
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
        metadata: kept_meta(cluster, redis_auth_secret_name(&instance), Component::Redis)?,
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

/// Only the chat pods may connect to Redis.
pub fn redis_network_policy(cluster: &ChatCluster) -> Result<Option<NetworkPolicy>, BuildError> {
    if cluster.spec.managed_redis().is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    // With Sentinels, the replicas reach the primary and the Sentinels
    // reach every server too.
    let mut peers = vec![Component::Server];
    if highly_available(cluster).is_some() {
        peers.extend([Component::Redis, Component::RedisSentinel]);
    }
    let spec = ingress_from(&instance, Component::Redis, &peers, 6379);
    Ok(Some(NetworkPolicy {
        metadata: child_meta(cluster, redis_name(&instance), Component::Redis)?,
        spec: Some(typed("Redis NetworkPolicy spec", spec)?),
    }))
}

/// Only the chat pods (asking for the primary), the Redis pods (at start)
/// and the other Sentinels may reach a Sentinel.
pub fn redis_sentinel_network_policy(
    cluster: &ChatCluster,
) -> Result<Option<NetworkPolicy>, BuildError> {
    if highly_available(cluster).is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let peers = [
        Component::Server,
        Component::Redis,
        Component::RedisSentinel,
    ];
    let spec = ingress_from(&instance, Component::RedisSentinel, &peers, SENTINEL_PORT);
    Ok(Some(NetworkPolicy {
        metadata: child_meta(
            cluster,
            redis_sentinel_name(&instance),
            Component::RedisSentinel,
        )?,
        spec: Some(typed("Sentinel NetworkPolicy spec", spec)?),
    }))
}

/// A NetworkPolicy spec: `component`'s pods take TCP on `port` from `peers`' pods only.
fn ingress_from(
    instance: &str,
    component: Component,
    peers: &[Component],
    port: i32,
) -> serde_json::Value {
    let from: Vec<_> = peers
        .iter()
        .map(|peer| json!({"podSelector": {"matchLabels": selector_labels(instance, *peer)}}))
        .collect();
    json!({
        "podSelector": {"matchLabels": selector_labels(instance, component)},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": from, "ports": [{"protocol": "TCP", "port": port}]}],
    })
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
    // REDISCLI_AUTH: the probe's redis-cli authenticates without the password in its arguments.
    let mut env = vec![
        json!({"name": "REDIS_PASSWORD", "valueFrom": password}),
        json!({"name": "REDISCLI_AUTH", "valueFrom": password}),
    ];
    let mut command = None;
    let mut affinity = None;
    let mut ready = json!(["redis-cli", "ping"]);
    if redis.highly_available() {
        // Replicas authenticate to the primary with the same password.
        args.extend(["--masterauth".to_owned(), "$(REDIS_PASSWORD)".to_owned()]);
        env.extend(sentinel_env(&instance, &name, &redis));
        command = Some(json!(["sh", "-c", REDIS_START, "redis-server"]));
        ready = json!(["sh", "-c", REDIS_READY]);
        affinity = Some(spread(&instance, Component::Redis));
    }
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
        "replicas": redis.replicas,
        "serviceName": headless_name(&name),
        // Every pod at once: a pod waiting for its primary must not hold
        // back the pod that is (all of them replaced together, say).
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector_labels(&instance, Component::Redis)},
        "template": {
            "metadata": {"labels": meta.labels},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                // Nothing in it calls the Kubernetes API.
                "automountServiceAccountToken": false,
                "affinity": affinity,
                "containers": [{
                    "name": "redis",
                    "image": redis.image,
                    "command": command,
                    "args": args,
                    "env": env,
                    "ports": [{"name": "redis", "containerPort": 6379}],
                    "resources": redis.resources,
                    "readinessProbe": {"exec": {"command": ready}, "periodSeconds": 5, "timeoutSeconds": 10},
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

/// What the scripts of a pod of StatefulSet `name` read: its own stable
/// name, every Redis pod's and Sentinel's, the Redis Service, the master name.
fn sentinel_env(instance: &str, name: &str, redis: &ManagedRedis) -> Vec<serde_json::Value> {
    let sentinels = redis_sentinel_name(instance);
    vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "ANNOUNCE", "value": format!("$(POD_NAME).{}", headless_name(name))}),
        json!({"name": "REDIS_PODS", "value": pod_names(&redis_name(instance), redis.replicas)}),
        json!({"name": "SENTINEL_PODS", "value": pod_names(&sentinels, SENTINELS)}),
        json!({"name": "REDIS_HOST", "value": redis_name(instance)}),
        json!({"name": "MASTER_NAME", "value": REDIS_MASTER_NAME}),
    ]
}

/// The Sentinels: three pods that watch the Redis servers and fail the
/// primary over, each with a small volume for what it learned (its
/// configuration file): after a full restart they still know the primary.
pub fn redis_sentinel_statefulset(
    cluster: &ChatCluster,
) -> Result<Option<StatefulSet>, BuildError> {
    let Some(redis) = highly_available(cluster) else {
        return Ok(None);
    };
    let (instance, _) = identity(cluster)?;
    let name = redis_sentinel_name(&instance);
    let meta = child_meta(cluster, name.clone(), Component::RedisSentinel)?;
    let password =
        json!({"secretKeyRef": {"name": redis_auth_secret_name(&instance), "key": "password"}});
    let mut env = vec![json!({"name": "REDISCLI_AUTH", "valueFrom": password})];
    env.extend(sentinel_env(&instance, &name, &redis));
    env.push(json!({"name": "DOWN_AFTER_MS", "value": DOWN_AFTER_MS.to_string()}));
    let probe = json!({"exec": {"command": ["redis-cli", "-p", SENTINEL_PORT.to_string(), "ping"]}, "periodSeconds": 5});
    let spec = json!({
        "replicas": SENTINELS,
        "serviceName": headless_name(&name),
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector_labels(&instance, Component::RedisSentinel)},
        "template": {
            "metadata": {"labels": meta.labels},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                "automountServiceAccountToken": false,
                "affinity": spread(&instance, Component::RedisSentinel),
                "containers": [{
                    "name": "sentinel",
                    "image": redis.image,
                    "command": ["sh", "-c", SENTINEL_START],
                    "env": env,
                    "ports": [{"name": "sentinel", "containerPort": SENTINEL_PORT}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                    "readinessProbe": probe,
                    "livenessProbe": {"tcpSocket": {"port": "sentinel"}, "periodSeconds": 10},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
            },
        },
        // Highly available Redis always has persistence (the CRD says so).
        "volumeClaimTemplates": [{
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": redis.persistence.storage_class_name,
                "resources": {"requests": {"storage": SENTINEL_VOLUME}},
            },
        }],
    });
    Ok(Some(StatefulSet {
        metadata: meta,
        spec: Some(typed("Sentinel StatefulSet spec", spec)?),
        status: None,
    }))
}

/// The headless Services that name the Redis pods and, with Sentinels,
/// the Sentinels.
pub fn redis_headless_services(cluster: &ChatCluster) -> Result<Vec<Service>, BuildError> {
    if cluster.spec.managed_redis().is_none() {
        return Ok(Vec::new());
    }
    let (instance, _) = identity(cluster)?;
    let mut named = vec![(redis_name(&instance), Component::Redis, 6379, "redis")];
    if highly_available(cluster).is_some() {
        named.push((
            redis_sentinel_name(&instance),
            Component::RedisSentinel,
            SENTINEL_PORT,
            "sentinel",
        ));
    }
    named
        .into_iter()
        .map(|(name, component, port, port_name)| {
            let spec = json!({
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": selector_labels(&instance, component),
                "ports": [{"name": port_name, "port": port, "targetPort": port_name}],
            });
            Ok(Service {
                metadata: child_meta(cluster, headless_name(&name), component)?,
                spec: Some(typed("headless Service spec", spec)?),
                status: None,
            })
        })
        .collect()
}

pub fn redis_sentinel_service(cluster: &ChatCluster) -> Result<Option<Service>, BuildError> {
    if highly_available(cluster).is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "selector": selector_labels(&instance, Component::RedisSentinel),
        "ports": [{"name": "sentinel", "port": SENTINEL_PORT, "targetPort": "sentinel"}],
    });
    Ok(Some(Service {
        metadata: child_meta(
            cluster,
            redis_sentinel_name(&instance),
            Component::RedisSentinel,
        )?,
        spec: Some(typed("Sentinel Service spec", spec)?),
        status: None,
    }))
}

/// With Sentinels: a voluntary disruption (a node drained) takes one Redis
/// server and one Sentinel at a time, so a primary and a quorum remain.
pub fn redis_disruption_budgets(
    cluster: &ChatCluster,
) -> Result<Vec<PodDisruptionBudget>, BuildError> {
    if highly_available(cluster).is_none() {
        return Ok(Vec::new());
    }
    let (instance, _) = identity(cluster)?;
    [
        (redis_name(&instance), Component::Redis),
        (redis_sentinel_name(&instance), Component::RedisSentinel),
    ]
    .into_iter()
    .map(|(name, component)| {
        let spec = json!({"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(&instance, component)}});
        Ok(PodDisruptionBudget {
            metadata: child_meta(cluster, name, component)?,
            spec: Some(typed("Redis PodDisruptionBudget spec", spec)?),
            status: None,
        })
    })
    .collect()
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
