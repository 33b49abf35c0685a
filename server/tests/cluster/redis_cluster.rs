//! Chat servers on a real three-master Redis Cluster: every key of a room on
//! its shard, messages through the room's shard only (sharded pub/sub),
//! exactly once and in order across pods, a persist stream per shard, and a
//! master restarted under traffic without losing an acked message.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;

use crate::common::{
    RedisCluster, TestServer, WsClient, history_when_complete, pod_env, send_until_acked,
    unique_db_name, ws_query,
};

/// Two pods on the cluster and one MongoDB database. The first is given every
/// node as a seed; the second one node only, and finds out it is a cluster.
async fn pods(cluster: &RedisCluster) -> Vec<TestServer> {
    let db = unique_db_name();
    let mut pods = Vec::new();
    for (i, url) in [
        cluster.urls(),
        format!("redis://127.0.0.1:{}", cluster.nodes[1].port),
    ]
    .into_iter()
    .enumerate()
    {
        let (env, temp) = pod_env(&format!("pod-{i}"), url, &db);
        pods.push(TestServer::start_with_env(env, Some(temp)).await);
    }
    pods
}

fn seq_key(room: &str) -> String {
    format!("chat:room:{{{room}}}:seq")
}

/// Opens `room` on an open connection.
async fn open(ws: &mut WsClient, room: &str) {
    ws.send(json!({"type": "join", "room_id": room})).await;
    ws.next_of("joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_live_on_their_shard_and_messages_cross_pods_once_in_order() {
    let cluster = RedisCluster::start();
    let pods = pods(&cluster).await;
    let (a, b) = (&pods[0], &pods[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;

    // Rooms until every shard holds at least one.
    let mut rooms: Vec<String> = Vec::new();
    let mut shards = BTreeSet::new();
    while shards.len() < 3 {
        assert!(rooms.len() < 40, "rooms never spread over three shards");
        let room = a
            .room(&alice, &format!("room {}", rooms.len()), false)
            .await;
        b.join(&bob, &room).await;
        shards.insert(cluster.node_of(&seq_key(&room)));
        rooms.push(room);
    }
    let mut alice_ws = WsClient::connect(a, &ws_query(&alice, None)).await.unwrap();
    let mut bob_ws = WsClient::connect(b, &ws_query(&bob, None)).await.unwrap();
    for room in &rooms {
        open(&mut alice_ws, room).await;
        open(&mut bob_ws, room).await;
    }

    const EACH: usize = 10;
    for i in 0..EACH {
        for room in &rooms {
            alice_ws
                .send(json!({"type": "message", "room_id": room, "content": format!("{i}")}))
                .await;
        }
    }
    let mut received: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for _ in 0..EACH * rooms.len() {
        let message = bob_ws.next_message().await;
        received
            .entry(message["room_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                message["seq"].as_u64().unwrap(),
                message["content"].as_str().unwrap().to_owned(),
            ));
    }
    bob_ws.no_message_within(Duration::from_millis(300)).await;
    for room in &rooms {
        let got = &received[room];
        let first = got[0].0;
        assert_eq!(
            got.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (first..first + EACH as u64).collect::<Vec<_>>(),
            "room {room}: gapless, ascending, once"
        );
        assert_eq!(
            got.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
            (0..EACH).map(|i| i.to_string()).collect::<Vec<_>>(),
            "room {room}: in the order sent"
        );
    }

    // Each room's counter and log are on its shard, and only its shard
    // carries its channel (both pods subscribed there).
    for room in &rooms {
        let shard = cluster.node_of(&seq_key(room));
        let mut node = cluster.node_connection(shard).await;
        let newest: u64 = redis::cmd("GET")
            .arg(seq_key(room))
            .query_async(&mut node)
            .await
            .unwrap();
        assert_eq!(newest, received[room].last().unwrap().0);
        let logged: usize = redis::cmd("XLEN")
            .arg(format!("chat:room:{{{room}}}:log"))
            .query_async(&mut node)
            .await
            .unwrap();
        assert!(logged >= EACH, "room {room}'s log holds {logged}");
        for (index, _) in cluster.nodes.iter().enumerate() {
            let mut node = cluster.node_connection(index).await;
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(format!("chat:room:{{{room}}}"))
                .query_async(&mut node)
                .await
                .unwrap();
            let expected = if index == shard { 2 } else { 0 };
            assert_eq!(counts[0].1, expected, "room {room} on node {index}");
        }
    }

    // One persist stream per shard, all drained into MongoDB.
    let registry = "chat:persist:streams";
    let mut node = cluster.node_connection(cluster.node_of(registry)).await;
    let streams: Vec<String> = redis::cmd("SMEMBERS")
        .arg(registry)
        .query_async(&mut node)
        .await
        .unwrap();
    assert_eq!(streams.len(), 3, "{streams:?}");
    let mut holders = BTreeSet::new();
    for stream in &streams {
        holders.insert(cluster.node_of(stream));
    }
    assert_eq!(holders.len(), 3, "a stream on each shard: {streams:?}");
    for room in &rooms {
        let stored = history_when_complete(b, &bob, room, EACH as u64 + 1).await;
        assert_eq!(stored[0], "bob joined the room");
        assert_eq!(
            stored[1..],
            (0..EACH).map(|i| i.to_string()).collect::<Vec<_>>(),
            "room {room} persisted"
        );
    }

    // Room-list notices cross pods through the cluster's sharded channel.
    let (status, dm) = a
        .post(
            &format!("/api/dm/{}", bob.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 201);
    let frame = bob_ws.next_of("room_added").await;
    assert_eq!(frame["room"]["id"], dm["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_under_traffic_loses_no_acked_message() {
    let mut cluster = RedisCluster::start();
    let pods = pods(&cluster).await;
    let (a, b) = (&pods[0], &pods[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let room = a.room(&alice, "restarted", false).await;
    b.join(&bob, &room).await;
    let mut alice_ws = WsClient::connect(a, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;
    let mut bob_ws = WsClient::connect(b, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    bob_ws.next_of("joined").await;

    let mut last_seen = 0;
    for i in 0..5 {
        send_until_acked(&mut alice_ws, &room, &format!("before {i}")).await;
        let message = bob_ws.next_message().await;
        assert_eq!(message["content"], format!("before {i}"));
        last_seen = message["seq"].as_u64().unwrap();
    }

    // The room's master dies with SIGKILL and comes back while Bob stays
    // connected to the other pod.
    cluster.restart(cluster.node_of(&seq_key(&room)));
    let mut acked = Vec::new();
    for i in 0..5 {
        let ack = send_until_acked(&mut alice_ws, &room, &format!("after {i}")).await;
        acked.push(ack["seq"].as_u64().unwrap());
    }
    assert_eq!(
        acked,
        (last_seen + 1..last_seen + 6).collect::<Vec<_>>(),
        "seq continues without reuse or gap"
    );
    // His pod's sharded subscription came back by itself: every message
    // live, once, in order.
    for i in 0..5 {
        let message = bob_ws.next_message().await;
        assert_eq!(message["content"], format!("after {i}"));
        assert_eq!(message["seq"], last_seen + 1 + i);
    }
    bob_ws.no_message_within(Duration::from_millis(300)).await;

    // A connection that resumes from before the restart gets what the
    // restarted master kept in the room's log.
    let mut again = WsClient::connect(a, &ws_query(&bob, None)).await.unwrap();
    again
        .send(json!({"type": "resume", "room_id": room, "last_seq": last_seen}))
        .await;
    assert_eq!(again.next_of("resumed").await["last_seq"], last_seen + 5);
    for i in 0..5 {
        let message = again.next_message().await;
        assert_eq!(message["content"], format!("after {i}"));
        assert_eq!(message["seq"], last_seen + 1 + i);
    }
    send_until_acked(&mut alice_ws, &room, "live again").await;
    assert_eq!(again.next_message().await["content"], "live again");
    assert_eq!(bob_ws.next_message().await["content"], "live again");

    let stored = history_when_complete(b, &bob, &room, 12).await;
    let expected: Vec<String> = std::iter::once("bob joined the room".to_owned())
        .chain((0..5).map(|i| format!("before {i}")))
        .chain((0..5).map(|i| format!("after {i}")))
        .chain(std::iter::once("live again".to_owned()))
        .collect();
    assert_eq!(stored, expected, "every acked message persisted once");
}
