//! Redis behind Sentinel: a primary, a replica and three Sentinels, real
//! processes on loopback ports; the primary killed with SIGKILL in the middle
//! of a burst, the replica promoted, the pods finding it through Sentinel by
//! themselves, and the killed primary coming back as a replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::bus::redis::FAILOVER_SEQ_GAP;
use serde_json::Value;

use crate::common::{
    Process, TestServer, WsClient, connect_to, free_port, pod_env, send_until_acked,
    start_redis_with, start_sentinel, stored_once, unique_db_name,
};

/// Messages each of the two senders posts.
const BURST: usize = 80;

struct Topology {
    primary: Process,
    primary_port: u16,
    primary_dir: tempfile::TempDir,
    replica: Process,
    replica_port: u16,
    _sentinels: Vec<Process>,
    sentinel_ports: Vec<u16>,
    dirs: Vec<tempfile::TempDir>,
}

impl Topology {
    /// Starts the servers and waits until the Sentinels agree on the primary,
    /// see its replica and each other (a failover needs a quorum of them).
    async fn start() -> Self {
        let primary_dir = tempfile::tempdir().unwrap();
        let replica_dir = tempfile::tempdir().unwrap();
        let sentinel_dir = tempfile::tempdir().unwrap();
        let (primary_port, replica_port) = (free_port(), free_port());
        let primary = start_redis_with(primary_port, Some(primary_dir.path()), &[]);
        let replica = start_redis_with(
            replica_port,
            Some(replica_dir.path()),
            &["--replicaof", "127.0.0.1", &primary_port.to_string()],
        );
        let sentinels: Vec<Process> = (0..3)
            .map(|_| start_sentinel(primary_port, sentinel_dir.path()))
            .collect();
        let sentinel_ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !replica_online(primary_port).await {
            assert!(Instant::now() < deadline, "the replica never synced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for port in &sentinel_ports {
            loop {
                let quorum = sentinel(*port, &["CKQUORUM", "chat"]).await;
                let replicas = sentinel(*port, &["REPLICAS", "chat"]).await;
                let sees_replica = replicas
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r.to_string().contains("slave")));
                if quorum.as_str().is_some_and(|q| q.starts_with("OK")) && sees_replica {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {port} not ready: {quorum} {replicas}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Self {
            primary,
            primary_port,
            primary_dir,
            replica,
            replica_port,
            _sentinels: sentinels,
            sentinel_ports,
            dirs: vec![replica_dir, sentinel_dir],
        }
    }

    fn sentinels(&self) -> String {
        self.sentinel_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Makes the replica fall behind for `stall`, as a slow network would:
    /// stopped (SIGSTOP), with 32 MiB written to the primary so the kernel's
    /// socket buffers are full and what follows waits in the primary. Then
    /// kills the primary with SIGKILL and lets the replica go on: what the
    /// primary took meanwhile never reaches it. Waits until every Sentinel
    /// names the promoted replica, then starts the old primary again on its
    /// port and data as a replica of the new one, as the operator's Redis
    /// pods do when they start (a server that came back as a primary would
    /// take writes the new primary never sees). With [`Then::FailOverAgain`]
    /// the promoted replica then stops answering until Sentinel has failed
    /// over a second time, to the restarted old primary before it synced.
    /// Waits until the set settles.
    async fn fail_over(&mut self, stall: Duration, then: Then) -> Process {
        self.replica.signal("STOP");
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.primary_port)).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("test:ballast")
            .arg(vec![b'x'; 32 << 20])
            .query_async(&mut connection)
            .await
            .unwrap();
        tokio::time::sleep(stall).await;
        self.primary.kill();
        self.replica.signal("CONT");
        self.named_by_all(self.replica_port).await;
        let old_primary = start_redis_with(
            self.primary_port,
            Some(self.primary_dir.path()),
            &["--replicaof", "127.0.0.1", &self.replica_port.to_string()],
        );
        if then == Then::FailOverAgain {
            self.replica.signal("STOP");
            self.named_by_all(self.primary_port).await;
            self.replica.signal("CONT");
        }
        self.settle().await;
        old_primary
    }

    /// Waits until every Sentinel names the server on `port` as the primary
    /// (30 s: a split vote waits twice the failover timeout to try again).
    async fn named_by_all(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for sentinel_port in &self.sentinel_ports {
            loop {
                let named = primary_named_by(*sentinel_port).await;
                if named == Some(port) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no failover to {port}: sentinel {sentinel_port} names {named:?}\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits until every Sentinel names the same primary and it has a
    /// replica in sync. That is usually the promoted replica; but one that
    /// misses Sentinel's pings for a second on a busy machine is failed over
    /// again (what [`Then::FailOverAgain`] provokes), and so the test goes on
    /// from either.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut named = BTreeSet::new();
            for port in &self.sentinel_ports {
                named.insert(primary_named_by(*port).await);
            }
            if let [Some(primary)] = named.iter().collect::<Vec<_>>()[..]
                && replica_online(*primary).await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the set never settled: Sentinels name {named:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every Redis and Sentinel log of the set, to explain a failure.
    fn logs(&self) -> String {
        let mut logs = String::new();
        for dir in std::iter::once(&self.primary_dir).chain(&self.dirs) {
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for path in entries.flatten().map(|entry| entry.path()) {
                if path.extension().is_some_and(|ext| ext == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    logs.push_str(&format!("==== {}\n{text}", path.display()));
                }
            }
        }
        logs
    }
}

/// What the set goes through after the old primary restarts as a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// It syncs from the promoted replica.
    Rejoin,
    /// Before it has synced, the promoted replica stalls for longer than
    /// Sentinel's down-after time, and Sentinel promotes the old primary,
    /// stale as it is: it picks a replica by priority and offset, not by
    /// whether it ever synced. Nothing acked may be lost this way either: a
    /// pod writes nothing to a primary while its replicas lack the last batch
    /// it wrote (`WAIT` counts none on a primary without a replica).
    FailOverAgain,
}

/// Whether the primary at `port` has a replica in sync.
async fn replica_online(port: u16) -> bool {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    info.contains("state=online")
}

/// The port of the primary the Sentinel on `port` names, if it names one.
async fn primary_named_by(port: u16) -> Option<u16> {
    let named = sentinel(port, &["GET-MASTER-ADDR-BY-NAME", "chat"]).await;
    named[1].as_str().and_then(|p| p.parse().ok())
}

/// A Sentinel command's answer, as JSON (an error as a string).
async fn sentinel(port: u16, args: &[&str]) -> Value {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return Value::Null;
    };
    let answer: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
        .arg(args)
        .query_async(&mut connection)
        .await;
    match answer {
        Ok(value) => to_json(value),
        Err(e) => Value::String(e.to_string()),
    }
}

fn to_json(value: redis::Value) -> Value {
    match value {
        redis::Value::BulkString(bytes) => Value::String(String::from_utf8_lossy(&bytes).into()),
        redis::Value::SimpleString(s) => Value::String(s),
        redis::Value::Okay => Value::String("OK".into()),
        redis::Value::Int(n) => Value::from(n),
        redis::Value::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        redis::Value::Map(pairs) => Value::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [to_json(k), to_json(v)])
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Two pods that find Redis through the Sentinels, acks waiting for
/// `min_replicas`.
async fn pods(topology: &Topology, min_replicas: u32) -> Vec<Arc<TestServer>> {
    let db = unique_db_name();
    let mut pods = Vec::new();
    for i in 0..2 {
        let (mut env, temp) = pod_env(&format!("pod-{i}"), String::new(), &db);
        env.remove("CHAT_REDIS_URL");
        env.insert("CHAT_REDIS_SENTINELS", topology.sentinels());
        env.insert("CHAT_REDIS_MIN_REPLICAS", min_replicas.to_string());
        env.insert("CHAT_REDIS_WAIT_TIMEOUT_MS", "500".into());
        pods.push(Arc::new(TestServer::start_with_env(env, Some(temp)).await));
    }
    pods
}

/// Reads `who`'s frames until every acked message has arrived; asserts each
/// came once, at the seq its ack named, all in seq order, and that no seq
/// ever came with another message. Returns how many other messages came: a
/// message the lost primary published before any replica had it was seen
/// live but never acked (its sender's retry was, at a new seq).
async fn received_acked(ws: &mut WsClient, who: &str, acked: &BTreeMap<u64, String>) -> usize {
    let contents: BTreeSet<&String> = acked.values().collect();
    let mut seen = BTreeSet::new();
    let mut unacked = 0;
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < acked.len() {
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
        last = seq;
        match acked.get(&seq) {
            Some(expected) => {
                assert_eq!(
                    *expected, content,
                    "{who} got seq {seq} for another message than the acked one"
                );
                seen.insert(seq);
            }
            None => {
                assert!(
                    contents.contains(&content),
                    "{who} got {content:?} (seq {seq}), which nobody sent"
                );
                unacked += 1;
            }
        }
    }
    unacked
}

/// Two senders, one per pod, each posting `BURST` messages as fast as acks
/// come (retrying what is refused, as a client does); the primary is killed
/// while they post, and the set goes on as `then` says. Returns every ack's
/// seq and content, and the restarted old primary.
async fn burst_through_failover(
    pods: &[Arc<TestServer>],
    topology: &mut Topology,
    room: &str,
    users: [&crate::common::TestUser; 2],
    then: Then,
) -> (Vec<(u64, String)>, Process) {
    let senders: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(pod, user)| {
            let (pods, user, room) = (pods.to_vec(), user.clone(), room.to_owned());
            tokio::spawn(async move {
                let mut ws = connect_to(&pods[pod], &user, &room).await;
                let mut acked = Vec::new();
                for i in 0..BURST {
                    let content = format!("pod{pod} {i}");
                    let ack = send_until_acked(&mut ws, &room, &content).await;
                    acked.push((ack["seq"].as_u64().unwrap(), content));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let old_primary = topology.fail_over(Duration::from_millis(300), then).await;
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    assert_eq!(acked.len(), 2 * BURST);
    (acked, old_primary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_burst_loses_nothing_acked_and_reuses_no_seq() {
    loses_nothing_acked_and_reuses_no_seq(Then::Rejoin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_failover_to_the_unsynced_old_primary_loses_nothing_acked() {
    loses_nothing_acked_and_reuses_no_seq(Then::FailOverAgain).await;
}

/// Two pods, acks waiting for one replica, a reader on each pod; a burst
/// through the failover. Every acked message reaches both readers once, in
/// seq order, and history once; no seq is acked twice; the room's seqs skip
/// ahead on the new primary.
async fn loses_nothing_acked_and_reuses_no_seq(then: Then) {
    let mut topology = Topology::start().await;
    let pods = pods(&topology, 1).await;
    let alice = pods[0].user("alice").await;
    let bob = pods[0].user("bob").await;
    let room = pods[0].room(&alice, "failover", false).await;
    pods[0].join(&bob, &room).await;
    let mut alice_rx = connect_to(&pods[0], &alice, &room).await;
    let mut bob_rx = connect_to(&pods[1], &bob, &room).await;

    let (acks, _old_primary) =
        burst_through_failover(&pods, &mut topology, &room, [&alice, &bob], then).await;
    let mut acked = BTreeMap::new();
    for (seq, content) in acks {
        assert!(
            acked.insert(seq, content).is_none(),
            "seq {seq} acked for two messages"
        );
    }

    let unacked = received_acked(&mut alice_rx, "alice", &acked).await;
    received_acked(&mut bob_rx, "bob", &acked).await;
    let contents: BTreeSet<String> = acked.values().cloned().collect();
    let stored = stored_once(&pods[1].base, &bob, &room, acked.len()).await;
    assert_eq!(stored, contents, "history differs from what was acked");
    // The room's seq went on from above everything the old primary handed
    // out: a new message after the failover gets the next one.
    let newest = *acked.keys().last().unwrap();
    let mut ws = connect_to(&pods[1], &bob, &room).await;
    let after = send_until_acked(&mut ws, &room, "after the failover").await;
    assert_eq!(after["seq"].as_u64(), Some(newest + 1));
    let before = acked.keys().filter(|seq| **seq < FAILOVER_SEQ_GAP).count();
    assert!(
        before > 0 && before < acked.len(),
        "the room's seqs did not skip ahead on the new primary: {before} of {} below the gap",
        acked.len()
    );
    eprintln!(
        "failover ({then:?}): {} acked ({before} before it), seqs {}..={newest}, {unacked} seen live but never acked",
        acked.len(),
        acked.keys().next().unwrap()
    );
}

/// The same failover with acks on the primary alone (`CHAT_REDIS_MIN_REPLICAS=0`):
/// what Redis had not replicated when the primary died is lost although its
/// client was told it was stored. Run by hand to see it (the loss depends on
/// timing, so it is reported, not asserted):
/// `cargo test -p chat-server --test cluster -- --ignored redis_failover::without`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand"]
async fn without_waiting_for_replicas_a_failover_loses_acked_messages() {
    let mut topology = Topology::start().await;
    let pods = pods(&topology, 0).await;
    let alice = pods[0].user("alice").await;
    let bob = pods[0].user("bob").await;
    let room = pods[0].room(&alice, "failover", false).await;
    pods[0].join(&bob, &room).await;
    let (acked, _old_primary) =
        burst_through_failover(&pods, &mut topology, &room, [&alice, &bob], Then::Rejoin).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stored = BTreeSet::new();
    let mut before = String::new();
    loop {
        let (_, page) = pods[0]
            .get(
                &format!("/api/rooms/{room}/messages?limit=100{before}"),
                &bob.token,
            )
            .await;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        stored.extend(
            messages
                .iter()
                .filter_map(|m| m["content"].as_str().map(str::to_owned)),
        );
        match messages.iter().filter_map(|m| m["seq"].as_u64()).min() {
            Some(oldest) if messages.len() == 100 => before = format!("&before_seq={oldest}"),
            _ => break,
        }
    }
    let lost: Vec<_> = acked.iter().filter(|(_, c)| !stored.contains(c)).collect();
    let mut by_seq: BTreeMap<u64, Vec<&String>> = BTreeMap::new();
    for (seq, content) in &acked {
        by_seq.entry(*seq).or_default().push(content);
    }
    let reused: Vec<_> = by_seq.iter().filter(|(_, c)| c.len() > 1).collect();
    eprintln!(
        "without WAIT: {} acked, {} not in history: {lost:?}; {} seqs acked for two messages: {reused:?}",
        acked.len(),
        lost.len(),
        reused.len()
    );
}

/// A pod whose Redis became a replica under it (a primary demoted, or a
/// Service URL that reaches a replica while a cluster moves to Sentinels)
/// answers its clients `unavailable`, which they retry, never `internal`.
#[tokio::test]
async fn a_pod_whose_redis_became_a_replica_answers_unavailable() {
    let (primary_port, other_port) = (free_port(), free_port());
    let _primary = start_redis_with(primary_port, None, &[]);
    let _other = start_redis_with(other_port, None, &[]);
    let db = unique_db_name();
    let (env, temp) = pod_env("pod-0", format!("redis://127.0.0.1:{primary_port}"), &db);
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "demoted", false).await;
    let mut ws = connect_to(&server, &alice, &room).await;
    send_until_acked(&mut ws, &room, "before").await;

    let client = redis::Client::open(format!("redis://127.0.0.1:{primary_port}")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(other_port)
        .query_async(&mut connection)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replica_online(other_port).await {
        assert!(
            Instant::now() < deadline,
            "the demoted primary never synced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..3 {
        let answer = crate::common::acked(
            &mut ws,
            serde_json::json!({"type": "message", "room_id": room, "content": format!("after {n}"), "client_id": format!("after-{n}")}),
        )
        .await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "unavailable", "{answer}");
    }
}
