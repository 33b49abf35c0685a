//! The managed MongoDB: a StatefulSet of `members` replica-set members with a
//! volume each, a headless Service for their stable names, and a Job that
//! initiates the replica set (idempotent: it does nothing once initiated), and
//! the NetworkPolicy that admits only the chat pods, the members and that Job.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

use super::{BuildError, Component, child_meta, digest, identity, selector_labels, typed};
use crate::crd::ChatCluster;

pub const REPLICA_SET: &str = "rs0";

pub fn mongodb_name(instance: &str) -> String {
    format!("{instance}-mongodb")
}

pub fn mongodb_statefulset(cluster: &ChatCluster) -> Result<Option<StatefulSet>, BuildError> {
    let Some(mongodb) = cluster.spec.managed_mongodb() else {
        return Ok(None);
    };
    let (instance, _) = identity(cluster)?;
    let name = mongodb_name(&instance);
    let meta = child_meta(cluster, name.clone(), Component::MongoDb)?;
    let spec = json!({
        "replicas": mongodb.members,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector_labels(&instance, Component::MongoDb)},
        "template": {
            "metadata": {"labels": meta.labels},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector_labels(&instance, Component::MongoDb)}},
                }]}},
                "containers": [{
                    "name": "mongodb",
                    "image": mongodb.image,
                    "args": ["--replSet", REPLICA_SET, "--bind_ip_all"],
                    "ports": [{"name": "mongodb", "containerPort": 27017}],
                    "resources": mongodb.resources,
                    "readinessProbe": {"tcpSocket": {"port": "mongodb"}, "periodSeconds": 5},
                    "livenessProbe": {"tcpSocket": {"port": "mongodb"}, "periodSeconds": 10},
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data/db"}],
                }],
            },
        },
        "volumeClaimTemplates": [{
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": mongodb.storage_class_name,
                "resources": {"requests": {"storage": mongodb.storage_size}},
            },
        }],
    });
    Ok(Some(StatefulSet {
        metadata: meta,
        spec: Some(typed("MongoDB StatefulSet spec", spec)?),
        status: None,
    }))
}

/// Headless: each member gets a stable DNS name (`<name>-0.<name>`).
pub fn mongodb_service(cluster: &ChatCluster) -> Result<Option<Service>, BuildError> {
    if cluster.spec.managed_mongodb().is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "clusterIP": "None",
        "publishNotReadyAddresses": true,
        "selector": selector_labels(&instance, Component::MongoDb),
        "ports": [{"name": "mongodb", "port": 27017, "targetPort": "mongodb"}],
    });
    Ok(Some(Service {
        metadata: child_meta(cluster, mongodb_name(&instance), Component::MongoDb)?,
        spec: Some(typed("MongoDB Service spec", spec)?),
        status: None,
    }))
}

/// Initiates the replica set once its members answer; retried by the Job
/// until they do, and a no-op when it is already initiated. A Job's template
/// cannot be changed, so its name carries a digest of the spec: a new member
/// count or image makes a new Job, and the controller prunes the old one. The
/// finished Job is kept (no TTL), or the controller would re-create it.
/// The init Job's pod: its own component, which the members' NetworkPolicy admits.
fn init_job_labels(instance: &str) -> serde_json::Value {
    json!({
        "app.kubernetes.io/name": "chatcluster",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": "mongodb-init",
    })
}

/// Only the chat pods, the members themselves (replication) and the init Job
/// may connect to MongoDB.
pub fn mongodb_network_policy(cluster: &ChatCluster) -> Result<Option<NetworkPolicy>, BuildError> {
    if cluster.spec.managed_mongodb().is_none() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "podSelector": {"matchLabels": selector_labels(&instance, Component::MongoDb)},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "from": [
                {"podSelector": {"matchLabels": selector_labels(&instance, Component::Server)}},
                {"podSelector": {"matchLabels": selector_labels(&instance, Component::MongoDb)}},
                {"podSelector": {"matchLabels": init_job_labels(&instance)}},
            ],
            "ports": [{"protocol": "TCP", "port": 27017}],
        }],
    });
    Ok(Some(NetworkPolicy {
        metadata: child_meta(cluster, mongodb_name(&instance), Component::MongoDb)?,
        spec: Some(typed("MongoDB NetworkPolicy spec", spec)?),
    }))
}

pub fn mongodb_init_job(cluster: &ChatCluster) -> Result<Option<Job>, BuildError> {
    let Some(mongodb) = cluster.spec.managed_mongodb() else {
        return Ok(None);
    };
    let (instance, namespace) = identity(cluster)?;
    let name = mongodb_name(&instance);
    let members: Vec<String> = (0..mongodb.members)
        .map(|i| format!("{{_id: {i}, host: '{name}-{i}.{name}.{namespace}.svc:27017'}}"))
        .collect();
    let script = format!(
        "try {{ rs.status().ok }} catch (e) {{ rs.initiate({{_id: '{REPLICA_SET}', members: [{}]}}).ok }}",
        members.join(", ")
    );
    let spec = json!({
        "backoffLimit": 20,
        "template": {
            // Not the members' selector labels: the headless Service must not pick this pod.
            "metadata": {"labels": init_job_labels(&instance)},
            "spec": {
                "restartPolicy": "OnFailure",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "initiate",
                    "image": mongodb.image,
                    "command": ["mongosh", "--quiet", "--host", format!("{name}-0.{name}.{namespace}.svc:27017"), "--eval", script],
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                }],
            },
        },
    });
    Ok(Some(Job {
        metadata: child_meta(
            cluster,
            format!("{name}-init-{}", digest([spec.to_string().as_str()])),
            Component::MongoDb,
        )?,
        spec: Some(typed("MongoDB init Job spec", spec)?),
        status: None,
    }))
}
