//! What one client, sometimes without an account, must not be able to do to a
//! pod: hold sockets with headers that never finish, hash passwords without
//! bound, grow `/metrics` without end, make accounts by the thousand, lock
//! another user out. Each attack as an outside client would try it, over TCP.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Backend, TestServer, WsClient, acked, code, env_for, ws_query};
use crate::on_both_stores;

on_both_stores!(
    a_resume_and_search_show_no_text_that_was_edited_away_or_deleted,
    reactions_are_a_bounded_set_however_often_they_are_clicked,
    blocking_someone_stops_their_direct_messages_and_invitations,
);

async fn server_with(vars: &[(&'static str, &str)]) -> TestServer {
    let (mut env, temp) = env_for(Backend::Embedded);
    for (name, value) in vars {
        env.insert(name, (*value).to_owned());
    }
    TestServer::start_with_env(env, Some(temp)).await
}

fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the socket; returns what it sent and when.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<(String, Instant)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => {
                return Some((
                    String::from_utf8_lossy(&received).into_owned(),
                    Instant::now(),
                ));
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off_and_idle_keep_alives_closed() {
    let server = server_with(&[("CHAT_HTTP_HEADER_TIMEOUT_SECS", "1")]).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        stream
            .write_all(b"GET /api/rooms HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    let started = Instant::now();
    for stream in &mut slow {
        let (_, closed_at) = read_until_closed(stream, Duration::from_secs(10))
            .await
            .expect("the server keeps a slow-header socket open");
        assert!(closed_at - started < Duration::from_secs(5));
    }

    // A finished request on a keep-alive connection, then silence.
    let mut idle = TcpStream::connect(address(&server)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The pod still serves everybody else.
    let (status, _) = server
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let server = server_with(&[("CHAT_HTTP_REQUEST_TIMEOUT_SECS", "1")]).await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server waits for the body for ever");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn invented_methods_do_not_grow_metrics() {
    let server = TestServer::start(Backend::Embedded).await;
    let invent = |from: usize, to: usize| {
        let server = &server;
        async move {
            for i in from..to {
                let method =
                    reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
                let (status, _) = server.call(method, &format!("/nope/{i}"), None, None).await;
                assert!(status == 404 || status == 405, "{status}");
            }
        }
    };
    invent(0, 5).await;
    server.metrics().await;
    let before = server.metrics().await.lines().count();
    invent(5, 205).await;
    let metrics = server.metrics().await;
    assert!(!metrics.contains("INVENTED"), "a method became a label");
    assert!(metrics.contains(r#"method="other""#));
    assert_eq!(metrics.lines().count(), before, "/metrics grew");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let server = TestServer::start(Backend::Embedded).await;
    for path in ["/", "/api/rooms", "/healthz"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        let headers = response.headers();
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("default-src 'self'")
                && csp.contains("frame-ancestors 'none'")
                && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
}

async fn register(
    server: &TestServer,
    name: &str,
    forwarded_for: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let response = server
        .client
        .post(server.url("/api/auth/register"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}")}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or_default())
}

async fn login(
    server: &TestServer,
    name: &str,
    password: &str,
    forwarded_for: &str,
) -> (u16, serde_json::Value) {
    let response = server
        .client
        .post(server.url("/api/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": format!("{name}@example.com"), "password": password}))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn sign_ups_are_limited_per_client_address_behind_a_trusted_proxy() {
    let server = server_with(&[
        ("CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR", "6"),
        ("CHAT_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let (status, headers, body) = register(&server, &format!("spam{i}"), "203.0.113.5").await;
        if status == 429 {
            assert_eq!(code(&body), "rate_limited");
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [201, 201, 429]);
    // Another client behind the same Ingress is not affected.
    let (status, _, _) = register(&server, "neighbour", "198.51.100.9").await;
    assert_eq!(status, 201);
    // Without a trusted proxy, the header is the client's word: ignored.
    let direct = server_with(&[("CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR", "3")]).await;
    let (first, _, _) = register(&direct, "one", "192.0.2.1").await;
    let (second, _, _) = register(&direct, "two", "192.0.2.2").await;
    assert_eq!((first, second), (201, 429));
}

#[tokio::test]
async fn failing_on_purpose_does_not_lock_the_owner_out() {
    let server = server_with(&[("CHAT_TRUSTED_PROXIES", "127.0.0.1")]).await;
    server.user("alice").await;
    let mut refused = false;
    for _ in 0..15 {
        let (status, body) = login(&server, "alice", "wrong-password", "203.0.113.66").await;
        if status == 429 {
            assert_eq!(code(&body), "rate_limited");
            refused = true;
            break;
        }
        assert_eq!(status, 401);
    }
    assert!(
        refused,
        "wrong passwords from one address were never limited"
    );
    let (status, body) = login(&server, "alice", "password-alice", "198.51.100.7").await;
    assert_eq!(status, 200, "{body}");
}

/// Wrong passwords for one account from many addresses (110 from 11) used up
/// its bucket for everyone: its owner then got 429 at home too. An address
/// the account signed in from lately is not held to that bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_many_addresses_do_not_lock_the_owner_out_at_home() {
    let server = server_with(&[("CHAT_TRUSTED_PROXIES", "127.0.0.1")]).await;
    server.user("alice").await;
    let home = "198.51.100.7";
    let (status, _) = login(&server, "alice", "password-alice", home).await;
    assert_eq!(status, 200);
    for i in 0..110 {
        let from = format!("203.0.113.{}", i / 10);
        let (status, body) = login(&server, "alice", "wrong-password", &from).await;
        assert!(status == 401 || status == 429, "{status} {body}");
    }
    // The account's bucket refills by one a second: empty it again, from
    // addresses not used yet, until one is refused.
    let mut fresh = 0;
    loop {
        let from = format!("192.0.2.{fresh}");
        if login(&server, "alice", "wrong-password", &from).await.0 == 429 {
            break;
        }
        fresh += 1;
        assert!(fresh < 200, "the account's bucket never ran dry");
    }
    let (status, body) = login(&server, "alice", "password-alice", home).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sign_ins_waits_for_bounded_hashing_or_is_turned_away() {
    let server = server_with(&[
        ("CHAT_PASSWORD_HASH_CONCURRENCY", "1"),
        ("CHAT_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    server.user("alice").await;
    let attempts = (0..300).map(|i| {
        let client = server.client.clone();
        let url = server.url("/api/auth/login");
        async move {
            let response = client
                .post(url)
                .header("x-forwarded-for", format!("10.{}.{}.1", i / 200, i % 200))
                .json(&json!({"email": format!("nobody{i}@example.com"), "password": "whatever-it-is"}))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, retry_after, code(&body).to_owned())
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let busy = outcomes
        .iter()
        .filter(|(status, ..)| *status == 503)
        .count();
    for (status, retry_after, code) in &outcomes {
        match status {
            401 => assert_eq!(code, "invalid_credentials"),
            503 => assert!(*retry_after && code == "busy", "{code}"),
            other => panic!("unexpected {other} {code}"),
        }
    }
    assert!(busy > 0, "300 hashes at once on one slot all waited");
    assert!(busy < 300, "none was served");
    // Once the burst is over, the pod signs people in again.
    let (status, _) = login(&server, "alice", "password-alice", "192.0.2.44").await;
    assert_eq!(status, 200);
}

/// Reads frames until the connection closes; returns its close code.
async fn close_code(ws: &mut WsClient) -> Option<u64> {
    loop {
        let frame = ws.next().await;
        if let Some(code) = frame.get("closed") {
            return code.as_u64();
        }
    }
}

#[tokio::test]
async fn connections_are_capped_per_user_and_per_address_with_4009() {
    let server = server_with(&[
        ("CHAT_MAX_CONNECTIONS_PER_USER", "2"),
        ("CHAT_MAX_CONNECTIONS_PER_ADDRESS", "3"),
    ])
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let first = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    let _second = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    let mut third = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    assert_eq!(close_code(&mut third).await, Some(4009));
    // One closed, one more allowed (once the server has seen the close).
    first.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let _again = loop {
        let mut again = WsClient::connect(&server, &ws_query(&alice, None))
            .await
            .unwrap();
        again.send(json!({"type": "ping"})).await;
        let frame = again.next().await;
        if frame["type"] == "pong" {
            break again;
        }
        assert_eq!(frame["closed"], 4009, "{frame}");
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection still counts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Alice holds two, bob one: the address's three.
    let mut bobs = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    bobs.send(json!({"type": "ping"})).await;
    assert_eq!(bobs.next().await["type"], "pong");
    let mut over = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    assert_eq!(close_code(&mut over).await, Some(4009));
    assert!(
        server
            .metrics()
            .await
            .contains(r#"reason="too_many_connections""#)
    );
}

#[tokio::test]
async fn control_frames_are_rate_limited_and_a_flood_is_closed() {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    for _ in 0..400 {
        if !ws.try_send(json!({"type": "ping"})).await {
            break;
        }
    }
    let (mut pongs, mut limited) = (0, 0);
    let closed = loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                limited += 1;
            }
            _ => break frame["closed"].as_u64(),
        }
    };
    assert!(
        pongs >= 200 && limited > 0,
        "{pongs} pongs, {limited} refused"
    );
    assert_eq!(closed, Some(4029));
}

#[tokio::test]
async fn leaving_a_room_one_never_opened_tells_its_members_nothing() {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    let secret = server.room(&alice, "secret", true).await;
    let mut inside = WsClient::connect(&server, &ws_query(&alice, Some(&secret)))
        .await
        .unwrap();
    assert_eq!(inside.next_of("joined").await["room_id"], secret.as_str());
    let mut outside = WsClient::connect(&server, &ws_query(&mallory, None))
        .await
        .unwrap();
    outside
        .send(json!({"type": "leave", "room_id": secret}))
        .await;
    assert_eq!(outside.next().await["type"], "left");
    inside.send(json!({"type": "ping"})).await;
    loop {
        let frame = inside.next().await;
        assert!(
            frame["type"] != "presence" || frame["user_id"] == alice.id.as_str(),
            "mallory's leave reached the room: {frame}"
        );
        if frame["type"] == "pong" {
            break;
        }
    }
}

#[tokio::test]
async fn a_resume_bigger_than_the_queue_is_sent_to_the_history_api() {
    let server = server_with(&[("CHAT_MAX_QUEUE_BYTES", "65536")]).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "big", false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    let content = "x".repeat(4000);
    for i in 0..12 {
        ws.send(json!({"type": "message", "room_id": room, "content": content, "client_id": format!("c{i}")}))
            .await;
        assert_eq!(ws.next_of("ack").await["client_id"], format!("c{i}"));
    }
    let mut late = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    late.send(json!({"type": "resume", "room_id": room, "last_seq": 0}))
        .await;
    let refused = late.next_of("error").await;
    assert_eq!(refused["code"], "resume_too_far");
    // A resume that fits is served.
    late.send(json!({"type": "resume", "room_id": room, "last_seq": 6}))
        .await;
    assert_eq!(late.next_of("resumed").await["from_seq"], 6);
}

/// A resume read and encoded everything it would replay before its size
/// was checked, and cost one control frame however much that was: 100
/// resumes over 16 KB messages took 2.84 s of server CPU. Now reading stops
/// at the budget, and a resume costs a control frame per 64 KiB it read.
#[tokio::test]
async fn resumes_are_charged_by_what_they_read() {
    let server = server_with(&[
        ("CHAT_RATE_LIMIT_PER_SEC", "10000"),
        ("CHAT_RATE_LIMIT_BURST", "10000"),
    ])
    .await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "long", false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    // 2.4 MB: more than half the default queue (2 MiB) can replay.
    let content = "x".repeat(4000);
    for i in 0..600 {
        ws.send(json!({"type": "message", "room_id": room, "content": content, "client_id": format!("c{i}")}))
            .await;
    }
    while ws.next_of("ack").await["client_id"] != "c599" {}
    let mut late = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..10 {
        late.send(json!({"type": "resume", "room_id": room, "last_seq": 0}))
            .await;
        codes.push(
            late.next_of("error").await["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    // The control budget is 200 frames (20 more a second); each refusal
    // read 2 MiB: 33 frames. One frame each would take 200 resumes.
    assert_eq!(codes[0], "resume_too_far", "{codes:?}");
    let limited = codes.iter().position(|c| c == "rate_limited");
    assert!(limited.is_some_and(|at| at <= 8), "{codes:?}");
}

#[tokio::test]
async fn looping_join_and_leave_over_rest_cannot_flood_a_room() {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    let room = server.room(&alice, "lobby", false).await;
    let mut limited = 0;
    for _ in 0..40 {
        for action in ["join", "leave"] {
            let (status, body) = server
                .post(
                    &format!("/api/rooms/{room}/{action}"),
                    Some(&mallory.token),
                    json!({}),
                )
                .await;
            if status == 429 {
                assert_eq!(code(&body), "rate_limited");
                limited += 1;
            }
        }
    }
    assert!(
        limited > 0,
        "80 membership changes in a row were all accepted"
    );
    let (_, history) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert!(
        history["total"].as_u64().unwrap() <= 30,
        "the room got {} system messages",
        history["total"]
    );
}

/// Sends the head of an upload of `declared` bytes (or a chunked one) over
/// its own connection and `sent` bytes of its body; the rest never comes.
async fn stalled_upload(
    server: &TestServer,
    user: &crate::common::TestUser,
    room: &str,
    declared: Option<usize>,
    sent: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(address(server)).await.unwrap();
    let length = match declared {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    let head = format!(
        "POST /api/rooms/{room}/attachments?filename=f.bin HTTP/1.1\r\nHost: chat\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n{length}\r\n\r\n",
        user.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

/// Uploads were read whole into memory with no bound across a pod, and a
/// chunked body skipped the quota's check of the declared size (18 uploads
/// stalled one byte short of 10 MiB took 180 MiB). Now an upload must say
/// its length, and that many bytes of the pod's upload memory are taken
/// before its body is read: stalled uploads hold at most that, and others
/// are turned away (503 `busy`) until it comes free.
#[tokio::test]
async fn uploads_must_declare_their_length_and_share_a_bounded_memory() {
    const MIB: usize = 1024 * 1024;
    let server = server_with(&[
        ("CHAT_MAX_ATTACHMENT_BYTES", "1048576"),
        ("CHAT_UPLOAD_MEMORY_BYTES", "2097152"),
    ])
    .await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "files", false).await;

    let mut chunked =
        stalled_upload(&server, &alice, &room, None, b"5\r\nhello\r\n0\r\n\r\n").await;
    let (answer, _) = read_until_closed(&mut chunked, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    assert!(answer.contains("length_required"), "{answer}");

    // Two uploads of a whole largest file each, stalled after a kilobyte.
    let first = stalled_upload(&server, &alice, &room, Some(MIB), &[1; 1024]).await;
    let second = stalled_upload(&server, &alice, &room, Some(MIB), &[2; 1024]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) =
        crate::common::upload(&server, &alice, &room, "small.txt", vec![b'a'; 100]).await;
    assert_eq!((status, code(&body)), (503, "busy"), "{body}");

    // Their clients gone, the memory is free again.
    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) =
            crate::common::upload(&server, &alice, &room, "small.txt", vec![b'a'; 100]).await;
        if status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The password hashes running now, from `/metrics`.
async fn hashes_running(server: &TestServer) -> u64 {
    let metrics = server.metrics().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("chat_blocking_work_running{work=\"password_hash\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A hashing slot was held by the request, not by the hash: clients that
/// hung up 60 ms after sending their sign-in freed the slot at once while
/// their hash went on (one slot, 12 threads and 179 MiB). Now a hash holds
/// its slot to its end, however soon its client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_do_not_get_more_hashes_run_at_once() {
    let server = server_with(&[
        ("CHAT_PASSWORD_HASH_CONCURRENCY", "1"),
        ("CHAT_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let mut most = 0;
    let mut attackers = Vec::new();
    for i in 0..12 {
        let body = json!({"email": format!("nobody{i}@example.com"), "password": "whatever-it-is"})
            .to_string();
        let request = format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: chat\r\nX-Forwarded-For: 198.51.100.{i}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        attackers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            drop(stream);
        }));
        most = most.max(hashes_running(&server).await);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        most = most.max(hashes_running(&server).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for attacker in attackers {
        attacker.await.unwrap();
    }
    assert_eq!(most, 1, "hashes running at once with one slot");
}

/// Profile changes were unlimited and went to everyone on every pod (200
/// `PATCH /api/users/me` in 0.39 s, all accepted, every connected user got
/// 200 frames). Now they spend the change budget (`rate_limited` past it)
/// and reach only the people who share a room with the changed user.
#[tokio::test]
async fn profile_changes_are_limited_and_reach_only_people_who_share_a_room() {
    let server = server_with(&[]).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let room = server.room(&alice, "tea", false).await;
    server.join(&bob, &room).await;
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    let mut carol_ws = WsClient::connect(&server, &ws_query(&carol, None))
        .await
        .unwrap();

    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..60 {
        let (status, body) = server
            .call(
                reqwest::Method::PATCH,
                "/api/users/me",
                Some(&alice.token),
                Some(json!({"display_name": format!("Alice {i}")})),
            )
            .await;
        match status {
            200 => accepted += 1,
            429 => {
                assert_eq!(code(&body), "rate_limited", "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(limited > 0, "60 changes at once were all accepted");
    assert!(accepted > 0, "none was accepted");
    for _ in 0..accepted {
        let update = bob_ws.next_of("user_updated").await;
        assert_eq!(update["user"]["id"], alice.id.as_str());
    }
    let told = tokio::time::timeout(Duration::from_secs(1), carol_ws.next_of("user_updated")).await;
    assert!(told.is_err(), "a stranger was told: {told:?}");
}

/// Bidi overrides and invisible characters were kept in display names, file
/// names and reactions (`invoice\u{202e}fdp.exe` was served as is, showing
/// as `invoiceexe.pdf`), and a reaction could be `©`, a private-use
/// character, a zero-width space or a combining mark. Names refuse them,
/// file names lose them, reactions must be one emoji of Unicode's list.
#[tokio::test]
async fn names_file_names_and_reactions_carry_no_invisible_controls() {
    let server = server_with(&[]).await;
    let alice = server.user("alice").await;
    for name in ["Alice\u{202e}ecilA", "Al\u{200b}ice", "\u{2066}Alice"] {
        let (status, body) = server
            .call(
                reqwest::Method::PATCH,
                "/api/users/me",
                Some(&alice.token),
                Some(json!({"display_name": name})),
            )
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some("display_name")),
            "{name:?}"
        );
    }
    let room = server.room(&alice, "files", false).await;
    let (status, file) = crate::common::upload(
        &server,
        &alice,
        &room,
        "invoice\u{202e}fdp.exe",
        b"MZ".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["filename"], "invoicefdp.exe");

    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    ws.send(
        json!({"type": "message", "room_id": room, "content": "react to me", "client_id": "m1"}),
    )
    .await;
    let seq = ws.next_of("ack").await["seq"].as_u64().unwrap();
    for bad in [
        "\u{a9}",
        "\u{e000}",
        "\u{202e}",
        "\u{200b}",
        "\u{301}",
        "👍\u{202e}",
    ] {
        ws.send(json!({"type": "react", "room_id": room, "seq": seq, "emoji": bad, "client_id": format!("r{bad}")}))
            .await;
        let answer = ws.next_of("error").await;
        assert_eq!(answer["code"], "invalid_frame", "{bad:?}: {answer}");
    }
    ws.send(
        json!({"type": "react", "room_id": room, "seq": seq, "emoji": "👍🏽", "client_id": "ok"}),
    )
    .await;
    assert_eq!(ws.next_of("ack").await["client_id"], "ok");
}

/// Edits, reactions and replies to a deleted message were accepted, stored,
/// sent to everyone and indexed. Now a deleted message is not there for them.
#[tokio::test]
async fn a_deleted_message_takes_no_edit_reaction_or_reply() {
    let server = server_with(&[]).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "gone", false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    ws.send(json!({"type": "message", "room_id": room, "content": "regret", "client_id": "m1"}))
        .await;
    let seq = ws.next_of("ack").await["seq"].as_u64().unwrap();
    ws.send(json!({"type": "delete", "room_id": room, "seq": seq, "client_id": "d1"}))
        .await;
    assert_eq!(ws.next_of("ack").await["client_id"], "d1");
    // The deletion reaches the store (the persist worker's batch), then:
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answers = Vec::new();
    for (i, frame) in [
        json!({"type": "edit", "room_id": room, "seq": seq, "content": "still here"}),
        json!({"type": "react", "room_id": room, "seq": seq, "emoji": "👍"}),
        json!({"type": "message", "room_id": room, "content": "a reply", "reply_to": seq}),
    ]
    .into_iter()
    .enumerate()
    {
        loop {
            let mut frame = frame.clone();
            frame["client_id"] = json!(format!("c{i}-{}", answers.len()));
            ws.send(frame).await;
            let answer = loop {
                let frame = ws.next().await;
                if frame["type"] == "ack" || frame["type"] == "error" {
                    break frame;
                }
            };
            if answer["type"] == "error" {
                answers.push(answer["code"].as_str().unwrap_or_default().to_owned());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "accepted after its deletion: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(answers, ["not_found", "not_found", "not_found"]);
}

/// A handshake whose `Sec-WebSocket-Key` is not a 16-byte nonce in base64
/// was answered 101; RFC 6455 asks for a refusal.
#[tokio::test]
async fn a_websocket_key_that_is_no_nonce_is_refused() {
    let server = server_with(&[]).await;
    let alice = server.user("alice").await;
    for (key, expected) in [
        ("not-a-key", "HTTP/1.1 400"),
        ("dGhlIHNhbXBsZSBub25jZQ==", "HTTP/1.1 101"),
    ] {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        let request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
            alice.token
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&head), expected, "{key}");
    }
}

/// `join` frames (and `/ws?room_id=`) joined rooms, posting "joined" system
/// messages, outside the message budget that REST joins spend. Now every
/// join that posts one spends it, however it came.
#[tokio::test]
async fn looping_join_frames_cannot_flood_a_room() {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    let room = server.room(&alice, "lobby", false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&mallory, None))
        .await
        .unwrap();
    let mut limited = 0;
    for _ in 0..40 {
        ws.send(json!({"type": "join", "room_id": room})).await;
        let answer = loop {
            let frame = ws.next().await;
            if frame["type"] == "joined" || frame["type"] == "error" {
                break frame;
            }
        };
        if answer["type"] == "error" {
            assert_eq!(answer["code"], "rate_limited", "{answer}");
            limited += 1;
        }
        server
            .post(
                &format!("/api/rooms/{room}/leave"),
                Some(&mallory.token),
                json!({}),
            )
            .await;
    }
    assert!(limited > 0, "40 joins in a row were all accepted");
    let (_, history) = server
        .get(&format!("/api/rooms/{room}/messages"), &alice.token)
        .await;
    assert!(
        history["total"].as_u64().unwrap() <= 45,
        "the room got {} system messages",
        history["total"]
    );
}

/// A member who joined after a message was edited and deleted received, by
/// resuming from seq 0, the original text and the edited one; history showed
/// neither. Resume now shows messages as they are now, and the store and its
/// search index keep no text that was deleted or edited away.
async fn a_resume_and_search_show_no_text_that_was_edited_away_or_deleted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "secrets", false).await;
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    let post = |content: &str| json!({"type": "message", "room_id": room, "content": content});
    let edit = |seq: u64, content: &str| json!({"type": "edit", "room_id": room, "seq": seq, "content": content});
    let secret = acked(&mut ws, post("my password is hunter2")).await["seq"]
        .as_u64()
        .unwrap();
    acked(&mut ws, edit(secret, "my password is swordfish")).await;
    let gone = acked(
        &mut ws,
        json!({"type": "delete", "room_id": room, "seq": secret}),
    )
    .await;
    assert_eq!(gone["type"], "ack", "{gone}");
    let kept = acked(&mut ws, post("hello there")).await["seq"]
        .as_u64()
        .unwrap();
    acked(&mut ws, edit(kept, "hello again")).await;
    let last = acked(&mut ws, edit(kept, "hello world")).await["seq"]
        .as_u64()
        .unwrap();
    // Once the last edit is searchable, everything before it is stored.
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = |body: &serde_json::Value| body["results"].as_array().map_or(0, Vec::len);
    while found(&server.get("/api/search?q=world", &alice.token).await.1) == 0 {
        assert!(Instant::now() < deadline, "the edit never reached search");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let bob = server.user("bob").await;
    server.join(&bob, &room).await;
    let mut late = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    late.send(json!({"type": "resume", "room_id": room, "last_seq": 0}))
        .await;
    late.next_of("resumed").await;
    let mut replay = Vec::new();
    while replay
        .last()
        .is_none_or(|f: &serde_json::Value| f["seq"].as_u64() < Some(last))
    {
        let frame = late.next().await;
        assert!(frame.get("closed").is_none(), "closed: {frame}");
        if frame["seq"].is_u64() {
            replay.push(frame);
        }
    }
    let seqs: Vec<u64> = replay.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {seqs:?}"
    );
    let text = serde_json::to_string(&replay).unwrap();
    for away in ["hunter2", "swordfish", "again"] {
        assert!(!text.contains(away), "{away} replayed: {text}");
    }
    let shown = replay.iter().find(|f| f["seq"] == secret).unwrap();
    assert_eq!(
        (&shown["deleted"], &shown["content"]),
        (&json!(true), &json!(""))
    );
    let now = replay.iter().find(|f| f["seq"] == kept).unwrap();
    assert_eq!(now["content"], "hello world");

    for away in ["hunter2", "swordfish", "again"] {
        let (status, body) = server
            .get(&format!("/api/search?q={away}"), &alice.token)
            .await;
        assert_eq!((status, found(&body)), (200, 0), "{away}: {body}");
    }
}

/// 10,000 react/unreact clicks on one message were stored as 10,000 records
/// that every history page loaded, and any number of distinct reactions was
/// taken. Now a message shows at most 20 distinct reactions, a member adds
/// at most 10, and clicks that cancel out leave nothing to load.
async fn reactions_are_a_bounded_set_however_often_they_are_clicked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let room = server.room(&alice, "emoji", false).await;
    server.join(&bob, &room).await;
    let mut alice_ws = WsClient::connect(&server, &ws_query(&alice, Some(&room)))
        .await
        .unwrap();
    alice_ws.next_of("joined").await;
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, Some(&room)))
        .await
        .unwrap();
    bob_ws.next_of("joined").await;
    let seq = acked(
        &mut alice_ws,
        json!({"type": "message", "room_id": room, "content": "vote"}),
    )
    .await["seq"]
        .as_u64()
        .unwrap();
    let react = |kind: &str, emoji: &str| json!({"type": kind, "room_id": room, "seq": seq, "emoji": emoji});
    let emoji = [
        "😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋", "😎", "😍", "😘", "🥰",
        "😗", "😙", "😚", "🙂", "🤗", "🤩", "🤔",
    ];
    for e in &emoji[..10] {
        assert_eq!(acked(&mut alice_ws, react("react", e)).await["type"], "ack");
    }
    let refused = acked(&mut alice_ws, react("react", emoji[10])).await;
    assert_eq!(refused["code"], "too_many_reactions", "{refused}");
    for e in &emoji[10..20] {
        assert_eq!(acked(&mut bob_ws, react("react", e)).await["type"], "ack");
    }
    // Twenty distinct: a 21st is refused, joining one that is there is not.
    let refused = acked(&mut bob_ws, react("react", emoji[20])).await;
    assert_eq!(refused["code"], "too_many_reactions", "{refused}");
    // Bob is at 10 of his own, so he may only repeat one of his.
    assert_eq!(
        acked(&mut bob_ws, react("react", emoji[19])).await["type"],
        "ack"
    );
    // Clicking on and off, again and again.
    for _ in 0..30 {
        for kind in ["unreact", "react"] {
            taken(&mut bob_ws, react(kind, emoji[12])).await;
        }
    }
    taken(&mut bob_ws, react("unreact", emoji[11])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = server
            .get(&format!("/api/rooms/{room}/messages"), &bob.token)
            .await;
        assert_eq!(status, 200, "{page}");
        let message = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["seq"] == seq)
            .cloned()
            .unwrap();
        let reactions = message["reactions"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if reactions.len() == 19 {
            assert!(!reactions.contains_key(emoji[11]), "{message}");
            assert_eq!(reactions[emoji[12]], json!([bob.id]), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "{message}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `frame` until it is not refused for the sender's rate; its answer.
async fn taken(ws: &mut WsClient, frame: serde_json::Value) -> serde_json::Value {
    loop {
        let answer = acked(ws, frame.clone()).await;
        if answer["code"] != "rate_limited" {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Any signed-in user read anyone's `online` and `last_seen_at`, so could
/// watch when a stranger comes and goes. Now only people who share a room
/// (or a direct room) with them see it.
#[tokio::test]
async fn presence_is_for_people_who_share_a_room() {
    let server = server_with(&[]).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let stranger = server.user("mallory").await;
    let room = server.room(&alice, "friends", true).await;
    let (status, _) = server
        .post(
            &format!("/api/rooms/{room}/members/{}", bob.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert!(status < 300, "{status}");
    let ws = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();
    ws.close().await;
    let path = format!("/api/users/{}", bob.id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, seen) = server.get(&path, &alice.token).await;
        if seen["online"] == false && seen["last_seen_at"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "{seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in [path, "/api/users?username=bob".to_owned()] {
        let (status, profile) = server.get(&path, &stranger.token).await;
        assert_eq!(status, 200, "{profile}");
        assert_eq!(profile["username"], "bob");
        assert!(profile.get("online").is_none(), "{profile}");
        assert!(profile.get("last_seen_at").is_none(), "{profile}");
    }
}

/// `/metrics` and `/readyz` were public through the operator's Ingress,
/// which routes `/` (every route's traffic, backend errors). A request a
/// proxy relayed now gets 404; the kubelet and Prometheus, which ask the pod
/// directly, still get them.
#[tokio::test]
async fn metrics_and_readiness_are_not_served_through_a_proxy() {
    let server = server_with(&[]).await;
    let client = reqwest::Client::new();
    for path in ["/metrics", "/readyz"] {
        let url = format!("{}{path}", server.base);
        let direct = client.get(&url).send().await.unwrap().status();
        assert_eq!(direct, 200, "{path}");
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ] {
            let relayed = client.get(&url).header(name, value).send().await.unwrap();
            assert_eq!(relayed.status(), 404, "{path} with {name}");
        }
    }
    // The liveness probe and the API are unaffected.
    let relayed = client
        .get(format!("{}/healthz", server.base))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status(), 200);
}

/// A WebSocket opened from any web page was accepted. Now one whose
/// `Origin` is neither the server's own nor listed in CHAT_CORS_ORIGINS gets
/// 403; clients that are no browser send none and are unaffected.
#[tokio::test]
async fn websockets_from_other_sites_pages_are_refused() {
    let server = server_with(&[("CHAT_CORS_ORIGINS", "https://app.example.com")]).await;
    let alice = server.user("alice").await;
    let host = address(&server);
    for (origin, expected) in [
        (Some("https://evil.example".to_owned()), "403"),
        (Some("null".to_owned()), "403"),
        (Some(format!("http://{host}")), "101"),
        (Some("https://app.example.com".to_owned()), "101"),
        (None, "101"),
    ] {
        let mut stream = TcpStream::connect(&host).await.unwrap();
        let origin_line = origin
            .as_ref()
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {}\r\n{origin_line}\r\n",
            alice.token
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        // A refusal ends with its JSON body, an upgrade with its headers.
        let upgraded = |a: &[u8]| a.starts_with(b"HTTP/1.1 101") && a.ends_with(b"\r\n\r\n");
        while !(answer.ends_with(b"}") || upgraded(&answer)) {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
        let status = String::from_utf8_lossy(&answer);
        assert!(
            status.starts_with(&format!("HTTP/1.1 {expected}")),
            "{origin:?}: {status}"
        );
        if expected == "403" {
            assert!(status.contains("origin_not_allowed"), "{status}");
        }
    }
}

/// Searches and history pages by `offset` had no limit, and cost grows with
/// the room (6 ms and 21 ms per 10,000 messages). They now spend a read
/// budget per user: a search 5 units, a page 1 per 1,000 messages skipped,
/// of 100 (10 more a second); pages by `before_seq` and the latest page are
/// free.
#[tokio::test]
async fn searches_and_deep_history_pages_spend_a_read_budget() {
    let server = server_with(&[]).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "archive", false).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (status, body) = server.get("/api/search?q=hello", &alice.token).await;
        if status == 429 {
            assert_eq!(code(&body), "rate_limited", "{body}");
        }
        statuses.push(status);
    }
    let first_refused = statuses.iter().position(|s| *s == 429);
    assert!(
        first_refused.is_some_and(|at| (19..=24).contains(&at)),
        "{statuses:?}"
    );
    // Another user's budget is their own; cheap pages stay free.
    let bob = server.user("bob").await;
    server.join(&bob, &room).await;
    for _ in 0..30 {
        for page in ["offset=0", "before_seq=5"] {
            let (status, body) = server
                .get(&format!("/api/rooms/{room}/messages?{page}"), &bob.token)
                .await;
            assert_eq!(status, 200, "{page}: {body}");
        }
    }
    let deep = format!("/api/rooms/{room}/messages?offset=50000");
    assert_eq!(server.get(&deep, &bob.token).await.0, 200);
    let (status, body) = server.get(&deep, &bob.token).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
}

/// Sign-up says which field is taken, so it tells whether an e-mail is
/// registered. No answer can hide that without e-mail verification (a probe
/// with a fresh username isolates the e-mail), so the answer stays useful
/// and the probing is bounded instead: every attempt, refused or not, spends
/// the address's sign-up budget.
#[tokio::test]
async fn probing_e_mails_through_sign_up_spends_the_sign_up_budget() {
    let server = server_with(&[("CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR", "6")]).await;
    let client = reqwest::Client::new();
    let probe = |username: String| {
        client
            .post(server.url("/api/auth/register"))
            .json(&json!({"username": username, "email": "victim@example.com", "password": "password-123"}))
            .send()
    };
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(probe(format!("probe{i}")).await.unwrap().status().as_u16());
    }
    // The burst is a third of the hour's budget: the first creates the
    // account, the next probe learns the e-mail is taken, then 429.
    assert_eq!(statuses[..2], [201, 409], "{statuses:?}");
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
}

/// Anyone could open a direct room with anyone, write in it, and add anyone
/// to a room; there was no way to block someone. Now a user blocks another,
/// who then cannot start a direct message with them, write in their direct
/// room, or add them to a room.
async fn blocking_someone_stops_their_direct_messages_and_invitations(backend: Backend) {
    use reqwest::Method;
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    let dm = server.dm(&mallory, &alice).await;
    let mut ws = WsClient::connect(&server, &ws_query(&mallory, Some(&dm)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    let say = |n: u32| json!({"type": "message", "room_id": dm, "content": format!("hey {n}")});
    assert_eq!(taken(&mut ws, say(1)).await["type"], "ack");

    let block = format!("/api/users/me/blocks/{}", mallory.id);
    let (status, body) = server
        .call(Method::PUT, &block, Some(&alice.token), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (_, list) = server.get("/api/users/me/blocks", &alice.token).await;
    assert_eq!(list["users"], json!([mallory.id]));
    let refused = taken(&mut ws, say(2)).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let (status, body) = server
        .post(
            &format!("/api/dm/{}", alice.id),
            Some(&mallory.token),
            json!({}),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "blocked"), "{body}");
    let trap = server.room(&mallory, "trap", true).await;
    let (status, body) = server
        .post(
            &format!("/api/rooms/{trap}/members/{}", alice.id),
            Some(&mallory.token),
            json!({}),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "blocked"), "{body}");
    // Others are not affected; nor is what Alice does.
    let bob = server.user("bob").await;
    let (status, _) = server
        .post(
            &format!("/api/dm/{}", alice.id),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = server
        .post(
            &format!("/api/dm/{}", mallory.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "the room exists");
    // What cannot be blocked.
    let (status, _) = server
        .call(
            Method::PUT,
            &format!("/api/users/me/blocks/{}", alice.id),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = server
        .call(
            Method::PUT,
            "/api/users/me/blocks/0123456789abcdef01234567",
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 404);

    let (status, _) = server
        .call(Method::DELETE, &block, Some(&alice.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(taken(&mut ws, say(3)).await["type"], "ack");
}
