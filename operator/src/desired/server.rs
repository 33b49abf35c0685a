//! The chat server's objects: configuration, secrets, Deployment, Service,
//! disruption budget, and the optional autoscaler, Ingress and ServiceMonitor.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rand::RngCore;
use serde_json::json;

use super::redis::{REDIS_MASTER_NAME, SENTINEL_PORT, redis_auth_secret_name, redis_sentinel_name};
use super::{
    BuildError, Component, HTTP_PORT, child_meta, digest, identity, selector_labels, spread, typed,
};
use crate::crd::{ChatCluster, SecretKeyRef};

/// Seconds the pod keeps serving after it is marked terminating, so endpoints
/// and load balancers stop sending to it before it starts draining.
const PRE_STOP_SECONDS: i32 = 5;
/// The readiness probe's timeout: `/readyz` gives each dependency up to 2 s
/// (checked at once), so a probe must wait longer than that, or a slow but
/// answering Redis or MongoDB would mark every pod unready.
const READYZ_TIMEOUT_SECONDS: i32 = 3;
/// The UID the chat server runs as (distroless `nonroot`).
const RUN_AS: i64 = 65532;

/// Whom the chat pods trust for `X-Forwarded-For` behind the operator's
/// Ingress when `limits.trustedProxies` says nothing: the private ranges
/// (RFC 1918, the carrier-grade NAT range some clusters use for pods, and
/// IPv6 unique local addresses).
pub const INGRESS_PROXIES: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

pub fn config_map_name(instance: &str) -> String {
    format!("{instance}-config")
}

pub fn jwt_secret_name(instance: &str) -> String {
    format!("{instance}-jwt")
}

pub fn connection_secret_name(instance: &str) -> String {
    format!("{instance}-connections")
}

/// The non-secret server settings, one key per environment variable.
pub fn config_map(cluster: &ChatCluster) -> Result<ConfigMap, BuildError> {
    let (instance, _) = identity(cluster)?;
    let spec = &cluster.spec;
    let mut data = BTreeMap::from(
        [
            ("CHAT_LISTEN_ADDR", format!("0.0.0.0:{HTTP_PORT}")),
            ("CHAT_MONGODB_DB", spec.mongodb.database.clone()),
            ("CHAT_DATA_DIR", "/data".to_owned()),
            ("CHAT_JWT_TTL_SECS", "900".to_owned()),
            ("CHAT_CORS_ORIGINS", spec.cors_origins.join(",")),
            (
                "CHAT_RATE_LIMIT_PER_SEC",
                spec.rate_limit.per_second.to_string(),
            ),
            ("CHAT_RATE_LIMIT_BURST", spec.rate_limit.burst.to_string()),
            (
                "CHAT_SHUTDOWN_GRACE_SECS",
                spec.shutdown_grace_seconds.to_string(),
            ),
            ("CHAT_WEB_DIR", "/app/web".to_owned()),
            ("RUST_LOG", spec.log_level.as_str().to_owned()),
            ("CHAT_LOG_FORMAT", "json".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    data.extend(
        spec.limits
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    if spec.ingress.is_some() && spec.limits.trusted_proxies.is_empty() {
        // Behind the Ingress this makes, the TCP peer is the ingress
        // controller for every client: without trusting it, the per-address
        // limits (sign-ins, sign-ups, connections) would hold all clients as
        // one. Its pods live in the cluster's private address ranges;
        // `limits.trustedProxies` narrows this to the controller's own.
        data.insert("CHAT_TRUSTED_PROXIES".to_owned(), INGRESS_PROXIES.join(","));
    }
    Ok(ConfigMap {
        metadata: child_meta(cluster, config_map_name(&instance), Component::Server)?,
        data: Some(data),
        ..Default::default()
    })
}

/// The generated JWT key, for a ChatCluster without `jwtSecret`. The caller
/// supplies the random value and creates this only if it does not exist yet.
pub fn jwt_secret(cluster: &ChatCluster, key: &str) -> Result<Option<Secret>, BuildError> {
    if cluster.spec.jwt_secret.is_some() {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    Ok(Some(Secret {
        metadata: child_meta(cluster, jwt_secret_name(&instance), Component::Server)?,
        data: Some(BTreeMap::from([(
            "secret".to_owned(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }))
}

/// A fresh HS256 signing key: 48 random bytes, base64 (64 characters).
pub fn generate_jwt_key() -> String {
    let mut key = [0u8; 48];
    rand::rng().fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(key)
}

/// Where the JWT key is: the user's Secret or the generated one.
pub fn jwt_secret_ref(cluster: &ChatCluster) -> Result<SecretKeyRef, BuildError> {
    let (instance, _) = identity(cluster)?;
    Ok(cluster
        .spec
        .jwt_secret
        .clone()
        .unwrap_or_else(|| SecretKeyRef {
            name: jwt_secret_name(&instance),
            key: "secret".to_owned(),
        }))
}

/// Connection strings of the managed Redis (with its password) and MongoDB
/// (none for external ones, whose Secrets the user provides).
pub fn connection_secret(
    cluster: &ChatCluster,
    redis_password: &str,
    mongodb: &super::MongoDbCredentials,
) -> Result<Option<Secret>, BuildError> {
    let (instance, namespace) = identity(cluster)?;
    let mut data = BTreeMap::new();
    // With Sentinels the pods find the primary through them, not by URL;
    // the URL stays for pods of the Deployment's previous version, which a
    // restart during the switch to Sentinels would otherwise leave unable
    // to start.
    if cluster.spec.managed_redis().is_some() {
        data.insert(
            "redis-url".to_owned(),
            format!("redis://:{redis_password}@{instance}-redis.{namespace}.svc:6379"),
        );
    }
    if let Some(managed) = cluster.spec.managed_mongodb() {
        let hosts: Vec<String> = (0..managed.members)
            .map(|i| format!("{instance}-mongodb-{i}.{instance}-mongodb.{namespace}.svc:27017"))
            .collect();
        let uri = if managed.auth {
            format!(
                "mongodb://{}:{}@{}/?replicaSet=rs0&authSource=admin",
                super::mongodb::APP_USER,
                mongodb.app_password,
                hosts.join(",")
            )
        } else {
            format!("mongodb://{}/?replicaSet=rs0", hosts.join(","))
        };
        data.insert("mongodb-uri".to_owned(), uri);
    }
    if data.is_empty() {
        return Ok(None);
    }
    Ok(Some(Secret {
        metadata: child_meta(
            cluster,
            connection_secret_name(&instance),
            Component::Server,
        )?,
        // `data`, not `stringData`: the API server stores and returns `data`,
        // and the controller compares what it wants with what it reads.
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }))
}

fn redis_url_ref(cluster: &ChatCluster, instance: &str) -> SecretKeyRef {
    match &cluster.spec.redis.external {
        Some(external) => external.url_secret_ref.clone(),
        None => SecretKeyRef {
            name: connection_secret_name(instance),
            key: "redis-url".to_owned(),
        },
    }
}

fn mongodb_uri_ref(cluster: &ChatCluster, instance: &str) -> SecretKeyRef {
    match &cluster.spec.mongodb.external {
        Some(external) => external.uri_secret_ref.clone(),
        None => SecretKeyRef {
            name: connection_secret_name(instance),
            key: "mongodb-uri".to_owned(),
        },
    }
}

fn secret_env(name: &str, from: &SecretKeyRef) -> serde_json::Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": from.name, "key": from.key}}})
}

/// The chat server Deployment. `secrets_digest` covers the secret values the
/// pods read (the caller knows them; a pure function cannot), so rotating a
/// key rolls the pods like a configuration change does.
pub fn deployment(cluster: &ChatCluster, secrets_digest: &str) -> Result<Deployment, BuildError> {
    let (instance, namespace) = identity(cluster)?;
    let spec = &cluster.spec;
    let config = config_map(cluster)?;
    let config_text = serde_json::to_string(&config.data).map_err(|source| BuildError::Shape {
        what: "config",
        source,
    })?;
    let refs = serde_json::to_string(&(
        jwt_secret_ref(cluster)?,
        redis_url_ref(cluster, &instance),
        mongodb_uri_ref(cluster, &instance),
    ))
    .map_err(|source| BuildError::Shape {
        what: "secret references",
        source,
    })?;
    let hash = digest([config_text.as_str(), refs.as_str(), secrets_digest]);
    let selector = selector_labels(&instance, Component::Server);
    let meta = child_meta(cluster, instance.clone(), Component::Server)?;
    let pod_labels = meta.labels.clone().unwrap_or_default();
    // With an autoscaler the HPA owns the replica count; leaving it out of the
    // applied object keeps the two from fighting.
    let replicas = if spec.autoscaling.is_some() {
        None
    } else {
        Some(spec.replicas)
    };
    let image = format!("{}:{}", spec.image.repository, spec.image.tag);
    let grace = spec.shutdown_grace_seconds;
    let mut env = vec![
        json!({"name": "CHAT_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        secret_env("CHAT_JWT_SECRET", &jwt_secret_ref(cluster)?),
        secret_env("CHAT_MONGODB_URI", &mongodb_uri_ref(cluster, &instance)),
    ];
    match spec.managed_redis() {
        // Acks wait for a replica (the server's default behind Sentinels).
        Some(redis) if redis.highly_available() => env.extend([
            json!({"name": "CHAT_REDIS_SENTINELS", "value": format!("{}.{namespace}.svc:{SENTINEL_PORT}", redis_sentinel_name(&instance))}),
            json!({"name": "CHAT_REDIS_MASTER_NAME", "value": REDIS_MASTER_NAME}),
            secret_env(
                "CHAT_REDIS_PASSWORD",
                &SecretKeyRef {
                    name: redis_auth_secret_name(&instance),
                    key: "password".to_owned(),
                },
            ),
        ]),
        _ => env.push(secret_env(
            "CHAT_REDIS_URL",
            &redis_url_ref(cluster, &instance),
        )),
    }
    let pod_spec = json!({
        "replicas": replicas,
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    super::CONFIG_HASH: hash,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": HTTP_PORT.to_string(),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": {
                // The chat server never calls the Kubernetes API.
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": grace + PRE_STOP_SECONDS + 5,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": RUN_AS,
                    "runAsGroup": RUN_AS,
                    "fsGroup": RUN_AS,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "affinity": spread(&instance, Component::Server),
                "containers": [{
                    "name": "chat-server",
                    "image": image,
                    "imagePullPolicy": spec.image.pull_policy.as_str(),
                    "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
                    "envFrom": [{"configMapRef": {"name": config_map_name(&instance)}}],
                    "env": env,
                    "resources": spec.resources,
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": READYZ_TIMEOUT_SECONDS, "failureThreshold": 2},
                    "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 30},
                    "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
            },
        },
    });
    Ok(Deployment {
        metadata: meta,
        spec: Some(typed("Deployment spec", pod_spec)?),
        status: None,
    })
}

pub fn service(cluster: &ChatCluster) -> Result<Service, BuildError> {
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "type": cluster.spec.service.kind.as_str(),
        "selector": selector_labels(&instance, Component::Server),
        "ports": [{"name": "http", "port": cluster.spec.service.port, "targetPort": "http", "protocol": "TCP", "nodePort": cluster.spec.service.node_port}],
    });
    Ok(Service {
        metadata: child_meta(cluster, instance, Component::Server)?,
        spec: Some(typed("Service spec", spec)?),
        status: None,
    })
}

/// At most one chat pod voluntarily down at a time (node drains, upgrades).
pub fn disruption_budget(cluster: &ChatCluster) -> Result<PodDisruptionBudget, BuildError> {
    let (instance, _) = identity(cluster)?;
    let spec = json!({"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(&instance, Component::Server)}});
    Ok(PodDisruptionBudget {
        metadata: child_meta(cluster, instance, Component::Server)?,
        spec: Some(typed("PodDisruptionBudget spec", spec)?),
        status: None,
    })
}

pub fn horizontal_autoscaler(
    cluster: &ChatCluster,
) -> Result<Option<HorizontalPodAutoscaler>, BuildError> {
    let Some(autoscaling) = &cluster.spec.autoscaling else {
        return Ok(None);
    };
    let (instance, _) = identity(cluster)?;
    let spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": instance},
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": autoscaling.target_cpu_utilization}}}],
    });
    Ok(Some(HorizontalPodAutoscaler {
        metadata: child_meta(cluster, instance, Component::Server)?,
        spec: typed("HorizontalPodAutoscaler spec", spec)?,
        status: None,
    }))
}

/// The server's default `CHAT_MAX_ATTACHMENT_BYTES` (10 MiB).
const DEFAULT_ATTACHMENT_BYTES: i64 = 10 * 1024 * 1024;

pub fn ingress(cluster: &ChatCluster) -> Result<Option<Ingress>, BuildError> {
    let Some(ingress) = &cluster.spec.ingress else {
        return Ok(None);
    };
    let (instance, _) = identity(cluster)?;
    let backend = json!({"service": {"name": instance, "port": {"name": "http"}}});
    let spec = json!({
        "ingressClassName": ingress.class_name,
        "rules": [{"host": ingress.host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}],
        "tls": ingress.tls_secret_name.as_ref().map(|secret| vec![json!({"hosts": [ingress.host], "secretName": secret})]),
    });
    let mut meta = child_meta(cluster, instance, Component::Server)?;
    // WebSockets are long-lived: the common NGINX controller closes idle
    // upstream connections after 60 s by default. It also refuses bodies
    // over 1 MiB, which would cut uploads short of the server's own limit.
    let upload_limit = cluster
        .spec
        .limits
        .attachment_bytes
        .map_or(DEFAULT_ATTACHMENT_BYTES, i64::from);
    meta.annotations = Some(BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/proxy-body-size".to_owned(),
            upload_limit.to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".to_owned(),
            "3600".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".to_owned(),
            "3600".to_owned(),
        ),
    ]));
    Ok(Some(Ingress {
        metadata: meta,
        spec: Some(typed("Ingress spec", spec)?),
        status: None,
    }))
}

/// A Prometheus Operator ServiceMonitor (no Rust type: it is not a core API).
pub fn service_monitor(cluster: &ChatCluster) -> Result<Option<serde_json::Value>, BuildError> {
    if !cluster.spec.metrics.service_monitor {
        return Ok(None);
    }
    let (instance, _) = identity(cluster)?;
    let meta = child_meta(cluster, instance.clone(), Component::Server)?;
    Ok(Some(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(&instance, Component::Server)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    })))
}
