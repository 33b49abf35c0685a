//! Registration, sign-in, token refresh and revocation, profiles.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer, code};
use crate::on_both_stores;

on_both_stores!(
    register_validates_every_field,
    duplicate_usernames_and_emails_conflict,
    login_failures_look_alike,
    refresh_rotates_and_logout_revokes,
    a_reused_refresh_token_revokes_its_sign_in_only,
    sign_out_everywhere_and_password_change_revoke_every_sign_in,
    tokens_are_checked,
    profile_updates,
    users_are_found_by_username,
    injection_attempts_are_plain_data,
);

async fn users_are_found_by_username(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("Bob.Builder").await;
    let (status, found) = server
        .get("/api/users?username=bob.builder", &alice.token)
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["id"], bob.id.as_str(), "any case finds the user");
    assert_eq!(found["username"], "Bob.Builder");
    assert!(found.get("email").is_none(), "a public profile: {found}");

    let (status, error) = server.get("/api/users?username=nobody", &alice.token).await;
    assert_eq!((status, code(&error)), (404, "not_found"));
    let (status, error) = server
        .get(
            "/api/users?username=%7B%22%24gt%22%3A%22%22%7D",
            &alice.token,
        )
        .await;
    assert_eq!(status, 422, "{error}");
    let (status, _) = server.get("/api/users", &alice.token).await;
    assert_eq!(status, 400);
    let (status, _) = server.get("/api/users?username=alice", "not-a-token").await;
    assert_eq!(status, 401);
}

async fn register_validates_every_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let cases = [
        (
            json!({"username": "ab", "email": "a@example.com", "password": "password1"}),
            "username",
        ),
        (
            json!({"username": "bad name", "email": "a@example.com", "password": "password1"}),
            "username",
        ),
        (
            json!({"username": "alice", "email": "not-an-email", "password": "password1"}),
            "email",
        ),
        (
            json!({"username": "alice", "email": "a@example.com", "password": "short"}),
            "password",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = server.post("/api/auth/register", None, body.clone()).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let (status, error) = server
        .post(
            "/api/auth/register",
            None,
            json!({"username": "alice", "password": "password1"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("email"),
        "{error}"
    );

    let (status, user) = server
        .post(
            "/api/auth/register",
            None,
            json!({"username": "alice", "email": "Alice@Example.com", "password": "password1"}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["username"], "alice");
    assert_eq!(user["email"], "alice@example.com");
    assert!(
        user.get("password").is_none() && user.get("password_hash").is_none(),
        "{user}"
    );
    assert_eq!(user["id"].as_str().unwrap().len(), 24);
}

async fn duplicate_usernames_and_emails_conflict(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let (status, error) = server
        .post(
            "/api/auth/register",
            None,
            json!({"username": "ALICE", "email": "other@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!((status, code(&error)), (409, "already_exists"), "{error}");
    assert_eq!(error["error"]["field"], "username");
    let (status, error) = server
        .post(
            "/api/auth/register",
            None,
            json!({"username": "alice2", "email": "ALICE@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!((status, code(&error)), (409, "already_exists"), "{error}");
    assert_eq!(error["error"]["field"], "email");
}

async fn login_failures_look_alike(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let (status_wrong_password, wrong_password) = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": "alice@example.com", "password": "wrong-password"}),
        )
        .await;
    let (status_no_account, no_account) = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": "nobody@example.com", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(status_wrong_password, 401);
    assert_eq!(
        (status_wrong_password, &wrong_password),
        (status_no_account, &no_account),
        "responses must not reveal accounts"
    );
    let (status, session) = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": " ALICE@example.com ", "password": "password-alice"}),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user"]["username"], "alice");
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
}

async fn refresh_rotates_and_logout_revokes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let (status, renewed) = server
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": alice.refresh_token}),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let new_refresh = renewed["refresh_token"].as_str().unwrap();
    assert_ne!(new_refresh, alice.refresh_token);
    let (status, me) = server
        .get("/api/users/me", renewed["token"].as_str().unwrap())
        .await;
    assert_eq!((status, me["username"].as_str()), (200, Some("alice")));

    // The old refresh token was consumed by the rotation.
    let (status, error) = server
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": alice.refresh_token}),
        )
        .await;
    assert_eq!((status, code(&error)), (401, "invalid_refresh_token"));

    let (status, _) = server
        .post(
            "/api/auth/logout",
            None,
            json!({"refresh_token": new_refresh}),
        )
        .await;
    assert_eq!(status, 204);
    let (status, error) = server
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": new_refresh}),
        )
        .await;
    assert_eq!((status, code(&error)), (401, "invalid_refresh_token"));
}

async fn refresh(server: &TestServer, token: &str) -> (u16, serde_json::Value) {
    server
        .post("/api/auth/refresh", None, json!({"refresh_token": token}))
        .await
}

async fn sign_in(server: &TestServer, name: &str, password: &str) -> (u16, serde_json::Value) {
    server
        .post(
            "/api/auth/login",
            None,
            json!({"email": format!("{name}@example.com"), "password": password}),
        )
        .await
}

async fn a_reused_refresh_token_revokes_its_sign_in_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let laptop = server.user("alice").await;
    let (status, phone) = sign_in(&server, "alice", "password-alice").await;
    assert_eq!(status, 200);
    let (status, renewed) = refresh(&server, &laptop.refresh_token).await;
    assert_eq!(status, 200);
    // Someone copied the laptop's first token and uses it after the owner did.
    let (status, error) = refresh(&server, &laptop.refresh_token).await;
    assert_eq!((status, code(&error)), (401, "invalid_refresh_token"));
    // The laptop's sign-in is revoked: its current token no longer works either.
    let (status, _) = refresh(&server, renewed["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 401, "the thief's or the owner's copy lives on");
    // The phone's sign-in is another family.
    let (status, _) = refresh(&server, phone["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200);
}

async fn sign_out_everywhere_and_password_change_revoke_every_sign_in(backend: Backend) {
    let server = TestServer::start(backend).await;
    let laptop = server.user("alice").await;
    let (_, phone) = sign_in(&server, "alice", "password-alice").await;
    let (status, _) = server
        .call(
            Method::POST,
            "/api/auth/logout-all",
            Some(&laptop.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    for token in [
        laptop.refresh_token.as_str(),
        phone["refresh_token"].as_str().unwrap(),
    ] {
        let (status, _) = refresh(&server, token).await;
        assert_eq!(status, 401);
    }

    let bob = server.user("bob").await;
    let (_, tablet) = sign_in(&server, "bob", "password-bob").await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let (status, error) = server
        .call(
            Method::PUT,
            "/api/users/me/password",
            Some(&bob.token),
            Some(change("not-my-password", "a brand new secret")),
        )
        .await;
    assert_eq!((status, code(&error)), (401, "invalid_credentials"));
    let (status, error) = server
        .call(
            Method::PUT,
            "/api/users/me/password",
            Some(&bob.token),
            Some(change("password-bob", "short")),
        )
        .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("new_password"))
    );
    let (status, session) = server
        .call(
            Method::PUT,
            "/api/users/me/password",
            Some(&bob.token),
            Some(change("password-bob", "a brand new secret")),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    for token in [
        bob.refresh_token.as_str(),
        tablet["refresh_token"].as_str().unwrap(),
    ] {
        let (status, _) = refresh(&server, token).await;
        assert_eq!(status, 401, "a sign-in survived the password change");
    }
    let (status, _) = refresh(&server, session["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "this device stays signed in");
    assert_eq!(sign_in(&server, "bob", "password-bob").await.0, 401);
    assert_eq!(sign_in(&server, "bob", "a brand new secret").await.0, 200);
}

async fn tokens_are_checked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let (status, error) = server.call(Method::GET, "/api/users/me", None, None).await;
    assert_eq!((status, code(&error)), (401, "missing_token"));
    let forged = format!("{}x", alice.token);
    let (status, error) = server.get("/api/users/me", &forged).await;
    assert_eq!((status, code(&error)), (401, "invalid_token"));
    let response = server
        .client
        .get(server.url("/api/users/me"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    // A token signed by another server's key (another embedded data dir) is refused.
    let other = TestServer::start(Backend::Embedded).await;
    let stranger = other.user("mallory").await;
    let (status, error) = server.get("/api/users/me", &stranger.token).await;
    assert_eq!((status, code(&error)), (401, "invalid_token"));
}

async fn profile_updates(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let patch = |body| {
        server.call(
            Method::PATCH,
            "/api/users/me",
            Some(&alice.token),
            Some(body),
        )
    };

    let (status, me) = patch(
        json!({"display_name": "  Alice A.  ", "avatar_url": "https://cdn.example.com/a.png"}),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["display_name"], "Alice A.");
    assert_eq!(me["avatar_url"], "https://cdn.example.com/a.png");

    let (status, error) = patch(json!({"avatar_url": "javascript:alert(1)"})).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("avatar_url"))
    );
    let (status, error) = patch(json!({"display_name": ""})).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("display_name"))
    );
    let (status, _) = patch(json!({"email": "new@example.com"})).await;
    assert_eq!(status, 422, "unknown fields are refused, not ignored");

    // Leaving a field out keeps it; null clears it.
    let (status, me) = patch(json!({"avatar_url": null})).await;
    assert_eq!(status, 200);
    assert_eq!(me["display_name"], "Alice A.");
    assert!(me["avatar_url"].is_null());

    let (status, seen) = server
        .get(&format!("/api/users/{}", alice.id), &bob.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(seen["display_name"], "Alice A.");
    assert!(
        seen.get("email").is_none(),
        "another user's email is private: {seen}"
    );

    for unknown in ["0123456789abcdef01234567", "nope", "{\"$gt\":\"\"}"] {
        let (status, error) = server
            .get(&format!("/api/users/{unknown}"), &bob.token)
            .await;
        assert_eq!((status, code(&error)), (404, "not_found"), "{unknown}");
    }
}

async fn injection_attempts_are_plain_data(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    for body in [
        json!({"email": {"$gt": ""}, "password": {"$gt": ""}}),
        json!({"email": "alice@example.com", "password": {"$ne": null}}),
    ] {
        let (status, error) = server.post("/api/auth/login", None, body.clone()).await;
        assert_eq!(
            (status, code(&error)),
            (422, "validation_failed"),
            "{body}: {error}"
        );
    }
    let (status, error) = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": "alice@example.com' || '1'=='1", "password": "x"}),
        )
        .await;
    assert_eq!((status, code(&error)), (401, "invalid_credentials"));
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_account() {
    let server = TestServer::start(Backend::Embedded).await;
    server.user("alice").await;
    let wrong = json!({"email": "alice@example.com", "password": "guess-guess"});
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(server.post("/api/auth/login", None, wrong.clone()).await.0);
    }
    // One attempt went to the sign-in of `server.user`.
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        9,
        "{statuses:?}"
    );
    let response = server
        .client
        .post(server.url("/api/auth/login"))
        .json(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["retry_after"].as_f64().unwrap() > 0.0);
    // Even the right password waits: the limit is on attempts, not failures.
    let (status, _) = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": "alice@example.com", "password": "password-alice"}),
        )
        .await;
    assert_eq!(status, 429);
    server.user("bob").await;
}
