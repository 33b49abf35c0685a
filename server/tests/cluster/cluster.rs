//! Several chat servers sharing one Redis and one MongoDB, as pods do:
//! cross-pod delivery exactly once and in order, subscriptions only where
//! members are, resume on another pod, and surviving Redis and MongoDB outages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::{
    Process, TestServer, TestUser, WsClient, free_port, history_when_complete, mongodb_uri,
    pod_env, start_redis_on, start_secantus_on, unique_db_name, ws_query,
};

struct Cluster {
    pods: Vec<TestServer>,
    redis: Process,
    redis_dir: tempfile::TempDir,
    mongodb: String,
    db: String,
}

/// `pods` servers on one durable Redis and one MongoDB database.
async fn cluster(pods: usize, mongodb: Option<String>) -> Cluster {
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = start_redis_on(free_port(), Some(redis_dir.path()));
    let db = unique_db_name();
    let uri = mongodb.unwrap_or_else(mongodb_uri);
    let mut servers = Vec::new();
    for i in 0..pods {
        let (mut env, temp) = pod_env(
            &format!("pod-{i}"),
            format!("redis://127.0.0.1:{}", redis.port),
            &db,
        );
        env.insert("CHAT_MONGODB_URI", uri.clone());
        servers.push(TestServer::start_with_env(env, Some(temp)).await);
    }
    Cluster {
        pods: servers,
        redis,
        redis_dir,
        mongodb: uri,
        db,
    }
}

/// Alice on pod 0 and Bob on pod 1, both members of one public room and both
/// with it open.
struct Pair {
    alice: TestUser,
    bob: TestUser,
    room: String,
    alice_ws: WsClient,
    bob_ws: WsClient,
    /// The room's newest seq when Bob opened it.
    bob_joined_at: u64,
}

async fn alice_and_bob(cluster: &Cluster, room_name: &str) -> Pair {
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let room = a.room(&alice, room_name, false).await;
    a.join(&bob, &room).await;
    let mut alice_ws = WsClient::connect(a, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;
    let mut bob_ws = WsClient::connect(b, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    let bob_joined_at = bob_ws.next_of("joined").await["last_seq"].as_u64().unwrap();
    Pair {
        alice,
        bob,
        room,
        alice_ws,
        bob_ws,
        bob_joined_at,
    }
}

async fn send_acked(ws: &mut WsClient, room: &str, content: &str) -> Value {
    ws.send(json!({"type": "message", "room_id": room, "content": content}))
        .await;
    ws.next_of("ack").await
}

/// Redis drops both pods' pub/sub connections, as it does to a subscriber
/// past its client-output-buffer-limit.
async fn kill_pubsub_connections(redis: &Process) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(killed, 2, "one pub/sub connection per pod");
}

async fn channel_subscribers(redis: &Process, room: &str) -> i64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("chat:room:{{{room}}}"))
        .query_async(&mut connection)
        .await
        .unwrap();
    counts[0].1
}

async fn settles_at(redis: &Process, room: &str, expected: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while channel_subscribers(redis, room).await != expected {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_pods_once_and_in_order() {
    let cluster = cluster(2, None).await;
    let Pair {
        bob,
        room,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "across").await;
    let b = &cluster.pods[1];

    // Both write at once, from both pods: everyone sees one total order.
    let mut expected = Vec::new();
    for i in 0..20 {
        alice_ws
            .send(json!({"type": "message", "room_id": room, "content": format!("a{i}")}))
            .await;
        bob_ws
            .send(json!({"type": "message", "room_id": room, "content": format!("b{i}")}))
            .await;
        expected.push(format!("a{i}"));
        expected.push(format!("b{i}"));
    }
    let mut seen_by = HashMap::new();
    for (name, ws) in [("alice", &mut alice_ws), ("bob", &mut bob_ws)] {
        let mut seqs = Vec::new();
        let mut contents = Vec::new();
        while contents.len() < 40 {
            let message = ws.next_message().await;
            seqs.push(message["seq"].as_u64().unwrap());
            contents.push(message["content"].as_str().unwrap().to_owned());
        }
        ws.no_message_within(Duration::from_millis(300)).await;
        let first = seqs[0];
        assert_eq!(
            seqs,
            (first..first + 40).collect::<Vec<_>>(),
            "{name}: gapless, ascending, no duplicates"
        );
        seen_by.insert(name, contents);
    }
    assert_eq!(seen_by["alice"], seen_by["bob"], "one order for everyone");
    let mut sorted = seen_by["alice"].clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every message, once");

    // Each pod measured the delivery of every message it handed to its members,
    // and its readiness check saw Redis and MongoDB.
    for pod in &cluster.pods {
        let (status, _) = pod.call(reqwest::Method::GET, "/readyz", None, None).await;
        assert_eq!(status, 200);
        let metrics = pod.metrics().await;
        let delivered: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("chat_delivery_latency_seconds_count "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no delivery latency in\n{metrics}"));
        assert!(delivered >= 40.0, "{delivered} deliveries measured");
        for dependency in ["redis", "mongodb"] {
            assert!(
                metrics.contains(&format!(
                    "chat_dependency_up{{dependency=\"{dependency}\"}} 1"
                )),
                "{dependency} up: {metrics}"
            );
        }
    }

    // All of it reaches MongoDB through the persist stream.
    let history = history_when_complete(b, &bob, &room, 41).await;
    assert_eq!(history[0], "bob joined the room");
    assert_eq!(history[1..], seen_by["alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_subscribes_only_to_rooms_with_local_members() {
    let cluster = cluster(2, None).await;
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let alice = a.user("alice").await;
    let busy = a.room(&alice, "busy", false).await;
    let quiet = a.room(&alice, "quiet", false).await;
    assert_eq!(channel_subscribers(&cluster.redis, &busy).await, 0);

    let mut on_a = WsClient::connect(a, &ws_query(&alice, Some(&busy)))
        .await
        .unwrap();
    on_a.next_of("joined").await;
    assert_eq!(
        channel_subscribers(&cluster.redis, &busy).await,
        1,
        "pod a only"
    );
    let mut on_b = WsClient::connect(b, &ws_query(&alice, Some(&busy)))
        .await
        .unwrap();
    on_b.next_of("joined").await;
    assert_eq!(channel_subscribers(&cluster.redis, &busy).await, 2);
    assert_eq!(
        channel_subscribers(&cluster.redis, &quiet).await,
        0,
        "nobody is in the quiet room"
    );

    on_b.send(json!({"type": "leave", "room_id": busy})).await;
    on_b.next_of("left").await;
    // Unsubscribing follows the `left` frame; give it a moment.
    settles_at(&cluster.redis, &busy, 1, "pod b let go of the room").await;
    drop(on_a);
    settles_at(
        &cluster.redis,
        &busy,
        0,
        "pod a let go after its last member left",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_pod_without_gap_or_duplicate() {
    let cluster = cluster(2, None).await;
    let Pair {
        bob,
        room,
        mut alice_ws,
        bob_ws,
        bob_joined_at: last_seen,
        ..
    } = alice_and_bob(&cluster, "roaming").await;
    let a = &cluster.pods[0];
    drop(bob_ws);
    for i in 0..5 {
        send_acked(&mut alice_ws, &room, &format!("while away {i}")).await;
    }
    // Bob comes back on the other pod.
    let mut bob_ws = WsClient::connect(a, &ws_query(&bob, None)).await.unwrap();
    bob_ws
        .send(json!({"type": "resume", "room_id": room, "last_seq": last_seen}))
        .await;
    assert_eq!(bob_ws.next_of("resumed").await["last_seq"], last_seen + 5);
    for i in 0..5 {
        let message = bob_ws.next_message().await;
        assert_eq!(message["content"], format!("while away {i}"));
        assert_eq!(message["seq"], last_seen + 1 + i);
    }
    bob_ws.no_message_within(Duration::from_millis(300)).await;
}

/// Redis keeps only the seq under a retry's dedupe key; the message itself
/// comes from the recent buffer or, once it has left it, from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_acked_the_same_after_its_message_left_the_recent_buffer() {
    let cluster = cluster(2, None).await;
    let Pair {
        bob,
        room,
        mut alice_ws,
        ..
    } = alice_and_bob(&cluster, "retried").await;
    let frame =
        json!({"type": "message", "room_id": room, "content": "original", "client_id": "r-1"});
    alice_ws.send(frame.clone()).await;
    let first = alice_ws.next_of("ack").await;
    alice_ws.send(frame.clone()).await;
    assert_eq!(
        alice_ws.next_of("ack").await,
        first,
        "from the recent buffer"
    );

    let stored = |page: &Value| {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["content"] == "original")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = cluster.pods[1]
            .get(&format!("/api/rooms/{room}/messages"), &bob.token)
            .await;
        if stored(&page) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never persisted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // As if a thousand newer messages had pushed it out of the buffer.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.redis.port)).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("chat:room:{{{room}}}:log"))
        .query_async(&mut connection)
        .await
        .unwrap();
    alice_ws.send(frame).await;
    assert_eq!(alice_ws.next_of("ack").await, first, "from the store");

    // The same client_id in another room is another message.
    let other = cluster.pods[0].room(&bob, "elsewhere", false).await;
    let mut bob_ws = WsClient::connect(&cluster.pods[0], &ws_query(&bob, Some(&other)))
        .await
        .unwrap();
    bob_ws.next_of("joined").await;
    let in_room =
        json!({"type": "message", "room_id": room, "content": "bob's", "client_id": "r-2"});
    let in_other =
        json!({"type": "message", "room_id": other, "content": "bob's", "client_id": "r-2"});
    bob_ws.send(json!({"type": "join", "room_id": room})).await;
    bob_ws.next_of("joined").await;
    bob_ws.send(in_room).await;
    let here = bob_ws.next_of("ack").await;
    bob_ws.send(in_other).await;
    let there = bob_ws.next_of("ack").await;
    assert_ne!(here["id"], there["id"]);
    assert_eq!(there["room_id"], other.as_str());

    let (_, page) = cluster.pods[0]
        .get(&format!("/api/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(stored(&page), 1, "the retries stored nothing new");
    // A retry takes no seq: the room's seqs have no gap.
    // The log deleted above was made again, and expires if the room idles.
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("chat:room:{{{room}}}:log"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 3600, "the room's log has no expiry: TTL {ttl}");
    let newest = here["seq"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seqs = loop {
        let (_, page) = cluster.pods[0]
            .get(&format!("/api/rooms/{room}/messages"), &bob.token)
            .await;
        let mut seqs: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        seqs.sort_unstable();
        if seqs.last() == Some(&newest) || Instant::now() > deadline {
            break seqs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seqs, (1..=newest).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_pod_delivery_resumes_after_a_redis_restart() {
    let mut cluster = cluster(2, None).await;
    let Pair {
        bob,
        room,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "weathered").await;
    let before = send_acked(&mut alice_ws, &room, "before").await;
    assert_eq!(bob_ws.next_message().await["content"], "before");

    let port = cluster.redis.port;
    cluster.redis.kill();
    // While Redis is down, posts are refused (not acked), never silently lost.
    alice_ws
        .send(json!({"type": "message", "room_id": room, "content": "during", "client_id": "d1"}))
        .await;
    assert_eq!(alice_ws.next_of("error").await["code"], "unavailable");
    cluster.redis = start_redis_on(port, Some(cluster.redis_dir.path()));

    // Delivery comes back by itself; the seq continues from before the restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        alice_ws
            .send(
                json!({"type": "message", "room_id": room, "content": "after", "client_id": "a1"}),
            )
            .await;
        let frame = alice_ws.next().await;
        if frame["type"] == "ack" {
            break frame;
        }
        assert!(
            Instant::now() < deadline,
            "posting did not recover: {frame}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(after["seq"], before["seq"].as_u64().unwrap() + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let frame = bob_ws.next().await;
        if frame["type"] == "text" {
            assert_eq!(
                (frame["content"].as_str(), &frame["seq"]),
                (Some("after"), &after["seq"])
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob never got the message after the restart"
        );
    }
    let history = history_when_complete(&cluster.pods[1], &bob, &room, 3).await;
    assert_eq!(history, ["bob joined the room", "before", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_goes_on_while_mongodb_is_down_and_the_backlog_is_written_after() {
    let storage = tempfile::tempdir().unwrap();
    let storage_path = storage.path().display().to_string();
    let port = free_port();
    let mut mongo = start_secantus_on(port, &storage_path);
    let cluster = cluster(
        2,
        Some(format!("mongodb://127.0.0.1:{port}/?directConnection=true")),
    )
    .await;
    let Pair {
        bob,
        room,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "resilient").await;
    let b = &cluster.pods[1];

    // Bob's join is in MongoDB before it goes away.
    history_when_complete(b, &bob, &room, 1).await;
    mongo.kill();
    // A burst, so the pods send several messages per script call.
    for i in 0..10 {
        alice_ws
            .send(json!({"type": "message", "room_id": room, "content": format!("offline {i}")}))
            .await;
    }
    for i in 0..10 {
        assert_eq!(
            alice_ws.next_of("ack").await["type"],
            "ack",
            "acked while MongoDB is down"
        );
        assert_eq!(
            bob_ws.next_message().await["content"],
            format!("offline {i}")
        );
    }
    // The backlog counts messages, however many a stream entry holds.
    assert_eq!(backlog_settles(b, |n| n == 10).await, 10);
    let _mongo = start_secantus_on(port, &storage_path);
    // 1 system message (bob joined) + 10.
    let history = history_when_complete(b, &bob, &room, 11).await;
    assert_eq!(history.len(), 11, "{history:?}");
    assert_eq!(
        history[1..],
        (0..10).map(|i| format!("offline {i}")).collect::<Vec<_>>()
    );
    assert_eq!(backlog_settles(b, |n| n == 0).await, 0);
}

/// `chat_persist_backlog` once `settled` holds of it (or after 30 s).
async fn backlog_settles(pod: &TestServer, settled: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = pod.metrics().await;
        let backlog = metrics
            .lines()
            .find_map(|l| l.strip_prefix("chat_persist_backlog "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        if settled(backlog) || Instant::now() > deadline {
            return backlog;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_presence_span_pods() {
    let cluster = cluster(2, None).await;
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let room = a.room(&alice, "everywhere", false).await;
    let mut laptop = WsClient::connect(a, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    laptop.next_of("joined").await;
    let mut phone = WsClient::connect(b, &ws_query(&alice, None)).await.unwrap();
    phone.send(json!({"type": "ping"})).await;
    phone.next_of("pong").await;

    let (status, sessions) = b.get("/api/sessions", &alice.token).await;
    assert_eq!(status, 200, "{sessions}");
    let mut pods: Vec<_> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pod"].as_str().unwrap().to_owned())
        .collect();
    pods.sort();
    assert_eq!(pods, ["pod-0", "pod-1"], "{sessions}");
    let on_a = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pod"] == "pod-0")
        .unwrap();
    assert_eq!(on_a["rooms"], json!([room]));
    // Presence is for people who share a room.
    a.join(&bob, &room).await;
    let (_, profile) = b.get(&format!("/api/users/{}", alice.id), &bob.token).await;
    assert_eq!(profile["online"], true);

    // Presence frames cross pods too.
    let mut bob_ws = WsClient::connect(b, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    bob_ws.next_of("joined").await;
    loop {
        let presence = laptop.next_of("presence").await;
        if presence["user_id"] == bob.id.as_str() {
            assert_eq!(presence["status"], "online");
            break;
        }
    }

    drop(laptop);
    drop(phone);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, profile) = a.get(&format!("/api/users/{}", alice.id), &bob.token).await;
        if profile["online"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice still online after closing every connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, sessions) = a.get("/api/sessions", &alice.token).await;
    assert_eq!(sessions["sessions"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_without_slowing_the_room() {
    // Redis sequencing keeps the sender fast, so the stalled socket fills quickly.
    let cluster = cluster(1, None).await;
    let server = &cluster.pods[0];
    let alice = server.user("alice").await;
    let sloth = server.user("sloth").await;
    let room = server.room(&alice, "firehose", false).await;
    server.join(&sloth, &room).await;

    // The slow client has a tiny receive buffer and never reads.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let url = format!("ws://{addr}/ws?token={}&room_id={room}", sloth.token);
    let (slow, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();

    let mut alice_ws = WsClient::connect(server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;
    let content = "x".repeat(3000);
    let total = 3000;
    let mut received = 0;
    // The sender reads its own copies and acks as it goes, in windows: a fast client.
    for window in 0..total / 100 {
        for i in 0..100 {
            let n = window * 100 + i;
            alice_ws.send(json!({"type": "message", "room_id": room, "content": format!("{n} {content}")})).await;
        }
        let mut acks = 0;
        while acks < 100 {
            match alice_ws.next().await["type"].as_str() {
                Some("text") => received += 1,
                Some("ack") => acks += 1,
                _ => {}
            }
        }
    }
    while received < total {
        if alice_ws.next().await["type"] == "text" {
            received += 1;
        }
    }
    assert_eq!(received, total, "the fast member got every message");

    // The slow one was cut off, and told why once it reads again.
    use futures::StreamExt;
    let mut slow = slow;
    let mut close_code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
        match frame {
            Ok(WsMessage::Close(Some(close))) => {
                close_code = Some(u16::from(close.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    // Counted when the server is done with the connection: after its
    // goodbye had time to drain (seconds, when the suite loads the machine).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = server.metrics().await;
        if metrics.contains("chat_ws_disconnects_total{reason=\"slow_consumer\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        close_code.is_none() || close_code == Some(4008),
        "{close_code:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pubsub_connection_is_repaired_without_gaps() {
    let cluster = cluster(2, None).await;
    let Pair {
        room,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "flaky").await;
    kill_pubsub_connections(&cluster.redis).await;
    for i in 0..30 {
        alice_ws
            .send(json!({"type": "message", "room_id": room, "content": format!("m{i}")}))
            .await;
    }
    for (name, ws) in [("alice", &mut alice_ws), ("bob", &mut bob_ws)] {
        let mut contents = Vec::new();
        let mut seqs = Vec::new();
        while contents.len() < 30 {
            let frame = ws.next().await;
            if frame["type"] == "text" {
                contents.push(frame["content"].as_str().unwrap().to_owned());
                seqs.push(frame["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(
            contents,
            (0..30).map(|i| format!("m{i}")).collect::<Vec<_>>(),
            "{name}"
        );
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{name}: {seqs:?}"
        );
        ws.no_message_within(Duration::from_millis(300)).await;
    }
}

/// A pod whose pub/sub connection dropped may have missed evictions, so it
/// asks the store again before a known member's next post. Here bob is
/// removed in the store with no eviction at all: only asking finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_pubsub_gap_a_pod_asks_again_who_may_post() {
    let cluster = cluster(2, None).await;
    let Pair {
        room,
        bob,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "gap").await;
    send_acked(&mut bob_ws, &room, "known here").await;
    let removed_at = Instant::now();
    cluster.pods[1]
        .state
        .store
        .remove_member(room.parse().unwrap(), bob.id.parse().unwrap())
        .await
        .unwrap();
    kill_pubsub_connections(&cluster.redis).await;
    // Bob's pod is listening again once alice's message reaches him.
    send_acked(&mut alice_ws, &room, "after the gap").await;
    loop {
        let frame = bob_ws.next().await;
        if frame["content"] == "after the gap" {
            break;
        }
    }
    bob_ws
        .send(json!({"type": "message", "room_id": room, "content": "sneaky"}))
        .await;
    let refused = loop {
        let frame = bob_ws.next().await;
        match frame["type"].as_str() {
            Some("error") | Some("left") | Some("ack") => break frame,
            _ => {}
        }
    };
    assert!(
        refused["type"] == "left" || refused["code"] == "not_joined",
        "bob posted after the gap ({:?} after his removal): {refused}",
        removed_at.elapsed()
    );
}

/// A block made on one pod reaches the blocked member's pod with its
/// membership sweep: their posts in the direct room stop within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_made_on_another_pod_stops_the_direct_room_within_the_sweep() {
    let cluster = cluster(2, None).await;
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let alice = a.user("alice").await;
    let mallory = a.user("mallory").await;
    let dm = a.dm(&mallory, &alice).await;
    let mut ws = WsClient::connect(b, &ws_query(&mallory, Some(&dm)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    send_acked(&mut ws, &dm, "hey").await;

    let (status, body) = a
        .call(
            reqwest::Method::PUT,
            &format!("/api/users/me/blocks/{}", mallory.id),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let blocked_at = Instant::now();
    let refused = 'posting: loop {
        assert!(
            blocked_at.elapsed()
                < chat_server::engine::chat::MEMBERSHIP_SWEEP + Duration::from_secs(5),
            "mallory still writes to alice"
        );
        ws.send(json!({"type": "message", "room_id": dm, "content": "hey?"}))
            .await;
        loop {
            let frame = ws.next().await;
            match frame["type"].as_str() {
                Some("ack") => break,
                Some("error") => break 'posting frame,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_dead_pod_left_pending_is_persisted_by_another() {
    let mut cluster = cluster(1, None).await;
    let a = &cluster.pods[0];
    let alice = a.user("alice").await;
    let room = a.room(&alice, "orphaned", false).await;

    // A pod took a message off the persist stream and died before writing it.
    let orphan = json!({"type": "text", "id": "0123456789abcdef01234567", "room_id": room, "user_id": alice.id,
        "username": "alice", "content": "left behind", "timestamp": "2026-11-23T12:00:00.000Z", "seq": 1});
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.redis.port)).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let id: String = redis::cmd("XADD")
        .arg("chat:persist")
        .arg("*")
        .arg("m")
        .arg(orphan.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("chat-persist")
        .arg("ghost")
        .arg("STREAMS")
        .arg("chat:persist")
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    // ...long enough ago to count as dead.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg("chat:persist")
        .arg("chat-persist")
        .arg("ghost")
        .arg(0)
        .arg(&id)
        .arg("IDLE")
        .arg(3_600_000)
        .query_async(&mut redis)
        .await
        .unwrap();

    // A pod starting later claims it and writes it.
    let (mut env, temp) = pod_env(
        "pod-late",
        format!("redis://127.0.0.1:{}", cluster.redis.port),
        &cluster.db,
    );
    env.insert("CHAT_MONGODB_URI", cluster.mongodb.clone());
    cluster
        .pods
        .push(TestServer::start_with_env(env, Some(temp)).await);
    let history = history_when_complete(&cluster.pods[1], &alice, &room, 1).await;
    assert_eq!(history, ["left behind"]);
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("chat:persist")
        .arg("chat-persist")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pending[0], redis::Value::Int(0), "nothing left pending");
}

/// A room's counter lost or left under the old key layout: the next seq
/// continues above every seq ever acked, whether the store, the room's log or
/// the old counter knows the newest (acked messages may not be persisted yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_counter_never_reuses_a_seq() {
    let cluster = cluster(2, None).await;
    let Pair {
        bob,
        room,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "counted").await;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.redis.port)).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let post = |content: &str| json!({"type": "message", "room_id": room, "content": content});

    // An upgrade from the layout without hash tags, with acked messages up to
    // seq 40 not persisted yet.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(format!("chat:room:{{{room}}}:seq"))
        .cmd("SET")
        .arg(format!("chat:room:{room}:seq"))
        .arg(40)
        .query_async(&mut redis)
        .await
        .unwrap();
    alice_ws.send(post("after the upgrade")).await;
    assert_eq!(alice_ws.next_of("ack").await["seq"], 41);
    let live = bob_ws.next_message().await;
    assert_eq!(
        (live["seq"].as_u64(), live["content"].as_str()),
        (Some(41), Some("after the upgrade"))
    );

    // The counter lost while the log holds a newer seq than the store.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(format!("chat:room:{{{room}}}:seq"))
        .arg(format!("chat:room:{room}:seq"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("chat:room:{{{room}}}:log"))
        .arg("900-0")
        .arg("m")
        .arg("{}")
        .query_async(&mut redis)
        .await
        .unwrap();
    alice_ws.send(post("after the loss")).await;
    let seq = alice_ws.next_of("ack").await["seq"].as_u64().unwrap();
    assert_eq!(seq, 901, "above the newest in the log");
    assert_eq!(bob_ws.next_message().await["content"], "after the loss");

    // A resume from before it reads the renewed log.
    let mut back = WsClient::connect(&cluster.pods[1], &ws_query(&bob, None))
        .await
        .unwrap();
    back.send(json!({"type": "resume", "room_id": room, "last_seq": seq - 1}))
        .await;
    assert_eq!(back.next_of("resumed").await["last_seq"], seq);
    assert_eq!(back.next_message().await["content"], "after the loss");
}

/// Redis comes back without its data (no persistence, a restore, every pod of
/// a set replaced at once) after two messages were stored, their acks lost
/// (the sender retries). What is posted after is still persisted (the
/// persist stream's group is made again), and each retry is acked as the
/// stored message, whether it comes before anything else reaches the room
/// or after a new message restored the room's counter. Past the recheck
/// window Redis appends a retry again, and the store keeps the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_lost_its_data_new_messages_persist_and_retries_are_stored_once() {
    let cluster = cluster(2, None).await;
    let Pair {
        bob,
        room,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "amnesia").await;
    let post = |content: &str, client_id: &str| json!({"type": "message", "room_id": room, "content": content, "client_id": client_id});
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.redis.port)).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();

    alice_ws.send(post("one", "c-1")).await;
    let one = alice_ws.next_of("ack").await;
    alice_ws.send(post("two", "c-2")).await;
    let two = alice_ws.next_of("ack").await;
    let stored = history_when_complete(&cluster.pods[1], &bob, &room, 3).await;
    assert_eq!(stored, ["bob joined the room", "one", "two"]);
    assert_eq!(bob_ws.next_message().await["content"], "one");
    assert_eq!(bob_ws.next_message().await["content"], "two");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .unwrap();

    let acked_as = |ack: &Value, first: &Value| {
        (ack["seq"].clone(), ack["id"].clone()) == (first["seq"].clone(), first["id"].clone())
    };
    // With the room's counter gone, the first retry is looked up in the store.
    alice_ws.send(post("one", "c-1")).await;
    assert!(acked_as(&alice_ws.next_of("ack").await, &one));
    // A new message restores the counter from the store...
    alice_ws.send(post("three", "c-3")).await;
    let three = alice_ws.next_of("ack").await;
    assert_eq!(three["seq"], two["seq"].as_u64().unwrap() + 1);
    // ...and for a while every key Redis lacks is looked up there too.
    alice_ws.send(post("two", "c-2")).await;
    assert!(acked_as(&alice_ws.next_of("ack").await, &two));
    // Bob saw each message once, live.
    let live = bob_ws.next_message().await;
    assert_eq!(
        (&live["content"], &live["seq"]),
        (&json!("three"), &three["seq"])
    );

    // Past that window, a retry is appended again under a new seq; the
    // store skips it, since its key names the first.
    let _: () = redis::cmd("DEL")
        .arg(format!("chat:room:{{{room}}}:seq:recheck"))
        .query_async(&mut redis)
        .await
        .unwrap();
    alice_ws.send(post("one", "c-1")).await;
    assert!(alice_ws.next_of("ack").await["seq"].as_u64() > three["seq"].as_u64());
    alice_ws.send(post("four", "c-4")).await;
    alice_ws.next_of("ack").await;
    let history = history_when_complete(&cluster.pods[0], &bob, &room, 5).await;
    assert_eq!(
        history,
        ["bob joined the room", "one", "two", "three", "four"]
    );
}

/// A removal whose eviction message never reaches bob's pod (made here in the
/// store directly, as if the publish had failed or the subscriber had been
/// reconnecting): bob can no longer post, and carol, who only reads, no
/// longer reads the private room, within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_whose_eviction_is_lost_can_neither_post_nor_read() {
    let cluster = cluster(2, None).await;
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let carol = a.user("carol").await;
    let room = a.room(&alice, "secret", true).await;
    for member in [&bob, &carol] {
        let (status, _) = a
            .post(
                &format!("/api/rooms/{room}/members/{}", member.id),
                Some(&alice.token),
                json!({}),
            )
            .await;
        assert!(status == 200 || status == 201, "{status}");
    }
    let mut alice_ws = WsClient::connect(a, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;
    let mut poster = WsClient::connect(b, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    poster.next_of("joined").await;
    let mut reader = WsClient::connect(b, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    reader.next_of("joined").await;
    poster
        .send(json!({"type": "message", "room_id": room, "content": "still here", "client_id": "before"}))
        .await;
    assert_eq!(poster.next_of("ack").await["client_id"], "before");

    let removed_at = Instant::now();
    for member in [&bob, &carol] {
        b.state
            .store
            .remove_member(room.parse().unwrap(), member.id.parse().unwrap())
            .await
            .unwrap();
    }

    // Posting: refused once the sweep found him gone.
    let refused = 'posting: loop {
        assert!(
            removed_at.elapsed()
                < chat_server::engine::chat::MEMBERSHIP_SWEEP + Duration::from_secs(5),
            "bob still posts"
        );
        poster
            .send(json!({"type": "message", "room_id": room, "content": "sneaky"}))
            .await;
        loop {
            let frame = poster.next().await;
            match frame["type"].as_str() {
                Some("ack") => break,
                Some("error") | Some("left") => break 'posting frame,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        refused["type"] == "left" || refused["code"] == "not_joined",
        "{refused}"
    );

    // Reading: carol, who never posts, is evicted by the sweep.
    let left = loop {
        let frame = reader.next().await;
        if frame["type"] == "left" || frame.get("closed").is_some() {
            break frame;
        }
    };
    assert_eq!(left["type"], "left", "{left}");
    assert!(removed_at.elapsed() < chat_server::engine::chat::MEMBERSHIP_SWEEP * 3);
    alice_ws
        .send(json!({"type": "message", "room_id": room, "content": "bob is gone", "client_id": "after"}))
        .await;
    assert_eq!(alice_ws.next_of("ack").await["client_id"], "after");
    reader.no_message_within(Duration::from_secs(1)).await;
    poster.no_message_within(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lists_follow_across_pods() {
    let cluster = cluster(2, None).await;
    let alice = cluster.pods[0].user("alice").await;
    let bob = cluster.pods[0].user("bob").await;
    let mut bob_ws = WsClient::connect(&cluster.pods[1], &ws_query(&bob, None))
        .await
        .unwrap();
    // Alice on pod 0 opens a direct room with Bob, connected to pod 1.
    let (status, dm) = cluster.pods[0]
        .post(
            &format!("/api/dm/{}", bob.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 201);
    let frame = bob_ws.next_of("room_added").await;
    assert_eq!(frame["room"]["id"], dm["id"]);
    assert_eq!(frame["room"]["is_direct"], true);
    // And a public room reaches him as well.
    let lobby = cluster.pods[0].room(&alice, "lobby", false).await;
    let frame = bob_ws.next_of("room_added").await;
    assert_eq!(frame["room"]["id"], lobby.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_cross_pods_in_seq_order_and_reach_history() {
    let cluster = cluster(2, None).await;
    let mut pair = alice_and_bob(&cluster, "edits").await;
    let original = send_acked(&mut pair.alice_ws, &pair.room, "helo").await["seq"]
        .as_u64()
        .unwrap();
    pair.alice_ws
        .send(json!({"type": "edit", "room_id": pair.room, "seq": original, "content": "hello"}))
        .await;
    let edit_seq = pair.alice_ws.next_of("ack").await["seq"].as_u64().unwrap();
    let text = pair.bob_ws.next_of("text").await;
    assert_eq!(text["seq"], original);
    let edit = pair.bob_ws.next_of("edit").await;
    assert_eq!(
        (edit["seq"].as_u64(), edit["target_seq"].as_u64()),
        (Some(edit_seq), Some(original))
    );
    // History on the other pod, once the persist worker has both.
    let path = format!("/api/rooms/{}/messages", pair.room);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = cluster.pods[1].get(&path, &pair.bob.token).await;
        let shown = page["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["seq"] == original).cloned());
        if shown.as_ref().is_some_and(|m| m["content"] == "hello") {
            assert!(shown.unwrap()["edited_at"].is_string());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history never showed the edit: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A file uploaded through one pod goes out with its message on the other
/// and is served there (MongoDB's GridFS is every pod's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_on_one_pod_is_served_by_another() {
    let cluster = cluster(2, None).await;
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let Pair {
        alice,
        bob,
        room,
        mut alice_ws,
        mut bob_ws,
        ..
    } = alice_and_bob(&cluster, "files").await;

    let picture = crate::common::png(64, 48);
    let (status, file) = crate::common::upload(a, &alice, &room, "map.png", picture.clone()).await;
    assert_eq!(status, 201, "{file}");
    let id = file["id"].as_str().unwrap();
    alice_ws
        .send(
            json!({"type": "message", "room_id": room, "content": "the map", "attachments": [id]}),
        )
        .await;
    alice_ws.next_of("ack").await;
    let live = bob_ws.next_message().await;
    assert_eq!(live["attachments"][0], file);
    let (status, _, body) =
        crate::common::download(b, &bob, &format!("/api/attachments/{id}")).await;
    assert_eq!((status, body == picture), (200, true));
    let (status, _, thumb) =
        crate::common::download(b, &bob, &format!("/api/attachments/{id}/thumbnail")).await;
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&thumb).unwrap().width(), 64);
}

/// A profile changed through one pod reaches people connected to another,
/// and its picture is served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_changed_on_one_pod_reaches_another() {
    let cluster = cluster(2, None).await;
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    // Profile changes reach those who share a room.
    let room = a.room(&alice, "tea", false).await;
    a.join(&bob, &room).await;
    let mut bob_ws = WsClient::connect(b, &ws_query(&bob, None)).await.unwrap();
    // Bob's connection is live on pod 1 once it answers a ping.
    bob_ws.send(json!({"type": "ping"})).await;
    bob_ws.next_of("pong").await;

    let response = a
        .client
        .put(a.url("/api/users/me/avatar"))
        .bearer_auth(&alice.token)
        .body(crate::common::png(90, 60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let update = bob_ws.next_of("user_updated").await;
    assert_eq!(update["user"]["id"], alice.id.as_str());
    let url = update["user"]["avatar_url"].as_str().unwrap();
    let (status, _, picture) = crate::common::download(b, &bob, url).await;
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&picture).unwrap().width(), 128);
}
