//! Rooms, membership, privacy and direct rooms.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer, code};
use crate::on_both_stores;

on_both_stores!(
    seed_flow,
    room_list_is_public_rooms_and_mine_paginated,
    private_rooms_are_invisible_to_outsiders,
    owners_and_admins_manage_members,
    owner_deletes_room,
    direct_room_is_created_once_under_concurrency,
    room_input_is_validated,
);

/// The seed's walkthrough: register alice, log in, create "General Discussion",
/// list rooms, read the (empty) history.
async fn seed_flow(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, user) = server
        .post(
            "/api/auth/register",
            None,
            json!({"username": "alice", "email": "alice@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let (status, session) = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": "alice@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 200);
    let token = session["token"].as_str().unwrap();
    assert_eq!(session["user"]["id"], user["id"]);

    let (status, room) = server
        .post("/api/rooms", Some(token), json!({"name": "General Discussion", "description": "Talk about anything", "is_private": false}))
        .await;
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["name"], "General Discussion");
    assert_eq!(room["creator_id"], user["id"]);
    assert_eq!(room["members"], json!([user["id"]]));

    let (status, list) = server.get("/api/rooms", token).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["rooms"][0]["id"], room["id"]);

    let (status, history) = server
        .get(
            &format!(
                "/api/rooms/{}/messages?limit=50&offset=0",
                room["id"].as_str().unwrap()
            ),
            token,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(
        history,
        json!({"messages": [], "total": 0, "offset": 0, "limit": 50})
    );
}

async fn room_list_is_public_rooms_and_mine_paginated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut expected_for_bob = Vec::new();
    for i in 0..5 {
        expected_for_bob.push(server.room(&alice, &format!("public {i}"), false).await);
    }
    let alice_private = server.room(&alice, "alice's secret", true).await;
    let bob_private = server.room(&bob, "bob's secret", true).await;
    expected_for_bob.push(bob_private.clone());

    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let (status, page) = server
            .get(&format!("/api/rooms?limit=2&offset={offset}"), &bob.token)
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 6);
        assert_eq!(
            (page["offset"].as_u64(), page["limit"].as_u64()),
            (Some(offset), Some(2))
        );
        seen.extend(
            page["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(
        seen, expected_for_bob,
        "oldest first, each room once, no one else's private room"
    );
    assert!(!seen.contains(&alice_private));

    for bad in ["limit=0", "limit=101", "limit=x", "offset=-1", "color=red"] {
        let (status, _) = server.get(&format!("/api/rooms?{bad}"), &bob.token).await;
        assert!(status == 400 || status == 422, "{bad} gave {status}");
    }
}

async fn private_rooms_are_invisible_to_outsiders(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let eve = server.user("eve").await;
    let room = server.room(&alice, "secret", true).await;
    let paths = [
        (Method::GET, format!("/api/rooms/{room}")),
        (Method::POST, format!("/api/rooms/{room}/join")),
        (Method::POST, format!("/api/rooms/{room}/leave")),
        (Method::GET, format!("/api/rooms/{room}/messages")),
        (
            Method::POST,
            format!("/api/rooms/{room}/members/{}", eve.id),
        ),
        (
            Method::DELETE,
            format!("/api/rooms/{room}/members/{}", alice.id),
        ),
        (Method::PUT, format!("/api/rooms/{room}/admins/{}", eve.id)),
        (Method::DELETE, format!("/api/rooms/{room}")),
    ];
    for (method, path) in &paths {
        let (status, error) = server
            .call(method.clone(), path, Some(&eve.token), None)
            .await;
        assert_eq!(
            (status, code(&error)),
            (404, "not_found"),
            "{method} {path}"
        );
    }
    // Still there, untouched, for its owner.
    let (status, room_view) = server
        .get(&format!("/api/rooms/{room}"), &alice.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(room_view["members"], json!([alice.id]));

    // Invited, eve sees it and can leave it.
    let (status, _) = server
        .post(
            &format!("/api/rooms/{room}/members/{}", eve.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .get(&format!("/api/rooms/{room}/messages"), &eve.token)
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post(
            &format!("/api/rooms/{room}/leave"),
            Some(&eve.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = server.get(&format!("/api/rooms/{room}"), &eve.token).await;
    assert_eq!(status, 404);
}

async fn owners_and_admins_manage_members(backend: Backend) {
    let server = TestServer::start(backend).await;
    let owner = server.user("owner").await;
    let admin = server.user("admin").await;
    let member = server.user("member").await;
    let outsider = server.user("outsider").await;
    let room = server.room(&owner, "team", false).await;
    let members_path = |user: &str| format!("/api/rooms/{room}/members/{user}");

    let (status, joined) = server.join(&member, &room).await;
    assert_eq!(status, 200);
    assert_eq!(joined["members"], json!([owner.id, member.id]));
    let (status, again) = server.join(&member, &room).await;
    assert_eq!(
        (status, &again["members"]),
        (200, &joined["members"]),
        "joining twice changes nothing"
    );

    // A plain member cannot add people; the owner can, and can make an admin.
    let (status, error) = server
        .post(&members_path(&admin.id), Some(&member.token), json!({}))
        .await;
    assert_eq!((status, code(&error)), (403, "forbidden"));
    let (status, _) = server
        .post(&members_path(&admin.id), Some(&owner.token), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, error) = server
        .call(
            Method::PUT,
            &format!("/api/rooms/{room}/admins/{}", admin.id),
            Some(&member.token),
            None,
        )
        .await;
    assert_eq!((status, code(&error)), (403, "forbidden"));
    let (status, view) = server
        .call(
            Method::PUT,
            &format!("/api/rooms/{room}/admins/{}", admin.id),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["admins"], json!([admin.id]));

    // The admin adds and removes members, but not the owner.
    let (status, _) = server
        .post(&members_path(&outsider.id), Some(&admin.token), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, view) = server
        .delete(&members_path(&outsider.id), &admin.token)
        .await;
    assert_eq!(status, 200);
    assert!(
        !view["members"]
            .as_array()
            .unwrap()
            .contains(&json!(outsider.id))
    );
    let (status, error) = server.delete(&members_path(&owner.id), &admin.token).await;
    assert_eq!((status, code(&error)), (409, "owner_cannot_leave"));
    let (status, error) = server
        .post(
            &members_path("0123456789abcdef01234567"),
            Some(&admin.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&error)),
        (404, "not_found"),
        "adding an unknown user"
    );

    // Owners cannot leave; members can.
    let (status, error) = server
        .post(
            &format!("/api/rooms/{room}/leave"),
            Some(&owner.token),
            json!({}),
        )
        .await;
    assert_eq!((status, code(&error)), (409, "owner_cannot_leave"));
    let (status, _) = server
        .post(
            &format!("/api/rooms/{room}/leave"),
            Some(&member.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let (_, view) = server
        .get(&format!("/api/rooms/{room}"), &owner.token)
        .await;
    assert_eq!(view["members"], json!([owner.id, admin.id]));
}

async fn owner_deletes_room(backend: Backend) {
    let server = TestServer::start(backend).await;
    let owner = server.user("owner").await;
    let member = server.user("member").await;
    let room = server.room(&owner, "doomed", false).await;
    server.join(&member, &room).await;
    let (status, error) = server
        .delete(&format!("/api/rooms/{room}"), &member.token)
        .await;
    assert_eq!((status, code(&error)), (403, "forbidden"));
    let (status, _) = server
        .delete(&format!("/api/rooms/{room}"), &owner.token)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .get(&format!("/api/rooms/{room}"), &owner.token)
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .delete(&format!("/api/rooms/{room}"), &owner.token)
        .await;
    assert_eq!(status, 404);
}

async fn direct_room_is_created_once_under_concurrency(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;

    // Both users race to open the conversation, many times at once.
    let server_ref = &server;
    let requests = (0..16).map(|i| {
        let (from, to) = if i % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        let path = format!("/api/dm/{}", to.id);
        async move { server_ref.post(&path, Some(&from.token), json!({})).await }
    });
    let responses = futures::future::join_all(requests).await;
    let ids: HashSet<String> = responses
        .iter()
        .map(|(status, room)| {
            assert!(*status == 200 || *status == 201, "{status}: {room}");
            room["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "exactly one direct room: {ids:?}");
    assert_eq!(
        responses
            .iter()
            .filter(|(status, _)| *status == 201)
            .count(),
        1,
        "created once"
    );
    let room = &responses[0].1;
    assert_eq!(room["is_private"], true);
    assert_eq!(room["is_direct"], true);
    let members: HashSet<_> = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(members, HashSet::from([alice.id.as_str(), bob.id.as_str()]));

    let id = ids.into_iter().next().unwrap();
    let (status, _) = server.get(&format!("/api/rooms/{id}"), &carol.token).await;
    assert_eq!(status, 404, "a third user cannot see the direct room");
    let (status, error) = server
        .post(
            &format!("/api/rooms/{id}/members/{}", carol.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!((status, code(&error)), (409, "direct_room"));
    let (status, error) = server
        .post(
            &format!("/api/rooms/{id}/leave"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!((status, code(&error)), (409, "direct_room"));

    let (status, error) = server
        .post(
            &format!("/api/dm/{}", alice.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!((status, code(&error)), (422, "validation_failed"));
    let (status, error) = server
        .post(
            "/api/dm/0123456789abcdef01234567",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!((status, code(&error)), (404, "not_found"));
}

async fn room_input_is_validated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    for (body, field) in [
        (json!({"name": "  "}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (
            json!({"name": "ok", "description": "d".repeat(1001)}),
            "description",
        ),
    ] {
        let (status, error) = server
            .post("/api/rooms", Some(&alice.token), body.clone())
            .await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some(field)),
            "{body}"
        );
    }
    let (status, _) = server
        .post(
            "/api/rooms",
            Some(&alice.token),
            json!({"name": {"$gt": ""}}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = server
        .post(
            "/api/rooms",
            Some(&alice.token),
            json!({"name": "x", "is_private": "yes"}),
        )
        .await;
    assert_eq!(status, 422);
}
