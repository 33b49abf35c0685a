//! Faults under load, with real processes and real sockets: a chat pod cut off
//! from Redis by a misbehaving network (latency, a blackhole, resets), and a
//! pod killed with SIGKILL mid-burst while its clients move to another pod.
//! Every test asserts what a user would check: nothing acked is lost, nothing
//! is shown twice, and every reader sees the room in seq order.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{
    JWT_SECRET, TestServer, TestUser, WsClient, connect_to, free_port, mongodb_uri, open, pod_env,
    send_until_acked, start_redis_on, stored_once, unique_db_name, ws_query,
};

/// What the proxy does to the traffic passing through it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Pass,
    /// Each chunk waits this long in each direction.
    Latency(Duration),
    /// Nothing passes (held, as TCP would retransmit it) until the fault ends.
    Blackhole,
    /// Every connection is reset, and new ones are reset at once.
    Reset,
    /// Connections opened before the n-th are held forever, as a server
    /// that vanished without closing them (its node lost) leaves them;
    /// later ones pass, as to the server that took its place.
    Vanish(u64),
}

/// A TCP proxy in front of `upstream` that can be told to misbehave, as a
/// flaky network between a pod and Redis or MongoDB would.
struct FaultProxy {
    port: u16,
    fault: Arc<watch::Sender<Fault>>,
    /// Connections accepted so far.
    opened: Arc<std::sync::atomic::AtomicU64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(watch::Sender::new(Fault::Pass));
        let faults = fault.clone();
        let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = opened.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let faults = faults.clone();
                let id = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if *faults.borrow() == Fault::Reset {
                        reset(client);
                        return;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(id, client_read, server_write, faults.subscribe()),
                        pump(id, server_read, client_write, faults.subscribe()),
                    );
                });
            }
        });
        Self {
            port,
            fault,
            opened,
            accepting,
        }
    }

    fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Every connection open now is held forever; new ones pass.
    fn vanish(&self) {
        let opened = self.opened.load(std::sync::atomic::Ordering::SeqCst);
        self.set(Fault::Vanish(opened));
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Copies one direction of connection `id`, obeying the fault; returning
/// drops both halves (with linger 0: a reset).
async fn pump(
    id: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = fault.wait_for(|f| *f == Fault::Reset) => {
                let _ = changed;
                return;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let now = *fault.borrow_and_update();
            match now {
                Fault::Pass => break,
                Fault::Vanish(before) if id >= before => break,
                Fault::Latency(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Fault::Blackhole | Fault::Vanish(_) => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Reset => return,
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Reads a receiver's frames until it has seen every content of `acked`;
/// asserts it saw each once, in seq order, and nothing else but them.
async fn received_once_in_order(ws: &mut WsClient, who: &str, acked: &BTreeSet<String>) {
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !acked.iter().all(|c| seen.values().any(|s| s == c)) {
        assert!(Instant::now() < deadline, "{who} is still missing messages");
        let frame = ws.next().await;
        assert!(
            frame.get("closed").is_none(),
            "{who}'s connection closed: {frame}"
        );
        if frame["type"] != "text" {
            continue;
        }
        let seq = frame["seq"].as_u64().unwrap();
        let content = frame["content"].as_str().unwrap().to_owned();
        assert!(
            seq > last,
            "{who} got seq {seq} after {last}: out of order or twice"
        );
        assert!(
            !seen.values().any(|s| *s == content),
            "{who} got {content} twice"
        );
        last = seq;
        seen.insert(seq, content);
    }
    let contents: BTreeSet<String> = seen.into_values().collect();
    assert_eq!(&contents, acked, "{who} got messages nobody had acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cut_off_from_redis_and_mongodb_by_latency_a_blackhole_and_resets_loses_nothing() {
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = start_redis_on(free_port(), Some(redis_dir.path()));
    let proxy = FaultProxy::start(redis.port).await;
    // The same faults between the pod and MongoDB (unless the tests were
    // given a MongoDB of their own).
    let mongodb = mongodb_uri();
    let mongodb_port: Option<u16> = mongodb
        .strip_prefix("mongodb://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok());
    let mongodb_proxy = match mongodb_port {
        Some(port) => Some(FaultProxy::start(port).await),
        None => None,
    };
    let db = unique_db_name();
    let mut pods = Vec::new();
    for (i, redis_port) in [proxy.port, redis.port].into_iter().enumerate() {
        let (mut env, temp) = pod_env(
            &format!("pod-{i}"),
            format!("redis://127.0.0.1:{redis_port}"),
            &db,
        );
        if let (0, Some(proxy)) = (i, &mongodb_proxy) {
            env.insert(
                "CHAT_MONGODB_URI",
                format!("mongodb://127.0.0.1:{}/?directConnection=true", proxy.port),
            );
        }
        pods.push(TestServer::start_with_env(env, Some(temp)).await);
    }
    let (cut_off, healthy) = (&pods[0], &pods[1]);
    let alice = cut_off.user("alice").await;
    let bob = cut_off.user("bob").await;
    let room = cut_off.room(&alice, "weather", false).await;
    cut_off.join(&bob, &room).await;
    let mut alice_tx = connect_to(cut_off, &alice, &room).await;
    let mut alice_rx = connect_to(cut_off, &alice, &room).await;
    let mut bob_tx = connect_to(healthy, &bob, &room).await;
    let mut bob_rx = connect_to(healthy, &bob, &room).await;

    let mut acked = BTreeSet::new();
    let phases = [
        ("pass", Fault::Pass),
        ("latency", Fault::Latency(Duration::from_millis(150))),
        ("blackhole", Fault::Blackhole),
        ("reset", Fault::Reset),
    ];
    for (name, fault) in phases {
        let proxies: Vec<&FaultProxy> = std::iter::once(&proxy).chain(&mongodb_proxy).collect();
        for proxy in &proxies {
            proxy.set(fault);
        }
        // A blackhole or a reset lasts 3 s; the clients retry meanwhile.
        let heal = matches!(fault, Fault::Blackhole | Fault::Reset).then(|| {
            let faults: Vec<_> = proxies.iter().map(|p| p.fault.clone()).collect();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                for fault in faults {
                    fault.send_replace(Fault::Pass);
                }
            })
        });
        for i in 0..8 {
            for (ws, who) in [(&mut alice_tx, "alice"), (&mut bob_tx, "bob")] {
                let content = format!("{name} {who} {i}");
                send_until_acked(ws, &room, &content).await;
                acked.insert(content);
            }
        }
        if let Some(heal) = heal {
            heal.await.unwrap();
        }
    }
    received_once_in_order(&mut alice_rx, "alice on the cut-off pod", &acked).await;
    received_once_in_order(&mut bob_rx, "bob on the healthy pod", &acked).await;
    let stored = stored_once(&healthy.base, &alice, &room, acked.len()).await;
    assert_eq!(stored, acked, "history differs from what was acked");
}

/// The Redis a pod's connections reach vanishes without closing them (its
/// node lost; the Sentinels' new primary is reached by new connections): the
/// pod's pub/sub connection, which only ever reads, is found dead by its
/// ping and opened again, so its clients get, once and in order, what
/// another pod's clients post meanwhile, and the pod acks its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_vanishes_without_closing_its_connections_is_left_for_new_ones() {
    let redis = start_redis_on(free_port(), None);
    let proxy = FaultProxy::start(redis.port).await;
    let db = unique_db_name();
    let mut pods = Vec::new();
    for (i, redis_port) in [proxy.port, redis.port].into_iter().enumerate() {
        let (env, temp) = pod_env(
            &format!("pod-{i}"),
            format!("redis://127.0.0.1:{redis_port}"),
            &db,
        );
        pods.push(TestServer::start_with_env(env, Some(temp)).await);
    }
    let (cut_off, healthy) = (&pods[0], &pods[1]);
    let alice = cut_off.user("alice").await;
    let bob = cut_off.user("bob").await;
    let room = cut_off.room(&alice, "lost node", false).await;
    cut_off.join(&bob, &room).await;
    let mut alice_tx = connect_to(cut_off, &alice, &room).await;
    let mut alice_rx = connect_to(cut_off, &alice, &room).await;
    let mut bob_tx = connect_to(healthy, &bob, &room).await;

    let mut acked = BTreeSet::new();
    send_until_acked(&mut bob_tx, &room, "before").await;
    acked.insert("before".to_owned());
    proxy.vanish();
    for i in 0..10 {
        for (ws, who) in [(&mut bob_tx, "bob"), (&mut alice_tx, "alice")] {
            let content = format!("{who} after {i}");
            send_until_acked(ws, &room, &content).await;
            acked.insert(content);
        }
    }
    received_once_in_order(
        &mut alice_rx,
        "alice on the pod whose redis vanished",
        &acked,
    )
    .await;
}

/// A chat server as its own process, so it can be killed with SIGKILL.
struct ServerProcess {
    child: Child,
    base: String,
    data: std::path::PathBuf,
}

impl ServerProcess {
    fn start(name: &str, redis_port: u16, db: &str) -> Self {
        let port = free_port();
        let data = std::env::temp_dir().join(format!("chat-chaos-{name}-{port}"));
        let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHAT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("CHAT_DATA_DIR", &data)
            .env("CHAT_REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("CHAT_MONGODB_URI", mongodb_uri())
            .env("CHAT_MONGODB_DB", db)
            .env("CHAT_JWT_SECRET", JWT_SECRET)
            .env("CHAT_POD_NAME", name)
            .env("CHAT_RATE_LIMIT_PER_SEC", "100000")
            .env("CHAT_RATE_LIMIT_BURST", "100000")
            .env("CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR", "1000000")
            .env("CHAT_MAX_CONNECTIONS_PER_ADDRESS", "1000000")
            .env("CHAT_WEB_DIR", data.join("no-web"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data,
        }
    }

    async fn connect(&self, user: &TestUser) -> WsClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}/ws?{}",
            self.base.replace("http://", "ws://"),
            ws_query(user, None)
        );
        WsClient::connect_request(url.into_client_request().unwrap())
            .await
            .unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_mid_burst_loses_nothing_its_clients_acked() {
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = start_redis_on(free_port(), Some(redis_dir.path()));
    let db = unique_db_name();
    let mut doomed = ServerProcess::start("doomed", redis.port, &db);
    let survivor = ServerProcess::start("survivor", redis.port, &db);
    // Accounts and the room through an in-process server on the same store.
    let (env, temp) = pod_env("setup", format!("redis://127.0.0.1:{}", redis.port), &db);
    let setup = TestServer::start_with_env(env, Some(temp)).await;
    let alice = setup.user("alice").await;
    let bob = setup.user("bob").await;
    let carol = setup.user("carol").await;
    let room = setup.room(&alice, "burst", false).await;
    setup.join(&bob, &room).await;
    setup.join(&carol, &room).await;

    let mut alice_ws = doomed.connect(&alice).await;
    open(&mut alice_ws, &room).await;
    let mut carol_ws = doomed.connect(&carol).await;
    open(&mut carol_ws, &room).await;
    let mut bob_ws = survivor.connect(&bob).await;
    open(&mut bob_ws, &room).await;

    let total = 120;
    let mut acked = BTreeSet::new();
    let mut next = 0;
    // The burst: each message sent without waiting for the previous ack.
    for i in 0..total {
        let content = format!("m{i:03}");
        alice_ws
            .send(json!({"type": "message", "room_id": room, "content": content, "client_id": content}))
            .await;
    }
    // Collect acks until about half are in, then the pod dies.
    while acked.len() < total / 2 {
        let frame = alice_ws.next().await;
        if frame["type"] == "ack" {
            acked.insert(frame["client_id"].as_str().unwrap().to_owned());
        }
    }
    doomed.kill();
    // What else alice reads before her socket reports the close.
    loop {
        let frame = alice_ws.next().await;
        if frame.get("closed").is_some() {
            break;
        }
        if frame["type"] == "ack" {
            acked.insert(frame["client_id"].as_str().unwrap().to_owned());
        }
    }
    // What carol read before the pod died, and her last seq.
    let (mut carol_before, mut carol_last) = (BTreeSet::new(), 0);
    loop {
        let frame = carol_ws.next().await;
        if frame.get("closed").is_some() {
            break;
        }
        let seq = frame["seq"].as_u64().unwrap_or(0);
        if seq > 0 {
            assert!(seq > carol_last, "carol got seq {seq} after {carol_last}");
            carol_last = seq;
        }
        if frame["type"] == "text" {
            carol_before.insert(frame["content"].as_str().unwrap().to_owned());
        }
    }

    // Alice reconnects to the survivor and sends again everything not acked,
    // with the same client_ids, as the web client does.
    let mut alice_ws = survivor.connect(&alice).await;
    open(&mut alice_ws, &room).await;
    while next < total {
        let content = format!("m{next:03}");
        if !acked.contains(&content) {
            send_until_acked(&mut alice_ws, &room, &content).await;
            acked.insert(content);
        }
        next += 1;
    }
    let everything: BTreeSet<String> = (0..total).map(|i| format!("m{i:03}")).collect();
    assert_eq!(acked, everything);

    // Carol resumes on the survivor from her last seq: the rest, once, in order.
    let mut carol_ws = survivor.connect(&carol).await;
    carol_ws
        .send(json!({"type": "resume", "room_id": room, "last_seq": carol_last}))
        .await;
    let mut carol_seen = carol_before;
    let mut last = carol_last;
    let deadline = Instant::now() + Duration::from_secs(30);
    while carol_seen != everything {
        assert!(
            Instant::now() < deadline,
            "carol is missing messages after resuming"
        );
        let frame = carol_ws.next().await;
        assert!(frame.get("closed").is_none(), "{frame}");
        let seq = frame["seq"].as_u64().unwrap_or(0);
        if seq > 0 {
            assert!(seq > last, "carol got seq {seq} after {last}");
            last = seq;
        }
        if frame["type"] == "text" {
            let content = frame["content"].as_str().unwrap().to_owned();
            assert!(
                carol_seen.insert(content.clone()),
                "carol got {content} twice"
            );
        }
    }

    received_once_in_order(&mut bob_ws, "bob on the surviving pod", &everything).await;
    let stored = stored_once(&survivor.base, &alice, &room, total).await;
    assert_eq!(stored, everything, "history differs from what was acked");
}

/// How long MongoDB stays down in the outage test.
const MONGODB_OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_stopped_for_a_minute_under_load_loses_nothing() {
    let storage = tempfile::tempdir().unwrap();
    let storage_path = storage.path().display().to_string();
    let mongodb_port = free_port();
    let mut mongodb = crate::common::start_secantus_on(mongodb_port, &storage_path);
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = start_redis_on(free_port(), Some(redis_dir.path()));
    let db = unique_db_name();
    let mut pods = Vec::new();
    for i in 0..2 {
        let (mut env, temp) = pod_env(
            &format!("pod-{i}"),
            format!("redis://127.0.0.1:{}", redis.port),
            &db,
        );
        env.insert(
            "CHAT_MONGODB_URI",
            format!("mongodb://127.0.0.1:{mongodb_port}/?directConnection=true"),
        );
        pods.push(TestServer::start_with_env(env, Some(temp)).await);
    }
    let alice = pods[0].user("alice").await;
    let bob = pods[0].user("bob").await;
    let room = pods[0].room(&alice, "outage", false).await;
    pods[0].join(&bob, &room).await;
    let mut alice_ws = connect_to(&pods[0], &alice, &room).await;
    let mut bob_ws = connect_to(&pods[1], &bob, &room).await;
    // Bob reads all along, as a person's client does (a client that stops
    // reading is closed as idle or slow).
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let frame = bob_ws.next().await;
                assert!(
                    frame.get("closed").is_none(),
                    "bob's connection closed: {frame}"
                );
                if frame["type"] == "text" {
                    let seq = frame["seq"].as_u64().unwrap();
                    let content = frame["content"].as_str().unwrap().to_owned();
                    seen.lock().unwrap().push((seq, content));
                }
            }
        })
    };

    mongodb.kill();
    let outage = Instant::now();
    let mut acked = BTreeSet::new();
    // Ten messages a second while the database is down.
    while outage.elapsed() < MONGODB_OUTAGE {
        let content = format!("during {}", acked.len());
        send_until_acked(&mut alice_ws, &room, &content).await;
        acked.insert(content);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        acked.len() > 300,
        "only {} messages were acked in a minute without MongoDB",
        acked.len()
    );
    let _mongodb = crate::common::start_secantus_on(mongodb_port, &storage_path);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let contents: BTreeSet<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect();
        if acked.is_subset(&contents) {
            break;
        }
        assert!(!reader.is_finished(), "bob's reader stopped");
        assert!(Instant::now() < deadline, "bob is missing messages");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "bob got messages out of order or twice"
    );
    let contents: BTreeSet<String> = seen.into_iter().map(|(_, c)| c).collect();
    assert_eq!(contents, acked, "bob got messages nobody had acked");
    let stored = stored_once(&pods[1].base, &bob, &room, acked.len()).await;
    assert_eq!(stored, acked, "history differs from what was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_and_restarted_from_its_aof_loses_nothing() {
    let redis_dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut redis = start_redis_on(redis_port, Some(redis_dir.path()));
    let db = unique_db_name();
    let mut pods = Vec::new();
    for i in 0..2 {
        let (env, temp) = pod_env(
            &format!("pod-{i}"),
            format!("redis://127.0.0.1:{redis_port}"),
            &db,
        );
        pods.push(Arc::new(TestServer::start_with_env(env, Some(temp)).await));
    }
    let alice = pods[0].user("alice").await;
    let bob = pods[0].user("bob").await;
    let room = pods[0].room(&alice, "storm", false).await;
    pods[0].join(&bob, &room).await;
    let mut alice_rx = connect_to(&pods[0], &alice, &room).await;
    let mut bob_rx = connect_to(&pods[1], &bob, &room).await;

    // Two senders, one per pod, each posting 60 messages as fast as acks come.
    let senders: Vec<_> = [(0usize, alice.clone()), (1, bob.clone())]
        .into_iter()
        .map(|(pod, user)| {
            let (pods, room) = (pods.clone(), room.clone());
            tokio::spawn(async move {
                let mut ws = connect_to(&pods[pod], &user, &room).await;
                let mut acked = Vec::new();
                for i in 0..60 {
                    let content = format!("pod{pod} {i}");
                    send_until_acked(&mut ws, &room, &content).await;
                    acked.push(content);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _redis = start_redis_on(redis_port, Some(redis_dir.path()));
    let mut acked = BTreeSet::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    assert_eq!(acked.len(), 120);
    received_once_in_order(&mut alice_rx, "alice", &acked).await;
    received_once_in_order(&mut bob_rx, "bob", &acked).await;
    let stored = stored_once(&pods[1].base, &bob, &room, acked.len()).await;
    assert_eq!(stored, acked, "history differs from what was acked");
}
