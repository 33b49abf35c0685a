//! Room history: pagination, seq order, idempotent writes, and durability
//! across a server restart. Messages are written through the store, as the
//! real-time path does.

use chat_server::model::{Id, Message, MessageKind};
use chat_server::store::Inserted;
use serde_json::{Value, json};

use crate::common::{Backend, TestServer, env_for};
use crate::on_both_stores;

on_both_stores!(
    history_pages_by_offset_and_before_seq,
    message_writes_are_idempotent,
    concurrent_writes_are_each_stored_once,
    history_survives_a_restart,
    numbers_past_what_stores_hold_are_clamped
);

/// `offset` and `before_seq` above 2^63 (where MongoDB's numbers end) mean
/// "past the end" and "before everything", never an error.
async fn numbers_past_what_stores_hold_are_clamped(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "big numbers", false).await;
    let huge = u64::MAX;
    let (status, page) = server
        .get(
            &format!("/api/rooms/{room}/messages?offset={huge}"),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], serde_json::json!([]));
    let (status, page) = server
        .get(
            &format!("/api/rooms/{room}/messages?before_seq={huge}"),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = server
        .get(&format!("/api/rooms?offset={huge}"), &alice.token)
        .await;
    assert_eq!(status, 200, "{page}");
}

fn message(room: &str, user: &str, seq: u64) -> Message {
    let kind = if seq.is_multiple_of(10) {
        MessageKind::System
    } else {
        MessageKind::Text
    };
    let (room, user) = (room.parse().unwrap(), user.parse().unwrap());
    Message {
        seq,
        ..Message::new(kind, room, user, "alice".into(), format!("message {seq}"))
    }
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

async fn history_pages_by_offset_and_before_seq(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "busy", false).await;
    let other_room = server.room(&alice, "other", false).await;
    for seq in 1..=25 {
        assert_eq!(
            server
                .state
                .store
                .insert_message(&message(&room, &alice.id, seq), None)
                .await
                .unwrap(),
            Inserted::New
        );
    }
    server
        .state
        .store
        .insert_message(&message(&other_room, &alice.id, 1), None)
        .await
        .unwrap();
    let store = &server.state.store;
    assert_eq!(store.newest_seq(room.parse().unwrap()).await.unwrap(), 25);
    assert_eq!(
        store.newest_seq(other_room.parse().unwrap()).await.unwrap(),
        1
    );
    assert_eq!(
        store
            .newest_seq(chat_server::model::Id::new())
            .await
            .unwrap(),
        0
    );

    let (status, latest) = server
        .get(
            &format!("/api/rooms/{room}/messages?limit=10"),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(
        seqs(&latest),
        (16..=25).collect::<Vec<_>>(),
        "the newest page, oldest first"
    );
    assert_eq!(
        (
            latest["total"].as_u64(),
            latest["offset"].as_u64(),
            latest["limit"].as_u64()
        ),
        (Some(25), Some(0), Some(10))
    );

    let first = &latest["messages"][0];
    assert_eq!(first["type"], "text");
    assert_eq!(first["room_id"], room);
    assert_eq!(first["user_id"], alice.id);
    assert_eq!(first["username"], "alice");
    assert_eq!(first["content"], "message 16");
    assert!(
        first["timestamp"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC: {first}"
    );
    assert_eq!(latest["messages"][4]["type"], "system");

    let (_, older) = server
        .get(
            &format!("/api/rooms/{room}/messages?limit=10&offset=10"),
            &alice.token,
        )
        .await;
    assert_eq!(seqs(&older), (6..=15).collect::<Vec<_>>());
    let (_, oldest) = server
        .get(
            &format!("/api/rooms/{room}/messages?limit=10&offset=20"),
            &alice.token,
        )
        .await;
    assert_eq!(seqs(&oldest), (1..=5).collect::<Vec<_>>());
    let (_, beyond) = server
        .get(
            &format!("/api/rooms/{room}/messages?offset=100"),
            &alice.token,
        )
        .await;
    assert_eq!(seqs(&beyond), Vec::<u64>::new());

    let (_, before) = server
        .get(
            &format!("/api/rooms/{room}/messages?before_seq=16&limit=5"),
            &alice.token,
        )
        .await;
    assert_eq!(seqs(&before), (11..=15).collect::<Vec<_>>());
    let (_, start) = server
        .get(
            &format!("/api/rooms/{room}/messages?before_seq=3"),
            &alice.token,
        )
        .await;
    assert_eq!(seqs(&start), vec![1, 2]);

    let (status, _) = server
        .get(
            &format!("/api/rooms/{room}/messages?before_seq=3&offset=1"),
            &alice.token,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .get(
            &format!("/api/rooms/{room}/messages?before_seq=abc"),
            &alice.token,
        )
        .await;
    assert_eq!(status, 400);

    // Public history can be read before joining; deleting the room removes it.
    let bob = server.user("bob").await;
    let (status, _) = server
        .get(&format!("/api/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(status, 200);
    server
        .delete(&format!("/api/rooms/{room}"), &alice.token)
        .await;
    let page = server
        .state
        .store
        .messages(
            room.parse().unwrap(),
            chat_server::model::HistoryQuery::Latest {
                offset: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!((page.total, page.messages.len()), (0, 0));
}

async fn message_writes_are_idempotent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "retries", false).await;
    let original = message(&room, &alice.id, 1);
    assert_eq!(
        server
            .state
            .store
            .insert_message(&original, None)
            .await
            .unwrap(),
        Inserted::New
    );
    // A retried write of seq 1 (even with another id) stores nothing new.
    let retry = Message {
        id: Id::new(),
        content: "changed".into(),
        ..original.clone()
    };
    match server
        .state
        .store
        .insert_message(&retry, None)
        .await
        .unwrap()
    {
        Inserted::Existing(existing) => assert_eq!(*existing, original),
        other => panic!("a second message with seq 1 was stored: {other:?}"),
    }
    let (_, page) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["messages"][0]["content"], "message 1");
}

/// Many writers at once, as under load (the embedded store commits them in
/// groups): every message is stored once, a concurrent retry of the same seq
/// gets the stored copy back, and each room's history is complete and in order.
async fn concurrent_writes_are_each_stored_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let mut rooms = Vec::new();
    for name in ["one", "two", "three"] {
        rooms.push(server.room(&alice, name, false).await);
    }
    let mut writes = tokio::task::JoinSet::new();
    for room in &rooms {
        for seq in 1..=40 {
            // Seqs divisible by 4 are written twice at once with different ids.
            let copies = if seq % 4 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                let store = server.state.store.clone();
                let message = message(room, &alice.id, seq);
                writes.spawn(async move {
                    let outcome = store.insert_message(&message, None).await.unwrap();
                    (message, outcome)
                });
            }
        }
    }
    let mut stored: std::collections::HashMap<(Id, u64), Vec<(Message, Inserted)>> =
        std::collections::HashMap::new();
    while let Some(joined) = writes.join_next().await {
        let (message, outcome) = joined.unwrap();
        stored
            .entry((message.room_id, message.seq))
            .or_default()
            .push((message, outcome));
    }
    assert_eq!(stored.len(), rooms.len() * 40);
    for ((_, seq), outcomes) in &stored {
        let new: Vec<&Message> = outcomes
            .iter()
            .filter(|(_, o)| *o == Inserted::New)
            .map(|(m, _)| m)
            .collect();
        assert_eq!(new.len(), 1, "seq {seq}: {outcomes:?}");
        for (_, outcome) in outcomes {
            if let Inserted::Existing(existing) = outcome {
                assert_eq!(existing.id, new[0].id, "the retry gets the stored copy");
            }
        }
    }
    for room in &rooms {
        let (status, page) = server
            .get(
                &format!("/api/rooms/{room}/messages?limit=100"),
                &alice.token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 40);
        assert_eq!(seqs(&page), (1..=40).collect::<Vec<u64>>());
    }
}

async fn history_survives_a_restart(backend: Backend) {
    let (env, temp) = env_for(backend);
    let server = TestServer::start_with_env(env.clone(), Some(temp)).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "durable", true).await;
    for seq in 1..=3 {
        server
            .state
            .store
            .insert_message(&message(&room, &alice.id, seq), None)
            .await
            .unwrap();
    }
    let temp = server.stop().await;

    let server = TestServer::start_with_env(env, temp).await;
    // The old token still works: the embedded signing key is kept in the data dir.
    let (status, page) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    let (status, session) = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": "alice@example.com", "password": "password-alice"}),
        )
        .await;
    assert_eq!(status, 200, "the account survived: {session}");
    let (status, rooms) = server.get("/api/rooms", &alice.token).await;
    assert_eq!((status, rooms["total"].as_u64()), (200, Some(1)));
}
