//! The `ChatCluster` custom resource: `chatcluster.dev/v1alpha1`, short name
//! `chat`. Every field has a default, so `spec: {}` describes a working cluster
//! (three chat pods, managed Redis with AOF, a one-member MongoDB); the schema
//! carries ranges, enums and CEL rules, so the API server refuses bad specs
//! before the operator sees them.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "chatcluster.dev";
pub const VERSION: &str = "v1alpha1";

// Bounds on strings. Every list, string and map a CEL rule reads must have one,
// or the API server's cost estimate assumes the request limit and refuses the
// CRD; the others are bounded because nothing sensible is that long.
/// A DNS subdomain: Kubernetes object names, host names, storage classes.
const NAME_MAX: u32 = 253;
/// An image reference: registry, repository, tag and digest.
const IMAGE_MAX: u32 = 512;
/// A resource quantity such as `10Gi`.
const QUANTITY_MAX: u32 = 64;

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chatcluster.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    shortname = "chat",
    namespaced,
    status = "ChatClusterStatus",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 33").message("a ChatCluster's name may be at most 33 characters: its MongoDB init Job is named <name>-mongodb-init-<16 hex digits>, within Kubernetes' 63")
)]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Chat server pods (ignored while autoscaling is set).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    #[serde(default)]
    pub image: Image,
    /// CPU and memory for each chat pod.
    #[serde(default = "default_server_resources")]
    pub resources: ResourceRequirements,
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// What one client may take of a chat pod; unset fields keep the server's
    /// defaults (docs/reliability.md).
    #[serde(default)]
    pub limits: Limits,
    /// Browser origins allowed by CORS, exactly as the browser sends them.
    /// Bounded so the API server can estimate the rule's cost (an origin is a
    /// scheme, a host name of at most 253 characters and a port).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 270)))]
    // The server's `is_origin` (server/src/config.rs), as one expression; the
    // real-API-server tests hold both to the same answers.
    #[x_kube(validation = Rule::new("self.all(o, o.matches(r'^https?://([a-z0-9]([a-z0-9-]*[a-z0-9])?([.][a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\\[[0-9a-f:.]+\\])(:[0-9]{1,5})?$'))").message("corsOrigins must be origins like https://chat.example.com: a lowercase scheme, host and port only"))]
    pub cors_origins: Vec<String>,
    /// Seconds a chat pod drains connections on shutdown.
    #[serde(default = "default_shutdown_grace")]
    #[schemars(range(min = 0, max = 600))]
    pub shutdown_grace_seconds: i32,
    /// The JWT signing key. Absent: the operator generates one into a Secret
    /// and never overwrites it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<SecretKeyRef>,
    #[serde(default)]
    pub redis: Redis,
    #[serde(default)]
    pub mongodb: MongoDb,
    #[serde(default)]
    pub service: Service,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default)]
    pub metrics: Metrics,
    /// Stop changing anything: children are left as they are until unpaused.
    #[serde(default)]
    pub paused: bool,
}

fn default_replicas() -> i32 {
    3
}

fn default_shutdown_grace() -> i32 {
    25
}

fn resources(cpu_request: &str, memory_request: &str, memory_limit: &str) -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), Quantity(cpu_request.into())),
                ("memory".to_owned(), Quantity(memory_request.into())),
            ]
            .into(),
        ),
        limits: Some([("memory".to_owned(), Quantity(memory_limit.into()))].into()),
        ..Default::default()
    }
}

fn default_server_resources() -> ResourceRequirements {
    resources("100m", "128Mi", "512Mi")
}

fn default_redis_resources() -> ResourceRequirements {
    resources("50m", "64Mi", "256Mi")
}

fn default_mongodb_resources() -> ResourceRequirements {
    resources("100m", "256Mi", "1Gi")
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    #[serde(default = "default_server_image")]
    #[schemars(length(min = 1, max = IMAGE_MAX))]
    pub repository: String,
    /// Defaults to the operator's own version.
    #[serde(default = "default_tag")]
    #[schemars(length(min = 1, max = 128))]
    pub tag: String,
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

impl Default for Image {
    fn default() -> Self {
        Self {
            repository: default_server_image(),
            tag: default_tag(),
            pull_policy: PullPolicy::default(),
        }
    }
}

fn default_server_image() -> String {
    "ghcr.io/chatcluster/chat-server".into()
}

fn default_tag() -> String {
    env!("CARGO_PKG_VERSION").into()
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Messages per user per second, with a burst allowance.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(default = "default_per_second")]
    #[schemars(range(min = 1, max = 100000))]
    pub per_second: i32,
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: i32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: default_per_second(),
            burst: default_burst(),
        }
    }
}

fn default_per_second() -> i32 {
    10
}

fn default_burst() -> i32 {
    20
}

/// What one client may take of a chat pod. Each field is the server's
/// `CHAT_*` variable of the same meaning (README's configuration table); an
/// unset one keeps the server's default.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Seconds to send a request's headers; also the idle keep-alive time (10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub header_timeout_seconds: Option<i32>,
    /// Seconds for a request's body and answer (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub request_timeout_seconds: Option<i32>,
    /// WebSocket connections of one user on one pod (20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub connections_per_user: Option<i32>,
    /// WebSocket connections from one client address on one pod (200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub connections_per_address: Option<i32>,
    /// Bytes queued for one WebSocket client before it is closed as slow (4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 65536, max = 1073741824))]
    pub queue_bytes: Option<i32>,
    /// Password hashes computed at once (the pod's CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub password_hash_concurrency: Option<i32>,
    /// Accounts one client address may create per hour (60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub signups_per_address_per_hour: Option<i32>,
    /// Seconds an upload's body and answer may take (300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub upload_timeout_seconds: Option<i32>,
    /// The largest file one upload may carry, in bytes (10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub attachment_bytes: Option<i32>,
    /// What one user's files may add up to, in bytes (1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1125899906842624_i64))]
    pub upload_quota_bytes: Option<i64>,
    /// Upload bytes one pod holds in memory at once, across uploads, in
    /// bytes (64 MiB; never less than `attachmentBytes`). Size the pod's
    /// memory limit for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576, max = 4294967296_i64))]
    pub upload_memory_bytes: Option<i64>,
    /// Addresses or CIDR blocks of the proxies in front of the pods (the
    /// Ingress controller's pods, a load balancer) whose X-Forwarded-For names
    /// the client. Empty: the TCP peer is the client, or with `ingress` set,
    /// any peer in the private ranges (the ingress controller's pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 2, max = 43)))]
    pub trusted_proxies: Vec<String>,
}

impl Limits {
    /// The server's environment variables for the fields that are set.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let numbers = [
            ("CHAT_HTTP_HEADER_TIMEOUT_SECS", self.header_timeout_seconds),
            (
                "CHAT_HTTP_REQUEST_TIMEOUT_SECS",
                self.request_timeout_seconds,
            ),
            ("CHAT_MAX_CONNECTIONS_PER_USER", self.connections_per_user),
            (
                "CHAT_MAX_CONNECTIONS_PER_ADDRESS",
                self.connections_per_address,
            ),
            ("CHAT_MAX_QUEUE_BYTES", self.queue_bytes),
            (
                "CHAT_PASSWORD_HASH_CONCURRENCY",
                self.password_hash_concurrency,
            ),
            (
                "CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR",
                self.signups_per_address_per_hour,
            ),
            ("CHAT_UPLOAD_TIMEOUT_SECS", self.upload_timeout_seconds),
            ("CHAT_MAX_ATTACHMENT_BYTES", self.attachment_bytes),
        ];
        let mut env: Vec<_> = numbers
            .into_iter()
            .filter_map(|(var, value)| value.map(|v| (var, v.to_string())))
            .collect();
        if let Some(quota) = self.upload_quota_bytes {
            env.push(("CHAT_UPLOAD_QUOTA_BYTES", quota.to_string()));
        }
        if let Some(memory) = self.upload_memory_bytes {
            env.push(("CHAT_UPLOAD_MEMORY_BYTES", memory.to_string()));
        }
        if !self.trusted_proxies.is_empty() {
            env.push(("CHAT_TRUSTED_PROXIES", self.trusted_proxies.join(",")));
        }
        env
    }
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub name: String,
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub key: String,
}

/// Redis: run by the operator (`managed`, the default) or yours (`external`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.managed) && has(self.external))").message("set redis.managed or redis.external, not both"))]
pub struct Redis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.replicas == 1 || self.persistence.enabled").message("redis.managed.replicas above 1 needs persistence.enabled: a primary restarting empty would be followed by its replicas, and every copy of the acked messages lost"))]
#[x_kube(validation = Rule::new("oldSelf.replicas == 1 || self.replicas > 1").message("redis.managed.replicas cannot go back to 1 from a primary with replicas: the operator cannot choose which copy survives without losing acked messages (see docs/operator.md)"))]
#[x_kube(validation = Rule::new("self.persistence.enabled == oldSelf.persistence.enabled").message("redis.managed.persistence.enabled cannot change on an existing ChatCluster: the volumes are part of the StatefulSet's identity"))]
pub struct ManagedRedis {
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1, max = IMAGE_MAX))]
    pub image: String,
    /// Redis servers. 1: a single pod, and no message can be sent while it
    /// restarts. More: a primary and replicas watched by three Sentinels
    /// that promote a replica when the primary fails; the chat pods find the
    /// primary through them and ack a message only once a replica has it,
    /// so a failover loses nothing acked. 3 is the usual choice (with 2, acks
    /// pause after a failover until the old primary is back as a replica).
    #[serde(default = "default_redis_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    #[serde(default = "default_redis_resources")]
    pub resources: ResourceRequirements,
    #[serde(default)]
    pub persistence: Persistence,
}

impl Default for ManagedRedis {
    fn default() -> Self {
        Self {
            image: default_redis_image(),
            replicas: default_redis_replicas(),
            resources: default_redis_resources(),
            persistence: Persistence::default(),
        }
    }
}

impl ManagedRedis {
    /// A primary with replicas and Sentinels rather than one server.
    pub fn highly_available(&self) -> bool {
        self.replicas > 1
    }
}

fn default_redis_image() -> String {
    "redis:7.4-alpine".into()
}

fn default_redis_replicas() -> i32 {
    1
}

/// Redis persistence: AOF on a volume. On by default: acked messages wait in a
/// Redis stream until they reach MongoDB.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_redis_storage")]
    #[schemars(length(min = 1, max = QUANTITY_MAX))]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub storage_class_name: Option<String>,
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            enabled: true,
            size: default_redis_storage(),
            storage_class_name: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_redis_storage() -> String {
    "1Gi".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// A Secret key holding the Redis URL (it may carry a password).
    pub url_secret_ref: SecretKeyRef,
}

/// MongoDB: run by the operator (`managed`, the default) or yours (`external`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.managed) && has(self.external))").message("set mongodb.managed or mongodb.external, not both"))]
pub struct MongoDb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedMongoDb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalMongoDb>,
    /// The database the chat servers use (MongoDB allows 63 characters).
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
}

// Not derived: the derived default would name the database "", and the CRD
// carries this value as the default of an omitted `mongodb`.
impl Default for MongoDb {
    fn default() -> Self {
        Self {
            managed: None,
            external: None,
            database: default_database(),
        }
    }
}

fn default_database() -> String {
    "chat".into()
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.members % 2 == 1").message("mongodb.managed.members must be odd (1, 3, 5 or 7) so a majority exists"))]
pub struct ManagedMongoDb {
    #[serde(default = "default_mongodb_image")]
    #[schemars(length(min = 1, max = IMAGE_MAX))]
    pub image: String,
    /// Replica-set members; more than one initiates a replica set.
    #[serde(default = "default_members")]
    #[schemars(range(min = 1, max = 7))]
    pub members: i32,
    #[serde(default = "default_mongodb_storage")]
    #[schemars(length(min = 1, max = QUANTITY_MAX))]
    pub storage_size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub storage_class_name: Option<String>,
    #[serde(default = "default_mongodb_resources")]
    pub resources: ResourceRequirements,
    /// Authentication with generated credentials: a keyfile between the
    /// members, a root user, and a `chat` user (readWrite on the database)
    /// for the pods. Set `false` only for a managed MongoDB created before
    /// the operator generated credentials (its data has no users).
    #[serde(default = "default_true")]
    pub auth: bool,
}

impl Default for ManagedMongoDb {
    fn default() -> Self {
        Self {
            image: default_mongodb_image(),
            members: default_members(),
            storage_size: default_mongodb_storage(),
            storage_class_name: None,
            resources: default_mongodb_resources(),
            auth: true,
        }
    }
}

fn default_mongodb_image() -> String {
    "mongo:7.0".into()
}

fn default_members() -> i32 {
    1
}

fn default_mongodb_storage() -> String {
    "10Gi".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMongoDb {
    /// A Secret key holding the MongoDB URI (it may carry credentials).
    pub uri_secret_ref: SecretKeyRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'").message("service.nodePort needs service.type NodePort or LoadBalancer"))]
pub struct Service {
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A fixed node port (NodePort or LoadBalancer services), e.g. the one a
    /// kind cluster maps to localhost; absent, Kubernetes picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            kind: ServiceType::default(),
            port: default_port(),
            node_port: None,
        }
    }
}

fn default_port() -> i32 {
    80
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub host: String,
    /// A TLS Secret for `host`; absent means plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub tls_secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub class_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    #[serde(default = "default_min")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    #[serde(default = "default_cpu")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization: i32,
}

fn default_min() -> i32 {
    2
}

fn default_max() -> i32 {
    10
}

fn default_cpu() -> i32 {
    70
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Create a Prometheus Operator ServiceMonitor (when its CRD is installed).
    #[serde(default)]
    pub service_monitor: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The label selector of the chat pods, for the scale subresource.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub selector: String,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Progressing,
    Running,
    Degraded,
    Paused,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Running => "Running",
            Phase::Degraded => "Degraded",
            Phase::Paused => "Paused",
        }
    }
}

/// A status condition in the Kubernetes shape.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub kind: String,
    #[schemars(length(min = 1, max = 16))]
    pub status: String,
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    #[schemars(length(max = 32768))]
    pub message: String,
    #[schemars(length(max = 64))]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl ChatClusterSpec {
    /// The Redis the spec asks for, `managed` filled in when neither is set.
    pub fn managed_redis(&self) -> Option<ManagedRedis> {
        match (&self.redis.managed, &self.redis.external) {
            (_, Some(_)) => None,
            (Some(managed), None) => Some(managed.clone()),
            (None, None) => Some(ManagedRedis::default()),
        }
    }

    /// The MongoDB the spec asks for, `managed` filled in when neither is set.
    pub fn managed_mongodb(&self) -> Option<ManagedMongoDb> {
        match (&self.mongodb.managed, &self.mongodb.external) {
            (_, Some(_)) => None,
            (Some(managed), None) => Some(managed.clone()),
            (None, None) => Some(ManagedMongoDb::default()),
        }
    }
}
