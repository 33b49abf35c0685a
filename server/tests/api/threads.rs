//! Threads: a reply names its parent; it travels in the room's stream like
//! any message, the parent counts its replies in history, and the thread
//! reads as a page of its own.

use serde_json::json;

use crate::common::{Backend, TestServer, acked, connect_to};
use crate::on_both_stores;

on_both_stores!(replies_travel_live_and_the_parent_counts_them);

async fn replies_travel_live_and_the_parent_counts_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let room = server.room(&alice, "threads", false).await;
    server.join(&bob, &room).await;
    let mut alice_ws = connect_to(&server, &alice, &room).await;
    let mut bob_ws = connect_to(&server, &bob, &room).await;

    let message = |content: &str, reply_to: Option<u64>| json!({"type": "message", "room_id": room, "content": content, "reply_to": reply_to});
    let question = acked(&mut alice_ws, message("question?", None)).await["seq"]
        .as_u64()
        .unwrap();
    let reply = acked(&mut bob_ws, message("answer!", Some(question))).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let live = loop {
        let frame = alice_ws.next_of("text").await;
        if frame["content"] == "answer!" {
            break frame;
        }
    };
    assert_eq!(live["reply_to"], question);

    // One level: no reply to a reply, nor to what is not a message here.
    for parent in [reply["seq"].as_u64().unwrap(), 999_999] {
        let refused = acked(&mut bob_ws, message("nested", Some(parent))).await;
        assert_eq!(refused["code"], "not_found", "{refused}");
    }
    acked(&mut alice_ws, message("main line goes on", None)).await;

    // The room's pages list the parent with its count, not the reply.
    let (status, page) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(status, 200, "{page}");
    let contents: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "text")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["question?", "main line goes on"]);
    let parent = &page["messages"].as_array().unwrap()[1];
    assert_eq!(parent["reply_count"], 1, "{page}");

    // The thread is a page of its own.
    let (status, thread) = server
        .get(
            &format!("/api/rooms/{room}/messages?thread={question}"),
            &bob.token,
        )
        .await;
    assert_eq!(status, 200, "{thread}");
    assert_eq!(thread["total"], 1);
    assert_eq!(thread["messages"][0]["content"], "answer!");
    assert_eq!(thread["messages"][0]["reply_to"], question);
}
