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
    install_operator_with(client, 1, &[]).await
}

/// `install_operator` with `replicas` operator pods (one leads) and chart
/// `settings` (`key=value`, as `--set` takes them); the chart's other values
/// go back to their defaults.
async fn install_operator_with(client: &Client, replicas: u32, settings: &[&str]) -> String {
    let image = format!("{REGISTRY}/chat-operator");
    let mut args = vec![
        "upgrade".to_owned(),
        "--install".to_owned(),
        "chatcluster-operator".to_owned(),
        "charts/chatcluster-operator".to_owned(),
        "--namespace".to_owned(),
        OPERATOR_NAMESPACE.to_owned(),
        "--create-namespace".to_owned(),
        "--set".to_owned(),
        format!("image.repository={image}"),
        "--set".to_owned(),
        format!("image.tag={IMAGE_TAG}"),
        "--set".to_owned(),
        format!("replicaCount={replicas}"),
        "--wait".to_owned(),
        "--timeout".to_owned(),
        "3m".to_owned(),
    ];
    for setting in settings {
        args.extend(["--set".to_owned(), (*setting).to_owned()]);
    }
    run("helm", &args.iter().map(String::as_str).collect::<Vec<_>>());
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

/// `helm install chat charts/chatcluster` into a new `namespace`, as the
/// README says, with the images built here, a managed Redis (on a local
/// volume) and the MongoDB stand-in; waits until the ChatCluster is
/// Available.
async fn install_chatcluster(client: &Client, namespace: &str, replicas: i32, redis_replicas: i32) {
    install_chatcluster_with(client, namespace, replicas, redis_replicas, "").await;
}

/// `install_chatcluster` with `more` values (YAML lines at the top level).
async fn install_chatcluster_with(
    client: &Client,
    namespace: &str,
    replicas: i32,
    redis_replicas: i32,
    more: &str,
) {
    // It may exist already: an install again over kept volumes.
    let created = try_run("kubectl", &["create", "namespace", namespace]);
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(
        created.status.success() || stderr.contains("AlreadyExists"),
        "{stderr}"
    );
    mongodb_standin(namespace);
    let values = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(
        values.path(),
        format!(
            r#"replicas: {replicas}
image: {{repository: {REGISTRY}/chat-server, tag: {IMAGE_TAG}}}
redis:
  managed: {{image: "{REGISTRY}/redis:{IMAGE_TAG}", replicas: {redis_replicas}}}
mongodb:
  external: {{uriSecretRef: {{name: mongodb, key: uri}}}}
shutdownGraceSeconds: 5
{more}
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
    let chatclusters = chatcluster_api(client, namespace);
    wait_for(
        "the ChatCluster Available",
        Duration::from_secs(240),
        || async {
            let object = chatclusters.get_opt("chat").await.ok().flatten()?;
            (condition(&object, "Available").as_deref() == Some("True")).then_some(())
        },
    )
    .await;
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
        // A connection refused was never a request: tried again, as kube-proxy
        // programs a new Service's address within a second or two.
        let deadline = Instant::now() + Duration::from_secs(20);
        let response = loop {
            let mut request = self.client.request(method.clone(), url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => break response,
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("{url}: {e}"),
            }
        };
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

    /// A public room `owner` creates and `members` join; its id.
    async fn public_room(
        &self,
        base: &str,
        name: &str,
        owner: &Person,
        members: &[&Person],
    ) -> String {
        let (status, room) = self
            .call(
                reqwest::Method::POST,
                &format!("{base}/api/rooms"),
                Some(&owner.token),
                Some(json!({"name": name, "description": "on a real node", "is_private": false})),
            )
            .await;
        assert_eq!(status, 201, "{room}");
        let room = room["id"].as_str().expect("a room id").to_owned();
        for member in members {
            // As clients do: `unavailable` (Redis failing over) is retried.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (status, body) = self
                    .call(
                        reqwest::Method::POST,
                        &format!("{base}/api/rooms/{room}/join"),
                        Some(&member.token),
                        None,
                    )
                    .await;
                if status < 300 {
                    break;
                }
                let retry = body["error"]["code"] == "unavailable" && Instant::now() < deadline;
                assert!(retry, "{} joins: {body}", member.name);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        room
    }
}

/// The address of the chat Service of the instance `chat`: its cluster IP
/// (kube-proxy makes it reachable from the node) and port.
async fn service_address(client: &Client, namespace: &str) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let cluster_ip = services
        .get("chat")
        .await
        .expect("the chat Service")
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("the Service's cluster IP");
    format!("{cluster_ip}:80")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(address: &str, person: &Person, room: &str) -> Socket {
    let url = format!("ws://{address}/ws?token={}&room_id={room}", person.token);
    // Open once the room is: as clients do, again after `unavailable`
    // (Redis failing over), for up to 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("{} connecting to {address}: {e}", person.name));
        let opened = next_of_any(&mut socket, &["joined", "error"]).await;
        if opened["type"] == "joined" {
            return socket;
        }
        assert_eq!(opened["code"], "unavailable", "{}: {opened}", person.name);
        assert!(
            Instant::now() < deadline,
            "{}: unavailable for 60 s",
            person.name
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The next message another person sent (the sender gets its own too).
async fn next_text_from_others(socket: &mut Socket, me: &Person) -> Value {
    loop {
        let text = next_of(socket, "text").await;
        if text["user_id"] != me.id.as_str() {
            return text;
        }
    }
}

/// The next frame of `kind`, skipping others (presence, typing, system).
async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    next_of_any(socket, &[kind]).await
}

/// The next frame of one of these types, within 15 s.
async fn next_of_any(socket: &mut Socket, kinds: &[&str]) -> Value {
    let kind = kinds.join(" or ");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame within 15 s"));
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if kinds.iter().any(|k| value["type"] == *k) {
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
    let frame =
        json!({"type": "message", "room_id": room, "content": content, "client_id": client_id});
    // As clients do: `unavailable` (Redis failing over) is retried, with
    // the same client_id, so it is stored once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("sending a message");
        let answer = loop {
            let answer = next_of_any(socket, &["ack", "error"]).await;
            if answer["type"] == "error" || answer["client_id"] == client_id.as_str() {
                break answer;
            }
        };
        if answer["type"] == "ack" {
            return answer;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "{content}: unavailable for 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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

    install_chatcluster(&client, namespace, 2, 1).await;
    // Available comes with the first ready pod; the columns settle on both.
    let mut columns = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        columns = run(
            "kubectl",
            &["get", "chat", "chat", "-n", namespace, "--no-headers"],
        );
        if columns
            .split_whitespace()
            .take(4)
            .eq(["chat", "True", "2", "Running"])
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let columns: Vec<&str> = columns.split_whitespace().collect();
    assert_eq!(
        &columns[..4],
        &["chat", "True", "2", "Running"],
        "kubectl get chat: NAME READY REPLICAS PHASE"
    );

    let pods = ready_server_pods(&client, namespace, "chat", 2).await;
    two_people_chat_across(&client, namespace, &pods[0], &pods[1]).await;

    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    remove_namespace(&client, namespace).await;
}

/// Alice and Bob register and join a room through the chat Service of the
/// instance `chat`, Alice's socket on the pod `first`, Bob's on `second`
/// (name, address): each gets the other's message with its seq, and history
/// through the Service has both, in order.
async fn two_people_chat_across(
    client: &Client,
    namespace: &str,
    first: &(String, String),
    second: &(String, String),
) {
    let through_service = format!("http://{}", service_address(client, namespace).await);

    let http = Http::new();
    let alice = http.register(&through_service, "alice").await;
    let bob = http.register(&through_service, "bob").await;
    let room = http
        .public_room(&through_service, "General", &alice, &[&bob])
        .await;

    // Alice on one pod, Bob on the other.
    let mut alice_socket = connect(&format!("{}:8080", first.1), &alice, &room).await;
    let mut bob_socket = connect(&format!("{}:8080", second.1), &bob, &room).await;
    // Sessions are registered cluster-wide as sockets open.
    wait_for(
        "Bob's session listed on his pod",
        Duration::from_secs(15),
        || async {
            let (status, sessions) = http
                .call(
                    reqwest::Method::GET,
                    &format!("{through_service}/api/sessions"),
                    Some(&bob.token),
                    None,
                )
                .await;
            (status == 200 && sessions.to_string().contains(&second.0)).then_some(())
        },
    )
    .await;

    let ack = say(&mut alice_socket, &room, "hello-from-pod-0").await;
    let received = next_text_from_others(&mut bob_socket, &bob).await;
    assert_eq!(received["content"], "hello-from-pod-0");
    assert_eq!(received["user_id"], alice.id.as_str());
    assert_eq!(received["seq"], ack["seq"]);
    say(&mut bob_socket, &room, "hello-from-pod-1").await;
    let received = next_text_from_others(&mut alice_socket, &alice).await;
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
}

/// What one person's client saw while chatting through the Service.
#[derive(Default)]
struct Seen {
    /// Each of its messages acked: client id and seq.
    acked: Vec<(String, u64)>,
    /// The seq of every text frame received, in order, over every connection.
    received: Vec<u64>,
    /// Connections the server closed with 1012 (shutting down).
    going_away: usize,
    /// Seqs more than one above the last, each closed by a resume.
    gaps: usize,
    /// Error frames by code.
    errors: std::collections::BTreeMap<String, usize>,
    connections: usize,
}

/// A client as the protocol asks (docs/protocol.md) and the web client
/// behaves: it sends a message every `every`; when its connection ends (a
/// pod drained with 1012, or lost) it reconnects through the Service,
/// resumes the room from the last seq it showed and resends what was not
/// acked, with the same client ids, paced as the web client paces it
/// (`RESEND_BATCH` a second, after a refusal's `retry_after`); when a seq arrives more than one above
/// the last (after a Redis failover every room's seq skips ahead), it
/// resumes too, and shows nothing more until the server says `resumed`.
/// Stops sending when `stop` turns true, and closes once every chatter of
/// the room has its acks (3 s after, for the last deliveries).
async fn chatter(
    address: String,
    person: Person,
    room: String,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    settled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    chatters: usize,
) -> Seen {
    use std::collections::BTreeMap;
    let mut seen = Seen::default();
    let mut unacked: BTreeMap<String, String> = BTreeMap::new();
    let mut sent = 0u32;
    let mut last_seq = 0u64;
    let mut stopped_at: Option<Instant> = None;
    let mut settled_here = false;
    let mut all_settled_at: Option<Instant> = None;
    // The next paced resend of what is not acked (web/src/protocol/client.ts).
    const RESEND_BATCH: usize = 10;
    let mut resend_at: Option<Instant>;
    let frame = |client_id: &str, content: &str| {
        Message::text(
            json!({"type": "message", "room_id": room, "content": content, "client_id": client_id})
                .to_string(),
        )
    };
    'connection: loop {
        let url = format!("ws://{address}/ws?token={}", person.token);
        let mut socket = match tokio_tungstenite::connect_async(&url).await {
            Ok((socket, _)) => socket,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        seen.connections += 1;
        let resume = |last_seq: u64| {
            Message::text(
                json!({"type": "resume", "room_id": room, "last_seq": last_seq}).to_string(),
            )
        };
        if socket.send(resume(last_seq)).await.is_err() {
            continue;
        }
        let mut resuming = true;
        let mut resume_again = false;
        let mut stale_upto: Option<u64> = None;
        let mut replay_upto = 0u64;
        resend_at = Some(Instant::now());
        let mut tick = tokio::time::interval(every);
        loop {
            if *stop.borrow() && stopped_at.is_none() {
                stopped_at = Some(Instant::now());
            }
            if let Some(at) = stopped_at {
                // Everyone keeps listening until every sender has its acks,
                // and 3 s more for the last deliveries.
                if unacked.is_empty() && !settled_here {
                    settled_here = true;
                    settled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let everyone = settled.load(std::sync::atomic::Ordering::SeqCst) == chatters;
                if everyone && all_settled_at.is_none() {
                    all_settled_at = Some(Instant::now());
                }
                let done = all_settled_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3));
                assert!(
                    at.elapsed() < Duration::from_secs(60),
                    "{}: never acked {unacked:?} ({} acked over {} connections, errors {:?})",
                    person.name,
                    seen.acked.len(),
                    seen.connections,
                    seen.errors
                );
                if done {
                    let _ = socket.close(None).await;
                    return seen;
                }
            }
            tokio::select! {
                _ = tick.tick() => {
                    if resume_again {
                        resume_again = false;
                        resuming = true;
                        if socket.send(resume(last_seq)).await.is_err() {
                            continue 'connection;
                        }
                    }
                    if resend_at.is_some_and(|at| at <= Instant::now()) {
                        resend_at = (unacked.len() > RESEND_BATCH)
                            .then(|| Instant::now() + Duration::from_secs(1));
                        for (client_id, content) in unacked.iter().take(RESEND_BATCH) {
                            if socket.send(frame(client_id, content)).await.is_err() {
                                continue 'connection;
                            }
                        }
                    }
                    if stopped_at.is_none() {
                        sent += 1;
                        let client_id = format!("{}-{sent}", person.name);
                        let content = format!("{} says {sent}", person.name);
                        unacked.insert(client_id.clone(), content.clone());
                        if socket.send(frame(&client_id, &content)).await.is_err() {
                            continue 'connection;
                        }
                    }
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        match value["type"].as_str() {
                            Some("ack") => {
                                let client_id = value["client_id"].as_str().unwrap_or_default().to_owned();
                                if unacked.remove(&client_id).is_some() {
                                    seen.acked.push((client_id, value["seq"].as_u64().unwrap_or(0)));
                                }
                            }
                            Some("resumed") => {
                                resuming = false;
                                // A resume sent again after an error that was
                                // another frame's: its replay repeats what
                                // the first one gave, dropped as a client
                                // merging two sources drops by seq.
                                let from = value["from_seq"].as_u64().unwrap_or(0);
                                stale_upto = (from < last_seq).then_some(last_seq);
                                // The replay is what exists up to here: not
                                // contiguous across a failover's skip.
                                replay_upto = value["last_seq"].as_u64().unwrap_or(0);
                            }
                            Some("error") => {
                                let code = value["code"].as_str().unwrap_or_default().to_owned();
                                *seen.errors.entry(code.clone()).or_default() += 1;
                                if matches!(code.as_str(), "rate_limited" | "unavailable") && resend_at.is_none() {
                                    let wait = value["retry_after"].as_f64().unwrap_or(1.0).max(1.0);
                                    resend_at = Some(Instant::now() + Duration::from_secs_f64(wait));
                                }
                                // Answered to the resume, or to a message
                                // sent meanwhile: there is no telling, so the
                                // resume is sent again unless it is answered.
                                // `not_joined`: the room's opening was
                                // refused meanwhile; open it again, as the
                                // web client does.
                                if (resuming && code == "unavailable") || code == "not_joined" {
                                    resume_again = true;
                                }
                            }
                            Some("text") if !resuming => {
                                let seq = value["seq"].as_u64().unwrap_or(0);
                                if stale_upto.is_some_and(|upto| seq <= upto) {
                                    continue;
                                }
                                if last_seq > 0 && seq > last_seq + 1 && seq > replay_upto {
                                    seen.gaps += 1;
                                    resuming = true;
                                    if socket.send(resume(last_seq)).await.is_err() {
                                        continue 'connection;
                                    }
                                } else {
                                    seen.received.push(seq);
                                    last_seq = last_seq.max(seq);
                                }
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
                        if close.is_some_and(|c| u16::from(c.code) == 1012) {
                            seen.going_away += 1;
                        }
                        continue 'connection;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => continue 'connection,
                },
            }
        }
    }
}

/// People chatting in one room through a ChatCluster's Service while
/// something happens to the cluster, and what they saw.
struct Conversation {
    http: Http,
    base: String,
    room: String,
    names: Vec<&'static str>,
    stop: tokio::sync::watch::Sender<bool>,
    chatters: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Conversation {
    /// Registers `names`, puts them in a new public room, and starts a
    /// `chatter` for each, through the Service of the instance `chat`.
    async fn start(client: &Client, namespace: &str, names: &[&'static str]) -> Self {
        let address = service_address(client, namespace).await;
        let base = format!("http://{address}");
        let http = Http::new();
        let mut people = Vec::new();
        for name in names {
            people.push(http.register(&base, name).await);
        }
        let members: Vec<&Person> = people[1..].iter().collect();
        let room = http
            .public_room(&base, "Conversation", &people[0], &members)
            .await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let settled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = people.len();
        let chatters = people
            .into_iter()
            .map(|person| {
                tokio::spawn(chatter(
                    address.clone(),
                    person,
                    room.clone(),
                    Duration::from_millis(300),
                    stopped.clone(),
                    settled.clone(),
                    count,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        Self {
            http,
            base,
            room,
            names: names.to_vec(),
            stop,
            chatters,
        }
    }

    /// The seqs of the room's text messages in its history, oldest first,
    /// paged by `before_seq` as a client scrolls.
    async fn history(&self, reader: &Person) -> Vec<u64> {
        let mut stored: Vec<u64> = Vec::new();
        let mut before = String::new();
        loop {
            let (status, page) = self
                .http
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "{}/api/rooms/{}/messages?limit=100{before}",
                        self.base, self.room
                    ),
                    Some(&reader.token),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{page}");
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            let Some(oldest) = messages.iter().filter_map(|m| m["seq"].as_u64()).min() else {
                break;
            };
            stored.extend(
                messages
                    .iter()
                    .filter(|m| m["type"] == "text")
                    .filter_map(|m| m["seq"].as_u64()),
            );
            before = format!("&before_seq={oldest}");
        }
        stored.sort_unstable();
        stored
    }

    /// Stops the chatters and holds what they saw to the guarantees: no seq
    /// acked twice, every acked message shown to every person exactly once
    /// and in order, and in the history once. Returns the 1012 closes seen.
    async fn finish(mut self) -> usize {
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.stop.send(true).expect("the chatters listen");
        let mut seens = Vec::new();
        for chatter in std::mem::take(&mut self.chatters) {
            seens.push(chatter.await.expect("a chatter"));
        }
        let acked: std::collections::BTreeMap<u64, String> = seens
            .iter()
            .flat_map(|seen| seen.acked.iter().map(|(id, seq)| (*seq, id.clone())))
            .collect();
        let mut by_seq: std::collections::BTreeMap<u64, Vec<&String>> = Default::default();
        for seen in &seens {
            for (id, seq) in &seen.acked {
                by_seq.entry(*seq).or_default().push(id);
            }
        }
        let twice: Vec<_> = by_seq
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .take(10)
            .collect();
        assert!(twice.is_empty(), "seqs acked for two messages: {twice:?}");
        for (name, seen) in self.names.iter().zip(&seens) {
            println!(
                "{name}: {} acked, {} received over {} connections ({} closed with 1012), {} gaps resumed, errors {:?}",
                seen.acked.len(),
                seen.received.len(),
                seen.connections,
                seen.going_away,
                seen.gaps,
                seen.errors
            );
            let mut unique = seen.received.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(
                unique.len(),
                seen.received.len(),
                "{name} was shown a message twice"
            );
            let missing: Vec<&u64> = acked
                .keys()
                .filter(|seq| unique.binary_search(seq).is_err())
                .collect();
            assert!(missing.is_empty(), "{name} never got seqs {missing:?}");
            assert!(
                seen.received.windows(2).all(|pair| pair[0] < pair[1]),
                "{name} saw the room out of order"
            );
        }

        // The history holds every acked message once, under its seq (it may
        // trail live delivery by a persistence batch).
        let reader = self
            .http
            .register(&self.base, &format!("reader-{}", self.names[0]))
            .await;
        let acked_seqs: Vec<u64> = acked.keys().copied().collect();
        let mut stored = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            stored = self.history(&reader).await;
            if stored == acked_seqs {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let missing: Vec<&u64> = acked_seqs.iter().filter(|s| !stored.contains(s)).collect();
        let extra: Vec<&u64> = stored.iter().filter(|s| !acked_seqs.contains(s)).collect();
        assert_eq!(
            stored, acked_seqs,
            "history: every acked message, once (missing {missing:?}, not acked or twice {extra:?})"
        );
        seens.iter().map(|seen| seen.going_away).sum()
    }
}

/// `kubectl scale chat` to 4 and back to 2, then an image upgrade, while
/// four people chat through the Service: the pods that go drain with close
/// 1012, their clients reconnect and resume, and every acked message reaches
/// every person exactly once and is in the history once; the status follows
/// the rollout to the new generation.
#[tokio::test]
async fn scaling_and_an_image_upgrade_under_live_chat_lose_and_repeat_nothing() {
    let client = client().await;
    let namespace = "chat-e2e-rollout";
    remove_namespace(&client, namespace).await;
    install_operator(&client).await;
    install_chatcluster(&client, namespace, 2, 1).await;
    let conversation = Conversation::start(&client, namespace, &["ann", "ben", "cat", "dan"]).await;

    let chatclusters = chatcluster_api(&client, namespace);
    for replicas in [4, 2] {
        run(
            "kubectl",
            &[
                "scale",
                "chat",
                "chat",
                "-n",
                namespace,
                "--replicas",
                &replicas.to_string(),
            ],
        );
        ready_server_pods(&client, namespace, "chat", replicas).await;
        wait_for(
            &format!("status.readyReplicas {replicas}"),
            Duration::from_secs(60),
            || async {
                let object = chatclusters.get_opt("chat").await.ok().flatten()?;
                (object.data["status"]["readyReplicas"] == replicas).then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // An upgrade to a second tag of the image, as `kubectl patch` would.
    run(
        "kubectl",
        &[
            "patch",
            "chat",
            "chat",
            "-n",
            namespace,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"image":{"tag":"test-2"}}}"#,
        ],
    );
    let new_image = format!("{REGISTRY}/chat-server:test-2");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(
        "the rollout to the new image, Available at the new generation",
        Duration::from_secs(180),
        || async {
            let object = chatclusters.get_opt("chat").await.ok().flatten()?;
            let generation = object.metadata.generation?;
            let observed = object.data["status"]["observedGeneration"].as_i64()?;
            let available = condition(&object, "Available").as_deref() == Some("True");
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=server"))
                .await
                .ok()?;
            let all_new = list.items.len() == 2
                && list.items.iter().all(|pod| {
                    pod.spec.as_ref().is_some_and(|spec| {
                        spec.containers[0].image.as_deref() == Some(new_image.as_str())
                    })
                });
            (observed == generation && available && all_new).then_some(())
        },
    )
    .await;
    let going_away = conversation.finish().await;
    assert!(
        going_away >= 2,
        "the drained pods closed their sockets with 1012 ({going_away} seen)"
    );

    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    remove_namespace(&client, namespace).await;
}

/// The Redis primary the Sentinels of a highly available ChatCluster name
/// (a pod's stable name, or an address while the first pod predates its
/// name), asked from this machine through their Service.
async fn sentinel_primary(client: &Client, namespace: &str) -> Option<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let sentinels = services.get("chat-redis-sentinel").await.ok()?;
    let ip = sentinels.spec?.cluster_ip?;
    let password = redis_password(client, namespace).await?;
    let named: Vec<String> = ask_redis(
        &ip,
        26379,
        &password,
        &["get-master-addr-by-name", "chat"],
        "SENTINEL",
    )
    .await?;
    named.into_iter().next()
}

async fn redis_password(client: &Client, namespace: &str) -> Option<String> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), namespace);
    let secret = secrets.get("chat-redis-auth").await.ok()?;
    let password = secret.data?.get("password")?.0.clone();
    String::from_utf8(password).ok()
}

/// `command args` asked of the Redis server or Sentinel at `ip:port`.
async fn ask_redis<T: redis::FromRedisValue>(
    ip: &str,
    port: u16,
    password: &str,
    args: &[&str],
    command: &str,
) -> Option<T> {
    let url = format!("redis://:{password}@{ip}:{port}/");
    let redis = redis::Client::open(url).ok()?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(3),
        redis.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    redis::cmd(command)
        .arg(args)
        .query_async(&mut connection)
        .await
        .ok()
}

/// The Redis pods, once the StatefulSet has `count` Ready on its current
/// revision and the Sentinels name one of them that answers as the
/// primary: a highly available Redis at rest. Returns the primary's pod.
async fn settled_redis(client: &Client, namespace: &str, count: i32, limit: Duration) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("{count} Ready Redis pods and a primary the Sentinels name"),
        limit,
        || async {
            let status = statefulsets.get("chat-redis").await.ok()?.status?;
            let current = status.ready_replicas == Some(count)
                && status.updated_replicas == Some(count)
                && status.current_revision == status.update_revision;
            if !current {
                return None;
            }
            let named = sentinel_primary(client, namespace).await?;
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=redis"))
                .await
                .ok()?;
            let pod = list.items.into_iter().find(|pod| {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
                named.split('.').next() == Some(name) || ip == Some(named.as_str())
            })?;
            let ip = pod.status.as_ref()?.pod_ip.clone()?;
            let password = redis_password(client, namespace).await?;
            let role: Vec<redis::Value> = ask_redis(&ip, 6379, &password, &[], "ROLE").await?;
            let primary =
                matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master");
            primary.then_some(pod)
        },
    )
    .await
}

/// Waits until none of the Redis pods with these uids is left.
async fn redis_pods_replaced(client: &Client, namespace: &str, uids: &[String]) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(
        "the deleted Redis pods gone",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=redis"))
                .await
                .ok()?;
            let left = list.items.iter().any(|pod| {
                pod.metadata
                    .uid
                    .as_ref()
                    .is_some_and(|uid| uids.contains(uid))
            });
            (!left).then_some(())
        },
    )
    .await;
}

/// A highly available Redis (`redis.managed.replicas: 3`): the primary's
/// pod deleted while people chat; the Sentinels promote a replica, the chat
/// pods follow it, the deleted pod comes back as a replica; then every Redis
/// pod deleted at once (new IPs, the Sentinels kept) heals by itself; and
/// nothing acked is lost or shown twice through both.
#[tokio::test]
async fn deleting_the_redis_primary_then_every_redis_pod_under_chat_loses_nothing_acked() {
    let client = client().await;
    let namespace = "chat-e2e-redis-ha";
    remove_namespace(&client, namespace).await;
    install_operator(&client).await;
    install_chatcluster(&client, namespace, 2, 3).await;
    let primary = settled_redis(&client, namespace, 3, Duration::from_secs(180)).await;
    let primary_pod = primary.metadata.name.clone().unwrap_or_default();
    let primary_ip = primary.status.as_ref().and_then(|s| s.pod_ip.clone());
    let conversation = Conversation::start(&client, namespace, &["eve", "fay", "gus"]).await;

    let uid = primary.metadata.uid.clone().unwrap_or_default();
    run(
        "kubectl",
        &[
            "delete",
            "pod",
            &primary_pod,
            "-n",
            namespace,
            "--wait=false",
        ],
    );
    let promoted = wait_for("a new primary", Duration::from_secs(90), || async {
        let named = sentinel_primary(&client, namespace).await?;
        let same = named.split('.').next() == Some(primary_pod.as_str())
            || Some(named.as_str()) == primary_ip.as_deref();
        (!same).then_some(named)
    })
    .await;
    println!("primary {primary_pod} deleted; the Sentinels promoted {promoted}");
    redis_pods_replaced(&client, namespace, &[uid]).await;
    settled_redis(&client, namespace, 3, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Every Redis pod at once, the Sentinels kept: all come back on new IPs
    // and the set heals by itself, while the same people chat on. A message
    // stored whose ack was lost in the outage is retried and acked as the
    // stored one (the chat pods ask the store for what Redis may have lost).
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let uids: Vec<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=redis"))
        .await
        .expect("the Redis pods")
        .items
        .into_iter()
        .filter_map(|pod| pod.metadata.uid)
        .collect();
    run(
        "kubectl",
        &[
            "delete",
            "pod",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/component=redis",
            "--wait=false",
        ],
    );
    redis_pods_replaced(&client, namespace, &uids).await;
    let primary = settled_redis(&client, namespace, 3, Duration::from_secs(300)).await;
    println!(
        "every Redis pod deleted; {} is the primary again",
        primary.metadata.name.unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    conversation.finish().await;

    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    remove_namespace(&client, namespace).await;
}

/// A single Redis grown to a highly available set (`redis.managed.replicas`
/// 1 -> 3 with `helm upgrade`) while people chat: the single server's pod is
/// replaced only once every chat pod finds Redis through the Sentinels (and
/// so waits for a replica before it acks); nothing acked is lost or shown
/// twice, and no seq is given to two messages.
#[tokio::test]
async fn growing_redis_from_one_to_three_under_chat_loses_nothing_acked() {
    let client = client().await;
    let namespace = "chat-e2e-redis-grow";
    remove_namespace(&client, namespace).await;
    install_operator(&client).await;
    install_chatcluster(&client, namespace, 2, 1).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let single = pods
        .get("chat-redis-0")
        .await
        .expect("the single Redis pod");
    let conversation = Conversation::start(&client, namespace, &["hal", "ivy", "jon"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    run(
        "helm",
        &[
            "upgrade",
            "chat",
            "charts/chatcluster",
            "--namespace",
            namespace,
            "--reuse-values",
            "--set",
            "redis.managed.replicas=3",
        ],
    );
    let on_their_own = wait_for(
        "the single Redis pod replaced",
        Duration::from_secs(300),
        || async {
            let now = pods.get_opt("chat-redis-0").await.ok()?;
            if now.is_some_and(|pod| pod.metadata.uid == single.metadata.uid) {
                return None;
            }
            // Replaced: which chat pods still ack on it alone?
            let chat = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=server"))
                .await
                .ok()?;
            let alone: Vec<String> = chat
                .items
                .into_iter()
                .filter(|pod| pod.metadata.deletion_timestamp.is_none())
                .filter(|pod| {
                    let env = pod
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.containers.first())
                        .and_then(|container| container.env.clone())
                        .unwrap_or_default();
                    !env.iter().any(|e| e.name == "CHAT_REDIS_SENTINELS")
                })
                .filter_map(|pod| pod.metadata.name)
                .collect();
            Some(alone)
        },
    )
    .await;
    assert!(
        on_their_own.is_empty(),
        "the single Redis was replaced while chat pods {on_their_own:?} acked on it alone"
    );
    let primary = settled_redis(&client, namespace, 3, Duration::from_secs(300)).await;
    println!(
        "grown to three; {} is the primary",
        primary.metadata.name.unwrap_or_default()
    );
    ready_server_pods(&client, namespace, "chat", 2).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    conversation.finish().await;

    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    remove_namespace(&client, namespace).await;
}

/// Every object of the instance `chat` in `namespace`, as "Kind/name", but
/// the persistent volume claims.
fn instance_objects(namespace: &str) -> Vec<String> {
    let listed = run(
        "kubectl",
        &[
            "get",
            "deployments,statefulsets,replicasets,pods,services,secrets,configmaps,networkpolicies,poddisruptionbudgets,jobs,horizontalpodautoscalers,ingresses",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/instance=chat",
            "-o",
            "name",
        ],
    );
    listed.lines().map(str::to_owned).collect()
}

/// Two operator replicas; the leader's pod is killed right after a change to
/// a ChatCluster: the other takes the Lease and carries the change out,
/// applying with the same field manager (nothing owned twice, no conflict).
/// Then `helm uninstall` of the ChatCluster leaves none of its objects but
/// its volume claim, which keeps its data, and the Redis password that data
/// goes with; `helm install` again finds both. That Secret deleted while the
/// volume exists: no new password over the old data, a condition and a
/// warning event say why; restored, the ChatCluster goes on.
#[tokio::test]
async fn a_killed_leader_is_replaced_and_helm_uninstall_leaves_only_the_data_and_its_credentials() {
    let client = client().await;
    let namespace = "chat-e2e-operator";
    remove_namespace(&client, namespace).await;
    let leader = install_operator_with(&client, 2, &[]).await;
    install_chatcluster(&client, namespace, 2, 1).await;

    run(
        "kubectl",
        &[
            "patch",
            "chat",
            "chat",
            "-n",
            namespace,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    );
    run(
        "kubectl",
        &[
            "delete",
            "pod",
            &leader,
            "-n",
            OPERATOR_NAMESPACE,
            "--grace-period=0",
            "--force",
        ],
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let successor = wait_for(
        "another operator pod leading",
        Duration::from_secs(90),
        || async {
            let holder = leases
                .get_opt("chat-operator")
                .await
                .ok()
                .flatten()?
                .spec?
                .holder_identity?;
            (holder != leader).then_some(holder)
        },
    )
    .await;
    println!("leader {leader} killed; {successor} took over");
    let chatclusters = chatcluster_api(&client, namespace);
    wait_for(
        "the change carried out by the new leader",
        Duration::from_secs(180),
        || async {
            let object = chatclusters.get_opt("chat").await.ok().flatten()?;
            let generation = object.metadata.generation?;
            let observed = object.data["status"]["observedGeneration"].as_i64()?;
            let ready = object.data["status"]["readyReplicas"] == 3;
            (observed == generation && ready).then_some(())
        },
    )
    .await;
    ready_server_pods(&client, namespace, "chat", 3).await;
    let deployment = run(
        "kubectl",
        &[
            "get",
            "deployment",
            "chat",
            "-n",
            namespace,
            "-o",
            "json",
            "--show-managed-fields",
        ],
    );
    let deployment: Value = serde_json::from_str(&deployment).expect("a Deployment");
    let appliers: Vec<&str> = deployment["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["operation"] == "Apply")
        .filter_map(|entry| entry["manager"].as_str())
        .collect();
    assert_eq!(
        appliers,
        ["chat-operator"],
        "one field manager applies the Deployment"
    );
    let log = run(
        "kubectl",
        &["logs", "-n", OPERATOR_NAMESPACE, &successor, "--tail", "-1"],
    );
    assert!(
        !log.contains("Conflict") && !log.contains("conflict"),
        "the new leader's applies met no conflict:\n{log}"
    );

    // helm uninstall: the ChatCluster goes, and with it every child but the
    // Redis volume claim (a StatefulSet's claims outlive it) and the password
    // its data was made with.
    assert!(!instance_objects(namespace).is_empty());
    let redis_auth = || -> Value {
        let secret = run(
            "kubectl",
            &[
                "get",
                "secret",
                "chat-redis-auth",
                "-n",
                namespace,
                "-o",
                "json",
            ],
        );
        serde_json::from_str(&secret).expect("the Secret")
    };
    let password = || redis_auth()["data"]["password"].clone();
    let kept_password = password();
    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    let left = wait_for("the children removed", Duration::from_secs(120), || async {
        let left = instance_objects(namespace);
        (left == ["secret/chat-redis-auth"]).then_some(left)
    })
    .await;
    assert_eq!(left, ["secret/chat-redis-auth"]);
    let claims = run("kubectl", &["get", "pvc", "-n", namespace, "-o", "json"]);
    let claims: Value = serde_json::from_str(&claims).expect("claims");
    let claims: Vec<(String, String)> = claims["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|claim| {
            (
                claim["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                claim["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        claims,
        [("data-chat-redis-0".to_owned(), "Bound".to_owned())],
        "the Redis volume claim is kept, still bound"
    );

    // Installed again over the kept volume: with the kept password (the chat
    // pods become ready only once Redis takes it).
    install_chatcluster(&client, namespace, 2, 1).await;
    assert_eq!(password(), kept_password);

    // The Secret deleted while the volume holds data.
    let mut secret = redis_auth();
    run(
        "kubectl",
        &["delete", "secret", "chat-redis-auth", "-n", namespace],
    );
    let chatclusters = chatcluster_api(&client, namespace);
    let message = wait_for(
        "the condition CredentialsAvailable False",
        Duration::from_secs(60),
        || async {
            let object = chatclusters.get_opt("chat").await.ok().flatten()?;
            let conditions = object.data["status"]["conditions"].as_array()?.clone();
            let lost = conditions
                .iter()
                .find(|c| c["type"] == "CredentialsAvailable" && c["status"] == "False")?;
            lost["message"].as_str().map(str::to_owned)
        },
    )
    .await;
    assert!(
        message.contains("chat-redis-auth") && message.contains("data-chat-redis-0"),
        "{message}"
    );
    let events = run(
        "kubectl",
        &[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "reason=CredentialsMissing,type=Warning",
            "-o",
            "name",
        ],
    );
    assert!(
        !events.trim().is_empty(),
        "a CredentialsMissing warning event"
    );
    let absent = try_run(
        "kubectl",
        &["get", "secret", "chat-redis-auth", "-n", namespace],
    );
    assert!(!absent.status.success(), "no new password was made");
    ready_server_pods(&client, namespace, "chat", 2).await;

    // Restored, as from a backup: the condition goes.
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
    ] {
        secret["metadata"]
            .as_object_mut()
            .map(|metadata| metadata.remove(field));
    }
    let restored = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(restored.path(), secret.to_string()).expect("writing the Secret");
    run(
        "kubectl",
        &["apply", "-f", restored.path().to_str().unwrap_or_default()],
    );
    wait_for(
        "the condition CredentialsAvailable gone",
        Duration::from_secs(60),
        || async {
            let object = chatclusters.get_opt("chat").await.ok().flatten()?;
            (!object.data["status"]
                .to_string()
                .contains("CredentialsAvailable"))
            .then_some(())
        },
    )
    .await;
    assert_eq!(password(), kept_password);

    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    remove_namespace(&client, namespace).await;
    // Back to one operator replica for the other tests.
    install_operator(&client).await;
}

/// The Prometheus Operator's two CRDs the charts use, reduced to what lets the
/// API server store the objects (the Prometheus Operator itself needs images
/// from a registry; what it would make of the objects is `scrape_config`).
const MONITORING_CRDS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

/// What the Prometheus Operator generates for one endpoint of a
/// ServiceMonitor (its `serviceMonitor/NS/NAME/I` jobs, EndpointSlice
/// discovery): keep the Services the selector matches and the named port;
/// label each target with its namespace, service, pod, container, job (the
/// Service's name) and endpoint (the port's name); honour the target's own
/// labels only where the endpoint says so. The interval is shortened to 2 s
/// so the test does not wait for the charts' 30 s.
fn scrape_config(monitor: &Value, index: usize, endpoint: &Value) -> Value {
    let namespace = monitor["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let name = monitor["metadata"]["name"].as_str().unwrap_or_default();
    let port = endpoint["port"].as_str().unwrap_or_default();
    let sanitize = |key: &str| -> String {
        key.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut relabel = Vec::new();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let key = sanitize(key);
        relabel.push(json!({
            "action": "keep",
            "source_labels": [
                format!("__meta_kubernetes_service_label_{key}"),
                format!("__meta_kubernetes_service_labelpresent_{key}"),
            ],
            "regex": format!("({});true", value.as_str().unwrap_or_default()),
        }));
    }
    relabel.extend([
        json!({"action": "keep", "source_labels": ["__meta_kubernetes_endpointslice_port_name"], "regex": port}),
        json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
        json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"}),
        json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}),
        json!({"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"}),
        json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"}),
        json!({"target_label": "endpoint", "replacement": port}),
    ]);
    json!({
        "job_name": format!("serviceMonitor/{namespace}/{name}/{index}"),
        "honor_labels": endpoint["honorLabels"].as_bool().unwrap_or(false),
        "scrape_interval": "2s",
        "metrics_path": endpoint["path"].as_str().unwrap_or("/metrics"),
        "kubernetes_sd_configs": [{
            "role": "endpointslice",
            "kubeconfig_file": kubeconfig(),
            "namespaces": {"names": [namespace]},
        }],
        "relabel_configs": relabel,
    })
}

/// A Prometheus server of `.cache/kube/bin` on the node, stopped (by PID)
/// when dropped.
struct Prometheus {
    process: std::process::Child,
    base: String,
    http: reqwest::Client,
    _files: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus with the scrape jobs of every ServiceMonitor in the cluster
    /// and the rules of every PrometheusRule, evaluated every 2 s.
    fn start() -> Self {
        let files = tempfile::tempdir().expect("a temporary directory");
        let listed = |kind: &str| -> Vec<Value> {
            let list: Value =
                serde_json::from_str(&run("kubectl", &["get", kind, "-A", "-o", "json"]))
                    .expect("a list");
            list["items"].as_array().cloned().unwrap_or_default()
        };
        let mut scrape_configs = Vec::new();
        for monitor in listed("servicemonitors") {
            for (index, endpoint) in monitor["spec"]["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                scrape_configs.push(scrape_config(&monitor, index, endpoint));
            }
        }
        let mut rule_files = Vec::new();
        for (index, rule) in listed("prometheusrules").iter().enumerate() {
            // JSON is YAML: the rule file is the PrometheusRule's spec.
            let file = files.path().join(format!("rules-{index}.yaml"));
            std::fs::write(&file, rule["spec"].to_string()).expect("writing rules");
            rule_files.push(file);
        }
        let config = json!({
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "rule_files": rule_files,
            "scrape_configs": scrape_configs,
        });
        let config_file = files.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).expect("writing the configuration");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let address = listener.local_addr().expect("its address");
        drop(listener);
        let log = std::fs::File::create(files.path().join("prometheus.log")).expect("a log file");
        let process = Command::new(repository().join(".cache/kube/bin/prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                files.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Self {
            process,
            base: format!("http://{address}"),
            http: reqwest::Client::new(),
            _files: files,
        }
    }

    /// `path` of Prometheus' HTTP API with `query` parameters: its `data`,
    /// or None while Prometheus is not answering yet.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// The series an instant query gives, as label sets with their values.
    async fn query(&self, expression: &str) -> Option<Vec<Value>> {
        let data = self.api("query", &[("query", expression)]).await?;
        data["result"].as_array().cloned()
    }

    /// The series of `expression` once there are `count` of them; panics
    /// after `limit` as `wait_for` does.
    async fn series(
        &self,
        what: &str,
        limit: Duration,
        expression: &str,
        count: usize,
    ) -> Vec<Value> {
        wait_for(what, limit, || async {
            let series = self.query(expression).await?;
            (series.len() == count).then_some(series)
        })
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._files.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Prometheus on the node, configured from the ServiceMonitors and the
/// PrometheusRule the charts and the operator create (the operator chart's
/// `monitoring.*`, the ChatCluster's `metrics.serviceMonitor`): it finds
/// the chat pods and the operator through the API server and scrapes them
/// with the labels the alerts group by (`namespace` and `pod` on the chat
/// series; the ChatCluster's own `namespace` and `name` on the operator's);
/// every rule evaluates; and with Redis stopped, ChatRedisUnreachable comes
/// up for each chat pod, by name.
#[tokio::test]
async fn prometheus_scrapes_the_pods_and_operator_as_their_service_monitors_say() {
    let client = client().await;
    let namespace = "chat-e2e-metrics";
    remove_namespace(&client, namespace).await;
    let crds = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(crds.path(), MONITORING_CRDS).expect("writing the CRDs");
    let crds_path = crds.path().to_str().unwrap_or_default();
    run("kubectl", &["apply", "-f", crds_path]);
    run(
        "kubectl",
        &[
            "wait",
            "--for=condition=Established",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
            "--timeout=60s",
        ],
    );
    install_operator_with(
        &client,
        1,
        &[
            "monitoring.serviceMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
        ],
    )
    .await;
    install_chatcluster_with(&client, namespace, 2, 1, "metrics: {serviceMonitor: true}").await;
    let pods = ready_server_pods(&client, namespace, "chat", 2).await;
    let mut pod_names: Vec<String> = pods.iter().map(|(name, _)| name.clone()).collect();
    pod_names.sort();
    wait_for(
        "the operator's ServiceMonitor for the chat pods",
        Duration::from_secs(60),
        || async {
            let output = try_run(
                "kubectl",
                &["get", "servicemonitor", "chat", "-n", namespace],
            );
            output.status.success().then_some(())
        },
    )
    .await;

    let prometheus = Prometheus::start();
    let labels = |series: &Vec<Value>, label: &str| -> Vec<String> {
        let mut values: Vec<String> = series
            .iter()
            .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
            .collect();
        values.sort();
        values
    };
    // Both chat pods, by the labels the alerts group by.
    let chat = prometheus
        .series(
            "both chat pods scraped",
            Duration::from_secs(60),
            &format!("chat_ws_connections{{namespace=\"{namespace}\"}}"),
            2,
        )
        .await;
    assert_eq!(labels(&chat, "pod"), pod_names, "{chat:?}");
    for series in &chat {
        let metric = &series["metric"];
        assert_eq!(metric["job"], "chat", "{metric}");
        assert_eq!(metric["service"], "chat", "{metric}");
        assert_eq!(metric["endpoint"], "http", "{metric}");
        assert_eq!(metric["container"], "chat-server", "{metric}");
    }
    let up = prometheus
        .query(&format!("up{{namespace=\"{namespace}\"}} == 1"))
        .await
        .unwrap_or_default();
    assert_eq!(
        labels(&up, "pod"),
        pod_names,
        "every chat target up: {up:?}"
    );

    // The operator: its own target, and the per-ChatCluster gauges keep the
    // ChatCluster's namespace (honorLabels), as ChatPodsNotReady needs.
    prometheus.series("the operator scraped", Duration::from_secs(60), &format!(
                "up{{job=\"chatcluster-operator-metrics\", namespace=\"{OPERATOR_NAMESPACE}\"}} == 1"
            ), 1).await;
    let replicas = prometheus
        .series(
            "the operator's gauges of the ChatCluster",
            Duration::from_secs(60),
            &format!("chat_operator_cluster_replicas{{namespace=\"{namespace}\", name=\"chat\"}}"),
            1,
        )
        .await;
    assert_eq!(replicas[0]["value"][1], "2", "{replicas:?}");

    // Every rule of the PrometheusRule loaded and evaluated without error.
    let rules = wait_for("every rule evaluated", Duration::from_secs(30), || async {
        let data = prometheus.api("rules", &[]).await?;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty()
            && rules.iter().all(|rule| {
                !rule["lastEvaluation"]
                    .as_str()
                    .unwrap_or("0001")
                    .starts_with("0001")
            });
        evaluated.then_some(rules)
    })
    .await;
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}\n{}", prometheus.log());
    }
    let alerts: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(
        alerts.contains(&"ChatRedisUnreachable") && alerts.contains(&"ChatPodsNotReady"),
        "{alerts:?}"
    );

    // Redis stopped (the operator paused so it stays stopped): each chat pod's
    // readiness reports it, and the alert comes up naming that pod.
    run(
        "kubectl",
        &[
            "patch",
            "chat",
            "chat",
            "-n",
            namespace,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"paused":true}}"#,
        ],
    );
    run(
        "kubectl",
        &[
            "scale",
            "statefulset",
            "chat-redis",
            "-n",
            namespace,
            "--replicas=0",
        ],
    );
    let pending = prometheus
        .series(
            "ChatRedisUnreachable for both chat pods",
            Duration::from_secs(90),
            &format!("ALERTS{{alertname=\"ChatRedisUnreachable\", namespace=\"{namespace}\"}}"),
            2,
        )
        .await;
    assert_eq!(labels(&pending, "pod"), pod_names, "{pending:?}");
    assert_eq!(labels(&pending, "severity"), ["critical", "critical"]);
    let others = prometheus
        .query(&format!(
            "ALERTS{{namespace=\"{namespace}\", alertname!~\"ChatRedisUnreachable|ChatPodsNotReady\"}}"
        ))
        .await
        .unwrap_or_default();
    assert!(others.is_empty(), "no other alert: {others:?}");

    // Redis back: the alert clears.
    run(
        "kubectl",
        &[
            "patch",
            "chat",
            "chat",
            "-n",
            namespace,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"paused":false}}"#,
        ],
    );
    let alert = format!("ALERTS{{alertname=\"ChatRedisUnreachable\", namespace=\"{namespace}\"}}");
    prometheus
        .series(
            "ChatRedisUnreachable cleared",
            Duration::from_secs(120),
            &alert,
            0,
        )
        .await;
    drop(prometheus);

    run(
        "helm",
        &["uninstall", "chat", "--namespace", namespace, "--wait"],
    );
    remove_namespace(&client, namespace).await;
    // The operator without monitoring, then the CRDs gone: as before.
    install_operator(&client).await;
    run("kubectl", &["delete", "-f", crds_path, "--wait=true"]);
}

/// A Redis Cluster of three primaries in pods, as a user would run their
/// own: a StatefulSet behind a headless Service `redis` (so `redis-N.redis`
/// resolves), with a password; the cluster created with `redis-cli
/// --cluster create` once every pod answers.
fn redis_cluster(namespace: &str, password: &str) {
    let manifest = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: redis, namespace: {namespace}}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app: redis-cluster}}
  ports: [{{name: redis, port: 6379}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: redis, namespace: {namespace}}}
spec:
  serviceName: redis
  replicas: 3
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: redis-cluster}}}}
  template:
    metadata: {{labels: {{app: redis-cluster}}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 999, fsGroup: 999}}
      containers:
      - name: redis
        image: {REGISTRY}/redis:{IMAGE_TAG}
        args: [--cluster-enabled, "yes", --cluster-config-file, /data/nodes.conf, --appendonly, "yes",
               --requirepass, "{password}", --masterauth, "{password}"]
        env: [{{name: REDISCLI_AUTH, value: "{password}"}}]
        ports: [{{name: redis, containerPort: 6379}}]
        readinessProbe: {{exec: {{command: [redis-cli, ping]}}, periodSeconds: 2}}
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes: [{{name: data, emptyDir: {{}}}}]
"#
    );
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), manifest).expect("writing the manifest");
    run(
        "kubectl",
        &["apply", "-f", file.path().to_str().unwrap_or_default()],
    );
    run(
        "kubectl",
        &[
            "rollout",
            "status",
            "statefulset/redis",
            "-n",
            namespace,
            "--timeout=120s",
        ],
    );
    let pods: Value = serde_json::from_str(&run(
        "kubectl",
        &[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            "app=redis-cluster",
            "-o",
            "json",
        ],
    ))
    .expect("the Redis pods");
    let nodes: Vec<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pod| pod["status"]["podIP"].as_str())
        .map(|ip| format!("{ip}:6379"))
        .collect();
    assert_eq!(nodes.len(), 3, "{pods}");
    let mut create = vec![
        "exec",
        "-n",
        namespace,
        "redis-0",
        "--",
        "redis-cli",
        "--cluster",
        "create",
    ];
    create.extend(nodes.iter().map(String::as_str));
    create.push("--cluster-yes");
    run("kubectl", &create);
}

/// `manifests/examples/redis-cluster.yaml`, applied as it is written (with
/// the image built here, as nothing can be pulled): its six chat pods on a
/// Redis Cluster in pods, found through the seed nodes of its Secret, and
/// MongoDB external (the stand-in). The ChatCluster reads `True 6 Running`,
/// and two people on different pods chat.
#[tokio::test]
async fn the_redis_cluster_example_runs_six_pods_on_a_redis_cluster() {
    let client = client().await;
    // The example's own namespace.
    let namespace = "chat";
    remove_namespace(&client, namespace).await;
    install_operator(&client).await;
    run("kubectl", &["create", "namespace", namespace]);
    mongodb_standin(namespace);
    let password = "cluster-password";
    redis_cluster(namespace, password);
    let seeds: Vec<String> = (0..3)
        .map(|n| format!("redis://:{password}@redis-{n}.redis:6379"))
        .collect();
    run(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "chat-backends",
            "-n",
            namespace,
            &format!("--from-literal=redis-url={}", seeds.join(",")),
            &format!(
                "--from-literal=mongodb-uri=mongodb://mongodb.{namespace}.svc.cluster.local:27017/chat?directConnection=true"
            ),
        ],
    );

    let example =
        std::fs::read_to_string(repository().join("manifests/examples/redis-cluster.yaml"))
            .expect("the example");
    assert!(example.contains("\nspec:\n"), "{example}");
    let local = example.replacen(
        "\nspec:\n",
        &format!(
            "\nspec:\n  image: {{repository: {REGISTRY}/chat-server, tag: {IMAGE_TAG}}}\n  shutdownGraceSeconds: 5\n"
        ),
        1,
    );
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), local).expect("writing the example");
    let path = file.path().to_str().unwrap_or_default();
    run("kubectl", &["apply", "-f", path]);

    let chatclusters = chatcluster_api(&client, namespace);
    wait_for(
        "the example's six pods ready",
        Duration::from_secs(300),
        || async {
            let columns = run(
                "kubectl",
                &["get", "chat", "chat", "-n", namespace, "--no-headers"],
            );
            let object = chatclusters.get_opt("chat").await.ok().flatten()?;
            let settled = columns
                .split_whitespace()
                .take(4)
                .eq(["chat", "True", "6", "Running"]);
            (settled && object.data["status"]["readyReplicas"] == 6).then_some(())
        },
    )
    .await;
    let pods = ready_server_pods(&client, namespace, "chat", 6).await;
    two_people_chat_across(&client, namespace, &pods[0], &pods[5]).await;

    run("kubectl", &["delete", "-f", path, "--wait=true"]);
    remove_namespace(&client, namespace).await;
}
