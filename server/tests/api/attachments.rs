//! Files in rooms: uploaded, sniffed, thumbnailed, posted with a message
//! through the seq'd stream, served only to the room's members, counted
//! against a quota, and gone with their room.

use serde_json::{Value, json};

use crate::common::{
    Backend, TestServer, WsClient, code, connect_to, download, env_for, png, upload, ws_query,
};
use crate::on_both_stores;

on_both_stores!(
    files_reach_the_room_and_nobody_else,
    uploads_are_checked_for_size_type_and_quota,
    the_quota_holds_when_uploads_race,
    files_never_sent_expire
);

async fn files_reach_the_room_and_nobody_else(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let secret = server.room(&alice, "secret", true).await;
    let (status, _) = server
        .post(
            &format!("/api/rooms/{secret}/members/{}", bob.id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let mut alice_ws = connect_to(&server, &alice, &secret).await;
    let mut bob_ws = connect_to(&server, &bob, &secret).await;

    let picture = png(1200, 600);
    let (status, file) = upload(&server, &alice, &secret, "../holiday.png", picture.clone()).await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["filename"], "holiday.png", "no path survives");
    assert_eq!(file["content_type"], "image/png");
    assert_eq!(file["size"], picture.len());
    assert_eq!(
        (file["width"].as_u64(), file["height"].as_u64()),
        (Some(1200), Some(600))
    );
    assert_eq!(file["thumbnail"], true);
    let id = file["id"].as_str().unwrap().to_owned();

    // Posted with no text: the file is the message, live and in history.
    alice_ws
        .send(json!({"type": "message", "room_id": secret, "content": "", "attachments": [id]}))
        .await;
    let ack = alice_ws.next_of("ack").await;
    let live = bob_ws.next_message().await;
    assert_eq!(live["attachments"][0]["id"], id.as_str(), "{live}");
    assert_eq!(live["seq"], ack["seq"]);
    let (_, history) = server
        .get(&format!("/api/rooms/{secret}/messages"), &bob.token)
        .await;
    let last = history["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["attachments"][0], file, "{history}");

    let (status, headers, body) = download(&server, &bob, &format!("/api/attachments/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, picture);
    assert_eq!(headers["content-type"], "image/png");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline; filename=\"holiday.png\"")
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    let (status, headers, thumb) =
        download(&server, &bob, &format!("/api/attachments/{id}/thumbnail")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/jpeg");
    let small = image::load_from_memory(&thumb).unwrap();
    assert_eq!((small.width(), small.height()), (320, 160));

    // Carol is no member: she cannot read it, upload there, or post it elsewhere.
    for path in [
        format!("/api/attachments/{id}"),
        format!("/api/attachments/{id}/thumbnail"),
    ] {
        let (status, _, body) = download(&server, &carol, &path).await;
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    }
    let (status, refused) = upload(&server, &carol, &secret, "x.txt", b"hi".to_vec()).await;
    assert_eq!((status, code(&refused)), (404, "not_found"));
    let lobby = server.room(&carol, "lobby", false).await;
    // A public room's files are anyone's who may read its messages, as its
    // messages are, members or not.
    let (status, notice) = upload(
        &server,
        &carol,
        &lobby,
        "notice.txt",
        b"all welcome".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{notice}");
    let notice_id = notice["id"].as_str().unwrap();
    let (status, _, body) =
        download(&server, &alice, &format!("/api/attachments/{notice_id}")).await;
    assert_eq!((status, body.as_slice()), (200, &b"all welcome"[..]));
    let mut carol_ws = connect_to(&server, &carol, &lobby).await;
    carol_ws
        .send(json!({"type": "message", "room_id": lobby, "content": "look", "attachments": [id]}))
        .await;
    assert_eq!(carol_ws.next_of("error").await["code"], "not_found");
    // Nor may bob post alice's file as his own, in her room.
    bob_ws
        .send(json!({"type": "message", "room_id": secret, "content": "mine", "attachments": [id]}))
        .await;
    assert_eq!(bob_ws.next_of("error").await["code"], "not_found");
    let (status, _, _) = download(&server, &carol, "/api/attachments/not-an-id").await;
    assert_eq!(status, 404);

    // Markup is never served as a page: it is text, and a download.
    let page = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let (status, file) = upload(&server, &alice, &secret, "page.html", page).await;
    assert_eq!(status, 201);
    assert_eq!(file["content_type"], "text/plain; charset=utf-8");
    assert_eq!(file["thumbnail"], Value::Null);
    let html_id = file["id"].as_str().unwrap();
    let (status, headers, _) =
        download(&server, &bob, &format!("/api/attachments/{html_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    let (status, _, _) = download(
        &server,
        &bob,
        &format!("/api/attachments/{html_id}/thumbnail"),
    )
    .await;
    assert_eq!(status, 404, "no thumbnail for text");

    // A deleted message's files go with it.
    alice_ws
        .send(json!({"type": "message", "room_id": secret, "content": "the page", "attachments": [html_id]}))
        .await;
    let posted = alice_ws.next_of("ack").await["seq"].as_u64().unwrap();
    alice_ws
        .send(json!({"type": "delete", "room_id": secret, "seq": posted}))
        .await;
    alice_ws.next_of("ack").await;
    let (status, _, _) = download(&server, &bob, &format!("/api/attachments/{html_id}")).await;
    assert_eq!(status, 404, "the deleted message's file is gone");

    // Deleting the room takes its files along.
    let (status, _) = server
        .delete(&format!("/api/rooms/{secret}"), &alice.token)
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = download(&server, &alice, &format!("/api/attachments/{id}")).await;
    assert_eq!(status, 404);
    let metrics = server.metrics().await;
    assert!(metrics.contains("chat_uploads_total 3"), "{metrics}");
    drop(carol_ws);
}

async fn uploads_are_checked_for_size_type_and_quota(backend: Backend) {
    let (mut env, temp) = env_for(backend);
    env.insert("CHAT_MAX_ATTACHMENT_BYTES", "4096".into());
    env.insert("CHAT_UPLOAD_QUOTA_BYTES", "6000".into());
    let data_dir = temp.path().to_owned();
    let db = env.get("CHAT_MONGODB_DB").cloned();
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "files", false).await;

    let (status, body) = upload(&server, &alice, &room, "big.bin", vec![7; 5000]).await;
    assert_eq!((status, code(&body)), (413, "file_too_large"), "{body}");
    let (status, body) = upload(&server, &alice, &room, "empty.txt", Vec::new()).await;
    assert_eq!((status, code(&body)), (400, "empty_file"));

    // A file not sent after all is deleted by its uploader (nobody else),
    // which gives its bytes back.
    let (status, dropped) = upload(&server, &alice, &room, "draft.bin", vec![9; 4000]).await;
    assert_eq!(status, 201);
    let path = format!("/api/attachments/{}", dropped["id"].as_str().unwrap());
    let bob = server.user("bob").await;
    let (status, body) = server.delete(&path, &bob.token).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, _) = server.delete(&path, &alice.token).await;
    assert_eq!(status, 204);
    let (status, _, _) = download(&server, &alice, &path).await;
    assert_eq!(status, 404);

    // The same bytes twice: two files, one stored copy, both counted.
    let (status, first) = upload(&server, &alice, &room, "a.bin", vec![1; 2500]).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["content_type"], "application/octet-stream");
    let (status, _) = upload(&server, &alice, &room, "b.bin", vec![1; 2500]).await;
    assert_eq!(status, 201);
    let (status, body) = upload(&server, &alice, &room, "c.bin", vec![2; 2500]).await;
    assert_eq!((status, code(&body)), (403, "quota_exceeded"), "{body}");
    if backend == Backend::Embedded {
        let stored = walk(&data_dir.join("attachments"));
        assert_eq!(stored, 1, "one copy per content");
    }

    // A corrupt image is kept as a plain file, without a thumbnail.
    let mut broken = png(40, 40);
    broken.truncate(broken.len() - 30);
    let (_, body) = upload(&server, &alice, &room, "broken.png", vec![]).await;
    assert_eq!(code(&body), "empty_file");
    let room2 = server.room(&alice, "more", false).await;
    let (status, _) = server
        .delete(&format!("/api/rooms/{room}"), &alice.token)
        .await;
    assert_eq!(status, 204);
    let (status, file) = upload(&server, &alice, &room2, "broken.png", broken).await;
    assert_eq!(status, 201, "deleting the room gave the quota back: {file}");
    assert_eq!(file["content_type"], "application/octet-stream");
    assert_eq!(file["thumbnail"], Value::Null);
    let stored = match &db {
        None => walk(&data_dir.join("attachments")),
        Some(db) => stored_in_gridfs(db).await,
    };
    assert_eq!(stored, 1, "the deleted room's file is gone");

    // Too many files for one message, and files nobody uploaded.
    let mut ws = WsClient::connect(&server, &ws_query(&alice, Some(&room2)))
        .await
        .unwrap();
    ws.next_of("joined").await;
    let ids: Vec<String> = (0..11)
        .map(|_| chat_server::model::Id::new().to_string())
        .collect();
    ws.send(json!({"type": "message", "room_id": room2, "content": "x", "attachments": ids}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "too_many_attachments");
    ws.send(json!({"type": "message", "room_id": room2, "content": "", "attachments": [ids[0]]}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "not_found");
    ws.send(json!({"type": "message", "room_id": room2, "content": "", "attachments": ["{\"$gt\":\"\"}"]}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "invalid_frame");
}

async fn the_quota_holds_when_uploads_race(backend: Backend) {
    let (mut env, temp) = env_for(backend);
    env.insert("CHAT_UPLOAD_QUOTA_BYTES", "10000".into());
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "race", false).await;
    // Eight uploads of 3,000 bytes at once against 10,000: three fit.
    let uploads = (0..8u8).map(|n| upload(&server, &alice, &room, "part.bin", vec![n; 3000]));
    let answers = futures::future::join_all(uploads).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [201, 201, 201, 403, 403, 403, 403, 403],
        "{answers:?}"
    );
    // Deleting one makes room for one more, exactly.
    let stored = answers.iter().find(|(status, _)| *status == 201).unwrap();
    let path = format!("/api/attachments/{}", stored.1["id"].as_str().unwrap());
    let (status, _) = server.delete(&path, &alice.token).await;
    assert_eq!(status, 204);
    let (status, _) = upload(&server, &alice, &room, "again.bin", vec![9; 3000]).await;
    assert_eq!(status, 201);
    let (status, body) = upload(&server, &alice, &room, "over.bin", vec![10; 1001]).await;
    assert_eq!((status, code(&body)), (403, "quota_exceeded"));
    let (status, _) = upload(&server, &alice, &room, "fits.bin", vec![11; 1000]).await;
    assert_eq!(status, 201, "exactly up to the quota");
}

async fn files_never_sent_expire(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "drafts", false).await;
    let mut ws = connect_to(&server, &alice, &room).await;
    let (_, sent) = upload(&server, &alice, &room, "sent.txt", b"kept".to_vec()).await;
    let (_, draft) = upload(&server, &alice, &room, "draft.txt", b"left behind".to_vec()).await;
    let sent_id = sent["id"].as_str().unwrap();
    ws.send(json!({"type": "message", "room_id": room, "content": "", "attachments": [sent_id]}))
        .await;
    ws.next_of("ack").await;

    // As the hourly sweep a day later: the draft goes, the sent file stays.
    let later = chat_server::model::now() + time::Duration::minutes(1);
    let expired = server.state.store.expire_unsent(later).await.unwrap();
    assert_eq!(expired, 1);
    let (status, _, _) = download(&server, &alice, &format!("/api/attachments/{sent_id}")).await;
    assert_eq!(status, 200);
    let draft_id = draft["id"].as_str().unwrap();
    let (status, _, _) = download(&server, &alice, &format!("/api/attachments/{draft_id}")).await;
    assert_eq!(status, 404);
    let author: chat_server::model::Id = alice.id.parse().unwrap();
    let used = server.state.store.uploaded_bytes(author).await.unwrap();
    assert_eq!(used, 4, "the draft's bytes were given back");
    // An expired file cannot be sent any more.
    ws.send(json!({"type": "message", "room_id": room, "content": "", "attachments": [draft_id]}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "not_found");
}

/// How many files the GridFS bucket of database `db` holds.
async fn stored_in_gridfs(db: &str) -> usize {
    let client = mongodb::Client::with_uri_str(crate::common::mongodb_uri())
        .await
        .unwrap();
    let files = client
        .database(db)
        .collection::<mongodb::bson::Document>("blobs.files")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    usize::try_from(files).unwrap()
}

/// How many files are under `dir`, temporary ones included.
fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            if entry.path().is_dir() {
                walk(&entry.path())
            } else {
                1
            }
        })
        .sum()
}
