//! The WebSocket protocol over real TCP: authentication before the upgrade,
//! delivery, acks, retries, resume without gap or duplicate, rate limits and
//! bad input.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Backend, JWT_SECRET, TestServer, WsClient, code, env_for, ws_query};
use crate::on_both_stores;

on_both_stores!(
    last_seen_is_recorded_when_the_last_connection_closes,
    seed_client_chats_live,
    retries_with_a_client_id_store_once,
    resume_replays_exactly_what_was_missed,
    membership_rules_apply_to_frames,
    typing_read_presence_and_sessions,
);

/// The seed's client: connect with `?token=..&room_id=..`, send
/// `{"type":"message","room_id","content"}`, receive the message with
/// `username` and `content`.
async fn seed_client_chats_live(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let room = server.room(&alice, "General Discussion", false).await;

    let mut alice_ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    let joined = alice_ws.next_of("joined").await;
    assert_eq!(
        joined,
        json!({"type": "joined", "room_id": room, "last_seq": 0})
    );

    // Bob is not a member yet: connecting with room_id joins the public room.
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    let system = alice_ws.next_message().await;
    assert_eq!(
        (system["type"].as_str(), system["content"].as_str()),
        (Some("system"), Some("bob joined the room"))
    );
    assert_eq!(
        (system["seq"].as_u64(), system["user_id"].as_str()),
        (Some(1), Some(bob.id.as_str()))
    );
    assert_eq!(bob_ws.next_of("joined").await["last_seq"], 1);

    alice_ws
        .send(json!({"type": "message", "room_id": room, "content": "hello bob"}))
        .await;
    let received = bob_ws.next_message().await;
    assert_eq!(received["type"], "text");
    assert_eq!(received["username"], "alice");
    assert_eq!(received["content"], "hello bob");
    assert_eq!(received["room_id"], room);
    assert_eq!(received["user_id"], alice.id);
    assert_eq!(received["seq"], 2);
    assert_eq!(received["id"].as_str().unwrap().len(), 24);
    assert!(received["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        alice_ws.next_message().await,
        received,
        "the sender sees its own message too"
    );
    let ack = alice_ws.next_of("ack").await;
    assert_eq!(
        ack,
        json!({"type": "ack", "client_id": null, "room_id": room, "id": received["id"], "seq": 2})
    );

    bob_ws.send(json!({"type": "message", "room_id": room, "content": "  hi alice\u{7}  ", "client_id": "b-1"})).await;
    let reply = alice_ws.next_message().await;
    assert_eq!(
        (reply["content"].as_str(), reply["seq"].as_u64()),
        (Some("hi alice"), Some(3))
    );

    // Everything sent live is in the history, system message included.
    let (status, history) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(status, 200);
    let contents: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["bob joined the room", "hello bob", "hi alice"]);
}

/// Retries with one `client_id` store one message: in a row, at the same time
/// on two connections, and after the server restarted (single-server dedupe
/// is kept in the store with the message).
async fn retries_with_a_client_id_store_once(backend: Backend) {
    let (env, temp) = crate::common::env_for(backend);
    let server = TestServer::start_with_env(env.clone(), Some(temp)).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "retries", false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    let frame = json!({"type": "message", "room_id": room, "content": "once", "client_id": "c-42"});
    ws.send(frame.clone()).await;
    let first = ws.next_of("ack").await;
    ws.send(frame.clone()).await;
    let second = ws.next_of("ack").await;
    assert_eq!(first, second, "the retry is acked with the same id and seq");
    assert_eq!(first["client_id"], "c-42");

    let mut other = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    other.next_of("joined").await;
    let twice =
        json!({"type": "message", "room_id": room, "content": "twice?", "client_id": "c-43"});
    ws.send(twice.clone()).await;
    other.send(twice).await;
    let (a, b) = (ws.next_of("ack").await, other.next_of("ack").await);
    assert_eq!(a["seq"], b["seq"], "concurrent retries became two messages");
    drop((ws, other));

    let temp = server.stop().await;
    let server = TestServer::start_with_env(env, temp).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    ws.send(frame).await;
    let after_restart = ws.next_of("ack").await;
    assert_eq!(
        after_restart["seq"], first["seq"],
        "the retry after a restart was stored again"
    );
    let (_, history) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(history["total"], 2, "{history}");
}

async fn resume_replays_exactly_what_was_missed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let room = server.room(&alice, "resumable", false).await;
    server.join(&bob, &room).await;
    let mut alice_ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;

    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    let last_seen = bob_ws.next_of("joined").await["last_seq"].as_u64().unwrap();
    drop(bob_ws);

    for i in 0..5 {
        alice_ws
            .send(json!({"type": "message", "room_id": room, "content": format!("missed {i}")}))
            .await;
        alice_ws.next_of("ack").await;
    }

    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    bob_ws
        .send(json!({"type": "resume", "room_id": room, "last_seq": last_seen}))
        .await;
    // Live traffic while the replay is read must neither jump ahead nor repeat.
    alice_ws
        .send(json!({"type": "message", "room_id": room, "content": "live"}))
        .await;
    let resumed = bob_ws.next_of("resumed").await;
    assert_eq!(resumed["from_seq"], last_seen);
    let mut seqs = Vec::new();
    let mut contents = Vec::new();
    for _ in 0..6 {
        let message = bob_ws.next_message().await;
        seqs.push(message["seq"].as_u64().unwrap());
        contents.push(message["content"].as_str().unwrap().to_owned());
    }
    let expected: Vec<u64> = (last_seen + 1..=last_seen + 6).collect();
    assert_eq!(seqs, expected, "{contents:?}");
    assert_eq!(contents.last().map(String::as_str), Some("live"));
    bob_ws.no_message_within(Duration::from_millis(300)).await;

    // Live delivery goes on after the resume.
    alice_ws
        .send(json!({"type": "message", "room_id": room, "content": "after"}))
        .await;
    let after = bob_ws.next_message().await;
    assert_eq!(
        (after["content"].as_str(), after["seq"].as_u64()),
        (Some("after"), Some(last_seen + 7))
    );

    // A resume from the present replays nothing.
    bob_ws
        .send(json!({"type": "resume", "room_id": room, "last_seq": last_seen + 7}))
        .await;
    bob_ws.next_of("resumed").await;
    bob_ws.no_message_within(Duration::from_millis(300)).await;
}

async fn membership_rules_apply_to_frames(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let eve = server.user("eve").await;
    let public = server.room(&alice, "public", false).await;
    let private = server.room(&alice, "private", true).await;

    let (status, error) = WsClient::connect(&server, &ws_query(&eve, Some(&private)))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, code(&error)),
        (404, "not_found"),
        "a private room cannot be joined by room_id"
    );

    let mut eve_ws = WsClient::connect(&server, &ws_query(&eve, None))
        .await
        .unwrap();
    for frame in [
        json!({"type": "message", "room_id": public, "content": "not joined"}),
        json!({"type": "message", "room_id": private, "content": "sneaky"}),
        json!({"type": "typing", "room_id": private}),
    ] {
        eve_ws.send(frame.clone()).await;
        let error = eve_ws.next_of("error").await;
        assert_eq!(error["code"], "not_joined", "{frame}: {error}");
    }
    for frame in [
        json!({"type": "join", "room_id": private}),
        json!({"type": "resume", "room_id": private, "last_seq": 0}),
    ] {
        eve_ws.send(frame.clone()).await;
        assert_eq!(
            eve_ws.next_of("error").await["code"],
            "not_found",
            "{frame}"
        );
    }

    // Removed over REST, the member's socket stops receiving the room at once.
    let mut alice_ws = WsClient::connect(&server, &ws_query(&alice, Some(&private)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;
    server
        .post(
            &format!("/api/rooms/{private}/members/{}", eve.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    eve_ws
        .send(json!({"type": "join", "room_id": private}))
        .await;
    eve_ws.next_of("joined").await;
    let (status, _) = server
        .delete(
            &format!("/api/rooms/{private}/members/{}", eve.id),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(eve_ws.next_of("left").await["room_id"], private);
    alice_ws
        .send(json!({"type": "message", "room_id": private, "content": "eve is gone"}))
        .await;
    eve_ws.no_message_within(Duration::from_millis(300)).await;
    eve_ws
        .send(json!({"type": "message", "room_id": private, "content": "let me back"}))
        .await;
    assert_eq!(eve_ws.next_of("error").await["code"], "not_joined");
}

async fn typing_read_presence_and_sessions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let room = server.room(&alice, "social", false).await;
    let mut alice_ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    bob_ws.next_of("joined").await;

    let presence = next_presence_of(&mut alice_ws, &bob.id).await;
    assert_eq!(presence["status"], "online");

    bob_ws
        .send(json!({"type": "typing", "room_id": room}))
        .await;
    let typing = alice_ws.next_of("typing").await;
    assert_eq!(
        (typing["user_id"].as_str(), typing["username"].as_str()),
        (Some(bob.id.as_str()), Some("bob"))
    );
    bob_ws
        .send(json!({"type": "read", "room_id": room, "seq": 1}))
        .await;
    let read = alice_ws.next_of("read").await;
    assert_eq!(
        (read["user_id"].as_str(), read["seq"].as_u64()),
        (Some(bob.id.as_str()), Some(1))
    );

    let (status, sessions) = server.get("/api/sessions", &bob.token).await;
    assert_eq!(status, 200);
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        1,
        "{sessions}"
    );
    assert_eq!(sessions["sessions"][0]["rooms"], json!([room]));
    let (_, profile) = server
        .get(&format!("/api/users/{}", bob.id), &alice.token)
        .await;
    assert_eq!(profile["online"], true);

    drop(bob_ws);
    let presence = next_presence_of(&mut alice_ws, &bob.id).await;
    assert_eq!(presence["status"], "offline");
    let (_, profile) = server
        .get(&format!("/api/users/{}", bob.id), &alice.token)
        .await;
    assert_eq!(profile["online"], false);
}

async fn next_presence_of(ws: &mut WsClient, user: &str) -> Value {
    loop {
        let presence = ws.next_of("presence").await;
        if presence["user_id"] == user {
            return presence;
        }
    }
}

/// An embedded server with alice in a public room, open on her WebSocket.
async fn alone_in(room_name: &str) -> (TestServer, crate::common::TestUser, String, WsClient) {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, room_name, false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    (server, alice, room, ws)
}

fn token_expiring_in(user: &crate::common::TestUser, secs: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"sub": user.id, "username": "alice", "iat": now - 10, "exp": now + secs, "jti": "t"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn mongo_server() -> TestServer {
    // A known signing key, so tests can mint tokens with chosen expiry.
    TestServer::start(Backend::Mongo).await
}

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let server = mongo_server().await;
    let alice = server.user("alice").await;
    let (status, error) = WsClient::connect(&server, "").await.err().unwrap();
    assert_eq!((status, code(&error)), (401, "missing_token"));
    let (status, error) = WsClient::connect(&server, &format!("token={}x", alice.token))
        .await
        .err()
        .unwrap();
    assert_eq!((status, code(&error)), (401, "invalid_token"));
    let expired = token_expiring_in(&alice, -5);
    let (status, error) = WsClient::connect(&server, &format!("token={expired}"))
        .await
        .err()
        .unwrap();
    assert_eq!((status, code(&error)), (401, "token_expired"));

    // The Authorization header and the subprotocol forms work too.
    let url = format!("{}/ws", server.base.replace("http://", "ws://"));
    let mut request = url.clone().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", alice.token).parse().unwrap(),
    );
    let mut ws = WsClient::connect_request(request).await.unwrap();
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await, json!({"type": "pong"}));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("chat, bearer.{}", alice.token).parse().unwrap(),
    );
    let mut ws = WsClient::connect_request(request).await.unwrap();
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_unless_refreshed() {
    let server = mongo_server().await;
    let alice = server.user("alice").await;
    let mut refreshed =
        WsClient::connect(&server, &format!("token={}", token_expiring_in(&alice, 4)))
            .await
            .unwrap();
    let mut lapsing =
        WsClient::connect(&server, &format!("token={}", token_expiring_in(&alice, 4)))
            .await
            .unwrap();
    refreshed
        .send(json!({"type": "auth", "token": alice.token}))
        .await;
    assert_eq!(
        refreshed.next_of("authenticated").await["type"],
        "authenticated"
    );
    let bob = server.user("bob").await;
    refreshed
        .send(json!({"type": "auth", "token": bob.token}))
        .await;
    assert_eq!(
        refreshed.next_of("error").await["code"],
        "invalid_token",
        "a token of another user is refused"
    );

    assert_eq!(lapsing.next().await["closed"], 4001);
    refreshed.send(json!({"type": "ping"})).await;
    assert_eq!(
        refreshed.next().await,
        json!({"type": "pong"}),
        "the refreshed socket lives on"
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays() {
    let (server, alice, room, mut ws) = alone_in("robust").await;
    let cases: [(WsMessage, &str); 7] = [
        (WsMessage::Text("not json".into()), "malformed_frame"),
        (
            WsMessage::Text(r#"{"type":"shout"}"#.into()),
            "unknown_type",
        ),
        (
            WsMessage::Text(r#"{"type":"message","room_id":{"$gt":""},"content":"x"}"#.into()),
            "invalid_frame",
        ),
        (
            WsMessage::Text(
                format!(r#"{{"type":"message","room_id":"{room}","content":"  \u0000 "}}"#).into(),
            ),
            "empty_message",
        ),
        (
            WsMessage::Text(
                json!({"type": "message", "room_id": room, "content": "x".repeat(4001)})
                    .to_string()
                    .into(),
            ),
            "message_too_long",
        ),
        (
            WsMessage::Text(
                json!({"type": "message", "room_id": "0123456789abcdef01234567", "content": "x"})
                    .to_string()
                    .into(),
            ),
            "not_joined",
        ),
        (WsMessage::Binary(vec![1, 2, 3].into()), "malformed_frame"),
    ];
    for (frame, expected) in cases {
        ws.send_raw(frame).await;
        let error = ws.next_of("error").await;
        assert_eq!(error["code"], expected, "{error}");
    }
    ws.send(json!({"type": "message", "room_id": room, "content": "still here"}))
        .await;
    assert_eq!(ws.next_of("ack").await["seq"], 1);

    // An oversized frame ends the connection (1009), never the server.
    ws.send_raw(WsMessage::Text("x".repeat(70 * 1024).into()))
        .await;
    let closed = ws.next().await;
    assert!(closed.get("closed").is_some(), "{closed}");
    let mut again = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    again.send(json!({"type": "ping"})).await;
    assert_eq!(again.next().await["type"], "pong");

    // A client that only sends garbage is disconnected.
    for _ in 0..25 {
        again.send_raw(WsMessage::Text("garbage".into())).await;
    }
    let mut last = Value::Null;
    for _ in 0..30 {
        last = again.next().await;
        if last.get("closed").is_some() {
            break;
        }
    }
    assert_eq!(last["closed"], 1008, "{last}");
}

#[tokio::test]
async fn floods_are_rate_limited_then_disconnected() {
    let (mut env, temp) = env_for(Backend::Embedded);
    env.insert("CHAT_RATE_LIMIT_PER_SEC", "1".into());
    env.insert("CHAT_RATE_LIMIT_BURST", "3".into());
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "flooded", false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    for i in 0..60 {
        ws.send(json!({"type": "message", "room_id": room, "content": format!("spam {i}")}))
            .await;
    }
    let (mut acks, mut limited, mut closed) = (0, 0, None);
    while closed.is_none() {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                assert!(frame["retry_after"].as_f64().unwrap() > 0.0, "{frame}");
                limited += 1;
            }
            _ if frame.get("closed").is_some() => closed = frame["closed"].as_u64(),
            _ => {}
        }
    }
    // Creating the room took one of the burst of 3.
    assert!((2..=4).contains(&acks), "the burst got through: {acks}");
    assert!(limited > 50, "{limited}");
    assert_eq!(closed, Some(4029));
    let (_, history) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(
        history["total"].as_u64(),
        Some(acks),
        "exactly the acked messages were stored"
    );
}

#[tokio::test]
async fn websocket_traffic_is_measured() {
    let (server, _, room, mut ws) = alone_in("metered").await;
    ws.send(json!({"type": "message", "room_id": room, "content": "count me"}))
        .await;
    ws.next_of("ack").await;
    let metrics = server.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert_eq!(value("chat_ws_connections"), 1.0);
    assert_eq!(value("chat_messages_received_total"), 1.0);
    assert_eq!(
        value("chat_delivery_latency_seconds_count"),
        1.0,
        "the message's hand-off to the room, measured"
    );
    assert_eq!(
        value("chat_append_latency_seconds_count"),
        1.0,
        "the message's append, measured"
    );
    assert!(
        value("chat_ws_frames_sent_total") >= 3.0,
        "joined, the message, its ack"
    );
    ws.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = server.metrics().await;
        if metrics.contains("chat_ws_disconnects_total{reason=\"client_closed\"} 1")
            && metrics.contains("chat_ws_connections 0")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect() {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    ws.send(json!({"type": "ping"})).await;
    ws.next_of("pong").await;
    server.stop().await;
    let closed = ws.next().await;
    assert_eq!(
        closed["closed"], 1012,
        "service restart: reconnect and resume: {closed}"
    );
}

#[tokio::test]
async fn typing_floods_are_limited_too() {
    let (_server, _, room, mut ws) = alone_in("chatty").await;
    for _ in 0..40 {
        ws.send(json!({"type": "typing", "room_id": room})).await;
    }
    ws.send(json!({"type": "ping"})).await;
    let (mut relayed, mut limited) = (0, 0);
    loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("typing") => relayed += 1,
            Some("error") if frame["code"] == "rate_limited" => limited += 1,
            Some("pong") => break,
            _ => {}
        }
    }
    assert!(
        (20..=22).contains(&relayed),
        "the burst is relayed: {relayed}"
    );
    assert_eq!(relayed + limited, 40);
}

/// A client may send its first frame right behind the handshake, in the same
/// packet; the server must read it from what came with the request.
#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let address = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut bytes = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        alice.token
    )
    .into_bytes();
    // A masked text frame, as clients must send them.
    let payload = br#"{"type":"ping"}"#;
    let mask = [7u8, 13, 42, 99];
    bytes.extend([0x81, 0x80 | payload.len() as u8]);
    bytes.extend(mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&bytes).await.unwrap();

    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let pong = br#"{"type":"pong"}"#;
    while !received.windows(pong.len()).any(|w| w == pong) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, socket.read(&mut chunk))
            .await
            .expect("a pong within 5 s")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
}

#[tokio::test]
async fn a_request_that_is_not_a_websocket_handshake_is_told_so() {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let (status, body) = server.get("/ws", &alice.token).await;
    assert_eq!((status, code(&body)), (400, "websocket_required"), "{body}");
    let (status, body) = server.get("/ws", "not-a-token").await;
    assert_eq!(status, 401, "the token is checked first: {body}");
}

async fn last_seen_is_recorded_when_the_last_connection_closes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    // Presence is for people who share a room.
    let room = server.room(&alice, "hangout", false).await;
    server.join(&bob, &room).await;
    let path = format!("/api/users/{}", bob.id);
    let (_, never) = server.get(&path, &alice.token).await;
    assert!(never.get("last_seen_at").is_none(), "{never}");

    let first = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    let second = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    let (_, online) = server.get(&path, &alice.token).await;
    assert_eq!(online["online"], true, "{online}");
    // One of two tabs closed: still online, not yet "last seen".
    first.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, still) = server.get(&path, &alice.token).await;
    assert!(still.get("last_seen_at").is_none(), "{still}");
    second.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, user) = server.get(&path, &alice.token).await;
        if user["online"] == false && user["last_seen_at"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded: {user}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
