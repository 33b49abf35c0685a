//! The product as users run it, on a real node: the one-node cluster of
//! `scripts/cluster.sh` (kubelet, containerd, runc, kube-proxy, CoreDNS) and
//! the images of `scripts/images.sh`, imported into it. Helm and kubectl are
//! the real commands (`.cache/kube/bin`), run as a user types them; the chat
//! is real WebSocket traffic to the pods.
//!
//! Not run by a bare `cargo test` (`test = false` in Cargo.toml): it needs
//! that cluster. `scripts/test.sh` brings it up, runs
//! `cargo test -p chat-operator --test node`, and takes it down.
//! `CHAT_TEST_KUBECONFIG` points at another cluster with the same images.
//!
//! The tests share one cluster and run one after another (each installs
//! into namespaces of its own and removes them).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const OPERATOR_NAMESPACE: &str = "chat-operator";
const IMAGE_TAG: &str = "test";
const REGISTRY: &str = "localhost:5000";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubeconfig() -> PathBuf {
    std::env::var_os("CHAT_TEST_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join(".cache/cluster/kubeconfig"))
}

async fn client() -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig())
        .expect("a kubeconfig: run scripts/cluster.sh up (scripts/test.sh does)");
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a usable kubeconfig");
    Client::try_from(config).expect("a client")
}

/// Runs `helm` or `kubectl` from `.cache/kube/bin` as a user would, with
/// the cluster's kubeconfig; panics with its output if it fails.
fn run(tool: &str, args: &[&str]) -> String {
    let output = try_run(tool, args);
    assert!(
        output.status.success(),
        "{tool} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn try_run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(repository().join(".cache/kube/bin").join(tool))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(repository())
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"))
}

/// Polls `check` until it gives a value, or panics after `limit` with what
/// was awaited and `diagnose`'s account of the cluster.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > limit {
            panic!("{what}: not within {limit:?}\n{}", diagnose());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a user would look at when something does not come up.
fn diagnose() -> String {
    let mut report = String::new();
    for args in [
        &[
            "get",
            "pods,statefulsets,deployments,pvc,chat",
            "-A",
            "-o",
            "wide",
        ][..],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
    ] {
        let output = try_run("kubectl", args);
        report.push_str(&String::from_utf8_lossy(&output.stdout));
        report.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    // The last words of every container that is not ready.
    let pods = try_run("kubectl", &["get", "pods", "-A", "-o", "json"]);
    let pods: Value = serde_json::from_slice(&pods.stdout).unwrap_or(Value::Null);
    for pod in pods["items"].as_array().into_iter().flatten() {
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if status["ready"] == true {
                continue;
            }
            let (namespace, name) = (
                pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                pod["metadata"]["name"].as_str().unwrap_or_default(),
            );
            let container = status["name"].as_str().unwrap_or_default();
            let previous = if status["restartCount"].as_i64().unwrap_or(0) > 0 {
                "--previous=true"
            } else {
                "--previous=false"
            };
            let logs = try_run(
                "kubectl",
                &[
                    "logs", "-n", namespace, name, "-c", container, previous, "--tail", "20",
                ],
            );
            report.push_str(&format!("--- {namespace}/{name} {container}:\n"));
            report.push_str(&String::from_utf8_lossy(&logs.stdout));
        }
    }
    report
}

fn chatcluster_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "chatcluster.dev",
        "v1alpha1",
        "ChatCluster",
    ));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn condition(object: &DynamicObject, kind: &str) -> Option<String> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .map(str::to_owned)
}

/// Removes a namespace and waits until it is gone, so a test can run again
/// at once.
async fn remove_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &Default::default()).await;
    wait_for(
        &format!("namespace {name} removed"),
        Duration::from_secs(120),
        || async {
            namespaces
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// The operator chart, installed (or upgraded) as the README says, with the
/// image built here; waits until its pod holds the leader Lease.
async fn install_operator(client: &Client) -> String {
    let image = format!("{REGISTRY}/chat-operator");
    run(
        "helm",
        &[
            "upgrade",
            "--install",
            "chatcluster-operator",
            "charts/chatcluster-operator",
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            &format!("image.repository={image}"),
            "--set",
            &format!("image.tag={IMAGE_TAG}"),
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    wait_for(
        "the operator pod holding the leader Lease",
        Duration::from_secs(90),
        || async {
            let lease = leases.get_opt("chat-operator").await.ok().flatten()?;
            let holder = lease.spec?.holder_identity?;
            let pod = pods.get_opt(&holder).await.ok().flatten()?;
            let running = pod.status?.phase.as_deref() == Some("Running");
            running.then_some(holder)
        },
    )
    .await
}

/// A MongoDB for the chat pods: the wire-compatible stand-in (no mongod
/// image can be built here; docs/kubernetes.md), as a Deployment with its
/// Service and the Secret a ChatCluster's `mongodb.external` names.
fn mongodb_standin(namespace: &str) {
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: mongodb, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: mongodb}}}}
  template:
    metadata: {{labels: {{app: mongodb}}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 999, fsGroup: 999}}
      containers:
      - name: mongodb
        image: {REGISTRY}/mongodb-standin:{IMAGE_TAG}
        ports: [{{name: mongodb, containerPort: 27017}}]
        readinessProbe: {{tcpSocket: {{port: mongodb}}, periodSeconds: 2}}
        volumeMounts: [{{name: data, mountPath: /data/db}}]
      volumes: [{{name: data, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: mongodb, namespace: {namespace}}}
spec:
  selector: {{app: mongodb}}
  ports: [{{name: mongodb, port: 27017, targetPort: mongodb}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: mongodb, namespace: {namespace}}}
stringData:
  uri: mongodb://mongodb.{namespace}.svc.cluster.local:27017/chat?directConnection=true
"#
    );
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), manifest).expect("writing the manifest");
    run(
        "kubectl",
        &["apply", "-f", file.path().to_str().unwrap_or_default()],
    );
}

/// The chat pods of an instance and their addresses, once `count` are Ready.
async fn ready_server_pods(
    client: &Client,
    namespace: &str,
    instance: &str,
    count: usize,
) -> Vec<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector =
        format!("app.kubernetes.io/instance={instance},app.kubernetes.io/component=server");
    wait_for(
        &format!("{count} Ready chat pods of {instance}"),
        Duration::from_secs(180),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let ready: Vec<(String, String)> = list
                .items
                .iter()
                .filter(|pod| pod.metadata.deletion_timestamp.is_none())
                .filter_map(|pod| {
                    let status = pod.status.as_ref()?;
                    let is_ready = status
                        .conditions
                        .as_ref()?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    if !is_ready {
                        return None;
                    }
                    Some((pod.metadata.name.clone()?, status.pod_ip.clone()?))
                })
                .collect();
            (ready.len() == count && list.items.len() == count).then_some(ready)
        },
    )
    .await
}

/// A person using the chat over HTTP and WebSocket.
struct Person {
    name: String,
    token: String,
    id: String,
}

struct Http {
    client: reqwest::Client,
}

impl Http {
    fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("an HTTP client"),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn register(&self, base: &str, name: &str) -> Person {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("{base}/api/auth/register"),
                None,
                Some(json!({"username": name, "email": format!("{name}@example.com"), "password": "password123"})),
            )
            .await;
        assert_eq!(status, 201, "registering {name}: {body}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("{base}/api/auth/login"),
                None,
                Some(json!({"email": format!("{name}@example.com"), "password": "password123"})),
            )
            .await;
        assert_eq!(status, 200, "logging {name} in: {body}");
        Person {
            name: name.to_owned(),
            token: body["token"].as_str().unwrap_or_default().to_owned(),
            id: body["user"]["id"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(address: &str, person: &Person, room: &str) -> Socket {
    let url = format!("ws://{address}/ws?token={}&room_id={room}", person.token);
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("{} connecting to {address}: {e}", person.name));
    socket
}

/// The next frame of `kind`, skipping others (presence, typing, system).
async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame within 15 s"));
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if value["type"] == kind {
                    return value;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended waiting for {kind}: {other:?}"),
        }
    }
}

async fn say(socket: &mut Socket, room: &str, content: &str) -> Value {
    let client_id = format!("node-{content}");
    socket
        .send(Message::text(
            json!({"type": "message", "room_id": room, "content": content, "client_id": client_id})
                .to_string(),
        ))
        .await
        .expect("sending a message");
    let ack = next_of(socket, "ack").await;
    assert_eq!(ack["client_id"], client_id.as_str());
    ack
}

/// `helm install` of the operator, then of a ChatCluster with two chat pods
/// (the chart as users install it, with the images built here, Redis
/// managed by the operator on a local volume, MongoDB the stand-in): the
/// ChatCluster becomes Available with the columns `kubectl get chat` shows,
/// and two people whose sockets are on different pods chat, with history
/// read through the Service.
#[tokio::test]
async fn helm_installs_the_operator_and_a_chatcluster_whose_pods_chat_across_each_other() {
    let client = client().await;
    let namespace = "chat-e2e-basic";
    remove_namespace(&client, namespace).await;
    let leader = install_operator(&client).await;
    assert!(
        leader.starts_with("chatcluster-operator-"),
        "the leader is the chart's pod: {leader}"
    );

    run("kubectl", &["create", "namespace", namespace]);
    mongodb_standin(namespace);
    let values = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(
        values.path(),
        format!(
            r#"replicas: 2
image: {{repository: {REGISTRY}/chat-server, tag: {IMAGE_TAG}}}
redis:
  managed: {{image: "{REGISTRY}/redis:{IMAGE_TAG}"}}
mongodb:
  external: {{uriSecretRef: {{name: mongodb, key: uri}}}}
shutdownGraceSeconds: 5
"#
        ),
    )
    .expect("writing the values");
    run(
        "helm",
        &[
            "install",
            "chat",
            "charts/chatcluster",
            "--namespace",
            namespace,
            "--values",
            values.path().to_str().unwrap_or_default(),
        ],
    );

    let chatclusters = chatcluster_api(&client, namespace);
    wait_for(
        "the ChatCluster Available",
        Duration::from_secs(240),
        || async {
            let object = chatclusters.get_opt("chat").await.ok().flatten()?;
            (condition(&object, "Available").as_deref() == Some("True")).then_some(())
        },
    )
    .await;
    let columns = run(
        "kubectl",
        &["get", "chat", "chat", "-n", namespace, "--no-headers"],
    );
    let columns: Vec<&str> = columns.split_whitespace().collect();
    assert_eq!(
        &columns[..4],
        &["chat", "True", "2", "Running"],
        "kubectl get chat: NAME READY REPLICAS PHASE"
    );

    let pods = ready_server_pods(&client, namespace, "chat", 2).await;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = services.get("chat").await.expect("the chat Service");
    let cluster_ip = service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("the Service's cluster IP");
    let through_service = format!("http://{cluster_ip}:80");

    let http = Http::new();
    let alice = http.register(&through_service, "alice").await;
    let bob = http.register(&through_service, "bob").await;
    let (status, room) = http
        .call(
            reqwest::Method::POST,
            &format!("{through_service}/api/rooms"),
            Some(&alice.token),
            Some(json!({"name": "General", "description": "on a real node", "is_private": false})),
        )
        .await;
    assert_eq!(status, 201, "{room}");
    let room = room["id"].as_str().expect("a room id").to_owned();
    let (status, body) = http
        .call(
            reqwest::Method::POST,
            &format!("{through_service}/api/rooms/{room}/join"),
            Some(&bob.token),
            None,
        )
        .await;
    assert!(status < 300, "bob joins: {body}");

    // Alice on one pod, Bob on the other.
    let mut alice_socket = connect(&format!("{}:8080", pods[0].1), &alice, &room).await;
    let mut bob_socket = connect(&format!("{}:8080", pods[1].1), &bob, &room).await;
    let (status, sessions) = http
        .call(
            reqwest::Method::GET,
            &format!("{through_service}/api/sessions"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{sessions}");
    assert!(
        sessions.to_string().contains(&pods[1].0),
        "Bob's session is on {}: {sessions}",
        pods[1].0
    );

    let ack = say(&mut alice_socket, &room, "hello-from-pod-0").await;
    let received = next_of(&mut bob_socket, "text").await;
    assert_eq!(received["content"], "hello-from-pod-0");
    assert_eq!(received["user_id"], alice.id.as_str());
    assert_eq!(received["seq"], ack["seq"]);
    say(&mut bob_socket, &room, "hello-from-pod-1").await;
    let received = next_of(&mut alice_socket, "text").await;
    assert_eq!(received["content"], "hello-from-pod-1");
    assert_eq!(received["user_id"], bob.id.as_str());

    // History, through the Service (whichever pod answers), has both in order.
    let history = wait_for(
        "both messages in history",
        Duration::from_secs(30),
        || async {
            let (status, body) = http
                .call(
                    reqwest::Method::GET,
                    &format!("{through_service}/api/rooms/{room}/messages?limit=50"),
                    Some(&alice.token),
                    None,
                )
                .await;
            let contents: Vec<String> = body["messages"]
                .as_array()?
                .iter()
                .filter(|m| m["type"] == "text")
                .filter_map(|m| m["content"].as_str().map(str::to_owned))
                .collect();
            (status == 200 && contents.len() == 2).then_some(contents)
        },
    )
    .await;
    assert_eq!(history, ["hello-from-pod-0", "hello-from-pod-1"]);

    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    remove_namespace(&client, namespace).await;
}
