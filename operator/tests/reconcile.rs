//! The reconcile loop against a mocked API server (tower-test, the
//! ApiServerVerifier pattern of controller-rs): a small in-memory API server
//! that stores what is applied, answers lists by label, and records every
//! call, so each test asserts the calls a real cluster would have seen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use chat_operator::controller::{self, Context};
use chat_operator::crd::{ChatCluster, Phase};
use chat_operator::metrics::Metrics;

const CLUSTER_PATH: &str = "/apis/chatcluster.dev/v1alpha1/namespaces/chat/chatclusters/demo";

#[derive(Debug, Clone, PartialEq)]
struct Call {
    method: String,
    path: String,
}

impl Call {
    fn changes_something(&self) -> bool {
        self.method != "GET"
    }
}

/// The mocked API server's state.
#[derive(Default)]
struct FakeApi {
    objects: Mutex<BTreeMap<String, Value>>,
    calls: Mutex<Vec<Call>>,
    /// `(method, path fragment)`: matching requests fail with a 500.
    failing: Mutex<Option<(String, String)>>,
    no_service_monitor_api: AtomicBool,
    /// Deployments report all pods ready when true (a healthy cluster).
    pods_stay_down: AtomicBool,
    version: AtomicU64,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn selector_matches(object: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').all(|pair| {
        let (key, value) = pair.split_once('=').unwrap();
        object.pointer("/metadata/labels").and_then(|l| l.get(key)) == Some(&json!(value))
    })
}

impl FakeApi {
    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query: BTreeMap<String, String> =
            url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let body = request.into_body().collect_bytes().await.unwrap();
        self.calls.lock().unwrap().push(Call {
            method: method.clone(),
            path: path.clone(),
        });
        let failing = self.failing.lock().unwrap().clone();
        if failing.is_some_and(|(m, fragment)| m == method && path.contains(&fragment)) {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "etcd is having a bad day",
            );
        }
        if path.contains("/servicemonitors") && self.no_service_monitor_api.load(Ordering::SeqCst) {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        // `.../namespaces/<ns>/<plural>` is a collection; one more segment names an object.
        let after_namespace = path.split("/namespaces/").nth(1).unwrap_or_default();
        let depth = after_namespace.split('/').count();
        let mut objects = self.objects.lock().unwrap();
        match (method.as_str(), depth) {
            ("GET", 2) => {
                let prefix = format!("{path}/");
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(k, v)| {
                        k.starts_with(&prefix)
                            && !k[prefix.len()..].contains('/')
                            && selector_matches(v, query.get("labelSelector").map(String::as_str))
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", 3) => match objects.get(&path) {
                Some(object) => respond(StatusCode::OK, object),
                None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            },
            ("PATCH", 4) if path.ends_with("/status") => {
                let base = path.trim_end_matches("/status");
                let Some(object) = objects.get_mut(base) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                let patch: Value = serde_json::from_slice(&body).unwrap();
                object["status"] = patch["status"].clone();
                respond(StatusCode::OK, object)
            }
            // The event recorder counts a repeated event in its series.
            ("PATCH", 3) if path.contains("/events/") => {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let Some(event) = objects.get_mut(&path) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                for (field, value) in patch.as_object().unwrap() {
                    event[field] = value.clone();
                }
                respond(StatusCode::OK, event)
            }
            ("PATCH", 3) => {
                assert_eq!(
                    query.get("fieldManager").map(String::as_str),
                    Some("chat-operator")
                );
                assert_eq!(query.get("force").map(String::as_str), Some("true"));
                let mut object: Value = serde_json::from_slice(&body).unwrap();
                let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
                let uid = objects
                    .get(&path)
                    .and_then(|o| o.pointer("/metadata/uid").cloned())
                    .unwrap_or_else(|| json!(format!("uid-{version}")));
                object["metadata"]["uid"] = uid;
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                if object["kind"] == "Deployment" {
                    // What the Deployment controller would report.
                    let replicas = object
                        .pointer("/spec/replicas")
                        .cloned()
                        .unwrap_or(json!(1));
                    let down = self.pods_stay_down.load(Ordering::SeqCst);
                    let ready = if down { json!(0) } else { replicas.clone() };
                    // Pods that never become ready: the rollout's deadline passes.
                    let progressing = if down {
                        json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"})
                    } else {
                        json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"})
                    };
                    object["spec"]["revisionHistoryLimit"] = json!(10);
                    // A changed spec is a new generation, which the
                    // Deployment controller has not acted on when the apply
                    // answers, and has by the next read.
                    let previous = objects.get(&path);
                    let generation = previous
                        .and_then(|o| o.pointer("/metadata/generation"))
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    let changed = previous.is_none_or(|p| p["spec"] != object["spec"]);
                    let generation = generation + i64::from(changed);
                    object["metadata"]["generation"] = json!(generation);
                    object["status"] = json!({"replicas": replicas, "readyReplicas": ready,
                        "updatedReplicas": replicas, "conditions": [progressing],
                        "observedGeneration": generation});
                    let mut answer = object.clone();
                    answer["status"]["observedGeneration"] = json!(generation - i64::from(changed));
                    objects.insert(path, object);
                    return respond(StatusCode::OK, &answer);
                }
                objects.insert(path, object.clone());
                respond(StatusCode::OK, &object)
            }
            ("POST", 2) => {
                let mut object: Value = serde_json::from_slice(&body).unwrap();
                let name = object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("generated")
                    .to_owned();
                object["metadata"]["resourceVersion"] = json!("1");
                objects.insert(format!("{path}/{name}"), object.clone());
                respond(StatusCode::CREATED, &object)
            }
            ("DELETE", 3) => match objects.remove(&path) {
                Some(_) => respond(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
                ),
                None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            },
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} {path}"),
            ),
        }
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    fn put(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.to_owned(), object);
    }

    fn remove(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().remove(path)
    }

    /// The ChatCluster as the controller's cache would hold it now.
    fn cluster(&self) -> Arc<ChatCluster> {
        Arc::new(serde_json::from_value(self.get(CLUSTER_PATH).unwrap()).unwrap())
    }

    fn edit_spec(&self, edit: impl FnOnce(&mut Value)) {
        let mut objects = self.objects.lock().unwrap();
        let cluster = objects.get_mut(CLUSTER_PATH).unwrap();
        edit(&mut cluster["spec"]);
        let generation = cluster["metadata"]["generation"].as_i64().unwrap();
        cluster["metadata"]["generation"] = json!(generation + 1);
    }
}

struct Harness {
    api: Arc<FakeApi>,
    context: Arc<Context>,
}

impl Harness {
    fn new(spec: Value) -> Self {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Arc::new(FakeApi::default());
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                reply.send_response(server.handle(request).await);
            }
        });
        api.put(
            CLUSTER_PATH,
            json!({
                "apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster",
                "metadata": {"name": "demo", "namespace": "chat", "uid": "cluster-uid", "generation": 1},
                "spec": spec,
            }),
        );
        let client = Client::new(service, "default");
        let metrics = Arc::new(Metrics::new().unwrap());
        let context = Arc::new(Context::new(client, metrics, Some("test".into())));
        Self { api, context }
    }

    async fn reconcile(&self) -> Result<Action, controller::Error> {
        controller::reconcile(self.api.cluster(), self.context.clone()).await
    }

    /// Reconciles until a pass changes nothing, as the controller would after
    /// its own writes; returns the calls of the passes that changed something.
    async fn settle(&self) -> Vec<Call> {
        let mut all = Vec::new();
        for _ in 0..5 {
            self.reconcile().await.unwrap();
            let calls = self.api.take_calls();
            if !calls.iter().any(Call::changes_something) {
                return all;
            }
            all.extend(calls);
        }
        panic!("the controller never settles: {all:#?}");
    }
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.changes_something())
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

fn applied_children(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| {
            c.method == "PATCH" && !c.path.ends_with("/status") && !c.path.contains("/events/")
        })
        .map(|c| {
            c.path
                .rsplitn(3, '/')
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

const NS: &str = "/namespaces/chat";

#[tokio::test]
async fn the_first_reconcile_creates_every_child_in_order_and_reports_status() {
    let harness = Harness::new(json!({}));
    let action = harness.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let calls = harness.api.take_calls();
    assert_eq!(
        applied_children(&calls),
        [
            "secrets/demo-jwt",
            "secrets/demo-redis-auth",
            "secrets/demo-mongodb-auth",
            "secrets/demo-connections",
            "configmaps/demo-config",
            "services/demo-redis-headless",
            "networkpolicies/demo-redis",
            "services/demo-redis",
            "statefulsets/demo-redis",
            "networkpolicies/demo-mongodb",
            "services/demo-mongodb",
            "statefulsets/demo-mongodb",
            // The init Job's name carries a digest of its spec.
            applied_children(&calls)[12].as_str(),
            "deployments/demo",
            "services/demo",
            "poddisruptionbudgets/demo",
        ]
    );
    assert!(applied_children(&calls)[12].starts_with("jobs/demo-mongodb-init-"));

    let key = harness
        .api
        .get(&format!("/api/v1{NS}/secrets/demo-jwt"))
        .unwrap()["data"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(key.len() >= 40, "a generated key, base64: {key}");
    for (path, object) in harness.api.objects.lock().unwrap().iter() {
        // The data credentials outlive the cluster, as the volumes do.
        if path.contains("/events/") || path == CLUSTER_PATH || path.ends_with("-auth") {
            continue;
        }
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["uid"], &owner["controller"]),
            (&json!("cluster-uid"), &json!(true)),
            "{path}"
        );
    }

    let status_writes: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path == format!("{CLUSTER_PATH}/status"))
        .collect();
    assert_eq!(status_writes.len(), 1);
    let cluster = harness.api.cluster();
    let status = cluster.status.as_ref().unwrap();
    // The Deployment was just made: its controller has not acted on it.
    assert_eq!(status.phase, Phase::Progressing);
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.kind == "Progressing")
        .unwrap();
    assert_eq!(progressing.reason, "RollingOut");
    assert_eq!(status.observed_generation, Some(1));
    let events: Vec<&Call> = calls
        .iter()
        .filter(|c| c.path.contains("/events"))
        .collect();
    assert!(!events.is_empty(), "an Applied event: {calls:#?}");
}

#[tokio::test]
async fn once_settled_a_reconcile_makes_no_changing_call() {
    let harness = Harness::new(
        json!({"ingress": {"host": "chat.example.com"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 6}}),
    );
    harness.settle().await;
    let cluster = harness.api.cluster();
    assert_eq!(cluster.status.as_ref().unwrap().phase, Phase::Running);

    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(writes(&calls), Vec::<String>::new());
    assert!(
        calls.iter().all(|c| c.method == "GET"),
        "reads only: {calls:#?}"
    );
}

#[tokio::test]
async fn a_deleted_child_is_recreated_and_nothing_else_is_written() {
    let harness = Harness::new(json!({}));
    harness.settle().await;
    harness
        .api
        .remove(&format!("/api/v1{NS}/services/demo"))
        .unwrap();

    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(applied_children(&calls), ["services/demo"]);
    let other_writes: Vec<String> = writes(&calls)
        .into_iter()
        .filter(|w| !w.contains("/events") && !w.ends_with("/services/demo"))
        .collect();
    assert_eq!(other_writes, Vec::<String>::new());
}

#[tokio::test]
async fn a_changed_child_is_put_back() {
    let harness = Harness::new(json!({"replicas": 3}));
    harness.settle().await;
    let path = format!("/apis/apps/v1{NS}/deployments/demo");
    let mut deployment = harness.api.get(&path).unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil/image:latest");
    harness.api.put(&path, deployment);

    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(applied_children(&calls), ["deployments/demo"]);
    let image =
        harness.api.get(&path).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone();
    assert_ne!(image, json!("evil/image:latest"));
}

#[tokio::test]
async fn a_spec_change_rolls_only_what_it_touches() {
    let harness = Harness::new(json!({}));
    harness.settle().await;
    let path = format!("/apis/apps/v1{NS}/deployments/demo");
    let hash_before = harness.api.get(&path).unwrap()["spec"]["template"]["metadata"]["annotations"]["chatcluster.dev/config-hash"].clone();

    harness
        .api
        .edit_spec(|spec| spec["logLevel"] = json!("debug"));
    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(
        applied_children(&calls),
        ["configmaps/demo-config", "deployments/demo"],
        "the ConfigMap, and the Deployment whose pods must restart to read it"
    );
    let hash_after = harness.api.get(&path).unwrap()["spec"]["template"]["metadata"]["annotations"]
        ["chatcluster.dev/config-hash"]
        .clone();
    assert_ne!(hash_before, hash_after);
}

#[tokio::test]
async fn pause_stops_every_change_until_lifted() {
    let harness = Harness::new(json!({"replicas": 3}));
    harness.settle().await;
    harness.api.edit_spec(|spec| {
        spec["paused"] = json!(true);
        spec["replicas"] = json!(5);
    });

    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(
        applied_children(&calls),
        Vec::<String>::new(),
        "no child is touched"
    );
    assert_eq!(
        harness.api.cluster().status.as_ref().unwrap().phase,
        Phase::Paused
    );
    let deployment = harness
        .api
        .get(&format!("/apis/apps/v1{NS}/deployments/demo"))
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);

    harness.api.edit_spec(|spec| spec["paused"] = json!(false));
    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(applied_children(&calls), ["deployments/demo"]);
    let deployment = harness
        .api
        .get(&format!("/apis/apps/v1{NS}/deployments/demo"))
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 5);
}

#[tokio::test]
async fn children_turned_off_are_pruned_but_the_jwt_key_is_kept() {
    let harness = Harness::new(json!({
        "ingress": {"host": "chat.example.com"},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
    }));
    harness.settle().await;
    assert!(
        harness
            .api
            .get(&format!("/apis/networking.k8s.io/v1{NS}/ingresses/demo"))
            .is_some()
    );
    harness.api.put(
        &format!("/api/v1{NS}/secrets/mine"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": "chat"},
               "data": {"key": "bXktb3duLXNpZ25pbmcta2V5LXRoYXQtaXMtbG9uZy1lbm91Z2g="}}),
    );
    harness.api.edit_spec(|spec| {
        spec.as_object_mut().unwrap().remove("ingress");
        spec.as_object_mut().unwrap().remove("autoscaling");
        spec["jwtSecret"] = json!({"name": "mine", "key": "key"});
    });

    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    let deletes: Vec<String> = writes(&calls)
        .into_iter()
        .filter(|w| w.starts_with("DELETE"))
        .collect();
    assert_eq!(
        deletes,
        [
            format!("DELETE /apis/autoscaling/v2{NS}/horizontalpodautoscalers/demo"),
            format!("DELETE /apis/networking.k8s.io/v1{NS}/ingresses/demo"),
        ]
    );
    assert!(
        harness
            .api
            .get(&format!("/api/v1{NS}/secrets/demo-jwt"))
            .is_some(),
        "switching back to the generated key must not sign everyone out"
    );
}

#[tokio::test]
async fn an_existing_generated_key_is_never_overwritten() {
    let harness = Harness::new(json!({}));
    // "a-key-made-by-an-earlier-operator-run-and-in-use!" in base64
    let existing = "YS1rZXktbWFkZS1ieS1hbi1lYXJsaWVyLW9wZXJhdG9yLXJ1bi1hbmQtaW4tdXNlIQ==";
    harness.api.put(
        &format!("/api/v1{NS}/secrets/demo-jwt"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-jwt", "namespace": "chat"},
               "data": {"secret": existing}}),
    );
    harness.settle().await;
    assert_eq!(
        harness
            .api
            .get(&format!("/api/v1{NS}/secrets/demo-jwt"))
            .unwrap()["data"]["secret"],
        existing
    );
}

/// Found on the real node: with Redis and MongoDB both external, nothing
/// stored the credentials the operator would generate for managed ones, so
/// each reconcile generated new ones, the pods' config hash changed, and the
/// Deployment rolled forever (1,305 ReplicaSets in four minutes).
#[tokio::test]
async fn with_external_backends_a_settled_cluster_is_not_rolled_again() {
    let harness = Harness::new(json!({
        "redis": {"external": {"urlSecretRef": {"name": "backends", "key": "redis"}}},
        "mongodb": {"external": {"uriSecretRef": {"name": "backends", "key": "mongodb"}}},
    }));
    // "redis://redis:6379" and "mongodb://mongodb:27017/chat", in base64.
    harness.api.put(
        &format!("/api/v1{NS}/secrets/backends"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "backends", "namespace": "chat"},
               "data": {"redis": "cmVkaXM6Ly9yZWRpczo2Mzc5", "mongodb": "bW9uZ29kYjovL21vbmdvZGI6MjcwMTcvY2hhdA=="}}),
    );
    harness.settle().await;
    harness.reconcile().await.unwrap();
    assert_eq!(writes(&harness.api.take_calls()), Vec::<String>::new());
}

#[tokio::test]
async fn existing_backend_credentials_are_never_overwritten() {
    let harness = Harness::new(json!({}));
    // "redis-password-in-use" and others, in base64.
    let redis = "cmVkaXMtcGFzc3dvcmQtaW4tdXNl";
    let (root, app, keyfile) = ("cm9vdC1wdw==", "YXBwLXB3", "a2V5ZmlsZQ==");
    harness.api.put(
        &format!("/api/v1{NS}/secrets/demo-redis-auth"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-redis-auth", "namespace": "chat"},
               "data": {"password": redis}}),
    );
    harness.api.put(
        &format!("/api/v1{NS}/secrets/demo-mongodb-auth"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-mongodb-auth", "namespace": "chat"},
               "data": {"root-password": root, "app-password": app, "keyfile": keyfile}}),
    );
    harness.settle().await;
    let secret = |name: &str| {
        harness
            .api
            .get(&format!("/api/v1{NS}/secrets/{name}"))
            .unwrap()["data"]
            .clone()
    };
    assert_eq!(secret("demo-redis-auth")["password"], redis);
    assert_eq!(secret("demo-mongodb-auth")["app-password"], app);
    assert_eq!(secret("demo-mongodb-auth")["keyfile"], keyfile);
    // The pods connect with them: "redis://:redis-password-in-use@..." and the app user's.
    use base64::Engine;
    let url = |key: &str| {
        let encoded = secret("demo-connections")[key].as_str().unwrap().to_owned();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(
        url("redis-url").starts_with("redis://:redis-password-in-use@"),
        "{}",
        url("redis-url")
    );
    assert!(
        url("mongodb-uri").starts_with("mongodb://chat:app-pw@"),
        "{}",
        url("mongodb-uri")
    );
}

#[tokio::test]
async fn a_service_monitor_is_applied_only_where_its_api_exists() {
    let harness = Harness::new(json!({"metrics": {"serviceMonitor": true}}));
    harness
        .api
        .no_service_monitor_api
        .store(true, Ordering::SeqCst);
    let calls = harness.settle().await;
    assert!(
        !applied_children(&calls)
            .iter()
            .any(|c| c.starts_with("servicemonitors/"))
    );
    assert!(
        harness
            .api
            .objects
            .lock()
            .unwrap()
            .values()
            .any(|o| o["reason"] == "ServiceMonitorUnavailable")
    );

    harness
        .api
        .no_service_monitor_api
        .store(false, Ordering::SeqCst);
    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(applied_children(&calls), ["servicemonitors/demo"]);
}

#[tokio::test]
async fn pods_that_never_become_ready_read_as_degraded_with_a_warning_event() {
    let harness = Harness::new(json!({}));
    harness.api.pods_stay_down.store(true, Ordering::SeqCst);
    harness.settle().await;
    let cluster = harness.api.cluster();
    let status = cluster.status.as_ref().unwrap();
    assert_eq!(status.phase, Phase::Degraded);
    assert_eq!(status.ready_replicas, 0);
    let objects = harness.api.objects.lock().unwrap();
    let warning = objects
        .values()
        .find(|o| o["reason"] == "Degraded")
        .expect("a Degraded event");
    assert_eq!(warning["type"], "Warning");
}

#[tokio::test]
async fn an_api_error_fails_the_reconcile_and_the_error_policy_backs_off() {
    let harness = Harness::new(json!({}));
    *harness.api.failing.lock().unwrap() = Some(("PATCH".into(), "/deployments/".into()));

    let error = harness.reconcile().await.unwrap_err();
    assert!(error.to_string().contains("Deployment/demo"), "{error}");
    assert!(
        harness
            .api
            .objects
            .lock()
            .unwrap()
            .values()
            .any(|o| o["reason"] == "ReconcileFailed" && o["type"] == "Warning")
    );
    let cluster = harness.api.cluster();
    let first = controller::error_policy(cluster.clone(), &error, harness.context.clone());
    let error = harness.reconcile().await.unwrap_err();
    let second = controller::error_policy(cluster.clone(), &error, harness.context.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    let metrics = harness.context.metrics.render().unwrap();
    assert!(
        metrics.contains("chat_operator_reconcile_errors_total{error=\"api\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chat_operator_reconciles_total 2"),
        "{metrics}"
    );

    // Recovery resets the backoff.
    *harness.api.failing.lock().unwrap() = None;
    harness.reconcile().await.unwrap();
    let error = {
        *harness.api.failing.lock().unwrap() = Some(("PATCH".into(), "/status".into()));
        harness.api.edit_spec(|spec| spec["replicas"] = json!(4));
        harness.reconcile().await.unwrap_err()
    };
    assert_eq!(
        controller::error_policy(cluster, &error, harness.context.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

/// One child refused (here the Redis StatefulSet, as an immutable field
/// would be) holds back none of the others: they are all applied, the
/// status's Reconciled condition names the refused one and why, and the
/// reconcile fails so it is retried.
#[tokio::test]
async fn a_refused_child_holds_back_no_other_and_is_named_in_the_status() {
    let harness = Harness::new(json!({}));
    *harness.api.failing.lock().unwrap() =
        Some(("PATCH".into(), "/statefulsets/demo-redis".into()));
    let error = harness.reconcile().await.unwrap_err();
    assert!(
        error.to_string().contains("StatefulSet/demo-redis"),
        "{error}"
    );
    let calls = harness.api.take_calls();
    let applied = applied_children(&calls);
    for later in [
        "deployments/demo",
        "services/demo",
        "poddisruptionbudgets/demo",
    ] {
        assert!(
            applied.iter().any(|a| a == later),
            "{later} not applied: {applied:?}"
        );
    }
    let cluster = harness.api.cluster();
    let reconciled = cluster
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.kind == "Reconciled")
        .unwrap()
        .clone();
    assert_eq!(
        (reconciled.status.as_str(), reconciled.reason.as_str()),
        ("False", "ApplyFailed")
    );
    assert!(
        reconciled.message.contains("StatefulSet/demo-redis"),
        "{reconciled:?}"
    );

    *harness.api.failing.lock().unwrap() = None;
    harness.settle().await;
    let cluster = harness.api.cluster();
    let status = cluster.status.as_ref().unwrap();
    let reconciled = status
        .conditions
        .iter()
        .find(|c| c.kind == "Reconciled")
        .unwrap();
    assert_eq!(reconciled.status, "True");
    assert_eq!(status.phase, Phase::Running);
}

/// Right after an image change the Deployment's counts are the previous
/// template's: the status says the rollout is under way, not complete, and
/// complete once the Deployment controller has acted on the new one.
#[tokio::test]
async fn an_image_change_reads_as_rolling_out_until_the_deployment_has_seen_it() {
    let harness = Harness::new(json!({"replicas": 3}));
    harness.settle().await;
    assert_eq!(
        harness.api.cluster().status.as_ref().unwrap().phase,
        Phase::Running
    );
    harness
        .api
        .edit_spec(|spec| spec["image"] = json!({"tag": "next"}));
    harness.reconcile().await.unwrap();
    let cluster = harness.api.cluster();
    let status = cluster.status.as_ref().unwrap();
    assert_eq!(status.phase, Phase::Progressing);
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.kind == "Progressing")
        .unwrap();
    assert_eq!(progressing.reason, "RollingOut");
    harness.reconcile().await.unwrap();
    assert_eq!(
        harness.api.cluster().status.as_ref().unwrap().phase,
        Phase::Running
    );
}

/// A MongoDB init Job that failed (every retry of its pod used up) would
/// hold a shrinking StatefulSet forever: it shows in BackendsReady, and five
/// minutes after it failed it is deleted and made anew, with a warning
/// event; one that failed a moment ago is left alone.
#[tokio::test]
async fn a_failed_mongodb_job_is_reported_and_made_anew_after_a_while() {
    let harness = Harness::new(json!({}));
    harness.settle().await;
    let jobs: Vec<String> = harness
        .api
        .objects
        .lock()
        .unwrap()
        .keys()
        .filter(|path| path.contains("/jobs/demo-mongodb-init-"))
        .cloned()
        .collect();
    let [path] = jobs.as_slice() else {
        panic!("one init Job: {jobs:?}")
    };
    let fail_at = |at: String| {
        let mut job = harness.api.get(path).unwrap();
        job["status"] = json!({"failed": 21, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit",
            "lastTransitionTime": at}]});
        harness.api.put(path, job);
    };
    let format = &time::format_description::well_known::Rfc3339;
    let now = time::OffsetDateTime::now_utc();
    fail_at((now - time::Duration::seconds(30)).format(format).unwrap());
    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert!(!calls.iter().any(|c| c.method == "DELETE"), "{calls:#?}");
    let cluster = harness.api.cluster();
    let backends = cluster
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.kind == "BackendsReady")
        .unwrap()
        .clone();
    assert_eq!(
        (backends.status.as_str(), backends.reason.as_str()),
        ("False", "Failed")
    );
    assert!(backends.message.contains("backoff limit"), "{backends:?}");

    fail_at((now - time::Duration::minutes(6)).format(format).unwrap());
    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    let job_path = path.clone();
    assert!(
        calls
            .iter()
            .any(|c| c.method == "DELETE" && c.path == job_path),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.method == "PATCH" && c.path == job_path),
        "made anew: {calls:#?}"
    );
    assert!(
        harness
            .api
            .objects
            .lock()
            .unwrap()
            .values()
            .any(|o| o["reason"] == "JobRetried" && o["type"] == "Warning")
    );
}

#[tokio::test]
async fn a_missing_user_secret_is_reported_not_invented() {
    let harness = Harness::new(json!({"jwtSecret": {"name": "absent", "key": "key"}}));
    let error = harness.reconcile().await.unwrap_err();
    assert_eq!(error.kind(), "secret");
    assert!(error.to_string().contains("absent"), "{error}");
    let calls = harness.api.take_calls();
    assert_eq!(applied_children(&calls), Vec::<String>::new());
}

#[tokio::test]
async fn the_data_credentials_are_not_garbage_collected_with_the_cluster() {
    let harness = Harness::new(json!({}));
    harness.settle().await;
    let owners = |name: &str| {
        harness
            .api
            .get(&format!("/api/v1{NS}/secrets/{name}"))
            .unwrap()
            .pointer("/metadata/ownerReferences")
            .cloned()
    };
    assert_eq!(owners("demo-redis-auth"), None);
    assert_eq!(owners("demo-mongodb-auth"), None);
    assert!(
        owners("demo-jwt").is_some(),
        "the JWT key goes with the cluster"
    );
    assert!(owners("demo-connections").is_some());
    // Unowned, yet read as the cluster's own: a settled pass writes nothing.
    harness.reconcile().await.unwrap();
    assert_eq!(writes(&harness.api.take_calls()), Vec::<String>::new());
}

#[tokio::test]
async fn lost_credentials_over_existing_volumes_are_refused_not_regenerated() {
    let harness = Harness::new(json!({}));
    harness.settle().await;
    let claim = |name: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": name, "namespace": "chat"}})
    };
    harness.api.put(
        &format!("/api/v1{NS}/persistentvolumeclaims/data-demo-redis-0"),
        claim("data-demo-redis-0"),
    );
    let secret_path = format!("/api/v1{NS}/secrets/demo-redis-auth");
    let secret = harness.api.remove(&secret_path).unwrap();

    harness.reconcile().await.unwrap();
    let calls = harness.api.take_calls();
    assert_eq!(
        applied_children(&calls),
        Vec::<String>::new(),
        "nothing applied"
    );
    assert!(
        harness.api.get(&secret_path).is_none(),
        "no new password over the old data"
    );
    let cluster = harness.api.get(CLUSTER_PATH).unwrap();
    let conditions = cluster["status"]["conditions"].as_array().unwrap().clone();
    let lost = conditions
        .iter()
        .find(|c| c["type"] == "CredentialsAvailable")
        .unwrap_or_else(|| panic!("{conditions:#?}"));
    assert_eq!(lost["status"], "False");
    assert_eq!(lost["reason"], "SecretMissing");
    let message = lost["message"].as_str().unwrap();
    assert!(
        message.contains("demo-redis-auth") && message.contains("data-demo-redis-0"),
        "{message}"
    );
    let events: Vec<Value> = harness
        .api
        .objects
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.contains("/events/"))
        .map(|(_, event)| event.clone())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "CredentialsMissing" && e["type"] == "Warning"),
        "{events:#?}"
    );

    // The Secret restored (from a backup): the cluster goes on as before.
    harness.api.put(&secret_path, secret);
    harness.reconcile().await.unwrap();
    let cluster = harness.api.get(CLUSTER_PATH).unwrap();
    assert!(
        !cluster.to_string().contains("CredentialsAvailable"),
        "{cluster}"
    );
}

#[tokio::test]
async fn without_volumes_a_deleted_generated_secret_is_made_again() {
    let harness = Harness::new(json!({}));
    harness.settle().await;
    let secret_path = format!("/api/v1{NS}/secrets/demo-mongodb-auth");
    harness.api.remove(&secret_path).unwrap();
    harness.reconcile().await.unwrap();
    assert!(harness.api.get(&secret_path).is_some());
}
