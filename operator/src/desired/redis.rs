//! The managed Redis: one pod (a StatefulSet, so its volume follows it) with
//! AOF on a persistent volume when persistence is on, and its Service.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::{BuildError, Component, child_meta, identity, selector_labels, typed};
use crate::crd::ChatCluster;

pub fn redis_name(instance: &str) -> String {
    format!("{instance}-redis")
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
    let args: Vec<&str> = if persistence.enabled {
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
    };
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
                "containers": [{
                    "name": "redis",
                    "image": redis.image,
                    "args": args,
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
