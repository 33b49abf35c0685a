//! The managed MongoDB: a StatefulSet of `members` replica-set members with a
//! volume each, a headless Service for their stable names, a Job that
//! initiates the replica set and then adds and removes members one at a time
//! as `members` changes (idempotent: it does nothing when the set is as the
//! spec says), and the NetworkPolicy that admits only the chat pods, the
//! members and that Job.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rand::RngCore;
use serde_json::json;

use super::{
    BuildError, Component, child_meta, digest, identity, kept_meta, selector_labels, typed,
};
use crate::crd::ChatCluster;

pub const REPLICA_SET: &str = "rs0";
/// Run by the init Job: the replica set's members brought to the spec.
const MEMBERS_SCRIPT: &str = include_str!("mongodb-members.js");

pub fn mongodb_name(instance: &str) -> String {
    format!("{instance}-mongodb")
}

pub fn mongodb_auth_secret_name(instance: &str) -> String {
    format!("{instance}-mongodb-auth")
}

/// The user the chat pods connect as (readWrite on the ChatCluster's database).
pub const APP_USER: &str = "chat";
const ROOT_USER: &str = "root";

/// The managed MongoDB's generated secrets. The caller supplies them
/// (generated once, or read back from their Secret) and never rewrites them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MongoDbCredentials {
    pub root_password: String,
    pub app_password: String,
    /// Shared by the members to authenticate each other (base64, 756 bytes).
    pub keyfile: String,
}

impl MongoDbCredentials {
    pub fn generate() -> Self {
        let keyfile = {
            let mut bytes = [0u8; 567];
            rand::rng().fill_bytes(&mut bytes);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        Self {
            root_password: super::generate_password(),
            app_password: super::generate_password(),
            keyfile,
        }
    }

    /// Keys of their Secret.
    pub const KEYS: [&'static str; 3] = ["root-password", "app-password", "keyfile"];

    pub fn values(&self) -> [&str; 3] {
        [&self.root_password, &self.app_password, &self.keyfile]
    }
}

/// The generated credentials, for a managed MongoDB with `auth`.
pub fn mongodb_auth_secret(
    cluster: &ChatCluster,
    credentials: &MongoDbCredentials,
) -> Result<Option<Secret>, BuildError> {
    if !cluster.spec.managed_mongodb().is_some_and(|m| m.auth) {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let data = MongoDbCredentials::KEYS
        .into_iter()
        .zip(credentials.values())
        .map(|(key, value)| (key.to_owned(), ByteString(value.as_bytes().to_vec())))
        .collect::<BTreeMap<_, _>>();
    Ok(Some(Secret {
        metadata: kept_meta(
            cluster,
            mongodb_auth_secret_name(&instance),
            Component::MongoDb,
        )?,
        data: Some(data),
        ..Default::default()
    }))
}

fn secret_key(instance: &str, key: &str) -> serde_json::Value {
    json!({"secretKeyRef": {"name": mongodb_auth_secret_name(instance), "key": key}})
}

pub fn mongodb_statefulset(cluster: &ChatCluster) -> Result<Option<StatefulSet>, BuildError> {
    let Some(mongodb) = cluster.spec.managed_mongodb() else {
        return Ok(None);
    };
    let (instance, _) = identity(cluster)?;
    let name = mongodb_name(&instance);
    let meta = child_meta(cluster, name.clone(), Component::MongoDb)?;
    let mut args = vec!["--replSet", REPLICA_SET, "--bind_ip_all"];
    // With auth, the image's entrypoint creates the root user on the first
    // start of an empty volume; the keyfile authenticates the members to each
    // other. mongod refuses a keyfile others can read, and a Secret's files
    // belong to root: an init container copies it, mode 0400, for uid 999.
    let (env, init_containers, keyfile_mounts, keyfile_volumes) = if mongodb.auth {
        args.extend(["--keyFile", "/keyfile/keyfile"]);
        (
            json!([
                {"name": "MONGO_INITDB_ROOT_USERNAME", "value": ROOT_USER},
                {"name": "MONGO_INITDB_ROOT_PASSWORD", "valueFrom": secret_key(&instance, "root-password")},
            ]),
            json!([{
                "name": "keyfile",
                "image": mongodb.image,
                "command": ["sh", "-c", "cp /keyfile-secret/keyfile /keyfile/keyfile && chmod 0400 /keyfile/keyfile"],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                "volumeMounts": [
                    {"name": "keyfile-secret", "mountPath": "/keyfile-secret", "readOnly": true},
                    {"name": "keyfile", "mountPath": "/keyfile"},
                ],
            }]),
            json!([{"name": "keyfile", "mountPath": "/keyfile", "readOnly": true}]),
            json!([
                {"name": "keyfile-secret", "secret": {"secretName": mongodb_auth_secret_name(&instance), "defaultMode": 0o440, "items": [{"key": "keyfile", "path": "keyfile"}]}},
                {"name": "keyfile", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            ]),
        )
    } else {
        (json!([]), json!([]), json!([]), json!([]))
    };
    // A read-only root: mongod writes its data to the volume and its socket
    // (and the image's entrypoint its temporary config) to /tmp.
    let mut mounts = vec![
        json!({"name": "data", "mountPath": "/data/db"}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    mounts.extend(keyfile_mounts.as_array().cloned().unwrap_or_default());
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}})];
    volumes.extend(keyfile_volumes.as_array().cloned().unwrap_or_default());
    let spec = json!({
        "replicas": mongodb.members,
        "serviceName": name,
        "podManagementPolicy": "Parallel",
        // A member is scaled away only after the members Job removed it from
        // the set (see controller::members); its data is of no more use, and
        // kept it would come back "too stale" if the set grew again. A new
        // member starts empty and makes an initial sync. Deleting the
        // ChatCluster keeps every volume.
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"},
        "selector": {"matchLabels": selector_labels(&instance, Component::MongoDb)},
        "template": {
            "metadata": {"labels": meta.labels},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                // Nothing in it calls the Kubernetes API.
                "automountServiceAccountToken": false,
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector_labels(&instance, Component::MongoDb)}},
                }]}},
                "initContainers": init_containers,
                "containers": [{
                    "name": "mongodb",
                    "image": mongodb.image,
                    "args": args,
                    "env": env,
                    "ports": [{"name": "mongodb", "containerPort": 27017}],
                    "resources": mongodb.resources,
                    // Ready only as the primary or a secondary: a member
                    // still RECOVERING (or STARTUP2, syncing) answers on its
                    // port but does not count for the majority, and a
                    // rolling update must wait for it before stopping the
                    // next one. `hello` needs no authentication; mongosh
                    // keeps its logs under $HOME, on the writable /tmp.
                    "readinessProbe": {
                        "exec": {"command": ["env", "HOME=/tmp", "mongosh", "--quiet", "--norc", "--eval", READY_SCRIPT]},
                        "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 3,
                    },
                    // Up to 10 minutes to start (replaying a large journal)
                    // before the liveness probe may restart it.
                    "startupProbe": {"tcpSocket": {"port": "mongodb"}, "periodSeconds": 5, "failureThreshold": 120},
                    "livenessProbe": {"tcpSocket": {"port": "mongodb"}, "periodSeconds": 10},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
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

/// The readiness probe's check: exits 1 unless the member is the primary
/// or a secondary. Before the set is initiated no member is either; the
/// init Job reaches them by name all the same (the headless Service
/// publishes members that are not ready).
const READY_SCRIPT: &str =
    "const h = db.hello(); if (!(h.isWritablePrimary || h.secondary)) { quit(1) }";

/// At most one member of a replica set of three or more voluntarily down
/// (a drain, an eviction): two of three gone would leave no majority and no
/// primary. None for a single member, which a PodDisruptionBudget could
/// only block forever.
pub fn mongodb_disruption_budget(
    cluster: &ChatCluster,
) -> Result<Option<PodDisruptionBudget>, BuildError> {
    let Some(mongodb) = cluster.spec.managed_mongodb() else {
        return Ok(None);
    };
    if mongodb.members < 3 {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector_labels(&instance, Component::MongoDb)},
    });
    Ok(Some(PodDisruptionBudget {
        metadata: child_meta(cluster, mongodb_name(&instance), Component::MongoDb)?,
        spec: Some(typed("MongoDB PodDisruptionBudget spec", spec)?),
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

/// Initiates the replica set once its members answer, then brings its
/// members to the spec (`mongodb-members.js`); retried by the Job until it
/// succeeds, and a no-op when the set is as the spec says. A Job's template
/// cannot be changed, so its name carries a digest of the spec and of the
/// credentials (`credentials_digest`): a new member count, image or
/// password makes a new Job, and the controller prunes the old one. The
/// finished Job is kept (no TTL), or the controller would re-create it; the
/// controller shrinks the StatefulSet only once the Job has succeeded.
pub fn mongodb_init_job(
    cluster: &ChatCluster,
    credentials_digest: &str,
) -> Result<Option<Job>, BuildError> {
    let Some(mongodb) = cluster.spec.managed_mongodb() else {
        return Ok(None);
    };
    let (instance, namespace) = identity(cluster)?;
    let name = mongodb_name(&instance);
    let members: Vec<String> = (0..mongodb.members)
        .map(|i| format!("{{_id: {i}, host: '{name}-{i}.{name}.{namespace}.svc:27017'}}"))
        .collect();
    let initiate = format!(
        "try {{ rs.status().ok }} catch (e) {{ rs.initiate({{_id: '{REPLICA_SET}', members: [{}]}}).ok }}",
        members.join(", ")
    );
    let first = format!("{name}-0.{name}.{namespace}.svc:27017");
    let hosts: Vec<String> = (0..mongodb.members)
        .map(|i| format!("{name}-{i}.{name}.{namespace}.svc:27017"))
        .collect();
    let login = if mongodb.auth {
        format!(" -u {ROOT_USER} -p \"$ROOT_PASSWORD\" --authenticationDatabase admin")
    } else {
        String::new()
    };
    // Through the replica set (its primary), found from any member: the
    // wanted ones and, through the headless Service, those the set still has
    // (member 0 may be the one that is down). Initiated through the first
    // member only when no set answers (there is none to find yet). Then the
    // members brought to the spec and, with auth, the pods' user made, or
    // given the current password and database again.
    let through_the_set = format!(
        "mongosh --quiet 'mongodb://{},{name}.{namespace}.svc:27017/?replicaSet={REPLICA_SET}'{login}",
        hosts.join(",")
    );
    let mut script = format!(
        "set -e\nif ! {through_the_set} --eval 'rs.status().ok' >/dev/null 2>&1; then\n  \
         mongosh --quiet --host {first}{login} --eval \"{initiate}\"\nfi\n\
         {through_the_set} --eval \"$MEMBERS_SCRIPT\"\n"
    );
    let mut env = vec![
        json!({"name": "HOME", "value": "/tmp"}),
        json!({"name": "MEMBERS", "value": hosts.join(",")}),
        json!({"name": "MEMBERS_SCRIPT", "value": MEMBERS_SCRIPT}),
    ];
    if mongodb.auth {
        let app_user = format!(
            "const admin = db.getSiblingDB('admin'); \
             const roles = [{{role: 'readWrite', db: process.env.DATABASE}}]; \
             if (admin.getUser('{APP_USER}')) {{ admin.updateUser('{APP_USER}', {{pwd: process.env.APP_PASSWORD, roles}}) }} \
             else {{ admin.createUser({{user: '{APP_USER}', pwd: process.env.APP_PASSWORD, roles}}) }}"
        );
        script.push_str(&format!("{through_the_set} --eval \"{app_user}\"\n"));
        env.extend([
            json!({"name": "ROOT_PASSWORD", "valueFrom": secret_key(&instance, "root-password")}),
            json!({"name": "APP_PASSWORD", "valueFrom": secret_key(&instance, "app-password")}),
            json!({"name": "DATABASE", "value": cluster.spec.mongodb.database}),
        ]);
    }
    let command = json!(["sh", "-c", script]);
    let spec = json!({
        "backoffLimit": 20,
        "template": {
            // Not the members' selector labels: the headless Service must not pick this pod.
            "metadata": {"labels": init_job_labels(&instance)},
            "spec": {
                "restartPolicy": "OnFailure",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "initiate",
                    "image": mongodb.image,
                    "command": command,
                    "env": env,
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    // mongosh keeps its history and logs under $HOME.
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
            },
        },
    });
    Ok(Some(Job {
        metadata: child_meta(
            cluster,
            // A Job's template is immutable: a new one, under a new name,
            // for a new spec or new credentials (its run sets the `chat`
            // user's password again).
            format!(
                "{name}-init-{}",
                digest([spec.to_string().as_str(), credentials_digest])
            ),
            Component::MongoDb,
        )?,
        spec: Some(typed("MongoDB init Job spec", spec)?),
        status: None,
    }))
}
