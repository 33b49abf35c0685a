//! @mentions: resolved to members when a message is posted, carried by the
//! message live and in history; `@room` only from the room's owner or admins.

use serde_json::{Value, json};

use crate::common::{Backend, TestServer, WsClient, connect_to};
use crate::on_both_stores;

on_both_stores!(mentions_name_members_and_room_calls_need_a_manager);

async fn post(ws: &mut WsClient, room: &str, content: &str) -> Value {
    ws.send(json!({"type": "message", "room_id": room, "content": content}))
        .await;
    loop {
        let frame = ws.next().await;
        if frame["type"] == "text" && frame["content"] == content {
            return frame;
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

async fn mentions_name_members_and_room_calls_need_a_manager(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    // Carol exists but is not in the room: her name is no mention.
    let _carol = server.user("carol").await;
    let room = server.room(&alice, "team", false).await;
    server.join(&bob, &room).await;
    let mut alice_ws = connect_to(&server, &alice, &room).await;
    let mut bob_ws = connect_to(&server, &bob, &room).await;

    // Carol is not in the room, Alice does not mention herself; the owner may call the room.
    let message = post(
        &mut alice_ws,
        &room,
        "hi @Bob, @carol and @alice: @room, see bob@example.com",
    )
    .await;
    assert_eq!(message["mentions"], json!([bob.id]), "{message}");
    assert_eq!(message["mentions_room"], true, "{message}");
    let seen = bob_ws.next_of("text").await;
    assert_eq!(seen["mentions"], json!([bob.id]));

    // A member who does not manage the room cannot call it; no names, no field.
    let message = post(&mut bob_ws, &room, "@room anyone? mail alice@example.com").await;
    assert!(message.get("mentions_room").is_none(), "{message}");
    assert!(message.get("mentions").is_none(), "{message}");

    // History keeps them.
    let (_, page) = server
        .get(&format!("/api/rooms/{room}/messages"), &bob.token)
        .await;
    let first = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("hi @Bob"))
        })
        .cloned()
        .unwrap();
    assert_eq!(first["mentions"], json!([bob.id]));
    assert_eq!(first["mentions_room"], true);
}
