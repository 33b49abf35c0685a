//! The controller: one [`reconcile`] per ChatCluster, in the shape of
//! kube-rs's controller-rs. It reads what exists, lets pure functions decide
//! what should ([`crate::render::children`], [`objects::plan`],
//! [`crate::status::status`]), and writes only the difference with
//! server-side apply under one field manager.

pub mod members;
pub mod objects;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::crd::{ChatCluster, Phase};
use crate::desired::{self, BuildError, MANAGER};
use crate::metrics::Metrics;
use crate::render::{self, SecretValues};
use crate::status::{self, Observed};
use objects::{Live, ObjectKey, SERVICE_MONITOR};

/// How often a settled ChatCluster is looked at again, to repair drift in
/// children the controller does not watch (a ServiceMonitor) or missed.
const RESYNC: Duration = Duration::from_secs(300);
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {name} referenced by the spec does not exist")]
    SecretMissing { name: String },
    #[error("Secret {name} has no key {key}")]
    SecretKeyMissing { name: String, key: String },
    /// The API server accepted a change that has not taken effect in time.
    #[error("{0}")]
    Stuck(String),
    /// A generated credentials Secret is gone while volumes hold data made
    /// with it: new credentials would lock the pods out of their own data.
    #[error("{0}")]
    CredentialsLost(String),
}

impl Error {
    /// The `error` label of `chat_operator_reconcile_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Build(_) => "build",
            Error::Api { .. } | Error::Stuck(_) => "api",
            Error::SecretMissing { .. }
            | Error::SecretKeyMissing { .. }
            | Error::CredentialsLost(_) => "secret",
        }
    }
}

fn api_error(action: &'static str, object: impl ToString) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api {
        action,
        object: object.to_string(),
        source,
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Consecutive failures per ChatCluster (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Warnings already given for a ChatCluster's generation, so a condition
    /// that persists is reported once per spec, not on every resync.
    warned: Mutex<Warned>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            warned: Mutex::new(Warned::default()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A panic while holding this lock leaves plain counters behind: still usable.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True the first time `what` is reported for this generation of `cluster`.
    fn first_warning(&self, cluster: &ChatCluster, what: &str) -> bool {
        self.warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first(
                cluster_key(cluster),
                cluster.metadata.generation.unwrap_or_default(),
                what,
            )
    }

    /// Publishes a Kubernetes event about `cluster`. Events are a courtesy to
    /// `kubectl describe`: failing to write one is logged, not fatal.
    async fn event(&self, cluster: &ChatCluster, kind: EventType, reason: &str, note: String) {
        let event = Event {
            type_: kind,
            reason: reason.to_owned(),
            note: Some(event_note(note)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &cluster.object_ref(&()))
            .await
        {
            warn!(%error, reason, "publishing a Kubernetes event");
        }
    }
}

/// The warnings given to each ChatCluster, for its current generation only:
/// a new spec starts afresh, so what is kept never outgrows one generation's
/// warnings per cluster (a set keyed by generation grew with every edit).
#[derive(Default)]
struct Warned(HashMap<String, (i64, HashSet<String>)>);

impl Warned {
    /// True the first time `what` is given for `generation` of `cluster`.
    fn first(&mut self, cluster: String, generation: i64, what: &str) -> bool {
        let (seen, given) = self.0.entry(cluster).or_default();
        if *seen != generation {
            *seen = generation;
            given.clear();
        }
        given.insert(what.to_owned())
    }
}

/// The API server refuses an event whose note is over 1 KiB (a long list of
/// applied objects, an API error quoting a big object): cut it, at a
/// character boundary, and say so.
fn event_note(mut note: String) -> String {
    const LIMIT: usize = 1024;
    const CUT: &str = " [...]";
    if note.len() > LIMIT {
        let mut end = LIMIT - CUT.len();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str(CUT);
    }
    note
}

fn cluster_key(cluster: &ChatCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// Brings one ChatCluster's children and status to what its spec asks for.
pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    match apply_cluster(&cluster, &ctx).await {
        Ok(action) => {
            ctx.failures().remove(&cluster_key(&cluster));
            Ok(action)
        }
        Err(error) => {
            ctx.event(
                &cluster,
                EventType::Warning,
                "ReconcileFailed",
                error.to_string(),
            )
            .await;
            Err(error)
        }
    }
}

/// Retries a failed ChatCluster after a delay that doubles with each
/// consecutive failure, up to five minutes.
pub fn error_policy(cluster: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = {
        let mut failures = ctx.failures();
        let count = failures.entry(cluster_key(&cluster)).or_insert(0);
        *count += 1;
        *count
    };
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.kind()])
        .inc();
    let delay = retry_delay(attempt);
    warn!(
        chatcluster = %cluster_key(&cluster),
        %error,
        attempt,
        retry_in_secs = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The delay before retry number `attempt` (1-based).
pub fn retry_delay(attempt: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    doubled.min(LAST_RETRY)
}

async fn apply_cluster(cluster: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    let (name, namespace) = desired::identity(cluster)?;
    let live = observe(&ctx.client, cluster, &namespace, &name).await?;
    let deployment = ObjectKey {
        api_version: "apps/v1".to_owned(),
        kind: "Deployment".to_owned(),
        name: name.clone(),
    };
    let observed = live.objects.get(&deployment).map(observed_pods);
    let mut resize_refused = None;
    let mut credentials_lost = None;

    let secrets = if cluster.spec.paused {
        None
    } else {
        match secret_values(&ctx.client, cluster, &namespace, &name).await {
            Ok(secrets) => Some(secrets),
            // Nothing is applied (the running pods keep the credentials they
            // started with); the condition and a warning say what to do.
            Err(Error::CredentialsLost(why)) => {
                if ctx.first_warning(cluster, &why) {
                    warn!(chatcluster = %cluster_key(cluster), %why, "credentials lost");
                    ctx.event(
                        cluster,
                        EventType::Warning,
                        "CredentialsMissing",
                        why.clone(),
                    )
                    .await;
                }
                credentials_lost = Some(why);
                None
            }
            Err(other) => return Err(other),
        }
    };
    if let Some(secrets) = secrets {
        let mut desired = render::children(cluster, &secrets)?;
        if let Some(held) = members::hold_until_removed(&mut desired, &live) {
            info!(chatcluster = %cluster_key(cluster), %held, "replica set shrinking");
        }
        for outcome in volumes::resize(&ctx.client, &namespace, &mut desired, &live).await? {
            match outcome {
                volumes::Outcome::Grown(what) => {
                    info!(chatcluster = %cluster_key(cluster), %what, "volumes grown");
                    ctx.event(cluster, EventType::Normal, "VolumesGrown", what)
                        .await;
                }
                volumes::Outcome::Refused(why) => {
                    if ctx.first_warning(cluster, &why) {
                        ctx.event(
                            cluster,
                            EventType::Warning,
                            "VolumeResizeRefused",
                            why.clone(),
                        )
                        .await;
                    }
                    resize_refused = Some(why);
                }
            }
        }
        // Generated secrets outlive a switch to the user's own (or to an
        // external Redis): switching back finds them unchanged.
        let [redis_auth, mongodb_auth] = desired::data_credentials(&name);
        let keep =
            [desired::jwt_secret_name(&name), redis_auth, mongodb_auth].map(|name| ObjectKey {
                api_version: "v1".to_owned(),
                kind: "Secret".to_owned(),
                name,
            });
        let plan = objects::plan(&desired, &live, &keep);
        for object in &plan.apply {
            apply(&ctx.client, &namespace, object).await?;
        }
        for key in &plan.prune {
            prune(&ctx.client, &namespace, key).await?;
        }
        if !plan.changes_nothing() {
            let applied: Vec<String> = plan
                .apply
                .iter()
                .filter_map(ObjectKey::of)
                .map(|k| k.to_string())
                .collect();
            let pruned: Vec<String> = plan.prune.iter().map(ToString::to_string).collect();
            info!(chatcluster = %cluster_key(cluster), ?applied, ?pruned, "children updated");
            let mut note = format!("Applied {}", list_or_none(&applied));
            if !pruned.is_empty() {
                note.push_str(&format!("; pruned {}", pruned.join(", ")));
            }
            ctx.event(cluster, EventType::Normal, "Applied", note).await;
        }
        for key in &plan.unavailable {
            if key.kind == SERVICE_MONITOR && ctx.first_warning(cluster, SERVICE_MONITOR) {
                ctx.event(
                    cluster,
                    EventType::Warning,
                    "ServiceMonitorUnavailable",
                    "metrics.serviceMonitor is on but the cluster has no monitoring.coreos.com/v1 ServiceMonitor API (is the Prometheus Operator installed?)".to_owned(),
                )
                .await;
            }
        }
    }

    write_status(
        cluster,
        ctx,
        &namespace,
        &name,
        observed,
        resize_refused.as_deref(),
        credentials_lost.as_deref(),
    )
    .await?;
    Ok(Action::requeue(RESYNC))
}

/// Before credentials are generated for `statefulset`: refuses when its
/// data volumes exist, as they hold data made with the credentials `secret`
/// had (a restore, a deleted Secret, a reinstall over kept volumes).
async fn refuse_over_data(
    client: &Client,
    namespace: &str,
    secret: &str,
    statefulset: &str,
) -> Result<(), Error> {
    let claims = volumes::claims(client, namespace, statefulset, "data").await?;
    if claims.is_empty() {
        return Ok(());
    }
    let mut names: Vec<String> = claims.iter().map(ResourceExt::name_any).collect();
    names.sort();
    Err(Error::CredentialsLost(format!(
        "Secret {secret} is missing but volumes {} hold data made with its credentials: \
         restore the Secret (or delete the volumes to start empty); nothing is applied until then",
        names.join(", ")
    )))
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join(", ")
    }
}

/// Lists every kind of child this ChatCluster could have, by its labels,
/// keeping those it owns (by uid). A missing ServiceMonitor API reads as
/// "none, and none can be made".
async fn observe(
    client: &Client,
    cluster: &ChatCluster,
    namespace: &str,
    name: &str,
) -> Result<Live, Error> {
    let selector =
        format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGER}");
    let owner = cluster.uid();
    let mut live = Live {
        service_monitor_api: true,
        ..Live::default()
    };
    for (api_version, kind, _) in objects::CHILD_KINDS {
        let Some(resource) = objects::api_resource(api_version, kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let list = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list,
            Err(kube::Error::Api(status)) if status.code == 404 && kind == SERVICE_MONITOR => {
                live.service_monitor_api = false;
                continue;
            }
            Err(source) => return Err(api_error("listing", format!("{kind}s"))(source)),
        };
        for item in list.items {
            let owned = item
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == owner.as_ref());
            // The data credentials are not owned (see `desired::data_credentials`),
            // but are this ChatCluster's all the same.
            let kept =
                kind == "Secret" && desired::data_credentials(name).contains(&item.name_any());
            if !owned && !kept {
                continue;
            }
            let key = ObjectKey {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
                name: item.name_any(),
            };
            let value = serde_json::to_value(&item).map_err(|source| BuildError::Shape {
                what: "live object",
                source,
            })?;
            live.objects.insert(key, value);
        }
    }
    Ok(live)
}

fn observed_pods(deployment: &Value) -> Observed {
    let int = |pointer: &str| {
        deployment
            .pointer(pointer)
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
    };
    let stalled = deployment
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["status"] == "False");
    Observed {
        // The API server defaults `replicas` to 1.
        desired: int("/spec/replicas").unwrap_or(1),
        ready: int("/status/readyReplicas").unwrap_or(0),
        updated: int("/status/updatedReplicas").unwrap_or(0),
        stalled,
    }
}

/// The secret values the children depend on: the JWT key (the user's, the
/// one generated earlier, or a new one) and the external connection strings.
async fn secret_values(
    client: &Client,
    cluster: &ChatCluster,
    namespace: &str,
    name: &str,
) -> Result<SecretValues, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let jwt_key = match &cluster.spec.jwt_secret {
        Some(reference) => read_secret(&secrets, &reference.name, &reference.key)
            .await?
            .ok_or_else(|| Error::SecretMissing {
                name: reference.name.clone(),
            })?,
        // Never overwritten: an existing generated key is read back, whatever
        // its labels, so a restart of the operator keeps everyone signed in.
        None => {
            let generated = desired::jwt_secret_name(name);
            match read_secret(&secrets, &generated, "secret").await? {
                Some(key) => key,
                None => desired::generate_jwt_key(),
            }
        }
    };
    // Never overwritten either: Redis keeps requiring the password it started with.
    // Generated only for a managed Redis or MongoDB: nothing stores them
    // otherwise, and new values on every pass would change the pods' config
    // hash and roll them forever.
    let redis_password = if cluster.spec.managed_redis().is_none() {
        String::new()
    } else {
        let secret = desired::redis_auth_secret_name(name);
        match read_secret(&secrets, &secret, "password").await? {
            Some(password) => password,
            None => {
                refuse_over_data(client, namespace, &secret, &desired::redis_name(name)).await?;
                desired::generate_password()
            }
        }
    };
    let mongodb = if cluster.spec.managed_mongodb().is_none() {
        desired::MongoDbCredentials::default()
    } else {
        let cluster_name = name;
        let name = desired::mongodb_auth_secret_name(name);
        let mut stored = Vec::new();
        for key in desired::MongoDbCredentials::KEYS {
            stored.push(read_secret(&secrets, &name, key).await?);
        }
        match stored.as_slice() {
            [Some(root), Some(app), Some(keyfile)] => desired::MongoDbCredentials {
                root_password: root.clone(),
                app_password: app.clone(),
                keyfile: keyfile.clone(),
            },
            _ => {
                // Without auth, no data depends on them (nor is the Secret made).
                if cluster.spec.managed_mongodb().is_some_and(|m| m.auth) {
                    refuse_over_data(
                        client,
                        namespace,
                        &name,
                        &desired::mongodb_name(cluster_name),
                    )
                    .await?;
                }
                desired::MongoDbCredentials::generate()
            }
        }
    };
    let mut referenced = Vec::new();
    let external = [
        cluster
            .spec
            .redis
            .external
            .as_ref()
            .map(|e| &e.url_secret_ref),
        cluster
            .spec
            .mongodb
            .external
            .as_ref()
            .map(|e| &e.uri_secret_ref),
    ];
    for reference in external.into_iter().flatten() {
        let value = read_secret(&secrets, &reference.name, &reference.key)
            .await?
            .ok_or_else(|| Error::SecretMissing {
                name: reference.name.clone(),
            })?;
        referenced.push(value);
    }
    Ok(SecretValues {
        jwt_key,
        redis_password,
        mongodb,
        referenced,
    })
}

/// One key of a Secret; `None` when the Secret does not exist, an error when
/// it exists without that key.
async fn read_secret(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
) -> Result<Option<String>, Error> {
    let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(api_error("reading", format!("Secret/{name}")))?
    else {
        return Ok(None);
    };
    let from_data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned());
    let from_string_data = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key).cloned());
    from_data
        .or(from_string_data)
        .map(Some)
        .ok_or_else(|| Error::SecretKeyMissing {
            name: name.to_owned(),
            key: key.to_owned(),
        })
}

async fn apply(client: &Client, namespace: &str, object: &Value) -> Result<(), Error> {
    let key = ObjectKey::of(object).ok_or(BuildError::Missing("apiVersion, kind or name"))?;
    let resource = objects::api_resource(&key.api_version, &key.kind)
        .ok_or(BuildError::Missing("a known child kind"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.patch(
        &key.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(api_error("applying", &key))?;
    Ok(())
}

async fn prune(client: &Client, namespace: &str, key: &ObjectKey) -> Result<(), Error> {
    let resource = objects::api_resource(&key.api_version, &key.kind)
        .ok_or(BuildError::Missing("a known child kind"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    match api.delete(&key.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(api_error("pruning", key)(source)),
    }
}

/// Writes the status when it differs from the one the resource carries.
/// [`status::status`] is idempotent, so the write after a change is the last.
async fn write_status(
    cluster: &ChatCluster,
    ctx: &Context,
    namespace: &str,
    name: &str,
    observed: Option<Observed>,
    resize_refused: Option<&str>,
    credentials_lost: Option<&str>,
) -> Result<(), Error> {
    let now = now_rfc3339();
    let next = status::with_credentials_lost(
        status::with_resize_refused(
            status::status(cluster, observed, &now),
            cluster,
            resize_refused,
            &now,
        ),
        cluster,
        credentials_lost,
        &now,
    );
    if cluster.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": ChatCluster::api_version(&()),
        "kind": ChatCluster::kind(&()),
        "status": next,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(api_error(
        "writing the status of",
        format!("ChatCluster/{name}"),
    ))?;

    let before = cluster.status.as_ref().map(|s| s.phase);
    if before != Some(next.phase) {
        let kind = if next.phase == Phase::Degraded {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let message = next
            .conditions
            .first()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(
            cluster,
            kind,
            next.phase.as_str(),
            format!("Phase {}: {message}", next.phase.as_str()),
        )
        .await;
    }
    Ok(())
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let seconds = now.replace_nanosecond(0).unwrap_or(now);
    seconds
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Runs the controller until `shutdown` resolves: watches ChatClusters (only
/// spec changes, so status writes do not wake it) and the children it owns.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let clusters: Api<ChatCluster> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    if let Err(error) = ctx.metrics.watch_clusters(reader.clone()) {
        warn!(%error, "registering the per-ChatCluster metrics");
    }
    let trigger = watcher(clusters, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let owned = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
        .any_semantic();
    Controller::for_stream(trigger, reader)
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        // Secrets by their instance label rather than their owner: the data
        // credentials have none (`desired::data_credentials`), and one
        // deleted must wake its ChatCluster to report it.
        .watches(
            Api::<Secret>::all(client.clone()),
            owned.clone(),
            |secret| {
                let instance = secret.labels().get("app.kubernetes.io/instance").cloned();
                instance
                    .zip(secret.namespace())
                    .map(|(name, namespace)| reflector::ObjectRef::new(&name).within(&namespace))
            },
        )
        .owns(Api::<Job>::all(client.clone()), owned.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned.clone(),
        )
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            owned.clone(),
        )
        .owns(Api::<Ingress>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                // Reconcile errors are logged by the error policy; these are
                // the controller's own (a watch failing, a missing object).
                Err(error) => warn!(%error, "controller"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_given_once_per_generation_and_only_the_current_one_is_kept() {
        let mut warned = Warned::default();
        assert!(warned.first("chat/a".into(), 1, "resize refused"));
        assert!(!warned.first("chat/a".into(), 1, "resize refused"));
        assert!(warned.first("chat/b".into(), 1, "resize refused"));
        // A new spec: the same warning again, and the old generation's gone.
        for generation in 2..1000 {
            assert!(warned.first("chat/a".into(), generation, "resize refused"));
        }
        assert_eq!(warned.0.len(), 2);
        assert_eq!(warned.0["chat/a"].1.len(), 1);
    }

    #[test]
    fn event_notes_are_cut_to_what_the_api_server_takes() {
        assert_eq!(event_note("short".into()), "short");
        let exact = "x".repeat(1024);
        assert_eq!(event_note(exact.clone()), exact);
        // Multi-byte characters across the cut.
        let long = "é".repeat(2000);
        let cut = event_note(long);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with(" [...]") && cut.starts_with("éé"));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), LAST_RETRY);
    }

    #[test]
    fn observed_pods_read_the_deployment() {
        let deployment =
            json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3}});
        assert_eq!(
            observed_pods(&deployment),
            Observed {
                desired: 3,
                ready: 2,
                updated: 3,
                stalled: false
            }
        );
        let past_deadline = json!({"spec": {"replicas": 3}, "status": {"conditions": [
            {"type": "Available", "status": "False"},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
        ]}});
        assert!(observed_pods(&past_deadline).stalled);
        assert_eq!(observed_pods(&json!({})).desired, 1);
    }

    #[test]
    fn status_times_have_whole_seconds() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && !now.contains('.'), "{now}");
    }
}
