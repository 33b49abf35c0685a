//! Probes, metrics, request ids, CORS, limits, and the binary's start-up and
//! shutdown behaviour.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{
    Backend, TestServer, code, env_for, free_port, start_redis, start_secantus, unique_db_name,
};

#[tokio::test]
async fn liveness_readiness_and_draining() {
    let server = TestServer::start(Backend::Embedded).await;
    let (status, body) = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"][0]["name"], "embedded");

    server.state.health.start_draining();
    let (status, body) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!((status, &body["draining"]), (503, &json!(true)));
    let (status, _) = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "draining is not dead");
}

#[tokio::test]
async fn readiness_follows_redis() {
    let mut redis = start_redis();
    let (mut env, temp) = env_for(Backend::Embedded);
    env.insert(
        "CHAT_REDIS_URL",
        format!("redis://127.0.0.1:{}", redis.port),
    );
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let (status, body) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"][1], json!({"name": "redis", "ok": true}));
    redis.kill();
    let (status, body) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"][1]["ok"], false);
}

#[tokio::test]
async fn readiness_follows_mongodb_and_requests_fail_cleanly_without_it() {
    let mut mongo = start_secantus(":memory:");
    let (mut env, temp) = env_for(Backend::Mongo);
    env.insert(
        "CHAT_MONGODB_URI",
        format!("mongodb://127.0.0.1:{}/?directConnection=true", mongo.port),
    );
    env.insert("CHAT_MONGODB_DB", unique_db_name());
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let alice = server.user("alice").await;
    let (status, _) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);

    mongo.kill();
    let started = Instant::now();
    let (status, body) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"][0]["name"], "mongodb");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "readiness answers within its deadline"
    );
    let (status, error) = server.get("/api/rooms", &alice.token).await;
    assert_eq!((status, code(&error)), (503, "unavailable"), "{error}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let server = TestServer::start(Backend::Embedded).await;
    let alice = server.user("alice").await;
    let room = server.room(&alice, "metered", false).await;
    server
        .get(&format!("/api/rooms/{room}"), &alice.token)
        .await;
    server
        .get("/api/rooms/0123456789abcdef01234567", &alice.token)
        .await;
    let text = server.metrics().await;
    assert!(
        text.contains(
            r#"chat_http_requests_total{method="GET",route="/api/rooms/{id}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"chat_http_requests_total{method="GET",route="/api/rooms/{id}",status="404"} 1"#
    ));
    assert!(text.contains(
        r#"chat_http_requests_total{method="POST",route="/api/auth/register",status="201"} 1"#
    ));
    assert!(text.contains("chat_http_request_duration_seconds_bucket"));
    assert!(!text.contains(&room), "raw ids never become labels");
}

#[tokio::test]
async fn requests_get_an_id_and_errors_are_json() {
    let server = TestServer::start(Backend::Embedded).await;
    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 36);
    let response = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "trace-me")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me");

    let (status, error) = server.call(Method::GET, "/no/such/route", None, None).await;
    assert_eq!((status, code(&error)), (404, "not_found"));
    let (status, error) = server
        .call(Method::DELETE, "/api/auth/login", None, None)
        .await;
    assert_eq!((status, code(&error)), (405, "method_not_allowed"));

    let post = |body: &'static [u8], content_type: &'static str| {
        server
            .client
            .post(server.url("/api/auth/register"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let response = post(b"{\"username\": ", "application/json").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "malformed_json"
    );
    let response = post(b"{\"username\": \"\xff\xfe\"}", "application/json")
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "invalid UTF-8 is malformed JSON");
    let response = post(b"username=alice", "application/x-www-form-urlencoded")
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "unsupported_media_type"
    );

    let huge =
        json!({"username": "alice", "email": "a@example.com", "password": "p".repeat(100_000)});
    let (status, error) = server.post("/api/auth/register", None, huge).await;
    assert_eq!((status, code(&error)), (413, "payload_too_large"));
}

#[tokio::test]
async fn cors_allows_exactly_the_configured_origins() {
    let (mut env, temp) = env_for(Backend::Embedded);
    env.insert("CHAT_CORS_ORIGINS", "https://chat.example.com".to_owned());
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let preflight = |origin: &'static str| {
        server
            .client
            .request(Method::OPTIONS, server.url("/api/rooms"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://chat.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

fn chat_server_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn bad_configuration_stops_start_up_with_one_line_naming_the_variable() {
    for (var, value, named) in [
        (
            "CHAT_MONGODB_URI",
            "mongodb://127.0.0.1:1",
            "CHAT_JWT_SECRET",
        ),
        ("CHAT_RATE_LIMIT_PER_SEC", "lots", "CHAT_RATE_LIMIT_PER_SEC"),
        ("CHAT_CORS_ORIGINS", "*", "CHAT_CORS_ORIGINS"),
    ] {
        let output = chat_server_binary().env(var, value).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = chat_server_binary()
        .env("CHAT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("CHAT_DATA_DIR", data.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chat-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "chat-server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("draining"), "{logs}");
    assert!(logs.contains("chat-server stopped"), "{logs}");
}

#[tokio::test]
async fn the_web_client_is_served_without_shadowing_the_api() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(
        web.path().join("index.html"),
        "<!doctype html><title>chatcluster</title>",
    )
    .unwrap();
    std::fs::create_dir(web.path().join("assets")).unwrap();
    std::fs::write(web.path().join("assets/index-abc123.js"), "console.log(1)").unwrap();
    let (mut env, temp) = env_for(Backend::Embedded);
    env.insert("CHAT_WEB_DIR", web.path().display().to_string());
    let server = TestServer::start_with_env(env, Some(temp)).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(server.url(path)).send();

    for page in ["/", "/rooms/6b04a1b2c3d4e5f601234567", "/settings"] {
        let response = get(page).await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        assert_eq!(response.headers()["cache-control"], "no-cache", "{page}");
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("<title>chatcluster"),
            "{page} is the client's page"
        );
    }
    let asset = get("/assets/index-abc123.js").await.unwrap();
    assert_eq!(asset.status(), 200);
    assert_eq!(
        asset.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(
        asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(get("/assets/gone-000.js").await.unwrap().status(), 404);

    // The server's own paths never fall through to the page.
    for path in ["/api/nope", "/api", "/ws/extra", "/healthz/x", "/metrics/x"] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(code(&body), "not_found", "{path}");
    }
    assert_eq!(get("/ws").await.unwrap().status(), 401);
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("chat_http_requests_total"));
    // Path traversal stays inside the directory.
    let response = get("/..%2f..%2fetc%2fpasswd").await.unwrap();
    assert!(!response.text().await.unwrap().contains("root:"));
}

/// Two servers, each on its own embedded store, sharing one Redis would half
/// work (accounts made on one unknown to the other): the second refuses to
/// start, saying why.
#[tokio::test]
async fn a_second_embedded_store_on_one_redis_is_refused_at_start_up() {
    let redis = start_redis();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let (mut env, temp) = env_for(Backend::Embedded);
    env.insert("CHAT_REDIS_URL", url.clone());
    let first = TestServer::start_with_env(env, Some(temp)).await;

    let other = tempfile::tempdir().unwrap();
    let output = chat_server_binary()
        .env("CHAT_LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("CHAT_DATA_DIR", other.path())
        .env("CHAT_REDIS_URL", &url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CHAT_MONGODB_URI"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (status, _) = first.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "the first server goes on");
}

/// `chat-server health` is the container health check (the image has no
/// shell or curl): 0 when the server on this host is ready, 1 otherwise.
#[tokio::test]
async fn the_health_subcommand_reports_readiness() {
    let server = TestServer::start(Backend::Embedded).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let health = |port: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .arg("health")
            .env("CHAT_LISTEN_ADDR", format!("0.0.0.0:{port}"))
            .env("CHAT_DATA_DIR", std::env::temp_dir())
            .output()
            .unwrap()
    };
    let ready = tokio::task::spawn_blocking({
        let port = port.clone();
        move || health(port)
    })
    .await
    .unwrap();
    assert!(ready.status.success(), "{ready:?}");
    server.state.health.start_draining();
    let draining = tokio::task::spawn_blocking(move || health(port))
        .await
        .unwrap();
    assert_eq!(draining.status.code(), Some(1), "{draining:?}");
    let nobody = health(crate::common::free_port().to_string());
    assert_eq!(nobody.status.code(), Some(1), "{nobody:?}");
}
