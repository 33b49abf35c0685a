//! The Kubernetes side proven against a real API server (kube-apiserver and
//! etcd, see `server.rs`): the CRD installs (the API server estimates the cost
//! of its CEL rules), ChatClusters are defaulted, validated and pruned by it,
//! status, scale and generation behave as the controller assumes, and
//! `chat-operator run` reconciles through real admission with exactly the
//! RBAC of manifests/operator.yaml.
//!
//! One API server is shared by the tests that run no operator, each in
//! namespaces of its own; the tests that run the operator start their own.

mod server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chat_operator::crd::{ChatCluster, ChatClusterSpec};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::discovery::{ApiResource, pinned_kind};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use server::ApiServer;

const CRD_NAME: &str = "chatclusters.chatcluster.dev";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

/// Starts an API server and creates manifests/crd.yaml on it (created, not
/// updated: creation is where the API server checks the schema and estimates
/// the cost of every CEL rule). It runs on a thread of its own: it waits with
/// a runtime of its own, and the tests call this from inside theirs.
fn start_with_crd() -> ApiServer {
    start_binary_with_crd("kube-apiserver")
}

fn start_binary_with_crd(binary: &'static str) -> ApiServer {
    std::thread::spawn(move || {
        let server = ApiServer::start_with(binary);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = server.admin().await;
            install_crd(&client).await;
        });
        server
    })
    .join()
    .expect("starting an API server with the CRD")
}

/// The API server the tests that need no operator share.
fn shared() -> &'static ApiServer {
    static SHARED: OnceLock<ApiServer> = OnceLock::new();
    SHARED.get_or_init(start_with_crd)
}

/// Creates manifests/crd.yaml and waits until the API serves it.
async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition =
        serde_json::from_value(yaml_documents(&repository().join("manifests/crd.yaml"))[0].clone())
            .unwrap();
    if let Err(error) = crds.create(&PostParams::default(), &crd).await {
        panic!("the API server refused manifests/crd.yaml: {error}");
    }
    wait_for("the CRD to be established", Duration::from_secs(30), || {
        let crds = crds.clone();
        async move {
            let crd = crds.get(CRD_NAME).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await;
    // Established is set before the discovery documents are updated.
    let chatclusters: Api<ChatCluster> = Api::all(client.clone());
    wait_for("ChatClusters to be served", Duration::from_secs(30), || {
        let chatclusters = chatclusters.clone();
        async move { chatclusters.list(&Default::default()).await.ok().map(drop) }
    })
    .await;
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

fn chatcluster_resource() -> ApiResource {
    ApiResource::erase::<ChatCluster>(&())
}

/// ChatClusters as raw objects, so requests can carry what the Rust type
/// would not (unknown fields, invalid values).
fn raw_chatclusters(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &chatcluster_resource())
}

fn chatcluster(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "chatcluster.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// The spec the operator reads for `spec`: every default filled in by serde,
/// as docs/operator.md documents them.
fn defaulted(spec: &Value) -> Value {
    let typed: ChatClusterSpec = serde_json::from_value(spec.clone()).unwrap();
    serde_json::to_value(typed).unwrap()
}

/// The oldest Kubernetes the charts claim (`kubeVersion`) is the one whose
/// kube-apiserver is built as `kube-apiserver-oldest`: on it the CRD
/// installs (the API server estimates the cost of its CEL rules against that
/// version's budget), the examples are admitted with their defaults, and the
/// CEL rules refuse what they must, with their messages.
#[tokio::test]
async fn the_crd_works_on_the_oldest_kubernetes_claimed() {
    let server = start_binary_with_crd("kube-apiserver-oldest");
    let admin = server.admin().await;
    let version = admin.apiserver_version().await.unwrap();
    for chart in ["chatcluster", "chatcluster-operator"] {
        let text = std::fs::read_to_string(repository().join(format!("charts/{chart}/Chart.yaml")))
            .unwrap();
        let claimed = text
            .lines()
            .find_map(|line| line.strip_prefix("kubeVersion:"))
            .unwrap_or_else(|| panic!("{chart} claims no kubeVersion"));
        let minimum = claimed.trim().trim_matches('"').trim_start_matches(">=");
        let mut parts = minimum.split(['.', '-']);
        let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(
            (version.major.as_str(), version.minor.trim_end_matches('+')),
            (major, minor),
            "{chart} claims {claimed}: the oldest tested must be that one"
        );
    }

    let namespace = "oldest";
    create_namespace(&admin, namespace).await;
    let api = raw_chatclusters(&admin, namespace);
    for example in ["minimal.yaml", "full.yaml"] {
        let document = yaml_documents(&repository().join("manifests/examples").join(example))
            .into_iter()
            .find(|d| d["kind"] == "ChatCluster")
            .unwrap();
        let name = document["metadata"]["name"].as_str().unwrap();
        let created = api
            .create(
                &PostParams::default(),
                &chatcluster(name, document["spec"].clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("{example} on {}: {e}", version.git_version));
        assert_eq!(
            created.data["spec"],
            defaulted(&document["spec"]),
            "{example}"
        );
    }
    for (spec, message) in [
        (
            json!({"redis": {"managed": {"replicas": 3, "persistence": {"enabled": false}}}}),
            "persistence",
        ),
        (json!({"replicas": -1}), "replicas"),
    ] {
        let refused = api
            .create(
                &PostParams::default(),
                &chatcluster("refused", spec.clone()),
            )
            .await
            .expect_err("refused");
        assert!(refused.to_string().contains(message), "{spec}: {refused}");
    }
    let long = "x".repeat(34);
    let refused = api
        .create(&PostParams::default(), &chatcluster(&long, json!({})))
        .await
        .expect_err("a name over 33 characters refused");
    assert!(refused.to_string().contains("33"), "{refused}");
}

#[tokio::test]
async fn the_crd_installs_and_serves_its_printer_columns() {
    let server = shared();
    let client = server.admin().await;

    // The chart installs the same CRD as manifests/crd.yaml.
    let chart_crd = yaml_documents(
        &repository().join("charts/chatcluster-operator/crds/chatclusters.chatcluster.dev.yaml"),
    );
    assert!(
        chart_crd == yaml_documents(&repository().join("manifests/crd.yaml"))
            && chart_crd[0] == serde_json::to_value(ChatCluster::crd()).unwrap(),
        "the chart's CRD is not manifests/crd.yaml: run `.venv/bin/python scripts/check_packaging.py --write`"
    );
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(CRD_NAME)
        .await
        .unwrap();
    let accepted = crd.status.unwrap().conditions.unwrap();
    for wanted in ["NamesAccepted", "Established"] {
        assert!(
            accepted
                .iter()
                .any(|c| c.type_ == wanted && c.status == "True"),
            "{wanted}: {accepted:?}"
        );
    }

    // `kubectl get chat` asks for a Table; the columns come from the CRD.
    let namespace = "printer-columns";
    create_namespace(&client, namespace).await;
    let api = raw_chatclusters(&client, namespace);
    api.create(&PostParams::default(), &chatcluster("demo", json!({})))
        .await
        .unwrap();
    let status = json!({
        "apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster",
        "status": {"replicas": 3, "readyReplicas": 2, "selector": "app=x", "phase": "Progressing",
                   "conditions": [{"type": "Available", "status": "True", "reason": "PodsReady",
                                   "message": "2 of 3 chat pods ready",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    });
    api.patch_status(
        "demo",
        &PatchParams::apply("chat-operator").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
    let request = http::Request::get(format!(
        "/apis/chatcluster.dev/v1alpha1/namespaces/{namespace}/chatclusters"
    ))
    .header(
        "Accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(Vec::new())
    .unwrap();
    let table: Value = serde_json::from_str(&client.request_text(request).await.unwrap()).unwrap();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Ready", "Replicas", "Phase", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "demo");
    assert_eq!(cells[1], "True");
    assert_eq!(cells[2], 2);
    assert_eq!(cells[3], "Progressing");
}

#[tokio::test]
async fn examples_and_the_charts_chatclusters_come_back_with_the_documented_defaults() {
    let server = shared();
    let client = server.admin().await;
    let namespace = "defaults";
    create_namespace(&client, namespace).await;
    let api = raw_chatclusters(&client, namespace);

    let rendered = server.dir.join("chart-chatclusters");
    std::fs::create_dir_all(&rendered).unwrap();
    let python = std::env::var("CHAT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repository().join(".venv/bin/python"));
    let output = Command::new(&python)
        .arg(repository().join("scripts/check_packaging.py"))
        .arg("--chatclusters")
        .arg(&rendered)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test.sh)", python.display()));
    assert!(
        output.status.success(),
        "rendering the chart: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut files: Vec<PathBuf> = std::fs::read_dir(repository().join("manifests/examples"))
        .unwrap()
        .chain(std::fs::read_dir(&rendered).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "three examples and three chart renderings: {files:?}"
    );
    for (i, file) in files.iter().enumerate() {
        let example = yaml_documents(file).remove(0);
        let name = format!("example-{i}");
        let object = chatcluster(&name, example["spec"].clone());
        let created = api
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("{} refused: {e}", file.display()));
        let spec = &created.data["spec"];
        assert_eq!(
            spec,
            &defaulted(&example["spec"]),
            "{}: the API server's defaults differ from the operator's",
            file.display()
        );
        assert_eq!(created.metadata.generation, Some(1));
    }

    // `spec: {}` is a working cluster; the documented defaults, spelled out.
    let minimal = api.get("example-1").await.unwrap();
    let spec = &minimal.data["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(
        spec["image"]["repository"],
        "ghcr.io/chatcluster/chat-server"
    );
    assert_eq!(spec["rateLimit"], json!({"perSecond": 10, "burst": 20}));
    assert_eq!(spec["shutdownGraceSeconds"], 25);
    assert_eq!(spec["service"], json!({"type": "ClusterIP", "port": 80}));
    assert_eq!(spec["mongodb"]["database"], "chat");
    assert_eq!(spec["logLevel"], "info");
}

/// Each invalid spec, and the message the API server answers with: for the
/// CEL rules, the message docs/operator.md documents.
#[tokio::test]
async fn invalid_chatclusters_are_refused_with_the_documented_messages() {
    let server = shared();
    let client = server.admin().await;
    let namespace = "invalid";
    create_namespace(&client, namespace).await;
    let api = raw_chatclusters(&client, namespace);
    let reference = json!({"name": "s", "key": "k"});
    let too_many_origins: Vec<String> = (0..65)
        .map(|i| format!("https://chat{i}.example.com"))
        .collect();
    let cases = [
        (
            json!({"redis": {"managed": {}, "external": {"urlSecretRef": reference}}}),
            "set redis.managed or redis.external, not both",
        ),
        (
            json!({"mongodb": {"managed": {}, "external": {"uriSecretRef": reference}}}),
            "set mongodb.managed or mongodb.external, not both",
        ),
        (
            json!({"mongodb": {"managed": {"members": 2}}}),
            "mongodb.managed.members must be odd (1, 3, 5 or 7) so a majority exists",
        ),
        (
            json!({"redis": {"managed": {"replicas": 3, "persistence": {"enabled": false}}}}),
            "redis.managed.replicas above 1 needs persistence.enabled: a primary restarting empty would be followed by its replicas, and every copy of the acked messages lost",
        ),
        (
            json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}),
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            json!({"corsOrigins": ["https://chat.example.com/app"]}),
            "corsOrigins must be origins like https://chat.example.com: a lowercase scheme, host and port only",
        ),
        (
            json!({"service": {"type": "ClusterIP", "nodePort": 30080}}),
            "service.nodePort needs service.type NodePort or LoadBalancer",
        ),
        (
            json!({"replicas": 101}),
            "spec.replicas: Invalid value: 101: spec.replicas in body should be less than or equal to 100",
        ),
        (
            json!({"replicas": -1}),
            "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
        ),
        (
            json!({"mongodb": {"managed": {"members": 9}}}),
            "spec.mongodb.managed.members in body should be less than or equal to 7",
        ),
        (
            json!({"corsOrigins": too_many_origins}),
            "spec.corsOrigins: Too many: 65: must have at most 64 items",
        ),
        (
            json!({"corsOrigins": [format!("https://{}.example.com", "a".repeat(300))]}),
            "spec.corsOrigins[0]: Too long: may not be more than 270 bytes",
        ),
        (
            json!({"logLevel": "loud"}),
            "spec.logLevel: Unsupported value: \"loud\"",
        ),
        (
            json!({"replicas": "three"}),
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer",
        ),
    ];
    let docs = std::fs::read_to_string(repository().join("docs/operator.md")).unwrap();
    for (spec, message) in cases {
        let refused = api
            .create(
                &PostParams::default(),
                &chatcluster("invalid", spec.clone()),
            )
            .await
            .map(|_| ())
            .expect_err(&format!("accepted {spec}"));
        let kube::Error::Api(status) = &refused else {
            panic!("{spec}: {refused}");
        };
        assert_eq!(status.code, 422, "{spec}: {status:?}");
        assert!(
            status.message.contains(message),
            "{spec}: wanted {message:?} in {:?}",
            status.message
        );
        if !message.starts_with("spec.") {
            assert!(docs.contains(message), "docs/operator.md lacks {message:?}");
        }
    }

    // A name longer than its children's names allow.
    let long_name = "a".repeat(34);
    let message = "a ChatCluster's name may be at most 33 characters";
    let refused = api
        .create(&PostParams::default(), &chatcluster(&long_name, json!({})))
        .await
        .map(|_| ())
        .expect_err("a 34-character name is refused");
    assert!(refused.to_string().contains(message), "{refused}");
    assert!(docs.contains(message), "docs/operator.md lacks {message:?}");
    api.create(
        &PostParams::default(),
        &chatcluster(&"a".repeat(33), json!({})),
    )
    .await
    .expect("a 33-character name is fine");

    // Each bound also holds for an update, and for the scale subresource.
    api.create(&PostParams::default(), &chatcluster("valid", json!({})))
        .await
        .unwrap();
    let refused = api
        .patch(
            "valid",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": {"minReplicas": 9, "maxReplicas": 2}}})),
        )
        .await
        .map(|_| ())
        .expect_err("an invalid update is refused");
    assert!(
        refused
            .to_string()
            .contains("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
        "{refused}"
    );

    // Changes the operator cannot carry out are refused at admission.
    api.create(
        &PostParams::default(),
        &chatcluster("ha", json!({"redis": {"managed": {"replicas": 3}}})),
    )
    .await
    .unwrap();
    let transitions = [
        (
            "ha",
            json!({"redis": {"managed": {"replicas": 1}}}),
            "redis.managed.replicas cannot go back to 1 from a primary with replicas",
        ),
        (
            "ha",
            json!({"redis": {"managed": {"persistence": {"enabled": false}}}}),
            "redis.managed.persistence.enabled cannot change on an existing ChatCluster",
        ),
    ];
    for (name, change, message) in transitions {
        let refused = api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": change })),
            )
            .await
            .map(|_| ())
            .expect_err(&format!("accepted {change}"));
        assert!(refused.to_string().contains(message), "{change}: {refused}");
        assert!(docs.contains(message), "docs/operator.md lacks {message:?}");
    }
    // What it can carry out is not: more replicas.
    api.patch(
        "ha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"redis": {"managed": {"replicas": 5}}}})),
    )
    .await
    .unwrap();

    let refused = api
        .patch_scale(
            "valid",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 500}})),
        )
        .await
        .map(|_| ())
        .expect_err("scaling beyond the range is refused");
    assert!(
        refused.to_string().contains("less than or equal to 100"),
        "{refused}"
    );
}

#[tokio::test]
async fn status_scale_generation_and_pruning_behave_as_the_controller_assumes() {
    let server = shared();
    let client = server.admin().await;
    let namespace = "subresources";
    create_namespace(&client, namespace).await;
    let api = raw_chatclusters(&client, namespace);

    // Unknown fields are pruned, at the top of the spec and inside it.
    let created = api
        .create(
            &PostParams::default(),
            &chatcluster(
                "chat",
                json!({"replicas": 2, "colour": "blue", "redis": {"managed": {"flavour": "x"}}}),
            ),
        )
        .await
        .unwrap();
    assert!(created.data["spec"].get("colour").is_none());
    assert!(
        created.data["spec"]["redis"]["managed"]
            .get("flavour")
            .is_none()
    );
    assert_eq!(created.metadata.generation, Some(1));

    // Status through server-side apply on the status subresource, under the
    // operator's field manager: the spec's generation does not move.
    let status = json!({
        "apiVersion": "chatcluster.dev/v1alpha1", "kind": "ChatCluster",
        "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "phase": "Running",
                   "selector": "app.kubernetes.io/instance=chat,app.kubernetes.io/component=server",
                   "conditions": []},
    });
    let apply = PatchParams::apply("chat-operator").force();
    let written = api
        .patch_status("chat", &apply, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(written.metadata.generation, Some(1));
    assert_eq!(written.data["status"]["phase"], "Running");
    let managers: Vec<(String, Option<String>)> = written
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone().unwrap_or_default(), m.subresource.clone()))
        .collect();
    assert!(
        managers.contains(&("chat-operator".to_owned(), Some("status".to_owned()))),
        "{managers:?}"
    );
    // The same status again writes nothing: the controller's idempotent
    // status never wakes a watcher.
    let again = api
        .patch_status("chat", &apply, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        written.metadata.resource_version
    );
    // A spec write through the main resource cannot change the status.
    let ignored = api
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Degraded"}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.data["status"]["phase"], "Running");

    // Labels and annotations do not move the generation; spec changes do.
    let labelled = api
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "chat"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let changed = api
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"logLevel": "debug"}})),
        )
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));

    // The scale subresource: what `kubectl scale` and an HPA use.
    let scale = api.get_scale("chat").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let scale_status = scale.status.unwrap();
    assert_eq!(scale_status.replicas, 2);
    assert_eq!(
        scale_status.selector.as_deref(),
        Some("app.kubernetes.io/instance=chat,app.kubernetes.io/component=server")
    );
    api.patch_scale(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    let scaled = api.get("chat").await.unwrap();
    assert_eq!(scaled.data["spec"]["replicas"], 5);
    assert_eq!(scaled.metadata.generation, Some(3));
}

/// `chat-operator run` as a process, killed when the test ends.
struct Operator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    fn start(kubeconfig: &Path, log: PathBuf, args: &[&str]) -> Operator {
        let port = server::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
            .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("CHAT_OPERATOR_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Operator { child, port, log }
    }

    /// The status code and body of GET `path` on the operator's endpoint.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split("\r\n\r\n").nth(1)?.to_owned();
        Some((code, body))
    }

    /// The value of a metric without labels.
    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await.expect("the operator's /metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Applies every object of manifests/operator.yaml but the operator's own
/// Deployment and Service (no pods run here): the namespace, ServiceAccount
/// and RBAC exactly as users install them.
async fn install_operator_rbac(client: &Client) {
    for object in yaml_documents(&repository().join("manifests/operator.yaml")) {
        if !matches!(object["kind"].as_str(), Some("Deployment" | "Service")) {
            apply_object(client, &object).await;
        }
    }
}

/// Applies `object` (any kind the API server serves) as the tests' field
/// manager, in its namespace if it names one.
async fn apply_object(client: &Client, object: &Value) {
    let kind = object["kind"].as_str().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (resource, capabilities) =
        pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .unwrap();
    let api: Api<DynamicObject> =
        match (capabilities.scope, object["metadata"]["namespace"].as_str()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
    let name = object["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind}/{name}: {e}"));
}

/// The RBAC of manifests/operator.yaml as the operator chart renders it
/// with `watchNamespace: <namespace>` (scripts/check_packaging.py holds the
/// chart to this): the ClusterRole's rules as a Role in `namespace`, but
/// the storage classes, which stay in a ClusterRole of their own.
async fn install_namespaced_operator_rbac(client: &Client, namespace: &str) {
    for mut object in yaml_documents(&repository().join("manifests/operator.yaml")) {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let scoped = match kind.as_str() {
            "Deployment" | "Service" => continue,
            "ClusterRole" => {
                let rules = object["rules"].as_array().unwrap().clone();
                let (classes, others): (Vec<Value>, Vec<Value>) = rules
                    .into_iter()
                    .partition(|rule| rule["resources"] == json!(["storageclasses"]));
                object["rules"] = json!(classes);
                let mut role = object.clone();
                role["kind"] = json!("Role");
                role["metadata"]["namespace"] = json!(namespace);
                role["rules"] = json!(others);
                Some(role)
            }
            "ClusterRoleBinding" => {
                let mut binding = object.clone();
                binding["kind"] = json!("RoleBinding");
                binding["metadata"]["namespace"] = json!(namespace);
                binding["roleRef"]["kind"] = json!("Role");
                Some(binding)
            }
            _ => None,
        };
        for object in std::iter::once(object).chain(scoped) {
            apply_object(client, &object).await;
        }
    }
}

/// With `--watch-namespace` (the chart's `watchNamespace`) the operator
/// runs on a Role in that namespace: it reconciles the ChatClusters there,
/// leaves those elsewhere alone, and its token can read no Secret outside
/// (where the cluster-wide install may read every one).
#[tokio::test]
async fn watching_one_namespace_the_operator_needs_and_has_rights_there_only() {
    let server = start_with_crd();
    let admin = server.admin().await;
    for namespace in ["watched", "elsewhere"] {
        create_namespace(&admin, namespace).await;
    }
    install_namespaced_operator_rbac(&admin, "watched").await;
    let token = operator_token(&admin).await;
    let kubeconfig = server.write_kubeconfig("chat-operator", &token);
    let operator = Operator::start(
        &kubeconfig,
        server.dir.join("namespaced-operator.log"),
        &[
            "--lease-namespace",
            "chat-operator",
            "--identity",
            "namespaced",
            "--watch-namespace",
            "watched",
        ],
    );
    wait_for(
        "the operator to be ready and lead",
        Duration::from_secs(60),
        || {
            let operator = &operator;
            async move {
                let ready = operator.get("/readyz").await?.0 == 200;
                (ready && operator.metric("chat_operator_leader").await == 1.0).then_some(())
            }
        },
    )
    .await;
    for namespace in ["watched", "elsewhere"] {
        raw_chatclusters(&admin, namespace)
            .create(&PostParams::default(), &chatcluster("chat", json!({})))
            .await
            .unwrap();
    }
    let deployments = |namespace: &str| -> Api<k8s_openapi::api::apps::v1::Deployment> {
        Api::namespaced(admin.clone(), namespace)
    };
    wait_for(
        "the watched namespace's Deployment",
        Duration::from_secs(60),
        || {
            let deployments = deployments("watched");
            async move { deployments.get_opt("chat").await.ok().flatten().map(|_| ()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        deployments("elsewhere")
            .get_opt("chat")
            .await
            .unwrap()
            .is_none(),
        "a ChatCluster outside the watched namespace was reconciled"
    );
    let log = operator.log();
    assert!(!log.contains("forbidden"), "{log}");

    let as_operator = server.client_from(&kubeconfig).await;
    let outside: Api<Secret> = Api::namespaced(as_operator.clone(), "elsewhere");
    match outside.list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("the operator listed Secrets outside its namespace: {other:?}"),
    }
    let inside: Api<Secret> = Api::namespaced(as_operator, "watched");
    inside.list(&Default::default()).await.unwrap();
}

/// LIST requests the API server has answered for each child kind the
/// controller watches, from its `apiserver_request_total`.
async fn child_lists(admin: &Client) -> std::collections::BTreeMap<String, u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin.request_text(request).await.unwrap();
    let mut lists = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        if !line.contains("verb=\"LIST\"") {
            continue;
        }
        let resource = line
            .split("resource=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        let children = chat_operator::controller::objects::CHILD_KINDS
            .iter()
            .filter(|(_, kind, _)| *kind != "ServiceMonitor")
            .any(|(_, _, plural)| *plural == resource);
        if !children {
            continue;
        }
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        *lists.entry(resource.to_owned()).or_default() += count as u64;
    }
    lists
}

/// A token of the operator's ServiceAccount, as a pod of it would mount.
async fn operator_token(client: &Client) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "chat-operator");
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}
    }))
    .unwrap();
    let issued: TokenRequest = accounts
        .create_subresource("token", "chat-operator", &PostParams::default(), &request)
        .await
        .unwrap();
    issued.status.and_then(|s| s.token).expect("a token")
}

/// The children the operator made for `instance`: `Kind/name` with their
/// resourceVersion, every one owned by the ChatCluster but the data
/// credentials (`desired::data_credentials`), which are kept without it.
async fn children(
    client: &Client,
    namespace: &str,
    instance: &str,
    owner: &str,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (api_version, kind, _) in chat_operator::controller::objects::CHILD_KINDS {
        let Some(resource) = chat_operator::controller::objects::api_resource(api_version, kind)
        else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let selector = format!(
            "app.kubernetes.io/instance={instance},app.kubernetes.io/managed-by=chat-operator"
        );
        let Ok(list) = api
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
        else {
            continue; // an API this server lacks (ServiceMonitor)
        };
        for item in list.items {
            let owned = item
                .owner_references()
                .iter()
                .any(|o| o.uid == owner && o.controller == Some(true));
            // The data credentials outlive the cluster, as its volumes do.
            let kept = kind == "Secret"
                && chat_operator::desired::data_credentials(instance).contains(&item.name_any());
            assert!(
                owned != kept,
                "{kind}/{} is owned by the ChatCluster: {owned}, kept without it: {kept}",
                item.name_any()
            );
            found.push((
                format!("{kind}/{}", item.name_any()),
                item.resource_version().unwrap_or_default(),
            ));
        }
    }
    found.sort();
    found
}

/// The reasons of the events about `name` in `namespace`.
async fn event_reasons(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    let mut reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect();
    reasons.sort();
    reasons.dedup();
    reasons
}

#[tokio::test]
async fn the_operator_reconciles_through_real_admission_with_its_own_rbac() {
    // A server of its own: the operator watches every namespace, and what it
    // does here must not mix with the other tests' ChatClusters.
    let server = start_with_crd();
    let admin = server.admin().await;
    install_operator_rbac(&admin).await;
    let token = operator_token(&admin).await;
    let kubeconfig = server.write_kubeconfig("chat-operator", &token);
    let mut operator = Operator::start(
        &kubeconfig,
        server.dir.join("operator.log"),
        &[
            "--lease-namespace",
            "chat-operator",
            "--identity",
            "operator-under-test",
        ],
    );
    wait_for(
        "the operator to be ready and lead",
        Duration::from_secs(60),
        || {
            let operator = &operator;
            async move {
                let ready = operator.get("/readyz").await?.0 == 200;
                (ready && operator.metric("chat_operator_leader").await == 1.0).then_some(())
            }
        },
    )
    .await;

    // Every option on: the full example with its Secret.
    let namespace = "chat";
    create_namespace(&admin, namespace).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "chat-keys"},
        "stringData": {"jwt": "a-jwt-signing-key-of-at-least-32-bytes!!"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &keys).await.unwrap();
    let example = yaml_documents(&repository().join("manifests/examples/full.yaml")).remove(0);
    let api = raw_chatclusters(&admin, namespace);
    let created = api
        .create(
            &PostParams::default(),
            &chatcluster("chat", example["spec"].clone()),
        )
        .await
        .unwrap();
    let uid = created.uid().unwrap();

    let status = wait_for("the operator's status", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let status = api.get("chat").await.ok()?.data["status"].clone();
            (status["observedGeneration"] == 1 && status["phase"] != "Pending").then_some(status)
        }
    })
    .await;
    // No controller-manager runs here: the Deployment exists, no pod does,
    // which reads as a cluster still starting, not a degraded one.
    assert_eq!(status["readyReplicas"], 0, "{status}");
    assert_eq!(status["phase"], "Progressing", "{status}");
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/component=server,app.kubernetes.io/instance=chat,app.kubernetes.io/name=chatcluster",
        "{status}"
    );

    let made = children(&admin, namespace, "chat", &uid).await;
    let kinds: Vec<&str> = made.iter().map(|(k, _)| k.as_str()).collect();
    for wanted in [
        "Deployment/chat",
        "ConfigMap/chat-config",
        "HorizontalPodAutoscaler/chat",
        "Ingress/chat",
        "PodDisruptionBudget/chat",
    ] {
        assert!(kinds.contains(&wanted), "{wanted} missing from {kinds:?}");
    }
    for kind in ["StatefulSet/", "Service/", "Job/"] {
        assert!(
            kinds.iter().any(|k| k.starts_with(kind)),
            "no {kind} in {kinds:?}"
        );
    }

    // What this server lacks: the Prometheus Operator's ServiceMonitor API.
    // Reported once as an event; everything else is applied.
    let reasons = wait_for("the operator's events", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            let reasons = event_reasons(&admin, namespace, "chat").await;
            reasons
                .iter()
                .any(|r| r == "ServiceMonitorUnavailable")
                .then_some(reasons)
        }
    })
    .await;
    assert!(reasons.contains(&"Applied".to_owned()), "{reasons:?}");
    assert!(!reasons.contains(&"Degraded".to_owned()), "{reasons:?}");
    assert!(
        !reasons.contains(&"ReconcileFailed".to_owned()),
        "{reasons:?}\n{}",
        operator.log()
    );

    // Settled: with what the API server defaulted in, the children compare
    // equal to the desired ones, so a reconcile writes nothing and nothing
    // wakes the controller again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = children(&admin, namespace, "chat", &uid).await;
    let reconciles = operator.metric("chat_operator_reconciles_total").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        children(&admin, namespace, "chat", &uid).await,
        before,
        "children rewritten while settled"
    );
    assert_eq!(
        operator.metric("chat_operator_reconciles_total").await,
        reconciles,
        "the controller keeps waking itself:\n{}",
        operator.log()
    );

    // A reconcile reads the children from the controller's watch caches:
    // a spec change is carried out without a single LIST of a child kind
    // (the API server's own request counts say so).
    let lists_before = child_lists(&admin).await;
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"logLevel": "debug"}})),
    )
    .await
    .unwrap();
    wait_for(
        "the log level change carried out",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let object = api.get("chat").await.ok()?;
                let generation = object.metadata.generation?;
                (object.data["status"]["observedGeneration"].as_i64()? == generation).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        child_lists(&admin).await,
        lists_before,
        "children listed by a reconcile instead of read from the caches"
    );

    // Drift is put back: someone edits the ConfigMap by hand.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(admin.clone(), namespace);
    let original = configmaps.get("chat-config").await.unwrap().data.unwrap();
    configmaps
        .patch(
            "chat-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"CHAT_RATE_LIMIT_PER_SEC": "100000"}})),
        )
        .await
        .unwrap();
    wait_for("the edited ConfigMap to be put back", Duration::from_secs(30), || {
        let configmaps = configmaps.clone();
        let original = original.clone();
        async move { (configmaps.get("chat-config").await.ok()?.data? == original).then_some(()) }
    })
    .await;

    // A spec change reaches the pods' configuration and the status.
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"logLevel": "debug"}})),
    )
    .await
    .unwrap();
    wait_for("the new log level", Duration::from_secs(30), || {
        let configmaps = configmaps.clone();
        let api = api.clone();
        async move {
            let data = configmaps.get("chat-config").await.ok()?.data?;
            let observed = api.get("chat").await.ok()?.data["status"]["observedGeneration"].clone();
            (data.get("RUST_LOG").is_some_and(|v| v.contains("debug")) && observed == 2)
                .then_some(())
        }
    })
    .await;

    grow_volumes(&admin, &api, namespace).await;
    an_older_operators_redis_is_re_created(&admin, &api, namespace).await;
    enabling_autoscaling_keeps_the_replicas(&admin, &api, namespace).await;
    shrink_the_replica_set(&admin, &api, namespace).await;

    assert!(
        operator.running(),
        "the operator exited:\n{}",
        operator.log()
    );
    let (_, metrics) = operator.get("/metrics").await.unwrap();
    assert!(
        !metrics.contains("chat_operator_reconcile_errors_total{"),
        "reconcile errors:\n{metrics}\n{}",
        operator.log()
    );
    let log = operator.log();
    assert!(!log.contains(&token), "the operator logged its token");
    assert!(!log.contains("panicked"), "{log}");
}

/// An API server without the ChatCluster CRD: the operator says so, is not
/// ready, keeps retrying without exiting or spinning, and starts working once
/// the CRD is installed.
/// A leader whose renewals are refused (its Role loses `patch` on Leases,
/// as an API server it cannot reach would refuse them) stops reconciling
/// and exits before its Lease may pass to another replica, 20 s after its
/// last renewal: the lease manager alone only logged the failed renewals.
#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::rbac::v1::Role;
    let server = start_with_crd();
    let admin = server.admin().await;
    install_operator_rbac(&admin).await;
    let token = operator_token(&admin).await;
    let kubeconfig = server.write_kubeconfig("chat-operator", &token);
    let mut operator = Operator::start(
        &kubeconfig,
        server.dir.join("stuck-leader.log"),
        &[
            "--lease-namespace",
            "chat-operator",
            "--identity",
            "stuck-leader",
        ],
    );
    wait_for("the operator to lead", Duration::from_secs(60), || {
        let operator = &operator;
        async move {
            let ready = operator.get("/readyz").await?.0 == 200;
            (ready && operator.metric("chat_operator_leader").await == 1.0).then_some(())
        }
    })
    .await;

    let roles: Api<Role> = Api::namespaced(admin.clone(), "chat-operator");
    let refused = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "chat-operator-leader-election", "namespace": "chat-operator"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create"]}],
    });
    roles
        .patch(
            "chat-operator-leader-election",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&refused),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while operator.running() {
        assert!(
            Instant::now() < deadline,
            "the leader kept running a minute after its renewals were refused:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exited_at = k8s_openapi::jiff::Timestamp::now();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "chat-operator");
    let lease = leases.get("chat-operator").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("stuck-leader"));
    let renewed = spec.renew_time.unwrap().0;
    let after = exited_at.duration_since(renewed);
    assert!(
        after
            < k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap()
            )),
        "exited {after:?} after its last renewal, past the Lease's {:?} s",
        spec.lease_duration_seconds
    );
    let log = operator.log();
    assert!(log.contains("stepping down"), "{log}");
    println!("the leader exited {after:?} after its last renewal");
}

#[tokio::test]
async fn the_operator_waits_for_the_crd_and_says_so() {
    // Its own thread, as for the shared one: it waits with a runtime of its own.
    let bare = std::thread::spawn(ApiServer::start).join().unwrap();
    let admin = bare.admin().await;
    let mut operator = Operator::start(
        &bare.admin_kubeconfig(),
        bare.dir.join("operator.log"),
        &["--leader-election", "false"],
    );
    wait_for(
        "the operator to say why it waits",
        Duration::from_secs(30),
        || {
            let log = operator.log();
            async move { log.contains("is the CRD installed?").then_some(()) }
        },
    )
    .await;
    assert_eq!(operator.get("/healthz").await.map(|r| r.0), Some(200));
    let (code, body) = operator.get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        operator.running(),
        "the operator exited:\n{}",
        operator.log()
    );
    let attempts = operator.log().matches("is the CRD installed?").count();
    assert!(
        (1..=3).contains(&attempts),
        "one attempt every 5 s, not a spin: {attempts} in ~7 s"
    );

    install_crd(&admin).await;
    wait_for(
        "the operator to become ready",
        Duration::from_secs(30),
        || {
            let operator = &operator;
            async move { (operator.get("/readyz").await?.0 == 200).then_some(()) }
        },
    )
    .await;
    create_namespace(&admin, "late").await;
    let api = raw_chatclusters(&admin, "late");
    api.create(&PostParams::default(), &chatcluster("late", json!({})))
        .await
        .unwrap();
    wait_for("the first reconcile", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let status = api.get("late").await.ok()?.data["status"].clone();
            (status["observedGeneration"] == 1).then_some(())
        }
    })
    .await;
    assert!(operator.running());
}

/// The garbage collector's part (no controller-manager runs here): a
/// StatefulSet deleted with orphan propagation goes once its `orphan`
/// finalizer is removed. Abort the task when done.
fn collect_orphaned<K>(statefulsets: Api<K>) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        loop {
            if let Ok(list) = statefulsets.list(&Default::default()).await {
                for set in list.items {
                    if set.meta().deletion_timestamp.is_some() {
                        let _ = statefulsets
                            .patch(
                                &set.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                            )
                            .await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The Redis StatefulSet as an operator before stable names made it (its
/// ClusterIP Service as governing Service, pods one at a time), put in
/// place while the ChatCluster is paused: once resumed, the operator
/// re-creates it with its headless Service and parallel pods (both fields
/// the API server refuses to change), and says so in an event.
async fn an_older_operators_redis_is_re_created(
    admin: &Client,
    chatclusters: &Api<DynamicObject>,
    namespace: &str,
) {
    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(admin.clone(), namespace);
    let collector = collect_orphaned(statefulsets.clone());
    let pause = |paused: bool| {
        let chatclusters = chatclusters.clone();
        async move {
            chatclusters
                .patch(
                    "chat",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"paused": paused}})),
                )
                .await
                .unwrap();
        }
    };
    pause(true).await;
    let current = statefulsets.get("chat-redis").await.unwrap();
    let mut older = serde_json::to_value(&current).unwrap();
    older["spec"]["serviceName"] = json!("chat-redis");
    older["spec"]["podManagementPolicy"] = json!("OrderedReady");
    for field in [
        "uid",
        "resourceVersion",
        "managedFields",
        "creationTimestamp",
        "generation",
    ] {
        older["metadata"].as_object_mut().unwrap().remove(field);
    }
    older.as_object_mut().unwrap().remove("status");
    statefulsets
        .delete("chat-redis", &DeleteParams::orphan())
        .await
        .unwrap();
    wait_for(
        "the current StatefulSet gone",
        Duration::from_secs(30),
        || {
            let statefulsets = statefulsets.clone();
            async move {
                statefulsets
                    .get_opt("chat-redis")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    let older = statefulsets
        .create(
            &PostParams::default(),
            &serde_json::from_value(older).unwrap(),
        )
        .await
        .unwrap();

    pause(false).await;
    let recreated = wait_for(
        "the older StatefulSet re-created",
        Duration::from_secs(60),
        || {
            let statefulsets = statefulsets.clone();
            async move {
                let set = statefulsets.get("chat-redis").await.ok()?;
                let spec = set.spec.clone()?;
                (spec.service_name.as_deref() == Some("chat-redis-headless")
                    && spec.pod_management_policy.as_deref() == Some("Parallel"))
                .then_some(set)
            }
        },
    )
    .await;
    assert_ne!(recreated.uid(), older.uid());
    let reasons = event_reasons(admin, namespace, "chat").await;
    assert!(
        reasons.contains(&"Recreated".to_owned()),
        "Recreated not in {reasons:?}"
    );
    collector.abort();
}

/// Five chat pods, then one edit that enables autoscaling and changes the
/// image: the Deployment never drops below five while the operator applies
/// it without the count it leaves to the HPA (no HPA controller runs here,
/// so the operator remains the field's only owner throughout).
async fn enabling_autoscaling_keeps_the_replicas(
    admin: &Client,
    chatclusters: &Api<DynamicObject>,
    namespace: &str,
) {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), namespace);
    let replicas = |deployment: &k8s_openapi::api::apps::v1::Deployment| {
        deployment.spec.as_ref().and_then(|s| s.replicas)
    };
    chatclusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": null, "replicas": 5}})),
        )
        .await
        .unwrap();
    wait_for("five chat pods", Duration::from_secs(30), || {
        let deployments = deployments.clone();
        async move { (replicas(&deployments.get("chat").await.ok()?) == Some(5)).then_some(()) }
    })
    .await;
    chatclusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "autoscaling": {"minReplicas": 2, "maxReplicas": 10},
                "image": {"tag": "0.2.0"},
            }})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut applied_since = None;
    loop {
        let deployment = deployments.get("chat").await.unwrap();
        assert_eq!(
            replicas(&deployment),
            Some(5),
            "the Deployment fell below 5"
        );
        let image =
            serde_json::to_value(&deployment).unwrap()["spec"]["template"]["spec"]["containers"][0]
                ["image"]
                .clone();
        if image.as_str().is_some_and(|i| i.ends_with(":0.2.0")) {
            // Applied; and it stays so over a few more reconciles' time.
            let since = *applied_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the new image was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The full example's claims as its StatefulSets would have made them, bound
/// (no controller-manager runs here): MongoDB's on a class that can expand,
/// Redis's on one that cannot. Then bigger sizes in the spec: MongoDB's
/// claims grow and its StatefulSet is re-created with the new template
/// (this test removes the `orphan` finalizer, as the garbage collector
/// would); Redis keeps its size, with a condition and an event saying why.
async fn grow_volumes(admin: &Client, chatclusters: &Api<DynamicObject>, namespace: &str) {
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(admin.clone());
    for (name, expandable) in [("expandable", true), ("fixed", false)] {
        let class = serde_json::from_value(json!({
            "metadata": {"name": name},
            "provisioner": "example.com/none",
            "allowVolumeExpansion": expandable,
        }))
        .unwrap();
        classes
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(admin.clone(), namespace);
    let made = [
        ("chat-mongodb", 3, "20Gi", "expandable"),
        ("chat-redis", 3, "2Gi", "fixed"),
    ];
    for (statefulset, replicas, size, class) in made {
        for ordinal in 0..replicas {
            let name = format!("data-{statefulset}-{ordinal}");
            let claim = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": class,
                    "volumeName": format!("pv-{name}"),
                    "resources": {"requests": {"storage": size}},
                },
            }))
            .unwrap();
            claims.create(&PostParams::default(), &claim).await.unwrap();
            claims
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"status": {"phase": "Bound", "capacity": {"storage": size}}}),
                    ),
                )
                .await
                .unwrap();
        }
    }

    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(admin.clone(), namespace);
    let collector = collect_orphaned(statefulsets.clone());
    let before = statefulsets.get("chat-mongodb").await.unwrap().uid();

    chatclusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "mongodb": {"managed": {"storageSize": "30Gi"}},
                "redis": {"managed": {"persistence": {"size": "3Gi"}}},
            }})),
        )
        .await
        .unwrap();
    let template_size = |set: &k8s_openapi::api::apps::v1::StatefulSet| {
        serde_json::to_value(set).unwrap()["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]
            ["requests"]["storage"]
            .clone()
    };
    wait_for("MongoDB's volumes to grow", Duration::from_secs(60), || {
        let (claims, statefulsets) = (claims.clone(), statefulsets.clone());
        async move {
            for ordinal in 0..3 {
                let claim = claims
                    .get(&format!("data-chat-mongodb-{ordinal}"))
                    .await
                    .ok()?;
                let requested = serde_json::to_value(&claim).ok()?["spec"]["resources"]["requests"]
                    ["storage"]
                    .clone();
                (requested == "30Gi").then_some(())?;
            }
            let set = statefulsets.get("chat-mongodb").await.ok()?;
            (template_size(&set) == "30Gi").then_some(())
        }
    })
    .await;
    assert_ne!(
        statefulsets.get("chat-mongodb").await.unwrap().uid(),
        before,
        "the StatefulSet was not re-created with the new template"
    );

    let condition = wait_for(
        "the refused resize reported",
        Duration::from_secs(60),
        || {
            let chatclusters = chatclusters.clone();
            async move {
                let status = chatclusters.get("chat").await.ok()?.data["status"].clone();
                status["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "VolumesResizable")
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(condition["status"], "False", "{condition}");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("chat-redis") && message.contains("storage class fixed"),
        "{message}"
    );
    let redis = statefulsets.get("chat-redis").await.unwrap();
    assert_eq!(
        template_size(&redis),
        "2Gi",
        "a refused resize changed the template"
    );
    for ordinal in 0..3 {
        let claim = claims
            .get(&format!("data-chat-redis-{ordinal}"))
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&claim).unwrap()["spec"]["resources"]["requests"]["storage"],
            "2Gi"
        );
    }
    let reasons = event_reasons(admin, namespace, "chat").await;
    for reason in ["VolumesGrown", "VolumeResizeRefused"] {
        assert!(
            reasons.contains(&reason.to_owned()),
            "{reason} not in {reasons:?}"
        );
    }
    collector.abort();
}

/// Fewer MongoDB members: a new init Job (which removes them from the
/// replica set) is made once the previous one is gone, and the StatefulSet keeps its three pods until that
/// Job has succeeded (no controller-manager runs here: this test marks it
/// so, as the Job controller would); then it scales down.
async fn shrink_the_replica_set(
    admin: &Client,
    chatclusters: &Api<DynamicObject>,
    namespace: &str,
) {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(admin.clone(), namespace);
    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(admin.clone(), namespace);
    let job_names = || async {
        let mut names: Vec<String> = jobs
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        names.sort();
        names
    };
    let before = job_names().await;
    // The previous Job is deleted in the foreground (with its pod) and the
    // new one made only once it is gone; the garbage collector that would
    // finish that deletion does not run here: this does its part.
    let collector = collect_orphaned(jobs.clone());
    chatclusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mongodb": {"managed": {"members": 1}}}})),
        )
        .await
        .unwrap();
    let (job, all) = wait_for("the new init Job", Duration::from_secs(30), || async {
        let all = job_names().await;
        let new = all
            .iter()
            .find(|name| name.starts_with("chat-mongodb-init-") && !before.contains(name))?
            .clone();
        Some((new, all))
    })
    .await;
    collector.abort();
    assert_eq!(
        all,
        std::slice::from_ref(&job),
        "the new Job made while the old one was there"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replicas = |set: k8s_openapi::api::apps::v1::StatefulSet| set.spec.and_then(|s| s.replicas);
    assert_eq!(
        replicas(statefulsets.get("chat-mongodb").await.unwrap()),
        Some(3),
        "the StatefulSet shrank before the replica set did"
    );

    let now = "2026-11-30T00:00:00Z";
    let done = json!({"status": {
        "startTime": now,
        "completionTime": now,
        "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "lastTransitionTime": now},
        ],
    }});
    jobs.patch_status(&job, &PatchParams::default(), &Patch::Merge(done))
        .await
        .unwrap_or_else(|e| panic!("marking Job/{job} done: {e}"));
    wait_for("the StatefulSet to shrink", Duration::from_secs(30), || {
        let statefulsets = statefulsets.clone();
        async move {
            (replicas(statefulsets.get("chat-mongodb").await.ok()?) == Some(1)).then_some(())
        }
    })
    .await;
}

/// The CRD's `corsOrigins` rule and the chat server's own (`chat-server
/// check` with `CHAT_CORS_ORIGINS`) answer alike for every origin below:
/// what the API server admits, the chat pods start with (an origin the
/// server refused made every pod crash-loop), and the other way round.
#[tokio::test]
async fn the_crd_and_the_chat_server_agree_on_every_cors_origin() {
    let chat_server = repository().join("target/debug/chat-server");
    assert!(
        chat_server.exists(),
        "{} missing: cargo build --workspace first (scripts/test.sh does)",
        chat_server.display()
    );
    let server = shared();
    let client = server.admin().await;
    let namespace = "origins";
    create_namespace(&client, namespace).await;
    let api = raw_chatclusters(&client, namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let origins = [
        "https://chat.example.com",
        "http://localhost:5173",
        "https://10.0.0.1:8443",
        "https://[::1]:8080",
        "https://a-b.c-d.example",
        "https://h?x",
        "https://u@h",
        "https://u:p@h",
        "https://a,b",
        "https://h#f",
        "https://h/",
        "https://h/app",
        "https://Chat.example.com",
        "HTTPS://h",
        "ftp://h",
        "https://",
        "https://h:",
        "https://h:123456",
        "https://-h",
        "https://h-",
        "https://h..x",
        "https://[zz]",
        "https://h*",
        "*",
    ];
    for origin in origins {
        let admitted = api
            .create(
                &dry_run,
                &chatcluster("origins", json!({"corsOrigins": [origin]})),
            )
            .await
            .is_ok();
        let checked = std::process::Command::new(&chat_server)
            .arg("check")
            .env_clear()
            .env("CHAT_CORS_ORIGINS", origin)
            .output()
            .expect("running chat-server check");
        assert_eq!(
            admitted,
            checked.status.success(),
            "{origin:?}: the API server {} it, the chat server {}: {}",
            if admitted { "admits" } else { "refuses" },
            if checked.status.success() {
                "starts"
            } else {
                "refuses"
            },
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}
