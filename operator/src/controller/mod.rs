//! The controller: one [`reconcile`] per ChatCluster, in the shape of
//! kube-rs's controller-rs. It reads what exists, lets pure functions decide
//! what should ([`crate::render::children`], [`objects::plan`],
//! [`crate::status::status`]), and writes only the difference with
//! server-side apply under one field manager.

pub mod members;
pub mod objects;
pub mod redis_growth;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::crd::{ChatCluster, ChatClusterStatus, Phase};
use crate::desired::{self, BuildError, MANAGER};
use crate::metrics::Metrics;
use crate::render::{self, SecretValues};
use crate::status::{self, Observed};
use objects::{Live, ObjectKey, SERVICE_MONITOR};

/// How long after a MongoDB Job failed (its pod retried to its backoff
/// limit, about an hour) it is made anew to run again.
const JOB_RETRY: Duration = Duration::from_secs(300);
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
    /// Children that could not be applied or pruned, each named (already
    /// in the status's Reconciled condition).
    #[error("{0}")]
    Children(String),
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
            Error::Api { .. } | Error::Stuck(_) | Error::Children(_) => "api",
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
    /// The children's watch caches by kind, once `run` watches them; until
    /// then (and where it never runs: the mocked API tests) children are
    /// listed.
    caches: std::sync::OnceLock<BTreeMap<String, reflector::Store<DynamicObject>>>,
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
            caches: std::sync::OnceLock::new(),
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
            report_failure(&cluster, &ctx, &error).await;
            Err(error)
        }
    }
}

/// Puts a failed reconcile in the status (the Reconciled condition, False),
/// so `kubectl get` shows it and not only an event; best effort, since the
/// API server may be what failed.
async fn report_failure(cluster: &ChatCluster, ctx: &Context, error: &Error) {
    if matches!(error, Error::Children(_)) {
        return;
    }
    let Ok((name, namespace)) = desired::identity(cluster) else {
        return;
    };
    let now = now_rfc3339();
    let current = cluster
        .status
        .clone()
        .unwrap_or_else(|| status::status(cluster, None, &now));
    let shortfall = status::Shortfall {
        reason: "ReconcileFailed",
        message: event_note(error.to_string()),
    };
    let next = status::with_reconciled(current, cluster, Some(&shortfall), &now);
    if let Err(error) = patch_status(cluster, ctx, &namespace, &name, next).await {
        warn!(chatcluster = %cluster_key(cluster), %error, "writing the status of a failed reconcile");
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
    let mut live = observe(&ctx.client, ctx.caches.get(), cluster, &namespace, &name).await?;
    let deployment = ObjectKey {
        api_version: "apps/v1".to_owned(),
        kind: "Deployment".to_owned(),
        name: name.clone(),
    };
    let mut observed = live.objects.get(&deployment).map(observed_pods);
    let backends = backend_issues(&live);
    let mut shortfall = None;
    // Something is being deleted first: look again soon, not at the resync.
    let mut waiting = false;
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
        // A failed MongoDB Job runs again only if made anew.
        for (key, why) in members::failed_jobs(&live, time::OffsetDateTime::now_utc(), JOB_RETRY) {
            warn!(chatcluster = %cluster_key(cluster), job = %key, %why, "retrying a failed Job");
            ctx.event(
                cluster,
                EventType::Warning,
                "JobRetried",
                event_note(format!("{key} failed ({why}); made anew to run again")),
            )
            .await;
            prune(&ctx.client, &namespace, &key).await?;
            live.objects.remove(&key);
        }
        let mut desired = render::children(cluster, &secrets)?;
        if let Some(held) = members::hold_until_removed(&mut desired, &live) {
            info!(chatcluster = %cluster_key(cluster), %held, "replica set shrinking");
        }
        if let Some(held) = redis_growth::hold_single_server(&mut desired, &live) {
            info!(chatcluster = %cluster_key(cluster), %held, "Redis growing");
        }
        // The previous MongoDB Job is deleted with its pod, and gone, before
        // the new one is made: never two members scripts at once.
        let in_the_way = members::jobs_in_the_way(&desired, &live);
        if !in_the_way.is_empty() {
            for key in &in_the_way {
                info!(chatcluster = %cluster_key(cluster), job = %key, "deleting the previous Job before the new one");
                delete(&ctx.client, &namespace, key, &DeleteParams::foreground()).await?;
                // Deleting: not for the plan to prune as well.
                live.objects.remove(key);
            }
            desired.retain(|object| {
                !(object["kind"] == "Job"
                    && ObjectKey::of(object).is_some_and(|key| !live.objects.contains_key(&key)))
            });
            waiting = true;
        }
        for outcome in volumes::resize(&ctx.client, &namespace, &mut desired, &live).await? {
            match outcome {
                volumes::Outcome::Grown(what) => {
                    info!(chatcluster = %cluster_key(cluster), %what, "volumes grown");
                    ctx.event(cluster, EventType::Normal, "VolumesGrown", what)
                        .await;
                }
                volumes::Outcome::Recreated(what) => {
                    info!(chatcluster = %cluster_key(cluster), %what, "StatefulSet re-created");
                    ctx.event(cluster, EventType::Normal, "Recreated", what)
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
        objects::keep_replicas_until_owned(&mut desired, &live, MANAGER);
        let plan = objects::plan(&desired, &live, &keep);
        // Each child on its own: one refused (an immutable field, a quota)
        // must not hold back the others; each failure is named in the
        // Reconciled condition, and the reconcile is retried.
        let mut failures = Vec::new();
        for object in &plan.apply {
            match apply(&ctx.client, &namespace, object).await {
                // The Deployment as it is after the change: its generation
                // says whether the counts are of the new template yet.
                Ok(applied) if ObjectKey::of(&applied).as_ref() == Some(&deployment) => {
                    observed = Some(observed_pods(&applied));
                }
                Ok(_) => {}
                Err(error) => failures.push(error.to_string()),
            }
        }
        for key in &plan.prune {
            if let Err(error) = prune(&ctx.client, &namespace, key).await {
                failures.push(error.to_string());
            }
        }
        if !failures.is_empty() {
            shortfall = Some(status::Shortfall {
                reason: "ApplyFailed",
                message: event_note(failures.join("; ")),
            });
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
        Seen {
            observed,
            backends: &backends,
            shortfall: shortfall.as_ref(),
            resize_refused: resize_refused.as_deref(),
            credentials_lost: credentials_lost.as_deref(),
        },
    )
    .await?;
    match shortfall {
        Some(shortfall) => Err(Error::Children(shortfall.message)),
        None if waiting => Ok(Action::requeue(FIRST_RETRY)),
        None => Ok(Action::requeue(RESYNC)),
    }
}

/// What a reconcile found, for the status.
struct Seen<'a> {
    observed: Option<Observed>,
    backends: &'a [String],
    shortfall: Option<&'a status::Shortfall>,
    resize_refused: Option<&'a str>,
    credentials_lost: Option<&'a str>,
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

/// The watch cache of `kind`, if it has had its first full list; `None`:
/// list instead. Never waits: a cache that is not ready (the controller just
/// started, or its watch is refused) must not slow every reconcile.
async fn cached<'a>(
    caches: Option<&'a BTreeMap<String, reflector::Store<DynamicObject>>>,
    kind: &str,
) -> Option<&'a reflector::Store<DynamicObject>> {
    let store = caches?.get(kind)?;
    futures_util::FutureExt::now_or_never(store.wait_until_ready())?.ok()?;
    Some(store)
}

/// Lists every kind of child this ChatCluster could have, by its labels,
/// keeping those it owns (by uid). A missing ServiceMonitor API reads as
/// "none, and none can be made".
async fn observe(
    client: &Client,
    caches: Option<&BTreeMap<String, reflector::Store<DynamicObject>>>,
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
        let items: Vec<DynamicObject> = match cached(caches, kind).await {
            Some(store) => store
                .state()
                .iter()
                .filter(|item| {
                    let labels = item.labels();
                    item.namespace().as_deref() == Some(namespace)
                        && labels.get("app.kubernetes.io/instance").map(String::as_str)
                            == Some(name)
                        && labels
                            .get("app.kubernetes.io/managed-by")
                            .map(String::as_str)
                            == Some(MANAGER)
                })
                .map(|item| (**item).clone())
                .collect(),
            None => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, &resource);
                match api.list(&ListParams::default().labels(&selector)).await {
                    Ok(list) => list.items,
                    Err(kube::Error::Api(status))
                        if status.code == 404 && kind == SERVICE_MONITOR =>
                    {
                        live.service_monitor_api = false;
                        continue;
                    }
                    Err(source) => return Err(api_error("listing", format!("{kind}s"))(source)),
                }
            }
        };
        for item in items {
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
        current: is_current(deployment),
    }
}

/// Whether a workload's controller has acted on its latest spec.
fn is_current(workload: &Value) -> bool {
    let generation = workload
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let observed = workload
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    match (generation, observed) {
        (Some(generation), Some(observed)) => observed >= generation,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// What keeps the backends (the Redis, Sentinel and MongoDB StatefulSets
/// and the MongoDB init Job) from being ready on their current spec, one
/// line each; empty when nothing does.
pub fn backend_issues(live: &Live) -> Vec<String> {
    let mut issues = Vec::new();
    for (key, object) in &live.objects {
        let int = |pointer: &str| object.pointer(pointer).and_then(Value::as_i64);
        match key.kind.as_str() {
            "StatefulSet" => {
                let wanted = int("/spec/replicas").unwrap_or(1);
                let ready = int("/status/readyReplicas").unwrap_or(0);
                let updated = int("/status/updatedReplicas").unwrap_or(0);
                let revision = |field: &str| object.pointer(field).and_then(Value::as_str);
                let rolled = revision("/status/updateRevision")
                    == revision("/status/currentRevision")
                    || updated >= wanted;
                if !is_current(object) || ready < wanted || !rolled {
                    issues.push(format!(
                        "StatefulSet {}: {ready} of {wanted} pods ready, {updated} updated",
                        key.name
                    ));
                }
            }
            "Job" => {
                let failed = object
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Failed" && c["status"] == "True");
                if let Some(failed) = failed {
                    let why = failed["message"].as_str().unwrap_or("no message");
                    issues.push(format!("Job {} failed: {why}", key.name));
                }
            }
            _ => {}
        }
    }
    issues
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

/// Applies `object`; returns it as the API server has it now.
async fn apply(client: &Client, namespace: &str, object: &Value) -> Result<Value, Error> {
    let key = ObjectKey::of(object).ok_or(BuildError::Missing("apiVersion, kind or name"))?;
    let resource = objects::api_resource(&key.api_version, &key.kind)
        .ok_or(BuildError::Missing("a known child kind"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let applied = api
        .patch(
            &key.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(api_error("applying", &key))?;
    serde_json::to_value(applied).map_err(|source| {
        Error::Build(BuildError::Shape {
            what: "an applied object",
            source,
        })
    })
}

async fn prune(client: &Client, namespace: &str, key: &ObjectKey) -> Result<(), Error> {
    delete(client, namespace, key, &DeleteParams::background()).await
}

/// Deletes a child; one already gone is fine.
async fn delete(
    client: &Client,
    namespace: &str,
    key: &ObjectKey,
    params: &DeleteParams,
) -> Result<(), Error> {
    let resource = objects::api_resource(&key.api_version, &key.kind)
        .ok_or(BuildError::Missing("a known child kind"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    match api.delete(&key.name, params).await {
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
    seen: Seen<'_>,
) -> Result<(), Error> {
    let now = now_rfc3339();
    let mut next = status::status(cluster, seen.observed, &now);
    next = status::with_backends(next, cluster, seen.backends, &now);
    next = status::with_reconciled(next, cluster, seen.shortfall, &now);
    next = status::with_resize_refused(next, cluster, seen.resize_refused, &now);
    next = status::with_credentials_lost(next, cluster, seen.credentials_lost, &now);
    patch_status(cluster, ctx, namespace, name, next).await
}

/// Writes `next` as the status unless the resource already carries it, and
/// records an event when the phase changes.
async fn patch_status(
    cluster: &ChatCluster,
    ctx: &Context,
    namespace: &str,
    name: &str,
    next: ChatClusterStatus,
) -> Result<(), Error> {
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
/// The objects of kind `K` in `namespace`, or in every namespace.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown`; `client` serves its watches (no
/// response timeout: a watch is a long read), `ctx`'s client every other call.
/// With `namespace`, only the ChatClusters and children of that namespace
/// are watched (the operator then needs a Role there, not a ClusterRole).
pub async fn run(
    ctx: Arc<Context>,
    client: Client,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters: Api<ChatCluster> = scoped(&client, namespace.as_deref());
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
    let mut controller = Controller::for_stream(trigger, reader);
    // One watch per child kind, reflected into a cache the reconciles read
    // (`observe`) instead of listing every kind each time. ServiceMonitors
    // are not watched: their API may be absent, and they are listed.
    let mut caches = BTreeMap::new();
    for (api_version, kind, _) in objects::CHILD_KINDS {
        if kind == SERVICE_MONITOR {
            continue;
        }
        let Some(resource) = objects::api_resource(api_version, kind) else {
            continue;
        };
        let api: Api<DynamicObject> = match namespace.as_deref() {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let writer = reflector::store::Writer::new(resource.clone());
        caches.insert(kind.to_owned(), writer.as_reader());
        let stream = watcher(api, owned.clone())
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        controller = if kind == "Secret" {
            // Secrets by their instance label rather than their owner: the
            // data credentials have none (`desired::data_credentials`), and
            // one deleted must wake its ChatCluster to report it.
            controller.watches_stream_with(
                stream,
                |secret: DynamicObject| {
                    let instance = secret.labels().get("app.kubernetes.io/instance").cloned();
                    instance.zip(secret.namespace()).map(|(name, namespace)| {
                        reflector::ObjectRef::new(&name).within(&namespace)
                    })
                },
                resource,
            )
        } else {
            controller.owns_stream_with(stream, resource)
        };
    }
    if ctx.caches.set(caches).is_err() {
        warn!("the controller's caches were set twice");
    }
    controller
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
                stalled: false,
                current: true,
            }
        );
        // Just applied with a new template: the counts are the old one's.
        let just_applied = json!({"metadata": {"generation": 5}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 4, "readyReplicas": 3, "updatedReplicas": 3}});
        assert!(!observed_pods(&just_applied).current);
        let past_deadline = json!({"spec": {"replicas": 3}, "status": {"conditions": [
            {"type": "Available", "status": "False"},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
        ]}});
        assert!(observed_pods(&past_deadline).stalled);
        assert_eq!(observed_pods(&json!({})).desired, 1);
    }

    #[test]
    fn backends_not_ready_on_their_current_spec_are_named() {
        let key = |kind: &str, name: &str| ObjectKey {
            api_version: "apps/v1".to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        };
        let ready = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3,
                       "currentRevision": "r2", "updateRevision": "r2"}});
        let mut live = Live::default();
        live.objects
            .insert(key("StatefulSet", "demo-redis"), ready.clone());
        live.objects
            .insert(key("Deployment", "demo"), json!({"spec": {"replicas": 5}}));
        assert_eq!(backend_issues(&live), Vec::<String>::new());

        // A wedged Sentinel, a rollout held half-way, a new spec not acted on
        // yet, a failed Job: each named.
        let mut wedged = ready.clone();
        wedged["status"]["readyReplicas"] = json!(2);
        live.objects
            .insert(key("StatefulSet", "demo-redis-sentinel"), wedged);
        let mut held = ready.clone();
        held["status"]["updatedReplicas"] = json!(1);
        held["status"]["updateRevision"] = json!("r3");
        live.objects
            .insert(key("StatefulSet", "demo-mongodb"), held);
        let mut unseen = ready;
        unseen["metadata"]["generation"] = json!(3);
        live.objects
            .insert(key("StatefulSet", "demo-redis"), unseen);
        live.objects.insert(
            key("Job", "demo-mongodb-init-1"),
            json!({"status": {"conditions": [{"type": "Failed", "status": "True",
                "message": "Job has reached the specified backoff limit"}]}}),
        );
        assert_eq!(
            backend_issues(&live),
            [
                "Job demo-mongodb-init-1 failed: Job has reached the specified backoff limit",
                "StatefulSet demo-mongodb: 3 of 3 pods ready, 1 updated",
                "StatefulSet demo-redis: 3 of 3 pods ready, 3 updated",
                "StatefulSet demo-redis-sentinel: 2 of 3 pods ready, 3 updated",
            ]
        );
    }

    #[test]
    fn status_times_have_whole_seconds() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && !now.contains('.'), "{now}");
    }
}
