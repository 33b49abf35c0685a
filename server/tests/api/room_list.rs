//! The room list follows live: a room appearing in (or leaving) a user's
//! list reaches their open connections as `room_added` / `room_removed`,
//! on every pod, and only theirs (a private room never reaches outsiders).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::common::{Backend, TestServer, TestUser, WsClient, ws_query};
use crate::on_both_stores;

on_both_stores!(rooms_appear_and_go_live_for_exactly_who_sees_them);

async fn connect(server: &TestServer, user: &TestUser) -> WsClient {
    WsClient::connect(server, &ws_query(user, None))
        .await
        .unwrap()
}

/// The next room-list frame, of `kind`.
async fn next_room_frame(ws: &mut WsClient, kind: &str) -> Value {
    let frame = ws.next_of(kind).await;
    assert_eq!(frame["type"], kind, "{frame}");
    frame
}

async fn rooms_appear_and_go_live_for_exactly_who_sees_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let mut bob_ws = connect(&server, &bob).await;
    let mut carol_ws = connect(&server, &carol).await;
    // Alice's other tab sees her own changes too.
    let mut alice_ws = connect(&server, &alice).await;

    // A public room: everyone's list.
    let public = server.room(&alice, "lobby", false).await;
    for ws in [&mut bob_ws, &mut carol_ws, &mut alice_ws] {
        let frame = next_room_frame(ws, "room_added").await;
        assert_eq!(frame["room"]["id"], public.as_str());
        assert_eq!(frame["room"]["name"], "lobby");
    }

    // A private room: only its creator's list, then the member added.
    let private = server.room(&alice, "secret", true).await;
    let frame = next_room_frame(&mut alice_ws, "room_added").await;
    assert_eq!(frame["room"]["id"], private.as_str());
    let (status, _) = server
        .post(
            &format!("/api/rooms/{private}/members/{}", bob.id),
            Some(&alice.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let frame = next_room_frame(&mut bob_ws, "room_added").await;
    assert_eq!(frame["room"]["id"], private.as_str());
    assert_eq!(frame["room"]["is_private"], true);

    // Renamed by its owner: everyone who lists it sees the new name; a
    // member who does not manage it may not, nor may an outsider of a
    // private room (which stays invisible to them).
    let rename = |name: &str| serde_json::json!({"name": name, "description": "all hands"});
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/api/rooms/{public}"),
            Some(&alice.token),
            Some(rename("town square")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "town square");
    for ws in [&mut bob_ws, &mut carol_ws, &mut alice_ws] {
        let frame = next_room_frame(ws, "room_updated").await;
        assert_eq!(frame["room"]["name"], "town square");
        assert_eq!(frame["room"]["description"], "all hands");
    }
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/api/rooms/{public}"),
            Some(&bob.token),
            Some(rename("mine now")),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/api/rooms/{private}"),
            Some(&carol.token),
            Some(rename("x")),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/api/rooms/{public}"),
            Some(&alice.token),
            Some(serde_json::json!({"name": "   "})),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // A direct room: both people, once.
    let (status, dm) = server
        .post(
            &format!("/api/dm/{}", carol.id),
            Some(&alice.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 201);
    let frame = next_room_frame(&mut carol_ws, "room_added").await;
    assert_eq!(frame["room"]["id"], dm["id"]);
    assert_eq!(frame["room"]["is_direct"], true);
    let frame = next_room_frame(&mut alice_ws, "room_added").await;
    assert_eq!(frame["room"]["id"], dm["id"]);
    let (status, _) = server
        .post(
            &format!("/api/dm/{}", carol.id),
            Some(&alice.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "the direct room already exists");
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/api/rooms/{}", dm["id"].as_str().unwrap()),
            Some(&alice.token),
            Some(rename("us")),
        )
        .await;
    assert_eq!(status, 409, "a direct room keeps its name");

    // Bob removed from the private room: it leaves his list.
    let (status, _) = server
        .delete(
            &format!("/api/rooms/{private}/members/{}", bob.id),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200);
    let frame = next_room_frame(&mut bob_ws, "room_removed").await;
    assert_eq!(frame["room_id"], private.as_str());

    // The public room deleted: everyone's list.
    let (status, _) = server
        .delete(&format!("/api/rooms/{public}"), &alice.token)
        .await;
    assert_eq!(status, 204);
    for ws in [&mut bob_ws, &mut carol_ws] {
        let frame = next_room_frame(ws, "room_removed").await;
        assert_eq!(frame["room_id"], public.as_str());
    }

    // Carol saw nothing of the private room nor of a second direct room she
    // is not in; the next frame she gets is the one made after them.
    let (status, _) = server
        .post(
            &format!("/api/dm/{}", bob.id),
            Some(&alice.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 201);
    let marker = server.room(&bob, "after", false).await;
    let mut seen = Vec::new();
    loop {
        let frame = carol_ws.next().await;
        if frame["type"] == "room_added" && frame["room"]["id"] == marker.as_str() {
            break;
        }
        seen.push(frame);
    }
    let leaked: Vec<&Value> = seen
        .iter()
        .filter(|f| f["type"].as_str().is_some_and(|t| t.starts_with("room_")))
        .collect();
    assert!(
        leaked.is_empty(),
        "carol was told of rooms not hers: {leaked:?}"
    );
    carol_ws.no_message_within(Duration::from_millis(200)).await;
}
