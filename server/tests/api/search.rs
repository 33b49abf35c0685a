//! Search across the rooms a user can read: every word must match, the best
//! first, on messages as they are now, never in private rooms of others.

use serde_json::{Value, json};

use crate::common::{Backend, TestServer, TestUser, WsClient, ws_query};
use crate::on_both_stores;

on_both_stores!(search_ranks_current_text_in_readable_rooms_only);

/// Posts `content` in `room` from `ws` and returns its seq.
async fn post(ws: &mut WsClient, room: &str, content: &str) -> u64 {
    ws.send(json!({"type": "join", "room_id": room})).await;
    ws.next_of("joined").await;
    ws.send(json!({"type": "message", "room_id": room, "content": content}))
        .await;
    ws.next_of("ack").await["seq"].as_u64().unwrap()
}

async fn edit(ws: &mut WsClient, room: &str, seq: u64, content: &str) {
    ws.send(json!({"type": "edit", "room_id": room, "seq": seq, "content": content}))
        .await;
    ws.next_of("ack").await;
}

async fn search(server: &TestServer, user: &TestUser, query: &str) -> (u16, Value) {
    server
        .get(&format!("/api/search?{query}"), &user.token)
        .await
}

fn contents(found: &Value) -> Vec<&str> {
    found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["message"]["content"].as_str().unwrap())
        .collect()
}

async fn search_ranks_current_text_in_readable_rooms_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let lobby = server.room(&alice, "lobby", false).await;
    let secret = server.room(&alice, "secret", true).await;
    server.join(&bob, &lobby).await;
    let mut alice_ws = WsClient::connect(&server, &ws_query(&alice, None))
        .await
        .unwrap();
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();

    post(
        &mut alice_ws,
        &lobby,
        "we deploy on friday, then rest after the long week",
    )
    .await;
    post(&mut alice_ws, &lobby, "lunch?").await;
    post(&mut alice_ws, &lobby, "the deploy friday went fine").await;
    post(&mut alice_ws, &secret, "deploy friday: the secret plan").await;
    let old = post(&mut alice_ws, &lobby, "old words").await;
    edit(&mut alice_ws, &lobby, old, "deploy friday, edited in").await;
    let gone = post(&mut bob_ws, &lobby, "deploy friday from bob").await;
    edit(&mut bob_ws, &lobby, gone, "nothing to see").await;

    let (status, found) = search(&server, &bob, "q=Deploy%20Friday").await;
    assert_eq!(status, 200, "{found}");
    let hits = contents(&found);
    assert!(
        !hits.iter().any(|c| c.contains("secret")),
        "a private room leaked: {hits:?}"
    );
    assert!(!hits.contains(&"nothing to see") && !hits.contains(&"deploy friday from bob"));
    assert!(
        hits.contains(&"deploy friday, edited in"),
        "matched by its edit: {hits:?}"
    );
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(
        hits[2], "we deploy on friday, then rest after the long week",
        "closest last: {hits:?}"
    );
    let first = &found["results"][0];
    assert_eq!(first["room_name"], "lobby");
    let snippet = first["snippet"]["text"].as_str().unwrap();
    for range in first["snippet"]["highlights"].as_array().unwrap() {
        let (start, end) = (
            range[0].as_u64().unwrap() as usize,
            range[1].as_u64().unwrap() as usize,
        );
        let marked: String = snippet.chars().skip(start).take(end - start).collect();
        assert!(
            ["deploy", "friday"].contains(&marked.to_lowercase().as_str()),
            "{marked}"
        );
    }

    // Narrowed to one room, or to one sender.
    let (_, mine) = search(&server, &alice, &format!("q=deploy&room_id={secret}")).await;
    assert_eq!(contents(&mine), ["deploy friday: the secret plan"]);
    let (status, _) = search(&server, &carol, &format!("q=deploy&room_id={secret}")).await;
    assert_eq!(status, 404, "another's private room is no room");
    let (_, by_bob) = search(&server, &alice, &format!("q=friday&from={}", bob.id)).await;
    assert!(
        contents(&by_bob).is_empty(),
        "bob's only match was edited away"
    );

    // What is not a query.
    for bad in [
        "q=%20%3F",
        "q=a",
        "q=deploy&limit=0",
        "q=deploy&before=yesterday",
    ] {
        let (status, body) = search(&server, &alice, bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (status, _) = search(&server, &alice, "q=deploy&from=%7B%22%24gt%22%3A%22%22%7D").await;
    assert_eq!(
        status, 404,
        "an injection attempt is no user, as any bad id"
    );
}

/// Search on the embedded store at scale: 20 public rooms of 10,000
/// messages (12 words each from a vocabulary of 5,000), written through the
/// store as the persist path writes them; then queries for a rare word, a
/// common word and two words, over HTTP, 15 times each. Prints the write
/// rate, the file size and the median time per query kind.
///
///   cargo test -p chat-server --test api -- search::measure --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints figures"]
async fn measure_search_on_the_embedded_store() {
    use chat_server::model::{Id, Message, MessageKind};
    use std::time::Instant;

    const ROOMS: usize = 20;
    const PER_ROOM: u64 = 10_000;
    let (env, temp) = crate::common::env_for(Backend::Embedded);
    let file = temp.path().join("chat.redb");
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let alice = server.user("alice").await;
    let author: Id = alice.id.parse().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let vocabulary: Vec<String> = (0..5_000)
        .map(|_| {
            let len = 4 + random(6);
            (0..len)
                .map(|_| char::from(b'a' + random(26) as u8))
                .collect()
        })
        .collect();
    let (common, second, rare) = (
        vocabulary[0].clone(),
        vocabulary[1].clone(),
        vocabulary[4_990].clone(),
    );
    // A Zipf-like pick: low indexes are common words, high ones rare.
    let mut word = move || {
        let rank = (random(1_000_000) as f64 / 1_000_000.0).powi(3) * 5_000.0;
        vocabulary[(rank as usize).min(4_999)].clone()
    };
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        rooms.push(server.room(&alice, &format!("room-{r}"), false).await);
    }
    let started = Instant::now();
    for room in &rooms {
        let room: Id = room.parse().unwrap();
        for chunk in (2..PER_ROOM + 2).collect::<Vec<_>>().chunks(2_000) {
            let batch: Vec<(Message, Option<String>)> = chunk
                .iter()
                .map(|&seq| {
                    let text = (0..12).map(|_| word()).collect::<Vec<_>>().join(" ");
                    let message =
                        Message::new(MessageKind::Text, room, author, "alice".into(), text);
                    (Message { seq, ..message }, None)
                })
                .collect();
            server.state.store.insert_messages(&batch).await.unwrap();
        }
    }
    let written = started.elapsed();
    let total = ROOMS as u64 * PER_ROOM;
    let data = server.state.store.name();
    println!(
        "wrote {total} messages in {:.1} s: {:.0} messages/s ({data} store)",
        written.as_secs_f64(),
        total as f64 / written.as_secs_f64()
    );
    // Then as the live path commits: small batches spread over the rooms.
    const LIVE: u64 = 20_000;
    const LIVE_BATCH: u64 = 32;
    let batches: Vec<Vec<(Message, Option<String>)>> = (0..LIVE / LIVE_BATCH)
        .map(|b| {
            (0..LIVE_BATCH)
                .map(|i| {
                    let n = b * LIVE_BATCH + i;
                    let room: Id = rooms[(n % ROOMS as u64) as usize].parse().unwrap();
                    let text = (0..12).map(|_| word()).collect::<Vec<_>>().join(" ");
                    let message =
                        Message::new(MessageKind::Text, room, author, "alice".into(), text);
                    // Keyed as a web client's messages are (a client_id each).
                    let seq = PER_ROOM + 2 + n / ROOMS as u64;
                    (
                        Message { seq, ..message },
                        Some(format!("{author}:live-{n}")),
                    )
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    for batch in &batches {
        server.state.store.insert_messages(batch).await.unwrap();
    }
    println!(
        "then {LIVE} messages in batches of {LIVE_BATCH}: {:.0} messages/s",
        LIVE as f64 / started.elapsed().as_secs_f64()
    );
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    println!("database file: {:.1} MB", size as f64 / 1e6);
    for (kind, query) in [
        ("a common word", common.clone()),
        ("a rare word", rare),
        ("two common words", format!("{common} {second}")),
    ] {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..15 {
            let at = Instant::now();
            let (status, found) = search(&server, &alice, &format!("q={query}")).await;
            times.push(at.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{found}");
            hits = found["results"].as_array().unwrap().len();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{kind} ({query:?}): median {:.1} ms, {hits} results",
            times[times.len() / 2]
        );
    }
}
