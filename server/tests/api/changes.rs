//! Edits and deletions: changes with seqs of their own in the room's stream,
//! so live delivery, acks, dedupe, resume and history carry them.

use serde_json::{Value, json};

use crate::common::{Backend, TestServer, WsClient, acked, ws_query};
use crate::on_both_stores;

on_both_stores!(edits_and_deletions_go_live_replay_on_resume_and_show_in_history);

async fn open(ws: &mut WsClient, room: &str) -> u64 {
    ws.send(json!({"type": "join", "room_id": room})).await;
    ws.next_of("joined").await["last_seq"].as_u64().unwrap()
}

/// The next frame of one of the stream's kinds (text, edit, delete).
async fn next_in_stream(ws: &mut WsClient) -> Value {
    loop {
        let frame = ws.next().await;
        assert!(frame.get("closed").is_none(), "closed: {frame}");
        if matches!(frame["type"].as_str(), Some("text" | "edit" | "delete")) {
            return frame;
        }
    }
}

async fn edits_and_deletions_go_live_replay_on_resume_and_show_in_history(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    // Carol only watches: her connection sees every frame of the stream
    // (a sender's own copy may come before its ack, which `acked` skips).
    let carol = server.user("carol").await;
    let room = server.room(&alice, "edits", false).await;
    server.join(&bob, &room).await;
    server.join(&carol, &room).await;
    let mut carol_ws = WsClient::connect(&server, &ws_query(&carol, None))
        .await
        .unwrap();
    open(&mut carol_ws, &room).await;
    let mut alice_ws = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    open(&mut alice_ws, &room).await;
    open(&mut bob_ws, &room).await;

    let post = |content: &str| json!({"type": "message", "room_id": room, "content": content});
    let original = acked(&mut alice_ws, post("helo")).await["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(next_in_stream(&mut carol_ws).await["content"], "helo");

    // An edit: acked with a seq of its own, delivered to everyone live.
    let edit = json!({"type": "edit", "room_id": room, "seq": original, "content": "hello", "client_id": "e1"});
    let ack = acked(&mut alice_ws, edit.clone()).await;
    let edit_seq = ack["seq"].as_u64().unwrap_or_else(|| panic!("{ack}"));
    assert!(edit_seq > original, "{ack}");
    for ws in [&mut bob_ws, &mut carol_ws] {
        let frame = ws.next_of("edit").await;
        assert_eq!(frame["type"], "edit");
        assert_eq!(frame["target_seq"], original);
        assert_eq!(frame["content"], "hello");
        assert_eq!(frame["seq"], edit_seq);
    }
    // Retried with its client_id: the same change, not a second one.
    assert_eq!(acked(&mut alice_ws, edit).await["seq"], edit_seq);

    // What others may not do, and what does not exist.
    let refusals = [
        (
            json!({"type": "edit", "room_id": room, "seq": original, "content": "mine now"}),
            "forbidden",
        ),
        (
            json!({"type": "delete", "room_id": room, "seq": original}),
            "forbidden",
        ),
        (
            json!({"type": "edit", "room_id": room, "seq": 999_999, "content": "x"}),
            "not_found",
        ),
        // The change itself, and the system message of Bob's join, are not messages to edit.
        (
            json!({"type": "delete", "room_id": room, "seq": edit_seq}),
            "not_found",
        ),
        (
            json!({"type": "edit", "room_id": room, "seq": original, "content": " "}),
            "empty_message",
        ),
        (
            json!({"type": "edit", "room_id": room, "seq": "1", "content": "x"}),
            "invalid_frame",
        ),
    ];
    for (frame, expected) in refusals {
        let answer = acked(&mut bob_ws, frame.clone()).await;
        assert_eq!(answer["type"], "error", "{frame} -> {answer}");
        assert_eq!(answer["code"], expected, "{frame} -> {answer}");
    }

    // Reactions: a set per emoji, live for everyone; a bad emoji is refused.
    let react = |kind: &str, emoji: &str| json!({"type": kind, "room_id": room, "seq": original, "emoji": emoji});
    assert_eq!(
        acked(&mut bob_ws, react("react", "👍")).await["type"],
        "ack"
    );
    assert_eq!(
        acked(&mut alice_ws, react("react", "👍")).await["type"],
        "ack"
    );
    assert_eq!(
        acked(&mut alice_ws, react("react", "🎉")).await["type"],
        "ack"
    );
    assert_eq!(
        acked(&mut alice_ws, react("unreact", "🎉")).await["type"],
        "ack"
    );
    let frame = carol_ws.next_of("react").await;
    assert_eq!(
        (frame["content"].as_str(), frame["target_seq"].as_u64()),
        (Some("👍"), Some(original))
    );
    assert_eq!(frame["user_id"], bob.id.as_str());
    let refused = acked(&mut bob_ws, react("react", "lol")).await;
    assert_eq!(refused["code"], "invalid_frame", "{refused}");

    // Bob deletes his own message; Alice, the owner, deletes another of his.
    let oops = acked(&mut bob_ws, post("oops")).await["seq"]
        .as_u64()
        .unwrap();
    let rude = acked(&mut bob_ws, post("rude")).await["seq"]
        .as_u64()
        .unwrap();
    let deleted = acked(
        &mut bob_ws,
        json!({"type": "delete", "room_id": room, "seq": oops}),
    )
    .await;
    assert_eq!(deleted["type"], "ack", "{deleted}");
    let removed = acked(
        &mut alice_ws,
        json!({"type": "delete", "room_id": room, "seq": rude}),
    )
    .await;
    assert_eq!(removed["type"], "ack", "{removed}");
    let mut deletions = Vec::new();
    while deletions.len() < 2 {
        let frame = next_in_stream(&mut carol_ws).await;
        if frame["type"] == "delete" {
            assert_eq!(frame["content"], "");
            deletions.push(frame["target_seq"].as_u64().unwrap());
        }
    }
    assert_eq!(deletions, [oops, rude]);
    let last_seen = removed["seq"].as_u64().unwrap();

    // Bob goes away; Alice edits again; Bob resumes and gets the edit.
    bob_ws.close().await;
    let again = acked(
        &mut alice_ws,
        json!({"type": "edit", "room_id": room, "seq": original, "content": "hello!"}),
    )
    .await;
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    bob_ws
        .send(json!({"type": "resume", "room_id": room, "last_seq": last_seen}))
        .await;
    bob_ws.next_of("resumed").await;
    let replayed = next_in_stream(&mut bob_ws).await;
    assert_eq!(replayed["type"], "edit");
    assert_eq!(replayed["seq"], again["seq"]);
    assert_eq!(replayed["content"], "hello!");

    // History: messages as they are now, changes folded in, not listed.
    let (status, page) = server
        .get(&format!("/api/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(status, 200, "{page}");
    let messages = page["messages"].as_array().unwrap();
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["system", "system", "text", "text", "text"],
        "{page}"
    );
    assert_eq!(page["total"], 5, "{page}");
    let by_seq = |seq: u64| messages.iter().find(|m| m["seq"] == seq).unwrap();
    assert_eq!(by_seq(original)["content"], "hello!");
    let thumbs: Vec<&str> = by_seq(original)["reactions"]["👍"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(thumbs, [bob.id.as_str(), alice.id.as_str()]);
    assert!(
        by_seq(original)["reactions"].get("🎉").is_none(),
        "taken back"
    );
    assert!(by_seq(original)["edited_at"].is_string());
    for seq in [oops, rude] {
        assert_eq!(by_seq(seq)["deleted"], true);
        assert_eq!(by_seq(seq)["content"], "");
    }
}
