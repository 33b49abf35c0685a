//! Profiles: a display name, an avatar colour and a picture, seen by others
//! live (`user_updated`) and through the API.

use serde_json::json;

use crate::common::{Backend, TestServer, WsClient, code, download, png, ws_query};
use crate::on_both_stores;

on_both_stores!(profiles_change_for_everyone_at_once);

async fn put_avatar(server: &TestServer, token: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = server
        .client
        .put(server.url("/api/users/me/avatar"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn profiles_change_for_everyone_at_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    // A change reaches those who share a room with alice.
    let room = server.room(&alice, "tea", false).await;
    server.join(&bob, &room).await;
    let mut bob_ws = WsClient::connect(&server, &ws_query(&bob, None))
        .await
        .unwrap();

    let (status, me) = server
        .call(
            reqwest::Method::PATCH,
            "/api/users/me",
            Some(&alice.token),
            Some(json!({"display_name": "Alice Liddell", "avatar_color": "#3A7BD5"})),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["avatar_color"], "#3a7bd5");
    let update = bob_ws.next_of("user_updated").await;
    assert_eq!(update["user"]["id"], alice.id.as_str());
    assert_eq!(update["user"]["display_name"], "Alice Liddell");
    assert_eq!(update["user"]["avatar_color"], "#3a7bd5");
    assert!(update["user"].get("email").is_none(), "no e-mail to others");
    for bad in ["red", "#12345", "url(javascript:x)"] {
        let (status, refused) = server
            .call(
                reqwest::Method::PATCH,
                "/api/users/me",
                Some(&alice.token),
                Some(json!({"avatar_color": bad})),
            )
            .await;
        assert_eq!(
            (status, refused["error"]["field"].as_str()),
            (422, Some("avatar_color"))
        );
    }

    // A picture: made a 128 px square, served to any signed-in user.
    let (status, me) = put_avatar(&server, &alice.token, png(300, 100)).await;
    assert_eq!(status, 200, "{me}");
    let url = me["avatar_url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("/api/users/{}/avatar?v=", alice.id)),
        "{url}"
    );
    let update = bob_ws.next_of("user_updated").await;
    assert_eq!(update["user"]["avatar_url"], url.as_str());
    let (status, headers, image) = download(&server, &bob, &url).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/jpeg");
    let decoded = image::load_from_memory(&image).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (128, 128));
    let etag = headers["etag"].clone();
    let again = server
        .client
        .get(server.url(&url))
        .bearer_auth(&bob.token)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    let anonymous = server.client.get(server.url(&url)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // Only pictures.
    let (status, refused) =
        put_avatar(&server, &alice.token, b"<svg onload=alert(1)/>".to_vec()).await;
    assert_eq!(
        (status, refused["error"]["field"].as_str()),
        (422, Some("avatar"))
    );
    let (status, refused) = put_avatar(&server, &alice.token, Vec::new()).await;
    assert_eq!((status, code(&refused)), (400, "empty_file"));

    // Removed: the profile names none, and there is none to read.
    let (status, me) = server
        .call(
            reqwest::Method::DELETE,
            "/api/users/me/avatar",
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(me["avatar_url"].is_null(), "{me}");
    let (status, _, _) = download(&server, &bob, &url).await;
    assert_eq!(status, 404);
    let (_, seen) = server
        .get(&format!("/api/users/{}", alice.id), &bob.token)
        .await;
    assert_eq!(seen["display_name"], "Alice Liddell");
    assert!(seen["avatar_url"].is_null());
}
