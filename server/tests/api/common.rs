//! The harness: a real chat-server on a free port, over real HTTP, on the
//! embedded store or on MongoDB.
//!
//! MongoDB is SecantusDB (MongoDB wire protocol, started here from the project's
//! .venv, one per test binary, each test in its own database) or, when
//! CHAT_TEST_MONGODB_URI is set, that server instead.

// Shared by the `api` and `cluster` test targets; each uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chat_server::config::Config;
use chat_server::server;
use chat_server::state::AppState;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Mongo,
}

/// Runs one async test body against both stores, as two tests.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::common::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mongodb() {
                super::$name($crate::common::Backend::Mongo).await
            }
        }
    )*};
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A child process that is killed when this handle drops.
pub struct Process {
    child: Child,
    pub port: u16,
    /// A working directory of its own, removed with it: a Redis without one
    /// wrote `dump.rdb` (a replica's full sync) where the tests ran, and the
    /// next Redis started there loaded it.
    _dir: Option<tempfile::TempDir>,
}

impl Process {
    /// Sends `signal` (`STOP`, `CONT`...) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Stops the process. A wrapped server (see [`start_secantus`]) is stopped by
    /// closing its stdin, so the wrapper stops the real server before it exits.
    pub fn kill(&mut self) {
        if let Some(stdin) = self.child.stdin.take() {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A SecantusDB server for `storage` (":memory:" or a directory).
///
/// It is started under a shell that waits on its stdin, a pipe from this test
/// process: when the test process exits, however it exits, the pipe closes and
/// the shell stops the server. A static handle is never dropped, so this is
/// what keeps a shared server from outliving its tests.
pub fn start_secantus(storage: &str) -> Process {
    start_secantus_on(free_port(), storage)
}

/// [`start_secantus`] on a given port, to restart a server where it was.
pub fn start_secantus_on(port: u16, storage: &str) -> Process {
    let python = std::env::var("CHAT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run scripts/test.sh, which installs SecantusDB into .venv",
        python.display()
    );
    let script = r#""$0" -m secantus --port "$1" --storage-path "$2" --log-level WARNING >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid; wait $pid"#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&python)
        .arg(port.to_string())
        .arg(storage)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start SecantusDB");
    let process = Process {
        child,
        port,
        _dir: None,
    };
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "SecantusDB did not listen on {port}"
    );
    process
}

/// The MongoDB URI for this test binary: CHAT_TEST_MONGODB_URI or a shared SecantusDB.
pub fn mongodb_uri() -> String {
    static SHARED: OnceLock<(String, Process)> = OnceLock::new();
    if let Ok(uri) = std::env::var("CHAT_TEST_MONGODB_URI") {
        return uri;
    }
    SHARED
        .get_or_init(|| {
            let process = start_secantus(":memory:");
            (
                format!(
                    "mongodb://127.0.0.1:{}/?directConnection=true",
                    process.port
                ),
                process,
            )
        })
        .0
        .clone()
}

/// A `redis-server` on a free port, with nothing kept on disk.
pub fn start_redis() -> Process {
    start_redis_on(free_port(), None)
}

/// A `redis-server` on `port`; with `dir`, durable (AOF fsynced every write) so a
/// restart on the same port and directory keeps its data, like a production Redis,
/// and logging to `redis-<port>.log` there, which a failing test can print.
pub fn start_redis_on(port: u16, dir: Option<&std::path::Path>) -> Process {
    start_redis_with(port, dir, &[])
}

/// [`start_redis_on`] with more `redis-server` arguments.
pub fn start_redis_with(port: u16, dir: Option<&std::path::Path>, extra: &[&str]) -> Process {
    let own_dir = dir
        .is_none()
        .then(|| tempfile::tempdir().expect("a directory for redis-server"));
    let mut command = Command::new("redis-server");
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ]);
    match dir {
        Some(dir) => command
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join(format!("redis-{port}.log"))),
        None => command
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(own_dir.as_ref().map_or(Path::new("."), |d| d.path())),
    };
    let child = command
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (installed by scripts/test.sh)");
    let process = Process {
        child,
        port,
        _dir: own_dir,
    };
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "redis-server did not listen on {port}"
    );
    process
}

/// A Redis Sentinel on a free port watching the primary at `primary_port`
/// as master `chat` (quorum 2), quick to act: the primary is down after one
/// second without an answer. Its config file lives in `dir`, which Sentinel
/// rewrites as it learns the topology, and so does its log, `sentinel-<port>.log`.
pub fn start_sentinel(primary_port: u16, dir: &std::path::Path) -> Process {
    let port = free_port();
    let config = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &config,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor chat 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds chat 1000\n\
             sentinel failover-timeout chat 5000\n\
             sentinel parallel-syncs chat 1\n\
             logfile {dir}/sentinel-{port}.log\n",
            dir = dir.display()
        ),
    )
    .expect("write sentinel.conf");
    let child = Command::new("redis-server")
        .arg(&config)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server --sentinel (installed by scripts/test.sh)");
    let process = Process {
        child,
        port,
        _dir: None,
    };
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "sentinel did not listen on {port}"
    );
    process
}

/// A Redis Cluster of three masters on free loopback ports, each durable like
/// [`start_redis_on`] with a directory, so a master restarted on its port and
/// directory comes back with its data and its slots.
pub struct RedisCluster {
    pub nodes: Vec<Process>,
    buses: Vec<u16>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let buses: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes: Vec<Process> = buses
            .iter()
            .map(|bus| Self::node(&dir, free_port(), *bus))
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let created = create
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes, buses, dir };
        cluster.wait_until_ok();
        cluster
    }

    /// A node on `port`, with its cluster bus on `bus` (by default it would
    /// be the port + 10000, which may be taken or past 65535).
    fn node(dir: &tempfile::TempDir, port: u16, bus: u16) -> Process {
        let node_dir = dir.path().join(port.to_string());
        std::fs::create_dir_all(&node_dir).unwrap();
        start_redis_with(
            port,
            Some(&node_dir),
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus.to_string(),
            ],
        )
    }

    /// Every node reports `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("run redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the redis cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `CHAT_REDIS_URL` for the cluster: every node as a seed.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that serves `key`'s slot: the one that answers rather than
    /// redirecting.
    pub fn node_of(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| {
                let asked = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "exists", key])
                    .output()
                    .expect("run redis-cli");
                !String::from_utf8_lossy(&asked.stdout).contains("MOVED")
            })
            .unwrap_or_else(|| panic!("no node serves {key}"))
    }

    /// Kills a master with SIGKILL and starts it again where it was.
    pub fn restart(&mut self, index: usize) {
        let port = self.nodes[index].port;
        self.nodes[index].kill();
        self.nodes[index] = Self::node(&self.dir, port, self.buses[index]);
        self.wait_until_ok();
    }

    /// A plain connection to one node, for what a test checks there.
    pub async fn node_connection(&self, index: usize) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.nodes[index].port))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// Polls the history API until it holds `count` messages (persistence is
/// asynchronous with Redis), returning their contents.
pub async fn history_when_complete(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    count: u64,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = server
            .get(
                &format!("/api/rooms/{room}/messages?limit=100"),
                &user.token,
            )
            .await;
        if page["total"].as_u64() == Some(count) || Instant::now() > deadline {
            return page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_owned())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn unique_db_name() -> String {
    format!("chat_test_{}", chat_server::model::Id::new())
}

pub struct TestServer {
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _temp: Option<tempfile::TempDir>,
}

/// Environment for a server on `backend`: a fresh data directory or database.
pub fn env_for(backend: Backend) -> (HashMap<&'static str, String>, tempfile::TempDir) {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut env = HashMap::from([
        ("CHAT_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("CHAT_DATA_DIR", temp.path().display().to_string()),
        ("CHAT_SHUTDOWN_GRACE_SECS", "2".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
        // Every test client comes from 127.0.0.1: per-address limits are
        // tested on their own, with their defaults.
        ("CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR", "1000000".to_owned()),
        ("CHAT_MAX_CONNECTIONS_PER_ADDRESS", "1000000".to_owned()),
    ]);
    if backend == Backend::Mongo {
        env.insert("CHAT_MONGODB_URI", mongodb_uri());
        env.insert("CHAT_MONGODB_DB", unique_db_name());
        env.insert("CHAT_JWT_SECRET", JWT_SECRET.to_owned());
    }
    (env, temp)
}

/// Environment for one pod of a cluster: MongoDB database `db` shared with
/// the other pods, Redis at `redis_url`, and no message rate limit (the tests
/// that use it send bursts on purpose).
pub fn pod_env(
    name: &str,
    redis_url: String,
    db: &str,
) -> (HashMap<&'static str, String>, tempfile::TempDir) {
    let (mut env, temp) = env_for(Backend::Mongo);
    env.insert("CHAT_REDIS_URL", redis_url);
    env.insert("CHAT_MONGODB_DB", db.to_owned());
    env.insert("CHAT_POD_NAME", name.to_owned());
    env.insert("CHAT_RATE_LIMIT_PER_SEC", "100000".into());
    env.insert("CHAT_RATE_LIMIT_BURST", "100000".into());
    (env, temp)
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        let (env, temp) = env_for(backend);
        Self::start_with_env(env, Some(temp)).await
    }

    pub async fn start_with_env(
        env: HashMap<&'static str, String>,
        temp: Option<tempfile::TempDir>,
    ) -> Self {
        let config = Config::from_lookup(|name| env.get(name).cloned()).expect("valid test config");
        let state = server::build_state(&config).await.expect("server state");
        let listener = server::bind(config.listen_addr).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listener,
            server::app(state.clone(), &config),
            state.clone(),
            async move {
                let _ = stop.await;
            },
            config.shutdown_grace,
            config.limits.header_timeout,
        ));
        Self {
            base: format!("http://{addr}"),
            state,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            task: Some(task),
            _temp: temp,
        }
    }

    /// Stops the server as SIGTERM would and waits for it, keeping the data
    /// directory so a new server can reopen it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        self.shutdown_and_wait().await;
        // Connection tasks let go of the state (and so of the embedded database
        // file) just after the server stops; a restart must wait for that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::sync::Arc::strong_count(&self.state.chat) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self._temp.take()
    }

    async fn shutdown_and_wait(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and returns the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Registers `name` (`name@example.com`, password `password-<name>`) and signs in.
    pub async fn user(&self, name: &str) -> TestUser {
        let (status, body) = self
            .post(
                "/api/auth/register",
                None,
                json!({"username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}")}),
            )
            .await;
        assert_eq!(status, 201, "register {name}: {body}");
        let (status, session) = self
            .post(
                "/api/auth/login",
                None,
                json!({"email": format!("{name}@example.com"), "password": format!("password-{name}")}),
            )
            .await;
        assert_eq!(status, 200, "login {name}: {session}");
        TestUser {
            id: session["user"]["id"].as_str().expect("user id").to_owned(),
            token: session["token"].as_str().expect("token").to_owned(),
            refresh_token: session["refresh_token"]
                .as_str()
                .expect("refresh token")
                .to_owned(),
        }
    }

    /// `user` joins the public `room` over REST; returns the status.
    pub async fn join(&self, user: &TestUser, room: &str) -> (u16, Value) {
        self.post(
            &format!("/api/rooms/{room}/join"),
            Some(&user.token),
            json!({}),
        )
        .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Creates a room owned by `owner` and returns its id.
    pub async fn room(&self, owner: &TestUser, name: &str, private: bool) -> String {
        let (status, room) = self
            .post(
                "/api/rooms",
                Some(&owner.token),
                json!({"name": name, "is_private": private}),
            )
            .await;
        assert_eq!(status, 201, "create room: {room}");
        room["id"].as_str().expect("room id").to_owned()
    }

    /// The direct room `from` opens with `to`.
    pub async fn dm(&self, from: &TestUser, to: &TestUser) -> String {
        let (status, room) = self
            .post(&format!("/api/dm/{}", to.id), Some(&from.token), json!({}))
            .await;
        assert!(status == 200 || status == 201, "open a direct room: {room}");
        room["id"].as_str().expect("room id").to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub token: String,
    pub refresh_token: String,
}

/// The JSON error code of a response body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// A WebSocket client over real TCP, as a browser or the seed's client would be.
pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// How long a test waits for a frame it expects.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

impl WsClient {
    /// Connects to `/ws?{query}`; an HTTP refusal comes back as its status and JSON body.
    pub async fn connect(server: &TestServer, query: &str) -> Result<Self, (u16, Value)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/ws?{query}", server.base.replace("http://", "ws://"));
        let request = url.into_client_request().expect("ws request");
        Self::connect_request(request).await
    }

    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Self, (u16, Value)> {
        use tokio_tungstenite::tungstenite::Error;
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Self { stream }),
            Err(Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_raw(tokio_tungstenite::tungstenite::Message::Text(
            frame.to_string().into(),
        ))
        .await;
    }

    /// Sends a frame; false once the server has closed the connection.
    pub async fn try_send(&mut self, frame: Value) -> bool {
        use futures::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                frame.to_string().into(),
            ))
            .await
            .is_ok()
    }

    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures::SinkExt;
        self.stream.send(message).await.expect("websocket send");
    }

    /// Closes with a close frame, as a well-behaved client does.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// The next JSON frame, or what closed the connection as `{"closed": code}`.
    pub async fn next(&mut self) -> Value {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .expect("a frame within the timeout");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("frames are JSON");
                }
                Some(Ok(Message::Close(close))) => {
                    return json!({"closed": close.map(|c| u16::from(c.code)), "reason": "" });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return json!({"closed": null, "error": e.to_string()}),
                None => return json!({"closed": null}),
            }
        }
    }

    /// The next frame of `kind`, skipping others (presence, typing, ...).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind || frame.get("closed").is_some() {
                return frame;
            }
        }
    }

    /// The next chat message (text or system).
    pub async fn next_message(&mut self) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == "text" || frame["type"] == "system" || frame.get("closed").is_some()
            {
                return frame;
            }
        }
    }

    /// Asserts no chat message arrives within `within`.
    pub async fn no_message_within(&mut self, within: Duration) {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("JSON");
                    assert!(
                        frame["type"] != "text" && frame["type"] != "system",
                        "unexpected message {frame}"
                    );
                }
                Ok(_) => {}
            }
        }
    }
}

/// Sends a message with a client_id (its content) until it is acked, as a
/// client does while Redis or a shard is unavailable; returns the ack.
/// Within 60 s: after a second failover to an unsynced old primary, acks
/// wait until the other replica has resynced from it, which took over 30 s
/// once in CI on a loaded two-core machine.
pub async fn send_until_acked(ws: &mut WsClient, room: &str, content: &str) -> Value {
    let frame =
        json!({"type": "message", "room_id": room, "content": content, "client_id": content});
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ws.send(frame.clone()).await;
        loop {
            let answer = ws.next().await;
            match answer["type"].as_str() {
                Some("ack") if answer["client_id"] == content => return answer,
                Some("error") => break,
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "{content} never acked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `frame` and returns its ack (or the error that came instead).
pub async fn acked(ws: &mut WsClient, frame: Value) -> Value {
    ws.send(frame).await;
    loop {
        let answer = ws.next().await;
        if answer["type"] == "ack" || answer["type"] == "error" {
            return answer;
        }
    }
}

/// The query string for `user`, optionally joining `room` at once.
pub fn ws_query(user: &TestUser, room: Option<&str>) -> String {
    match room {
        Some(room) => format!("token={}&room_id={room}", user.token),
        None => format!("token={}", user.token),
    }
}

/// The room's stored history, once it holds `count` messages (the persist
/// worker may be catching up); asserts each content is stored once (at one
/// seq). Pages go back by `before_seq`, as a client scrolls: paging by offset
/// would show a message twice whenever the worker writes a newer one between
/// two pages.
pub async fn stored_once(
    base: &str,
    user: &TestUser,
    room: &str,
    count: usize,
) -> BTreeSet<String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut before = String::new();
        loop {
            let page: Value = client
                .get(format!(
                    "{base}/api/rooms/{room}/messages?limit=100{before}"
                ))
                .bearer_auth(&user.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            for message in messages.iter().filter(|m| m["type"] == "text") {
                let content = message["content"].as_str().unwrap_or_default().to_owned();
                let seq = message["seq"].as_u64().unwrap_or_default();
                seqs.entry(content).or_default().push(seq);
            }
            match messages.iter().filter_map(|m| m["seq"].as_u64()).min() {
                Some(oldest) if messages.len() == 100 => before = format!("&before_seq={oldest}"),
                _ => break,
            }
        }
        let stored: usize = seqs.values().map(Vec::len).sum();
        if stored >= count || Instant::now() > deadline {
            let twice: Vec<_> = seqs.iter().filter(|(_, seqs)| seqs.len() > 1).collect();
            assert!(
                twice.is_empty(),
                "stored more than once (at these seqs): {twice:?}"
            );
            return seqs.into_keys().collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn connect_to(server: &TestServer, user: &TestUser, room: &str) -> WsClient {
    let mut ws = WsClient::connect(server, &ws_query(user, None))
        .await
        .unwrap();
    open(&mut ws, room).await;
    ws
}

pub async fn open(ws: &mut WsClient, room: &str) {
    ws.send(json!({"type": "join", "room_id": room})).await;
    ws.next_of("joined").await;
}

/// Uploads `content` as `filename` into `room` as `user`.
pub async fn upload(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    filename: &str,
    content: Vec<u8>,
) -> (u16, Value) {
    let response = server
        .client
        .post(server.url(&format!("/api/rooms/{room}/attachments")))
        .query(&[("filename", filename)])
        .bearer_auth(&user.token)
        .header("content-type", "application/octet-stream")
        .body(content)
        .send()
        .await
        .expect("upload sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GETs `path` as `user`: status, headers and the raw body.
pub async fn download(
    server: &TestServer,
    user: &TestUser,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let response = server
        .client
        .get(server.url(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("download sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("download body").to_vec();
    (status, headers, body)
}

/// A `width` x `height` PNG of one colour.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(width, height, image::Rgb([30, 120, 220]))
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode a PNG");
    out.into_inner()
}
